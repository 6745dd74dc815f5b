"""Running one job inside a worker: claim, heartbeat, handler, finish.

The Celery task is a thin wrapper around :func:`execute_job`. Everything it decides
is recorded in PostgreSQL through ``pipelines.services.worker_side``; the task itself
never raises for a job failure (a raised exception would turn a chord into a ``ChordError`` and a
business failure into a Celery retry storm).
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, close_old_connections, connections, transaction
from django.utils.translation import gettext_noop

from pipelines import registry
from pipelines.errors import JobAborted
from pipelines.logging import log_context
from pipelines.messages import Message, msg, result_message
from pipelines.models import Job, JobResult
from pipelines.redaction import redact_urls
from pipelines.registry import Outcome
from pipelines.services import worker_side

logger = logging.getLogger(__name__)


class RecheckLater(Exception):
    """The job's owner is alive (fresh heartbeat): deliver this message again later."""

    def __init__(self, seconds: float, reason: str) -> None:
        super().__init__(reason)
        self.seconds = seconds


class RetryableError(Exception):
    """A transient failure: the job is re-queued while attempts remain."""


# Transient infrastructure errors worth another attempt; data errors are not.
RETRYABLE = (RetryableError, OperationalError, InterfaceError)


@dataclass
class EffectResult:
    outcome: Outcome | None = None


class JobContext:
    """What a handler sees: its job, progress reporting, cancellation checks, effects."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.job_id: int = job.pk
        self.attempt: int = job.attempts
        self.params: dict[str, Any] = dict(job.params or {})
        self.pipeline_id = job.pipeline_id
        self.year: int | None = job.pipeline.year
        self.module: str = job.pipeline.module
        self.stage = "start"
        self.aborted = threading.Event()
        self._last_emit = 0.0
        self._last_percent = -100.0
        self._last_phase: str | None = None
        # The claim just checked ownership: a job shorter than the check interval
        # costs no extra query.
        self._last_check = time.monotonic()

    def set_stage(self, stage: str) -> None:
        """Names the step an error will be reported in (``error.stage``)."""
        self.stage = stage

    def raise_if_aborted(self) -> None:
        if self.aborted.is_set():
            raise JobAborted(f"job {self.job_id} attempt {self.attempt} was cancelled or taken over")

    def checkpoint(self) -> None:
        """Call between batches: stops the handler promptly once the job is cancelled."""
        self.raise_if_aborted()
        now = time.monotonic()
        if now - self._last_check >= 0.2:
            self._last_check = now
            if not worker_side.job_is_current(job_id=self.job_id, attempt=self.attempt):
                self.aborted.set()
                self.raise_if_aborted()

    def progress(
        self,
        processed: int,
        total: int | None = None,
        *,
        phase: str | None = None,
        message: Message | str | None = None,
        meta: dict[str, Any] | None = None,
        force: bool = False,
    ) -> None:
        """Report progress; throttled so a million rows make dozens of events, not millions.

        An event is written when the phase changes, or when the percentage moved by at
        least 2 points and ``SLUICE_PROGRESS_MIN_INTERVAL_SECONDS`` passed (or a second
        passed when the total is unknown), or when ``force``.
        """
        self.raise_if_aborted()
        now = time.monotonic()
        percent = 100.0 * processed / total if total else None
        elapsed = now - self._last_emit
        due = (
            force
            or (phase is not None and phase != self._last_phase)
            or (
                percent is not None
                and percent - self._last_percent >= 2.0
                and elapsed >= settings.SLUICE_PROGRESS_MIN_INTERVAL_SECONDS
            )
            or (percent is None and elapsed >= 1.0)
        )
        if not due:
            return
        self._last_emit = now
        if percent is not None:
            self._last_percent = percent
        if phase is not None:
            self._last_phase = phase
        if not worker_side.job_progress(
            job_id=self.job_id, attempt=self.attempt, processed=processed, total=total,
            phase=phase, message=message, meta=meta,
        ):
            self.aborted.set()
            self.raise_if_aborted()

    @contextmanager
    def effect(self) -> Iterator[EffectResult]:
        """A transaction holding the job's durable effect, committed at most once.

        Set ``.outcome`` on the yielded object before the block ends: it is stored with
        the effect, so a redelivered message finishes the job from it instead of
        applying the effect again. If the attempt lost the job meanwhile, the whole
        effect rolls back.
        """
        holder = EffectResult()
        with transaction.atomic():
            yield holder
            if holder.outcome is None:
                raise RuntimeError("an effect block must set .outcome before it ends")
            self.raise_if_aborted()
            worker_side.job_commit_effect(job_id=self.job_id, attempt=self.attempt, outcome=holder.outcome)


class _Heartbeat(threading.Thread):
    """Beats while the handler runs; a lost CAS marks the context aborted."""

    def __init__(self, ctx: JobContext) -> None:
        super().__init__(name=f"heartbeat-{ctx.job_id}", daemon=True)
        self.ctx = ctx
        self.stopped = threading.Event()

    def run(self) -> None:
        beat = False
        try:
            while not self.stopped.wait(settings.SLUICE_HEARTBEAT_SECONDS):
                beat = True
                try:
                    if not worker_side.job_heartbeat(job_id=self.ctx.job_id, attempt=self.ctx.attempt):
                        self.ctx.aborted.set()
                        return
                except DatabaseError:
                    logger.warning("heartbeat failed", exc_info=True)
        finally:
            if beat:  # a thread that never beat opened no connection
                connections.close_all()

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=5)


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
    heartbeat = _Heartbeat(ctx)
    heartbeat.start()
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
        heartbeat.stop()
