"""Rate limits and connection limits (chat/infra/rate_limiter.py, chat/realtime/throttle.py, chat/tiers.py).

Every window is driven by an injected clock, never by sleeping. The Redis limiter runs against
the real Redis; the in-memory twin (embedded mode, Redis outages) must answer identically, so
most properties run against both.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from chat.infra import rate_limiter
from chat.infra.rate_limiter import ConnectionSlots, MemoryLimiter, RedisLimiter, Window
from chat.infra.redis_client import redis_client
from chat.realtime.throttle import CommandThrottle, RateLimited, wait_text
from chat.tiers import Rate, TierLimits, limits_for, validate_table


class FakeClock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance_ms(self, ms: float) -> None:
        self.now += ms / 1000


def fresh_key(name: str = "k") -> str:
    return rate_limiter.key("unit", name, uuid.uuid4().hex)


def make_limiter(kind: str, clock: FakeClock) -> Any:
    if kind == "redis":
        return RedisLimiter(redis_client, clock=clock)
    return MemoryLimiter(clock)


LIMITERS = pytest.mark.parametrize("kind", ["redis", "memory"])


@LIMITERS
async def test_n_allowed_then_refused_with_exact_retry_after(kind: str) -> None:
    clock = FakeClock()
    limiter = make_limiter(kind, clock)
    window = Window(fresh_key(), limit=3, window_ms=10_000)
    first = await limiter.hit([window])
    assert first.allowed
    assert first.remaining == 2
    clock.advance_ms(1_000)
    assert (await limiter.hit([window])).allowed
    clock.advance_ms(1_000)
    third = await limiter.hit([window])
    assert third.allowed
    assert third.remaining == 0
    clock.advance_ms(500)
    refused = await limiter.hit([window])
    # The oldest action (at t=0) leaves the window at t=10,000; we are at t=2,500.
    assert not refused.allowed
    assert refused.retry_after_ms == 7_500


@LIMITERS
async def test_waiting_exactly_retry_after_is_allowed_one_ms_less_is_not(kind: str) -> None:
    clock = FakeClock()
    limiter = make_limiter(kind, clock)
    window = Window(fresh_key(), limit=2, window_ms=5_000)
    await limiter.hit([window])
    await limiter.hit([window])
    refused = await limiter.hit([window])
    assert refused.retry_after_ms == 5_000
    clock.advance_ms(refused.retry_after_ms - 1)
    still = await limiter.hit([window])
    assert not still.allowed
    assert still.retry_after_ms == 1
    clock.advance_ms(1)
    assert (await limiter.hit([window])).allowed


@LIMITERS
async def test_refusals_leave_no_trace(kind: str) -> None:
    """A refused action is not recorded: hammering does not push the retry time further out."""
    clock = FakeClock()
    limiter = make_limiter(kind, clock)
    window = Window(fresh_key(), limit=1, window_ms=1_000)
    assert (await limiter.hit([window])).allowed
    for _ in range(50):
        clock.advance_ms(10)
        assert not (await limiter.hit([window])).allowed
    clock.advance_ms(500)  # t = 1,000 since the only recorded action
    assert (await limiter.hit([window])).allowed


@LIMITERS
async def test_sliding_window_frees_slots_one_by_one(kind: str) -> None:
    clock = FakeClock()
    limiter = make_limiter(kind, clock)
    window = Window(fresh_key(), limit=3, window_ms=3_000)
    for _ in range(3):  # t = 0, 1000, 2000
        assert (await limiter.hit([window])).allowed
        clock.advance_ms(1_000)
    # t = 3000: the t=0 action just left; one slot, then the next frees at t=4000.
    assert (await limiter.hit([window])).allowed
    refused = await limiter.hit([window])
    assert refused.retry_after_ms == 1_000


@LIMITERS
async def test_multi_window_is_all_or_nothing_and_names_the_full_one(kind: str) -> None:
    clock = FakeClock()
    limiter = make_limiter(kind, clock)
    messages = Window(fresh_key("messages"), limit=10, window_ms=60_000)
    runs = Window(fresh_key("runs"), limit=1, window_ms=60_000)
    assert (await limiter.hit([messages, runs])).allowed
    refused = await limiter.hit([messages, runs])
    assert not refused.allowed
    assert refused.refused == 1
    # The refused call consumed no message slot either: 9 more plain messages fit, not 8.
    for _ in range(9):
        assert (await limiter.hit([messages])).allowed
    assert not (await limiter.hit([messages])).allowed


@LIMITERS
async def test_keys_are_independent(kind: str) -> None:
    clock = FakeClock()
    limiter = make_limiter(kind, clock)
    alice, bob = Window(fresh_key("a"), 1, 60_000), Window(fresh_key("b"), 1, 60_000)
    assert (await limiter.hit([alice])).allowed
    assert not (await limiter.hit([alice])).allowed
    assert (await limiter.hit([bob])).allowed


async def test_redis_limiter_holds_across_limiter_instances() -> None:
    """Two processes are two RedisLimiter instances over one Redis: the limit is shared."""
    clock = FakeClock()
    one, two = RedisLimiter(redis_client, clock=clock), RedisLimiter(redis_client, clock=clock)
    window = Window(fresh_key(), limit=4, window_ms=60_000)
    answers = [await (one if i % 2 else two).hit([window]) for i in range(5)]
    assert [a.allowed for a in answers] == [True, True, True, True, False]


async def test_redis_outage_falls_back_to_a_per_process_limit() -> None:
    clock = FakeClock()

    def dead_redis() -> Any:
        import redis.asyncio as aioredis

        return aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)

    limiter = RedisLimiter(dead_redis, clock=clock)
    window = Window(fresh_key(), limit=2, window_ms=60_000)
    answers = [(await limiter.hit([window])).allowed for _ in range(3)]
    assert answers == [True, True, False]


# --- per-socket throttle: command classes, hammering --------------------------------------------


def tier(**rates: tuple[int, float]) -> TierLimits:
    base = limits_for("free")
    merged = dict(base.rates)
    merged.update({name: Rate(limit, window) for name, (limit, window) in rates.items()})
    return TierLimits(**{**base.__dict__, "rates": merged})


def throttle_for(limits: TierLimits, clock: FakeClock, user_id: int | None = None) -> CommandThrottle:
    return CommandThrottle(
        user_id or uuid.uuid4().int % 10**9, limits, limiter=RedisLimiter(redis_client, clock=clock), clock=clock
    )


async def test_typing_spam_cannot_starve_messages() -> None:
    clock = FakeClock()
    throttle = throttle_for(tier(typing=(5, 60), messages=(3, 60)), clock)
    for _ in range(5):
        assert await throttle.admit("typing") is True
    # Over its limit a typing is dropped, never refused (best effort), and is no hammering.
    for _ in range(30):
        assert await throttle.admit("typing") is False
    assert throttle.hammering == 0
    for _ in range(3):
        await throttle.admit_send(starts_run=False)  # messages have their own budget
    with pytest.raises(RateLimited) as no_more:
        await throttle.admit_send(starts_run=False)
    assert no_more.value.rate_class == "messages"
    await throttle.admit("history")  # and so do other commands


async def test_send_that_starts_a_run_names_the_agent_runs_budget() -> None:
    clock = FakeClock()
    throttle = throttle_for(tier(messages=(10, 60), agent_runs=(1, 3600)), clock)
    await throttle.admit_send(starts_run=True)
    with pytest.raises(RateLimited) as refused:
        await throttle.admit_send(starts_run=True)
    assert refused.value.rate_class == "agent_runs"
    assert refused.value.retry_after_ms == 3_600_000
    assert refused.value.as_dict()["retry_after_ms"] == 3_600_000
    await throttle.admit_send(starts_run=False)  # a conversation without an agent still works


async def test_a_refusal_names_the_limit_its_numbers_and_the_real_wait() -> None:
    clock = FakeClock()
    throttle = throttle_for(tier(messages=(10, 10), agent_runs=(20, 3600), commands=(3, 60)), clock)
    for _ in range(20):
        await throttle.admit_run()
    clock.advance_ms((3600 - 170) * 1000)  # the runs leave the hour's window in 170 s
    with pytest.raises(RateLimited) as quota:
        await throttle.admit_run()
    assert quota.value.as_dict() == {
        "code": "rate_limited",
        "message": "agent-run quota reached: 20 runs per hour on the free tier; retry in 3 min",
        "retry_after_ms": 170_000,
        "limit": "agent_runs",
    }
    for _ in range(10):
        await throttle.admit_send(starts_run=False)
    clock.advance_ms(8000)
    with pytest.raises(RateLimited) as sending:
        await throttle.admit_send(starts_run=False)
    assert (sending.value.retry_after_ms, sending.value.message) == (
        2000,
        "sending too fast: 10 messages per 10 s; retry in 2 s",
    )
    assert sending.value.as_dict()["limit"] == "messages"
    for _ in range(3):
        await throttle.admit("ping")
    with pytest.raises(RateLimited) as commands:
        await throttle.admit("ping")
    assert commands.value.message == "too many commands: 3 commands per minute; retry in 1 min"


def test_waits_are_rounded_up_for_people() -> None:
    waits = (1, 999, 1000, 1001, 59_000, 59_001, 60_000, 3_600_000, 7_500_000)
    expected = ["1 s", "1 s", "1 s", "2 s", "59 s", "1 min", "1 min", "1 h", "2 h 5 min"]
    assert [wait_text(ms) for ms in waits] == expected


async def test_budget_is_per_user_not_per_socket() -> None:
    clock = FakeClock()
    limits = tier(commands=(2, 60))
    user = uuid.uuid4().int % 10**9
    tab1, tab2 = throttle_for(limits, clock, user), throttle_for(limits, clock, user)
    await tab1.admit("ping")
    await tab2.admit("ping")
    with pytest.raises(RateLimited):
        await tab1.admit("ping")
    await throttle_for(limits, clock).admit("ping")  # another user is unaffected


async def test_hammering_after_being_told_is_counted_and_waiting_resets_it(settings: Any) -> None:
    settings.CHAT_RATE_HAMMER_LIMIT = 3
    clock = FakeClock()
    throttle = throttle_for(tier(commands=(1, 10)), clock)
    await throttle.admit("ping")
    with pytest.raises(RateLimited):
        await throttle.admit("ping")  # told: retry in 10 s — not hammering yet
    assert throttle.hammering == 0
    for expected in (1, 2, 3):
        clock.advance_ms(100)
        with pytest.raises(RateLimited):
            await throttle.admit("ping")
        assert throttle.hammering == expected
    assert not throttle.over_hammer_limit
    await throttle.admit("typing")  # another class being admitted does not forgive this one
    assert throttle.hammering == 3
    with pytest.raises(RateLimited):
        await throttle.admit("ping")
    assert throttle.over_hammer_limit
    clock.advance_ms(10_000)  # a client that waits as told is admitted and forgiven
    await throttle.admit("ping")
    assert throttle.hammering == 0
    assert not throttle.over_hammer_limit


# --- connection slots ---------------------------------------------------------------------------

SLOT_BACKENDS = pytest.mark.parametrize("backend", ["redis", "memory"])


@pytest.fixture
def slots_for(settings: Any) -> Callable[[str, FakeClock], ConnectionSlots]:
    def make(backend: str, clock: FakeClock) -> ConnectionSlots:
        if backend == "memory":
            settings.REDIS_URL = ""
        settings.CHAT_CONNECTION_TTL_S = 60
        return ConnectionSlots(clock)

    return make


@SLOT_BACKENDS
async def test_connection_limit_n_then_refused_and_release_frees(backend: str, slots_for: Any) -> None:
    clock = FakeClock()
    slots = slots_for(backend, clock)
    user = uuid.uuid4().int % 10**9
    assert [await slots.acquire(user, f"s{i}", limit=3) for i in range(4)] == [True, True, True, False]
    assert await slots.acquire(user, "s1", limit=3)  # a socket re-acquiring its own slot is not a new one
    await slots.release(user, "s0")
    assert await slots.acquire(user, "s9", limit=3)
    assert await slots.acquire(uuid.uuid4().int % 10**9, "s0", limit=3)  # another user


@SLOT_BACKENDS
async def test_slots_of_a_dead_process_expire_unless_refreshed(backend: str, slots_for: Any) -> None:
    clock = FakeClock()
    slots = slots_for(backend, clock)
    user = uuid.uuid4().int % 10**9
    assert await slots.acquire(user, "alive", limit=2)
    assert await slots.acquire(user, "dead", limit=2)
    clock.advance_ms(40_000)
    await slots.refresh(user, "alive")  # the live socket's heartbeat; the dead one never comes back
    clock.advance_ms(30_000)  # 70 s after "dead" was last seen, 30 s after "alive" was
    assert await slots.acquire(user, "new", limit=2)
    assert not await slots.acquire(user, "another", limit=2)


# --- the tier table ----------------------------------------------------------------------------


def test_unknown_tier_gets_free_limits_and_welcome_lists_every_class() -> None:
    assert limits_for("no-such-tier") == limits_for("free")
    welcome = limits_for("pro").as_welcome()
    assert set(welcome["rates"]) == {"messages", "agent_runs", "typing", "commands"}
    assert welcome["rates"]["messages"] == {"limit": 120, "window_ms": 60_000}
    assert welcome["connections"] == 20
    assert limits_for("enterprise").as_welcome()["history_retention_days"] is None


def test_tiers_are_ordered_free_below_pro_below_enterprise() -> None:
    free, pro, enterprise = limits_for("free"), limits_for("pro"), limits_for("enterprise")
    assert free.connections < pro.connections < enterprise.connections
    for name in free.rates:
        assert free.rate(name).limit <= pro.rate(name).limit <= enterprise.rate(name).limit


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"pro": {}}, "must define the 'free' tier"),
        ({"free": {"connections": 1}}, "malformed"),
    ],
)
def test_a_malformed_tier_table_is_refused_at_startup(table: dict[str, Any], message: str, settings: Any) -> None:
    with pytest.raises(ValueError, match=message):
        validate_table(table)


def test_a_tier_frame_limit_above_the_server_cap_is_refused(settings: Any) -> None:
    table = {"free": {**settings.CHAT_TIERS["free"], "max_frame_bytes": settings.CHAT_MAX_FRAME_BYTES + 1}}
    with pytest.raises(ValueError, match="exceeds CHAT_MAX_FRAME_BYTES"):
        validate_table(table)
    zero = {"free": {**settings.CHAT_TIERS["free"], "connections": 0}}
    with pytest.raises(ValueError, match="must be positive"):
        validate_table(zero)


async def test_a_refusal_after_waiting_as_told_is_not_hammering(settings: Any) -> None:
    """Another tab may have used the budget meanwhile: the client waited, so its count restarts."""
    settings.CHAT_RATE_HAMMER_LIMIT = 1
    clock = FakeClock()
    limits = tier(commands=(1, 10))
    user = uuid.uuid4().int % 10**9
    tab, other_tab = throttle_for(limits, clock, user), throttle_for(limits, clock, user)
    await tab.admit("ping")
    with pytest.raises(RateLimited):
        await tab.admit("ping")  # told: 10 s
    clock.advance_ms(100)
    with pytest.raises(RateLimited):
        await tab.admit("ping")
    assert tab.hammering == 1
    clock.advance_ms(9_900)
    await other_tab.admit("ping")  # the other tab takes the freed slot first
    with pytest.raises(RateLimited):
        await tab.admit("ping")  # refused again, but after waiting as told
    assert tab.hammering == 0
    assert not tab.over_hammer_limit
