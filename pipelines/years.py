"""The one home of the rules for a year's number (pipelines carry a ``year``).

Three ranges, each for one purpose; every check and every API field (so the published
schema) takes its bounds from here:

- ``YEAR_MIN``..``YEAR_MAX``: a reporting year that can be created (API, services,
  admin, a source's fixed year): :func:`validate_year`.
- ``YEAR_REF_MIN``..``YEAR_REF_MAX``: a year named to act on one that must already exist
  (starting a pipeline, the console's filter): wider, since the service answers 404 for
  a year that does not exist.
- ``YEAR_FILTER_MIN``..``YEAR_FILTER_MAX``: a year as an API list filter: any four-digit
  number, so a filter on a year without data is an empty list, not a 400.
"""

from __future__ import annotations

YEAR_MIN, YEAR_MAX = 1990, 2100
YEAR_REF_MIN, YEAR_REF_MAX = 1900, 2999
YEAR_FILTER_MIN, YEAR_FILTER_MAX = 0, 9999


def validate_year(year: int) -> int:
    """``year`` itself, or ``ValueError`` naming the allowed range."""
    if not YEAR_MIN <= year <= YEAR_MAX:
        raise ValueError(f"year must be between {YEAR_MIN} and {YEAR_MAX}")
    return year
