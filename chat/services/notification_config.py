"""The notification delivery's settings: defaults here, overrides key by key from
settings.NOTIFICATIONS (the env var NOTIFICATIONS_JSON), and the VAPID key pair for Web Push from
settings.VAPID_PRIVATE_KEY (`manage.py vapid_keys` makes one). docs/operations.md "Notifications"
lists them."""

from __future__ import annotations

import base64
from functools import cache
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from django.conf import settings

DEFAULTS: dict[str, Any] = {
    # The VAPID `sub` claim: how a push service reaches whoever runs this server.
    "vapid_subject": "mailto:admin@localhost",
    # Push services allowed as subscription endpoints (a host or a parent domain of it), over https
    # only: a subscription names a URL the worker will POST to, so anything else would let a user
    # point the server at internal addresses.
    "push_hosts": [
        "fcm.googleapis.com",
        "updates.push.services.mozilla.com",
        "push.services.mozilla.com",
        "notify.windows.com",
        "push.apple.com",
    ],
    # host:port pairs also allowed over plain http: only for a local test endpoint, never in production.
    "push_insecure_hosts": [],
    "push_ttl_s": 24 * 3600,  # how long a push service keeps a message for an offline device
    "push_timeout_s": 10.0,
    "push_max_attempts": 6,
    "push_retry_base_s": 5.0,  # backoff: base × 2^attempt, capped
    "push_retry_max_s": 600.0,
    "max_subscriptions_per_user": 20,  # devices; a new one beyond this replaces the oldest
    # At most one push per kind and conversation per window; what arrives within it goes out as one
    # push with its count when the window ends.
    "collapse_window_s": 60.0,
    # Email: at most one digest per user per period, with what stayed unread for at least the grace.
    "digest_period_s": 3600.0,
    "digest_grace_s": 600.0,
    "digest_max_items": 50,
    "digest_max_attempts": 5,
    "digest_retry_base_s": 60.0,
    "digest_retry_max_s": 3600.0,
    # Where links in emails point (the site as users reach it).
    "site_url": "http://localhost:8000",
    # The worker: how often it looks, and how many rows one pass takes of each kind of work.
    "worker_poll_s": 1.0,
    "batch": 200,
}


def option(name: str) -> Any:
    overrides: dict[str, Any] = getattr(settings, "NOTIFICATIONS", {}) or {}
    return overrides[name] if name in overrides else DEFAULTS[name]


def unknown_options() -> list[str]:
    """Keys of NOTIFICATIONS_JSON this module does not know (a typo would otherwise be ignored)."""
    return sorted(set(getattr(settings, "NOTIFICATIONS", {}) or {}) - set(DEFAULTS))


def vapid_private_key() -> str:
    return str(getattr(settings, "VAPID_PRIVATE_KEY", "") or "")


def push_configured() -> bool:
    return bool(vapid_private_key())


def vapid_public_key() -> str | None:
    """The application server key a browser subscribes with (base64url, uncompressed P-256 point),
    derived from the private key; None while Web Push is not configured."""
    private = vapid_private_key()
    return _public_of(private) if private else None


@cache
def _public_of(private_b64: str) -> str:
    raw = b64url_decode(private_b64)
    key = ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())
    point = key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    return b64url_encode(point)


def generate_vapid_private_key() -> str:
    """A new VAPID private key: 32 raw bytes, base64url without padding (what py_vapid reads)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return b64url_encode(key.private_numbers().private_value.to_bytes(32, "big"))


def b64url_encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
