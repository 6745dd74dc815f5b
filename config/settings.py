"""Django settings for Sluice.

Everything configurable comes from the environment through ``config.env`` helpers;
defaults are safe for local use. ``DATABASE_URL`` and ``REDIS_URL`` are required in
practice: ``make run`` / ``make test`` export them for the embedded servers when unset.

Over ~400 lines on purpose: every setting's default lives here and nowhere else (one
home per default, issue 9), each with the line that says why; splitting by topic would
scatter them again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from config.env import env_bool, env_float, env_int, env_list, env_prefixed, env_str
from config.storage import s3_storage

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = env_bool("DJANGO_DEBUG", False)
# Only a DEBUG (local) process may fall back to the public development key: signed
# sessions, CSRF and password-reset tokens are forgeable with it. Real deployments set
# DJANGO_SECRET_KEY or DJANGO_SECRET_KEY_FILE (see .env.example).
SECRET_KEY = env_str("DJANGO_SECRET_KEY", "django-insecure-sluice-local-development-only" if DEBUG else "")
if not SECRET_KEY:
    raise ImproperlyConfigured(
        "DJANGO_SECRET_KEY (or DJANGO_SECRET_KEY_FILE) is required when DJANGO_DEBUG is false; "
        "for local development set DJANGO_DEBUG=true"
    )
# (Django's test runner adds "testserver" itself: it is no default host.)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    # Before backoffice, whose admin module unregisters its pages (schedules are edited
    # on the Sources pages); it overrides no template of ours.
    "django_celery_beat",
    # Before django.contrib.admin: its templates (admin/base_site.html, admin/index.html)
    # extend and override the admin's own.
    "backoffice",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "channels",
    "pipelines",
    "ingestion",
    "workers",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    # The browser's language, or the one chosen in the admin's selector (set_language).
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "backoffice.api.errors.ApiErrorMiddleware",  # JSON 500 with a request id under /api/
    "backoffice.api.errors.SingleValuedQueryMiddleware",  # ?year=1&year=2 is a 400 under /api/
]

ROOT_URLCONF = "config.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

DATABASE_URL = env_str("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/sluice")
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 60))}
DATABASES["default"]["TEST"] = {"NAME": env_str("DATABASE_TEST_NAME", "test_sluice")}
# PostgreSQL's JIT compiles a plan when its cost estimate is high; on the console's
# window queries it spent 240 ms compiling to save nothing (docs/BENCHMARKS.md).
DATABASES["default"].setdefault("OPTIONS", {})["options"] = "-c jit=off"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("fr", "Français")]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# Served by WhiteNoise under ASGI (uvicorn serves no static files), found in the apps'
# folders at start-up so `make run` needs no collectstatic (the image still runs it).
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG
MEDIA_ROOT = Path(env_str("SLUICE_MEDIA_ROOT", str(BASE_DIR / ".var" / "media")))

# --- Stored files (docs/STORAGE.md) -------------------------------------------------------
# Every stored file (uploads, scheduled sources' responses) is written and read through
# ``default_storage``. "filesystem": under SLUICE_MEDIA_ROOT, which every web and worker
# process must then share (one machine, or a shared volume). "s3": a bucket of AWS S3 or
# any S3-compatible store (MinIO, SeaweedFS, Ceph), which workers on any host can read.
SLUICE_STORAGE = env_str("SLUICE_STORAGE", "filesystem")
# The S3 client's bounds (read by s3_storage below, and by the storage tests' own entry).
SLUICE_S3_CONNECT_TIMEOUT = env_float("SLUICE_S3_CONNECT_TIMEOUT", 5.0, minimum=0.1)
SLUICE_S3_READ_TIMEOUT = env_float("SLUICE_S3_READ_TIMEOUT", 60.0, minimum=0.1)
SLUICE_S3_MAX_ATTEMPTS = env_int("SLUICE_S3_MAX_ATTEMPTS", 3, minimum=1)  # tries per request
_default_storage: dict[str, Any]
if SLUICE_STORAGE == "filesystem":
    _default_storage = {"BACKEND": "django.core.files.storage.FileSystemStorage"}  # location: MEDIA_ROOT
elif SLUICE_STORAGE == "s3":
    SLUICE_S3_BUCKET = env_str("SLUICE_S3_BUCKET", "")
    if not SLUICE_S3_BUCKET:
        raise ImproperlyConfigured("SLUICE_STORAGE=s3 needs SLUICE_S3_BUCKET (docs/STORAGE.md)")
    # Credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (django-storages reads them,
    # or its own AWS_S3_* names), else boto3's chain (instance role, profile).
    _default_storage = s3_storage(
        bucket=SLUICE_S3_BUCKET,
        endpoint_url=env_str("SLUICE_S3_ENDPOINT_URL", ""),  # unset: AWS itself
        prefix=env_str("SLUICE_S3_PREFIX", ""),  # a folder in a shared bucket
        region=env_str("SLUICE_S3_REGION", ""),
        addressing_style=env_str("SLUICE_S3_ADDRESSING_STYLE", ""),
        connect_timeout=SLUICE_S3_CONNECT_TIMEOUT,
        read_timeout=SLUICE_S3_READ_TIMEOUT,
        max_attempts=SLUICE_S3_MAX_ATTEMPTS,
    )
else:
    raise ImproperlyConfigured(f"SLUICE_STORAGE must be 'filesystem' or 's3', not {SLUICE_STORAGE!r}")
STORAGES = {
    "default": _default_storage,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Local scratch files of one process (uploads in flight, a source's download before it is
# stored): never shared between processes. Unset: the system's temporary folder.
FILE_UPLOAD_TEMP_DIR = env_str("SLUICE_SCRATCH_DIR", "") or None

# --- Redis: broker, result backend, channel layer --------------------------------------
REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
# Tasks may legitimately run for a long time (1 GB ingests); an unacked message is
# redelivered after this, so it must exceed the longest job. The PostgreSQL heartbeat
# reaper recovers dead workers long before it (``SLUICE_STALE_AFTER_SECONDS``).
VISIBILITY_TIMEOUT = env_int("SLUICE_VISIBILITY_TIMEOUT", 3600, minimum=60)

CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL)
CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND", REDIS_URL)
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": VISIBILITY_TIMEOUT}
CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = {"visibility_timeout": VISIBILITY_TIMEOUT}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = env_int("CELERY_WORKER_PREFETCH_MULTIPLIER", 1, minimum=1)
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_EXPIRES = env_int("CELERY_RESULT_EXPIRES", 86400, minimum=60)
CELERY_TASK_DEFAULT_QUEUE = "default"
# Celery's Django fixup closes the database connection around every task unless this
# is set: a new PostgreSQL backend per job cost more than the job itself (bench/).
CELERY_DB_REUSE_MAX = env_int("CELERY_DB_REUSE_MAX", 1000, minimum=0)
# Task events feed Flower; Sluice records its own history in PostgreSQL. On demand:
# `celery control enable_events`.
CELERY_WORKER_SEND_TASK_EVENTS = env_bool("CELERY_WORKER_SEND_TASK_EVENTS", False)
CELERY_TASK_SEND_SENT_EVENT = False
CELERY_TASK_ALWAYS_EAGER = False

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [env_str("CHANNELS_REDIS_URL", REDIS_URL)],
            # Raised from 100: a console client behind on a burst would otherwise drop
            # events silently; gaps are still detected by seq and resynced.
            "capacity": env_int("SLUICE_CHANNEL_CAPACITY", 2000, minimum=10),
            "expiry": 60,
            "prefix": env_str("SLUICE_CHANNEL_PREFIX", "sluice"),
        },
    }
}

# --- Reliability: Redis restarts (docs/RELIABILITY.md) ------------------------------------
# kombu's Redis transport crashes the worker when Redis restarts under a late-ack task
# ("Unrecoverable error: AttributeError … 'hostname'"); config/broker.py says why and
# keeps the channel usable. Only for plain redis:// and rediss:// URLs.
if CELERY_BROKER_URL.split("://", 1)[0] in ("redis", "rediss"):
    CELERY_BROKER_TRANSPORT = "config.broker:Transport"
# Off: cancelling late-ack tasks on a broker blip kills healthy jobs (their state lives
# in PostgreSQL, which did not blip) and makes them start over. A message the broker
# redelivers meanwhile is stopped by the job's claim (a compare-and-set on the row).
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False

# The web (ASGI) process: ``config/asgi.py`` sets this while the settings load.
WEB_PROCESS = env_bool("SLUICE_WEB_PROCESS", False)
# The web process serves each request on its own thread, and persistent connections
# (CONN_MAX_AGE) stay open per thread: a burst of parallel requests exhausted
# PostgreSQL's max_connections. It uses a bounded psycopg pool instead. Celery's prefork
# children keep their one persistent connection each (a pool must not be shared across
# fork), so the pool is off outside the web process.
# A persistent connection is checked (SELECT 1) before its first use in each job: after a
# PostgreSQL restart every pool process still held a dead one, and the first job each
# took failed on it (`make chaos`, PostgreSQL restarted mid-job: recovery 38 s).
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if env_bool("SLUICE_DB_POOL", WEB_PROCESS):
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # required by the pool: a request returns its connection
    # The pool tests a connection (an empty query) before handing it out: one PostgreSQL
    # ended while idle (a restart, a failover) is replaced, not failed into a 503.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": env_int("SLUICE_DB_POOL_MIN_SIZE", 2, minimum=0),
        "max_size": env_int("SLUICE_DB_POOL_MAX_SIZE", 10, minimum=1),
        # A request waits this long for a free connection, then fails with a 503.
        "timeout": env_float("SLUICE_DB_POOL_TIMEOUT", 10.0, minimum=0.1),
    }
if WEB_PROCESS:
    # A request must not wait out Celery's result-backend retries (20 x 1 s) when Redis is
    # down: fail fast, the dispatch is then left to the reaper (pipelines/dispatch.py).
    # Workers keep the defaults, which ride out a short Redis restart.
    cast(dict[str, Any], CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS)["retry_policy"] = {
        "max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2,
    }
    cast(dict[str, Any], CELERY_BROKER_TRANSPORT_OPTIONS)["socket_connect_timeout"] = 1.0
    CELERY_BROKER_CONNECTION_TIMEOUT = 1.0
# PostgreSQL or Redis unreachable: a 503 with Retry-After, not a 500 (config/middleware.py).
MIDDLEWARE = [*MIDDLEWARE, "config.middleware.ServiceUnavailableMiddleware"]

# --- Sluice engine -------------------------------------------------------------------------
# The queues are the ones the job types registered (``pipelines.registry.queues()``: each
# app declares its job types' queues, e.g. ``ingestion/job_types.py``). Routing overrides,
# one variable per job type: SLUICE_QUEUE_CSV_INGEST=bulk sends csv_ingest jobs to "bulk".
SLUICE_QUEUE_ROUTES: dict[str, str] = {
    job_type.lower(): queue for job_type, queue in env_prefixed("SLUICE_QUEUE_").items() if queue
}
# Modules whose import registers job handlers (the plug-in point for new job kinds).
SLUICE_HANDLER_MODULES = env_list(
    "SLUICE_HANDLER_MODULES", ["pipelines.builtin_handlers", "ingestion.handlers", "ingestion.sources.handlers"]
)
SLUICE_HEARTBEAT_SECONDS = env_float("SLUICE_HEARTBEAT_SECONDS", 5.0, minimum=0.05)
# Recovery bounds (docs/RELIABILITY.md): a dead worker's job is re-queued after
# STALE_AFTER (3 missed heartbeats) + at most one reaper interval; a lost message is
# re-sent after REDISPATCH_AFTER + one interval (the reaper reads the queues' contents).
SLUICE_STALE_AFTER_SECONDS = env_float("SLUICE_STALE_AFTER_SECONDS", 15.0, minimum=0.2)
SLUICE_REDISPATCH_AFTER_SECONDS = env_float("SLUICE_REDISPATCH_AFTER_SECONDS", 10.0, minimum=0.2)
SLUICE_REAPER_INTERVAL_SECONDS = env_float("SLUICE_REAPER_INTERVAL_SECONDS", 5.0, minimum=0.5)
SLUICE_MAX_ATTEMPTS = env_int("SLUICE_MAX_ATTEMPTS", 3, minimum=1)
SLUICE_PROGRESS_MIN_INTERVAL_SECONDS = env_float("SLUICE_PROGRESS_MIN_INTERVAL_SECONDS", 0.25)
# Retention (docs/OPERATIONS.md "Retention"): finished history older than this many days
# is purged, in batches of this many pipelines (or uploads), one short transaction each.
SLUICE_RETENTION_DAYS = env_int("SLUICE_RETENTION_DAYS", 90, minimum=1)
SLUICE_RETENTION_BATCH_SIZE = env_int("SLUICE_RETENTION_BATCH_SIZE", 200, minimum=1)
SLUICE_PUBLISH_EVENTS = env_bool("SLUICE_PUBLISH_EVENTS", True)

CELERY_BEAT_SCHEDULE = {
    "sluice-reaper": {
        "task": "sluice.reap",
        "schedule": SLUICE_REAPER_INTERVAL_SECONDS,
        "options": {"queue": "default", "expires": SLUICE_REAPER_INTERVAL_SECONDS},
    },
    "sluice-purge": {
        "task": "sluice.purge_history",  # pipelines/retention.py
        "schedule": 3600.0,
        "options": {"queue": "default"},
    },
    # Folds the delta rows of the trigger-kept job counters (pipelines.counters).
    "sluice-compact-counters": {
        "task": "sluice.compact_counters",
        "schedule": 60.0,
        "options": {"queue": "default", "expires": 60.0},
    },
}

# Beat reads its schedule from PostgreSQL (django-celery-beat): the entries above are
# synced into it at start, and scheduled sources (issue 14) add theirs from the API and
# admin; beat notices a change within CELERY_BEAT_MAX_LOOP_INTERVAL.
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_BEAT_MAX_LOOP_INTERVAL = env_float("CELERY_BEAT_MAX_LOOP_INTERVAL", 5.0, minimum=0.1)
CELERY_TIMEZONE = TIME_ZONE
DJANGO_CELERY_BEAT_TZ_AWARE = True

# --- Uploads -------------------------------------------------------------------------------
SLUICE_UPLOAD_MAX_BYTES = env_int("SLUICE_UPLOAD_MAX_BYTES", 1024 * 1024 * 1024, minimum=1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024  # larger uploads stream to a temp file

# --- API -----------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.TokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 25,
    "DEFAULT_THROTTLE_RATES": {
        "token": env_str("SLUICE_TOKEN_THROTTLE", "600/min"),
        # Token issuance (username + password) per client IP: see the security block below.
        "login": env_str("SLUICE_LOGIN_THROTTLE", "10/min"),
    },
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Sluice API",
    "DESCRIPTION": "Back-office data ingestion pipelines: years, uploads, pipelines, jobs.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
}

# --- Ingestion -----------------------------------------------------------------------------
SLUICE_DIRECTORY_SOURCE = env_str(
    "SLUICE_DIRECTORY_SOURCE", str(BASE_DIR / "ingestion" / "samples" / "units.csv")
)

# --- Scheduled sources (issue 14; docs/SOURCES.md) ----------------------------------------
# A fetched response larger than this fails the run ("too large"), checked on the
# declared Content-Length and again while streaming.
SLUICE_SOURCE_MAX_BYTES = env_int("SLUICE_SOURCE_MAX_BYTES", 256 * 1024 * 1024, minimum=1024)
SLUICE_SOURCE_CONNECT_TIMEOUT = env_float("SLUICE_SOURCE_CONNECT_TIMEOUT", 10.0, minimum=0.1)
# Longest wait for the next bytes of a response (not the whole download).
SLUICE_SOURCE_READ_TIMEOUT = env_float("SLUICE_SOURCE_READ_TIMEOUT", 60.0, minimum=0.1)
# Tries per run on a 5xx, a connection error, a timeout or a cut-off body, with a
# backoff of BACKOFF, 2 x BACKOFF, … seconds between them.
SLUICE_SOURCE_ATTEMPTS = env_int("SLUICE_SOURCE_ATTEMPTS", 3, minimum=1)
SLUICE_SOURCE_BACKOFF_SECONDS = env_float("SLUICE_SOURCE_BACKOFF_SECONDS", 2.0, minimum=0.0)
# File sources may only read below these folders (a source must not read /etc/passwd).
SLUICE_SOURCE_PATH_ROOTS = env_list("SLUICE_SOURCE_PATH_ROOTS", [str(BASE_DIR / "ingestion" / "samples")])
# Auth header values by name: SLUICE_SOURCE_SECRET_PARTNER=… (or …_FILE) is the secret
# "PARTNER" a source names; the value never enters the database.
SLUICE_SOURCE_SECRETS = env_prefixed("SLUICE_SOURCE_SECRET_")

LOG_LEVEL = env_str("SLUICE_LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "structured": {
            "()": "pipelines.logging.StructuredFormatter",
        }
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "structured"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# --- API (extra) ---------------------------------------------------------------------------
REST_FRAMEWORK["EXCEPTION_HANDLER"] = "backoffice.api.errors.exception_handler"
# JSON bodies only (uploads declare multipart themselves): the OpenAPI document lists
# exactly the content types a view accepts, and a form-encoded PATCH cannot smuggle
# a string where the document says an object (issue 18).
REST_FRAMEWORK["DEFAULT_PARSER_CLASSES"] = ["rest_framework.parsers.JSONParser"]
REST_FRAMEWORK["DEFAULT_AUTHENTICATION_CLASSES"] = [
    "rest_framework.authentication.TokenAuthentication",
    "rest_framework.authentication.SessionAuthentication",
]
SPECTACULAR_SETTINGS["SERVE_PERMISSIONS"] = ["rest_framework.permissions.AllowAny"]
SPECTACULAR_SETTINGS["SERVE_AUTHENTICATION"] = []
# Token throttle counters shared by every web process (Redis), apart from the default cache.
CACHES = {
    **globals().get("CACHES", {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}),
    "api_throttle": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": env_str("SLUICE_THROTTLE_REDIS_URL", REDIS_URL),
        "KEY_PREFIX": "sluice-throttle",
    },
}
# SSE streams are woken by the channel layer (backoffice/api/stream.py). They re-read the
# database anyway after this long without a read, in case a message was lost (the layer is
# at-most-once), and every SLUICE_SSE_POLL_SECONDS when the layer cannot be reached.
SLUICE_SSE_SAFETY_READ_SECONDS = env_float("SLUICE_SSE_SAFETY_READ_SECONDS", 12.0, minimum=0.05)
SLUICE_SSE_POLL_SECONDS = env_float("SLUICE_SSE_POLL_SECONDS", 0.25, minimum=0.01)
SLUICE_SSE_PING_SECONDS = env_float("SLUICE_SSE_PING_SECONDS", 15.0, minimum=0.1)
# Open WebSockets and SSE streams re-read their user this often: revoked access stops
# the stream within it.
SLUICE_LIVE_ACCESS_RECHECK_SECONDS = env_float("SLUICE_LIVE_ACCESS_RECHECK_SECONDS", 3.0, minimum=0.1)
SLUICE_INSPECT_TIMEOUT = env_float("SLUICE_INSPECT_TIMEOUT", 0.5, minimum=0.05)
SLUICE_ALERT_WINDOW_HOURS = env_float("SLUICE_ALERT_WINDOW_HOURS", 168.0, minimum=1.0)
REST_FRAMEWORK["DEFAULT_SCHEMA_CLASS"] = "backoffice.api.schema.AutoSchema"
# The event ``type`` enum keeps its published name next to the live messages' own.
SPECTACULAR_SETTINGS["ENUM_NAME_OVERRIDES"] = {
    "TypeEnum": ["job.update", "pipeline.update"],
    # Scheduled sources (another "kind" than a pipeline start's).
    "SourceKindEnum": "ingestion.models.SourceKind",
}
SPECTACULAR_SETTINGS["POSTPROCESSING_HOOKS"] = [
    "backoffice.api.schema.add_live_components",  # SSE/WebSocket messages (before enums are named)
    "drf_spectacular.hooks.postprocess_schema_enums",
    "backoffice.api.schema.add_stream_path",
    "backoffice.api.schema.add_links",  # OpenAPI links each app declares beside its views
    "backoffice.api.schema.add_nul_free_query_strings",
]

# --- Security: login throttling, offline API docs (issue 8) -------------------------------
INSTALLED_APPS += ["drf_spectacular_sidecar", "axes"]
# Swagger UI from the sidecar package's static files, not a CDN: /api/docs/ works offline.
SPECTACULAR_SETTINGS["SWAGGER_UI_DIST"] = "SIDECAR"
SPECTACULAR_SETTINGS["SWAGGER_UI_FAVICON_HREF"] = "SIDECAR"
SPECTACULAR_SETTINGS["REDOC_DIST"] = "SIDECAR"
# validatorUrl: none, or Swagger UI sends the schema to validator.swagger.io.
SPECTACULAR_SETTINGS["SWAGGER_UI_SETTINGS"] = {"deepLinking": True, "validatorUrl": None}
# django-axes locks the admin login of a client IP after repeated failures (429 + Retry-After).
AUTHENTICATION_BACKENDS = [
    "backoffice.api.auth.AdminLoginLockoutBackend",
    "django.contrib.auth.backends.ModelBackend",
]
MIDDLEWARE += ["axes.middleware.AxesMiddleware"]  # last, as axes requires
AXES_ONLY_ADMIN_SITE = True
AXES_FAILURE_LIMIT = env_int("SLUICE_ADMIN_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = env_float("SLUICE_ADMIN_LOGIN_COOLOFF_MINUTES", 15.0, minimum=0.1) / 60  # hours
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "backoffice.api.auth.admin_lockout_response"
# Behind a reverse proxy, REMOTE_ADDR is the proxy: list the header it sets, e.g. HTTP_X_FORWARDED_FOR.
AXES_IPWARE_META_PRECEDENCE_ORDER = env_list("SLUICE_CLIENT_IP_HEADERS", ["REMOTE_ADDR"])

# --- Reliability: Redis on the request path (docs/RELIABILITY.md) ---------------------------
# Throttle counters: short socket timeouts, and a process-local fallback while Redis is
# unreachable (throttling goes on per process instead of answering 500).
CACHES["api_throttle"]["BACKEND"] = "config.cache.FallbackRedisCache"
# Publishing a job's message: a short retry, then the job is left to the reaper
# (pipelines/dispatch.py) instead of blocking the request or the worker.
SLUICE_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.25, "interval_max": 0.5}
# A queued job whose publish failed is re-sent by the reaper once it is this old.
SLUICE_UNSENT_GRACE_SECONDS = env_float("SLUICE_UNSENT_GRACE_SECONDS", 2.0, minimum=0.1)

# --- Security: production defaults (issue 8; docs/OPERATIONS.md) -------------------------
# SLUICE_HTTPS=true (the site is served over HTTPS, usually behind a TLS proxy) turns on
# secure cookies, HSTS and the HTTPS redirect; each stays settable on its own. Off by
# default so plain-HTTP local runs and tests keep working.
HTTPS = env_bool("SLUICE_HTTPS", False)
SESSION_COOKIE_SECURE = env_bool("DJANGO_SESSION_COOKIE_SECURE", HTTPS)
CSRF_COOKIE_SECURE = env_bool("DJANGO_CSRF_COOKIE_SECURE", HTTPS)
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", HTTPS)
SECURE_HSTS_SECONDS = env_int("DJANGO_SECURE_HSTS_SECONDS", 31_536_000 if HTTPS else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", HTTPS)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_SECURE_HSTS_PRELOAD", HTTPS)
# "HTTP_X_FORWARDED_PROTO,https": trust the TLS proxy's header (only behind such a proxy,
# which must strip the header from clients). Probes and scrapers inside the network may
# reach the web process directly over plain HTTP: /healthz and /metrics are not redirected.
_proxy_ssl_header = env_list("DJANGO_SECURE_PROXY_SSL_HEADER", [])
if _proxy_ssl_header and len(_proxy_ssl_header) != 2:
    raise ImproperlyConfigured("DJANGO_SECURE_PROXY_SSL_HEADER must be HEADER,value: HTTP_X_FORWARDED_PROTO,https")
SECURE_PROXY_SSL_HEADER = (_proxy_ssl_header[0], _proxy_ssl_header[1]) if _proxy_ssl_header else None
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^metrics$"]
# Debug pages and error reports mask credentials in URLs (DATABASE_URL, broker, sources).
DEFAULT_EXCEPTION_REPORTER = "config.debug.RedactingExceptionReporter"

# --- Security: /metrics (issue 8; docs/OPERATIONS.md) ------------------------------------
# Prometheus sends "Authorization: Bearer <token>"; without a token only staff sessions scrape.
SLUICE_METRICS_TOKEN = env_str("SLUICE_METRICS_TOKEN", "")
# Finished-job gauges and duration histograms cover jobs created within this window.
SLUICE_METRICS_WINDOW_SECONDS = env_int("SLUICE_METRICS_WINDOW_SECONDS", 3600, minimum=60)

# --- Security: WebSockets (issue 8; backoffice/ws_origin.py) -----------------------------
# Pages on other origins allowed to open the live feeds, compared by scheme, host and port
# (the server's own origin always is).
SLUICE_WS_ALLOWED_ORIGINS = env_list("SLUICE_WS_ALLOWED_ORIGINS", CSRF_TRUSTED_ORIGINS)
# A socket's {"action": "resync"} snapshots at most this often; extra requests in
# between fold into one snapshot at the end of the interval.
SLUICE_WS_RESYNC_MIN_SECONDS = env_float("SLUICE_WS_RESYNC_MIN_SECONDS", 2.0, minimum=0.0)

# --- Security: request bodies (issue 8; config/body_limit.py) ----------------------------
# Every request body except uploads (SLUICE_UPLOAD_MAX_BYTES): checked before Django reads it.
SLUICE_REQUEST_MAX_BYTES = env_int("SLUICE_REQUEST_MAX_BYTES", 1024 * 1024, minimum=1024)

# --- Workers: version and heartbeat record (issue 8; workers/heartbeat.py) ---------------
SLUICE_WORKER_HEARTBEAT_SECONDS = env_float("SLUICE_WORKER_HEARTBEAT_SECONDS", 10.0, minimum=0.1)
# Reported by /workers/; default: the package version plus the checkout's git sha.
SLUICE_VERSION = env_str("SLUICE_VERSION", "")
