"""The pure rules users see: pipeline status, progress percentage, DAG ordering."""

from __future__ import annotations

import pytest

from pipelines import dag
from pipelines.dag import JobSnapshot as S


def test_status_follows_the_jobs() -> None:
    # given a 1 -> 2 -> 1 DAG in various moments of its life
    queued = [S(1, "a", "queued"), S(2, "b", "not_started")]
    assert dag.pipeline_status(queued) == "not_started"
    running = [S(1, "a", "finished", "success"), S(2, "b", "queued")]
    assert dag.pipeline_status(running) == "running"
    ok = [S(1, "a", "finished", "success"), S(2, "b", "finished", "warning"), S(3, "c", "finished", "skipped")]
    assert dag.pipeline_status(ok) == "success"


def test_error_with_some_output_is_partial_and_without_is_failed() -> None:
    partial = [S(1, "a", "finished", "success"), S(2, "b", "finished", "error"), S(3, "c", "finished", "skipped")]
    assert dag.pipeline_status(partial) == "partial"
    failed = [S(1, "a", "finished", "error"), S(2, "b", "finished", "skipped")]
    assert dag.pipeline_status(failed) == "failed"


def test_cancelled_wins_over_everything() -> None:
    jobs = [S(1, "a", "finished", "success"), S(2, "b", "finished", "cancelled"), S(3, "c", "finished", "error")]
    assert dag.pipeline_status(jobs) == "cancelled"


def test_a_superseded_job_makes_the_pipeline_superseded_not_success() -> None:
    # given an ingest that was not applied because a later upload was, and its skipped downstream
    jobs = [S(1, "csv_ingest", "finished", "skipped", superseded_by="upload #12"), S(2, "b", "finished", "skipped")]
    # then the pipeline does not read as applied, and its label names the winner
    assert dag.pipeline_status(jobs) == "superseded"
    assert dag.pipeline_progress(jobs) == (100.0, "superseded by upload #12")
    # while it is still running, it is running
    assert dag.pipeline_status([jobs[0], S(2, "b", "queued")]) == "running"


def test_progress_counts_rows_of_the_running_node() -> None:
    # given 4 nodes: one done, one halfway through its rows, two waiting
    jobs = [
        S(1, "csv_ingest", "finished", "success"),
        S(2, "emission_recalc", "running", det="flights", processed=50, total=100, phase="computing"),
        S(3, "emission_recalc", "queued"),
        S(4, "aggregation", "not_started"),
    ]
    percent, phase = dag.pipeline_progress(jobs)
    assert percent == 37.5  # (1 + 0.5) / 4
    assert phase == "emission_recalc flights: computing"


def test_progress_is_100_when_done() -> None:
    assert dag.pipeline_progress([S(1, "a", "finished", "error")]) == (100.0, "done")


def test_layers_and_downstream() -> None:
    depends_on = {2: [1], 3: [1], 4: [2, 3]}
    assert dag.layers([1, 2, 3, 4], depends_on) == [[1], [2, 3], [4]]
    # a sub-DAG ignores edges to jobs outside it
    assert dag.layers([3, 4], depends_on) == [[3], [4]]
    assert dag.downstream([1], {1: [2, 3], 2: [4], 3: [4]}) == {2, 3, 4}


def test_a_cycle_is_refused() -> None:
    with pytest.raises(ValueError, match="cycle"):
        dag.layers([1, 2], {1: [2], 2: [1]})
