"""Formula-safe cells for every CSV/XLSX the platform writes (errors.csv, year exports).

OWASP "CSV injection": a spreadsheet application evaluates a cell that starts with
``=``, ``+``, ``-`` or ``@`` (and, in some, a tab or carriage return before one), so a
value someone typed into an uploaded file could run as a formula on an operator's
machine. Text cells get a leading apostrophe; numbers are written as numbers.
"""

from __future__ import annotations

from typing import Any

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def formula_safe(value: Any) -> str:
    """The text of ``value`` with a leading quote when a spreadsheet would evaluate it."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text
