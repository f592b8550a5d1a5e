"""Connections that have not said who they are yet, counted per client address in this process.

Two stages of a connection cost the server memory and a file descriptor before any account is
known, so each is capped per address (docs/operations.md, "Handshakes, unauthenticated sockets"):

- `incomplete_heads`: TCP connections whose HTTP request head (request line and headers) has not
  arrived in full (chat/infra/uvicorn_protocols.py closes them after CHAT_HANDSHAKE_TIMEOUT_S, and
  refuses more than CHAT_INCOMPLETE_HANDSHAKES_PER_IP at once);
- `unauthenticated`: sockets on /ws/chat/ waiting for their `auth` frame (the consumer closes them
  after CHAT_AUTH_TIMEOUT_S, and closes one beyond CHAT_UNAUTH_SOCKETS_PER_IP with 4429).

Counts live in the process (its event loop is the only user); a trusted proxy's own address is
never capped here, since every client behind it shares it: the proxy caps its clients itself.

Refusals are counted in metrics and logged at most once per LOG_EVERY_S per kind, as one line with
how many there were: an attack of a thousand connections must not become a thousand log lines.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from django.conf import settings

from chat.infra import client_address
from monitoring.metrics import metrics

logger = logging.getLogger(__name__)

LOG_EVERY_S = 10.0


class PerAddress:
    """How many of one kind of pending connection each client address has open right now."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._counts: dict[str, int] = {}

    def count(self, address: str) -> int:
        return self._counts.get(address, 0)

    def try_add(self, address: str, limit: int) -> bool:
        """Count one more for `address`, unless it already has `limit`."""
        held = self._counts.get(address, 0)
        if held >= limit:
            return False
        self._counts[address] = held + 1
        return True

    def remove(self, address: str | None) -> None:
        if address is None:
            return
        held = self._counts.get(address, 0)
        if held <= 1:
            self._counts.pop(address, None)
        else:
            self._counts[address] = held - 1

    def total(self) -> int:
        return sum(self._counts.values())


incomplete_heads = PerAddress("incomplete_heads")
unauthenticated = PerAddress("unauthenticated")


class _QuietLog:
    """One log line per kind per LOG_EVERY_S, saying how many happened since the last one."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._since: dict[str, int] = {}

    def __call__(self, kind: str, message: str, *args: object) -> None:
        metrics.inc("handshakes_refused", reason=kind)
        self._since[kind] = self._since.get(kind, 0) + 1
        now = time.monotonic()
        if now - self._last.get(kind, -LOG_EVERY_S) < LOG_EVERY_S:
            return
        self._last[kind] = now
        count = self._since.pop(kind)
        logger.warning(message + " (%d such in the last %.0f s)", *args, count, LOG_EVERY_S)


refused = _QuietLog()


def admit_unauthenticated(scope: dict[str, Any]) -> str | None:
    """Count a /ws/chat/ socket that waits for its `auth` frame against its client address: the
    address (to `unauthenticated.remove` once it authenticated or closed), or None when the address
    already has CHAT_UNAUTH_SOCKETS_PER_IP such sockets and this one must be closed (4429)."""
    address = client_address.scope_client_ip(scope)
    if unauthenticated.try_add(address, settings.CHAT_UNAUTH_SOCKETS_PER_IP):
        return address
    refused("unauth_per_ip", "closed a socket from %s with 4429: too many sockets awaiting auth", address)
    return None
