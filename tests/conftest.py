"""Shared fixtures. Tests run against the real PostgreSQL and Redis of this machine and fail
loudly (never skip) when either is missing. `make test` sets DATABASE_URL and REDIS_URL."""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings

_counter = itertools.count()


def pytest_configure(config: pytest.Config) -> None:
    engine = settings.DATABASES["default"]["ENGINE"]
    if engine != "django.db.backends.postgresql":
        raise pytest.UsageError(
            "The test suite runs against real PostgreSQL and Redis: set DATABASE_URL and REDIS_URL "
            "(or run `make test`, which sets them). Refusing to run on " + engine
        )
    if not settings.REDIS_URL:
        raise pytest.UsageError("REDIS_URL is not set: the test suite needs the real Redis (run `make test`).")


@pytest.fixture(scope="session", autouse=True)
def _require_redis() -> None:
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis at {settings.REDIS_URL} is not reachable: {exc}", pytrace=False)


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
        with contextlib.suppress(Exception):
            await OPEN_CLIENTS.pop().comm.disconnect(timeout=2)

    supervisor = supervisors.pop_current()
    if supervisor is not None:
        await supervisor.stop()
