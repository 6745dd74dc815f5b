"""The Celery application. Settings live in Django settings under ``CELERY_``."""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("sluice")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _structured_logs(logger: logging.Logger, **kwargs: Any) -> None:
    """Workers log JSON lines carrying pipeline_id/job_id, like the web process."""
    from pipelines.logging import StructuredFormatter

    for handler in logger.handlers:
        handler.setFormatter(StructuredFormatter())
