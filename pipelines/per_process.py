"""One object per OS process, for objects that own a thread.

A prefork child inherits its parent's objects but not their threads: an object whose
thread serves the process (the event publisher, the heartbeat thread) is rebuilt the
first time each process asks for it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerProcess(Generic[T]):
    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._value: T | None = None

    def get(self) -> T:
        """This process's object, built on first use in the process."""
        pid = os.getpid()
        if self._pid != pid or self._value is None:
            with self._lock:
                if self._pid != pid or self._value is None:
                    self._value = self._factory()
                    self._pid = pid
        return self._value

    def current(self) -> T | None:
        """This process's object if it was built here, else None (nothing to wait for)."""
        return self._value if self._pid == os.getpid() else None

    def reset(self) -> None:
        """Forget this process's object: the next ``get`` builds a new one (tests that
        point the process at another server)."""
        with self._lock:
            self._pid, self._value = None, None
