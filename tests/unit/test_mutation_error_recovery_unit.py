"""Retries and classification at the edges: how many tries, which delays, what is never retried,
and the SQLSTATE walk that tells a refused login from an unreachable database."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import redis.exceptions as redis_errors
from django.db import OperationalError

from chat.errors import CircuitOpen, ErrorClass
from chat.infra.error_recovery import backoff_delay, classify, retry_async


class Flaky:
    def __init__(self, *outcomes: Any) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    async def __call__(self) -> Any:
        self.calls += 1
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


async def test_retries_transient_failures_with_growing_capped_delays(caplog: Any) -> None:
    sleeps = Sleeps()
    fn = Flaky(ConnectionError("a"), ConnectionError("b"), ConnectionError("c"), "ok")
    caplog.set_level(logging.DEBUG, logger="chat.infra.error_recovery")
    result = await retry_async(fn, attempts=4, base_delay_s=0.5, max_delay_s=1.5, sleep=sleeps, rng=lambda: 1.0)
    assert result == "ok"
    assert fn.calls == 4
    assert sleeps.delays == [0.5, 1.0, 1.5]
    assert "retrying after ConnectionError (attempt 1/4, 0.500s)" in caplog.text


async def test_default_attempts_and_delays() -> None:
    sleeps = Sleeps()
    fn = Flaky(TimeoutError(), TimeoutError(), TimeoutError(), "never")
    with pytest.raises(TimeoutError):
        await retry_async(fn, sleep=sleeps, rng=lambda: 1.0)
    assert fn.calls == 3
    assert sleeps.delays == [0.1, 0.2]
    fn = Flaky(*[TimeoutError()] * 5, "ok")
    sleeps = Sleeps()
    assert await retry_async(fn, attempts=6, sleep=sleeps, rng=lambda: 1.0) == "ok"
    assert sleeps.delays == [0.1, 0.2, 0.4, 0.8, 1.6]  # capped at 2.0 only after that


async def test_the_last_failure_is_raised_without_a_final_sleep() -> None:
    sleeps = Sleeps()
    last = ConnectionError("last")
    fn = Flaky(ConnectionError("first"), last)
    with pytest.raises(ConnectionError) as err:
        await retry_async(fn, attempts=2, sleep=sleeps, rng=lambda: 0.5)
    assert err.value is last
    assert sleeps.delays == [0.05]


@pytest.mark.parametrize("exc", [CircuitOpen("redis", 100), ValueError("bug"), OperationalError("x")])
async def test_never_retried_unless_transient(exc: BaseException) -> None:
    if isinstance(exc, OperationalError):
        exc.__cause__ = type("Auth", (Exception,), {"sqlstate": "28P01"})()
    sleeps = Sleeps()
    fn = Flaky(exc, "ok")
    with pytest.raises(type(exc)):
        await retry_async(fn, attempts=3, sleep=sleeps)
    assert fn.calls == 1
    assert sleeps.delays == []


async def test_one_attempt_is_allowed_and_zero_is_not() -> None:
    fn = Flaky(ConnectionError())
    with pytest.raises(ConnectionError):
        await retry_async(fn, attempts=1, sleep=Sleeps())
    assert await retry_async(Flaky("ok"), attempts=1) == "ok"
    with pytest.raises(ValueError, match="attempts must be >= 1"):
        await retry_async(Flaky("ok"), attempts=0)


def test_backoff_delay_is_jittered_below_the_cap() -> None:
    assert backoff_delay(3, base_delay_s=0.1, max_delay_s=10, rng=lambda: 0.5) == pytest.approx(0.4)
    assert backoff_delay(10, base_delay_s=0.1, max_delay_s=2, rng=lambda: 0.25) == 0.5


def _with_sqlstate_chain(*states: str | None) -> BaseException:
    top: BaseException = OperationalError("top")
    current = top
    for state in states:
        nxt = Exception("inner")
        if state is not None:
            nxt.sqlstate = state  # type: ignore[attr-defined]
        current.__cause__ = nxt
        current = nxt
    return top


def test_pg_auth_failure_is_found_up_to_four_levels_deep() -> None:
    assert classify(_with_sqlstate_chain("28000")) is ErrorClass.PERMANENT
    assert classify(_with_sqlstate_chain(None, None, "28P01")) is ErrorClass.PERMANENT
    assert classify(_with_sqlstate_chain(None, None, None, "28P01")) is ErrorClass.TRANSIENT  # too deep
    assert classify(_with_sqlstate_chain("08006")) is ErrorClass.TRANSIENT
    assert classify(_with_sqlstate_chain("2")) is ErrorClass.TRANSIENT
    direct = OperationalError("x")
    direct.sqlstate = "28000"  # type: ignore[attr-defined]
    assert classify(direct) is ErrorClass.PERMANENT


def test_classify_edges() -> None:
    assert classify(redis_errors.AuthenticationError()) is ErrorClass.PERMANENT
    assert classify(redis_errors.ReadOnlyError()) is ErrorClass.TRANSIENT
    assert classify(PermissionError()) is ErrorClass.BUG
    assert classify(ExceptionGroup("g", [ValueError(), KeyError()])) is ErrorClass.BUG
    assert classify(ExceptionGroup("g", [TimeoutError(), ConnectionError()])) is ErrorClass.TRANSIENT
