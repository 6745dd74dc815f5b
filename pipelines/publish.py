"""Fire-and-forget fan-out of committed events to the channel layer.

Why a background thread: ``async_to_sync`` from a worker would build an event loop (and
new Redis connections) per call, and a slow Redis would stall the job that produced the
event. Instead each process keeps one loop thread; ``publish`` only enqueues. Delivery
over the channel layer is at-most-once anyway: clients detect gaps by ``pipeline_seq``
and replay from ``JobEvent``, so a message lost here costs a resync, never data.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from channels.layers import DEFAULT_CHANNEL_LAYER, channel_layers
from django.conf import settings

from pipelines.per_process import PerProcess

logger = logging.getLogger(__name__)

CONSOLE_GROUP = "pipelines"


def pipeline_group(pipeline_id: str) -> str:
    return f"pipeline.{pipeline_id}"


def year_group(year: int) -> str:
    return f"year.{year}"


def groups_for(message: dict[str, Any]) -> list[str]:
    groups = [CONSOLE_GROUP, pipeline_group(message["pipeline_id"])]
    year = (message.get("pipeline") or {}).get("year")
    if year is not None:
        groups.append(year_group(int(year)))
    return groups


def _own_layer() -> Any:
    """A channel layer instance for the publisher's loop only.

    ``get_channel_layer()`` is a process-wide singleton whose Redis pools and locks bind
    to the first event loop that uses them; the web process also receives on it from the
    server's loop, so sharing it from this thread fails ("bound to a different event
    loop"). The instance is built from the same settings.
    """
    if DEFAULT_CHANNEL_LAYER not in getattr(channel_layers, "configs", {}):
        return None
    return channel_layers.make_backend(DEFAULT_CHANNEL_LAYER)


def layer() -> Any:
    """The publisher's own channel layer (tests tune it, e.g. ``group_expiry``)."""
    return _get().layer


def batches_by_group(messages: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    batches: dict[str, list[dict[str, Any]]] = {}
    for message in messages:
        for group in groups_for(message):
            batches.setdefault(group, []).append(message)
    return batches


# Batches waiting for Redis beyond this are dropped (and logged): with Redis down a
# worker must not grow without bound. Clients see the gap by ``pipeline_seq`` and resync.
MAX_PENDING_BATCHES = 10_000
# Transactions' batches sent as one channel message per group, at most (a bound on the
# message size a backlog can build).
MAX_COALESCED_BATCHES = 50
# A batch Redis refused is re-sent for this long (below the layer's 60 s message expiry,
# after which a receiver would drop it anyway).
RESEND_FOR_SECONDS = 30.0


class _Publisher:
    """One loop thread per process, draining one FIFO queue with one task.

    One task, not a task per batch: concurrent ``group_send`` calls interleave at every
    Redis round trip, so event 12 could reach a group before event 11. Draining in
    order keeps each group's stream in commit (``seq``) order for a process.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.queue: asyncio.Queue[list[dict[str, Any]]] = asyncio.Queue()
        self.pending = 0
        self.dropped = 0
        self.failing_since: float | None = None
        self.lock = threading.Lock()
        self.idle = threading.Event()
        self.idle.set()
        self.layer = _own_layer()
        self.thread = threading.Thread(target=self._run, name="sluice-publisher", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.create_task(self._drain())
        self.loop.run_forever()

    async def _drain(self) -> None:
        while True:
            taken = [await self.queue.get()]
            # Transactions that committed while the last send was in flight go out
            # together, still in seq order: one channel message per group for all of
            # them. A busy worker then pays the Redis round trips per send, not per
            # transaction (they were ~half of the engine's CPU in a worker, py-spy,
            # issue 13); receivers handle a batch event by event either way.
            while len(taken) < MAX_COALESCED_BATCHES and not self.queue.empty():
                taken.append(self.queue.get_nowait())
            try:
                if self.layer is not None:
                    await self._send(batches_by_group([m for messages in taken for m in messages]))
            except Exception:
                logger.warning("event publish failed", exc_info=True)
            finally:
                with self.lock:
                    self.pending -= len(taken)
                    if self.pending == 0:
                        self.idle.set()

    async def _send(self, batches: dict[str, list[dict[str, Any]]]) -> None:
        """Send each group its batch; re-send the groups that failed until RESEND_FOR_SECONDS.

        One channel message per group per send (one committed transaction, or several
        that queued up meanwhile: ``_drain``), carrying that group's events in seq order:
        a transition's 2-6 events cost one Redis round trip per group, not one per event.
        Groups are independent streams, so they go in parallel. Each message names its
        group: a web process receives every group on one channel (``backoffice.live.Hub``)
        and routes by it.

        A failed send is retried, not dropped: right after Redis restarts, the first
        command on each pooled connection fails, and that batch used to be lost. Later
        batches wait behind it, so each group's stream stays in order.
        """
        delay = 0.05
        while True:
            groups = list(batches)
            results = await asyncio.gather(
                *(self.layer.group_send(g, {"type": "events.batch", "group": g, "events": batches[g]}) for g in groups),
                return_exceptions=True,
            )
            failed = {g: batches[g] for g, r in zip(groups, results, strict=True) if isinstance(r, BaseException)}
            if not failed:
                self.failing_since = None
                return
            # The deadline runs from the first failure of an outage, not per batch: in a
            # long outage later batches are dropped at once instead of 30 s each.
            if self.failing_since is None:
                self.failing_since = time.monotonic()
            if time.monotonic() >= self.failing_since + RESEND_FOR_SECONDS:
                error = next(r for r in results if isinstance(r, BaseException))
                logger.warning("event publish failed for %ss; dropped %d group batch(es): %r",
                               RESEND_FOR_SECONDS, len(failed), error)
                return
            batches = failed
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    def submit(self, messages: list[dict[str, Any]]) -> None:
        with self.lock:
            if self.pending >= MAX_PENDING_BATCHES:
                self.dropped += 1
                if self.dropped % 1000 == 1:
                    logger.warning("event publisher backlog full: dropped %d batch(es)", self.dropped)
                return
            self.pending += 1
            self.idle.clear()
        self.loop.call_soon_threadsafe(self.queue.put_nowait, messages)


# A prefork child inherits the parent's object but not its thread: one per process.
_publisher: PerProcess[_Publisher] = PerProcess(_Publisher)


def _get() -> _Publisher:
    return _publisher.get()


def publish(messages: list[dict[str, Any]]) -> None:
    if not messages or not settings.SLUICE_PUBLISH_EVENTS:
        return
    _get().submit(messages)


def flush(timeout: float = 5.0) -> bool:
    """Wait until every submitted message was handed to the channel layer (tests, shutdown)."""
    publisher = _publisher.current()
    return True if publisher is None else publisher.idle.wait(timeout)
