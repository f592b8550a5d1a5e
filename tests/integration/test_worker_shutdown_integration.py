"""A stopping agent worker (SIGTERM: `RunSupervisor.shutdown`) against the real PostgreSQL and Redis,
the model being the fake chat-completions server: it stops claiming, hands back a run that showed
nothing but its agent_started (the next runner runs it once, with no second agent_started), ends a
run members saw more of with agent_failed `worker_shutdown` (never agent_cancelled), and leaves a
run waiting for an approval alone."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from channels.db import database_sync_to_async

from agents.liveness import WORKER_SHUTDOWN_MESSAGE, run_stop_for_shutdown
from agents.models import AgentRun, RunStatus
from agents.runner import get_supervisor, supervisors
from agents.services import run_claim_next, run_fail, run_request_cancel
from chat.selectors import events_after
from chat.services.conversations import workspace_create, workspace_member_add
from tests.support import factories
from tests.support.effects import RecordingRunner
from tests.support.fake_llm import FakeLLM, answer, fake_backend, stalled
from tests.support.waiting import consistently, eventually
from tests.support.ws import Client, connected

pytestmark = [pytest.mark.django_db(transaction=True)]

TERMINAL = ("agent_completed", "agent_failed", "agent_cancelled")


@pytest.fixture
def fake_llm(settings: Any) -> Iterator[FakeLLM]:
    with fake_backend(settings, api_key="sk-shutdown-test", timeout_s=30.0) as server:
        yield server


async def subscribed(user: Any, *convs: str) -> Client:
    client = await connected(user)
    for conv in convs:
        assert (await client.command("subscribe", conversation=conv, since_seq=0))["ok"] is True
    return client


def run_events(client: Client, conv: str, run_id: str) -> list[dict[str, Any]]:
    return [e for e in client.events(conv) if e["data"].get("run_id") == run_id and e["type"] != "message"]


def run_row(run_id: str) -> AgentRun:
    return AgentRun.objects.get(id=run_id)


async def ended(client: Client, run_id: str) -> dict[str, Any]:
    return await client.seen_or_until(lambda f: f.get("type") in TERMINAL and f["data"]["run_id"] == run_id, timeout=15)


async def test_a_run_that_showed_only_agent_started_is_handed_back_and_answered_once_by_the_next_runner(
    make_user: Any, fake_llm: FakeLLM
) -> None:
    # The model does not answer the first request before the worker stops: nothing shown but agent_started.
    fake_llm.script(stalled(answer("never sent"), after=0, seconds=30))
    user = await database_sync_to_async(make_user)()
    conv, other = await factories.conversation(user), await factories.conversation(user)
    client = await subscribed(user, conv, other)
    asked = await client.command("send", conversation=conv, client_msg_id="a", text="first question")
    await eventually(lambda: len(fake_llm.requests) == 1, what="the model was asked")
    first = get_supervisor()
    assert set(first.tasks) == {asked["run_id"]}

    outcomes = await first.shutdown()

    assert outcomes == {asked["run_id"]: "handed_back"}
    handed_back = await database_sync_to_async(run_row)(asked["run_id"])
    assert handed_back.status == RunStatus.QUEUED
    assert handed_back.worker_id == ""
    assert handed_back.started_at is not None  # its agent_started stays the one members saw
    assert not [f for f in client.frames if f.get("type") in TERMINAL]
    # A stopped runner claims nothing, doorbell or not: a new prompt's run stays queued.
    waiting = await client.command("send", conversation=other, client_msg_id="b", text="second question")
    await consistently(
        lambda: database_sync_to_async(lambda: run_row(waiting["run_id"]).status == RunStatus.QUEUED)(),
        0.5,
        "the stopped runner claimed nothing",
    )

    # The next runner (here: of this loop) runs both; the handed-back one from the start.
    assert supervisors.pop_current() is first
    second = get_supervisor()
    assert second is not first
    done = await ended(client, asked["run_id"])
    assert done["type"] == "agent_completed"
    assert "first question" in done["data"]["text"]
    assert (await ended(client, waiting["run_id"]))["type"] == "agent_completed"
    types = [e["type"] for e in run_events(client, conv, asked["run_id"])]
    assert types.count("agent_started") == 1
    assert types[0] == "agent_started"
    assert [t for t in types if t in TERMINAL] == ["agent_completed"]
    assert types[-1] == "agent_completed"
    seqs = [e["seq"] for e in client.events(conv)]
    assert seqs == list(range(1, len(seqs) + 1))
    assert (await database_sync_to_async(run_row)(asked["run_id"])).worker_id == second.worker_id
    assert [r.messages[-1]["content"] for r in fake_llm.requests].count("first question") == 2


async def test_a_run_members_saw_text_of_fails_with_worker_shutdown_not_cancelled(
    make_user: Any, fake_llm: FakeLLM
) -> None:
    # Two chunks of answer text, then the model goes quiet until the worker stops.
    fake_llm.script(stalled(answer("Hello there, this answer is cut", pieces=4), after=3, seconds=30))
    user = await database_sync_to_async(make_user)()
    conv = await factories.conversation(user)
    client = await subscribed(user, conv)
    asked = await client.command("send", conversation=conv, client_msg_id="a", text="tell me something")
    await client.seen_or_until(lambda f: f.get("type") == "agent_delta")
    first = get_supervisor()

    outcomes = await first.shutdown()

    assert outcomes == {asked["run_id"]: "failed"}
    failed = await ended(client, asked["run_id"])
    assert failed["type"] == "agent_failed"
    assert failed["data"]["error"] == {"code": "worker_shutdown", "message": WORKER_SHUTDOWN_MESSAGE}
    types = [e["type"] for e in run_events(client, conv, asked["run_id"])]
    assert types[0] == "agent_started"
    assert types.count("agent_started") == 1
    assert [t for t in types if t in TERMINAL] == ["agent_failed"]
    assert types[-1] == "agent_failed"
    row = await database_sync_to_async(run_row)(asked["run_id"])
    assert (row.status, row.error_code) == (RunStatus.FAILED, "worker_shutdown")

    # The next runner does not run it again; the conversation is free for the next question.
    assert supervisors.pop_current() is first
    get_supervisor()
    after = await client.command("send", conversation=conv, client_msg_id="b", text="another question")
    assert (await ended(client, after["run_id"]))["type"] == "agent_completed"
    assert len(fake_llm.requests) == 2
    assert (await database_sync_to_async(run_row)(asked["run_id"])).status == RunStatus.FAILED


def _room_with_an_invitee(make_user: Any) -> tuple[Any, Any, str]:
    """An owner, carol (in the owner's workspace, not in the conversation) and the conversation."""
    owner, carol = make_user(), make_user()
    workspace = workspace_create(owner=owner, name="team")
    workspace_member_add(workspace=workspace, actor=owner, username=carol.username, role="member")
    return owner, carol, factories.conversation_sync(owner, workspace_id=workspace.id)


async def test_a_run_waiting_for_an_approval_is_left_alone_and_resumes_on_the_next_runner(make_user: Any) -> None:
    # The built-in backend asks for the owner's approval to invite carol: the run parks.
    owner, carol, conv = await database_sync_to_async(_room_with_an_invitee)(make_user)
    client = await subscribed(owner, conv)
    asked = await client.command(
        "send", conversation=conv, client_msg_id="a", text=f"@assistant please invite @{carol.username}"
    )
    await client.seen_or_until(lambda f: f.get("type") == "approval_requested")
    first = get_supervisor()
    await eventually(lambda: asked["run_id"] not in first.tasks, what="the parked run holds no task")

    assert await first.shutdown() == {}

    assert (await database_sync_to_async(run_row)(asked["run_id"])).status == RunStatus.WAITING_APPROVAL
    assert supervisors.pop_current() is first
    get_supervisor()
    assert (await client.command("approve", run_id=asked["run_id"], call_id="call_1", decision="approve"))["ok"]
    done = await ended(client, asked["run_id"])
    assert done["type"] == "agent_completed"
    types = [e["type"] for e in run_events(client, conv, asked["run_id"])]
    assert types.count("agent_started") == 1
    assert [t for t in types if t in TERMINAL] == ["agent_completed"]


# --- run_stop_for_shutdown, the service ----------------------------------------------------------------

WORKER = "stopping-worker:1"


def _running(owner: Any) -> tuple[str, str]:
    conv = factories.conversation_sync(owner)
    run_id = factories.message_sync(conv, owner, "hello").run_id
    claimed = run_claim_next(worker_id=WORKER)
    assert claimed is not None
    assert claimed.run_id == run_id
    return conv, run_id


def _types(conv: str) -> list[str]:
    return [e.type for e in events_after(conversation_id=conv, after_seq=0)]


def test_a_handed_back_run_keeps_its_one_agent_started_whether_claimed_cancelled_or_failed(
    make_user: Any, runner: RecordingRunner
) -> None:
    owner = make_user()
    for end in ("claim", "cancel", "fail"):
        conv, run_id = _running(owner)
        runner.told.clear()
        assert run_stop_for_shutdown(run_id=run_id, worker_id=WORKER).how == "handed_back"
        assert runner.told == ["wake"]  # the runners still up take it now
        if end == "claim":
            again = run_claim_next(worker_id="next-worker:2")
            assert again is not None
            assert (again.run_id, again.events) == (run_id, [])
            assert run_row(run_id).worker_id == "next-worker:2"
            assert _types(conv) == ["message", "agent_started"]
        elif end == "cancel":
            cancelled = run_request_cancel(run_id=run_id, by_user_id=owner.id, by_username=owner.username)
            assert [e.type for e in cancelled.events] == ["agent_cancelled"]
            assert _types(conv) == ["message", "agent_started", "agent_cancelled"]
        else:
            run_fail(run_id=run_id, conversation_id=conv, code="internal", message="x")
            assert _types(conv) == ["message", "agent_started", "agent_failed"]


@pytest.mark.usefixtures("runner")
def test_a_run_not_held_by_the_stopping_worker_is_not_touched(make_user: Any) -> None:
    conv, run_id = _running(make_user())
    assert run_stop_for_shutdown(run_id=run_id, worker_id="another-worker:3").how == "gone"
    assert (run_row(run_id).status, run_row(run_id).worker_id) == (RunStatus.RUNNING, WORKER)
    run_fail(run_id=run_id, conversation_id=conv, code="internal", message="x")
    assert run_stop_for_shutdown(run_id=run_id, worker_id=WORKER).how == "gone"
    assert _types(conv) == ["message", "agent_started", "agent_failed"]


@pytest.mark.usefixtures("runner")
def test_a_run_someone_asked_to_stop_ends_cancelled_as_they_asked(make_user: Any) -> None:
    owner = make_user()
    conv, run_id = _running(owner)
    assert run_request_cancel(run_id=run_id, by_user_id=owner.id, by_username=owner.username).status == "cancelling"
    stopped = run_stop_for_shutdown(run_id=run_id, worker_id=WORKER)
    assert stopped.how == "cancelled"
    assert stopped.event is not None
    assert stopped.event.data["by"] == {"id": owner.id, "username": owner.username}
    assert _types(conv) == ["message", "agent_started", "agent_cancelled"]
