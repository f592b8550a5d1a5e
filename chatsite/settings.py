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
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw else default


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if not raw:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


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
    "chat",
    "agents",  # before `channels`: its `runworker` adds the run supervisor to channels' worker
    "monitoring",
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
# Pace of the offline agent's answer stream, so streaming is visible to a person (0 in tests).
AGENT_OFFLINE_TOKEN_DELAY_MS = env_int("AGENT_OFFLINE_TOKEN_DELAY_MS", 30)

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

# --- Realtime limits (docs/protocol.md §2/§3): server-wide caps; per-tier values are in CHAT_TIERS below ------
CHAT_MAX_FRAME_BYTES = env_int("CHAT_MAX_FRAME_BYTES", 64 * 1024)
CHAT_REPLAY_LIMIT = env_int("CHAT_REPLAY_LIMIT", 500)
CHAT_HISTORY_MAX = 100
CHAT_AUTH_TIMEOUT_S = float(os.environ.get("CHAT_AUTH_TIMEOUT_S", "5"))
CHAT_HEARTBEAT_MS = env_int("CHAT_HEARTBEAT_MS", 25_000)
CHAT_TYPING_TTL_MS = env_int("CHAT_TYPING_TTL_MS", 6_000)
# Outbound frames queued per socket before it is closed as a slow consumer (4408). 2,000 frames
# is several seconds of a busy room; a client further behind is better served by resuming.
CHAT_OUTBOUND_QUEUE = env_int("CHAT_OUTBOUND_QUEUE", 2_000)
CHAT_MAX_TEXT_CHARS = env_int("CHAT_MAX_TEXT_CHARS", 16_000)
CHAT_MAX_SUBSCRIPTIONS = env_int("CHAT_MAX_SUBSCRIPTIONS", 100)
# Hot buffer of recent events per conversation and per user (chat/infra/message_buffer.py). 1,000
# events covers twice the replay limit, so any recoverable replay can be served from it; 15
# minutes covers a laptop lid closed over a meeting. Older replays read the log.
CHAT_BUFFER_MAX_EVENTS = env_int("CHAT_BUFFER_MAX_EVENTS", 1000)
CHAT_BUFFER_MAX_AGE_S = float(os.environ.get("CHAT_BUFFER_MAX_AGE_S", "900"))

# --- Tiers, rate limits and abuse (chat/tiers.py, chat/infra/rate_limiter.py, docs/protocol.md §8) ----------
# Rates are [limit, window seconds], sliding windows per user, shared by every server process
# through Redis (in-memory in embedded mode). Command classes: "messages" (send), "agent_runs" (a send
# that starts an agent run), "typing", "commands" (everything else, pings included).
CHAT_TIERS: dict[str, dict[str, object]] = {
    "free": {
        "connections": 5,
        "rates": {"messages": [30, 60], "agent_runs": [20, 3600], "typing": [30, 60], "commands": [300, 60]},
        "max_frame_bytes": 64 * 1024,
        "max_text_chars": 8_000,
        "max_subscriptions": 50,
        "replay_limit": CHAT_REPLAY_LIMIT,
        "buffer_max_events": 500,
        "buffer_max_age_s": 15 * 60,
        "history_retention_days": 30,
    },
    "pro": {
        "connections": 20,
        "rates": {"messages": [120, 60], "agent_runs": [200, 3600], "typing": [60, 60], "commands": [1200, 60]},
        "max_frame_bytes": 64 * 1024,
        "max_text_chars": CHAT_MAX_TEXT_CHARS,
        "max_subscriptions": CHAT_MAX_SUBSCRIPTIONS,
        "replay_limit": CHAT_REPLAY_LIMIT,
        "buffer_max_events": 1000,
        "buffer_max_age_s": 60 * 60,
        "history_retention_days": 365,
    },
    "enterprise": {
        "connections": 100,
        "rates": {"messages": [600, 60], "agent_runs": [2000, 3600], "typing": [120, 60], "commands": [6000, 60]},
        "max_frame_bytes": 64 * 1024,
        "max_text_chars": CHAT_MAX_TEXT_CHARS,
        "max_subscriptions": CHAT_MAX_SUBSCRIPTIONS,
        "replay_limit": CHAT_REPLAY_LIMIT,
        "buffer_max_events": 1000,
        "buffer_max_age_s": 24 * 60 * 60,
        "history_retention_days": None,
    },
}
# A deployment (or a load test) overrides parts of the table without a code change, e.g.
# CHAT_TIERS_JSON='{"free": {"rates": {"messages": [100, 60]}}}' (merged key by key).
if os.environ.get("CHAT_TIERS_JSON"):

    def _merge(base: dict[str, object], extra: dict[str, object]) -> dict[str, object]:
        out = dict(base)
        for key, value in extra.items():
            current = out.get(key)
            out[key] = _merge(current, value) if isinstance(current, dict) and isinstance(value, dict) else value
        return out

    CHAT_TIERS = _merge(CHAT_TIERS, json.loads(os.environ["CHAT_TIERS_JSON"]))  # type: ignore[arg-type,assignment]
# More than this many malformed frames (bad_request, unknown_command, too_large) within the window,
# or more than CHAT_RATE_HAMMER_LIMIT commands sent while already told to wait: close 4400.
CHAT_ABUSE_LIMIT = env_int("CHAT_ABUSE_LIMIT", 30)
CHAT_ABUSE_WINDOW_S = float(os.environ.get("CHAT_ABUSE_WINDOW_S", "10"))
CHAT_RATE_HAMMER_LIMIT = env_int("CHAT_RATE_HAMMER_LIMIT", 20)
# A socket's slot in its user's connection count is refreshed by the socket and expires this long
# after its process died without releasing it.
CHAT_CONNECTION_TTL_S = float(os.environ.get("CHAT_CONNECTION_TTL_S", "60"))
# Per client IP on POST /login/, /admin/login/, /api/auth/token/ and its refresh: [limit, window s].
CHAT_LOGIN_RATE = [env_int("CHAT_LOGIN_RATE_LIMIT", 20), float(os.environ.get("CHAT_LOGIN_RATE_WINDOW_S", "60"))]
# --- Login guard (chat/services/login_guard.py; docs/operations.md "Login attempts") -----------------------
# Every password check made for a request goes through the guarded backend. ModelBackend is listed only so
# sessions opened under its name stay valid: the guarded one ends every password check itself.
AUTHENTICATION_BACKENDS = ["chat.services.login_guard.GuardedModelBackend", "django.contrib.auth.backends.ModelBackend"]
# Per key: [failures, window s, first lock s, longest lock s]; each further lock of a key lasts twice the one
# before. Partial overrides: CHAT_LOGIN_GUARD_JSON='{"user": [10, 3600, 600, 3600]}'.
CHAT_LOGIN_GUARD: dict[str, list[float]] = {
    "user_ip": [5, 15 * 60, 60, 60 * 60],  # one username from one address
    "user": [20, 60 * 60, 5 * 60, 30 * 60],  # one username from any address: slower, and capped lower
    "ip": [50, 60 * 60, 5 * 60, 60 * 60],  # any username from one address
    "token_ip": [20, 60 * 60, 5 * 60, 60 * 60],  # forged refresh tokens from one address
} | json.loads(os.environ.get("CHAT_LOGIN_GUARD_JSON") or "{}")
CHAT_LOGIN_GUARD_FORGET_S = env_int("CHAT_LOGIN_GUARD_FORGET_S", 24 * 60 * 60)  # a key quiet this long starts over
# Circuit breakers (chat/infra/error_recovery.py): this many transient failures within the window open the
# circuit; after the reset timeout one probe call is let through.
CHAT_BREAKER_FAILURES = env_int("CHAT_BREAKER_FAILURES", 5)
CHAT_BREAKER_WINDOW_S = float(os.environ.get("CHAT_BREAKER_WINDOW_S", "10"))
CHAT_BREAKER_RESET_S = float(os.environ.get("CHAT_BREAKER_RESET_S", "5"))
# A database or model-server failure can take as long as its timeout (pool 5 s, LLM 60 s): their
# windows are wide enough that consecutive slow failures still add up to an open circuit.
CHAT_BREAKER_POSTGRES_FAILURES = env_int("CHAT_BREAKER_POSTGRES_FAILURES", 3)
CHAT_BREAKER_POSTGRES_WINDOW_S = float(os.environ.get("CHAT_BREAKER_POSTGRES_WINDOW_S", "60"))
CHAT_BREAKER_LLM_WINDOW_S = float(os.environ.get("CHAT_BREAKER_LLM_WINDOW_S", "300"))

# --- Handshakes, client addresses, limits while Redis is slow (docs/operations.md "Security") ---------------
# Proxies whose X-Forwarded-For is believed, as IPs or CIDRs ("10.0.0.5,10.1.0.0/16"). Empty (the
# default): nobody's, the client is the TCP peer. `serve` hands uvicorn the same list.
TRUSTED_PROXIES = env_list("TRUSTED_PROXIES", [])
# A connection whose HTTP request head (request line and headers) is not complete this long after it
# opened, or after its previous request, is closed (slowloris). At most this many connections per client
# address may be waiting for their head at once; the next one is closed at once.
CHAT_HANDSHAKE_TIMEOUT_S = float(os.environ.get("CHAT_HANDSHAKE_TIMEOUT_S", "10"))
CHAT_INCOMPLETE_HANDSHAKES_PER_IP = env_int("CHAT_INCOMPLETE_HANDSHAKES_PER_IP", 20)
# Sockets on /ws/chat/ still waiting for their `auth` frame, per client address and server process; the
# next one is closed 4429.
CHAT_UNAUTH_SOCKETS_PER_IP = env_int("CHAT_UNAUTH_SOCKETS_PER_IP", 20)
# How many server processes share the limits and which one this is (0-based); `serve` sets both for
# its children. While Redis cannot be asked, a process allows only its share of a limit, so that the
# processes together never allow more than the limit. Without an index a process takes the share
# rounded down.
CHAT_SERVER_PROCESSES = env_int("CHAT_SERVER_PROCESSES", 1)
CHAT_SERVER_INDEX: int | None = int(os.environ["CHAT_SERVER_INDEX"]) if os.environ.get("CHAT_SERVER_INDEX") else None

STATIC_URL = "static/"
# Serve /static/ from the ASGI app (single-machine layout); set SERVE_STATIC=0 behind a CDN/proxy.
SERVE_STATIC = env_bool("SERVE_STATIC", True)
STATIC_ROOT = BASE_DIR / "staticfiles"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

# --- Browser hardening headers and HTTPS (chatsite/security.py; docs/operations.md "Browser hardening headers
# and HTTPS") ---
# The defaults suit plain http://localhost (the embedded mode, `make run`). A deployment behind TLS sets the
# production values listed in docs/operations.md; `manage.py check --deploy` is clean with them.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
# Load balancers and probes call these over plain HTTP inside the network: answered, never redirected.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", False)
# Which request header says the client spoke https to the proxy, e.g. "X-Forwarded-Proto". Unset (the
# default): none. uvicorn under `serve` already takes the scheme from TRUSTED_PROXIES' X-Forwarded-Proto
# and nobody else's, so this is for a server that does not (daphne). Django believes the header from any
# peer, so it is refused unless a proxy is configured (TRUSTED_PROXIES) that overwrites it.
_PROXY_SSL_HEADER = os.environ.get("SECURE_PROXY_SSL_HEADER", "").strip()
if _PROXY_SSL_HEADER and not env_list("TRUSTED_PROXIES", []):
    raise ImproperlyConfigured(
        "SECURE_PROXY_SSL_HEADER is set but TRUSTED_PROXIES is empty: the header would be believed from any "
        "client. Configure the proxy that sets it in TRUSTED_PROXIES, or unset SECURE_PROXY_SSL_HEADER."
    )
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_" + _PROXY_SSL_HEADER.upper().replace("-", "_"), "https") if _PROXY_SSL_HEADER else None
)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# Content-Security-Policy (chatsite/security.py): scripts, styles, images, fonts and connections (the
# socket included) from this origin only; no inline script or style, no plugins, no framing.
CHAT_CONTENT_SECURITY_POLICY: dict[str, list[str]] = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'"],
    "img-src": ["'self'"],
    "font-src": ["'self'"],
    "connect-src": ["'self'"],
    "object-src": ["'none'"],
    "base-uri": ["'self'"],
    "form-action": ["'self'"],
    "frame-ancestors": ["'none'"],
}

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
