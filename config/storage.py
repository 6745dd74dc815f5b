"""Stored files: the settings entry of the S3 backend.

Every stored file (uploads, scheduled sources' responses) is written and read through
``django.core.files.storage.default_storage``, never by a local path outside the
filesystem backend; ``STORAGES["default"]`` (``config/settings.py``) picks the backend:
Django's ``FileSystemStorage`` under ``SLUICE_MEDIA_ROOT`` by default, or
``config.s3.S3Storage`` (S3 and S3-compatible stores) with ``SLUICE_STORAGE=s3``. This
module imports no boto3, so a filesystem deployment never loads it (docs/STORAGE.md);
the storage errors are ``ingestion.storage``'s.
"""

from __future__ import annotations

from typing import Any


def s3_storage(
    *, bucket: str, endpoint_url: str, connect_timeout: float, read_timeout: float, max_attempts: int,
    prefix: str = "", region: str = "", addressing_style: str = "",
) -> dict[str, Any]:
    """The ``STORAGES["default"]`` entry of the S3 backend (``config/settings.py`` builds
    it from ``SLUICE_S3_*``, where the defaults are; the storage tests from their own
    server). An empty string leaves that option to boto3 (AWS's endpoint, region…)."""
    return {
        "BACKEND": "config.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": bucket,
            "location": prefix,
            "endpoint_url": endpoint_url or None,
            "region_name": region or None,
            "addressing_style": addressing_style or None,
            "file_overwrite": True,  # names are unique (a uuid each): no existence check per write
            "querystring_auth": True,
            "connect_timeout": connect_timeout,
            "read_timeout": read_timeout,
            "max_attempts": max_attempts,
        },
    }
