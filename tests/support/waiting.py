"""Waiting on a condition, the one way: poll it until it holds, then fail naming what never happened.

Every wait in the suite is a condition with a deadline, never a bare sleep. `eventually` waits for a
condition to become true; `consistently` checks that one stays true for a while. A condition may be
sync or async, and may assert: an exception it raises ends the wait at once (a wrong answer while
waiting is a failure, not a reason to keep polling).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

What = str | Callable[[], str] | None


async def eventually(
    condition: Callable[[], T | Awaitable[T]],
    timeout: float = 10.0,
    what: What = None,
    *,
    interval: float = 0.02,
) -> T:
    """Call `condition()` until it returns something truthy and return that value.

    Checked once more after the deadline has passed before giving up, then AssertionError
    "not within {timeout}s: {what}". `what` says what was awaited (a callable is evaluated at
    failure time, to report the last state seen); without it the condition's own source is used."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {_describe(what, condition)}")
        await asyncio.sleep(interval)


async def consistently(
    condition: Callable[[], object | Awaitable[object]],
    duration: float,
    what: What = None,
    *,
    interval: float = 0.02,
) -> None:
    """Call `condition()` every `interval` for `duration` seconds (at least once); each call must
    return something truthy, else AssertionError "stopped holding after {t}s: {what}"."""
    started = time.monotonic()
    end = started + duration
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if not value:
            elapsed = time.monotonic() - started
            raise AssertionError(
                f"stopped holding after {elapsed:.2f}s of {duration:.2f}s: {_describe(what, condition)} (got {value!r})"
            )
        if time.monotonic() >= end:
            return
        await asyncio.sleep(interval)


def _describe(what: What, condition: Callable[..., object]) -> str:
    if callable(what):
        return what()
    if what:
        return what
    name = getattr(condition, "__qualname__", repr(condition))
    if name.endswith("<lambda>"):
        try:
            return inspect.getsource(condition).strip()
        except (OSError, TypeError):
            pass
    return name
