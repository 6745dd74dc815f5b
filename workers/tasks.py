"""Celery tasks: thin wrappers that take ids and call the job runner or the engine's services.

Their names (``sluice.run_job``, ``sluice.reap``, ``sluice.compact_counters``) are what
messages in Redis and beat's schedule carry: they stay the same wherever this module lives.
The engine sends ``sluice.run_job`` by name (``pipelines.dispatch``), so it never imports
the runtime.
"""

from __future__ import annotations

import logging
from typing import Any

from billiard.exceptions import WorkerLostError
from celery import Task, shared_task
from celery.worker.request import Request
from django.db import DatabaseError, connections

from pipelines import counters
from pipelines.services import reaper
from workers import runner

logger = logging.getLogger(__name__)


class JobRequest(Request):
    """A delivery of ``run_job`` as the worker's *main* process sees it.

    When the pool process running it dies (kill -9, OOM killer, segfault), the main
    process learns it at once: it re-queues the job in PostgreSQL right away instead of
    leaving it to the heartbeat reaper (tens of seconds).
    """

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> Any:
        exc = getattr(exc_info.exception, "exc", exc_info.exception)
        lost = isinstance(exc, WorkerLostError | SystemExit | KeyboardInterrupt)
        if lost and not (self._already_cancelled or self._already_revoked):
            try:
                reaper.job_process_lost(task_id=self.id, reason=str(exc) or type(exc).__name__)
            except DatabaseError:
                logger.warning("could not re-queue the job of lost task %s; the reaper will", self.id, exc_info=True)
            finally:
                # The main process forks new pool processes: it must not hold a connection.
                connections.close_all()
        return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)


class JobTask(Task):
    Request = JobRequest


# acks_late + reject_on_worker_lost: a worker killed mid-job gives the message back
# instead of losing it; the claim makes the redelivery safe (at-least-once, idempotent).
@shared_task(bind=True, base=JobTask, name="sluice.run_job", acks_late=True, reject_on_worker_lost=True)
def run_job(self: Any, job_id: int) -> dict[str, Any]:
    try:
        outcome = runner.execute_job(job_id=job_id, task_id=self.request.id or "", worker=self.request.hostname or "")
    except runner.RecheckLater as later:
        # Same task id (a retry keeps it), so the next look may take over if the owner died.
        raise self.retry(countdown=later.seconds, max_retries=None) from None
    return {"job_id": job_id, "outcome": outcome}


@shared_task(name="sluice.reap", ignore_result=True)
def reap() -> dict[str, list[int]]:
    report = reaper.reap()
    return {"recovered": report.recovered, "failed": report.failed, "redispatched": report.redispatched}


@shared_task(name="sluice.compact_counters", ignore_result=True)
def compact_counters() -> int:
    return counters.compact()
