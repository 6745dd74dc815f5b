"""Django's error reporter with credentials in URLs masked (``DEFAULT_EXCEPTION_REPORTER``)."""

from __future__ import annotations

from django.utils.safestring import SafeString, mark_safe
from django.views.debug import ExceptionReporter

from pipelines.redaction import redact_urls


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
