"""One env-driven settings module.

With no environment variables the app runs embedded (SQLite, in-memory channel layer, agent runs
in-process) so it can be tried on a laptop. With DATABASE_URL and REDIS_URL it runs on PostgreSQL
(psycopg 3, pooled) and channels-redis. Every variable is listed in the README.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent


from chatsite.config.env import env_bool, env_float, env_int, env_list  # noqa: E402

DEBUG = env_bool("DEBUG", False)
# The fallback key is only for the embedded mode; a deployment sets SECRET_KEY.
SECRET_KEY = os.environ.get("SECRET_KEY") or "embedded-insecure-key-set-SECRET_KEY-in-production"
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])
# Origins allowed to open the socket (besides ALLOWED_HOSTS on any port); full origins like
# "https://app.example.com". Cross-origin browsers authenticate with the `auth` frame.
CHAT_ALLOWED_ORIGINS = env_list("CHAT_ALLOWED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",  # first, so `runserver` is the ASGI one
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",  # the OpenAPI schema at /api/schema/ (chatsite/config/api_docs.py)
    "drf_spectacular_sidecar",  # Swagger UI's assets from /static/: the CSP allows no CDN
    "chat",
    "agents",  # before `channels`: its `runworker` adds the run supervisor to channels' worker
    "monitoring",
    "enterprise",
    "channels",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "chatsite.security.ContentSecurityPolicyMiddleware",  # the one header Django 5.2 does not set
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "chatsite.urls"
ASGI_APPLICATION = "chatsite.asgi.application"
AUTH_USER_MODEL = "chat.User"
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/login/"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

# --- Database -------------------------------------------------------------------------------
DATABASE_URL = os.environ.get("DATABASE_URL", "")
if DATABASE_URL:
    _db = dj_database_url.parse(DATABASE_URL, conn_max_age=0)
    if _db["ENGINE"] == "django.db.backends.postgresql":
        # Under ASGI every sync_to_async call may land on another thread: keep CONN_MAX_AGE=0 and
        # let psycopg's pool keep the connections warm instead.
        _db["CONN_MAX_AGE"] = 0
        _db.setdefault("OPTIONS", {})["pool"] = {
            "min_size": env_int("DB_POOL_MIN", 2),
            "max_size": env_int("DB_POOL_MAX", 20),
            # How long a query waits for a pooled connection. Short: while PostgreSQL is down every
            # command would wait this long before answering `unavailable` (until the breaker opens).
            "timeout": float(os.environ.get("DB_POOL_TIMEOUT_S", "5")),
        }
        # Bound what a frozen server (stopped, packets dropped) can hold: connecting, a query, and
        # a dead TCP peer. Without these one stuck query blocks the process's database thread.
        _db["OPTIONS"].setdefault("connect_timeout", 3)
        _db["OPTIONS"].setdefault("options", f"-c statement_timeout={env_int('DB_STATEMENT_TIMEOUT_MS', 30_000)}")
        _db["OPTIONS"].setdefault("keepalives", 1)
        _db["OPTIONS"].setdefault("keepalives_idle", 10)
        _db["OPTIONS"].setdefault("keepalives_interval", 5)
        _db["OPTIONS"].setdefault("keepalives_count", 3)
        _db["OPTIONS"].setdefault("tcp_user_timeout", 15_000)
        _db.setdefault("TEST", {})["NAME"] = os.environ.get("TEST_DATABASE_NAME") or None
    DATABASES = {"default": _db}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("SQLITE_PATH", str(BASE_DIR / "db.sqlite3")),
            # The embedded mode writes from several threads; wait for the lock instead of failing.
            "OPTIONS": {"timeout": 20},
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Channel layer -----------------------------------------------------------------------------
REDIS_URL = os.environ.get("REDIS_URL", "")
# Namespaces every Redis key and channel of this deployment (several deployments or test runs
# can share one Redis).
CHANNEL_PREFIX = os.environ.get("CHANNEL_PREFIX", "chat")
if REDIS_URL:
    # Pub/sub layer: the plain RedisChannelLayer drops group messages for full channels and stalls on
    # its connection-pool limit under concurrent senders (see docs/operations.md). Our layer traffic is
    # only doorbells, and every durable event is re-read from the log on a gap, so at-most-once is fine.
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "prefix": CHANNEL_PREFIX},
        }
    }
else:
    # One hub channel per process carries every doorbell, so the default capacity (100) could drop
    # bursts, and the default 24 h group expiry would silently end a long-lived subscription.
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels.layers.InMemoryChannelLayer",
            "CONFIG": {"capacity": 10_000, "group_expiry": 10 * 365 * 24 * 3600},
        }
    }

# --- Auth / REST -----------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "chat.realtime.auth.RevocableJWTAuthentication",  # simplejwt's, refusing revoked tokens
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(seconds=env_int("JWT_ACCESS_LIFETIME_S", 15 * 60)),
    "REFRESH_TOKEN_LIFETIME": timedelta(seconds=env_int("JWT_REFRESH_LIFETIME_S", 7 * 24 * 3600)),
    "SIGNING_KEY": os.environ.get("JWT_SIGNING_KEY") or SECRET_KEY,
    "UPDATE_LAST_LOGIN": False,
    # Every token simplejwt mints carries a hash of the user's password hash: a password change revokes it.
    "CHECK_REVOKE_TOKEN": True,
}
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Agents ------------------------------------------------------------------------------------
# "offline": the built-in rule-based agent with real tools (no network).
# "openai": any OpenAI-compatible chat-completions server (Ollama, vLLM, llama.cpp, hosted APIs).
AGENT_BACKEND = os.environ.get("AGENT_BACKEND", "offline")
AGENT_LLM_BASE_URL = os.environ.get("AGENT_LLM_BASE_URL", "http://127.0.0.1:11434/v1")
AGENT_LLM_MODEL = os.environ.get("AGENT_LLM_MODEL", "llama3.1")
AGENT_LLM_API_KEY = os.environ.get("AGENT_LLM_API_KEY", "")
AGENT_LLM_TIMEOUT_S = float(os.environ.get("AGENT_LLM_TIMEOUT_S", "60"))
# "inprocess": runs execute in the server process (embedded mode, tests);
# "worker": runs execute in `manage.py runworker agent-runs` (the default whenever Redis is configured).
AGENT_RUNNER = os.environ.get("AGENT_RUNNER") or ("worker" if REDIS_URL else "inprocess")
# A running run whose heartbeat is older than this is failed with worker_lost (docs/protocol.md §4: ≤ 30 s).
AGENT_HEARTBEAT_S = float(os.environ.get("AGENT_HEARTBEAT_S", "5"))
AGENT_LOST_AFTER_S = float(os.environ.get("AGENT_LOST_AFTER_S", "20"))
# Answer chunks are coalesced into one agent_delta per window (LibreChat/Centrifugo batch 25-50 ms).
AGENT_DELTA_COALESCE_MS = env_int("AGENT_DELTA_COALESCE_MS", 40)
# Compaction (chat/services/compaction.py, docs/operations.md "Compaction"): a run that completed or was
# cancelled more than AGENT_DELTA_COMPACT_AFTER_S ago loses its agent_delta events (its terminal event carries
# the whole answer), AGENT_DELTA_COMPACT_BATCH rows per transaction. The wait lets a socket that resumes right
# after the end, or an AG-UI stream catching up, still replay the answer as it streamed.
AGENT_DELTA_COMPACT_AFTER_S = env_float("AGENT_DELTA_COMPACT_AFTER_S", 300.0)
AGENT_DELTA_COMPACT_BATCH = env_int("AGENT_DELTA_COMPACT_BATCH", 1000)
# Pace of the offline agent's answer stream, so streaming is visible to a person (0 in tests).
AGENT_OFFLINE_TOKEN_DELAY_MS = env_int("AGENT_OFFLINE_TOKEN_DELAY_MS", 30)
# A tool call waiting for a person's approval (docs/protocol.md §11) expires after this many seconds.
AGENT_APPROVAL_TTL_S = float(os.environ.get("AGENT_APPROVAL_TTL_S", "600"))
# The AG-UI stream (POST /api/ag-ui/, docs/protocol.md "AG-UI"): an SSE comment after this many seconds
# without an event keeps proxies from closing the connection; a stream open longer than the max ends
# with RUN_ERROR `stream_timeout` (the run goes on; its export is GET /api/runs/{id}/ag-ui/).
AGUI_KEEPALIVE_S = float(os.environ.get("AGUI_KEEPALIVE_S", "15"))
AGUI_STREAM_MAX_S = float(os.environ.get("AGUI_STREAM_MAX_S", "900"))

# --- Agent tools: the calculator's sandbox and the search's time limit (docs/operations.md "Agent tools") ---
# The calculator evaluates in AGENT_TOOL_SANDBOX_WORKERS worker processes (agents/sandbox.py), each
# call killed after AGENT_TOOL_SANDBOX_TIMEOUT_S of wall clock; a worker may use
# AGENT_TOOL_SANDBOX_MEMORY_MB of address space and AGENT_TOOL_SANDBOX_CPU_S of CPU over its life,
# and is replaced after AGENT_TOOL_SANDBOX_CALLS_PER_WORKER calls.
AGENT_TOOL_SANDBOX_WORKERS = env_int("AGENT_TOOL_SANDBOX_WORKERS", 2)
AGENT_TOOL_SANDBOX_TIMEOUT_S = float(os.environ.get("AGENT_TOOL_SANDBOX_TIMEOUT_S", "2"))
AGENT_TOOL_SANDBOX_MEMORY_MB = env_int("AGENT_TOOL_SANDBOX_MEMORY_MB", 256)
AGENT_TOOL_SANDBOX_CPU_S = env_int("AGENT_TOOL_SANDBOX_CPU_S", 10)
AGENT_TOOL_SANDBOX_CALLS_PER_WORKER = env_int("AGENT_TOOL_SANDBOX_CALLS_PER_WORKER", 200)
# search_history's statement timeout (the database's default for everything else is 30 s).
AGENT_TOOL_SEARCH_TIMEOUT_MS = env_int("AGENT_TOOL_SEARCH_TIMEOUT_MS", 3000)
# GET /api/search/'s statement timeout: past it the answer is a 503 (chat/search.py search_within).
CHAT_SEARCH_TIMEOUT_MS = env_int("CHAT_SEARCH_TIMEOUT_MS", 3000)

# Realtime limits, tiers, breakers, handshakes; then login guard, HTTPS and headers: one module each.
from chatsite.config.analytics import *  # noqa: E402,F403
from chatsite.config.api_docs import *  # noqa: E402,F403
from chatsite.config.limits import *  # noqa: E402,F403
from chatsite.config.security import *  # noqa: E402,F403
from chatsite.config.sso import *  # noqa: E402,F403

# Single sign-on's backend is listed only when it is on (OIDC_RP_CLIENT_ID), so with SSO off no request can
# reach it; sessions it opened end if SSO is turned off again.
if OIDC_ENABLED:  # noqa: F405
    AUTHENTICATION_BACKENDS = [*AUTHENTICATION_BACKENDS, "enterprise.sso.SsoBackend"]  # noqa: F405

# --- Monitoring and alerts (defaults in monitoring/config.py; docs/operations.md "Monitoring and alerts") ---
# Overrides merged key by key, e.g. MONITORING_JSON='{"stuck_after_s": 300, "first_event_s": {"free": 20}}'.
MONITORING: dict[str, object] = json.loads(os.environ.get("MONITORING_JSON") or "{}")
ALERT_EMAIL = env_list("ALERT_EMAIL", [])  # addresses mailed every alert of warning severity or above

# --- Metrics scraping (docs/operations.md "What to watch") ---
# A scraper sends `Authorization: Bearer <METRICS_TOKEN>` to /metrics; unset, only staff sessions may read it.
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "")
SECURE_REDIRECT_EXEMPT = [*SECURE_REDIRECT_EXEMPT, r"^livez$"]  # noqa: F405  (probes call over plain HTTP)

# --- Notifications: Web Push, email digest, worker (chat/services/notification_config.py; docs/operations.md) ---
NOTIFICATIONS: dict[str, object] = json.loads(os.environ.get("NOTIFICATIONS_JSON") or "{}")
VAPID_PRIVATE_KEY = os.environ.get("VAPID_PRIVATE_KEY", "")  # `manage.py vapid_keys` makes one; unset: no Web Push
STATIC_URL = "static/"
# Serve /static/ from the ASGI app (single-machine layout); set SERVE_STATIC=0 behind a CDN/proxy.
SERVE_STATIC = env_bool("SERVE_STATIC", True)
STATIC_ROOT = BASE_DIR / "staticfiles"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

# --- Admin readability: every time the templates show has seconds (chatsite/formats/en/formats.py) ---
FORMAT_MODULE_PATH = ["chatsite.formats"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # Tokens never reach a log line (chat/infra/log_redaction.py): on Django's handler from the start,
    # so every management command is covered too; the ASGI application puts it on the server's own.
    "filters": {"redact_tokens": {"()": "chat.infra.log_redaction.TokenRedactingFilter"}},
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["redact_tokens"]}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.channels.server": {"level": "WARNING"}},
}
