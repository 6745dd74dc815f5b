"""Turning planned jobs into Celery messages, and reading queue depth from the broker.

The canvas mirrors the DAG: a chain of topological layers, where a layer of several
jobs becomes a group (so a group followed by a job is a chord). It is the fast path
only: every task re-reads its job from PostgreSQL and the claim decides whether it
runs, so duplicates, early arrivals and lost messages are all survivable (the reaper
re-sends what was lost).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from celery import chain, group
from django.conf import settings
from django.utils import timezone

from pipelines import dag
from pipelines.models import Job, JobState

logger = logging.getLogger(__name__)


def build_canvas(job_ids: Iterable[int]) -> Any:
    from pipelines.tasks import run_job

    jobs = {j.pk: j for j in Job.objects.filter(pk__in=list(job_ids)).exclude(state=JobState.FINISHED)}
    if not jobs:
        return None
    depends_on: dict[int, list[int]] = {}
    for child, parent in Job.depends_on.through.objects.filter(from_job_id__in=list(jobs)).values_list(
        "from_job_id", "to_job_id"
    ):
        depends_on.setdefault(child, []).append(parent)
    parts = []
    for layer in dag.layers(jobs, depends_on):
        sigs = [run_job.si(pk).set(queue=jobs[pk].queue) for pk in layer]
        parts.append(sigs[0] if len(sigs) == 1 else group(sigs))
    return parts[0] if len(parts) == 1 else chain(*parts)


def send(job_ids: Iterable[int], *, countdown: float | None = None) -> bool:
    """Publish the jobs' canvas; False (and the jobs left to the reaper) if Redis refused.

    The plan is already committed, so a failed publish must neither raise into the
    request nor wait long: the retry policy is short, and ``dispatched_at`` is cleared,
    which the reaper reads as "never sent" and re-sends on its next round
    (``SLUICE_UNSENT_GRACE_SECONDS``), without waiting for the lost-message threshold.
    """
    ids = list(job_ids)
    canvas = build_canvas(ids)
    if canvas is None:
        return True
    options: dict[str, Any] = {"retry": True, "retry_policy": settings.SLUICE_PUBLISH_RETRY_POLICY}
    if countdown:
        options["countdown"] = countdown
    try:
        canvas.apply_async(**options)
    except Exception as exc:  # noqa: BLE001 - any publish failure: the reaper re-sends
        logger.warning("dispatch of jobs %s failed, left to the reaper: %r", ids, exc)
        Job.objects.filter(pk__in=ids).update(dispatched_at=None)
        return False
    Job.objects.filter(pk__in=ids).update(dispatched_at=timezone.now())
    return True


def queue_depths() -> dict[str, int]:
    """Messages waiting in each Redis list (not counting ones a worker has reserved)."""
    from config.celery import app

    with app.connection_for_read() as conn:
        client = conn.default_channel.client
        pipe = client.pipeline()
        for queue in settings.SLUICE_QUEUES:
            pipe.llen(queue)
        return dict(zip(settings.SLUICE_QUEUES, (int(n) for n in pipe.execute()), strict=True))
