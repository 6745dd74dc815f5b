"""Retention (issue 11 item 6): the dry run's exact counts, the purge of rows and stored
files in batches, what is never purged, the command's progress. Real PostgreSQL."""

from __future__ import annotations

import io
import threading
import time
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection, transaction
from django.utils import timezone

from ingestion import services
from ingestion.models import ModuleState, RowError, Upload, Year
from ingestion.modules import get_module
from ingestion.retention import IngestionRetention
from ingestion.services import raw_response_name
from pipelines import retention
from pipelines.errors import ConflictError
from pipelines.models import Job, JobEvent, OperatorAction, Pipeline
from tests.backoffice.live.conftest import no_dispatch, plan  # noqa: F401 - no_dispatch is a fixture
from tests.support.fixtures import wait_for

pytestmark = pytest.mark.usefixtures("no_dispatch")

YEAR = 2031
CSV = b"unit_id,det,category,fte,comment\nENG-0001,staff,researcher,1.5,a\nENG-0002,staff,phd_student,2,b\n"
JOBS_PER_UPLOAD = 2 + len(get_module("headcount").dets)  # ingest, one recalc per DET, aggregation


@pytest.fixture
def media(settings: Any, tmp_path: Any) -> Any:
    settings.MEDIA_ROOT = tmp_path
    return tmp_path


def _age(pipeline: Pipeline, days: float, *, status: str = "success") -> None:
    when = timezone.now() - timedelta(days=days)
    finished = status not in ("running", "not_started")
    Pipeline.objects.filter(pk=pipeline.pk).update(status=status, created_at=when,
                                                   finished_at=when if finished else None)
    if finished:
        Job.objects.filter(pipeline=pipeline).update(state="finished", result="success", finished_at=when)


def _upload(days: float, *, status: str = "success") -> tuple[Upload, Pipeline]:
    upload, pipeline = services.upload_create(year=YEAR, module="headcount", target="data_entries",
                                              file=io.BytesIO(CSV), filename="staff.csv", actor=None)
    Upload.objects.filter(pk=upload.pk).update(created_at=timezone.now() - timedelta(days=days))
    _age(pipeline, days, status=status)
    return upload, pipeline


def _ingest_job(pipeline: Pipeline) -> Job:
    return Job.objects.get(pipeline=pipeline, job_type="csv_ingest")


def _file(upload: Upload, media: Any) -> Any:
    return media / upload.stored_name


@pytest.fixture
def history(db: Any, media: Any) -> dict[str, Any]:
    """Old and recent history, with everything that must survive a 90-day purge."""
    Year.objects.create(year=YEAR, configured_at=timezone.now())
    old_a, a = _upload(200)                                   # purged, with its 2 row errors
    RowError.objects.bulk_create([RowError(job_id=_ingest_job(a).pk, row=r, column="fte", reason="bad")
                                  for r in (1, 2)])
    live, b = _upload(200)                                    # old, but its rows are the live data
    RowError.objects.create(job_id=_ingest_job(b).pk, row=3, column="fte", reason="bad")
    ModuleState.objects.create(year=YEAR, module="headcount", data_upload_id=live.pk,
                               data_job_id=_ingest_job(b).pk)
    running_upload, c = _upload(200, status="running")        # never: an unfinished pipeline
    recent_upload, d = _upload(5)                             # younger than the cutoff
    rerun_upload, e = _upload(200)                            # purged, but its file is re-run now:
    rerun = services.upload_rerun(upload_id=rerun_upload.pk, actor=None)  # the upload stays
    orphan, _ = _upload(200)                                  # its pipeline purged long ago (old purge)
    Pipeline.objects.filter(pk=orphan.pipeline_id).delete()
    return {"a": a, "b": b, "c": c, "d": d, "e": e, "rerun": rerun, "old_a": old_a, "live": live,
            "running_upload": running_upload, "recent_upload": recent_upload, "rerun_upload": rerun_upload,
            "orphan": Upload.objects.get(pk=orphan.pk)}


def test_dry_run_counts_exactly_what_the_purge_deletes_and_deletes_nothing(history: dict[str, Any],
                                                                           media: Any) -> None:
    purged = [history["a"], history["e"]]
    files = [_file(history["old_a"], media), _file(history["orphan"], media)]
    before = (Pipeline.objects.count(), Upload.objects.count(), RowError.objects.count())

    dry = retention.plan(cutoff=retention.cutoff_for(90))

    assert dry.counts == {
        "pipelines": 2,
        "jobs": 2 * JOBS_PER_UPLOAD,
        "events": JobEvent.objects.filter(pipeline__in=purged).count(),
        "row_errors": 2,
        "uploads": 2,  # the first upload, and the one whose pipeline went before uploads were purged
        "upload_files": 2,
        "exports": 0,
        "export_files": 0,
        "operator_actions": 2,  # the two uploads' audit records: kept, unlinked
    }
    assert dry.counts["events"] >= 2 * JOBS_PER_UPLOAD  # each job's creation at least
    bytes_ = next(s.bytes for s in dry.sections if s.key == "upload_files")
    assert bytes_ == sum(f.stat().st_size for f in files) == 2 * len(CSV)
    assert (Pipeline.objects.count(), Upload.objects.count(), RowError.objects.count()) == before


def test_purge_removes_rows_and_files_and_keeps_running_recent_and_live_provenance(history: dict[str, Any],
                                                                                   media: Any) -> None:
    actions = set(OperatorAction.objects.filter(pipeline__in=[history["a"], history["e"]])
                  .values_list("id", flat=True))
    gone_files = [_file(history["old_a"], media), _file(history["orphan"], media)]
    # As a scheduled source keeps its JSON response beside the CSV made from it
    raw_json = media / raw_response_name(history["orphan"].stored_name)
    raw_json.write_bytes(b'{"rows": []}')
    gone_files.append(raw_json)
    assert all(f.exists() for f in gone_files)

    state = retention.purge(cutoff=retention.cutoff_for(90))

    assert dict(state.deleted) == {"pipelines": 2, "jobs": 2 * JOBS_PER_UPLOAD, "events": state.deleted["events"],
                                   "row_errors": 2, "uploads": 2}
    assert state.files_removed == 3 and state.bytes_freed == 2 * len(CSV) + len(b'{"rows": []}')
    assert not Pipeline.objects.filter(pk__in=[history["a"].pk, history["e"].pk]).exists()
    assert not Job.objects.filter(pipeline_id__in=[history["a"].pk, history["e"].pk]).exists()
    assert not JobEvent.objects.filter(pipeline_id__in=[history["a"].pk, history["e"].pk]).exists()
    assert not Upload.objects.filter(pk__in=[history["old_a"].pk, history["orphan"].pk]).exists()
    assert not any(f.exists() for f in gone_files)
    # Kept: the live data's upload and loading pipeline (with its row error), the running
    # and the recent pipeline with their uploads, and the upload a running re-run reads.
    kept = [history[k].pk for k in ("b", "c", "d", "rerun")]
    assert Pipeline.objects.filter(pk__in=kept).count() == 4
    assert list(RowError.objects.values_list("row", flat=True)) == [3]
    for key in ("live", "running_upload", "recent_upload", "rerun_upload"):
        assert Upload.objects.filter(pk=history[key].pk).exists(), key
        assert _file(history[key], media).exists(), key
    # The audit trail stays, without its link to the purged pipelines.
    assert set(OperatorAction.objects.filter(id__in=actions, pipeline=None).values_list("id", flat=True)) == actions
    # Nothing left to purge: a second run deletes nothing.
    assert retention.plan(cutoff=retention.cutoff_for(90)).units == 0


def test_batches_honour_the_batch_size_and_report_a_real_percentage(db: Any) -> None:
    for _ in range(5):
        _age(plan(width=1), 100)
    seen: list[tuple[int, int, str, float]] = []

    state = retention.purge(cutoff=retention.cutoff_for(90), batch_size=2,
                            on_progress=lambda s: seen.append((s.deleted["pipelines"], s.total, s.phase, s.percent)))

    assert state.deleted["pipelines"] == 5 and not Pipeline.objects.exists()
    assert seen == [(2, 5, "pipelines", 40.0), (4, 5, "pipelines", 80.0), (5, 5, "pipelines", 100.0),
                    (5, 5, "done", 100.0)]


@pytest.mark.django_db(transaction=True)
def test_a_pipeline_locked_by_someone_else_is_skipped_not_waited_for() -> None:
    """A retry holding an old pipeline's row lock is neither blocked by the purge nor
    blocks it: the purge skips that pipeline, takes the others, and a later run takes it."""
    busy, other = plan(width=1), plan(width=1)
    _age(busy, 100)
    _age(other, 100)
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        with transaction.atomic():
            Pipeline.objects.select_for_update().get(pk=busy.pk)
            locked.set()
            release.wait(30)
        connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(10)
        started = time.monotonic()
        state = retention.purge(cutoff=retention.cutoff_for(90), batch_size=1)
        elapsed = time.monotonic() - started
    finally:
        release.set()
        holder.join()
    assert elapsed < 1.5, f"the purge waited {elapsed:.1f}s on a lock"
    assert state.deleted["pipelines"] == 1
    assert list(Pipeline.objects.values_list("pk", flat=True)) == [busy.pk]
    assert retention.purge(cutoff=retention.cutoff_for(90)).deleted["pipelines"] == 1


def test_command_shows_the_dry_run_then_prints_progress_and_audits(history: dict[str, Any]) -> None:
    dry_out = StringIO()
    call_command("purge_history", "--dry-run", stdout=dry_out)
    assert "pipelines: 2" in dry_out.getvalue() and "row errors: 2" in dry_out.getvalue()
    assert "Dry run: nothing deleted." in dry_out.getvalue()
    assert Pipeline.objects.filter(pk=history["a"].pk).exists()

    out = StringIO()
    call_command("purge_history", "--batch-size", "1", "--reason", "quarterly", stdout=out)
    lines = out.getvalue().splitlines()
    # 4 units (2 pipelines, 2 uploads), one batch each: 25 % steps up to 100 %.
    assert [line.split()[0] for line in lines if "%" in line] == ["25.0%", "50.0%", "75.0%", "100.0%", "100.0%"]
    assert lines[-1].startswith("Purged ") and "2 uploads" in lines[-1]
    action = OperatorAction.objects.get(action="purge")
    assert action.actor_name.startswith("cli:") and action.reason == "quarterly"
    assert action.detail["deleted"]["pipelines"] == 2 and action.detail["planned"]["uploads"] == 2


def test_beats_periodic_purge_uses_the_setting_and_is_audited_only_when_it_deleted(db: Any, settings: Any) -> None:
    from config.celery import app

    assert settings.CELERY_BEAT_SCHEDULE["sluice-purge"]["task"] == "sluice.purge_history"
    assert app.tasks["sluice.purge_history"].name == retention.purge_task.name  # registered in every process
    settings.SLUICE_RETENTION_DAYS = 30
    young, old = plan(width=1), plan(width=1)
    _age(young, 20)
    _age(old, 40)
    assert retention.purge_task()["pipelines"] == 1
    assert list(Pipeline.objects.values_list("pk", flat=True)) == [young.pk]
    assert OperatorAction.objects.get(action="purge").actor_name == "beat"
    assert retention.purge_task() == {}
    assert OperatorAction.objects.filter(action="purge").count() == 1


def _orphaned_old_upload() -> Upload:
    """An upload past the cutoff whose pipeline is gone: the sweep's to delete, unless re-run."""
    Year.objects.get_or_create(year=YEAR, defaults={"configured_at": timezone.now()})
    upload, pipeline = _upload(200)
    Pipeline.objects.filter(pk=pipeline.pk).delete()
    return Upload.objects.get(pk=upload.pk)


def _in_thread(fn: Any) -> Any:
    """``fn()`` on another thread (its own database connection); returns its result or raises its error."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except Exception as exc:  # handed to the caller, raised there
            out["error"] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


@pytest.mark.django_db(transaction=True)
def test_a_rerun_being_planned_keeps_its_upload_from_the_sweep(media: Any) -> None:
    """The purge runs while a re-run of an old upload is planned (not yet committed): the
    upload and its file stay, so the re-run's ingest finds its file."""
    old = _orphaned_old_upload()
    with transaction.atomic():
        rerun = services.upload_rerun(upload_id=old.pk, actor=None)
        thread, out = _in_thread(lambda: retention.purge(cutoff=retention.cutoff_for(90)))
        thread.join(30)
        assert not thread.is_alive(), "the purge waited for the re-run instead of skipping its upload"
    assert "error" not in out, out.get("error")
    assert out["value"].deleted.get("uploads", 0) == 0
    assert Upload.objects.filter(pk=old.pk).exists() and _file(old, media).exists()
    assert Pipeline.objects.get(pk=rerun.pk).params["upload_id"] == old.pk
    # Once the re-run's pipeline is gone too, the upload is the sweep's again.
    Pipeline.objects.filter(pk=rerun.pk).delete()
    assert retention.purge(cutoff=retention.cutoff_for(90)).deleted["uploads"] == 1
    assert not _file(old, media).exists()


@pytest.mark.django_db(transaction=True)
def test_a_rerun_of_an_upload_the_sweep_is_deleting_is_refused_naming_it(media: Any) -> None:
    """The sweep holds the old upload (deleting it, not yet committed) when a re-run is
    asked: the re-run waits, then is refused in words — no pipeline on a vanished file."""
    old = _orphaned_old_upload()
    pipelines_before = Pipeline.objects.count()
    hook = IngestionRetention()
    with transaction.atomic():
        batch = hook.sweep_batch(cutoff=retention.cutoff_for(90), batch_size=10)
        assert batch.deleted == {"uploads": 1}
        thread, out = _in_thread(lambda: services.upload_rerun(upload_id=old.pk, actor=None))
        # The re-run is blocked on the upload's row lock until the sweep commits.
        wait_for(_waiting_on_a_lock, timeout=10, message="the re-run waiting for the sweep's lock")
    thread.join(30)
    assert isinstance(out.get("error"), ConflictError), out
    assert out["error"].code == "upload_gone" and str(old.pk) in out["error"].message
    assert Pipeline.objects.count() == pipelines_before


def _waiting_on_a_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")  # else read once per transaction
        cursor.execute("""SELECT count(*) FROM pg_stat_activity
                          WHERE datname = current_database() AND wait_event_type = 'Lock'""")
        return cursor.fetchone()[0] > 0
