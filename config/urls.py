from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from workers.metrics import metrics_view
from workers.views import healthz

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("metrics", metrics_view, name="metrics"),
    path("admin/", admin.site.urls),
    path("i18n/", include("django.conf.urls.i18n")),
    path("api/", include("config.api_urls")),
]
