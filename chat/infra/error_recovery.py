"""Error recovery: what kind of failure an exception is, and circuit breakers around dependencies.

Every failure falls into one of four classes, and each class has exactly one strategy:

- CLIENT (the request was wrong: a bad frame, a refused write, invalid data): reply with an error
  naming it (`bad_request`, `not_found`, `forbidden`, `conflict`, ...). Nothing is retried, nothing
  is counted against a dependency, nothing is logged above DEBUG.
- TRANSIENT (a dependency is briefly unreachable or slow: PostgreSQL, Redis, the model server,
  timeouts, an open breaker): retry with full-jitter backoff (`retry_async`) where the operation
  is idempotent; otherwise count the failure into the dependency's breaker and answer
  `unavailable` with `retry_after_ms`. A run fails with `llm_unavailable` / `llm_timeout`.
- PERMANENT (the dependency answered and said no: integrity/data errors, a 4xx from the model
  server, authentication refused by a dependency): fail the unit of work (the command, or the run
  with agent_failed) and log at ERROR. Retrying would fail the same way.
- BUG (anything else): log the exception with its traceback (that is the alert) and answer
  `internal`; never let it crash the connection or the process.

A `CircuitBreaker` per dependency ("postgres", "redis", "llm") turns a dependency outage from a
slow failure of every request (each waiting for its own timeout) into a fast one: after
`failure_threshold` transient failures in a row within `window_s` it opens and refuses calls with
`CircuitOpen` (TRANSIENT, carrying `retry_after_ms`); after `reset_timeout_s` it lets one probe
through (half-open); the probe's success closes it, its failure re-opens it. Breakers are
per process and independent: one dependency being down never opens another's breaker (an
exception that is itself a `CircuitOpen` is never counted as a failure).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from enum import StrEnum
from types import TracebackType
from typing import Any, TypeVar

from django.conf import settings

logger = logging.getLogger(__name__)

T = TypeVar("T")

# ProtocolError / ServiceError codes that mean "the client asked for something it cannot have".
# `unavailable` is TRANSIENT and `internal` is a BUG; any other code is the client's.
_TRANSIENT_CODES = frozenset({"unavailable"})
_BUG_CODES = frozenset({"internal"})
# BackendError codes (agents/backends/openai.py): the model server could not be reached in time.
_LLM_TRANSIENT_CODES = frozenset({"llm_unavailable", "llm_timeout"})
# HTTP statuses from the model server that say "not now" rather than "never".
_TRANSIENT_HTTP = frozenset({408, 429})
# OSErrors that are about the local filesystem, not a flaky peer: retrying will not help.
_LOCAL_OS_ERRORS: tuple[type[OSError], ...] = (
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


class ErrorClass(StrEnum):
    CLIENT = "client"
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    BUG = "bug"


class CircuitOpen(Exception):
    """A call was refused without being tried: the breaker `name` is open (TRANSIENT)."""

    def __init__(self, name: str, retry_after_ms: int) -> None:
        super().__init__(f"{name} is unavailable (circuit open); retry in {retry_after_ms} ms")
        self.name = name
        self.retry_after_ms = retry_after_ms


def classify(exc: BaseException) -> ErrorClass:
    """The class of `exc`, deciding how it is handled (see the module docstring)."""
    # Imports are local: chat.infra.error_recovery is imported by the consumer, the runtime and monitoring,
    # and must not pull the model layer or the backends in at import time.
    from django.core.exceptions import PermissionDenied, ValidationError
    from django.db import DataError, IntegrityError, InterfaceError, OperationalError

    if isinstance(exc, CircuitOpen):
        return ErrorClass.TRANSIENT
    if isinstance(exc, BaseExceptionGroup):
        kinds = {classify(inner) for inner in exc.exceptions}
        return kinds.pop() if len(kinds) == 1 else ErrorClass.BUG

    from chat.realtime.auth import AuthFailed
    from chat.realtime.protocol import ProtocolError
    from chat.services.conversations import ServiceError

    if isinstance(exc, ProtocolError | ServiceError):
        if exc.code in _TRANSIENT_CODES:
            return ErrorClass.TRANSIENT
        if exc.code in _BUG_CODES:
            return ErrorClass.BUG
        return ErrorClass.CLIENT
    if isinstance(exc, ValidationError):
        return ErrorClass.CLIENT
    if isinstance(exc, AuthFailed | PermissionDenied):
        return ErrorClass.PERMANENT

    from agents.backends.base import BackendError

    if isinstance(exc, BackendError):
        if exc.code in _LLM_TRANSIENT_CODES:
            return ErrorClass.TRANSIENT
        status = getattr(exc, "status", None)
        if status is not None and (status >= 500 or status in _TRANSIENT_HTTP):
            return ErrorClass.TRANSIENT
        # A 4xx (bad key, unknown model, request refused) or a broken answer stream.
        return ErrorClass.PERMANENT

    if isinstance(exc, IntegrityError | DataError):
        return ErrorClass.PERMANENT
    if isinstance(exc, OperationalError | InterfaceError):
        return ErrorClass.PERMANENT if _pg_auth_failure(exc) else ErrorClass.TRANSIENT

    import psycopg
    import psycopg_pool

    if isinstance(exc, psycopg_pool.PoolTimeout):
        return ErrorClass.TRANSIENT
    if isinstance(exc, psycopg.IntegrityError | psycopg.DataError):
        return ErrorClass.PERMANENT
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return ErrorClass.PERMANENT if _pg_auth_failure(exc) else ErrorClass.TRANSIENT

    import redis.exceptions as redis_errors

    if isinstance(exc, redis_errors.AuthenticationError | redis_errors.AuthorizationError):
        return ErrorClass.PERMANENT  # subclasses of redis' ConnectionError, but never heal alone
    if isinstance(
        exc,
        redis_errors.ConnectionError
        | redis_errors.TimeoutError
        | redis_errors.BusyLoadingError
        | redis_errors.ReadOnlyError
        | redis_errors.TryAgainError,
    ):
        return ErrorClass.TRANSIENT

    import httpx

    if isinstance(exc, httpx.TimeoutException | httpx.NetworkError):
        return ErrorClass.TRANSIENT

    if isinstance(exc, _LOCAL_OS_ERRORS):
        return ErrorClass.BUG
    # TimeoutError (== asyncio.TimeoutError since 3.11) and ConnectionError are OSErrors.
    if isinstance(exc, OSError | TimeoutError | asyncio.TimeoutError):
        return ErrorClass.TRANSIENT
    return ErrorClass.BUG


def _pg_auth_failure(exc: BaseException) -> bool:
    """A PostgreSQL error in SQLSTATE class 28 (invalid authorization), wrapped by Django or not."""
    seen: BaseException | None = exc
    for _ in range(4):  # Django's wrapper -> psycopg's error; never loop on a cyclic chain
        if seen is None:
            return False
        sqlstate = getattr(seen, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate.startswith("28"):
            return True
        seen = seen.__cause__
    return False


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
        from monitoring.metrics import metrics

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


# --- retries ----------------------------------------------------------------------------------


def backoff_delay(attempt: int, *, base_delay_s: float, max_delay_s: float, rng: Callable[[], float]) -> float:
    """Full jitter: uniform in [0, min(max, base * 2**attempt)) for the attempt-th retry (0-based)."""
    return rng() * min(max_delay_s, base_delay_s * (2**attempt))


async def retry_async(
    fn: Callable[[], Awaitable[T]],
    *,
    attempts: int = 3,
    base_delay_s: float = 0.1,
    max_delay_s: float = 2.0,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    rng: Callable[[], float] = random.random,
) -> T:
    """Call `fn()` up to `attempts` times, sleeping a full-jitter exponential delay between tries.
    Only TRANSIENT errors are retried; CLIENT, PERMANENT and BUG errors re-raise at once. A
    CircuitOpen re-raises at once too: the breaker already knows the dependency is down, and
    retrying within milliseconds would only be refused again. Use only for idempotent work."""
    if attempts < 1:
        raise ValueError("attempts must be >= 1")
    for attempt in range(attempts):
        try:
            return await fn()
        except Exception as exc:
            if attempt == attempts - 1 or isinstance(exc, CircuitOpen) or classify(exc) is not ErrorClass.TRANSIENT:
                raise
            delay = backoff_delay(attempt, base_delay_s=base_delay_s, max_delay_s=max_delay_s, rng=rng)
            logger.debug("retrying after %s (attempt %d/%d, %.3fs)", type(exc).__name__, attempt + 1, attempts, delay)
            await sleep(delay)
    raise AssertionError("unreachable")  # the loop returns or raises


# --- sharing breaker state between processes --------------------------------------------------
# Runs execute in the agent worker process, so the "llm" breaker that matters lives there, while
# /readyz is answered by the web processes. Each process with breakers publishes their snapshots
# into one Redis hash (field: the process, value: JSON with a wall-clock stamp); /readyz merges
# the live ones with its own. Entries of processes that stopped publishing expire by age.

_STATE_ORDER = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


def shared_state_max_age_s() -> float:
    """How old a process's published breakers may be before they are ignored: three missed agent
    heartbeats (runners publish with their heartbeat; older means gone or cut off from Redis)."""
    return 3 * float(getattr(settings, "AGENT_HEARTBEAT_S", 5.0)) + 1


def shared_state_key() -> str:
    """The Redis hash where processes publish their breakers (one per deployment prefix)."""
    return f"{getattr(settings, 'CHANNEL_PREFIX', 'chat')}:breakers"


async def publish_breakers(source: str, *, max_age_s: float) -> None:
    """Publish this process's breakers under `source`, and drop entries older than `max_age_s`.
    No-op without Redis. Raises on Redis errors (the caller's loop logs and carries on)."""
    if not getattr(settings, "REDIS_URL", ""):
        return
    from chat.infra.redis_client import redis_client

    now = time.time()
    snapshot = {name: b.snapshot() for name, b in all_breakers().items()}
    client = redis_client()
    key = shared_state_key()
    await client.hset(key, source, json.dumps({"at": now, "breakers": snapshot}))
    stale = [field for field, raw in (await client.hgetall(key)).items() if _age(raw, now) > max_age_s]
    if stale:
        await client.hdel(key, *stale)


async def withdraw_breakers(source: str) -> None:
    """Remove `source`'s published breakers (the process is stopping). No-op without Redis."""
    if not getattr(settings, "REDIS_URL", ""):
        return
    from chat.infra.redis_client import redis_client

    await redis_client().hdel(shared_state_key(), source)


async def shared_breakers(*, max_age_s: float) -> dict[str, dict[str, Any]]:
    """Every breaker published by a live process, merged by name: the worst state wins (one
    worker with the model unreachable makes the model degraded). Without Redis: {}."""
    if not getattr(settings, "REDIS_URL", ""):
        return {}
    from chat.infra.redis_client import redis_client

    now = time.time()
    merged: dict[str, dict[str, Any]] = {}
    for source, raw in (await redis_client().hgetall(shared_state_key())).items():
        if _age(raw, now) > max_age_s:
            continue
        for name, snap in json.loads(raw).get("breakers", {}).items():
            merged[name] = worse(merged.get(name), {**snap, "source": source})
    return merged


def worse(a: dict[str, Any] | None, b: dict[str, Any]) -> dict[str, Any]:
    """Of two snapshots of a breaker, the one further from closed (b on a tie)."""
    if a is None:
        return b
    return a if _STATE_ORDER.get(a.get("state", CLOSED), 0) > _STATE_ORDER.get(b.get("state", CLOSED), 0) else b


def _age(raw: str, now: float) -> float:
    try:
        return now - float(json.loads(raw)["at"])
    except (ValueError, KeyError, TypeError):
        return float("inf")  # unreadable: treat as long gone
