"""The job state machine, driven by Hypothesis through the services layer (issue 17).

A ``RuleBasedStateMachine`` plays workers, operators and the reaper against the real
PostgreSQL schema, calling the same service functions they call, in any order the
rules' preconditions allow (no worker process: a rule *is* what a worker would do with
one delivery). After every step the invariants in docs/ENGINE.md are checked on the
rows and the event log; at the end of every example the reaper and ordinary workers
alone must bring every pipeline to a terminal status (examples end after a random
number of steps, so this is checked from states all over the reachable space).

Profiles: the default one (``make test``) is bounded and derandomized, so CI runs the
same examples every time; ``SLUICE_HYPOTHESIS_PROFILE=long`` (``make prop-long``) runs
many more random ones. A failing example found here is fixed and kept as a plain test
in ``test_state_machine_regressions.py``.

Over ~400 lines: one state machine (its rules and its invariants) cannot be split
without splitting the model it checks.
"""

from __future__ import annotations

import os
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.db import connection, transaction
from django.utils import timezone
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from pipelines import dag, dispatch, events, services, transitions
from pipelines.errors import JobAborted
from pipelines.models import DONE_STATUSES, Job, JobEvent, JobResult, JobState, OperatorAction, Pipeline, QueueState
from pipelines.registry import Outcome
from pipelines.services import ConflictError, IllegalTransition, JobSpec, sql_transitions
from pipelines.services.locked_pipeline import edges_of

pytestmark = pytest.mark.django_db

_COMMON: dict[str, Any] = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
}
# Bounded and repeatable for `make test` (derandomized: no example database); `make
# prop-long` explores at random and keeps what it finds under .var/ for replay.
settings.register_profile("sluice-ci", max_examples=150, stateful_step_count=30, derandomize=True, **_COMMON)
settings.register_profile(
    "sluice-long", max_examples=int(os.environ.get("SLUICE_HYPOTHESIS_EXAMPLES", "3000")), stateful_step_count=60,
    database=DirectoryBasedExampleDatabase(str(django_settings.BASE_DIR / ".var" / "hypothesis")), **_COMMON,
)
PROFILE = "sluice-" + os.environ.get("SLUICE_HYPOTHESIS_PROFILE", "ci")

S, R = JobState, JobResult
ALLOWED_PAIRS = {(S.NOT_STARTED, None), (S.QUEUED, None), (S.RUNNING, None)} | {
    (S.FINISHED, r) for r in (R.SUCCESS, R.WARNING, R.ERROR, R.CANCELLED, R.SKIPPED)
}
# One transaction may take a job through two table entries (a retry: finished →
# not_started → queued) and write one event for both.
ALLOWED_EVENT_STEPS = set(transitions.MOVES) | {(S.FINISHED, S.QUEUED)}
NOT_APPLIED = (R.ERROR, R.CANCELLED, R.SKIPPED)
KINDS = ("noop", "test_effect", "test_fail")  # default, ingest and recalc queues
QUEUES = ("default", "ingest", "recalc")
TOTAL = 10  # every simulated handler has ten units of work


@dataclass(frozen=True)
class Attempt:
    """One worker process holding one delivery of a job (alive until it finishes or dies)."""

    job_id: int
    attempt: int
    task_id: str


def _shape(kind: str, n: int, kinds: list[str]) -> list[JobSpec]:
    if kind == "lone" or n == 1:
        return [JobSpec("j0", kinds[0])]
    if kind == "chain":
        return [JobSpec(f"j{i}", kinds[i], depends_on=(f"j{i - 1}",) if i else ()) for i in range(n)]
    # fan: 1 → (n - 2) → 1 (n = 2 is a chain of two)
    middle = [f"j{i}" for i in range(1, max(2, n - 1))]
    specs = [JobSpec("j0", kinds[0])]
    specs += [JobSpec(key, kinds[i + 1], det=key, depends_on=("j0",)) for i, key in enumerate(middle)]
    if n > 2:
        specs.append(JobSpec(f"j{n - 1}", kinds[n - 1], depends_on=tuple(middle)))
    return specs


def _rows() -> dict[int, Job]:
    return {j.pk: j for j in Job.objects.all()}


class JobStateMachine(RuleBasedStateMachine):
    jobs = Bundle("jobs")
    pipelines = Bundle("pipelines")
    attempts = Bundle("attempts")

    def __init__(self) -> None:
        super().__init__()
        # Each example runs in a savepoint of the test's transaction and is rolled back.
        self._atomic = transaction.atomic()
        self._atomic.__enter__()
        self.n_pipelines = 0
        self.alive: dict[Attempt, int] = {}  # live attempts → units processed
        self.committed: set[Attempt] = set()
        self.handed_out: set[tuple[int, int]] = set()  # (job, attempt) pairs ever claimed
        self.effect_runs: dict[int, int] = defaultdict(int)  # job → effects since its last reset
        self.seen: dict[int, Job] = {}
        self.reset_by_retry: set[int] = set()
        self.edges: dict[Any, dict[int, list[int]]] = {}
        # What the event log has said so far: the last seq, and per pipeline and job the
        # last pipeline_seq, payload and state.
        self.last_seq = JobEvent.objects.order_by("-seq").values_list("seq", flat=True).first() or 0
        self.pipeline_seq: dict[Any, int] = {}
        self.pipeline_payload: dict[Any, Any] = {}
        self.job_payload: dict[int, Any] = {}
        self.last_state_event: dict[int, str] = {}

    def teardown(self) -> None:
        sql_transitions.ENABLED = True
        try:
            if not connection.needs_rollback:
                self._drive_to_completion()
        finally:
            transaction.set_rollback(True)
            self._atomic.__exit__(None, None, None)

    # --- helpers ------------------------------------------------------------------------

    def _job(self, job_id: int) -> Job:
        return Job.objects.get(pk=job_id)

    def _owns(self, a: Attempt) -> bool:
        job = self._job(a.job_id)
        return job.state == S.RUNNING and job.attempts == a.attempt and not job.cancel_requested

    def _paused(self, queue: str) -> bool:
        return QueueState.objects.filter(name=queue, paused=True).exists()

    def _end(self, a: Attempt) -> None:
        self.alive.pop(a, None)

    def _claim(self, job_id: int, task_id: str) -> Attempt | None:
        """What ``workers.runner.execute_job`` does with one delivery, up to running the handler."""
        before = self._job(job_id)
        claim = services.job_claim(job_id=job_id, task_id=task_id, worker="w@model")
        stale_before = timezone.now() - timedelta(seconds=django_settings.SLUICE_STALE_AFTER_SECONDS)
        owner_gone = before.heartbeat_at is None or before.heartbeat_at < stale_before
        redelivered = before.state == S.RUNNING and task_id == before.celery_task_id and owner_gone
        claimable = before.state == S.QUEUED or redelivered
        if claim.job is None:
            # A queued job in a running queue must be claimable: else nothing ever runs it.
            assert not (
                before.state == S.QUEUED and not self._paused(before.queue)
            ), f"queued job {job_id} refused a delivery: {claim.reason}"
            # A dead owner's own message takes over at once (attempts left, queue running).
            assert not (
                redelivered and before.attempts < before.max_attempts and not self._paused(before.queue)
            ), f"job {job_id}'s redelivery did not take over from a dead worker: {claim.reason}"
            return None
        assert claimable, f"job {job_id} was claimed from {before.state}"
        assert claim.job.attempts == before.attempts + 1
        key = (job_id, claim.job.attempts)
        assert key not in self.handed_out, f"attempt {key} handed out twice"
        self.handed_out.add(key)
        a = Attempt(job_id, claim.job.attempts, task_id)
        if claim.job.effect_committed:
            # The engine finishes from the committed effect instead of running the handler.
            outcome = Outcome.from_dict(claim.job.effect_outcome or {"result": R.SUCCESS})
            assert services.job_finish(job_id=job_id, attempt=a.attempt, outcome=outcome)
            return None
        self.alive[a] = 0
        return a

    def _shift_clock(self, *, heartbeats: bool, dispatches: bool) -> None:
        """Move time forward by moving the rows' timestamps back (the reaper reads ``now``)."""
        if heartbeats:
            past = timedelta(seconds=django_settings.SLUICE_STALE_AFTER_SECONDS + 1)
            Job.objects.filter(heartbeat_at__isnull=False).update(heartbeat_at=timezone.now() - past)
        if dispatches:
            past = timedelta(seconds=django_settings.SLUICE_REDISPATCH_AFTER_SECONDS + 1)
            Job.objects.filter(state=S.QUEUED).update(
                queued_at=timezone.now() - past, dispatched_at=timezone.now() - past
            )

    def _drive_to_completion(self) -> None:
        """From here, an operator resuming queues, the reaper and healthy workers finish everything."""
        for q in QueueState.objects.filter(paused=True).values_list("name", flat=True):
            services.queue_resume(queue=q, actor="drive")
        budget = 3 * Job.objects.count() + 10
        for _ in range(budget):
            states = set(Job.objects.values_list("state", flat=True))
            if states <= {S.FINISHED}:
                break
            if S.RUNNING in states:  # their workers are gone: the reaper takes them back
                self._shift_clock(heartbeats=True, dispatches=False)
                services.reap(queue_depths={q: 1 for q in QUEUES})
            # healthy workers take every queued job (the messages the reaper re-sends)
            for job_id in Job.objects.filter(state=S.QUEUED).values_list("pk", flat=True):
                a = self._claim(job_id, f"drive-{uuid.uuid4()}")
                if a is not None:
                    assert services.job_finish(job_id=job_id, attempt=a.attempt, outcome=Outcome(message="ok"))
                    self._end(a)
        stuck = list(Job.objects.exclude(state=S.FINISHED).values_list("pk", "state", "status_message"))
        assert not stuck, f"wedged: reaper and workers cannot finish {stuck}"
        not_done = list(Pipeline.objects.exclude(status__in=[s.value for s in DONE_STATUSES]))
        assert not not_done, f"pipelines not done although every job finished: {not_done}"
        self._check_everything()

    # --- planning -----------------------------------------------------------------------

    @precondition(lambda self: self.n_pipelines < 3)
    @rule(
        target=jobs,
        shape=st.sampled_from(["lone", "chain", "fan"]),
        kinds=st.lists(st.sampled_from(KINDS), min_size=1, max_size=20),
    )
    def plan(self, shape: str, kinds: list[str]) -> Any:
        """A pipeline of ``len(kinds)`` jobs (the kinds set their queues)."""
        pipeline = services.pipeline_plan(kind="model", specs=_shape(shape, len(kinds), kinds))
        self.n_pipelines += 1
        return multiple(*pipeline.jobs.order_by("id").values_list("pk", flat=True))

    @rule(target=pipelines, job=jobs)
    def pipeline_of(self, job: int) -> Any:
        return self._job(job).pipeline_id

    # --- a worker -----------------------------------------------------------------------

    @rule(target=attempts, job=jobs)
    def deliver_fresh(self, job: int) -> Any:
        a = self._claim(job, str(uuid.uuid4()))
        return multiple() if a is None else a

    @rule(target=attempts, job=jobs, owner_silent=st.booleans())
    def deliver_duplicate(self, job: int, owner_silent: bool) -> Any:
        """The broker redelivers the running job's message: its worker died (heartbeat
        stale), or it is alive (visibility timeout, reconnect) and must not be disturbed."""
        if owner_silent:
            stale = timezone.now() - timedelta(seconds=django_settings.SLUICE_STALE_AFTER_SECONDS + 1)
            Job.objects.filter(pk=job, heartbeat_at__isnull=False).update(heartbeat_at=stale)
        before = self._job(job)
        a = self._claim(job, before.celery_task_id or str(uuid.uuid4()))
        if before.state == S.RUNNING and not owner_silent:
            after = self._job(job)
            assert (after.state, after.attempts) == (S.RUNNING, before.attempts), "a live attempt was taken over"
        return multiple() if a is None else a

    @rule(a=attempts, step=st.integers(0, 6))
    def progress(self, a: Attempt, step: int) -> None:
        current = self._owns(a)
        done = min(TOTAL, self.alive.get(a, 0) + step)
        ok = services.job_progress(job_id=a.job_id, attempt=a.attempt, processed=done, total=TOTAL, phase="working")
        assert ok == current, f"progress of {a} accepted={ok} while it owns the job={current}"
        if ok:
            self.alive[a] = done

    @rule(a=attempts)
    def heartbeat(self, a: Attempt) -> None:
        current = self._owns(a)
        assert services.job_heartbeat(job_id=a.job_id, attempt=a.attempt) == current

    @precondition(lambda self: any(a not in self.committed for a in self.alive))
    @rule(a=attempts)
    def commit_effect(self, a: Attempt) -> None:
        """The handler's durable write and the job's "effect committed" marker, in one transaction."""
        if a in self.committed or a not in self.alive:
            return
        current = self._owns(a)
        try:
            with transaction.atomic():
                services.job_commit_effect(job_id=a.job_id, attempt=a.attempt, outcome=Outcome(message="loaded"))
        except JobAborted:
            assert not current, f"{a} owns the job but its effect was refused"
            self._end(a)
            return
        assert current, f"{a} no longer owns the job but its effect committed"
        self.committed.add(a)
        self.effect_runs[a.job_id] += 1
        assert self.effect_runs[a.job_id] == 1, f"job {a.job_id}'s effect committed twice"

    @rule(
        a=consumes(attempts),
        result=st.sampled_from(["success", "warning", "error", "skipped", "superseded", "retryable"]),
    )
    def finish(self, a: Attempt, result: str) -> None:
        current = self._owns(a)
        job = self._job(a.job_id)
        if a in self.committed and result != "success":
            result = "success"  # the engine returns the effect's outcome once it is committed
        if result == "retryable" and a.attempt < job.max_attempts:
            ok = services.job_requeue_after_failure(
                job_id=a.job_id, attempt=a.attempt, countdown=1.0,
                error={"type": "OperationalError", "message": "connection reset", "traceback": "", "stage": "run"},
            )
        else:
            if result == "superseded":  # an ingest whose upload a later one replaced
                outcome = Outcome(R.SKIPPED, "not applied", superseded_by="upload #1")
            else:
                outcome = Outcome(R.ERROR if result == "retryable" else result, result)
            ok = services.job_finish(job_id=a.job_id, attempt=a.attempt, outcome=outcome)
        assert ok == current, f"finish of {a} accepted={ok} while it owns the job={current}"
        self._end(a)

    @rule(on=st.booleans())
    def sql_path(self, on: bool) -> None:
        """Claims and OK finishes go through the PL/pgSQL path or the Python one from here
        on (pipelines.services.sql_transitions): both keep one set of counters, so any
        interleaving of the two must hold every invariant."""
        sql_transitions.ENABLED = on

    @rule(a=consumes(attempts))
    def worker_dies(self, a: Attempt) -> None:
        """SIGKILL: the attempt writes nothing more; its job keeps its last heartbeat."""
        self._end(a)

    # --- an operator --------------------------------------------------------------------

    def _control(self, call: Any, **kwargs: Any) -> ConflictError | None:
        try:
            call(actor="model-op", **kwargs)
        except IllegalTransition as exc:
            raise AssertionError(f"{call.__name__}({kwargs}) attempted an illegal transition: {exc}") from exc
        except ConflictError as exc:
            return exc
        return None

    def _note_retry(self) -> None:
        action = OperatorAction.objects.filter(action="retry").order_by("-id").first()
        assert action is not None
        for job_id in action.detail["jobs"]:
            self.reset_by_retry.add(job_id)
            self.effect_runs[job_id] = 0

    @rule(job=jobs)
    def cancel_job(self, job: int) -> None:
        before = self._job(job)
        conflict = self._control(services.job_cancel, job_id=job)
        after = self._job(job)
        if conflict is None:
            assert (after.state, after.result) == (S.FINISHED, R.CANCELLED)
        else:
            assert before.state == S.FINISHED or before.effect_committed, f"cancel refused: {conflict.message}"

    @rule(pipeline=pipelines)
    def cancel_pipeline(self, pipeline: Any) -> None:
        before = list(Job.objects.filter(pipeline_id=pipeline))
        conflict = self._control(services.pipeline_cancel, pipeline_id=pipeline)
        if conflict is not None:
            assert all(j.state == S.FINISHED or j.effect_committed for j in before), conflict.message

    @rule(job=jobs)
    def retry_job(self, job: int) -> None:
        before = self._job(job)
        conflict = self._control(services.job_retry, job_id=job)
        if conflict is None:
            self._note_retry()
            assert self._job(job).state in (S.NOT_STARTED, S.QUEUED)
        elif before.result in NOT_APPLIED:
            assert conflict.code == "still_running", conflict.message
            assert Job.objects.filter(pipeline_id=before.pipeline_id, state=S.RUNNING).exists()

    @rule(pipeline=pipelines)
    def retry_pipeline(self, pipeline: Any) -> None:
        before = list(Job.objects.filter(pipeline_id=pipeline))
        conflict = self._control(services.pipeline_retry, pipeline_id=pipeline)
        if conflict is None:
            self._note_retry()
        else:
            running = any(j.state == S.RUNNING for j in before)
            assert running or not any(j.result in NOT_APPLIED for j in before), conflict.message

    @rule(job=jobs, force=st.booleans())
    def recover(self, job: int, force: bool) -> None:
        before = self._job(job)
        conflict = self._control(services.job_recover, job_id=job, force=force)
        if conflict is None:
            assert self._job(job).state == S.QUEUED
        else:
            assert before.state != S.RUNNING or not force, conflict.message

    @rule(queue=st.sampled_from(QUEUES))
    def pause(self, queue: str) -> None:
        self._control(services.queue_pause, queue=queue)
        assert self._paused(queue)

    @rule(queue=st.sampled_from(QUEUES))
    def resume(self, queue: str) -> None:
        self._control(services.queue_resume, queue=queue)
        assert not self._paused(queue)

    # --- the reaper ---------------------------------------------------------------------

    @rule(heartbeats=st.booleans(), dispatches=st.booleans(), empty_queues=st.booleans())
    def reaper(self, heartbeats: bool, dispatches: bool, empty_queues: bool) -> None:
        self._shift_clock(heartbeats=heartbeats, dispatches=dispatches)
        report = services.reap(queue_depths={} if empty_queues else {q: 1 for q in QUEUES})
        for job_id in report.recovered:
            assert self._job(job_id).state == S.QUEUED
        for job_id in report.failed:  # out of attempts: error, unless its data is already in
            job = self._job(job_id)
            assert (job.state, job.result) == (S.FINISHED, R.SUCCESS if job.effect_committed else R.ERROR)

    # --- invariants ---------------------------------------------------------------------

    @invariant()
    def everything_holds(self) -> None:
        self._check_everything()

    def _check_everything(self) -> None:
        rows = _rows()
        pipelines = {p.pk: p for p in Pipeline.objects.all()}
        self._check_jobs(rows)
        self._check_pipelines(rows, pipelines)
        self._check_events(rows, pipelines)
        self.seen = rows
        self.reset_by_retry = set()

    def _check_jobs(self, rows: dict[int, Job]) -> None:
        for job in rows.values():
            assert (job.state, job.result) in ALLOWED_PAIRS, f"job {job.pk}: ({job.state}, {job.result})"
            if job.result in NOT_APPLIED:
                # A job whose data went in must not read failed, cancelled or skipped.
                assert not job.effect_committed, f"job {job.pk} is {job.result} but its effect committed"
            if job.state != S.FINISHED:
                assert not job.cancel_requested, f"job {job.pk} is {job.state} with a cancel pending"
            if job.state == S.RUNNING:
                assert job.heartbeat_at is not None, f"running job {job.pk} has no heartbeat: the reaper can't see it"
            percent = job.progress_percent
            assert (percent == 100.0) == (job.state == S.FINISHED), f"job {job.pk} {job.state} at {percent} %"
            old = self.seen.get(job.pk)
            if old is None:
                continue
            if old.result == R.CANCELLED and job.pk not in self.reset_by_retry:
                assert job.result == R.CANCELLED, f"cancelled job {job.pk} became {job.state}/{job.result}"
            if old.state == job.state == S.RUNNING and old.attempts == job.attempts:
                assert job.progress_processed >= old.progress_processed, f"job {job.pk}'s progress went back"

    def _check_pipelines(self, rows: dict[int, Job], pipelines: dict[Any, Pipeline]) -> None:
        by_pipeline: dict[Any, list[Job]] = defaultdict(list)
        for job in rows.values():
            by_pipeline[job.pipeline_id].append(job)
        for pipeline in pipelines.values():
            jobs = by_pipeline[pipeline.pk]
            snaps = [dag.JobSnapshot(id=j.pk, job_type=j.job_type, state=j.state, result=j.result, det=j.det,
                                     processed=j.progress_processed, total=j.progress_total, phase=j.phase,
                                     superseded_by=(j.meta or {}).get("superseded_by", ""))
                     for j in sorted(jobs, key=lambda j: j.pk)]
            assert pipeline.status == dag.pipeline_status(snaps), f"pipeline {pipeline.pk} reads {pipeline.status}"
            percent, phase = dag.pipeline_progress(snaps)
            assert (pipeline.progress_percent, pipeline.phase) == (percent, phase[:200])
            # The counters the SQL path moves instead of recounting (and the Python path recounts).
            counters = {
                "jobs_finished": sum(j.state == S.FINISHED for j in jobs),
                "jobs_queued": sum(j.state == S.QUEUED for j in jobs),
                "jobs_running": sum(j.state == S.RUNNING for j in jobs),
                "success_count": sum(j.result == R.SUCCESS for j in jobs),
                "warning_count": sum(j.result == R.WARNING for j in jobs),
                "error_count": sum(j.result == R.ERROR for j in jobs),
                "cancelled_count": sum(j.result == R.CANCELLED for j in jobs),
                "superseded_count": sum(bool(s.superseded_by) and s.state == S.FINISHED for s in snaps),
            }
            assert {k: getattr(pipeline, k) for k in counters} == counters, f"pipeline {pipeline.pk}'s counters"
            assert (pipeline.finished_at is not None) == pipeline.is_done
            assert (pipeline.progress_percent == 100.0) == pipeline.is_done, (
                f"pipeline {pipeline.pk} {pipeline.status} at {pipeline.progress_percent} %"
            )
            self._check_live(pipeline, {j.pk: j for j in jobs})

    def _check_live(self, pipeline: Pipeline, jobs: dict[int, Job]) -> None:
        """Every unfinished job has something that will move it: no wedge, statically."""
        if pipeline.pk not in self.edges:  # edges never change after planning
            self.edges[pipeline.pk] = edges_of(pipeline.pk)[0]
        depends_on = self.edges[pipeline.pk]
        for job in jobs.values():
            parents = [jobs[p] for p in depends_on.get(job.pk, ())]
            finished_ok = [p.state == S.FINISHED and p.result in dag.OK_RESULTS for p in parents]
            if job.state == S.NOT_STARTED:
                assert not all(finished_ok), f"job {job.pk} waits although every upstream job is done"
                assert not any(
                    p.state == S.FINISHED and (p.result in dag.FAILED_RESULTS or (p.meta or {}).get("superseded_by"))
                    for p in parents
                ), f"job {job.pk} waits for an upstream job that failed or was superseded"
            elif job.state == S.QUEUED:
                assert all(finished_ok), f"job {job.pk} is queued before its upstream finished"

    def _check_events(self, rows: dict[int, Job], pipelines: dict[Any, Pipeline]) -> None:
        """Only the events appended since the last step are read; the rest is remembered."""
        state_events: dict[int, int] = defaultdict(int)
        for e in JobEvent.objects.filter(seq__gt=self.last_seq).order_by("pk"):
            assert e.seq == self.last_seq + 1 if self.last_seq else True, f"seq {e.seq} after {self.last_seq}"
            self.last_seq = e.seq
            pseq = self.pipeline_seq.get(e.pipeline_id, 0)
            assert e.pipeline_seq == pseq + 1, f"pipeline {e.pipeline_id}: pipeline_seq {e.pipeline_seq} after {pseq}"
            self.pipeline_seq[e.pipeline_id] = e.pipeline_seq
            self.pipeline_payload[e.pipeline_id] = e.payload["pipeline"]
            if e.job_id is None:
                continue
            self.job_payload[e.job_id] = e.payload["job"]
            if e.kind != "state":
                continue
            state_events[e.job_id] += 1
            state = e.payload["job"]["state"]
            prev = self.last_state_event.get(e.job_id)
            if prev is not None:
                assert (prev, state) in ALLOWED_EVENT_STEPS, f"job {e.job_id}: event {prev} → {state}"
            self.last_state_event[e.job_id] = state
        for pipeline in pipelines.values():
            assert pipeline.last_pipeline_seq == self.pipeline_seq.get(pipeline.pk, 0)
            assert self.pipeline_payload.get(pipeline.pk) == events.pipeline_dict(pipeline), (
                f"pipeline {pipeline.pk}'s last event is not its row"
            )
        for job in rows.values():
            assert self.job_payload.get(job.pk) == events.job_dict(job), f"job {job.pk}'s last event is not its row"
            old = self.seen.get(job.pk)
            if old is not None and (old.state, old.result, old.attempts) != (job.state, job.result, job.attempts):
                assert state_events[job.pk] >= 1, f"job {job.pk} changed {old.state} → {job.state} without an event"


class _Unsent:
    """A built canvas whose broker send is recorded instead of made (no worker, no Redis)."""

    sent: list[Any] = []

    def __init__(self, canvas: Any) -> None:
        self.canvas = canvas

    def apply_async(self, **options: Any) -> None:
        self.sent.append(self.canvas)


def test_the_job_state_machine_holds_under_any_sequence_of_controls(monkeypatch: pytest.MonkeyPatch) -> None:
    build = dispatch.build_canvas

    def build_unsent(job_ids: Any, **options: Any) -> Any:
        canvas = build(job_ids, **options)
        return None if canvas is None else _Unsent(canvas)

    monkeypatch.setattr(dispatch, "build_canvas", build_unsent)
    run_state_machine_as_test(JobStateMachine, settings=settings.get_profile(PROFILE))
