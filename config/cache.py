"""A Redis cache that falls back to a process-local cache while Redis is unreachable.

Throttle counters live in Redis so every web process counts the same requests. With
Redis down, each call used to hang for the socket timeout and then raise (the token
API answered 500 after ~38 s). Here every call is bounded by short socket timeouts;
on a connection error the process switches to a local in-memory cache for
``RETRY_AFTER_SECONDS`` (throttling goes on per process, approximately), then tries
Redis again. The state is per process, not per thread: under ASGI every request runs
on its own thread and must not pay the timeout again.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis.exceptions
from django.core.cache.backends.locmem import LocMemCache
from django.core.cache.backends.redis import RedisCache

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5.0
_DOWN_UNTIL: dict[str, float] = {}
_lock = threading.Lock()
_REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


class FallbackRedisCache(RedisCache):
    def __init__(self, server: str, params: dict[str, Any]) -> None:
        options = {"socket_connect_timeout": 0.25, "socket_timeout": 0.5, **params.get("OPTIONS", {})}
        super().__init__(server, {**params, "OPTIONS": options})
        self._location = server if isinstance(server, str) else ",".join(server)
        # LocMemCache instances of one name share their storage across threads.
        self._local = LocMemCache(f"fallback:{self._location}:{self.key_prefix}", params)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if time.monotonic() >= _DOWN_UNTIL.get(self._location, 0.0):
            try:
                return getattr(super(), method)(*args, **kwargs)
            except _REDIS_DOWN as exc:
                with _lock:
                    first = time.monotonic() >= _DOWN_UNTIL.get(self._location, 0.0)
                    _DOWN_UNTIL[self._location] = time.monotonic() + RETRY_AFTER_SECONDS
                if first:
                    logger.warning("cache: Redis unreachable (%s); using a local cache for %ss", exc,
                                   RETRY_AFTER_SECONDS)
        return getattr(self._local, method)(*args, **kwargs)

    def add(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("add", *args, **kwargs)

    def get(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("get", *args, **kwargs)

    def set(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("set", *args, **kwargs)

    def touch(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("touch", *args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("delete", *args, **kwargs)

    def get_many(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("get_many", *args, **kwargs)

    def has_key(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("has_key", *args, **kwargs)

    def incr(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("incr", *args, **kwargs)

    def set_many(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("set_many", *args, **kwargs)

    def delete_many(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("delete_many", *args, **kwargs)

    def clear(self) -> Any:
        return self._call("clear")
