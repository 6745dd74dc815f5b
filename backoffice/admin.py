"""Admin registrations (read-only views of the engine's tables) and the live console page.

Engine rows change only through ``pipelines.services`` (compare-and-set transitions),
so the admin never edits pipelines, jobs, events or actions: it shows them, filtered
by the viewer's module grants.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from backoffice import access, console_views, views
from backoffice.models import ModuleGrant
from ingestion.models import Upload, Year
from pipelines.api.filters import SHORT_ID
from pipelines.events import counts_of
from pipelines.models import Job, OperatorAction, Pipeline, QueueState

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


def _search_short_id(queryset: QuerySet[Any], term: str, field: str) -> QuerySet[Any]:
    """The short id the console shows (a UUID's first characters) finds its pipeline."""
    term = term.strip()
    return queryset.filter(**{f"{field}__startswith": term.lower()}) if SHORT_ID.fullmatch(term) else queryset.none()


@admin.register(Pipeline)
class PipelineAdmin(ReadOnlyAdmin):
    # ``phase`` carries why a finished pipeline is not a success ("superseded by upload #12").
    list_display = ("short_id", "kind", "year", "module", "result", "phase", "progress_percent", "jobs",
                    "error_count", "duration", "created_at")
    list_filter = ("status", "kind", "year", "module")
    search_fields = ("kind", "module", "phase", "last_error")
    date_hierarchy = "created_at"
    exclude = ("params",)
    show_full_result_count = False  # no COUNT(*) over the whole table on every page

    def get_queryset(self, request: HttpRequest) -> QuerySet[Pipeline]:
        return access.filter_pipelines(super().get_queryset(request), request.user)

    def get_search_results(self, request: HttpRequest, queryset: QuerySet[Any], search_term: str) -> Any:
        found, duplicates = super().get_search_results(request, queryset, search_term)
        return found | _search_short_id(queryset, search_term, "id"), duplicates

    @admin.display(description=_("pipeline"), ordering="id")
    def short_id(self, obj: Pipeline) -> str:
        url = reverse("admin:pipelines_pipeline_live_detail", args=[obj.pk])
        return format_html('<a href="{}"><code>{}</code></a>', url, str(obj.pk)[:8])

    @admin.display(description=_("result"), ordering="status")
    def result(self, obj: Pipeline) -> str:
        """A success with rejected rows says so: "success" alone hid them."""
        if obj.warning_count:
            return f"{obj.status} · {obj.warning_count} warning(s)"
        return str(obj.status)

    @admin.display(description=_("jobs finished"))
    def jobs(self, obj: Pipeline) -> str:
        return f"{obj.jobs_finished}/{obj.jobs_total}"

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
            path("live/<uuid:pipeline_id>/", wrap(self.pipeline_page_view), name="pipelines_pipeline_live_detail"),
            path("live/<uuid:pipeline_id>/fragment/", wrap(console_views.pipeline_fragment),
                 name="pipelines_pipeline_live_fragment"),
            *super().get_urls(),
        ]

    def console_view(self, request: HttpRequest) -> HttpResponse:
        return console_views.operations_console(request, admin_site=self.admin_site)

    def pipeline_page_view(self, request: HttpRequest, pipeline_id: Any) -> HttpResponse:
        return console_views.pipeline_page(request, pipeline_id, admin_site=self.admin_site)


@admin.register(Job)
class JobAdmin(ReadOnlyAdmin):
    list_display = ("id", "pipeline_link", "job_type", "det", "queue", "state", "result", "counts", "attempts",
                    "duration", "updated_at")
    list_filter = ("state", "result", "job_type", "queue")
    search_fields = ("=id", "det", "status_message")
    raw_id_fields = ("pipeline", "depends_on")
    exclude = ("meta", "params", "effect_outcome")
    show_full_result_count = False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Job]:
        return access.filter_jobs(super().get_queryset(request), request.user)

    def get_search_results(self, request: HttpRequest, queryset: QuerySet[Any], search_term: str) -> Any:
        if search_term.strip().isdigit():  # a job id: exactly that job, not every message with the digits
            return queryset.filter(pk=int(search_term)), False
        found, duplicates = super().get_search_results(request, queryset, search_term)
        return found | _search_short_id(queryset, search_term, "pipeline_id"), duplicates

    @admin.display(description=_("pipeline"), ordering="pipeline_id")
    def pipeline_link(self, obj: Job) -> str:
        url = reverse("admin:pipelines_pipeline_live_detail", args=[obj.pipeline_id])
        return format_html('<a href="{}"><code>{}</code></a>', url, str(obj.pipeline_id)[:8])

    @admin.display(description=_("counts"))
    def counts(self, obj: Job) -> str:
        return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts_of(obj.meta or {}).items()) or "—"

    @admin.display(description=_("duration"))
    def duration(self, obj: Job) -> str:
        return _duration(obj.started_at, obj.finished_at)


@admin.register(OperatorAction)
class OperatorActionAdmin(ReadOnlyAdmin):
    """The operator action log: who did what to which target, when and why."""

    list_display = ("created_at", "actor_name", "action", "target_link", "reason")
    list_filter = ("action", "target_type", "actor_name")
    search_fields = ("actor_name", "target_id", "reason")
    date_hierarchy = "created_at"
    list_select_related = ("pipeline",)

    @admin.display(description=_("target"), ordering="target_id")
    def target_link(self, obj: OperatorAction) -> str:
        """Pipelines and jobs link to the pipeline's live detail; queues to the console."""
        label = f"{obj.target_type} {obj.target_id[:8] if obj.target_type == 'pipeline' else obj.target_id}"
        if obj.pipeline_id:
            url = reverse("admin:pipelines_pipeline_live_detail", args=[obj.pipeline_id])
        elif obj.target_type == "queue":
            url = reverse("admin:pipelines_pipeline_live") + "#ops-queues-panel"
        else:
            return label
        return format_html('<a href="{}">{}</a>', url, label)

    def get_queryset(self, request: HttpRequest) -> QuerySet[OperatorAction]:
        return access.filter_pipelines(super().get_queryset(request), request.user, field="pipeline__module")


@admin.register(QueueState)
class QueueStateAdmin(ReadOnlyAdmin):
    list_display = ("name", "paused", "changed_at", "changed_by")


@admin.register(ModuleGrant)
class ModuleGrantAdmin(admin.ModelAdmin):
    """Grants are configuration: editable by whoever holds the model permissions."""

    list_display = ("module", "user", "group", "created_at")
    list_filter = ("module",)
    raw_id_fields = ("user",)


@admin.register(Year)
class YearAdmin(ReadOnlyAdmin):
    """Years are created, configured and opened from the Data management page (services)."""

    list_display = ("year", "is_open", "configured_at", "updated_at")
    list_filter = ("is_open",)

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


@admin.register(Upload)
class UploadAdmin(ReadOnlyAdmin):
    list_display = ("id", "year", "module", "target", "original_name", "size", "created_at")
    list_filter = ("year", "module", "target")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Upload]:
        return access.filter_pipelines(super().get_queryset(request), request.user)
