"""A source's schedule on django-celery-beat: its periodic task, next run, and words.

Beat (``DatabaseScheduler``) reads ``PeriodicTask`` rows; each source owns one named
``sluice-source-<id>`` that calls ``sluice.source_run`` with the source id. The task's
``enabled`` flag follows the source's (pause/resume), so beat stops firing a paused
source within its loop interval.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from celery.schedules import ParseException
from cron_descriptor import ExpressionDescriptor, FormatException, MissingFieldException, Options
from django.db import transaction
from django.utils import timezone, translation
from django.utils.translation import gettext, ngettext
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from ingestion.models import Source

TASK_NAME = "sluice.source_run"
CRON_TICK_EXPIRES = 300


class ScheduleInvalid(ValueError):
    pass


def parse_cron(expression: str) -> dict[str, str]:
    """A 5-field cron expression as CrontabSchedule fields; ScheduleInvalid names the problem."""
    fields = expression.split()
    if len(fields) != 5:
        raise ScheduleInvalid(f"cron {expression!r}: needs 5 fields (minute hour day-of-month month day-of-week)")
    names = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
    parsed = dict(zip(names, fields, strict=True))
    try:
        CrontabSchedule(**parsed).schedule.remaining_estimate(timezone.now())  # celery validates every field
    except (ValueError, IndexError, KeyError, ParseException) as exc:
        raise ScheduleInvalid(f"cron {expression!r}: {exc}") from None
    return parsed


def _schedule_for(source: Source) -> dict[str, object]:
    if source.cron:
        crontab, _ = CrontabSchedule.objects.get_or_create(**parse_cron(source.cron), timezone="UTC")
        return {"crontab": crontab, "interval": None}
    assert source.interval_seconds
    interval, _ = IntervalSchedule.objects.get_or_create(every=source.interval_seconds,
                                                         period=IntervalSchedule.SECONDS)
    return {"interval": interval, "crontab": None}


def periodic_task_sync(source: Source) -> PeriodicTask:
    """Create or update the source's periodic task (inside the caller's transaction)."""
    assert transaction.get_connection().in_atomic_block
    values = {
        **_schedule_for(source),
        "task": TASK_NAME,
        "args": json.dumps([source.pk]),
        "enabled": source.enabled,
        "description": f"Scheduled source {source.name!r} (Sluice)",
        "queue": "default",
        # A tick that waited longer than this in the queue is dropped: the next one comes.
        "expire_seconds": min(source.interval_seconds or CRON_TICK_EXPIRES, CRON_TICK_EXPIRES),
    }
    task = source.periodic_task
    if task is None:
        task = PeriodicTask.objects.create(name=f"sluice-source-{source.pk}", **values)
        Source.objects.filter(pk=source.pk).update(periodic_task=task)
        source.periodic_task = task
    else:
        for key, value in values.items():
            setattr(task, key, value)
        task.save()  # PeriodicTask.save() tells beat the schedule changed
    return task


def next_run(source: Source, *, now: datetime | None = None) -> datetime | None:
    """When beat will fire the source next (None while paused): as beat computes it."""
    task = source.periodic_task
    if task is None or not (source.enabled and task.enabled):
        return None
    now = now or timezone.now()
    # Beat's own base (django_celery_beat.schedulers.ModelEntry): the last run, else the
    # moment the task was last changed.
    base = task.last_run_at or task.date_changed or now
    remaining = task.schedule.remaining_estimate(base)
    return now + max(remaining, timedelta(0))


def describe(source: Source) -> str:
    """The schedule in words, in the active language ("Every 15 minutes", "At 06:00, …")."""
    if source.cron:
        options = Options()
        options.use_24hour_time_format = True
        language = translation.get_language() or "en"
        if language.startswith("fr"):
            options.locale_code = "fr_FR"
        try:
            return f"{ExpressionDescriptor(source.cron, options).get_description()} (UTC)"
        except (FormatException, MissingFieldException, ValueError):
            return source.cron
    seconds = source.interval_seconds or 0
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            count = seconds // size
            if unit == "day":
                return ngettext("Every day", "Every %(count)d days", count) % {"count": count}
            if unit == "hour":
                return ngettext("Every hour", "Every %(count)d hours", count) % {"count": count}
            return ngettext("Every minute", "Every %(count)d minutes", count) % {"count": count}
    return ngettext("Every second", "Every %(count)d seconds", seconds) % {"count": seconds}


def paused_words() -> str:
    return gettext("Paused")
