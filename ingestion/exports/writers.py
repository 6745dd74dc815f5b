"""The two file formats of a year export, both written row by row into a local scratch file.

- CSV (the ``csv`` module): one table; the ``record`` column says what a row is
  (``module_total``, ``unit_total``, ``entry``), the other columns are the union of
  both sections' (a total leaves the entry columns empty).
- XLSX (XlsxWriter, ``constant_memory``; ``ingestion.exports.xlsx``): a "Totals" sheet and a "Data entries" sheet
  (continued on "Data entries 2", … past a sheet's 1,048,576 rows). In
  ``constant_memory`` mode each row is flushed to disk as soon as the next one starts,
  so memory stays flat whatever the row count (measured in docs/BENCHMARKS.md).

Every text cell goes through ``pipelines.formula_safety.formula_safe`` (the one helper
errors.csv uses too); numbers stay numbers. XlsxWriter's own string conversions
(formulas, numbers, URLs) are off: a text cell is written as text, never as a formula.
"""

from __future__ import annotations

import csv
import importlib
import io
from collections.abc import Sequence
from typing import IO, Any, Protocol

from pipelines.formula_safety import formula_safe

TOTALS = "totals"
ENTRIES = "entries"

# Each section's columns, in order (the XLSX sheets' headers; the CSV's union below).
SECTION_COLUMNS: dict[str, tuple[str, ...]] = {
    TOTALS: ("record", "year", "module", "unit_id", "kg_co2e", "rows_without_factor", "computed_at"),
    ENTRIES: ("record", "year", "module", "det", "unit_id", "category", "activity", "modifier",
              "kg_co2e_per_unit", "kg_co2e", "source_row", "comment"),
}
CSV_COLUMNS: tuple[str, ...] = tuple(dict.fromkeys(c for cols in SECTION_COLUMNS.values() for c in cols))
SHEET_TITLES = {TOTALS: "Totals", ENTRIES: "Data entries"}
XLSX_MAX_ROWS = 1_048_576  # per sheet, header included (Excel's limit)


def cell(value: Any) -> Any:
    """A number stays a number (negative ones too); any other value becomes formula-safe text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return formula_safe(value)
    if isinstance(value, int | float):
        return value
    return formula_safe(value)


class ExportWriter(Protocol):
    def section(self, name: str) -> None:
        """Start a section (its columns are ``SECTION_COLUMNS[name]``)."""

    def row(self, values: Sequence[Any]) -> None:
        """One row of the current section, in its columns' order."""

    def close(self) -> None:
        """Finish the file (the scratch file then holds all of it)."""


class CsvExportWriter:
    def __init__(self, out: IO[bytes]) -> None:
        # UTF-8 with a BOM: spreadsheet applications then read accents right.
        self._text = io.TextIOWrapper(out, encoding="utf-8-sig", newline="", write_through=False)
        self._csv = csv.writer(self._text, lineterminator="\r\n")
        self._csv.writerow(CSV_COLUMNS)
        self._positions: list[int] = []

    def section(self, name: str) -> None:
        index = {c: i for i, c in enumerate(CSV_COLUMNS)}
        self._positions = [index[c] for c in SECTION_COLUMNS[name]]

    def row(self, values: Sequence[Any]) -> None:
        out: list[Any] = [""] * len(CSV_COLUMNS)
        for pos, value in zip(self._positions, values, strict=True):
            out[pos] = cell(value)
        self._csv.writerow(out)

    def close(self) -> None:
        self._text.flush()
        self._text.detach()  # leave the underlying scratch file open for the caller


def writer_for(fmt: str, out: IO[bytes]) -> ExportWriter:
    if fmt == "xlsx":
        # Loaded on the first XLSX export, not at import: every process imports the job
        # handlers at start (web, beat, each worker, manage.py), and only the workers that
        # write an XLSX need XlsxWriter in memory.
        xlsx: Any = importlib.import_module("ingestion.exports.xlsx")
        return xlsx.XlsxExportWriter(out)  # type: ignore[no-any-return]
    return CsvExportWriter(out)
