"""The process's Redis client for our own keys (hot buffer, presence), one per event loop, and
`redis_call`, the one way a command path talks to Redis (our keys or the channel layer).

A BlockingConnectionPool: under a burst (hundreds of concurrent publishes) callers wait for a
connection instead of failing with MaxConnectionsError, as redis-py's default pool does at its
limit. 50 connections is far more than one process needs in flight.

Redis is an accelerator here, never the source of truth (docs/architecture.md), so a Redis that
is down or hung must cost a command at most a moment: every call is bounded by a short timeout
and counted into the process's "redis" circuit breaker, which, once open, refuses calls at once
(`CircuitOpen`) until a probe finds Redis back. Callers decide what a failure means: the buffer
falls back to the log, publishes are retried in the background, typing is dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
import redis.exceptions
from django.conf import settings

from chat.infra.breakers import CircuitBreaker, breaker
from chat.infra.per_loop import PerLoop

T = TypeVar("T")

MAX_CONNECTIONS = 50
# How long a caller waits for a free connection before giving up (then the log answers instead).
POOL_TIMEOUT_S = 5
# A Redis round trip takes well under a millisecond; one that takes a second is a Redis that is
# down, hung or partitioned. Bounds every call on a command path (reads, presence, doorbells).
REDIS_TIMEOUT_S = 1.0
# The socket-level bounds behind it, for calls made outside `redis_call` (and for connects: a
# blackholed address would otherwise take the OS's TCP connect timeout, minutes).
SOCKET_CONNECT_TIMEOUT_S = 1.0
SOCKET_TIMEOUT_S = 2.0


def _new_client(url: str) -> Any:
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=POOL_TIMEOUT_S,
        decode_responses=True,
        socket_connect_timeout=SOCKET_CONNECT_TIMEOUT_S,
        socket_timeout=SOCKET_TIMEOUT_S,
    )
    return aioredis.Redis(connection_pool=pool)


_clients: PerLoop[Any] = PerLoop(_new_client)


def redis_client(url: str | None = None) -> Any:
    return _clients.get(url or settings.REDIS_URL)


def redis_breaker() -> CircuitBreaker:
    return breaker("redis")


async def redis_call(fn: Callable[[], Awaitable[T]], *, timeout_s: float = REDIS_TIMEOUT_S) -> T:
    """`await fn()` bounded by `timeout_s` and counted into breaker("redis").

    Raises `CircuitOpen` at once while the breaker is open, and a `redis.exceptions.TimeoutError`
    (a RedisError: the consumer must not mistake a slow Redis for a slow database, as it would a
    bare TimeoutError, which is an OSError) when the call takes too long. The guard sits outside
    the timeout so that the breaker sees the timeout as a failure, not as a cancellation."""
    async with redis_breaker().guard():
        try:
            async with asyncio.timeout(timeout_s):
                return await fn()
        except TimeoutError as exc:
            raise redis.exceptions.TimeoutError(f"redis call took longer than {timeout_s}s") from exc
