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
import os
import threading
from typing import Any

from django.conf import settings

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


class _Publisher:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="sluice-publisher", daemon=True)
        self.thread.start()
        self.pending = 0
        self.lock = threading.Lock()
        self.idle = threading.Event()
        self.idle.set()

    async def _send(self, messages: list[dict[str, Any]]) -> None:
        from channels.layers import get_channel_layer

        layer = get_channel_layer()
        try:
            if layer is not None:
                for message in messages:
                    for group in groups_for(message):
                        await layer.group_send(group, message)
        except Exception:  # noqa: BLE001 - a lost push is recovered by client replay
            logger.warning("event publish failed", exc_info=True)
        finally:
            with self.lock:
                self.pending -= 1
                if self.pending == 0:
                    self.idle.set()

    def submit(self, messages: list[dict[str, Any]]) -> None:
        with self.lock:
            self.pending += 1
            self.idle.clear()
        asyncio.run_coroutine_threadsafe(self._send(messages), self.loop)


_publisher: _Publisher | None = None
_publisher_lock = threading.Lock()


def _get() -> _Publisher:
    global _publisher
    # A prefork child inherits the parent's object but not its thread: rebuild per pid.
    if _publisher is None or _publisher.pid != os.getpid():
        with _publisher_lock:
            if _publisher is None or _publisher.pid != os.getpid():
                _publisher = _Publisher()
    return _publisher


def publish(messages: list[dict[str, Any]]) -> None:
    if not messages or not settings.SLUICE_PUBLISH_EVENTS:
        return
    _get().submit(messages)


def flush(timeout: float = 5.0) -> bool:
    """Wait until every submitted message was handed to the channel layer (tests, shutdown)."""
    if _publisher is None or _publisher.pid != os.getpid():
        return True
    return _publisher.idle.wait(timeout)
