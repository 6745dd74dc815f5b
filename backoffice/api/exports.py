"""Year exports over the API: start one, read its status, download its file.

Access: an export spans every module of a year (its totals and data entries), so it
follows the year-wide rules of ``backoffice.api.ingestion``: starting one needs an operator
without module restrictions (``require_operate(user, None)``); reading and
downloading need a viewer without module restrictions. A module-granted user does not
see exports at all (404, like the module-less pipelines that produce them) rather than
a file with some modules cut out.
"""

from __future__ import annotations

from typing import Any

from django.core.files.storage import default_storage
from django.http import FileResponse
from django.urls import path
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from backoffice import access
from backoffice.api.base import ApiView
from backoffice.api.errors import error_responses
from backoffice.api.ingestion import _visible_year
from backoffice.api.schema import declare_links, link, pipeline_links
from backoffice.api.serializers import JsonInputSerializer
from backoffice.api.views import require_operate
from ingestion.exports import services
from ingestion.models import Export, ExportFormat

SHA256_HEADER = "X-Content-SHA256"


class ExportSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    year = serializers.IntegerField(source="year_id")
    format = serializers.CharField()
    # The producing pipeline's status (``purged`` once retention removed it), and its percentage.
    status = serializers.CharField()
    percent = serializers.FloatField(allow_null=True)
    pipeline_id = serializers.UUIDField(allow_null=True)
    rows = serializers.IntegerField(allow_null=True)
    size = serializers.IntegerField(allow_null=True)
    sha256 = serializers.CharField(allow_blank=True)
    created_by = serializers.CharField(allow_null=True)
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    file_url = serializers.CharField(allow_null=True, help_text="Set once the file is stored")


def export_body(export: Export) -> dict[str, Any]:
    pipeline = export.pipeline
    return {
        **{f: getattr(export, f) for f in ("id", "year_id", "format", "pipeline_id", "rows", "size", "sha256",
                                         "created_at", "finished_at")},
        "status": pipeline.status if pipeline else "purged",
        "percent": pipeline.progress_percent if pipeline else None,
        "created_by": export.created_by.get_username() if export.created_by else None,
        "file_url": f"/api/v1/exports/{export.pk}/file/" if export.stored_name else None,
    }


def _visible_export(user: Any, export_id: int) -> Export:
    export = Export.objects.select_related("pipeline", "created_by").filter(pk=export_id).first()
    if export is None or not access.can_see_module(user, None):
        raise exceptions.NotFound("No such export.")
    return export


class YearExportCreateView(ApiView):
    class InputSerializer(JsonInputSerializer):
        format = serializers.ChoiceField(choices=ExportFormat.values)

    class OutputSerializer(serializers.Serializer):
        export_id = serializers.IntegerField()
        pipeline_id = serializers.UUIDField()

    @extend_schema(request=InputSerializer, responses={202: OutputSerializer, **error_responses(400, 404)})
    def post(self, request: Request, year: int) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        _visible_year(request.user, year)
        require_operate(request.user, None)
        export, pipeline = services.export_start(year=year, fmt=data.validated_data["format"], actor=request.user)
        body = {"export_id": export.pk, "pipeline_id": pipeline.pk}
        return Response(self.OutputSerializer(body).data, status=status.HTTP_202_ACCEPTED)


class ExportDetailView(ApiView):
    @extend_schema(responses={200: ExportSerializer, **error_responses(404)})
    def get(self, request: Request, export_id: int) -> Response:
        return Response(ExportSerializer(export_body(_visible_export(request.user, export_id))).data)


class ExportFileView(ApiView):
    @extend_schema(
        responses={
            **{
                (200, content_type.split(";")[0]): OpenApiResponse(
                    OpenApiTypes.BINARY,
                    description=f"The {fmt.upper()} file, streamed; its sha256 in the {SHA256_HEADER} header",
                )
                for fmt, content_type in services.CONTENT_TYPES.items()
            },
            **error_responses(404, 409),
        }
    )
    def get(self, request: Request, export_id: int) -> FileResponse:
        export = _visible_export(request.user, export_id)
        if not export.stored_name:
            raise services.ExportNotReady(f"Export {export.pk} has no file yet (its pipeline is "
                                          f"{export.pipeline.status if export.pipeline else 'gone'}).")
        try:
            handle = default_storage.open(export.stored_name, "rb")
        except FileNotFoundError:
            raise exceptions.NotFound("The stored file is gone (retention).")
        response = FileResponse(handle, as_attachment=True, filename=export.filename,
                                content_type=services.CONTENT_TYPES[export.format])
        response[SHA256_HEADER] = export.sha256
        return response


declare_links("v1_years_exports_create", 202, {
    "GetExport": link("v1_exports_retrieve", "The export's status", export_id="$response.body#/export_id"),
    "ExportFile": link("v1_exports_file_retrieve", "Its file, once done", export_id="$response.body#/export_id"),
    **pipeline_links("$response.body#/pipeline_id"),
})

urlpatterns = [
    path("years/<int:year>/exports/", YearExportCreateView.as_view(), name="year-export-create"),
    path("exports/<int:export_id>/", ExportDetailView.as_view(), name="export-detail"),
    path("exports/<int:export_id>/file/", ExportFileView.as_view(), name="export-file"),
]
