"""The ingestion job types are declared once (``ingestion.job_types``) and the engine
learns them at registration: a type, queue or count key added there reaches the
worker's routing, the live events and the alerts without another list to edit."""

from __future__ import annotations

from ingestion.job_types import INGEST_JOB_TYPES, JOB_TYPES
from ingestion.modules import TARGETS
from pipelines import events, registry
from pipelines.models import Job


def test_every_declared_job_type_is_registered_with_its_queue_and_counts() -> None:
    for decl in JOB_TYPES:
        spec = registry.get_handler(decl.name)
        assert (spec.queue, spec.counts) == (decl.queue, decl.counts), decl.name


def test_every_upload_target_has_an_ingest_job_type() -> None:
    assert set(INGEST_JOB_TYPES) == set(TARGETS)
    assert set(INGEST_JOB_TYPES.values()) <= {decl.name for decl in JOB_TYPES}


def test_declared_counts_travel_with_live_events_and_nothing_else_does() -> None:
    # The engine projects exactly what the job types declared (plus its own
    # superseded_by): a declared count reaches the console, the API lists and SSE; a
    # row-error array in the same meta never does.
    meta = {"rows_loaded": 3, "units_synced": 2, "row_errors": [{"row": 1}], "superseded_by": "upload #12"}
    assert events.counts_of(meta) == {"rows_loaded": 3, "units_synced": 2, "superseded_by": "upload #12"}
    assert set(events.count_keys()) == {*registry.registered_count_keys(), "superseded_by"}


def test_the_all_rejected_alert_reads_the_job_types_that_load_rows() -> None:
    # The alert's filter must match its partial index (``job_all_rejected``) to use it.
    (index,) = [i for i in Job._meta.indexes if i.name == "job_all_rejected"]
    indexed = dict(index.condition.children)["job_type__in"]
    assert registry.job_types_counting("rows_loaded") == sorted(INGEST_JOB_TYPES.values()) == sorted(indexed)
