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
from drf_spectacular.utils import OpenApiResponse, PolymorphicProxySerializer, extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.generics import ListAPIView
from rest_framework.request import Request
from rest_framework.response import Response

from backoffice import access
from backoffice.api import selectors
from backoffice.api.base import ApiView, NewestFirstCursor
from backoffice.api.errors import error_responses
from backoffice.api.filters import JobFilter, PipelineFilter
from backoffice.api.permissions import CanView
from backoffice.api.schema import declare_links, job_links, pipeline_links
from backoffice.api.serializers import (
    AcceptedSerializer,
    ControlInputSerializer,
    EventSerializer,
    JobDetailSerializer,
    JobListItemSerializer,
    JsonInputSerializer,
    PipelineDetailSerializer,
    PipelineItemSerializer,
    query_input,
)
from ingestion import services as ingestion_services
from pipelines import selectors as pipeline_selectors
from pipelines import services
from pipelines.events import job_dict, pipeline_dict
from pipelines.formula_safety import formula_safe
from pipelines.models import DONE_STATUSES, Job, Pipeline
from pipelines.years import YEAR_FILTER_MAX, YEAR_FILTER_MIN, YEAR_REF_MAX, YEAR_REF_MIN


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


class StartKindSerializer(JsonInputSerializer):
    kind = serializers.ChoiceField(choices=["recalculate", "unit_sync", "noop"])


class StartRecalculateSerializer(JsonInputSerializer):
    """Recompute one module's totals of a year."""

    kind = serializers.ChoiceField(choices=["recalculate"])
    year = serializers.IntegerField(min_value=YEAR_REF_MIN, max_value=YEAR_REF_MAX)
    module = serializers.CharField(max_length=40)


class StartUnitSyncSerializer(JsonInputSerializer):
    """Re-read the unit directory for a year."""

    kind = serializers.ChoiceField(choices=["unit_sync"])
    year = serializers.IntegerField(min_value=YEAR_REF_MIN, max_value=YEAR_REF_MAX)


class StartNoopSerializer(JsonInputSerializer):
    """An engine self-test pipeline."""

    kind = serializers.ChoiceField(choices=["noop"])
    year = serializers.IntegerField(min_value=YEAR_REF_MIN, max_value=YEAR_REF_MAX, required=False)


# Which fields a start needs depends on its kind: one serializer per kind, documented
# as a ``oneOf`` with ``kind`` as discriminator and used as is to validate.
START_INPUTS: dict[str, Any] = {
    "recalculate": StartRecalculateSerializer, "unit_sync": StartUnitSyncSerializer, "noop": StartNoopSerializer,
}



class PipelineListView(ListAPIView):
    """GET: pipelines newest first (keyset cursor), each with its jobs. POST: start one."""

    authentication_classes = ApiView.authentication_classes
    throttle_classes = ApiView.throttle_classes
    permission_classes = [CanView]
    pagination_class = NewestFirstCursor
    filterset_class = PipelineFilter
    serializer_class = PipelineItemSerializer

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
        request=PolymorphicProxySerializer(
            component_name="PipelineStartInput", serializers=START_INPUTS, resource_type_field_name="kind"
        ),
        responses={202: StartOutputSerializer, **error_responses(400, 404, 409)},
    )
    def post(self, request: Request) -> Response:
        kind = request.data.get("kind") if isinstance(request.data, dict) else None
        serializer_class = START_INPUTS.get(kind, StartKindSerializer) if isinstance(kind, str) else StartKindSerializer
        data = serializer_class(data=request.data)
        data.is_valid(raise_exception=True)
        year, module = data.validated_data.get("year"), data.validated_data.get("module")
        if kind == "recalculate":
            require_operate(request.user, module)
            try:
                pipeline = ingestion_services.pipeline_start_recalculate(year=year, module=module, actor=request.user)
            except LookupError as exc:  # unknown module
                raise exceptions.NotFound(str(exc))
        else:
            # Year-wide and engine-wide kinds: only operators not narrowed to modules.
            require_operate(request.user, None)
            if kind == "unit_sync":
                    pipeline = ingestion_services.pipeline_start_unit_sync(year=year, actor=request.user)
            else:
                pipeline = services.pipeline_start_noop(actor=request.user, year=year)
        pipeline = Pipeline.objects.prefetch_related("jobs").get(pk=pipeline.pk)
        body = {"pipeline_id": str(pipeline.pk), "pipeline": selectors.pipeline_item(pipeline)}
        return Response(self.StartOutputSerializer(body).data, status=status.HTTP_202_ACCEPTED)


class PipelineActiveView(ApiView):
    class OutputSerializer(serializers.Serializer):
        pipeline_ids = serializers.ListField(child=serializers.UUIDField())

    class InputSerializer(serializers.Serializer):
        year = serializers.IntegerField(required=False, min_value=YEAR_FILTER_MIN, max_value=YEAR_FILTER_MAX)
        module = serializers.CharField(required=False, max_length=40)

    @extend_schema(parameters=[InputSerializer], responses={200: OutputSerializer, **error_responses(400)})
    def get(self, request: Request) -> Response:
        params = query_input(self.InputSerializer, request)
        qs = selectors.pipelines_visible(user=request.user).exclude(status__in=DONE_STATUSES)
        if params.get("year") is not None:
            qs = qs.filter(year=params["year"])
        if params.get("module"):
            qs = qs.filter(module=params["module"])
        ids = [str(pk) for pk in qs.order_by("-created_at", "-id").values_list("pk", flat=True)[:1000]]
        return Response(self.OutputSerializer({"pipeline_ids": ids}).data)


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
        params = query_input(self.InputSerializer, request)
        pipeline = get_pipeline(user=request.user, pipeline_id=pipeline_id)
        limit = params["limit"]
        batch = pipeline_selectors.events_after(after_seq=params["after"], pipeline_id=pipeline.pk, limit=limit)
        last = batch[-1]["seq"] if batch else params["after"]
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



# --- OpenAPI links: from an answer to the calls that follow it (stateful clients, schemathesis)
declare_links("v1_pipelines_create", 202, pipeline_links("$response.body#/pipeline_id"))
declare_links("v1_pipelines_list", 200, pipeline_links("$response.body#/results/0/id"))
declare_links("v1_pipelines_active_retrieve", 200, pipeline_links("$response.body#/pipeline_ids/0"))
declare_links("v1_pipelines_retrieve", 200, job_links("$response.body#/jobs/0/id"))
for _control in ("v1_pipelines_cancel_create", "v1_pipelines_retry_create"):
    declare_links(_control, 202, pipeline_links("$response.body#/pipeline/id"))
declare_links("v1_jobs_list", 200, job_links("$response.body#/results/0/id"))
declare_links("v1_jobs_retrieve", 200, pipeline_links("$response.body#/pipeline_id"))
for _control in ("v1_jobs_cancel_create", "v1_jobs_retry_create", "v1_jobs_recover_create"):
    declare_links(_control, 202, {
        **job_links("$response.body#/job/id"), **pipeline_links("$response.body#/pipeline/id")
    })
