"""Reporting years, units, uploads and the loaded data."""

from __future__ import annotations

from django.db import models


class Year(models.Model):
    year = models.IntegerField(primary_key=True)
    is_open = models.BooleanField(default=False)
    configured_at = models.DateTimeField(null=True, blank=True)
    config = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-year"]

    def __str__(self) -> str:
        return str(self.year)
