"""agents/selectors.py against the real PostgreSQL, with runs made by the real services: a run is
seen only through its conversation's membership (and refused exactly like one that does not
exist), and `active_runs` is what a subscriber is shown of the runs still in progress."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from agents.models import RunStatus
from agents.selectors import active_runs, run_for_member
from agents.services import run_claim_next, run_complete, run_emit, run_fail, run_request_cancel
from chat.models import Role
from chat.selectors import conversation_for_member
from chat.services.accounts import user_deactivate
from chat.services.conversations import conversation_member_remove, workspace_create, workspace_member_add
from tests.support.factories import conversation_sync, message_sync
from tests.support.refusals import refusal

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_password_hashing")]


def queued_run(conversation_id: str, author: Any, text: str = "hello agent") -> str:
    sent = message_sync(conversation_id, author, text)
    assert sent.run_id is not None
    return sent.run_id


def claim(expected_run_id: str) -> None:
    claimed = run_claim_next(worker_id="selector-test")
    assert claimed is not None
    assert claimed.run_id == expected_run_id


# --- run_for_member ---------------------------------------------------------------------------------


def test_each_member_sees_the_run_with_their_own_access(make_user: Any) -> None:
    owner, member, viewer = make_user(), make_user(), make_user()
    conv = conversation_sync(owner, members=((member, Role.MEMBER), (viewer, Role.VIEWER)), agent_mode="always")
    run_id = queued_run(conv, member)

    for user, role in ((owner, Role.OWNER), (member, Role.MEMBER), (viewer, Role.VIEWER)):
        run, access = run_for_member(user_id=user.id, run_id=run_id)
        assert (str(run.id), str(run.conversation_id), run.status) == (run_id, conv, RunStatus.QUEUED)
        assert access == conversation_for_member(user_id=user.id, conversation_id=conv)
        assert access.role == role
    for spelling in (run_id.upper(), "{" + run_id + "}", uuid.UUID(run_id)):
        run, access = run_for_member(user_id=viewer.id, run_id=spelling)
        assert (str(run.id), access.conversation_id) == (run_id, conv)

    claim(run_id)
    run, _ = run_for_member(user_id=viewer.id, run_id=run_id)
    assert run.status == RunStatus.RUNNING
    run_complete(run_id=run_id, conversation_id=conv, text="done", usage={})
    run, _ = run_for_member(user_id=viewer.id, run_id=run_id)
    assert run.status == RunStatus.COMPLETED  # a finished run is still the members' to see


MALFORMED: list[Any] = ["", "not-a-uuid", "12345678-1234-1234-1234-12345678901g", None, 7, b"\x00" * 16, [], {}]


def test_every_reason_to_refuse_a_run_gives_the_same_not_found(make_user: Any) -> None:
    owner, outsider, colleague, leaver, deactivated = (make_user() for _ in range(5))
    workspace = workspace_create(owner=owner, name="team")
    workspace_member_add(workspace=workspace, actor=owner, username=colleague.username, role=Role.MEMBER)
    conv = conversation_sync(
        owner,
        workspace_id=workspace.id,
        members=((leaver, Role.MEMBER), (deactivated, Role.MEMBER)),
        agent_mode="always",
    )
    sent = message_sync(conv, owner, "secret question")
    assert sent.run_id is not None
    run_id = sent.run_id
    conversation_member_remove(conversation_id=conv, actor_id=owner.id, user_id=leaver.id)
    user_deactivate(user_id=deactivated.id)

    def for_member(user: Any, value: Any) -> Callable[[], Any]:
        return lambda: run_for_member(user_id=user.id, run_id=value)

    missing = refusal(for_member(owner, str(uuid.uuid4())))
    # The same refusal as for a conversation: probing with a run id tells no more than with a conversation id.
    assert missing == refusal(lambda: conversation_for_member(user_id=owner.id, conversation_id=str(uuid.uuid4())))
    cases = {
        "not a member": for_member(outsider, run_id),
        "a member of the workspace only": for_member(colleague, run_id),
        "removed from the conversation": for_member(leaver, run_id),
        "deactivated": for_member(deactivated, run_id),
        "no such user": lambda: run_for_member(user_id=2**31 - 1, run_id=run_id),
        "the conversation's id": for_member(owner, conv),
        "the message's id": for_member(owner, sent.message_id),
        **{f"malformed #{i}": for_member(owner, value) for i, value in enumerate(MALFORMED)},
    }
    assert {name: refusal(call) for name, call in cases.items()} == {name: missing for name in cases}
    assert str(run_for_member(user_id=owner.id, run_id=run_id)[0].id) == run_id


# --- active_runs -------------------------------------------------------------------------------------


def test_active_runs_are_the_queued_and_running_ones_oldest_first_with_the_answer_so_far(make_user: Any) -> None:
    owner = make_user()
    conv = conversation_sync(owner)
    first, second, third = (queued_run(conv, owner, f"question {n}") for n in range(3))
    other_conv = conversation_sync(owner)
    other = queued_run(other_conv, owner)

    def queued(run_id: str) -> dict[str, Any]:
        return {"run_id": run_id, "agent": "assistant", "status": RunStatus.QUEUED, "text": "", "seq": 0}

    assert active_runs(conversation_id=conv) == [queued(first), queued(second), queued(third)]

    claim(first)  # one run at a time per conversation: the others wait
    run_emit(run_id=first, conversation_id=conv, type="agent_delta", data={"text": "Hel"})
    last_delta = run_emit(run_id=first, conversation_id=conv, type="agent_delta", data={"text": "lo"})
    run_emit(run_id=first, conversation_id=conv, type="agent_thinking", data={})  # not part of the answer
    assert active_runs(conversation_id=conv) == [
        {"run_id": first, "agent": "assistant", "status": RunStatus.RUNNING, "text": "Hello", "seq": last_delta.seq},
        queued(second),
        queued(third),
    ]

    run_complete(run_id=first, conversation_id=conv, text="Hello", usage={})
    assert active_runs(conversation_id=conv) == [queued(second), queued(third)]
    run_request_cancel(run_id=second, by_user_id=owner.id, by_username=owner.username)
    assert active_runs(conversation_id=conv) == [queued(third)]
    run_fail(run_id=third, conversation_id=conv, code="llm_error", message="down")
    assert active_runs(conversation_id=conv) == []

    # Another conversation's runs never showed up above, and its own list is just its run.
    assert active_runs(conversation_id=other_conv) == [queued(other)]


def test_a_conversation_without_an_agent_has_no_active_runs(make_user: Any) -> None:
    owner = make_user()
    conv = conversation_sync(owner, agent="")
    assert message_sync(conv, owner, "just people").run_id is None
    assert active_runs(conversation_id=conv) == []
