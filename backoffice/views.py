"""Back-office pages served inside the Django admin (see ``backoffice.admin``)."""

from __future__ import annotations

from typing import Any

from django.contrib.admin import AdminSite
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.translation import gettext as _

from backoffice import access
from backoffice import data_management as dm
from ingestion.modules import MODULES


def _int_or_none(raw: str | None) -> int | None:
    try:
        return int(raw) if raw else None
    except ValueError:
        return None


def _js_strings() -> dict[str, Any]:
    """What the page's script writes itself, translated here (no JavaScript catalogue)."""
    return {
        "live": _("live"),
        "reconnecting": _("reconnecting…"),
        "denied": _("not permitted"),
        "uploading": _("Uploading"),
        "queued": _("queued"),
        "running": _("running"),
        "missingColumns": _("Refused before upload: missing required column(s): %(columns)s"),
        "unknownColumns": _("Refused before upload: unknown column(s): %(columns)s"),
        "emptyFile": _("Refused before upload: the file has no header line."),
        "notCsv": _("Refused before upload: choose a .csv file."),
        "confirmOpen": _("Open year %(year)s for users? They will see its data."),
        "confirmClose": _("Close year %(year)s? Users will no longer see it."),
        "failed": _("Refused:"),
        "network": _("The server could not be reached."),
        "statuses": {
            "not_started": _("waiting"), "running": _("running"), "success": _("success"),
            "partial": _("partial"), "failed": _("failed"), "cancelled": _("cancelled"),
            "superseded": _("superseded"),
        },
    }


def data_management(request: HttpRequest, *, admin_site: AdminSite) -> HttpResponse:
    """Years, modules and the job history of one year, live over ``ws/years/<year>/``.

    Rendered whole on the server (readable with JavaScript off); the page's script
    applies live progress from the feed and, when a pipeline or job finishes, fetches
    this same view again and swaps the parts that changed.
    """
    if not access.can_view(request.user):
        raise PermissionDenied
    page = dm.page(user=request.user, year=_int_or_none(request.GET.get("year")))
    filters: dict[str, Any] = {
        "module": request.GET.get("module", "") if request.GET.get("module", "") in MODULES else "",
        "result": request.GET.get("result", "") if request.GET.get("result", "") in dm.RESULT_FILTERS else "",
        "problems": request.GET.get("problems") == "1",
    }
    history = dm.history(user=request.user, year=page.year.year, **filters) if page.year else []
    context = {
        **admin_site.each_context(request),
        "title": _("Data management"),
        # The modules table needs the width more than the model list does.
        "is_nav_sidebar_enabled": False,
        "page": page,
        "history": history,
        "filters": filters,
        "result_filters": dm.RESULT_FILTERS,
        "module_choices": [(b.module, b.label) for b in page.modules],
        "feed_path": f"/ws/years/{page.year.year}/" if page.year else "",
        "next_year": (page.years[0].year + 1) if page.years else timezone.now().year,
        "js_strings": _js_strings(),
    }
    return TemplateResponse(request, "backoffice/data_management.html", context)


def job_updates(request: HttpRequest, *, job_id: int) -> HttpResponse:
    """Every update of one job, in order (the history entry's expand)."""
    if not access.can_view(request.user):
        raise PermissionDenied
    updates = dm.job_events(user=request.user, job_id=job_id)
    if updates is None:
        raise Http404
    return TemplateResponse(request, "backoffice/job_updates.html", {"updates": updates, "job_id": job_id})
