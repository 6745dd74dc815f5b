"""DRF permission classes over ``backoffice.access`` (the single source of access rules)."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from backoffice import access


class CanView(BasePermission):
    """Viewer role (or operator): read the console and the API."""

    message = "You need the viewer or operator role."

    def has_permission(self, request: Request, view: Any) -> bool:
        return access.can_view(request.user)


class CanOperateAllModules(BasePermission):
    """An operator not narrowed by module grants: for platform-wide switches (queues)."""

    message = "Pausing a queue affects every module: it needs an operator without module restrictions."

    def has_permission(self, request: Request, view: Any) -> bool:
        return access.can_operate(request.user) and access.granted_modules(request.user) is None
