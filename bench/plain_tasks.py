"""A plain Celery no-op task: the baseline Sluice's overhead is measured against."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="bench.plain_noop")
def plain_noop() -> None:
    return None
