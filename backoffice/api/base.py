"""The base of every API view: auth order, token throttle, viewer permission."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from rest_framework.authentication import SessionAuthentication, TokenAuthentication
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import Cursor, CursorPagination
from rest_framework.request import Request
from rest_framework.utils.urls import replace_query_param
from rest_framework.views import APIView

from backoffice.api.auth import TokenRateThrottle
from backoffice.api.permissions import CanView


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

    # The cursor: ``<offset><f|b><created_at as microseconds since 1970>`` ("0f1765000000000000").
    # The document carries this exact pattern, and every string it matches is a cursor
    # the view accepts (issue 18): an opaque base64 blob could not say which are valid.
    CURSOR_PATTERN = r"^[0-9]{1,4}[fb][0-9]{0,17}$"
    _cursor_re = re.compile(CURSOR_PATTERN)
    _epoch = datetime(1970, 1, 1, tzinfo=UTC)

    def decode_cursor(self, request: Request) -> Cursor | None:
        encoded = request.query_params.get(self.cursor_query_param)
        if encoded is None:
            return None
        if not self._cursor_re.search(encoded):
            raise ValidationError({self.cursor_query_param: ["Invalid cursor."]}, "invalid_cursor")
        encoded = encoded.strip()
        offset, direction, micros = re.split("([fb])", encoded)
        position = str(self._epoch + timedelta(microseconds=int(micros))) if micros else None
        offset_value = min(int(offset), self.offset_cutoff)
        return Cursor(offset=offset_value, reverse=direction == "b", position=position)  # type: ignore[arg-type]

    def encode_cursor(self, cursor: Cursor) -> str:
        micros = ""
        if cursor.position is not None:
            micros = str((datetime.fromisoformat(str(cursor.position)) - self._epoch) // timedelta(microseconds=1))
        token = f"{cursor.offset}{'b' if cursor.reverse else 'f'}{micros}"
        return str(replace_query_param(str(self.base_url), self.cursor_query_param, token))

    def get_page_size(self, request: Request) -> int:
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        try:
            size = int(raw)
        except ValueError:
            size = 0
        if size < 1:
            raise ValidationError({self.page_size_query_param: ["A whole number of at least 1."]}, "invalid")
        return min(size, self.max_page_size)

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        return [
            {
                "name": self.cursor_query_param, "required": False, "in": "query",
                "description": "The position to read on from: copy it from `next`/`previous`.",
                "schema": {"type": "string", "pattern": self.CURSOR_PATTERN},
            },
            {
                "name": self.page_size_query_param, "required": False, "in": "query",
                "description": f"Items per page (default {self.page_size}; more than {self.max_page_size} "
                               f"reads as {self.max_page_size}).",
                "schema": {"type": "integer", "minimum": 1},
            },
        ]
