"""Scheduled sources over the API (``/api/v1/sources/…``).

Thin views over ``ingestion.sources.services`` / ``selectors``. Access as everywhere
(``backoffice.access``): viewers read, narrowed to their modules (a unit-directory
source needs the every-module scope); operators granted a source's module create,
change, delete, run, pause and resume it. Invisible sources are 404.
"""

from __future__ import annotations

from typing import Any

from django.urls import path
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.generics import ListAPIView
from rest_framework.request import Request
from rest_framework.response import Response

from backoffice import access
from backoffice.api.base import ApiView, NewestFirstCursor
from backoffice.api.errors import error_responses
from backoffice.api.serializers import ControlInputSerializer, StrictObjectSerializer
from backoffice.api.views import require_operate
from ingestion.models import Source, SourceKind, YearRule
from ingestion.sources import selectors, services
from pipelines.years import YEAR_MAX, YEAR_MIN


class LastRunSerializer(serializers.Serializer):
    pipeline_id = serializers.UUIDField()
    status = serializers.CharField(help_text="The run's pipeline status")
    trigger = serializers.ChoiceField(choices=["schedule", "manual"])
    started_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    progress_percent = serializers.FloatField()
    phase = serializers.CharField()
    message = serializers.CharField(help_text="The failing job's message, else the ingest's or the fetch's")
    unchanged = serializers.BooleanField(help_text="The source was unchanged: nothing was reloaded")


class SuccessRateSerializer(serializers.Serializer):
    runs = serializers.IntegerField(help_text=f"Finished runs counted (the last {selectors.SUCCESS_RATE_WINDOW})")
    succeeded = serializers.IntegerField()
    rate = serializers.FloatField(allow_null=True, help_text="succeeded / runs; null before any run")


class SourceSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    kind = serializers.ChoiceField(choices=SourceKind.choices)
    location = serializers.CharField(help_text="URL (credentials masked) or file path")
    auth_secret = serializers.CharField(help_text="Name of the secret setting holding the auth header's value")
    auth_header = serializers.CharField()
    module = serializers.CharField()
    target = serializers.CharField()
    year_rule = serializers.ChoiceField(choices=YearRule.choices)
    year = serializers.IntegerField(allow_null=True)
    cron = serializers.CharField()
    interval_seconds = serializers.IntegerField(allow_null=True)
    enabled = serializers.BooleanField()
    schedule_text = serializers.CharField(help_text="The schedule in words")
    next_run = serializers.DateTimeField(allow_null=True, help_text="When beat fires it next; null while paused")
    last_run = LastRunSerializer(allow_null=True)
    success_rate = SuccessRateSerializer()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class SourceInputSerializer(StrictObjectSerializer):
    """A source's configuration; the service checks the rules across fields (400 naming them)."""

    name = serializers.CharField(max_length=100)
    kind = serializers.ChoiceField(choices=SourceKind.choices)
    location = serializers.CharField(max_length=2000, help_text="http(s) URL, or an absolute path under "
                                                                "SLUICE_SOURCE_PATH_ROOTS")
    auth_secret = serializers.CharField(max_length=100, required=False, allow_blank=True,
                                        help_text="X for the setting SLUICE_SOURCE_SECRET_X (never the secret)")
    auth_header = serializers.CharField(max_length=100, required=False)
    module = serializers.CharField(max_length=40, required=False, allow_blank=True)
    year_rule = serializers.ChoiceField(choices=YearRule.choices, required=False)
    cron = serializers.CharField(max_length=100, required=False, allow_blank=True,
                                 help_text="5 fields, UTC: minute hour day-of-month month day-of-week")
    interval_seconds = serializers.IntegerField(
        required=False, allow_null=True, min_value=services.MIN_INTERVAL_SECONDS,
        max_value=services.MAX_INTERVAL_SECONDS,
    )
    year = serializers.IntegerField(required=False, allow_null=True, min_value=YEAR_MIN, max_value=YEAR_MAX,
                                    help_text="With year_rule fixed")
    enabled = serializers.BooleanField(required=False)


class SourcePatchSerializer(SourceInputSerializer):
    min_properties = 1

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        for field in fields.values():
            field.required = False
        return fields


def _card(source: Source) -> dict[str, Any]:
    return SourceSerializer(selectors.source_card(source)).data


def _visible(user: Any, source_id: int) -> Source:
    source = access.narrow(selectors.source_queryset(), access.granted_modules(user)).filter(pk=source_id).first()
    if source is None:
        raise exceptions.NotFound("No such source.")
    return source


def _invalid(exc: services.SourceInvalid) -> serializers.ValidationError:
    return serializers.ValidationError(exc.errors, "invalid")


class SourceListView(ListAPIView):
    """GET: sources newest first (cursor), each with last run, next run and success rate. POST: create."""

    authentication_classes = ApiView.authentication_classes
    throttle_classes = ApiView.throttle_classes
    permission_classes = ApiView.permission_classes
    pagination_class = NewestFirstCursor
    serializer_class = SourceSerializer

    def get_queryset(self) -> Any:
        return access.narrow(selectors.source_queryset(), access.granted_modules(self.request.user))

    @extend_schema(responses={200: SourceSerializer(many=True), **error_responses(400)})
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        assert page is not None
        return self.get_paginated_response([_card(s) for s in page])

    @extend_schema(request=SourceInputSerializer, responses={201: SourceSerializer, **error_responses(400, 403)})
    def post(self, request: Request) -> Response:
        data = SourceInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        require_operate(request.user, data.validated_data.get("module") or None)
        try:
            source = services.source_create(actor=request.user, **data.validated_data)
        except services.SourceInvalid as exc:
            raise _invalid(exc)
        return Response(_card(source), status=status.HTTP_201_CREATED)


class SourceDetailView(ApiView):
    @extend_schema(responses={200: SourceSerializer, **error_responses(404)})
    def get(self, request: Request, source_id: int) -> Response:
        return Response(_card(_visible(request.user, source_id)))

    @extend_schema(request=SourcePatchSerializer, responses={200: SourceSerializer, **error_responses(400, 403, 404)})
    def patch(self, request: Request, source_id: int) -> Response:
        data = SourcePatchSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        source = _visible(request.user, source_id)
        require_operate(request.user, source.module or None)
        if "module" in data.validated_data:  # moving it to a module needs that grant too
            require_operate(request.user, data.validated_data["module"] or None)
        try:
            source = services.source_update(source_id=source.pk, actor=request.user, **data.validated_data)
        except services.SourceInvalid as exc:
            raise _invalid(exc)
        return Response(_card(source))

    @extend_schema(responses={204: None, **error_responses(403, 404)})
    def delete(self, request: Request, source_id: int) -> Response:
        source = _visible(request.user, source_id)
        require_operate(request.user, source.module or None)
        services.source_delete(source_id=source.pk, actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class SourceRunView(ApiView):
    class OutputSerializer(serializers.Serializer):
        pipeline_id = serializers.UUIDField()

    @extend_schema(request=None, responses={202: OutputSerializer, **error_responses(403, 404, 409)})
    def post(self, request: Request, source_id: int) -> Response:
        source = _visible(request.user, source_id)
        require_operate(request.user, source.module or None)
        pipeline = services.source_run_start(source_id=source.pk, actor=request.user, trigger="manual")
        return Response(self.OutputSerializer({"pipeline_id": pipeline.pk}).data, status=status.HTTP_202_ACCEPTED)


class _SourceToggleView(ApiView):
    enabled = True

    @extend_schema(request=ControlInputSerializer,
                   responses={200: SourceSerializer, **error_responses(400, 403, 404)})
    def post(self, request: Request, source_id: int) -> Response:
        data = ControlInputSerializer(data=request.data or {})
        data.is_valid(raise_exception=True)
        source = _visible(request.user, source_id)
        require_operate(request.user, source.module or None)
        source = services.source_set_enabled(source_id=source.pk, enabled=self.enabled, actor=request.user,
                                             reason=data.validated_data["reason"])
        return Response(_card(source))


class SourcePauseView(_SourceToggleView):
    """Stop the schedule (a running run goes on)."""

    enabled = False


class SourceResumeView(_SourceToggleView):
    """Start the schedule again."""

    enabled = True


urlpatterns = [
    path("sources/", SourceListView.as_view(), name="source-list"),
    path("sources/<int:source_id>/", SourceDetailView.as_view(), name="source-detail"),
    path("sources/<int:source_id>/run/", SourceRunView.as_view(), name="source-run"),
    path("sources/<int:source_id>/pause/", SourcePauseView.as_view(), name="source-pause"),
    path("sources/<int:source_id>/resume/", SourceResumeView.as_view(), name="source-resume"),
]
