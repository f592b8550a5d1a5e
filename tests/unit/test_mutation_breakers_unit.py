"""A circuit breaker's exact numbers: its defaults, what its refusal carries, what its snapshot
reports (the /metrics and /readyz view), the window's edge, and the announcements of each state."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from chat.errors import CircuitOpen
from chat.infra.breakers import CircuitBreaker
from monitoring.metrics import metrics


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_defaults_and_validation() -> None:
    b = CircuitBreaker("x")
    assert (b.failure_threshold, b.window_s, b.reset_timeout_s, b.probe_timeout_s) == (5, 10.0, 5.0, 60.0)
    assert CircuitBreaker("x", reset_timeout_s=90).probe_timeout_s == 90
    assert CircuitBreaker("x", failure_threshold=1).failure_threshold == 1
    with pytest.raises(ValueError, match=r"^failure_threshold must be >= 1$"):
        CircuitBreaker("x", failure_threshold=0)


def test_a_fresh_snapshot() -> None:
    b = CircuitBreaker("x", clock=Clock())
    assert b.snapshot() == {
        "state": "closed",
        "failures": 0,
        "opened_at": None,
        "open_for_s": None,
        "retry_after_ms": 0,
        "last_error": "",
        "failure_threshold": 5,
        "window_s": 10.0,
        "reset_timeout_s": 5.0,
    }


def test_open_snapshot_and_refusal(caplog: Any) -> None:
    clock = Clock()
    b = CircuitBreaker("dep", failure_threshold=2, reset_timeout_s=2.0, clock=clock)
    caplog.set_level(logging.INFO, logger="chat.infra.breakers")
    b.record_failure(ConnectionError())
    b.record_failure()
    assert "circuit dep opened (failure); refusing calls for 2.0s" in caplog.text
    clock.now += 0.5
    snap = b.snapshot()
    assert (snap["state"], snap["opened_at"], snap["open_for_s"], snap["last_error"]) == ("open", 100.0, 0.5, "failure")
    assert snap["retry_after_ms"] == 1500
    with pytest.raises(CircuitOpen) as err:
        b.before_call()
    assert (err.value.name, err.value.retry_after_ms) == ("dep", 1500)
    clock.now += 1.5  # exactly the reset timeout later: the remaining wait is 0, never negative
    assert b.retry_after_ms() == 0


def test_last_error_names_the_exception_class() -> None:
    b = CircuitBreaker("dep", failure_threshold=1, clock=Clock())
    b.record_failure(TimeoutError())
    assert b.snapshot()["last_error"] == "TimeoutError"


def test_open_for_is_rounded_to_milliseconds() -> None:
    clock = Clock()
    b = CircuitBreaker("dep", failure_threshold=1, clock=clock)
    b.record_failure()
    clock.now += 0.12345
    assert b.snapshot()["open_for_s"] == 0.123


def test_half_open_announces_and_probe_timing(caplog: Any) -> None:
    clock = Clock()
    b = CircuitBreaker("dep", failure_threshold=1, reset_timeout_s=2.5, clock=clock)
    b.record_failure()
    clock.now += 2.5
    before = metrics.counter("breaker_transitions", name="dep", state="half_open")
    caplog.set_level(logging.INFO, logger="chat.infra.breakers")
    b.before_call()  # becomes the probe
    assert metrics.counter("breaker_transitions", name="dep", state="half_open") == before + 1
    assert "circuit dep half-open: letting one probe through" in caplog.text
    assert b.retry_after_ms() == 2500
    with pytest.raises(CircuitOpen) as err:
        b.before_call()
    assert err.value.retry_after_ms == 2500
    b.release()
    assert b.retry_after_ms() == 0  # no probe out
    b.before_call()
    closed = metrics.counter("breaker_transitions", name="dep", state="closed")
    b.record_success()
    assert metrics.counter("breaker_transitions", name="dep", state="closed") == closed + 1
    assert "circuit dep closed: the dependency is back" in caplog.text
    snap = b.snapshot()
    assert (snap["opened_at"], snap["open_for_s"], snap["retry_after_ms"]) == (None, None, 0)


def test_tiny_reset_timeout_still_asks_for_a_millisecond() -> None:
    clock = Clock()
    b = CircuitBreaker("dep", failure_threshold=1, reset_timeout_s=0.0001, clock=clock)
    b.record_failure()
    clock.now += 1
    b.before_call()
    assert b.retry_after_ms() == 1


def test_failures_exactly_a_window_apart_still_count_together() -> None:
    clock = Clock()
    b = CircuitBreaker("dep", failure_threshold=2, window_s=10.0, clock=clock)
    b.record_failure()
    clock.now += 10.0
    b.record_failure()
    assert b.state == "open"


def test_a_reprobe_of_a_stale_half_open_is_not_announced() -> None:
    clock = Clock()
    b = CircuitBreaker("dep", failure_threshold=1, reset_timeout_s=1, probe_timeout_s=3, clock=clock)
    b.record_failure()
    clock.now += 1
    b.before_call()
    clock.now += 3  # the probe never reported: a new caller probes
    before = metrics.counter("breaker_transitions", name="dep", state="half_open")
    b.before_call()
    assert metrics.counter("breaker_transitions", name="dep", state="half_open") == before
    assert b.state == "half_open"
