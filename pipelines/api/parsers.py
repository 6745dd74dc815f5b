"""The API's JSON parser: a body whose strings or keys hold U+0000 is a 400.

PostgreSQL's ``text`` and ``jsonb`` cannot store the NUL character, so such a value
would fail at the database (a 500, found by schemathesis in a year's module settings,
issue 18). The document says the same: request strings carry the pattern ``NUL_FREE``.
"""

from __future__ import annotations

from typing import Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

NUL_FREE = "^[^\\u0000]*$"  # the pattern of request strings in the OpenAPI document


def _nul_at(value: Any, path: str) -> str | None:
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if "\x00" in str(key):
                return where.replace("\x00", "\\u0000")
            if (found := _nul_at(item, where)) is not None:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            if (found := _nul_at(item, f"{path}[{index}]")) is not None:
                return found
    return None


class NulFreeJSONParser(JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        data = super().parse(stream, media_type, parser_context)
        if (where := _nul_at(data, "")) is not None:
            raise ParseError(f"JSON strings may not contain the NUL character (\\u0000): {where or 'the body'}.")
        return data
