"""pytest plugin for mutation runs only (loaded by [tool.mutmut] pytest_add_cli_args; tests run with
cwd `mutants/`, where mutmut keeps its stats).

mutmut runs each mutant's covering tests with `-x` but in no particular order, so a mutant that the
unit tests reject in milliseconds could first sit through a socket test's ten-second waits. This
runs them cheapest first, by the duration mutmut measured on the clean code, so the first failure
(which ends the run) is usually a quick one.

It also caps the CPU time of every test at ten times that duration (at least MIN_CPU_S): a mutant
that makes a test spin (a loop that no longer ends, a writer that never yields) then fails that
test within seconds, instead of using up mutmut's budget for the whole mutant and being recorded
as a timeout minutes later. CPU time, not wall time: on the shared, niced machine a test may wait
for a core much longer than it runs, and a wall-clock cap would fail honest tests there."""

from __future__ import annotations

import json
import math
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

STATS = Path("mutmut-stats.json")
CPU_FACTOR = 10
MIN_CPU_S = 10.0
_CAP = pytest.StashKey[float]()


def _durations() -> dict[str, float]:
    try:
        return dict(json.loads(STATS.read_text())["duration_by_test"])
    except (OSError, ValueError, KeyError):
        return {}  # the first stats run: nothing measured yet


def _db_group(item: pytest.Item) -> int:
    """Tests without the database first, then pytest-django's own order (its transaction-wrapped
    tests before the transactional ones, which flush the tables): only the order within a group
    changes."""
    marker = item.get_closest_marker("django_db")
    fixtures = getattr(item, "fixturenames", [])
    transactional = bool(marker and (marker.kwargs.get("transaction") or marker.kwargs.get("reset_sequences")))
    if transactional or "transactional_db" in fixtures or "live_server" in fixtures:
        return 2
    return 1 if marker or "db" in fixtures else 0


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: Any, items: list[pytest.Item]) -> None:
    durations = _durations()
    if not durations:
        return
    items.sort(key=lambda item: (_db_group(item), durations.get(item.nodeid, math.inf)))
    for item in items:
        if item.nodeid in durations:
            item.stash[_CAP] = max(MIN_CPU_S, CPU_FACTOR * durations[item.nodeid])


def _over_budget(signum: int, frame: FrameType | None) -> None:
    pytest.fail("used more than ten times its usual CPU time (tests/mutation/fast_first.py)", pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    cap = item.stash.get(_CAP, None)
    if cap is None:
        yield
        return
    previous = signal.signal(signal.SIGPROF, _over_budget)
    # Again every CPU second after the first: a spinning task may swallow the first failure.
    signal.setitimer(signal.ITIMER_PROF, cap, 1.0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)
