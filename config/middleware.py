"""A clear 503 when a backing service is unreachable, instead of a 500 with a traceback.

Reached only by errors nothing closer handled: views that can degrade (throttles, the
upload dispatch) do so themselves (docs/RELIABILITY.md). DRF views answer through the
API's exception handler (``backoffice.api.errors``), where ``service_unavailable`` (which
exceptions mean PostgreSQL or Redis is unreachable) lives.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse

from backoffice.api.errors import RETRY_AFTER_SECONDS, service_unavailable

logger = logging.getLogger(__name__)


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
