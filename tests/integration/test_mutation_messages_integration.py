"""Sending and access against PostgreSQL, at the edges a mutant could move: idempotency keys are per
author, the send checks' exact bounds, and who the membership selector lets in."""

from __future__ import annotations

from typing import Any

import pytest

from chat.errors import NotFound, ServiceError
from chat.selectors import conversation_for_member
from chat.services.conversations import workspace_create, workspace_member_add
from chat.services.messages import MessageDraft, SendResult, message_check, message_existing
from tests.support.factories import conversation_sync, message_sync

pytestmark = [pytest.mark.django_db]


def test_a_key_is_per_author_not_per_conversation(make_user: Any) -> None:
    owner, member = make_user(), make_user()
    conv = conversation_sync(owner, agent="", members=((member, "member"),))
    first = message_sync(conv, owner, "one", client_msg_id="k1")
    other = message_sync(conv, member, "two", client_msg_id="k1")
    assert other.duplicate is False
    assert other.message_id != first.message_id
    assert other.seq == first.seq + 1
    again = message_sync(conv, member, "two again", client_msg_id="k1")
    assert again == SendResult(other.message_id, other.seq, True, None)
    assert message_existing(conv, owner.id, "k1") == SendResult(first.message_id, first.seq, True, None)
    assert message_existing(conv, owner.id, "k2") is None


def test_a_resend_returns_the_run_it_queued(make_user: Any) -> None:
    owner = make_user()
    conv = conversation_sync(owner, agent="assistant")
    first = message_sync(conv, owner, "hi", client_msg_id="r1")
    assert first.run_id is not None
    again = message_sync(conv, owner, "hi", client_msg_id="r1")
    assert again == SendResult(first.message_id, first.seq, True, first.run_id)


def _check(conv: str, user: Any, **overrides: Any) -> SendResult | MessageDraft:
    args: dict[str, Any] = {
        "conversation_id": conv,
        "author_id": user.id,
        "username": user.username,
        "can_write": True,
        "agent": "",
        "client_msg_id": "c",
        "text": "  hello  ",
    }
    args.update(overrides)
    return message_check(**args)


def test_send_checks_at_their_bounds(make_user: Any, settings: Any) -> None:
    owner = make_user()
    conv = conversation_sync(owner, agent="")
    draft = _check(conv, owner, client_msg_id="x" * 64, agent="assistant")
    assert draft == MessageDraft(conv, owner.id, owner.username, "x" * 64, "hello", "assistant", True)
    assert draft.starts_run is True
    assert _check(conv, owner).starts_run is False  # type: ignore[union-attr]
    settings.CHAT_MAX_TEXT_CHARS = 5
    assert isinstance(_check(conv, owner, text="12345"), MessageDraft)
    refusals = [
        ({"can_write": False}, "forbidden"),
        ({"client_msg_id": ""}, "bad_request"),
        ({"client_msg_id": "x" * 65}, "bad_request"),
        ({"text": "   "}, "bad_request"),
        ({"text": "123456"}, "too_large"),
    ]
    for overrides, code in refusals:
        with pytest.raises(ServiceError) as err:
            _check(conv, owner, **overrides)
        assert err.value.code == code, overrides


def test_membership_selector_refuses_deactivated_users(make_user: Any) -> None:
    owner, member = make_user(), make_user()
    conv = conversation_sync(owner, agent="", members=((member, "member"),), title="Room")
    access = conversation_for_member(user_id=member.id, conversation_id=conv)
    assert (access.conversation_id, access.role, access.title, access.agent) == (conv, "member", "Room", "")
    member.is_active = False
    member.save(update_fields=["is_active"])
    with pytest.raises(NotFound):
        conversation_for_member(user_id=member.id, conversation_id=conv)
    assert conversation_for_member(user_id=owner.id, conversation_id=conv).role == "owner"


def test_a_workspace_member_outside_the_conversation_is_refused(make_user: Any) -> None:
    owner, colleague = make_user(), make_user()
    workspace = workspace_create(owner=owner, name="team")
    workspace_member_add(workspace=workspace, actor=owner, username=colleague.username, role="member")
    conv = conversation_sync(owner, agent="", workspace_id=workspace.id)
    access = conversation_for_member(user_id=owner.id, conversation_id=conv)
    assert access.workspace_id == str(workspace.id)
    with pytest.raises(NotFound):
        conversation_for_member(user_id=colleague.id, conversation_id=conv)
    with pytest.raises(NotFound):
        message_sync(conv, colleague, "hi")
    with pytest.raises(NotFound):
        conversation_for_member(user_id=owner.id, conversation_id="not-a-uuid")
