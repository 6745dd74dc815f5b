"""Cancel an ingest's running SQL statement when its job is cancelled.

Why: an ingest spends seconds inside single statements (the staging COPY, the checks,
the duplicate aggregate, the insert of a million rows). The engine's cancel only marks
the job (``pipelines.services.controls.job_cancel``); the worker notices at its next
heartbeat or checkpoint, which a running statement never reaches. So while the ingest
runs, a watcher thread (its own connection) asks every ``WATCH_SECONDS`` whether the
attempt still owns the job, and once it does not, it sets the context's aborted flag and
calls ``pg_cancel_backend`` on the ingest's backend: the statement stops at once, and
in the effect transaction everything rolls back (the module-year's data is unchanged).
The handler turns the resulting ``QueryCanceled`` into ``JobAborted``
(:func:`aborted_instead`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError, connection, connections

from pipelines.errors import JobAborted
from pipelines.services import worker_side

if TYPE_CHECKING:
    from pipelines.context import JobContext

logger = logging.getLogger(__name__)

# Cancel reaches the statement within this (plus the cancel request's round trip): the
# issue's bound is 2 s. One indexed primary-key read per beat.
WATCH_SECONDS = 0.5


class StatementGuard(threading.Thread):
    """The watcher thread; also publishes progress the handler cannot write itself."""

    def __init__(self, ctx: JobContext, backend_pid: int) -> None:
        super().__init__(daemon=True, name=f"ingest-cancel-{ctx.job_id}")
        self.ctx = ctx
        self.backend_pid = backend_pid
        self.stopped = threading.Event()
        self.wake = threading.Event()
        # Held while cancelling, and by ``stop``: no cancel is sent once the guarded
        # block is over (it would hit whatever the connection runs next).
        self.lock = threading.Lock()
        self.cancelled = False
        self._pending: tuple[int, int, str, dict[str, Any]] | None = None

    def report_progress(self, processed: int, total: int, *, phase: str, meta: dict[str, Any]) -> None:
        """Progress from inside the effect transaction: written by this thread on its own
        connection (written by the handler's, it would stay invisible until the commit)."""
        self._pending = (processed, total, phase, meta)
        self.wake.set()

    def _publish(self) -> None:
        pending, self._pending = self._pending, None
        if pending is None or self.ctx.aborted.is_set():
            return
        processed, total, phase, meta = pending
        try:
            self.ctx.progress(processed, total, phase=phase, meta=meta, force=True)
        except JobAborted:
            pass  # noticed below: the job is no longer this attempt's

    def run(self) -> None:
        try:
            while not self.stopped.is_set():
                self.wake.wait(WATCH_SECONDS)
                self.wake.clear()
                self._publish()  # the last report too, when stopping
                if self.stopped.is_set():
                    return
                if not self.ctx.aborted.is_set():
                    try:
                        current = worker_side.job_is_current(job_id=self.ctx.job_id, attempt=self.ctx.attempt)
                    except DatabaseError:
                        logger.warning("could not check whether job %s is current", self.ctx.job_id, exc_info=True)
                        continue
                    if current:
                        continue
                    self.ctx.aborted.set()
                with self.lock:
                    if self.stopped.is_set():
                        return
                    with connection.cursor() as cur:
                        cur.execute("SELECT pg_cancel_backend(%s)", [self.backend_pid])
                    self.cancelled = True
                # Keep cancelling (each beat) whatever the handler starts next, until it
                # stops: it raises at its next checkpoint anyway.
        except DatabaseError:
            logger.warning("the cancel watcher of job %s stopped", self.ctx.job_id, exc_info=True)
        finally:
            connections.close_all()  # this thread's own connection only

    def stop(self) -> None:
        with self.lock:
            self.stopped.set()
        self.wake.set()
        self.join(timeout=10)


@contextmanager
def cancel_running_statements(ctx: JobContext) -> Iterator[StatementGuard]:
    """While the block runs, a cancelled job's running statement is cancelled too.

    A statement stopped that way raises a ``DatabaseError`` (``QueryCanceled``) in the
    block; it leaves as :class:`JobAborted`, which the worker runtime treats as "this
    attempt no longer owns the job" (no retry, no error written over the cancel).
    """
    with connection.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid = int(cur.fetchone()[0])
    watcher = StatementGuard(ctx, pid)
    watcher.start()
    try:
        yield watcher
    except DatabaseError as exc:
        if ctx.aborted.is_set():
            raise JobAborted(f"job {ctx.job_id} attempt {ctx.attempt} was cancelled mid-statement") from exc
        raise
    finally:
        watcher.stop()
