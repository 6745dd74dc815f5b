"""Template helpers of the back-office pages."""

from __future__ import annotations

from typing import Any

from django import template

from backoffice import labels
from pipelines import messages

register = template.Library()


@register.filter
def status_text(job: Any) -> str:
    """A job's status message (a ``Job`` or a job dict) in the active language."""
    if job is None:
        return ""
    if isinstance(job, dict):
        return messages.text_of(job.get("status_key") or "", job.get("status_params"), job.get("status_message") or "")
    return messages.text_of(getattr(job, "status_key", ""), getattr(job, "status_params", None),
                            getattr(job, "status_message", ""))


@register.filter
def state_label(code: Any) -> str:
    return labels.state(code)


@register.filter
def result_label(code: Any) -> str:
    return labels.result(code)


@register.filter
def status_label(code: Any) -> str:
    return labels.status(code)


@register.filter
def kind_label(code: Any) -> str:
    return labels.kind(code)


@register.filter
def job_type_label(code: Any) -> str:
    return labels.job_type(code)


@register.filter
def phase_label(text: Any) -> str:
    return labels.phase(text)


@register.filter
def job_look(job: Any) -> str:
    """A job's chip word: its result once finished, else its state."""
    return labels.job_look(job)


@register.filter
def module_label(code: Any) -> str:
    return labels.module(code)


@register.filter
def target_label(code: Any) -> str:
    return labels.target_type(code)


@register.filter
def action_label(code: Any) -> str:
    return labels.action(code)


@register.filter
def event_kind_label(code: Any) -> str:
    return labels.event_kind(code)
