"""Changes the system drives on its own: nothing stays ``running`` or ``queued`` forever.

The reaper (run by beat), a worker's main process reporting a dead pool process, and
the retention purge. Bounds: docs/RELIABILITY.md.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.translation import gettext_noop

from pipelines import dispatch, registry
from pipelines.messages import Message, msg
from pipelines.models import Job, JobState, OperatorActionKind, QueueState
from pipelines.services.audit import operator_action_record
from pipelines.services.controls import requeue_lost_attempt
from pipelines.services.locked_pipeline import LockedPipeline, unfinished_closure
from pipelines.services.worker_side import exhaust

logger = logging.getLogger(__name__)


def _recover_lost(work: LockedPipeline, job: Job, why: Message, message: Message) -> bool:
    """Requeue a running job whose attempt is gone (True), or fail it once attempts ran out."""
    if job.attempts >= job.max_attempts:
        exhaust(work, job, why)
        return False
    requeue_lost_attempt(work, job, message)
    operator_action_record(
        actor=None, action=OperatorActionKind.RECOVER, target_type="job", target_id=str(job.pk),
        pipeline=work.pipeline, reason=str(why),
    )
    return True


def job_process_lost(*, task_id: str, reason: str) -> int | None:
    """The worker's pool process running delivery ``task_id`` died: recover its job now.

    Called by the worker's main process (``JobRequest.on_failure``), which sees the
    child die at once; without it the job waits for its heartbeat to go stale and the
    reaper (``SLUICE_STALE_AFTER_SECONDS`` + ``SLUICE_REAPER_INTERVAL_SECONDS``).
    Returns the recovered job's id, or None when the delivery no longer owns a job.
    """
    job_id = Job.objects.filter(state=JobState.RUNNING, celery_task_id=task_id).values_list("pk", flat=True).first()
    if job_id is None:
        return None
    with transaction.atomic():
        work = LockedPipeline.lock_for_job(job_id)
        job = work.jobs[job_id]
        if job.state != JobState.RUNNING or job.celery_task_id != task_id:
            return None  # finished, cancelled or taken over meanwhile
        why = msg(gettext_noop("worker process died on %(worker)s (%(reason)s)"), worker=job.worker, reason=reason)
        _recover_lost(work, job, why, msg(gettext_noop("Recovered at once: its worker process died (%(reason)s)"),
                                          reason=reason))
    return job_id


@dataclass
class ReapReport:
    recovered: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    redispatched: list[int] = field(default_factory=list)


def reap(*, queue_depths: dict[str, int] | None = None) -> ReapReport:
    """Run by beat: nothing stays ``running`` or ``queued`` forever.

    1. Running jobs whose heartbeat is stale: back to ``queued`` and re-sent while
       attempts remain, else finished ``error`` with the reason.
    2. Queued jobs (queue not paused) whose publish failed are sent again after
       ``SLUICE_UNSENT_GRACE_SECONDS``.
    3. Queued jobs waiting longer than ``SLUICE_REDISPATCH_AFTER_SECONDS`` whose
       message is in no queue and reserved by no worker (read from Redis; if the
       queues are too long to read: whose queue is empty) — the message was lost
       (Redis restarted, chord never fired) — are sent again.
    Duplicates are harmless: the claim is a compare-and-set.
    """
    report = ReapReport()
    now = timezone.now()
    stale_before = now - timedelta(seconds=settings.SLUICE_STALE_AFTER_SECONDS)
    stale = Job.objects.filter(state=JobState.RUNNING, heartbeat_at__lt=stale_before)
    for job_id in stale.values_list("pk", flat=True):
        with transaction.atomic():
            work = LockedPipeline.lock_for_job(job_id)
            job = work.jobs[job_id]
            if job.state != JobState.RUNNING or job.heartbeat_at is None or job.heartbeat_at >= stale_before:
                continue  # it beat or finished while we were getting the lock
            age = (now - job.heartbeat_at).total_seconds()
            why = msg(gettext_noop("worker %(worker)s stopped sending heartbeats (%(seconds)ss)"), worker=job.worker,
                      seconds=round(age))
            if _recover_lost(work, job, why, msg(gettext_noop("Recovered automatically: no heartbeat for %(seconds)ss"),
                                                 seconds=round(age))):
                report.recovered.append(job_id)
            else:
                report.failed.append(job_id)

    paused = set(QueueState.objects.filter(paused=True).values_list("name", flat=True))
    waiting = Job.objects.filter(state=JobState.QUEUED).exclude(queue__in=paused)
    by_pipeline: dict[Any, list[int]] = defaultdict(list)
    # Never sent: the publish failed (``dispatch.send`` cleared ``dispatched_at``) or the
    # process died between commit and publish. Re-sent after a short grace, whatever the
    # queues hold.
    unsent_before = now - timedelta(seconds=settings.SLUICE_UNSENT_GRACE_SECONDS)
    for pk, pid in waiting.filter(dispatched_at__isnull=True, queued_at__lt=unsent_before).values_list(
        "pk", "pipeline_id"
    ):
        by_pipeline[pid].append(pk)
    # Sent, but the message is gone (Redis restarted, a chord never fired).
    lost_before = now - timedelta(seconds=settings.SLUICE_REDISPATCH_AFTER_SECONDS)
    candidates = list(
        waiting.filter(dispatched_at__lt=lost_before)
        .filter(Q(queued_at__lt=lost_before) | Q(queued_at__isnull=True))
        .values_list("pk", "pipeline_id", "queue")
    )
    if candidates:
        # Lost = in no queue and reserved by no worker, read from Redis itself; where
        # the queues are too long to read, an empty queue is the sign.
        in_broker = _job_ids_in_broker() if queue_depths is None else None
        if in_broker is not None:
            lost = [(pk, pid) for pk, pid, _queue in candidates if pk not in in_broker]
        else:
            depths = queue_depths if queue_depths is not None else _queue_depths()
            lost = [(pk, pid) for pk, pid, queue in candidates if depths.get(queue, 0) == 0]
        for pk, pid in lost:
            by_pipeline[pid].append(pk)
    for pid, ids in by_pipeline.items():
        if dispatch.send(unfinished_closure(pid, ids)):
            report.redispatched.extend(ids)
    return report


def _job_ids_in_broker() -> set[int] | None:
    try:
        return dispatch.job_ids_in_broker()
    except Exception:
        logger.warning("could not read the queues' messages", exc_info=True)
        return None


def _queue_depths() -> dict[str, int]:
    try:
        return dispatch.queue_depths()
    except Exception:
        logger.warning("could not read queue depths", exc_info=True)
        return {q: 1 for q in registry.queues()}
