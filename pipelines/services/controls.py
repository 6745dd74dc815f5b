"""Changes an operator drives: cancel, retry, recover, pause and resume a queue.

Each takes the pipeline lock, checks what the operator asked against the jobs' state
(``ConflictError`` with a code the API answers 409 with), makes its transitions and
leaves an audit record.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext_noop

from pipelines import dag, registry, transitions
from pipelines.errors import ConflictError
from pipelines.messages import WAITING_UPSTREAM, WAITING_WORKER, Message, msg
from pipelines.models import Job, JobResult, JobState, OperatorActionKind, Pipeline, QueueState
from pipelines.services.audit import actor_name, operator_action_record
from pipelines.services.locked_pipeline import LockedPipeline, dispatch_on_commit, unfinished_closure

# Results an operator's retry starts again.
RETRYABLE_RESULTS = (JobResult.ERROR, JobResult.CANCELLED, JobResult.SKIPPED)


# --- cancel -----------------------------------------------------------------------------


def job_cancel(*, job_id: int, actor: Any = None, reason: str = "") -> Job:
    """Cancel one job: persistent and terminal at once, whether or not a worker is alive.

    A running job is finished ``cancelled`` immediately; its worker notices at its next
    heartbeat or checkpoint and its uncommitted effect rolls back. A job whose effect
    already committed cannot be cancelled any more (409): the data is in.
    """
    with transaction.atomic():
        work = LockedPipeline.lock_for_job(job_id)
        job = work.jobs[job_id]
        if not _cancel_jobs(work, [job_id], actor=actor, reason=reason):
            if job.state == JobState.FINISHED:
                raise ConflictError(f"Job {job_id} already finished ({job.result}).", "already_finished")
            raise ConflictError(
                f"Job {job_id} already committed its data; it can no longer be cancelled.", "effect_committed"
            )
        work.settle_downstream(job_id, JobResult.CANCELLED)
        work.record_changes()
        operator_action_record(
            actor=actor, action=OperatorActionKind.CANCEL, target_type="job", target_id=str(job_id),
            pipeline=work.pipeline, reason=reason,
        )
    return job


def pipeline_cancel(*, pipeline_id: Any, actor: Any = None, reason: str = "") -> Pipeline:
    with transaction.atomic():
        work = LockedPipeline.lock(pipeline_id)
        if not _cancel_jobs(work, list(work.jobs), actor=actor, reason=reason):
            raise ConflictError(
                "Nothing to cancel: every job has finished or committed its data.", "nothing_to_cancel"
            )
        work.record_changes()
        operator_action_record(
            actor=actor, action=OperatorActionKind.CANCEL, target_type="pipeline",
            target_id=str(pipeline_id), pipeline=work.pipeline, reason=reason,
        )
    return work.pipeline


def _by(actor: Any, reason: str, plain: str, with_reason: str) -> Message:
    """"<done> by <who>", with ": <reason>" when the operator gave one."""
    name = actor_name(actor)
    return msg(with_reason, actor=name, reason=reason) if reason else msg(plain, actor=name)


def _cancel_jobs(work: LockedPipeline, ids: list[int], *, actor: Any, reason: str) -> list[int]:
    # A committed effect is data already in, whether its attempt is still running or
    # was lost and the job re-queued to finish from it: "cancelled" would be a lie
    # (the table's guard on CANCEL).
    return work.apply(
        transitions.CANCEL,
        ids,
        result=JobResult.CANCELLED,
        cancel_requested=True,
        status_message=_by(actor, reason, gettext_noop("Cancelled by %(actor)s"),
                           gettext_noop("Cancelled by %(actor)s: %(reason)s")),
        finished_at=timezone.now(),
        heartbeat_at=None,
    )


# --- retry ------------------------------------------------------------------------------


def _retry_targets(work: LockedPipeline, job_ids: list[int]) -> list[int]:
    """The jobs a retry of ``job_ids`` starts again.

    1. Them, and every failed or cancelled job upstream of them: a job whose upstream
       failed can never run on its own (its skip was the upstream's failure, not its
       own), so retrying it retries from the failure — what the operator asked for, the
       work happens — instead of leaving a job waiting for an upstream that is already
       over (the wedge of issue 8). Upstream jobs still running or waiting are left
       alone: the job is promoted when they end, or skipped again if they fail.
    2. Everything downstream of those, except jobs that another failure outside the
       retry still blocks (a second cancelled branch of a fan-in): resetting those
       would leave them waiting forever, so they stay skipped until that failure is
       retried too.

    A superseded job blocks like a failed one (its downstream was skipped because its
    data was not applied): the retry runs it again, and it ends superseded again while
    the later upload is the loaded one, instead of recomputing from data it never applied.
    """
    depends_on, dependents = work.edges

    def failed(pk: int) -> bool:
        job = work.jobs[pk]
        return job.result in dag.FAILED_RESULTS or bool((job.counts or {}).get("superseded_by"))  # type: ignore[attr-defined]

    failed_upstream = {pk for pk in dag.downstream(job_ids, depends_on) if failed(pk)}
    starts = set(job_ids) | failed_upstream
    targets = starts | dag.downstream(starts, dependents)
    blocked: dict[int, bool] = {}

    def is_blocked(pk: int) -> bool:
        """Failed, or skipped because of a failure: this job's output will not come."""
        if pk not in blocked:
            job = work.jobs[pk]
            blocked[pk] = failed(pk) or (
                job.result == JobResult.SKIPPED and any(is_blocked(p) for p in depends_on.get(pk, ()))
            )
        return blocked[pk]

    for layer in dag.layers(targets - starts, depends_on):
        for pk in layer:
            if any(p not in targets and is_blocked(p) for p in depends_on.get(pk, ())):
                targets.discard(pk)
    return sorted(targets)


def _reset_for_retry(work: LockedPipeline, job_ids: list[int], *, actor: Any) -> None:
    """A new attempt of the finished jobs among ``job_ids``; then queue the ready ones.

    ``job_ids`` is a closed sub-DAG (``_retry_targets``): unfinished jobs in it are not
    reset (they have no result to clear) but a queued one goes back to waiting, since an
    upstream job of it is about to run again.
    """
    now = timezone.now()
    message = msg(gettext_noop("Retry requested by %(actor)s"), actor=actor_name(actor))
    for pk in job_ids:
        job = work.jobs[pk]
        work.apply(
            transitions.RETRY_RESET,
            [pk],
            result=None,
            error=None,
            cancel_requested=False,
            effect_committed=False,
            effect_outcome=None,
            dispatch_when_ready=False,
            progress_processed=0,
            progress_total=None,
            phase="",
            meta={},
            heartbeat_at=None,
            started_at=None,
            finished_at=None,
            worker="",
            max_attempts=job.attempts + settings.SLUICE_MAX_ATTEMPTS,
            status_message=message,
        )
    waiting = [pk for pk in job_ids if work.jobs[pk].state == JobState.QUEUED and not work.ok_to_run(pk)]
    work.apply(
        transitions.WAIT_FOR_UPSTREAM, waiting, queued_at=None, status_message=WAITING_UPSTREAM,
    )
    roots = [pk for pk in job_ids if work.jobs[pk].state == JobState.NOT_STARTED and work.ok_to_run(pk)]
    work.apply(transitions.PROMOTE, roots, queued_at=now, status_message=WAITING_WORKER)


def pipeline_retry(*, pipeline_id: Any, actor: Any = None, reason: str = "") -> Pipeline:
    """A new attempt of every failed, cancelled or skipped job and everything downstream."""
    with transaction.atomic():
        work = LockedPipeline.lock(pipeline_id)
        if any(j.state == JobState.RUNNING for j in work.jobs.values()):
            raise ConflictError("Jobs of this pipeline are still running; cancel or wait first.", "still_running")
        failed = [pk for pk, j in work.jobs.items() if j.result in RETRYABLE_RESULTS]
        if not failed:
            raise ConflictError("Nothing to retry: no job failed, was cancelled or skipped.", "nothing_to_retry")
        targets = _retry_targets(work, failed)
        _reset_for_retry(work, targets, actor=actor)
        work.record_changes()
        operator_action_record(
            actor=actor, action=OperatorActionKind.RETRY, target_type="pipeline",
            target_id=str(pipeline_id), pipeline=work.pipeline, reason=reason, detail={"jobs": targets},
        )
        dispatch_on_commit(targets)
    return work.pipeline


def job_retry(*, job_id: int, actor: Any = None, reason: str = "") -> Job:
    """A new attempt of one failed, cancelled or skipped job and its downstream.

    If the job cannot run because an upstream job failed or was cancelled, that
    upstream job is retried too (``_retry_targets``); the action's detail lists every
    job that was reset.
    """
    with transaction.atomic():
        work = LockedPipeline.lock_for_job(job_id)
        job = work.jobs[job_id]
        if job.result not in RETRYABLE_RESULTS:
            raise ConflictError(
                f"Only failed, cancelled or skipped jobs can be retried; job {job_id} is "
                f"{job.result or job.state}.",
                "not_retryable",
            )
        targets = _retry_targets(work, [job_id])
        running = [pk for pk in targets if work.jobs[pk].state == JobState.RUNNING]
        if running:
            raise ConflictError(
                f"Job(s) {', '.join(map(str, running))} that this retry would reset are running; "
                "wait for them or cancel them first.",
                "still_running",
            )
        _reset_for_retry(work, targets, actor=actor)
        work.record_changes()
        operator_action_record(
            actor=actor, action=OperatorActionKind.RETRY, target_type="job", target_id=str(job_id),
            pipeline=work.pipeline, reason=reason, detail={"jobs": targets},
        )
        dispatch_on_commit(targets)
    return job


# --- recover ----------------------------------------------------------------------------


def job_recover(*, job_id: int, actor: Any = None, reason: str = "", force: bool = False) -> Job:
    """Force a stuck running job back to ``queued`` and re-send it with its downstream.

    Refused while the heartbeat is fresh (the worker is alive) unless ``force``. The old
    attempt, if it was merely slow, loses ownership and cannot write a late result.
    """
    stale_before = timezone.now() - timedelta(seconds=settings.SLUICE_STALE_AFTER_SECONDS)
    with transaction.atomic():
        work = LockedPipeline.lock_for_job(job_id)
        job = work.jobs[job_id]
        if job.state != JobState.RUNNING:
            raise ConflictError(f"Job {job_id} is {job.state}, not running: nothing to recover.", "not_running")
        if not force and job.heartbeat_at and job.heartbeat_at >= stale_before:
            age = (timezone.now() - job.heartbeat_at).total_seconds()
            raise ConflictError(
                f"Job {job_id}'s worker sent a heartbeat {age:.0f}s ago; it is alive. Use force to override.",
                "heartbeat_fresh",
            )
        worker, attempt = job.worker, job.attempts
        requeue_lost_attempt(work, job, _by(actor, reason, gettext_noop("Recovered by %(actor)s"),
                                            gettext_noop("Recovered by %(actor)s: %(reason)s")))
        operator_action_record(
            actor=actor, action=OperatorActionKind.RECOVER, target_type="job", target_id=str(job_id),
            pipeline=work.pipeline, reason=reason, detail={"worker": worker, "attempt": attempt},
        )
    return job


def requeue_lost_attempt(work: LockedPipeline, job: Job, message: Message) -> None:
    """``transitions.RECOVER``: the running attempt is gone; back to the queue and re-sent.

    The lost attempt's writes require state=running AND attempts=its number: both stop
    matching here (queued) and after the next claim (attempts + 1).
    """
    work.apply(
        transitions.RECOVER,
        [job.pk],
        attempt=job.attempts,
        queued_at=timezone.now(),
        heartbeat_at=None,
        worker="",
        status_message=msg(gettext_noop("%(message)s (was on %(worker)s); back in the queue"), message=message,
                           worker=job.worker or msg(gettext_noop("an unknown worker"))),
    )
    work.record_changes()
    dispatch_on_commit(unfinished_closure(work.pipeline.pk, [job.pk]))


# --- queues -----------------------------------------------------------------------------


def queue_pause(*, queue: str, actor: Any = None, reason: str = "") -> QueueState:
    return _queue_set(queue=queue, paused=True, actor=actor, reason=reason)


def queue_resume(*, queue: str, actor: Any = None, reason: str = "") -> QueueState:
    return _queue_set(queue=queue, paused=False, actor=actor, reason=reason)


def _queue_set(*, queue: str, paused: bool, actor: Any, reason: str) -> QueueState:
    if queue not in registry.queues():
        raise ValueError(f"unknown queue {queue!r}; known: {', '.join(registry.queues())}")
    with transaction.atomic():
        state, _ = QueueState.objects.select_for_update().get_or_create(name=queue)
        if state.paused == paused:
            raise ConflictError(f"Queue {queue} is already {'paused' if paused else 'running'}.", "no_change")
        state.paused = paused
        state.changed_by = actor_name(actor)
        state.save(update_fields=["paused", "changed_by", "changed_at"])
        operator_action_record(
            actor=actor, action=OperatorActionKind.PAUSE if paused else OperatorActionKind.RESUME,
            target_type="queue", target_id=queue, reason=reason,
        )
        if not paused:
            waiting = list(Job.objects.filter(queue=queue, state=JobState.QUEUED).values_list("pk", "pipeline_id"))
            by_pipeline: dict[Any, list[int]] = defaultdict(list)
            for pk, pid in waiting:
                by_pipeline[pid].append(pk)
            for pid, ids in by_pipeline.items():
                dispatch_on_commit(unfinished_closure(pid, ids))
    return state
