from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from pipelines import registry, services
from pipelines.management.commands._common import resolve_actor


class Command(BaseCommand):
    help = (
        "Pause or resume a queue (persistent: survives worker restarts); `list` prints every queue, "
        "comma-separated, for a worker's -Q (the queues of the registered job types)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["pause", "resume", "list"])
        parser.add_argument("queue", nargs="?", choices=registry.queues())
        parser.add_argument("--as", dest="username")
        parser.add_argument("--reason", default="")

    def handle(self, *args: Any, **opts: Any) -> None:
        if opts["action"] == "list":
            self.stdout.write(",".join(registry.queues()))
            return
        if not opts["queue"]:
            raise CommandError(f"{opts['action']} needs a queue: one of {', '.join(registry.queues())}")
        actor = resolve_actor(opts["username"])
        fn = services.queue_pause if opts["action"] == "pause" else services.queue_resume
        try:
            state = fn(queue=opts["queue"], actor=actor, reason=opts["reason"])
        except services.ConflictError as exc:
            raise CommandError(f"409 {exc.code}: {exc.message}") from None
        self.stdout.write(f"queue {state.name}: {'paused' if state.paused else 'running'}")
