"""The rate limiter's sync road (the REST throttle and the login endpoints), its Redis-down
fallback, the settings-chosen singletons and the key layout, which the socket tests do not reach."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.conf import settings

from chat.errors import CircuitOpen
from chat.infra import rate_limiter
from chat.infra.breakers import breaker
from chat.infra.rate_limiter import (
    ConnectionSlots,
    Decision,
    MemoryLimiter,
    RedisLimiter,
    Window,
    client_ip,
    get_limiter,
    get_slots,
    hit_sync,
    ip_admit,
    key,
)
from monitoring.metrics import metrics


class Clock:
    def __init__(self) -> None:
        self.now = 2_000_000.0

    def __call__(self) -> float:
        return self.now


def windows(limit: int = 2, window_ms: int = 1000) -> list[Window]:
    return [Window(key("mut", uuid.uuid4().hex), limit, window_ms)]


@pytest.fixture
def fresh_singletons() -> Any:
    saved = (rate_limiter._limiter, rate_limiter._slots, rate_limiter._sync)
    rate_limiter._limiter = rate_limiter._slots = rate_limiter._sync = None
    yield
    rate_limiter._limiter, rate_limiter._slots, rate_limiter._sync = saved


def test_key_layout() -> None:
    assert key("ip", "login", "1.2.3.4") == f"{settings.CHANNEL_PREFIX}:rl:ip:login:1.2.3.4"


def test_client_ip_is_the_servers_remote_addr() -> None:
    assert client_ip({"REMOTE_ADDR": "10.0.0.1", "HTTP_X_FORWARDED_FOR": "6.6.6.6"}) == "10.0.0.1"
    assert client_ip({}) == "unknown"
    assert client_ip({"REMOTE_ADDR": ""}) == "unknown"


def test_redis_sync_road_counts_and_refuses() -> None:
    clock = Clock()
    limiter = RedisLimiter(rate_limiter.redis_client, clock=clock)
    ws = windows(limit=2)
    assert limiter.hit_sync([]) == Decision(True)
    assert limiter.hit_sync(ws) == Decision(True, remaining=1)
    assert limiter.hit_sync(ws) == Decision(True, remaining=0)
    refused = limiter.hit_sync(ws)
    assert refused.allowed is False
    assert refused.refused == 0
    assert 0 < refused.retry_after_ms <= 1000
    assert breaker("redis").state == "closed"
    clock.now += 1.001
    assert limiter.hit_sync(ws).allowed is True


def test_redis_sync_road_falls_back_per_process_when_redis_is_down(monkeypatch: Any) -> None:
    class Down:
        def eval(self, *args: Any) -> Any:
            raise ConnectionError("refused")

    monkeypatch.setattr(rate_limiter, "_sync_client", lambda: Down())
    limiter = RedisLimiter(rate_limiter.redis_client, clock=Clock())
    ws = windows(limit=1)
    before = metrics.counter("ratelimit_fallback")
    assert limiter.hit_sync(ws) == Decision(True, remaining=0)
    assert limiter.hit_sync(ws).allowed is False  # the in-process window remembers the first hit
    assert metrics.counter("ratelimit_fallback") == before + 2


def test_redis_sync_road_skips_redis_while_its_circuit_is_open(monkeypatch: Any) -> None:
    calls: list[Any] = []

    class Spy:
        def eval(self, *args: Any) -> Any:
            calls.append(args)
            return [1, 0]

    monkeypatch.setattr(rate_limiter, "_sync_client", lambda: Spy())
    monkeypatch.setattr(breaker("redis"), "before_call", lambda: (_ for _ in ()).throw(CircuitOpen("redis", 100)))
    limiter = RedisLimiter(rate_limiter.redis_client, clock=Clock())
    assert limiter.hit_sync(windows(limit=3)) == Decision(True, remaining=2)
    assert calls == []


async def test_async_fallback_when_redis_is_down() -> None:
    class Down:
        async def eval(self, *args: Any) -> Any:
            raise ConnectionError("refused")

    limiter = RedisLimiter(lambda: Down(), clock=Clock())
    ws = windows(limit=1)
    assert await limiter.hit([]) == Decision(True)
    assert await limiter.hit(ws) == Decision(True, remaining=0)
    refused = await limiter.hit(ws)
    assert (refused.allowed, refused.refused) == (False, 0)
    assert refused.retry_after_ms == 1000


def test_eval_args_carry_every_window() -> None:
    clock = Clock()
    limiter = RedisLimiter(rate_limiter.redis_client, clock=clock)
    ws = [Window("a", 3, 100), Window("b", 5, 200)]
    args = limiter._eval_args(ws)
    assert args[1:4] == [2, "a", "b"]
    assert args[4] == 2_000_000_000
    assert args[5].startswith("2000000000:")
    assert args[6:] == [3, 100, 5, 200]


def test_memory_limiter_edges() -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock)
    short, long = Window("s", 1, 1000), Window("l", 3, 5000)
    assert limiter.hit_sync([short, long]) == Decision(True, remaining=0)
    refused = limiter.hit_sync([short, long])
    assert refused == Decision(False, retry_after_ms=1000, refused=0)
    clock.now += 1.0  # exactly one window later the first hit has left the short window
    assert limiter.hit_sync([short, long]) == Decision(True, remaining=0)
    assert list(limiter._windows["l"]) == [2_000_000_000, 2_000_001_000]  # the refused hit was not counted


def test_memory_limiter_picks_the_longest_wait() -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock)
    a, b = Window("a", 1, 1000), Window("b", 1, 3000)
    limiter.hit_sync([a, b])
    clock.now += 0.5
    assert limiter.hit_sync([a, b]) == Decision(False, retry_after_ms=2500, refused=1)


def test_get_limiter_follows_settings(fresh_singletons: Any, settings: Any) -> None:
    limiter = get_limiter()
    assert isinstance(limiter, RedisLimiter)
    assert limiter.client_factory is rate_limiter.redis_client
    assert get_limiter() is limiter
    rate_limiter._limiter = None
    settings.REDIS_URL = ""
    assert isinstance(get_limiter(), MemoryLimiter)


def test_module_hit_sync_refuses_limiters_without_a_sync_road(fresh_singletons: Any) -> None:
    class AsyncOnly:
        async def hit(self, windows: Any) -> Decision:
            return Decision(True)

    rate_limiter._limiter = AsyncOnly()  # type: ignore[assignment]
    with pytest.raises(TypeError, match="AsyncOnly has no sync path"):
        hit_sync(windows())
    rate_limiter._limiter = MemoryLimiter(Clock())
    assert hit_sync(windows(limit=2)) == Decision(True, remaining=1)


def test_sync_client_is_one_per_process(fresh_singletons: Any) -> None:
    client = rate_limiter._sync_client()
    assert rate_limiter._sync_client() is client
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == rate_limiter.REDIS_TIMEOUT_S
    assert kwargs["socket_connect_timeout"] == rate_limiter.REDIS_TIMEOUT_S
    assert client.ping() is True


def test_ip_admit_uses_the_login_rate(fresh_singletons: Any, settings: Any) -> None:
    settings.CHAT_LOGIN_RATE = [2, 60]
    ip = f"192.0.2.{uuid.uuid4().int % 250}-{uuid.uuid4().hex[:6]}"
    assert ip_admit("login", ip) == Decision(True, remaining=1)
    assert ip_admit("login", ip) == Decision(True, remaining=0)
    refused = ip_admit("login", ip)
    assert refused.allowed is False
    assert 59_000 < refused.retry_after_ms <= 60_000
    assert ip_admit("token", ip).allowed is True  # each endpoint has its own window
    assert rate_limiter.redis_client is not None
    redis = rate_limiter._sync_client()
    assert redis.zcard(key("ip", "login", ip)) == 2


def test_get_slots_is_one_per_process(fresh_singletons: Any) -> None:
    slots = get_slots()
    assert isinstance(slots, ConnectionSlots)
    assert get_slots() is slots


async def test_connection_slots_in_redis() -> None:
    clock = Clock()
    slots = ConnectionSlots(clock)
    user = uuid.uuid4().int % 10**9
    assert slots._key(user) == key("conns", user)
    assert await slots.acquire(user, "s1", 2) is True
    assert await slots.acquire(user, "s2", 2) is True
    assert await slots.acquire(user, "s3", 2) is False
    assert await slots.acquire(user, "s1", 2) is True  # a held slot is re-granted (refresh)
    await slots.release(user, "s1")
    assert await slots.acquire(user, "s3", 2) is True
    redis = rate_limiter._sync_client()
    ttl = redis.pttl(slots._key(user))
    assert 0 < ttl <= settings.CHAT_CONNECTION_TTL_S * 1000
    clock.now += settings.CHAT_CONNECTION_TTL_S  # every slot has expired by now
    assert await slots.acquire(user, "s4", 1) is True
    await slots.refresh(user, "s5")  # a refresh is never refused
    assert redis.zscore(slots._key(user), "s5") == (clock.now + settings.CHAT_CONNECTION_TTL_S) * 1000
    redis.delete(slots._key(user))


async def test_connection_slots_in_memory(settings: Any) -> None:
    settings.REDIS_URL = ""
    clock = Clock()
    slots = ConnectionSlots(clock)
    assert await slots.acquire(1, "a", 1) is True
    assert await slots.acquire(1, "b", 1) is False
    assert await slots.acquire(2, "b", 1) is True  # per user
    await slots.release(1, "a")
    await slots.release(1, "never-held")
    assert await slots.acquire(1, "b", 1) is True
    clock.now += settings.CHAT_CONNECTION_TTL_S  # expiry at exactly the TTL frees the slot
    assert await slots.acquire(1, "c", 1) is True
    assert slots._memory[key("conns", 1)] == {"c": int(clock.now * 1000 + settings.CHAT_CONNECTION_TTL_S * 1000)}


async def test_connection_slots_hold_this_process_share_when_redis_is_down(monkeypatch: Any) -> None:
    class Down:
        async def eval(self, *args: Any) -> Any:
            raise ConnectionError("refused")

        async def zrem(self, *args: Any) -> Any:
            raise ConnectionError("refused")

    monkeypatch.setattr(rate_limiter, "redis_client", lambda *a: Down())
    slots = ConnectionSlots(Clock())
    before = metrics.counter("connection_slots_unavailable")
    assert await slots.acquire(1, "a", 1) is True  # one process: its share is the whole limit
    assert await slots.acquire(1, "b", 1) is False  # never more than the limit (no failing open)
    assert await slots.acquire(1, "a", 1) is True  # the held socket's refresh
    assert metrics.counter("connection_slots_unavailable") == before + 3
    await slots.release(1, "a")  # swallowed: the slot expires on its own
    assert await slots.acquire(1, "b", 1) is True
