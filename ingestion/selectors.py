"""Reads of the ingestion app: the module registry, years and their completeness,
totals, uploads and row errors. Shared by the API, the admin pages and the services.

Completeness reasons are read by people (the Data management page, a 409): they are
translated into the request's language.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping
from typing import IO, Any

from django.core.files.storage import default_storage
from django.db import connection
from django.db.models import QuerySet
from django.utils.translation import gettext as _

from ingestion.job_types import INGEST_JOB_TYPES, VALIDATE_YEAR
from ingestion.models import ModuleState, RowError, Total, Upload, Year
from ingestion.modules import MODULES, TARGETS, get_module
from ingestion.parsing import open_stored
from pipelines import messages
from pipelines.models import DONE_STATUSES, Job, JobResult, Pipeline

NAMED_MAX = 10


def module_list() -> list[dict[str, Any]]:
    return [m.as_dict() for m in MODULES.values()]


def template_csv(*, module: str, target: str) -> str:
    """An empty CSV with the schema's header line (raises KeyError for an unknown target)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([c.name for c in get_module(module).columns(target)])
    return buf.getvalue()


def year_list(*, include_closed: bool) -> QuerySet[Year]:
    qs = Year.objects.all().order_by("-year")
    return qs if include_closed else qs.filter(is_open=True)


def _named(items: list[str]) -> str:
    more = _(" and %(n)s more") % {"n": len(items) - NAMED_MAX} if len(items) > NAMED_MAX else ""
    return ", ".join(items[:NAMED_MAX]) + more


def module_incomplete_reasons(*, year: int, module: str) -> list[str]:
    """Why a module is not complete for a year (empty: complete).

    Complete = data entries loaded, every (DET, category) they use has a factor that
    is not stale, and the totals are computed from the current data and factors.
    """
    state = ModuleState.objects.filter(year=year, module=module).first()
    if state is None or not state.data_rows:
        return [_("no data entries loaded")]
    reasons = []
    with connection.cursor() as cur:
        cur.execute(
            """SELECT d.det || '/' || d.category, f.stale
               FROM (SELECT DISTINCT det, category FROM ingestion_dataentry
                     WHERE upload_id = %s AND year = %s AND module = %s) d
               LEFT JOIN ingestion_factor f ON f.year = %s AND f.module = %s AND f.det = d.det
                    AND f.category = d.category
               WHERE f.id IS NULL OR f.stale
               ORDER BY 1""",
            [state.data_upload_id, year, module, year, module],
        )
        rows = cur.fetchall()
    missing = [key for key, stale in rows if stale is None]
    stale = [key for key, stale in rows if stale]
    if missing:
        reasons.append(_("missing factor(s): %(keys)s") % {"keys": _named(missing)})
    if stale:
        reasons.append(_("stale factor(s), absent from the latest factors file: %(keys)s") % {"keys": _named(stale)})
    if not missing and not stale and state.totals_version != state.data_version:
        reasons.append(_("totals not computed from the current data yet (a pipeline is running or failed)"))
    return reasons


# --- validation runs (issue 15; the checks are in ingestion.validations) ----------------------

# A run that ended with its findings (one that failed or was cancelled checked nothing).
VALIDATION_COMPLETED = (JobResult.SUCCESS, JobResult.WARNING)


def latest_validation(*, year: int) -> Job | None:
    """The newest ``validate_year`` job of the year that completed its checks."""
    return (Job.objects.filter(pipeline__year=year, job_type=VALIDATE_YEAR.name, result__in=VALIDATION_COMPLETED)
            .select_related("pipeline").order_by("-finished_at", "-id").first())


def findings_of(job: Job) -> list[dict[str, Any]]:
    """The job's findings, each with ``text`` in the active language."""
    out = []
    for f in (job.meta or {}).get("findings") or []:
        i18n = f.get("message_i18n") or {}
        out.append({**f, "text": messages.text_of(i18n.get("key") or "", i18n.get("params"), f.get("message", ""))})
    return out


def validation_gate_reasons(*, year: int) -> list[str]:
    """Why the latest validation keeps the year closed (empty: it found no error, or none ran)."""
    job = latest_validation(year=year)
    errors = int((job.meta or {}).get("findings_error") or 0) if job else 0
    if job is None or not errors:
        return []
    first = next((f["text"] for f in findings_of(job) if f.get("severity") == "error"), "")
    return [_("the latest validation (pipeline %(pipeline)s) found %(n)s error(s) — first: %(first)s; fix them "
              "and run a validation again") % {"pipeline": str(job.pipeline_id)[:8], "n": errors, "first": first}]


def year_incomplete_reasons(*, year: Year) -> dict[str, list[str]]:
    """Every reason the year may not open, by module (and "year" for year-wide ones,
    among them the errors found by the latest validation run)."""
    reasons: dict[str, list[str]] = {}
    if year.configured_at is None:
        reasons.setdefault("year", []).append(_("units not synced yet (the unit sync has not succeeded)"))
    if not year.enabled_modules:
        reasons.setdefault("year", []).append(_("no module enabled (config.modules is empty)"))
    # An ``error`` finding of the year's latest validation run keeps it closed until a
    # later run finds none (issue 15).
    for reason in validation_gate_reasons(year=year.year):
        reasons.setdefault("year", []).append(reason)
    for module in year.enabled_modules:
        found = module_incomplete_reasons(year=year.year, module=module)
        if found:
            reasons[module] = found
    return reasons


def _job_summary(job: Job | None) -> dict[str, Any] | None:
    if job is None:
        return None
    meta = job.meta or {}
    return {
        "job_id": job.pk,
        "pipeline_id": str(job.pipeline_id),
        "state": job.state,
        "result": job.result,
        "status_message": job.status_message,
        "status_key": job.status_key,
        "status_params": job.status_params,
        "upload_id": meta.get("upload_id") or (job.params or {}).get("upload_id"),
        "rows_loaded": meta.get("rows_loaded"),
        "rows_rejected": meta.get("rows_rejected"),
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


def year_detail(*, year: int) -> dict[str, Any]:
    """A year with per-module, per-target status; raises ``Year.DoesNotExist``."""
    obj = Year.objects.get(pk=year)
    enabled = obj.enabled_modules
    states = {s.module: s for s in ModuleState.objects.filter(year=year)}
    all_reasons = year_incomplete_reasons(year=obj)
    modules = []
    for key, mod in MODULES.items():
        targets = {}
        for target in TARGETS:
            latest = (
                Job.objects.filter(pipeline__year=year, pipeline__module=key, job_type=INGEST_JOB_TYPES[target])
                .order_by("-id")
                .first()
            )
            targets[target] = _job_summary(latest)
        state = states.get(key)
        reasons = all_reasons.get(key, []) if key in enabled else []
        modules.append(
            {
                "module": key,
                "label": mod.label,
                "enabled": key in enabled,
                "rows": state.data_rows if state else 0,
                "targets": targets,
                "totals_pipeline_id": str(state.totals_pipeline_id) if state and state.totals_pipeline_id else None,
                "incomplete_reasons": reasons if key in enabled else [],
                "complete": key in enabled and not reasons,
            }
        )
    active = Pipeline.objects.filter(year=year).exclude(status__in=DONE_STATUSES).order_by("created_at")
    return {
        "year": obj.year,
        "is_open": obj.is_open,
        "configured_at": obj.configured_at.isoformat() if obj.configured_at else None,
        "config": obj.config,
        "modules": modules,
        "incomplete_reasons": all_reasons,
        "can_open": not all_reasons,
        # With their modules so callers narrow them (``backoffice.api.ingestion``) before showing ids.
        "active_pipelines": [{"id": str(pk), "module": m} for pk, m in active.values_list("id", "module")],
    }


def year_totals(*, year: int, module: str | None = None, unit: str | None = None) -> dict[str, Any]:
    """kg CO2e per module and per unit x module, with the pipeline that computed them."""
    qs = Total.objects.filter(year=year).order_by("module", "unit_id")
    if module:
        qs = qs.filter(module=module)
    rows = list(qs.values("module", "unit_id", "kg_co2e", "rows_without_factor", "pipeline_id", "computed_at"))

    def item(r: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "module": r["module"],
            "kg_co2e": r["kg_co2e"],
            "rows_without_factor": r["rows_without_factor"],
            "pipeline_id": str(r["pipeline_id"]) if r["pipeline_id"] else None,
            "computed_at": r["computed_at"].isoformat() if r["computed_at"] else None,
        }

    per_module = [item(r) for r in rows if r["unit_id"] == ""]
    per_unit = [
        {"unit_id": r["unit_id"], **item(r)} for r in rows if r["unit_id"] and (not unit or r["unit_id"] == unit)
    ]
    return {
        "year": year,
        "kg_co2e": sum(r["kg_co2e"] for r in per_module),
        "modules": per_module,
        "units": per_unit,
    }


def upload_get(*, upload_id: int) -> Upload:
    return Upload.objects.select_related("uploaded_by", "duplicate_of").get(pk=upload_id)


def upload_file_exists(upload: Upload) -> bool:
    """Whether the upload's raw file is still in storage (retention removes it)."""
    return default_storage.exists(upload.stored_name)


def upload_file_open(upload: Upload) -> IO[bytes]:
    """The upload's raw file, opened for a streamed read from any storage backend;
    FileNotFoundError once retention removed it."""
    return open_stored(upload.stored_name)


def job_row_errors(*, job_id: int) -> Iterator[dict[str, Any]]:
    """Every row error of an ingest job, in row order, streamed from the database."""
    qs = RowError.objects.filter(job_id=job_id).order_by("row", "id").values_list("row", "column", "reason")
    for row, column, reason in qs.iterator(chunk_size=5000):
        yield {"row": row, "column": column or None, "reason": reason}
