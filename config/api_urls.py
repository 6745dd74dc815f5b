"""The REST API: ``/api/v1/…`` plus the OpenAPI schema and its browsable UI."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.urls import include, path, re_path
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from backoffice.api.auth import TokenObtainView


@csrf_exempt
def not_found(request: HttpRequest, *args: object, **kwargs: object) -> JsonResponse:
    """Unmatched API URLs (``/jobs/-1/``) answer the API's JSON error, not Django's HTML page."""
    return JsonResponse({"detail": "Not found.", "code": "not_found"}, status=404)


urlpatterns = [
    # username + password → the user's token (curl-friendly; also `manage.py sluice_token issue`).
    path("v1/auth/token/", TokenObtainView.as_view(), name="api-token"),
    path("v1/", include("backoffice.api.urls")),
    path("v1/", include("backoffice.api.ingestion")),
    path("v1/", include("backoffice.api.sources")),
    path("v1/", include("backoffice.api.exports")),
    path("v1/", include("backoffice.api.validations")),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    re_path(r"^[\s\S]*$", not_found),  # any rest, newlines (%0A) too: never Django's HTML 404
]
