"""Workspace export (GET /api/workspaces/{id}/export/, enterprise/export.py) on the real PostgreSQL and Redis: what
an owner's archive holds (exactly the events API's objects; nothing of a private conversation they are not in, a
deleted one or another workspace), who is refused and how, the two limits (one at a time: 409; per hour: 429,
both with Retry-After) and that neither fails open (Redis out of reach: 503), the audit entry, and that a large
export is read and sent page by page rather than whole."""

from __future__ import annotations

import json
import uuid
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from asgiref.testing import ApplicationCommunicator
from django.core.asgi import get_asgi_application
from django.utils import timezone
from rest_framework.test import APIClient

from chat.infra import leases
from chat.models import Conversation, Event, Visibility, Workspace
from chat.services.conversations import conversation_create, workspace_create, workspace_member_add
from enterprise import export
from enterprise.models import AuditEntry
from tests.support import factories
from tests.support.ws import access_token

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fast_password_hashing")]


def api_for(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def url(workspace_id: object) -> str:
    return f"/api/workspaces/{workspace_id}/export/"


async def _drain(response: Any, each: Callable[[bytes], None] | None = None) -> bytes:
    chunks = []
    async for chunk in response.streaming_content:
        chunks.append(chunk)
        if each is not None:
            each(chunk)
    return b"".join(chunks)


def body_of(response: Any, each: Callable[[bytes], None] | None = None) -> dict[str, Any]:
    assert response.status_code == 200, response.content
    assert response.is_async  # an async iterator: ASGI sends it as it comes instead of buffering it whole
    return dict(json.loads(async_to_sync(_drain)(response, each)))


@pytest.fixture
def world(make_user: Any) -> dict[str, Any]:
    owner, member, stranger = make_user(tier="pro"), make_user(), make_user(tier="enterprise")
    ws = workspace_create(owner=owner, name="acme")
    workspace_member_add(workspace=ws, actor=owner, username=member.username, role="member")
    shared = factories.conversation_sync(
        owner, agent="", members=((member, "member"),), title="shared", workspace_id=ws.id
    )
    factories.message_sync(shared, owner, "hello team")
    factories.message_sync(shared, member, "hi owner")
    hidden = conversation_create(creator=member, title="member's private", workspace_id=ws.id, agent="")
    factories.message_sync(str(hidden.conversation.id), member, "not for the owner")
    opened = conversation_create(
        creator=member, title="open room", workspace_id=ws.id, agent="", visibility=Visibility.OPEN
    )
    factories.message_sync(str(opened.conversation.id), member, "anyone may join")
    gone = factories.conversation_sync(owner, agent="", title="deleted one", workspace_id=ws.id)
    factories.message_sync(gone, owner, "deleted words")
    Conversation.objects.filter(id=gone).update(deleted_at=timezone.now())
    other_ws = workspace_create(owner=stranger, name="elsewhere")
    workspace_member_add(workspace=other_ws, actor=stranger, username=owner.username, role="member")
    elsewhere = factories.conversation_sync(stranger, agent="", members=((owner, "member"),), workspace_id=other_ws.id)
    factories.message_sync(elsewhere, stranger, "another workspace's words")
    return {
        "owner": owner,
        "member": member,
        "stranger": stranger,
        "ws": ws,
        "shared": shared,
        "opened": str(opened.conversation.id),
        "other_ws": other_ws,
    }


def test_an_owner_gets_the_workspace_as_one_streamed_document(world: dict[str, Any]) -> None:
    owner, ws = world["owner"], world["ws"]
    client = api_for(owner)
    response = client.get(url(ws.id))
    assert response["Content-Type"] == "application/json"
    assert response["Content-Disposition"].startswith(f'attachment; filename="workspace-{ws.id}-')
    doc = body_of(response)
    assert doc["format"] == "chat-export/1"
    assert doc["workspace"] == {
        "id": str(ws.id),
        "name": "acme",
        "tier": "pro",
        "created_at": doc["workspace"]["created_at"],
    }
    datetime.fromisoformat(doc["exported_at"]).astimezone(UTC)
    assert {(m["user"]["username"], m["role"]) for m in doc["members"]} == {
        (owner.username, "owner"),
        (world["member"].username, "member"),
    }
    by_id = {c["id"]: c for c in doc["conversations"]}
    assert set(by_id) == {world["shared"], world["opened"]}  # its own and the open one; not private, not deleted
    for conv_id, conv in by_id.items():
        shown = client.get(f"/api/conversations/{conv_id}/events/", {"limit": 100})
        if conv_id == world["opened"]:
            assert shown.status_code == 404  # not a member yet: joinable, so exported, but not in its events API
            assert [e["data"]["text"] for e in conv["events"]] == ["anyone may join"]
            continue
        assert conv["events"] == shown.json()["events"]  # the exact objects the events API shows
        assert conv["head_seq"] == conv["events"][-1]["seq"]
        assert {m["user"]["username"] for m in conv["members"]} == {owner.username, world["member"].username}
    text = json.dumps(doc)
    for absent in ("not for the owner", "deleted words", "another workspace's words", "elsewhere"):
        assert absent not in text


def test_who_may_export(world: dict[str, Any], make_user: Any) -> None:
    ws = world["ws"]
    refused = api_for(world["member"]).get(url(ws.id))
    assert refused.status_code == 403
    assert refused.json()["error"] == {"code": "forbidden", "message": "only a workspace owner may read its archive"}
    outsider = api_for(world["stranger"])  # enterprise, an owner elsewhere: still nobody here
    missing = outsider.get(url(uuid.uuid4()))
    assert missing.status_code == 404
    assert missing.json() == {"error": {"code": "not_found", "message": "workspace not found"}}
    for target in (ws.id, "..", "not-a-uuid", "f" * 300):
        answer = outsider.get(url(target))
        assert (answer.status_code, answer.json()) == (404, missing.json()), target
    free_owner = make_user()
    free_ws = workspace_create(owner=free_owner, name="free")
    free = api_for(free_owner).get(url(free_ws.id))
    assert free.status_code == 403
    assert free.json()["error"] == {
        "code": "forbidden",
        "message": "workspace export is not part of this workspace's tier (free); pro and enterprise",
    }
    assert not AuditEntry.objects.filter(action="workspace.exported").exists()


def test_the_hourly_budget_refuses_429_and_a_running_export_409(world: dict[str, Any], settings: Any) -> None:
    settings.WORKSPACE_EXPORT_PER_HOUR = 2
    client = api_for(world["owner"])
    running = client.get(url(world["ws"].id))
    assert running.status_code == 200
    busy = client.get(url(world["ws"].id))  # the first has not ended: its lease is held
    assert busy.status_code == 409
    assert busy.json()["error"]["code"] == "conflict"
    assert 1 <= int(busy["Retry-After"]) <= 60
    body_of(running)  # the end of the stream frees the lease
    body_of(client.get(url(world["ws"].id)))  # the 409 spent nothing of the budget: this is the second
    over = client.get(url(world["ws"].id))
    assert over.status_code == 429
    error = over.json()["error"]
    assert error["code"] == "rate_limited"
    assert error["message"].startswith("export limit reached: 2 per workspace per hour; retry in ")
    assert 3500 <= int(over["Retry-After"]) <= 3600
    assert 3_500_000 <= error["retry_after_ms"] <= 3_600_000


def test_redis_out_of_reach_refuses_instead_of_allowing(world: dict[str, Any], settings: Any, monkeypatch: Any) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there: connection refused
    monkeypatch.setattr(leases, "_sync", None)
    answer = api_for(world["owner"]).get(url(world["ws"].id))
    assert answer.status_code == 503
    assert answer.json()["error"]["code"] == "unavailable"
    assert answer["Retry-After"] == "5"
    monkeypatch.setattr(leases, "_sync", None)  # the next test's client talks to the real Redis again


def test_the_export_is_audited_with_who_and_counts(world: dict[str, Any]) -> None:
    owner = world["owner"]
    doc = body_of(api_for(owner).get(url(world["ws"].id)))
    entry = AuditEntry.objects.get(action="workspace.exported")
    assert (entry.actor_id, entry.actor_username, entry.workspace_id) == (owner.id, owner.username, world["ws"].id)
    assert entry.data == {
        "members": 2,
        "conversations": 2,
        "events": sum(len(c["events"]) for c in doc["conversations"]),
        "complete": True,
    }


def big_workspace(make_user: Any) -> tuple[Any, Workspace, int]:
    """An enterprise owner's workspace with one conversation of two full pages of events and a part page."""
    owner = make_user(tier="enterprise")
    ws = Workspace.objects.create(name="big")
    ws.memberships.create(user=owner, role="owner")
    conv = factories.conversation_sync(owner, agent="", workspace_id=ws.id)
    total = 2 * export.PAGE_EVENTS + 100
    now = timezone.now()
    Event.objects.bulk_create(
        Event(conversation_id=conv, seq=n, type="message", data={"text": f"e{n}"}, created_at=now)
        for n in range(1, total + 1)
    )
    Conversation.objects.filter(id=conv).update(last_seq=total)
    return owner, ws, total


def test_a_large_export_is_read_and_sent_page_by_page(make_user: Any, monkeypatch: Any) -> None:
    owner, ws, total = big_workspace(make_user)
    reads: list[int] = []
    real_page = export.events_page

    def counted(*args: Any) -> tuple[list[str], int]:
        frames, last = real_page(*args)
        reads.append(len(frames))
        return frames, last

    monkeypatch.setattr(export, "events_page", counted)
    reads_when_sent: list[tuple[int, int]] = []  # (event frames in the chunk, pages read when it was sent)

    def watch(chunk: bytes) -> None:
        frames = chunk.count(b'"type":"message"')
        if frames:
            reads_when_sent.append((frames, len(reads)))

    doc = body_of(api_for(owner).get(url(ws.id)), watch)
    assert reads == [export.PAGE_EVENTS, export.PAGE_EVENTS, 100]  # bounded pages, each one query
    # Each page went out before the next was read: the stream never held more than one page.
    assert reads_when_sent == [(export.PAGE_EVENTS, 1), (export.PAGE_EVENTS, 2), (100, 3)]
    assert [e["seq"] for e in doc["conversations"][0]["events"]] == list(range(1, total + 1))


def test_a_download_cut_short_frees_the_lease_and_is_audited_as_incomplete(world: dict[str, Any]) -> None:
    owner, ws = world["owner"], world["ws"]
    ticket = export.export_start(user_id=owner.id, user_tier=owner.tier, workspace_id=str(ws.id))

    async def first_chunk_then_hang_up() -> bytes:
        stream = export.export_stream(ticket)
        first = await anext(stream)
        await stream.aclose()  # what the server does when the client goes away
        return first

    assert async_to_sync(first_chunk_then_hang_up)().startswith(b'{"format":"chat-export/1"')
    entry = AuditEntry.objects.get(action="workspace.exported")
    assert entry.data == {"members": 0, "conversations": 0, "events": 0, "complete": False}
    body_of(api_for(owner).get(url(ws.id)))  # the lease is free at once, not after its time to live


def test_through_django_asgi_the_body_goes_out_in_chunks(make_user: Any) -> None:
    """The server's own path (the ASGI handler, the middleware, Bearer authentication): one body message per
    chunk, not the whole document at once, and no "must consume asynchronous iterators" warning (which is what
    a sync iterator, buffered whole, would cause)."""
    owner, ws, total = big_workspace(make_user)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": url(ws.id),
        "raw_path": url(ws.id).encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"authorization", f"Bearer {access_token(owner)}".encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }

    async def serve() -> tuple[dict[str, Any], list[bytes]]:
        app = ApplicationCommunicator(get_asgi_application(), scope)
        await app.send_input({"type": "http.request", "body": b"", "more_body": False})
        start = await app.receive_output(timeout=20)
        bodies = []
        while True:
            message = await app.receive_output(timeout=20)
            bodies.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        await app.wait(timeout=5)
        return start, bodies

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start, bodies = async_to_sync(serve)()
    assert start["status"] == 200
    assert dict(start["headers"])[b"Content-Type"] == b"application/json"
    assert len([b for b in bodies if b]) >= 3 + 3  # at least the three event pages, the head and the ends
    assert max(len(b) for b in bodies) < len(b"".join(bodies)) / 2
    doc = json.loads(b"".join(bodies))
    assert len(doc["conversations"][0]["events"]) == total
    assert not [w for w in caught if "iterator" in str(w.message)]
