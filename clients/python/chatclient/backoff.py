"""Reconnect delays: exponential backoff with full jitter, capped.

Full jitter (a uniform draw below the exponential bound, not the bound itself) spreads the reconnects
of many clients cut at the same instant, so a restarted server is not hit by all of them at once."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Backoff:
    """The n-th retry waits uniform(0, min(cap, base * 2**n)); `reset()` after a good connection.

    `rng` is injectable so tests and seeded benchmarks get reproducible delays."""

    base_s: float = 0.5
    cap_s: float = 15.0
    rng: Callable[[], float] = random.random
    attempt: int = 0

    def next_delay(self) -> float:
        delay = self.rng() * min(self.cap_s, self.base_s * (2**self.attempt))
        # Bounded so 2**attempt never grows without limit on a client that retries for days.
        self.attempt = min(self.attempt + 1, 30)
        return delay

    def reset(self) -> None:
        self.attempt = 0
