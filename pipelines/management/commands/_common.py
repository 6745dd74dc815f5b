"""Shared bits of the ops commands: who the actor is, and waiting with progress."""

from __future__ import annotations

import getpass
import sys
import time
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import CommandError

from pipelines.models import Pipeline


def resolve_actor(username: str | None) -> Any:
    """A named user when given (the audit trail shows them), else ``cli:<os user>``."""
    if username:
        try:
            return get_user_model().objects.get(username=username)
        except get_user_model().DoesNotExist:
            raise CommandError(f"no user {username!r}") from None
    return f"cli:{getpass.getuser()}"


def wait_for_pipeline(pipeline_id: Any, *, timeout: float, out: Any) -> Pipeline:
    """Print a live progress line until the pipeline is done; CommandError on timeout."""
    deadline = time.monotonic() + timeout
    last = ""
    tty = sys.stdout.isatty()
    while True:
        pipeline = Pipeline.objects.get(pk=pipeline_id)
        line = (
            f"{pipeline.progress_percent:5.1f}%  {pipeline.status:<11} "
            f"{pipeline.jobs_finished}/{pipeline.jobs_total} jobs  {pipeline.phase}"
        )
        if line != last:
            out.write(("\r" + line.ljust(100)) if tty else line, ending="" if tty else "\n")
            out.flush()
            last = line
        if pipeline.is_done:
            if tty:
                out.write("")
            return pipeline
        if time.monotonic() > deadline:
            raise CommandError(f"pipeline {pipeline_id} not done after {timeout:.0f}s: {pipeline.status}")
        time.sleep(0.2)
