"""Error recovery: what kind of failure an exception is, and how to retry it.

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
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
import psycopg
import psycopg_pool
import redis.exceptions as redis_errors
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import DataError, IntegrityError, InterfaceError, OperationalError

from chat.errors import CircuitOpen, ClassifiedError, ErrorClass

logger = logging.getLogger(__name__)

T = TypeVar("T")

# OSErrors that are about the local filesystem, not a flaky peer: retrying will not help.
_LOCAL_OS_ERRORS: tuple[type[OSError], ...] = (
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


def classify(exc: BaseException) -> ErrorClass:
    """The class of `exc`, deciding how it is handled (see the module docstring)."""
    if isinstance(exc, ClassifiedError):  # ours: the exception says what it is (chat.errors)
        return exc.error_class()
    if isinstance(exc, BaseExceptionGroup):
        kinds = {classify(inner) for inner in exc.exceptions}
        return kinds.pop() if len(kinds) == 1 else ErrorClass.BUG

    if isinstance(exc, ValidationError):
        return ErrorClass.CLIENT
    if isinstance(exc, PermissionDenied):
        return ErrorClass.PERMANENT

    if isinstance(exc, IntegrityError | DataError):
        return ErrorClass.PERMANENT
    if isinstance(exc, OperationalError | InterfaceError):
        return ErrorClass.PERMANENT if _pg_auth_failure(exc) else ErrorClass.TRANSIENT

    if isinstance(exc, psycopg_pool.PoolTimeout):
        return ErrorClass.TRANSIENT
    if isinstance(exc, psycopg.IntegrityError | psycopg.DataError):
        return ErrorClass.PERMANENT
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return ErrorClass.PERMANENT if _pg_auth_failure(exc) else ErrorClass.TRANSIENT

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
