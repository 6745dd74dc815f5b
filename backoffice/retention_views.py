"""The Retention page (issue 11 item 6): the dry run, and the purge started from it.

Thin over ``pipelines.retention``: the page reads the dry run; the button starts the
purge as a pipeline (one ``retention_purge`` job on a worker), so its percentage is
live here, in the console and in the API, and a worker crash does not lose it (the job
is retried; a purge is idempotent). Who may do what:

- every module's viewers see the dry run (it counts every module's history);
- a user narrowed to some modules sees neither counts nor button (the counts would
  tell about modules they may not see);
- only an operator of every module sees the button and may POST (a purge deletes
  every module's history).
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.admin import AdminSite
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from backoffice import access
from pipelines import retention
from pipelines.models import Pipeline


class RetentionForm(forms.Form):
    days = forms.IntegerField(label=gettext_lazy("Keep the last (days)"), min_value=1, max_value=36500,
                              required=False)
    reason = forms.CharField(label=gettext_lazy("Reason (optional)"), required=False, max_length=500)
    confirm = forms.BooleanField(label=gettext_lazy("I have read the counts above: delete it"), required=False)


def _sees_everything(user: Any) -> bool:
    return access.can_view(user) and access.granted_modules(user) is None


def can_purge(user: Any) -> bool:
    return access.can_operate(user) and access.granted_modules(user) is None


def retention_page(request: HttpRequest, *, admin_site: AdminSite) -> HttpResponse:
    if not access.can_view(request.user):
        raise PermissionDenied
    if request.method == "POST":
        return _purge(request)
    form = RetentionForm(request.GET or None)
    days = form.cleaned_data.get("days") if form.is_bound and form.is_valid() else None
    days = days or settings.SLUICE_RETENTION_DAYS
    everything = _sees_everything(request.user)
    runs = list(Pipeline.objects.filter(kind=retention.PURGE_PIPELINE_KIND).order_by("-created_at")[:5])
    watch = next((p for p in runs if str(p.pk) == request.GET.get("watch")), None) or next(
        (p for p in runs if not p.is_done), None)
    context = {
        **admin_site.each_context(request),
        "title": _("Retention"),
        "is_nav_sidebar_enabled": False,
        "form": RetentionForm(initial={"days": days}),
        "days": days,
        "default_days": settings.SLUICE_RETENTION_DAYS,
        "batch_size": settings.SLUICE_RETENTION_BATCH_SIZE,
        "sees_everything": everything,
        "plan": retention.plan(cutoff=retention.cutoff_for(days)) if everything else None,
        "can_purge": can_purge(request.user),
        "runs": runs,
        "watch": watch,
    }
    return TemplateResponse(request, "backoffice/retention.html", context)


def _purge(request: HttpRequest) -> HttpResponse:
    if not can_purge(request.user):
        raise PermissionDenied
    form = RetentionForm(request.POST)
    url = reverse("admin:pipelines_pipeline_retention")
    if not form.is_valid() or not form.cleaned_data["confirm"]:
        messages.error(request, _("Nothing was purged: tick the confirmation after reading the counts."))
        days = form.cleaned_data.get("days") if form.is_valid() else None
        return redirect(url + (f"?days={days}" if days else ""))
    days = form.cleaned_data["days"] or settings.SLUICE_RETENTION_DAYS
    pipeline, dry = retention.purge_start(actor=request.user, days=days, reason=form.cleaned_data["reason"])
    messages.success(request, _("Purge started (pipeline %(id)s): %(pipelines)s pipeline(s) and %(uploads)s upload(s) "
                                "to delete; its progress is below.")
                     % {"id": str(pipeline.pk)[:8], "pipelines": dry.count("pipelines"),
                        "uploads": dry.count("uploads")})
    return redirect(url + f"?days={days}&watch={pipeline.pk}")


def run_fragment(request: HttpRequest, pipeline_id: Any) -> HttpResponse:
    """One purge's progress alone: re-read by the page when its live events arrive."""
    if not _sees_everything(request.user):
        raise PermissionDenied
    run = Pipeline.objects.filter(pk=pipeline_id, kind=retention.PURGE_PIPELINE_KIND).first()
    if run is None:
        raise Http404
    return TemplateResponse(request, "backoffice/retention_run.html", {"run": run, "job": run.jobs.first()})
