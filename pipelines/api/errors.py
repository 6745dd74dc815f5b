"""Every API error is ``{"detail": str, "code": str}`` (plus ``errors`` for field errors).

One exception handler maps DRF's exceptions and the domain's ``ConflictError`` /
``UploadRejected`` onto that shape, so views raise and never build error bodies.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ObjectDoesNotExist
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from drf_spectacular.utils import OpenApiResponse
from rest_framework import exceptions, serializers, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from pipelines.services import ConflictError


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()
    code = serializers.CharField()
    # Shadows ``Serializer.errors`` on purpose: the metaclass pops declared fields.
    errors = serializers.DictField(  # type: ignore[assignment]
        required=False, help_text="Field errors of a 400, by field name."
    )
    reasons = serializers.DictField(required=False, help_text="409 on opening a year: why, per module.")


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "The object's state does not allow this."
    default_code = "conflict"


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The file is too large."
    default_code = "too_large"


_DESCRIPTIONS = {
    400: "Invalid input",
    401: "Not authenticated",
    403: "Not allowed",
    404: "Not found (or not visible to the caller)",
    409: "Conflict with the current state",
    413: "File too large",
    415: "Not a CSV file",
    429: "Throttled",
}


def error_responses(*codes: int) -> dict[int, OpenApiResponse]:
    """Schema entries for the error statuses an operation can answer (401/403/429 always)."""
    wanted = sorted({401, 403, 429, *codes})
    return {c: OpenApiResponse(ErrorSerializer, description=_DESCRIPTIONS[c]) for c in wanted}


def _first_code(codes: Any) -> str:
    if isinstance(codes, str):
        return codes
    if isinstance(codes, dict):
        for value in codes.values():
            return _first_code(value)
    if isinstance(codes, list) and codes:
        return _first_code(codes[0])
    return "invalid"


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ConflictError):
        conflict = Conflict(exc.message, exc.code)
        response = drf_exception_handler(conflict, context)
        assert response is not None
        response.data = {"detail": exc.message, "code": exc.code}
        reasons = getattr(exc, "reasons", None)  # e.g. why a year cannot open, per module
        if reasons:
            response.data["reasons"] = reasons
        return response
    elif _is_upload_rejected(exc):
        return Response(
            {"detail": str(getattr(exc, "message", exc)), "code": str(getattr(exc, "code", "rejected"))},
            status=int(getattr(exc, "status", 400)),
        )
    elif isinstance(exc, Http404 | ObjectDoesNotExist):
        # A service looked up an id the caller gave (a year, an upload): unknown → 404.
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None or not isinstance(exc, exceptions.APIException):
        return response
    if isinstance(exc, exceptions.ValidationError):
        errors = response.data if isinstance(response.data, dict) else {"non_field_errors": response.data}
        response.data = {"detail": "Invalid input.", "code": _first_code(exc.get_codes()), "errors": errors}
        return response
    detail = exc.detail
    code = _first_code(exc.get_codes())
    response.data = {"detail": str(detail if not isinstance(detail, list | dict) else response.data), "code": code}
    return response


def _is_upload_rejected(exc: Exception) -> bool:
    # ingestion is optional at import time (built in parallel); match by name and shape.
    return type(exc).__name__ == "UploadRejected" and hasattr(exc, "status")
