"""Login guard, HTTPS and browser hardening headers (docs/operations.md "Security")."""

from __future__ import annotations

import json
import os

from django.core.exceptions import ImproperlyConfigured

from chatsite.config.env import env_bool, env_int, env_list

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
# socket included) from this origin only; no inline script or style, no plugins, no framing. Images
# may also be data: URLs: the tab's favicon carries the unread count, drawn on a canvas (unread-title.js).
CHAT_CONTENT_SECURITY_POLICY: dict[str, list[str]] = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'"],
    "img-src": ["'self'", "data:"],
    "font-src": ["'self'"],
    "connect-src": ["'self'"],
    "object-src": ["'none'"],
    "base-uri": ["'self'"],
    "form-action": ["'self'"],
    "frame-ancestors": ["'none'"],
}

# Webhook URLs may point at private, loopback, link-local, multicast or reserved addresses only when this is on
# (docs/operations.md "Webhooks": an endpoint must not reach into the deployment's own network). Tests turn it on
# for their local receiver.
WEBHOOKS_ALLOW_PRIVATE = env_bool("WEBHOOKS_ALLOW_PRIVATE", False)
