"""Year exports (issue 15): start one (an ``export`` pipeline of one job) and the job's body.

The file is built in a local scratch file (the CSV/XLSX writers need a seekable
target; XLSX is a zip), fingerprinted, then handed to Django's storage API
(``default_storage``: the media folder, or object storage when configured) under a
name derived from the export's id. A redelivered attempt writes the same name again
(the previous attempt's object is deleted first), so a retry never leaves a stray file.
"""

from __future__ import annotations

import hashlib
import tempfile
from typing import IO, Any

from django.core.files import File
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext_noop

from ingestion.exports.rows import year_snapshot
from ingestion.exports.writers import writer_for
from ingestion.job_types import EXPORT, EXPORT_KIND
from ingestion.models import Export, ExportFormat, Year
from pipelines.context import JobContext
from pipelines.messages import msg
from pipelines.models import JobResult, OperatorActionKind, Pipeline
from pipelines.registry import Outcome
from pipelines.services import ConflictError, JobSpec, actor_user, operator_action_record, pipeline_plan

HASH_CHUNK = 1024 * 1024
CONTENT_TYPES: dict[str, str] = {
    ExportFormat.CSV: "text/csv; charset=utf-8",
    ExportFormat.XLSX: "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}


class ExportNotReady(ConflictError):
    """The export's file is not stored yet (its pipeline runs, failed or was cancelled)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "export_not_ready")


def export_start(*, year: int, fmt: str, actor: Any) -> tuple[Export, Pipeline]:
    """Plan the export of ``year`` to ``fmt`` (csv or xlsx); raises ``Year.DoesNotExist``."""
    if fmt not in ExportFormat.values:
        raise ValueError(f"unknown export format {fmt!r}; use one of: {', '.join(ExportFormat.values)}")
    Year.objects.get(pk=year)
    with transaction.atomic():
        export = Export.objects.create(year_id=year, format=fmt, created_by=actor_user(actor))
        pipeline = pipeline_plan(
            kind=EXPORT_KIND,
            specs=[JobSpec(key="export", job_type=EXPORT.name, params={"export_id": export.pk})],
            year=year,
            created_by=actor,
            params={"export_id": export.pk, "format": fmt},
        )
        Export.objects.filter(pk=export.pk).update(pipeline=pipeline)
        export.pipeline = pipeline
        operator_action_record(
            actor=actor, action=OperatorActionKind.START_PIPELINE, target_type="pipeline",
            target_id=str(pipeline.pk), pipeline=pipeline,
            detail={"kind": EXPORT_KIND, "year": year, "format": fmt, "export_id": export.pk},
        )
    return export, pipeline


def storage_name(export: Export) -> str:
    return f"exports/{export.year_id}/export-{export.pk}.{export.format}"


def _fingerprint(scratch: IO[bytes]) -> tuple[str, int]:
    scratch.seek(0)
    digest, size = hashlib.sha256(), 0
    while chunk := scratch.read(HASH_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    scratch.seek(0)
    return digest.hexdigest(), size


def export_run(*, ctx: JobContext) -> Outcome:
    """Write the year's totals and data entries to the export's file, with row progress.

    1. Open a read-only snapshot of the year; count the rows (the progress total).
    2. Stream each section into the format's writer, checking for cancel per batch.
    3. Fingerprint the scratch file, store it, and record name, sha256, size and rows
       on the export with the job's outcome (one effect transaction).
    """
    export = Export.objects.get(pk=ctx.params["export_id"])
    name = storage_name(export)
    ctx.set_stage("write")
    with tempfile.TemporaryFile(prefix="sluice-export-") as scratch:
        written = 0
        with year_snapshot(export.year_id) as snap:
            total = snap.row_count()
            ctx.progress(0, total or None, phase="writing", force=True)
            writer = writer_for(export.format, scratch)
            for section, rows in snap.sections():
                writer.section(section)
                for row in rows:
                    writer.row(row)
                    written += 1
                    if written % 1000 == 0:
                        ctx.checkpoint()
                        ctx.progress(written, max(total, written), phase="writing",
                                     meta={"rows_written": written})
            writer.close()
        ctx.checkpoint()
        ctx.set_stage("store")
        ctx.progress(written, max(total, written), phase="storing", force=True, meta={"rows_written": written})
        sha256, size = _fingerprint(scratch)
        # A previous attempt of this job may have stored the object already: replace it
        # (``save`` would otherwise pick another name and leave that one behind).
        default_storage.delete(name)
        stored = default_storage.save(name, File(scratch, name=name))
    with ctx.effect() as eff:
        Export.objects.filter(pk=export.pk).update(
            stored_name=stored, sha256=sha256, size=size, rows=written, finished_at=timezone.now()
        )
        eff.outcome = Outcome(
            JobResult.SUCCESS,
            msg(gettext_noop("%(rows)s rows exported to %(format)s (%(size)s bytes)"), rows=written,
                format=export.format.upper(), size=size),
            {"export_id": export.pk, "rows_total": total, "rows_written": written, "size": size, "sha256": sha256},
        )
    return eff.outcome
