"""Every way in and out of /ws/chat/ (docs/protocol.md §1): session cookie, Bearer header, auth frame,
refusals with their close codes, welcome first, token expiry and refresh, logout, deactivation."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore
from rest_framework_simplejwt.tokens import AccessToken

from chat.realtime.broadcast_manager import current_hub
from chat.realtime.groups import GroupMembership
from chat.realtime.shutdown import drain_sockets
from chat.services.accounts import user_deactivate, user_sockets_close
from tests.support.waiting import consistently
from tests.support.ws import Client, access_token

pytestmark = [pytest.mark.django_db(transaction=True)]


def session_cookie(user: Any) -> bytes:
    store = SessionStore()
    store[SESSION_KEY] = str(user.pk)
    store[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    store[HASH_SESSION_KEY] = user.get_session_auth_hash()
    store.save()
    return f"sessionid={store.session_key}".encode()


async def test_bearer_header_gets_welcome_with_tier_and_limits_first(make_user: Any) -> None:
    user = await database_sync_to_async(make_user)(tier="pro")
    client, connected, subprotocol = await Client.connect(user)
    assert connected
    assert subprotocol == "chat.v1"
    welcome = await client.recv()
    assert welcome["type"] == "welcome"
    data = welcome["data"]
    assert data["user"] == {"id": user.id, "username": user.username, "tier": "pro"}
    assert data["protocol"] == "chat.v1"
    assert data["limits"]["max_frame_bytes"] == 64 * 1024
    assert data["limits"]["replay_limit"] == 500
    assert {"session_id", "server_time", "heartbeat_ms", "typing_ttl_ms"} <= set(data)
    pong = await client.command("ping")
    assert pong["ok"] is True
    assert pong["server_time"].endswith("Z")
    await client.close()


async def test_session_cookie_authenticates_same_origin_browser(make_user: Any) -> None:
    user = await database_sync_to_async(make_user)()
    cookie = await database_sync_to_async(session_cookie)(user)
    client, connected, _ = await Client.connect(
        headers=[(b"cookie", cookie), (b"origin", b"http://localhost:8000"), (b"host", b"localhost:8000")]
    )
    assert connected
    welcome = await client.recv()
    assert welcome["type"] == "welcome"
    assert welcome["data"]["user"]["id"] == user.id
    await client.close()


async def test_auth_frame_authenticates_and_commands_before_it_are_refused(make_user: Any) -> None:
    user = await database_sync_to_async(make_user)()
    token = await database_sync_to_async(access_token)(user)
    client, connected, _ = await Client.connect()
    assert connected
    await client.send_raw(json.dumps({"type": "ping", "id": "early"}))
    refused = await client.recv()
    assert refused["type"] == "reply"
    assert refused["ok"] is False
    assert refused["error"]["code"] == "bad_request"
    await client.send_raw(json.dumps({"type": "auth", "id": "a1", "token": token}))
    welcome = await client.recv()
    assert welcome["type"] == "welcome"
    reply = await client.recv()
    assert reply["id"] == "a1"
    assert reply["ok"] is True
    assert reply["expires_at"].endswith("Z")
    await client.close()


async def test_no_auth_frame_in_time_closes_4401(make_user: Any, settings: Any) -> None:
    settings.CHAT_AUTH_TIMEOUT_S = 0.2
    client, connected, _ = await Client.connect()
    assert connected
    assert await client.expect_close() == 4401


@pytest.mark.parametrize(
    ("headers", "path", "code"),
    [
        ([(b"authorization", b"Bearer not-a-jwt")], "/ws/chat/", 4401),
        ([(b"authorization", b"Basic dXNlcjpwdw==")], "/ws/chat/", 4401),
        ([], "/ws/chat/?token=abc", 4401),
        ([], "/ws/chat/?access_token=abc", 4401),
        ([(b"origin", b"https://evil.example.com")], "/ws/chat/", 4403),
    ],
)
async def test_refused_handshakes_close_with_the_documented_code(headers: Any, path: str, code: int) -> None:
    client, connected, _ = await Client.connect(headers=headers, path=path)
    assert connected
    assert await client.expect_close() == code


async def test_expired_token_is_refused_with_4401(make_user: Any) -> None:
    user = await database_sync_to_async(make_user)()
    token = AccessToken.for_user(user)
    token.set_exp(lifetime=-timedelta(seconds=1))
    client, _, _ = await Client.connect(headers=[(b"authorization", f"Bearer {token}".encode())])
    assert await client.expect_close() == 4401


async def test_socket_closes_4401_when_its_token_expires_unless_refreshed(make_user: Any) -> None:
    user = await database_sync_to_async(make_user)()
    short = AccessToken.for_user(user)
    short.set_exp(lifetime=timedelta(seconds=1))
    client, _, _ = await Client.connect(headers=[(b"authorization", f"Bearer {short}".encode())])
    assert (await client.recv())["type"] == "welcome"
    assert await client.expect_close(timeout=5) == 4401

    second = AccessToken.for_user(user)
    second.set_exp(lifetime=timedelta(seconds=2))
    refreshed, _, _ = await Client.connect(headers=[(b"authorization", f"Bearer {second}".encode())])
    assert (await refreshed.recv())["type"] == "welcome"
    fresh = await database_sync_to_async(access_token)(user)
    reply = await refreshed.command("auth", token=fresh)
    assert reply["ok"] is True

    # Past the first token's expiry the socket still answers: the fresh token replaced it.
    # (One ping per 50 ms: a tight ping loop would spend the tier's command budget.)
    async def answers_ping() -> bool:
        return (await refreshed.command("ping"))["ok"] is True

    await consistently(
        answers_ping,
        second["exp"] + 0.5 - time.time(),
        lambda: f"the refreshed socket answers ping; last frames: {refreshed.frames[-3:]}",
        interval=0.05,
    )
    await refreshed.close()


async def test_auth_with_another_users_token_is_forbidden(make_user: Any) -> None:
    alice = await database_sync_to_async(make_user)()
    bob = await database_sync_to_async(make_user)()
    client, _, _ = await Client.connect(alice)
    await client.recv()
    reply = await client.command("auth", token=await database_sync_to_async(access_token)(bob))
    assert reply["ok"] is False
    assert reply["error"]["code"] == "forbidden"
    assert (await client.command("ping"))["ok"] is True
    await client.close()


async def test_handshake_without_chat_v1_subprotocol_is_rejected(make_user: Any) -> None:
    user = await database_sync_to_async(make_user)()
    _, connected, _ = await Client.connect(user, subprotocols=["other"])
    assert connected is False


async def test_a_logout_right_after_welcome_closes_the_socket_even_when_joining_is_slow(
    make_user: Any, monkeypatch: Any
) -> None:
    """Welcome promises the socket is live: a logout the client sees after it must reach the
    socket, even when joining the user's channel-layer group is slow (Redis under load)."""
    user = await database_sync_to_async(make_user)()
    real_add = GroupMembership._group_add

    async def slow_add(self: Any, group: str) -> None:
        if group.startswith("user."):
            await asyncio.sleep(0.3)  # a slow Redis, injected: the close below must not overtake it
        await real_add(self, group)

    monkeypatch.setattr(GroupMembership, "_group_add", slow_add)
    tab, _, _ = await Client.connect(user)
    assert (await tab.recv())["type"] == "welcome"
    await database_sync_to_async(user_sockets_close)(user_id=user.id, code=4401, recheck=False)
    assert await tab.expect_close() == 4401


async def test_logout_and_deactivation_close_every_socket_of_the_user(make_user: Any) -> None:
    user = await database_sync_to_async(make_user)()
    other = await database_sync_to_async(make_user)()
    tabs = [(await Client.connect(user))[0] for _ in range(2)]
    bystander, _, _ = await Client.connect(other)
    for tab in [*tabs, bystander]:
        await tab.recv()
    # A logout (Django's): every socket of the user closes, token or not (no recheck of the token).
    await database_sync_to_async(user_sockets_close)(user_id=user.id, code=4401, recheck=False)
    for tab in tabs:
        assert await tab.expect_close() == 4401
    assert (await bystander.command("ping"))["ok"] is True

    again, _, _ = await Client.connect(user)
    await again.recv()
    await database_sync_to_async(user_deactivate)(user_id=user.id)
    assert await again.expect_close() == 4403
    _, connected, _ = await Client.connect(user)
    # A deactivated user's still-valid token no longer opens a socket.
    retry, _, _ = await Client.connect(user)
    assert await retry.expect_close() == 4401
    await bystander.close()


async def test_a_server_going_down_writes_what_each_socket_has_queued_then_closes_1012(make_user: Any) -> None:
    """SIGTERM's drain (chat/realtime/shutdown.py): the frames a socket's outbox holds are written before
    its 1012, where uvicorn alone would close at once and drop them; sockets of other users too."""
    user, other = await database_sync_to_async(make_user)(), await database_sync_to_async(make_user)()
    tab, _, _ = await Client.connect(user)
    bystander, _, _ = await Client.connect(other)
    for client in (tab, bystander):
        assert (await client.recv())["type"] == "welcome"
    hub = current_hub()
    assert hub is not None
    (outbox,) = hub.users[user.id]
    queued = [json.dumps({"type": "notification", "data": {"n": n}}) for n in range(50)]
    for text in queued:  # queued at once, before the writer gets a turn
        outbox.send_frame(text)
    assert await drain_sockets(code=1012, timeout_s=5) == 0
    frames = [await tab.recv() for _ in range(len(queued) + 1)]
    assert [f.get("data", {}).get("n") for f in frames[:-1]] == list(range(50))
    assert frames[-1] == {"type": "__close__", "code": 1012}
    assert await bystander.expect_close() == 1012
