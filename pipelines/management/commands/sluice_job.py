from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from pipelines import services
from pipelines.management.commands._common import resolve_actor
from pipelines.models import Job


class Command(BaseCommand):
    help = "Cancel, retry or recover (force back to queued) one job by id."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["cancel", "retry", "recover", "show"])
        parser.add_argument("job_id", type=int)
        parser.add_argument("--as", dest="username")
        parser.add_argument("--reason", default="")
        parser.add_argument("--force", action="store_true", help="recover even with a fresh heartbeat")

    def handle(self, *args: Any, **opts: Any) -> None:
        actor = resolve_actor(opts["username"])
        job_id = opts["job_id"]
        try:
            if opts["action"] == "cancel":
                job = services.job_cancel(job_id=job_id, actor=actor, reason=opts["reason"])
            elif opts["action"] == "retry":
                job = services.job_retry(job_id=job_id, actor=actor, reason=opts["reason"])
            elif opts["action"] == "recover":
                job = services.job_recover(job_id=job_id, actor=actor, reason=opts["reason"], force=opts["force"])
            else:
                job = Job.objects.get(pk=job_id)
        except services.ConflictError as exc:
            raise CommandError(f"409 {exc.code}: {exc.message}") from None
        except Job.DoesNotExist:
            raise CommandError(f"no job {job_id}") from None
        self.stdout.write(f"job #{job.pk} {job.job_type} state={job.state} result={job.result or '-'} "
                          f"attempts={job.attempts}/{job.max_attempts}: {job.status_message}")
        if job.error:
            self.stdout.write(f"  error[{job.error.get('stage')}]: {job.error.get('type')}: {job.error.get('message')}")
