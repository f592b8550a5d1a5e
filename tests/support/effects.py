"""Fixtures for tests that call services directly and check what they make happen after commit.

tests/conftest.py registers this module as a plugin; a test module opts in with
`pytestmark = pytest.mark.usefixtures("runner", "fast_password_hashing")`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from agents.runner import get_supervisor
from chat import publishing


class RecordingRunner:
    """Stands in for the in-process run supervisor at the publish road's local-runner hook: the
    real one would start on the short-lived loop that delivers a sync caller's effects and claim
    the runs these tests drive by hand. Records what the services' run doorbells told it, in order."""

    def __init__(self) -> None:
        self.told: list[object] = []

    def wake(self) -> None:
        self.told.append("wake")

    def cancel(self, run_id: str) -> bool:
        self.told.append(("cancel", run_id))
        return False


@pytest.fixture
def runner() -> Iterator[RecordingRunner]:
    recording = RecordingRunner()
    publishing.set_local_runner(lambda: recording)
    try:
        yield recording
    finally:
        publishing.set_local_runner(get_supervisor)  # what agents.apps installs


@pytest.fixture
def fast_password_hashing(settings: Any) -> None:
    # Every test creates several users; hashing their passwords is not what is tested here.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
