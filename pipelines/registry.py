"""job_type → handler. Any job kind plugs in by registering a function here.

A handler receives a :class:`pipelines.context.JobContext` and returns an
:class:`Outcome` (or ``None`` for a plain success). Modules that register handlers are
listed in ``settings.SLUICE_HANDLER_MODULES`` and imported when the app is ready, so a
worker knows every kind the web process can plan.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.conf import settings

from pipelines.errors import DomainError
from pipelines.messages import Message
from pipelines.models import JobResult

if TYPE_CHECKING:
    from pipelines.context import JobContext


@dataclass(frozen=True)
class Outcome:
    result: str = JobResult.SUCCESS
    # A ``Message`` (key + params, translated where shown) or plain text.
    message: Message | str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    # Set (e.g. "upload #12") when the job's work was not applied because a later one
    # already was: its downstream jobs are skipped and the pipeline reads ``superseded``.
    superseded_by: str = ""
    # Set (e.g. "the source is unchanged") when the job succeeded and left its downstream
    # nothing to do: those jobs end ``skipped`` with this reason and the pipeline reads
    # ``success`` (unlike ``superseded_by``, nothing was refused).
    skip_downstream: str = ""

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"result": str(self.result), "message": str(self.message), "meta": self.meta}
        if isinstance(self.message, Message):
            data["message_i18n"] = self.message.as_json()
        if self.superseded_by:
            data["superseded_by"] = self.superseded_by
        if self.skip_downstream:
            data["skip_downstream"] = self.skip_downstream
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Outcome:
        i18n = data.get("message_i18n")
        message = Message.from_json(i18n) if i18n else data.get("message", "")
        return cls(result=data["result"], message=message, meta=data.get("meta", {}),
                   superseded_by=data.get("superseded_by", ""), skip_downstream=data.get("skip_downstream", ""))


Handler = Callable[["JobContext"], "Outcome | None"]


@dataclass(frozen=True)
class HandlerSpec:
    job_type: str
    func: Handler
    queue: str
    max_attempts: int | None
    # The ``meta`` keys of this job type that are counts (declared by the registering app).
    counts: tuple[str, ...] = ()


class UnknownJobType(DomainError, LookupError):
    # A LookupError too: callers that look a job type up may catch it as "not found".
    status = 400
    code = "unknown_job_type"


_HANDLERS: dict[str, HandlerSpec] = {}
# Every count key some registered job type declared, sorted; kept at registration (read
# on every event written).
_COUNT_KEYS: tuple[str, ...] = ()


def register(
    job_type: str, *, queue: str = "default", max_attempts: int | None = None, counts: tuple[str, ...] = ()
) -> Callable[[Handler], Handler]:
    def decorator(func: Handler) -> Handler:
        global _COUNT_KEYS
        _HANDLERS[job_type] = HandlerSpec(
            job_type=job_type, func=func, queue=queue, max_attempts=max_attempts, counts=tuple(counts)
        )
        _COUNT_KEYS = tuple(sorted({key for spec in _HANDLERS.values() for key in spec.counts}))
        return func

    return decorator


def get_handler(job_type: str) -> HandlerSpec:
    try:
        return _HANDLERS[job_type]
    except KeyError:
        raise UnknownJobType(f"no handler registered for job type {job_type!r}") from None


def queue_for(job_type: str) -> str:
    routed = settings.SLUICE_QUEUE_ROUTES.get(job_type)
    return routed or get_handler(job_type).queue


def max_attempts_for(job_type: str) -> int:
    spec = get_handler(job_type)
    return spec.max_attempts or settings.SLUICE_MAX_ATTEMPTS


def registered_job_types() -> list[str]:
    """Every registered job type, sorted."""
    return sorted(_HANDLERS)


def queues() -> list[str]:
    """Every queue a job can be sent to: each registered job type's (after the settings'
    routes), in registration order, then Celery's default queue (beat's tasks) last.

    The one list of queues: the API, the console, pause/resume, queue depths and the
    reaper all read it, and each app declares its queues where it registers job types.
    """
    default = settings.CELERY_TASK_DEFAULT_QUEUE
    found = dict.fromkeys(queue_for(job_type) for job_type in _HANDLERS)
    found.pop(default, None)
    return [*found, default]


def registered_count_keys() -> tuple[str, ...]:
    """Every count key some registered job type declared, sorted."""
    return _COUNT_KEYS


def job_types_counting(key: str) -> list[str]:
    """The registered job types that declared ``key`` among their counts, sorted."""
    return sorted(spec.job_type for spec in _HANDLERS.values() if key in spec.counts)


def load_handler_modules() -> None:
    for module in settings.SLUICE_HANDLER_MODULES:
        importlib.import_module(module)
