"""Live feeds over WebSockets: authenticate, join groups, forward small events.

Protocol (documented for clients in docs/LIVE.md):

- connect without ``?after=``: one ``{"type": "snapshot", "seq": S, ...}``, then every
  live event with ``seq > S``;
- connect with ``?after=N``: every stored event of the feed with ``seq > N``, then
  ``{"type": "replayed", "seq": M}``, then live events with ``seq > M``. When replay
  is impossible (too far behind, purged, reset) a snapshot is sent instead;
- client → server ``{"action": "resync"}`` sends a fresh snapshot (gap detected), at
  most one per ``SLUICE_WS_RESYNC_MIN_SECONDS``: requests in between fold into one
  snapshot at the end of the interval (each is a database read).

The seam between stored and live events: the socket joins its groups *before* reading
the database, buffers live events while reading, then flushes the buffer dropping
``seq <= `` what the read covered. Global ``seq`` is commit-ordered (``EventCounter``),
so every event is either in the read or committed (and published) after it.

Sockets join groups through the process's ``live.Hub`` (one channel-layer channel per
process, see there why) rather than a channel each.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from backoffice import live

logger = logging.getLogger(__name__)

# channels-redis drops a channel from its groups after ``group_expiry`` (1 day by
# default) unless re-added: a console left open over a weekend would go silent.
GROUP_REFRESH_SECONDS = 3600.0
# A socket this far behind (a stalled browser) is closed; it reconnects with ?after=
# and catches up from the database instead of holding the server's memory.
OUTBOX_MAX = 5000
CLOSE_TOO_SLOW = 4008
CLOSE_NOT_FOUND = 4404


# The ASGI server's own ``send``, kept in the scope by ``ServerSendMiddleware``.
SERVER_SEND = "sluice.server_send"


class ServerSendMiddleware:
    """Keep the ASGI server's ``send`` in the scope, for the live writers (config/asgi.py).

    Channels' session middleware wraps ``send`` to save the session on HTTP responses; on
    a socket it only inspects the lazy session on every frame. At 200 sockets that was
    ~10 % of the server's fan-out CPU (py-spy, docs/LIVE.md), so live frames skip it and
    the consumer's ``send`` layers; the snapshot, replay and close go the usual way.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        return await self.app({**scope, SERVER_SEND: send}, receive, send)


class LiveConsumer(AsyncWebsocketConsumer):
    feed: live.Feed = "console"
    refresh_seconds: float = GROUP_REFRESH_SECONDS
    # No channel per socket: events arrive through the process hub (an alias that is
    # not configured gives the consumer no channel layer of its own).
    channel_layer_alias = "sluice-live-sockets-use-the-hub"

    access: live.Access
    pipeline_id: str | None = None
    year: int | None = None

    async def connect(self) -> None:
        self.syncing = True
        # The seq the last snapshot/replay covered: see ``deliver``.
        self.covered = 0
        self.buffer: list[dict[str, Any]] = []
        # Frames for the writer, and the future it sleeps on when there are none. A plain
        # deque and one future, not an asyncio.Queue: at 200 sockets the queue's own
        # bookkeeping was ~8 % of the fan-out CPU (py-spy, docs/LIVE.md).
        self.outbox: collections.deque[str] = collections.deque()
        self.outbox_ready: asyncio.Future[None] | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.sync_task: asyncio.Task[None] | None = None
        self.resync_later: asyncio.Task[None] | None = None
        self.last_resync = float("-inf")
        self.joined: list[str] = []
        kwargs = self.scope["url_route"]["kwargs"]
        self.pipeline_id = str(kwargs["pipeline_id"]) if "pipeline_id" in kwargs else None
        self.year = int(kwargs["year"]) if "year" in kwargs else None
        self.language = live.socket_language(self.scope)
        self.access = await self._resolve_access()
        # Accept, then close with a code: a browser cannot see why a refused handshake
        # failed, but it can read a close code and stop retrying.
        await self.accept()
        if not self.access.allowed:
            await self.close(code=self.access.close_code)
            return
        # Join first, read the database second: see the module docstring.
        hub = live.hub()
        for group in self.access.groups:
            await hub.join(group, self)
            self.joined.append(group)
        self.sync_task = asyncio.create_task(self._catch_up(after=self._after_param()))
        self.tasks = [
            asyncio.create_task(self._write()),
            asyncio.create_task(self._refresh_groups()),
            asyncio.create_task(self._watch_access()),
        ]

    async def disconnect(self, code: int) -> None:
        for task in [*getattr(self, "tasks", []), getattr(self, "sync_task", None),
                     getattr(self, "resync_later", None)]:
            if task is not None:
                task.cancel()
        hub = live.hub()
        for group in getattr(self, "joined", []):
            await hub.leave(group, self)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            request = json.loads(text_data or "{}")
        except ValueError:
            return
        if isinstance(request, dict) and request.get("action") == "resync" and self.access.allowed:
            wait = self.last_resync + settings.SLUICE_WS_RESYNC_MIN_SECONDS - asyncio.get_running_loop().time()
            if wait <= 0:
                self._resync()
            elif self.resync_later is None:
                self.resync_later = asyncio.create_task(self._resync_after(wait))
            # else: a snapshot is already due at the end of the interval; it answers this one too.

    def _resync(self) -> None:
        """Send a fresh snapshot (the client replaces what it holds with it)."""
        self.last_resync = asyncio.get_running_loop().time()
        if self.sync_task is not None:
            self.sync_task.cancel()
        self.syncing = True
        self.buffer = []
        self.sync_task = asyncio.create_task(self._catch_up(after=None))

    async def _resync_after(self, wait: float) -> None:
        await asyncio.sleep(wait)
        self.resync_later = None
        self._resync()

    # --- events from the hub ----------------------------------------------------------

    def deliver(self, event: dict[str, Any], text: str) -> None:
        """Called by the hub for each event of a joined group (same dict for every socket)."""
        if not live.visible(self.access.modules, event):
            return
        if int(event["seq"]) <= self.covered:
            # Committed before the snapshot/replay read (so sent with it) but published
            # after it: publishing follows the commit asynchronously, and a busy
            # publisher can deliver an event after the socket went live. Every event of
            # seq <= covered was committed before the read, so nothing is lost here.
            return
        if self.syncing:
            self.buffer.append(event)
        elif len(self.outbox) >= OUTBOX_MAX:
            self.syncing = True  # stop queueing; the close below makes the client replay
            asyncio.get_running_loop().create_task(self.close(code=CLOSE_TOO_SLOW))
        else:
            self.outbox.append(live.localized_text(event, text, self.language))
            ready = self.outbox_ready
            if ready is not None and not ready.done():
                ready.set_result(None)

    async def _write(self) -> None:
        # One writer per socket keeps its events in order; a slow socket delays only itself.
        send = self.scope.get(SERVER_SEND) or self.base_send
        outbox = self.outbox
        loop = asyncio.get_running_loop()
        while True:
            while outbox:
                await send({"type": "websocket.send", "text": outbox.popleft()})
            self.outbox_ready = loop.create_future()
            await self.outbox_ready

    # --- internals --------------------------------------------------------------------

    def _after_param(self) -> int | None:
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        raw = (query.get("after") or [""])[0]
        try:
            return int(raw) if raw != "" else None
        except ValueError:
            return None

    async def _resolve_access(self) -> live.Access:
        return await database_sync_to_async(live.resolve_access)(
            self.scope.get("user"), feed=self.feed, pipeline_id=self.pipeline_id, year=self.year
        )

    async def _catch_up(self, *, after: int | None) -> None:
        """Snapshot or replay, then flush what arrived meanwhile and go live."""
        try:
            upto = await self._send_stored(after)
            self.covered = upto
            # Drain until empty with no await between the last check and going live,
            # so a live event can neither be lost nor overtake the buffer.
            while self.buffer:
                batch, self.buffer = self.buffer, []
                for event in sorted(batch, key=lambda e: int(e["seq"])):
                    if int(event["seq"]) > upto:
                        await self.send(text_data=json.dumps(live.localized(event, self.language),
                                                             separators=(",", ":")))
            self.syncing = False
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("live sync failed", extra={"feed": self.feed, "pipeline_id": self.pipeline_id})
            await self.close(code=1011)

    async def _send_stored(self, after: int | None) -> int:
        # Anything still queued for the writer predates this read: the client drops it
        # by pipeline_seq if it arrives after the snapshot.
        kwargs: dict[str, Any] = {
            "feed": self.feed, "modules": self.access.modules, "pipeline_id": self.pipeline_id, "year": self.year,
        }
        if after is not None:
            events = await database_sync_to_async(live.read_localized)(live.replay, self.language, after=after,
                                                                       **kwargs)
            if events is not None:
                for event in events:
                    await self.send(text_data=json.dumps(event, separators=(",", ":")))
                upto = max([after, *(int(e["seq"]) for e in events)])
                await self.send(text_data=json.dumps({"type": "replayed", "seq": upto, "count": len(events)}))
                return upto
        snap = await database_sync_to_async(live.read_localized)(live.snapshot, self.language, **kwargs)
        await self.send(text_data=json.dumps(snap, separators=(",", ":")))
        return int(snap["seq"])

    async def _watch_access(self) -> None:
        """Re-read the user every ``SLUICE_LIVE_ACCESS_RECHECK_SECONDS`` (3 s): a user
        deactivated or stripped of a role stops receiving within it; a changed module
        scope gets a fresh snapshot."""
        seconds = float(settings.SLUICE_LIVE_ACCESS_RECHECK_SECONDS)
        while True:
            await asyncio.sleep(seconds)
            user = self.scope.get("user")
            where: dict[str, Any] = {"feed": self.feed, "pipeline_id": self.pipeline_id, "year": self.year}
            try:
                # A fresh answer for this user and feed is taken here, in the loop: 200
                # sockets of one user cost one thread hop and query per second, not 66.
                access = live.cached_access(user, **where) or await database_sync_to_async(live.recheck_access)(
                    user, **where
                )
            except Exception:
                logger.exception("live access re-check failed")  # database blip: next round
                continue
            if not access.allowed:
                self.syncing = True  # deliver nothing more while the close goes out
                await self.close(code=access.close_code)
                return
            if access.modules != self.access.modules:
                # What the client holds was narrowed by the old scope: replace it.
                self.access = access
                self._resync()

    async def _refresh_groups(self) -> None:
        """Re-join the groups before they expire (access is re-checked by ``_watch_access``)."""
        while True:
            await asyncio.sleep(self.refresh_seconds)
            for group in self.joined:
                with contextlib.suppress(Exception):  # Redis hiccup: try again next round
                    await live.hub().refresh(group)


class NotFoundConsumer(AsyncWebsocketConsumer):
    """Any other ``/ws/…`` path: accepted only to be closed with a code the client can read."""

    async def connect(self) -> None:
        await self.accept()
        await self.close(code=CLOSE_NOT_FOUND)


class ConsoleConsumer(LiveConsumer):
    feed = "console"


class PipelineConsumer(LiveConsumer):
    feed = "pipeline"


class YearConsumer(LiveConsumer):
    feed = "year"
