"""Shared fixtures. Tests run against the real PostgreSQL and Redis of this machine and fail
loudly (never skip) when either is missing. `make test` sets DATABASE_URL and REDIS_URL."""

from __future__ import annotations

import asyncio
import faulthandler
import itertools
import os
import sys
import time
import uuid
from collections.abc import Generator, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.conf import settings

from tests.support import fast_flush

# Opt-in fixtures for direct service tests (runner doorbells recorded, cheap password hashing).
pytest_plugins = ["tests.support.effects", "tests.support.tracing"]

_counter = itertools.count()

# How long past its pytest-timeout a test may still run before the whole process is ended (see
# pytest_runtest_protocol below): room for the timeout's own failure and the test's teardown.
HARD_STOP_GRACE_S = 60
_HARD_STOP_AT = pytest.StashKey[float]()
_HARD_STOP_FD = pytest.StashKey[int]()


def pytest_configure(config: pytest.Config) -> None:
    if config.option.help:
        return  # `pytest --help` needs no services
    # The hard stop's stack dump must reach the terminal: during a test, fd 2 is pytest's capture file,
    # which is lost when the process ends. (Capture is suspended while plugins are configured.)
    config.stash[_HARD_STOP_FD] = os.dup(sys.stderr.fileno())
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker and not settings.CHANNEL_PREFIX.endswith(worker):
        # Workers sharing one Redis keyspace clear each other's rate-limit windows (see worker_env).
        raise pytest.UsageError(
            "pytest-xdist workers need their own CHANNEL_PREFIX: add `-p tests.support.worker_env` "
            "(as `make test` does)"
        )
    engine = settings.DATABASES["default"]["ENGINE"]
    if engine != "django.db.backends.postgresql":
        raise pytest.UsageError(
            "The test suite runs against real PostgreSQL and Redis: set DATABASE_URL and REDIS_URL "
            "(or run `make test`, which sets them). Refusing to run on " + engine
        )
    if not settings.REDIS_URL:
        raise pytest.UsageError("REDIS_URL is not set: the test suite needs the real Redis (run `make test`).")
    fast_flush.install()
    # Checked here, before any fixture: otherwise the first fixture to touch a missing service (the
    # test database setup, a Redis cleanup) buries the one line that matters under its traceback.
    db = settings.DATABASES["default"]
    problems = [
        postgres_problem(db.get("HOST") or "", db.get("PORT") or 5432, db.get("USER") or "", db.get("PASSWORD") or ""),
        redis_problem(settings.REDIS_URL),
    ]
    if any(problems):
        raise pytest.UsageError(*[p for p in problems if p])


def postgres_problem(
    host: str, port: int | str, user: str, password: str, variable: str = "DATABASE_URL"
) -> str | None:
    """None if PostgreSQL answers at host:port, else the one-line reason it does not (and that
    `variable` is the setting to fix)."""
    import psycopg

    try:
        # The maintenance database: the configured one may not exist yet, the test database never does.
        conn = psycopg.connect(host=host, port=port, user=user, password=password, dbname="postgres", connect_timeout=3)
        conn.close()
    except psycopg.Error as exc:
        # libpq's text is several lines ("… failed: Connection refused", "Is the server running…");
        # the reason is the end of the first.
        reason = str(exc).strip().splitlines()[0].rsplit("failed: ", 1)[-1]
        return (
            f"PostgreSQL at {host or 'the local socket'}:{port} is not reachable ({reason}): "
            f"the tests need the real PostgreSQL; start it or point {variable} at it."
        )
    return None


def redis_problem(url: str, variable: str = "REDIS_URL") -> str | None:
    """None if Redis answers PING at url, else the one-line reason it does not."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        parts = urlsplit(url)  # host and port only: the URL may carry a password
        return (
            f"Redis at {parts.hostname}:{parts.port or 6379} is not reachable ({exc}): "
            f"the tests need the real Redis; start it or point {variable} at it."
        )
    finally:
        client.close()
    return None


def pytest_unconfigure(config: pytest.Config) -> None:
    fd = config.stash.get(_HARD_STOP_FD, None)
    if fd is not None:
        os.close(fd)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, None, None]:
    # pytest-timeout (signal method, see pyproject.toml) fails a hung test and the run goes on. A
    # SIGALRM cannot stop a main thread stuck inside C code, though: past the timeout plus a grace,
    # dump every thread's stack and end the process, so the run ends instead of freezing.
    limit = _timeout_of(item)
    if limit:
        item.stash[_HARD_STOP_AT] = time.monotonic() + limit + HARD_STOP_GRACE_S
    yield
    if limit:
        faulthandler.cancel_dump_traceback_later()


# Armed again at every phase: pytest's own faulthandler plugin cancels the (single, process-wide) timer
# whenever a phase fails, which would leave the teardown after a failure unguarded.
@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    _arm_hard_stop(item)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    _arm_hard_stop(item)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    _arm_hard_stop(item)


def pytest_enter_pdb() -> None:
    faulthandler.cancel_dump_traceback_later()  # someone is debugging: never end their session


def _arm_hard_stop(item: pytest.Item) -> None:
    deadline = item.stash.get(_HARD_STOP_AT, None)
    fd = item.config.stash.get(_HARD_STOP_FD, None)
    if deadline is not None and fd is not None:
        faulthandler.dump_traceback_later(max(1.0, deadline - time.monotonic()), exit=True, file=fd)


def _timeout_of(item: pytest.Item) -> float | None:
    if not item.config.pluginmanager.hasplugin("timeout"):
        return None  # -p no:timeout
    from pytest_timeout import _get_item_settings  # ini value, --timeout and the test's marker, resolved

    timeout = _get_item_settings(item).timeout
    return float(timeout) if timeout and timeout > 0 else None


@pytest.fixture(autouse=True)
def _fast_agents(settings: Any) -> None:
    # The offline agent paces its words for people; tests do not need the pacing.
    settings.AGENT_OFFLINE_TOKEN_DELAY_MS = 0
    settings.AGENT_RUNNER = "inprocess"


def unique(prefix: str) -> str:
    return f"{prefix}{os.getpid()}x{next(_counter)}x{uuid.uuid4().hex[:6]}"


@pytest.fixture
def make_user(db: Any) -> Iterator[Any]:
    from chat.services.conversations import user_create

    def make(tier: str = "free", **kwargs: Any) -> Any:
        return user_create(username=unique("u"), password="pw-" + uuid.uuid4().hex, tier=tier, **kwargs)

    return make


@pytest.fixture(scope="session", autouse=True)
def _close_db_pools(django_db_setup: Any, django_db_blocker: Any) -> Iterator[None]:
    """psycopg's pool keeps connections open; close them before the test database is dropped."""
    yield
    from django.db import connections

    with django_db_blocker.unblock():
        for conn in connections.all():
            conn.close()  # give this thread's connection back first, or the pool cannot close it
            close_pool = getattr(conn, "close_pool", None)
            if close_pool is not None:
                close_pool()
        # A connection a worker thread of some finished test still holds would block DROP DATABASE;
        # the test run is over, so end those sessions rather than leave the test database behind.
        import psycopg

        name = connections["default"].settings_dict["NAME"]
        admin = {**connections["default"].get_connection_params(), "dbname": "postgres"}
        admin.pop("cursor_factory", None)
        admin.pop("context", None)
        with psycopg.connect(**admin, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                [name],
            )


@pytest.fixture(autouse=True)
def _async_cleanup_for_coroutine_tests(request: pytest.FixtureRequest) -> None:
    # Only coroutine tests own an event loop that can hold a run supervisor; a sync test (e.g. one
    # driving Playwright's sync API, which runs its own loop on this thread) must not get the async
    # teardown fixture at all. (A `usefixtures` marker added at collection time is not honoured.)
    import inspect

    if inspect.iscoroutinefunction(getattr(request, "function", None)):
        request.getfixturevalue("_async_test_cleanup")


@pytest.fixture(autouse=True)
def _fresh_breakers() -> Iterator[None]:
    """A circuit opened by one test must not answer `unavailable` in the next."""
    from chat.infra.breakers import reset_breakers

    reset_breakers()
    yield
    reset_breakers()


@pytest.fixture(scope="session", autouse=True)
def _fresh_rate_windows() -> None:
    """Rate windows are keyed by user id, and ids restart in every new test database: forget the
    windows an earlier session with the same CHANNEL_PREFIX left behind."""
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.REDIS_URL)
    for key in client.scan_iter(match=f"{settings.CHANNEL_PREFIX}:rl:*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture
async def _async_test_cleanup() -> Any:
    """Close the test's sockets (even after a failed assertion) and stop the in-process run
    supervisor of its event loop, so nothing outlives the test (and its database)."""
    yield
    import contextlib

    from agents.runner import supervisors
    from tests.support.ws import OPEN_CLIENTS

    while OPEN_CLIENTS:
        # CancelledError too: a consumer that ended by failing leaves a cancelled future that its
        # disconnect re-raises, and stopping there left the other sockets and the supervisor running.
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await OPEN_CLIENTS.pop().comm.disconnect(timeout=2)

    supervisor = supervisors.pop_current()
    if supervisor is not None:
        await supervisor.stop()
