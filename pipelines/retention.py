"""History retention: what a purge would delete (dry run), and the purge itself, in small batches.

Layering (issue 9): the engine owns pipelines, jobs, their edges and events, and knows
nothing of what a domain app hangs off a pipeline. A domain app registers a
:class:`RetentionHook` (ingestion: row errors keyed by job id, uploads with their stored
files, and which pipelines carry the provenance of live data). The orchestration lives
here, beside the tables that drive it; hooks answer only about their own rows, so the
engine imports no domain app.

What is purged: pipelines that finished before the cutoff (every ``DONE_STATUSES``), with
their jobs, edges and events, and what hooks attach to them; then what hooks sweep on
their own (uploads no surviving pipeline refers to). Never purged: an unfinished
pipeline (and so nothing it reads), and the pipelines a hook protects. Operator actions
are the audit trail and are kept: their link to a purged pipeline is cleared, the
target id they name stays.

Locks: every batch is one short transaction. It takes at most ``batch_size`` pipelines
``FOR UPDATE SKIP LOCKED`` (a pipeline someone is retrying at this moment is skipped,
not waited for: the next run takes it), with ``lock_timeout`` as a guard, so a
transition on any other pipeline never waits behind the purge. Stored files are removed
only after the transaction that deleted their rows committed: a crash in between leaves
a file without a row, never a row without its file.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from celery import shared_task
from django.conf import settings
from django.core.files.storage import default_storage
from django.db import connection, transaction
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from pipelines.models import DONE_STATUSES, Job, JobEvent, OperatorAction, OperatorActionKind, Pipeline
from pipelines.services.audit import operator_action_record
from pipelines.services.planning import JobSpec, pipeline_plan

logger = logging.getLogger(__name__)

PURGE_JOB_TYPE = "retention_purge"
PURGE_PIPELINE_KIND = "retention"
# A purge waits this long for a row lock it did not expect before giving up the batch
# (an error the job retries), rather than ever queueing work behind it.
LOCK_TIMEOUT = "2s"


@dataclass(frozen=True)
class Section:
    """One line of the dry run: what kind of row, how many, and the bytes of its files."""

    key: str
    label: Any
    count: int
    bytes: int | None = None
    # Purged by a hook's own batches (not with its pipeline): counts toward progress.
    swept: bool = False
    note: Any = ""


@dataclass(frozen=True)
class Plan:
    cutoff: datetime
    sections: list[Section]

    def count(self, key: str) -> int:
        return next((s.count for s in self.sections if s.key == key), 0)

    @property
    def units(self) -> int:
        """What the purge's percentage counts: pipelines, and the rows hooks sweep."""
        return self.count("pipelines") + sum(s.count for s in self.sections if s.swept)

    @property
    def counts(self) -> dict[str, int]:
        return {s.key: s.count for s in self.sections}


@dataclass(frozen=True)
class StoredFile:
    """A file in ``default_storage`` (any backend) and its size as recorded with its row
    (``None``: not recorded, asked of the storage when it is removed)."""

    name: str
    size: int | None


@dataclass
class SweepBatch:
    deleted: dict[str, int]
    files: list[StoredFile] = field(default_factory=list)
    # How many of the rows the hook's ``swept`` section counted (the percentage's unit).
    units: int = 0


class RetentionHook(Protocol):
    def protected_pipelines(self) -> list[QuerySet[Any]]:
        """Querysets of pipeline ids (no NULLs) kept whatever their age."""

    def plan(self, *, cutoff: datetime, purging: QuerySet[Pipeline], jobs: QuerySet[Job]) -> list[Section]:
        """The hook's dry-run lines, given the pipelines (and their jobs) the purge takes."""

    def delete_with_pipelines(self, *, pipeline_ids: list[Any], job_ids: list[int]) -> dict[str, int]:
        """Delete what hangs off these pipelines, inside their batch's transaction."""

    def sweep_batch(self, *, cutoff: datetime, batch_size: int) -> SweepBatch:
        """Delete at most ``batch_size`` of the hook's own rows (inside a transaction the
        caller opened); the files returned are removed after it commits. Empty when done."""


_HOOKS: list[RetentionHook] = []


def register_hook(hook: RetentionHook) -> None:
    if not any(type(h) is type(hook) for h in _HOOKS):
        _HOOKS.append(hook)


def cutoff_for(days: int | None = None) -> datetime:
    return timezone.now() - timedelta(days=settings.SLUICE_RETENTION_DAYS if days is None else days)


def purgeable(cutoff: datetime) -> QuerySet[Pipeline]:
    """Finished before the cutoff and not protected by any hook."""
    qs = Pipeline.objects.filter(status__in=DONE_STATUSES, finished_at__lt=cutoff)
    for hook in _HOOKS:
        for ids in hook.protected_pipelines():
            qs = qs.exclude(id__in=ids)
    return qs


def plan(*, cutoff: datetime) -> Plan:
    """The dry run: exactly what :func:`purge` would delete now."""
    pipelines = purgeable(cutoff)
    jobs = Job.objects.filter(pipeline__in=pipelines.values("id"))
    sections = [
        Section("pipelines", _("pipelines"), pipelines.count()),
        Section("jobs", _("jobs"), jobs.count()),
        Section("events", _("events"), JobEvent.objects.filter(pipeline__in=pipelines.values("id")).count()),
    ]
    for hook in _HOOKS:
        sections += hook.plan(cutoff=cutoff, purging=pipelines, jobs=jobs)
    sections.append(Section(
        "operator_actions", _("operator actions"),
        OperatorAction.objects.filter(pipeline__in=pipelines.values("id")).count(),
        note=_("kept (the audit trail): only their link to the purged pipeline is cleared"),
    ))
    return Plan(cutoff=cutoff, sections=sections)


@dataclass
class Progress:
    done: int
    total: int
    phase: str
    deleted: Counter[str]
    files_removed: int
    bytes_freed: int

    @property
    def percent(self) -> float:
        return 100.0 if not self.total else min(100.0, 100.0 * self.done / self.total)


def _remove(files: Iterable[StoredFile]) -> tuple[int, int]:
    """Delete through the storage API (a local file or an S3 object); one that is already
    gone is not counted, and one that cannot be deleted is logged and left (an orphan
    object costs space, never correctness: no row names it any more)."""
    removed = freed = 0
    for stored in files:
        try:
            if not default_storage.exists(stored.name):
                continue
            size = stored.size if stored.size is not None else default_storage.size(stored.name)
            default_storage.delete(stored.name)
        except Exception:
            logger.warning("could not remove the stored file %s", stored.name, exc_info=True)
            continue
        removed += 1
        freed += size
    return removed, freed


def _lock_guard() -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")


def _purge_pipeline_batch(cutoff: datetime, batch_size: int) -> dict[str, int]:
    with transaction.atomic():
        _lock_guard()
        ids = list(
            purgeable(cutoff).order_by("created_at").select_for_update(skip_locked=True, of=("self",))
            .values_list("id", flat=True)[:batch_size]
        )
        if not ids:
            return {}
        job_ids = list(Job.objects.filter(pipeline_id__in=ids).values_list("id", flat=True))
        attached: Counter[str] = Counter()
        for hook in _HOOKS:
            attached.update(hook.delete_with_pipelines(pipeline_ids=ids, job_ids=job_ids))
        # The collector deletes jobs, edges and events with their pipelines and clears the
        # links other tables hold (operator actions, uploads); ``only`` keeps job meta unread.
        _, by_model = Pipeline.objects.filter(id__in=ids).only("id").delete()
        return {
            "pipelines": by_model.get("pipelines.Pipeline", 0),
            "jobs": by_model.get("pipelines.Job", 0),
            "events": by_model.get("pipelines.JobEvent", 0),
            **attached,
        }


def purge(
    *,
    cutoff: datetime,
    batch_size: int | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    total: int | None = None,
) -> Progress:
    """Purge what :func:`plan` lists, batch by batch; ``on_progress`` after every batch.

    ``total`` is the dry run's unit count (read here when not given): the percentage is
    of that. ``on_progress`` may raise to stop between batches (what is done stays done).
    """
    size = batch_size or settings.SLUICE_RETENTION_BATCH_SIZE
    if total is None:
        total = plan(cutoff=cutoff).units
    state = Progress(done=0, total=total, phase="pipelines", deleted=Counter(), files_removed=0, bytes_freed=0)
    while True:
        deleted = _purge_pipeline_batch(cutoff, size)
        if not deleted:
            break
        state.deleted.update(deleted)
        state.done += deleted.get("pipelines", 0)
        if on_progress:
            on_progress(state)
    for hook in _HOOKS:
        state.phase = "sweep"
        while True:
            with transaction.atomic():
                _lock_guard()
                batch = hook.sweep_batch(cutoff=cutoff, batch_size=size)
            # Committed: only now may the files go.
            removed, freed = _remove(batch.files)
            if not batch.deleted:
                break
            state.deleted.update(batch.deleted)
            state.done += batch.units
            state.files_removed += removed
            state.bytes_freed += freed
            if on_progress:
                on_progress(state)
    state.phase = "done"
    state.total = max(state.total, state.done)
    if on_progress:
        on_progress(state)
    return state


def summary(state: Progress) -> str:
    parts = ", ".join(f"{n} {key.replace('_', ' ')}" for key, n in state.deleted.items() if n)
    return f"Purged {parts or 'nothing'}; {state.files_removed} file(s), {state.bytes_freed} bytes freed"


def record(*, actor: Any, cutoff: datetime, detail: dict[str, Any], pipeline: Pipeline | None = None,
           reason: str = "") -> OperatorAction:
    return operator_action_record(
        actor=actor, action=OperatorActionKind.PURGE, target_type="history", target_id=cutoff.date().isoformat(),
        pipeline=pipeline, reason=reason, detail={"cutoff": cutoff.isoformat(), **detail},
    )


def purge_start(*, actor: Any, days: int | None = None, reason: str = "") -> tuple[Pipeline, Plan]:
    """Start a purge as a pipeline (one ``retention_purge`` job on a worker, its progress
    live like any job's) and record who asked for it, with the dry run's counts."""
    cutoff = cutoff_for(days)
    dry = plan(cutoff=cutoff)
    with transaction.atomic():
        pipeline = pipeline_plan(
            kind=PURGE_PIPELINE_KIND,
            specs=[JobSpec(key="purge", job_type=PURGE_JOB_TYPE,
                           params={"cutoff": cutoff.isoformat(), "total": dry.units})],
            created_by=actor,
            params={"cutoff": cutoff.isoformat()},
        )
        record(actor=actor, cutoff=cutoff, pipeline=pipeline, reason=reason, detail={"planned": dry.counts})
    return pipeline, dry


# Beat's periodic purge (``CELERY_BEAT_SCHEDULE["sluice-purge"]``). Registered with this
# module, which every process imports with the engine's handlers (builtin_handlers).
@shared_task(name="sluice.purge_history", ignore_result=True)
def purge_task() -> dict[str, int]:
    """The purge with SLUICE_RETENTION_DAYS, in batches; audited as ``beat`` when it deleted anything."""
    cutoff = cutoff_for()
    state = purge(cutoff=cutoff)
    if state.done:
        record(actor="beat", cutoff=cutoff, detail={
            "deleted": dict(state.deleted), "files_removed": state.files_removed, "bytes_freed": state.bytes_freed})
    return dict(state.deleted)
