"""Per-socket command admission at its edges: the refusal it raises, which class is blamed, the
hammering count, and when malformed frames close a socket."""

from __future__ import annotations

from typing import Any

import pytest

from chat.errors import ProtocolError
from chat.infra.rate_limiter import Decision, MemoryLimiter, Window
from chat.realtime import throttle as throttle_module
from chat.realtime.throttle import BadFrames, CommandThrottle, RateLimited, abuse_verdict
from chat.tiers import Rate, limits_for


class Clock:
    def __init__(self) -> None:
        self.now = 3_000_000.0

    def __call__(self) -> float:
        return self.now


class Scripted:
    """A limiter that answers what the test says and records what it was asked."""

    def __init__(self, *decisions: Decision) -> None:
        self.decisions = list(decisions)
        self.asked: list[list[Window]] = []

    async def hit(self, windows: Any) -> Decision:
        self.asked.append(list(windows))
        return self.decisions.pop(0)


def test_rate_limited_says_what_and_how_long() -> None:
    exc = RateLimited("agent_runs", 1500)
    assert (exc.code, exc.retry_after_ms, exc.rate_class) == ("rate_limited", 1500, "agent_runs")
    assert exc.message == "agent-run quota reached; retry in 2 s"  # the wait for people, rounded up
    assert exc.as_dict() == {
        "code": "rate_limited",
        "message": exc.message,
        "retry_after_ms": 1500,
        "limit": "agent_runs",
    }
    named = RateLimited("messages", 999, Rate(10, 10), "pro")
    assert named.message == "sending too fast: 10 messages per 10 s; retry in 1 s"  # the tier only for a quota


def test_throttle_defaults_to_the_limiters_clock() -> None:
    clock = Clock()
    limiter = MemoryLimiter(clock)
    throttle = CommandThrottle(7, limits_for("free"), limiter=limiter)
    assert (throttle.user_id, throttle.limiter, throttle.clock) == (7, limiter, clock)
    assert throttle.hammering == 0
    own = Clock()
    assert CommandThrottle(7, limits_for("free"), limiter=limiter, clock=own).clock is own
    assert CommandThrottle(7, limits_for("free"), limiter=Scripted()).clock is throttle_module.time.time


async def test_refusal_blames_the_refusing_window_and_counts_hammering(settings: Any) -> None:
    settings.CHAT_RATE_HAMMER_LIMIT = 1
    clock = Clock()
    refuse_runs = Decision(False, retry_after_ms=1000, refused=1)
    limiter = Scripted(refuse_runs, refuse_runs, refuse_runs, Decision(True), refuse_runs)
    throttle = CommandThrottle(7, limits_for("free"), limiter=limiter, clock=clock)
    with pytest.raises(RateLimited) as err:
        await throttle.admit_send(starts_run=True)
    assert err.value.rate_class == "agent_runs"
    assert [w.key.rsplit(":", 2)[-2] for w in limiter.asked[0]] == ["messages", "agent_runs"]
    assert throttle.hammering == 0  # the first refusal is not hammering
    clock.now += 0.5
    with pytest.raises(RateLimited):
        await throttle.admit_send(starts_run=True)  # before the deadline it was told: hammering
    assert throttle.hammering == 1
    assert throttle.over_hammer_limit is False
    with pytest.raises(RateLimited):
        await throttle.admit_send(starts_run=True)
    assert throttle.hammering == 2
    assert throttle.over_hammer_limit is True
    await throttle.admit_send(starts_run=False)  # an admitted command clears its class
    assert throttle.hammering == 0
    clock.now += 10  # waited as told: a refusal after the deadline is not hammering
    with pytest.raises(RateLimited):
        await throttle.admit_send(starts_run=True)
    assert throttle.hammering == 0


async def test_the_deadline_is_exclusive_and_never_moves_back(settings: Any) -> None:
    clock = Clock()
    limiter = Scripted(
        Decision(False, retry_after_ms=1000, refused=0),
        Decision(False, retry_after_ms=10, refused=0),
        Decision(False, retry_after_ms=10, refused=0),
        Decision(False, retry_after_ms=10, refused=5),
    )
    throttle = CommandThrottle(7, limits_for("free"), limiter=limiter, clock=clock)
    with pytest.raises(RateLimited):
        await throttle.admit("send")
    assert throttle._told_until_ms == {"messages": 3_000_001_000}
    with pytest.raises(RateLimited):
        await throttle.admit("send")
    assert throttle._told_until_ms == {"messages": 3_000_001_000}  # the later deadline stands
    clock.now += 1.0  # exactly at the deadline: waited as told
    with pytest.raises(RateLimited):
        await throttle.admit("send")
    assert throttle.hammering == 0
    with pytest.raises(RateLimited) as err:
        await throttle.admit("send")  # an out-of-range index blames the first class
    assert err.value.rate_class == "messages"


async def test_unknown_commands_fall_in_the_commands_class() -> None:
    limiter = Scripted(Decision(True))
    throttle = CommandThrottle(9, limits_for("free"), limiter=limiter)
    await throttle.admit("no-such-command")
    (window,) = limiter.asked[0]
    assert window.key.endswith(":rl:commands:9")
    rate = limits_for("free").rate("commands")
    assert (window.limit, window.window_ms) == (rate.limit, rate.window_ms)


def test_bad_frames_count_within_the_window(settings: Any) -> None:
    settings.CHAT_ABUSE_WINDOW_S = 10
    clock = Clock()
    frames = BadFrames(clock)
    assert frames.add() == 1
    clock.now += 10  # exactly the window later the first still counts
    assert frames.add() == 2
    clock.now += 0.001
    assert frames.add() == 2
    assert BadFrames().clock is throttle_module.time.monotonic


def test_abuse_verdict(settings: Any) -> None:
    settings.CHAT_ABUSE_LIMIT = 2
    settings.CHAT_RATE_HAMMER_LIMIT = 0
    frames = BadFrames(Clock())
    throttle = CommandThrottle(1, limits_for("free"), limiter=Scripted())
    assert abuse_verdict(RateLimited("messages", 5), throttle, frames) is None
    throttle._hammering["messages"] = 1
    assert abuse_verdict(RateLimited("messages", 5), throttle, frames) == "rate_limit"
    assert abuse_verdict(RateLimited("messages", 5), None, frames) is None  # not a counted bad frame either
    assert frames.times == type(frames.times)()
    assert abuse_verdict(ProtocolError("forbidden", "no"), throttle, frames) is None
    assert abuse_verdict(ProtocolError("bad_request", "x"), throttle, frames) is None
    assert abuse_verdict(ProtocolError("unknown_command", "x"), throttle, frames) is None
    assert abuse_verdict(ProtocolError("too_large", "x"), throttle, frames) == "bad_frames"
    assert len(frames.times) == 3
