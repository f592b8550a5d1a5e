"""Distributed rate limits and connection limits (the numbers live in chat/tiers.py).

Sliding-window log: a key holds the timestamps (ms) of the actions taken in the last window; an
action is allowed while fewer than `limit` are in the window, and a refusal says exactly when the
oldest one leaves it (`retry_after_ms`). A refused action is not recorded, so a refusal has no
side effect and a client that waits `retry_after_ms` is allowed. `hit()` checks several windows
atomically and records in all or none: a `send` that would start an agent run consumes a
"messages" and an "agent_runs" slot together, or neither.

With Redis configured the windows are Redis sorted sets updated by one Lua script, so the limit
holds across every server process. Without Redis (embedded mode) an in-process twin with the same
semantics answers.

While Redis cannot be asked (down, slower than REDIS_TIMEOUT_S, or its circuit open) a limit never
fails open: each server process allows only its share of it (`share`: the limit divided among
settings.CHAT_SERVER_PROCESSES, the remainder spread by key so the shares add up to the limit), and
counts against that share every action it allowed itself in the window, including those Redis
allowed before the outage (the twin mirrors every allowed action). Actions allowed during the
outage are written to Redis with the next call that reaches it, so they still count once it is
back. Connection slots work the same way (ConnectionSlots), and once Redis answers again a socket
allowed during the outage that finds the user over the limit is closed by its next heartbeat.

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
from collections.abc import Callable, Sequence
from typing import Any

import redis
from django.conf import settings
from redis.exceptions import RedisError

from chat.errors import CircuitOpen
from chat.infra import client_address
from chat.infra.breakers import breaker
from chat.infra.limit_windows import Clock, Decision, Limiter, MemoryLimiter, Window, share
from chat.infra.redis_client import redis_call, redis_client
from monitoring.metrics import metrics

__all__ = [
    "REDIS_DOWN",
    "REDIS_TIMEOUT_S",
    "ConnectionSlots",
    "Decision",
    "Limiter",
    "MemoryLimiter",
    "RedisLimiter",
    "Window",
    "client_ip",
    "get_limiter",
    "get_slots",
    "hit_sync",
    "ip_admit",
    "key",
    "share",
]

logger = logging.getLogger(__name__)
# How long a limiter call may wait for Redis before this process's share answers instead.
REDIS_TIMEOUT_S = 0.5
# Redis unreachable, too slow, or its circuit open: this process's share of the limit answers.
REDIS_DOWN: tuple[type[BaseException], ...] = (OSError, TimeoutError, RedisError, CircuitOpen)


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
# The same, after first writing the actions this process allowed while Redis was out of reach:
# after the windows' arguments, triples of (1-based key index, score, member).
_SYNC_LUA = """
local p = 3 + 2 * #KEYS
while p <= #ARGV do
  local i = tonumber(ARGV[p])
  redis.call('ZADD', KEYS[i], tonumber(ARGV[p + 1]), ARGV[p + 2])
  redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[2 + 2 * i]))
  p = p + 3
end
"""


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
        # key -> {member: (score, window_ms)}: allowed here while Redis was out of reach, not yet in Redis.
        self._unsynced: dict[str, dict[str, tuple[int, int]]] = {}
        self._unsynced_lock = threading.Lock()

    def _eval_args(
        self, windows: Sequence[Window], now: int | None = None, member: str | None = None, pending: Any = ()
    ) -> list[Any]:
        """KEYS and ARGV of _HIT_LUA for these windows, stamped now (plus _SYNC_LUA's triples, if any)."""
        now = int(self.clock() * 1000) if now is None else now
        script = _SYNC_LUA + _HIT_LUA if pending else _HIT_LUA
        args: list[Any] = [script, len(windows), *[w.key for w in windows], now, member or _member(now)]
        for w in windows:
            args += [w.limit, w.window_ms]
        for index, score, pending_member in pending:
            args += [index, score, pending_member]
        return args

    def _pending(self, windows: Sequence[Window], now: int) -> list[tuple[int, int, str]]:
        if not self._unsynced:
            return []
        with self._unsynced_lock:
            out = []
            for index, w in enumerate(windows, start=1):
                entries = self._unsynced.get(w.key)
                for pending_member, (score, span) in list((entries or {}).items()):
                    if score <= now - span:
                        del entries[pending_member]  # type: ignore[union-attr]
                    else:
                        out.append((index, score, pending_member))
            return out

    def _synced(self, windows: Sequence[Window], pending: Sequence[tuple[int, int, str]]) -> None:
        with self._unsynced_lock:
            for index, _, pending_member in pending:
                key_ = windows[index - 1].key
                entries = self._unsynced.get(key_, {})
                entries.pop(pending_member, None)
                if not entries:
                    self._unsynced.pop(key_, None)

    def _answered(self, windows: Sequence[Window], answer: list[Any], now: int, pending: Any) -> Decision:
        if pending:
            self._synced(windows, pending)
        decision = _decision(answer)
        if decision.allowed:
            self.fallback.record(windows, now)
        return decision

    def _fallback(self, windows: Sequence[Window], exc: BaseException, now: int, member: str) -> Decision:
        metrics.inc("ratelimit_fallback")
        logger.warning("rate limiter: Redis unavailable (%s); allowing this process's share", type(exc).__name__)
        shares = [Window(w.key, share(w.limit, w.key), w.window_ms) for w in windows]
        for index, w in enumerate(shares):
            if w.limit < 1:  # no share here: the other processes hold the whole limit
                return Decision(False, retry_after_ms=max(1000, breaker("redis").retry_after_ms()), refused=index)
        decision = self.fallback.hit_sync(shares, now)
        if decision.allowed:
            with self._unsynced_lock:
                for w in windows:
                    self._unsynced.setdefault(w.key, {})[member] = (now, w.window_ms)
        return decision

    async def hit(self, windows: Sequence[Window]) -> Decision:
        if not windows:
            return Decision(True)
        now = int(self.clock() * 1000)
        member = _member(now)
        pending = self._pending(windows, now)
        try:
            # Bounded and counted into breaker("redis"); while that circuit is open this fails at
            # once (CircuitOpen) and this process's share answers without waiting on Redis.
            client = self.client_factory()
            answer = await redis_call(
                functools.partial(client.eval, *self._eval_args(windows, now, member, pending)),
                timeout_s=REDIS_TIMEOUT_S,
            )
        except REDIS_DOWN as exc:
            return self._fallback(windows, exc, now, member)
        return self._answered(windows, answer, now, pending)

    def hit_sync(self, windows: Sequence[Window]) -> Decision:
        """For sync callers (the REST throttle, which runs in a worker thread)."""
        if not windows:
            return Decision(True)
        now = int(self.clock() * 1000)
        member = _member(now)
        pending = self._pending(windows, now)
        redis = breaker("redis")
        try:
            redis.before_call()  # open circuit: straight to this process's share, no 0.5 s wait
            answer = _sync_client().eval(*self._eval_args(windows, now, member, pending))
        except CircuitOpen as exc:
            return self._fallback(windows, exc, now, member)
        except REDIS_DOWN as exc:
            redis.record_failure(exc)
            return self._fallback(windows, exc, now, member)
        redis.record_success()
        return self._answered(windows, answer, now, pending)


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
        _limiter = RedisLimiter(redis_client) if settings.REDIS_URL else MemoryLimiter()
    return _limiter


def hit_sync(windows: Sequence[Window]) -> Decision:
    limiter = get_limiter()
    if isinstance(limiter, RedisLimiter | MemoryLimiter):
        return limiter.hit_sync(windows)
    raise TypeError(f"{type(limiter).__name__} has no sync path")


def key(*parts: object) -> str:
    return ":".join([settings.CHANNEL_PREFIX, "rl", *map(str, parts)])


def client_ip(meta: dict[str, Any]) -> str:
    """The caller's address: the TCP peer, or the client a trusted proxy forwarded for
    (chat/infra/client_address.py; settings.TRUSTED_PROXIES, default none)."""
    return client_address.meta_client_ip(meta)


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
    Redis out of reach: the socket is allowed only within this process's share of the limit
    (`share`), counting every socket of the user this process holds, however it was allowed. The
    socket's heartbeat refreshes its slot with the limit (`refresh`): once Redis answers again, a
    socket allowed during the outage that does not fit is told so, and closed.
    """

    def __init__(self, clock: Clock = time.time) -> None:
        self.clock = clock
        self._memory: dict[str, dict[str, int]] = {}
        self._held: dict[int, set[str]] = {}  # this process's sockets per user (Redis mode)
        self._lock = threading.Lock()

    def _key(self, user_id: int) -> str:
        return key("conns", user_id)

    async def acquire(self, user_id: int, session_id: str, limit: int) -> bool:
        now = int(self.clock() * 1000)
        ttl = int(settings.CHAT_CONNECTION_TTL_S * 1000)
        if not settings.REDIS_URL:
            return self._acquire_memory(self._key(user_id), session_id, limit, now, ttl)
        try:
            granted = bool(
                int(
                    await redis_call(
                        functools.partial(
                            redis_client().eval, _ACQUIRE_LUA, 1, self._key(user_id), now, session_id, limit, ttl
                        ),
                        timeout_s=REDIS_TIMEOUT_S,
                    )
                )
            )
        except REDIS_DOWN:
            granted = self._acquire_share(user_id, session_id, limit)
        if granted:
            self._held.setdefault(user_id, set()).add(session_id)
        elif session_id in self._held.get(user_id, ()):
            self._held[user_id].discard(session_id)  # refused on refresh: its socket is closed, not released
        return granted

    def _acquire_share(self, user_id: int, session_id: str, limit: int) -> bool:
        metrics.inc("connection_slots_unavailable")
        held = self._held.get(user_id, set())
        if session_id in held:
            return True  # a heartbeat of a socket this process already counts
        allowed = share(limit, self._key(user_id))
        if len(held) >= allowed:
            logger.warning("connection slots: Redis unavailable; refusing beyond this process's share (%s)", allowed)
            return False
        logger.warning("connection slots: Redis unavailable; allowing within this process's share (%s)", allowed)
        return True

    def _acquire_memory(self, key_: str, session_id: str, limit: int, now: int, ttl: int) -> bool:
        with self._lock:
            slots = self._memory.setdefault(key_, {})
            for sid in [s for s, expiry in slots.items() if expiry <= now]:
                del slots[sid]
            if session_id not in slots and len(slots) >= limit:
                return False
            slots[session_id] = now + ttl
            return True

    async def refresh(self, user_id: int, session_id: str, limit: int = 1 << 30) -> bool:
        """Keep the slot alive (called from the socket's heartbeat, well within the TTL). False: the
        slot is not held and the user is at `limit` (a socket allowed while Redis was unreachable)."""
        return await self.acquire(user_id, session_id, limit)

    async def release(self, user_id: int, session_id: str) -> None:
        held = self._held.get(user_id)
        if held is not None:
            held.discard(session_id)
            if not held:
                del self._held[user_id]
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
