"""Authentication and authorisation of /ws/chat/ under attack (docs/protocol.md §1, §2, §7), end to end
with Channels communicators over the real PostgreSQL and Redis.

test_websocket_connection_lifecycle_integration.py shows each way in working once; this suite is
the adversarial side: every way in must prove it is authenticated by receiving live data, every
refusal must deliver nothing (no `welcome`, no event, no notification), every kind of bad token is
tried on both the header and the `auth` frame, logout and deactivation are driven through the real
Django logout view and the real admin, and no token ever reaches a log record — in process and in
the real server processes (uvicorn and daphne).

Isolation between users (every command and endpoint against another user's ids) lives in
test_websocket_multi_user_routing_integration.py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import jwt
import pytest
import websockets
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.conf import settings as django_settings
from django.db import connection, transaction
from django.test import Client as HttpClient
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import AccessToken, RefreshToken

from agents.models import AgentRun
from chat.models import Conversation, ConversationMember, Event, Message, Notification, User, WorkspaceMember
from chat.services.accounts import user_deactivate
from chat.services.conversations import conversation_member_add, user_create
from tests.support import factories, ws
from tests.support.servers import running_stack
from tests.support.waiting import eventually
from tests.support.ws import Client, access_token

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fast_password_hashing")]


SAME_ORIGIN = [(b"origin", b"http://localhost:8000"), (b"host", b"localhost:8000")]


# --- helpers shared with the isolation suite ------------------------------------------------------
def bearer(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {token}".encode())]


def short_token(user: Any, seconds: float) -> AccessToken:
    token = AccessToken.for_user(user)
    token.set_exp(lifetime=timedelta(seconds=seconds))
    return token


def session_login(user: Any) -> tuple[HttpClient, bytes]:
    """A real Django session (the login a browser has) and its cookie header."""
    http = HttpClient()
    http.force_login(user)
    name = django_settings.SESSION_COOKIE_NAME
    return http, f"{name}={http.cookies[name].value}".encode()


def db_snapshot() -> dict[str, list[str]]:
    """Every row an attacker could change, as comparable text (the test database is per test)."""
    tables: dict[str, Any] = {
        "users": User.objects.values_list("id", "is_active", "notification_seq", "tier"),
        "conversations": Conversation.objects.values_list("id", "title", "last_seq", "workspace_id", "agent"),
        "members": ConversationMember.objects.values_list("conversation_id", "user_id", "role", "last_read_seq"),
        "workspace_members": WorkspaceMember.objects.values_list("workspace_id", "user_id", "role"),
        "messages": Message.objects.values_list("id", "conversation_id", "author_id", "text", "seq"),
        "events": Event.objects.values_list("conversation_id", "seq", "type", "data"),
        "runs": AgentRun.objects.values_list("id", "status", "cancel_requested", "cancelled_by_id"),
        "notifications": Notification.objects.values_list("user_id", "seq", "data"),
    }
    return {name: sorted(map(repr, rows)) for name, rows in tables.items()}


async def frames_until_close(client: Client, timeout: float = 5) -> tuple[int | None, list[dict[str, Any]]]:
    """Everything the socket receives up to its close: (close code, frames before it)."""
    start = len(client.frames)
    code = await client.expect_close(timeout=timeout)
    return code, client.frames[start:-1]


async def no_close_until(client: Client, wall_time: float) -> None:
    """Fail if the socket is closed before `wall_time` (frames arriving meanwhile are kept)."""
    # (receive_nothing, not recv with a timeout: a timed-out receive cancels the application.)
    while (remaining := wall_time - time.time()) > 0:
        if await client.comm.receive_nothing(timeout=min(remaining, 0.1)):
            continue
        frame = await client.recv()
        assert frame["type"] != "__close__", f"closed early with {frame['code']}"


async def assert_still_served(client: Client, conversation: str, sender: Client, text: str) -> None:
    """The socket is open and authenticated: a live event of its subscription reaches it."""
    assert (await client.command("ping"))["ok"] is True
    sent = await sender.command("send", conversation=conversation, client_msg_id=text, text=text)
    assert sent["ok"] is True, sent
    await client.seen_or_until(lambda f: f.get("type") == "message" and f["data"]["text"] == text)


# --- every way in proves it is authenticated --------------------------------------------------------
@pytest.mark.parametrize("way", ["bearer", "session", "auth_frame"])
async def test_each_way_in_receives_live_events_of_its_user(make_user: Any, settings: Any, way: str) -> None:
    settings.CHAT_ALLOWED_ORIGINS = ["https://app.example.org"]
    user = await database_sync_to_async(make_user)(tier="pro")
    peer = await database_sync_to_async(make_user)()
    conv = await factories.conversation(peer, agent="", members=((user, "member"),))
    if way == "bearer":
        client, connected, _ = await Client.connect(user)
    elif way == "session":
        _, cookie = await database_sync_to_async(session_login)(user)
        client, connected, _ = await Client.connect(headers=[(b"cookie", cookie), *SAME_ORIGIN])
    else:  # a browser on another (listed) origin, which cannot set headers
        client, connected, _ = await Client.connect(headers=[(b"origin", b"https://app.example.org")])
        token = await database_sync_to_async(access_token)(user)
        await client.send_raw(json.dumps({"type": "auth", "id": "a", "token": token}))
    assert connected
    welcome = await client.recv()
    assert welcome["type"] == "welcome"
    assert welcome["data"]["user"] == {"id": user.id, "username": user.username, "tier": "pro"}
    if way == "auth_frame":
        reply = await client.recv()
        assert (reply["id"], reply["ok"]) == ("a", True)
    assert (await client.command("subscribe", conversation=conv))["ok"] is True
    sender = await ws.connected(peer)
    await assert_still_served(client, conv, sender, f"live for {way}")


async def test_auth_frame_within_the_deadline_keeps_the_socket_past_it(make_user: Any, settings: Any) -> None:
    settings.CHAT_AUTH_TIMEOUT_S = 0.4
    user = await database_sync_to_async(make_user)()
    token = await database_sync_to_async(access_token)(user)
    opened = time.monotonic()
    client, _, _ = await Client.connect()
    await client.send_raw(json.dumps({"type": "auth", "id": "a", "token": token}))
    assert (await client.recv())["type"] == "welcome"
    assert (await client.recv())["ok"] is True
    # Nothing at all (no close) arrives through the deadline and a while past it.
    assert await client.comm.receive_nothing(timeout=opened + settings.CHAT_AUTH_TIMEOUT_S + 0.3 - time.monotonic())
    assert (await client.command("ping"))["ok"] is True


async def test_before_auth_every_command_is_refused_nothing_is_delivered_and_the_deadline_closes_4401(
    make_user: Any, settings: Any
) -> None:
    settings.CHAT_AUTH_TIMEOUT_S = 1.0
    settings.AGENT_RUNNER = "worker"  # the queued run stays put: nothing but the attempts touches the DB
    user = await database_sync_to_async(make_user)()
    owner = await database_sync_to_async(make_user)()
    conv = await factories.conversation(owner, members=((user, "member"),))
    run = await factories.message(conv, owner, "hidden so far", client_msg_id="o")
    owner_client = await ws.connected(owner)
    await owner_client.command("subscribe", conversation=conv)
    before = await database_sync_to_async(db_snapshot)()

    client, connected, _ = await Client.connect()  # no credentials at all
    assert connected
    attempts: list[dict[str, Any]] = [
        {"type": "subscribe", "conversation": conv, "since_seq": 0},
        {"type": "history", "conversation": conv},
        {"type": "send", "conversation": conv, "client_msg_id": "pre", "text": "before auth"},
        {"type": "typing", "conversation": conv, "state": "start"},
        {"type": "read", "conversation": conv, "seq": 1},
        {"type": "cancel", "run_id": run.run_id},
        {"type": "presence", "conversation": conv},
        {"type": "sync_notifications", "since_seq": 0},
        {"type": "ping"},
    ]
    for n, attempt in enumerate(attempts):
        await client.send_raw(json.dumps({**attempt, "id": f"pre{n}"}))
        reply = await client.until(lambda f, n=n: f.get("id") == f"pre{n}")
        assert reply["ok"] is False
        assert reply["error"]["code"] == "bad_request", attempt
    # Things happen that the socket would receive if it were the user's: it receives none of them.
    await owner_client.command("send", conversation=conv, client_msg_id="o2", text="while unauthenticated")
    await owner_client.command("typing", conversation=conv, state="start")
    await database_sync_to_async(conversation_member_add)(
        conversation_id=await factories.conversation(owner, agent=""),
        actor_id=owner.id,
        username=user.username,
        role="viewer",
    )
    code, frames = await frames_until_close(client, timeout=5)
    assert code == 4401
    assert all(f["type"] == "reply" and f["ok"] is False for f in client.frames[:-1]), client.frames
    assert frames == []
    after = await database_sync_to_async(db_snapshot)()
    assert [m for m in after["messages"] if "before auth" in m] == []
    assert set(before["runs"]) <= set(after["runs"])  # the queued run was not cancelled
    assert [m for m in before["members"] if conv in m] == [m for m in after["members"] if conv in m]  # no marker


# --- refused credentials ------------------------------------------------------------------------------
def _b64(obj: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def bad_token(kind: str, user: Any, other: Any) -> str:
    """Tokens that must never authenticate `user`."""
    good = AccessToken.for_user(user)
    if kind == "garbage":
        return "not-a-jwt"
    if kind == "three_dots":
        return "a.b.c"
    if kind == "truncated":
        return str(good)[:-5]
    if kind == "expired":
        good.set_exp(lifetime=-timedelta(seconds=1))
        return str(good)
    if kind == "refresh_token":
        return str(RefreshToken.for_user(user))
    if kind == "foreign_signature":  # user's claims with another valid token's signature
        head, body, _ = str(good).split(".")
        return ".".join([head, body, str(AccessToken.for_user(other)).split(".")[2]])
    if kind == "other_key":
        return jwt.encode(dict(good.payload), "not-the-signing-key-" + "x" * 32, algorithm="HS256")
    if kind == "alg_none":
        return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(dict(good.payload))}."
    if kind == "unknown_user":
        good["user_id"] = 2_000_000_000  # re-signed with the real key: valid, but nobody's
        return str(good)
    raise AssertionError(kind)


BAD_TOKENS = [
    "garbage",
    "three_dots",
    "truncated",
    "expired",
    "refresh_token",
    "foreign_signature",
    "other_key",
    "alg_none",
    "unknown_user",
]


@pytest.mark.parametrize("kind", BAD_TOKENS)
@pytest.mark.parametrize("way", ["header", "auth_frame"])
async def test_bad_tokens_close_4401_and_deliver_nothing(make_user: Any, kind: str, way: str) -> None:
    user = await database_sync_to_async(make_user)()
    other = await database_sync_to_async(make_user)()
    token = await database_sync_to_async(bad_token)(kind, user, other)
    if way == "header":
        client, connected, _ = await Client.connect(headers=bearer(token))
    else:
        client, connected, _ = await Client.connect()
        await client.send_raw(json.dumps({"type": "auth", "id": "a", "token": token}))
    assert connected
    code, frames = await frames_until_close(client)
    assert code == 4401
    assert not [f for f in frames if f["type"] != "reply"], frames  # no welcome, nothing at all


@pytest.mark.parametrize(
    "authorization", [b"Bearer", b"Bearer ", b"Basic dXNlcjpwdw==", b"Token abc", b"bearer\tx", b"Bearer a b"]
)
async def test_malformed_authorization_headers_close_4401(authorization: bytes) -> None:
    client, _, _ = await Client.connect(headers=[(b"authorization", authorization)])
    code, frames = await frames_until_close(client)
    assert (code, frames) == (4401, [])


@pytest.mark.parametrize(
    "query", ["token={t}", "access_token={t}", "jwt={t}", "Access={t}", "auth={t}", "x=1&authorization={t}", "t={t}"]
)
async def test_a_token_in_the_query_string_is_refused_even_when_valid(make_user: Any, query: str) -> None:
    user = await database_sync_to_async(make_user)()
    token = await database_sync_to_async(access_token)(user)
    # Even alongside a valid header: the URL (with the token) is already in some access log.
    client, connected, _ = await Client.connect(headers=bearer(token), path="/ws/chat/?" + query.format(t=token))
    assert connected
    code, frames = await frames_until_close(client)
    assert (code, frames) == (4401, [])


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        (b"http://localhost:8000", True),
        (b"http://127.0.0.1:9999", True),  # ALLOWED_HOSTS, any port
        (b"https://app.example.org", True),  # listed in CHAT_ALLOWED_ORIGINS
        (b"https://evil.example.com", False),
        (b"http://localhost.evil.example.com", False),
        (b"https://app.example.org.evil.example.com", False),
        (b"null", False),  # sandboxed iframes and file:// pages
        (b"file://", False),
    ],
)
@pytest.mark.parametrize("way", ["bearer", "session"])
async def test_origin_is_checked_for_every_way_in(
    make_user: Any, settings: Any, origin: bytes, allowed: bool, way: str
) -> None:
    settings.CHAT_ALLOWED_ORIGINS = ["https://app.example.org"]
    user = await database_sync_to_async(make_user)()
    if way == "bearer":
        headers = bearer(await database_sync_to_async(access_token)(user))
    else:  # a foreign page riding the browser's session cookie (cross-site WebSocket hijacking)
        headers = [(b"cookie", (await database_sync_to_async(session_login)(user))[1])]
    client, connected, _ = await Client.connect(headers=[*headers, (b"origin", origin), (b"host", b"localhost:8000")])
    assert connected
    if allowed:
        assert (await client.recv())["type"] == "welcome"
        assert (await client.command("ping"))["ok"] is True
    else:
        code, frames = await frames_until_close(client)
        assert (code, frames) == (4403, [])


# --- expiry and refresh ----------------------------------------------------------------------------------
async def _connect_with(token: str, way: str) -> Client:
    if way == "bearer":
        client, _, _ = await Client.connect(headers=bearer(token))
    else:
        client, _, _ = await Client.connect()
        await client.send_raw(json.dumps({"type": "auth", "id": "first", "token": token}))
    assert (await client.recv())["type"] == "welcome"
    if way == "auth_frame":
        assert (await client.recv())["ok"] is True
    return client


@pytest.mark.parametrize("way", ["bearer", "auth_frame"])
async def test_the_socket_closes_4401_when_its_token_expires(make_user: Any, way: str) -> None:
    user = await database_sync_to_async(make_user)()
    token = await database_sync_to_async(short_token)(user, 1.5)
    client = await _connect_with(str(token), way)
    code = await client.expect_close(timeout=6)
    closed_at = time.time()
    assert code == 4401
    assert closed_at >= token["exp"] - 0.05  # not before the token's end


@pytest.mark.parametrize("way", ["bearer", "auth_frame"])
async def test_auth_with_a_fresh_token_of_the_same_user_keeps_the_socket_past_the_old_expiry(
    make_user: Any, way: str
) -> None:
    user = await database_sync_to_async(make_user)()
    peer = await database_sync_to_async(make_user)()
    conv = await factories.conversation(peer, agent="", members=((user, "member"),))
    old = await database_sync_to_async(short_token)(user, 1.5)
    client = await _connect_with(str(old), way)
    await client.command("subscribe", conversation=conv)
    fresh = await database_sync_to_async(AccessToken.for_user)(user)
    reply = await client.command("auth", token=str(fresh))
    assert reply["ok"] is True
    expected = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(fresh["exp"]))
    assert reply["expires_at"].startswith(expected)
    await no_close_until(client, old["exp"] + 0.5)  # through the old token's expiry and past it
    sender = await ws.connected(peer)
    await assert_still_served(client, conv, sender, "after the old expiry")
    assert not [f for f in client.frames if f["type"] == "__close__"]


@pytest.mark.parametrize("kind", ["other_user", "refresh_token", "expired"])
async def test_auth_refresh_with_an_unacceptable_token_changes_nothing(make_user: Any, kind: str) -> None:
    """Another user's token is `forbidden`, a bad one `bad_request`; either way the socket keeps its
    identity and its original expiry (it still closes when the first token ends)."""
    alice = await database_sync_to_async(make_user)()
    bob = await database_sync_to_async(make_user)()
    bobs = await factories.conversation(bob, agent="")
    first = await database_sync_to_async(short_token)(alice, 2)
    client = await _connect_with(str(first), "bearer")
    if kind == "other_user":
        token = await database_sync_to_async(access_token)(bob)
    else:
        token = await database_sync_to_async(bad_token)(kind, alice, bob)
    reply = await client.command("auth", token=token)
    assert reply["ok"] is False
    assert reply["error"]["code"] == ("forbidden" if kind == "other_user" else "bad_request")
    assert (await client.command("history", conversation=bobs))["error"]["code"] == "not_found"
    own = await factories.conversation(alice, agent="")
    await client.command("subscribe", conversation=own)
    sent = await client.command("send", conversation=own, client_msg_id="who", text="who am I")
    event = await client.seen_or_until(lambda f: f.get("type") == "message" and f["data"]["text"] == "who am I")
    assert sent["ok"] is True
    assert event["data"]["author"]["id"] == alice.id
    assert await client.expect_close(timeout=6) == 4401


# --- logout and deactivation ---------------------------------------------------------------------------------
async def _two_sockets_and_a_bystander(make_user: Any) -> tuple[Any, Any, list[Client], Client, str, HttpClient]:
    user = await database_sync_to_async(make_user)()
    other = await database_sync_to_async(make_user)()
    conv = await factories.conversation(other, agent="", members=((user, "member"),))
    http, cookie = await database_sync_to_async(session_login)(user)
    tabs = [
        await ws.connected(user),  # an API client (Bearer)
        await ws.connected(None, headers=[(b"cookie", cookie), *SAME_ORIGIN]),  # the browser tab (session)
    ]
    bystander = await ws.connected(other)
    await bystander.command("subscribe", conversation=conv)
    return user, other, tabs, bystander, conv, http


async def test_logout_through_the_django_view_closes_all_of_the_users_sockets_4401(
    make_user: Any, settings: Any
) -> None:
    settings.CHAT_AUTH_TIMEOUT_S = 0.5
    user, other, tabs, bystander, conv, http = await _two_sockets_and_a_bystander(make_user)
    cookie = f"{django_settings.SESSION_COOKIE_NAME}={http.cookies[django_settings.SESSION_COOKIE_NAME].value}"
    response = await database_sync_to_async(http.post)("/logout/")
    assert response.status_code in (200, 302)
    for tab in tabs:
        assert await tab.expect_close() == 4401
    await assert_still_served(bystander, conv, bystander, "bystander still here")
    # The logged-out session no longer opens a socket (it waits for an auth frame that never comes).
    stale, _, _ = await Client.connect(headers=[(b"cookie", cookie.encode()), *SAME_ORIGIN])
    code, frames = await frames_until_close(stale)
    assert (code, frames) == (4401, [])


def _deactivate(how: str, user: Any, staff: Any) -> None:
    if how == "service":
        user_deactivate(user_id=user.id)
        return
    admin = HttpClient()
    admin.force_login(staff)
    if how == "admin_action":
        response = admin.post("/admin/chat/user/", {"action": "deactivate", "_selected_action": [user.id]})
    else:  # the change form with "active" unticked
        joined = user.date_joined
        response = admin.post(
            f"/admin/chat/user/{user.id}/change/",
            {
                "username": user.username,
                "first_name": "",
                "last_name": "",
                "email": "",
                "tier": user.tier,
                "date_joined_0": joined.strftime("%Y-%m-%d"),
                "date_joined_1": joined.strftime("%H:%M:%S"),
                "last_login_0": "",
                "last_login_1": "",
            },
        )
    assert response.status_code == 302, response.content[:2000]


@pytest.mark.parametrize("how", ["service", "admin_action", "admin_form"])
async def test_deactivation_closes_all_of_the_users_sockets_4403_and_their_credentials_stop_working(
    make_user: Any, settings: Any, how: str
) -> None:
    settings.CHAT_AUTH_TIMEOUT_S = 0.5
    staff = await database_sync_to_async(make_user)(is_staff=True, is_superuser=True)
    user, other, tabs, bystander, conv, http = await _two_sockets_and_a_bystander(make_user)
    token = await database_sync_to_async(access_token)(user)  # minted before: still unexpired
    cookie = f"{django_settings.SESSION_COOKIE_NAME}={http.cookies[django_settings.SESSION_COOKIE_NAME].value}"
    await database_sync_to_async(_deactivate)(how, user, staff)
    for tab in tabs:
        assert await tab.expect_close() == 4403
    await assert_still_served(bystander, conv, bystander, f"bystander after {how}")

    for attempt in ("header", "auth_frame", "session"):
        if attempt == "header":
            client, _, _ = await Client.connect(headers=bearer(token))
        elif attempt == "auth_frame":
            client, _, _ = await Client.connect()
            await client.send_raw(json.dumps({"type": "auth", "id": "a", "token": token}))
        else:
            client, _, _ = await Client.connect(headers=[(b"cookie", cookie.encode()), *SAME_ORIGIN])
        code, frames = await frames_until_close(client)
        assert code == 4401, attempt
        assert not [f for f in frames if f["type"] != "reply"], attempt

    def rest_status() -> tuple[int, int]:
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        return api.get("/api/conversations/").status_code, api.get(f"/api/conversations/{conv}/events/").status_code

    assert await database_sync_to_async(rest_status)() == (401, 401)


async def test_deactivation_inside_a_transaction_also_closes_sockets_opened_before_it_commits(
    make_user: Any,
) -> None:
    """Staff deactivate inside a transaction (the admin's change form runs in one). A socket that
    connects before it commits still finds an active account; once the change commits it must be
    closed like the others, or a deactivated user keeps a live socket."""
    user = await database_sync_to_async(make_user)()
    first = await ws.connected(user)
    token = await database_sync_to_async(access_token)(user)
    inside, release = threading.Event(), threading.Event()

    def deactivate_in_a_transaction() -> None:
        try:
            with transaction.atomic():
                user_deactivate(user_id=user.id)
                inside.set()
                assert release.wait(10)
        finally:
            connection.close()  # this worker thread's own connection

    holder = asyncio.ensure_future(sync_to_async(deactivate_in_a_transaction, thread_sensitive=False)())
    await eventually(inside.is_set, 5, "the deactivating transaction to start", interval=0.01)
    second = await ws.connected(None, headers=bearer(token))  # not committed yet: still active
    assert (await second.command("ping"))["ok"] is True  # its connect (joining the user's group) is done
    release.set()
    await holder
    assert await first.expect_close() == 4403
    assert await second.expect_close() == 4403


# --- roles -----------------------------------------------------------------------------------------------
VIEWER_REFUSED = ["send", "cancel", "typing", "draft"]
VIEWER_ALLOWED = ["subscribe", "history", "read"]


@pytest.mark.parametrize("command", VIEWER_REFUSED + VIEWER_ALLOWED)
async def test_a_viewer_reads_but_cannot_write(make_user: Any, settings: Any, command: str) -> None:
    settings.AGENT_RUNNER = "worker"  # the owner's run stays queued: cancelling it would change it
    owner = await database_sync_to_async(make_user)()
    member = await database_sync_to_async(make_user)()
    viewer = await database_sync_to_async(make_user)()
    conv = await factories.conversation(owner, members=((member, "member"), (viewer, "viewer")))
    run = await factories.message(conv, owner, "@assistant owner's question", client_msg_id="o")
    owner_client = await ws.connected(owner)
    await owner_client.command("subscribe", conversation=conv)
    client = await ws.connected(viewer)
    before = await database_sync_to_async(db_snapshot)()
    fields: dict[str, Any] = {
        "send": {"conversation": conv, "client_msg_id": "v", "text": "viewer speaking"},
        "cancel": {"run_id": run.run_id},
        "typing": {"conversation": conv, "state": "start"},
        "draft": {"conversation": conv, "text": "viewer's unsent words"},
        "subscribe": {"conversation": conv, "since_seq": 0},
        "history": {"conversation": conv},
        "read": {"conversation": conv, "seq": 99},
    }[command]
    reply = await client.command(command, **fields)
    if command in VIEWER_REFUSED:
        assert reply["ok"] is False
        assert reply["error"]["code"] == "forbidden"
        # A member's typing is the barrier: whatever the viewer's command caused arrived before it.
        member_client = await ws.connected(member)
        await member_client.command("typing", conversation=conv, state="start")
        await owner_client.until(lambda f: f.get("type") == "typing" and f["data"]["user"]["id"] == member.id)
        assert viewer.username not in json.dumps(owner_client.frames)
        assert await database_sync_to_async(db_snapshot)() == before
        return
    assert reply["ok"] is True, reply
    head = await database_sync_to_async(Conversation.objects.values_list("last_seq", flat=True).get)(id=conv)
    if command == "subscribe":
        assert reply["head_seq"] == head
        replayed = await client.until(lambda f: f.get("type") == "message")
        assert replayed["data"]["text"] == "@assistant owner's question"
    if command == "history":
        texts = [e["data"].get("text") for e in reply["events"] if e["type"] == "message"]
        assert texts == ["@assistant owner's question"]
    if command == "read":
        read = await owner_client.until(lambda f: f.get("type") == "read")
        assert read["data"] == {"user": {"id": viewer.id, "username": viewer.username}, "seq": head}
        marker = await database_sync_to_async(ConversationMember.objects.values_list("last_read_seq", flat=True).get)(
            conversation_id=conv, user=viewer
        )
        assert marker == head


# --- tokens never reach a log ------------------------------------------------------------------------------
class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def every_log_record() -> Iterator[list[logging.LogRecord]]:
    """All records of every logger at DEBUG, including loggers that do not propagate to the root
    (servers' access and error loggers)."""
    handler = _Collect()
    manager = logging.Logger.manager
    loggers = [logging.getLogger()] + [
        lg for lg in manager.loggerDict.values() if isinstance(lg, logging.Logger) and not lg.propagate
    ]
    levels = {
        lg.name: lg.level
        for lg in [logging.getLogger(), *manager.loggerDict.values()]
        if isinstance(lg, logging.Logger)
    }
    for lg in [logging.getLogger(), *manager.loggerDict.values()]:
        if isinstance(lg, logging.Logger):
            lg.setLevel(logging.DEBUG)
    for lg in loggers:
        lg.addHandler(handler)
    try:
        yield handler.records
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
        for name, level in levels.items():
            (logging.getLogger(name) if name != "root" else logging.getLogger()).setLevel(level)


def secrets_of(tokens: list[str]) -> list[str]:
    """The tokens and each one's signature (enough on its own to prove the token was logged)."""
    out = []
    for token in tokens:
        out.append(token)
        parts = token.split(".")
        if len(parts) == 3 and len(parts[2]) >= 16:
            out.append(parts[2])
    return out


def assert_no_secret_logged(records: list[logging.LogRecord], tokens: list[str]) -> None:
    assert records, "the capture saw no record at all: it is not capturing"
    secrets = secrets_of(tokens)
    for record in records:
        text = " ".join(
            [record.getMessage(), repr(record.args), record.exc_text or "", logging.Formatter().format(record)]
        )
        for secret in secrets:
            assert secret not in text, f"{record.name}: a token reached the log: {text[:300]}"


async def test_tokens_never_reach_a_log_record_in_process(make_user: Any, settings: Any) -> None:
    settings.CHAT_AUTH_TIMEOUT_S = 0.5
    password = "pw-logging-test-123"
    user = await database_sync_to_async(user_create)(username=f"logcheck{time.time_ns()}", password=password)
    other = await database_sync_to_async(make_user)()
    tokens: list[str] = []
    with every_log_record() as records:

        def rest_flow() -> None:
            api = APIClient()
            pair = api.post("/api/auth/token/", {"username": user.username, "password": password}, format="json")
            assert pair.status_code == 200
            tokens.extend([pair.json()["access"], pair.json()["refresh"]])
            wrong = api.post("/api/auth/token/", {"username": user.username, "password": "wrong"}, format="json")
            assert wrong.status_code == 401
            refreshed = api.post("/api/auth/token/refresh/", {"refresh": pair.json()["refresh"]}, format="json")
            tokens.append(refreshed.json()["access"])
            assert api.post("/api/auth/token/refresh/", {"refresh": tokens[0]}, format="json").status_code == 401
            for bad in (tokens[1], bad_token("expired", user, other), bad_token("foreign_signature", user, other)):
                tokens.append(bad)
                api.credentials(HTTP_AUTHORIZATION=f"Bearer {bad}")
                assert api.get("/api/conversations/").status_code == 401
            api.credentials(HTTP_AUTHORIZATION=f"Bearer {tokens[0]}")
            assert api.get("/api/conversations/?token=" + tokens[0]).status_code == 200

        await database_sync_to_async(rest_flow)()
        access, refresh, refreshed, *bad = tokens
        ok = await _connect_with(access, "auth_frame")
        assert (await ok.command("auth", token=refreshed))["ok"] is True
        assert (await ok.command("auth", token=refresh))["error"]["code"] == "bad_request"
        others = await database_sync_to_async(access_token)(other)
        tokens.append(others)
        assert (await ok.command("auth", token=others))["error"]["code"] == "forbidden"
        for token in [refresh, *bad]:
            header_client, _, _ = await Client.connect(headers=bearer(token))
            frame_client, _, _ = await Client.connect()
            await frame_client.send_raw(json.dumps({"type": "auth", "token": token}))
            for client in (header_client, frame_client):
                assert await client.expect_close() == 4401
        for token in tokens:
            for key in ("token", "access_token", "jwt"):
                client, _, _ = await Client.connect(path=f"/ws/chat/?{key}={token}")
                assert await client.expect_close() == 4401
    assert_no_secret_logged(records, tokens)


async def _real_server_flow(stack: Any, user: str, password: str) -> list[str]:
    """REST token requests and sockets with good, bad and query-string tokens against a real server."""
    async with httpx.AsyncClient(base_url=stack.base_url) as http:
        pair = (await http.post("/api/auth/token/", json={"username": user, "password": password})).json()
        await http.post("/api/auth/token/", json={"username": user, "password": "wrong-password"})
        refreshed = (await http.post("/api/auth/token/refresh/", json={"refresh": pair["refresh"]})).json()
        await http.get("/api/conversations/", headers={"Authorization": f"Bearer {pair['refresh']}"})
        await http.get("/api/conversations/", headers={"Authorization": f"Bearer {pair['access']}"})
    tokens = [pair["access"], pair["refresh"], refreshed["access"]]
    codes = []
    for query, header, frame in [
        (f"?token={pair['access']}", None, None),
        (f"?access_token={pair['refresh']}", None, None),
        ("", pair["refresh"], None),
        ("", None, pair["refresh"]),
        ("", None, pair["access"]),
        ("", pair["access"], refreshed["access"]),
    ]:
        headers = {"Authorization": f"Bearer {header}"} if header else {}
        async with websockets.connect(
            stack.ws_url() + query, subprotocols=["chat.v1"], additional_headers=headers, open_timeout=10
        ) as ws:
            if frame:
                await ws.send(json.dumps({"type": "auth", "id": "a", "token": frame}))
            try:
                while True:
                    message = json.loads(await asyncio.wait_for(ws.recv(), 5))
                    if message.get("id") == "a" or message["type"] == "welcome" and not frame:
                        break
            except websockets.ConnectionClosed as exc:
                codes.append(exc.rcvd.code if exc.rcvd else None)
    assert codes == [4401, 4401, 4401, 4401], codes
    return tokens


@pytest.mark.timeout(240)  # starts a whole server stack inside the test
@pytest.mark.e2e
@pytest.mark.parametrize("server", ["uvicorn", "daphne"])
async def test_tokens_never_reach_the_real_servers_logs(server: str) -> None:
    """The deployed processes at LOG_LEVEL=DEBUG, access logs as configured by `manage.py serve`."""
    with running_stack(processes=1, server=server, env_overrides={"LOG_LEVEL": "DEBUG"}) as stack:
        tokens = await _real_server_flow(stack, "alice", "demo-password")
        log = stack.log()
    # The capture is real: the processes logged at DEBUG, and the handshake lines were written
    # (uvicorn's with the query string, redacted; daphne's access log without it).
    assert "DEBUG" in log
    if server == "uvicorn":
        assert "/ws/chat/?token=[redacted]" in log
    else:
        assert "WSCONNECT /ws/chat/" in log
        assert "/api/auth/token/" in log
    for secret in secrets_of(tokens):
        assert secret not in log, f"{server}: a token reached the server log"
