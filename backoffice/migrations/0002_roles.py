"""The viewer and operator groups with their permissions."""

from __future__ import annotations

from django.contrib.auth.management import create_permissions
from django.db import migrations


def create_roles(apps, schema_editor):  # type: ignore[no-untyped-def]
    # Permissions are normally created after all migrations; make sure ours exist now.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    view = Permission.objects.get(codename="view_console", content_type__app_label="backoffice")
    operate = Permission.objects.get(codename="operate", content_type__app_label="backoffice")
    viewer, _ = Group.objects.get_or_create(name="viewer")
    viewer.permissions.add(view)
    operator, _ = Group.objects.get_or_create(name="operator")
    operator.permissions.add(view, operate)


class Migration(migrations.Migration):
    dependencies = [("backoffice", "0001_initial"), ("contenttypes", "0002_remove_content_type_name")]
    operations = [migrations.RunPython(create_roles, migrations.RunPython.noop)]
