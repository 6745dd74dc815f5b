"""The one rule for a reporting year's number (pipelines carry a ``year``).

Creating a year (API, services, admin) checks it here; the API's serializers take their
``min_value``/``max_value`` from the same constants, so the published schema says the
same thing as the check.
"""

from __future__ import annotations

YEAR_MIN, YEAR_MAX = 1990, 2100


def validate_year(year: int) -> int:
    """``year`` itself, or ``ValueError`` naming the allowed range."""
    if not YEAR_MIN <= year <= YEAR_MAX:
        raise ValueError(f"year must be between {YEAR_MIN} and {YEAR_MAX}")
    return year
