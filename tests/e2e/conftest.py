"""Fixtures for the browser end-to-end tests: the real stack (`manage.py serve` with the agent worker,
PostgreSQL and Redis) and headless Chromium driven by Playwright.

The browser is Debian's /usr/bin/chromium (Playwright's own download does not work on this machine).
A missing browser is a failure, never a skip: an e2e suite that silently skips proves nothing.
These tests never use pytest-django's `db` fixture: the stack has its own database.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import postgres_problem, redis_problem
from tests.support.servers import PG_ADMIN_URL, REDIS_URL, Stack, running_stack

CHROMIUM = os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
DEMO_PASSWORD = "demo-password"
DEMO_TITLE = "Demo: ask the assistant"
# Long enough per word that a ~30-word answer streams for ~4 s: room to reload a page or click Stop
# mid-run even on a loaded 2-core machine (at 60 ms a Stop clicked late raced the answer's end).
TOKEN_DELAY_MS = "120"


def pytest_collection_finish(session: pytest.Session) -> None:
    # The stacks reach PostgreSQL and Redis at their own addresses (PG_ADMIN_URL, E2E_REDIS_URL), which
    # tests/conftest.py does not check: check them once, before the first stack fails on them with a
    # long traceback (PostgreSQL) or a minute-long "not ready" (Redis), module after module.
    here = Path(__file__).parent
    if not any(here in item.path.parents for item in session.items):
        return
    admin = urlsplit(PG_ADMIN_URL)
    problems = [
        postgres_problem(
            admin.hostname or "", admin.port or 5432, admin.username or "", admin.password or "", "PG_ADMIN_URL"
        ),
        redis_problem(REDIS_URL, "E2E_REDIS_URL"),
    ]
    if any(problems):
        pytest.exit("\n".join(p for p in problems if p), returncode=pytest.ExitCode.USAGE_ERROR)


# Module scope, not session: Playwright's sync API keeps an event loop running on this thread while
# it is open, so it must be closed before the suite's asyncio tests (integration, unit) run.
@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running_stack(env_overrides={"AGENT_OFFLINE_TOKEN_DELAY_MS": TOKEN_DELAY_MS}) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.fail(
            f"Chromium not found at {CHROMIUM}: install Debian's `chromium` package "
            "(or set E2E_CHROMIUM). The e2e tests never skip.",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        try:
            launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        except Exception as exc:  # noqa: BLE001 - report any launch failure as a test failure
            pytest.fail(f"Chromium at {CHROMIUM} did not start: {exc}", pytrace=False)
        try:
            yield launched
        finally:
            launched.close()


class PageErrors:
    """JavaScript errors and console errors seen by the pages of one test."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def attach(self, page: Any, label: str) -> None:
        page.on("pageerror", lambda exc: self.items.append(f"[{label}] uncaught: {exc}"))
        page.on(
            "console",
            lambda msg: self.items.append(f"[{label}] console.{msg.type}: {msg.text}") if msg.type == "error" else None,
        )


@pytest.fixture
def page_errors() -> PageErrors:
    return PageErrors()


@pytest.fixture
def new_page(browser: Any, stack: Stack, page_errors: PageErrors) -> Iterator[Callable[[str], Any]]:
    """`new_page(label)`: a page in a fresh browser context (its own cookies: one user each)."""
    contexts: list[Any] = []

    def make(label: str = "page") -> Any:
        context = browser.new_context(base_url=stack.base_url, viewport={"width": 1280, "height": 900})
        # Generous: the suite's last minutes run two stacks and browsers on two cores, where a page
        # load has taken over 15 s; a wait for something that never comes still fails.
        context.set_default_timeout(30_000)
        contexts.append(context)
        page = context.new_page()
        page_errors.attach(page, label)
        return page

    yield make
    for context in contexts:
        context.close()


@pytest.fixture
def login() -> Callable[[Any, str], None]:
    """Log in through the login form, like a person would, and land on the conversation list."""
    from playwright.sync_api import expect

    def do_login(page: Any, username: str) -> None:
        page.goto("/login/")
        page.get_by_test_id("login-username").fill(username)
        page.get_by_test_id("login-password").fill(DEMO_PASSWORD)
        page.get_by_test_id("login-submit").click()
        page.wait_for_url(re.compile(r"/$"))
        expect(page.get_by_test_id("current-user")).to_have_text(username)

    return do_login


@pytest.fixture
def open_demo(login: Callable[[Any, str], None]) -> Callable[[Any, str], str]:
    """Log in as `username`, open the demo conversation from the list, wait until it is live.
    Returns the conversation id."""
    from playwright.sync_api import expect

    def do_open(page: Any, username: str) -> str:
        login(page, username)
        link = page.get_by_test_id("conversation-link").filter(has_text=DEMO_TITLE)
        expect(link).to_have_count(1)
        conversation_id = link.get_attribute("data-conversation-id")
        link.click()
        page.wait_for_url(f"**/c/{conversation_id}/")
        wait_live(page)
        return str(conversation_id)

    return do_open


def wait_live(page: Any, timeout: float = 15_000) -> None:
    """The page is connected and its transcript synced (history loaded, subscribed)."""
    from playwright.sync_api import expect

    expect(page.get_by_test_id("connection-state")).to_have_attribute("data-state", "online", timeout=timeout)
    page.wait_for_function("() => window.__chat && window.__chat.synced", timeout=timeout)
