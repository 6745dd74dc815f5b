from __future__ import annotations

import socket
from typing import Any

from celery import current_app as app
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection


class Command(BaseCommand):
    help = "Health check for containers: database, broker, and (with --worker) this host's worker answers a ping."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--worker", action="store_true", help="also require a worker on this host to answer")
        parser.add_argument("--timeout", type=float, default=3.0)

    def handle(self, *args: Any, **opts: Any) -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        with app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1)
        if opts["worker"]:
            replies = app.control.ping(timeout=opts["timeout"]) or []
            host = socket.gethostname()
            if not any(host in name for reply in replies for name in reply):
                raise CommandError(f"no worker on {host} answered a ping within {opts['timeout']}s")
        self.stdout.write("ok")
