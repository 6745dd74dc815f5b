"""The errors a storage failure raises, whatever the backend (``config.s3`` raises them
for S3; a local disk's ``OSError`` is wrapped by ``ingestion.parsing``). Callers turn a
read failure into a retried job (``ingestion.jobs``) and a write failure into a 503
(``backoffice.api.errors``). Here, below every layer that handles them, importing nothing.
"""

from __future__ import annotations


class StorageError(OSError):
    """The storage backend could not be reached, or failed in the middle of a transfer."""


class StorageReadError(StorageError):
    """The storage could not be reached or stopped answering while a file was read."""


class StorageWriteError(StorageError):
    """A file could not be written to the storage."""
