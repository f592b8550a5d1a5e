"""A short chaos run (tests/benchmarks/chaos.py) inside the suite: 4 ChatClients over 2 server processes
chat in 2 agent conversations while clients are cut, a server process and the agent worker (mid-run) are
SIGKILLed and Redis is restarted; afterwards every transcript equals the log exactly, every run has one
terminal event, last, and every acknowledged send is in the log once. Seed: CHAOS_SEED (printed)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.benchmarks.chaos import STACK_ENV, ChaosConfig, ensure_redis, print_report, run_chaos
from tests.support.servers import Stack, running_stack

pytestmark = [pytest.mark.e2e]

SEED = int(os.environ.get("CHAOS_SEED", "20240601"))


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running_stack(processes=2, env_overrides=STACK_ENV) as s:
        yield s


async def test_transcripts_equal_the_log_after_faults(stack: Stack) -> None:
    config = ChaosConfig(
        seed=SEED,
        duration_s=20,
        conversations=2,
        users=2,
        clients_per_user=2,
        processes=2,
        client_disconnects=12,
        server_kills=1,
        worker_kills=1,
        redis_restarts=1,
        send_interval_s=4.0,  # 4 clients, 2 conversations: runs drain as fast as they arrive
        quiesce_timeout_s=40,
    )
    print(f"chaos seed {SEED}")
    try:
        report = await run_chaos(config, stack)
    finally:
        ensure_redis()  # Redis is shared with other tests on this machine
    print_report(report)
    assert report.ok, "\n".join(report.violations)
    # The faults really happened, or passing proves nothing.
    assert report.forced_disconnects == config.client_disconnects
    assert report.server_kills == 1
    assert report.redis_restarts == 1
    assert report.worker_kills_mid_run == 1
    assert report.failure_codes.get("worker_lost", 0) >= 1
    assert report.client_reconnects >= config.client_disconnects
    assert report.sends_acked > 0
    assert report.runs >= report.sends_acked
