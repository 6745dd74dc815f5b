"""Make "every module" an explicit permission instead of "has no module grant".

Until now a user without any ``ModuleGrant`` saw every module, so deleting someone's
last grant (or their grant group) widened their access. From here on:

- ``backoffice.all_modules`` is the scope "every module"; the ``viewer`` and
  ``operator`` groups carry it (their members keep seeing everything);
- ``module viewer`` / ``module operator`` are the same roles without it: their members
  see only the modules granted to them (none if they have no grant);
- every user restricted today (a grant of their own or through a group) is moved from
  ``viewer``/``operator`` to the ``module …`` group of the same role, and every user
  unrestricted today who holds a role through direct permissions gets ``all_modules``
  directly, so nobody's access changes with this migration.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.management import create_permissions
from django.db import migrations
from django.db.models import Q

ROLES = {"viewer": "module viewer", "operator": "module operator"}


def forwards(apps, schema_editor):  # type: ignore[no-untyped-def]
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    User = apps.get_model(settings.AUTH_USER_MODEL)
    ModuleGrant = apps.get_model("backoffice", "ModuleGrant")
    perms = {
        p.codename: p
        for p in Permission.objects.filter(
            content_type__app_label="backoffice", codename__in=["view_console", "operate", "all_modules"]
        )
    }
    all_modules = perms["all_modules"]
    grant_groups = set(ModuleGrant.objects.filter(group__isnull=False).values_list("group_id", flat=True))
    restricted_users = set(
        User.objects.filter(Q(module_grants__isnull=False) | Q(groups__in=grant_groups)).values_list("pk", flat=True)
    )
    for name, restricted_name in ROLES.items():
        role = Group.objects.filter(name=name).first()
        if role is None:
            continue
        restricted_role, _ = Group.objects.get_or_create(name=restricted_name)
        restricted_role.permissions.add(*role.permissions.exclude(codename="all_modules"))
        if role.pk in grant_groups:
            continue  # the role group itself is narrowed by grants: every member stays restricted
        role.permissions.add(all_modules)
        for user in role.user_set.filter(pk__in=restricted_users):
            user.groups.remove(role)
            user.groups.add(restricted_role)
    # Roles held through direct permissions, unrestricted today: keep seeing everything.
    direct = User.objects.filter(user_permissions__in=[perms["view_console"], perms["operate"]]).exclude(
        pk__in=restricted_users
    )
    for user in direct.distinct():
        user.user_permissions.add(all_modules)


def backwards(apps, schema_editor):  # type: ignore[no-untyped-def]
    Group = apps.get_model("auth", "Group")
    for name, restricted_name in ROLES.items():
        role = Group.objects.filter(name=name).first()
        restricted_role = Group.objects.filter(name=restricted_name).first()
        if role is not None and restricted_role is not None:
            for user in restricted_role.user_set.all():
                user.groups.add(role)
        if restricted_role is not None:
            restricted_role.delete()
    apps.get_model("auth", "Permission").objects.filter(
        content_type__app_label="backoffice", codename="all_modules"
    ).delete()


class Migration(migrations.Migration):
    dependencies = [("backoffice", "0002_roles"), migrations.swappable_dependency(settings.AUTH_USER_MODEL)]
    operations = [
        migrations.AlterModelOptions(
            name="modulegrant",
            options={
                "permissions": [
                    ("view_console", "Can read the console and the API (viewer)"),
                    ("operate", "Can upload, cancel, retry, recover, pause, create and open years (operator)"),
                    ("all_modules", "Can see (and, with operate, operate) every module without module grants"),
                ]
            },
        ),
        migrations.RunPython(forwards, backwards),
    ]
