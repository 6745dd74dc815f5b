"""What a job handler sees: its job, progress reporting, cancellation checks, effects.

The contract between the engine and the apps that register handlers
(``pipelines.registry``): a handler receives a :class:`JobContext` and returns an
``Outcome``. The worker runtime that builds the context, beats and finishes the job is
``workers.runner``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction

from pipelines.errors import JobAborted
from pipelines.messages import Message
from pipelines.models import Job
from pipelines.registry import Outcome
from pipelines.services import worker_side


class RetryableError(Exception):
    """A transient failure: the job is re-queued while attempts remain."""


@dataclass
class EffectResult:
    outcome: Outcome | None = None


class JobContext:
    """What a handler sees: its job, progress reporting, cancellation checks, effects."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.job_id: int = job.pk
        self.attempt: int = job.attempts
        self.params: dict[str, Any] = dict(job.params or {})
        self.pipeline_id = job.pipeline_id
        self.year: int | None = job.pipeline.year
        self.module: str = job.pipeline.module
        self.stage = "start"
        self.aborted = threading.Event()
        self._last_emit = 0.0
        self._last_percent = -100.0
        self._last_phase: str | None = None
        # The claim just checked ownership: a job shorter than the check interval
        # costs no extra query.
        self._last_check = time.monotonic()

    def set_stage(self, stage: str) -> None:
        """Names the step an error will be reported in (``error.stage``)."""
        self.stage = stage

    def raise_if_aborted(self) -> None:
        if self.aborted.is_set():
            raise JobAborted(f"job {self.job_id} attempt {self.attempt} was cancelled or taken over")

    def checkpoint(self) -> None:
        """Call between batches: stops the handler promptly once the job is cancelled."""
        self.raise_if_aborted()
        now = time.monotonic()
        if now - self._last_check >= 0.2:
            self._last_check = now
            if not worker_side.job_is_current(job_id=self.job_id, attempt=self.attempt):
                self.aborted.set()
                self.raise_if_aborted()

    def progress(
        self,
        processed: int,
        total: int | None = None,
        *,
        phase: str | None = None,
        message: Message | str | None = None,
        meta: dict[str, Any] | None = None,
        force: bool = False,
    ) -> None:
        """Report progress; throttled so a million rows make dozens of events, not millions.

        An event is written when the phase changes, or when the percentage moved by at
        least 2 points and ``SLUICE_PROGRESS_MIN_INTERVAL_SECONDS`` passed (or a second
        passed when the total is unknown), or when ``force``.
        """
        self.raise_if_aborted()
        now = time.monotonic()
        percent = 100.0 * processed / total if total else None
        elapsed = now - self._last_emit
        due = (
            force
            or (phase is not None and phase != self._last_phase)
            or (
                percent is not None
                and percent - self._last_percent >= 2.0
                and elapsed >= settings.SLUICE_PROGRESS_MIN_INTERVAL_SECONDS
            )
            or (percent is None and elapsed >= 1.0)
        )
        if not due:
            return
        self._last_emit = now
        if percent is not None:
            self._last_percent = percent
        if phase is not None:
            self._last_phase = phase
        if not worker_side.job_progress(
            job_id=self.job_id, attempt=self.attempt, processed=processed, total=total,
            phase=phase, message=message, meta=meta,
        ):
            self.aborted.set()
            self.raise_if_aborted()

    @contextmanager
    def effect(self) -> Iterator[EffectResult]:
        """A transaction holding the job's durable effect, committed at most once.

        Set ``.outcome`` on the yielded object before the block ends: it is stored with
        the effect, so a redelivered message finishes the job from it instead of
        applying the effect again. If the attempt lost the job meanwhile, the whole
        effect rolls back.
        """
        holder = EffectResult()
        with transaction.atomic():
            yield holder
            if holder.outcome is None:
                raise RuntimeError("an effect block must set .outcome before it ends")
            self.raise_if_aborted()
            worker_side.job_commit_effect(job_id=self.job_id, attempt=self.attempt, outcome=holder.outcome)
