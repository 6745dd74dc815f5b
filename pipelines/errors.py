"""The engine's exceptions, in the lowest module so every layer above can raise them.

``DomainError`` is the one base every app's refusals subclass (the engine's and
ingestion's alike): it carries the HTTP ``status`` and the machine ``code`` the API
answers with (``backoffice.api.errors``), so the API layer recognises a domain refusal
by its class, not by its name or its shape.
"""

from __future__ import annotations


class DomainError(Exception):
    """A refusal the caller can act on: answered with ``status`` and ``code``, nothing written."""

    status = 400
    code = "invalid"

    def __init__(self, message: str, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class ConflictError(DomainError):
    """The object's state does not allow the operation (HTTP 409)."""

    status = 409
    code = "conflict"


class JobAborted(Exception):
    """This attempt no longer owns the job (cancelled, recovered, taken over): stop, write nothing."""
