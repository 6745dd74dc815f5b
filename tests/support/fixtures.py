"""The one home of test data builders: users and roles (factory_boy), the small DAG
every engine/API/live test plans, and ``wait_for`` (wait on a condition, never a
fixed sleep).

Transactional tests TRUNCATE every table, the permissions and roles the migrations
created included: the factories create what they need (get or create) each time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import factory
from django.contrib.auth.models import Group, Permission, User
from django.contrib.contenttypes.models import ContentType
from django.core.files.storage import default_storage
from factory.django import DjangoModelFactory

from backoffice.models import ModuleGrant
from pipelines.models import Pipeline
from pipelines.services import JobSpec, pipeline_plan

# --- waiting ---------------------------------------------------------------------------------


def wait_for(predicate: Callable[[], Any], *, timeout: float = 30, interval: float = 0.05, message: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy (returned), or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message or predicate}")


# --- users and roles -------------------------------------------------------------------------

# The backoffice permissions (on ModuleGrant's content type) and their display names.
PERMISSION_NAMES = {
    "view_console": "Can read the console and the API (viewer)",
    "operate": "Can operate (operator)",
    "all_modules": "Can see every module",
}
# The roles the migrations create, by name: their permission codenames.
STANDARD_ROLES = {
    "viewer": ("view_console", "all_modules"),
    "operator": ("view_console", "operate", "all_modules"),
    "module viewer": ("view_console",),
    "module operator": ("view_console", "operate"),
}


def read_stored(name: str) -> bytes:
    """A stored file's bytes, read through the storage API (whatever the backend)."""
    with default_storage.open(name, "rb") as f:
        return f.read()


def permission(codename: str) -> Permission:
    # The content type cache may name a row a TRUNCATE removed.
    ContentType.objects.clear_cache()
    ct = ContentType.objects.get_for_model(ModuleGrant)
    perm, _ = Permission.objects.get_or_create(
        content_type=ct, codename=codename, defaults={"name": PERMISSION_NAMES.get(codename, codename)}
    )
    return perm


class RoleFactory(DjangoModelFactory):
    """A role (auth group) with backoffice permissions: ``RoleFactory(name="viewer", perms=(...))``."""

    class Meta:
        model = Group
        django_get_or_create = ("name",)
        skip_postgeneration_save = True

    name = factory.Sequence(lambda n: f"role {n}")

    @factory.post_generation
    def perms(self, create: bool, extracted: Iterable[str] | None, **kwargs: Any) -> None:
        for codename in extracted or ():
            self.permissions.add(permission(codename))  # type: ignore[attr-defined]


def standard_roles() -> dict[str, Group]:
    return {name: RoleFactory(name=name, perms=perms) for name, perms in STANDARD_ROLES.items()}


class UserFactory(DjangoModelFactory):
    """A user with direct backoffice permissions, module grants and roles.

    ``perms``: permission codenames given to the user directly; a user with
    permissions and no module grant also gets the "every module" scope
    (``all_modules``), as the viewer/operator roles give it. ``modules``: module
    grants. ``roles``: role names (``STANDARD_ROLES`` or any group). ``password``:
    none (unusable, no slow hashing: log in with ``force_login``) unless given.
    """

    class Meta:
        model = User

    username = factory.Sequence(lambda n: f"user{n}")
    email = ""
    password = None
    is_staff = False
    is_superuser = False
    perms: Sequence[str] = ()
    modules: Sequence[str] = ()
    roles: Sequence[str] = ()

    @classmethod
    def _create(cls, model_class: type[User], *args: Any, **kwargs: Any) -> User:
        perms, modules, roles = tuple(kwargs.pop("perms")), kwargs.pop("modules"), kwargs.pop("roles")
        user = model_class.objects.create_user(*args, **kwargs)
        if perms and not modules:
            perms = (*perms, "all_modules")
        for codename in perms:
            user.user_permissions.add(permission(codename))
        for name in roles:
            user.groups.add(RoleFactory(name=name, perms=STANDARD_ROLES.get(name, ())))
        for module in modules:
            ModuleGrant.objects.create(user=user, module=module)
        return model_class.objects.get(pk=user.pk)  # no stale permission cache


# --- the small DAG ---------------------------------------------------------------------------


def small_dag(
    width: int = 2,
    *,
    end: bool = True,
    job_type: str = "noop",
    params: dict[str, Any] | None = None,
    kind: str = "noop",
    year: int | None = None,
    module: str = "",
) -> Pipeline:
    """Plan ``start → width jobs in parallel (DETs part0, part1, …) → end`` (``end=False``:
    no join; ``width=0``: a chain of two).

    Every job has ``job_type`` and ``params``. Jobs are created in that order (ids
    ascending). Dispatched on commit, like any plan.
    """
    params = params or {}
    specs = [JobSpec(key="start", job_type=job_type, params=params)]
    specs += [
        JobSpec(key=f"part{i}", job_type=job_type, det=f"part{i}", params=params, depends_on=("start",))
        for i in range(width)
    ]
    if end:
        joined = tuple(s.key for s in specs[1:]) or ("start",)
        specs.append(JobSpec(key="end", job_type=job_type, params=params, depends_on=joined))
    return pipeline_plan(kind=kind, specs=specs, year=year, module=module)
