"""Admin actions that call the engine's controls (issue 11 item 7).

Each action first shows a confirmation page (what will happen, the rows it applies to,
an optional reason; *Force* for recover), then calls the service once per row. A
refusal (the service's 409) becomes an admin message in words, with the same hint the
console gives; rows the user may not operate (another module's) are refused by name.
The admin registers these only with ``permissions=["operate"]``: a viewer gets no action.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.contrib import messages
from django.contrib.admin import ModelAdmin, helpers
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from backoffice import access, console_views
from pipelines import registry, services
from pipelines.models import Job, Pipeline, QueueState
from pipelines.services import ConflictError

REASON_MAX = 500


@dataclass(frozen=True)
class Control:
    name: str
    title: Any  # "Cancel %(count)s pipeline(s)?"
    effect: Any
    run: Callable[..., Any]  # (obj, actor, reason, force) -> Any
    label: Callable[[Any], str]
    module: Callable[[Any], str | None]  # the row's module, for the user's scope
    force: bool = False
    every_module: bool = False  # queues serve every module: only operators of every module


def _pipeline_label(p: Pipeline) -> str:
    scope = " ".join(str(x) for x in (p.year, p.module) if x)
    return f"{p.kind} {scope} {str(p.pk)[:8]}".replace("  ", " ")


def _job_label(j: Job) -> str:
    return f"#{j.pk} {j.job_type}{' ' + j.det if j.det else ''}"


def _effects() -> dict[str, Any]:
    return console_views.control_effects()


PIPELINE_CANCEL = Control(
    "cancel_pipelines", gettext_lazy("Cancel these pipelines?"), "pipeline.cancel",
    lambda p, actor, reason, force: services.pipeline_cancel(pipeline_id=p.pk, actor=actor, reason=reason),
    _pipeline_label, lambda p: p.module,
)
PIPELINE_RETRY = Control(
    "retry_pipelines", gettext_lazy("Retry these pipelines?"), "pipeline.retry",
    lambda p, actor, reason, force: services.pipeline_retry(pipeline_id=p.pk, actor=actor, reason=reason),
    _pipeline_label, lambda p: p.module,
)
JOB_CANCEL = Control(
    "cancel_jobs", gettext_lazy("Cancel these jobs?"), "job.cancel",
    lambda j, actor, reason, force: services.job_cancel(job_id=j.pk, actor=actor, reason=reason),
    _job_label, lambda j: j.pipeline.module,
)
JOB_RETRY = Control(
    "retry_jobs", gettext_lazy("Retry these jobs?"), "job.retry",
    lambda j, actor, reason, force: services.job_retry(job_id=j.pk, actor=actor, reason=reason),
    _job_label, lambda j: j.pipeline.module,
)
JOB_RECOVER = Control(
    "recover_jobs", gettext_lazy("Recover these jobs (back to their queue)?"), "job.recover",
    lambda j, actor, reason, force: services.job_recover(job_id=j.pk, actor=actor, reason=reason, force=force),
    _job_label, lambda j: j.pipeline.module, force=True,
)
QUEUE_PAUSE = Control(
    "pause_queues", gettext_lazy("Pause these queues?"), "queue.pause",
    lambda q, actor, reason, force: services.queue_pause(queue=q.name, actor=actor, reason=reason),
    lambda q: q.name, lambda q: None, every_module=True,
)
QUEUE_RESUME = Control(
    "resume_queues", gettext_lazy("Resume these queues?"), "queue.resume",
    lambda q, actor, reason, force: services.queue_resume(queue=q.name, actor=actor, reason=reason),
    lambda q: q.name, lambda q: None, every_module=True,
)


def _may(user: Any, control: Control, obj: Any) -> bool:
    if control.every_module:
        return access.can_operate(user) and access.granted_modules(user) is None
    return access.can_operate_module(user, control.module(obj))


def confirm_then_run(modeladmin: ModelAdmin[Any], request: HttpRequest, queryset: QuerySet[Any],
                     control: Control) -> TemplateResponse | None:
    """The confirmation page, or (once confirmed) the service per row and a message each."""
    rows = list(queryset)
    if request.POST.get("confirmed") != "yes":
        context = {
            **modeladmin.admin_site.each_context(request),
            "title": control.title,
            "effect": _effects().get(control.effect, ""),
            "rows": [(obj.pk, control.label(obj), _may(request.user, control, obj)) for obj in rows],
            "action": control.name,
            "force": control.force,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "opts": modeladmin.model._meta,
            "reason_max": REASON_MAX,
        }
        return TemplateResponse(request, "backoffice/admin_confirm_control.html", context)
    reason = request.POST.get("reason", "").strip()[:REASON_MAX]
    force = request.POST.get("force") == "on" and control.force
    done = []
    for obj in rows:
        label = control.label(obj)
        if not _may(request.user, control, obj):
            modeladmin.message_user(request, _("%(name)s: not permitted (you may not operate it).") % {"name": label},
                                    messages.ERROR)
            continue
        try:
            control.run(obj, request.user, reason, force)
        except ConflictError as exc:
            hint = console_views.refusal_hint(exc.code)
            modeladmin.message_user(
                request, _("%(name)s: not possible in its current state: %(message)s %(hint)s")
                % {"name": label, "message": exc.message, "hint": hint}, messages.ERROR)
            continue
        except ValueError as exc:  # an unknown queue: configuration, not state
            modeladmin.message_user(request, f"{label}: {exc}", messages.ERROR)
            continue
        done.append(label)
    if done:
        modeladmin.message_user(request, _("Done for %(count)s: %(names)s. The console shows the result live.")
                                % {"count": len(done), "names": ", ".join(done)}, messages.SUCCESS)
    return None


def ensure_queue_rows() -> None:
    """A row per configured queue, so the Queue states list names every queue (it listed
    "0 queue states" until someone paused one). Idempotent; never changes a pause."""
    QueueState.objects.bulk_create([QueueState(name=q) for q in registry.queues()], ignore_conflicts=True)
