"""Credentials out of URLs wherever they are shown or logged.

A URL may carry a secret in its userinfo (``redis://:pw@host``, ``https://user:pw@dir``)
or in a query parameter (``?token=…``). :func:`redact_urls` masks both in any text, so
job messages, log lines and Django's debug page still name the server without the secret.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
# scheme://userinfo@ — userinfo is everything up to the last "@" before the host part.
_USERINFO = re.compile(r"(?P<scheme>\b[a-z][a-z0-9+.-]*://)(?P<userinfo>[^/?#\s]*)@", re.IGNORECASE)
_SECRET_PARAM = re.compile(
    r"(?P<key>[?&;](?:[a-z0-9_.-]*(?:token|secret|password|passwd|pwd|api[_-]?key|apikey|signature|sig|auth"
    r"|access[_-]?key|credential)[a-z0-9_.-]*)=)(?P<value>[^&;#\s\"'<>]+)",
    re.IGNORECASE,
)


def redact_urls(text: str) -> str:
    """``text`` with the userinfo and secret-looking query values of every URL masked."""
    if "://" not in text and "=" not in text:
        return text
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    return _SECRET_PARAM.sub(lambda m: f"{m['key']}{MASK}", text)


def redact_values(value: Any) -> Any:
    """``value`` (JSON-like: params, meta) with :func:`redact_urls` applied to every string."""
    if isinstance(value, str):
        return redact_urls(value)
    if isinstance(value, dict):
        return {k: redact_values(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_values(v) for v in value]
    return value
