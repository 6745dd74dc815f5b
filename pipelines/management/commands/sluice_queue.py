from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from pipelines import services
from pipelines.management.commands._common import resolve_actor


class Command(BaseCommand):
    help = "Pause or resume a queue (persistent: survives worker restarts)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["pause", "resume"])
        parser.add_argument("queue", choices=settings.SLUICE_QUEUES)
        parser.add_argument("--as", dest="username")
        parser.add_argument("--reason", default="")

    def handle(self, *args: Any, **opts: Any) -> None:
        actor = resolve_actor(opts["username"])
        fn = services.queue_pause if opts["action"] == "pause" else services.queue_resume
        try:
            state = fn(queue=opts["queue"], actor=actor, reason=opts["reason"])
        except services.ConflictError as exc:
            raise CommandError(f"409 {exc.code}: {exc.message}") from None
        self.stdout.write(f"queue {state.name}: {'paused' if state.paused else 'running'}")
