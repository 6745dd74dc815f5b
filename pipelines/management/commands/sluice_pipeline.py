from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from pipelines import services
from pipelines.management.commands._common import resolve_actor, wait_for_pipeline
from pipelines.models import Pipeline, PipelineStatus


class Command(BaseCommand):
    help = "Start a no-op pipeline, or show, cancel, retry or follow a pipeline by id."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["noop", "show", "cancel", "retry", "wait"])
        parser.add_argument("pipeline_id", nargs="?")
        parser.add_argument("--as", dest="username", help="record the action as this user")
        parser.add_argument("--reason", default="")
        parser.add_argument("--wait", action="store_true", help="follow progress until done")
        parser.add_argument("--timeout", type=float, default=600)
        parser.add_argument("--width", type=int, default=3, help="noop: parallel middle jobs")
        parser.add_argument("--sleep", type=float, default=0.0, help="noop: seconds per job")

    def handle(self, *args: Any, **opts: Any) -> None:
        actor = resolve_actor(opts["username"])
        action = opts["action"]
        try:
            if action == "noop":
                pipeline = services.pipeline_start_noop(width=opts["width"], sleep=opts["sleep"], actor=actor)
                self.stdout.write(f"started pipeline {pipeline.pk}")
            else:
                if not opts["pipeline_id"]:
                    raise CommandError(f"{action} needs a pipeline id")
                pipeline_id = opts["pipeline_id"]
                if action == "cancel":
                    pipeline = services.pipeline_cancel(pipeline_id=pipeline_id, actor=actor, reason=opts["reason"])
                elif action == "retry":
                    pipeline = services.pipeline_retry(pipeline_id=pipeline_id, actor=actor, reason=opts["reason"])
                else:
                    pipeline = Pipeline.objects.get(pk=pipeline_id)
        except services.ConflictError as exc:
            raise CommandError(f"409 {exc.code}: {exc.message}") from None
        except (Pipeline.DoesNotExist, ValueError) as exc:
            raise CommandError(str(exc)) from None
        if opts["wait"] or action == "wait":
            pipeline = wait_for_pipeline(pipeline.pk, timeout=opts["timeout"], out=self.stdout)
        self._show(pipeline)
        if (opts["wait"] or action == "wait") and pipeline.status != PipelineStatus.SUCCESS:
            raise CommandError(f"pipeline ended {pipeline.status}: {pipeline.last_error}")

    def _show(self, pipeline: Pipeline) -> None:
        self.stdout.write(f"pipeline {pipeline.pk} {pipeline.kind} status={pipeline.status} "
                          f"{pipeline.progress_percent:.0f}%")
        for job in pipeline.jobs.order_by("id"):
            self.stdout.write(f"  #{job.pk:<6} {job.job_type:<16} {job.det:<14} {job.state:<11} "
                              f"{job.result or '':<9} {job.status_message}")
