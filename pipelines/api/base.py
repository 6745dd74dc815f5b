"""The base of every API view: auth order, token throttle, viewer permission."""

from __future__ import annotations

from typing import Any

from django.utils.dateparse import parse_datetime
from rest_framework.authentication import SessionAuthentication, TokenAuthentication
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.views import APIView

from backoffice.api_auth import TokenRateThrottle
from pipelines.api.permissions import CanView


class ApiView(APIView):
    # Token first: its ``WWW-Authenticate`` header makes anonymous calls 401 (not 403),
    # and a request carrying a token is never silently treated as a session request.
    authentication_classes = [TokenAuthentication, SessionAuthentication]
    throttle_classes = [TokenRateThrottle]
    permission_classes = [CanView]


class NewestFirstCursor(CursorPagination):
    """Keyset pagination on the ``pipeline_newest`` / ``job_newest`` indexes.

    No ``COUNT(*)``, and page 1,000 costs what page 1 costs: the cursor is a position
    in the index, not an OFFSET (measured in ``bench/api_latency.py``).
    """

    ordering = ("-created_at", "-id")
    page_size = 25
    page_size_query_param = "page_size"
    max_page_size = 100

    def decode_cursor(self, request: Request) -> Any:
        # DRF answers a malformed cursor with 404; it is a bad parameter (400).
        try:
            cursor = super().decode_cursor(request)
        except NotFound:
            cursor = None
            valid = False
        else:
            # DRF checks only the cursor's encoding; a position that is not a timestamp
            # (base64 of "p=junk") would reach the ``created_at <`` filter and fail there.
            valid = cursor is None or cursor.position is None or _is_timestamp(str(cursor.position))
        if not valid:
            raise ValidationError({self.cursor_query_param: ["Invalid cursor."]}, "invalid_cursor")
        return cursor


def _is_timestamp(value: str) -> bool:
    try:
        return parse_datetime(value) is not None
    except ValueError:  # well formed but out of range ("2025-13-45")
        return False
