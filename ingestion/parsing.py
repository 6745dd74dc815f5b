"""Reading uploaded CSV files: a streaming pre-check at upload time (while the file is
written to storage), and the record stream that feeds the staging COPY at ingest time
(read back from storage). Memory stays bounded whatever the file size: files are read in
chunks, lines are capped, and nothing keeps rows. Files are named in
``default_storage`` (docs/STORAGE.md), never by a local path.

Encodings: UTF-8 with or without BOM, ``,`` or ``;`` delimiters;
anything else is refused with a message naming the line.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any, cast

from django.core.files.base import File
from django.core.files.storage import default_storage

from ingestion.modules import Column
from ingestion.storage import StorageWriteError
from pipelines.errors import DomainError

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024
# A physical line longer than this is refused instead of being buffered whole (a 1 GB
# file without a newline must not become a 1 GB string).
MAX_LINE_CHARS = 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024
DELIMITERS = (",", ";")
# First bytes of formats people upload by mistake (xlsx/zip, xls, pdf, gzip).
BINARY_SIGNATURES = {
    b"PK\x03\x04": "a ZIP archive or Excel workbook (.xlsx)",
    b"\xd0\xcf\x11\xe0": "an Excel 97-2003 workbook (.xls)",
    b"%PDF": "a PDF document",
    b"\x1f\x8b": "a gzip archive",
}
CSV_EXTENSIONS = (".csv", ".txt")
UTF8_BOM = codecs.BOM_UTF8


class FileRejected(DomainError):
    """The file as a whole is unusable; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, code: str, status: int = 400, line: int | None = None) -> None:
        super().__init__(message, code, status)
        self.line = line


@dataclass(frozen=True)
class HeaderInfo:
    columns: tuple[str, ...]
    delimiter: str
    bom: bool


@dataclass(frozen=True)
class ScanResult:
    sha256: str
    size: int
    line_count: int
    header: HeaderInfo
    name: str = ""  # as stored (default_storage)


def _line_of(prefix_lines: int, data: bytes, pos: int) -> int:
    return prefix_lines + data[: max(pos, 0)].count(b"\n") + 1


def parse_header(raw: bytes) -> HeaderInfo:
    """Decode and split the header line, choosing the delimiter that yields more columns."""
    bom = raw.startswith(UTF8_BOM)
    if bom:
        raw = raw[len(UTF8_BOM) :]
    try:
        text = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise FileRejected(
            f"line 1: not valid UTF-8 (byte 0x{raw[exc.start]:02x}); save the file as UTF-8", "bad_encoding"
        ) from None
    if not text.strip():
        raise FileRejected("line 1: the header is empty; the first line must name the columns", "bad_header", line=1)
    best: tuple[str, ...] = ()
    best_delim = ","
    for delim in DELIMITERS:
        cols = tuple(c.strip().lower() for c in next(csv.reader([text], delimiter=delim)))
        if len(cols) > len(best):
            best, best_delim = cols, delim
    if len(best) == 1 and "\t" in text:
        raise FileRejected(
            "line 1: the file looks tab-separated; use ',' or ';' as the delimiter", "bad_delimiter", line=1
        )
    return HeaderInfo(columns=best, delimiter=best_delim, bom=bom)


def header_problems(header: HeaderInfo, schema: tuple[Column, ...]) -> list[str]:
    """What is wrong with a header for a schema (empty list: it fits)."""
    known = {c.name for c in schema}
    problems = []
    missing = [c.name for c in schema if c.required and c.name not in header.columns]
    if missing:
        problems.append(f"missing required column(s): {', '.join(missing)}")
    unknown = [c for c in header.columns if c not in known]
    if unknown:
        shown = ", ".join(repr(c) for c in unknown[:10])
        problems.append(f"unknown column(s): {shown} (expected: {', '.join(c.name for c in schema)})")
    seen: set[str] = set()
    dupes = sorted({c for c in header.columns if c in seen or seen.add(c)})  # type: ignore[func-returns-value]
    if dupes:
        problems.append(f"duplicate column(s): {', '.join(dupes)}")
    return problems


class _Scan:
    """The upload-time checks, fed the file's bytes chunk by chunk as they are stored."""

    def __init__(self, *, filename: str, max_bytes: int) -> None:
        if not filename.lower().endswith(CSV_EXTENSIONS):
            raise FileRejected(
                f"{filename!r} is not a CSV file: upload a .csv file (UTF-8, ',' or ';' separated)", "not_csv", 415
            )
        self.filename = filename
        self.max_bytes = max_bytes
        self.digest = hashlib.sha256()
        self.decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self.size = 0
        self.lines = 0
        self.last_byte = b"\n"
        self.header_buf = b""
        self.header: HeaderInfo | None = None

    def feed(self, chunk: bytes) -> None:
        if self.size == 0:
            _check_signature(chunk, self.filename)
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise FileRejected(f"the file is larger than the limit of {self.max_bytes:,} bytes", "too_large", 413)
        self.digest.update(chunk)
        lines = self.lines
        nul = chunk.find(b"\x00")
        if nul >= 0:
            raise FileRejected(
                f"line {_line_of(lines, chunk, nul)}: NUL byte found; this is not a UTF-8 text file",
                "bad_encoding", line=_line_of(lines, chunk, nul),
            )
        try:
            self.decoder.decode(chunk, final=False)
        except UnicodeDecodeError as exc:
            line = _line_of(lines, chunk, exc.start)
            bad = chunk[exc.start] if 0 <= exc.start < len(chunk) else 0
            raise FileRejected(
                f"line {line}: not valid UTF-8 (byte 0x{bad:02x}); the file may be Latin-1 or "
                "Windows-1252 — save it as UTF-8", "bad_encoding", line=line,
            ) from None
        if self.header is None:
            self.header_buf += chunk[: MAX_HEADER_BYTES + 1]
            end = self.header_buf.find(b"\n")
            if end >= 0:
                self.header = parse_header(self.header_buf[: end + 1])
            elif len(self.header_buf) > MAX_HEADER_BYTES:
                raise FileRejected("line 1: the header line is longer than 64 KB", "bad_header", line=1)
        self.lines += chunk.count(b"\n")
        self.last_byte = chunk[-1:]

    def finish(self, name: str) -> ScanResult:
        lines = self.lines
        try:
            self.decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise FileRejected(
                f"line {lines + 1}: the file ends in the middle of a UTF-8 character", "bad_encoding", line=lines + 1
            ) from None
        if self.size == 0:
            raise FileRejected("the file is empty: it needs a header line and at least one row", "empty_file")
        header = self.header if self.header is not None else parse_header(self.header_buf)
        if self.last_byte != b"\n":
            lines += 1
        return ScanResult(sha256=self.digest.hexdigest(), size=self.size, line_count=max(lines - 1, 0),
                          header=header, name=name)


class _ScanningReader(io.RawIOBase):
    """``src`` read through a :class:`_Scan`: the storage backend pulls the bytes, and
    every chunk is checked on its way (so a refused file stops the write)."""

    def __init__(self, src: IO[bytes], scan: _Scan) -> None:
        super().__init__()
        self.src = src
        self.scan = scan

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self.src.read(len(buffer))
        if not chunk:
            return 0
        self.scan.feed(chunk)
        buffer[: len(chunk)] = chunk
        return len(chunk)


class _StoredFile(File):
    DEFAULT_CHUNK_SIZE = CHUNK_BYTES  # what FileSystemStorage writes per call


def scan_upload(src: IO[bytes], name: str, *, filename: str, max_bytes: int) -> ScanResult:
    """Write ``src`` to storage as ``name`` in chunks, fingerprinting and checking it on the way.

    1. Refuse non-CSV files by extension or by their first bytes (415).
    2. Hash (sha256), count bytes (413 above ``max_bytes``) and lines.
    3. Decode incrementally as strict UTF-8 and refuse NUL bytes, naming the line.
    4. Parse the header line (returned; checked against the schema by the caller).
    The bytes go to ``default_storage`` as they are read (a file on disk, or a
    multipart upload to S3): nothing holds the whole file. The stored object is
    removed if anything is refused; a storage failure raises ``StorageWriteError``
    (answered 503). ``ScanResult.name`` is the name it is stored as.
    """
    scan = _Scan(filename=filename, max_bytes=max_bytes)
    stored = ""
    try:
        try:
            stored = default_storage.save(name, _StoredFile(cast(IO[bytes], _ScanningReader(src, scan)), name=name))
        except StorageWriteError:
            raise
        except OSError as exc:  # the filesystem backend: disk full, permissions…
            raise StorageWriteError(f"{name}: the file could not be written to storage ({exc})") from exc
        return scan.finish(stored)
    except BaseException:
        delete_quietly(stored or name)
        raise


def open_stored(name: str) -> IO[bytes]:
    """A stored file opened for a streamed binary read, whatever the backend (a local
    file, or an S3 object's body read as it arrives); FileNotFoundError if it is gone."""
    return cast(IO[bytes], default_storage.open(name, "rb").file)


def delete_quietly(name: str) -> None:
    """Remove a stored object that is being abandoned; a failure only leaves an orphan."""
    try:
        default_storage.delete(name)
    except Exception:
        logger.warning("could not remove the abandoned stored file %s", name, exc_info=True)


def _check_signature(first: bytes, filename: str) -> None:
    if first.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise FileRejected("line 1: the file is UTF-16; save it as UTF-8", "bad_encoding", line=1)
    for signature, what in BINARY_SIGNATURES.items():
        if first.startswith(signature):
            raise FileRejected(f"{filename!r} is {what}, not a CSV file; export it as CSV (UTF-8)", "not_csv", 415)


# --- the ingest-time record stream ---------------------------------------------------------


class _LineReader:
    """Physical lines of a text stream, refusing over-long ones; counts lines read."""

    def __init__(self, text: IO[str]) -> None:
        self.text = text
        self.line_no = 0

    def __iter__(self) -> Iterator[str]:
        readline = self.text.readline
        while True:
            line = readline(MAX_LINE_CHARS)
            if not line:
                return
            self.line_no += 1
            if len(line) >= MAX_LINE_CHARS and not line.endswith("\n"):
                raise FileRejected(
                    f"line {self.line_no}: longer than {MAX_LINE_CHARS:,} characters", "line_too_long",
                    line=self.line_no,
                )
            if "\x00" in line:
                raise FileRejected(f"line {self.line_no}: NUL byte found", "bad_encoding", line=self.line_no)
            yield line


@dataclass
class RecordStream:
    """Records of a CSV file after its header, with the physical lines each spans.

    Each item is ``(row, last_row, record)``: ``row`` is the record's first physical
    line minus one (the header), so row N is the file's line N + 1 whatever came
    before; ``last_row`` is its last line minus one, larger than ``row`` only when a
    quoted field runs over line breaks (usually an unbalanced quote swallowing the
    lines after it). File-level problems raise :class:`FileRejected` naming the line.
    """

    name: str  # in default_storage
    _raw: Any = field(default=None, init=False, repr=False)

    def close(self) -> None:
        """Release the stored file (also when the records were never read)."""
        if self._raw is not None:
            self._raw.close()

    def header_and_records(self) -> tuple[HeaderInfo, Iterator[tuple[int, int, list[str]]]]:
        # Streamed from the storage backend (a local file, or an S3 body read as it comes).
        raw = self._raw = open_stored(self.name)  # closed by records() or close()
        head = raw.read(MAX_HEADER_BYTES + 1)
        end = head.find(b"\n")
        header = parse_header(head if end < 0 else head[: end + 1])
        raw.seek(len(UTF8_BOM) if header.bom else 0)
        text = io.TextIOWrapper(raw, encoding="utf-8", errors="strict", newline="")
        lines = _LineReader(text)
        reader = csv.reader(lines, delimiter=header.delimiter)

        def records() -> Iterator[tuple[int, int, list[str]]]:
            try:
                next(reader)  # the header
                header_lines = lines.line_no
                previous = header_lines
                for record in reader:
                    yield previous + 1 - header_lines, lines.line_no - header_lines, record
                    previous = lines.line_no
            except csv.Error as exc:
                raise FileRejected(f"line {lines.line_no}: {exc}", "bad_csv", line=lines.line_no) from None
            except UnicodeDecodeError as exc:
                raise FileRejected(
                    f"near line {lines.line_no + 1}: not valid UTF-8 (byte 0x{exc.object[exc.start]:02x}); "
                    "save the file as UTF-8", "bad_encoding", line=lines.line_no + 1,
                ) from None
            finally:
                text.close()

        return header, records()
