# The per-pipeline counter is the last pipeline_seq handed out, not a count (issue 9).
# A column rename only: no trigger or index reads it (migration 0005's triggers do not).

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ("pipelines", "0013_aggregation_suspects_probes"),
    ]

    operations = [
        migrations.RenameField(
            model_name="pipeline",
            old_name="event_count",
            new_name="last_pipeline_seq",
        ),
    ]
