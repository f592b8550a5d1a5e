"""REST side (docs/protocol.md §7): tokens, conversations, members, events; same access rules as the
socket (a conversation the caller may not see is a 404, whether or not it exists)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from rest_framework.test import APIClient

from chat.models import ConversationMember, Event
from chat.services.messages import message_send

pytestmark = [pytest.mark.django_db]


def api_for(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_token_pair_and_refresh_and_bearer_access(make_user: Any) -> None:
    from chat.services.conversations import user_create

    user_create(username="tokenuser", password="s3cret-pass")
    client = APIClient()
    bad = client.post("/api/auth/token/", {"username": "tokenuser", "password": "nope"}, format="json")
    assert bad.status_code == 401
    pair = client.post("/api/auth/token/", {"username": "tokenuser", "password": "s3cret-pass"}, format="json")
    assert pair.status_code == 200
    assert set(pair.json()) == {"access", "refresh"}
    refreshed = client.post("/api/auth/token/refresh/", {"refresh": pair.json()["refresh"]}, format="json")
    assert refreshed.status_code == 200
    assert "access" in refreshed.json()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {refreshed.json()['access']}")
    assert client.get("/api/conversations/").status_code == 200
    anonymous = APIClient()
    assert anonymous.get("/api/conversations/").status_code == 401


def test_create_list_detail_and_events(make_user: Any) -> None:
    user = make_user()
    api = api_for(user)
    created = api.post("/api/conversations/", {"title": "Planning"}, format="json")
    assert created.status_code == 201
    body = created.json()
    assert body["title"] == "Planning"
    assert body["role"] == "owner"
    assert body["agent"] == "assistant"
    assert body["head_seq"] == 0
    conv = body["id"]
    plain = api.post("/api/conversations/", {"title": "People only", "agent": False}, format="json").json()
    assert plain["agent"] is None
    listed = api.get("/api/conversations/").json()
    assert {c["id"] for c in listed} == {conv, plain["id"]}
    for i in range(5):
        message_send(
            conversation_id=plain["id"],
            author_id=user.id,
            username=user.username,
            client_msg_id=str(i),
            text=f"m{i}",
            can_write=True,
        )
    detail = api.get(f"/api/conversations/{plain['id']}/").json()
    assert detail["head_seq"] == 5
    page = api.get(f"/api/conversations/{plain['id']}/events/?before_seq=5&limit=2").json()
    assert [e["seq"] for e in page["events"]] == [3, 4]
    assert page["has_more"] is True
    assert page["events"][0]["type"] == "message"
    assert page["events"][0]["conversation"] == plain["id"]
    assert page["events"][0]["data"]["text"] == "m2"


@pytest.mark.parametrize(
    "body",
    [{}, {"title": ""}, {"title": "x" * 201}, {"title": "ok", "agent": "maybe"}, {"title": "ok", "workspace": "nope"}],
)
def test_invalid_conversation_bodies_are_400_and_create_nothing(make_user: Any, body: dict[str, Any]) -> None:
    user = make_user()
    api = api_for(user)
    response = api.post("/api/conversations/", body, format="json")
    assert response.status_code == 400
    assert api.get("/api/conversations/").json() == []


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=abc", "before_seq=0", "before_seq=x"])
def test_invalid_event_queries_are_400(make_user: Any, query: str) -> None:
    user = make_user()
    api = api_for(user)
    conv = api.post("/api/conversations/", {"title": "t"}, format="json").json()["id"]
    assert api.get(f"/api/conversations/{conv}/events/?{query}").status_code == 400


def test_foreign_and_missing_conversations_are_the_same_404(make_user: Any) -> None:
    owner, stranger = make_user(), make_user()
    conv = api_for(owner).post("/api/conversations/", {"title": "private"}, format="json").json()["id"]
    api = api_for(stranger)
    for path in ("", "events/", "members/"):
        hidden = api.get(f"/api/conversations/{conv}/{path}")
        missing = api.get(f"/api/conversations/{uuid.uuid4()}/{path}")
        assert hidden.status_code == missing.status_code == 404
        assert hidden.json() == missing.json()
    assert api.get("/api/conversations/not-a-uuid/").status_code == 404
    add = api.post(
        f"/api/conversations/{conv}/members/", {"username": stranger.username, "role": "member"}, format="json"
    )
    assert add.status_code == 404
    assert not ConversationMember.objects.filter(conversation_id=conv, user=stranger).exists()


def test_only_the_owner_adds_members_and_roles_apply(make_user: Any) -> None:
    owner, member, newcomer = make_user(), make_user(), make_user()
    api = api_for(owner)
    conv = api.post("/api/conversations/", {"title": "team"}, format="json").json()["id"]
    added = api.post(
        f"/api/conversations/{conv}/members/", {"username": member.username, "role": "member"}, format="json"
    )
    assert added.status_code == 201
    assert added.json()["role"] == "member"
    bad_role = api.post(
        f"/api/conversations/{conv}/members/", {"username": newcomer.username, "role": "owner"}, format="json"
    )
    assert bad_role.status_code == 400
    unknown = api.post(
        f"/api/conversations/{conv}/members/", {"username": "nobody-here", "role": "member"}, format="json"
    )
    assert unknown.status_code == 404
    by_member = api_for(member).post(
        f"/api/conversations/{conv}/members/", {"username": newcomer.username, "role": "viewer"}, format="json"
    )
    assert by_member.status_code == 403
    assert not ConversationMember.objects.filter(conversation_id=conv, user=newcomer).exists()
    listed = api_for(member).get("/api/conversations/").json()
    assert [(c["id"], c["role"]) for c in listed] == [(conv, "member")]


def test_workspaces_and_workspace_members(make_user: Any) -> None:
    owner, other = make_user(), make_user()
    api = api_for(owner)
    personal = api.get("/api/workspaces/").json()
    assert len(personal) == 1
    assert personal[0]["role"] == "owner"
    ws = api.post("/api/workspaces/", {"name": "Acme"}, format="json").json()
    assert (
        api.post(
            f"/api/workspaces/{ws['id']}/members/", {"username": other.username, "role": "viewer"}, format="json"
        ).status_code
        == 201
    )
    # A viewer of a workspace cannot create conversations in it.
    refused = api_for(other).post("/api/conversations/", {"title": "x", "workspace": ws["id"]}, format="json")
    assert refused.status_code == 403
    assert Event.objects.count() == 0
    assert api_for(other).get(f"/api/workspaces/{personal[0]['id']}/members/").status_code == 404


def test_token_endpoints_are_rate_limited_per_ip(make_user: Any, settings: Any) -> None:
    settings.CHAT_LOGIN_RATE = [3, 60]
    settings.CHANNEL_PREFIX = f"iptest{uuid.uuid4().hex[:8]}"  # fresh windows for this test
    client = APIClient(REMOTE_ADDR="10.1.2.3")
    codes = [
        client.post("/api/auth/token/", {"username": "x", "password": "y"}, format="json").status_code for _ in range(4)
    ]
    assert codes == [401, 401, 401, 429]
    refused = client.post("/api/auth/token/", {"username": "x", "password": "y"}, format="json")
    assert 1 <= int(refused["Retry-After"]) <= 60
    # Another address has its own budget; the refresh endpoint has its own window.
    other = APIClient(REMOTE_ADDR="10.9.9.9")
    assert other.post("/api/auth/token/", {"username": "x", "password": "y"}, format="json").status_code == 401
    assert client.post("/api/auth/token/refresh/", {"refresh": "bad"}, format="json").status_code == 401


def test_login_page_is_rate_limited_per_ip(make_user: Any, settings: Any) -> None:
    from django.test import Client as DjangoClient

    settings.CHAT_LOGIN_RATE = [2, 60]
    settings.CHANNEL_PREFIX = f"iptest{uuid.uuid4().hex[:8]}"
    user = make_user()
    browser = DjangoClient(REMOTE_ADDR="10.4.5.6")
    assert browser.post("/login/", {"username": user.username, "password": "wrong"}).status_code == 200
    assert browser.post("/login/", {"username": user.username, "password": "wrong"}).status_code == 200
    refused = browser.post("/login/", {"username": user.username, "password": "wrong"})
    assert refused.status_code == 429
    assert b"Too many login attempts" in refused.content
    assert int(refused["Retry-After"]) >= 1
