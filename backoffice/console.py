"""Reads behind the Operations console page: filters, the pipeline page, alert counters, stat cards.

The page is paged by *pipeline* with a keyset cursor on ``(created_at, id)`` (the
``pipeline_newest`` index): no OFFSET and no COUNT(*), so the thousandth page costs
what the first one does. Jobs are then fetched for the page's pipelines only.

Every read starts from what the user may see (``backoffice.access``): a module-granted
operator's counters, cards and rows cover their modules only.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django import forms
from django.db.models import Count, Max, Q, QuerySet
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from backoffice import access, labels, live
from backoffice.api.filters import PipelineFilter
from pipelines import alerts, events, stats
from pipelines import counters as kept_counters
from pipelines.models import Job, JobResult, JobState, OperatorAction, Pipeline, QueueState
from pipelines.years import YEAR_REF_MAX, YEAR_REF_MIN
from workers.selectors import queue_list, worker_list

PAGE_SIZE = 20

ALERT_LABELS = {
    "rows_all_rejected": _("All rows rejected"),
    "transaction_poisoned": _("Poisoned transaction"),
    "deadlock": _("Deadlock"),
    "aggregation_amplified": _("Aggregation amplified"),
    "stuck": _("Stuck"),
    "queue_stalled": _("Queue stalled"),
    "slow": _("Slow"),
}


class ConsoleFilterForm(forms.Form):
    """The filter bar. Values are handed to the API's ``PipelineFilter`` (one definition)."""

    q = forms.CharField(required=False, label=_("Search"), max_length=100,
                        widget=forms.TextInput(attrs={"placeholder": _("short id, kind, module, error…")}))
    year = forms.IntegerField(required=False, min_value=YEAR_REF_MIN, max_value=YEAR_REF_MAX, label=_("Year"))
    module = forms.CharField(required=False, max_length=40, label=_("Module"))
    kind = forms.CharField(required=False, max_length=40, label=_("Kind"))
    status = forms.ChoiceField(required=False, label=_("Status"),
                               choices=[("", _("any status")), *labels.STATUS_CHOICES])
    has_errors = forms.BooleanField(required=False, label=_("Has errors"))
    alert = forms.ChoiceField(required=False, label=_("Alert"),
                              choices=[("", _("any alert")), *ALERT_LABELS.items()])
    date_from = forms.DateField(required=False, label=_("From"), widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(required=False, label=_("To"), widget=forms.DateInput(attrs={"type": "date"}))

    def filter_data(self) -> dict[str, Any]:
        """The cleaned values in ``PipelineFilter``'s vocabulary (dates become a UTC range)."""
        data = {k: v for k, v in self.cleaned_data.items() if v not in (None, "", False)}
        start: date | None = data.pop("date_from", None)
        end: date | None = data.pop("date_to", None)
        if start:
            data["since"] = datetime.combine(start, time.min, tzinfo=UTC).isoformat()
        if end:  # inclusive: the whole "to" day
            data["until"] = datetime.combine(end + timedelta(days=1), time.min, tzinfo=UTC).isoformat()
        if data.get("has_errors"):
            data["has_errors"] = "true"
        return data


@dataclass(frozen=True)
class Cursor:
    """A position in the newest-first order: the last pipeline of the previous page."""

    created_at: datetime
    id: str

    def encode(self) -> str:
        raw = f"{self.created_at.isoformat()}|{self.id}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> Cursor | None:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
            stamp, pk = raw.split("|", 1)
            return cls(datetime.fromisoformat(stamp), pk)
        except (ValueError, binascii.Error, UnicodeDecodeError):
            return None


@dataclass
class ConsolePage:
    rows: list[dict[str, Any]]
    next_cursor: str | None
    first_page: bool
    seq: int
    filters: dict[str, Any] = field(default_factory=dict)


def visible_pipelines(user: Any) -> QuerySet[Pipeline]:
    return access.filter_pipelines(Pipeline.objects.all(), user)


def visible_jobs(user: Any) -> QuerySet[Job]:
    return access.filter_jobs(Job.objects.all(), user)


def pipeline_page(*, user: Any, filters: dict[str, Any], cursor: str = "", size: int = PAGE_SIZE) -> ConsolePage:
    """One page of pipelines (newest first) with their jobs, and the event seq it is current to."""
    seq = live._current_seq()  # read first: events after it are replayed to the page
    fs = PipelineFilter(data=filters, queryset=visible_pipelines(user))
    qs = fs.qs if fs.is_valid() else visible_pipelines(user).none()
    position = Cursor.decode(cursor) if cursor else None
    if position is not None:
        qs = qs.filter(Q(created_at__lt=position.created_at) | Q(created_at=position.created_at, id__lt=position.id))
    pipelines = list(qs.order_by("-created_at", "-id")[: size + 1])
    more = len(pipelines) > size
    pipelines = pipelines[:size]
    jobs_by_pipeline: dict[str, list[dict[str, Any]]] = {}
    for job in live._jobs_of([p.pk for p in pipelines], per_pipeline=live.SNAPSHOT_JOBS_PER_PIPELINE):
        jobs_by_pipeline.setdefault(job["pipeline_id"], []).append(job)
    rows = [
        {
            "pipeline": {**events.pipeline_dict(p), "pipeline_seq": p.last_pipeline_seq},
            "created_at": p.created_at,
            "warning_count": p.warning_count,
            "jobs": jobs_by_pipeline.get(str(p.pk), []),
        }
        for p in pipelines
    ]
    last = pipelines[-1] if pipelines else None
    next_cursor = Cursor(last.created_at, str(last.pk)).encode() if more and last is not None else None
    return ConsolePage(rows=rows, next_cursor=next_cursor, first_page=position is None, seq=seq, filters=filters)


# --- counters -------------------------------------------------------------------------


def alert_counts(*, user: Any) -> list[dict[str, Any]]:
    """One counter per alert kind (``pipelines.alerts.ALERT_KINDS``), over the jobs the user may see."""
    jobs = visible_jobs(user)
    return [
        {"kind": kind, "label": ALERT_LABELS[kind], "count": alerts.alert_jobs(kind, jobs).count()}
        for kind in alerts.ALERT_KINDS
    ]


def stat_cards(*, user: Any) -> dict[str, Any]:
    """Running, queued, failed (24 h), success rate (24 h), p95 per job type, throughput.

    Cheap on a long history: running/queued on ``job_state_queue``; "in the last 24 h /
    hour" counts jobs by *finish* time, the whole hours from the trigger-kept hourly
    tally and the partial hours at the edges from ``job_finished_result``
    (``pipelines.counters.finished_counts``); p95 from the newest successful jobs
    (``job_ok_newest``).
    """
    jobs = visible_jobs(user)
    scope = access.granted_modules(user)
    now = timezone.now()
    live = jobs.filter(state__in=[JobState.RUNNING, JobState.QUEUED]).aggregate(
        running=Count("pk", filter=Q(state=JobState.RUNNING)), queued=Count("pk", filter=Q(state=JobState.QUEUED))
    )
    day = kept_counters.finished_counts(jobs=jobs, since=now - timedelta(hours=24), modules=scope)
    last_hour = sum(kept_counters.finished_counts(jobs=jobs, since=now - timedelta(hours=1), modules=scope).values())
    failed = day.get(JobResult.ERROR, 0)
    ok = day.get(JobResult.SUCCESS, 0) + day.get(JobResult.WARNING, 0)
    judged = ok + failed  # cancelled and skipped say nothing about success
    return {
        "running": live["running"],
        "queued": live["queued"],
        "failed_24h": failed,
        "success_rate": round(100.0 * ok / judged, 1) if judged else None,
        "throughput_per_minute": round(last_hour / 60.0, 2),
        "finished_last_hour": last_hour,
        "p95": stats.durations(jobs=jobs.filter(created_at__gte=now - timedelta(hours=24)))["by_job_type"],
    }


def counters(*, user: Any) -> dict[str, Any]:
    return {"alerts": alert_counts(user=user), "cards": stat_cards(user=user)}



# --- queues and workers -----------------------------------------------------------------


def queues_and_workers(*, inspect_timeout: float) -> dict[str, Any]:
    """Per queue: depth, waiting jobs and the oldest one's age, running, consumers, pause
    (who, when, why); per worker: what Celery's inspect answered, and the newest heartbeat
    its running jobs sent (the worker's own liveness, from the database)."""
    try:
        workers = list(worker_list(timeout=inspect_timeout))
    except Exception:  # noqa: BLE001 - broker down: no live worker rather than a 500
        workers = []
    queues = queue_list(workers=workers)
    paused = {q["name"] for q in queues if q["paused"]}
    states = {s.name: s for s in QueueState.objects.filter(name__in=paused)}
    reasons: dict[str, str] = {}
    for action in OperatorAction.objects.filter(action="pause", target_type="queue", target_id__in=paused).order_by(
        "-created_at"
    ):
        reasons.setdefault(action.target_id, action.reason)
    beats = dict(
        Job.objects.filter(state=JobState.RUNNING, worker__in=[w["hostname"] for w in workers])
        .values("worker")
        .annotate(last=Max("heartbeat_at"))
        .values_list("worker", "last")
    )
    return {
        "queues": [
            {**q, "paused_by": states[q["name"]].changed_by if q["name"] in states else "",
             "paused_at": states[q["name"]].changed_at if q["name"] in states else None,
             "paused_reason": reasons.get(q["name"], "")}
            for q in queues
        ],
        "workers": [
            {**w, "answered_at": datetime.fromtimestamp(w["last_heartbeat"], tz=UTC) if w["last_heartbeat"] else None,
             "job_heartbeat_at": beats.get(w["hostname"])}
            for w in workers
        ],
    }
