"""``GET /api/v1/pipelines/{id}/stream/``: Server-Sent Events for one pipeline.

An async Django view returning a ``StreamingHttpResponse`` over an async generator, so
under the ASGI server (uvicorn) a waiting client costs a coroutine, not a thread.

Design: PostgreSQL is the source. The stream polls ``events_after`` with the last sent
``seq`` as cursor; that is safe because seq order equals commit order (the global
``EventCounter`` row lock), so nothing can appear behind the cursor. Each frame is
``id: <seq>`` / ``event: <type>`` / ``data: <the same payload as the WebSocket>``; a
reconnecting browser sends ``Last-Event-ID`` and resumes exactly after it. The stream
ends once the pipeline is done and every event up to that point was sent, or within
``SLUICE_LIVE_ACCESS_RECHECK_SECONDS`` (3 s) of the user losing access to it.

DRF views are synchronous, so authentication and the viewer check are done here by
hand with the same rules (token header, else session; ``backoffice.access``).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase

from backoffice import access
from backoffice.api.auth import aauthenticate
from pipelines import selectors
from pipelines.models import DONE_STATUSES, Pipeline

BATCH = 500


def _poll_seconds() -> float:
    return settings.SLUICE_SSE_POLL_SECONDS


def _ping_seconds() -> float:
    return settings.SLUICE_SSE_PING_SECONDS


def _error(status: int, detail: str, code: str, **headers: str) -> HttpResponse:
    response = JsonResponse({"detail": detail, "code": code}, status=status)
    for key, value in headers.items():
        response[key] = value
    return response


def _visible_module(user: Any, pipeline_id: Any) -> tuple[bool, bool]:
    """(exists and visible, user may view at all)."""
    if not access.can_view(user):
        return False, False
    visible = access.filter_pipelines(Pipeline.objects.filter(pk=pipeline_id), user).exists()
    return visible, True


def _access_seconds() -> float:
    return float(settings.SLUICE_LIVE_ACCESS_RECHECK_SECONDS)


def _still_visible(user: Any, pipeline_id: Any) -> bool:
    """Re-read the user (deactivated? role or grant removed?) and check again."""
    close_old_connections()
    return _visible_module(access.reload(user), pipeline_id)[0]


def _read(pipeline_id: Any, after: int) -> tuple[bool, list[dict[str, Any]]]:
    """(pipeline done, events after ``after``).

    The status is read *before* the events: every event of the transition that made the
    pipeline done committed with it, so it is in this batch or an earlier one.
    """
    # Threads of the shared executor keep their connection between polls; drop it if
    # it broke or outlived CONN_MAX_AGE (Django's request signals do not run here).
    close_old_connections()
    try:
        status = Pipeline.objects.filter(pk=pipeline_id).values_list("status", flat=True).first()
        batch = selectors.events_after(after_seq=after, pipeline_id=pipeline_id, limit=BATCH)
    finally:
        # With the web process's pool (CONN_MAX_AGE=0) this hands the connection back
        # between polls instead of holding a pool slot per idle executor thread.
        close_old_connections()
    return status is None or status in DONE_STATUSES, batch


def frame(event: dict[str, Any]) -> str:
    return f"id: {event['seq']}\nevent: {event['type']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n"


async def events_stream(pipeline_id: Any, after: int, user: Any) -> AsyncIterator[str]:
    cursor = after
    last_sent = last_checked = time.monotonic()
    # Tell EventSource to reconnect quickly; Last-Event-ID makes the reconnect lossless.
    yield "retry: 1000\n\n"
    while True:
        if time.monotonic() - last_checked >= _access_seconds():
            # Access revoked since the stream began: end it. The browser's reconnect
            # then gets the 403/404 and EventSource stops.
            if not await sync_to_async(_still_visible, thread_sensitive=False)(user, pipeline_id):
                yield ": access revoked\n\n"
                return
            last_checked = time.monotonic()
        # thread_sensitive=False: a pool of threads serves every stream's polls, instead
        # of one dedicated thread (and one DB connection) per connected client.
        done, batch = await sync_to_async(_read, thread_sensitive=False)(pipeline_id, cursor)
        for event in batch:
            yield frame(event)
            cursor = int(event["seq"])
            last_sent = time.monotonic()
        if len(batch) == BATCH:
            continue
        if done:
            return
        if time.monotonic() - last_sent >= _ping_seconds():
            yield ": ping\n\n"
            last_sent = time.monotonic()
        await asyncio.sleep(_poll_seconds())


_DIGITS = re.compile(r"[0-9]+")


def _after(request: HttpRequest) -> int | None:
    """The seq to resume after: ``Last-Event-ID`` wins over ``?after=``, and each one given
    must be a non-negative integer in digits (``int()`` would also take `` 5``, ``+5``, ``5_0``)."""
    given = [v for v in (request.headers.get("Last-Event-ID"), request.GET.get("after")) if v is not None]
    if not all(_DIGITS.fullmatch(v) for v in given):
        return None
    return int(given[0]) if given else 0


async def pipeline_stream(request: HttpRequest, pipeline_id: Any) -> HttpResponseBase:
    if request.method != "GET":
        return _error(405, f'Method "{request.method}" not allowed.', "method_not_allowed", Allow="GET")
    user, _ = await aauthenticate(request)
    if user is None:
        return _error(
            401, "Authentication credentials were not provided or are invalid.", "not_authenticated",
            **{"WWW-Authenticate": "Token"},
        )
    visible, may_view = await sync_to_async(_visible_module)(user, pipeline_id)
    if not may_view:
        return _error(403, "You need the viewer or operator role.", "permission_denied")
    if not visible:
        return _error(404, "No such pipeline.", "not_found")
    after = _after(request)
    if after is None:
        return _error(400, "Last-Event-ID / after must be a non-negative integer.", "invalid")
    response = StreamingHttpResponse(events_stream(pipeline_id, after, user), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: do not buffer the stream
    return response
