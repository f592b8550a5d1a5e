"""Managing conversations from the page (docs/protocol.md §7 "Workspaces and conversation visibility"):
rename, visibility, soft delete and its purge, per-member archive, roles and the last owner, leaving,
joining an open conversation of one's workspace; the sidebar and the joinable list; the REST
endpoints over them, and what members' sockets see live. Real PostgreSQL and Redis."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.core.management import call_command
from django.db import connection, transaction
from django.test import Client as HttpClient
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from chat import conversation_directory as directory
from chat import selectors, wire
from chat.errors import NotFound, ServiceError
from chat.models import Conversation, ConversationMember, Event, Message, MessageFeedback, Role
from chat.services import conversation_admin
from chat.services.conversation_admin import (
    conversation_archive,
    conversation_delete,
    conversation_join,
    conversation_member_role_set,
    conversation_rename,
    conversation_visibility_set,
    conversations_purge_deleted,
)
from chat.services.conversations import conversation_member_remove, workspace_create, workspace_member_add
from chat.services.events import append_event
from tests.support import factories
from tests.support.waiting import consistently
from tests.support.ws import connected, subscribed_client

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fast_password_hashing")]


def api_for(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def events_of(conv: str, *types: str) -> list[dict[str, Any]]:
    """The stored events of these types, each checked against its wire schema."""
    rows = Event.objects.filter(conversation_id=conv, type__in=types).order_by("seq")
    for row in rows:
        wire.decode_event_data(row.type, row.data)
    return [{"type": row.type, **row.data} for row in rows]


def refused(code: str, call: Any) -> ServiceError:
    with pytest.raises(ServiceError) as raised:
        call()
    assert raised.value.code == code, raised.value.message
    return raised.value


def ref(user: Any) -> dict[str, Any]:
    return {"id": user.id, "username": user.username}


@pytest.fixture
def team(make_user: Any) -> dict[str, Any]:
    """A workspace (owner, colleague, reader as viewer; outsider elsewhere) and a private conversation
    of the owner with a member and a viewer."""
    owner, member, viewer, colleague, reader, outsider = (make_user() for _ in range(6))
    workspace = workspace_create(owner=owner, name="team")
    for user in (member, viewer, colleague):
        workspace_member_add(workspace=workspace, actor=owner, username=user.username, role=Role.MEMBER)
    workspace_member_add(workspace=workspace, actor=owner, username=reader.username, role=Role.VIEWER)
    conv = factories.conversation_sync(
        owner, agent="", title="Plans", workspace_id=workspace.id, members=((member, "member"), (viewer, "viewer"))
    )
    return {
        "owner": owner,
        "member": member,
        "viewer": viewer,
        "colleague": colleague,
        "reader": reader,
        "outsider": outsider,
        "workspace": workspace,
        "conv": conv,
    }


# --- services ---------------------------------------------------------------------------------------------


def test_rename_and_visibility_are_the_owners_and_tell_the_members(team: dict[str, Any]) -> None:
    owner, conv = team["owner"], team["conv"]
    access = conversation_rename(conversation_id=conv, actor_id=owner.id, title="  Launch  ")
    assert (access.title, access.visibility) == ("Launch", "private")
    conversation_visibility_set(conversation_id=conv, actor_id=owner.id, visibility="open")
    conversation_rename(conversation_id=conv, actor_id=owner.id, title="Launch")  # unchanged: no event
    assert events_of(conv, "conversation_updated") == [
        {"type": "conversation_updated", "title": "Launch", "visibility": "private", "by": ref(owner)},
        {"type": "conversation_updated", "title": "Launch", "visibility": "open", "by": ref(owner)},
    ]
    for who in ("member", "viewer"):
        actor = team[who].id
        refused("forbidden", lambda: conversation_rename(conversation_id=conv, actor_id=actor, title="x"))  # noqa: B023
    for who in ("colleague", "outsider"):
        with pytest.raises(NotFound):
            conversation_rename(conversation_id=conv, actor_id=team[who].id, title="x")
    for title in ("", "   ", "x" * 201):
        refused("bad_request", lambda: conversation_rename(conversation_id=conv, actor_id=owner.id, title=title))  # noqa: B023
    refused(
        "bad_request", lambda: conversation_visibility_set(conversation_id=conv, actor_id=owner.id, visibility="public")
    )
    assert Conversation.objects.values_list("title", "visibility").get(id=conv) == ("Launch", "open")


def test_delete_hides_it_from_everybody_and_the_purge_removes_it_after_retention(
    team: dict[str, Any], settings: Any
) -> None:
    owner, conv = team["owner"], team["conv"]
    factories.message_sync(conv, owner, "hello")
    refused("forbidden", lambda: conversation_delete(conversation_id=conv, actor_id=team["member"].id))
    conversation_delete(conversation_id=conv, actor_id=owner.id)
    for who in ("owner", "member", "viewer"):
        with pytest.raises(NotFound):
            selectors.conversation_for_member(user_id=team[who].id, conversation_id=conv)
        assert conv not in [i.id for i in directory.sidebar(user_id=team[who].id)]
        assert conv not in [m.conversation_id for m in selectors.conversations_for_user(user_id=team[who].id)]
    with pytest.raises(NotFound):  # a second delete finds nothing
        conversation_delete(conversation_id=conv, actor_id=owner.id)
    assert Conversation.objects.values_list("deleted_by", flat=True).get(id=conv) == owner.id

    settings.CONVERSATION_DELETE_RETENTION_DAYS = 30
    deleted_at = Conversation.objects.values_list("deleted_at", flat=True).get(id=conv)
    assert deleted_at is not None
    assert conversations_purge_deleted(deleted_at + timedelta(days=29)) == 0
    assert Conversation.objects.filter(id=conv).exists()
    live = factories.conversation_sync(owner, agent="", title="live")
    Conversation.objects.filter(id=live).update(created_at=deleted_at - timedelta(days=400))
    assert conversations_purge_deleted(deleted_at + timedelta(days=30, seconds=1)) == 1
    assert not Conversation.objects.filter(id=conv).exists()
    assert not Event.objects.filter(conversation_id=conv).exists()
    assert not Message.objects.filter(conversation_id=conv).exists()
    assert Conversation.objects.filter(id=live).exists()  # never deleted: never purged


def test_the_purge_command_takes_every_batch(team: dict[str, Any], capsys: Any) -> None:
    owner = team["owner"]
    convs = [factories.conversation_sync(owner, agent="", title=f"old {i}") for i in range(3)]
    for conv in convs:
        conversation_delete(conversation_id=conv, actor_id=owner.id)
    Conversation.objects.filter(id__in=convs).update(deleted_at=timezone.now() - timedelta(days=31))
    call_command("purge_deleted_conversations")
    assert "purged 3 conversation(s)" in capsys.readouterr().out
    assert not Conversation.objects.filter(id__in=convs).exists()
    assert Conversation.objects.filter(id=team["conv"]).exists()


def test_archive_is_the_members_own(team: dict[str, Any]) -> None:
    conv, member, owner = team["conv"], team["member"], team["owner"]
    assert conversation_archive(conversation_id=conv, user_id=member.id, archived=True) is True
    assert conv not in [i.id for i in directory.sidebar(user_id=member.id)]
    archived = directory.sidebar(user_id=member.id, archived=True)
    assert [(i.id, i.archived) for i in archived] == [(conv, True)]
    assert [i.id for i in directory.sidebar(user_id=owner.id)] == [conv]  # the owner's sidebar is unchanged
    conversation_archive(conversation_id=conv, user_id=team["viewer"].id, archived=True)  # viewers too
    conversation_archive(conversation_id=conv, user_id=member.id, archived=False)
    assert [i.archived for i in directory.sidebar(user_id=member.id)] == [False]
    with pytest.raises(NotFound):
        conversation_archive(conversation_id=conv, user_id=team["outsider"].id, archived=True)
    assert not events_of(conv, "conversation_updated")  # nobody else is told


def test_roles_change_but_the_last_owner_stays(team: dict[str, Any]) -> None:
    conv, owner, member, viewer = team["conv"], team["owner"], team["member"], team["viewer"]
    refused(
        "conflict",
        lambda: conversation_member_role_set(conversation_id=conv, actor_id=owner.id, user_id=owner.id, role="member"),
    )
    refused(
        "forbidden",
        lambda: conversation_member_role_set(
            conversation_id=conv, actor_id=member.id, user_id=viewer.id, role="member"
        ),
    )
    refused(
        "bad_request",
        lambda: conversation_member_role_set(conversation_id=conv, actor_id=owner.id, user_id=viewer.id, role="god"),
    )
    refused(
        "not_found",
        lambda: conversation_member_role_set(
            conversation_id=conv, actor_id=owner.id, user_id=team["colleague"].id, role="member"
        ),
    )
    conversation_member_role_set(conversation_id=conv, actor_id=owner.id, user_id=viewer.id, role="member")
    conversation_member_role_set(conversation_id=conv, actor_id=owner.id, user_id=member.id, role="owner")
    # Two owners now: the first may step down, and then the other is the last.
    conversation_member_role_set(conversation_id=conv, actor_id=owner.id, user_id=owner.id, role="member")
    refused(
        "conflict",
        lambda: conversation_member_role_set(
            conversation_id=conv, actor_id=member.id, user_id=member.id, role="viewer"
        ),
    )
    roles = dict(ConversationMember.objects.filter(conversation_id=conv).values_list("user_id", "role"))
    assert roles == {owner.id: "member", member.id: "owner", viewer.id: "member"}
    assert [(e["user"]["id"], e["role"], e["by"]["id"]) for e in events_of(conv, "member_role_changed")] == [
        (viewer.id, "member", owner.id),
        (member.id, "owner", owner.id),
        (owner.id, "member", owner.id),
    ]


def test_leaving_and_removing(team: dict[str, Any]) -> None:
    conv, owner, member, viewer = team["conv"], team["owner"], team["member"], team["viewer"]
    refused("conflict", lambda: conversation_member_remove(conversation_id=conv, actor_id=owner.id, user_id=owner.id))
    refused(
        "forbidden", lambda: conversation_member_remove(conversation_id=conv, actor_id=member.id, user_id=viewer.id)
    )
    conversation_member_remove(conversation_id=conv, actor_id=viewer.id, user_id=viewer.id)  # leaves
    conversation_member_role_set(conversation_id=conv, actor_id=owner.id, user_id=member.id, role="owner")
    conversation_member_remove(conversation_id=conv, actor_id=owner.id, user_id=owner.id)  # not the last owner now
    assert list(ConversationMember.objects.filter(conversation_id=conv).values_list("user_id", "role")) == [
        (member.id, "owner")
    ]
    assert events_of(conv, "member_left") == [
        {"type": "member_left", "user": ref(viewer), "by": ref(viewer)},
        {"type": "member_left", "user": ref(owner), "by": ref(owner)},
    ]
    with pytest.raises(NotFound):
        selectors.conversation_for_member(user_id=owner.id, conversation_id=conv)


def test_joining_open_conversations_of_ones_workspace(team: dict[str, Any]) -> None:
    conv, owner = team["conv"], team["owner"]
    for who in ("colleague", "reader", "outsider"):  # private: not joinable
        with pytest.raises(NotFound):
            conversation_join(conversation_id=conv, user_id=team[who].id)
    for who in ("colleague", "reader"):  # nor listed
        assert directory.open_conversations(user_id=team[who].id, workspace_id=team["workspace"].id) == []
    conversation_visibility_set(conversation_id=conv, actor_id=owner.id, visibility="open")
    listed = directory.open_conversations(user_id=team["colleague"].id, workspace_id=team["workspace"].id)
    assert [(c.id, c.title, c.members) for c in listed] == [(conv, "Plans", 3)]
    assert directory.open_conversations(user_id=team["colleague"].id, workspace_id=team["workspace"].id, q="lan")
    assert not directory.open_conversations(user_id=team["colleague"].id, workspace_id=team["workspace"].id, q="zz")
    assert directory.open_conversations(user_id=owner.id, workspace_id=team["workspace"].id) == []  # already in
    with pytest.raises(NotFound):
        directory.open_conversations(user_id=team["outsider"].id, workspace_id=team["workspace"].id)

    assert conversation_join(conversation_id=conv, user_id=team["colleague"].id).role == "member"
    assert conversation_join(conversation_id=conv, user_id=team["reader"].id).role == "viewer"
    assert conversation_join(conversation_id=conv, user_id=team["colleague"].id).role == "member"  # again: no-op
    with pytest.raises(NotFound):
        conversation_join(conversation_id=conv, user_id=team["outsider"].id)
    assert [(e["user"]["id"], e["role"], e["by"]["id"]) for e in events_of(conv, "member_joined")] == [
        (team["colleague"].id, "member", team["colleague"].id),
        (team["reader"].id, "viewer", team["reader"].id),
    ]
    conversation_delete(conversation_id=conv, actor_id=owner.id)
    with pytest.raises(NotFound):  # deleted: gone for joiners too
        conversation_join(conversation_id=conv, user_id=team["outsider"].id)
    assert directory.open_conversations(user_id=team["member"].id, workspace_id=team["workspace"].id) == []


# --- the sidebar ------------------------------------------------------------------------------------------


def test_sidebar_order_search_unread_preview_and_paging(team: dict[str, Any], make_user: Any) -> None:
    owner, member = team["owner"], team["member"]
    older = team["conv"]
    factories.conversation_sync(member, agent="", title="Quiet corner")  # no event at all
    busy = factories.conversation_sync(owner, agent="", title="Busy plans", members=((member, "member"),))
    factories.message_sync(older, owner, "first")
    for i in range(3):
        factories.message_sync(busy, owner, f"busy {i} " + "x" * 200)
    gone = factories.message_sync(busy, owner, "regret")
    Message.objects.filter(id=gone.message_id).update(text="", deleted_at=timezone.now())  # as a delete leaves it

    items = directory.sidebar(user_id=member.id)
    assert [i.title for i in items] == ["Busy plans", "Plans", "Quiet corner"]
    top = items[0]
    assert (top.unread, top.role, top.visibility, top.workspace_name) == (
        4,
        "member",
        "private",
        f"{owner.username}'s workspace",
    )
    assert top.last_message is not None
    assert (top.last_message.preview, top.last_message.deleted, top.last_message.author) == (
        "message deleted",
        True,
        owner.username,
    )
    plans = items[1]
    assert plans.last_message is not None
    assert plans.last_message.preview == "first"
    assert plans.workspace_name == "team"
    assert plans.head_seq == 1
    assert items[2].last_message is None
    assert items[2].role == "owner"

    assert [i.title for i in directory.sidebar(user_id=member.id, q="PLANS")] == ["Busy plans", "Plans"]
    assert [i.title for i in directory.sidebar(user_id=member.id, workspace_id=team["workspace"].id)] == ["Plans"]
    assert directory.sidebar(user_id=member.id, workspace_id=uuid.uuid4()) == []
    first = directory.sidebar(user_id=member.id, limit=2)
    rest = directory.sidebar(user_id=member.id, limit=2, before_activity=first[-1].last_activity_at)
    assert [i.title for i in first + rest] == ["Busy plans", "Plans", "Quiet corner"]

    # The cost does not grow with the list.
    with CaptureQueriesContext(connection) as few:
        directory.sidebar(user_id=member.id)
    for n in range(8):
        conv = factories.conversation_sync(owner, agent="", title=f"more {n}", members=((member, "member"),))
        factories.message_sync(conv, owner, "hi")
    with CaptureQueriesContext(connection) as many:
        assert len(directory.sidebar(user_id=member.id)) == 11
    assert len(many.captured_queries) == len(few.captured_queries) == 1


def test_a_deleted_accounts_last_message_is_never_the_agents(team: dict[str, Any], make_user: Any) -> None:
    owner, leaver = team["owner"], make_user()
    conv = factories.conversation_sync(owner, agent="assistant", agent_mode="off", members=((leaver, "member"),))
    factories.message_sync(conv, leaver, "bye")
    leaver.delete()
    last = directory.sidebar(user_id=owner.id, q="t")[0].last_message
    assert last is not None
    assert (last.author_id, last.author, last.kind, last.preview) == (None, "deleted user", "user", "bye")


# --- REST -------------------------------------------------------------------------------------------------


def test_rest_list_validates_its_query_and_lists_the_sidebar(team: dict[str, Any]) -> None:
    api = api_for(team["member"])
    for bad in ("q=" + "x" * 101, "archived=maybe", "workspace=nope", "limit=0", "limit=201", "before=yesterday"):
        assert api.get(f"/api/conversations/?{bad}").status_code == 400, bad
    listed = api.get("/api/conversations/").json()
    assert [i["id"] for i in listed] == [team["conv"]]
    item = listed[0]
    assert {"id", "title", "workspace", "agent", "role", "head_seq"} <= set(item)
    assert (item["workspace"], item["workspace_name"], item["visibility"], item["archived"]) == (
        str(team["workspace"].id),
        "team",
        "private",
        False,
    )
    api.patch(f"/api/conversations/{team['conv']}/", {"archived": True}, format="json")
    assert api.get("/api/conversations/").json() == []
    assert [i["id"] for i in api.get("/api/conversations/?archived=1&q=plan").json()] == [team["conv"]]


def test_rest_patch_delete_and_members(team: dict[str, Any]) -> None:
    conv, owner, member, viewer = team["conv"], team["owner"], team["member"], team["viewer"]
    url = f"/api/conversations/{conv}/"
    as_owner, as_member = api_for(owner), api_for(member)
    refused_rest = as_member.patch(url, {"title": "mine now"}, format="json")
    assert (refused_rest.status_code, refused_rest.json()["error"]["code"]) == (403, "forbidden")
    assert as_member.patch(url, {"title": "x", "archived": True}, format="json").status_code == 403
    assert not selectors.member_archived(conversation_id=conv, user_id=member.id)  # nothing half-done
    assert api_for(team["colleague"]).patch(url, {"title": "x"}, format="json").status_code == 404
    assert as_owner.patch(url, {}, format="json").status_code == 400
    assert as_owner.patch(url, {"visibility": "public"}, format="json").status_code == 400
    assert as_owner.patch(url, {"title": "   "}, format="json").status_code == 400
    changed = as_owner.patch(url, {"title": " Renamed ", "visibility": "open"}, format="json")
    assert changed.status_code == 200
    assert (changed.json()["title"], changed.json()["visibility"], changed.json()["archived"]) == (
        "Renamed",
        "open",
        False,
    )
    archived = as_member.patch(url, {"archived": True}, format="json")
    assert archived.status_code == 200
    assert archived.json()["archived"] is True

    members = as_member.get(f"{url}members/").json()
    assert {(m["user"]["username"], m["role"]) for m in members} == {
        (owner.username, "owner"),
        (member.username, "member"),
        (viewer.username, "viewer"),
    }
    role_url = f"{url}members/{viewer.id}/"
    assert as_member.patch(role_url, {"role": "member"}, format="json").status_code == 403
    assert as_owner.patch(role_url, {"role": "boss"}, format="json").status_code == 400
    assert as_owner.patch(f"{url}members/abc/", {"role": "member"}, format="json").status_code == 404
    assert as_owner.patch(f"{url}members/{team['outsider'].id}/", {"role": "member"}, format="json").status_code == 404
    promoted = as_owner.patch(role_url, {"role": "member"}, format="json")
    assert promoted.status_code == 200
    assert promoted.json()["role"] == "member"
    last_owner = as_owner.patch(f"{url}members/{owner.id}/", {"role": "member"}, format="json")
    assert last_owner.status_code == 409
    assert last_owner.json()["error"]["code"] == "conflict"
    assert as_owner.delete(f"{url}members/{owner.id}/").status_code == 409
    assert as_member.delete(f"{url}members/{viewer.id}/").status_code == 403
    assert as_owner.delete(f"{url}members/{viewer.id}/").status_code == 204
    assert as_member.delete(f"{url}members/{member.id}/").status_code == 204  # leaves
    assert as_member.get(url).status_code == 404

    assert as_member.delete(url).status_code == 404  # no longer a member
    assert api_for(viewer).delete(url).status_code == 404
    assert as_owner.delete(url).status_code == 204
    assert as_owner.get(url).status_code == 404
    assert as_owner.get(f"{url}events/").status_code == 404
    assert as_owner.delete(url).status_code == 404


def test_rest_create_open_and_join(team: dict[str, Any]) -> None:
    ws = str(team["workspace"].id)
    created = api_for(team["owner"]).post(
        "/api/conversations/", {"title": "Town hall", "workspace": ws, "visibility": "open"}, format="json"
    )
    assert created.status_code == 201
    assert created.json()["visibility"] == "open"
    conv = created.json()["id"]
    bad = api_for(team["owner"]).post("/api/conversations/", {"title": "x", "visibility": "world"}, format="json")
    assert bad.status_code == 400

    colleague = api_for(team["colleague"])
    assert [c["id"] for c in colleague.get(f"/api/workspaces/{ws}/conversations/").json()] == [conv]
    assert colleague.get(f"/api/workspaces/{ws}/conversations/?q=" + "x" * 101).status_code == 400
    assert api_for(team["outsider"]).get(f"/api/workspaces/{ws}/conversations/").status_code == 404
    assert colleague.get(f"/api/conversations/{conv}/").status_code == 404  # found, not yet joined
    joined = colleague.post(f"/api/conversations/{conv}/join/")
    assert joined.status_code == 200
    assert joined.json()["role"] == "member"
    assert colleague.get(f"/api/workspaces/{ws}/conversations/").json() == []
    assert api_for(team["reader"]).post(f"/api/conversations/{conv}/join/").json()["role"] == "viewer"
    missing = api_for(team["outsider"]).post(f"/api/conversations/{uuid.uuid4()}/join/")
    assert missing.status_code == 404
    for target in (conv, team["conv"], "not-a-uuid"):  # another workspace's, a private one, junk
        answer = api_for(team["outsider"]).post(f"/api/conversations/{target}/join/")
        assert (answer.status_code, answer.json()) == (404, missing.json())
    assert api_for(team["colleague"]).post(f"/api/conversations/{team['conv']}/join/").status_code == 404


def test_the_worker_purges_at_most_once_an_hour(team: dict[str, Any], monkeypatch: Any) -> None:
    owner = team["owner"]
    monkeypatch.setattr(conversation_admin, "_next_purge_at", 0.0)
    old = factories.conversation_sync(owner, agent="", title="old")
    conversation_delete(conversation_id=old, actor_id=owner.id)
    Conversation.objects.filter(id=old).update(deleted_at=timezone.now() - timedelta(days=31))
    assert conversation_admin.purge_deleted_when_due() == 1
    newer = factories.conversation_sync(owner, agent="", title="newer")
    conversation_delete(conversation_id=newer, actor_id=owner.id)
    Conversation.objects.filter(id=newer).update(deleted_at=timezone.now() - timedelta(days=31))
    assert conversation_admin.purge_deleted_when_due() == 0  # not due again within the hour
    assert Conversation.objects.filter(id=newer).exists()


def test_admin_shows_deletion_and_feedback_and_restores_through_the_service(
    team: dict[str, Any], make_user: Any
) -> None:
    owner, conv = team["owner"], team["conv"]
    sent = factories.message_sync(conv, owner, "an answer worth rating")
    MessageFeedback.objects.create(message_id=sent.message_id, user=team["member"], rating=-1, comment="too short")
    conversation_delete(conversation_id=conv, actor_id=owner.id)
    staff = HttpClient()
    staff.force_login(make_user(is_staff=True, is_superuser=True))
    listed = staff.get("/admin/chat/conversation/?deleted=yes&visibility__exact=private")
    assert listed.status_code == 200
    assert "Plans" in listed.content.decode()
    assert "Plans" not in staff.get("/admin/chat/conversation/?deleted=no").content.decode()
    feedback = staff.get("/admin/chat/messagefeedback/?rating__exact=-1")
    assert feedback.status_code == 200
    assert "too short" in feedback.content.decode()
    assert "an answer worth rating" in feedback.content.decode()
    assert staff.get("/admin/chat/messagefeedback/add/").status_code == 403  # read-only
    restored = staff.post("/admin/chat/conversation/", {"action": "restore", "_selected_action": [conv]}, follow=True)
    assert "Restored 1 conversation(s)." in restored.content.decode()
    assert selectors.conversation_for_member(user_id=team["member"].id, conversation_id=conv).title == "Plans"


# --- live -------------------------------------------------------------------------------------------------


async def test_a_rename_reaches_the_other_members_socket(team: dict[str, Any]) -> None:
    conv, owner, member = team["conv"], team["owner"], team["member"]
    async with subscribed_client(member, conv) as watcher:
        await database_sync_to_async(conversation_rename)(conversation_id=conv, actor_id=owner.id, title="Live")
        frame = await watcher.until(lambda f: f.get("type") == "conversation_updated")
        wire.decode_frame(frame)
        assert frame["data"] == {"title": "Live", "visibility": "private", "by": ref(owner)}
        await database_sync_to_async(conversation_member_role_set)(
            conversation_id=conv, actor_id=owner.id, user_id=team["viewer"].id, role="member"
        )
        changed = await watcher.until(lambda f: f.get("type") == "member_role_changed")
        assert changed["data"]["user"] == ref(team["viewer"])
        assert changed["data"]["role"] == "member"


async def test_after_a_delete_subscribers_get_nothing_more_and_every_read_is_not_found(team: dict[str, Any]) -> None:
    conv, owner, member = team["conv"], team["owner"], team["member"]
    async with subscribed_client(member, conv) as watcher:
        await database_sync_to_async(conversation_delete)(conversation_id=conv, actor_id=owner.id)
        gone = await watcher.until(lambda f: f.get("type") == "error")
        assert gone["error"]["code"] == "not_found"
        # A write that still reaches the log (an agent run finishing, say) goes to nobody.
        await database_sync_to_async(_append_after_delete)(conv)
        await consistently(lambda: not watcher.events(conv), 0.5, "no event after the delete")
        for command, fields in (("subscribe", {}), ("history", {}), ("send", {"client_msg_id": "k", "text": "hi"})):
            reply = await watcher.command(command, conversation=conv, **fields)
            assert (reply["ok"], reply["error"]["code"]) == (False, "not_found"), command
    owner_socket = await connected(owner)
    reply = await owner_socket.command("subscribe", conversation=conv)
    assert reply["error"]["code"] == "not_found"
    await owner_socket.close()


def _append_after_delete(conv: str) -> None:
    with transaction.atomic():
        append_event(
            conversation_id=conv,
            type="conversation_updated",
            data={"title": "ghost", "visibility": "private", "by": None},
        )
