"""The Operations console page and its counters fragment (served inside the admin, see ``backoffice.admin``)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.admin import AdminSite
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.translation import get_language
from django.utils.translation import gettext as _

from backoffice import access, console, labels, live, pipeline_detail


def _js_strings() -> dict[str, Any]:
    """What console.js writes itself, translated here (no JavaScript catalogue)."""
    return {
        "labels": labels.js_labels(),
        "live": _("live · event %(seq)s"),
        "reconnecting": _("reconnecting (attempt %(attempt)s)…"),
        "replaying": _("catching up…"),
        "connecting": _("connecting…"),
        "denied": _("not permitted"),
        "closed": _("closed"),
        "finished": _("finished"),
        "errors": _("error(s)"),
        "newer": _("Newer pipelines arrived: go to the newest page to see them."),
        "details": _("Show or hide the graph, job details, errors and timeline"),
        "actions": {"cancel": _("Cancel"), "retry": _("Retry"), "recover": _("Recover")},
        "titles": {
            "pipeline.cancel": _("Cancel pipeline %(name)s?"),
            "pipeline.retry": _("Retry pipeline %(name)s?"),
            "job.cancel": _("Cancel job %(name)s?"),
            "job.retry": _("Retry job %(name)s?"),
            "job.recover": _("Recover job %(name)s?"),
            "queue.pause": _("Pause queue %(name)s?"),
            "queue.resume": _("Resume queue %(name)s?"),
        },
        "effects": {
            "pipeline.cancel": _("Every job not finished ends cancelled; jobs that already committed their data "
                                 "keep it."),
            "pipeline.retry": _("Failed, cancelled and skipped jobs run again, with everything downstream of them."),
            "job.cancel": _("The job ends cancelled (its uncommitted work rolls back); jobs that need it are skipped."),
            "job.retry": _("The job runs again (from its failed upstream job, if any), then everything downstream."),
            "job.recover": _("The running job goes back to its queue and runs again; its old attempt can no longer "
                             "write a result."),
            "queue.pause": _("Jobs of this queue wait (running ones finish); the pause holds across worker restarts."),
            "queue.resume": _("Waiting jobs of this queue are sent to the workers again."),
        },
        "done": {
            "cancel": _("Cancel requested for %(name)s: the table shows the result."),
            "retry": _("Retry requested for %(name)s: the table shows the result."),
            "recover": _("%(name)s is back in its queue: the table shows the result."),
            "pause": _("Queue %(name)s is paused."),
            "resume": _("Queue %(name)s is running again."),
        },
        "refused": {
            "409": _("Not possible in its current state:"),
            "403": _("Not permitted:"),
            "404": _("It no longer exists, or you may not see it."),
            "400": _("The request was refused:"),
            "other": _("The server could not do it:"),
            "network": _("The server could not be reached; nothing was changed."),
        },
        "hints": {
            "heartbeat_fresh": _("Its worker is alive and still working on it. "
                                 "Tick Force only if you know it is stuck."),
            "still_running": _("Wait for the running jobs to finish, or cancel them first."),
            "effect_committed": _("Its data is already in; retry the pipeline later if needed."),
            "already_finished": _("It finished meanwhile: the table shows how."),
            "nothing_to_cancel": _("Everything has already finished."),
            "nothing_to_retry": _("Nothing failed: there is nothing to run again."),
            "not_running": _("Only a running job can be recovered."),
            "not_retryable": _("Only failed, cancelled or skipped jobs can be retried."),
            "no_change": _("Someone else did it already: the panel now shows the current state."),
        },
    }


def control_effects() -> dict[str, str]:
    """What each control does, in words: the console's dialogs and the admin actions' confirmation."""
    effects: dict[str, str] = _js_strings()["effects"]
    return effects


def refusal_hint(code: str) -> str:
    """What to do about a 409, by its code: the console and the admin actions say the same."""
    hints: dict[str, str] = _js_strings()["hints"]
    return hints.get(code, "")


def operations_console(request: HttpRequest, *, admin_site: AdminSite) -> HttpResponse:
    """The Operations console: alert strip, stat cards, pipelines grouped with their jobs.

    Rendered on the server (readable with JavaScript off); ``console.js`` then keeps it
    current over ``ws/pipelines/``, starting from the event seq the page was read at.
    """
    if not access.can_view(request.user):
        raise PermissionDenied
    form = console.ConsoleFilterForm(request.GET or None)
    filters = form.filter_data() if form.is_bound and form.is_valid() else {}
    page = console.pipeline_page(user=request.user, filters=filters, cursor=request.GET.get("cursor", ""))
    query = request.GET.copy()
    query.pop("cursor", None)
    context = {
        **admin_site.each_context(request),
        "title": _("Operations console"),
        # The grouped table needs the width more than the model list does.
        "is_nav_sidebar_enabled": False,
        "form": form,
        "page": page,
        "rows": page.rows,
        "seq": page.seq,
        "counters": console.counters(user=request.user),
        "active_alert": filters.get("alert", ""),
        "filter_query": query.urlencode(),
        "can_operate": access.can_operate(request.user),
        "feed_path": "/ws/pipelines/",
        # What console.js seeds its store with: it then asks the feed for what happened
        # after ``seq`` only, so nothing between the render and the socket is missed.
        # Messages and phases in the page's language, as the feed then sends them.
        "initial": live.localized({
            "seq": page.seq,
            "filters": filters,
            "pipelines": [row["pipeline"] for row in page.rows],
            "jobs": [job for row in page.rows for job in row["jobs"]],
        }, get_language()),
        "js_strings": _js_strings(),
    }
    return TemplateResponse(request, "backoffice/console.html", context)


def console_counters(request: HttpRequest) -> HttpResponse:
    """The alert strip and stat cards alone: re-read by the page when live events arrive."""
    if not access.can_view(request.user):
        raise PermissionDenied
    context = {"counters": console.counters(user=request.user), "active_alert": request.GET.get("alert", ""),
               "filter_query": ""}
    return TemplateResponse(request, "backoffice/console_counters.html", context)


def _detail_or_404(request: HttpRequest, pipeline_id: Any) -> dict[str, Any]:
    if not access.can_view(request.user):
        raise PermissionDenied
    detail = pipeline_detail.pipeline_detail(user=request.user, pipeline_id=pipeline_id)
    if detail is None:  # absent, or another module's: the same answer
        raise Http404
    return detail


def pipeline_page(request: HttpRequest, pipeline_id: Any, *, admin_site: AdminSite) -> HttpResponse:
    """One pipeline on its own page: DAG, jobs with decoded meta and errors, timeline; live."""
    detail = _detail_or_404(request, pipeline_id)
    context = {
        **admin_site.each_context(request),
        "title": _("Pipeline %(id)s") % {"id": str(pipeline_id)[:8]},
        "is_nav_sidebar_enabled": False,
        "detail": detail,
        "status_words": {"live": _("live"), "connecting": _("connecting…"), "replaying": _("catching up…"),
                         "reconnecting": _("reconnecting…"), "denied": _("not permitted"), "closed": _("closed")},
    }
    return TemplateResponse(request, "backoffice/console_detail.html", context)


def pipeline_fragment(request: HttpRequest, pipeline_id: Any) -> HttpResponse:
    """The detail alone: the console's inline expand, re-read as live events arrive."""
    return TemplateResponse(request, "backoffice/console_detail_body.html",
                            {"detail": _detail_or_404(request, pipeline_id)})


def queues_fragment(request: HttpRequest) -> HttpResponse:
    """Queues and workers: read when the console opens and after state changes (a Celery
    inspect waits up to ``SLUICE_INSPECT_TIMEOUT``, so never on the page's first render)."""
    if not access.can_view(request.user):
        raise PermissionDenied
    data = console.queues_and_workers(inspect_timeout=settings.SLUICE_INSPECT_TIMEOUT)
    # Pausing a queue touches every module: operators narrowed to modules may not.
    can_pause = access.can_operate(request.user) and access.granted_modules(request.user) is None
    return TemplateResponse(request, "backoffice/console_queues.html", {"data": data, "can_pause": can_pause})
