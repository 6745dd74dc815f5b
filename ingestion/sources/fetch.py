"""Fetching a source into the upload store, and what a JSON response may look like.

HTTP(S) with httpx, streamed to disk chunk by chunk:

1. ``If-None-Match`` / ``If-Modified-Since`` from the last stored response: a 304 is
   "unchanged".
2. A declared ``Content-Length`` over ``SLUICE_SOURCE_MAX_BYTES`` is refused before the
   body is read; a body that grows past it while streaming is cut off and refused.
3. Connect and read timeouts; a 5xx, a connection error, a timeout or a body cut off
   before its declared length is tried again (``SLUICE_SOURCE_ATTEMPTS``, backoff
   doubling from ``SLUICE_SOURCE_BACKOFF_SECONDS``); a 4xx is not (it will not heal).
4. The sha256 of the body is compared with the last stored one by the caller.

JSON accepted (docs/SOURCES.md): an array of objects, or an object holding the array
under ``"rows"`` (module sources) or ``"units"`` (the unit directory). Each object's
keys are the target's CSV column names; values are strings, numbers, booleans or null
(null or a missing key is an empty cell). It becomes the CSV the upload path reads,
so every row check (and its row numbers: item N is row N) is the upload's.
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
from django.conf import settings

from pipelines.redaction import redact_urls

CHUNK_BYTES = 256 * 1024
UNIT_COLUMNS = ("unit_id", "name", "kind", "parent_id")


class FetchError(Exception):
    """The source could not be read; ``message`` says why in words an operator can act on."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class _Transient(Exception):
    """Worth another try (5xx, connection, timeout, truncated body)."""


@dataclass(frozen=True)
class Fetched:
    unchanged: bool
    path: Path | None = None  # the raw body, when not unchanged
    sha256: str = ""
    size: int = 0
    is_json: bool = False
    etag: str = ""
    last_modified: str = ""
    http_status: int | None = None
    attempts: int = 1
    name: str = ""  # the file name the response goes by (URL/path basename)


def is_url(location: str) -> bool:
    return location.startswith(("http://", "https://"))


def check_path(location: str) -> Path:
    """An allowed file path (under ``SLUICE_SOURCE_PATH_ROOTS``), resolved; else FetchError."""
    path = Path(location)
    if not path.is_absolute():
        raise FetchError(f"{location!r} is neither an http(s) URL nor an absolute path", "bad_location")
    resolved = path.resolve()
    roots = [Path(r).resolve() for r in settings.SLUICE_SOURCE_PATH_ROOTS]
    if not any(resolved.is_relative_to(root) for root in roots):
        allowed = ", ".join(str(r) for r in roots) or "(none: SLUICE_SOURCE_PATH_ROOTS is empty)"
        raise FetchError(f"{location} is outside the folders sources may read: {allowed}", "path_not_allowed")
    return resolved


# Told the bytes read so far and the total (None when unknown) after every chunk; it may
# raise to stop (the job's cancel checkpoint).
OnChunk = Callable[[int, "int | None"], None]


def _copy_limited(chunks: Any, out: IO[bytes], digest: Any, max_bytes: int, *, total: int | None = None,
                  on_chunk: OnChunk | None = None) -> int:
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > max_bytes:
            raise FetchError(f"the response is larger than the limit of {max_bytes:,} bytes "
                             "(SLUICE_SOURCE_MAX_BYTES)", "too_large")
        digest.update(chunk)
        out.write(chunk)
        if on_chunk is not None:
            on_chunk(size, total)
    return size


def _looks_json(path: Path, content_type: str, name: str) -> bool:
    if "json" in content_type.lower() or name.lower().endswith(".json"):
        return True
    with open(path, "rb") as f:
        head = f.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head[:1] in (b"[", b"{")


def fetch_file(*, location: str, dest: Path, last_sha256: str, on_chunk: OnChunk | None = None) -> Fetched:
    src = check_path(location)
    if not src.is_file():
        raise FetchError(f"{location} does not exist or is not a file", "not_found")
    digest = hashlib.sha256()
    with open(src, "rb") as f, open(dest, "wb") as out:
        size = _copy_limited(iter(lambda: f.read(CHUNK_BYTES), b""), out, digest, settings.SLUICE_SOURCE_MAX_BYTES,
                             total=src.stat().st_size, on_chunk=on_chunk)
    sha = digest.hexdigest()
    if last_sha256 and sha == last_sha256:
        dest.unlink(missing_ok=True)
        return Fetched(unchanged=True, sha256=sha, size=size, name=src.name)
    return Fetched(unchanged=False, path=dest, sha256=sha, size=size, is_json=_looks_json(dest, "", src.name),
                   name=src.name)


def fetch_url(
    *, location: str, dest: Path, headers: dict[str, str], etag: str, last_modified: str,
    on_attempt: Callable[[int, str], None] | None = None, on_chunk: OnChunk | None = None,
) -> Fetched:
    """GET ``location`` into ``dest`` with the retries and limits of the module docstring."""
    request_headers = dict(headers)
    if etag:
        request_headers["If-None-Match"] = etag
    if last_modified:
        request_headers["If-Modified-Since"] = last_modified
    timeout = httpx.Timeout(settings.SLUICE_SOURCE_READ_TIMEOUT, connect=settings.SLUICE_SOURCE_CONNECT_TIMEOUT)
    attempts = settings.SLUICE_SOURCE_ATTEMPTS
    shown = redact_urls(location)
    name = Path(httpx.URL(location).path).name or "response"
    last_problem = ""
    with httpx.Client(timeout=timeout, follow_redirects=True, max_redirects=5) as client:
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                if on_attempt is not None:
                    on_attempt(attempt, last_problem)
                time.sleep(settings.SLUICE_SOURCE_BACKOFF_SECONDS * 2 ** (attempt - 2))
            try:
                return _get_once(client, location, dest, request_headers, attempt=attempt, name=name,
                                 on_chunk=on_chunk)
            except _Transient as exc:
                last_problem = str(exc)
    dest.unlink(missing_ok=True)
    raise FetchError(f"{shown}: {last_problem} (gave up after {attempts} attempt{'s' if attempts > 1 else ''})",
                     "unreachable")


def _get_once(
    client: httpx.Client, location: str, dest: Path, headers: dict[str, str], *, attempt: int, name: str,
    on_chunk: OnChunk | None,
) -> Fetched:
    max_bytes = settings.SLUICE_SOURCE_MAX_BYTES
    try:
        with client.stream("GET", location, headers=headers) as response:
            status = response.status_code
            if status == 304:
                return Fetched(unchanged=True, http_status=304, attempts=attempt, name=name,
                               etag=response.headers.get("etag", ""),
                               last_modified=response.headers.get("last-modified", ""))
            if status >= 500:
                raise _Transient(f"HTTP {status} {response.reason_phrase}")
            if status >= 400:
                raise FetchError(f"{redact_urls(location)}: HTTP {status} {response.reason_phrase}"
                                 + (" (check the source's auth secret)" if status in (401, 403) else ""),
                                 f"http_{status}")
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise FetchError(f"the response declares {int(declared):,} bytes, over the limit of {max_bytes:,} "
                                 "(SLUICE_SOURCE_MAX_BYTES)", "too_large")
            digest = hashlib.sha256()
            total = int(declared) if declared and declared.isdigit() else None
            with open(dest, "wb") as out:
                # As the bytes arrive (a chunk size would hold them back until it filled):
                # progress and the cancel check see a slow download move.
                size = _copy_limited(response.iter_bytes(), out, digest, max_bytes, total=total,
                                     on_chunk=on_chunk)
            return Fetched(
                unchanged=False, path=dest, sha256=digest.hexdigest(), size=size, http_status=status,
                is_json=_looks_json(dest, response.headers.get("content-type", ""), name),
                etag=response.headers.get("etag", ""), last_modified=response.headers.get("last-modified", ""),
                attempts=attempt, name=name,
            )
    except httpx.TimeoutException as exc:
        kind = "connecting" if isinstance(exc, httpx.ConnectTimeout) else "waiting for data"
        raise _Transient(f"timed out {kind} (connect {settings.SLUICE_SOURCE_CONNECT_TIMEOUT:g} s, "
                         f"read {settings.SLUICE_SOURCE_READ_TIMEOUT:g} s)") from None
    except httpx.RemoteProtocolError as exc:
        # Content-Length not reached, or a chunked body not terminated: the body is cut off.
        raise _Transient(f"the response was cut off before its end ({exc})") from None
    except httpx.TransportError as exc:
        raise _Transient(f"connection failed: {type(exc).__name__}: {exc}") from None


# --- JSON → CSV ----------------------------------------------------------------------------------


def _cell(value: Any, *, item: int, key: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise FetchError(f"row {item}, {key}: a value must be a string, number, boolean or null, not "
                     f"{type(value).__name__}", "bad_json")


def json_to_csv(*, src: Path, dest: Path, columns: Sequence[str], list_key: str,
                aliases: dict[str, str] | None = None) -> int:
    """Write the CSV of a JSON response (shape in the module docstring); returns the row count.

    The whole document is parsed at once: its size is bounded by SLUICE_SOURCE_MAX_BYTES.
    """
    try:
        with open(src, encoding="utf-8-sig") as f:
            data = json.load(f)
    except UnicodeDecodeError as exc:
        raise FetchError(f"the JSON is not valid UTF-8 (byte {exc.start})", "bad_json") from None
    except json.JSONDecodeError as exc:
        raise FetchError(f"the response is not valid JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}",
                         "bad_json") from None
    items = data.get(list_key) if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise FetchError(f'JSON must be an array of objects or {{"{list_key}": [...]}}', "bad_json")
    aliases = aliases or {}
    known = set(columns)
    with open(dest, "w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(columns)
        for index, item in enumerate(items, start=1):
            if not isinstance(item, dict):
                raise FetchError(f"row {index}: expected an object, got {type(item).__name__}", "bad_json")
            row: dict[str, Any] = {aliases.get(str(k), str(k)): v for k, v in item.items()}
            unknown = sorted(set(row) - known)
            if unknown:
                raise FetchError(f"row {index}: unknown field(s) {', '.join(unknown)}; known: {', '.join(columns)}",
                                 "bad_json")
            writer.writerow([_cell(row.get(c), item=index, key=c) for c in columns])
    return len(items)
