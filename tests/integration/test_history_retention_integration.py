"""History retention enforced (chat/services/retention.py, docs/operations.md "Retention") against the real
PostgreSQL and Redis: what a conversation's readers may no longer see is deleted (or archived, then deleted) —
events below the head, messages with their feedback, ended runs — in batches, idempotently, by the readers'
longest retention; and a client that resumes from before the purge, or pages history, is answered correctly."""

from __future__ import annotations

import copy
import gzip
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.utils import timezone
from rest_framework.test import APIClient

from agents.models import AgentRun, RunStatus
from chat.models import Conversation, Event, Message, MessageFeedback
from chat.services import retention
from chat.services.conversations import workspace_create, workspace_member_add
from tests.support import factories
from tests.support.faults import lose_hot_buffer
from tests.support.ws import Client, access_token

pytestmark = [pytest.mark.django_db(transaction=True)]

DAY = timedelta(days=1)


def backdate(conv: str, *, up_to_seq: int, days: int) -> None:
    """Make the conversation's history up to `up_to_seq` (events, their messages) `days` old."""
    then = timezone.now() - days * DAY
    Event.objects.filter(conversation_id=conv, seq__lte=up_to_seq).update(created_at=then)
    Message.objects.filter(conversation_id=conv, seq__lte=up_to_seq).update(created_at=then)


def chat(owner: Any, *, messages: int, members: tuple[tuple[Any, str], ...] = (), workspace_id: Any = None) -> str:
    conv = factories.conversation_sync(owner, agent="", members=members, workspace_id=workspace_id)
    for i in range(messages):
        factories.message_sync(conv, owner, f"m{i}")
    return conv


def seqs(conv: str) -> list[int]:
    return list(Event.objects.filter(conversation_id=conv).order_by("seq").values_list("seq", flat=True))


def run_ended(conv: str, days: int) -> AgentRun:
    return AgentRun.objects.create(
        conversation_id=conv, agent="assistant", status=RunStatus.COMPLETED, finished_at=timezone.now() - days * DAY
    )


def test_a_free_conversation_loses_what_is_older_than_30_days_and_keeps_the_rest(make_user: Any) -> None:
    owner, member = make_user(), make_user()
    conv = chat(owner, messages=6, members=((member, "member"),))
    head = Conversation.objects.get(id=conv).last_seq
    old_upto = head - 3  # all but the three newest events are 31 days old
    backdate(conv, up_to_seq=old_upto, days=31)
    old_message = Message.objects.filter(conversation_id=conv, seq__lte=old_upto).first()
    assert old_message is not None
    MessageFeedback.objects.create(message=old_message, user=member, rating=1)
    old_run, new_run, live_run = run_ended(conv, 31), run_ended(conv, 29), run_ended(conv, 31)
    AgentRun.objects.filter(id=live_run.id).update(status=RunStatus.RUNNING, finished_at=None)
    kept_before = [s for s in seqs(conv) if s > old_upto]

    purged, resume = retention.purge_expired_history()

    assert resume is None
    assert seqs(conv) == kept_before
    assert not Message.objects.filter(conversation_id=conv, created_at__lt=timezone.now() - 30 * DAY).exists()
    assert Message.objects.filter(conversation_id=conv).count() == 3
    assert not MessageFeedback.objects.filter(message_id=old_message.id).exists()
    assert set(AgentRun.objects.filter(conversation_id=conv).values_list("id", flat=True)) == {new_run.id, live_run.id}
    assert old_run.id not in AgentRun.objects.values_list("id", flat=True)
    assert (purged.events, purged.messages, purged.feedback, purged.runs) == (old_upto, 3, 1, 1)
    assert Conversation.objects.get(id=conv).last_seq == head  # the head's seq is untouched

    again, _ = retention.purge_expired_history()  # idempotent: nothing more is due
    assert again == retention.Purged()


def test_the_newest_event_stays_however_old_it_is(make_user: Any) -> None:
    owner = make_user()
    conv = chat(owner, messages=4)
    head = Conversation.objects.get(id=conv).last_seq
    backdate(conv, up_to_seq=head, days=400)

    retention.purge_expired_history()

    assert seqs(conv) == [head]
    assert list(Message.objects.filter(conversation_id=conv).values_list("seq", flat=True)) == [head]


def test_the_longest_retention_among_its_readers_decides(make_user: Any) -> None:
    # A free owner with a pro member: the pro member is shown a year, so a year is kept.
    free_owner, pro = make_user(), make_user("pro")
    shared = chat(free_owner, messages=3, members=((pro, "member"),))
    backdate(shared, up_to_seq=2, days=200)
    # A conversation of an enterprise-owned workspace, with only a free member in it: kept forever.
    boss, free_member = make_user("enterprise"), make_user()
    workspace = workspace_create(owner=boss, name="corp")
    workspace_member_add(workspace=workspace, actor=boss, username=free_member.username, role="member")
    corp = chat(free_member, messages=3, workspace_id=workspace.id)
    backdate(corp, up_to_seq=2, days=2000)
    # The pro member's own conversation: a year, not forever.
    pro_only = chat(pro, messages=3)
    backdate(pro_only, up_to_seq=2, days=366)
    before = {c: seqs(c) for c in (shared, corp, pro_only)}

    retention.purge_expired_history()

    assert seqs(shared) == before[shared]
    assert seqs(corp) == before[corp]
    assert seqs(pro_only) == before[pro_only][2:]


def test_batches_and_a_pass_cut_short_continues_where_it_stopped(make_user: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(retention, "BATCH", 2)
    monkeypatch.setattr(retention, "SCAN", 1)
    owner = make_user()
    convs = [chat(owner, messages=5) for _ in range(3)]
    for conv in convs:
        backdate(conv, up_to_seq=4, days=31)

    purged, resume = retention.purge_expired_history(budget_s=0)  # stops after the first scan
    assert resume is not None
    assert purged.conversations <= 1
    while resume is not None:
        more, resume = retention.purge_expired_history(after=resume, budget_s=0)
        purged.add(more)

    assert (purged.conversations, purged.events, purged.messages) == (3, 12, 12)
    for conv in convs:
        assert seqs(conv) == [5]


def test_archive_mode_writes_the_expired_events_before_deleting_them(
    make_user: Any, settings: Any, tmp_path: Path
) -> None:
    settings.HISTORY_RETENTION_MODE = "archive"
    settings.HISTORY_ARCHIVE_DIR = str(tmp_path)
    owner = make_user()
    conv = chat(owner, messages=5)
    backdate(conv, up_to_seq=3, days=31)
    expected = [(e.seq, e.type, e.data) for e in Event.objects.filter(conversation_id=conv, seq__lte=3).order_by("seq")]

    purged, _ = retention.purge_expired_history()

    files = sorted((tmp_path / conv).glob("*.jsonl.gz"))
    assert [f.name for f in files] == [f"{1:012d}-{3:012d}.jsonl.gz"]
    frames = [json.loads(line) for line in gzip.decompress(files[0].read_bytes()).splitlines()]
    assert [(f["seq"], f["type"], f["data"]) for f in frames] == expected
    assert {f["conversation"] for f in frames} == {conv}
    assert purged.archive_files == 1
    assert purged.events == 3
    assert seqs(conv)[0] == 4
    assert not list(tmp_path.rglob("*.partial"))


def test_archive_mode_without_a_directory_refuses_to_start(settings: Any) -> None:
    settings.HISTORY_RETENTION_MODE = "archive"
    settings.HISTORY_ARCHIVE_DIR = ""
    with pytest.raises(ImproperlyConfigured, match="HISTORY_ARCHIVE_DIR"):
        retention.purge_expired_history()
    settings.HISTORY_RETENTION_MODE = "shred"
    with pytest.raises(ImproperlyConfigured, match="delete, archive"):
        retention.purge_expired_history()


def test_the_command_runs_a_whole_pass(make_user: Any, capsys: Any) -> None:
    owner = make_user()
    conv = chat(owner, messages=4)
    backdate(conv, up_to_seq=2, days=31)
    call_command("purge_expired_history")
    assert "2 events" in capsys.readouterr().out
    assert seqs(conv)[0] == 3


def test_the_worker_hook_runs_a_pass_at_most_once_an_hour(make_user: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(retention, "_next_pass_at", 0.0)
    monkeypatch.setattr(retention, "_resume_after", None)
    owner = make_user()
    conv = chat(owner, messages=4)
    backdate(conv, up_to_seq=2, days=31)
    assert retention.purge_expired_when_due().events == 2
    backdate(conv, up_to_seq=3, days=31)
    assert retention.purge_expired_when_due().events == 0  # not due again within the hour
    monkeypatch.setattr(retention, "_next_pass_at", 0.0)
    assert retention.purge_expired_when_due().events == 1


async def test_a_client_resuming_from_before_the_purge_and_paging_history_is_answered(
    make_user: Any, settings: Any
) -> None:
    owner = await database_sync_to_async(make_user)()
    conv = await database_sync_to_async(chat)(owner, messages=10)
    await database_sync_to_async(backdate)(conv, up_to_seq=6, days=31)
    await database_sync_to_async(retention.purge_expired_history)()
    assert await database_sync_to_async(seqs)(conv) == [7, 8, 9, 10]
    # The hot buffer holds the last minutes only; in production an expired event is never in it.
    await lose_hot_buffer(conv)

    client, _, _ = await Client.connect(owner)
    try:
        await client.recv()
        reply = await client.command("subscribe", conversation=conv, since_seq=2)
        assert reply["ok"] is True
        assert reply["recovered"] is True
        assert reply["head_seq"] == 10
        await client.seen_or_until(lambda f: f.get("conversation") == conv and f.get("seq") == 10)
        assert [e["seq"] for e in client.events(conv)] == [7, 8, 9, 10]  # what is left, in order, once
        page = await client.command("history", conversation=conv, limit=3)
        assert [e["seq"] for e in page["events"]] == [8, 9, 10]
        assert page["has_more"] is True
        older = await client.command("history", conversation=conv, before_seq=8, limit=3)
        assert [e["seq"] for e in older["events"]] == [7]
        assert older["has_more"] is False
        by_messages = await client.command("history", conversation=conv, limit=30, unit="messages")
        assert [e["seq"] for e in by_messages["events"]] == [7, 8, 9, 10]
    finally:
        await client.close()

    # A gap wider than the replay limit: recovered false, the stream starts at the head.
    tiers = copy.deepcopy(settings.CHAT_TIERS)
    tiers["free"]["replay_limit"] = 3
    settings.CHAT_TIERS = tiers
    late, _, _ = await Client.connect(owner)
    try:
        await late.recv()
        reply = await late.command("subscribe", conversation=conv, since_seq=2)
        assert reply["recovered"] is False
    finally:
        await late.close()

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {await database_sync_to_async(access_token)(owner)}")
    response = await database_sync_to_async(api.get)(f"/api/conversations/{conv}/events/?limit=50")
    assert [e["seq"] for e in response.json()["events"]] == [7, 8, 9, 10]
