"""Scheduled sources (issue 14): recurring ingestion from an HTTP(S) endpoint or a file.

- ``fetch``: download a source to the upload store (limits, timeouts, retries,
  conditional requests, sha256), and JSON → CSV conversion.
- ``schedule``: the django-celery-beat side: periodic tasks, next run, schedule in words.
- ``services`` / ``selectors``: writes (create, update, run, pause) and reads (cards).
- ``api``: ``/api/v1/sources/…``.

A run is an ordinary pipeline: ``source_fetch`` → the ingest (or unit sync) it feeds →
recalcs → aggregation, so progress, history, cancel, retry and alerts apply unchanged.
"""
