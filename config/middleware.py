"""A clear 503 when a backing service is unreachable, instead of a 500 with a traceback.

Reached only by errors nothing closer handled: views that can degrade (throttles, the
upload dispatch) do so themselves (docs/RELIABILITY.md). DRF views answer through the
API's exception handler (``pipelines.api.errors``), which uses ``service_unavailable``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5


def service_unavailable(exc: Exception) -> tuple[str, str] | None:
    if isinstance(exc, OperationalError | InterfaceError):
        return "database_unavailable", "The database is unreachable or busy; try again in a few seconds."
    import kombu.exceptions
    import redis.exceptions

    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError
                  | kombu.exceptions.OperationalError):
        return "redis_unavailable", "The message broker (Redis) is unreachable; try again in a few seconds."
    return None


class ServiceUnavailableMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exc: Exception) -> HttpResponse | None:
        found = service_unavailable(exc)
        if found is None:
            return None
        code, detail = found
        logger.warning("%s %s answered 503 (%s): %s", request.method, request.path, code, exc)
        response = JsonResponse({"detail": detail, "code": code}, status=503)
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
