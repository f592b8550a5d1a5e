"""The app's metrics: Prometheus families (`families`), per-frame batching (`meter`), and the
registry /metrics and the staff dashboard read (`exposition`).

`metrics.inc(name, **labels)` is the counter call sites have always used. It keeps a per-process
count (tests and `snapshot()` read it) and feeds Prometheus: a few names are the documented
families (`disconnects` is chat_disconnects_total, `replays` chat_replays_total, `rate_limited`
chat_rate_limited_total with the tier of the socket the count happens on, `breaker_transitions`
also moves chat_breaker_state); every other name is exported as `chat_<name>_total` with the
labels its call site passes. Cheap enough for a command path (a dict increment under a lock and a
cached child's inc); per-frame counts go through `meter` instead.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections import defaultdict
from typing import Any

from prometheus_client import Counter

from monitoring.metrics.families import (
    BREAKER_STATE,
    BREAKER_STATES,
    DISCONNECTS,
    RATE_LIMITED,
    REPLAYS,
)

logger = logging.getLogger(__name__)

# The tier of the socket whose task is running (the consumer sets it once authenticated), for
# counts made deep in the command path that only know their own labels (a rate-limit refusal).
current_tier: contextvars.ContextVar[str] = contextvars.ContextVar("current_tier", default="unknown")

_UNSET = object()
_Key = tuple[str, tuple[tuple[str, str], ...]]
_generic: dict[str, Counter] = {}
_generic_lock = threading.Lock()


def _exported(name: str, labels: tuple[tuple[str, str], ...]) -> Any:
    """The Prometheus child a legacy counter name and its labels count into, or None."""
    values = dict(labels)
    if name == "disconnects":
        return DISCONNECTS.labels(values.get("code", "other"))
    if name == "replays":
        return REPLAYS.labels(values.get("source", "other"), "ok")
    if name == "rate_limited":
        return None  # needs the tier, which differs per call: see Metrics.inc
    with _generic_lock:
        family = _generic.get(name)
        if family is None:
            family = _generic[name] = Counter(
                f"chat_{name}", f"Count of {name} (see docs/operations.md).", [k for k, _ in labels]
            )
    if tuple(family._labelnames) != tuple(k for k, _ in labels):
        logger.error(
            "metric %s counted with labels %s, registered with %s", name, [k for k, _ in labels], family._labelnames
        )
        return None
    return family.labels(*(v for _, v in labels)) if labels else family


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[_Key, int] = defaultdict(int)
        self._gauges: dict[str, int] = defaultdict(int)
        self._children: dict[_Key, Any] = {}

    # Positional-only, so `name` and `value` can also be label names (breaker_transitions{name,state}).
    def inc(self, name: str, value: int = 1, /, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._counters[key] += value
        try:
            if name == "rate_limited":
                RATE_LIMITED.labels(labels.get("cls", "other"), current_tier.get()).inc(value)
                return
            if name == "breaker_transitions" and labels.get("state") in BREAKER_STATES:
                BREAKER_STATE.labels(labels.get("name", "other")).set(BREAKER_STATES[labels["state"]])
            child = self._children.get(key, _UNSET)
            if child is _UNSET:
                child = self._children[key] = _exported(name, key[1])
            if child is not None:
                child.inc(value)
        except Exception:  # a metric must never fail the work it counts
            logger.exception("could not export metric %s", name)

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
