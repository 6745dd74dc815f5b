from __future__ import annotations

from django.db import migrations


def create_counter(apps, schema_editor):  # type: ignore[no-untyped-def]
    apps.get_model("pipelines", "EventCounter").objects.get_or_create(id=1, defaults={"value": 0})


class Migration(migrations.Migration):
    dependencies = [("pipelines", "0001_initial")]
    operations = [migrations.RunPython(create_counter, migrations.RunPython.noop)]
