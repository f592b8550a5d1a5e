"""The runner's concurrency cap and the webhook retry schedule, read from the environment
(chatsite/config/limits.py): their values, and the tables that stop the server at startup. Each case
imports the settings module in a fresh interpreter, as a starting process would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
READ = (
    "import json; from chatsite.config import limits as l; "
    "print(json.dumps([l.AGENT_MAX_CONCURRENT_RUNS, l.AGENT_RESERVED_SLOTS, l.WEBHOOKS_RETRY_SCHEDULE_S]))"
)
NAMES = ("AGENT_MAX_CONCURRENT_RUNS", "AGENT_RESERVED_SLOTS_JSON", "WEBHOOKS_RETRY_SCHEDULE_S")


def start(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in NAMES}
    return subprocess.run(
        [sys.executable, "-c", READ], cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=30
    )


def test_the_defaults() -> None:
    started = start()
    assert started.returncode == 0, started.stderr
    assert json.loads(started.stdout) == [50, {"enterprise": 1}, [5, 300, 1800, 7200, 18000, 36000, 36000]]


def test_a_one_slot_runner_and_a_short_schedule() -> None:
    started = start(AGENT_MAX_CONCURRENT_RUNS="1", AGENT_RESERVED_SLOTS_JSON="{}", WEBHOOKS_RETRY_SCHEDULE_S="1,2.5")
    assert started.returncode == 0, started.stderr
    assert json.loads(started.stdout) == [1, {}, [1.0, 2.5]]


def test_reserving_every_slot_stops_the_start() -> None:
    # The default keeps one slot for enterprise: a one-slot runner would never run a free or pro run.
    started = start(AGENT_MAX_CONCURRENT_RUNS="1")
    assert started.returncode != 0
    assert "reserves 1 slot(s) of AGENT_MAX_CONCURRENT_RUNS (1)" in started.stderr


def test_a_retry_schedule_without_positive_waits_stops_the_start() -> None:
    for schedule in ("0", "5,-1"):
        started = start(WEBHOOKS_RETRY_SCHEDULE_S=schedule)
        assert started.returncode != 0, schedule
        assert "WEBHOOKS_RETRY_SCHEDULE_S" in started.stderr
