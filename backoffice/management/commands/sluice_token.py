"""Issue or revoke a user's API token: ``manage.py sluice_token issue|revoke USERNAME``."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from backoffice.api.auth import token_issue, token_revoke


class Command(BaseCommand):
    help = "Issue (print) or revoke a user's API token."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["issue", "revoke"])
        parser.add_argument("username")
        parser.add_argument("--rotate", action="store_true", help="issue: replace an existing token")

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            if opts["action"] == "issue":
                token = token_issue(username=opts["username"], actor="manage.py", rotate=opts["rotate"])
                self.stdout.write(token.key)
            elif token_revoke(username=opts["username"], actor="manage.py"):
                self.stdout.write(f"token of {opts['username']} revoked")
            else:
                self.stdout.write(f"{opts['username']} had no token")
        except get_user_model().DoesNotExist:
            raise CommandError(f"no user {opts['username']!r}")
