"""Writes of the ingestion app: years, uploads, the pipelines they start, and the job
bodies (ingest, recalc, aggregation, unit sync) that the thin handlers call.

Every pipeline planned here sets ``year`` and ``module`` (unit sync: year only). The
upload pipeline is ``csv_ingest``/``factor_ingest`` → one ``emission_recalc`` per DET
(parallel) → exactly one ``aggregation``. Data writes happen inside
``ctx.effect()`` with the advisory locks described in ``ingestion.loading``.
"""

from __future__ import annotations

import base64
import csv
import json
import time
import urllib.request
import uuid
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from django.utils.translation import gettext_noop

from ingestion import loading, parsing
from ingestion.models import DataEntry, ModuleState, Report, Upload, Year
from ingestion.modules import MODULES, TARGET_DATA, TARGETS, UnknownModule, get_module
from pipelines.messages import Message, msg
from pipelines.models import Job, JobResult, OperatorActionKind, Pipeline
from pipelines.redaction import redact_urls
from pipelines.registry import Outcome
from pipelines.services import ConflictError, JobSpec, actor_user, operator_action_record, pipeline_plan

if TYPE_CHECKING:
    from pipelines.engine import JobContext

YEAR_MIN, YEAR_MAX = 1990, 2100


class UploadRejected(Exception):
    """An upload refused before any job exists; ``status`` is the HTTP status."""

    def __init__(self, message: str, code: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


class YearIncomplete(ConflictError):
    """Opening refused: ``reasons`` maps each incomplete module (or "year") to why."""

    def __init__(self, message: str, reasons: dict[str, list[str]]) -> None:
        super().__init__(message, "year_incomplete")
        self.reasons = reasons


# --- planning ----------------------------------------------------------------------------


def _recalc_and_aggregate(module: str, *, after: tuple[str, ...] = ()) -> list[JobSpec]:
    mod = get_module(module)
    specs = [
        JobSpec(key=f"recalc:{det.key}", job_type="emission_recalc", det=det.key, depends_on=after)
        for det in mod.dets
    ]
    specs.append(JobSpec(key="aggregate", job_type="aggregation", depends_on=tuple(s.key for s in specs)))
    return specs


def _plan_upload(upload: Upload, *, actor: Any, rerun: bool = False) -> Pipeline:
    job_type = "csv_ingest" if upload.target == TARGET_DATA else "factor_ingest"
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
        specs=[JobSpec(key="unit_sync", job_type="unit_sync", params=params)],
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
    if not YEAR_MIN <= year <= YEAR_MAX:
        raise ValueError(f"year must be between {YEAR_MIN} and {YEAR_MAX}")
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
    from ingestion.selectors import year_incomplete_reasons

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


def upload_storage_dir(year: int, module: str) -> Path:
    path = Path(settings.MEDIA_ROOT) / "uploads" / str(year) / module
    path.mkdir(parents=True, exist_ok=True)
    return path


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
    dest = upload_storage_dir(year, module) / f"{target}-{uuid.uuid4().hex}.csv"
    try:
        scan = parsing.scan_upload(file, dest, filename=safe_name, max_bytes=settings.SLUICE_UPLOAD_MAX_BYTES)
        problems = parsing.header_problems(scan.header, mod.columns(target))
        if problems:
            raise parsing.FileRejected("line 1: " + "; ".join(problems), "bad_header")
        if scan.line_count == 0:
            raise parsing.FileRejected("the file has a header but no data rows", "no_rows")
    except parsing.FileRejected as exc:
        dest.unlink(missing_ok=True)
        raise UploadRejected(f"{safe_name}: {exc.message}", exc.code, exc.status) from None
    try:
        with transaction.atomic():
            # Two identical files uploaded at once: the second waits here until the
            # first's row is committed, then finds it (a lookup before the lock would
            # see neither and flag neither as a duplicate).
            loading.lock_upload_fingerprint(year, module, target, scan.sha256)
            previous = (
                Upload.objects.filter(year_id=year, module=module, target=target, sha256=scan.sha256)
                .order_by("-id")
                .first()
            )
            upload = Upload.objects.create(
                year_id=year, module=module, target=target, original_name=safe_name,
                stored_name=str(dest.relative_to(settings.MEDIA_ROOT)), sha256=scan.sha256, size=scan.size,
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
        dest.unlink(missing_ok=True)
        raise
    return upload, pipeline


def upload_rerun(*, upload_id: int, actor: Any) -> Pipeline:
    """Ingest the stored file again (a new pipeline; the raw file is unchanged)."""
    upload = Upload.objects.get(pk=upload_id)
    if not upload_path(upload).exists():
        raise ConflictError(f"The stored file of upload {upload_id} is gone (retention?).", "file_missing")
    with transaction.atomic():
        pipeline = _plan_upload(upload, actor=actor, rerun=True)
        operator_action_record(
            actor=actor, action=OperatorActionKind.START_PIPELINE, target_type="upload", target_id=str(upload_id),
            pipeline=pipeline, detail={"kind": "rerun", "upload_id": upload_id},
        )
    return pipeline


def upload_path(upload: Upload) -> Path:
    return Path(settings.MEDIA_ROOT) / upload.stored_name


# --- job bodies (called by ingestion.handlers) -----------------------------------------------


def _module_label(module: str) -> Message | str:
    return msg(MODULES[module].label) if module in MODULES else module


def _fmt_error(err: dict[str, Any]) -> Message:
    if err.get("column"):
        return msg(gettext_noop("row %(row)s, %(column)s: %(reason)s"), row=str(err["row"]), column=err["column"],
                   reason=err["reason"])
    return msg(gettext_noop("row %(row)s: %(reason)s"), row=str(err["row"]), reason=err["reason"])


# Share of an ingest's work per phase, so its percentage moves through every phase and
# reaches 100 only when the job finishes (it used to read 100 % "validating" for minutes).
# From bench/ingest.py, 1 M rows: load 0.95 s, validate 4.2 s, apply 4.0 s (docs/BENCHMARKS.md).
INGEST_PHASE_SHARE = {"loading": 0.10, "validating": 0.45, "applying": 0.45}


def _ingest_done_before(phase: str, total: int) -> int:
    """Progress units (row equivalents out of ``total``) done when ``phase`` starts."""
    shares = list(INGEST_PHASE_SHARE)
    return int(total * sum(INGEST_PHASE_SHARE[p] for p in shares[: shares.index(phase)]))


def ingest_run(*, ctx: JobContext) -> Outcome:
    """Parse, stage, validate and apply one upload (data entries or factors).

    1. Stream the records into a TEMP staging table with COPY (progress per batch).
    2. Validate in SQL; count rows loaded/rejected; keep the first 1,000 errors.
    3. In ``ctx.effect()``: replace the module-year's data (or upsert factors), store
       every row error, record the row count: one commit, or nothing at all.
    """
    upload = Upload.objects.get(pk=ctx.params["upload_id"])
    mod = get_module(upload.module)
    schema = mod.columns(upload.target)
    total = max(upload.line_count, 1)
    base_meta: dict[str, Any] = {"upload_id": upload.pk}
    prefix: Message | str = ""
    if ctx.params.get("duplicate_of_upload"):
        base_meta["duplicate_of_upload"] = ctx.params["duplicate_of_upload"]
        prefix = msg(gettext_noop("Same file as upload #%(upload)s (loaded again). "),
                     upload=str(ctx.params["duplicate_of_upload"]))

    def on_progress(stats: loading.StageStats) -> None:
        # The server-side COPY reports bytes sent; rows are then estimated from the
        # line count taken at upload (exact again once the stage is counted).
        processed = min(stats.rows_total or int(total * stats.bytes_done / max(stats.bytes_total, 1)), total)
        ctx.checkpoint()
        units = int(processed * INGEST_PHASE_SHARE["loading"])
        ctx.progress(units, total, phase="loading", meta={"rows_processed": processed})

    ctx.set_stage("parse")
    ctx.progress(0, total, phase="loading", force=True)
    started = time.monotonic()
    try:
        try:
            stats = loading.stage_file(path=upload_path(upload), schema=schema, on_progress=on_progress,
                                       should_stop=ctx.raise_if_aborted)
        except parsing.FileRejected as exc:
            return Outcome(
                JobResult.ERROR, msg(gettext_noop("%(prefix)sNothing loaded: %(reason)s"), prefix=prefix,
                                     reason=exc.message),
                {**base_meta, "rows_loaded": 0, "file_error": {"line": exc.line, "code": exc.code,
                                                                "reason": exc.message}},
            )
        loaded_at = time.monotonic()
        ctx.checkpoint()
        ctx.set_stage("validate")
        ctx.progress(_ingest_done_before("validating", total), total, phase="validating", force=True)
        assert stats.header is not None
        check = loading.validate_staged(schema=schema, delimiter=stats.header.delimiter)
        validated_at = time.monotonic()
        rows_loaded = stats.rows_staged - check.rows_rejected
        meta = {
            **base_meta,
            "rows_total": stats.rows_total,
            "rows_processed": stats.rows_total,
            "rows_loaded": rows_loaded,
            # A record that swallowed lines is one row error; its lines are all rejected.
            "rows_rejected": check.rows_rejected + stats.lines_merged,
            "rows_skipped": stats.rows_skipped,
            "row_errors_total": check.errors_total,
            "row_errors": check.first_errors,
            "parser": stats.parser,
        }
        ctx.checkpoint()
        ctx.set_stage("apply")
        ctx.progress(_ingest_done_before("applying", total), total, phase="applying", force=True)
        with ctx.effect() as eff:
            applied: loading.ApplyResult | None = None
            if rows_loaded > 0:
                apply = loading.replace_data_entries if upload.target == TARGET_DATA else loading.upsert_factors
                applied = apply(mod=mod, year=upload.year_id, upload_id=upload.pk, job_id=ctx.job_id,
                                delimiter=stats.header.delimiter)
                if upload.target != TARGET_DATA and applied.applied:
                    meta["factors_upserted"] = applied.rows
                    meta["factors_stale"] = applied.factors_stale
            loading.store_row_errors(job_id=ctx.job_id)
            Upload.objects.filter(pk=upload.pk).update(row_count=stats.rows_total - stats.rows_skipped)
            # Where the time went (the benchmark and the console read these).
            meta["timings_s"] = {
                "load": round(loaded_at - started, 3),
                "validate": round(validated_at - loaded_at, 3),
                "apply": round(time.monotonic() - validated_at, 3),
            }
            eff.outcome = _ingest_outcome(prefix, meta, check, applied, stats)
        return eff.outcome
    finally:
        loading.drop_staging()


def _ingest_outcome(
    prefix: Message | str, meta: dict[str, Any], check: loading.Validation, applied: loading.ApplyResult | None,
    stats: loading.StageStats,
) -> Outcome:
    loaded, rejected = meta["rows_loaded"], meta["rows_rejected"]
    first: Message | str = ""
    if check.first_errors:
        first = msg(gettext_noop(" — first: %(error)s"), error=_fmt_error(check.first_errors[0]))
    what: Message
    if loaded == 0:
        if rejected:
            what = msg(gettext_noop("all %(rejected)s rows rejected%(first)s"), rejected=rejected, first=first)
        elif stats.rows_skipped:
            what = msg(gettext_noop("the file has no data rows (%(skipped)s blank lines skipped)"),
                       skipped=stats.rows_skipped)
        else:
            what = msg(gettext_noop("the file has no data rows"))
        return Outcome(JobResult.ERROR, msg(gettext_noop("%(prefix)sNo rows loaded: %(what)s; the previous data is "
                                                         "unchanged"), prefix=prefix, what=what), meta)
    counts = (msg(gettext_noop("%(loaded)s rows loaded, %(rejected)s rejected%(first)s"), loaded=loaded,
                  rejected=rejected, first=first)
              if rejected else msg(gettext_noop("%(loaded)s rows loaded"), loaded=loaded))
    if stats.rows_skipped:
        counts = msg(gettext_noop("%(counts)s (%(skipped)s blank lines skipped)"), counts=counts,
                     skipped=stats.rows_skipped)
    if applied is not None and not applied.applied:
        # Users know uploads, not jobs: name the upload whose ingest is loaded.
        winner_job = applied.superseded_by_job or 0
        params = Job.objects.filter(pk=winner_job).values_list("params", flat=True).first() or {}
        upload_id = params.get("upload_id")
        winner = f"upload #{upload_id}" if upload_id else f"ingest job #{winner_job}"
        return Outcome(
            JobResult.SKIPPED,
            msg(gettext_noop("%(prefix)sNot applied: superseded by %(winner)s, a later upload already loaded; this "
                             "file had %(counts)s"), prefix=prefix, winner=winner, counts=counts),
            {**meta, "superseded_by_job": applied.superseded_by_job},
            superseded_by=winner,
        )
    if meta.get("factors_stale"):
        counts = msg(gettext_noop("%(counts)s; %(stale)s factors missing from this file marked stale"), counts=counts,
                     stale=meta["factors_stale"])
    return Outcome(JobResult.WARNING if rejected else JobResult.SUCCESS,
                   msg(gettext_noop("%(prefix)s%(counts)s"), prefix=prefix, counts=counts) if prefix else counts, meta)


def recalc_run(*, ctx: JobContext) -> Outcome:
    year, module, det = ctx.year, ctx.module, ctx.job.det
    assert year is not None
    ctx.set_stage("count")
    state = ModuleState.objects.filter(year=year, module=module).first()
    rows = 0
    if state is not None and state.data_upload_id is not None:
        rows = DataEntry.objects.filter(upload_id=state.data_upload_id, year=year, module=module, det=det).count()
    ctx.progress(0, rows or None, phase=f"computing {det}", force=True)
    ctx.checkpoint()
    ctx.set_stage("compute")
    with ctx.effect() as eff:
        r = loading.recalc_det(year=year, module=module, det=det, pipeline_id=ctx.pipeline_id)
        meta = {"rows_processed": r.rows_processed, "rows_without_factor": r.rows_without_factor,
                "emission_lines": r.lines, "kg_co2e": r.kg_co2e, "missing_factors": r.missing[:50],
                "basis": r.basis}
        if r.rows_processed == 0:
            eff.outcome = Outcome(JobResult.SKIPPED, msg(gettext_noop("%(det)s: no data entries, nothing to compute"),
                                                         det=det), meta)
        elif r.rows_without_factor:
            eff.outcome = Outcome(
                JobResult.WARNING,
                msg(gettext_noop("%(det)s: %(rows)s rows, %(kg)s kg CO2e; %(missing_rows)s rows without factor: "
                                 "%(missing)s"), det=det, rows=r.rows_processed, kg=float(r.kg_co2e),
                    missing_rows=r.rows_without_factor,
                    missing=", ".join(r.missing[:5]) + (" …" if len(r.missing) > 5 else "")),
                meta,
            )
        else:
            eff.outcome = Outcome(
                JobResult.SUCCESS, msg(gettext_noop("%(det)s: %(rows)s rows, %(kg)s kg CO2e"), det=det,
                                       rows=r.rows_processed, kg=float(r.kg_co2e)), meta
            )
    return eff.outcome


def aggregation_run(*, ctx: JobContext) -> Outcome:
    year, module = ctx.year, ctx.module
    assert year is not None
    ctx.set_stage("aggregate")
    ctx.progress(0, None, phase="aggregating", force=True)
    # The data version each of this pipeline's recalcs (upstream, so finished) read.
    bases = {
        det: job_meta["basis"]
        for det, job_meta in Job.objects.filter(pipeline_id=ctx.pipeline_id, job_type="emission_recalc")
        .values_list("det", "meta")
        if job_meta and job_meta.get("basis")
    }
    with ctx.effect() as eff:
        a = loading.aggregate(year=year, module=module, pipeline_id=ctx.pipeline_id, recalc_bases=bases)
        meta: dict[str, Any] = {"totals_written": a.totals_written, "kg_co2e": a.kg_co2e,
                                "rows_without_factor": a.rows_without_factor}
        text: Message
        if a.recomputed:
            text = msg(gettext_noop("Totals of %(module)s %(year)s: %(kg)s kg CO2e (%(units)s units)"),
                       module=_module_label(module), year=str(year), kg=float(a.kg_co2e), units=a.totals_written - 1)
            if a.refreshed_dets:
                meta["refreshed_dets"] = a.refreshed_dets
                text = msg(gettext_noop("%(message)s; %(dets)s recomputed from the current data first (another "
                                        "upload was applied while this pipeline recalculated)"),
                           message=text, dets=", ".join(a.refreshed_dets))
        else:
            meta["coalesced_with_pipeline"] = str(a.computed_by)
            text = msg(gettext_noop("Totals already current (computed by pipeline %(pipeline)s from the same data): "
                                    "%(kg)s kg CO2e; nothing recomputed"),
                       pipeline=str(a.computed_by)[:8], kg=float(a.kg_co2e))
        if a.rows_without_factor:
            text = msg(gettext_noop("%(message)s; %(rows)s rows without factor not counted"), message=text,
                       rows=a.rows_without_factor)
        eff.outcome = Outcome(JobResult.WARNING if a.rows_without_factor else JobResult.SUCCESS, text, meta)
    return eff.outcome


# --- units and unit sync ------------------------------------------------------------------------


def directory_fetch(*, source: str) -> list[dict[str, str]]:
    """Units from the directory source: a CSV file path or an HTTP(S) JSON URL.

    JSON may be a list of objects or ``{"units": [...]}``; keys ``unit_id`` (or
    ``id``), ``name``, ``kind``, ``parent_id``.
    """
    if source.startswith(("http://", "https://")):
        with urllib.request.urlopen(_directory_request(source), timeout=30) as resp:  # noqa: S310 - scheme checked
            data = json.load(resp)
        items = data.get("units", []) if isinstance(data, dict) else data
    else:
        with open(source, encoding="utf-8-sig", newline="") as f:
            items = list(csv.DictReader(f))
    units: dict[str, dict[str, str]] = {}
    for item in items:
        unit_id = str(item.get("unit_id") or item.get("id") or "").strip()
        if not unit_id:
            continue
        units[unit_id] = {
            "unit_id": unit_id[:40],
            "name": str(item.get("name") or unit_id).strip()[:300],
            "kind": str(item.get("kind") or "").strip()[:40],
            "parent_id": str(item.get("parent_id") or "").strip()[:40],
        }
    if not units:
        raise ValueError(f"the directory source {redact_urls(source)} returned no units")
    return list(units.values())


def _directory_request(url: str) -> urllib.request.Request:
    """``https://user:password@host/…`` becomes Basic auth (urllib would take it for a host name)."""
    parts = urlsplit(url)
    if parts.username is None:
        return urllib.request.Request(url)  # noqa: S310 - callers pass http(s) URLs only
    credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"  # IPv6 literal
    if parts.port is not None:
        netloc += f":{parts.port}"
    request = urllib.request.Request(urlunsplit(parts._replace(netloc=netloc)))  # noqa: S310 - as above
    request.add_header("Authorization", "Basic " + base64.b64encode(credentials).decode())
    return request


def units_upsert(*, units: list[dict[str, str]]) -> int:
    """Upsert the directory's units; units no longer listed are deactivated."""
    now = timezone.now()
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute("CREATE TEMP TABLE sync_units (unit_id text, name text, kind text, parent_id text) "
                    "ON COMMIT DROP")
        with cur.cursor.copy("COPY sync_units FROM STDIN") as copy:
            for u in units:
                copy.write_row((u["unit_id"], u["name"], u["kind"], u["parent_id"]))
        cur.execute(
            """INSERT INTO ingestion_unit (unit_id, name, kind, parent_id, active, synced_at)
               SELECT unit_id, name, kind, parent_id, true, %s FROM sync_units
               ON CONFLICT (unit_id) DO UPDATE SET name = EXCLUDED.name, kind = EXCLUDED.kind,
                   parent_id = EXCLUDED.parent_id, active = true, synced_at = EXCLUDED.synced_at""",
            [now],
        )
        cur.execute(
            "UPDATE ingestion_unit SET active = false WHERE active AND unit_id NOT IN (SELECT unit_id FROM sync_units)"
        )
    return len(units)


def reports_ensure(*, year: int) -> int:
    with connection.cursor() as cur:
        cur.execute(
            """INSERT INTO ingestion_report (year_id, unit_id, created_at)
               SELECT %s, unit_id, now() FROM ingestion_unit WHERE active
               ON CONFLICT (year_id, unit_id) DO NOTHING""",
            [year],
        )
        return cur.rowcount


def report_modules_ensure(*, year: int) -> int:
    modules = Year.objects.get(pk=year).enabled_modules
    with connection.cursor() as cur:
        cur.execute(
            """INSERT INTO ingestion_reportmodule (report_id, module)
               SELECT r.id, m.module FROM ingestion_report r CROSS JOIN unnest(%s::text[]) AS m(module)
               WHERE r.year_id = %s
               ON CONFLICT (report_id, module) DO NOTHING""",
            [modules, year],
        )
        return cur.rowcount


def units_sync_now(*, year: int, source: str | None = None) -> int:
    """The unit sync without a worker (demo set-up, ops): same steps, same idempotence."""
    units = directory_fetch(source=source or settings.SLUICE_DIRECTORY_SOURCE)
    synced = units_upsert(units=units)
    reports_ensure(year=year)
    report_modules_ensure(year=year)
    Year.objects.filter(pk=year).update(configured_at=timezone.now())
    return synced


def unit_sync_run(*, ctx: JobContext) -> Outcome:
    """fetch → upsert units → one report per unit → report modules; each phase is progress."""
    year = ctx.year
    assert year is not None
    source = ctx.params.get("source") or settings.SLUICE_DIRECTORY_SOURCE
    ctx.set_stage("fetch")
    ctx.progress(0, 4, phase="fetch", force=True)
    units = directory_fetch(source=source)
    ctx.checkpoint()
    # Each phase is an idempotent upsert, so a redelivered job simply redoes them.
    ctx.set_stage("upsert units")
    ctx.progress(1, 4, phase="upsert units", force=True)
    synced = units_upsert(units=units)
    ctx.set_stage("create reports")
    ctx.progress(2, 4, phase="create reports", force=True)
    created = reports_ensure(year=year)
    ctx.set_stage("ensure modules")
    ctx.progress(3, 4, phase="ensure modules", force=True)
    modules_created = report_modules_ensure(year=year)
    reports = Report.objects.filter(year_id=year).count()
    with ctx.effect() as eff:
        loading.lock_unit_sync(year)
        Year.objects.filter(pk=year).update(configured_at=timezone.now())
        eff.outcome = Outcome(
            JobResult.SUCCESS,
            msg(gettext_noop("%(units)s units synced from %(source)s; %(created)s reports created (%(reports)s in "
                             "%(year)s), %(modules)s report modules added"),
                units=synced, source=Path(source).name if "://" not in source else redact_urls(source),
                created=created, reports=reports, year=str(year), modules=modules_created),
            {"units_synced": synced, "reports_created": created, "report_modules_created": modules_created},
        )
    return eff.outcome

