"""Per-frame instrumentation, batched: what runs for every frame written to every socket.

A prometheus_client sample in multiprocess mode is a locked write into an mmapped file: measured on
this machine (timeit, PROMETHEUS_MULTIPROC_DIR set), `Counter.labels(...).inc()` costs ~1.9 µs, a
bound child's `inc()` ~0.7 µs and `Histogram.observe()` ~1.5 µs. A delivery costs ~86 µs of CPU in
tests/benchmarks/fanout.py, so three samples per frame would be ~5 % on their own. Here a frame
costs a few dict and integer operations under one uncontended lock (~0.6 µs); `flush()` (every
second from the process's telemetry task, and before each scrape) moves the sums into the
Prometheus families, so /metrics is at most a second behind.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from datetime import datetime
from typing import Any

from prometheus_client import Histogram

from monitoring.metrics.families import (
    BROADCAST_DURATION,
    BYTES_SENT,
    DELIVERY_LAG,
    DURABLE_TYPES,
    FRAME_TYPES,
    FRAMES_SENT,
    OTHER,
)

_TYPE_PREFIX = '{"type":"'
_TS_KEY = '"ts":"'
# Commit times parsed from frame text, by the text itself: one event's frame is the same str for
# every socket (encoded once per process), and a str caches its hash, so each further delivery is
# one lookup. Cleared when full; a miss only costs a parse.
_TS_CACHE_MAX = 4096


class LocalHistogram:
    """Observations kept as plain bucket counts until `flush` adds them to `target` (a histogram
    without labels, or a labelled child), bucket by bucket, as `observe` would have."""

    __slots__ = ("bounds", "counts", "total", "target")

    def __init__(self, target: Histogram) -> None:
        self.target = target
        self.bounds: list[float] = list(target._upper_bounds)
        self.counts = [0] * len(self.bounds)
        self.total = 0.0

    def observe(self, value: float) -> None:
        # The first bound >= value: prometheus_client's own rule (value <= bound).
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def take(self) -> tuple[list[int], float]:
        counts, total = self.counts, self.total
        self.counts, self.total = [0] * len(self.bounds), 0.0
        return counts, total

    def apply(self, counts: list[int], total: float) -> None:
        # The documented observe() writes one bucket and the sum per sample; bulk-adding those same
        # values (a test checks the result equals observe's) is what makes batching possible.
        buckets: list[Any] = self.target._buckets
        for i, n in enumerate(counts):
            if n:
                buckets[i].inc(n)
        if any(counts):
            self.target._sum.inc(total)


class FrameMeter:
    """Frames, bytes and delivery lag of this process's sockets, and its fan-out durations."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._frames: dict[str, int] = {}
        self._bytes = 0
        self._lag = LocalHistogram(DELIVERY_LAG)
        self._broadcast = LocalHistogram(BROADCAST_DURATION)
        self._ts: dict[str, float | None] = {}
        self._last_text = ""
        self._last_size = 0

    def frame(self, text: str) -> str:
        """Count one frame written; returns its type (bounded)."""
        kind = OTHER
        if text.startswith(_TYPE_PREFIX):
            end = text.find('"', 9, 48)
            if end > 0:
                kind = text[9:end]
                if kind not in FRAME_TYPES:
                    kind = OTHER
        if text.isascii():  # O(1) in CPython: the flag is stored with the string
            size = len(text)
        elif text is self._last_text:  # the same event to the next socket
            size = self._last_size
        else:
            size = len(text.encode())
            self._last_text, self._last_size = text, size
        with self._lock:
            self._frames[kind] = self._frames.get(kind, 0) + 1
            self._bytes += size
        return kind

    def delivered(self, text: str, now: float) -> None:
        """Count a live durable event written at `now` (wall clock): a frame, and its lag since
        the event's commit time (its `ts`)."""
        kind = self.frame(text)
        if kind not in DURABLE_TYPES:
            return
        committed = self._ts.get(text, 0.0)
        if committed == 0.0:
            committed = commit_time(text)
            if len(self._ts) >= _TS_CACHE_MAX:
                self._ts.clear()
            self._ts[text] = committed
        if committed is not None:
            with self._lock:
                self._lag.observe(max(0.0, now - committed))

    def broadcast(self, seconds: float) -> None:
        with self._lock:
            self._broadcast.observe(seconds)

    def flush(self) -> None:
        with self._lock:
            frames, self._frames = self._frames, {}
            size, self._bytes = self._bytes, 0
            lag = self._lag.take()
            broadcast = self._broadcast.take()
        for kind, n in frames.items():
            FRAMES_SENT.labels(kind).inc(n)
        if size:
            BYTES_SENT.inc(size)
        self._lag.apply(*lag)
        self._broadcast.apply(*broadcast)


def commit_time(text: str) -> float | None:
    """The wall-clock time in an event frame's top-level `ts` (rfc3339, milliseconds), or None.
    The frame's keys are type, conversation, seq, ts, data: the first "ts" is the event's."""
    start = text.find(_TS_KEY)
    if start < 0:
        return None
    start += len(_TS_KEY)
    end = text.find('"', start, start + 40)
    if end < 0:
        return None
    try:
        return datetime.fromisoformat(text[start:end]).timestamp()
    except ValueError:
        return None


meter = FrameMeter()
