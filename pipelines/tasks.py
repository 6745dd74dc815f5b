"""Celery tasks: thin wrappers that take ids and call the engine or services."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from pipelines import engine, services


# acks_late + reject_on_worker_lost: a worker killed mid-job gives the message back
# instead of losing it; the claim makes the redelivery safe (at-least-once, idempotent).
@shared_task(bind=True, name="sluice.run_job", acks_late=True, reject_on_worker_lost=True)
def run_job(self: Any, job_id: int) -> dict[str, Any]:
    try:
        outcome = engine.execute_job(job_id=job_id, task_id=self.request.id or "", worker=self.request.hostname or "")
    except engine.RecheckLater as later:
        # Same task id (a retry keeps it), so the next look may take over if the owner died.
        raise self.retry(countdown=later.seconds, max_retries=None) from None
    return {"job_id": job_id, "outcome": outcome}


@shared_task(name="sluice.reap", ignore_result=True)
def reap() -> dict[str, list[int]]:
    report = services.reap()
    return {"recovered": report.recovered, "failed": report.failed, "redispatched": report.redispatched}


@shared_task(name="sluice.purge", ignore_result=True)
def purge() -> int:
    return services.purge_old()
