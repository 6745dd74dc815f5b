"""Writes of the ingestion app driven by people: years, uploads, and the pipelines they
start. The job bodies those pipelines run are in ``ingestion.jobs`` and
``ingestion.unit_sync``.

Every pipeline planned here sets ``year`` and ``module`` (unit sync: year only). The
upload pipeline is ``csv_ingest``/``factor_ingest`` → one ``emission_recalc`` per DET
(parallel) → exactly one ``aggregation`` (names in ``ingestion.job_types``).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.db import IntegrityError, transaction

from ingestion import parsing
from ingestion.job_types import AGGREGATION, EMISSION_RECALC, INGEST_JOB_TYPES, UNIT_SYNC
from ingestion.locks import lock_upload_fingerprint
from ingestion.models import Upload, Year
from ingestion.modules import MODULES, TARGETS, UnknownModule, get_module
from ingestion.selectors import upload_file_exists, year_incomplete_reasons
from pipelines.errors import DomainError
from pipelines.models import OperatorActionKind, Pipeline
from pipelines.services import ConflictError, JobSpec, actor_user, operator_action_record, pipeline_plan
from pipelines.years import validate_year


class UploadRejected(DomainError):
    """An upload refused before any job exists; ``status`` is the HTTP status."""

    def __init__(self, message: str, code: str, status: int = 400) -> None:
        super().__init__(message, code, status)


class YearIncomplete(ConflictError):
    """Opening refused: ``reasons`` maps each incomplete module (or "year") to why."""

    def __init__(self, message: str, reasons: dict[str, list[str]]) -> None:
        super().__init__(message, "year_incomplete")
        self.reasons = reasons


# --- planning ----------------------------------------------------------------------------


def _recalc_and_aggregate(module: str, *, after: tuple[str, ...] = ()) -> list[JobSpec]:
    mod = get_module(module)
    specs = [
        JobSpec(key=f"recalc:{det.key}", job_type=EMISSION_RECALC.name, det=det.key, depends_on=after)
        for det in mod.dets
    ]
    specs.append(JobSpec(key="aggregate", job_type=AGGREGATION.name, depends_on=tuple(s.key for s in specs)))
    return specs


def _plan_upload(upload: Upload, *, actor: Any, rerun: bool = False) -> Pipeline:
    job_type = INGEST_JOB_TYPES[upload.target]
    params = {"upload_id": upload.pk}
    if upload.duplicate_of_id:
        params["duplicate_of_upload"] = upload.duplicate_of_id
    specs = [JobSpec(key="ingest", job_type=job_type, params=params)]
    specs += _recalc_and_aggregate(upload.module, after=("ingest",))
    return pipeline_plan(
        kind="rerun" if rerun else "upload",
        specs=specs,
        year=upload.year_id,
        module=upload.module,
        created_by=actor,
        params={"upload_id": upload.pk, "target": upload.target, "filename": upload.original_name},
    )


def _plan_unit_sync(year: int, *, actor: Any, source: str | None = None) -> Pipeline:
    params = {"source": source} if source else {}
    return pipeline_plan(
        kind="unit_sync",
        specs=[JobSpec(key="unit_sync", job_type=UNIT_SYNC.name, params=params)],
        year=year,
        created_by=actor,
    )


def pipeline_start_recalculate(*, year: int, module: str, actor: Any) -> Pipeline:
    """Recompute a module-year's emissions (one recalc per DET) and its totals."""
    get_module(module)
    Year.objects.get(pk=year)
    with transaction.atomic():
        pipeline = pipeline_plan(
            kind="recalculate", specs=_recalc_and_aggregate(module), year=year, module=module, created_by=actor
        )
        operator_action_record(
            actor=actor, action=OperatorActionKind.START_PIPELINE, target_type="pipeline",
            target_id=str(pipeline.pk), pipeline=pipeline, detail={"kind": "recalculate", "year": year,
                                                                   "module": module},
        )
    return pipeline


def pipeline_start_unit_sync(*, year: int, actor: Any) -> Pipeline:
    Year.objects.get(pk=year)
    with transaction.atomic():
        pipeline = _plan_unit_sync(year, actor=actor)
        operator_action_record(
            actor=actor, action=OperatorActionKind.START_PIPELINE, target_type="pipeline",
            target_id=str(pipeline.pk), pipeline=pipeline, detail={"kind": "unit_sync", "year": year},
        )
    return pipeline


# --- years -------------------------------------------------------------------------------


def year_create(*, year: int, actor: Any, source: str | None = None) -> tuple[Year, Pipeline]:
    """Create a closed year with every module enabled and start its unit sync."""
    validate_year(year)
    try:
        with transaction.atomic():
            obj = Year.objects.create(year=year, config={"modules": list(MODULES), "module_settings": {}})
            pipeline = _plan_unit_sync(year, actor=actor, source=source)
            operator_action_record(
                actor=actor, action=OperatorActionKind.CREATE_YEAR, target_type="year", target_id=str(year),
                pipeline=pipeline,
            )
    except IntegrityError:
        # The primary key decides a race between two creators: exactly one wins.
        raise ConflictError(f"Year {year} already exists.", "year_exists") from None
    return obj, pipeline


def year_update(
    *, year: int, actor: Any, is_open: bool | None = None, config_patch: dict[str, Any] | None = None
) -> Year:
    """Configure, open or close a year. Opening requires every enabled module complete.

    The year row is locked so a concurrent configure cannot slip a module in between
    the completeness check and the opening.
    """
    with transaction.atomic():
        obj = Year.objects.select_for_update().get(pk=year)
        if config_patch:
            config = {**(obj.config or {}), **config_patch}
            unknown = [m for m in config.get("modules", []) if m not in MODULES]
            if unknown:
                raise ValueError(f"unknown module(s) {', '.join(unknown)}; known: {', '.join(MODULES)}")
            obj.config = config
            obj.save(update_fields=["config", "updated_at"])
            operator_action_record(
                actor=actor, action=OperatorActionKind.CONFIGURE_YEAR, target_type="year", target_id=str(year),
                detail={"patch": config_patch},
            )
        if is_open is True and not obj.is_open:
            reasons = year_incomplete_reasons(year=obj)
            if reasons:
                listed = "; ".join(f"{scope}: {', '.join(items)}" for scope, items in reasons.items())
                raise YearIncomplete(f"Year {year} cannot open until every enabled module is complete — {listed}",
                                     reasons)
            obj.is_open = True
            obj.save(update_fields=["is_open", "updated_at"])
            operator_action_record(
                actor=actor, action=OperatorActionKind.OPEN_YEAR, target_type="year", target_id=str(year)
            )
        elif is_open is False and obj.is_open:
            obj.is_open = False
            obj.save(update_fields=["is_open", "updated_at"])
            operator_action_record(
                actor=actor, action=OperatorActionKind.CLOSE_YEAR, target_type="year", target_id=str(year)
            )
    return obj


# --- uploads -----------------------------------------------------------------------------


def upload_storage_name(year: int, module: str, stem: str) -> str:
    """A new, unique name in ``default_storage`` for an upload's CSV."""
    return f"uploads/{year}/{module}/{stem}-{uuid.uuid4().hex}.csv"


def raw_response_name(stored_name: str) -> str:
    """Where a scheduled source's JSON response is kept, beside the CSV made from it."""
    return stored_name.removesuffix(".csv") + ".json"


def upload_create(
    *, year: int, module: str, target: str, file: IO[bytes], filename: str, actor: Any
) -> tuple[Upload, Pipeline]:
    """Store the file (streamed, fingerprinted, pre-checked) and start its pipeline.

    1. Refuse unknown year/module/target, non-CSV, too large, bad encoding or a
       header that does not fit the schema, before any job exists.
    2. Recognise an identical earlier file (same sha256, year, module, target): allowed,
       and said in the upload and the ingest job's meta/message.
    3. In one transaction: the upload row, its pipeline, the audit record.
    """
    year_obj = Year.objects.filter(pk=year).first()
    if year_obj is None:
        raise UploadRejected(f"Year {year} does not exist; create it first.", "year_not_found", 404)
    if year_obj.configured_at is None:
        # Rows are validated against the unit directory: before the sync has run,
        # every row would be rejected as an unknown unit.
        raise UploadRejected(
            f"Year {year} is not set up yet: its unit sync has not succeeded; upload once it has.",
            "year_not_configured", 409,
        )
    try:
        mod = get_module(module)
    except UnknownModule as exc:
        raise UploadRejected(str(exc), "unknown_module", 404) from None
    if target not in TARGETS:
        raise UploadRejected(f"unknown target {target!r}; use one of: {', '.join(TARGETS)}", "unknown_target")
    safe_name = Path(filename or "upload.csv").name[:255]
    dest = upload_storage_name(year, module, target)
    try:
        scan = parsing.scan_upload(file, dest, filename=safe_name, max_bytes=settings.SLUICE_UPLOAD_MAX_BYTES)
        dest = scan.name
        problems = parsing.header_problems(scan.header, mod.columns(target))
        if problems:
            raise parsing.FileRejected("line 1: " + "; ".join(problems), "bad_header")
        if scan.line_count == 0:
            raise parsing.FileRejected("the file has a header but no data rows", "no_rows")
    except parsing.FileRejected as exc:
        parsing.delete_quietly(dest)
        raise UploadRejected(f"{safe_name}: {exc.message}", exc.code, exc.status) from None
    try:
        with transaction.atomic():
            # Two identical files uploaded at once: the second waits here until the
            # first's row is committed, then finds it (a lookup before the lock would
            # see neither and flag neither as a duplicate).
            lock_upload_fingerprint(year, module, target, scan.sha256)
            previous = (
                Upload.objects.filter(year_id=year, module=module, target=target, sha256=scan.sha256)
                .order_by("-id")
                .first()
            )
            upload = Upload.objects.create(
                year_id=year, module=module, target=target, original_name=safe_name,
                stored_name=dest, sha256=scan.sha256, size=scan.size,
                line_count=scan.line_count, delimiter=scan.header.delimiter, uploaded_by=actor_user(actor),
                duplicate_of=previous,
            )
            pipeline = _plan_upload(upload, actor=actor)
            Upload.objects.filter(pk=upload.pk).update(pipeline=pipeline)
            upload.pipeline = pipeline
            operator_action_record(
                actor=actor, action=OperatorActionKind.UPLOAD, target_type="upload", target_id=str(upload.pk),
                pipeline=pipeline,
                detail={"year": year, "module": module, "target": target, "filename": safe_name,
                        "sha256": scan.sha256, "size": scan.size,
                        "duplicate_of_upload": previous.pk if previous else None},
            )
    except BaseException:
        parsing.delete_quietly(dest)
        raise
    return upload, pipeline


def upload_rerun(*, upload_id: int, actor: Any) -> Pipeline:
    """Ingest the stored file again (a new pipeline; the raw file is unchanged).

    The upload's row is locked while the re-run is planned: the retention sweep skips
    locked uploads and re-checks, under its own lock, that no pipeline refers to one
    before deleting it (``ingestion.retention``). So either the sweep deleted the upload
    first (then this refuses, naming it) or the re-run's pipeline exists and keeps the
    upload and its file; never a pipeline whose file is gone. Which ingest wins against
    a concurrent upload of the same module-year is the planning order (job ids), as for
    any upload (docs/INGESTION.md).
    """
    with transaction.atomic():
        upload = Upload.objects.select_for_update(of=("self",)).filter(pk=upload_id).first()
        if upload is None:
            raise ConflictError(f"Upload {upload_id} no longer exists (purged by retention?).", "upload_gone")
        if not upload_file_exists(upload):
            raise ConflictError(f"The stored file of upload {upload_id} is gone (retention?).", "file_missing")
        pipeline = _plan_upload(upload, actor=actor, rerun=True)
        operator_action_record(
            actor=actor, action=OperatorActionKind.START_PIPELINE, target_type="upload", target_id=str(upload_id),
            pipeline=pipeline, detail={"kind": "rerun", "upload_id": upload_id},
        )
    return pipeline
