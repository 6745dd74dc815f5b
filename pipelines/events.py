"""The append-only event history and the small messages pushed to live clients.

Every state change, progress step and message of a job is one ``JobEvent``. The same
dict is stored as the event's payload, replayed to reconnecting clients, streamed over
SSE and pushed over WebSockets, so all paths agree byte for byte.

Ordering contract (see ``EventCounter``): :func:`append` must be the last statement of
the transaction that made the change; it takes the global counter row lock, so events
become visible in ``seq`` order.
"""

from __future__ import annotations

import json
from typing import Any, TypedDict

from django.db import connection, transaction

from pipelines import publish, registry
from pipelines.models import Job, Pipeline

# Not a count, yet it travels with them: the pipeline status is derived from it
# (``dag.pipeline_status``), and it is the engine's own (``Outcome.superseded_by``).
SUPERSEDED_BY = "superseded_by"


def count_keys() -> tuple[str, ...]:
    """The ``meta`` keys that travel with live events and list responses: the counts each
    job type declared when it registered (``pipelines.registry``), never multi-kilobyte
    row-error arrays. The engine names none of them itself."""
    return (*registry.registered_count_keys(), SUPERSEDED_BY)


class ProgressDict(TypedDict):
    processed: int
    total: int | None
    percent: float | None
    phase: str


class JobDict(TypedDict):
    id: int
    job_type: str
    det: str
    queue: str
    state: str
    result: str | None
    status_message: str
    # The message as a translation key and parameters (``pipelines.messages``): live
    # feeds re-render ``status_message`` in each reader's language from these.
    status_key: str
    status_params: dict[str, Any]
    progress: ProgressDict
    counts: dict[str, Any]
    attempts: int


class PipelineDict(TypedDict):
    id: str
    kind: str
    year: int | None
    module: str
    status: str
    progress: ProgressDict
    jobs_total: int
    jobs_finished: int
    error_count: int


def counts_of(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: meta[k] for k in count_keys() if k in meta}


def job_dict(job: Job) -> JobDict:
    pct = job.progress_percent
    return {
        "id": job.pk,
        "job_type": job.job_type,
        "det": job.det,
        "queue": job.queue,
        "state": job.state,
        "result": job.result,
        "status_message": job.status_message,
        "status_key": job.status_key,
        "status_params": job.status_params or {},
        "progress": {
            "processed": job.progress_processed,
            "total": job.progress_total,
            "percent": None if pct is None else round(pct, 1),
            "phase": job.phase,
        },
        # Transitions load jobs with ``counts`` projected in SQL (meta deferred).
        "counts": job.counts if hasattr(job, "counts") else counts_of(job.meta or {}),
        "attempts": job.attempts,
    }


def pipeline_dict(pipeline: Pipeline) -> PipelineDict:
    return {
        "id": str(pipeline.pk),
        "kind": pipeline.kind,
        "year": pipeline.year,
        "module": pipeline.module,
        "status": pipeline.status,
        "progress": {
            "processed": pipeline.jobs_finished,
            "total": pipeline.jobs_total,
            "percent": pipeline.progress_percent,
            "phase": pipeline.phase,
        },
        "jobs_total": pipeline.jobs_total,
        "jobs_finished": pipeline.jobs_finished,
        "error_count": pipeline.error_count,
    }


def message_in_order(
    payload: dict[str, Any], *, status_params: dict[int, dict[str, Any]], counts: dict[int, dict[str, Any]]
) -> dict[str, Any]:
    """An event built by the database (``jsonb``: keys in its own order) as :func:`append`
    builds it, key for key, so the live feeds send the same bytes whichever path made it.
    ``status_params``/``counts``: the dicts the caller wrote, by job id (their order too)."""
    job = payload["job"]
    if job is not None:
        progress = job["progress"]
        job = {
            "id": job["id"], "job_type": job["job_type"], "det": job["det"], "queue": job["queue"],
            "state": job["state"], "result": job["result"], "status_message": job["status_message"],
            "status_key": job["status_key"], "status_params": status_params.get(job["id"], job["status_params"]),
            "progress": {"processed": progress["processed"], "total": progress["total"],
                         "percent": progress["percent"], "phase": progress["phase"]},
            "counts": counts.get(job["id"], job["counts"]), "attempts": job["attempts"],
        }
    p = payload["pipeline"]
    pipeline = {
        "id": p["id"], "kind": p["kind"], "year": p["year"], "module": p["module"], "status": p["status"],
        "progress": {"processed": p["progress"]["processed"], "total": p["progress"]["total"],
                     "percent": p["progress"]["percent"], "phase": p["progress"]["phase"]},
        "jobs_total": p["jobs_total"], "jobs_finished": p["jobs_finished"], "error_count": p["error_count"],
    }
    return {"type": payload["type"], "seq": payload["seq"], "pipeline_seq": payload["pipeline_seq"],
            "pipeline_id": payload["pipeline_id"], "kind": payload["kind"], "job": job, "pipeline": pipeline}


# Upsert, because the counter row may be missing after a TRUNCATE (test isolation,
# manual resets). Each event's ``seq`` is written into its payload by the database.
APPEND_SQL = """
WITH counter AS (
    INSERT INTO pipelines_eventcounter (id, value) VALUES (1, %(n)s)
    ON CONFLICT (id) DO UPDATE SET value = pipelines_eventcounter.value + EXCLUDED.value
    RETURNING value
), appended AS (
    INSERT INTO pipelines_jobevent (seq, pipeline_seq, type, kind, year, module, payload, created_at, job_id,
                                    pipeline_id)
    SELECT counter.value - %(n)s + e.ord, (e.payload ->> 'pipeline_seq')::bigint, e.payload ->> 'type',
           e.payload ->> 'kind', %(year)s::integer, %(module)s,
           jsonb_set(e.payload, '{seq}', to_jsonb(counter.value - %(n)s + e.ord)), clock_timestamp(),
           (e.payload -> 'job' ->> 'id')::bigint, %(pipeline)s::uuid
      FROM counter, jsonb_array_elements(%(events)s::jsonb) WITH ORDINALITY AS e (payload, ord)
)
SELECT value FROM counter
"""


def append(
    pipeline: Pipeline,
    *,
    base_pipeline_seq: int,
    jobs: list[tuple[Job, str]],
    pipeline_changed: bool = False,
    kind_for_pipeline: str = "state",
) -> list[dict[str, Any]]:
    """Record one ``job.update`` per (job, kind) and optionally a ``pipeline.update``.

    The caller holds the pipeline row lock and has already stored the pipeline's new
    ``last_pipeline_seq`` (``base_pipeline_seq`` + the number of events appended here).
    Publishing is deferred to ``on_commit``.
    """
    count = len(jobs) + (1 if pipeline_changed else 0)
    if count == 0:
        return []
    pdict = pipeline_dict(pipeline)
    messages: list[dict[str, Any]] = []
    entries: list[tuple[Job | None, str, str]] = [(job, "job.update", kind) for job, kind in jobs]
    if pipeline_changed:
        entries.append((None, "pipeline.update", kind_for_pipeline))
    for pseq, (job, type_, kind) in enumerate(entries, start=base_pipeline_seq + 1):
        messages.append({
            "type": type_,
            "seq": 0,  # the global seq, handed out by the statement below
            "pipeline_seq": pseq,
            "pipeline_id": str(pipeline.pk),
            "kind": kind,
            "job": job_dict(job) if job is not None else None,
            "pipeline": pdict,
        })
    with connection.cursor() as cursor:
        # The counter and the rows in one statement: the counter is the last lock of the
        # transaction (see the module docstring), and one round trip less is held under it.
        cursor.execute(APPEND_SQL, {
            "n": count, "year": pipeline.year, "module": pipeline.module, "pipeline": pipeline.pk,
            "events": json.dumps(messages),
        })
        row = cursor.fetchone()
        assert row is not None
    for seq, message in enumerate(messages, start=int(row[0]) - count + 1):
        message["seq"] = seq
    transaction.on_commit(lambda: publish.publish(messages))
    return messages
