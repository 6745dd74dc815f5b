"""Access rules shared by the API, the WebSocket consumers, SSE and the admin pages.

Roles are Django permissions (``backoffice.view_console``, ``backoffice.operate``),
granted through the ``viewer`` and ``operator`` groups; module grants narrow them.
Lists are filtered with :func:`filter_pipelines` / :func:`filter_jobs`; they never 403
the whole list.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Q, QuerySet

from backoffice.models import ModuleGrant

VIEW_PERM = "backoffice.view_console"
OPERATE_PERM = "backoffice.operate"


def can_view(user: Any) -> bool:
    return bool(user and user.is_authenticated and user.is_active and (user.has_perm(VIEW_PERM) or can_operate(user)))


def can_operate(user: Any) -> bool:
    return bool(user and user.is_authenticated and user.is_active and user.has_perm(OPERATE_PERM))


def granted_modules(user: Any) -> frozenset[str] | None:
    """The modules a user is restricted to, or ``None`` when not restricted."""
    if not user or not user.is_authenticated:
        return frozenset()
    if user.is_superuser:
        return None
    modules = set(
        ModuleGrant.objects.filter(Q(user=user) | Q(group__in=user.groups.all())).values_list("module", flat=True)
    )
    return frozenset(modules) if modules else None


def can_see_module(user: Any, module: str | None) -> bool:
    if not can_view(user):
        return False
    grants = granted_modules(user)
    return grants is None or (bool(module) and module in grants)


def can_operate_module(user: Any, module: str | None) -> bool:
    return can_operate(user) and can_see_module(user, module)


def filter_pipelines(queryset: QuerySet[Any], user: Any, *, field: str = "module") -> QuerySet[Any]:
    """Drop what the user may not see (module-less pipelines only for unrestricted users)."""
    if not can_view(user):
        return queryset.none()
    grants = granted_modules(user)
    if grants is None:
        return queryset
    return queryset.filter(**{f"{field}__in": sorted(grants)})


def filter_jobs(queryset: QuerySet[Any], user: Any) -> QuerySet[Any]:
    return filter_pipelines(queryset, user, field="pipeline__module")
