"""``GET /api/v1/pipelines/{id}/stream/``: Server-Sent Events for one pipeline.

An async Django view returning a ``StreamingHttpResponse`` over an async generator, so
under the ASGI server (uvicorn) a waiting client costs a coroutine, not a thread.

Design: PostgreSQL is the source, the channel layer the doorbell.

1. The stream joins the pipeline's group (``pipeline.<id>``) through the process's
   ``live.Hub`` -- the one channel-layer channel the WebSocket feeds share -- *before*
   its first read, so an event committed after that read rings the bell.
2. It reads ``events_after`` with the last sent ``seq`` as cursor and sends what it
   finds; that is safe because seq order equals commit order (the global
   ``EventCounter`` row lock), so nothing can appear behind the cursor.
3. It then waits for the bell (an event of the pipeline was committed and published),
   a ping or access re-check being due, or ``SLUICE_SSE_SAFETY_READ_SECONDS`` (12 s)
   without a read: the channel layer is at-most-once, so a lost message delays an
   event by at most that long, never loses it. The published message itself is not
   sent: the stored payload is (same bytes as before, same order, same replay).
   Without a channel layer (Redis unreachable when the stream opened) it falls back to
   reading every ``SLUICE_SSE_POLL_SECONDS`` (0.25 s).

Streams of one process following one pipeline from one cursor share each read (see
``_shared_read``): N clients of a pipeline cost one query per event, not N.

Each frame is ``id: <seq>`` / ``event: <type>`` / ``data: <the same payload as the
WebSocket>``; a reconnecting browser sends ``Last-Event-ID`` and resumes exactly after
it. The stream ends once the pipeline is done and every event up to that point was
sent, or within ``SLUICE_LIVE_ACCESS_RECHECK_SECONDS`` (3 s) of the user losing access
to it.

DRF views are synchronous, so authentication and the viewer check are done here by
hand with the same rules (token header, else session; ``backoffice.access``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import re
import time
import weakref
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase

from backoffice import access, live
from backoffice.api.auth import aauthenticate
from pipelines import publish, selectors
from pipelines.models import DONE_STATUSES, Pipeline

logger = logging.getLogger(__name__)

BATCH = 500

ReadResult = tuple[bool, list[dict[str, Any]]]


def _poll_seconds() -> float:
    return settings.SLUICE_SSE_POLL_SECONDS


def _safety_seconds() -> float:
    return settings.SLUICE_SSE_SAFETY_READ_SECONDS


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


# Streams of one user on one pipeline share a re-check for this long (as the sockets do,
# ``live.RECHECK_CACHE_SECONDS``): one check per user and pipeline, not per stream.
_rechecks: dict[tuple[Any, str], tuple[float, bool]] = {}


def _recently_visible(user: Any, pipeline_id: Any) -> bool | None:
    """A re-check's answer for this user and pipeline younger than the cache, else ``None``."""
    cached = _rechecks.get((getattr(user, "pk", None), str(pipeline_id)))
    if cached is not None and time.monotonic() - cached[0] < live.RECHECK_CACHE_SECONDS:
        return cached[1]
    return None


def _still_visible(user: Any, pipeline_id: Any) -> bool:
    """Re-read the user (deactivated? role or grant removed?) and check again."""
    close_old_connections()
    try:
        visible = _visible_module(access.reload(user), pipeline_id)[0]
    finally:
        close_old_connections()  # hand the pooled connection back (see ``_read``)
    if len(_rechecks) > 10_000:
        _rechecks.clear()
    _rechecks[(getattr(user, "pk", None), str(pipeline_id))] = (time.monotonic(), visible)
    return visible


def _read(pipeline_id: Any, after: int) -> ReadResult:
    """(pipeline done, events after ``after``).

    The status is read *before* the events: every event of the transition that made the
    pipeline done committed with it, so it is in this batch or an earlier one.
    """
    # Threads of the shared executor keep their connection between reads; drop it if
    # it broke or outlived CONN_MAX_AGE (Django's request signals do not run here).
    close_old_connections()
    try:
        status = Pipeline.objects.filter(pk=pipeline_id).values_list("status", flat=True).first()
        batch = selectors.events_after(after_seq=after, pipeline_id=pipeline_id, limit=BATCH)
    finally:
        # With the web process's pool (CONN_MAX_AGE=0) this hands the connection back
        # between reads instead of holding a pool slot per idle executor thread.
        close_old_connections()
    return status is None or status in DONE_STATUSES, batch


def frame(event: dict[str, Any]) -> str:
    return f"id: {event['seq']}\nevent: {event['type']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n"


# --- the doorbell ------------------------------------------------------------------------

# Tickets order "the bell rang" against "a read started" within the event loop's thread
# (``_shared_read`` needs it; clocks can tie, a counter cannot).
_tickets = itertools.count(1)


class _Bell:
    """A ``live.Hub`` subscriber that only wakes its stream (the payload comes from the database)."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        # Ticket of the last ring (or of joining the group): a read that started after
        # it sees every event committed before the ring.
        self.rung = next(_tickets)

    def deliver(self, event: dict[str, Any], text: str) -> None:
        self.rung = next(_tickets)
        self.event.set()

    async def wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, seconds)):
                await self.event.wait()


class _Read:
    def __init__(self, future: asyncio.Future[ReadResult]) -> None:
        self.ticket = next(_tickets)
        self.future = future


# Reads in flight per loop, by (pipeline, cursor).
_reads: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, int], _Read]] = (
    weakref.WeakKeyDictionary()
)


async def _shared_read(pipeline_id: Any, after: int, rung: int) -> ReadResult:
    """``_read``, shared by the streams of this process woken by the same events.

    A stream may join a read in flight only if that read started after the stream's
    last ring (``ticket > rung``): every event that rang was committed before the ring,
    hence before the read's query, hence is in it. An older read might miss it and the
    stream would sleep on an event it was told about.
    """
    loop = asyncio.get_running_loop()
    reads = _reads.setdefault(loop, {})
    key = (str(pipeline_id), after)
    current = reads.get(key)
    if current is None or current.ticket <= rung:
        # thread_sensitive=False: a pool of threads serves every stream's reads, instead
        # of one dedicated thread (and one DB connection) per connected client.
        future = asyncio.ensure_future(sync_to_async(_read, thread_sensitive=False)(pipeline_id, after))
        current = reads[key] = _Read(future)

        def forget(_: Any, read: _Read = current) -> None:
            if reads.get(key) is read:
                del reads[key]

        future.add_done_callback(forget)
    # shield: a client leaving must not cancel the read the other streams wait on.
    return await asyncio.shield(current.future)


async def _join(group: str, bell: _Bell) -> bool:
    try:
        await live.hub().join(group, bell)
    except Exception:
        logger.warning("SSE stream could not join %s; reading every %ss instead", group, _poll_seconds(),
                       exc_info=True)
        return False
    return True


async def events_stream(pipeline_id: Any, after: int, user: Any) -> AsyncIterator[str]:
    bell = _Bell()
    group = publish.pipeline_group(str(pipeline_id))
    # Join before the first read (step 1 of the module docstring).
    joined = await _join(group, bell)
    bell.rung = next(_tickets)
    idle_read = _safety_seconds() if joined else _poll_seconds()
    try:
        # Tell EventSource to reconnect quickly; Last-Event-ID makes the reconnect lossless.
        yield "retry: 1000\n\n"
        cursor = after
        now = time.monotonic()
        last_sent = now
        next_check = now + _access_seconds()
        next_read = now  # read at once: the history after ``after``
        while True:
            if time.monotonic() >= next_check:
                # Access revoked since the stream began: end it. The browser's reconnect
                # then gets the 403/404 and EventSource stops.
                visible = _recently_visible(user, pipeline_id)
                if visible is None:
                    visible = await sync_to_async(_still_visible, thread_sensitive=False)(user, pipeline_id)
                if not visible:
                    yield ": access revoked\n\n"
                    return
                next_check = time.monotonic() + _access_seconds()
            if bell.event.is_set() or time.monotonic() >= next_read:
                bell.event.clear()
                done, batch = await _shared_read(pipeline_id, cursor, bell.rung)
                for event in batch:
                    yield frame(event)
                    cursor = int(event["seq"])
                    last_sent = time.monotonic()
                if len(batch) == BATCH:
                    continue
                if done:
                    return
                next_read = time.monotonic() + idle_read
            if time.monotonic() - last_sent >= _ping_seconds():
                yield ": ping\n\n"
                last_sent = time.monotonic()
            await bell.wait(min(next_read, next_check, last_sent + _ping_seconds()) - time.monotonic())
    finally:
        if joined:
            with contextlib.suppress(Exception):  # Redis gone: the hub's membership is all that is left
                await live.hub().leave(group, bell)


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
    # Authentication and the check above ran in this request's own thread, whose
    # connection Django returns only when the request finishes -- for a stream, when the
    # client leaves. Hand it back now: with the web process's pool (10 connections) the
    # 11th open stream made every request wait 10 s and fail (bench/ws_latency.py, 50 SSE
    # clients). The stream's reads take a connection only while they run.
    await sync_to_async(close_old_connections)()
    response = StreamingHttpResponse(events_stream(pipeline_id, after, user), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: do not buffer the stream
    return response
