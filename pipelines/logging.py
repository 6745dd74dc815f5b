"""Structured (JSON lines) logging with the current pipeline and job ids attached."""

from __future__ import annotations

import contextvars
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pipelines.redaction import redact_urls

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("sluice_log_context", default=None)


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    token = _context.set({**(_context.get() or {}), **{k: str(v) for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


class StructuredFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            # URLs in messages and tracebacks may carry credentials (pipelines.redaction).
            "msg": redact_urls(record.getMessage()),
            **(_context.get() or {}),
        }
        for key in ("pipeline_id", "job_id", "request_id"):
            if hasattr(record, key):
                data[key] = str(getattr(record, key))
        if record.exc_info:
            data["exc"] = redact_urls(self.formatException(record.exc_info))
        return json.dumps(data, default=str)
