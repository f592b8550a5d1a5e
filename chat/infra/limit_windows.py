"""The windows' vocabulary and the in-process twin of the Redis limiter (chat/infra/rate_limiter.py).

`MemoryLimiter` is the whole limiter in embedded mode (no Redis), and in Redis mode the record of
what this process allowed, which answers, within this process's `share` of each limit, while Redis
cannot be asked.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from django.conf import settings

Clock = Callable[[], float]
# The in-process twin forgets idle keys this often (it mirrors every allowed action, so it sees every user).
SWEEP_EVERY_MS = 60_000


def share(limit: int, key_: str) -> int:
    """This process's part of `limit` while the count shared through Redis is out of reach.

    The shares of all settings.CHAT_SERVER_PROCESSES processes add up to `limit` exactly: each gets
    limit // N, and the remainder goes to limit % N of them, picked by the key, so that no process
    is always the one with the extra slot. A process that does not know its index
    (CHAT_SERVER_INDEX) cannot know whether the remainder is its own and takes limit // N, which
    may be 0: refusing is the only answer that cannot add up to more than the limit."""
    processes = max(1, int(settings.CHAT_SERVER_PROCESSES))
    if processes == 1:
        return limit
    base, extra = divmod(limit, processes)
    index = settings.CHAT_SERVER_INDEX
    if index is None:
        return base
    return base + (1 if (int(index) - zlib.crc32(key_.encode())) % processes < extra else 0)


@dataclass(frozen=True)
class Window:
    key: str
    limit: int
    window_ms: int


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_ms: int = 0  # when refused: the wait after which the same call is allowed
    remaining: int = 0  # when allowed: the smallest number of further actions left in any window
    refused: int = -1  # when refused: the index of the window that refused (the longest wait)


class Limiter(Protocol):
    async def hit(self, windows: Sequence[Window]) -> Decision: ...


class MemoryLimiter:
    """The in-process twin: the same sliding windows in deques (embedded mode, Redis outages)."""

    def __init__(self, clock: Clock = time.time) -> None:
        self.clock = clock
        self._windows: dict[str, deque[int]] = {}
        self._spans: dict[str, int] = {}  # key -> its window (ms), to forget idle keys
        self._swept = 0
        self._lock = threading.Lock()  # the REST throttle calls it from worker threads

    def _log(self, w: Window, now: int) -> deque[int]:
        log = self._windows.setdefault(w.key, deque())
        self._spans[w.key] = w.window_ms
        while log and log[0] <= now - w.window_ms:
            log.popleft()
        return log

    def hit_sync(self, windows: Sequence[Window], now_ms: int | None = None) -> Decision:
        now = int(self.clock() * 1000) if now_ms is None else now_ms
        with self._lock:
            retry = 0
            which = -1
            remaining: int | None = None
            for index, w in enumerate(windows):
                log = self._log(w, now)
                if len(log) >= w.limit:
                    wait = log[len(log) - w.limit] + w.window_ms - now if w.limit > 0 else w.window_ms
                    if wait > retry:
                        retry, which = wait, index
                else:
                    left = w.limit - len(log) - 1
                    remaining = left if remaining is None else min(remaining, left)
            if retry > 0:
                return Decision(False, retry_after_ms=retry, refused=which)
            for w in windows:
                self._windows[w.key].append(now)
            self._sweep(now)
            return Decision(True, remaining=remaining or 0)

    def record(self, windows: Sequence[Window], now_ms: int) -> None:
        """Remember an action Redis allowed, so that this process's share counts it if Redis goes away."""
        with self._lock:
            for w in windows:
                self._log(w, now_ms).append(now_ms)
            self._sweep(now_ms)

    def _sweep(self, now: int) -> None:
        if now - self._swept < SWEEP_EVERY_MS:
            return
        self._swept = now
        for key_, log in list(self._windows.items()):
            span = self._spans.get(key_, 0)
            while log and log[0] <= now - span:
                log.popleft()
            if not log:
                del self._windows[key_]
                self._spans.pop(key_, None)

    async def hit(self, windows: Sequence[Window]) -> Decision:
        return self.hit_sync(windows)
