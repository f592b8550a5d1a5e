"""The priority lane for agent runs (agents/priority.py, docs/protocol.md §12) against the real PostgreSQL:
enterprise before pro before free, a lower tier's wait bounded by its max wait under a steady higher-tier
load, the runner's reserved slot, and each conversation's runs still started one at a time in queue order.

The clock is driven through the runs' queue times (`created_at`, set on the rows): the lane orders by
`created_at + max wait`, so no test sleeps."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from channels.db import database_sync_to_async

from agents.models import AgentRun, RunStatus
from agents.priority import claimable_tiers
from agents.runner import RunSupervisor
from agents.services import run_claim_next, run_complete
from tests.support import factories
from tests.support.waiting import eventually

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("runner", "fast_password_hashing")]

WORKER = "lane-test:1"
T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def lane_settings(settings: Any) -> None:
    settings.AGENT_PRIORITY_MAX_WAIT_S = {"enterprise": 0, "pro": 10, "free": 30}
    settings.AGENT_RESERVED_SLOTS = {"enterprise": 1}


def queued(user: Any, at: datetime, conv: str | None = None) -> str:
    """A prompt `user` sends (to a new assistant conversation unless `conv`), queued at `at`."""
    conv = conv or factories.conversation_sync(user)
    sent = factories.message_sync(conv, user, "@assistant hello")
    assert sent.run_id is not None
    AgentRun.objects.filter(id=sent.run_id).update(created_at=at)
    return sent.run_id


def claimed(tiers: frozenset[str] | None = None) -> str | None:
    run = run_claim_next(worker_id=WORKER, tiers=tiers)
    return run.run_id if run is not None else None


def finish(run_id: str) -> None:
    run = AgentRun.objects.get(id=run_id)
    run_complete(run_id=run_id, conversation_id=str(run.conversation_id), text="done", usage={})


def status(run_id: str) -> str:
    return AgentRun.objects.get(id=run_id).status


def test_with_a_slot_busy_and_five_free_runs_queued_an_enterprise_run_queued_last_starts_next(make_user: Any) -> None:
    free, boss = make_user(), make_user(tier="enterprise")
    busy = queued(free, T0)
    assert claimed() == busy  # the one slot's run
    waiting = [queued(free, T0 + timedelta(milliseconds=100 * i)) for i in range(1, 6)]
    last = queued(boss, T0 + timedelta(seconds=1))

    finish(busy)  # the slot frees
    assert claimed() == last
    # Then the free runs, first come first served.
    assert [claimed() for _ in waiting] == waiting
    assert claimed() is None


def test_enterprise_before_pro_before_free(make_user: Any) -> None:
    free, pro, boss = make_user(), make_user(tier="pro"), make_user(tier="enterprise")
    free_first = queued(free, T0)
    pro_run = queued(pro, T0 + timedelta(seconds=1))
    free_second = queued(free, T0 + timedelta(seconds=2))
    boss_run = queued(boss, T0 + timedelta(seconds=3))
    # An unknown tier (a stale row) queues as free.
    odd = make_user()
    odd_run = queued(odd, T0 + timedelta(seconds=2.5))
    type(odd).objects.filter(id=odd.id).update(tier="legacy")

    assert [claimed() for _ in range(5)] == [boss_run, pro_run, free_first, free_second, odd_run]


def test_a_run_past_its_max_wait_goes_before_newer_runs_of_any_tier(make_user: Any) -> None:
    free, pro, boss = make_user(), make_user(tier="pro"), make_user(tier="enterprise")
    old_free = queued(free, T0)
    old_pro = queued(pro, T0 + timedelta(seconds=5))
    boss_run = queued(boss, T0 + timedelta(seconds=31))  # after the free run's due time (T0 + 30 s)

    assert [claimed(), claimed(), claimed()] == [old_pro, old_free, boss_run]


def test_a_free_run_starts_within_its_bound_under_a_steady_enterprise_load(make_user: Any) -> None:
    """One slot; every second an enterprise run is queued and the slot takes the lane's first run."""
    free, boss = make_user(), make_user(tier="enterprise")
    free_run = queued(free, T0)
    boss_conv = factories.conversation_sync(boss)
    started: list[tuple[int, str]] = []
    for second in range(1, 41):
        queued(boss, T0 + timedelta(seconds=second), boss_conv)
        run_id = claimed()
        assert run_id is not None
        started.append((second, run_id))
        finish(run_id)

    [(when, _)] = [(s, r) for s, r in started if r == free_run]
    # Passed over while younger than its max wait (30 s), started as soon as it was due, not later.
    assert when == 30
    assert all(r != free_run for s, r in started if s < 30)
    # The enterprise load goes on meanwhile: every other slot went to an enterprise run, in queue order.
    boss_runs = [r for _, r in started if r != free_run]
    in_queue_order = AgentRun.objects.filter(id__in=boss_runs).order_by("created_at").values_list("id", flat=True)
    assert boss_runs == [str(i) for i in in_queue_order]


def test_the_last_free_slot_is_kept_for_enterprise(make_user: Any, settings: Any) -> None:
    assert claimable_tiers(1) == frozenset({"enterprise"})
    assert claimable_tiers(2) is None
    settings.AGENT_RESERVED_SLOTS = {"enterprise": 1, "pro": 2}
    # Pro runs may not take enterprise's one slot; free runs neither it nor pro's two.
    assert [claimable_tiers(n) for n in (1, 2, 3, 4)] == [
        frozenset({"enterprise"}),
        frozenset({"enterprise", "pro"}),
        frozenset({"enterprise", "pro"}),
        None,
    ]
    settings.AGENT_RESERVED_SLOTS = {"enterprise": 1}

    free, pro, boss = make_user(), make_user(tier="pro"), make_user(tier="enterprise")
    free_run, pro_run = queued(free, T0), queued(pro, T0)
    reserved = claimable_tiers(1)
    assert claimed(reserved) is None
    assert (status(free_run), status(pro_run)) == (RunStatus.QUEUED, RunStatus.QUEUED)
    boss_run = queued(boss, T0 + timedelta(seconds=100))
    assert claimed(reserved) == boss_run
    assert [claimed(claimable_tiers(2)), claimed(claimable_tiers(2))] == [pro_run, free_run]


def test_a_conversations_runs_keep_their_order_whatever_the_tiers(make_user: Any) -> None:
    boss, free = make_user(tier="enterprise"), make_user()
    shared = factories.conversation_sync(boss, members=((free, "member"),))
    free_first = queued(free, T0, shared)
    boss_second = queued(boss, T0 + timedelta(seconds=1), shared)
    elsewhere = queued(free, T0 + timedelta(milliseconds=500))

    # The shared conversation's head is the free run: the enterprise run behind it waits its turn.
    assert claimed() == free_first
    assert claimed() == elsewhere
    assert claimed() is None
    assert claimed(frozenset({"enterprise"})) is None
    finish(free_first)
    # Only enterprise runs may take the reserved slot, and the shared conversation's head is one now.
    assert claimed(frozenset({"enterprise"})) == boss_second


def test_the_reserved_head_is_checked_under_the_lock(make_user: Any) -> None:
    """A conversation whose head is a free run is never claimed into an enterprise-only slot, even when an
    enterprise run of it is queued behind."""
    boss, free = make_user(tier="enterprise"), make_user()
    shared = factories.conversation_sync(boss, members=((free, "member"),))
    free_first = queued(free, T0, shared)
    queued(boss, T0 + timedelta(seconds=1), shared)
    assert claimed(frozenset({"enterprise"})) is None
    assert status(free_first) == RunStatus.QUEUED


async def test_a_runner_with_one_slot_left_claims_only_enterprise_runs(make_user: Any, settings: Any) -> None:
    settings.AGENT_MAX_CONCURRENT_RUNS = 2
    supervisor = RunSupervisor()  # not started: claims only when told to, here
    busy = asyncio.get_running_loop().create_future()
    supervisor.tasks["busy"] = busy  # type: ignore[assignment]  # one slot taken
    free = await database_sync_to_async(make_user)()
    boss = await database_sync_to_async(make_user)(tier="enterprise")
    free_run = await database_sync_to_async(queued)(free, T0)

    assert await supervisor.claim_available() == 0
    assert await database_sync_to_async(status)(free_run) == RunStatus.QUEUED

    boss_run = await database_sync_to_async(queued)(boss, T0 + timedelta(seconds=100))
    assert await supervisor.claim_available() == 1
    assert boss_run in supervisor.tasks
    done = database_sync_to_async(lambda: status(boss_run) == RunStatus.COMPLETED)
    await eventually(done, what="the enterprise run completed in the runner")
    busy.cancel()
    assert await database_sync_to_async(status)(free_run) == RunStatus.QUEUED
