from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = "Create the demo superuser (idempotent); used by `make run`."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="admin")
        parser.add_argument("--password", required=True)

    def handle(self, *args: Any, **opts: Any) -> None:
        User = get_user_model()
        user, created = User.objects.get_or_create(
            username=opts["username"], defaults={"is_staff": True, "is_superuser": True, "email": "admin@example.org"}
        )
        if created:
            user.set_password(opts["password"])
            user.save()
        self.stdout.write(f"demo user {user.username} {'created' if created else 'exists'}")
