# The two foreign-key indexes of JobEvent duplicate the leading columns of (pipeline, seq) and (job, seq) (issue 13).

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('pipelines', '0016_sql_transition_helpers_plpgsql'),
    ]

    operations = [
        migrations.AlterField(
            model_name='jobevent',
            name='job',
            field=models.ForeignKey(blank=True, db_index=False, null=True, on_delete=django.db.models.deletion.CASCADE, related_name='events', to='pipelines.job'),
        ),
        migrations.AlterField(
            model_name='jobevent',
            name='pipeline',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='events', to='pipelines.pipeline'),
        ),
    ]
