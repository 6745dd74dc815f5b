"""Reads behind a pipeline's detail (inline in the console and on its own page).

The DAG is laid out here and drawn as SVG by the template: no script is needed to see
it, and the page re-reads this fragment when the pipeline's live events arrive, so
node colours follow the run. Layout: a node's column is its longest path from a root
(upstream jobs always to the left); within a column, nodes in id (plan) order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.urls import NoReverseMatch, reverse
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from backoffice import access, labels
from ingestion.selectors import findings_of
from pipelines import events, messages
from pipelines.models import Job, JobEvent, JobResult, JobState, OperatorAction, Pipeline

NODE_W, NODE_H = 200, 46
GAP_X, GAP_Y, PAD = 56, 14, 8
TIMELINE_EVENTS = 200
FIRST_ROW_ERRORS = 10

# Labels of the meta keys an operator reads (the rest is shown raw on request).
META_LABELS = {
    "rows_total": _("rows in file"),
    "rows_processed": _("rows processed"),
    "rows_loaded": _("rows loaded"),
    "rows_rejected": _("rows rejected"),
    "rows_skipped": _("blank lines skipped"),
    "row_errors_total": _("row errors"),
    "parser": _("parser"),
    "upload_id": _("upload"),
    "duplicate_of_upload": _("same file as upload"),
    "units_synced": _("units synced"),
    "reports_created": _("reports created"),
    "totals_written": _("totals written"),
    "factors_upserted": _("factors upserted"),
    "factors_stale": _("factors marked stale"),
    "modules_refreshed": _("modules refreshed"),
    "coalesced_with_pipeline": _("coalesced with pipeline"),
    "rows_written": _("rows written"),
    "export_id": _("export"),
    "size": _("file size (bytes)"),
    "findings_error": _("errors found"),
    "findings_warning": _("warnings found"),
    "findings_info": _("notes"),
    "lines_sampled": _("emission lines recomputed"),
}
TIMING_LABELS = {"load": _("load"), "validate": _("validate"), "apply": _("apply")}


@dataclass
class Node:
    job: Job
    x: int
    y: int
    look: str
    percent: float | None

    @property
    def label(self) -> str:
        det = f" [{self.job.det}]" if self.job.det else ""
        return f"#{self.job.pk} {labels.job_type(self.job.job_type)}{det}"

    @property
    def sub(self) -> str:
        state = labels.job_look(self.job)
        pct = f" · {self.percent:.0f}%" if self.percent is not None else ""
        return f"{state}{pct}"

    @property
    def bar_width(self) -> float:
        return round((NODE_W - 2) * (self.percent or 0) / 100.0, 1)


def look(job: Job) -> str:
    """One CSS class for a node: its result when finished, else its state."""
    return str(job.result) if job.state == JobState.FINISHED and job.result else str(job.state)


def layout(jobs: list[Job], edges: list[tuple[int, int]]) -> dict[str, Any]:
    """Positions of nodes and the paths of edges (child depends on parent)."""
    parents: dict[int, list[int]] = {j.pk: [] for j in jobs}
    for child, parent in edges:
        if child in parents and parent in parents:
            parents[child].append(parent)
    column: dict[int, int] = {}

    def depth(pk: int, seen: frozenset[int] = frozenset()) -> int:
        if pk not in column:
            # ``seen`` guards against a cycle in bad data: drawn flat rather than a crash.
            ups = [p for p in parents[pk] if p not in seen]
            column[pk] = 1 + max((depth(p, seen | {pk}) for p in ups), default=-1)
        return column[pk]

    rows: dict[int, int] = {}
    nodes: dict[int, Node] = {}
    for job in sorted(jobs, key=lambda j: j.pk):
        col = depth(job.pk)
        row = rows.get(col, 0)
        rows[col] = row + 1
        nodes[job.pk] = Node(job, PAD + col * (NODE_W + GAP_X), PAD + row * (NODE_H + GAP_Y), look(job),
                             job.progress_percent)
    paths = []
    for child, parent in edges:
        if child not in nodes or parent not in nodes:
            continue
        a, b = nodes[parent], nodes[child]
        x1, y1 = a.x + NODE_W, a.y + NODE_H // 2
        x2, y2 = b.x, b.y + NODE_H // 2
        mid = (x1 + x2) / 2
        paths.append({"d": f"M{x1},{y1} C{mid},{y1} {mid},{y2} {x2 - 4},{y2}", "look": a.look,
                      "parent": parent, "child": child})
    width = PAD * 2 + (max(column.values(), default=0) + 1) * (NODE_W + GAP_X) - GAP_X
    height = PAD * 2 + max(rows.values(), default=1) * (NODE_H + GAP_Y) - GAP_Y
    return {"nodes": list(nodes.values()), "edges": paths, "width": width, "height": height,
            "node_w": NODE_W, "node_h": NODE_H}


def _upload_link(upload_id: Any) -> str | None:
    try:
        return reverse("admin:ingestion_upload_change", args=[upload_id])
    except NoReverseMatch:
        return None


def _job_entry(job: Job) -> dict[str, Any]:
    meta = job.meta or {}
    decoded = [(key, label, meta[key]) for key, label in META_LABELS.items()
               if key in meta and meta[key] not in ("", None)]
    duration = (job.finished_at - job.started_at).total_seconds() if job.finished_at and job.started_at else None
    errors_total = int(meta.get("row_errors_total") or len(meta.get("row_errors") or []))
    failed = job.error is not None or bool(meta.get("file_error")) or errors_total > 0
    return {
        "job": job,
        "look": look(job),
        "percent": job.progress_percent,
        "counts": events.counts_of(meta),
        "decoded": decoded,
        "timings": [(TIMING_LABELS.get(k, k), v) for k, v in (meta.get("timings_s") or {}).items()],
        "duration": duration,
        "upload_url": _upload_link(meta["upload_id"]) if meta.get("upload_id") else None,
        "error": job.error,
        "file_error": meta.get("file_error"),
        "row_errors": (meta.get("row_errors") or [])[:FIRST_ROW_ERRORS],
        "row_errors_total": errors_total,
        "errors_csv": f"/api/v1/jobs/{job.pk}/errors.csv" if errors_total else None,
        "has_problem": failed,
        # A validation's findings (ingestion.validations), in the reader's language.
        "findings": findings_of(job) if meta.get("findings") else [],
    }


def pipeline_detail(*, user: Any, pipeline_id: Any) -> dict[str, Any] | None:
    """Everything the detail shows, or ``None`` when the user may not see the pipeline."""
    pipeline = access.filter_pipelines(Pipeline.objects.all(), user).filter(pk=pipeline_id).first()
    if pipeline is None:
        return None
    jobs = list(Job.objects.filter(pipeline=pipeline).order_by("id"))
    edges = list(
        Job.depends_on.through.objects.filter(from_job__pipeline_id=pipeline.pk).values_list("from_job_id", "to_job_id")
    )
    timeline = list(
        JobEvent.objects.filter(pipeline=pipeline).exclude(kind="progress").order_by("-seq")[:TIMELINE_EVENTS]
    )
    timeline.reverse()
    return {
        "pipeline": pipeline,
        "pipeline_dict": events.pipeline_dict(pipeline),
        "dag": layout(jobs, edges),
        "jobs": [_job_entry(j) for j in jobs],
        "timeline": [_timeline_entry(e) for e in timeline],
        "actions": list(OperatorAction.objects.filter(pipeline=pipeline).order_by("-created_at")[:50]),
        "last_error": _last_error(jobs),
    }


def _last_error(jobs: list[Job]) -> str:
    """``Pipeline.last_error`` (stored in English) in the reader's language."""
    failed = [j for j in jobs if j.result == JobResult.ERROR]
    if not failed:
        return ""
    job = max(failed, key=lambda j: (j.finished_at is not None, j.finished_at or j.updated_at))
    det = f" {job.det}" if job.det else ""
    text = messages.text_of(job.status_key, job.status_params, job.status_message)
    return f"{labels.job_type(job.job_type)}{det} #{job.pk}: {text}"


def _timeline_entry(event: JobEvent) -> dict[str, Any]:
    payload = event.payload or {}
    job = payload.get("job") or {}
    pipeline = payload.get("pipeline") or {}
    if job:
        what = f"#{job.get('id')} {labels.job_type(job.get('job_type'))}"
        state = job.get("result") or job.get("state")
        state_label = labels.job_look(job)
        text = messages.text_of(job.get("status_key") or "", job.get("status_params"), job.get("status_message", ""))
    else:
        what = gettext("pipeline")
        state = pipeline.get("status")
        state_label = labels.status(state)
        text = labels.phase(pipeline.get("progress", {}).get("phase", ""))
    return {"seq": event.seq, "at": event.created_at, "kind": event.kind, "what": what, "state": state,
            "state_label": state_label, "text": text}
