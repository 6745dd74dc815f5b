"""Celery tasks of the ingestion app (found by ``app.autodiscover_tasks``)."""

from __future__ import annotations

import logging

from celery import shared_task

from ingestion.models import Source
from ingestion.sources import services
from pipelines.services import ConflictError

logger = logging.getLogger(__name__)


@shared_task(name="sluice.source_run", ignore_result=True)
def source_run(source_id: int) -> str:
    """Beat fires this per source: plan one run (a pipeline), unless paused or already running."""
    try:
        pipeline = services.source_run_start(source_id=source_id, actor=None, trigger="schedule")
    except Source.DoesNotExist:
        return "deleted"
    except ConflictError as exc:
        # Not piled up behind a slow run: the next tick tries again.
        logger.info("scheduled run of source %s not started: %s", source_id, exc.message)
        return exc.code
    return str(pipeline.pk)
