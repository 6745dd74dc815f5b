"""Back-office pages served inside the Django admin (see ``backoffice.admin``)."""

from __future__ import annotations

from typing import Any

from django.contrib.admin import AdminSite
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from backoffice import access, live


def live_console(request: HttpRequest, *, admin_site: AdminSite) -> HttpResponse:
    """Pipelines and their jobs, live over ``ws/pipelines/``.

    The table is rendered on the server from the same snapshot the socket sends, so
    the page is readable with JavaScript off; ``live.js`` then keeps it current.
    """
    if not access.can_view(request.user):
        raise PermissionDenied
    snap = live.console_snapshot(modules=access.granted_modules(request.user))
    jobs_by_pipeline: dict[str, list[dict[str, Any]]] = {}
    for job in snap["jobs"]:
        jobs_by_pipeline.setdefault(job["pipeline_id"], []).append(job)
    rows = [{"pipeline": p, "jobs": jobs_by_pipeline.get(p["id"], [])} for p in snap["pipelines"]]
    context = {
        **admin_site.each_context(request),
        "title": "Live console",
        "rows": rows,
        "seq": snap["seq"],
        "feed_path": "/ws/pipelines/",
    }
    return TemplateResponse(request, "backoffice/live_console.html", context)
