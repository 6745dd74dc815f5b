"""The SQL path of claim and finish (pipelines/services/sql_transitions.py) against the
Python rules it must agree with: the transition table, dag's status and progress, and
events' payloads, down to the bytes of the JSON.

Given the same pipeline and the same deliveries, the two paths must leave the same rows
and write the same events; the predicate the SQL functions check must be the table's
for every transition, state and guard; Python's ``round(x, 1)`` must be the SQL one.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines import dag, events, services, transitions
from pipelines.models import Job, JobEvent, JobResult, JobState, Pipeline
from pipelines.registry import Outcome
from pipelines.services import JobSpec, sql_transitions

pytestmark = pytest.mark.django_db

S, R = JobState, JobResult


def _sql_round(values: list[float]) -> list[float]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT sluice_py_round1(x) FROM unnest(%s::float8[]) WITH ORDINALITY AS u(x, i) ORDER BY i",
                       [values])
        return [row[0] for row in cursor.fetchall()]


# Ties in decimal that are not ties in binary, and true binary ties: where a 15-digit or
# half-away-from-zero rounding differs from Python's.
AWKWARD = [0.05, 0.15, 0.25, 0.35, 0.45, 2.675, 6.25, 6.35, 12.5, 33.35, 99.95, 99.94999999999999, 0.0,
           100.0, 1 / 3 * 100, 2 / 3 * 100, 1e-9, 4503599627370495.5]


def test_sql_round_is_pythons_round_on_every_pipeline_fraction_and_awkward_float() -> None:
    # given every percentage a pipeline of up to 200 jobs can show with whole jobs done
    fractions = sorted({100.0 * k / n for n in range(1, 201) for k in range(n + 1)})
    values = AWKWARD + fractions
    # then the SQL rounding is Python's, bit for bit
    assert [repr(v) for v in _sql_round(values)] == [repr(round(v, 1)) for v in values]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=1000, allow_nan=False), min_size=1, max_size=50))
def test_sql_round_is_pythons_round_on_any_float(values: list[float]) -> None:
    assert [repr(v) for v in _sql_round(values)] == [repr(round(v, 1)) for v in values]


def test_sql_percentages_are_written_as_python_writes_them() -> None:
    values = [0.0, 0.1, 33.3, 66.7, 99.9, 100.0, 12.5]
    with connection.cursor() as cursor:
        cursor.execute("SELECT sluice_py_float_json(x)::text FROM unnest(%s::float8[]) WITH ORDINALITY AS u(x, i) "
                       "ORDER BY i", [values])
        assert [row[0] for row in cursor.fetchall()] == [json.dumps(v) for v in values]


def _one_job() -> Job:
    pipeline = services.pipeline_plan(kind="test", specs=[JobSpec("a", "noop")])
    return Job.objects.get(pipeline=pipeline)


@pytest.mark.parametrize("transition", list(transitions.TABLE.values()), ids=lambda t: t.name)
def test_the_sql_predicate_is_the_tables_for_every_state_and_guard(transition: transitions.Transition) -> None:
    # given a job in every state, with and without a cancel request and a committed effect
    job = _one_job()
    spec = json.dumps(sql_transitions.transition_spec(transition))
    for state in S.values:
        for cancel_requested in (False, True):
            for effect_committed in (False, True):
                Job.objects.filter(pk=job.pk).update(
                    state=state, cancel_requested=cancel_requested, effect_committed=effect_committed, attempts=2)
                job.refresh_from_db()
                for attempt in (None, 1, 2):
                    with connection.cursor() as cursor:
                        cursor.execute("SELECT sluice_transition_holds(j, %s::jsonb, %s) FROM pipelines_job j "
                                       "WHERE id = %s", [spec, attempt, job.pk])
                        in_sql = cursor.fetchone()[0]
                    # then the SQL says what the table says
                    expected = transitions.holds(transition, job, attempt=attempt)
                    assert in_sql is expected, (transition.name, state, cancel_requested, effect_committed, attempt)


def test_a_guard_the_sql_cannot_check_is_refused_not_ignored() -> None:
    odd = transitions.Transition("odd", frozenset({S.QUEUED}), S.RUNNING, frozenset(), guard={"worker": ""})
    with pytest.raises(ValueError, match="cannot check a guard"):
        sql_transitions.transition_spec(odd)


# --- both paths, side by side -----------------------------------------------------------

def _shape(width: int) -> list[JobSpec]:
    specs = [JobSpec("start", "noop")]
    specs += [JobSpec(f"mid{i}", "noop", det=f"part{i}", depends_on=("start",)) for i in range(width)]
    specs.append(JobSpec("end", "noop", depends_on=tuple(f"mid{i}" for i in range(width))))
    return specs


def _drive(sql: bool, script: list[tuple[str, int, Any]], monkeypatch: pytest.MonkeyPatch) -> tuple[Any, ...]:
    """Run ``script`` on a fresh 1 → 3 → 1 pipeline through one path; what it left, normalised."""
    monkeypatch.setattr(sql_transitions, "ENABLED", sql)
    pipeline = services.pipeline_plan(kind="test", specs=_shape(3), year=2031)
    ids = list(Job.objects.filter(pipeline=pipeline).order_by("id").values_list("pk", flat=True))
    first_event = JobEvent.objects.filter(pipeline=pipeline).order_by("seq").values_list("seq", flat=True).first()
    attempts: dict[int, int] = {}
    answers: list[Any] = []
    for step, index, arg in script:
        job_id = ids[index]
        if step == "claim":
            claim = services.job_claim(job_id=job_id, task_id=f"t{index}", worker="w@test")
            answers.append(claim.reason)
            if claim.job is not None:
                attempts[job_id] = claim.job.attempts
        elif step == "progress":
            answers.append(services.job_progress(job_id=job_id, attempt=attempts.get(job_id, 1),
                                                 processed=arg, total=7, phase="rows"))
        elif step == "finish":
            answers.append(services.job_finish(job_id=job_id, attempt=attempts.get(job_id, 1), outcome=arg))
    rename = {pk: f"job{i}" for i, pk in enumerate(ids)} | {str(pipeline.pk): "pipeline"}

    def normal(value: Any) -> Any:
        text = json.dumps(value)  # the bytes: 100.0 and 100 differ here
        for old, new in rename.items():
            text = text.replace(f'"id": {old},', f'"id": "{new}",').replace(f'"{old}"', f'"{new}"')
            text = text.replace(f"#{old}", f"#{new}")  # job labels in messages
        return text

    payloads = [normal({**p, "seq": p["seq"] - first_event})
                for p in JobEvent.objects.filter(pipeline=pipeline).order_by("seq").values_list("payload", flat=True)]
    pipeline.refresh_from_db()
    columns = ("status", "progress_percent", "phase", "jobs_total", "jobs_finished", "jobs_queued", "jobs_running",
               "success_count", "warning_count", "error_count", "cancelled_count", "superseded_count",
               "last_error", "last_pipeline_seq")
    row = {c: getattr(pipeline, c) for c in columns}
    row["started"] = pipeline.started_at is not None
    row["finished"] = pipeline.finished_at is not None
    jobs = [
        {k: v for k, v in j.items() if k not in ("id", "pipeline_id", "created_at", "updated_at", "queued_at",
                                                   "dispatched_at", "started_at", "finished_at", "heartbeat_at")}
        | {"has": [j["started_at"] is not None, j["finished_at"] is not None, j["heartbeat_at"] is not None,
                   j["queued_at"] is not None]}
        for j in Job.objects.filter(pipeline=pipeline).order_by("id").values()
    ]
    return answers, payloads, normal(row), normal(jobs)


OK = Outcome(R.SUCCESS, "done", meta={"rows_loaded": 5})
SCRIPTS = {
    "straight through": [("claim", 0, None), ("finish", 0, OK),
                         *[("claim", i, None) for i in (1, 2, 3)], *[("finish", i, OK) for i in (1, 2, 3)],
                         ("claim", 4, None), ("finish", 4, Outcome(R.WARNING, "close"))],
    "early delivery and progress": [("claim", 4, None), ("claim", 0, None), ("progress", 0, 3),
                                    ("finish", 0, Outcome(R.SKIPPED, "nothing")), ("claim", 2, None),
                                    ("claim", 1, None), ("progress", 1, 5), ("progress", 2, 1),
                                    ("finish", 2, OK), ("claim", 3, None), ("finish", 1, OK),
                                    ("finish", 3, Outcome(R.SUCCESS, "x", meta={"superseded": 1}))],
    "a failure and a stale finish": [("claim", 0, None), ("finish", 0, OK), ("claim", 1, None),
                                     ("finish", 1, Outcome(R.ERROR, "boom")), ("claim", 2, None),
                                     ("finish", 2, OK), ("finish", 2, OK), ("claim", 3, None),
                                     ("finish", 3, Outcome(R.SUCCESS, "late"))],
}


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_the_sql_path_leaves_the_rows_and_events_the_python_path_leaves(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given the same deliveries, reports and outcomes on two fresh pipelines
    script = SCRIPTS[name]
    # when one runs through the SQL path and the other through the Python path
    by_sql = _drive(True, script, monkeypatch)
    by_python = _drive(False, script, monkeypatch)
    # then answers, event payloads (as JSON text), the pipeline row and the job rows agree
    assert by_sql[0] == by_python[0]
    assert by_sql[1] == by_python[1]
    assert by_sql[2] == by_python[2]
    assert by_sql[3] == by_python[3]


def test_claim_and_finish_take_one_statement_each_and_publish_events_in_pythons_key_order(
    monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any
) -> None:
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr("pipelines.publish.publish", sent.extend)
    pipeline = services.pipeline_plan(kind="test", specs=_shape(2))
    start = Job.objects.filter(pipeline=pipeline).order_by("id").first()
    assert start is not None
    # when the first job is claimed and finished
    with CaptureQueriesContext(connection) as claim_queries, django_capture_on_commit_callbacks(execute=True):
        claim = services.job_claim(job_id=start.pk, task_id="t", worker="w@test")
    assert claim.job is not None and claim.job.pipeline.pk == pipeline.pk
    with CaptureQueriesContext(connection) as finish_queries, django_capture_on_commit_callbacks(execute=True):
        assert services.job_finish(job_id=start.pk, attempt=claim.job.attempts, outcome=OK)
    # then each took one round trip
    assert len(claim_queries) == 1 and len(finish_queries) == 1
    # and published what it stored: the claim (and the pipeline starting), the finish,
    # the two promoted jobs; keys in the order the Python path writes them
    stored = list(JobEvent.objects.filter(pipeline=pipeline).order_by("seq").values_list("payload", flat=True))
    assert sent == stored[-len(sent):] and len(sent) == 5
    assert [e["job"]["state"] for e in sent if e["job"]] == [S.RUNNING, S.FINISHED, S.QUEUED, S.QUEUED]
    for message in sent:
        job = message["job"]
        if job is not None:
            assert list(job) == list(events.job_dict(Job.objects.get(pk=job["id"])))
            assert job == events.job_dict(Job.objects.get(pk=job["id"])) or job["state"] != S.QUEUED
        assert list(message["pipeline"]) == list(events.pipeline_dict(pipeline))


def test_a_paused_queue_or_a_stale_attempt_writes_nothing_through_the_sql_path() -> None:
    pipeline = services.pipeline_plan(kind="test", specs=_shape(1))
    start = Job.objects.filter(pipeline=pipeline).order_by("id").first()
    assert start is not None
    services.queue_pause(queue=start.queue, actor="op")
    before = JobEvent.objects.count()
    assert sql_transitions.claim(job_id=start.pk, now=start.created_at, values={}) is None
    assert JobEvent.objects.count() == before
    services.queue_resume(queue=start.queue, actor="op")
    claim = services.job_claim(job_id=start.pk, task_id="t", worker="w@test")
    assert claim.job is not None
    before = JobEvent.objects.count()
    assert sql_transitions.finish(job_id=start.pk, attempt=claim.job.attempts + 1, outcome=OK,
                                  now=start.created_at) is False
    assert JobEvent.objects.count() == before
    assert Job.objects.get(pk=start.pk).state == S.RUNNING
    assert Pipeline.objects.get(pk=pipeline.pk).jobs_running == 1


def test_the_statuses_sql_computes_are_dags_for_every_mix_of_results() -> None:
    # given a 1 -> 3 -> 1 pipeline whose jobs end in every combination the counters tell apart
    results = [R.SUCCESS, R.WARNING, R.ERROR, R.CANCELLED, R.SKIPPED]
    for combo in [(a, b) for a in results for b in results]:
        pipeline = services.pipeline_plan(kind="test", specs=_shape(1))
        jobs = list(Job.objects.filter(pipeline=pipeline).order_by("id"))
        for job, result in zip(jobs, (*combo, R.SUCCESS), strict=True):
            Job.objects.filter(pk=job.pk).update(state=S.FINISHED, result=result)
        with connection.cursor() as cursor:
            cursor.execute("UPDATE pipelines_pipeline p SET jobs_finished = 3, jobs_queued = 0, "
                           "success_count = %s, warning_count = %s, error_count = %s, cancelled_count = %s "
                           "WHERE id = %s", [*(sum(r == x for r in (*combo, R.SUCCESS)) for x in results[:4]),
                                             pipeline.pk])
            cursor.execute("SELECT (sluice_pipeline_view(p)).status FROM pipelines_pipeline p WHERE id = %s",
                           [pipeline.pk])
            in_sql = cursor.fetchone()[0]
        snaps = [dag.JobSnapshot(id=j.pk, job_type="noop", state=S.FINISHED, result=r)
                 for j, r in zip(jobs, (*combo, R.SUCCESS), strict=True)]
        assert in_sql == dag.pipeline_status(snaps), combo

