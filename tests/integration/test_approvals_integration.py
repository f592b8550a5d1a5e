"""Approvals on the socket (docs/protocol.md §11), against the real PostgreSQL and Redis: a run that
reaches a tool needing approval parks (no task, no worker slot), every member sees the request, the
approver decides (or it expires, or the run is cancelled), and the run goes on from the database,
with §4's order and exactly one terminal event."""

from __future__ import annotations

import json
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.test import Client as HttpClient

from agents.approvals import approval_decide, run_park
from agents.models import AgentRun, Approval, ApprovalStatus, RunStatus, ToolCall
from agents.runner import get_supervisor, supervisors
from agents.services import run_claim_next
from chat.models import ConversationMember
from chat.services.conversations import workspace_create, workspace_member_add
from tests.support import factories
from tests.support.fake_llm import FakeLLM, ToolCallSpec, answer, tool_calls
from tests.support.waiting import consistently, eventually
from tests.support.ws import Client, connected

pytestmark = [pytest.mark.django_db(transaction=True)]

TERMINAL = ("agent_completed", "agent_failed", "agent_cancelled")


def _team(make_user: Any) -> dict[str, Any]:
    """A workspace with an owner, a member, a viewer and carol (in the workspace, not yet in the
    conversation), and a conversation with the agent that has the first three."""
    owner, member, viewer, carol = (make_user() for _ in range(4))
    workspace = workspace_create(owner=owner, name="team")
    for user in (member, viewer, carol):
        workspace_member_add(workspace=workspace, actor=owner, username=user.username, role="member")
    conv = factories.conversation_sync(
        owner, members=((member, "member"), (viewer, "viewer")), workspace_id=workspace.id
    )
    return {"owner": owner, "member": member, "viewer": viewer, "carol": carol, "conv": conv}


async def team(make_user: Any) -> dict[str, Any]:
    return await database_sync_to_async(_team)(make_user)


async def subscribed(user: Any, conv: str) -> Client:
    client = await connected(user)
    assert (await client.command("subscribe", conversation=conv, since_seq=0))["ok"] is True
    return client


def run_events(client: Client, conv: str, run_id: str) -> list[dict[str, Any]]:
    return [e for e in client.events(conv) if e["data"].get("run_id") == run_id and e["type"] != "message"]


def assert_order(events: list[dict[str, Any]], terminal: str) -> None:
    """§4 and §11: agent_started first, one terminal event last, each tool_executing before its
    tool_completed, and each approval_requested before its approval_resolved and that call's tools."""
    types = [e["type"] for e in events]
    assert types[0] == "agent_started"
    assert [t for t in types if t in TERMINAL] == [terminal]
    assert types[-1] == terminal

    def index(kind: str, call_id: str) -> int | None:
        found = [i for i, e in enumerate(events) if e["type"] == kind and e["data"].get("call_id") == call_id]
        assert len(found) <= 1, f"{kind} of {call_id} twice"
        return found[0] if found else None

    for call_id in {e["data"]["call_id"] for e in events if "call_id" in e["data"]}:
        requested, resolved = index("approval_requested", call_id), index("approval_resolved", call_id)
        executing, completed = index("tool_executing", call_id), index("tool_completed", call_id)
        if requested is not None:
            assert resolved is None or requested < resolved
            if executing is not None:
                assert resolved is not None
                assert resolved < executing
        assert (executing is None) == (completed is None)
        if executing is not None:
            assert completed is not None
            assert executing < completed


def run_row(run_id: str) -> AgentRun:
    return AgentRun.objects.get(id=run_id)


def approval_row(run_id: str) -> Approval:
    return Approval.objects.select_related("decided_by").get(run_id=run_id)


async def ask_to_invite(client: Client, conv: str, who: str, key: str = "p") -> tuple[str, dict[str, Any]]:
    sent = await client.command("send", conversation=conv, client_msg_id=key, text=f"@assistant please invite @{who}")
    assert sent["ok"] is True, sent
    requested = await client.seen_or_until(
        lambda f: f.get("type") == "approval_requested" and f["data"]["run_id"] == sent["run_id"]
    )
    return sent["run_id"], requested


async def test_the_owner_approves_edited_arguments_and_the_run_goes_on_with_them(make_user: Any) -> None:
    t = await team(make_user)
    conv, carol = t["conv"], t["carol"]
    owner, member, viewer = [await subscribed(t[name], conv) for name in ("owner", "member", "viewer")]
    run_id, requested = await ask_to_invite(member, conv, carol.username)

    # Everyone sees the request; it waits for an owner, and nothing holds the run meanwhile.
    assert requested["data"] == {
        "run_id": run_id,
        "call_id": "call_1",
        "tool": "invite_member",
        "arguments": {"username": carol.username, "role": "member"},
        "reason": f"Add {carol.username} to this conversation as member.",
        "approver_role": "owner",
        "expires_at": requested["data"]["expires_at"],
    }
    for watcher in (owner, viewer):
        seen = await watcher.seen_or_until(lambda f: f.get("type") == "approval_requested")
        assert seen == requested
    # The owner, who may decide, is notified (urgent); the member who asked is not.
    told = await owner.seen_or_until(lambda f: f.get("type") == "notification")
    assert (told["data"]["kind"], told["data"]["priority"]) == ("approval_requested", "urgent")
    assert (told["data"]["seq"], told["data"]["actor"]["id"]) == (requested["seq"], t["member"].id)
    assert not [f for f in member.frames if f.get("type") == "notification"]
    assert (await database_sync_to_async(run_row)(run_id)).status == RunStatus.WAITING_APPROVAL
    await eventually(lambda: run_id not in get_supervisor().tasks, what="the parked run's task ended")
    assert not [e for e in run_events(member, conv, run_id) if e["type"].startswith("tool_")]
    resubscribed = await viewer.command("subscribe", conversation=conv)
    assert resubscribed["active_runs"][0]["status"] == "waiting_approval"
    assert resubscribed["active_runs"][0]["approval"] == requested["data"]

    # Below the approver role: forbidden, for a viewer and for a member alike; nothing changes.
    for below in (viewer, member):
        refused = await below.command("approve", run_id=run_id, call_id="call_1", decision="approve")
        assert refused["error"]["code"] == "forbidden", refused
    # Edited arguments that do not fit the tool's schema: bad_request naming the field.
    bad = await owner.command(
        "approve",
        run_id=run_id,
        call_id="call_1",
        decision="approve",
        arguments={"username": carol.username, "role": "admin"},
    )
    assert bad["error"] == {
        "code": "bad_request",
        "message": "arguments: role must be one of member, viewer",
    }
    assert (await database_sync_to_async(approval_row)(run_id)).status == ApprovalStatus.PENDING

    edited = {"username": carol.username, "role": "viewer"}
    reply = await owner.command("approve", run_id=run_id, call_id="call_1", decision="approve", arguments=edited)
    assert {k: reply[k] for k in ("ok", "run_id", "call_id", "decision")} == {
        "ok": True,
        "run_id": run_id,
        "call_id": "call_1",
        "decision": "approve",
    }
    done = await member.seen_or_until(lambda f: f.get("type") in TERMINAL and f["data"]["run_id"] == run_id)
    assert done["type"] == "agent_completed"
    assert done["data"]["text"] == f"Done: {carol.username} is now in this conversation as viewer."
    again = await owner.command("approve", run_id=run_id, call_id="call_1", decision="reject")
    assert again["error"]["code"] == "conflict"

    events = run_events(member, conv, run_id)
    assert_order(events, "agent_completed")
    resolved = next(e for e in events if e["type"] == "approval_resolved")
    assert resolved["data"] == {
        "run_id": run_id,
        "call_id": "call_1",
        "decision": "approved",
        "by": {"id": t["owner"].id, "username": t["owner"].username},
        "arguments": edited,
    }
    executing = next(e for e in events if e["type"] == "tool_executing")
    assert executing["data"]["arguments"] == edited  # what ran is what was approved
    completed = next(e for e in events if e["type"] == "tool_completed")
    assert (completed["data"]["ok"], completed["data"]["result"]) == (True, {"added": carol.username, "role": "viewer"})
    role = await database_sync_to_async(lambda: ConversationMember.objects.get(conversation_id=conv, user=carol).role)()
    assert role == "viewer"
    stored = await database_sync_to_async(approval_row)(run_id)
    assert (stored.status, stored.decided_by, stored.decided_by_username) == (
        ApprovalStatus.APPROVED,
        t["owner"],
        t["owner"].username,
    )
    assert (stored.arguments, stored.approved_arguments) == (requested["data"]["arguments"], edited)
    assert stored.decided_at is not None

    # The three transcripts end identical, seq for seq.
    for watcher in (owner, viewer):
        await watcher.seen_or_until(lambda f: f.get("seq") == done["seq"])
    assert owner.events(conv) == member.events(conv) == viewer.events(conv)
    seqs = [e["seq"] for e in member.events(conv)]
    assert seqs == list(range(1, len(seqs) + 1))


async def test_a_rejected_call_is_not_run_and_the_agent_says_so(make_user: Any) -> None:
    t = await team(make_user)
    conv = t["conv"]
    member, owner = await subscribed(t["member"], conv), await subscribed(t["owner"], conv)
    run_id, _ = await ask_to_invite(member, conv, t["carol"].username)
    with_arguments = await owner.command(
        "approve", run_id=run_id, call_id="call_1", decision="reject", arguments={"username": "x"}
    )
    assert with_arguments["error"]["code"] == "bad_request"
    reply = await owner.command("approve", run_id=run_id, call_id="call_1", decision="reject")
    assert reply["decision"] == "reject"
    done = await member.seen_or_until(lambda f: f.get("type") in TERMINAL and f["data"]["run_id"] == run_id)
    assert done["type"] == "agent_completed"
    assert done["data"]["text"] == (
        f"I did not add {t['carol'].username}: {t['owner'].username} rejected it, so it was not run"
    )
    events = run_events(member, conv, run_id)
    assert_order(events, "agent_completed")
    assert [e["data"]["decision"] for e in events if e["type"] == "approval_resolved"] == ["rejected"]
    assert not [e for e in events if e["type"].startswith("tool_")]
    assert not await database_sync_to_async(
        ConversationMember.objects.filter(conversation_id=conv, user=t["carol"]).exists
    )()
    assert not await database_sync_to_async(ToolCall.objects.filter(run_id=run_id).exists)()


async def test_an_approval_nobody_decides_expires_and_the_run_goes_on(make_user: Any, settings: Any) -> None:
    settings.AGENT_APPROVAL_TTL_S = 0.5
    t = await team(make_user)
    conv = t["conv"]
    member = await subscribed(t["member"], conv)
    run_id, _ = await ask_to_invite(member, conv, t["carol"].username)
    resolved = await member.seen_or_until(lambda f: f.get("type") == "approval_resolved", timeout=5)
    assert resolved["data"] == {
        "run_id": run_id,
        "call_id": "call_1",
        "decision": "expired",
        "by": None,
        "arguments": {"username": t["carol"].username, "role": "member"},
    }
    done = await member.seen_or_until(lambda f: f.get("type") in TERMINAL and f["data"]["run_id"] == run_id)
    assert done["type"] == "agent_completed"
    assert "nobody approved it in time" in done["data"]["text"]
    events = run_events(member, conv, run_id)
    assert_order(events, "agent_completed")
    assert not [e for e in events if e["type"].startswith("tool_")]
    owner = await subscribed(t["owner"], conv)
    late = await owner.command("approve", run_id=run_id, call_id="call_1", decision="approve")
    assert late["error"]["code"] == "conflict"
    assert (await database_sync_to_async(approval_row)(run_id)).status == ApprovalStatus.EXPIRED


async def test_cancel_during_the_wait_ends_the_run_at_once(make_user: Any) -> None:
    t = await team(make_user)
    conv = t["conv"]
    member, owner = await subscribed(t["member"], conv), await subscribed(t["owner"], conv)
    run_id, _ = await ask_to_invite(member, conv, t["carol"].username)
    # A prompt sent meanwhile queues behind the parked run: one run at a time per conversation.
    queued = await member.command("send", conversation=conv, client_msg_id="q", text="@assistant what is 6 * 7?")
    await consistently(
        lambda: database_sync_to_async(lambda: run_row(queued["run_id"]).status == RunStatus.QUEUED)(),
        0.5,
        "the next run waits while the parked one is in progress",
    )
    reply = await member.command("cancel", run_id=run_id)
    assert (reply["run_id"], reply["status"]) == (run_id, "cancelled")
    cancelled = await member.seen_or_until(lambda f: f.get("type") in TERMINAL and f["data"]["run_id"] == run_id)
    assert cancelled["type"] == "agent_cancelled"
    assert cancelled["data"]["by"] == {"id": t["member"].id, "username": t["member"].username}
    events = run_events(member, conv, run_id)
    assert_order(events, "agent_cancelled")
    assert [e["type"] for e in events if e["type"].startswith(("approval_", "tool_"))] == ["approval_requested"]
    late = await owner.command("approve", run_id=run_id, call_id="call_1", decision="approve")
    assert late["error"]["code"] == "conflict"
    assert (await database_sync_to_async(approval_row)(run_id)).status == ApprovalStatus.CANCELLED
    # The queued run starts now and answers.
    answer = await member.seen_or_until(
        lambda f: f.get("type") in TERMINAL and f["data"]["run_id"] == queued["run_id"], timeout=15
    )
    assert "42" in answer["data"]["text"]


async def test_the_run_resumes_from_the_database_after_a_worker_restart(make_user: Any, settings: Any) -> None:
    t = await team(make_user)
    conv = t["conv"]
    member, owner = await subscribed(t["member"], conv), await subscribed(t["owner"], conv)
    run_id, _ = await ask_to_invite(member, conv, t["carol"].username)
    first = get_supervisor()
    await eventually(lambda: run_id not in first.tasks)
    # The worker goes away; the decision is taken while no runner is there to hear its doorbell.
    stopped = supervisors.pop_current()
    assert stopped is first
    await stopped.stop()
    settings.AGENT_RUNNER = "worker"  # its ring goes to a worker channel nobody listens on
    reply = await owner.command("approve", run_id=run_id, call_id="call_1", decision="approve")
    assert reply["ok"] is True
    await consistently(
        lambda: database_sync_to_async(lambda: run_row(run_id).status == RunStatus.WAITING_APPROVAL)(),
        0.3,
        "nothing resumes the run while no runner is up",
    )
    # A new runner starts and finds the decided run by polling the database.
    settings.AGENT_RUNNER = "inprocess"
    second = get_supervisor()
    assert second is not first
    done = await member.seen_or_until(lambda f: f.get("type") in TERMINAL and f["data"]["run_id"] == run_id, timeout=10)
    assert done["type"] == "agent_completed"
    assert done["data"]["text"] == f"Done: {t['carol'].username} is now in this conversation as member."
    assert_order(run_events(member, conv, run_id), "agent_completed")
    assert (await database_sync_to_async(run_row)(run_id)).worker_id == second.worker_id


async def test_an_approval_outside_the_callers_conversations_is_not_found(make_user: Any) -> None:
    t = await team(make_user)
    conv = t["conv"]
    member = await subscribed(t["member"], conv)
    run_id, _ = await ask_to_invite(member, conv, t["carol"].username)
    outsider = await connected(await database_sync_to_async(make_user)())
    for fields in (
        {"run_id": run_id, "call_id": "call_1"},  # a real one, not the outsider's
        {"run_id": "5f0e1c7a-0000-4000-8000-000000000000", "call_id": "call_1"},  # none
        {"run_id": "not-a-uuid", "call_id": "call_1"},
    ):
        refused = await outsider.command("approve", decision="approve", **fields)
        assert refused["error"] == {"code": "not_found", "message": "approval not found"}
    unknown_call = await member.command("approve", run_id=run_id, call_id="call_9", decision="approve")
    assert unknown_call["error"]["code"] == "not_found"
    assert (await database_sync_to_async(approval_row)(run_id)).status == ApprovalStatus.PENDING


def test_every_decision_is_kept_and_read_only_in_the_admin(make_user: Any, settings: Any) -> None:
    settings.AGENT_RUNNER = "worker"  # nothing claims here but this test
    t = _team(make_user)
    sent = factories.message_sync(t["conv"], t["member"], f"@assistant invite @{t['carol'].username}")
    assert sent.run_id is not None
    claimed = run_claim_next(worker_id="admin-test")
    assert claimed is not None
    assert claimed.run_id == sent.run_id
    run_park(
        run_id=claimed.run_id,
        conversation_id=t["conv"],
        call_id="call_1",
        tool="invite_member",
        arguments={"username": t["carol"].username},
        reason="Add them.",
        approver_role="owner",
        ttl_s=600,
        backend_state={},
    )
    approval_decide(
        run_id=claimed.run_id,
        call_id="call_1",
        user_id=t["owner"].id,
        username=t["owner"].username,
        decision="reject",
    )
    approval = approval_row(claimed.run_id)
    staff = HttpClient()
    staff.force_login(make_user(is_staff=True, is_superuser=True))
    listing = staff.get("/admin/agents/approval/")
    assert listing.status_code == 200
    assert t["owner"].username in listing.content.decode()
    page = staff.get(f"/admin/agents/approval/{approval.id}/change/")
    assert page.status_code == 200
    assert 'name="_save"' not in page.content.decode()  # nothing to save: a record, not a form
    assert staff.post(f"/admin/agents/approval/{approval.id}/change/", {"status": "approved"}).status_code == 403
    assert staff.post(f"/admin/agents/approval/{approval.id}/delete/", {"post": "yes"}).status_code == 403
    run_page = staff.get(f"/admin/agents/agentrun/{claimed.run_id}/change/").content.decode()
    assert "Rejected" in run_page
    assert t["owner"].username in run_page
    assert approval_row(claimed.run_id).status == ApprovalStatus.REJECTED


async def test_the_openai_backend_resumes_from_its_stored_conversation_after_a_restart(
    make_user: Any, settings: Any
) -> None:
    """One model turn calls invite_member and then the calculator. The run parks on the first call;
    its runner goes away; the approval resumes it on a new runner, which has only the database:
    the approved call runs, then the rest of that turn's calls, then the model gets every result."""
    t = await team(make_user)
    conv, carol = t["conv"], t["carol"]
    with FakeLLM() as fake:
        settings.AGENT_BACKEND = "openai"
        settings.AGENT_LLM_BASE_URL = fake.base_url
        settings.AGENT_LLM_MODEL = "fake-model"
        settings.AGENT_LLM_TIMEOUT_S = 10.0
        fake.script(
            tool_calls(
                ToolCallSpec("invite_member", {"username": carol.username}, "call_invite"),
                ToolCallSpec("calculator", {"expression": "6 * 7"}, "call_calc"),
            ),
            answer("Added them, and 6 * 7 is 42."),
        )
        member, owner = await subscribed(t["member"], conv), await subscribed(t["owner"], conv)
        sent = await member.command("send", conversation=conv, client_msg_id="o", text="@assistant add carol, and 6*7?")
        run_id = sent["run_id"]
        requested = await member.seen_or_until(lambda f: f.get("type") == "approval_requested")
        assert requested["data"]["call_id"] == "call_invite"
        first = get_supervisor()
        await eventually(lambda: run_id not in first.tasks)
        stopped = supervisors.pop_current()
        assert stopped is first
        await stopped.stop()

        reply = await owner.command("approve", run_id=run_id, call_id="call_invite", decision="approve")
        assert reply["ok"] is True
        done = await member.seen_or_until(lambda f: f.get("type") in TERMINAL and f["data"]["run_id"] == run_id)
        assert done["type"] == "agent_completed", done
        assert done["data"]["text"] == "Added them, and 6 * 7 is 42."
        assert get_supervisor() is not first

        events = run_events(member, conv, run_id)
        assert_order(events, "agent_completed")
        tools = [(e["type"], e["data"]["call_id"]) for e in events if e["type"].startswith(("tool_", "approval_"))]
        assert tools == [
            ("approval_requested", "call_invite"),
            ("approval_resolved", "call_invite"),
            ("tool_executing", "call_invite"),
            ("tool_completed", "call_invite"),
            ("tool_executing", "call_calc"),
            ("tool_completed", "call_calc"),
        ]
        # The model was told which tool needs approval, and after the pause it got the whole
        # conversation back: its own tool calls, then both results in order.
        asked, resumed = fake.requests
        spec = next(t for t in asked.body["tools"] if t["function"]["name"] == "invite_member")
        assert "approval of a conversation owner" in spec["function"]["description"]
        assert resumed.messages[: len(asked.messages)] == asked.messages
        assistant, invited, calculated = resumed.messages[len(asked.messages) :]
        assert [c["id"] for c in assistant["tool_calls"]] == ["call_invite", "call_calc"]
        assert (invited["tool_call_id"], json.loads(invited["content"])) == (
            "call_invite",
            {"added": carol.username, "role": "member"},
        )
        assert (calculated["tool_call_id"], json.loads(calculated["content"])["value"]) == ("call_calc", 42)
