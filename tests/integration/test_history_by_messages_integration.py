"""History by messages (docs/protocol.md §3): `history` with `unit: "messages"` and the REST page with
`unit=messages` count items (a person's message, a whole run), never cut a question from its answer,
skip the deltas of ended runs, and page back without skipping or repeating an event."""

from __future__ import annotations

from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from agents.models import AgentRun, RunStatus
from agents.services import run_claim_next, run_complete, run_emit
from chat.history import messages_page
from chat.models import Event
from tests.support import factories
from tests.support.ws import connected

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _no_runner(settings: Any) -> None:
    settings.AGENT_RUNNER = "worker"  # runs stay queued until the test drives them


def answer(run_id: str, conv: str, words: int, *, chunk: int = 5, end: bool = True) -> str:
    """Drive a claimed run like a runner: `words` words streamed `chunk` words per agent_delta."""
    text = " ".join(f"w{i}" for i in range(words))
    parts = text.split(" ")
    for i in range(0, len(parts), chunk):
        run_emit(run_id=run_id, conversation_id=conv, type="agent_delta", data={"text": " ".join(parts[i : i + chunk])})
    if end:
        run_complete(run_id=run_id, conversation_id=conv, text=text, usage={})
    return text


def long_answer_conversation(owner: Any, talker: Any) -> tuple[str, str, int]:
    """A question answered in 2,000 words over 400 deltas, then 60 messages among people (the
    agent answers only when mentioned). Returns (conversation, run id, question's seq)."""
    conv = factories.conversation_sync(owner, members=((talker, "member"),), agent_mode="mention")
    question = factories.message_sync(conv, owner, "@assistant tell me everything")
    claimed = run_claim_next(worker_id="test")
    assert claimed is not None
    assert claimed.run_id == question.run_id
    answer(claimed.run_id, conv, 2000)
    for i in range(60):
        factories.message_sync(conv, talker if i % 2 else owner, f"message {i}")
    return conv, claimed.run_id, question.seq


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def test_the_first_page_of_30_items_is_30_messages_after_a_long_answer(make_user: Any) -> None:
    owner, talker = make_user(), make_user()
    conv, run_id, question_seq = long_answer_conversation(owner, talker)
    assert Event.objects.filter(conversation_id=conv, type="agent_delta").count() == 400

    with CaptureQueriesContext(connection) as queries:
        page = messages_page(conversation_id=conv, before_seq=None, limit=30)
    assert len(queries) <= 6, [q["sql"] for q in queries]
    frames = [e.frame() for e in page.events]
    assert kinds(frames) == ["message"] * 30
    assert [f["data"]["text"] for f in frames] == [f"message {i}" for i in range(30, 60)]
    assert page.has_more is True
    assert page.next_before_seq == frames[0]["seq"]

    # The next page: the other 30 messages, then the answer whole (no deltas) with its question.
    second = messages_page(conversation_id=conv, before_seq=page.next_before_seq, limit=30)
    assert kinds([e.frame() for e in second.events]) == ["message"] * 30
    third = messages_page(conversation_id=conv, before_seq=second.next_before_seq, limit=30)
    got = [e.frame() for e in third.events]
    assert kinds(got) == ["message", "agent_started", "agent_completed"]
    assert got[0]["seq"] == question_seq
    assert got[2]["data"]["text"].count(" ") == 1999
    assert third.has_more is False
    assert third.next_before_seq is None
    # Paged back to the start: every event but the ended run's deltas, each once, in order.
    seen = [e.seq for p in (third, second, page) for e in p.events]
    expected = list(
        Event.objects.filter(conversation_id=conv)
        .exclude(type="agent_delta")
        .order_by("seq")
        .values_list("seq", flat=True)
    )
    assert seen == expected


def test_a_run_is_one_item_and_its_question_is_never_cut_off(make_user: Any) -> None:
    owner, talker = make_user(), make_user()
    conv = factories.conversation_sync(owner, members=((talker, "member"),), agent_mode="mention")
    asked = factories.message_sync(conv, owner, "@assistant first question")
    claimed = run_claim_next(worker_id="test")
    assert claimed is not None
    # While the run streams, the other member talks: the run's events and the messages interleave.
    run_emit(run_id=claimed.run_id, conversation_id=conv, type="agent_delta", data={"text": "Once "})
    factories.message_sync(conv, talker, "meanwhile")
    answer(claimed.run_id, conv, 50)
    factories.message_sync(conv, talker, "after")

    # Two items from the top ("after", "meanwhile"): "meanwhile" sits inside the run, so the page
    # widens to the run's start and its question.
    page = messages_page(conversation_id=conv, before_seq=None, limit=2)
    got = [e.frame() for e in page.events]
    assert got[0]["seq"] == asked.seq
    assert kinds(got) == ["message", "agent_started", "message", "agent_completed", "message"]
    assert page.has_more is False


def test_a_live_run_keeps_its_deltas_and_a_queued_questions_run_is_whole(make_user: Any) -> None:
    owner = make_user()
    conv = factories.conversation_sync(owner, agent_mode="always")
    factories.message_sync(conv, owner, "one")
    first = run_claim_next(worker_id="test")
    assert first is not None
    answer(first.run_id, conv, 20)
    factories.message_sync(conv, owner, "two")
    second = run_claim_next(worker_id="test")
    assert second is not None
    answer(second.run_id, conv, 20, end=False)  # still streaming

    page = messages_page(conversation_id=conv, before_seq=None, limit=1)
    got = [e.frame() for e in page.events]
    assert kinds(got) == ["message", "agent_started"] + ["agent_delta"] * 4
    assert AgentRun.objects.get(id=second.run_id).status == RunStatus.RUNNING
    older = messages_page(conversation_id=conv, before_seq=page.next_before_seq, limit=10)
    assert kinds([e.frame() for e in older.events]) == ["message", "agent_started", "agent_completed"]


def test_retention_applies_and_a_bad_unit_is_refused(make_user: Any) -> None:
    owner = make_user()
    conv = factories.conversation_sync(owner, agent="")
    for i in range(3):
        factories.message_sync(conv, owner, f"m{i}")
    api = APIClient()
    api.force_authenticate(owner)
    body = api.get(f"/api/conversations/{conv}/events/", {"unit": "messages", "limit": "2"}).json()
    assert [e["data"]["text"] for e in body["events"]] == ["m1", "m2"]
    assert (body["has_more"], body["next_before_seq"]) == (True, body["events"][0]["seq"])
    rest = api.get(
        f"/api/conversations/{conv}/events/", {"unit": "messages", "before_seq": str(body["next_before_seq"])}
    )
    assert [e["data"]["text"] for e in rest.json()["events"]] == ["m0"]
    assert "next_before_seq" not in rest.json()
    refused = api.get(f"/api/conversations/{conv}/events/", {"unit": "pages"})
    assert refused.status_code == 400
    # The classic page is unchanged: events, 50 by default.
    classic = api.get(f"/api/conversations/{conv}/events/").json()
    assert [e["seq"] for e in classic["events"]] == [1, 2, 3]
    assert classic["has_more"] is False


async def test_the_socket_history_pages_by_messages(make_user: Any) -> None:
    owner = await database_sync_to_async(make_user)()
    talker = await database_sync_to_async(make_user)()
    conv, _, _ = await database_sync_to_async(long_answer_conversation)(owner, talker)
    client = await connected(talker)
    reply = await client.command("history", conversation=conv, unit="messages")
    assert reply["ok"] is True
    assert kinds(reply["events"]) == ["message"] * 30  # the default: 30 items
    assert reply["has_more"] is True
    assert reply["next_before_seq"] == reply["events"][0]["seq"]
    by_events = await client.command("history", conversation=conv, limit=30)
    assert "agent_delta" not in kinds(by_events["events"])  # the 60 messages are newer than the answer
    assert by_events["next_before_seq"] == by_events["events"][0]["seq"]
    bad = await client.command("history", conversation=conv, unit="lines")
    assert bad["error"]["code"] == "bad_request"
    assert bad["error"]["message"].startswith("unit:")
    await client.close()
