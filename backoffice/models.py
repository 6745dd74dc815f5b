"""Who may see and operate what: role permissions and per-module grants."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _


class ModuleGrant(models.Model):
    """Gives a user (directly or through a group) the listed modules.

    Roles (``view_console``, ``operate``) say what someone may do; the *scope* says
    where: every module with the ``all_modules`` permission (the ``viewer`` and
    ``operator`` groups carry it), otherwise only the modules granted here. Scope is
    never implied: a user whose last grant (or grant group) is removed sees nothing.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, verbose_name=_("user"),
        null=True, blank=True, on_delete=models.CASCADE, related_name="module_grants"
    )
    group = models.ForeignKey(
        Group, verbose_name=_("group"), null=True, blank=True, on_delete=models.CASCADE, related_name="module_grants",
    )
    module = models.CharField(verbose_name=_("module"), max_length=40)
    created_at = models.DateTimeField(verbose_name=_("created at"), auto_now_add=True)

    class Meta:
        verbose_name = _("module grant")
        verbose_name_plural = _("module grants")
        constraints = [
            models.CheckConstraint(
                condition=(Q(user__isnull=False, group__isnull=True) | Q(user__isnull=True, group__isnull=False)),
                name="grant_user_xor_group",
            ),
            models.UniqueConstraint(fields=["user", "module"], name="grant_user_module"),
            models.UniqueConstraint(fields=["group", "module"], name="grant_group_module"),
        ]
        permissions = [
            ("view_console", "Can read the console and the API (viewer)"),
            ("operate", "Can upload, cancel, retry, recover, pause, create and open years (operator)"),
            ("all_modules", "Can see (and, with operate, operate) every module without module grants"),
        ]

    def __str__(self) -> str:
        who = self.user or self.group
        return f"{who} → {self.module}"
