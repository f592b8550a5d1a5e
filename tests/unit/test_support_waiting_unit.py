"""tests/support/waiting.py: the suite's only poll loop, so its failures must say what never happened
and it must never swallow a failed assertion inside the condition."""

from __future__ import annotations

import time

import pytest

from tests.support.waiting import consistently, eventually


async def test_eventually_returns_the_first_truthy_value_sync_or_async() -> None:
    calls: list[int] = []

    def sync_condition() -> int | None:
        calls.append(1)
        return 7 if len(calls) == 3 else None

    assert await eventually(sync_condition, 1, "three calls", interval=0) == 7
    assert len(calls) == 3

    async def async_condition() -> str:
        return "ready"

    assert await eventually(async_condition, 1, "async") == "ready"


async def test_eventually_fails_naming_what_it_waited_for_after_the_timeout() -> None:
    started = time.monotonic()
    with pytest.raises(AssertionError) as failed:
        await eventually(lambda: False, 0.2, "the moon to rise", interval=0.01)
    assert time.monotonic() - started >= 0.2
    assert str(failed.value) == "not within 0.2s: the moon to rise"


async def test_eventually_describes_the_last_state_with_a_callable_and_the_lambda_without_one() -> None:
    state = {"n": 0}

    def tick() -> bool:
        state["n"] += 1
        return False

    with pytest.raises(AssertionError, match=r"^not within 0\.05s: n is now \d+$"):
        await eventually(tick, 0.05, lambda: f"n is now {state['n']}", interval=0.01)
    with pytest.raises(AssertionError) as failed:
        await eventually(lambda: state["n"] < 0, 0.01, interval=0.005)
    assert 'lambda: state["n"] < 0' in str(failed.value)


async def test_eventually_checks_once_more_at_the_deadline() -> None:
    calls: list[float] = []

    def late() -> bool:
        calls.append(time.monotonic())
        return len(calls) >= 2

    # An interval longer than the timeout: the second check comes after the deadline and still counts.
    assert await eventually(late, 0.01, "a late success", interval=0.05) is True


async def test_an_assertion_inside_the_condition_ends_the_wait_at_once() -> None:
    calls: list[int] = []

    def wrong_answer() -> bool:
        calls.append(1)
        raise AssertionError("the server said no")

    with pytest.raises(AssertionError, match="^the server said no$"):
        await eventually(wrong_answer, 5, "never reached")
    assert calls == [1]


async def test_consistently_checks_for_the_whole_duration() -> None:
    calls: list[float] = []

    async def holds() -> bool:
        calls.append(time.monotonic())
        return True

    await consistently(holds, 0.1, "holds", interval=0.01)
    assert calls[-1] - calls[0] >= 0.1
    assert len(calls) >= 3
    calls.clear()
    await consistently(holds, -1, "already over")  # a duration already past still checks once
    assert len(calls) == 1


async def test_consistently_fails_at_the_first_falsy_value_naming_it() -> None:
    values = iter([True, True, 0, True])
    with pytest.raises(AssertionError, match=r"^stopped holding after .*: the socket answers \(got 0\)$"):
        await consistently(lambda: next(values), 5, "the socket answers", interval=0)
    assert next(values) is True  # nothing was checked after the failure
