"""Reads of year validations: the latest completed one of a year (the "Open year" gate),
and findings rendered in the reader's language (console, Data management page, API)."""

from __future__ import annotations

from typing import Any

from django.utils.translation import gettext as _

from ingestion.job_types import VALIDATE_YEAR
from pipelines import messages
from pipelines.models import Job, JobResult

# A run that ended with its findings (one that failed or was cancelled checked nothing).
COMPLETED = (JobResult.SUCCESS, JobResult.WARNING)


def latest_validation(*, year: int) -> Job | None:
    """The newest ``validate_year`` job of the year that completed its checks."""
    return (Job.objects.filter(pipeline__year=year, job_type=VALIDATE_YEAR.name, result__in=COMPLETED)
            .select_related("pipeline").order_by("-finished_at", "-id").first())


def findings_of(job: Job) -> list[dict[str, Any]]:
    """The job's findings, each with ``text`` in the active language."""
    out = []
    for f in (job.meta or {}).get("findings") or []:
        i18n = f.get("message_i18n") or {}
        out.append({**f, "text": messages.text_of(i18n.get("key") or "", i18n.get("params"), f.get("message", ""))})
    return out


def validation_gate_reasons(*, year: int) -> list[str]:
    """Why the latest validation keeps the year closed (empty: it found no error, or none ran)."""
    job = latest_validation(year=year)
    errors = int((job.meta or {}).get("findings_error") or 0) if job else 0
    if job is None or not errors:
        return []
    first = next((f["text"] for f in findings_of(job) if f.get("severity") == "error"), "")
    return [_("the latest validation (pipeline %(pipeline)s) found %(n)s error(s) — first: %(first)s; fix them "
              "and run a validation again") % {"pipeline": str(job.pipeline_id)[:8], "n": errors, "first": first}]
