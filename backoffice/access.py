"""Access rules shared by the API, the WebSocket consumers, SSE and the admin pages.

Roles are Django permissions (``backoffice.view_console``, ``backoffice.operate``)
and say *what* someone may do. The scope says *where*: every module with
``backoffice.all_modules`` (carried by the ``viewer`` and ``operator`` groups), else
only the modules of their ``ModuleGrant`` rows (``module viewer`` / ``module
operator`` groups). Scope is never implied: no ``all_modules`` and no grant means no
module at all, so removing someone's last grant narrows them to nothing.

Every surface narrows through :func:`narrow` (querysets, lists of dicts, live events)
with the scope from :func:`granted_modules`; lists are filtered, never a 403 for the
whole list.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar, overload

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser
from django.db.models import Q, QuerySet

from backoffice.models import ModuleGrant

VIEW_PERM = "backoffice.view_console"
OPERATE_PERM = "backoffice.operate"
ALL_MODULES_PERM = "backoffice.all_modules"

# A scope: ``None`` = every module (module-less pipelines included), else these modules.
Scope = frozenset[str] | None
NOTHING: Scope = frozenset()

T = TypeVar("T")


def can_view(user: Any) -> bool:
    return bool(user and user.is_authenticated and user.is_active and (user.has_perm(VIEW_PERM) or can_operate(user)))


def can_operate(user: Any) -> bool:
    return bool(user and user.is_authenticated and user.is_active and user.has_perm(OPERATE_PERM))


def granted_modules(user: Any) -> Scope:
    """The user's scope: ``None`` for every module, else the granted ones (maybe none).

    Without a viewer or operator role the scope is empty whatever the grants say.
    """
    if not can_view(user):
        return NOTHING
    if user.is_superuser or user.has_perm(ALL_MODULES_PERM):
        return None
    return frozenset(
        ModuleGrant.objects.filter(Q(user=user) | Q(group__in=user.groups.all())).values_list("module", flat=True)
    )


def reload(user: Any) -> Any:
    """``user`` as stored now (a deleted one becomes anonymous): long-lived streams re-check with it.

    A user object caches its permissions on first use, and ``is_active`` is as of the
    login; a fresh read sees a deactivation, a lost role or a changed grant.
    """
    if not user or not user.is_authenticated:
        return user
    return get_user_model().objects.filter(pk=user.pk).first() or AnonymousUser()


def in_scope(scope: Scope, module: str | None) -> bool:
    """Module-less pipelines (engine-wide kinds) are in the "every module" scope only."""
    return scope is None or (bool(module) and module in scope)


def _module_of(item: Mapping[str, Any], field: str) -> Any:
    value: Any = item
    for part in field.split("__"):
        value = (value or {}).get(part) if isinstance(value, Mapping) else None
    return value


@overload
def narrow(items: QuerySet[Any], scope: Scope, *, field: str = "module") -> QuerySet[Any]: ...  # type: ignore[overload-overlap]
@overload
def narrow(items: Iterable[T], scope: Scope, *, field: str = "module") -> list[T]: ...
def narrow(items: Any, scope: Scope, *, field: str = "module") -> Any:
    """Keep what ``scope`` may see: a queryset is filtered in SQL, dicts by ``field``.

    ``field`` is a Django lookup path (``"pipeline__module"``); for dicts it walks the
    nested keys the same way (a live event carries ``{"pipeline": {"module": …}}``).
    """
    if isinstance(items, QuerySet):
        return items if scope is None else items.filter(**{f"{field}__in": sorted(scope)})
    return [item for item in items if in_scope(scope, _module_of(item, field))]


def can_see_module(user: Any, module: str | None) -> bool:
    return can_view(user) and in_scope(granted_modules(user), module)


def can_operate_module(user: Any, module: str | None) -> bool:
    return can_operate(user) and can_see_module(user, module)


def filter_pipelines(queryset: QuerySet[Any], user: Any, *, field: str = "module") -> QuerySet[Any]:
    """Drop what the user may not see (module-less pipelines only for the "every module" scope)."""
    return narrow(queryset, granted_modules(user), field=field)


def filter_jobs(queryset: QuerySet[Any], user: Any) -> QuerySet[Any]:
    return filter_pipelines(queryset, user, field="pipeline__module")
