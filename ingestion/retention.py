"""What ingestion hangs off the engine's history, told to ``pipelines.retention``.

- Row errors are keyed by job id (no foreign key, for load speed): they go in the
  same transaction as their job.
- Uploads are swept on their own once no remaining pipeline refers to them: a file
  may be ingested by several pipelines (its upload, each re-run), and an unfinished
  one still reads it. The stored file goes after the row's deletion commits, through
  the storage API (a local file or an S3 object alike). A re-run
  planned while the sweep runs holds the upload's row lock (``upload_rerun``): the
  sweep skips locked rows and re-checks the ones it locked, so either the upload
  stays (the re-run's pipeline refers to it) or the re-run is refused naming it.
- Provenance of live data is kept whatever its age: the upload whose rows are the
  module-year's data (``ModuleState.data_upload_id``), the factors uploads that
  factor rows still come from, and the pipelines that loaded the live data and
  factors and computed the live totals (with their jobs, events and row errors:
  what was rejected from the data in use). Everything older than these goes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import CharField, Count, Exists, OuterRef, Q, QuerySet, Sum
from django.db.models.fields.json import KT
from django.db.models.functions import Cast
from django.utils.translation import gettext_lazy as _

from ingestion.models import Factor, ModuleState, RowError, Upload
from ingestion.services import raw_response_name
from pipelines.models import Job, Pipeline
from pipelines.retention import Section, StoredFile, SweepBatch, register_hook


def _live_upload_ids() -> list[QuerySet[Any]]:
    return [
        ModuleState.objects.filter(data_upload_id__isnull=False).values("data_upload_id"),
        ModuleState.objects.filter(factors_upload_id__isnull=False).values("factors_upload_id"),
        Factor.objects.values("upload_id"),
    ]


def purgeable_uploads(cutoff: datetime, *, purging: QuerySet[Pipeline] | None = None) -> QuerySet[Upload]:
    """Uploads older than the cutoff that carry no live provenance and that no pipeline
    outside ``purging`` refers to (the upload's own pipeline or any re-run of it)."""
    remaining = Pipeline.objects.annotate(upload_ref=KT("params__upload_id")).filter(
        upload_ref=Cast(OuterRef("pk"), output_field=CharField())
    )
    qs = Upload.objects.filter(created_at__lt=cutoff)
    if purging is not None:
        remaining = remaining.exclude(id__in=purging.values("id"))
        qs = qs.filter(Q(pipeline__isnull=True) | Q(pipeline__in=purging.values("id")))
    else:
        qs = qs.filter(pipeline__isnull=True)
    for ids in _live_upload_ids():
        qs = qs.exclude(id__in=ids)
    return qs.exclude(Exists(remaining))


class IngestionRetention:
    def protected_pipelines(self) -> list[QuerySet[Any]]:
        live_jobs = Q(id__in=ModuleState.objects.filter(data_job_id__isnull=False).values("data_job_id")) | Q(
            id__in=ModuleState.objects.filter(factors_job_id__isnull=False).values("factors_job_id")
        )
        return [
            Job.objects.filter(live_jobs).values("pipeline_id"),
            ModuleState.objects.filter(totals_pipeline_id__isnull=False).values("totals_pipeline_id"),
        ]

    def plan(self, *, cutoff: datetime, purging: QuerySet[Pipeline], jobs: QuerySet[Job]) -> list[Section]:
        row_errors = RowError.objects.filter(job_id__in=jobs.values("id")).count()
        # Sizes as recorded with the rows: a dry run asks the storage backend nothing
        # (one request per object on S3); the purge counts the files it actually removes.
        uploads = purgeable_uploads(cutoff, purging=purging).aggregate(n=Count("id"), size=Sum("size"))
        files, size = uploads["n"], uploads["size"] or 0
        return [
            Section("row_errors", _("row errors"), row_errors),
            Section("uploads", _("uploads"), files, swept=True),
            Section("upload_files", _("stored upload files"), files, bytes=size,
                    note=_("removed after the upload rows' deletion commits")),
        ]

    def delete_with_pipelines(self, *, pipeline_ids: list[Any], job_ids: list[int]) -> dict[str, int]:
        deleted, _ = RowError.objects.filter(job_id__in=job_ids).delete()
        return {"row_errors": deleted}

    def sweep_batch(self, *, cutoff: datetime, batch_size: int) -> SweepBatch:
        # After the pipeline batches: the uploads' pipelines are gone (their link was
        # cleared), so what is left unreferenced and old is what to sweep.
        rows = list(
            purgeable_uploads(cutoff).order_by("id").select_for_update(skip_locked=True, of=("self",))
            .values_list("id", "stored_name", "size")[:batch_size]
        )
        if not rows:
            return SweepBatch(deleted={})
        # Checked again in a new statement (a new snapshot) now that the rows are locked:
        # a re-run that committed between the first statement's snapshot and its lock
        # attempt (``upload_rerun`` locks the upload) refers to its upload by now.
        still = set(purgeable_uploads(cutoff).filter(id__in=[pk for pk, _, _ in rows]).values_list("id", flat=True))
        rows = [(pk, name, size) for pk, name, size in rows if pk in still]
        if not rows:  # all of them re-run meanwhile: stop here, a later purge looks again
            return SweepBatch(deleted={})
        _, by_model = Upload.objects.filter(id__in=[pk for pk, _, _ in rows]).only("id").delete()
        count = by_model.get("ingestion.Upload", 0)
        # With each upload's CSV, the JSON response a scheduled source kept beside it (if any).
        files = [f for _, name, size in rows
                 for f in (StoredFile(name, size), StoredFile(raw_response_name(name), None))]
        return SweepBatch(deleted={"uploads": count}, files=files, units=count)


register_hook(IngestionRetention())
