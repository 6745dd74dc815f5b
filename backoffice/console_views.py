"""The Operations console page and its counters fragment (served inside the admin, see ``backoffice.admin``)."""

from __future__ import annotations

from typing import Any

from django.contrib.admin import AdminSite
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.translation import gettext as _

from backoffice import access, console


def _js_strings() -> dict[str, Any]:
    """What console.js writes itself, translated here (no JavaScript catalogue)."""
    return {
        "live": _("live · event %(seq)s"),
        "reconnecting": _("reconnecting (attempt %(attempt)s)…"),
        "replaying": _("catching up…"),
        "connecting": _("connecting…"),
        "denied": _("not permitted"),
        "closed": _("closed"),
        "finished": _("finished"),
        "errors": _("error(s)"),
        "newer": _("Newer pipelines arrived: go to the newest page to see them."),
    }


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
        "initial": {
            "seq": page.seq,
            "filters": filters,
            "pipelines": [row["pipeline"] for row in page.rows],
            "jobs": [job for row in page.rows for job in row["jobs"]],
        },
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
