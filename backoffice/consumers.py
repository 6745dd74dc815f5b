"""Live feeds over WebSockets: authenticate, join groups, forward small events.

Protocol (documented for clients in docs/LIVE.md):

- connect without ``?after=``: one ``{"type": "snapshot", "seq": S, ...}``, then every
  live event with ``seq > S``;
- connect with ``?after=N``: every stored event of the feed with ``seq > N``, then
  ``{"type": "replayed", "seq": M}``, then live events with ``seq > M``. When replay
  is impossible (too far behind, purged, reset) a snapshot is sent instead;
- client → server ``{"action": "resync"}`` sends a fresh snapshot (gap detected).

The seam between stored and live events: the socket joins its groups *before* reading
the database, buffers live events while reading, then flushes the buffer dropping
``seq <= `` what the read covered. Global ``seq`` is commit-ordered (``EventCounter``),
so every event is either in the read or committed (and published) after it.
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

from backoffice import live

logger = logging.getLogger(__name__)

# channels-redis drops a channel from its groups after ``group_expiry`` (1 day by
# default) unless re-added: a console left open over a weekend would go silent.
GROUP_REFRESH_SECONDS = 3600.0
LIVE_EVENT_TYPES = frozenset({"job.update", "pipeline.update"})


class LiveConsumer(AsyncWebsocketConsumer):
    feed: live.Feed = "console"
    refresh_seconds: float = GROUP_REFRESH_SECONDS

    access: live.Access
    pipeline_id: str | None = None
    year: int | None = None

    async def connect(self) -> None:
        self.syncing = True
        self.buffer: list[dict[str, Any]] = []
        self.sync_task: asyncio.Task[None] | None = None
        self.refresh_task: asyncio.Task[None] | None = None
        kwargs = self.scope["url_route"]["kwargs"]
        self.pipeline_id = str(kwargs["pipeline_id"]) if "pipeline_id" in kwargs else None
        self.year = int(kwargs["year"]) if "year" in kwargs else None
        self.access = await self._resolve_access()
        # Accept, then close with a code: a browser cannot see why a refused handshake
        # failed, but it can read a close code and stop retrying.
        await self.accept()
        if not self.access.allowed:
            await self.close(code=self.access.close_code)
            return
        # Join first, read the database second: see the module docstring.
        for group in self.access.groups:
            await self.channel_layer.group_add(group, self.channel_name)
        self.groups = list(self.access.groups)
        self.sync_task = asyncio.create_task(self._catch_up(after=self._after_param()))
        self.refresh_task = asyncio.create_task(self._refresh_groups())

    async def disconnect(self, code: int) -> None:
        for task in (getattr(self, "sync_task", None), getattr(self, "refresh_task", None)):
            if task is not None:
                task.cancel()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            request = json.loads(text_data or "{}")
        except ValueError:
            return
        if isinstance(request, dict) and request.get("action") == "resync" and self.access.allowed:
            if self.sync_task is not None:
                self.sync_task.cancel()
            self.syncing = True
            self.buffer = []
            self.sync_task = asyncio.create_task(self._catch_up(after=None))

    # --- group messages (type "job.update" / "pipeline.update") -----------------------

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels runs ``close_old_connections`` in the database thread before every
        # handler: one thread hop per event per socket, serialised on one thread. The
        # forwarders never touch the database (and ``database_sync_to_async`` closes
        # stale connections itself), so live events skip it: with 200 sockets that hop
        # was the whole latency budget.
        if message["type"] in LIVE_EVENT_TYPES:
            await self._forward(message)
            return
        await super().dispatch(message)

    async def job_update(self, event: dict[str, Any]) -> None:
        await self._forward(event)

    async def pipeline_update(self, event: dict[str, Any]) -> None:
        await self._forward(event)

    async def _forward(self, event: dict[str, Any]) -> None:
        # The layer hands the *same* dict to every local socket: never mutate it.
        if not live.visible(self.access.modules, event):
            return
        if self.syncing:
            self.buffer.append(event)
            return
        await self.send(text_data=_encode(event))

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
            # Drain until empty with no await between the last check and going live,
            # so a live event can neither be lost nor overtake the buffer.
            while self.buffer:
                batch, self.buffer = self.buffer, []
                for event in sorted(batch, key=lambda e: int(e["seq"])):
                    if int(event["seq"]) > upto:
                        await self.send(text_data=_encode(event))
            self.syncing = False
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("live sync failed", extra={"feed": self.feed, "pipeline_id": self.pipeline_id})
            await self.close(code=1011)

    async def _send_stored(self, after: int | None) -> int:
        kwargs: dict[str, Any] = {
            "feed": self.feed, "modules": self.access.modules, "pipeline_id": self.pipeline_id, "year": self.year,
        }
        if after is not None:
            events = await database_sync_to_async(live.replay)(after=after, **kwargs)
            if events is not None:
                for event in events:
                    await self.send(text_data=_encode(event))
                upto = max([after, *(int(e["seq"]) for e in events)])
                await self.send(text_data=_encode({"type": "replayed", "seq": upto, "count": len(events)}))
                return upto
        snap = await database_sync_to_async(live.snapshot)(**kwargs)
        await self.send(text_data=_encode(snap))
        return int(snap["seq"])

    async def _refresh_groups(self) -> None:
        """Re-join the groups before they expire, and drop the socket if access was revoked."""
        while True:
            await asyncio.sleep(self.refresh_seconds)
            access = await self._resolve_access()
            if not access.allowed:
                await self.close(code=access.close_code)
                return
            self.access = access
            for group in access.groups:
                with contextlib.suppress(Exception):  # Redis hiccup: try again next round
                    await self.channel_layer.group_add(group, self.channel_name)


# The channel layer hands one dict object to every socket of a process: encode it
# once, not once per socket (at 200 sockets json.dumps alone took milliseconds).
_ENCODED: collections.deque[tuple[dict[str, Any], str]] = collections.deque(maxlen=16)


def _encode(message: dict[str, Any]) -> str:
    for obj, text in _ENCODED:
        if obj is message:
            return text
    text = json.dumps(message, separators=(",", ":"))
    _ENCODED.append((message, text))
    return text


class ConsoleConsumer(LiveConsumer):
    feed = "console"


class PipelineConsumer(LiveConsumer):
    feed = "pipeline"


class YearConsumer(LiveConsumer):
    feed = "year"
