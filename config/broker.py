"""kombu's Redis transport, patched so a worker survives a Redis restart under a running task.

Cause (kombu 5.7 / Celery 5.7, compare celery/celery#9250 and #7185): when the broker
connection drops, the worker's consumer collects and closes the old connection, which
sets ``transport.client = None``. The old channel is closed *after* that and, holding
an unacknowledged late-ack message, tries to restore it; later the running task's ack
(or reject) goes through the same channel. Each of these builds a Redis client from
``transport.client.hostname`` and raises ``AttributeError: 'NoneType' object has no
attribute 'hostname'``. That is not a connection error, so Celery treats it as
"Unrecoverable" and the main process exits, taking its pool with it.

The transport below keeps the last client (the closed ``kombu.Connection`` still holds
the URL, which is all a channel needs), so the restore/ack either reaches the restarted
Redis or fails with an ordinary ``ConnectionError`` that Celery already handles.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis


class Transport(redis.Transport):
    @property  # type: ignore[override]
    def client(self) -> Any:
        return self.__dict__.get("_last_client")

    @client.setter
    def client(self, value: Any) -> None:
        if value is not None or "_last_client" not in self.__dict__:
            self.__dict__["_last_client"] = value
