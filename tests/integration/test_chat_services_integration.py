"""The chat services (chat/services/), called directly against the real PostgreSQL and Redis.

For each service: what it stores (exact rows, exact events and seqs), what it refuses (the error
code, and that the refusal changed nothing at all), and what it makes happen once it commits: the
frames it puts in the hot buffer and the doorbells it rings on the channel layer, read back from
Redis. A sync caller without an event loop gets those effects delivered before the service returns
(chat/publishing.py), so every assertion below is made right after the call, without waiting."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.test import Client as HttpClient

from agents.models import AgentRun, RunStatus, ToolCall
from chat import wire
from chat.errors import NotFound, ServiceError
from chat.infra.doorbells import conversation_group, user_group
from chat.infra.message_buffer import conversation_stream, user_stream
from chat.models import (
    AuthorKind,
    Conversation,
    ConversationMember,
    Event,
    Message,
    Notification,
    Role,
    Tier,
    User,
    Workspace,
    WorkspaceMember,
)
from chat.selectors import conversation_for_member, events_after, user_is_active
from chat.services.accounts import (
    CLOSE_DISABLED,
    CLOSE_LOGGED_OUT,
    membership_revoked,
    user_deactivate,
)
from chat.services.conversations import (
    CreatedConversation,
    conversation_create,
    conversation_member_add,
    conversation_member_remove,
    conversation_member_remove_by_staff,
    conversation_member_set_by_staff,
    personal_workspace_for,
    read_marker_set,
    user_create,
    workspace_create,
    workspace_member_add,
    workspace_member_remove_by_staff,
    workspace_member_set_by_staff,
)
from chat.services.events import append_event
from chat.services.messages import (
    MessageDraft,
    SendResult,
    message_check,
    message_event_data,
    message_send,
    message_write,
)
from chat.services.notifications import notification_create
from chat.tiers import limits_for
from chat.wire.frames import StoredEvent, notification_frame, rfc3339
from tests.support import factories
from tests.support.effects import RecordingRunner

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("runner", "fast_password_hashing")]

# How long to listen for a doorbell that must NOT come. The services deliver before they return,
# so a doorbell that was rung is already on its way when the call returns; this only covers the
# hop through the local Redis.
SILENCE_S = 0.15
# How long to wait for a doorbell that must come (a loaded machine may be slow to hand it over).
ARRIVAL_S = 5.0


class Tap:
    """The real Redis, read back: doorbells published to channel-layer groups (subscribed to the
    way the pub/sub layer names a group's Redis channel) and the hot buffer's sorted sets."""

    def __init__(self) -> None:
        self.redis = redis.Redis.from_url(settings.REDIS_URL)
        self.pubsub = self.redis.pubsub()
        self.layer = get_channel_layer()
        self._prefix = f"{settings.CHANNEL_PREFIX}__group__"

    def forget(self, *users: Any) -> None:
        """Drop the notification buffers of `users`: user ids restart in every new test database, and
        an earlier session with the same CHANNEL_PREFIX may have left a buffer under the same id."""
        self.redis.delete(*[f"{settings.CHANNEL_PREFIX}:buf:{user_stream(u.id)}" for u in users])

    def listen(self, *groups: str) -> None:
        self.pubsub.subscribe(*[self._prefix + g for g in groups])
        # Only once Redis confirmed each subscription is a publish sure to reach it.
        confirmed = 0
        while confirmed < len(groups):
            message = self.pubsub.get_message(timeout=ARRIVAL_S)
            assert message is not None, "Redis did not confirm the subscription"
            confirmed += message["type"] == "subscribe"

    def heard(self, count: int = 0) -> list[tuple[str, dict[str, Any]]]:
        """Exactly the next `count` doorbells, as (group, message); fails on one more."""
        got: list[tuple[str, dict[str, Any]]] = []
        while len(got) < count:
            message = self.pubsub.get_message(timeout=ARRIVAL_S)
            assert message is not None, f"heard {len(got)} doorbell(s) of {count}: {got}"
            if message["type"] == "message":
                got.append(self._decode(message))
        extra = self.pubsub.get_message(timeout=SILENCE_S)
        assert extra is None or extra["type"] != "message", f"one doorbell too many: {self._decode(extra)}"
        return got

    def _decode(self, message: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        # A frame riding in a doorbell is JSON text; it is compared decoded, since the expected one is
        # often rebuilt from a stored row, whose jsonb keeps no key order.
        doorbell = self.layer.deserialize(message["data"])
        if isinstance(doorbell.get("frame"), str):
            doorbell["frame"] = json.loads(doorbell["frame"])
        return message["channel"].decode().removeprefix(self._prefix), doorbell

    def buffered(self, stream: str) -> list[tuple[int, Any]]:
        """The hot buffer of `stream`: (seq, decoded frame), by seq."""
        key = f"{settings.CHANNEL_PREFIX}:buf:{stream}"
        rows = self.redis.zrange(key, 0, -1, withscores=True)
        return [(int(score), json.loads(member.decode().partition("|")[2])) for member, score in rows]

    def ttl(self, stream: str) -> int:
        return int(self.redis.ttl(f"{settings.CHANNEL_PREFIX}:buf:{stream}"))

    def close(self) -> None:
        self.pubsub.close()
        self.redis.close()


@pytest.fixture
def tap() -> Iterator[Tap]:
    listening = Tap()
    try:
        yield listening
    finally:
        listening.close()


def db_state() -> dict[str, list[tuple[Any, ...]]]:
    """Every row the services can write (each test starts from an empty database)."""
    return {
        "users": list(User.objects.order_by("id").values_list("id", "username", "is_active", "notification_seq")),
        "workspaces": list(Workspace.objects.order_by("id").values_list("id", "name", "personal_for_id")),
        "workspace_members": list(
            WorkspaceMember.objects.order_by("id").values_list("id", "workspace_id", "user_id", "role")
        ),
        "conversations": list(
            Conversation.objects.order_by("id").values_list("id", "title", "agent", "workspace_id", "last_seq")
        ),
        "conversation_members": list(
            ConversationMember.objects.order_by("id").values_list(
                "id", "conversation_id", "user_id", "role", "last_read_seq"
            )
        ),
        "messages": list(
            Message.objects.order_by("id").values_list("id", "author_id", "client_msg_id", "text", "seq", "run_id")
        ),
        "events": list(Event.objects.order_by("id").values_list("id", "conversation_id", "seq", "type", "data")),
        "notifications": list(Notification.objects.order_by("id").values_list("id", "user_id", "seq", "data")),
        "runs": list(AgentRun.objects.order_by("id").values_list("id", "status", "cancel_requested")),
        "tool_calls": list(ToolCall.objects.order_by("id").values_list("id", "status")),
    }


def refused(code: str, call: Callable[[], Any], message: str | None = None) -> ServiceError:
    """`call` raises ServiceError(`code`) and leaves every row as it was."""
    before = db_state()
    with pytest.raises(ServiceError) as raised:
        call()
    assert raised.value.code == code, raised.value.message
    if message is not None:
        assert raised.value.message == message
    assert db_state() == before
    return raised.value


def log(conversation_id: str) -> list[StoredEvent]:
    return events_after(conversation_id=conversation_id, after_seq=0)


def notifications(user: Any) -> list[tuple[int, dict[str, Any]]]:
    """(seq, data as given) of each of `user`'s notifications: notification_create adds created_at."""
    rows = Notification.objects.filter(user=user).order_by("seq").values_list("seq", "data")
    return [(seq, {k: v for k, v in data.items() if k != "created_at"}) for seq, data in rows]


def membership_notes(user: Any) -> list[tuple[int, dict[str, Any]]]:
    """(seq, what the membership kinds are about) of each of `user`'s notifications; the common §9
    fields are checked by test_membership_notifications_have_the_section_9_shape."""
    rows = Notification.objects.filter(user=user).order_by("seq").values_list("seq", "data")
    return [(seq, {k: data[k] for k in ("kind", "conversation", "title", "role", "by")}) for seq, data in rows]


def role_of(conversation_id: str, user: Any) -> str | None:
    return (
        ConversationMember.objects.filter(conversation_id=conversation_id, user=user)
        .values_list("role", flat=True)
        .first()
    )


def notification_doorbell(user: Any, seq: int) -> dict[str, Any]:
    """The user doorbell that carries the stored notification `seq` of `user`."""
    note = Notification.objects.get(user=user, seq=seq)
    frame = json.loads(notification_frame(note.seq, note.created_at, note.data))
    return {"type": "user.event", "user": user.id, "action": "notification", "frame": frame}


def event_doorbell(event: StoredEvent) -> dict[str, Any]:
    return {"type": "conv.event", "conversation": event.conversation_id, "seq": event.seq, "frame": event.frame()}


# --- user_create / personal_workspace_for -----------------------------------------------------------


@pytest.mark.parametrize("tier", [Tier.FREE, Tier.PRO, Tier.ENTERPRISE])
def test_user_create_makes_the_user_and_their_personal_workspace(tier: str) -> None:
    user = user_create(username="ada", password="s3cret-pw", tier=tier, email="ada@example.com")

    stored = User.objects.get(id=user.id)
    assert (stored.username, stored.email, stored.tier) == ("ada", "ada@example.com", tier)
    assert (stored.is_active, stored.is_staff, stored.is_superuser, stored.notification_seq) == (True, False, False, 0)
    assert stored.check_password("s3cret-pw")
    workspace = Workspace.objects.get()
    assert (workspace.name, workspace.personal_for_id) == ("ada's workspace", user.id)
    assert list(WorkspaceMember.objects.values_list("workspace_id", "user_id", "role")) == [
        (workspace.id, user.id, Role.OWNER)
    ]


def test_user_create_staff_flags_are_stored() -> None:
    user = user_create(username="root", password="pw", is_staff=True, is_superuser=True)
    assert User.objects.filter(id=user.id).values_list("is_staff", "is_superuser", "tier").get() == (
        True,
        True,
        Tier.FREE,
    )


def test_user_create_refuses_an_unknown_tier() -> None:
    refused("bad_request", lambda: user_create(username="gold", password="pw", tier="gold"), "unknown tier 'gold'")
    assert not User.objects.exists()
    assert not Workspace.objects.exists()


def test_personal_workspace_for_is_created_once(make_user: Any) -> None:
    user = make_user()
    first = personal_workspace_for(user=user)
    before = db_state()

    assert personal_workspace_for(user=user) == first
    assert db_state() == before


# --- workspace_create ------------------------------------------------------------------------------


@pytest.mark.parametrize(("given", "stored"), [("  Research  ", "Research"), ("x", "x"), ("w" * 200, "w" * 200)])
def test_workspace_create_stores_the_stripped_name_with_its_creator_as_owner(
    make_user: Any, given: str, stored: str
) -> None:
    owner = make_user()

    workspace = workspace_create(owner=owner, name=given)

    assert Workspace.objects.filter(id=workspace.id).values_list("name", "personal_for_id").get() == (stored, None)
    assert list(WorkspaceMember.objects.filter(workspace=workspace).values_list("user_id", "role")) == [
        (owner.id, Role.OWNER)
    ]


@pytest.mark.parametrize("name", ["", "   ", "w" * 201, " " + "w" * 201 + " "])
def test_workspace_create_refuses_a_name_outside_1_to_200_characters(make_user: Any, name: str) -> None:
    owner = make_user()
    refused("bad_request", lambda: workspace_create(owner=owner, name=name), "name must be 1-200 characters")


# --- workspace_member_add ----------------------------------------------------------------------------


@pytest.mark.parametrize("role", [Role.MEMBER, Role.VIEWER])
def test_workspace_owner_adds_a_member_with_a_role(make_user: Any, role: str) -> None:
    owner, newcomer = make_user(), make_user()
    workspace = workspace_create(owner=owner, name="team")

    member = workspace_member_add(workspace=workspace, actor=owner, username=newcomer.username, role=role)

    assert (member.workspace_id, member.user_id, member.role) == (workspace.id, newcomer.id, role)
    assert sorted(WorkspaceMember.objects.filter(workspace=workspace).values_list("user_id", "role")) == sorted(
        [(owner.id, Role.OWNER), (newcomer.id, role)]
    )


def test_workspace_member_add_again_changes_the_role_of_the_same_row(make_user: Any) -> None:
    owner, newcomer = make_user(), make_user()
    workspace = workspace_create(owner=owner, name="team")
    first = workspace_member_add(workspace=workspace, actor=owner, username=newcomer.username, role=Role.MEMBER)

    again = workspace_member_add(workspace=workspace, actor=owner, username=newcomer.username, role=Role.VIEWER)

    assert again.id == first.id
    assert WorkspaceMember.objects.filter(workspace=workspace, user=newcomer).values_list("id", "role").get() == (
        first.id,
        Role.VIEWER,
    )


@pytest.mark.parametrize("actor_role", [Role.MEMBER, Role.VIEWER, None])
def test_only_a_workspace_owner_may_add_members(make_user: Any, actor_role: str | None) -> None:
    owner, actor, newcomer = make_user(), make_user(), make_user()
    workspace = workspace_create(owner=owner, name="team")
    if actor_role is not None:
        workspace_member_add(workspace=workspace, actor=owner, username=actor.username, role=actor_role)

    # The role is checked first: a non-owner learns nothing about the role or the username.
    for role, username in ((Role.MEMBER, newcomer.username), (Role.OWNER, "nobody-at-all")):
        refused(
            "forbidden",
            lambda role=role, username=username: workspace_member_add(
                workspace=workspace, actor=actor, username=username, role=role
            ),
            "only a workspace owner may add members",
        )


@pytest.mark.parametrize("role", [Role.OWNER, "admin", ""])
def test_workspace_member_add_refuses_a_role_other_than_member_or_viewer(make_user: Any, role: str) -> None:
    owner, newcomer = make_user(), make_user()
    workspace = workspace_create(owner=owner, name="team")
    refused(
        "bad_request",
        lambda: workspace_member_add(workspace=workspace, actor=owner, username=newcomer.username, role=role),
        "role must be 'member' or 'viewer'",
    )


def test_workspace_member_add_refuses_an_unknown_or_inactive_user(make_user: Any) -> None:
    owner, gone = make_user(), make_user()
    workspace = workspace_create(owner=owner, name="team")
    user_deactivate(user_id=gone.id)

    for username in ("no-such-user", gone.username):
        refused(
            "not_found",
            lambda username=username: workspace_member_add(
                workspace=workspace, actor=owner, username=username, role=Role.MEMBER
            ),
            "no such user",
        )


def test_the_only_workspace_owner_cannot_demote_themselves(make_user: Any) -> None:
    owner = make_user()
    workspace = workspace_create(owner=owner, name="team")
    refused(
        "conflict",
        lambda: workspace_member_add(workspace=workspace, actor=owner, username=owner.username, role=Role.MEMBER),
    )


# --- conversation_create -----------------------------------------------------------------------------


def test_conversation_create_defaults_to_the_personal_workspace_and_the_assistant(make_user: Any) -> None:
    creator = make_user()

    created = conversation_create(creator=creator, title="  Plans  ")

    conv = created.conversation
    assert created == CreatedConversation(conv, Role.OWNER)
    stored = Conversation.objects.filter(id=conv.id).values_list(
        "workspace_id", "title", "agent", "created_by_id", "last_seq"
    )
    assert stored.get() == (personal_workspace_for(user=creator).id, "Plans", "assistant", creator.id, 0)
    assert list(ConversationMember.objects.values_list("conversation_id", "user_id", "role", "last_read_seq")) == [
        (conv.id, creator.id, Role.OWNER, 0)
    ]
    assert not Event.objects.exists()  # creating a conversation writes no event


def test_conversation_create_without_an_agent(make_user: Any) -> None:
    created = conversation_create(creator=make_user(), title="people only", agent="")
    assert Conversation.objects.filter(id=created.conversation.id).values_list("agent", flat=True).get() == ""


@pytest.mark.parametrize("title", ["", "  \t ", "t" * 201])
def test_conversation_create_refuses_a_title_outside_1_to_200_characters(make_user: Any, title: str) -> None:
    creator = make_user()
    refused("bad_request", lambda: conversation_create(creator=creator, title=title), "title must be 1-200 characters")


def test_conversation_create_takes_a_200_character_title(make_user: Any) -> None:
    created = conversation_create(creator=make_user(), title="t" * 200)
    assert Conversation.objects.filter(id=created.conversation.id).values_list("title", flat=True).get() == "t" * 200


@pytest.mark.parametrize("role", [Role.OWNER, Role.MEMBER])
def test_conversation_create_in_a_workspace_where_the_creator_may_write(make_user: Any, role: str) -> None:
    owner, creator = make_user(), make_user()
    workspace = workspace_create(owner=owner, name="team")
    if role == Role.MEMBER:
        workspace_member_add(workspace=workspace, actor=owner, username=creator.username, role=Role.MEMBER)
    else:
        creator = owner

    created = conversation_create(creator=creator, title="standup", workspace_id=str(workspace.id))

    conv = created.conversation
    assert (conv.workspace_id, created.role) == (workspace.id, Role.OWNER)
    # The creator owns the conversation whatever their workspace role; the workspace owner is not added.
    assert list(ConversationMember.objects.filter(conversation=conv).values_list("user_id", "role")) == [
        (creator.id, Role.OWNER)
    ]


def test_conversation_create_in_a_workspace_the_creator_is_not_in_is_not_found(make_user: Any) -> None:
    stranger, creator = make_user(), make_user()
    theirs = personal_workspace_for(user=stranger)
    for workspace_id in (theirs.id, str(theirs.id), uuid.uuid4()):
        refused(
            "not_found",
            lambda workspace_id=workspace_id: conversation_create(
                creator=creator, title="sneaky", workspace_id=workspace_id
            ),
            "workspace not found",
        )


def test_a_workspace_viewer_cannot_create_a_conversation(make_user: Any) -> None:
    owner, viewer = make_user(), make_user()
    workspace = workspace_create(owner=owner, name="team")
    workspace_member_add(workspace=workspace, actor=owner, username=viewer.username, role=Role.VIEWER)
    refused(
        "forbidden",
        lambda: conversation_create(creator=viewer, title="nope", workspace_id=workspace.id),
        "viewers cannot create conversations",
    )


def test_conversation_create_checks_the_title_before_the_workspace(make_user: Any) -> None:
    creator = make_user()
    refused("bad_request", lambda: conversation_create(creator=creator, title=" ", workspace_id=uuid.uuid4()))


# --- conversation_member_add -------------------------------------------------------------------------


@pytest.mark.parametrize("role", [Role.MEMBER, Role.VIEWER])
def test_owner_adds_a_member_who_is_told_added_to_conversation(make_user: Any, tap: Tap, role: str) -> None:
    owner, newcomer = make_user(), make_user()
    conv = factories.conversation_sync(owner, title="Roadmap")
    tap.forget(newcomer)
    tap.listen(user_group(newcomer.id), user_group(owner.id))

    member = conversation_member_add(conversation_id=conv, actor_id=owner.id, username=newcomer.username, role=role)

    assert (str(member.conversation_id), member.user_id, member.role, member.last_read_seq) == (
        conv,
        newcomer.id,
        role,
        0,
    )
    data = {"kind": "added_to_conversation", "conversation": conv, "title": "Roadmap", "role": role, "by": owner.id}
    assert membership_notes(newcomer) == [(1, data)]
    assert membership_notes(owner) == []
    assert User.objects.filter(id=newcomer.id).values_list("notification_seq", flat=True).get() == 1
    # Only the notification reaches the newcomer (no "role" message: they had no role to update).
    assert tap.heard(1) == [(user_group(newcomer.id), notification_doorbell(newcomer, 1))]
    assert tap.buffered(user_stream(newcomer.id)) == [(1, notification_doorbell(newcomer, 1)["frame"])]
    assert conversation_for_member(user_id=newcomer.id, conversation_id=conv).role == role


def test_membership_notifications_have_the_section_9_shape(make_user: Any) -> None:
    owner, member = make_user(), make_user()
    conv = factories.conversation_sync(owner, title="Roadmap")
    conversation_member_add(conversation_id=conv, actor_id=owner.id, username=member.username, role=Role.MEMBER)
    conversation_member_add(conversation_id=conv, actor_id=owner.id, username=member.username, role=Role.VIEWER)
    added, changed = Notification.objects.filter(user=member).order_by("seq")
    for note, kind, priority, preview in (
        (added, "added_to_conversation", "normal", "You were added to Roadmap as member"),
        (changed, "role_changed", "low", "You are now viewer in Roadmap"),
    ):
        data = note.data
        assert (data["kind"], data["priority"], data["preview"], data["seq"]) == (kind, priority, preview, None)
        assert data["actor"] == {"id": owner.id, "username": owner.username}
        assert data["created_at"] == rfc3339(note.created_at)
        assert str(uuid.UUID(data["id"])) == data["id"]
        wire.decode_event_data("notification", data)  # exactly the declared schema
    assert added.data["id"] != changed.data["id"]


def test_owner_changes_a_role_and_the_member_is_told_role_changed(make_user: Any, tap: Tap) -> None:
    owner, member = make_user(), make_user()
    conv = factories.conversation_sync(owner, title="Roadmap", members=((member, Role.MEMBER),))
    row_id = ConversationMember.objects.get(conversation_id=conv, user=member).id
    tap.listen(user_group(member.id))

    changed = conversation_member_add(
        conversation_id=conv, actor_id=owner.id, username=member.username, role=Role.VIEWER
    )

    assert (changed.id, changed.role) == (row_id, Role.VIEWER)
    assert ConversationMember.objects.filter(conversation_id=conv).count() == 2
    assert membership_notes(member) == [
        (
            1,
            {
                "kind": "added_to_conversation",
                "conversation": conv,
                "title": "Roadmap",
                "role": "member",
                "by": owner.id,
            },
        ),
        (2, {"kind": "role_changed", "conversation": conv, "title": "Roadmap", "role": "viewer", "by": owner.id}),
    ]
    # The sockets' held role first (for a database outage), then the notification, in commit order.
    assert tap.heard(2) == [
        (
            user_group(member.id),
            {"type": "user.event", "user": member.id, "action": "role", "conversation": conv, "role": Role.VIEWER},
        ),
        (user_group(member.id), notification_doorbell(member, 2)),
    ]


@pytest.mark.parametrize("actor_role", [Role.MEMBER, Role.VIEWER])
def test_only_the_conversation_owner_may_add_members(make_user: Any, tap: Tap, actor_role: str) -> None:
    owner, actor, newcomer = make_user(), make_user(), make_user()
    conv = factories.conversation_sync(owner, members=((actor, actor_role),))
    tap.listen(user_group(newcomer.id), user_group(owner.id))

    refused(
        "forbidden",
        lambda: conversation_member_add(
            conversation_id=conv, actor_id=actor.id, username=newcomer.username, role=Role.MEMBER
        ),
        "only the conversation owner may add members",
    )
    # Nor may they change the owner's role.
    refused(
        "forbidden",
        lambda: conversation_member_add(
            conversation_id=conv, actor_id=actor.id, username=owner.username, role=Role.VIEWER
        ),
    )
    assert tap.heard() == []


def test_a_non_member_or_deactivated_owner_cannot_add_members(make_user: Any) -> None:
    owner, stranger, newcomer = make_user(), make_user(), make_user()
    conv = factories.conversation_sync(owner)
    for actor in (stranger, owner):
        if actor is owner:
            user_deactivate(user_id=owner.id)
        before = db_state()
        with pytest.raises(NotFound):
            conversation_member_add(conversation_id=conv, actor_id=actor.id, username=newcomer.username, role="member")
        assert db_state() == before


@pytest.mark.parametrize("role", [Role.OWNER, "admin"])
def test_conversation_member_add_refuses_a_role_other_than_member_or_viewer(make_user: Any, role: str) -> None:
    owner, newcomer = make_user(), make_user()
    conv = factories.conversation_sync(owner)
    refused(
        "bad_request",
        lambda: conversation_member_add(conversation_id=conv, actor_id=owner.id, username=newcomer.username, role=role),
        "role must be 'member' or 'viewer'",
    )


def test_conversation_member_add_refuses_an_unknown_or_inactive_user(make_user: Any, tap: Tap) -> None:
    owner, gone = make_user(), make_user()
    conv = factories.conversation_sync(owner)
    user_deactivate(user_id=gone.id)
    tap.listen(user_group(gone.id))

    for username in ("no-such-user", gone.username):
        refused(
            "not_found",
            lambda username=username: conversation_member_add(
                conversation_id=conv, actor_id=owner.id, username=username, role=Role.MEMBER
            ),
            "no such user",
        )
    assert tap.heard() == []


def test_the_owner_cannot_demote_themselves(make_user: Any) -> None:
    owner = make_user()
    conv = factories.conversation_sync(owner)
    refused(
        "conflict",
        lambda: conversation_member_add(
            conversation_id=conv, actor_id=owner.id, username=owner.username, role=Role.VIEWER
        ),
    )


# --- conversation_member_remove ----------------------------------------------------------------------


@pytest.mark.parametrize("role", [Role.MEMBER, Role.VIEWER])
def test_owner_removes_a_member_whose_sockets_are_revoked(make_user: Any, tap: Tap, role: str) -> None:
    owner, member, bystander = make_user(), make_user(), make_user()
    conv = factories.conversation_sync(owner, members=((member, role), (bystander, Role.MEMBER)))
    tap.listen(user_group(member.id), user_group(bystander.id), user_group(owner.id))

    assert conversation_member_remove(conversation_id=conv, actor_id=owner.id, user_id=member.id) is None

    assert sorted(ConversationMember.objects.filter(conversation_id=conv).values_list("user_id", "role")) == sorted(
        [(owner.id, Role.OWNER), (bystander.id, Role.MEMBER)]
    )
    assert tap.heard(1) == [
        (user_group(member.id), {"type": "user.event", "user": member.id, "action": "revoke", "conversation": conv})
    ]
    with pytest.raises(NotFound):
        conversation_for_member(user_id=member.id, conversation_id=conv)


@pytest.mark.parametrize("role", [Role.MEMBER, Role.VIEWER])
def test_a_member_may_leave(make_user: Any, tap: Tap, role: str) -> None:
    owner, member = make_user(), make_user()
    conv = factories.conversation_sync(owner, members=((member, role),))
    tap.listen(user_group(member.id))

    conversation_member_remove(conversation_id=conv, actor_id=member.id, user_id=member.id)

    assert list(ConversationMember.objects.filter(conversation_id=conv).values_list("user_id", flat=True)) == [owner.id]
    assert tap.heard(1) == [
        (user_group(member.id), {"type": "user.event", "user": member.id, "action": "revoke", "conversation": conv})
    ]


def test_the_owner_cannot_leave(make_user: Any, tap: Tap) -> None:
    owner = make_user()
    conv = factories.conversation_sync(owner)
    tap.listen(user_group(owner.id))
    refused(
        "conflict",
        lambda: conversation_member_remove(conversation_id=conv, actor_id=owner.id, user_id=owner.id),
        "the owner cannot leave their own conversation",
    )
    assert tap.heard() == []


@pytest.mark.parametrize("actor_role", [Role.MEMBER, Role.VIEWER])
def test_a_non_owner_cannot_remove_someone_else(make_user: Any, tap: Tap, actor_role: str) -> None:
    owner, actor, other = make_user(), make_user(), make_user()
    conv = factories.conversation_sync(owner, members=((actor, actor_role), (other, Role.MEMBER)))
    tap.listen(user_group(other.id), user_group(owner.id))
    for target in (other, owner):
        refused(
            "forbidden",
            lambda target=target: conversation_member_remove(
                conversation_id=conv, actor_id=actor.id, user_id=target.id
            ),
            "only the conversation owner may remove members",
        )
    assert tap.heard() == []


def test_removing_someone_who_is_not_a_member_is_not_found(make_user: Any, tap: Tap) -> None:
    owner, outsider = make_user(), make_user()
    conv = factories.conversation_sync(owner)
    tap.listen(user_group(outsider.id))
    refused(
        "not_found",
        lambda: conversation_member_remove(conversation_id=conv, actor_id=owner.id, user_id=outsider.id),
        "no such member",
    )
    assert tap.heard() == []


def test_a_non_member_cannot_remove_anyone(make_user: Any) -> None:
    owner, member, stranger = make_user(), make_user(), make_user()
    conv = factories.conversation_sync(owner, members=((member, Role.MEMBER),))
    before = db_state()
    for target in (member, stranger):
        with pytest.raises(NotFound):
            conversation_member_remove(conversation_id=conv, actor_id=stranger.id, user_id=target.id)
    assert db_state() == before


# --- read_marker_set ---------------------------------------------------------------------------------


def test_read_marker_moves_forward_only_and_never_past_the_head(make_user: Any) -> None:
    owner, member = make_user(), make_user()
    conv = factories.conversation_sync(owner, agent="", members=((member, Role.MEMBER),))
    for text in ("one", "two", "three"):
        factories.message_sync(conv, owner, text)

    def marker(user: Any) -> int:
        return (
            ConversationMember.objects.filter(conversation_id=conv, user=user)
            .values_list("last_read_seq", flat=True)
            .get()
        )

    steps = [(0, 0), (2, 2), (1, 2), (-5, 2), (2, 2), (99, 3), (3, 3)]
    for asked, kept in steps:
        assert read_marker_set(conversation_id=conv, user_id=member.id, seq=asked) == kept, asked
        assert marker(member) == kept
    assert marker(owner) == 0  # one member's marker is theirs alone
    assert Conversation.objects.filter(id=conv).values_list("last_seq", flat=True).get() == 3


def test_read_marker_in_an_empty_conversation_stays_at_zero(make_user: Any) -> None:
    owner = make_user()
    conv = factories.conversation_sync(owner, agent="")
    assert read_marker_set(conversation_id=conv, user_id=owner.id, seq=10) == 0


def test_read_marker_of_a_non_member_is_refused_and_written_nowhere(make_user: Any) -> None:
    # The caller resolves access first (`conversation_for_member`); the service itself only finds no row.
    owner, stranger = make_user(), make_user()
    conv = factories.conversation_sync(owner, agent="")
    factories.message_sync(conv, owner)
    before = db_state()
    with pytest.raises(ConversationMember.DoesNotExist):
        read_marker_set(conversation_id=conv, user_id=stranger.id, seq=1)
    assert db_state() == before


# --- the staff variants ------------------------------------------------------------------------------


@pytest.mark.parametrize("role", [Role.OWNER, Role.MEMBER, Role.VIEWER])
def test_staff_add_a_member_with_any_role(make_user: Any, tap: Tap, role: str) -> None:
    owner, newcomer, staff = make_user(), make_user(), make_user(is_staff=True)
    conv = factories.conversation_sync(owner, title="Ops")
    tap.listen(user_group(newcomer.id))

    member = conversation_member_set_by_staff(conversation_id=conv, user=newcomer, role=role, staff_id=staff.id)

    assert (member.user_id, member.role) == (newcomer.id, role)
    assert role_of(conv, newcomer) == role
    assert membership_notes(newcomer) == [
        (1, {"kind": "added_to_conversation", "conversation": conv, "title": "Ops", "role": role, "by": staff.id})
    ]
    assert tap.heard(1) == [(user_group(newcomer.id), notification_doorbell(newcomer, 1))]


def test_staff_change_any_role_the_owners_included(make_user: Any, tap: Tap) -> None:
    owner, staff = make_user(), make_user(is_staff=True)
    conv = factories.conversation_sync(owner, title="Ops")
    tap.listen(user_group(owner.id))

    conversation_member_set_by_staff(conversation_id=uuid.UUID(conv), user=owner, role=Role.VIEWER, staff_id=staff.id)

    assert role_of(conv, owner) == Role.VIEWER
    assert membership_notes(owner) == [
        (1, {"kind": "role_changed", "conversation": conv, "title": "Ops", "role": "viewer", "by": staff.id})
    ]
    assert tap.heard(2) == [
        (
            user_group(owner.id),
            {"type": "user.event", "user": owner.id, "action": "role", "conversation": conv, "role": Role.VIEWER},
        ),
        (user_group(owner.id), notification_doorbell(owner, 1)),
    ]


def test_staff_set_refuses_an_unknown_role(make_user: Any, tap: Tap) -> None:
    owner, newcomer = make_user(), make_user()
    conv = factories.conversation_sync(owner)
    tap.listen(user_group(newcomer.id))
    refused(
        "bad_request",
        lambda: conversation_member_set_by_staff(conversation_id=conv, user=newcomer, role="admin", staff_id=1),
        "role must be one of owner, member, viewer",
    )
    assert tap.heard() == []


def test_staff_set_in_a_conversation_that_does_not_exist(make_user: Any) -> None:
    user = make_user()
    before = db_state()
    with pytest.raises(Conversation.DoesNotExist):
        conversation_member_set_by_staff(conversation_id=str(uuid.uuid4()), user=user, role=Role.MEMBER, staff_id=1)
    assert db_state() == before


def test_staff_remove_any_member_the_owner_included(make_user: Any, tap: Tap) -> None:
    owner, member = make_user(), make_user()
    conv = factories.conversation_sync(owner, members=((member, Role.MEMBER),))
    tap.listen(user_group(owner.id), user_group(member.id))

    conversation_member_remove_by_staff(conversation_id=uuid.UUID(conv), user_id=owner.id)

    assert list(ConversationMember.objects.filter(conversation_id=conv).values_list("user_id", flat=True)) == [
        member.id
    ]
    assert tap.heard(1) == [
        (user_group(owner.id), {"type": "user.event", "user": owner.id, "action": "revoke", "conversation": conv})
    ]


def test_staff_remove_of_a_non_member_changes_nothing_and_revokes_harmlessly(make_user: Any, tap: Tap) -> None:
    # Revoking a subscription that does not exist does nothing on any socket; the service does not
    # look first, so the revoke goes out.
    owner, outsider = make_user(), make_user()
    conv = factories.conversation_sync(owner)
    tap.listen(user_group(outsider.id))
    before = db_state()

    conversation_member_remove_by_staff(conversation_id=conv, user_id=outsider.id)

    assert db_state() == before
    assert tap.heard(1) == [
        (user_group(outsider.id), {"type": "user.event", "user": outsider.id, "action": "revoke", "conversation": conv})
    ]


@pytest.mark.parametrize("role", [Role.OWNER, Role.MEMBER, Role.VIEWER])
def test_staff_set_a_workspace_member_with_any_role(make_user: Any, role: str) -> None:
    owner, user = make_user(), make_user()
    workspace = workspace_create(owner=owner, name="team")

    added = workspace_member_set_by_staff(workspace=workspace, user=user, role=role)
    changed = workspace_member_set_by_staff(workspace=workspace, user=owner, role=Role.VIEWER)

    assert (added.user_id, added.role, changed.user_id, changed.role) == (user.id, role, owner.id, Role.VIEWER)
    assert sorted(WorkspaceMember.objects.filter(workspace=workspace).values_list("user_id", "role")) == sorted(
        [(owner.id, Role.VIEWER), (user.id, role)]
    )


def test_staff_workspace_set_refuses_an_unknown_role(make_user: Any) -> None:
    owner, user = make_user(), make_user()
    workspace = workspace_create(owner=owner, name="team")
    refused(
        "bad_request",
        lambda: workspace_member_set_by_staff(workspace=workspace, user=user, role="admin"),
        "role must be one of owner, member, viewer",
    )


def test_staff_remove_a_workspace_member(make_user: Any) -> None:
    owner, member = make_user(), make_user()
    workspace = workspace_create(owner=owner, name="team")
    workspace_member_add(workspace=workspace, actor=owner, username=member.username, role=Role.MEMBER)

    workspace_member_remove_by_staff(workspace=workspace, user_id=owner.id)
    assert list(WorkspaceMember.objects.filter(workspace=workspace).values_list("user_id", "role")) == [
        (member.id, Role.MEMBER)
    ]
    before = db_state()
    workspace_member_remove_by_staff(workspace=workspace, user_id=owner.id)  # no longer there: nothing to do
    assert db_state() == before


# --- message_check -----------------------------------------------------------------------------------


def check(conv: str, author: Any, *, client_msg_id: str = "k1", text: str = "hi", **kwargs: Any) -> Any:
    access = conversation_for_member(user_id=author.id, conversation_id=conv)
    args = {"can_write": access.can_write, "agent": access.agent, **kwargs}
    return message_check(
        conversation_id=conv,
        author_id=author.id,
        username=author.username,
        client_msg_id=client_msg_id,
        text=text,
        **args,
    )


def test_message_check_refuses_a_viewer_before_anything_else(make_user: Any) -> None:
    owner, viewer = make_user(), make_user()
    conv = factories.conversation_sync(owner, members=((viewer, Role.VIEWER),))
    for client_msg_id, text in (("k1", "hi"), ("", ""), ("k" * 65, "x" * 100_000)):
        refused(
            "forbidden",
            lambda c=client_msg_id, t=text: check(conv, viewer, client_msg_id=c, text=t),
            "your role in this conversation does not allow sending",
        )


@pytest.mark.parametrize("client_msg_id", ["", "k" * 65])
def test_message_check_refuses_a_client_msg_id_outside_1_to_64_characters(make_user: Any, client_msg_id: str) -> None:
    owner = make_user()
    conv = factories.conversation_sync(owner)
    refused(
        "bad_request",
        lambda: check(conv, owner, client_msg_id=client_msg_id, text=""),  # the key is checked first
        "client_msg_id must be 1-64 characters",
    )


@pytest.mark.parametrize("text", ["", "   ", "\n\t \r\n"])
def test_message_check_refuses_an_empty_or_blank_text(make_user: Any, text: str) -> None:
    owner = make_user()
    conv = factories.conversation_sync(owner)
    refused("bad_request", lambda: check(conv, owner, text=text), "text must not be empty")


def test_message_check_refuses_a_text_longer_than_the_limit(make_user: Any) -> None:
    owner = make_user()
    conv = factories.conversation_sync(owner)
    limit = settings.CHAT_MAX_TEXT_CHARS
    refused(
        "too_large",
        lambda: check(conv, owner, text="x" * (limit + 1)),
        f"text is longer than {limit} characters",
    )


def test_message_check_returns_the_draft_of_a_new_key(make_user: Any) -> None:
    owner = make_user()
    conv = factories.conversation_sync(owner)
    limit = settings.CHAT_MAX_TEXT_CHARS
    before = db_state()

    # The limits are inclusive, and the text is measured (and kept) stripped.
    draft = check(conv, owner, client_msg_id="k" * 64, text="  " + "x" * limit + "\n")

    assert draft == MessageDraft(conv, owner.id, owner.username, "k" * 64, "x" * limit, "assistant", True)
    assert draft.starts_run is True
    assert db_state() == before


def test_a_draft_in_a_conversation_without_an_agent_starts_no_run(make_user: Any) -> None:
    owner = make_user()
    conv = factories.conversation_sync(owner, agent="")
    draft = check(conv, owner, text=" hello ")
    assert draft == MessageDraft(conv, owner.id, owner.username, "k1", "hello", "")
    assert draft.starts_run is False


@pytest.mark.parametrize("agent", ["assistant", ""])
def test_message_check_answers_a_resend_by_the_same_author_with_the_first_result(make_user: Any, agent: str) -> None:
    owner = make_user()
    conv = factories.conversation_sync(owner, agent=agent)
    first = factories.message_sync(conv, owner, "original", client_msg_id="k1")
    before = db_state()

    again = check(conv, owner, client_msg_id="k1", text="edited: not stored")

    assert again == SendResult(first.message_id, first.seq, True, first.run_id)
    assert (first.seq, first.duplicate) == (1, False)
    assert (first.run_id is not None) == bool(agent)
    assert db_state() == before


def test_the_same_key_from_another_member_is_another_message(make_user: Any) -> None:
    owner, member = make_user(), make_user()
    conv = factories.conversation_sync(owner, agent="", members=((member, Role.MEMBER),))
    mine = factories.message_sync(conv, owner, "mine", client_msg_id="same")

    draft = check(conv, member, client_msg_id="same", text="theirs")
    assert draft == MessageDraft(conv, member.id, member.username, "same", "theirs", "")
    theirs = message_write(draft=draft)

    assert (mine.seq, theirs.seq, theirs.duplicate) == (1, 2, False)
    assert theirs.message_id != mine.message_id
    assert sorted(
        Message.objects.filter(conversation_id=conv).values_list("author_id", "client_msg_id", "seq")
    ) == sorted([(owner.id, "same", 1), (member.id, "same", 2)])


# --- message_write / message_send --------------------------------------------------------------------


def test_message_write_stores_the_message_and_its_event_and_publishes_it(
    make_user: Any, tap: Tap, runner: RecordingRunner
) -> None:
    owner = make_user()
    conv = factories.conversation_sync(owner, agent="")
    factories.message_sync(conv, owner, "first")
    tap.listen(conversation_group(conv))

    result = message_write(draft=MessageDraft(conv, owner.id, owner.username, "k2", "second", ""))

    assert result == SendResult(result.message_id, 2, False, None)
    message = Message.objects.get(id=result.message_id)
    assert (str(message.conversation_id), message.author_id, message.author_kind) == (conv, owner.id, AuthorKind.USER)
    assert (message.client_msg_id, message.text, message.seq, message.run_id) == ("k2", "second", 2, None)
    event = log(conv)[-1]
    assert (event.seq, event.type) == (2, "message")
    assert event.data == message_event_data(message, username=owner.username)
    assert event.data["author"] == {"id": owner.id, "username": owner.username, "kind": "user"}
    assert event.data["run_id"] is None
    assert Conversation.objects.filter(id=conv).values_list("last_seq", flat=True).get() == 2
    assert not AgentRun.objects.exists()
    assert runner.told == []  # no agent: no run, nobody to wake
    assert tap.heard(1) == [(conversation_group(conv), event_doorbell(event))]
    assert tap.buffered(conversation_stream(conv))[-1] == (2, event.frame())


def test_message_write_in_an_agent_conversation_queues_a_run_and_wakes_the_runner(
    make_user: Any, runner: RecordingRunner
) -> None:
    owner = make_user()
    conv = factories.conversation_sync(owner, agent="helper")

    result = message_write(draft=MessageDraft(conv, owner.id, owner.username, "k1", "what is 2+2?", "helper", True))

    run = AgentRun.objects.get()
    assert result == SendResult(result.message_id, 1, False, str(run.id))
    assert (str(run.conversation_id), str(run.trigger_message_id), run.requested_by_id) == (
        conv,
        result.message_id,
        owner.id,
    )
    assert (run.agent, run.status, run.started_at, run.worker_id, run.cancel_requested) == (
        "helper",
        RunStatus.QUEUED,
        None,
        "",
        False,
    )
    # The message event itself carries no run id; the run is found by its trigger message.
    assert [(e.seq, e.type, e.data["run_id"]) for e in log(conv)] == [(1, "message", None)]
    assert Message.objects.filter(id=result.message_id).values_list("run_id", flat=True).get() is None
    assert runner.told == ["wake"]


def test_two_drafts_of_one_key_race_and_the_loser_gets_the_winners_result(
    make_user: Any, runner: RecordingRunner, tap: Tap
) -> None:
    """Two sockets of one user checked the same key before either wrote: the unique key decides."""
    owner = make_user()
    conv = factories.conversation_sync(owner)
    first_draft, second_draft = check(conv, owner, text="one"), check(conv, owner, text="one")
    assert first_draft == second_draft
    winner = message_write(draft=first_draft)
    tap.listen(conversation_group(conv))
    runner.told.clear()
    before = db_state()

    loser = message_write(draft=second_draft)

    assert loser == SendResult(winner.message_id, 1, True, winner.run_id)
    assert db_state() == before
    assert runner.told == []
    assert tap.heard() == []


def test_message_write_that_fails_to_commit_leaves_nothing_and_publishes_nothing(
    make_user: Any, runner: RecordingRunner, tap: Tap
) -> None:
    # An author id that names no user: the foreign keys are checked at commit, after the event was
    # appended and the run queued, and with no earlier message to answer with the error stands.
    owner = make_user()
    conv = factories.conversation_sync(owner)
    tap.listen(conversation_group(conv))
    before = db_state()

    with pytest.raises(IntegrityError):
        message_write(draft=MessageDraft(conv, 10**9, "ghost", "k1", "boo", "assistant"))

    assert db_state() == before
    assert runner.told == []
    assert tap.heard() == []


def test_message_send_checks_then_writes_and_reads_the_agent_itself(make_user: Any, runner: RecordingRunner) -> None:
    owner = make_user()
    conv = factories.conversation_sync(owner)

    sent = message_send(
        conversation_id=conv,
        author_id=owner.id,
        username=owner.username,
        client_msg_id="a",
        text=" hi ",
        can_write=True,
    )

    run = AgentRun.objects.get()
    assert sent == SendResult(sent.message_id, 1, False, str(run.id))
    assert (run.agent, str(run.trigger_message_id)) == ("assistant", sent.message_id)
    assert Message.objects.filter(id=sent.message_id).values_list("text", "seq").get() == ("hi", 1)
    assert runner.told == ["wake"]

    # A resend answers without writing or waking anything.
    before = db_state()
    again = message_send(
        conversation_id=conv, author_id=owner.id, username=owner.username, client_msg_id="a", text="hi", can_write=True
    )
    assert again == SendResult(sent.message_id, 1, True, str(run.id))
    assert db_state() == before
    assert runner.told == ["wake"]


def test_message_send_trusts_an_agent_the_caller_resolved(make_user: Any, runner: RecordingRunner) -> None:
    owner = make_user()
    conv = factories.conversation_sync(owner)  # its agent is "assistant"

    sent = message_send(
        conversation_id=conv,
        author_id=owner.id,
        username=owner.username,
        client_msg_id="a",
        text="hi",
        can_write=True,
        agent="",
    )

    assert sent.run_id is None
    assert not AgentRun.objects.exists()
    assert runner.told == []


def test_message_send_refusals_write_nothing(make_user: Any, runner: RecordingRunner) -> None:
    owner, viewer = make_user(), make_user()
    conv = factories.conversation_sync(owner, members=((viewer, Role.VIEWER),))

    def send(author: Any, can_write: bool, client_msg_id: str, text: str) -> SendResult:
        return message_send(
            conversation_id=conv,
            author_id=author.id,
            username=author.username,
            client_msg_id=client_msg_id,
            text=text,
            can_write=can_write,
        )

    refused("forbidden", lambda: send(viewer, False, "k", "hi"))
    refused("bad_request", lambda: send(owner, True, "", "hi"))
    refused("bad_request", lambda: send(owner, True, "k", "  "))
    refused("too_large", lambda: send(owner, True, "k", "x" * (settings.CHAT_MAX_TEXT_CHARS + 1)))
    assert runner.told == []


def test_message_send_to_a_conversation_that_does_not_exist(make_user: Any) -> None:
    owner = make_user()
    before = db_state()
    with pytest.raises(Conversation.DoesNotExist):
        message_send(
            conversation_id=str(uuid.uuid4()),
            author_id=owner.id,
            username=owner.username,
            client_msg_id="k",
            text="hi",
            can_write=True,
        )
    assert db_state() == before


# --- append_event ------------------------------------------------------------------------------------


def test_append_event_refuses_to_run_outside_a_transaction(make_user: Any, tap: Tap) -> None:
    owner = make_user()
    conv = factories.conversation_sync(owner, agent="")
    tap.listen(conversation_group(conv))
    before = db_state()

    with pytest.raises(RuntimeError, match=r"append_event must be called inside transaction\.atomic\(\)"):
        append_event(conversation_id=conv, type="message", data={"text": "loose"})

    assert db_state() == before
    assert tap.heard() == []


def test_append_event_returns_the_stored_event_and_publishes_it_once_committed(make_user: Any, tap: Tap) -> None:
    owner = make_user()
    conv = factories.conversation_sync(owner, agent="")
    run_id = uuid.uuid4()
    tap.listen(conversation_group(conv))

    with transaction.atomic():
        first = append_event(
            conversation_id=uuid.UUID(conv), type="agent_thinking", data={"é": "ü", "n": [1]}, run_id=run_id
        )
        second = append_event(conversation_id=conv, type="message", data={"text": "x"})
        # Nothing is published before the commit.
        assert tap.pubsub.get_message(timeout=SILENCE_S) is None

    rows = list(Event.objects.filter(conversation_id=conv).order_by("seq"))
    assert [(r.seq, r.type, r.data, r.run_id) for r in rows] == [
        (1, "agent_thinking", {"é": "ü", "n": [1]}, run_id),
        (2, "message", {"text": "x"}, None),
    ]
    for event, row in zip((first, second), rows, strict=True):
        assert event == StoredEvent.from_row(row)
        assert event.conversation_id == conv
        assert event.frame() == StoredEvent.from_row(row).frame()
        assert json.loads(event.encoded()) == StoredEvent.from_row(row).frame()
        assert event.encoded() is event.encoded()  # encoded once for every receiver
    heard = tap.heard(2)
    assert [group for group, _ in heard] == [conversation_group(conv)] * 2
    assert [doorbell for _, doorbell in heard] == [event_doorbell(first), event_doorbell(second)]
    assert tap.buffered(conversation_stream(conv)) == [(1, first.frame()), (2, second.frame())]


def test_append_event_seqs_are_gap_free_and_increasing_across_many_appends(make_user: Any) -> None:
    owner = make_user()
    conv = factories.conversation_sync(owner, agent="")
    seqs = []
    for batch in range(10):
        with transaction.atomic():
            seqs += [append_event(conversation_id=conv, type="t", data={"b": batch, "i": i}).seq for i in range(5)]

    assert seqs == list(range(1, 51))
    assert list(Event.objects.filter(conversation_id=conv).order_by("seq").values_list("seq", flat=True)) == seqs
    assert Conversation.objects.filter(id=conv).values_list("last_seq", flat=True).get() == 50


def racing_writers(writers: int, write: Callable[[int], list[int]]) -> dict[int, list[int]]:
    """Run `write(n)` for n in range(writers), each on its own thread (so its own database
    connection), all released at once; returns each writer's seqs, and fails on any writer's error."""
    taken: dict[int, list[int]] = {}
    failures: list[BaseException] = []
    start = threading.Barrier(writers)

    def run(writer: int) -> None:
        try:
            start.wait(timeout=10)
            taken[writer] = write(writer)
        except BaseException as exc:  # reported by the test thread below
            failures.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(w,)) for w in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []
    return taken


def test_append_event_seqs_stay_gap_free_under_concurrent_writers(make_user: Any) -> None:
    """Writers on their own connections take the conversation's row lock in turn."""
    owner = make_user()
    conv = factories.conversation_sync(owner, agent="")
    writers, appends = 4, 10

    def write(writer: int) -> list[int]:
        mine = []
        for i in range(appends):
            with transaction.atomic():
                mine.append(append_event(conversation_id=conv, type="t", data={"w": writer, "i": i}).seq)
        return mine

    taken = racing_writers(writers, write)
    assert all(mine == sorted(mine) for mine in taken.values())
    assert sorted(seq for mine in taken.values() for seq in mine) == list(range(1, writers * appends + 1))
    rows = Event.objects.filter(conversation_id=conv).order_by("seq").values_list("seq", "data")
    assert {(row["w"], row["i"]): seq for seq, row in rows} == {
        (w, i): taken[w][i] for w in range(writers) for i in range(appends)
    }


def test_a_rolled_back_append_takes_no_seq_and_publishes_nothing(make_user: Any, tap: Tap) -> None:
    owner = make_user()
    conv = factories.conversation_sync(owner, agent="")
    tap.listen(conversation_group(conv))

    class Abandoned(Exception):
        pass

    def abandoned_transaction() -> None:
        with transaction.atomic():
            append_event(conversation_id=conv, type="message", data={"text": "never"})
            raise Abandoned

    with pytest.raises(Abandoned):
        abandoned_transaction()

    assert not Event.objects.exists()
    assert tap.heard() == []
    with transaction.atomic():
        assert append_event(conversation_id=conv, type="message", data={"text": "kept"}).seq == 1


def test_append_event_to_a_conversation_that_does_not_exist(make_user: Any) -> None:
    make_user()
    before = db_state()
    with pytest.raises(Conversation.DoesNotExist), transaction.atomic():
        append_event(conversation_id=uuid.uuid4(), type="message", data={})
    assert db_state() == before


# --- notification_create -----------------------------------------------------------------------------


def test_notifications_take_per_user_increasing_seqs_and_keep_their_data(make_user: Any, tap: Tap) -> None:
    alice, bob = make_user(), make_user()
    tap.forget(alice, bob)
    tap.listen(user_group(alice.id), user_group(bob.id))

    made = [
        notification_create(user_id=alice.id, data={"kind": "a", "n": 1}),
        notification_create(user_id=bob.id, data={"kind": "b"}),
        notification_create(user_id=alice.id, data={"kind": "a", "n": 2, "nested": {"x": [1, 2]}}),
    ]

    assert [(n.user_id, n.seq) for n in made] == [(alice.id, 1), (bob.id, 1), (alice.id, 2)]
    assert notifications(alice) == [(1, {"kind": "a", "n": 1}), (2, {"kind": "a", "n": 2, "nested": {"x": [1, 2]}})]
    assert notifications(bob) == [(1, {"kind": "b"})]
    assert dict(User.objects.filter(id__in=[alice.id, bob.id]).values_list("id", "notification_seq")) == {
        alice.id: 2,
        bob.id: 1,
    }
    assert tap.heard(3) == [
        (user_group(alice.id), notification_doorbell(alice, 1)),
        (user_group(bob.id), notification_doorbell(bob, 1)),
        (user_group(alice.id), notification_doorbell(alice, 2)),
    ]
    assert notification_doorbell(alice, 2)["frame"] == {
        "type": "notification",
        "seq": 2,
        "ts": rfc3339(made[2].created_at),
        "data": {"kind": "a", "n": 2, "nested": {"x": [1, 2]}, "created_at": rfc3339(made[2].created_at)},
    }
    assert tap.buffered(user_stream(alice.id)) == [
        (1, notification_doorbell(alice, 1)["frame"]),
        (2, notification_doorbell(alice, 2)["frame"]),
    ]


def test_notification_seqs_stay_gap_free_under_concurrent_writers(make_user: Any) -> None:
    """Writers on their own connections take the user's row lock in turn."""
    user = make_user()
    writers, notes = 4, 5

    def write(writer: int) -> list[int]:
        return [notification_create(user_id=user.id, data={"w": writer, "i": i}).seq for i in range(notes)]

    taken = racing_writers(writers, write)
    assert all(mine == sorted(mine) for mine in taken.values())
    assert sorted(seq for mine in taken.values() for seq in mine) == list(range(1, writers * notes + 1))
    assert {(d["w"], d["i"]): seq for seq, d in notifications(user)} == {
        (w, i): taken[w][i] for w in range(writers) for i in range(notes)
    }
    assert User.objects.filter(id=user.id).values_list("notification_seq", flat=True).get() == writers * notes


@pytest.mark.parametrize("tier", [Tier.FREE, Tier.PRO, Tier.ENTERPRISE])
def test_a_users_notification_buffer_lives_as_long_as_their_tier_says(make_user: Any, tap: Tap, tier: str) -> None:
    user = make_user(tier=tier)
    tap.forget(user)
    notification_create(user_id=user.id, data={"kind": "x"})
    expires_in = int(limits_for(tier).buffer_max_age_s) + 1
    assert tap.ttl(user_stream(user.id)) in (expires_in - 1, expires_in)


def test_a_rolled_back_notification_takes_no_seq_and_is_not_pushed(make_user: Any, tap: Tap) -> None:
    user = make_user()
    tap.listen(user_group(user.id))

    class Abandoned(Exception):
        pass

    def abandoned_transaction() -> None:
        with transaction.atomic():
            notification_create(user_id=user.id, data={"kind": "never"})
            raise Abandoned

    with pytest.raises(Abandoned):
        abandoned_transaction()

    assert notifications(user) == []
    assert User.objects.filter(id=user.id).values_list("notification_seq", flat=True).get() == 0
    assert tap.heard() == []
    assert notification_create(user_id=user.id, data={"kind": "kept"}).seq == 1


def test_a_notification_for_a_user_that_does_not_exist(make_user: Any) -> None:
    make_user()
    before = db_state()
    with pytest.raises(User.DoesNotExist):
        notification_create(user_id=10**9, data={"kind": "x"})
    assert db_state() == before


# --- accounts ----------------------------------------------------------------------------------------


def test_user_deactivate_makes_the_user_inactive_and_closes_their_sockets(make_user: Any, tap: Tap) -> None:
    user, other = make_user(), make_user()
    conv = factories.conversation_sync(user, agent="")
    tap.listen(user_group(user.id), user_group(other.id))

    assert user_deactivate(user_id=user.id) is None

    assert User.objects.filter(id=user.id).values_list("is_active", flat=True).get() is False
    assert user_is_active(user_id=user.id) is False
    assert user_is_active(user_id=other.id) is True
    with pytest.raises(NotFound):  # their memberships stay, but they reach nothing
        conversation_for_member(user_id=user.id, conversation_id=conv)
    assert ConversationMember.objects.filter(user=user).count() == 1
    assert tap.heard(1) == [
        (
            user_group(user.id),
            # recheck: each token socket asks whether its identity stands (a late close spares new logins)
            {"type": "user.event", "user": user.id, "action": "close", "code": CLOSE_DISABLED, "recheck": True},
        )
    ]
    assert CLOSE_DISABLED == 4403


def test_user_deactivate_inside_a_transaction_closes_the_sockets_only_once_it_commits(make_user: Any, tap: Tap) -> None:
    user = make_user()
    tap.listen(user_group(user.id))

    with transaction.atomic():
        user_deactivate(user_id=user.id)
        assert tap.pubsub.get_message(timeout=SILENCE_S) is None

    assert tap.heard(1) == [
        (
            user_group(user.id),
            # recheck: each token socket asks whether its identity stands (a late close spares new logins)
            {"type": "user.event", "user": user.id, "action": "close", "code": CLOSE_DISABLED, "recheck": True},
        )
    ]


def test_logging_out_closes_the_users_sockets(make_user: Any, tap: Tap) -> None:
    user = make_user()
    tap.listen(user_group(user.id))

    anonymous = HttpClient()
    anonymous.logout()  # nobody was logged in: nobody's sockets to close
    assert tap.heard() == []

    client = HttpClient()
    client.force_login(user)
    client.logout()

    assert tap.heard(1) == [
        (
            user_group(user.id),
            # A Django logout revokes no token: every socket closes, without a recheck.
            {"type": "user.event", "user": user.id, "action": "close", "code": CLOSE_LOGGED_OUT, "recheck": False},
        )
    ]
    assert CLOSE_LOGGED_OUT == 4401
    assert user_is_active(user_id=user.id) is True


def test_membership_revoked_outside_a_transaction_is_told_at_once(make_user: Any, tap: Tap) -> None:
    user = make_user()
    conv = str(uuid.uuid4())
    tap.listen(user_group(user.id))

    membership_revoked(user_id=user.id, conversation_id=conv)

    assert tap.heard(1) == [
        (user_group(user.id), {"type": "user.event", "user": user.id, "action": "revoke", "conversation": conv})
    ]
