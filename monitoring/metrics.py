"""Per-process counters and gauges with labels. Cheap enough for the hot path: a dict
increment under the GIL, no I/O. Exported as JSON at /metrics for staff."""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, tuple[tuple[str, str], ...]], int] = defaultdict(int)
        self._gauges: dict[str, int] = defaultdict(int)

    # Positional-only, so `name` and `value` can also be label names (breaker_transitions{name,state}).
    def inc(self, name: str, value: int = 1, /, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._counters[key] += value

    def gauge_add(self, name: str, delta: int) -> None:
        with self._lock:
            self._gauges[name] += delta

    def counter(self, name: str, /, **labels: str) -> int:
        return self._counters.get((name, tuple(sorted(labels.items()))), 0)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            counters: dict[str, Any] = {}
            for (name, labels), value in self._counters.items():
                if labels:
                    counters.setdefault(name, {})[",".join(f"{k}={v}" for k, v in labels)] = value
                else:
                    counters[name] = value
            return {"counters": counters, "gauges": dict(self._gauges)}


metrics = Metrics()
