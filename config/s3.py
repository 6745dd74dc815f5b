"""The S3 storage backend: django-storages' ``S3Storage`` with reads that stream.

``STORAGES["default"]`` names it with ``SLUICE_STORAGE=s3`` (``config.storage.s3_storage``
builds the entry); only then is boto3 loaded. Writes are django-storages' own (a
multipart upload from a stream, its buffers bounded by ``_transfer_config``). Reads are
not: its ``S3File`` downloads the whole object into a spooled temporary file before the
first byte is returned (in memory by default), so a 1 GB upload would cost a 1 GB
buffer on the worker. Here ``open(name, "rb")`` returns a buffered reader over the
object's HTTP body instead: the ingest's ``COPY`` and the download view pull it chunk
by chunk, and ``seek`` re-opens the body with a ``Range``.

A failure to reach or read the object mid-stream raises ``StorageReadError``, and a
failed write ``StorageWriteError`` (``config.storage``), naming the object: callers turn
them into a retried job or a 503.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
from typing import Any

from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from django.core.files.base import File
from storages.backends.s3 import S3Storage as _S3Storage
from storages.utils import clean_name
from urllib3.exceptions import HTTPError

from ingestion.storage import StorageReadError, StorageWriteError

READ_BUFFER_BYTES = 1024 * 1024
_READ_ERRORS = (BotoCoreError, ClientError, HTTPError, OSError)


def _not_found(exc: ClientError) -> bool:
    return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404 or exc.response.get(
        "Error", {}
    ).get("Code") in ("404", "NoSuchKey", "NotFound")


class S3ObjectStream(io.RawIOBase):
    """A read-only, seekable byte stream over one S3 object, fetched as it is read."""

    def __init__(self, obj: Any, name: str, size: int) -> None:
        super().__init__()
        self._obj = obj
        self.name = name
        self.size = size
        self._pos = 0
        self._body: Any = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        position = base + offset
        if position < 0:
            raise ValueError(f"negative seek position {position}")
        if position != self._pos:
            # No request now: the next read opens the body at the new position.
            self._drop_body()
            self._pos = position
        return position

    def readinto(self, buffer: Any) -> int:
        if self._pos >= self.size or not len(buffer):
            return 0
        try:
            if self._body is None:
                ranged = {"Range": f"bytes={self._pos}-"} if self._pos else {}
                self._body = self._obj.get(**ranged)["Body"]
            data = self._body.read(len(buffer))
        except _READ_ERRORS as exc:
            self._drop_body()
            raise StorageReadError(
                f"{self.name}: storage unreadable at byte {self._pos:,} of {self.size:,} ({exc})"
            ) from exc
        if not data:
            self._drop_body()
            raise StorageReadError(f"{self.name}: storage closed the stream at byte {self._pos:,} of {self.size:,}")
        count = len(data)
        buffer[:count] = data
        self._pos += count
        return count

    def _drop_body(self) -> None:
        if self._body is not None:
            try:
                self._body.close()
            except _READ_ERRORS:
                pass  # a dead connection closes badly; nothing more to read from it
            self._body = None

    def close(self) -> None:
        self._drop_body()
        super().close()


def _keep_large_buffers_in_mmap() -> None:
    """Fix glibc's mmap threshold at 1 MiB (``M_MMAP_THRESHOLD``).

    Why: glibc raises the threshold to the size of the first large block freed, so every
    later 8 MB multipart buffer comes from the heap instead of its own mapping, and the
    heap fragments: bench/ingest.py measured the uploading process growing by ~110 MB per
    GB uploaded (258 → 370 MB from a 96 MiB to a 985 MiB file). With the threshold fixed,
    buffers are mapped and unmapped and the process stays ~35 MB above its baseline
    whatever the size (docs/BENCHMARKS.md). A no-op where the C library has no mallopt.
    """
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return
    mallopt = getattr(ctypes.CDLL(libc_name), "mallopt", None)
    if mallopt is not None:
        mallopt(-3, 1024 * 1024)  # M_MMAP_THRESHOLD = -3 in <malloc.h>


class S3Storage(_S3Storage):
    """django-storages' S3 backend, whose read mode streams (module docstring); the
    client's timeouts and retries and the transfer buffers are Sluice's settings."""

    def get_default_settings(self) -> dict[str, Any]:
        # Given by config.storage.s3_storage from the SLUICE_S3_* settings; None: boto3's own.
        return {**super().get_default_settings(), "connect_timeout": None, "read_timeout": None,
                "max_attempts": None}

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        if settings.get("client_config") is None:
            self.client_config = Config(
                signature_version="s3v4",
                # Path style for S3-compatible servers (no wildcard DNS needed); AWS picks its own.
                s3={"addressing_style": self.addressing_style or ("path" if self.endpoint_url else "auto")},
                # Checksums only where S3 requires them: S3-compatible stores differ in the
                # newer trailing checksums, and the upload's own sha256 is recorded anyway.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                retries={"mode": "standard", **({"total_max_attempts": self.max_attempts}
                                                 if self.max_attempts is not None else {})},
                **{k: v for k, v in (("connect_timeout", self.connect_timeout), ("read_timeout", self.read_timeout))
                   if v is not None},
            )
        if settings.get("transfer_config") is None:
            self.transfer_config = _transfer_config()
        _keep_large_buffers_in_mmap()

    def _save(self, name: str, content: Any) -> str:
        try:
            return super()._save(name, content)
        except (BotoCoreError, ClientError, S3UploadFailedError) as exc:
            raise StorageWriteError(f"{name}: storage refused or dropped the write ({exc})") from exc

    def _open(self, name: str, mode: str = "rb") -> File:
        if "w" in mode or "a" in mode or "+" in mode:
            return super()._open(name, mode)
        key = self._normalize_name(clean_name(name))
        obj = self.bucket.Object(key)
        try:
            obj.load()  # HEAD: the size, and FileNotFoundError now rather than mid-read
        except ClientError as exc:
            if _not_found(exc):
                raise FileNotFoundError(f"File does not exist: {name}") from exc
            raise StorageReadError(f"{name}: storage refused to open it ({exc})") from exc
        except _READ_ERRORS as exc:
            raise StorageReadError(f"{name}: storage unreachable ({exc})") from exc
        raw = S3ObjectStream(obj, name, obj.content_length)
        stream: Any = io.BufferedReader(raw, buffer_size=READ_BUFFER_BYTES)
        if "b" not in mode:
            stream = io.TextIOWrapper(stream, encoding="utf-8")
        stored = File(stream, name=name)
        stored.size = raw.size
        return stored


def _transfer_config() -> TransferConfig:
    """An upload is written as a multipart upload while it is scanned (the stream is not
    seekable): at most max_in_memory_upload_chunks x multipart_chunksize bytes are
    buffered, 16 MB instead of s3transfer's 10 x 8 MB."""
    config = TransferConfig(multipart_threshold=8 * 1024 * 1024, multipart_chunksize=8 * 1024 * 1024,
                            max_concurrency=2)
    config.max_in_memory_upload_chunks = 2  # s3transfer's setting, not among boto3's arguments
    return config
