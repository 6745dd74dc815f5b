"""Years, modules, uploads and totals over the API (``/api/v1/…``).

Thin views over ``ingestion.services`` / ``ingestion.selectors``. Access:

- the module registry and the list of *open* years: any authenticated user;
- closed years, year details and totals of closed years: viewers (404 otherwise);
  without a role an open year's detail is a summary (no job/upload ids, messages or
  reasons);
- a module-granted user sees only their modules in year details (their reasons and
  active pipelines too), totals and uploads;
- creating, configuring and opening years: operators without module restrictions
  (a year spans every module); uploading: operators granted that module.

Over ~400 lines on purpose: it is mostly declarations (each view's input and output
serializers, which the published schema is built from) of one resource family, read
together with the access rules above; split it by resource if it grows further.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import FileResponse, HttpResponse
from django.urls import path
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import exceptions, serializers, status
from rest_framework.parsers import MultiPartParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from backoffice import access
from backoffice.api.base import ApiView
from backoffice.api.errors import PayloadTooLarge, error_responses
from backoffice.api.schema import NUL_FREE, declare_links, job_links, link, pipeline_links
from backoffice.api.serializers import JsonInputSerializer, StrictObjectSerializer, query_input
from backoffice.api.views import require_operate
from ingestion import selectors, services
from ingestion.models import Upload, Year
from ingestion.modules import MODULES, TARGET_DATA, TARGETS
from pipelines.years import YEAR_MAX, YEAR_MIN

# --- modules ------------------------------------------------------------------------------


class ColumnSerializer(serializers.Serializer):
    name = serializers.CharField()
    type = serializers.CharField()
    required = serializers.BooleanField()  # type: ignore[assignment]  # a field, popped by the metaclass
    unit = serializers.CharField(allow_blank=True)
    allowed = serializers.ListField(child=serializers.CharField())
    min = serializers.FloatField(allow_null=True)
    max = serializers.FloatField(allow_null=True)
    description = serializers.CharField(allow_blank=True)


class DetSerializer(serializers.Serializer):
    key = serializers.CharField()
    label = serializers.CharField()  # type: ignore[assignment]  # a field, popped by the metaclass
    categories = serializers.ListField(child=serializers.CharField())


class TargetsSerializer(serializers.Serializer):
    data_entries = ColumnSerializer(many=True)
    factors = ColumnSerializer(many=True)


class ModuleSerializer(serializers.Serializer):
    key = serializers.CharField()
    label = serializers.CharField()  # type: ignore[assignment]  # a field, popped by the metaclass
    formula = serializers.CharField()
    dets = DetSerializer(many=True)
    targets = TargetsSerializer()


class ModuleListView(ApiView):
    permission_classes = [IsAuthenticated]

    @extend_schema(responses={200: ModuleSerializer(many=True), **error_responses()})
    def get(self, request: Request) -> Response:
        return Response(ModuleSerializer(selectors.module_list(), many=True).data)


class ModuleTemplateView(ApiView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        responses={(200, "text/csv"): OpenApiResponse(OpenApiTypes.STR, description="Header line only"),
                   **error_responses(404)}
    )
    def get(self, request: Request, key: str, target: str) -> HttpResponse:
        try:
            body = selectors.template_csv(module=key, target=target)
        except LookupError:  # unknown module (UnknownModule) or target (KeyError)
            raise exceptions.NotFound(f"No template for module {key!r} and target {target!r}.")
        response = HttpResponse(body, content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{key}-{target}.csv"'
        return response


# --- years --------------------------------------------------------------------------------


class YearSerializer(serializers.Serializer):
    year = serializers.IntegerField()
    is_open = serializers.BooleanField()
    configured_at = serializers.DateTimeField(allow_null=True)
    config = serializers.DictField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


def _visible_year(user: Any, year: int) -> Year:
    obj = Year.objects.filter(pk=year).first()
    if obj is None or not (obj.is_open or access.can_view(user)):
        raise exceptions.NotFound(f"Year {year} does not exist.")
    return obj


# A signed-in user without a role sees an open year as a summary: no job or upload ids,
# no status messages (they quote rejected cell values), no per-module reasons.
_SUMMARY_MODULE_FIELDS = ("module", "label", "enabled", "rows", "complete")


def _year_detail_for(user: Any, year: int) -> dict[str, Any]:
    """The year's detail narrowed to what ``user`` may see (see the module docstring)."""
    detail = selectors.year_detail(year=year)
    active = detail.pop("active_pipelines")
    if not access.can_view(user):
        detail["modules"] = [{k: m[k] for k in _SUMMARY_MODULE_FIELDS} for m in detail["modules"]]
        detail["incomplete_reasons"] = {}
        detail["active_pipeline_ids"] = []
        return detail
    scope = access.granted_modules(user)
    detail["modules"] = access.narrow(detail["modules"], scope)
    # "year" holds year-wide reasons (the unit sync); every other key is a module.
    detail["incomplete_reasons"] = {
        key: reasons for key, reasons in detail["incomplete_reasons"].items()
        if key == "year" or access.in_scope(scope, key)
    }
    detail["active_pipeline_ids"] = [p["id"] for p in access.narrow(active, scope)]
    return detail


@extend_schema_field({"anyOf": [{"type": "string", "pattern": NUL_FREE}, {"type": "number"}, {"type": "boolean"}]})
class SettingValueField(serializers.Field):
    """One module setting: a string, number or boolean (never an object, list or null)."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict | list) or data is None:
            raise serializers.ValidationError("A setting is a string, number or boolean.", "invalid_setting")
        if isinstance(data, str) and "\x00" in data:  # PostgreSQL's jsonb cannot store it (was a 500)
            raise serializers.ValidationError("A setting may not contain the NUL character.", "invalid_setting")
        return data

    def to_representation(self, value: Any) -> Any:
        return value


class ModuleSettingsSerializer(StrictObjectSerializer):
    """Per module key (only known modules): {setting name: string, number or boolean}."""

    def get_fields(self) -> dict[str, serializers.Field]:
        return {key: serializers.DictField(child=SettingValueField(), required=False) for key in MODULES}

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        for module, settings_ in attrs.items():
            if any("\x00" in name for name in settings_):  # jsonb cannot store it (was a 500)
                raise serializers.ValidationError({module: ["A setting name may not contain the NUL character."]})
        return attrs


class YearConfigSerializer(StrictObjectSerializer):
    """A year's ``config`` patch: every key known, every value typed (400 names the field)."""

    modules = serializers.ListField(
        child=serializers.ChoiceField(choices=list(MODULES)), min_length=1, required=False,
        help_text="Enabled module keys (at least one).",
    )
    module_settings = ModuleSettingsSerializer(required=False)

    def validate_modules(self, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))  # keep order, drop repeats


class YearListView(ApiView):
    permission_classes = [IsAuthenticated]

    class InputSerializer(JsonInputSerializer):
        year = serializers.IntegerField(min_value=YEAR_MIN, max_value=YEAR_MAX)

    class CreatedSerializer(serializers.Serializer):
        year = YearSerializer()
        pipeline_id = serializers.UUIDField()

    @extend_schema(responses={200: YearSerializer(many=True), **error_responses()})
    def get(self, request: Request) -> Response:
        years = selectors.year_list(include_closed=access.can_view(request.user))
        return Response(YearSerializer(years, many=True).data)

    @extend_schema(request=InputSerializer, responses={201: CreatedSerializer, **error_responses(400, 409)})
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        require_operate(request.user, None)
        year, pipeline = services.year_create(year=data.validated_data["year"], actor=request.user)
        body = {"year": year, "pipeline_id": pipeline.pk}
        return Response(self.CreatedSerializer(body).data, status=status.HTTP_201_CREATED)


class YearDetailView(ApiView):
    permission_classes = [IsAuthenticated]

    class PatchSerializer(StrictObjectSerializer):
        """Open/close the year or merge into its config: at least one of the two."""

        min_properties = 1  # an empty patch is a mistake, not a no-op

        is_open = serializers.BooleanField(required=False)
        config = YearConfigSerializer(required=False, help_text="Merged into the year's config (key by key)")

    class DetailSerializer(serializers.Serializer):
        year = serializers.IntegerField()
        is_open = serializers.BooleanField()
        configured_at = serializers.CharField(allow_null=True)
        config = serializers.DictField()
        modules = serializers.ListField(child=serializers.DictField())
        incomplete_reasons = serializers.DictField(child=serializers.ListField(child=serializers.CharField()))
        can_open = serializers.BooleanField()
        active_pipeline_ids = serializers.ListField(child=serializers.UUIDField())

    @extend_schema(responses={200: DetailSerializer, **error_responses(404)})
    def get(self, request: Request, year: int) -> Response:
        _visible_year(request.user, year)
        return Response(self.DetailSerializer(_year_detail_for(request.user, year)).data)

    @extend_schema(request=PatchSerializer, responses={200: DetailSerializer, **error_responses(400, 404, 409)})
    def patch(self, request: Request, year: int) -> Response:
        data = self.PatchSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        _visible_year(request.user, year)
        require_operate(request.user, None)
        try:
            services.year_update(
                year=year, actor=request.user, is_open=data.validated_data.get("is_open"),
                config_patch=data.validated_data.get("config"),
            )
        except ValueError as exc:
            raise serializers.ValidationError({"config": [str(exc)]}, "invalid")
        return Response(self.DetailSerializer(_year_detail_for(request.user, year)).data)


class TotalSerializer(serializers.Serializer):
    module = serializers.CharField()
    kg_co2e = serializers.FloatField()
    rows_without_factor = serializers.IntegerField(allow_null=True)
    pipeline_id = serializers.UUIDField(allow_null=True)
    computed_at = serializers.CharField(allow_null=True)


class UnitTotalSerializer(TotalSerializer):
    unit_id = serializers.CharField()


class YearTotalsView(ApiView):
    permission_classes = [IsAuthenticated]

    class InputSerializer(serializers.Serializer):
        module = serializers.CharField(required=False, max_length=40)
        unit = serializers.CharField(required=False, max_length=200)

    class OutputSerializer(serializers.Serializer):
        year = serializers.IntegerField()
        kg_co2e = serializers.FloatField()
        modules = TotalSerializer(many=True)
        units = UnitTotalSerializer(many=True)

    @extend_schema(parameters=[InputSerializer], responses={200: OutputSerializer, **error_responses(400, 404)})
    def get(self, request: Request, year: int) -> Response:
        params = query_input(self.InputSerializer, request)
        _visible_year(request.user, year)
        totals = selectors.year_totals(year=year, **params)
        # An open year's totals are published to every signed-in user; back-office
        # users see them through their module scope.
        scope = access.granted_modules(request.user) if access.can_view(request.user) else None
        if scope is not None:
            totals["modules"] = access.narrow(totals["modules"], scope)
            totals["units"] = access.narrow(totals["units"], scope)
            totals["kg_co2e"] = sum(m["kg_co2e"] for m in totals["modules"])
        return Response(self.OutputSerializer(totals).data)


# --- uploads ------------------------------------------------------------------------------


class UploadSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    year = serializers.IntegerField(source="year_id")
    module = serializers.CharField()
    target = serializers.CharField()
    original_name = serializers.CharField()
    sha256 = serializers.CharField()
    size = serializers.IntegerField()
    line_count = serializers.IntegerField()
    row_count = serializers.IntegerField(allow_null=True)
    delimiter = serializers.CharField()
    uploaded_by = serializers.CharField(allow_null=True)
    duplicate_of = serializers.IntegerField(source="duplicate_of_id", allow_null=True)
    pipeline_id = serializers.UUIDField(allow_null=True)
    created_at = serializers.DateTimeField()


class UploadCreateView(ApiView):
    parser_classes = [MultiPartParser]  # the only body that carries a file

    class InputSerializer(serializers.Serializer):
        file = serializers.FileField(allow_empty_file=True)
        target = serializers.ChoiceField(choices=TARGETS)

    class OutputSerializer(serializers.Serializer):
        upload_id = serializers.IntegerField()
        pipeline_id = serializers.UUIDField()
        job_ids = serializers.ListField(child=serializers.IntegerField())
        duplicate_of = serializers.IntegerField(allow_null=True)

    @extend_schema(
        request={"multipart/form-data": InputSerializer},
        # 409: the year's unit sync has not succeeded yet (year_not_configured).
        responses={202: OutputSerializer, **error_responses(400, 404, 409, 413, 415)},
    )
    def post(self, request: Request, year: int, module: str) -> Response:
        # Refuse a declared oversize body before Django reads (and spools it to disk).
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
        if declared > settings.SLUICE_UPLOAD_MAX_BYTES + 64 * 1024:
            raise PayloadTooLarge(f"The file is larger than the limit of {settings.SLUICE_UPLOAD_MAX_BYTES:,} bytes.")
        require_operate(request.user, module)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        uploaded = data.validated_data["file"]
        upload, pipeline = services.upload_create(
            year=year, module=module, target=data.validated_data["target"], file=uploaded,
            filename=uploaded.name, actor=request.user,
        )
        body = {
            "upload_id": upload.pk,
            "pipeline_id": pipeline.pk,
            "job_ids": sorted(pipeline.jobs.values_list("pk", flat=True)),
            "duplicate_of": upload.duplicate_of_id,
        }
        return Response(self.OutputSerializer(body).data, status=status.HTTP_202_ACCEPTED)


def _visible_upload(user: Any, upload_id: int) -> Upload:
    try:
        upload = selectors.upload_get(upload_id=upload_id)
    except Upload.DoesNotExist:
        raise exceptions.NotFound("No such upload.")
    if not access.can_see_module(user, upload.module):
        raise exceptions.NotFound("No such upload.")
    return upload


def _upload_body(upload: Upload) -> dict[str, Any]:
    return {
        **{f: getattr(upload, f) for f in ("id", "year_id", "module", "target", "original_name", "sha256", "size",
                                         "line_count", "row_count", "delimiter", "duplicate_of_id", "pipeline_id",
                                         "created_at")},
        "uploaded_by": upload.uploaded_by.get_username() if upload.uploaded_by else None,
    }


class UploadDetailView(ApiView):
    @extend_schema(responses={200: UploadSerializer, **error_responses(404)})
    def get(self, request: Request, upload_id: int) -> Response:
        upload = _visible_upload(request.user, upload_id)
        return Response(UploadSerializer(_upload_body(upload)).data)


class UploadFileView(ApiView):
    @extend_schema(
        responses={(200, "text/csv"): OpenApiResponse(OpenApiTypes.BINARY, description="The stored original"),
                   **error_responses(404)}
    )
    def get(self, request: Request, upload_id: int) -> FileResponse:
        upload = _visible_upload(request.user, upload_id)
        try:
            # Streamed from the storage backend (a local file, or the S3 object's body).
            stored = selectors.upload_file_open(upload)
        except FileNotFoundError:
            raise exceptions.NotFound("The stored file is gone (retention).") from None
        return FileResponse(
            stored, as_attachment=True, filename=upload.original_name, content_type="text/csv"
        )


class UploadRerunView(ApiView):
    class OutputSerializer(serializers.Serializer):
        pipeline_id = serializers.UUIDField()

    @extend_schema(request=None, responses={202: OutputSerializer, **error_responses(404, 409)})
    def post(self, request: Request, upload_id: int) -> Response:
        upload = _visible_upload(request.user, upload_id)
        require_operate(request.user, upload.module)
        pipeline = services.upload_rerun(upload_id=upload.pk, actor=request.user)
        return Response(self.OutputSerializer({"pipeline_id": pipeline.pk}).data, status=status.HTTP_202_ACCEPTED)


# --- OpenAPI links: create a year → upload to it, follow the pipeline, its jobs, the totals
def _year_links(year: str) -> dict[str, dict[str, Any]]:
    return {
        "GetYear": link("v1_years_retrieve", "The year's per-module status", year=year),
        "ConfigureYear": link("v1_years_partial_update", "Configure or open it", year=year),
        "YearTotals": link("v1_years_totals_retrieve", "Its totals", year=year),
        "UploadToYear": link("v1_years_modules_uploads_create", "Upload a module's file", year=year),
    }


declare_links("v1_years_create", 201, {
    **_year_links("$response.body#/year/year"), **pipeline_links("$response.body#/pipeline_id")
})
declare_links("v1_years_list", 200, _year_links("$response.body#/0/year"))
declare_links("v1_modules_list", 200, {
    "DataEntriesTemplate": link("v1_modules_template_.csv_retrieve", "The first module's empty data CSV",
                                key="$response.body#/0/key", target=TARGET_DATA),
})
declare_links("v1_years_modules_uploads_create", 202, {
    "GetUpload": link("v1_uploads_retrieve", "The upload's metadata", upload_id="$response.body#/upload_id"),
    "UploadFile": link("v1_uploads_file_retrieve", "The stored file", upload_id="$response.body#/upload_id"),
    "RerunUpload": link("v1_uploads_rerun_create", "Ingest it again", upload_id="$response.body#/upload_id"),
    **pipeline_links("$response.body#/pipeline_id"),
    **job_links("$response.body#/job_ids/0"),
})
declare_links("v1_uploads_rerun_create", 202, pipeline_links("$response.body#/pipeline_id"))


urlpatterns = [
    path("modules/", ModuleListView.as_view(), name="module-list"),
    path("modules/<str:key>/template/<str:target>.csv", ModuleTemplateView.as_view(), name="module-template"),
    path("years/", YearListView.as_view(), name="year-list"),
    path("years/<int:year>/", YearDetailView.as_view(), name="year-detail"),
    path("years/<int:year>/totals/", YearTotalsView.as_view(), name="year-totals"),
    path("years/<int:year>/modules/<str:module>/uploads/", UploadCreateView.as_view(), name="upload-create"),
    path("uploads/<int:upload_id>/", UploadDetailView.as_view(), name="upload-detail"),
    path("uploads/<int:upload_id>/file/", UploadFileView.as_view(), name="upload-file"),
    path("uploads/<int:upload_id>/rerun/", UploadRerunView.as_view(), name="upload-rerun"),
]
