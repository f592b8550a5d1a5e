"""Limits while Redis is alive but slow: they never fail open (chat/infra/rate_limiter.py).

A private redis-server (tests/support/faults.py BusyRedisServer) is kept busy by a side connection
running DEBUG SLEEP back to back, the way another client's heavy commands hold Redis' one thread;
the shared Redis is never touched. The limiter's calls then time out (0.5 s) or find the redis
circuit open, and this process's share of each limit answers: a user never holds more sockets, nor
gets more actions, than the tier allows, before, during and after the slow spell.

And the reason a busy-but-healthy Redis tripped the timeout at all: every timed-out call used to
close its connection (redis-py closes a connection whose command was cancelled), so every next
call paid a new connection (accept, HELLO, CLIENT SETINFO, each queued behind the load) and timed
out too. Calls now keep their connections (chat/infra/redis_client.py).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from chat.infra import rate_limiter, redis_client
from chat.infra.breakers import breaker, reset_breakers
from chat.infra.rate_limiter import ConnectionSlots, RedisLimiter, Window
from tests.support.faults import BusyRedisServer
from tests.support.waiting import eventually

pytestmark = [pytest.mark.timeout(90)]

LIMITER_TIMEOUT_S = rate_limiter.REDIS_TIMEOUT_S
SLOWER_THAN_THE_LIMITER_S = 1.0  # each DEBUG SLEEP: any limiter call waiting behind it times out


@pytest.fixture(scope="module")
def busy_redis() -> Iterator[BusyRedisServer]:
    with BusyRedisServer() as server:
        yield server


@pytest.fixture
def private_redis(busy_redis: BusyRedisServer, settings: Any) -> Iterator[BusyRedisServer]:
    """This test's Redis clients (rate_limiter's included) talk to the private server."""
    settings.REDIS_URL = busy_redis.url
    settings.CHAT_CONNECTION_TTL_S = 60
    yield busy_redis
    redis.Redis.from_url(busy_redis.url).flushall()  # our own server: nothing else lives there


def connections_received(server: BusyRedisServer) -> int:
    return int(redis.Redis.from_url(server.url).info("stats")["total_connections_received"])


async def test_a_busy_redis_keeps_the_clients_connections(private_redis: BusyRedisServer) -> None:
    client = redis_client._new_client(private_redis.url)  # a cold pool, as in a fresh process
    calls = 40
    before = connections_received(private_redis)

    async def burst() -> int:
        async def one() -> bool:
            try:
                await redis_client.redis_call(lambda: client.eval("return 1", 0), timeout_s=LIMITER_TIMEOUT_S)
            except redis.exceptions.TimeoutError:
                return False
            return True

        reset_breakers()  # measure the calls, not the circuit they open
        return sum(await asyncio.gather(*[one() for _ in range(calls)]))

    with private_redis.busy(0.15):  # every command waits up to ~0.15-0.3 s: slow, never down
        # The first burst connects 40 times behind the load and may time out; the connections are
        # kept, so a later burst answers in time. (Before: each timeout closed its connection, each
        # burst connected 40 times again, and every burst timed out.)
        await eventually(lambda: burst_all_ok(burst, calls), timeout=20, what="a burst with no timeout")
    opened = connections_received(private_redis) - before
    assert opened <= redis_client.MAX_CONNECTIONS + 2, f"{opened} connections for {calls}-call bursts"
    await client.aclose()


async def burst_all_ok(burst: Any, calls: int) -> bool:
    return bool(await burst() == calls)


async def test_sockets_never_exceed_the_tier_while_redis_is_slow(private_redis: BusyRedisServer) -> None:
    slots = ConnectionSlots()
    user = uuid.uuid4().int % 10**9
    limit = 4
    assert [await slots.acquire(user, f"before{i}", limit) for i in range(2)] == [True, True]
    with private_redis.busy(SLOWER_THAN_THE_LIMITER_S):
        granted = await asyncio.gather(*[slots.acquire(user, f"during{i}", limit) for i in range(10)])
        assert sum(granted) == 2, f"{sum(granted)} sockets allowed beyond the 2 already open (limit {limit})"
        # Refreshes of the sockets this process holds are still granted (no socket is dropped).
        assert await slots.refresh(user, "before0", limit) is True
    assert len(slots._held[user]) == limit


async def test_rates_never_exceed_the_tier_across_a_slow_spell(private_redis: BusyRedisServer) -> None:
    limiter = RedisLimiter(rate_limiter.redis_client)
    window = Window(rate_limiter.key("slow", uuid.uuid4().hex), limit=5, window_ms=60_000)
    allowed = [(await limiter.hit([window])).allowed for _ in range(3)]
    with private_redis.busy(SLOWER_THAN_THE_LIMITER_S):
        during = await asyncio.gather(*[limiter.hit([window]) for _ in range(6)])
    allowed += [d.allowed for d in during]
    assert allowed.count(True) == 5, allowed
    reset_breakers()  # Redis answers again; do not wait out the circuit's reset time
    after = await limiter.hit([window])
    assert breaker("redis").state == "closed"
    assert after.allowed is False, "Redis did not learn what was allowed while it was slow"
    # What this process allowed during the slow spell was written to Redis with the first call back.
    assert redis.Redis.from_url(private_redis.url).zcard(window.key) >= 5


async def test_a_socket_let_in_during_an_outage_is_refused_on_refresh_when_it_does_not_fit(
    private_redis: BusyRedisServer, settings: Any
) -> None:
    settings.CHAT_SERVER_PROCESSES = 2
    settings.CHAT_SERVER_INDEX = 0
    here, elsewhere = ConnectionSlots(), ConnectionSlots()
    user = uuid.uuid4().int % 10**9
    limit = 4
    # Another process holds the user's whole limit in Redis.
    assert [await elsewhere.acquire(user, f"other{i}", limit) for i in range(limit)] == [True] * limit
    private_redis.freeze()
    try:
        # Redis hangs: this process allows its share (2 of 4), counting what it holds itself.
        granted = [await here.acquire(user, f"here{i}", limit) for i in range(4)]
    finally:
        private_redis.thaw()
    assert granted == [True, True, False, False]
    reset_breakers()
    # Redis is back: the heartbeat's refresh, with the limit, says these two do not fit...
    assert [await here.refresh(user, f"here{i}", limit) for i in range(2)] == [False, False]
    # ...while the sockets Redis counted keep their slots.
    assert [await elsewhere.refresh(user, f"other{i}", limit) for i in range(limit)] == [True] * limit
