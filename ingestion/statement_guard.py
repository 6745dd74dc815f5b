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
from typing import TYPE_CHECKING

from django.db import DatabaseError, connection, connections

from pipelines.errors import JobAborted
from pipelines.services import worker_side

if TYPE_CHECKING:
    from pipelines.context import JobContext

logger = logging.getLogger(__name__)

# Cancel reaches the statement within this (plus the cancel request's round trip): the
# issue's bound is 2 s. One indexed primary-key read per beat.
WATCH_SECONDS = 0.5


class _Watcher(threading.Thread):
    def __init__(self, ctx: JobContext, backend_pid: int) -> None:
        super().__init__(daemon=True, name=f"ingest-cancel-{ctx.job_id}")
        self.ctx = ctx
        self.backend_pid = backend_pid
        self.stopped = threading.Event()
        # Held while cancelling, and by ``stop``: no cancel is sent once the guarded
        # block is over (it would hit whatever the connection runs next).
        self.lock = threading.Lock()
        self.cancelled = False

    def run(self) -> None:
        try:
            while not self.stopped.wait(WATCH_SECONDS):
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
        self.join(timeout=10)


@contextmanager
def cancel_running_statements(ctx: JobContext) -> Iterator[None]:
    """While the block runs, a cancelled job's running statement is cancelled too.

    A statement stopped that way raises a ``DatabaseError`` (``QueryCanceled``) in the
    block; it leaves as :class:`JobAborted`, which the worker runtime treats as "this
    attempt no longer owns the job" (no retry, no error written over the cancel).
    """
    with connection.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        pid = int(cur.fetchone()[0])
    watcher = _Watcher(ctx, pid)
    watcher.start()
    try:
        yield
    except DatabaseError as exc:
        if ctx.aborted.is_set():
            raise JobAborted(f"job {ctx.job_id} attempt {ctx.attempt} was cancelled mid-statement") from exc
        raise
    finally:
        watcher.stop()
