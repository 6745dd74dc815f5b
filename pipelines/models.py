"""Pipelines, jobs, their event history, operator actions and queue pause state.

PostgreSQL is the source of truth for every job; Celery messages only say "look at
job N now". State changes go through ``pipelines.services`` (compare-and-set), never
through ``save()`` on a loaded row.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _


class JobState(models.TextChoices):
    NOT_STARTED = "not_started"
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"


class JobResult(models.TextChoices):
    SUCCESS = "success"
    WARNING = "warning"
    ERROR = "error"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"


def job_done(state: str, processed: int, total: int | None) -> float | None:
    """The share of one job's work that is done: the one progress rule behind a job's
    percentage (``Job.progress_percent``) and its weight in its pipeline's
    (``pipelines.dag.job_fraction``). 1.0 once finished; else ``processed / total``
    (within 0..1) while the total is known; None without one."""
    if state == JobState.FINISHED:
        return 1.0
    if total:
        return max(0.0, min(1.0, processed / total))
    return None


class PipelineStatus(models.TextChoices):
    NOT_STARTED = "not_started"
    RUNNING = "running"
    SUCCESS = "success"
    PARTIAL = "partial"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # An upload's ingest found a later upload of the same module-year already loaded:
    # nothing of this file was applied and nothing downstream ran (phase names the winner).
    SUPERSEDED = "superseded"


DONE_STATUSES = (
    PipelineStatus.SUCCESS,
    PipelineStatus.PARTIAL,
    PipelineStatus.FAILED,
    PipelineStatus.CANCELLED,
    PipelineStatus.SUPERSEDED,
)


# Errors the alerts ``transaction_poisoned`` and ``deadlock`` look for (``pipelines.alerts``).
# Here because two partial indexes below are these very conditions: PostgreSQL then
# answers the alerts' counts from entries that exist only for such errors instead of
# reading every failed job of the week (milliseconds each at 1M jobs).
POISONED_ERROR = (
    models.Q(error__type="InFailedSqlTransaction")
    | models.Q(error__message__icontains="current transaction is aborted")
    | models.Q(status_message__icontains="current transaction is aborted")
)
DEADLOCK_ERROR = (
    models.Q(error__type="DeadlockDetected")
    | models.Q(error__message__icontains="deadlock detected")
    | models.Q(status_message__icontains="deadlock detected")
)


class Pipeline(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    kind = models.CharField(verbose_name=_("kind"), max_length=40)
    year = models.IntegerField(verbose_name=_("year"), null=True, blank=True)
    module = models.CharField(verbose_name=_("module"), max_length=40, blank=True, default="")
    status = models.CharField(
        verbose_name=_("status"),
        max_length=20, choices=PipelineStatus.choices, default=PipelineStatus.NOT_STARTED
    )
    params = models.JSONField(verbose_name=_("parameters"), default=dict, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, verbose_name=_("created by"),
        null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(verbose_name=_("created at"), auto_now_add=True)
    started_at = models.DateTimeField(verbose_name=_("started at"), null=True, blank=True)
    finished_at = models.DateTimeField(verbose_name=_("finished at"), null=True, blank=True)
    updated_at = models.DateTimeField(verbose_name=_("updated at"), auto_now=True)
    # Denormalised from the jobs on every transition (under this row's lock) so the
    # console's list needs no aggregate over a million jobs.
    jobs_total = models.IntegerField(verbose_name=_("jobs"), default=0)
    jobs_finished = models.IntegerField(verbose_name=_("jobs finished"), default=0)
    error_count = models.IntegerField(verbose_name=_("errors"), default=0)
    warning_count = models.IntegerField(verbose_name=_("warnings"), default=0)
    # The rest of what the status and progress need, kept the same way: the claim and the
    # finish (``pipelines.services.sql_transitions``) update them with the transition,
    # so a transition never re-reads the pipeline's jobs to know where it stands.
    jobs_queued = models.IntegerField(verbose_name=_("jobs queued"), default=0)
    jobs_running = models.IntegerField(verbose_name=_("jobs running"), default=0)
    success_count = models.IntegerField(verbose_name=_("successes"), default=0)
    cancelled_count = models.IntegerField(verbose_name=_("cancelled jobs"), default=0)
    superseded_count = models.IntegerField(verbose_name=_("superseded jobs"), default=0)
    progress_percent = models.FloatField(verbose_name=_("progress (%)"), default=0.0)
    phase = models.CharField(verbose_name=_("phase"), max_length=200, blank=True, default="")
    last_error = models.TextField(verbose_name=_("last error"), blank=True, default="")
    # The last ``pipeline_seq`` handed to one of this pipeline's events: allocated under
    # this row's lock, so gapless and in commit order within a pipeline (clients detect
    # dropped messages by a jump).
    last_pipeline_seq = models.BigIntegerField(verbose_name=_("events"), default=0)

    class Meta:
        verbose_name = _("pipeline")
        verbose_name_plural = _("pipelines")
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["-created_at", "-id"], name="pipeline_newest"),
            models.Index(fields=["year", "module", "status"], name="pipeline_scope"),
            models.Index(fields=["status", "-created_at"], name="pipeline_status_newest"),
            models.Index(fields=["kind", "-created_at"], name="pipeline_kind_newest"),
        ]

    def __str__(self) -> str:
        scope = "/".join(str(p) for p in (self.year, self.module) if p)
        return f"{self.kind} {scope} {str(self.id)[:8]}"

    @property
    def is_done(self) -> bool:
        return self.status in DONE_STATUSES


class Job(models.Model):
    pipeline = models.ForeignKey(Pipeline, verbose_name=_("pipeline"), on_delete=models.CASCADE, related_name="jobs")
    job_type = models.CharField(verbose_name=_("job type"), max_length=40)
    queue = models.CharField(verbose_name=_("queue"), max_length=40)
    det = models.CharField(verbose_name=_("det"), max_length=60, blank=True, default="")
    depends_on = models.ManyToManyField(
        "self", verbose_name=_("depends on"), symmetrical=False, related_name="dependents", blank=True
    )
    params = models.JSONField(verbose_name=_("parameters"), default=dict, blank=True)
    state = models.CharField(
        verbose_name=_("state"), max_length=20, choices=JobState.choices, default=JobState.NOT_STARTED,
    )
    # NULL until finished: "no result yet" is not the same as any result.
    result = models.CharField(  # noqa: DJ001
        verbose_name=_("result"), max_length=20, choices=JobResult.choices, null=True, blank=True,
    )
    # The English text (API, logs); the same message as a gettext msgid and its
    # parameters, rendered in the reader's language (``pipelines.messages``). An empty
    # key (rows written before it existed, plain-text messages) shows the text as is.
    status_message = models.TextField(verbose_name=_("status message"), blank=True, default="")
    status_key = models.TextField(verbose_name=_("message key"), blank=True, default="")
    status_params = models.JSONField(verbose_name=_("message parameters"), default=dict, blank=True)
    phase = models.CharField(verbose_name=_("phase"), max_length=120, blank=True, default="")
    progress_processed = models.BigIntegerField(verbose_name=_("processed"), default=0)
    progress_total = models.BigIntegerField(verbose_name=_("total"), null=True, blank=True)
    meta = models.JSONField(verbose_name=_("meta"), default=dict, blank=True)
    error = models.JSONField(verbose_name=_("error"), null=True, blank=True)
    attempts = models.IntegerField(verbose_name=_("attempts"), default=0)
    max_attempts = models.IntegerField(verbose_name=_("max attempts"), default=3)
    celery_task_id = models.CharField(verbose_name=_("Celery task id"), max_length=64, blank=True, default="")
    worker = models.CharField(verbose_name=_("worker"), max_length=200, blank=True, default="")
    heartbeat_at = models.DateTimeField(verbose_name=_("last heartbeat"), null=True, blank=True)
    cancel_requested = models.BooleanField(verbose_name=_("cancel requested"), default=False)
    # Set in the same transaction as the job's durable effect (a data load), together
    # with the outcome: a redelivered message then finishes the job from it instead of
    # applying the effect a second time.
    effect_committed = models.BooleanField(verbose_name=_("effect committed"), default=False)
    effect_outcome = models.JSONField(verbose_name=_("effect outcome"), null=True, blank=True)
    # A canvas message reached the job before its upstream finished (a duplicate, or
    # a chord fired by a member that was re-queued): it was dropped, so the engine
    # sends one itself when the job becomes ready instead of waiting for the reaper.
    dispatch_when_ready = models.BooleanField(verbose_name=_("dispatch when ready"), default=False)
    # The pipeline's year, copied by a database trigger (migration console_counters, never by Python):
    # the ``aggregation_amplified`` alert's trigger compares aggregations of one year
    # (migration aggregation_suspects) without a join to the pipelines.
    pipeline_year = models.IntegerField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(verbose_name=_("created at"), auto_now_add=True)
    queued_at = models.DateTimeField(verbose_name=_("queued at"), null=True, blank=True)
    dispatched_at = models.DateTimeField(verbose_name=_("dispatched at"), null=True, blank=True)
    started_at = models.DateTimeField(verbose_name=_("started at"), null=True, blank=True)
    finished_at = models.DateTimeField(verbose_name=_("finished at"), null=True, blank=True)
    updated_at = models.DateTimeField(verbose_name=_("updated at"), auto_now=True)

    class Meta:
        verbose_name = _("job")
        verbose_name_plural = _("jobs")
        ordering = ["id"]
        indexes = [
            models.Index(fields=["state", "queue"], name="job_state_queue"),
            models.Index(fields=["state", "heartbeat_at"], name="job_state_heartbeat"),
            # A pipeline's running jobs in id order: the phase label ("noop part1 (+2 more)")
            # of every transition, read without visiting the pipeline's other jobs.
            models.Index(fields=["pipeline", "id"], name="job_running_in_pipeline",
                         condition=models.Q(state="running")),
            models.Index(fields=["job_type", "-created_at"], name="job_type_newest"),
            models.Index(fields=["-created_at"], name="job_newest"),
            models.Index(fields=["result", "-created_at"], name="job_result_newest"),
            # The console's cards and alerts, cheap on a long history (docs/BENCHMARKS.md):
            # finished in a window by result (index-only counts), recently started jobs
            # (queue_stalled), run time of finished jobs (slow), all-rejected ingests.
            models.Index(fields=["finished_at", "result"], name="job_finished_result"),
            models.Index(fields=["started_at"], name="job_started"),
            models.Index(
                models.ExpressionWrapper(
                    models.F("finished_at") - models.F("started_at"), output_field=models.DurationField()
                ),
                # Not partial: PostgreSQL keeps statistics on the expression only then, and
                # without them it guesses a third of the table and scans it all.
                name="job_run_time",
            ),
            # The duration sample (stats, cards, the slow alert's medians): the newest
            # successful runs answered from the index alone.
            models.Index(
                fields=["-created_at", "-id"],
                name="job_ok_newest",
                include=["job_type", "started_at", "finished_at"],
                condition=models.Q(state="finished", result__in=["success", "warning"], started_at__isnull=False,
                                   finished_at__isnull=False),
            ),
            # (The aggregation_amplified alert's GiST index on run spans is created by
            # migration 0011_aggregation_suspects: an expression Django cannot declare.)
            models.Index(
                fields=["-created_at"],
                name="job_all_rejected",
                condition=models.Q(job_type__in=["csv_ingest", "factor_ingest"], state="finished", meta__rows_loaded=0),
            ),
            # The two error alerts: their exact filter as the predicate (see POISONED_ERROR).
            models.Index(fields=["-created_at"], name="job_poisoned",
                         condition=models.Q(result="error") & POISONED_ERROR),
            models.Index(fields=["-created_at"], name="job_deadlock",
                         condition=models.Q(result="error") & DEADLOCK_ERROR),
        ]

    def __str__(self) -> str:
        det = f"[{self.det}]" if self.det else ""
        return f"#{self.pk} {self.job_type}{det}"

    @property
    def progress_percent(self) -> float | None:
        done = job_done(self.state, self.progress_processed, self.progress_total)
        if done is None:
            return None
        # 100 % means finished: the last unit processed is not the job committed.
        return 100.0 if self.state == JobState.FINISHED else min(99.9, 100.0 * done)


class AggregationSuspect(models.Model):
    """An aggregation that may be in an ``aggregation_amplified`` pair: written by a trigger only.

    The table, its trigger and its index are migration ``aggregation_suspects`` (raw SQL:
    the trigger must see every write, the ORM's and anyone else's); this model only lets
    ``pipelines.alerts`` read it as a subquery. No primary key in the table (rows are
    appended without waiting on each other, a duplicate is harmless): ``job_id`` stands
    in for one here, and the model is never used to write.
    """

    job_id = models.BigIntegerField(primary_key=True)

    class Meta:
        managed = False
        db_table = "pipelines_aggregation_suspect"

    def __str__(self) -> str:
        return f"aggregation suspect job #{self.job_id}"


class EventCounter(models.Model):
    """One row: the global event sequence.

    ``UPDATE … RETURNING`` on it is the last statement before an event-writing
    transaction commits, so the row lock orders commits: a client that has seen seq N
    can never later be handed an event < N (a bigserial would allow that: sequence values
    are handed out at insert, not at commit).
    """

    id = models.SmallIntegerField(primary_key=True, default=1)
    value = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"event seq {self.value}"


class JobEvent(models.Model):
    seq = models.BigIntegerField(unique=True)
    # No index of their own: (pipeline, seq) and (job, seq) below lead with them, and two
    # more indexes per event were two more inserts under the event counter (issue 13).
    pipeline = models.ForeignKey(Pipeline, on_delete=models.CASCADE, related_name="events", db_index=False)
    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.CASCADE, related_name="events",
                            db_index=False)
    pipeline_seq = models.BigIntegerField()
    type = models.CharField(max_length=30)
    kind = models.CharField(max_length=30)  # state | progress | message | control
    year = models.IntegerField(null=True, blank=True)
    module = models.CharField(max_length=40, blank=True, default="")
    payload = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["seq"]
        indexes = [
            models.Index(fields=["pipeline", "seq"], name="event_pipeline_seq"),
            models.Index(fields=["year", "seq"], name="event_year_seq"),
            models.Index(fields=["job", "seq"], name="event_job_seq"),
            models.Index(fields=["created_at"], name="event_created"),
        ]

    def __str__(self) -> str:
        return f"{self.seq} {self.type} {self.kind}"


class OperatorActionKind(models.TextChoices):
    CANCEL = "cancel"
    RETRY = "retry"
    RECOVER = "recover"
    PAUSE = "pause"
    RESUME = "resume"
    OPEN_YEAR = "open_year"
    CLOSE_YEAR = "close_year"
    CREATE_YEAR = "create_year"
    CONFIGURE_YEAR = "configure_year"
    UPLOAD = "upload"
    START_PIPELINE = "start_pipeline"
    CREATE_SOURCE = "create_source"
    UPDATE_SOURCE = "update_source"
    DELETE_SOURCE = "delete_source"
    ISSUE_TOKEN = "issue_token"  # noqa: S105 - an action name, not a secret
    REVOKE_TOKEN = "revoke_token"  # noqa: S105
    PURGE = "purge"


class OperatorAction(models.Model):
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, verbose_name=_("actor"),
        null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Kept even if the user is deleted: the audit trail must still say who.
    actor_name = models.CharField(verbose_name=_("who"), max_length=150)
    action = models.CharField(verbose_name=_("action"), max_length=30, choices=OperatorActionKind.choices)
    target_type = models.CharField(verbose_name=_("target type"), max_length=30)
    target_id = models.CharField(verbose_name=_("target id"), max_length=64)
    pipeline = models.ForeignKey(
        Pipeline, verbose_name=_("pipeline"),
        null=True, blank=True, on_delete=models.SET_NULL, related_name="operator_actions"
    )
    reason = models.TextField(verbose_name=_("reason"), blank=True, default="")
    detail = models.JSONField(verbose_name=_("detail"), default=dict, blank=True)
    created_at = models.DateTimeField(verbose_name=_("when"), auto_now_add=True)

    class Meta:
        verbose_name = _("operator action")
        verbose_name_plural = _("operator actions")
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["target_type", "target_id"], name="action_target")]

    def __str__(self) -> str:
        return f"{self.actor_name} {self.action} {self.target_type}:{self.target_id}"


class QueueState(models.Model):
    """Persistent pause flag per queue: survives worker restarts (unlike cancel_consumer)."""

    name = models.CharField(verbose_name=_("queue"), max_length=40, primary_key=True)
    paused = models.BooleanField(verbose_name=_("paused"), default=False)
    changed_at = models.DateTimeField(verbose_name=_("changed at"), auto_now=True)
    changed_by = models.CharField(verbose_name=_("changed by"), max_length=150, blank=True, default="")

    class Meta:
        verbose_name = _("queue state")
        verbose_name_plural = _("queue states")

    def __str__(self) -> str:
        return f"{self.name} ({'paused' if self.paused else 'running'})"
