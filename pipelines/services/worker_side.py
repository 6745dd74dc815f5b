"""Changes a worker drives while it runs one delivery of a job.

claim (or take over a lost attempt) → heartbeats and progress → commit the effect →
finish, or requeue after a transient failure. Each checks the transition table and is
a compare-and-set on the attempt that owns the job (``pipelines.services.locked_pipeline``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext_noop

from pipelines import transitions
from pipelines.errors import JobAborted
from pipelines.messages import Message, msg, result_message
from pipelines.models import Job, JobResult, JobState, Pipeline
from pipelines.registry import Outcome
from pipelines.services import sql_transitions
from pipelines.services.locked_pipeline import (
    LOCK_BY_JOB_SQL,
    LockedPipeline,
    dispatch_on_commit,
    unfinished_closure,
)


@dataclass(frozen=True)
class Claim:
    job: Job | None
    reason: str
    # Set when the job runs under this very message with a fresh heartbeat: look again
    # after this many seconds (when the heartbeat would be stale), do not drop it.
    recheck_in: float | None = None


def job_claim(*, job_id: int, task_id: str, worker: str) -> Claim:
    """queued → running for this delivery, or say why not.

    A redelivery of the *same* Celery message while the job is still ``running`` may
    mean the process that held it died (Celery requeues on worker loss) — or not: the
    broker also redelivers a healthy long job's message (visibility timeout, a
    reconnect), and a duplicate may be sent by hand. Only a stale heartbeat (older than
    ``SLUICE_STALE_AFTER_SECONDS``) proves the owner gone; a fresh one answers "look
    again when it would be stale", so a dead owner is still taken over within that bound
    without waiting for the reaper, and a live one is never aborted.
    """
    now = timezone.now()
    claimed = sql_transitions.claim(job_id=job_id, now=now, values=_claim_values(
        now=now, task_id=task_id, worker=worker, message=msg(gettext_noop("Running on %(worker)s"), worker=worker),
    ))
    if claimed is not None:  # the plain case, in one round trip; every other case below
        return Claim(claimed, "claimed")
    with transaction.atomic():
        try:
            work = LockedPipeline.lock_for_job(job_id)
        except Job.DoesNotExist:
            return Claim(None, "job no longer exists")
        job = work.jobs[job_id]
        if job.state == JobState.NOT_STARTED:
            work.apply(transitions.NOTE_EARLY_DELIVERY, [job_id], dispatch_when_ready=True)
            return Claim(None, "upstream not finished: will be sent again when ready")
        if job.state == JobState.FINISHED:
            return Claim(None, f"already finished ({job.result})")
        if job.queue_paused:  # type: ignore[attr-defined]
            message = msg(gettext_noop("Waiting: queue %(queue)s is paused"), queue=job.queue)
            if job.status_message != str(message):
                work.apply(transitions.NOTE_PAUSED, [job_id], status_message=message)
                work.record_changes()
            return Claim(None, "queue paused")
        transition, attempt = transitions.CLAIM, None
        running = msg(gettext_noop("Running on %(worker)s"), worker=worker)
        if job.state == JobState.RUNNING:
            if job.celery_task_id != task_id:
                return Claim(None, f"already running on {job.worker}")
            age = (now - job.heartbeat_at).total_seconds() if job.heartbeat_at else float("inf")
            if age < settings.SLUICE_STALE_AFTER_SECONDS:
                return Claim(
                    None, f"running on {job.worker}, heartbeat {age:.1f}s ago: not taken over",
                    recheck_in=settings.SLUICE_STALE_AFTER_SECONDS - age + settings.SLUICE_HEARTBEAT_SECONDS,
                )
            if job.attempts >= job.max_attempts:
                return Claim(None, exhaust(work, job, msg(gettext_noop("worker lost while running"))))
            transition, attempt = transitions.TAKE_OVER, job.attempts
            running = msg(gettext_noop("Running on %(worker)s (took over from lost worker %(lost)s)"),
                          worker=worker, lost=job.worker)
        won = work.apply(
            transition, [job_id], attempt=attempt, attempts=job.attempts + 1,
            **_claim_values(now=now, task_id=task_id, worker=worker, message=running),
        )
        if not won:
            return Claim(None, "lost the claim to another delivery")
        work.record_changes()
    return Claim(job, "claimed")


def _claim_values(*, now: Any, task_id: str, worker: str, message: Message) -> dict[str, Any]:
    """The columns a claim or a take-over writes, but ``attempts``."""
    return {
        "started_at": now,
        "heartbeat_at": now,
        "worker": worker[:200],
        "celery_task_id": task_id[:64],
        "status_message": message,
        "phase": "",
        # A new attempt starts from zero: a lost attempt's 60 % is not this one's.
        "progress_processed": 0,
        "progress_total": None,
        "dispatch_when_ready": False,
    }


def exhaust(work: LockedPipeline, job: Job, why: Message) -> str:
    """End a running job whose attempt is gone and whose attempts ran out; returns the message.

    If the lost attempt had committed its effect, the job's data is in: it ends with the
    outcome stored with the effect (what a redelivery would do), never ``error`` — a
    retry of an "error" would apply the effect a second time.
    """
    now = timezone.now()
    if job.effect_committed:
        job.refresh_from_db(fields=["effect_outcome"])  # deferred by LockedPipeline's query
        outcome = Outcome.from_dict(job.effect_outcome or {"result": JobResult.SUCCESS})
        message = msg(gettext_noop("%(outcome)s (%(why)s after committing its data)"),
                      outcome=outcome.message or result_message(outcome.result), why=why)
        work.apply(
            transitions.FINISH, [job.pk], attempt=job.attempts, meta_merge=outcome.meta,
            result=outcome.result, status_message=message, finished_at=now, heartbeat_at=None,
        )
        work.settle_downstream(job.pk, outcome.result)
    else:
        message = msg(gettext_noop("Error: %(why)s; gave up after %(attempts)s attempt(s)"), why=why,
                      attempts=job.attempts)
        work.apply(
            transitions.EXHAUST, [job.pk], attempt=job.attempts,
            result=JobResult.ERROR, status_message=message, finished_at=now, heartbeat_at=None,
            error={"type": "WorkerLost", "message": str(message), "traceback": "", "stage": "worker"},
        )
        work.settle_downstream(job.pk, JobResult.ERROR)
    work.record_changes()
    return str(message)


def job_heartbeat(*, job_id: int, attempt: int) -> bool:
    """False when this attempt no longer owns the job (cancelled, recovered, taken over).

    Without the pipeline lock on purpose: a beat must never wait behind a transition.
    """
    return bool(
        transitions.update_unlocked(transitions.HEARTBEAT, job_id, {"heartbeat_at": timezone.now()}, attempt=attempt)
    )


def job_is_current(*, job_id: int, attempt: int) -> bool:
    """This attempt still owns the job: what a worker's checkpoint asks between batches."""
    return Job.objects.filter(transitions.where(transitions.PROGRESS, attempt=attempt), pk=job_id).exists()


def job_progress(
    *,
    job_id: int,
    attempt: int,
    processed: int,
    total: int | None,
    phase: str | None = None,
    message: Message | str | None = None,
    meta: dict[str, Any] | None = None,
) -> bool:
    values: dict[str, Any] = {
        "progress_processed": processed,
        "progress_total": total,
        "heartbeat_at": timezone.now(),
    }
    if phase is not None:
        values["phase"] = phase[:120]
    if message is not None:
        values["status_message"] = message
    with transaction.atomic():
        work = LockedPipeline.lock_for_job(job_id)
        if not work.apply(transitions.PROGRESS, [job_id], attempt=attempt, meta_merge=meta, **values):
            return False
        work.record_changes()
    return True


def job_commit_effect(*, job_id: int, attempt: int, outcome: Outcome) -> None:
    """Mark the job's durable effect as committed, inside the effect's transaction.

    Raises ``JobAborted`` (rolling the effect back) when the attempt lost the job.
    """
    # The pipeline row only (lock order: pipeline → job). ``.exists()`` would drop
    # ``of=`` and lock the job row too, in join order: a deadlock with a transition.
    list(Pipeline.objects.raw(LOCK_BY_JOB_SQL, [job_id]))
    values = {"effect_committed": True, "effect_outcome": outcome.as_dict()}
    if not transitions.update_unlocked(transitions.COMMIT_EFFECT, job_id, values, attempt=attempt):
        raise JobAborted(f"job {job_id} attempt {attempt} no longer owns the job; effect rolled back")


def job_finish(*, job_id: int, attempt: int, outcome: Outcome, error: dict[str, Any] | None = None) -> bool:
    """running → finished with the handler's outcome; promotes or skips downstream."""
    if error is None:
        # An OK outcome in one round trip (sql_transitions); failures and the rest below.
        done = sql_transitions.finish(job_id=job_id, attempt=attempt, outcome=outcome, now=timezone.now())
        if done is not None:
            return done
    with transaction.atomic():
        work = LockedPipeline.lock_for_job(job_id)
        job = work.jobs[job_id]
        values: dict[str, Any] = {
            "result": outcome.result,
            "status_message": outcome.message,
            "error": error,
            "finished_at": timezone.now(),
            "heartbeat_at": None,
        }
        if outcome.result in (JobResult.SUCCESS, JobResult.WARNING) and job.progress_total:
            values["progress_processed"] = job.progress_total
        meta = {**outcome.meta, "superseded_by": outcome.superseded_by} if outcome.superseded_by else outcome.meta
        if not work.apply(transitions.FINISH, [job_id], attempt=attempt, meta_merge=meta, **values):
            return False
        work.settle_downstream(job_id, outcome.result, superseded_by=outcome.superseded_by,
                               skip_downstream=outcome.skip_downstream)
        work.record_changes()
    return True


def job_requeue_after_failure(
    *, job_id: int, attempt: int, error: dict[str, Any], countdown: float
) -> bool:
    """A transient failure with attempts left: back to queued, re-sent after a backoff."""
    with transaction.atomic():
        work = LockedPipeline.lock_for_job(job_id)
        if not work.apply(
            transitions.REQUEUE,
            [job_id],
            attempt=attempt,
            queued_at=timezone.now(),
            heartbeat_at=None,
            worker="",
            error=error,
            status_message=msg(gettext_noop("Attempt %(attempt)s failed (%(type)s: %(error)s); retrying in "
                                            "%(seconds)ss"),
                               attempt=attempt, type=error["type"], error=error["message"][:200],
                               seconds=round(countdown)),
        ):
            return False
        work.record_changes()
        dispatch_on_commit(unfinished_closure(work.pipeline.pk, [job_id]), countdown=countdown)
    return True
