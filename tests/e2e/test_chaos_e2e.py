"""A short chaos run (tests/benchmarks/chaos.py), run by `make chaos`: 4 ChatClients over 2 server
processes chat in 2 agent conversations while clients are cut, a server process and the agent worker
(mid-run) are SIGKILLed and Redis is crashed and restarted; afterwards every transcript equals the log
exactly, every run has one terminal event, last, and every acknowledged send is in the log once.
Seed: CHAOS_SEED (printed).

The Redis the stack uses, and the one the fault kills, is a private redis-server on a free port: the
machine's shared Redis and PostgreSQL are never stopped, flushed or restarted."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.benchmarks.chaos import ChaosConfig, chaos_stack, print_report, run_chaos
from tests.support.faults import RedisServer
from tests.support.servers import Stack

# Setup (a 2-process stack), 20 s of traffic under faults and the recovery take 70-90 s on this 2-core
# machine: too long for every `make test`, which deselects the `chaos` marker (pytest reports it as
# deselected, never as passed); `make chaos` runs it, tests/benchmarks/chaos.py is the full-length run.
# The timeout is above the suite's default: setup, the run and teardown together, on a loaded machine.
pytestmark = [pytest.mark.e2e, pytest.mark.chaos, pytest.mark.timeout(300)]

SEED = int(os.environ.get("CHAOS_SEED", "20240601"))


@pytest.fixture(scope="module")
def stack_and_redis() -> Iterator[tuple[Stack, RedisServer]]:
    with chaos_stack(processes=2) as pair:
        yield pair


async def test_transcripts_equal_the_log_after_faults(stack_and_redis: tuple[Stack, RedisServer]) -> None:
    stack, redis = stack_and_redis
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
    report = await run_chaos(config, stack, redis)
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
