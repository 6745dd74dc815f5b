"""The Celery application. Settings live in Django settings under ``CELERY_``.

This module is imported while the settings load (``config/__init__.py``), before any
Django app is ready: the signal handlers import the app code they start when they run.
Other code reaches this app as ``celery.current_app``, so nothing imports ``config``.
"""

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


_heartbeat: Any = None


@signals.worker_ready.connect
def _start_worker_heartbeat(sender: Any, **kwargs: Any) -> None:
    """The worker's version and liveness record in Redis, read by /workers/ (workers.heartbeat)."""
    global _heartbeat
    from workers.heartbeat import WorkerHeartbeat

    _heartbeat = WorkerHeartbeat(sender.hostname)
    _heartbeat.start()


@signals.worker_shutdown.connect
def _stop_worker_heartbeat(**kwargs: Any) -> None:
    if _heartbeat is not None:
        _heartbeat.stop()
