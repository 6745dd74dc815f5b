"""The Sources page: one card per scheduled source (issue 14), live like the console.

Rendered on the server (readable, and its buttons work, with JavaScript off: they are
forms posting to the views below). ``sources.js`` then listens to the console feed
(``ws/pipelines/``): an event of a source run updates its card at once, and a run that
starts or ends re-reads the cards from ``/api/v1/sources/`` (last run, next run, rate).
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.admin import AdminSite
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.utils.translation import gettext as _

from backoffice import access
from ingestion.models import Source, SourceKind
from ingestion.sources import selectors, services
from pipelines.services import ConflictError


def _visible(request: HttpRequest) -> Any:
    return access.narrow(selectors.source_queryset(), access.granted_modules(request.user))


def _js_strings() -> dict[str, Any]:
    return {
        "status": {
            "not_started": _("waiting"), "running": _("running"), "success": _("success"),
            "partial": _("partial"), "failed": _("failed"), "cancelled": _("cancelled"),
            "superseded": _("superseded"), "unchanged": _("unchanged, skipped"), "never": _("never run"),
            "paused": _("paused"),
        },
        "never": _("never"),
        "paused": _("paused"),
        "rate": _("%(ok)s of %(runs)s recent runs succeeded"),
        "no_rate": _("no finished run yet"),
        "live": _("live"),
        "reconnecting": _("reconnecting…"),
        "connecting": _("connecting…"),
        "denied": _("not permitted"),
    }


def sources_page(request: HttpRequest, *, admin_site: AdminSite) -> HttpResponse:
    if not access.can_view(request.user):
        raise PermissionDenied
    cards = [selectors.source_card(s) for s in _visible(request)]
    for card in cards:
        card["kind_label"] = SourceKind(card["kind"]).label
        card["can_operate"] = access.can_operate_module(request.user, card["module"] or None)
    context = {
        **admin_site.each_context(request),
        "title": _("Sources"),
        "cards": cards,
        "js_cards": [{k: v for k, v in c.items() if k in ("id", "enabled", "last_run", "next_run", "success_rate")}
                     for c in cards],
        "js_strings": _js_strings(),
        "can_add": access.can_operate(request.user),
        "feed_path": "/ws/pipelines/",
    }
    return TemplateResponse(request, "backoffice/sources.html", context)


def source_action(request: HttpRequest, source_id: int, action: str) -> HttpResponse:
    """Run now / pause / resume from a card (a form POST; the API does the same for scripts)."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    source: Source | None = _visible(request).filter(pk=source_id).first()
    if source is None:
        raise Http404
    if not access.can_operate_module(request.user, source.module or None):
        raise PermissionDenied
    try:
        if action == "run":
            pipeline = services.source_run_start(source_id=source.pk, actor=request.user, trigger="manual")
            messages.success(request, _("%(name)s runs now (pipeline %(pipeline)s).")
                             % {"name": source.name, "pipeline": str(pipeline.pk)[:8]})
        else:
            services.source_set_enabled(source_id=source.pk, enabled=action == "resume", actor=request.user)
            text = _("%(name)s is paused.") if action == "pause" else _("%(name)s is resumed.")
            messages.success(request, text % {"name": source.name})
    except ConflictError as exc:
        messages.error(request, exc.message)
    return redirect("admin:ingestion_source_cards")
