"""Credentials out of URLs wherever they are shown or logged.

A URL may carry a secret in its userinfo (``redis://:pw@host``, ``https://user:pw@dir``)
or in a query parameter (``?token=…``). :func:`redact_urls` masks both in any text, so
job messages, log lines and Django's debug page still name the server without the secret.
"""

from __future__ import annotations

import re

from django.utils.safestring import SafeString, mark_safe
from django.views.debug import ExceptionReporter

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


class RedactingExceptionReporter(ExceptionReporter):
    """Django's debug page and error e-mails, with credentials in URLs masked.

    Django hides settings *named* like secrets (``…PASSWORD``, ``…KEY``), but
    ``DATABASE_URL``, ``REDIS_URL`` or ``CELERY_BROKER_URL`` carry one in their value, and
    so may an exception message or a local variable: the rendered page is masked whole.
    """

    # The masks add no markup: the page stays as safe as Django rendered it.
    def get_traceback_html(self) -> SafeString:
        return mark_safe(redact_urls(super().get_traceback_html()))  # noqa: S308

    def get_traceback_text(self) -> SafeString:
        return mark_safe(redact_urls(super().get_traceback_text()))  # noqa: S308
