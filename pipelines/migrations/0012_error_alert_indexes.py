# Partial indexes whose predicates are the transaction_poisoned and deadlock alerts'
# filters (pipelines.models.POISONED_ERROR / DEADLOCK_ERROR): the console counts them
# from the entries of such errors only, instead of reading every failed job of the week.

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('pipelines', '0011_aggregation_suspects'),
    ]

    operations = [
        migrations.AddIndex(
            model_name='job',
            index=models.Index(condition=models.Q(('result', 'error'), models.Q(('error__type', 'InFailedSqlTransaction'), ('error__message__icontains', 'current transaction is aborted'), ('status_message__icontains', 'current transaction is aborted'), _connector='OR')), fields=['-created_at'], name='job_poisoned'),
        ),
        migrations.AddIndex(
            model_name='job',
            index=models.Index(condition=models.Q(('result', 'error'), models.Q(('error__type', 'DeadlockDetected'), ('error__message__icontains', 'deadlock detected'), ('status_message__icontains', 'deadlock detected'), _connector='OR')), fields=['-created_at'], name='job_deadlock'),
        ),
    ]
