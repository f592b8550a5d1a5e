"""The performance monitor: rolling windows of latency, throughput and outcomes per process, the
process's resources, and degradation detection with hysteresis. Time is an injected clock and the
samples are synthetic (seeded), so hours of traffic take milliseconds and nothing sleeps."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from monitoring.performance import BOUNDS, LATENCIES, PerformanceMonitor, Transition, quantile, resources

START = 1_800_000_000.0  # a fixed wall-clock second
CHECK_EVERY_S = 15.0


class Clock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def simulate(
    monitor: PerformanceMonitor,
    clock: Clock,
    seconds: float,
    latency: Callable[[random.Random], float],
    *,
    per_second: int = 5,
    errors: float = 0.0,
    rng: random.Random,
) -> list[Transition]:
    """`seconds` of traffic: `per_second` send→ack samples and command outcomes each second, a
    degradation check every CHECK_EVERY_S; returns every transition the checks reported."""
    transitions: list[Transition] = []
    end = clock.now + seconds
    while clock.now < end:
        for _ in range(per_second):
            monitor.observe("send_ack", latency(rng))
            monitor.outcome("commands", ok=rng.random() >= errors)
        clock.now += 1.0
        if clock.now % CHECK_EVERY_S == 0:
            transitions += monitor.check()
    return transitions


def noisy(mean: float, spread: float = 0.3) -> Callable[[random.Random], float]:
    return lambda rng: mean * (1 + rng.uniform(-spread, spread))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def monitor(clock: Clock) -> PerformanceMonitor:
    return PerformanceMonitor(clock=clock)


def test_percentiles_are_close_to_the_exact_ones(monitor: PerformanceMonitor) -> None:
    rng = random.Random(1)
    samples = [rng.lognormvariate(-3, 0.8) for _ in range(20_000)]
    for s in samples:
        monitor.observe("delivery_lag", s)
    samples.sort()
    got = monitor.latency("delivery_lag", 60)
    assert got["count"] == len(samples)
    for q, key in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
        exact = samples[int(q * len(samples)) - 1]
        assert got[key] == pytest.approx(exact, rel=0.13), key


def test_windows_roll_old_samples_out(monitor: PerformanceMonitor, clock: Clock) -> None:
    monitor.observe("first_token", 0.5)
    clock.now += 120
    monitor.observe("first_token", 0.01)
    assert monitor.latency("first_token", 60)["count"] == 1
    assert monitor.latency("first_token", 300)["count"] == 2
    # Past the ring's span the slot is reused: the old sample is gone, not added to the new one.
    clock.now += monitor.span_s + 100
    monitor.observe("first_token", 0.02)
    assert monitor.latency("first_token", monitor.span_s)["count"] == 1


def test_throughput_and_error_ratio_over_a_window(monitor: PerformanceMonitor, clock: Clock) -> None:
    for _ in range(60):
        monitor.count("messages", 3)
        monitor.count("deliveries", 30)
        monitor.outcome("runs", ok=True)
        clock.now += 1
    monitor.outcome("runs", ok=False)
    assert monitor.rate("messages", 60) == pytest.approx(3.0, rel=0.2)
    assert monitor.rate("deliveries", 60) == pytest.approx(30.0, rel=0.2)
    ratio, total = monitor.error_ratio("runs", 3600)
    assert total == 61
    assert ratio == pytest.approx(1 / 61)
    assert monitor.error_ratio("commands", 60) == (None, 0)


def test_an_empty_window_has_no_percentiles(monitor: PerformanceMonitor) -> None:
    assert monitor.latency("send_ack", 60) == {"count": 0, "p50": None, "p95": None, "p99": None}
    assert quantile([0] * (len(BOUNDS) + 1), 0.5) is None


def test_unknown_series_are_refused(monitor: PerformanceMonitor) -> None:
    with pytest.raises(KeyError):
        monitor.observe("user-supplied-name", 0.1)


def test_a_latency_step_fires_exactly_one_alert_and_recovery_clears_it(
    monitor: PerformanceMonitor, clock: Clock
) -> None:
    rng = random.Random(7)
    assert simulate(monitor, clock, 3900, noisy(0.040), rng=rng) == []
    stepped = simulate(monitor, clock, 1800, noisy(0.160), rng=rng)  # 4x slower for half an hour
    assert [(t.kind, t.series, t.firing) for t in stepped] == [("latency_degraded", "send_ack", True)]
    fired = stepped[0]
    assert fired.baseline == pytest.approx(0.052, rel=0.15)  # p95 of 40 ms +-30 %
    assert fired.current > 3 * fired.baseline
    assert fired.severity == "warning"
    assert "send_ack" in fired.message
    # The baseline is frozen while degraded: half an hour of the slow normal did not clear it.
    assert ("latency_degraded:send_ack" in monitor.snapshot()["degraded"]) is True
    recovered = simulate(monitor, clock, 900, noisy(0.040), rng=rng)
    assert [(t.kind, t.firing) for t in recovered] == [("latency_degraded", False)]


@pytest.mark.parametrize(("per_second", "seed"), [(1, 1), (2, 2)])
def test_noise_around_a_stable_mean_fires_nothing(clock: Clock, per_second: int, seed: int) -> None:
    """Four hours of heavy-tailed latency (lognormal around 50 ms: p95 ~3x the median) at a low
    rate, so each window's p95 rests on few samples and wanders. A detector without hysteresis
    and with a tighter threshold (fire at once above 1.2x, clear below it) flaps on this."""
    monitor = PerformanceMonitor(clock=clock)
    rng = random.Random(seed)
    assert (
        simulate(monitor, clock, 4 * 3600, lambda r: r.lognormvariate(-3.0, 0.8), per_second=per_second, rng=rng) == []
    )
    assert monitor.snapshot()["degraded"] == []


def test_outliers_and_short_bursts_fire_nothing(monitor: PerformanceMonitor, clock: Clock) -> None:
    rng = random.Random(11)

    def with_outliers(rng: random.Random) -> float:  # +-60 % around 50 ms, 1 % of samples 5x slower
        return 0.250 if rng.random() < 0.01 else 0.050 * (1 + rng.uniform(-0.6, 0.6))

    transitions = []
    for _ in range(18):  # three hours, with a slow burst (5 s at 4x) every 10 minutes
        transitions += simulate(monitor, clock, 595, with_outliers, rng=rng)
        transitions += simulate(monitor, clock, 5, noisy(0.200), rng=rng)
    assert transitions == []


def test_a_degradation_hovering_at_the_threshold_fires_once_and_does_not_flap(
    monitor: PerformanceMonitor, clock: Clock
) -> None:
    rng = random.Random(13)
    simulate(monitor, clock, 3900, noisy(0.040, 0.1), rng=rng)
    # p95 now wanders across 1.5x the baseline: once fired, it stays fired until below 1.2x.
    hovering = simulate(monitor, clock, 3600, noisy(0.057, 0.2), rng=rng)
    assert [(t.series, t.firing) for t in hovering] == [("send_ack", True)]


def test_too_few_samples_give_no_verdict(monitor: PerformanceMonitor, clock: Clock) -> None:
    rng = random.Random(3)
    simulate(monitor, clock, 3900, noisy(0.040), rng=rng, per_second=1)
    # 10x slower but only 5 samples in the window: below min_samples, no verdict either way.
    for _ in range(5):
        monitor.observe("send_ack", 0.4)
    clock.now += 300
    assert monitor.check() == []


def test_a_configured_objective_replaces_the_baseline(monitor: PerformanceMonitor, clock: Clock, settings: Any) -> None:
    settings.MONITORING = {"degradation": {"objectives_p95_s": {"send_ack": 0.020}}}
    rng = random.Random(5)
    # No history at all, steady at 40 ms: twice the 20 ms objective, so it fires after fire_after checks.
    transitions = simulate(monitor, clock, 400, noisy(0.040, 0.1), rng=rng)
    assert [(t.series, t.firing, t.baseline) for t in transitions] == [("send_ack", True, 0.020)]


def test_an_error_rate_step_fires_once_as_critical(monitor: PerformanceMonitor, clock: Clock) -> None:
    rng = random.Random(9)
    assert simulate(monitor, clock, 3900, noisy(0.040), errors=0.01, rng=rng) == []
    stepped = simulate(monitor, clock, 900, noisy(0.040), errors=0.20, rng=rng)
    assert [(t.kind, t.series, t.firing, t.severity) for t in stepped] == [
        ("error_rate_degraded", "commands", True, "critical")
    ]


def test_snapshot_has_every_series_and_the_process_resources(monitor: PerformanceMonitor) -> None:
    monitor.observe("send_ack", 0.01)
    snap = monitor.snapshot()
    assert set(snap["latency"]) == set(LATENCIES)
    assert snap["latency"]["send_ack"]["count"] == 1
    res = snap["resources"]
    assert res["cpu_seconds"] > 0
    assert res["rss_bytes"] > 10 * 1024 * 1024  # a Django test process holds more than 10 MiB
    assert res["open_fds"] >= 3
    assert res["sockets"] is not None
    assert res["sockets"] >= 0


def test_resources_name_every_figure() -> None:
    assert {"cpu_seconds", "rss_bytes", "open_fds", "sockets", "db_pool_waiting", "db_pool_wait_ms"} <= set(resources())
