"""Every API error is ``{"detail": str, "code": str}`` (plus ``errors`` for field errors).

One exception handler maps DRF's exceptions and the domain's exceptions onto that shape,
so views raise and never build error bodies:

- ``ConflictError`` (and its ``YearIncomplete``, ``IllegalTransition``) → 409 with its
  code (``illegal_transition``: a move the transition table forbids);
- any other ``DomainError`` (``pipelines.errors``: ``UploadRejected``, ``FileRejected``,
  ``UnknownModule``, ``UnknownJobType``) → its ``status`` and ``code``;
- Django's ``ValidationError`` → 400 ``invalid``; ``DoesNotExist`` / ``Http404`` → 404;
- anything else → a JSON 500 ``server_error`` whose ``request_id`` (also the
  ``X-Request-ID`` header) is logged with the traceback, so a user's report finds the log line.

``ApiErrorMiddleware`` gives the same 500 for the plain Django views under ``/api/``
(the SSE stream), which DRF's handler never sees.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

import kombu.exceptions
import redis.exceptions
from django.core.exceptions import ObjectDoesNotExist
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.utils.deprecation import MiddlewareMixin
from drf_spectacular.utils import OpenApiResponse
from rest_framework import exceptions, serializers, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback

from ingestion.storage import StorageError
from pipelines.errors import ConflictError, DomainError

logger = logging.getLogger("sluice.api")

REQUEST_ID_HEADER = "X-Request-ID"
# A caller's own id is reused (so a proxy's id links its log to ours) only if it is short
# and plain: it goes into a header and a log line.
_CALLER_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")

RETRY_AFTER_SECONDS = 5


def service_unavailable(exc: Exception) -> tuple[str, str] | None:
    """PostgreSQL, Redis or the file storage unreachable: the (code, detail) of a 503, else None.

    Used here, by the 503 middleware (``config.middleware``) and by the body limit
    (``config.body_limit``), so every surface names the same codes.
    """
    if isinstance(exc, OperationalError | InterfaceError):
        return "database_unavailable", "The database is unreachable or busy; try again in a few seconds."
    if isinstance(exc, StorageError):
        return "storage_unavailable", "The file storage is unreachable; try again in a few seconds."
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError
                  | kombu.exceptions.OperationalError):
        return "redis_unavailable", "The message broker (Redis) is unreachable; try again in a few seconds."
    return None


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()
    code = serializers.CharField()
    # Shadows ``Serializer.errors`` on purpose: the metaclass pops declared fields.
    errors = serializers.DictField(  # type: ignore[assignment]
        required=False, help_text="Field errors of a 400, by field name."
    )
    reasons = serializers.DictField(required=False, help_text="409 on opening a year: why, per module.")
    request_id = serializers.CharField(
        required=False, help_text="500 only: the id of the logged error (also the X-Request-ID header)."
    )


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
    500: "Unexpected error (JSON, with the request id that is in the log)",
    503: "A backing service (PostgreSQL or Redis) is unreachable; retry after Retry-After seconds",
}


def error_responses(*codes: int) -> dict[int, OpenApiResponse]:
    """Schema entries for the error statuses an operation can answer (401/403/429/500/503 always:
    any request may be unauthenticated, throttled, hit a bug or find PostgreSQL or Redis down)."""
    wanted = sorted({401, 403, 429, 500, 503, *codes})
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


def request_id(request: HttpRequest | None) -> str:
    given = request.headers.get(REQUEST_ID_HEADER, "") if request is not None else ""
    return given if _CALLER_REQUEST_ID.match(given) else uuid.uuid4().hex


def server_error(request: HttpRequest | None, exc: BaseException) -> tuple[dict[str, str], dict[str, str]]:
    """Log an unexpected exception under a request id; the body and headers of the 500."""
    rid = request_id(request)
    method, path = (request.method, request.get_full_path()) if request is not None else ("", "")
    logger.error(
        "unhandled %s on %s %s (request id %s)", type(exc).__name__, method, path, rid,
        exc_info=(type(exc), exc, exc.__traceback__), extra={"request_id": rid},
    )
    body = {
        "detail": f"Internal server error; quote request id {rid} when reporting it.",
        "code": "server_error",
        "request_id": rid,
    }
    return body, {REQUEST_ID_HEADER: rid}


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
    elif isinstance(exc, DomainError):
        set_rollback()
        return Response({"detail": exc.message, "code": exc.code}, status=exc.status)
    elif isinstance(exc, DjangoValidationError):
        # e.g. a model field refusing a value a filter let through: the caller's input.
        exc = exceptions.ValidationError({"non_field_errors": exc.messages}, "invalid")
    elif isinstance(exc, Http404 | ObjectDoesNotExist):
        # A service looked up an id the caller gave (a year, an upload): unknown → 404.
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None or not isinstance(exc, exceptions.APIException):
        set_rollback()
        if (unavailable := service_unavailable(exc)) is not None:
            # PostgreSQL, Redis or the file storage unreachable: a 503 the client may retry, not a 500.
            logger.warning("API answered 503 (%s): %s", unavailable[0], exc)
            return Response({"detail": unavailable[1], "code": unavailable[0]}, status=503,
                            headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        body, headers = server_error(context.get("request"), exc)
        return Response(body, status=status.HTTP_500_INTERNAL_SERVER_ERROR, headers=headers)
    if isinstance(exc, exceptions.ValidationError):
        errors = response.data if isinstance(response.data, dict) else {"non_field_errors": response.data}
        response.data = {"detail": "Invalid input.", "code": _first_code(exc.get_codes()), "errors": errors}
        return response
    detail = exc.detail
    code = _first_code(exc.get_codes())
    response.data = {"detail": str(detail if not isinstance(detail, list | dict) else response.data), "code": code}
    return response


class ApiErrorMiddleware(MiddlewareMixin):
    """A JSON 500 (with a logged request id) for any exception a view under ``/api/`` lets out.

    DRF views never get here (their handler above answers); this covers the plain Django
    views there (the async SSE view: ``MiddlewareMixin`` keeps the chain async-capable),
    so no client of the API ever gets Django's HTML error page.
    """

    def process_exception(self, request: HttpRequest, exc: Exception) -> HttpResponse | None:
        if not request.path.startswith("/api/"):
            return None
        body, headers = server_error(request, exc)
        return JsonResponse(body, status=500, headers=headers)


class SingleValuedQueryMiddleware(MiddlewareMixin):
    """A query parameter given twice under ``/api/`` is a 400 naming it.

    The document types every query parameter as one value (no arrays): ``?year=1&year=x``
    is not a valid request, yet Django keeps the last value silently (found by
    schemathesis, issue 18). One check here covers every view, DRF or plain.
    """

    def process_request(self, request: HttpRequest) -> HttpResponse | None:
        if not request.path.startswith("/api/"):
            return None
        repeated = sorted(name for name, values in request.GET.lists() if len(values) > 1)
        if not repeated:
            return None
        return JsonResponse({
            "detail": "Invalid input.", "code": "invalid",
            "errors": {name: ["Given more than once; this parameter takes one value."] for name in repeated},
        }, status=400)
