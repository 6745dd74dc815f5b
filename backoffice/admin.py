"""Admin registrations (read-only views of the engine's tables) and the live console page.

Engine rows change only through ``pipelines.services`` (compare-and-set transitions),
so the admin never edits pipelines, jobs, events or actions: it shows them, filtered
by the viewer's module grants.

Over ~400 lines: one ``ModelAdmin`` per registered model, mostly declarations (columns,
filters, labels); the logic they call lives in ``admin_controls``, ``console_views``,
``sources_page`` and the apps' services.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, OuterRef, QuerySet, Subquery
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import redirect
from django.template.defaultfilters import filesizeformat
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    SolarSchedule,
)

from backoffice import access, admin_controls, console_views, labels, retention_views, sources_page, views
from backoffice.api.filters import SHORT_ID
from backoffice.models import ModuleGrant
from backoffice.pipeline_detail import META_LABELS
from ingestion import selectors as ingestion_selectors
from ingestion import services as ingestion_services
from ingestion.job_types import INGEST_JOB_TYPES
from ingestion.models import Source, Upload, Year
from ingestion.sources import schedule as source_schedule
from ingestion.sources import services as source_services
from pipelines import messages as status_messages
from pipelines.events import counts_of
from pipelines.models import Job, OperatorAction, Pipeline, QueueState
from pipelines.services import ConflictError

admin.site.site_header = "Sluice"
admin.site.site_title = "Sluice"
admin.site.index_title = _("Back office")
# Sluice has no public site: the admin's "View site" link would lead to a 404.
admin.site.site_url = None


class ReadOnlyAdmin(admin.ModelAdmin):
    """Viewable by console viewers; nobody adds, changes or deletes through the admin."""

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return access.can_view(request.user) or super().has_view_permission(request, obj)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return access.can_view(request.user) or super().has_module_permission(request)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def _duration(start: Any, end: Any) -> str:
    return f"{(end - start).total_seconds():.1f} s" if start and end else "—"


def _pipeline_link(pipeline_id: Any) -> str:
    """The pipeline's short id, linked to its console detail page."""
    url = reverse("admin:pipelines_pipeline_live_detail", args=[pipeline_id])
    return format_html('<a href="{}"><code>{}</code></a>', url, str(pipeline_id)[:8])


def _code_filter(field: str, title: Any, words: dict[str, str]) -> type[admin.SimpleListFilter]:
    """A list filter on a code column whose choices read as words in the user's language
    (the models' TextChoices labels are English: translating them would change the API schema)."""

    class CodeFilter(admin.SimpleListFilter):
        parameter_name = field

        def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
            return [(code, gettext(word)) for code, word in words.items()]

        def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
            return queryset.filter(**{field: self.value()}) if self.value() else queryset

    CodeFilter.title = title
    return CodeFilter


def _upload_link(upload_id: Any) -> str:
    """An upload or re-run pipeline's file, linked to its Uploads page."""
    if not isinstance(upload_id, int):
        return "—"
    url = reverse("admin:ingestion_upload_change", args=[upload_id])
    return format_html('<a href="{}">#{}</a>', url, upload_id)


def _search_short_id(queryset: QuerySet[Any], term: str, field: str) -> QuerySet[Any]:
    """The short id the console shows (a UUID's first characters) finds its pipeline."""
    term = term.strip()
    return queryset.filter(**{f"{field}__startswith": term.lower()}) if SHORT_ID.fullmatch(term) else queryset.none()


@admin.register(Pipeline)
class PipelineAdmin(ReadOnlyAdmin):
    # ``phase`` carries why a finished pipeline is not a success ("superseded by upload #12").
    list_display = ("short_id", "kind_label", "year", "module_label", "result", "phase_label", "progress_percent",
                    "jobs", "error_count", "duration", "upload",
                    "created_at")
    list_filter = (_code_filter("status", _("status"), labels.STATUSES), _code_filter("kind", _("kind"), labels.KINDS),
                   "year", "module")
    search_fields = ("kind", "module", "phase", "last_error")
    date_hierarchy = "created_at"
    exclude = ("params",)
    # On its (read-only) page too: where its jobs, upload and live view are.
    readonly_fields = ("short_id", "jobs", "upload")
    show_full_result_count = False  # no COUNT(*) over the whole table on every page
    actions = ["cancel_pipelines", "retry_pipelines"]

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return access.can_operate(request.user)

    @admin.action(description=_("Cancel selected pipelines…"), permissions=["operate"])
    def cancel_pipelines(self, request: HttpRequest, queryset: QuerySet[Pipeline]) -> HttpResponse | None:
        return admin_controls.confirm_then_run(self, request, queryset, admin_controls.PIPELINE_CANCEL)

    @admin.action(description=_("Retry selected pipelines…"), permissions=["operate"])
    def retry_pipelines(self, request: HttpRequest, queryset: QuerySet[Pipeline]) -> HttpResponse | None:
        return admin_controls.confirm_then_run(self, request, queryset, admin_controls.PIPELINE_RETRY)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Pipeline]:
        return access.filter_pipelines(super().get_queryset(request), request.user)

    def get_search_results(self, request: HttpRequest, queryset: QuerySet[Any], search_term: str) -> Any:
        found, duplicates = super().get_search_results(request, queryset, search_term)
        return found | _search_short_id(queryset, search_term, "id"), duplicates

    @admin.display(description=_("pipeline"), ordering="id")
    def short_id(self, obj: Pipeline) -> str:
        return _pipeline_link(obj.pk)

    @admin.display(description=_("result"), ordering="status")
    def result(self, obj: Pipeline) -> str:
        """A success with rejected rows says so: "success" alone hid them."""
        if obj.warning_count:
            warnings = ngettext("%(n)s warning", "%(n)s warnings", obj.warning_count) % {"n": obj.warning_count}
            return f"{labels.status(obj.status)} · {warnings}"
        return labels.status(obj.status)

    @admin.display(description=_("kind"), ordering="kind")
    def kind_label(self, obj: Pipeline) -> str:
        return labels.kind(obj.kind)

    @admin.display(description=_("module"), ordering="module")
    def module_label(self, obj: Pipeline) -> str:
        return labels.module(obj.module)

    @admin.display(description=_("phase"), ordering="phase")
    def phase_label(self, obj: Pipeline) -> str:
        return labels.phase(obj.phase)

    @admin.display(description=_("jobs finished"))
    def jobs(self, obj: Pipeline) -> str:
        """Links to its jobs in the Jobs list."""
        url = reverse("admin:pipelines_job_changelist") + f"?pipeline__id__exact={obj.pk}"
        return format_html('<a href="{}">{}/{}</a>', url, obj.jobs_finished, obj.jobs_total)

    @admin.display(description=_("upload"))
    def upload(self, obj: Pipeline) -> str:
        return _upload_link((obj.params or {}).get("upload_id"))

    @admin.display(description=_("duration"))
    def duration(self, obj: Pipeline) -> str:
        return _duration(obj.started_at, obj.finished_at)

    def get_urls(self) -> list[URLPattern]:
        # Prepended, as UserAdmin does, so "live/" is not taken for an object id.
        wrap = self.admin_site.admin_view
        return [
            path("live/", wrap(self.console_view), name="pipelines_pipeline_live"),
            path("live/counters/", wrap(console_views.console_counters), name="pipelines_pipeline_live_counters"),
            path("live/queues/", wrap(console_views.queues_fragment), name="pipelines_pipeline_live_queues"),
            path("retention/", wrap(self.retention_view), name="pipelines_pipeline_retention"),
            path("retention/<uuid:pipeline_id>/", wrap(retention_views.run_fragment),
                 name="pipelines_pipeline_retention_run"),
            path("live/<uuid:pipeline_id>/", wrap(self.pipeline_page_view), name="pipelines_pipeline_live_detail"),
            path("live/<uuid:pipeline_id>/fragment/", wrap(console_views.pipeline_fragment),
                 name="pipelines_pipeline_live_fragment"),
            *super().get_urls(),
        ]

    def console_view(self, request: HttpRequest) -> HttpResponse:
        return console_views.operations_console(request, admin_site=self.admin_site)

    def retention_view(self, request: HttpRequest) -> HttpResponse:
        return retention_views.retention_page(request, admin_site=self.admin_site)

    def pipeline_page_view(self, request: HttpRequest, pipeline_id: Any) -> HttpResponse:
        return console_views.pipeline_page(request, pipeline_id, admin_site=self.admin_site)


@admin.register(Job)
class JobAdmin(ReadOnlyAdmin):
    list_display = ("id", "pipeline_link", "job_type_label", "det", "queue", "state_label", "result_label", "counts",
                    "attempts", "duration", "upload",
                    "updated_at")
    list_filter = (_code_filter("state", _("state"), labels.STATES),
                   _code_filter("result", _("result"), labels.RESULTS),
                   _code_filter("job_type", _("job type"), labels.JOB_TYPES), "queue")
    search_fields = ("=id", "det", "status_message")
    raw_id_fields = ("pipeline", "depends_on")
    exclude = ("meta", "params", "effect_outcome")
    readonly_fields = ("pipeline_link", "upload", "counts", "row_errors")
    show_full_result_count = False
    list_select_related = ("pipeline",)
    actions = ["cancel_jobs", "retry_jobs", "recover_jobs"]

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return access.can_operate(request.user)

    @admin.action(description=_("Cancel selected jobs…"), permissions=["operate"])
    def cancel_jobs(self, request: HttpRequest, queryset: QuerySet[Job]) -> HttpResponse | None:
        return admin_controls.confirm_then_run(self, request, queryset, admin_controls.JOB_CANCEL)

    @admin.action(description=_("Retry selected jobs…"), permissions=["operate"])
    def retry_jobs(self, request: HttpRequest, queryset: QuerySet[Job]) -> HttpResponse | None:
        return admin_controls.confirm_then_run(self, request, queryset, admin_controls.JOB_RETRY)

    @admin.action(description=_("Recover selected jobs (back to their queue)…"), permissions=["operate"])
    def recover_jobs(self, request: HttpRequest, queryset: QuerySet[Job]) -> HttpResponse | None:
        return admin_controls.confirm_then_run(self, request, queryset, admin_controls.JOB_RECOVER)

    @admin.display(description=_("upload"))
    def upload(self, obj: Job) -> str:
        return _upload_link((obj.params or {}).get("upload_id"))

    @admin.display(description=_("row errors"))
    def row_errors(self, obj: Job) -> str:
        """Every row error of an ingest, as the console and Data management link it."""
        if obj.job_type not in INGEST_JOB_TYPES.values():
            return "—"
        return format_html('<a href="/api/v1/jobs/{}/errors.csv" download>errors.csv</a>', obj.pk)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Job]:
        return access.filter_jobs(super().get_queryset(request), request.user)

    def get_search_results(self, request: HttpRequest, queryset: QuerySet[Any], search_term: str) -> Any:
        if search_term.strip().isdigit():  # a job id: exactly that job, not every message with the digits
            return queryset.filter(pk=int(search_term)), False
        found, duplicates = super().get_search_results(request, queryset, search_term)
        return found | _search_short_id(queryset, search_term, "pipeline__id"), duplicates

    @admin.display(description=_("pipeline"), ordering="pipeline_id")
    def pipeline_link(self, obj: Job) -> str:
        return _pipeline_link(obj.pipeline_id)

    @admin.display(description=_("counts"))
    def counts(self, obj: Job) -> str:
        return ", ".join(f"{META_LABELS.get(k, k.replace('_', ' '))} {v}"
                         for k, v in counts_of(obj.meta or {}).items()) or "—"

    @admin.display(description=_("job type"), ordering="job_type")
    def job_type_label(self, obj: Job) -> str:
        return labels.job_type(obj.job_type)

    @admin.display(description=_("state"), ordering="state")
    def state_label(self, obj: Job) -> str:
        return labels.state(obj.state)

    @admin.display(description=_("result"), ordering="result")
    def result_label(self, obj: Job) -> str:
        return labels.result(obj.result) or "—"

    @admin.display(description=_("duration"))
    def duration(self, obj: Job) -> str:
        return _duration(obj.started_at, obj.finished_at)


@admin.register(OperatorAction)
class OperatorActionAdmin(ReadOnlyAdmin):
    """The operator action log: who did what to which target, when and why."""

    list_display = ("created_at", "actor_name", "action_label", "target_link", "reason", "details")
    list_filter = (_code_filter("action", _("action"), labels.ACTIONS),
                   _code_filter("target_type", _("target type"), labels.TARGET_TYPES), "actor_name")
    search_fields = ("actor_name", "target_id", "reason")
    date_hierarchy = "created_at"
    list_select_related = ("pipeline",)

    @admin.display(description=_("action"), ordering="action")
    def action_label(self, obj: OperatorAction) -> str:
        return labels.action(obj.action)

    @admin.display(description=_("target"), ordering="target_id")
    def target_link(self, obj: OperatorAction) -> str:
        """Pipelines and jobs link to the pipeline's live detail; queues to the console."""
        target_id = obj.target_id[:8] if obj.target_type == "pipeline" else obj.target_id
        label = f"{labels.target_type(obj.target_type)} {target_id}"
        if obj.pipeline_id:
            url = reverse("admin:pipelines_pipeline_live_detail", args=[obj.pipeline_id])
        elif obj.target_type == "queue":
            url = reverse("admin:pipelines_pipeline_live") + "#ops-queues-panel"
        else:
            return label
        return format_html('<a href="{}">{}</a>', url, label)

    def get_queryset(self, request: HttpRequest) -> QuerySet[OperatorAction]:
        return access.filter_pipelines(super().get_queryset(request), request.user, field="pipeline__module")

    def get_search_results(self, request: HttpRequest, queryset: QuerySet[Any], search_term: str) -> Any:
        found, duplicates = super().get_search_results(request, queryset, search_term)
        return found | _search_short_id(queryset, search_term, "pipeline__id"), duplicates

    @admin.display(description=_("details"))
    def details(self, obj: OperatorAction) -> str:
        """The counts or settings the action carried (a purge's cutoff and counts, an upload's file)."""
        return "; ".join(f"{k}: {v}" for k, v in (obj.detail or {}).items()) or "—"


@admin.register(QueueState)
class QueueStateAdmin(ReadOnlyAdmin):
    """Every configured queue: paused or not (by whom, when), its work, pause/resume actions."""

    list_display = ("name", "paused", "queued_jobs", "running_jobs", "changed_at", "changed_by")
    actions = ["pause_queues", "resume_queues"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[QueueState]:
        jobs = Job.objects.filter(queue=OuterRef("name")).order_by().values("queue")
        return super().get_queryset(request).annotate(
            queued=Subquery(jobs.filter(state="queued").annotate(n=Count("id")).values("n")),
            running=Subquery(jobs.filter(state="running").annotate(n=Count("id")).values("n")),
        )

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        admin_controls.ensure_queue_rows()
        return super().changelist_view(request, extra_context)

    def has_operate_permission(self, request: HttpRequest) -> bool:
        # A queue serves every module: operators narrowed to modules may not pause it.
        return access.can_operate(request.user) and access.granted_modules(request.user) is None

    @admin.display(description=_("queued jobs"))
    def queued_jobs(self, obj: QueueState) -> int:
        return getattr(obj, "queued", None) or 0

    @admin.display(description=_("running jobs"))
    def running_jobs(self, obj: QueueState) -> int:
        return getattr(obj, "running", None) or 0

    @admin.action(description=_("Pause selected queues…"), permissions=["operate"])
    def pause_queues(self, request: HttpRequest, queryset: QuerySet[QueueState]) -> HttpResponse | None:
        return admin_controls.confirm_then_run(self, request, queryset, admin_controls.QUEUE_PAUSE)

    @admin.action(description=_("Resume selected queues…"), permissions=["operate"])
    def resume_queues(self, request: HttpRequest, queryset: QuerySet[QueueState]) -> HttpResponse | None:
        return admin_controls.confirm_then_run(self, request, queryset, admin_controls.QUEUE_RESUME)


@admin.register(ModuleGrant)
class ModuleGrantAdmin(admin.ModelAdmin):
    """Grants are configuration: editable by whoever holds the model permissions."""

    list_display = ("module", "user", "group", "created_at")
    list_filter = ("module",)
    raw_id_fields = ("user",)


# --- Years and uploads -------------------------------------------------------------------------


@admin.register(Year)
class YearAdmin(ReadOnlyAdmin):
    """Years are created, configured and opened from the Data management page (services)."""

    list_display = ("year", "open_to_users", "units_synced", "completeness", "manage")
    list_filter = ("is_open",)
    readonly_fields = ("year", "is_open", "configured_at", "config", "completeness", "created_at", "updated_at")

    def get_list_display(self, request: HttpRequest) -> Any:
        return [self._completeness_for(request) if f == "completeness" else f for f in self.list_display]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return [self._completeness_for(request) if f == "completeness" else f for f in self.readonly_fields]

    @admin.display(description=_("completeness"))
    def completeness(self, obj: Year) -> str:
        """Every module's reasons (the lists use ``_completeness_for``, narrowed to the user)."""
        return self._completeness_for(None)(obj)  # type: ignore[no-any-return]

    @staticmethod
    def _completeness_for(request: HttpRequest | None) -> Any:
        """The completeness column as this user may read it: module labels, their modules only
        (a module-granted operator is told about the year and their modules, as on Data management)."""
        grants = access.granted_modules(request.user) if request is not None else None

        @admin.display(description=_("completeness"))
        def completeness(obj: Year) -> str:
            reasons = ingestion_selectors.year_incomplete_reasons(year=obj)
            shown = [(labels.module(k) if k != "year" else str(_("Year")), v) for k, v in reasons.items()
                     if k == "year" or access.in_scope(grants, k)]
            if not shown:
                return str(_("complete"))
            return "; ".join(f"{scope}: {', '.join(str(i) for i in items)}" for scope, items in shown)

        return completeness

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        pages = [
            path("data/", wrap(self.data_management_view), name="data_management"),
            path("data/jobs/<int:job_id>/updates/", wrap(self.job_updates_view), name="data_management_job_updates"),
        ]
        return [*pages, *super().get_urls()]

    def data_management_view(self, request: HttpRequest) -> HttpResponse:
        return views.data_management(request, admin_site=self.admin_site)

    def job_updates_view(self, request: HttpRequest, job_id: int) -> HttpResponse:
        return views.job_updates(request, job_id=job_id)

    @admin.display(description=_("open to users"), boolean=True, ordering="is_open")
    def open_to_users(self, obj: Year) -> bool:
        return obj.is_open

    @admin.display(description=_("units synced"), boolean=True)
    def units_synced(self, obj: Year) -> bool:
        return obj.configured_at is not None

    @admin.display(description="")
    def manage(self, obj: Year) -> str:
        url = reverse("admin:data_management") + f"?year={obj.year}"
        return format_html('<a href="{}">{}</a>', url, _("Data management"))


@admin.register(Upload)
class UploadAdmin(ReadOnlyAdmin):
    """Every stored file: what, by whom, its fingerprint and what its pipeline made of it."""

    list_display = ("id", "year", "module", "target", "original_name", "file_size", "sha256_prefix", "row_count",
                    "result", "uploaded_by", "created_at")
    list_filter = ("year", "module", "target")
    search_fields = ("original_name", "sha256")
    date_hierarchy = "created_at"
    actions = ["run_again"]
    fields = ("year", "module", "target", "original_name", "file_size", "sha256", "line_count", "row_count",
              "delimiter", "uploaded_by", "created_at", "duplicate_of", "result", "status_message", "pipeline_link",
              "download")
    readonly_fields = fields
    change_form_template = "backoffice/upload_change_form.html"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Upload]:
        qs = access.filter_pipelines(super().get_queryset(request), request.user)
        ingest = Job.objects.filter(pipeline_id=OuterRef("pipeline_id"), job_type__in=INGEST_JOB_TYPES.values())
        return qs.select_related("uploaded_by").annotate(
            ingest_result=Subquery(ingest.values("result")[:1]),
            ingest_message=Subquery(ingest.values("status_message")[:1]),
            ingest_key=Subquery(ingest.values("status_key")[:1]),
            ingest_params=Subquery(ingest.values("status_params")[:1]),
        )

    def get_urls(self) -> list[URLPattern]:
        rerun = path("<int:upload_id>/rerun/", self.admin_site.admin_view(self.rerun_view),
                     name="ingestion_upload_rerun")
        return [rerun, *super().get_urls()]

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return access.can_operate(request.user)

    @admin.display(description=_("size"), ordering="size")
    def file_size(self, obj: Upload) -> str:
        return filesizeformat(obj.size)

    @admin.display(description="sha256")
    def sha256_prefix(self, obj: Upload) -> str:
        return format_html('<code title="{}">{}</code>', obj.sha256, obj.sha256[:12])

    @admin.display(description=_("result"))
    def result(self, obj: Upload) -> str:
        value = getattr(obj, "ingest_result", None)
        return format_html('<span class="chip {}">{}</span>', value or "none", value or "—")

    @admin.display(description=_("status message"))
    def status_message(self, obj: Upload) -> str:
        return status_messages.text_of(getattr(obj, "ingest_key", "") or "", getattr(obj, "ingest_params", None),
                                getattr(obj, "ingest_message", "") or "")

    @admin.display(description=_("pipeline"))
    def pipeline_link(self, obj: Upload) -> str:
        if obj.pipeline_id is None:
            return "—"
        url = reverse("admin:pipelines_pipeline_change", args=[obj.pipeline_id])
        return format_html('<a href="{}">{}</a>', url, obj.pipeline_id)

    @admin.display(description=_("stored file"))
    def download(self, obj: Upload) -> str:
        return format_html('<a href="/api/v1/uploads/{}/file/" download>{}</a>', obj.pk, _("Download"))

    @admin.action(description=_("Run again (ingest the stored file again)"), permissions=["operate"])
    def run_again(self, request: HttpRequest, queryset: QuerySet[Upload]) -> None:
        for upload in queryset:
            self._rerun(request, upload)

    def rerun_view(self, request: HttpRequest, upload_id: int) -> HttpResponse:
        upload = self.get_queryset(request).filter(pk=upload_id).first()
        if upload is None:
            raise Http404
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        pipeline = self._rerun(request, upload)
        if pipeline is None:
            return redirect("admin:ingestion_upload_change", upload.pk)
        return redirect(reverse("admin:data_management") + f"?year={upload.year_id}&watch={pipeline.pk}")

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "",
                    extra_context: dict[str, Any] | None = None) -> HttpResponse:
        upload = self.get_queryset(request).filter(pk=object_id).first()
        can_rerun = upload is not None and access.can_operate_module(request.user, upload.module)
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), "can_rerun": can_rerun})

    def _rerun(self, request: HttpRequest, upload: Upload) -> Pipeline | None:
        if not access.can_operate_module(request.user, upload.module):
            self.message_user(request, _("You may not operate module %(module)s.") % {"module": upload.module},
                              messages.ERROR)
            return None
        try:
            pipeline = ingestion_services.upload_rerun(upload_id=upload.pk, actor=request.user)
        except ConflictError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return None
        self.message_user(request, _("Upload %(id)s runs again (pipeline %(pipeline)s).")
                          % {"id": upload.pk, "pipeline": str(pipeline.pk)[:8]})
        return pipeline


# --- Scheduled sources (issue 14) -------------------------------------------------------------

# django-celery-beat's own pages would edit a source's periodic task behind its back (the
# services keep the two in step and audit the change) or the engine's reaper and purge
# (settings): schedules are changed on the Sources pages only.
for _beat_model in (PeriodicTask, IntervalSchedule, CrontabSchedule, SolarSchedule, ClockedSchedule):
    if admin.site.is_registered(_beat_model):
        admin.site.unregister(_beat_model)


class SourceForm(forms.ModelForm):
    """The source's fields; every rule is the service's (``source_validate``), shown per field."""

    class Meta:
        model = Source
        fields = source_services.EDITABLE

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        values = {**{k: getattr(self.instance, k) for k in source_services.EDITABLE}, **data}
        values["cron"] = " ".join((values.get("cron") or "").split())
        try:
            source_services.source_validate(values)
        except source_services.SourceInvalid as exc:
            for key, problems in exc.errors.items():
                self.add_error(key if key in self.fields else None, problems)
        return data


@admin.register(Source)
class SourceAdmin(admin.ModelAdmin):
    """Sources are configured here (through the services: schedule and audit follow); the cards live on
    the Sources page."""

    form = SourceForm
    list_display = ("name", "kind", "module", "schedule", "enabled", "cards")
    list_filter = ("kind", "module", "enabled")
    search_fields = ("name", "location")
    fieldsets = (
        (None, {"fields": ("name", "kind", "module", "location")}),
        (_("Authentication"), {"fields": ("auth_secret", "auth_header"),
                               "description": _("The header's value is read from the setting "
                                                "SLUICE_SOURCE_SECRET_<name>; it is never stored here.")}),
        (_("Target year and schedule"), {"fields": ("year_rule", "year", "cron", "interval_seconds", "enabled"),
                                         "description": _("Give a cron expression (UTC) or an interval in "
                                                          "seconds, not both.")}),
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Source]:
        return access.narrow(super().get_queryset(request), access.granted_modules(request.user))

    def get_urls(self) -> list[URLPattern]:
        wrap = self.admin_site.admin_view
        return [
            path("cards/", wrap(self.cards_view), name="ingestion_source_cards"),
            path("cards/<int:source_id>/<str:action>/", wrap(self.action_view), name="ingestion_source_action"),
            *super().get_urls(),
        ]

    def cards_view(self, request: HttpRequest) -> HttpResponse:
        return sources_page.sources_page(request, admin_site=self.admin_site)

    def action_view(self, request: HttpRequest, source_id: int, action: str) -> HttpResponse:
        if action not in ("run", "pause", "resume"):
            raise Http404
        return sources_page.source_action(request, source_id, action)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return access.can_view(request.user)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return access.can_view(request.user)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return access.can_operate(request.user)

    def has_change_permission(self, request: HttpRequest, obj: Source | None = None) -> bool:
        return access.can_operate_module(request.user, obj.module or None) if obj else access.can_operate(request.user)

    def has_delete_permission(self, request: HttpRequest, obj: Source | None = None) -> bool:
        return self.has_change_permission(request, obj)

    def save_model(self, request: HttpRequest, obj: Source, form: Any, change: bool) -> None:
        values = {k: form.cleaned_data[k] for k in source_services.EDITABLE if k in form.cleaned_data}
        if not access.can_operate_module(request.user, values.get("module") or None):
            raise PermissionDenied
        if change:
            saved = source_services.source_update(source_id=obj.pk, actor=request.user, **values)
        else:
            saved = source_services.source_create(actor=request.user, **values)
        obj.pk = saved.pk

    def delete_model(self, request: HttpRequest, obj: Source) -> None:
        source_services.source_delete(source_id=obj.pk, actor=request.user)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Source]) -> None:
        for source in queryset:
            source_services.source_delete(source_id=source.pk, actor=request.user)

    @admin.display(description=_("schedule"))
    def schedule(self, obj: Source) -> str:
        return source_schedule.describe(obj)

    @admin.display(description="")
    def cards(self, obj: Source) -> str:
        url = reverse("admin:ingestion_source_cards") + f"#source-{obj.pk}"
        return format_html('<a href="{}">{}</a>', url, _("Card"))
