"""Leases with an hourly budget in Redis: "one at a time, at most N per window" for long jobs (the workspace
export, enterprise/export.py).

`admit` takes the lease and counts the start in the window atomically (one Lua script): a caller refused
because the lease is held spends nothing of the window, and one refused by the window takes no lease. The lease
carries a random token and a time to live; its holder renews it while it works (`renew`) and frees it at the end
(`release`); both compare the token first, so a holder whose lease expired and was taken by another can neither
extend nor free the new holder's. A holder whose process dies frees it when the time to live runs out.

Unlike the rate limiter (chat/infra/rate_limiter.py), which lets each process allow its share while Redis is out
of reach, `admit` never fails open: Redis down, too slow or its circuit open raises `LeaseUnavailable`, and the
caller refuses. A job that runs for minutes is worth a retry, not an unbounded number of copies.
"""

from __future__ import annotations

import functools
import secrets
import time
from dataclasses import dataclass
from typing import Any

import redis
from django.conf import settings

from chat.errors import CircuitOpen
from chat.infra.breakers import breaker
from chat.infra.redis_client import redis_call, redis_client

# How long `admit` waits for Redis before refusing: it answers a person waiting on a download, not a hot path.
ADMIT_TIMEOUT_S = 1.0
REDIS_DOWN: tuple[type[BaseException], ...] = (OSError, TimeoutError, redis.RedisError, CircuitOpen)

# KEYS: the lease, the window's zset. ARGV: now_ms, token, lease_ms, limit, window_ms.
# Returns {1, 0} admitted, {0, "busy", ms until the lease expires} or {0, "rate", ms until a start leaves the window}.
_ADMIT_LUA = """
local now = tonumber(ARGV[1])
local lease_ms = tonumber(ARGV[3])
local limit = tonumber(ARGV[4])
local window = tonumber(ARGV[5])
local held = redis.call('PTTL', KEYS[1])
if held == -1 then return {0, 'busy', lease_ms} end
if held > 0 then return {0, 'busy', held} end
if limit < 1 then return {0, 'rate', window} end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
local n = redis.call('ZCARD', KEYS[2])
if n >= limit then
  local oldest = redis.call('ZRANGE', KEYS[2], n - limit, n - limit, 'WITHSCORES')
  return {0, 'rate', tonumber(oldest[2]) + window - now}
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', lease_ms)
redis.call('ZADD', KEYS[2], now, ARGV[2])
redis.call('PEXPIRE', KEYS[2], window)
return {1, 0}
"""
_RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2])) end
return 0
"""
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LeaseUnavailable(Exception):
    """Redis could not be asked: the lease and the window cannot be checked, so nothing is admitted."""


@dataclass(frozen=True)
class Admission:
    admitted: bool
    token: str = ""  # when admitted: the lease's token, for renew and release
    refused_by: str = ""  # when refused: "busy" (the lease is held) or "rate" (the window is full)
    retry_after_ms: int = 0


def key(*parts: object) -> str:
    return ":".join([settings.CHANNEL_PREFIX, "lease", *map(str, parts)])


_sync: Any = None


def _sync_client() -> Any:
    """A blocking client for sync callers (a REST view in its worker thread), bounded like every Redis call."""
    global _sync
    if _sync is None:
        _sync = redis.Redis.from_url(
            settings.REDIS_URL,
            socket_timeout=ADMIT_TIMEOUT_S,
            socket_connect_timeout=ADMIT_TIMEOUT_S,
            decode_responses=True,
        )
    return _sync


def admit(*, lease_key: str, window_key: str, lease_s: float, limit: int, window_s: float) -> Admission:
    """Take the lease and count a start in the window, or neither. Raises LeaseUnavailable when Redis cannot
    answer (or none is configured: embedded mode has no shared place to hold a lease)."""
    if not settings.REDIS_URL:
        raise LeaseUnavailable("no REDIS_URL configured")
    token = secrets.token_hex(16)
    circuit = breaker("redis")
    try:
        circuit.before_call()  # an open circuit refuses at once instead of waiting out the timeout
        answer = _sync_client().eval(
            _ADMIT_LUA,
            2,
            lease_key,
            window_key,
            int(time.time() * 1000),
            token,
            max(1, int(lease_s * 1000)),
            limit,
            max(1, int(window_s * 1000)),
        )
    except CircuitOpen as exc:
        raise LeaseUnavailable("redis circuit open") from exc
    except REDIS_DOWN as exc:
        circuit.record_failure(exc)
        raise LeaseUnavailable(type(exc).__name__) from exc
    circuit.record_success()
    if int(answer[0]):
        return Admission(True, token=token)
    return Admission(False, refused_by=str(answer[1]), retry_after_ms=max(1, int(answer[2])))


async def renew(*, lease_key: str, token: str, lease_s: float) -> bool:
    """Extend the lease if it is still this token's; False if it was lost (or Redis did not answer)."""
    client = redis_client()
    try:
        done = await redis_call(
            functools.partial(client.eval, _RENEW_LUA, 1, lease_key, token, max(1, int(lease_s * 1000)))
        )
    except REDIS_DOWN:
        return False
    return bool(int(done))


async def release(*, lease_key: str, token: str) -> None:
    """Free the lease if it is still this token's. Redis out of reach: it expires by itself."""
    client = redis_client()
    try:
        await redis_call(functools.partial(client.eval, _RELEASE_LUA, 1, lease_key, token))
    except REDIS_DOWN:
        return
