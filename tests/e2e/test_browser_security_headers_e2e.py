"""The Content-Security-Policy in a real browser (docs/operations.md "Browser hardening headers and
HTTPS"): headless Chromium opens the chat pages and the admin against the real stack and reports every
violation, both as the page's `securitypolicyviolation` events and as the console's "Refused to …"
errors. A screenshot of each page lands in E2E_LOG_DIR (default /tmp) for a person to look at.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import DEMO_PASSWORD, PageErrors
from tests.support.servers import Stack

pytestmark = [pytest.mark.e2e]

SCREENSHOTS = Path(os.environ.get("E2E_LOG_DIR", "/tmp")) / "csp-screenshots"

# Installed before any page script runs (Playwright injects it past the policy): every violation the
# browser reports to the page is kept for the test to read.
RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', (e) => {
  const where = `${e.sourceFile}:${e.lineNumber}`;
  window.__cspViolations.push(`${e.violatedDirective} blocked ${e.blockedURI || 'inline'} at ${where}`);
});
"""


class Violations:
    """CSP violations and any other error of a page: console errors and uncaught exceptions."""

    def __init__(self) -> None:
        self.console: list[str] = []
        self.errors: list[str] = []

    def attach(self, page: Any) -> None:
        page.add_init_script(RECORD_VIOLATIONS)
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))

    def _console(self, msg: Any) -> None:
        if "Content Security Policy" in msg.text:
            self.console.append(msg.text)
        elif msg.type == "error":
            self.errors.append(f"console.error: {msg.text} ({msg.location.get('url')})")

    def check(self, page: Any, label: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{label}.png"), full_page=True)
        seen = page.evaluate("() => window.__cspViolations")
        assert seen == [], f"{label}: {seen}"
        assert self.console == [], f"{label}: {self.console}"
        assert self.errors == [], f"{label}: {self.errors}"


@pytest.fixture
def violations() -> Violations:
    return Violations()


def open_page(new_page: Callable[[str], Any], violations: Violations, label: str) -> Any:
    page = new_page(label)
    violations.attach(page)
    return page


def test_the_policy_is_on_and_the_chat_pages_break_none_of_it(
    new_page: Callable[[str], Any],
    open_demo: Callable[[Any, str], str],
    violations: Violations,
    page_errors: PageErrors,
    stack: Stack,
) -> None:
    page = open_page(new_page, violations, "alice")
    response = page.goto("/login/")
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    violations.check(page, "login")
    open_demo(page, "alice")  # logs in, opens the conversation and waits until its socket is live
    violations.check(page, "conversation")
    page.goto("/")
    expect(page.get_by_test_id("conversation-list")).to_be_visible()
    violations.check(page, "index")
    assert not page_errors.items, "\n".join(page_errors.items)


def admin_login(page: Any) -> None:
    page.goto("/admin/login/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", DEMO_PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(re.compile(r"/admin/$"))


@pytest.mark.parametrize(
    "path",
    [
        "/admin/",
        "/admin/chat/user/",
        "/admin/chat/user/add/",
        "/admin/chat/conversation/",
        "/admin/chat/message/",
        "/admin/chat/event/",
    ],
)
def test_the_admin_works_under_the_policy(new_page: Callable[[str], Any], violations: Violations, path: str) -> None:
    page = open_page(new_page, violations, "admin")
    admin_login(page)
    page.goto(path)
    expect(page.locator("#content")).to_be_visible()
    violations.check(page, "admin" + path.replace("/", "_").rstrip("_"))


def open_first_change_form(page: Any, changelist: str) -> None:
    page.goto(changelist)
    page.locator("#result_list tbody tr th a").first.click()
    expect(page.locator("#content form")).to_be_visible()


def test_a_users_change_form_works_under_the_policy(new_page: Callable[[str], Any], violations: Violations) -> None:
    """Date widgets, the permission filter, the password link: the admin's own scripts."""
    page = open_page(new_page, violations, "admin")
    admin_login(page)
    open_first_change_form(page, "/admin/chat/user/")
    expect(page.locator("#id_user_permissions_filter")).to_be_visible()  # SelectFilter ran
    violations.check(page, "admin_user_change")


def test_a_conversations_change_form_works_under_the_policy(
    new_page: Callable[[str], Any], violations: Violations
) -> None:
    page = open_page(new_page, violations, "admin")
    admin_login(page)
    open_first_change_form(page, "/admin/chat/conversation/")
    violations.check(page, "admin_conversation_change")
