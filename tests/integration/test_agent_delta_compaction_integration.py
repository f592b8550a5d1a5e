"""Compaction of finished runs' agent_delta events (chat/services/compaction.py, docs/operations.md
"Compaction") against the real PostgreSQL and Redis: only the deltas of runs that completed or were cancelled
go, after the grace period, in batches, idempotently, never the head; and every reader of the log (a socket
resuming from before the compacted range, `history` and the REST page in both units, the AG-UI export) is
answered with the whole answer and no error."""

from __future__ import annotations

import asyncio
import contextlib
import math
from datetime import timedelta
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import transaction
from django.utils import timezone
from rest_framework.test import APIClient

from agents.models import AgentRun, RunStatus
from agents.services import run_claim_next, run_complete, run_emit, run_fail, run_finish_cancelled, run_request_cancel
from agents.worker import monitoring_loop
from chat.models import Conversation, Event
from chat.services import compaction
from chat.services.events import append_event
from chatsite.config.env import env_float, env_int
from tests.support import factories
from tests.support.faults import lose_hot_buffer
from tests.support.waiting import eventually
from tests.support.ws import Client, access_token

pytestmark = [pytest.mark.django_db(transaction=True)]

LATER = timedelta(seconds=301)  # past the default grace period of 300 s


@pytest.fixture(autouse=True)
def _no_runner(settings: Any) -> None:
    settings.AGENT_RUNNER = "worker"  # runs stay queued until the test drives them
    settings.AGENT_DELTA_COMPACT_AFTER_S = 300.0
    settings.AGENT_DELTA_COMPACT_BATCH = 1000


def ask(conv: str, user: Any, words: int, *, end: str | None = "complete", chunk: int = 3) -> tuple[str, str]:
    """A question the agent answers in `words` words, `chunk` words per agent_delta, driven like a runner;
    `end`: "complete", "cancel", "fail" or None (still running). Returns (run id, the text streamed)."""
    asked = factories.message_sync(conv, user, f"@assistant question {words}")
    claimed = run_claim_next(worker_id="test")
    assert claimed is not None
    assert claimed.run_id == asked.run_id
    parts = [f"w{i}" for i in range(words)]
    streamed = ""
    for i in range(0, words, chunk):
        piece = " ".join(parts[i : i + chunk]) + " "
        run_emit(run_id=claimed.run_id, conversation_id=conv, type="agent_delta", data={"text": piece})
        streamed += piece
    if end == "complete":
        run_complete(run_id=claimed.run_id, conversation_id=conv, text=streamed, usage={})
    elif end == "cancel":
        run_request_cancel(run_id=claimed.run_id, by_user_id=user.id, by_username=user.username)
        run_finish_cancelled(run_id=claimed.run_id, conversation_id=conv)
    elif end == "fail":
        run_fail(run_id=claimed.run_id, conversation_id=conv, code="llm_error", message="the model broke")
    return claimed.run_id, streamed


def log(conv: str) -> list[tuple[int, str, str | None]]:
    rows = Event.objects.filter(conversation_id=conv).order_by("seq").values_list("seq", "type", "run_id")
    return [(seq, kind, str(run_id) if run_id else None) for seq, kind, run_id in rows]


def deltas(run_id: str) -> int:
    return Event.objects.filter(run_id=run_id, type="agent_delta").count()


def test_only_the_deltas_of_completed_and_cancelled_runs_go_after_the_grace_period(make_user: Any) -> None:
    owner = make_user()
    conv = factories.conversation_sync(owner, agent_mode="always")
    completed, _ = ask(conv, owner, 30)
    cancelled, _ = ask(conv, owner, 12, end="cancel")
    failed, _ = ask(conv, owner, 9, end="fail")
    running, _ = ask(conv, owner, 15, end=None)
    queued = factories.message_sync(conv, owner, "and another").run_id  # waits behind the running run
    parked_conv = factories.conversation_sync(owner, agent_mode="always")
    parked, _ = ask(parked_conv, owner, 6, end=None)
    AgentRun.objects.filter(id=parked).update(status=RunStatus.WAITING_APPROVAL)
    before = log(conv)
    head = Conversation.objects.get(id=conv).last_seq

    # Within the grace period nothing goes: a socket resuming right after the end still gets the deltas.
    assert compaction.compact_finished_runs() == compaction.Compacted()
    assert log(conv) == before

    done = compaction.compact_finished_runs(timezone.now() + LATER)

    assert (done.runs, done.events) == (2, 10 + 4)
    gone = {(seq, kind, run) for seq, kind, run in before if kind == "agent_delta" and run in (completed, cancelled)}
    assert len(gone) == 14
    assert log(conv) == [row for row in before if row not in gone]  # every other event stays, in order
    assert (deltas(completed), deltas(cancelled), deltas(failed), deltas(running), deltas(parked)) == (0, 0, 3, 5, 2)
    assert Conversation.objects.get(id=conv).last_seq == head
    assert log(conv)[-1][0] == head  # the head event stays
    marked = {str(run): at for run, at in AgentRun.objects.values_list("id", "deltas_compacted_at")}
    assert {run for run, at in marked.items() if at is not None} == {completed, cancelled}
    assert marked[str(queued)] is None

    # Idempotent: a second pass finds nothing due and deletes nothing.
    assert compaction.compact_finished_runs(timezone.now() + LATER) == compaction.Compacted()
    assert log(conv) == [row for row in before if row not in gone]


def test_the_head_stays_even_when_it_is_a_delta(make_user: Any) -> None:
    # Not a shape the runner writes (the terminal event comes after the deltas), but the guard holds anyway.
    owner = make_user()
    conv = factories.conversation_sync(owner, agent="")
    run = AgentRun.objects.create(
        conversation_id=conv, agent="assistant", status=RunStatus.COMPLETED, finished_at=timezone.now() - LATER
    )
    with transaction.atomic():
        for text in ("one ", "two "):
            append_event(conversation_id=conv, type="agent_delta", data={"text": text}, run_id=run.id)
    head = Conversation.objects.get(id=conv).last_seq

    done = compaction.compact_finished_runs()

    assert done.events == 1
    assert log(conv) == [(head, "agent_delta", str(run.id))]


def test_deltas_go_in_batches_and_a_pass_cut_short_is_finished_by_the_next(make_user: Any, monkeypatch: Any) -> None:
    owner = make_user()
    conv = factories.conversation_sync(owner, agent_mode="always")
    runs = [ask(conv, owner, 60)[0] for _ in range(3)]  # 20 deltas each
    monkeypatch.setattr(compaction, "RUNS_PER_SCAN", 1)

    first = compaction.compact_finished_runs(timezone.now() + LATER, batch=7, budget_s=0)  # one run, then stops

    assert (first.runs, first.events, first.batches) == (1, 20, math.ceil(20 / 7))
    assert sorted(deltas(r) for r in runs) == [0, 20, 20]
    rest = compaction.compact_finished_runs(timezone.now() + LATER, batch=7)
    assert (rest.runs, rest.events, rest.batches) == (2, 40, 2 * math.ceil(20 / 7))
    assert [deltas(r) for r in runs] == [0, 0, 0]


async def test_a_client_resuming_below_the_compacted_range_gets_what_is_left_in_order(make_user: Any) -> None:
    owner = await database_sync_to_async(make_user)()
    conv = await factories.conversation(owner, agent_mode="always")
    answers = [await database_sync_to_async(ask)(conv, owner, n) for n in (21, 9, 33)]
    done = await database_sync_to_async(compaction.compact_finished_runs)(timezone.now() + LATER)
    assert done.events == 7 + 3 + 11
    rows = await database_sync_to_async(log)(conv)
    assert [kind for _, kind, _ in rows] == ["message", "agent_started", "agent_completed"] * 3
    left = [seq for seq, _, _ in rows]
    # The hot buffer holds the last minutes only; after the grace period a replay from this far back reads the log.
    await lose_hot_buffer(conv)

    client, _, _ = await Client.connect(owner)
    try:
        await client.recv()
        reply = await client.command("subscribe", conversation=conv, since_seq=1)
        assert reply["ok"] is True
        assert reply["recovered"] is True
        await client.seen_or_until(lambda f: f.get("conversation") == conv and f.get("seq") == left[-1])
        got = client.events(conv)
        assert [e["seq"] for e in got] == [s for s in left if s > 1]  # each once, increasing, holes skipped
        assert not [f for f in client.frames if f.get("type") == "error"]
        texts = [e["data"]["text"] for e in got if e["type"] == "agent_completed"]
        assert texts == [text for _, text in answers]  # each terminal event carries the whole answer
    finally:
        await client.close()


def test_history_pages_in_both_units_page_back_without_skipping_or_repeating(make_user: Any) -> None:
    owner = make_user()
    conv = factories.conversation_sync(owner, agent_mode="mention")
    for i in range(4):
        ask(conv, owner, 12 + i * 3)
        factories.message_sync(conv, owner, f"between {i}")
    compaction.compact_finished_runs(timezone.now() + LATER)
    left = [seq for seq, _, _ in log(conv)]
    assert not Event.objects.filter(conversation_id=conv, type="agent_delta").exists()
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token(owner)}")

    for unit in ("events", "messages"):
        seen: list[int] = []
        before: int | None = None
        for _ in range(len(left)):
            query = f"limit=3&unit={unit}" + (f"&before_seq={before}" if before is not None else "")
            response = api.get(f"/api/conversations/{conv}/events/?{query}")
            assert response.status_code == 200, response.content
            page = response.json()
            seen = [e["seq"] for e in page["events"]] + seen
            if not page["has_more"]:
                break
            before = page.get("next_before_seq", page["events"][0]["seq"])
        assert seen == left, unit


async def test_the_history_command_pages_back_over_the_compacted_log(make_user: Any) -> None:
    owner = await database_sync_to_async(make_user)()
    conv = await factories.conversation(owner, agent_mode="always")
    for n in (15, 6, 24):
        await database_sync_to_async(ask)(conv, owner, n)
    await database_sync_to_async(compaction.compact_finished_runs)(timezone.now() + LATER)
    left = [seq for seq, _, _ in await database_sync_to_async(log)(conv)]

    client, _, _ = await Client.connect(owner)
    try:
        await client.recv()
        for unit in ("events", "messages"):
            seen: list[int] = []
            before: int | None = None
            for _ in range(len(left)):
                fields: dict[str, Any] = {"conversation": conv, "limit": 2, "unit": unit}
                if before is not None:
                    fields["before_seq"] = before
                page = await client.command("history", **fields)
                assert page["ok"] is True, page
                seen = [e["seq"] for e in page["events"]] + seen
                if not page["has_more"]:
                    break
                before = page.get("next_before_seq", page["events"][0]["seq"])
            assert seen == left, unit
    finally:
        await client.close()


def test_the_agui_export_of_a_compacted_run_has_the_whole_answer(make_user: Any) -> None:
    owner = make_user()
    conv = factories.conversation_sync(owner, agent_mode="always")
    run_id, text = ask(conv, owner, 40)
    cancelled, partial = ask(conv, owner, 10, end="cancel")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token(owner)}")
    streamed = api.get(f"/api/runs/{run_id}/ag-ui/").json()["events"]

    compaction.compact_finished_runs(timezone.now() + LATER)

    for run, whole in ((run_id, text), (cancelled, partial)):
        response = api.get(f"/api/runs/{run}/ag-ui/")
        assert response.status_code == 200, response.content
        events = response.json()["events"]
        contents = [e["delta"] for e in events if e["type"] == "TEXT_MESSAGE_CONTENT"]
        assert contents == [whole]  # one chunk, the whole answer
        assert [e["type"] for e in events][-1] == "RUN_FINISHED"
    assert "".join(e["delta"] for e in streamed if e["type"] == "TEXT_MESSAGE_CONTENT") == text


def test_bad_settings_stop_the_process_at_startup(settings: Any, monkeypatch: Any) -> None:
    for name, bad in (
        ("AGENT_DELTA_COMPACT_AFTER_S", -1),
        ("AGENT_DELTA_COMPACT_AFTER_S", "300"),
        ("AGENT_DELTA_COMPACT_AFTER_S", float("inf")),
        ("AGENT_DELTA_COMPACT_BATCH", 0),
        ("AGENT_DELTA_COMPACT_BATCH", compaction.MAX_BATCH + 1),
        ("AGENT_DELTA_COMPACT_BATCH", 2.5),
    ):
        good = getattr(settings, name)
        setattr(settings, name, bad)
        with pytest.raises(ImproperlyConfigured, match=name):
            apps.get_app_config("chat").ready()
        with pytest.raises(ImproperlyConfigured, match=name):
            compaction.compact_finished_runs()
        setattr(settings, name, good)
    apps.get_app_config("chat").ready()
    # The environment's values are read as numbers, or the settings module says which one is not.
    monkeypatch.setenv("AGENT_DELTA_COMPACT_AFTER_S", "five minutes")
    with pytest.raises(ImproperlyConfigured, match="AGENT_DELTA_COMPACT_AFTER_S='five minutes' is not a number"):
        env_float("AGENT_DELTA_COMPACT_AFTER_S", 300.0)
    monkeypatch.setenv("AGENT_DELTA_COMPACT_AFTER_S", "120")
    assert env_float("AGENT_DELTA_COMPACT_AFTER_S", 300.0) == 120.0
    monkeypatch.setenv("AGENT_DELTA_COMPACT_BATCH", "1e3")
    with pytest.raises(ImproperlyConfigured, match="AGENT_DELTA_COMPACT_BATCH='1e3' is not a whole number"):
        env_int("AGENT_DELTA_COMPACT_BATCH", 1000)


def test_the_command_runs_a_whole_pass_and_checks_its_arguments(make_user: Any, capsys: Any) -> None:
    owner = make_user()
    conv = factories.conversation_sync(owner, agent_mode="always")
    run_id, _ = ask(conv, owner, 18)

    call_command("compact_agent_deltas")  # ended just now: within the grace period
    assert "0 events" in capsys.readouterr().out
    call_command("compact_agent_deltas", "--older-than", "0", "--batch", "4")
    assert "1 runs, 6 events, 2 batches" in capsys.readouterr().out
    assert deltas(run_id) == 0
    for bad in (["--older-than", "-5"], ["--older-than", "soon"], ["--older-than", "nan"], ["--batch", "0"]):
        with pytest.raises(CommandError):
            call_command("compact_agent_deltas", *bad)


def test_the_worker_hook_runs_a_pass_at_most_once_a_minute(make_user: Any, settings: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(compaction, "_next_pass_at", 0.0)
    settings.AGENT_DELTA_COMPACT_AFTER_S = 0
    owner = make_user()
    conv = factories.conversation_sync(owner, agent_mode="always")
    first, _ = ask(conv, owner, 9)
    assert compaction.compact_when_due().events == 3
    second, _ = ask(conv, owner, 9)
    assert compaction.compact_when_due().events == 0  # not due again within the minute
    assert deltas(second) == 3
    monkeypatch.setattr(compaction, "_next_pass_at", 0.0)
    assert compaction.compact_when_due().events == 3
    assert deltas(first) == deltas(second) == 0


async def test_the_agent_workers_sweep_compacts(make_user: Any, settings: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(compaction, "_next_pass_at", 0.0)
    settings.MONITORING = {"sweep_interval_s": 0.05}
    settings.AGENT_DELTA_COMPACT_AFTER_S = 0
    owner = await database_sync_to_async(make_user)()
    conv = await factories.conversation(owner, agent_mode="always")
    run_id, _ = await database_sync_to_async(ask)(conv, owner, 12)
    loop = asyncio.create_task(monitoring_loop())
    try:
        await eventually(
            lambda: database_sync_to_async(lambda: deltas(run_id) == 0)(), what="the worker's sweep to compact the run"
        )
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
