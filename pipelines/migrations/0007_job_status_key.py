# A job's status message as a translation key plus parameters (pipelines.messages).

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('pipelines', '0006_source_audit_actions'),
    ]

    operations = [
        migrations.AddField(
            model_name='job',
            name='status_key',
            field=models.TextField(blank=True, default=''),
        ),
        migrations.AddField(
            model_name='job',
            name='status_params',
            field=models.JSONField(blank=True, default=dict),
        ),
    ]
