"""The XLSX writer of a year export (see ``ingestion.exports.writers`` for both formats).

XlsxWriter in ``constant_memory`` mode: each row is flushed to a temporary file as soon
as the next one starts and no shared-string table is kept, so memory stays flat
whatever the row count. Its string conversions (formulas, numbers, URLs) are off: a
text cell is written as text, never as a formula.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import IO, Any

import xlsxwriter

from ingestion.exports.writers import SECTION_COLUMNS, SHEET_TITLES, XLSX_MAX_ROWS, cell


class XlsxExportWriter:
    def __init__(self, out: IO[bytes]) -> None:
        self._book = xlsxwriter.Workbook(out, {
            "constant_memory": True,
            "strings_to_formulas": False,
            "strings_to_numbers": False,
            "strings_to_urls": False,
        })
        self._bold = self._book.add_format({"bold": True})
        self._sheet: Any = None
        self._name = ""
        self._part = 0
        self._row = 0

    def _new_sheet(self) -> None:
        self._part += 1
        title = SHEET_TITLES[self._name] + (f" {self._part}" if self._part > 1 else "")
        self._sheet = self._book.add_worksheet(title)
        self._sheet.write_row(0, 0, SECTION_COLUMNS[self._name], self._bold)
        self._row = 1

    def section(self, name: str) -> None:
        self._name, self._part = name, 0
        self._new_sheet()

    def row(self, values: Sequence[Any]) -> None:
        if self._row >= XLSX_MAX_ROWS:
            self._new_sheet()
        sheet, r = self._sheet, self._row
        for c, value in enumerate(values):
            v = cell(value)
            if isinstance(v, str):
                if v:
                    sheet.write_string(r, c, v)
            else:
                sheet.write_number(r, c, v)
        self._row += 1

    def close(self) -> None:
        self._book.close()
