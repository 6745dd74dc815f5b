"""The bodies of the ingestion jobs that ``ingestion.handlers`` registers: ingest (stage,
validate, apply), the per-DET emission recalc, and the module-year aggregation.

Each runs its data writes inside ``ctx.effect()`` (one transaction with the job's
effect marker, so a redelivered message never applies it twice), under the advisory
locks described in ``ingestion.locks``. The unit sync's body is in ``ingestion.unit_sync``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from django.utils.translation import gettext_noop

from ingestion import apply, emissions, parsing, staging, validation
from ingestion.job_types import EMISSION_RECALC
from ingestion.models import DataEntry, ModuleState, Upload
from ingestion.modules import MODULES, TARGET_DATA, get_module
from ingestion.statement_guard import cancel_running_statements
from ingestion.storage import StorageReadError
from pipelines.context import RetryableError
from pipelines.messages import Message, msg
from pipelines.models import Job, JobResult
from pipelines.registry import Outcome

if TYPE_CHECKING:
    from pipelines.context import JobContext


class StorageUnavailable(RetryableError):
    """The upload's stored file could not be read: retried while attempts remain."""


def _module_label(module: str) -> Message | str:
    return msg(MODULES[module].label) if module in MODULES else module


def _fmt_error(err: dict[str, Any]) -> Message:
    if err.get("column"):
        return msg(gettext_noop("row %(row)s, %(column)s: %(reason)s"), row=str(err["row"]), column=err["column"],
                   reason=err["reason"])
    return msg(gettext_noop("row %(row)s: %(reason)s"), row=str(err["row"]), reason=err["reason"])


# Share of an ingest's work per phase, so its percentage moves through every phase and
# reaches 100 only when the job finishes (it used to read 100 % "validating" for minutes).
# From bench/ingest.py, 1 M clean rows after issue 13 (docs/BENCHMARKS.md): load 0.9 s,
# validate 2.4 s, apply 1.7 s. Validation moves by its statements (``VALIDATION_STEPS``),
# the apply by the slices of its insert (reported from the statement guard's connection:
# the apply is one transaction, and progress written in it would show only at its commit).
INGEST_PHASE_SHARE = {"loading": 0.20, "validating": 0.45, "applying": 0.35}
# Of the apply: the insert of the rows (reported slice by slice, ``apply.APPLY_SLICES``);
# the rest is ANALYZE, the row errors and the commit.
APPLY_INSERT_SHARE = 0.8


def _ingest_done_before(phase: str, total: int) -> int:
    """Progress units (row equivalents out of ``total``) done when ``phase`` starts."""
    shares = list(INGEST_PHASE_SHARE)
    return int(total * sum(INGEST_PHASE_SHARE[p] for p in shares[: shares.index(phase)]))


def _validation_done_before(step: str, total: int) -> int:
    """Progress units done when validation step ``step`` starts."""
    steps = list(validation.VALIDATION_STEPS)
    within = sum(validation.VALIDATION_STEPS[s] for s in steps[: steps.index(step)])
    return _ingest_done_before("validating", total) + int(total * INGEST_PHASE_SHARE["validating"] * within)


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

    def on_progress(stats: staging.StageStats) -> None:
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
        # A cancel stops the running statement too (ingestion.statement_guard).
        with cancel_running_statements(ctx) as guard:
            try:
                stats = staging.stage_file(name=upload.stored_name, size=upload.size, schema=schema,
                                           on_progress=on_progress, should_stop=ctx.raise_if_aborted)
            except StorageReadError as exc:
                # Storage unreachable, or it stopped answering mid-stream: nothing was applied
                # (the COPY only filled this session's TEMP table), so another attempt may
                # simply succeed; after the last one the job fails with this message.
                raise StorageUnavailable(
                    f"upload #{upload.pk}'s stored file could not be read from storage ({exc}); "
                    "nothing was loaded and the module-year's data is unchanged"
                ) from exc
            except FileNotFoundError:
                # Worded like a file refusal (same message key): the reason is what is wrong.
                gone = f"the stored file of upload #{upload.pk} is gone (retention?)"
                return Outcome(
                    JobResult.ERROR, msg(gettext_noop("%(prefix)sNothing loaded: %(reason)s"), prefix=prefix,
                                         reason=gone),
                    {**base_meta, "rows_loaded": 0,
                     "file_error": {"line": None, "code": "file_missing", "reason": gone}},
                )
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

            step_started: list[tuple[str, float]] = []

            def on_step(step: str) -> None:
                step_started.append((step, time.monotonic()))
                ctx.checkpoint()
                ctx.progress(_validation_done_before(step, total), total, phase="validating",
                             meta={"step": step}, force=True)

            assert stats.header is not None
            check = validation.validate_staged(schema=schema, delimiter=stats.header.delimiter, on_step=on_step,
                                               staged_errors=stats.parser != "postgresql",
                                               rows_staged=stats.rows_staged)
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
                applied: apply.ApplyResult | None = None
                if rows_loaded > 0 and upload.target == TARGET_DATA:

                    def on_slice(done: int, slices: int) -> None:
                        units = _ingest_done_before("applying", total) + int(
                            total * INGEST_PHASE_SHARE["applying"] * APPLY_INSERT_SHARE * done / slices)
                        guard.report_progress(units, total, phase="applying", meta={"step": "inserting rows"})

                    applied = apply.replace_data_entries(mod=mod, year=upload.year_id, upload_id=upload.pk,
                                                         job_id=ctx.job_id, on_slice=on_slice)
                elif rows_loaded > 0:
                    applied = apply.upsert_factors(mod=mod, year=upload.year_id, upload_id=upload.pk,
                                                   job_id=ctx.job_id)
                    if applied.applied:
                        meta["factors_upserted"] = applied.rows
                        meta["factors_stale"] = applied.factors_stale
                apply.store_row_errors(job_id=ctx.job_id)
                Upload.objects.filter(pk=upload.pk).update(row_count=stats.rows_total - stats.rows_skipped)
                # Where the time went (the benchmark and the console read these).
                meta["timings_s"] = {
                    "load": round(loaded_at - started, 3),
                    "validate": round(validated_at - loaded_at, 3),
                    "apply": round(time.monotonic() - validated_at, 3),
                    # Each validation statement's share (docs/BENCHMARKS.md reads these).
                    "validate_steps": {
                        step: round(end - start, 3)
                        for (step, start), (_, end) in zip(
                            step_started, [*step_started[1:], ("", validated_at)], strict=True)
                    },
                }
                eff.outcome = _ingest_outcome(prefix, meta, check, applied, stats)
            if applied is not None and applied.applied and upload.target == TARGET_DATA:
                # After the commit: dropping a partition locks the parent table (best effort).
                apply.drop_replaced_partitions()
            return eff.outcome
    finally:
        staging.drop_staging()


def _ingest_outcome(
    prefix: Message | str, meta: dict[str, Any], check: validation.Validation, applied: apply.ApplyResult | None,
    stats: staging.StageStats,
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
        r = emissions.recalc_det(year=year, module=module, det=det, pipeline_id=ctx.pipeline_id)
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
        for det, job_meta in Job.objects.filter(pipeline_id=ctx.pipeline_id, job_type=EMISSION_RECALC.name)
        .values_list("det", "meta")
        if job_meta and job_meta.get("basis")
    }
    with ctx.effect() as eff:
        a = emissions.aggregate(year=year, module=module, pipeline_id=ctx.pipeline_id, recalc_bases=bases)
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
