"""Loaded first (``-p tests.environment`` in pyproject): the environment the test run needs.

Settings refuse to start without ``DJANGO_SECRET_KEY`` unless DEBUG is on; the suite
runs with DEBUG off like production, so it brings its own throwaway key (inherited by
the worker and server subprocesses it starts).
"""

from __future__ import annotations

import os
import secrets

os.environ.setdefault("DJANGO_SECRET_KEY", "test-" + secrets.token_urlsafe(40))
