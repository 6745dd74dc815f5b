"""Reads of the pipelines app, shared by the API, SSE, WebSocket consumers and admin."""

from __future__ import annotations

from typing import Any

from django.db.models import Func, JSONField, QuerySet
from django.db.models.fields.json import KeyTransform
from django.db.models.functions import JSONObject

from pipelines import events
from pipelines.models import Job, JobEvent, Pipeline

# What ``events.job_dict`` reads. ``meta`` is never loaded on list and live paths: it
# may hold a thousand row errors, and only the allow-listed counts travel.
SLIM_JOB_FIELDS = (
    "id", "pipeline_id", "job_type", "det", "queue", "state", "result", "status_message", "status_key",
    "status_params", "phase",
    "progress_processed", "progress_total", "attempts",
)


def counts_expression() -> Func:
    """The allow-listed count keys of ``meta``, projected in SQL (``events.count_keys()``)."""
    return Func(
        JSONObject(**{key: KeyTransform(key, "meta") for key in events.count_keys()}),
        function="jsonb_strip_nulls",
        output_field=JSONField(),
    )


def slim_jobs() -> QuerySet[Job]:
    """Jobs ready for ``events.job_dict`` without their meta (``counts`` annotated)."""
    return Job.objects.only(*SLIM_JOB_FIELDS).annotate(counts=counts_expression()).order_by("id")


def events_after(
    *,
    after_seq: int,
    pipeline_id: Any = None,
    year: int | None = None,
    base: QuerySet[JobEvent] | None = None,
    limit: int = 1000,
) -> list[dict[str, Any]]:
    """Event payloads with ``seq > after_seq`` in seq order, for replay.

    Safe to use as a cursor: seq order equals commit order (see ``EventCounter``).
    ``base`` is the caller's events already narrowed to what its user may see
    (``backoffice.access.narrow``); ``None`` = every event.
    """
    qs: QuerySet[JobEvent] = (JobEvent.objects.all() if base is None else base).filter(seq__gt=after_seq)
    if pipeline_id is not None:
        qs = qs.filter(pipeline_id=pipeline_id)
    if year is not None:
        qs = qs.filter(year=year)
    return list(qs.order_by("seq").values_list("payload", flat=True)[:limit])


def last_seq() -> int:
    row = JobEvent.objects.order_by("-seq").values_list("seq", flat=True).first()
    return int(row or 0)


def pipeline_snapshot(*, pipeline_id: Any) -> dict[str, Any]:
    """The whole DAG as live clients hold it: pipeline, jobs, edges, and the seqs it is current to."""
    pipeline = Pipeline.objects.get(pk=pipeline_id)
    jobs = list(slim_jobs().filter(pipeline_id=pipeline_id))
    edges = list(
        Job.depends_on.through.objects.filter(from_job__pipeline_id=pipeline_id).values_list("from_job_id", "to_job_id")
    )
    return {
        "pipeline": events.pipeline_dict(pipeline),
        "jobs": [events.job_dict(j) for j in jobs],
        "edges": [{"job": child, "depends_on": parent} for child, parent in edges],
        "pipeline_seq": pipeline.last_pipeline_seq,
        "seq": JobEvent.objects.filter(pipeline_id=pipeline_id).order_by("-seq").values_list("seq", flat=True).first()
        or 0,
    }
