"""The operator audit record: who did what to which pipeline, job or queue, and why."""

from __future__ import annotations

from typing import Any

from pipelines.models import OperatorAction, Pipeline


def actor_name(actor: Any) -> str:
    """How the record and status messages name an actor: a user, a CLI name, or ``system``."""
    if actor is None:
        return "system"
    return str(actor.get_username()) if hasattr(actor, "get_username") else str(actor)


def actor_user(actor: Any) -> Any:
    """The User behind an actor, or None for system/CLI actors given as names."""
    return actor if getattr(actor, "pk", None) is not None else None


def operator_action_record(
    *,
    actor: Any,
    action: str,
    target_type: str,
    target_id: str,
    pipeline: Pipeline | None = None,
    reason: str = "",
    detail: dict[str, Any] | None = None,
) -> OperatorAction:
    return OperatorAction.objects.create(
        actor=actor_user(actor),
        actor_name=actor_name(actor),
        action=action,
        target_type=target_type,
        target_id=target_id,
        pipeline=pipeline,
        reason=reason or "",
        detail=detail or {},
    )
