"""Acting on a message after it was sent, over the socket and REST (docs/protocol.md §3, §4, §7):
edit and delete (with replay and history after a reconnect), feedback on answers, regenerate, and
who may stop a run. Each checks the membership first: another conversation's member gets
`not_found` for these ids, and the events never reach a non-member."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from channels.db import database_sync_to_async
from rest_framework.test import APIClient

from agents.models import AgentRun
from agents.services import run_claim_next, run_complete
from chat.models import Event, Message, MessageFeedback
from chat.services.conversations import conversation_member_add
from tests.support import factories
from tests.support.ws import connected, subscribed_client

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _no_runner(settings: Any) -> None:
    settings.AGENT_RUNNER = "worker"  # runs stay queued until the test drives them


def people(make_user: Any) -> tuple[Any, Any, Any, Any, str, str]:
    """alice owns a conversation with bob (member) and vic (viewer); mallory has her own."""
    alice, bob, vic, mallory = make_user(), make_user(), make_user(), make_user()
    conv = factories.conversation_sync(alice, members=((bob, "member"), (vic, "viewer")), agent_mode="mention")
    own = factories.conversation_sync(mallory, agent="")
    return alice, bob, vic, mallory, conv, own


def answered(conv: str, author: Any, question: str = "@assistant what year is it?") -> tuple[str, str, str]:
    """A question and the agent's answer: (question's message id, run id, answer's message id)."""
    sent = factories.message_sync(conv, author, question)
    claimed = run_claim_next(worker_id="test")
    assert claimed is not None
    assert claimed.run_id == sent.run_id
    event = run_complete(run_id=claimed.run_id, conversation_id=conv, text="It is 2026.", usage={})
    return sent.message_id, claimed.run_id, event.data["message_id"]


async def test_edit_reaches_members_and_survives_a_reconnect(make_user: Any) -> None:
    alice, bob, vic, mallory, conv, own = await database_sync_to_async(people)(make_user)
    sent = await factories.message(conv, bob, "helo")
    async with subscribed_client(alice, conv) as watcher, subscribed_client(mallory, own) as outsider:
        editor = await connected(bob)
        reply = await editor.command("edit", conversation=conv, message_id=sent.message_id, text="  hello  ")
        assert reply["ok"] is True
        assert reply["message_id"] == sent.message_id
        edited = await watcher.until(lambda f: f.get("type") == "message_edited")
        assert edited["seq"] == reply["seq"]
        assert edited["data"] == {
            "message_id": sent.message_id,
            "text": "hello",
            "edited_at": reply["edited_at"],
            "by": {"id": bob.id, "username": bob.username},
        }
        # Nobody else may: not alice (an owner moderates by deleting), not the viewer.
        others = await connected(alice)
        refused = await others.command("edit", conversation=conv, message_id=sent.message_id, text="x")
        assert refused["error"]["code"] == "forbidden"
        viewer = await connected(vic)
        refused = await viewer.command("edit", conversation=conv, message_id=sent.message_id, text="x")
        assert refused["error"]["code"] == "forbidden"
        blank = await editor.command("edit", conversation=conv, message_id=sent.message_id, text="   ")
        assert blank["error"]["code"] == "bad_request"
        assert not [f for f in outsider.frames if f.get("conversation") == conv]
    row = await database_sync_to_async(Message.objects.get)(id=sent.message_id)
    assert (row.text, row.edited_at is not None) == ("hello", True)
    # A reconnect replays the edit, and history serves it.
    async with subscribed_client(alice, conv) as again:
        assert (await again.command("subscribe", conversation=conv, since_seq=0))["ok"] is True
        replayed = await again.until(lambda f: f.get("type") == "message_edited")
        assert replayed["data"]["text"] == "hello"
        history = await again.command("history", conversation=conv, unit="messages")
        assert [e["type"] for e in history["events"]][-1] == "message_edited"


async def test_delete_by_the_author_or_an_owner_scrubs_the_text_everywhere(make_user: Any) -> None:
    alice, bob, vic, mallory, conv, own = await database_sync_to_async(people)(make_user)
    secret = f"my password is {uuid.uuid4().hex}"
    oops = await factories.message(conv, bob, secret)
    mine = await factories.message(conv, alice, "owner's own")
    async with subscribed_client(bob, conv) as watcher:
        viewer = await connected(vic)
        refused = await viewer.command("delete", conversation=conv, message_id=oops.message_id)
        assert refused["error"]["code"] == "forbidden"
        author = await connected(bob)
        refused = await author.command("delete", conversation=conv, message_id=mine.message_id)
        assert refused["error"]["code"] == "forbidden"  # a member deletes only their own
        owner = await connected(alice)
        reply = await owner.command("delete", conversation=conv, message_id=oops.message_id)  # moderation
        assert reply["ok"] is True
        deleted = await watcher.until(lambda f: f.get("type") == "message_deleted")
        assert deleted["data"]["message_id"] == oops.message_id
        assert deleted["data"]["by"] == {"id": alice.id, "username": alice.username}
        again = await owner.command("delete", conversation=conv, message_id=oops.message_id)
        assert again["error"]["code"] == "conflict"
        edit = await author.command("edit", conversation=conv, message_id=oops.message_id, text="x")
        assert edit["error"]["code"] == "conflict"
    row = await database_sync_to_async(Message.objects.get)(id=oops.message_id)
    assert (row.text, row.deleted_at is not None) == ("", True)
    stored = await database_sync_to_async(Event.objects.get)(conversation_id=conv, seq=oops.seq)
    assert (stored.data["text"], stored.data["deleted"]) == ("", True)
    # Replay after a reconnect (hot buffer or log), history and REST: the text is gone.
    async with subscribed_client(bob, conv) as back:
        assert (await back.command("subscribe", conversation=conv, since_seq=0))["ok"] is True
        await back.until(lambda f: f.get("type") == "message_deleted")
        replayed = next(f for f in back.frames if f.get("seq") == oops.seq)
        assert (replayed["data"]["text"], replayed["data"]["deleted"]) == ("", True)
        history = await back.command("history", conversation=conv)
        assert secret not in str(history)
        assert secret not in str(back.frames)
    api = APIClient()
    await database_sync_to_async(api.force_authenticate)(bob)
    body = await database_sync_to_async(api.get)(f"/api/conversations/{conv}/events/")
    assert body.status_code == 200
    assert secret not in body.content.decode()


async def test_ids_of_another_conversation_are_not_found(make_user: Any) -> None:
    alice, bob, vic, mallory, conv, own = await database_sync_to_async(people)(make_user)
    question, run_id, answer_id = await database_sync_to_async(answered)(conv, bob)
    theirs = await factories.message(conv, bob, "not yours")
    mine = await factories.message(own, mallory, "mine")
    attacker = await connected(mallory)
    attempts = [
        ("edit", {"message_id": theirs.message_id, "text": "pwned"}),
        ("delete", {"message_id": theirs.message_id}),
        ("feedback", {"message_id": answer_id, "rating": "down"}),
        ("regenerate", {"run_id": run_id}),
    ]
    async with subscribed_client(alice, conv) as victim:
        for command, fields in attempts:
            for where in (conv, own):  # their conversation (not a member), or hers with their id
                answer = await attacker.command(command, conversation=where, **fields)
                missing_id = {k: str(uuid.uuid4()) if k.endswith("_id") else v for k, v in fields.items()}
                missing = await attacker.command(command, conversation=where, **missing_id)
                assert answer["error"] == missing["error"], (command, where)
                assert answer["error"]["code"] == "not_found"
        # Her own message through their conversation id: not found either.
        crossed = await attacker.command("delete", conversation=conv, message_id=mine.message_id)
        assert crossed["error"]["code"] == "not_found"
        assert (await victim.command("ping"))["ok"] is True
        assert not [f for f in victim.frames if f.get("type") in ("message_edited", "message_deleted")]
    row = await database_sync_to_async(Message.objects.get)(id=theirs.message_id)
    assert (row.text, row.deleted_at) == ("not yours", None)
    assert not await database_sync_to_async(MessageFeedback.objects.exists)()
    assert await database_sync_to_async(AgentRun.objects.filter(conversation_id=conv).count)() == 1
    api = APIClient()
    await database_sync_to_async(api.force_authenticate)(mallory)
    patch = await database_sync_to_async(api.patch)(
        f"/api/conversations/{own}/messages/{theirs.message_id}/", {"text": "pwned"}, format="json"
    )
    assert patch.status_code == 404
    gone = await database_sync_to_async(api.delete)(f"/api/conversations/{conv}/messages/{theirs.message_id}/")
    assert gone.status_code == 404


async def test_feedback_is_private_and_viewers_may_rate(make_user: Any) -> None:
    alice, bob, vic, mallory, conv, own = await database_sync_to_async(people)(make_user)
    question, run_id, answer_id = await database_sync_to_async(answered)(conv, bob)
    async with subscribed_client(alice, conv) as watcher:
        viewer = await connected(vic)
        rated = await viewer.command("feedback", conversation=conv, message_id=answer_id, rating="down", comment="2025")
        assert (rated["message_id"], rated["rating"]) == (answer_id, "down")
        member = await connected(bob)
        up = await member.command("feedback", conversation=conv, message_id=answer_id.upper(), rating="up")
        assert (up["message_id"], up["rating"]) == (answer_id, "up")
        on_a_question = await member.command("feedback", conversation=conv, message_id=question, rating="up")
        assert on_a_question["error"]["code"] == "bad_request"
        long = await member.command(
            "feedback", conversation=conv, message_id=answer_id, rating="up", comment="x" * 2001
        )
        assert long["error"]["code"] == "bad_request"
        assert (await watcher.command("ping"))["ok"] is True
        assert not [f for f in watcher.frames if f.get("type") not in ("welcome", "reply", "presence")]
    rows = await database_sync_to_async(
        lambda: sorted(MessageFeedback.objects.values_list("user_id", "rating", "comment"))
    )()
    assert rows == sorted([(vic.id, -1, "2025"), (bob.id, 1, "")])
    api = APIClient()
    await database_sync_to_async(api.force_authenticate)(vic)
    mine = await database_sync_to_async(api.get)(f"/api/conversations/{conv}/feedback/")
    assert mine.json() == {"ratings": {answer_id: "down"}}
    cleared = await database_sync_to_async(api.put)(
        f"/api/conversations/{conv}/messages/{answer_id}/feedback/", {"rating": None}, format="json"
    )
    assert cleared.json() == {"message_id": answer_id, "rating": None}
    assert (await database_sync_to_async(api.get)(f"/api/conversations/{conv}/feedback/")).json() == {"ratings": {}}


async def test_regenerate_answers_the_same_question_in_a_new_run(make_user: Any) -> None:
    alice, bob, vic, mallory, conv, own = await database_sync_to_async(people)(make_user)
    question, old_run, answer_id = await database_sync_to_async(answered)(conv, bob)
    async with subscribed_client(alice, conv) as watcher:
        viewer = await connected(vic)
        assert (await viewer.command("regenerate", conversation=conv, run_id=old_run))["error"]["code"] == "forbidden"
        member = await connected(alice)
        reply = await member.command("regenerate", conversation=conv, run_id=old_run)
        assert reply["ok"] is True
        new_run = reply["run_id"]
        assert new_run != old_run
        busy = await member.command("regenerate", conversation=conv, run_id=new_run)
        assert busy["error"]["code"] == "conflict"  # still queued
        claimed = await database_sync_to_async(run_claim_next)(worker_id="test")
        assert claimed is not None
        assert claimed.run_id == new_run
        started = await watcher.until(lambda f: f.get("type") == "agent_started" and f["data"]["run_id"] == new_run)
        assert started["data"]["trigger_message_id"] == question
        assert started["data"]["regenerates"] == old_run
    run = await database_sync_to_async(AgentRun.objects.get)(id=new_run)
    assert (run.requested_by_id, str(run.trigger_message_id)) == (alice.id, question)
    # The old answer stays.
    assert await database_sync_to_async(Message.objects.filter(id=answer_id, deleted_at=None).exists)()


async def test_regenerate_spends_agent_run_quota(make_user: Any, settings: Any) -> None:
    tiers = settings.CHAT_TIERS
    settings.CHAT_TIERS = {
        **tiers,
        "free": {**tiers["free"], "rates": {**tiers["free"]["rates"], "agent_runs": [1, 3600]}},
    }
    alice, bob, vic, mallory, conv, own = await database_sync_to_async(people)(make_user)
    _, old_run, _ = await database_sync_to_async(answered)(conv, bob)
    client = await connected(alice)
    assert (await client.command("regenerate", conversation=conv, run_id=old_run))["ok"] is True
    refused = await client.command("regenerate", conversation=conv, run_id=old_run)
    assert refused["error"]["code"] == "rate_limited"
    assert refused["error"]["limit"] == "agent_runs"
    assert refused["error"]["message"].startswith("agent-run quota reached: 1 runs per hour on the free tier; retry in")
    assert await database_sync_to_async(AgentRun.objects.filter(conversation_id=conv).count)() == 2


async def test_only_the_runs_starter_or_an_owner_may_stop_it(make_user: Any) -> None:
    alice, bob, vic, mallory, conv, own = await database_sync_to_async(people)(make_user)
    carol = await database_sync_to_async(make_user)()
    await database_sync_to_async(conversation_member_add)(
        conversation_id=conv, actor_id=alice.id, username=carol.username, role="member"
    )
    bobs = await factories.message(conv, bob, "@assistant one")
    assert bobs.run_id is not None
    other = await connected(carol)
    refused = await other.command("cancel", run_id=bobs.run_id)
    assert refused["error"]["code"] == "forbidden"
    assert await database_sync_to_async(lambda: AgentRun.objects.get(id=bobs.run_id).status)() == "queued"
    starter = await connected(bob)
    assert (await starter.command("cancel", run_id=bobs.run_id))["status"] == "cancelled"
    carols = await factories.message(conv, carol, "@assistant two")
    assert carols.run_id is not None
    owner = await connected(alice)
    assert (await owner.command("cancel", run_id=carols.run_id))["status"] == "cancelled"
    cancelled = AgentRun.objects.filter(conversation_id=conv, status="cancelled")
    assert await database_sync_to_async(cancelled.count)() == 2
