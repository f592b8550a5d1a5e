"""How a socket keeps working while PostgreSQL is unreachable: which commands must pass the
database's circuit breaker (and so answer `unavailable` at once while it is open), and the one
place where a socket may act on what it already knows instead of asking the database."""

from __future__ import annotations

from typing import Any

from django.db import InterfaceError, OperationalError
from redis.exceptions import RedisError

from chat.infra.breakers import CircuitBreaker, breaker
from chat.selectors import Access

# A dependency failing under a command: the client is told to retry (docs/protocol.md `unavailable`).
DEPENDENCY_ERRORS = (OSError, RedisError, OperationalError, InterfaceError)

# Commands that touch no database: they are not refused while the PostgreSQL circuit is open.
NO_DATABASE = frozenset({"ping"})


def database_failure(exc: BaseException) -> bool:
    return isinstance(exc, DEPENDENCY_ERRORS) and not isinstance(exc, RedisError)


def database_breaker(
    command_type: str, fields: dict[str, Any], subscriptions: set[str], held: dict[str, Access]
) -> CircuitBreaker | None:
    """The circuit a command must pass, or None for one that needs no database: ping, leaving a
    subscription (the socket's own state), typing while the database is down (degraded_access)."""
    if command_type in NO_DATABASE:
        return None
    if command_type == "typing" and degraded_access(fields, held) is not None:
        return None
    leaving = fields.get("conversation")
    if command_type == "unsubscribe" and isinstance(leaving, str) and leaving in subscriptions:
        return None
    return breaker("postgres")


def degraded_access(fields: dict[str, Any], held: dict[str, Access]) -> Access | None:
    """While the PostgreSQL circuit is not closed, ephemeral commands (typing) on a conversation
    this socket is subscribed to use the access its subscription was granted with (`held`), instead
    of failing for lack of a membership query. Otherwise every command checks membership afresh."""
    if breaker("postgres").state == "closed":
        return None
    conversation = fields.get("conversation")
    return held.get(conversation) if isinstance(conversation, str) else None
