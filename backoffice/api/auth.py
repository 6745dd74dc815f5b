"""API authentication helpers: token issue/revoke, token and login throttles, SSE auth.

Tokens are DRF's ``authtoken`` tokens (one per user). Issuing and revoking go through
:func:`token_issue` / :func:`token_revoke` so the management command and the admin
record the same operator action.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from asgiref.sync import sync_to_async
from axes.backends import AxesStandaloneBackend
from axes.helpers import get_cool_off
from django.conf import settings
from django.contrib.auth import get_user, get_user_model
from django.core.cache import caches
from django.core.cache.backends.base import InvalidCacheBackendError
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token
from rest_framework.authtoken.serializers import AuthTokenSerializer
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import SimpleRateThrottle

from backoffice.api.errors import ErrorSerializer, error_responses
from pipelines.models import OperatorActionKind
from pipelines.services import operator_action_record

TOKEN_THROTTLE_CACHE = "api_throttle"  # noqa: S105 - a cache alias, not a secret


def token_issue(*, username: str, actor: Any = None, rotate: bool = False) -> Token:
    """The user's token, created if missing; ``rotate`` replaces an existing one."""
    user = get_user_model().objects.get(username=username)
    with transaction.atomic():
        if rotate and Token.objects.filter(user=user).delete()[0]:
            operator_action_record(
                actor=actor, action=OperatorActionKind.REVOKE_TOKEN, target_type="user", target_id=str(user.pk)
            )
        token, created = Token.objects.get_or_create(user=user)
        if created:
            operator_action_record(
                actor=actor, action=OperatorActionKind.ISSUE_TOKEN, target_type="user", target_id=str(user.pk)
            )
    return token


def token_revoke(*, username: str, actor: Any = None) -> bool:
    user = get_user_model().objects.get(username=username)
    with transaction.atomic():
        deleted, _ = Token.objects.filter(user=user).delete()
        if deleted:
            operator_action_record(
                actor=actor, action=OperatorActionKind.REVOKE_TOKEN, target_type="user", target_id=str(user.pk)
            )
    return bool(deleted)


def _throttle_cache() -> Any:
    try:
        return caches[TOKEN_THROTTLE_CACHE]
    except InvalidCacheBackendError:
        return caches["default"]


class LoginRateThrottle(SimpleRateThrottle):
    """Password guesses on the token endpoint, per client IP (scope ``login``, 429 + Retry-After)."""

    scope = "login"

    def __init__(self) -> None:
        self.cache = _throttle_cache()
        super().__init__()

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class TokenObtainView(ObtainAuthToken):
    """``POST /api/v1/auth/token/`` username + password → the user's token (for curl)."""

    throttle_classes = [LoginRateThrottle]
    # Form fields too, for `curl -d username=… -d password=…` (docs/API.md). The document
    # offers JSON only: a generated client cannot tell one body in three media types apart
    # (openapi-python-client sends the form with a JSON content type).
    parser_classes = [FormParser, MultiPartParser, JSONParser]

    @extend_schema(
        auth=[],  # username + password in the body: a client needs no credentials to call it
        request={"application/json": AuthTokenSerializer},
        responses={
            200: inline_serializer("TokenOutput", {"token": serializers.CharField()}),
            # 401/403: a bad token or a session without its CSRF token sent along anyway.
            **error_responses(400, 415),
            400: OpenApiResponse(ErrorSerializer, description="Wrong username or password ({detail, code, errors})"),
            429: OpenApiResponse(ErrorSerializer, description="Too many attempts from this client; see Retry-After"),
        },
    )
    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().post(request, *args, **kwargs)


class TokenRateThrottle(SimpleRateThrottle):
    """Rate-limits token-authenticated requests per token (scope ``token``).

    Session users (the back office) are not throttled here. The counter lives in the
    shared Redis cache when configured, so every web process counts the same requests.
    """

    scope = "token"

    def __init__(self) -> None:
        self.cache = _throttle_cache()
        super().__init__()

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        if not isinstance(request.auth, Token):
            return None
        return self.cache_format % {"scope": self.scope, "ident": request.auth.user_id}


class AdminLoginLockoutBackend(AxesStandaloneBackend):
    """django-axes' lockout check, for logins that come with a request (the admin form).

    ``authenticate()`` without a request (``Client.login`` in tests, scripts) is no web
    login to lock out; axes would raise on it instead of letting the next backend decide.
    """

    def authenticate(self, request: HttpRequest | None, *args: Any, **kwargs: Any) -> None:
        if request is None:
            return None
        return super().authenticate(request, *args, **kwargs)  # type: ignore[func-returns-value]


def admin_lockout_response(request: HttpRequest, *args: Any) -> HttpResponse:
    """A locked-out admin login: 429 with ``Retry-After`` (axes sends no such header itself)."""
    cool_off = get_cool_off(request)
    response = HttpResponse(
        "Too many failed login attempts from this address; try again later.", status=429, content_type="text/plain"
    )
    if cool_off is not None:
        response["Retry-After"] = str(int(cool_off.total_seconds()))
    return response


def _token_user(key: str) -> Any:
    token = Token.objects.select_related("user").filter(key=key).first()
    if token is None or not token.user.is_active:
        return None
    return token.user


def user_from_credentials(*, authorization: str, session_key: str | None) -> Any:
    """The active user an ``Authorization: Token …`` header or a session cookie names, else None.

    For checks made before Django builds a request (the ASGI body limit): the same
    precedence as the API, a ``Token`` header wins and a bad one is a failure.
    """
    parts = authorization.split()
    if parts and parts[0].lower() == TokenAuthentication.keyword.lower():
        return _token_user(parts[1]) if len(parts) == 2 else None
    if not session_key:
        return None
    request = HttpRequest()
    request.session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    user = get_user(request)  # verifies the session's auth hash, as the middleware does
    return user if user.is_authenticated and user.is_active else None


async def aauthenticate(request: HttpRequest) -> tuple[Any, bool]:
    """(user or None, token_attempted) for plain async Django views (SSE).

    DRF's authentication is synchronous; this mirrors it: a ``Token`` header wins (and
    a bad one is a failure, not a fallback to the session), else the session user.
    """
    header = request.headers.get("Authorization", "")
    parts = header.split()
    if parts and parts[0].lower() == TokenAuthentication.keyword.lower():
        if len(parts) != 2:
            return None, True
        return await sync_to_async(_token_user)(parts[1]), True
    user = await request.auser()  # type: ignore[attr-defined]
    return (user if user.is_authenticated else None), False
