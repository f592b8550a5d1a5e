"""The performance monitor: per process, rolling windows of latency samples, throughput and outcome
counts, the process's resources, and degradation detection over them.

Recording is what hot paths call, so it is O(1) and allocation-free in the common case: a sample
lands in a fixed histogram (geometric buckets, 25 % apart) of the current time slot (10 s) of a ring
that covers the baseline and the current window. Reading (p50/p95/p99 over a window, rates) merges
the slots in range, which is the reader's cost, not the recorder's. Percentiles are interpolated
inside a bucket: within ~12 % of the exact value, plenty to see a latency step.

Not locked: recording happens on the event loop's thread; a sample recorded concurrently from
another thread may, rarely, be lost, never corrupt anything.

Degradation (`PerformanceMonitor.check`): the p95 of each latency series and the error ratio of each
outcome series over the current window (5 min) against the baseline (the hour before it, frozen
while degraded) or a fixed objective; a verdict needs enough samples, and it takes `fire_after`
consecutive degraded checks to fire and `clear_after` recovered ones to clear, so noise does not
flap. monitoring.alerts.check_performance turns what changed into alerts. Thresholds:
monitoring/config.py "degradation".
"""

from __future__ import annotations

import asyncio
import math
import os
import resource
import socket
import time
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from monitoring.config import option

# Latency series (seconds), throughput counters, and outcome (ok/error) series. A fixed set: names
# come from code, never from users, so memory stays bounded.
LATENCIES = ("send_ack", "delivery_lag", "first_token", "event_loop_lag", "db_pool_wait")
THROUGHPUTS = ("messages", "deliveries", "runs")
OUTCOMES = ("commands", "runs")

# Histogram bucket upper bounds: 0.1 ms to ~2 min, each 25 % above the last, then +inf.
BOUNDS: tuple[float, ...] = tuple(1e-4 * 1.25**i for i in range(64))
SLOT_S = 10.0


def process_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class _Ring:
    """Per-slot values over a fixed span of time: slot k covers [k*slot_s, (k+1)*slot_s)."""

    __slots__ = ("slot_s", "n", "ids", "cells", "width")

    def __init__(self, span_s: float, width: int, slot_s: float = SLOT_S) -> None:
        self.slot_s = slot_s
        self.n = int(math.ceil(span_s / slot_s)) + 2
        self.ids = [-1] * self.n
        self.width = width
        self.cells: list[list[float]] = [[0] * width for _ in range(self.n)]

    def cell(self, now: float) -> list[float]:
        slot = int(now // self.slot_s)
        i = slot % self.n
        if self.ids[i] != slot:  # a new slot: reuse the oldest one's cell
            self.ids[i] = slot
            cell = self.cells[i]
            for k in range(self.width):
                cell[k] = 0
        return self.cells[i]

    def merged(self, start: float, end: float) -> list[float]:
        """Sum of the slots after the one holding `start`, up to the one holding `end`: back-to-back
        windows (baseline, then current) share no slot."""
        lo, hi = int(start // self.slot_s) + 1, int(end // self.slot_s)
        total = [0.0] * self.width
        for i, slot in enumerate(self.ids):
            if lo <= slot <= hi:
                for k, v in enumerate(self.cells[i]):
                    total[k] += v
        return total


def quantile(counts: list[float], q: float) -> float | None:
    """The q-quantile of a histogram over BOUNDS (last cell: above the last bound), interpolated
    linearly inside its bucket. None for an empty histogram."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    for b, c in enumerate(counts):
        if c and seen + c >= rank:
            lower = BOUNDS[b - 1] if b > 0 else 0.0
            upper = BOUNDS[b] if b < len(BOUNDS) else BOUNDS[-1]
            return lower + (upper - lower) * ((rank - seen) / c)
        seen += c
    return BOUNDS[-1]


@dataclass(frozen=True)
class Transition:
    """A series that became degraded (firing) or recovered."""

    kind: str  # "latency_degraded" | "error_rate_degraded"
    series: str
    firing: bool
    current: float
    baseline: float
    message: str
    severity: str = "warning"


@dataclass
class _State:
    firing: bool = False
    streak: int = 0
    baseline: float | None = None


@dataclass
class PerformanceMonitor:
    """One per process (`monitor` below); tests make their own with an injected clock."""

    clock: Callable[[], float] = time.time
    span_s: float = 0.0  # 0: the baseline plus the current window, from the config
    _lat: dict[str, _Ring] = field(default_factory=dict)
    _thr: dict[str, _Ring] = field(default_factory=dict)
    _out: dict[str, _Ring] = field(default_factory=dict)
    _states: dict[tuple[str, str], _State] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.span_s:
            conf = option("degradation")
            self.span_s = float(conf["window_s"]) + float(conf["baseline_s"])
        self._lat = {name: _Ring(self.span_s, len(BOUNDS) + 1) for name in LATENCIES}
        self._thr = {name: _Ring(self.span_s, 1) for name in THROUGHPUTS}
        self._out = {name: _Ring(self.span_s, 2) for name in OUTCOMES}

    # --- recording (hot paths) ---------------------------------------------------------------
    def observe(self, name: str, seconds: float, now: float | None = None) -> None:
        """One latency sample of series `name` (one of LATENCIES), in seconds."""
        cell = self._lat[name].cell(self.clock() if now is None else now)
        cell[bisect_left(BOUNDS, seconds)] += 1

    def count(self, name: str, n: int = 1, now: float | None = None) -> None:
        """`n` more of THROUGHPUTS' `name` (messages, deliveries, runs)."""
        self._thr[name].cell(self.clock() if now is None else now)[0] += n

    def outcome(self, name: str, ok: bool, now: float | None = None) -> None:
        """One outcome of OUTCOMES' `name`: ok or an error."""
        self._out[name].cell(self.clock() if now is None else now)[0 if ok else 1] += 1

    # --- reading --------------------------------------------------------------------------------
    def latency(self, name: str, window_s: float, now: float | None = None) -> dict[str, float | None]:
        """p50/p95/p99 (seconds) and the sample count of `name` over the last `window_s`."""
        now = self.clock() if now is None else now
        counts = self._lat[name].merged(now - window_s, now)
        return {
            "count": sum(counts),
            "p50": quantile(counts, 0.50),
            "p95": quantile(counts, 0.95),
            "p99": quantile(counts, 0.99),
        }

    def rate(self, name: str, window_s: float, now: float | None = None) -> float:
        """Per second over the last `window_s`."""
        now = self.clock() if now is None else now
        return self._thr[name].merged(now - window_s, now)[0] / window_s

    def error_ratio(self, name: str, window_s: float, now: float | None = None) -> tuple[float | None, float]:
        """(errors / total, total) of `name` over the last `window_s`; None without any outcome."""
        now = self.clock() if now is None else now
        ok, err = self._out[name].merged(now - window_s, now)
        total = ok + err
        return (err / total if total else None), total

    def snapshot(self, window_s: float = 60.0, now: float | None = None) -> dict[str, Any]:
        """Every number of this process over the last `window_s`, for the dashboard and exporters."""
        now = self.clock() if now is None else now
        return {
            "window_s": window_s,
            "latency": {name: self.latency(name, window_s, now) for name in LATENCIES},
            "throughput": {name: self.rate(name, window_s, now) for name in THROUGHPUTS},
            "errors": {name: self.error_ratio(name, window_s, now)[0] for name in OUTCOMES},
            "degraded": sorted(f"{kind}:{name}" for (kind, name), s in self._states.items() if s.firing),
            "resources": resources(),
        }

    # --- degradation detection ------------------------------------------------------------------
    def check(self, now: float | None = None) -> list[Transition]:
        """Compare the current window with the baseline for every series; return what changed."""
        now = self.clock() if now is None else now
        conf = option("degradation")
        window, baseline_s = float(conf["window_s"]), float(conf["baseline_s"])
        min_samples = float(conf["min_samples"])
        changed: list[Transition] = []
        for name in LATENCIES:
            current = self._lat[name].merged(now - window, now)
            if sum(current) < min_samples:
                continue  # too few samples to say anything: keep the state
            cur = quantile(current, 0.95) or 0.0
            state = self._states.setdefault(("latency_degraded", name), _State())
            base = conf["objectives_p95_s"].get(name) or state.baseline
            if base is None:
                before = self._lat[name].merged(now - window - baseline_s, now - window)
                base = quantile(before, 0.95) if sum(before) >= min_samples else None
            if base is None:
                continue
            degraded = cur > base * float(conf["p95_ratio"]) and cur - base > float(conf["p95_min_delta_s"])
            recovered = cur < base * float(conf["p95_clear_ratio"]) or cur - base <= float(conf["p95_min_delta_s"])
            message = (
                f"p95 of {name} is {cur * 1000:.1f} ms over the last {window:.0f} s (baseline {base * 1000:.1f} ms)"
            )
            t = self._step(state, degraded, recovered, base, conf, "latency_degraded", name, cur, message)
            if t:
                changed.append(t)
        for name in OUTCOMES:
            ok, err = self._out[name].merged(now - window, now)
            if ok + err < min_samples:
                continue
            cur = err / (ok + err)
            state = self._states.setdefault(("error_rate_degraded", name), _State())
            base = state.baseline
            if base is None:
                b_ok, b_err = self._out[name].merged(now - window - baseline_s, now - window)
                base = b_err / (b_ok + b_err) if b_ok + b_err >= min_samples else None
            if base is None:
                continue
            delta = float(conf["error_rate_delta"])
            message = f"{name} error ratio is {cur:.1%} over the last {window:.0f} s (baseline {base:.1%})"
            t = self._step(
                state, cur > base + delta, cur < base + delta / 2, base, conf, "error_rate_degraded", name, cur, message
            )
            if t:
                changed.append(t)
        return changed

    @staticmethod
    def _step(
        state: _State,
        degraded: bool,
        recovered: bool,
        base: float,
        conf: dict[str, Any],
        kind: str,
        name: str,
        cur: float,
        message: str,
    ) -> Transition | None:
        if not state.firing:
            state.streak = state.streak + 1 if degraded else 0
            if state.streak < int(conf["fire_after"]):
                return None
            state.firing, state.streak, state.baseline = True, 0, base  # the baseline is frozen while degraded
            severity = "critical" if kind == "error_rate_degraded" else "warning"
            return Transition(kind, name, True, cur, base, message, severity)
        state.streak = state.streak + 1 if recovered else 0
        if state.streak < int(conf["clear_after"]):
            return None
        state.firing, state.streak, state.baseline = False, 0, None
        return Transition(kind, name, False, cur, base, "recovered: " + message)


def resources() -> dict[str, float | None]:
    """This process's CPU seconds, resident memory, open descriptors and sockets, from the kernel
    (getrusage and /proc; None where /proc is missing), and the database pool's waits."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out: dict[str, float | None] = {"cpu_seconds": usage.ru_utime + usage.ru_stime}
    try:
        with open("/proc/self/statm") as statm:
            out["rss_bytes"] = float(int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
        fds = os.listdir("/proc/self/fd")
        out["open_fds"] = float(len(fds))
        out["sockets"] = float(sum(1 for fd in fds if _is_socket(fd)))
    except OSError:
        out.update(rss_bytes=None, open_fds=None, sockets=None)
    out.update(db_pool_stats())
    return out


def _is_socket(fd: str) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    except OSError:
        return False  # closed since listed


def db_pool_stats() -> dict[str, float | None]:
    """psycopg's pool counters (waiting now, total wait ms, requests) when a pool exists; else None."""
    # Django's connections, imported here: this module is below the database layer for its recorders.
    from django.db import connections

    # The pool as Django's PostgreSQL backend keeps it (per alias, per process); never created here.
    pool = getattr(type(connections["default"]), "_connection_pools", {}).get("default")
    if pool is None:
        return {"db_pool_waiting": None, "db_pool_wait_ms": None, "db_pool_requests": None}
    stats = pool.get_stats()
    return {
        "db_pool_waiting": float(stats.get("requests_waiting", 0)),
        "db_pool_wait_ms": float(stats.get("requests_wait_ms", 0)),
        "db_pool_requests": float(stats.get("requests_num", 0)),
    }


async def watch_event_loop(target: PerformanceMonitor, interval_s: float = 0.5) -> None:
    """Sample the event loop's lag (how late a timer fires) into `event_loop_lag` forever."""
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await asyncio.sleep(interval_s)
        target.observe("event_loop_lag", max(0.0, loop.time() - started - interval_s))


monitor = PerformanceMonitor()
