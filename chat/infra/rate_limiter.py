"""Distributed rate limits and connection limits (the numbers live in chat/tiers.py).

Sliding-window log: a key holds the timestamps (ms) of the actions taken in the last window; an
action is allowed while fewer than `limit` are in the window, and a refusal says exactly when the
oldest one leaves it (`retry_after_ms`). A refused action is not recorded, so a refusal has no
side effect and a client that waits `retry_after_ms` is allowed. `hit()` checks several windows
atomically and records in all or none: a `send` that would start an agent run consumes a
"messages" and an "agent_runs" slot together, or neither.

With Redis configured the windows are Redis sorted sets updated by one Lua script, so the limit
holds across every server process. Without Redis (embedded mode) — and, degraded, while Redis is
unreachable — an in-process twin with the same semantics answers; an outage therefore relaxes
limits to per-process rather than refusing everyone or letting everything through.

Time is injected (`clock`, seconds) so tests advance a fake clock instead of sleeping. Processes
must share a clock (one host, or NTP) since every caller passes its own `now`.
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis
from django.conf import settings
from redis.exceptions import RedisError

from chat.errors import CircuitOpen
from chat.infra.breakers import breaker
from chat.infra.redis_client import redis_call, redis_client
from monitoring.metrics import metrics

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
# How long a limiter call may wait for Redis before the in-process twin answers instead.
REDIS_TIMEOUT_S = 0.5
# Redis unreachable, too slow, or its circuit open: the in-process twin answers (or the slot is granted).
REDIS_DOWN: tuple[type[BaseException], ...] = (OSError, TimeoutError, RedisError, CircuitOpen)


@dataclass(frozen=True)
class Window:
    key: str
    limit: int
    window_ms: int


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_ms: int = 0  # when refused: the wait after which the same call is allowed
    remaining: int = 0  # when allowed: the smallest number of further actions left in any window
    refused: int = -1  # when refused: the index of the window that refused (the longest wait)


class Limiter(Protocol):
    async def hit(self, windows: Sequence[Window]) -> Decision: ...


# KEYS: one zset per window. ARGV: now_ms, member, then limit and window_ms per key.
# Returns {1, remaining} or {0, retry_after_ms, 1-based index of the window that refused}.
_HIT_LUA = """
local now = tonumber(ARGV[1])
local member = ARGV[2]
local remaining = -1
local retry = 0
local which = 0
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[1 + 2 * i])
  local window = tonumber(ARGV[2 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local n = redis.call('ZCARD', key)
  if n >= limit then
    local oldest = redis.call('ZRANGE', key, n - limit, n - limit, 'WITHSCORES')
    local wait = tonumber(oldest[2]) + window - now
    if wait > retry then retry = wait; which = i end
  else
    local left = limit - n - 1
    if remaining < 0 or left < remaining then remaining = left end
  end
end
if retry > 0 then return {0, retry, which} end
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, member)
  redis.call('PEXPIRE', key, tonumber(ARGV[2 + 2 * i]))
end
return {1, remaining}
"""


class MemoryLimiter:
    """The in-process twin: the same sliding windows in deques (embedded mode, Redis outages)."""

    def __init__(self, clock: Clock = time.time) -> None:
        self.clock = clock
        self._windows: dict[str, deque[int]] = {}
        self._lock = threading.Lock()  # the REST throttle calls it from worker threads

    def hit_sync(self, windows: Sequence[Window]) -> Decision:
        now = int(self.clock() * 1000)
        with self._lock:
            retry = 0
            which = -1
            remaining: int | None = None
            for index, w in enumerate(windows):
                log = self._windows.setdefault(w.key, deque())
                while log and log[0] <= now - w.window_ms:
                    log.popleft()
                if len(log) >= w.limit:
                    wait = log[len(log) - w.limit] + w.window_ms - now
                    if wait > retry:
                        retry, which = wait, index
                else:
                    left = w.limit - len(log) - 1
                    remaining = left if remaining is None else min(remaining, left)
            if retry > 0:
                return Decision(False, retry_after_ms=retry, refused=which)
            for w in windows:
                self._windows[w.key].append(now)
            if len(self._windows) > 100_000:  # idle keys: drop the empty ones now and then
                for key in [k for k, log in self._windows.items() if not log]:
                    del self._windows[key]
            return Decision(True, remaining=remaining or 0)

    async def hit(self, windows: Sequence[Window]) -> Decision:
        return self.hit_sync(windows)


_members = itertools.count()
_node = uuid.uuid4().hex[:8]


def _member(now_ms: int) -> str:
    # Unique per action even when two processes act in the same millisecond.
    return f"{now_ms}:{_node}:{next(_members)}"


class RedisLimiter:
    def __init__(self, client_factory: Callable[[], Any], clock: Clock = time.time) -> None:
        self.client_factory = client_factory
        self.clock = clock
        self.fallback = MemoryLimiter(clock)

    def _eval_args(self, windows: Sequence[Window]) -> list[Any]:
        """KEYS and ARGV of _HIT_LUA for these windows, stamped now."""
        now = int(self.clock() * 1000)
        args: list[Any] = [_HIT_LUA, len(windows), *[w.key for w in windows], now, _member(now)]
        for w in windows:
            args += [w.limit, w.window_ms]
        return args

    def _fallback(self, windows: Sequence[Window], exc: BaseException) -> Decision:
        metrics.inc("ratelimit_fallback")
        logger.warning("rate limiter: Redis unavailable (%s); limiting per process", type(exc).__name__)
        return self.fallback.hit_sync(windows)

    async def hit(self, windows: Sequence[Window]) -> Decision:
        if not windows:
            return Decision(True)
        try:
            # Bounded and counted into breaker("redis"); while that circuit is open this fails at
            # once (CircuitOpen) and the in-process twin answers without waiting on Redis.
            client = self.client_factory()
            answer = await redis_call(
                functools.partial(client.eval, *self._eval_args(windows)), timeout_s=REDIS_TIMEOUT_S
            )
        except REDIS_DOWN as exc:
            return self._fallback(windows, exc)
        return _decision(answer)

    def hit_sync(self, windows: Sequence[Window]) -> Decision:
        """For sync callers (the REST throttle, which runs in a worker thread)."""
        if not windows:
            return Decision(True)
        redis = breaker("redis")
        try:
            redis.before_call()  # open circuit: straight to the in-process window, no 0.5 s wait
            answer = _sync_client().eval(*self._eval_args(windows))
        except CircuitOpen as exc:
            return self._fallback(windows, exc)
        except REDIS_DOWN as exc:
            redis.record_failure(exc)
            return self._fallback(windows, exc)
        redis.record_success()
        return _decision(answer)


def _decision(answer: list[Any]) -> Decision:
    if int(answer[0]):
        return Decision(True, remaining=max(0, int(answer[1])))
    return Decision(False, retry_after_ms=max(1, int(answer[1])), refused=int(answer[2]) - 1)


_sync: Any = None


def _sync_client() -> Any:
    global _sync
    if _sync is None:
        _sync = redis.Redis.from_url(
            settings.REDIS_URL, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
        )
    return _sync


_limiter: Limiter | None = None


def get_limiter() -> Limiter:
    global _limiter
    if _limiter is None:
        if settings.REDIS_URL:
                _limiter = RedisLimiter(redis_client)
        else:
            _limiter = MemoryLimiter()
    return _limiter


def hit_sync(windows: Sequence[Window]) -> Decision:
    limiter = get_limiter()
    if isinstance(limiter, RedisLimiter | MemoryLimiter):
        return limiter.hit_sync(windows)
    raise TypeError(f"{type(limiter).__name__} has no sync path")


def key(*parts: object) -> str:
    return ":".join([settings.CHANNEL_PREFIX, "rl", *map(str, parts)])


def client_ip(meta: dict[str, Any]) -> str:
    """The caller's address as the ASGI server saw it (uvicorn already applied X-Forwarded-For
    from its trusted proxies; we do not trust the header ourselves)."""
    return str(meta.get("REMOTE_ADDR") or "unknown")


def ip_admit(endpoint: str, ip: str) -> Decision:
    """Per-IP admission on the login and token endpoints (settings.CHAT_LOGIN_RATE)."""
    limit, window_s = settings.CHAT_LOGIN_RATE
    return hit_sync([Window(key("ip", endpoint, ip), int(limit), int(float(window_s) * 1000))])


# --- connection slots --------------------------------------------------------------------------

# KEYS[1]: zset of session ids scored by expiry (ms). ARGV: now_ms, session, limit, ttl_ms.
_ACQUIRE_LUA = """
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[2]) == false and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]))
return 1
"""


class ConnectionSlots:
    """How many sockets each user has open, across processes.

    Each socket holds a slot (its session id) that expires CHAT_CONNECTION_TTL_S after its last
    refresh, so a process that dies without releasing its slots frees them within that time.
    Redis unreachable: the slot is granted (fail open) — refusing every reconnect during an outage
    would turn a Redis blip into a full disconnect of the product.
    """

    def __init__(self, clock: Clock = time.time) -> None:
        self.clock = clock
        self._memory: dict[str, dict[str, int]] = {}
        self._lock = threading.Lock()

    def _key(self, user_id: int) -> str:
        return key("conns", user_id)

    async def acquire(self, user_id: int, session_id: str, limit: int) -> bool:
        now = int(self.clock() * 1000)
        ttl = int(settings.CHAT_CONNECTION_TTL_S * 1000)
        if not settings.REDIS_URL:
            return self._acquire_memory(self._key(user_id), session_id, limit, now, ttl)
        try:
            granted = await redis_call(
                functools.partial(
                    redis_client().eval, _ACQUIRE_LUA, 1, self._key(user_id), now, session_id, limit, ttl
                ),
                timeout_s=REDIS_TIMEOUT_S,
            )
        except REDIS_DOWN:
            metrics.inc("connection_slots_unavailable")
            logger.warning("connection slots: Redis unavailable; granting the slot")
            return True
        return bool(int(granted))

    def _acquire_memory(self, key_: str, session_id: str, limit: int, now: int, ttl: int) -> bool:
        with self._lock:
            slots = self._memory.setdefault(key_, {})
            for sid in [s for s, expiry in slots.items() if expiry <= now]:
                del slots[sid]
            if session_id not in slots and len(slots) >= limit:
                return False
            slots[session_id] = now + ttl
            return True

    async def refresh(self, user_id: int, session_id: str) -> None:
        """Keep the slot alive (called from the socket's heartbeat, well within the TTL)."""
        await self.acquire(user_id, session_id, limit=1 << 30)

    async def release(self, user_id: int, session_id: str) -> None:
        if not settings.REDIS_URL:
            with self._lock:
                self._memory.get(self._key(user_id), {}).pop(session_id, None)
            return
        try:
            await redis_call(functools.partial(redis_client().zrem, self._key(user_id), session_id))
        except REDIS_DOWN:
            pass  # the slot expires on its own


_slots: ConnectionSlots | None = None


def get_slots() -> ConnectionSlots:
    global _slots
    if _slots is None:
        _slots = ConnectionSlots()
    return _slots
