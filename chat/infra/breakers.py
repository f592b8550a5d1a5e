"""Circuit breakers, one per dependency and process ("postgres", "redis", "llm").

A breaker turns a dependency outage from a slow failure of every request (each waiting for its
own timeout) into a fast one: after `failure_threshold` transient failures in a row within
`window_s` it opens and refuses calls with `CircuitOpen` (TRANSIENT, carrying `retry_after_ms`);
after `reset_timeout_s` it lets one probe through (half-open); the probe's success closes it, its
failure re-opens it. Breakers are per process and independent: one dependency being down never
opens another's breaker (an exception that is itself a `CircuitOpen` is never counted).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVar

from django.conf import settings

from chat.errors import CircuitOpen, ErrorClass
from chat.infra.error_recovery import classify
from monitoring.metrics import metrics

logger = logging.getLogger(__name__)

T = TypeVar("T")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    """Closed -> open after `failure_threshold` TRANSIENT failures in a row within `window_s`;
    open -> half-open after `reset_timeout_s`, letting exactly one probe call through; the
    probe's success closes it, its failure opens it again for another `reset_timeout_s`.

    A success while closed clears the failure count: with a busy dependency, sporadic errors
    spread over many successes must not open the breaker (that would turn 1% errors into 100%).
    Safe from several asyncio tasks and from threads (database_sync_to_async): state lives
    under a threading.Lock, and nothing blocking happens while it is held.
    """

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        window_s: float = 10.0,
        reset_timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        probe_timeout_s: float | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        self.name = name
        self.failure_threshold = failure_threshold
        self.window_s = window_s
        self.reset_timeout_s = reset_timeout_s
        # A probe that never reports back (its task vanished) must not wedge the breaker half-open.
        self.probe_timeout_s = probe_timeout_s if probe_timeout_s is not None else max(60.0, reset_timeout_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures: deque[float] = deque()
        self._opened_at: float | None = None
        self._probe_started: float | None = None
        self._last_error: str = ""

    # --- state ------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        with self._lock:
            return self._state

    def before_call(self) -> None:
        """Raise CircuitOpen if the call must not be tried now. In half-open state the first
        caller becomes the probe; every other caller is refused until the probe reports."""
        with self._lock:
            now = self._clock()
            if self._state == CLOSED:
                return
            if self._state == OPEN:
                assert self._opened_at is not None
                if now - self._opened_at < self.reset_timeout_s:
                    raise CircuitOpen(self.name, self._retry_after_ms_locked(now))
                transition = self._set_state_locked(HALF_OPEN)
                self._probe_started = now
            else:  # half-open
                if self._probe_started is not None and now - self._probe_started < self.probe_timeout_s:
                    raise CircuitOpen(self.name, self._retry_after_ms_locked(now))
                self._probe_started = now
                transition = None
        self._announce(transition)

    def record_success(self) -> None:
        with self._lock:
            self._failures.clear()
            transition = None
            if self._state != CLOSED:
                transition = self._set_state_locked(CLOSED)
                self._opened_at = None
                self._probe_started = None
        self._announce(transition)

    def record_failure(self, exc: BaseException | None = None) -> None:
        """Count a failure of a call. Only TRANSIENT failures count (exc=None counts as one);
        another breaker's CircuitOpen never does. A non-counted failure of the half-open probe
        frees the probe slot: the dependency answered, so the next caller may probe again."""
        counted = exc is None or (classify(exc) is ErrorClass.TRANSIENT and not isinstance(exc, CircuitOpen))
        with self._lock:
            now = self._clock()
            transition = None
            if not counted:
                if self._state == HALF_OPEN:
                    self._probe_started = None
                return
            self._last_error = type(exc).__name__ if exc is not None else "failure"
            if self._state == HALF_OPEN:
                transition = self._open_locked(now)
            elif self._state == CLOSED:
                self._failures.append(now)
                while self._failures and now - self._failures[0] > self.window_s:
                    self._failures.popleft()
                if len(self._failures) >= self.failure_threshold:
                    transition = self._open_locked(now)
            # While open, stragglers that started before it opened change nothing.
        self._announce(transition)

    def release(self) -> None:
        """The call ended without an outcome (cancelled): free the half-open probe slot."""
        with self._lock:
            if self._state == HALF_OPEN:
                self._probe_started = None

    def retry_after_ms(self) -> int:
        """Milliseconds until a call may be tried again (0 when closed)."""
        with self._lock:
            return self._retry_after_ms_locked(self._clock())

    def snapshot(self) -> dict[str, Any]:
        """For /metrics and /readyz. `opened_at` is on the breaker's clock (monotonic seconds);
        `open_for_s` is how long it has been away from closed."""
        with self._lock:
            now = self._clock()
            return {
                "state": self._state,
                "failures": len([t for t in self._failures if now - t <= self.window_s]),
                "opened_at": self._opened_at,
                "open_for_s": round(now - self._opened_at, 3) if self._opened_at is not None else None,
                "retry_after_ms": self._retry_after_ms_locked(now),
                "last_error": self._last_error,
                "failure_threshold": self.failure_threshold,
                "window_s": self.window_s,
                "reset_timeout_s": self.reset_timeout_s,
            }

    # --- helpers (called with the lock held) ------------------------------------------------

    def _retry_after_ms_locked(self, now: float) -> int:
        if self._state == CLOSED:
            return 0
        if self._state == OPEN:
            assert self._opened_at is not None
            return max(0, math.ceil((self._opened_at + self.reset_timeout_s - now) * 1000))
        # Half-open with a probe out: if it fails, the next probe is a reset timeout away.
        if self._probe_started is None:
            return 0
        return max(1, math.ceil(self.reset_timeout_s * 1000))

    def _open_locked(self, now: float) -> str | None:
        self._opened_at = now
        self._probe_started = None
        self._failures.clear()
        return self._set_state_locked(OPEN)

    def _set_state_locked(self, state: str) -> str | None:
        if state == self._state:
            return None
        self._state = state
        return state

    def _announce(self, transition: str | None) -> None:
        if transition is None:
            return
        metrics.inc("breaker_transitions", name=self.name, state=transition)
        if transition == OPEN:
            logger.warning(
                "circuit %s opened (%s); refusing calls for %.1fs", self.name, self._last_error, self.reset_timeout_s
            )
        elif transition == CLOSED:
            logger.info("circuit %s closed: the dependency is back", self.name)
        else:
            logger.info("circuit %s half-open: letting one probe through", self.name)

    # --- wrappers ---------------------------------------------------------------------------

    def guard(self) -> _Guard:
        """`with breaker.guard():` or `async with breaker.guard():` around one call: raises
        CircuitOpen if open, records success, records TRANSIENT failures; other exceptions pass
        through uncounted."""
        return _Guard(self)

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        async with self.guard():
            return await fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self.state!r})"


class _Guard:
    def __init__(self, breaker: CircuitBreaker) -> None:
        self.breaker = breaker

    def __enter__(self) -> CircuitBreaker:
        self.breaker.before_call()
        return self.breaker

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self.breaker.record_success()
        elif isinstance(exc, Exception):
            self.breaker.record_failure(exc)
        else:  # CancelledError, KeyboardInterrupt: no outcome to count
            self.breaker.release()

    async def __aenter__(self) -> CircuitBreaker:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, tb)


# --- the process-wide registry ----------------------------------------------------------------

_registry: dict[str, CircuitBreaker] = {}
_registry_lock = threading.Lock()


def _setting(name: str, suffix: str, default: float) -> float:
    # A per-dependency override (CHAT_BREAKER_LLM_RESET_S) wins over the general one.
    specific = getattr(settings, f"CHAT_BREAKER_{name.upper()}_{suffix}", None)
    return float(specific if specific is not None else getattr(settings, f"CHAT_BREAKER_{suffix}", default))


def breaker(name: str) -> CircuitBreaker:
    """The process's breaker for dependency `name` ("postgres", "redis", "llm"), created on first
    use from settings CHAT_BREAKER_FAILURES / _WINDOW_S / _RESET_S (or CHAT_BREAKER_<NAME>_*)."""
    with _registry_lock:
        found = _registry.get(name)
        if found is None:
            found = _registry[name] = CircuitBreaker(
                name,
                failure_threshold=int(_setting(name, "FAILURES", 5)),
                window_s=_setting(name, "WINDOW_S", 10.0),
                reset_timeout_s=_setting(name, "RESET_S", 5.0),
            )
        return found


def all_breakers() -> dict[str, CircuitBreaker]:
    with _registry_lock:
        return dict(_registry)


def reset_breakers() -> None:
    """Forget every breaker (tests): the next breaker(name) reads the settings again."""
    with _registry_lock:
        _registry.clear()
