"""Error recovery building blocks (chat/infra/error_recovery.py): how failures are classified, the circuit
breaker's state machine on an injected clock (no sleeps), and retries with full-jitter backoff."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import psycopg.errors
import psycopg_pool
import pytest
import redis.exceptions
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import DataError, IntegrityError, InterfaceError, OperationalError

from agents.backends.base import BackendError
from chat.errors import AuthFailed, CircuitOpen, CommandError, ErrorClass, ProtocolError, ServiceError
from chat.infra.breakers import CircuitBreaker, all_breakers, breaker, reset_breakers
from chat.infra.error_recovery import classify, retry_async
from monitoring.metrics import metrics

CLIENT, TRANSIENT, PERMANENT, BUG = ErrorClass.CLIENT, ErrorClass.TRANSIENT, ErrorClass.PERMANENT, ErrorClass.BUG


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(autouse=True)
def _fresh_registry() -> Iterator[None]:
    reset_breakers()
    yield
    reset_breakers()


def make(clock: Clock, name: str = "dep", **kw: Any) -> CircuitBreaker:
    options: dict[str, Any] = {"failure_threshold": 3, "window_s": 10.0, "reset_timeout_s": 5.0, "clock": clock}
    options.update(kw)
    return CircuitBreaker(name, **options)


def wrapped(cause: BaseException, outer: type[Exception]) -> Exception:
    """`cause` the way Django re-raises a driver error: the Django class, `cause` as __cause__."""
    try:
        try:
            raise cause
        except BaseException as exc:
            raise outer(str(exc)) from exc
    except outer as exc:
        return exc


def trip(b: CircuitBreaker, n: int | None = None) -> None:
    for _ in range(n if n is not None else b.failure_threshold):
        b.record_failure(ConnectionRefusedError())


# --- classification -------------------------------------------------------------------------------

CASES: list[tuple[str, Callable[[], BaseException], ErrorClass]] = [
    ("protocol bad_request", lambda: ProtocolError("bad_request", "x"), CLIENT),
    ("command not_found", lambda: CommandError("c1", "not_found", "x"), CLIENT),
    ("protocol forbidden", lambda: ProtocolError("forbidden", "x"), CLIENT),
    ("protocol rate_limited", lambda: ProtocolError("rate_limited", "x", retry_after_ms=10), CLIENT),
    ("service conflict", lambda: ServiceError("conflict", "x"), CLIENT),
    ("django validation", lambda: ValidationError("x"), CLIENT),
    ("protocol unavailable", lambda: ProtocolError("unavailable", "x", retry_after_ms=1000), TRANSIENT),
    ("redis connection", lambda: redis.exceptions.ConnectionError("refused"), TRANSIENT),
    ("redis timeout", lambda: redis.exceptions.TimeoutError("slow"), TRANSIENT),
    ("redis loading", lambda: redis.exceptions.BusyLoadingError("loading"), TRANSIENT),
    ("redis read-only replica", lambda: redis.exceptions.ReadOnlyError("failover"), TRANSIENT),
    ("django operational", lambda: OperationalError("server closed the connection"), TRANSIENT),
    ("django interface", lambda: InterfaceError("connection already closed"), TRANSIENT),
    ("psycopg operational", lambda: psycopg.OperationalError("terminated"), TRANSIENT),
    ("psycopg serialization", lambda: psycopg.errors.SerializationFailure("retry"), TRANSIENT),
    ("pool timeout", lambda: psycopg_pool.PoolTimeout("no connection in 30s"), TRANSIENT),
    ("os error", lambda: OSError(104, "reset"), TRANSIENT),
    ("connection refused", lambda: ConnectionRefusedError(), TRANSIENT),
    ("timeout", lambda: TimeoutError(), TRANSIENT),
    ("circuit open", lambda: CircuitOpen("postgres", 500), TRANSIENT),
    ("llm unavailable", lambda: BackendError("llm_unavailable", "cannot reach"), TRANSIENT),
    ("llm timeout", lambda: BackendError("llm_timeout", "slow"), TRANSIENT),
    ("llm 503", lambda: BackendError("llm_error", "HTTP 503", status=503), TRANSIENT),
    ("llm 429", lambda: BackendError("llm_error", "HTTP 429", status=429), TRANSIENT),
    ("llm 401", lambda: BackendError("llm_error", "HTTP 401", status=401), PERMANENT),
    ("llm 404", lambda: BackendError("llm_error", "HTTP 404", status=404), PERMANENT),
    ("llm broken stream", lambda: BackendError("llm_error", "not valid JSON"), PERMANENT),
    ("integrity", lambda: IntegrityError("duplicate key"), PERMANENT),
    ("data", lambda: DataError("value too long"), PERMANENT),
    ("psycopg integrity", lambda: psycopg.errors.UniqueViolation("dup"), PERMANENT),
    ("token refused", lambda: AuthFailed("expired"), PERMANENT),
    ("permission denied", lambda: PermissionDenied(), PERMANENT),
    ("redis auth", lambda: redis.exceptions.AuthenticationError("WRONGPASS"), PERMANENT),
    ("pg bad password", lambda: wrapped(psycopg.errors.InvalidPassword("28P01"), OperationalError), PERMANENT),
    ("protocol internal", lambda: ProtocolError("internal", "x"), BUG),
    ("value error", lambda: ValueError("bad"), BUG),
    ("key error", lambda: KeyError("k"), BUG),
    ("attribute error", lambda: AttributeError("a"), BUG),
    ("redis response", lambda: redis.exceptions.ResponseError("WRONGTYPE"), BUG),
    ("psycopg programming", lambda: psycopg.errors.UndefinedTable("no table"), BUG),
    ("local file missing", lambda: FileNotFoundError("x"), BUG),
]


@pytest.mark.parametrize(("exc", "expected"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_classification_table(exc: Callable[[], BaseException], expected: ErrorClass) -> None:
    assert classify(exc()) is expected


def test_a_pg_auth_failure_is_found_through_djangos_wrapper_only_by_its_sqlstate() -> None:
    plain = wrapped(psycopg.OperationalError("connection refused"), OperationalError)
    assert classify(plain) is TRANSIENT
    assert classify(wrapped(psycopg.errors.InvalidAuthorizationSpecification("28000"), OperationalError)) is PERMANENT


def test_exception_groups_take_their_members_class_or_are_bugs() -> None:
    assert classify(ExceptionGroup("g", [TimeoutError(), OSError()])) is TRANSIENT
    assert classify(ExceptionGroup("g", [TimeoutError(), ValueError()])) is BUG


# --- the breaker's state machine ---------------------------------------------------------------------


def test_threshold_failures_within_the_window_open_it(clock: Clock) -> None:
    b = make(clock)
    assert b.state == "closed"
    trip(b, 2)
    clock.advance(9.0)
    b.before_call()  # still closed: two failures are below the threshold
    assert b.state == "closed"
    trip(b, 1)
    assert b.state == "open"
    snap = b.snapshot()
    assert snap["state"] == "open"
    assert snap["opened_at"] == clock.now
    assert snap["retry_after_ms"] == 5000


def test_failures_spread_beyond_the_window_do_not_open_it(clock: Clock) -> None:
    b = make(clock)
    for _ in range(10):
        trip(b, 1)
        clock.advance(5.1)  # at most two failures ever fall within one 10 s window
    assert b.state == "closed"
    assert b.snapshot()["failures"] == 1  # the older ones aged out


def test_a_success_in_between_resets_the_streak(clock: Clock) -> None:
    b = make(clock)
    for _ in range(5):
        trip(b, 2)
        b.record_success()
    assert b.state == "closed"


def test_open_fails_fast_with_the_time_left(clock: Clock) -> None:
    b = make(clock)
    trip(b)
    clock.advance(1.25)
    with pytest.raises(CircuitOpen) as info:
        b.before_call()
    assert info.value.name == "dep"
    assert info.value.retry_after_ms == 3750
    assert b.retry_after_ms() == 3750
    clock.advance(3.7)
    with pytest.raises(CircuitOpen) as info:
        b.before_call()
    assert info.value.retry_after_ms == 50
    assert make(clock, "other").retry_after_ms() == 0  # closed


def test_half_open_lets_exactly_one_probe_through(clock: Clock) -> None:
    b = make(clock)
    trip(b)
    clock.advance(5.0)
    b.before_call()  # the probe
    assert b.state == "half_open"
    for _ in range(3):
        with pytest.raises(CircuitOpen):
            b.before_call()
    assert b.state == "half_open"


async def test_concurrent_tasks_at_half_open_see_one_probe_the_rest_refused(clock: Clock) -> None:
    b = make(clock)
    trip(b)
    clock.advance(5.0)
    release = asyncio.Event()
    entered: list[int] = []

    async def probe_like(i: int) -> str:
        async with b.guard():
            entered.append(i)
            await release.wait()
            return "ok"

    tasks = [asyncio.create_task(probe_like(i)) for i in range(8)]
    # The refused ones finish on their own; the probe waits for `release`.
    pending: set[asyncio.Task[str]] = set(tasks)
    while len(pending) > 1:
        done, pending = await asyncio.wait(pending, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        if not done:  # more than one got in and they all wait: fail below instead of hanging
            break
    assert len(pending) == 1
    assert len(entered) == 1
    assert b.state == "half_open"
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(r == "ok" for r in results) == 1
    assert sum(isinstance(r, CircuitOpen) for r in results) == 7
    assert b.state == "closed"


def test_threads_racing_at_half_open_get_one_probe(clock: Clock) -> None:
    b = make(clock)
    trip(b)
    clock.advance(5.0)
    barrier = threading.Barrier(16)
    allowed: list[bool] = []
    lock = threading.Lock()

    def caller() -> None:
        barrier.wait()
        try:
            b.before_call()
            ok = True
        except CircuitOpen:
            ok = False
        with lock:
            allowed.append(ok)

    threads = [threading.Thread(target=caller) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=5)
    assert len(allowed) == 16
    assert allowed.count(True) == 1


def test_probe_success_closes_it(clock: Clock) -> None:
    b = make(clock)
    trip(b)
    clock.advance(5.0)
    b.before_call()
    b.record_success()
    assert b.state == "closed"
    assert b.retry_after_ms() == 0
    b.before_call()  # everyone through again
    trip(b, 2)
    assert b.state == "closed"  # the old failures were forgotten: a fresh streak is needed


def test_probe_failure_reopens_it_for_a_new_reset_timeout(clock: Clock) -> None:
    b = make(clock)
    trip(b)
    clock.advance(6.0)
    b.before_call()
    b.record_failure(TimeoutError())
    assert b.state == "open"
    assert b.retry_after_ms() == 5000  # counted from the probe's failure, not the first opening
    clock.advance(4.9)
    with pytest.raises(CircuitOpen):
        b.before_call()
    clock.advance(0.1)
    b.before_call()
    assert b.state == "half_open"


def test_a_cancelled_or_non_transient_probe_frees_the_probe_slot(clock: Clock) -> None:
    b = make(clock)
    trip(b)
    clock.advance(5.0)
    b.before_call()
    b.release()  # cancelled: no verdict
    b.before_call()  # the next caller may probe
    b.record_failure(ValueError("a bug in the caller"))  # not the dependency's fault
    assert b.state == "half_open"
    b.before_call()
    with pytest.raises(CircuitOpen):
        b.before_call()


def test_a_probe_that_never_reports_does_not_wedge_it(clock: Clock) -> None:
    b = make(clock, probe_timeout_s=30.0)
    trip(b)
    clock.advance(5.0)
    b.before_call()
    clock.advance(29.0)
    with pytest.raises(CircuitOpen):
        b.before_call()
    clock.advance(1.0)
    b.before_call()  # the lost probe is given up on


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("bug"),
        ProtocolError("bad_request", "x"),
        IntegrityError("dup"),
        BackendError("llm_error", "HTTP 401", status=401),
        CircuitOpen("postgres", 100),  # another breaker's refusal must not cascade into this one
    ],
    ids=["bug", "client", "permanent", "llm-4xx", "other-breaker-open"],
)
def test_non_transient_failures_never_trip_it(clock: Clock, exc: Exception) -> None:
    b = make(clock)
    for _ in range(20):
        with pytest.raises(type(exc)), b.guard():
            raise exc
    assert b.state == "closed"
    assert b.snapshot()["failures"] == 0


def test_guard_counts_transient_failures_and_lets_them_through(clock: Clock) -> None:
    b = make(clock)
    for _ in range(3):
        with pytest.raises(redis.exceptions.ConnectionError), b.guard():
            raise redis.exceptions.ConnectionError("refused")
    assert b.state == "open"
    ran = False
    with pytest.raises(CircuitOpen), b.guard():
        ran = True
    assert ran is False  # the block is not even tried


async def test_call_wraps_a_coroutine_function(clock: Clock) -> None:
    b = make(clock, failure_threshold=2)

    async def fetch(x: int, *, y: int) -> int:
        return x + y

    async def down() -> int:
        raise OperationalError("the database system is shutting down")

    assert await b.call(fetch, 1, y=2) == 3
    for _ in range(2):
        with pytest.raises(OperationalError):
            await b.call(down)
    with pytest.raises(CircuitOpen):
        await b.call(fetch, 1, y=2)


def test_transitions_log_once_and_are_counted(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    name = "dep-metrics"
    opened = metrics.counter("breaker_transitions", name=name, state="open")
    closed = metrics.counter("breaker_transitions", name=name, state="closed")
    b = make(clock, name)
    with caplog.at_level(logging.INFO, logger="chat.infra.breakers"):
        trip(b, 10)  # failures while already open change nothing
        clock.advance(5.0)
        b.before_call()
        b.record_success()
        b.record_success()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(warnings) == 1
    assert "dep-metrics opened" in warnings[0].getMessage()
    assert sum("closed" in m for m in infos) == 1
    assert metrics.counter("breaker_transitions", name=name, state="open") == opened + 1
    assert metrics.counter("breaker_transitions", name=name, state="closed") == closed + 1


def test_two_breakers_are_independent(clock: Clock) -> None:
    """No cascade: the database being down neither opens nor slows the model's breaker."""
    postgres, llm = make(clock, "postgres"), make(clock, "llm")
    trip(postgres)
    assert postgres.state == "open"
    with pytest.raises(CircuitOpen):
        postgres.before_call()
    llm.before_call()
    # A call under the llm guard that failed because postgres was refused is not llm's failure.
    for _ in range(10):
        with pytest.raises(CircuitOpen), llm.guard():
            postgres.before_call()
    assert llm.state == "closed"
    assert llm.snapshot()["failures"] == 0


def test_the_registry_hands_out_one_breaker_per_name_from_settings(settings: Any) -> None:
    settings.CHAT_BREAKER_FAILURES = 7
    settings.CHAT_BREAKER_WINDOW_S = 30
    settings.CHAT_BREAKER_RESET_S = 2.5
    settings.CHAT_BREAKER_LLM_RESET_S = 20
    settings.CHAT_BREAKER_POSTGRES_FAILURES = None  # no per-dependency override for postgres here
    settings.CHAT_BREAKER_POSTGRES_WINDOW_S = None
    reset_breakers()
    pg = breaker("postgres")
    assert breaker("postgres") is pg
    assert (pg.failure_threshold, pg.window_s, pg.reset_timeout_s) == (7, 30.0, 2.5)
    assert breaker("llm").reset_timeout_s == 20.0  # a per-dependency override wins
    assert set(all_breakers()) == {"postgres", "llm"}
    trip(pg)
    assert breaker("llm").state == "closed"
    reset_breakers()
    assert all_breakers() == {}
    assert breaker("postgres").state == "closed"


def test_the_registry_defaults(settings: Any) -> None:
    for name in ("CHAT_BREAKER_FAILURES", "CHAT_BREAKER_WINDOW_S", "CHAT_BREAKER_RESET_S"):
        if hasattr(settings, name):
            delattr(settings, name)
    b = breaker("redis")
    assert (b.failure_threshold, b.window_s, b.reset_timeout_s) == (5, 10.0, 5.0)


# --- retries -------------------------------------------------------------------------------------------


class Flaky:
    def __init__(self, *failures: BaseException, result: str = "done") -> None:
        self.failures = list(failures)
        self.calls = 0
        self.result = result

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return self.result


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


async def test_retry_async_retries_transient_errors_with_jittered_exponential_delays() -> None:
    fn, sleep = Flaky(OperationalError("gone"), redis.exceptions.ConnectionError("refused")), Sleeps()
    assert await retry_async(fn, attempts=3, base_delay_s=0.1, sleep=sleep, rng=lambda: 0.5) == "done"
    assert fn.calls == 3
    assert sleep.delays == pytest.approx([0.05, 0.1])  # 0.5 * 0.1 * 2**0, 0.5 * 0.1 * 2**1


async def test_retry_async_delays_are_capped() -> None:
    fn, sleep = Flaky(*[TimeoutError() for _ in range(5)]), Sleeps()
    assert await retry_async(fn, attempts=6, base_delay_s=0.5, max_delay_s=2.0, sleep=sleep, rng=lambda: 1.0) == "done"
    assert sleep.delays == pytest.approx([0.5, 1.0, 2.0, 2.0, 2.0])


async def test_retry_async_jitter_comes_from_rng() -> None:
    draws = iter([0.0, 0.25, 0.9])
    fn, sleep = Flaky(OSError(), OSError(), OSError()), Sleeps()
    await retry_async(fn, attempts=4, base_delay_s=1.0, max_delay_s=10.0, sleep=sleep, rng=lambda: next(draws))
    assert sleep.delays == pytest.approx([0.0, 0.5, 3.6])


async def test_retry_async_gives_up_after_the_last_attempt() -> None:
    fn, sleep = Flaky(*[TimeoutError(f"t{i}") for i in range(3)]), Sleeps()
    with pytest.raises(TimeoutError, match="t2"):
        await retry_async(fn, attempts=3, sleep=sleep, rng=lambda: 0.5)
    assert fn.calls == 3
    assert len(sleep.delays) == 2  # no sleep after the last failure


@pytest.mark.parametrize(
    "exc",
    [
        ProtocolError("bad_request", "x"),
        ServiceError("not_found", "x"),
        IntegrityError("dup"),
        ValueError("bug"),
        CircuitOpen("redis", 4000),
    ],
    ids=["client", "client-service", "permanent", "bug", "circuit-open"],
)
async def test_retry_async_does_not_retry_what_retrying_cannot_fix(exc: Exception) -> None:
    fn, sleep = Flaky(exc), Sleeps()
    with pytest.raises(type(exc)):
        await retry_async(fn, attempts=5, sleep=sleep)
    assert fn.calls == 1
    assert sleep.delays == []
