"""What the Data management page shows, composed from ingestion and pipelines selectors.

One read model for the page's three parts (year bar, modules table, job history), so
the server-rendered page and its live refreshes (the same view, fetched again when a
pipeline finishes) never disagree. Access narrowing is ``backoffice.access``'s: a
module-granted user gets their modules only; year-wide actions need an unrestricted
operator, as in the API (``require_operate(user, None)``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Count, QuerySet
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from backoffice import access
from ingestion import job_types
from ingestion import selectors as ingestion_selectors
from ingestion.models import Export, Factor, Upload, Year
from ingestion.modules import MODULES, TARGET_DATA, TARGET_FACTORS, TARGETS
from pipelines import messages
from pipelines import selectors as pipeline_selectors
from pipelines.models import DONE_STATUSES, Job, JobEvent, JobResult, Pipeline

TARGET_LABELS = {TARGET_DATA: _("Data entries"), TARGET_FACTORS: _("Factors")}
JOB_TARGETS = {v: k for k, v in job_types.INGEST_JOB_TYPES.items()}
JOB_TYPE_LABELS = {
    job_types.CSV_INGEST.name: _("Data entries"), job_types.FACTOR_INGEST.name: _("Factors"),
    job_types.EMISSION_RECALC.name: _("Recalculation"), job_types.AGGREGATION.name: _("Totals"),
    job_types.UNIT_SYNC.name: _("Unit sync"), job_types.EXPORT.name: _("Export"),
    job_types.VALIDATE_YEAR.name: _("Validation"),
}
HISTORY_LIMIT = 50
FIRST_ERRORS = 10
EVENTS_LIMIT = 500
EXPORTS_SHOWN = 5
PROBLEM_RESULTS = (JobResult.WARNING, JobResult.ERROR, JobResult.CANCELLED)
RESULT_FILTERS = ("success", "warning", "error", "cancelled", "skipped", "running")


@dataclass
class TargetRow:
    module: str
    label: str
    target: str
    target_label: Any
    columns: list[str]
    required: list[str]
    rows: int
    upload: Upload | None
    job: dict[str, Any] | None
    can_upload: bool
    active: dict[str, Any] | None = None


@dataclass
class ModuleBlock:
    module: str
    label: str
    enabled: bool
    complete: bool
    reasons: list[str]
    targets: list[TargetRow]
    can_recalculate: bool
    active: dict[str, Any] | None = None


@dataclass
class Page:
    years: list[Year]
    year: Year | None
    modules: list[ModuleBlock] = field(default_factory=list)
    reasons: list[tuple[str, list[str]]] = field(default_factory=list)
    can_open: bool = False
    can_manage_years: bool = False
    active: list[dict[str, Any]] = field(default_factory=list)
    year_active: dict[str, Any] | None = None
    # The year-wide runs (exports, validations): shown to users whose scope is every
    # module only, like the API (both span every module of the year).
    can_see_runs: bool = False
    exports: list[Export] = field(default_factory=list)
    export_active: dict[str, Any] | None = None
    validation: Job | None = None  # the latest completed one
    findings: list[dict[str, Any]] = field(default_factory=list)
    validation_active: dict[str, Any] | None = None
    # The last event seq before the page was read: the script refetches the page when its
    # feed's snapshot is newer (something finished between the render and the socket).
    seq: int = 0


def _active_pipelines(year: int, modules: frozenset[str] | None) -> list[dict[str, Any]]:
    """Running pipelines of the year, each with where its bar belongs (year, module, target)."""
    qs = Pipeline.objects.filter(year=year).exclude(status__in=DONE_STATUSES).order_by("created_at")
    qs = access.narrow(qs, modules)
    out = []
    for p in qs:
        running = (
            Job.objects.filter(pipeline=p).exclude(status_message="").order_by("-updated_at")
            .values("status_message", "status_key", "status_params").first()
        )
        out.append({
            "id": str(p.pk), "kind": p.kind, "module": p.module, "target": (p.params or {}).get("target", ""),
            "status": p.status, "percent": p.progress_percent, "phase": p.phase,
            "message": messages.text_of(running["status_key"], running["status_params"], running["status_message"])
            if running else "",
        })
    return out


def page(*, user: Any, year: int | None) -> Page:
    """The page for ``year`` (the newest year when ``None``); ``Page.year`` is None if there is none."""
    seq = pipeline_selectors.last_seq()  # first: later reads can only be newer
    years = list(ingestion_selectors.year_list(include_closed=True))
    chosen = next((y for y in years if y.year == year), None) if year is not None else (years[0] if years else None)
    result = Page(years=years, year=chosen, can_manage_years=access.can_operate_module(user, None), seq=seq)
    if chosen is None:
        return result
    grants = access.granted_modules(user)
    detail = ingestion_selectors.year_detail(year=chosen.year)
    uploads: dict[tuple[str, str], Upload] = {
        (u.module, u.target): u
        for u in Upload.objects.filter(year_id=chosen.year).select_related("uploaded_by")
        .order_by("module", "target", "-id").distinct("module", "target")
    }
    factor_rows = dict(
        Factor.objects.filter(year=chosen.year, stale=False).values("module").annotate(n=Count("id"))
        .values_list("module", "n")
    )
    for item in detail["modules"]:
        key = item["module"]
        if not access.in_scope(grants, key):
            continue
        mod = MODULES[key]
        may_operate = access.can_operate_module(user, key)
        targets = []
        for target in TARGETS:
            cols = mod.columns(target)
            targets.append(TargetRow(
                module=key, label=gettext(mod.label), target=target, target_label=TARGET_LABELS[target],
                columns=[c.name for c in cols], required=[c.name for c in cols if c.required],
                rows=item["rows"] if target == TARGET_DATA else factor_rows.get(key, 0),
                upload=uploads.get((key, target)), job=item["targets"][target],
                can_upload=may_operate and chosen.configured_at is not None,
            ))
        result.modules.append(ModuleBlock(
            module=key, label=gettext(mod.label), enabled=item["enabled"], complete=item["complete"],
            reasons=item["incomplete_reasons"], targets=targets, can_recalculate=may_operate,
        ))
    # A module-granted user is told about the year and their modules, not the others.
    result.reasons = [
        (gettext(MODULES[k].label) if k in MODULES else gettext("Year"), v)
        for k, v in detail["incomplete_reasons"].items() if access.in_scope(grants, None if k == "year" else k)
    ]
    result.can_open = detail["can_open"]
    result.can_see_runs = access.can_see_module(user, None)
    if result.can_see_runs:
        result.exports = list(
            Export.objects.filter(year_id=chosen.year).select_related("pipeline", "created_by")[:EXPORTS_SHOWN]
        )
        result.validation = ingestion_selectors.latest_validation(year=chosen.year)
        result.findings = ingestion_selectors.findings_of(result.validation) if result.validation else []
    result.active = _active_pipelines(chosen.year, grants)
    # Where each running pipeline's bar goes (the page's script places live ones alike):
    # an export or validation on their part, other module-less ones (unit sync) on the year bar,
    # an upload on its target's row, a recalculation on its module. Newest wins.
    blocks = {b.module: b for b in result.modules}
    for p in result.active:
        block = blocks.get(p["module"])
        if p["kind"] == job_types.EXPORT_KIND:
            result.export_active = p
        elif p["kind"] == job_types.VALIDATION_KIND:
            result.validation_active = p
        elif not p["module"]:
            result.year_active = p
        elif block is not None and p["target"]:
            for row in block.targets:
                if row.target == p["target"]:
                    row.active = p
        elif block is not None:
            block.active = p
    return result


# --- job history ------------------------------------------------------------------------------


def history_jobs(
    *, user: Any, year: int, module: str = "", result: str = "", problems: bool = False, limit: int = HISTORY_LIMIT
) -> QuerySet[Job]:
    """Jobs of the year's pipelines the user may see, newest first, filtered."""
    qs = access.filter_jobs(Job.objects.filter(pipeline__year=year), user).select_related("pipeline")
    if module:
        qs = qs.filter(pipeline__module=module)
    if result == "running":
        qs = qs.filter(result__isnull=True)
    elif result:
        qs = qs.filter(result=result)
    if problems:
        qs = qs.filter(result__in=PROBLEM_RESULTS)
    return qs.order_by("-id")[:limit]


def history_entry(job: Job) -> dict[str, Any]:
    meta = job.meta or {}
    duration = None
    if job.started_at and job.finished_at:
        duration = (job.finished_at - job.started_at).total_seconds()
    errors = list(meta.get("row_errors") or [])
    errors_total = int(meta.get("row_errors_total") or len(errors))
    # The raw view trims the (up to 1,000) stored row errors: errors.csv has them all.
    raw_meta = {**meta, "row_errors": errors[:FIRST_ERRORS]} if errors else meta
    raw = {
        "id": job.pk, "pipeline_id": str(job.pipeline_id), "job_type": job.job_type, "det": job.det,
        "state": job.state, "result": job.result, "status_message": job.status_message,
        "attempts": job.attempts, "meta": raw_meta, "error": job.error,
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }
    return {
        "job": job,
        "module": job.pipeline.module,
        "module_label": gettext(MODULES[job.pipeline.module].label) if job.pipeline.module in MODULES
        else job.pipeline.module or _("Year"),
        "kind_label": JOB_TYPE_LABELS.get(job.job_type, job.job_type),
        "target": JOB_TARGETS.get(job.job_type, ""),
        "look": job.result or ("running" if job.state == "running" else "queued"),
        "stats": {k: meta.get(k) for k in ("rows_total", "rows_loaded", "rows_skipped", "rows_rejected")},
        "has_stats": any(meta.get(k) is not None for k in ("rows_total", "rows_loaded")),
        "duration": duration,
        "first_errors": errors[:FIRST_ERRORS],
        "errors_total": errors_total,
        "raw": json.dumps(raw, indent=2, default=str),
    }


def history(
    *, user: Any, year: int, module: str = "", result: str = "", problems: bool = False
) -> list[dict[str, Any]]:
    jobs = history_jobs(user=user, year=year, module=module, result=result, problems=problems)
    return [history_entry(j) for j in jobs]


def job_events(*, user: Any, job_id: int) -> list[dict[str, Any]] | None:
    """Every update of a visible job in order (None: not visible), for the history's expand."""
    if not access.filter_jobs(Job.objects.filter(pk=job_id), user).exists():
        return None
    rows = JobEvent.objects.filter(job_id=job_id).order_by("seq").values("seq", "kind", "created_at", "payload")
    out = []
    for row in rows[:EVENTS_LIMIT]:
        job = (row["payload"] or {}).get("job") or {}
        out.append({
            "seq": row["seq"], "kind": row["kind"], "at": row["created_at"], "state": job.get("state"),
            "result": job.get("result"), "percent": (job.get("progress") or {}).get("percent"),
            "phase": (job.get("progress") or {}).get("phase"),
            "message": messages.text_of(job.get("status_key") or "", job.get("status_params"),
                                        job.get("status_message") or ""),
        })
    return out
