"""Running one job inside a worker: claim, heartbeat, handler, finish.

The worker runtime's half of the engine: the Celery task (``workers.tasks.run_job``) is
a thin wrapper around :func:`execute_job`. Everything it decides is recorded in
PostgreSQL through ``pipelines.services.worker_side``; what a handler sees
(``JobContext``) is the engine's (``pipelines.context``). The task itself never raises
for a job failure (a raised exception would turn a chord into a ``ChordError`` and a
business failure into a Celery retry storm).
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from typing import Any

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, close_old_connections, connections
from django.utils.translation import gettext_noop

from pipelines import registry
from pipelines.context import JobContext, RetryableError
from pipelines.errors import JobAborted
from pipelines.logging import log_context
from pipelines.messages import msg, result_message
from pipelines.models import Job, JobResult
from pipelines.per_process import PerProcess
from pipelines.redaction import redact_urls
from pipelines.registry import Outcome
from pipelines.services import worker_side

logger = logging.getLogger(__name__)

# Transient infrastructure errors worth another attempt; data errors are not.
RETRYABLE = (RetryableError, OperationalError, InterfaceError)


class RecheckLater(Exception):
    """The job's owner is alive (fresh heartbeat): deliver this message again later."""

    def __init__(self, seconds: float, reason: str) -> None:
        super().__init__(reason)
        self.seconds = seconds


class _Heartbeats(threading.Thread):
    """Beats for the jobs its worker process runs; a lost CAS marks that job's context aborted.

    One thread per process, not one per job: starting and joining a thread for each job
    was ~12 % of a no-op job's engine time in the worker (py-spy, issue 13). It serves
    every job the process runs at once (one in a prefork child; several with a thread
    pool). A beat still in flight when its job ends is harmless: it is a compare-and-set
    on the attempt, which matches no finished, re-queued or taken-over job.
    """

    def __init__(self) -> None:
        super().__init__(name="heartbeats", daemon=True)
        self.changed = threading.Condition()
        self.due: dict[JobContext, float] = {}  # job → monotonic time of its next beat

    def watch(self, ctx: JobContext) -> None:
        with self.changed:
            self.due[ctx] = time.monotonic() + settings.SLUICE_HEARTBEAT_SECONDS
            self.changed.notify()

    def release(self, ctx: JobContext) -> None:
        with self.changed:
            self.due.pop(ctx, None)

    def _next(self) -> list[JobContext]:
        """Wait until a job is due a beat; the jobs that are."""
        with self.changed:
            while True:
                now = time.monotonic()
                ready = [ctx for ctx, at in self.due.items() if at <= now]
                if ready:
                    for ctx in ready:
                        self.due[ctx] = now + settings.SLUICE_HEARTBEAT_SECONDS
                    return ready
                self.changed.wait(min(self.due.values()) - now if self.due else None)

    def run(self) -> None:
        while True:
            for ctx in self._next():
                try:
                    if not worker_side.job_heartbeat(job_id=ctx.job_id, attempt=ctx.attempt):
                        ctx.aborted.set()
                        self.release(ctx)
                except DatabaseError:
                    logger.warning("heartbeat failed", exc_info=True)
                    connections.close_all()  # this thread's connection: a fresh one next beat


def _started_heartbeats() -> _Heartbeats:
    thread = _Heartbeats()
    thread.start()
    return thread


_heartbeats: PerProcess[_Heartbeats] = PerProcess(_started_heartbeats)


def heartbeats() -> _Heartbeats:
    """This process's heartbeat thread (a prefork child inherits the object, not the thread)."""
    return _heartbeats.get()


def _error_dict(exc: BaseException, stage: str) -> dict[str, Any]:
    return {
        "type": type(exc).__name__,
        # Shown in the API and admin: mask credentials of URLs in the error (pipelines.redaction).
        "message": redact_urls(str(exc))[:2000],
        "traceback": redact_urls("".join(traceback.format_exception(exc)))[-20000:],
        "stage": stage,
    }


def execute_job(*, job_id: int, task_id: str, worker: str) -> str:
    """Run one delivery of job ``job_id``; returns what happened, for the task result."""
    close_old_connections()
    claim = worker_side.job_claim(job_id=job_id, task_id=task_id, worker=worker)
    job = claim.job
    if job is None:
        logger.info("job %s not run: %s", job_id, claim.reason)
        if claim.recheck_in is not None:
            raise RecheckLater(claim.recheck_in, claim.reason)
        return claim.reason
    with log_context(pipeline_id=job.pipeline_id, job_id=job.pk):
        if job.effect_committed:
            # The previous attempt committed its effect and died before finishing.
            outcome = Outcome.from_dict(job.effect_outcome or {"result": JobResult.SUCCESS})
            worker_side.job_finish(job_id=job.pk, attempt=job.attempts, outcome=outcome)
            return "finished from the committed effect of a lost attempt"
        return _run_handler(job)


def _run_handler(job: Job) -> str:
    ctx = JobContext(job)
    beats = heartbeats()
    beats.watch(ctx)
    try:
        spec = registry.get_handler(job.job_type)
        ctx.set_stage("run")
        outcome = spec.func(ctx) or Outcome(JobResult.SUCCESS, msg(gettext_noop("Done")))
        if not outcome.message:
            outcome = Outcome(outcome.result, result_message(outcome.result), outcome.meta, outcome.superseded_by)
        worker_side.job_finish(job_id=job.pk, attempt=ctx.attempt, outcome=outcome)
        return str(outcome.result)
    except JobAborted as exc:
        logger.info("job stopped: %s", exc)
        return "aborted"
    except Exception as exc:
        close_old_connections()
        connections["default"].close_if_unusable_or_obsolete()
        error = _error_dict(exc, ctx.stage)
        if isinstance(exc, RETRYABLE) and ctx.attempt < job.max_attempts:
            countdown = min(2.0**ctx.attempt, settings.VISIBILITY_TIMEOUT / 4)
            worker_side.job_requeue_after_failure(job_id=job.pk, attempt=ctx.attempt, error=error, countdown=countdown)
            logger.warning("job attempt %s failed, retrying in %ss", ctx.attempt, countdown, exc_info=True)
            return "retrying"
        logger.error("job failed in stage %s", ctx.stage, exc_info=True)
        message = msg(gettext_noop("Error in %(stage)s: %(type)s: %(error)s"), stage=ctx.stage,
                      type=type(exc).__name__, error=error["message"][:500])
        worker_side.job_finish(
            job_id=job.pk, attempt=ctx.attempt, outcome=Outcome(JobResult.ERROR, message), error=error
        )
        return "error"
    finally:
        beats.release(ctx)
