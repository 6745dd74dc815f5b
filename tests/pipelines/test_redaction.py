"""Credentials in URLs are masked wherever Sluice shows or logs them."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from pipelines.logging import StructuredFormatter
from pipelines.redaction import redact_urls


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://sluice:pw@db:5432/sluice", "postgresql://***@db:5432/sluice"),
        ("redis://:pw@redis:6379/0", "redis://***@redis:6379/0"),
        ("from https://u:p@ss@dir.example.org/units", "from https://***@dir.example.org/units"),
        ("https://dir.example.org/u?x=1&api_key=k1&access_token=t2",
         "https://dir.example.org/u?x=1&api_key=***&access_token=***"),
        # Nothing to hide: left alone.
        ("https://dir.example.org/units.json?page=2", "https://dir.example.org/units.json?page=2"),
        ("mail ops@example.org about http://x/y@z", "mail ops@example.org about http://x/y@z"),
    ],
)
def test_redact_urls(text: str, expected: str) -> None:
    assert redact_urls(text) == expected


def test_log_lines_mask_urls_in_message_and_traceback() -> None:
    logger = logging.getLogger("sluice.test.redaction")
    try:
        raise ConnectionError("cannot reach redis://:broker-pw-1@redis:6379/0")
    except ConnectionError:
        exc_info = sys.exc_info()
    record = logger.makeRecord(
        logger.name, logging.ERROR, __file__, 1, "fetch %s failed", ("https://svc:dir-pw-2@dir/units",), exc_info
    )
    line = StructuredFormatter().format(record)
    data = json.loads(line)
    assert data["msg"] == "fetch https://***@dir/units failed"
    assert "redis://***@redis:6379/0" in data["exc"]
    assert "broker-pw-1" not in line and "dir-pw-2" not in line
