"""Pipelines and jobs: lists, details, event history, controls, row-error export.

Every view is validate → call a service or selector → serialize. Access decisions come
from ``backoffice.access``: lists are filtered, invisible objects are 404, actions on
visible objects without the operator role (or the module grant) are 403.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from typing import Any

from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.generics import ListAPIView
from rest_framework.request import Request
from rest_framework.response import Response

from backoffice import access
from pipelines import selectors as pipeline_selectors
from pipelines import services
from pipelines.api import selectors
from pipelines.api.base import ApiView, NewestFirstCursor
from pipelines.api.errors import error_responses
from pipelines.api.filters import JobFilter, PipelineFilter
from pipelines.api.permissions import CanView
from pipelines.api.serializers import (
    AcceptedSerializer,
    ControlInputSerializer,
    EventSerializer,
    JobDetailSerializer,
    JobListItemSerializer,
    PipelineDetailSerializer,
    PipelineItemSerializer,
)
from pipelines.events import job_dict, pipeline_dict
from pipelines.models import DONE_STATUSES, Job, Pipeline


def get_pipeline(*, user: Any, pipeline_id: Any) -> Pipeline:
    pipeline = selectors.pipelines_visible(user=user).select_related("created_by").filter(pk=pipeline_id).first()
    if pipeline is None:
        raise exceptions.NotFound("No such pipeline.")
    return pipeline


def get_job(*, user: Any, job_id: int) -> Job:
    job = selectors.jobs_visible(user=user).select_related("pipeline").filter(pk=job_id).first()
    if job is None:
        raise exceptions.NotFound("No such job.")
    return job


def require_operate(user: Any, module: str | None) -> None:
    if not access.can_operate(user):
        raise exceptions.PermissionDenied("You need the operator role.", "not_operator")
    if not access.can_operate_module(user, module):
        raise exceptions.PermissionDenied(f"You may not operate module {module or '(none)'}.", "module_not_granted")


# --- pipelines ------------------------------------------------------------------------------


class PipelineListView(ListAPIView):
    """GET: pipelines newest first (keyset cursor), each with its jobs. POST: start one."""

    authentication_classes = ApiView.authentication_classes
    throttle_classes = ApiView.throttle_classes
    permission_classes = [CanView]
    pagination_class = NewestFirstCursor
    filterset_class = PipelineFilter
    serializer_class = PipelineItemSerializer

    class StartInputSerializer(serializers.Serializer):
        kind = serializers.ChoiceField(choices=["recalculate", "unit_sync", "noop"])
        year = serializers.IntegerField(min_value=1900, max_value=2999, required=False)
        module = serializers.CharField(required=False, max_length=40)

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            if attrs["kind"] in ("recalculate", "unit_sync") and "year" not in attrs:
                raise serializers.ValidationError({"year": "This field is required."}, "required")
            if attrs["kind"] == "recalculate" and not attrs.get("module"):
                raise serializers.ValidationError({"module": "This field is required."}, "required")
            return attrs

    class StartOutputSerializer(serializers.Serializer):
        pipeline_id = serializers.UUIDField()
        pipeline = PipelineItemSerializer()

    def get_queryset(self) -> Any:
        return selectors.pipeline_list(user=self.request.user)

    @extend_schema(responses={200: PipelineItemSerializer(many=True), **error_responses(400)})
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        assert page is not None  # always paginated: never the whole table
        return self.get_paginated_response([selectors.pipeline_item(p) for p in page])

    @extend_schema(
        request=StartInputSerializer,
        responses={202: StartOutputSerializer, **error_responses(400, 404, 409)},
    )
    def post(self, request: Request) -> Response:
        data = self.StartInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        kind = data.validated_data["kind"]
        year, module = data.validated_data.get("year"), data.validated_data.get("module")
        if kind == "recalculate":
            require_operate(request.user, module)
            from ingestion import services as ingestion_services

            try:
                pipeline = ingestion_services.pipeline_start_recalculate(year=year, module=module, actor=request.user)
            except LookupError as exc:  # unknown module
                raise exceptions.NotFound(str(exc))
        else:
            # Year-wide and engine-wide kinds: only operators not narrowed to modules.
            require_operate(request.user, None)
            if kind == "unit_sync":
                from ingestion import services as ingestion_services

                pipeline = ingestion_services.pipeline_start_unit_sync(year=year, actor=request.user)
            else:
                pipeline = services.pipeline_start_noop(actor=request.user, year=year)
        pipeline = Pipeline.objects.prefetch_related("jobs").get(pk=pipeline.pk)
        body = {"pipeline_id": str(pipeline.pk), "pipeline": selectors.pipeline_item(pipeline)}
        return Response(self.StartOutputSerializer(body).data, status=status.HTTP_202_ACCEPTED)


class PipelineActiveView(ApiView):
    class OutputSerializer(serializers.Serializer):
        pipeline_ids = serializers.ListField(child=serializers.UUIDField())

    @extend_schema(
        parameters=[
            OpenApiParameter("year", OpenApiTypes.INT, required=False),
            OpenApiParameter("module", OpenApiTypes.STR, required=False),
        ],
        responses={200: OutputSerializer, **error_responses(400)},
    )
    def get(self, request: Request) -> Response:
        params = self._Input(data=request.query_params)
        params.is_valid(raise_exception=True)
        qs = selectors.pipelines_visible(user=request.user).exclude(status__in=DONE_STATUSES)
        if params.validated_data.get("year") is not None:
            qs = qs.filter(year=params.validated_data["year"])
        if params.validated_data.get("module"):
            qs = qs.filter(module=params.validated_data["module"])
        ids = [str(pk) for pk in qs.order_by("-created_at", "-id").values_list("pk", flat=True)[:1000]]
        return Response(self.OutputSerializer({"pipeline_ids": ids}).data)

    class _Input(serializers.Serializer):
        year = serializers.IntegerField(required=False, min_value=0, max_value=9999)
        module = serializers.CharField(required=False, max_length=40)


class PipelineDetailView(ApiView):
    @extend_schema(responses={200: PipelineDetailSerializer, **error_responses(404)})
    def get(self, request: Request, pipeline_id: Any) -> Response:
        pipeline = get_pipeline(user=request.user, pipeline_id=pipeline_id)
        return Response(PipelineDetailSerializer(selectors.pipeline_detail(pipeline=pipeline)).data)


class PipelineEventsView(ApiView):
    class InputSerializer(serializers.Serializer):
        after = serializers.IntegerField(required=False, default=0, min_value=0, max_value=2**62)
        limit = serializers.IntegerField(required=False, default=1000, min_value=1, max_value=5000)

    class OutputSerializer(serializers.Serializer):
        events = EventSerializer(many=True)
        last_seq = serializers.IntegerField(help_text="Pass as ?after= to read on.")
        has_more = serializers.BooleanField()

    @extend_schema(parameters=[InputSerializer], responses={200: OutputSerializer, **error_responses(400, 404)})
    def get(self, request: Request, pipeline_id: Any) -> Response:
        params = self.InputSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        pipeline = get_pipeline(user=request.user, pipeline_id=pipeline_id)
        limit = params.validated_data["limit"]
        batch = pipeline_selectors.events_after(
            after_seq=params.validated_data["after"], pipeline_id=pipeline.pk, limit=limit
        )
        last = batch[-1]["seq"] if batch else params.validated_data["after"]
        # The stored payloads go out untouched: the same objects WebSocket and SSE clients got.
        return Response({"events": batch, "last_seq": last, "has_more": len(batch) == limit})


def _accepted(pipeline: Pipeline, job: Job | None = None) -> Response:
    # Re-read both: the service's returned objects may carry transition-only projections.
    pipeline = Pipeline.objects.get(pk=pipeline.pk)
    fresh = Job.objects.get(pk=job.pk) if job is not None else None
    body = {"pipeline": pipeline_dict(pipeline), "job": job_dict(fresh) if fresh is not None else None}
    return Response(AcceptedSerializer(body).data, status=status.HTTP_202_ACCEPTED)


CONTROL_SCHEMA = extend_schema(
    request=ControlInputSerializer, responses={202: AcceptedSerializer, **error_responses(400, 404, 409)}
)


def _pipeline_control(request: Request, pipeline_id: Any, control: Callable[..., Pipeline]) -> Response:
    """validate → check visibility and operate permission → call the service → 202."""
    data = ControlInputSerializer(data=request.data)
    data.is_valid(raise_exception=True)
    pipeline = get_pipeline(user=request.user, pipeline_id=pipeline_id)
    require_operate(request.user, pipeline.module)
    return _accepted(control(pipeline_id=pipeline.pk, actor=request.user, **data.validated_data))


class PipelineCancelView(ApiView):
    @CONTROL_SCHEMA
    def post(self, request: Request, pipeline_id: Any) -> Response:
        return _pipeline_control(request, pipeline_id, services.pipeline_cancel)


class PipelineRetryView(ApiView):
    @CONTROL_SCHEMA
    def post(self, request: Request, pipeline_id: Any) -> Response:
        return _pipeline_control(request, pipeline_id, services.pipeline_retry)


# --- jobs -----------------------------------------------------------------------------------


class JobListView(ListAPIView):
    authentication_classes = ApiView.authentication_classes
    throttle_classes = ApiView.throttle_classes
    permission_classes = [CanView]
    pagination_class = NewestFirstCursor
    filterset_class = JobFilter
    serializer_class = JobListItemSerializer

    def get_queryset(self) -> Any:
        return selectors.job_list(user=self.request.user)

    @extend_schema(responses={200: JobListItemSerializer(many=True), **error_responses(400)})
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        assert page is not None
        return self.get_paginated_response([selectors.job_list_item(j) for j in page])


class JobDetailView(ApiView):
    @extend_schema(responses={200: JobDetailSerializer, **error_responses(404)})
    def get(self, request: Request, job_id: int) -> Response:
        job = get_job(user=request.user, job_id=job_id)
        return Response(JobDetailSerializer(selectors.job_detail(job=job)).data)


FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def formula_safe(value: Any) -> str:
    """OWASP CSV injection: a cell a spreadsheet would evaluate gets a leading quote."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


class _Echo:
    def write(self, value: str) -> str:
        return value


class JobErrorsCsvView(ApiView):
    @extend_schema(
        responses={
            (200, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description="row,column,reason (all row errors)"),
            **error_responses(404),
        }
    )
    def get(self, request: Request, job_id: int) -> StreamingHttpResponse:
        job = get_job(user=request.user, job_id=job_id)
        writer = csv.writer(_Echo())

        def rows() -> Iterator[str]:
            yield writer.writerow(["row", "column", "reason"])
            for error in selectors.job_row_errors(job=job):
                yield writer.writerow([formula_safe(error.get(k)) for k in ("row", "column", "reason")])

        response = StreamingHttpResponse(rows(), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="job-{job.pk}-errors.csv"'
        return response


def _job_control(
    request: Request, job_id: int, control: Callable[..., Job],
    input_serializer: type[serializers.Serializer] = ControlInputSerializer,
) -> Response:
    """validate → check visibility and operate permission → call the service → 202."""
    data = input_serializer(data=request.data)
    data.is_valid(raise_exception=True)
    job = get_job(user=request.user, job_id=job_id)
    require_operate(request.user, job.pipeline.module)
    job = control(job_id=job.pk, actor=request.user, **data.validated_data)
    return _accepted(Pipeline.objects.get(pk=job.pipeline_id), job)


class JobCancelView(ApiView):
    @CONTROL_SCHEMA
    def post(self, request: Request, job_id: int) -> Response:
        return _job_control(request, job_id, services.job_cancel)


class JobRetryView(ApiView):
    @CONTROL_SCHEMA
    def post(self, request: Request, job_id: int) -> Response:
        return _job_control(request, job_id, services.job_retry)


class JobRecoverView(ApiView):
    class InputSerializer(ControlInputSerializer):
        force = serializers.BooleanField(required=False, default=False, help_text="Even if the heartbeat is fresh.")

    @extend_schema(request=InputSerializer, responses={202: AcceptedSerializer, **error_responses(400, 404, 409)})
    def post(self, request: Request, job_id: int) -> Response:
        return _job_control(request, job_id, services.job_recover, self.InputSerializer)

