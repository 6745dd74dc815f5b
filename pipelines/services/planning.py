"""Planning: a whole DAG of jobs inserted in one transaction and sent as one canvas.

Driven by whoever starts work: an upload, an operator's recalculation, the no-op check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.utils import timezone

from pipelines import dag, dispatch, messages, registry, transitions
from pipelines.messages import WAITING_UPSTREAM, WAITING_WORKER
from pipelines.models import Job, JobState, OperatorActionKind, Pipeline
from pipelines.services.audit import actor_user, operator_action_record
from pipelines.services.locked_pipeline import Edge, LockedPipeline, dispatch_on_commit


@dataclass(frozen=True)
class JobSpec:
    key: str
    job_type: str
    det: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    depends_on: tuple[str, ...] = ()


def pipeline_plan(
    *,
    kind: str,
    specs: list[JobSpec],
    year: int | None = None,
    module: str = "",
    created_by: Any = None,
    params: dict[str, Any] | None = None,
) -> Pipeline:
    """Plan a whole DAG in one transaction and dispatch it as one canvas on commit.

    1. Validate: unique keys, known dependencies, registered job types, no cycle.
    2. Insert the pipeline, every job and every edge; jobs without dependencies start
       ``queued``, the rest ``not_started`` (``transitions.PLAN``).
    3. Append the creation events; after commit send the Celery canvas.
    """
    keys = [s.key for s in specs]
    if len(set(keys)) != len(keys):
        raise ValueError("job keys must be unique within a pipeline")
    index = {s.key: i for i, s in enumerate(specs)}
    for s in specs:
        registry.get_handler(s.job_type)
        missing = [d for d in s.depends_on if d not in index]
        if missing:
            raise ValueError(f"job {s.key!r} depends on unknown job(s) {missing}")
    dag.layers(range(len(specs)), {i: [index[d] for d in s.depends_on] for i, s in enumerate(specs)})

    now = timezone.now()
    with transaction.atomic():
        pipeline = Pipeline.objects.create(
            kind=kind,
            year=year,
            module=module,
            created_by=actor_user(created_by),
            params=params or {},
            jobs_total=len(specs),
        )
        jobs = Job.objects.bulk_create([_planned_job(pipeline, s, now) for s in specs])
        Edge.objects.bulk_create(
            [
                Edge(from_job_id=jobs[i].pk, to_job_id=jobs[index[d]].pk)
                for i, s in enumerate(specs)
                for d in s.depends_on
            ]
        )
        # A new row nobody else can see yet: no lock needed, and its jobs are in hand.
        work = LockedPipeline(pipeline, planned=jobs)
        work.note_planned([j.pk for j in jobs])
        work.record_changes(pipeline_event="created")
        # The canvas from what was just inserted: sending it reads nothing back.
        plan = dispatch.Plan(
            queues={j.pk: j.queue for j in jobs},
            depends_on={jobs[i].pk: [jobs[index[d]].pk for d in s.depends_on] for i, s in enumerate(specs)},
        )
        dispatch_on_commit([j.pk for j in jobs], plan=plan)
    return pipeline


def _planned_job(pipeline: Pipeline, spec: JobSpec, now: Any) -> Job:
    state = transitions.planned_state(has_upstream=bool(spec.depends_on))
    ready = state == JobState.QUEUED
    return Job(
        pipeline=pipeline,
        job_type=spec.job_type,
        det=spec.det,
        queue=registry.queue_for(spec.job_type),
        params=spec.params,
        max_attempts=registry.max_attempts_for(spec.job_type),
        state=state,
        queued_at=now if ready else None,
        **messages.columns(WAITING_WORKER if ready else WAITING_UPSTREAM),
    )


def pipeline_start_noop(
    *, width: int = 3, sleep: float = 0.0, actor: Any = None, year: int | None = None
) -> Pipeline:
    """A 1 → width → 1 DAG of no-op jobs: smoke tests, benchmarks, a worker check."""
    specs = [JobSpec(key="start", job_type="noop", params={"sleep": sleep})]
    specs += [
        JobSpec(key=f"mid{i}", job_type="noop", det=f"part{i}", params={"sleep": sleep}, depends_on=("start",))
        for i in range(width)
    ]
    middle = tuple(f"mid{i}" for i in range(width))
    specs.append(JobSpec(key="end", job_type="noop", params={"sleep": sleep}, depends_on=middle))
    pipeline = pipeline_plan(kind="noop", specs=specs, year=year, created_by=actor)
    operator_action_record(
        actor=actor, action=OperatorActionKind.START_PIPELINE, target_type="pipeline",
        target_id=str(pipeline.pk), pipeline=pipeline, detail={"kind": "noop", "width": width},
    )
    return pipeline
