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

A caller that stops waiting does not cancel the command it sent. redis-py closes a connection whose
command was cancelled mid-reply, and a fresh connection costs the TCP accept, HELLO and CLIENT
SETINFO, each queued behind whatever keeps Redis busy: measured against a Redis kept busy by another
client (DEBUG SLEEP 0.1 in a loop), a call on a warm connection took about 0.1 s, one that had to
connect 0.65 s. With every timed-out call closing its connection, a Redis that was merely busy made
every following call connect again and time out as well, until the breaker opened. So the command
runs in a task of its own that the caller's deadline does not cancel: it finishes on its connection
(bounded by LATE_CALL_BOUND_S), which goes back to the pool for the next caller.
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
# How long a command its caller stopped waiting for may still run (waiting for a pooled connection
# included) before it is cancelled after all: its connection is then closed, as a hung one should be.
LATE_CALL_BOUND_S = SOCKET_TIMEOUT_S


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
    the timeout so that the breaker sees the timeout as a failure, not as a cancellation. The
    command itself is not cancelled by the timeout (see the module's docstring)."""
    async with redis_breaker().guard():
        call = asyncio.ensure_future(_bounded(fn, max(timeout_s, LATE_CALL_BOUND_S)))
        try:
            async with asyncio.timeout(timeout_s):
                return await asyncio.shield(call)
        except TimeoutError as exc:
            call.add_done_callback(_forget)
            raise redis.exceptions.TimeoutError(f"redis call took longer than {timeout_s}s") from exc
        except BaseException:
            call.add_done_callback(_forget)  # the caller was cancelled: the command still ends by itself
            raise


async def _bounded(fn: Callable[[], Awaitable[T]], bound_s: float) -> T:
    async with asyncio.timeout(bound_s):
        return await fn()


def _forget(call: asyncio.Future[Any]) -> None:
    """Nobody awaits this call any more: take its outcome so asyncio does not log it as lost."""
    if not call.cancelled():
        call.exception()
