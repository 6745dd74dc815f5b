"""Year validations over the API: start one, read its findings.

Access as for exports (``backoffice.api.exports``): a validation checks every module of
the year, so starting one needs an operator without module restrictions and reading
one a viewer without module restrictions; others get 404. A validation is identified
by its pipeline's id.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.urls import path
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from backoffice import access
from backoffice.api.base import ApiView
from backoffice.api.errors import error_responses
from backoffice.api.ingestion import _visible_year
from backoffice.api.schema import declare_links, link, pipeline_links
from backoffice.api.views import require_operate
from ingestion import selectors
from ingestion.job_types import VALIDATE_YEAR
from ingestion.validations import services
from ingestion.validations.checks import SEVERITIES
from pipelines.models import Job


class FindingSerializer(serializers.Serializer):
    severity = serializers.ChoiceField(choices=SEVERITIES)
    check = serializers.CharField()
    module = serializers.CharField(allow_blank=True)
    message = serializers.CharField(help_text="English")
    text = serializers.CharField(help_text="In the request's language")
    detail = serializers.DictField()


class ValidationSerializer(serializers.Serializer):
    id = serializers.UUIDField(help_text="The validation's pipeline id")
    year = serializers.IntegerField()
    status = serializers.CharField()
    percent = serializers.FloatField(allow_null=True)
    result = serializers.CharField(allow_null=True)
    status_message = serializers.CharField()
    error_count = serializers.IntegerField()
    warning_count = serializers.IntegerField()
    info_count = serializers.IntegerField()
    findings = FindingSerializer(many=True)
    finished_at = serializers.DateTimeField(allow_null=True)


def validation_body(job: Job) -> dict[str, Any]:
    meta = job.meta or {}
    return {
        "id": job.pipeline_id, "year": job.pipeline.year, "status": job.pipeline.status,
        "percent": job.pipeline.progress_percent, "result": job.result, "status_message": job.status_message,
        "error_count": meta.get("findings_error", 0), "warning_count": meta.get("findings_warning", 0),
        "info_count": meta.get("findings_info", 0), "findings": selectors.findings_of(job),
        "finished_at": job.finished_at,
    }


class YearValidationCreateView(ApiView):
    class OutputSerializer(serializers.Serializer):
        validation_id = serializers.UUIDField()
        pipeline_id = serializers.UUIDField()

    @extend_schema(request=None, responses={202: OutputSerializer, **error_responses(404)})
    def post(self, request: Request, year: int) -> Response:
        _visible_year(request.user, year)
        require_operate(request.user, None)
        pipeline = services.validation_start(year=year, actor=request.user)
        body = {"validation_id": pipeline.pk, "pipeline_id": pipeline.pk}
        return Response(self.OutputSerializer(body).data, status=status.HTTP_202_ACCEPTED)


class ValidationDetailView(ApiView):
    @extend_schema(responses={200: ValidationSerializer, **error_responses(404)})
    def get(self, request: Request, validation_id: UUID) -> Response:
        job = (Job.objects.filter(pipeline_id=validation_id, job_type=VALIDATE_YEAR.name)
               .select_related("pipeline").first())
        if job is None or not access.can_see_module(request.user, None):
            raise exceptions.NotFound("No such validation.")
        return Response(ValidationSerializer(validation_body(job)).data)


declare_links("v1_years_validations_create", 202, {
    "GetValidation": link("v1_validations_retrieve", "Its findings", validation_id="$response.body#/validation_id"),
    **pipeline_links("$response.body#/pipeline_id"),
})

urlpatterns = [
    path("years/<int:year>/validations/", YearValidationCreateView.as_view(), name="year-validation-create"),
    path("validations/<uuid:validation_id>/", ValidationDetailView.as_view(), name="validation-detail"),
]
