"""The queue list is derived from the job types registered at startup (one home: where
each app declares its job types), so a new queue needs no edit anywhere else."""

from __future__ import annotations

from typing import Any

from pipelines import registry


def test_the_queues_are_the_registered_job_types_queues_with_the_default_last() -> None:
    queues = registry.queues()
    assert queues[:3] == ["ingest", "recalc", "aggregate"]  # ingestion/job_types.py, in its order
    assert queues[-1] == "default"  # beat's tasks and the engine's own jobs
    assert len(queues) == len(set(queues))


def test_a_routed_job_type_brings_its_queue_and_takes_it_from_the_list_when_it_was_the_last_user(
    settings: Any,
) -> None:
    settings.SLUICE_QUEUE_ROUTES = {"aggregation": "bulk"}  # SLUICE_QUEUE_AGGREGATION=bulk
    assert registry.queue_for("aggregation") == "bulk"
    assert "bulk" in registry.queues()
    assert "aggregate" not in registry.queues()  # no job type is sent there any more
