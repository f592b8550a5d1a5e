"""Tokens end when the account's credentials do (docs/operations.md "Tokens: lifetime and revocation").

A password change (the service road `set_password` + `save`, and the admin's password form),
log-out-everywhere (POST /api/auth/logout-all/) and deactivation revoke every access and refresh token
minted before: on REST, at the socket's handshake (Bearer) and `auth` frame, and at refresh. The user's
open sockets are closed once the change commits. A deleted user's refresh token is a 401, never a 500.
"""

from __future__ import annotations

import itertools
import json
import uuid

import pytest
from channels.db import database_sync_to_async
from django.conf import settings as django_settings
from django.contrib.auth.hashers import make_password
from django.test import Client as HttpClient
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import RefreshToken

from chat.infra.bus import publish_to_user
from chat.models import User
from chat.services.accounts import tokens_revoke, user_deactivate
from chat.services.conversations import user_create
from tests.support import ws
from tests.support.ws import Client

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fast_password_hashing")]

_addresses = itertools.count(1)


def api() -> APIClient:
    # Each client its own address: the per-IP windows of the token endpoints are shared by the whole run.
    n = next(_addresses)
    return APIClient(REMOTE_ADDR=f"10.77.{n // 250}.{n % 250 + 1}")


def person() -> tuple[User, str]:
    password = "pw-" + uuid.uuid4().hex
    return user_create(username="rev" + uuid.uuid4().hex[:10], password=password), password


def token_pair(username: str, password: str) -> dict[str, str]:
    response = api().post("/api/auth/token/", {"username": username, "password": password}, format="json")
    assert response.status_code == 200, response.content
    return dict(response.json())


def rest_status(access: str) -> int:
    client = api()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access}")
    return client.get("/api/conversations/").status_code


def refresh_status(refresh: str) -> int:
    return api().post("/api/auth/token/refresh/", {"refresh": refresh}, format="json").status_code


def bearer(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {token}".encode())]


async def refused_everywhere(pair: dict[str, str]) -> None:
    """The pair opens nothing: REST, refresh, the handshake's Bearer header and the auth frame."""
    assert await database_sync_to_async(rest_status)(pair["access"]) == 401
    assert await database_sync_to_async(refresh_status)(pair["refresh"]) == 401
    header, _, _ = await Client.connect(headers=bearer(pair["access"]))
    assert await header.expect_close() == 4401
    frame, _, _ = await Client.connect()
    await frame.send_raw(json.dumps({"type": "auth", "id": "a", "token": pair["access"]}))
    assert await frame.expect_close() == 4401


async def works_everywhere(pair: dict[str, str]) -> None:
    assert await database_sync_to_async(rest_status)(pair["access"]) == 200
    assert await database_sync_to_async(refresh_status)(pair["refresh"]) == 200
    client = await ws.connected(None, headers=bearer(pair["access"]))
    assert (await client.command("ping"))["ok"] is True
    await client.close()


def test_a_deleted_users_refresh_token_is_401_not_500() -> None:
    user, password = person()
    pair = token_pair(user.username, password)
    User.objects.filter(id=user.id).delete()
    response = api().post("/api/auth/token/refresh/", {"refresh": pair["refresh"]}, format="json")
    assert response.status_code == 401
    assert rest_status(pair["access"]) == 401


async def test_set_password_and_save_revokes_every_token_and_closes_token_sockets() -> None:
    user, password = await database_sync_to_async(person)()
    pair = await database_sync_to_async(token_pair)(user.username, password)
    refreshed = await database_sync_to_async(
        lambda: api().post("/api/auth/token/refresh/", {"refresh": pair["refresh"]}, format="json").json()["access"]
    )()
    await works_everywhere(pair)
    open_socket = await ws.connected(None, headers=bearer(refreshed))

    def change_password() -> None:
        fresh = User.objects.get(id=user.id)
        fresh.set_password("a-new-password-123")
        fresh.save()

    await database_sync_to_async(change_password)()
    assert await open_socket.expect_close() == 4401
    await refused_everywhere(pair)
    await refused_everywhere({"access": refreshed, "refresh": pair["refresh"]})
    await works_everywhere(await database_sync_to_async(token_pair)(user.username, "a-new-password-123"))


async def test_the_admin_password_form_revokes_every_token_and_closes_token_sockets() -> None:
    user, password = await database_sync_to_async(person)()
    staff, _ = await database_sync_to_async(person)()
    await database_sync_to_async(User.objects.filter(id=staff.id).update)(is_staff=True, is_superuser=True)
    pair = await database_sync_to_async(token_pair)(user.username, password)
    open_socket = await ws.connected(None, headers=bearer(pair["access"]))

    def admin_changes_password() -> None:
        admin = HttpClient()
        admin.force_login(User.objects.get(id=staff.id))
        response = admin.post(
            f"/admin/chat/user/{user.id}/password/",
            {"usable_password": "true", "password1": "Admin-set-pw-9876", "password2": "Admin-set-pw-9876"},
        )
        assert response.status_code == 302, response.content[:2000]

    await database_sync_to_async(admin_changes_password)()
    assert await open_socket.expect_close() == 4401
    await refused_everywhere(pair)
    await works_everywhere(await database_sync_to_async(token_pair)(user.username, "Admin-set-pw-9876"))


async def test_logout_all_revokes_tokens_and_sessions_and_closes_every_socket() -> None:
    user, password = await database_sync_to_async(person)()
    first = await database_sync_to_async(token_pair)(user.username, password)
    second = await database_sync_to_async(token_pair)(user.username, password)
    token_socket = await ws.connected(None, headers=bearer(second["access"]))
    browser = HttpClient()
    await database_sync_to_async(browser.force_login)(user)
    cookie = f"{django_settings.SESSION_COOKIE_NAME}={browser.cookies[django_settings.SESSION_COOKIE_NAME].value}"
    session_socket = await ws.connected(
        None, headers=[(b"cookie", cookie.encode()), (b"origin", b"http://localhost:8000")]
    )

    def logout_all() -> int:
        client = api()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {first['access']}")
        return client.post("/api/auth/logout-all/").status_code

    assert await database_sync_to_async(logout_all)() == 204
    assert await token_socket.expect_close() == 4401
    assert await session_socket.expect_close() == 4401
    await refused_everywhere(first)
    await refused_everywhere(second)
    page = await database_sync_to_async(browser.get)("/")
    assert page.status_code == 302  # the session is over too
    assert page["Location"].startswith("/login/")
    await works_everywhere(await database_sync_to_async(token_pair)(user.username, password))


def test_logout_all_needs_an_authenticated_caller() -> None:
    assert api().post("/api/auth/logout-all/").status_code == 401


async def test_deactivation_revokes_tokens_for_good_even_after_reactivation() -> None:
    user, password = await database_sync_to_async(person)()
    pair = await database_sync_to_async(token_pair)(user.username, password)
    await database_sync_to_async(user_deactivate)(user_id=user.id)
    assert await database_sync_to_async(refresh_status)(pair["refresh"]) == 401
    await database_sync_to_async(User.objects.filter(id=user.id).update)(is_active=True)
    await refused_everywhere(pair)
    await works_everywhere(await database_sync_to_async(token_pair)(user.username, password))


def test_a_token_without_the_revocation_claims_is_refused() -> None:
    """Tokens minted before revocation existed carry no password claim: they cannot be checked, so they
    are refused (fail closed) rather than trusted for the rest of their life."""
    user, _ = person()
    refresh = RefreshToken()
    refresh["user_id"] = str(user.id)
    assert rest_status(str(refresh.access_token)) == 401
    assert refresh_status(str(refresh)) == 401


async def test_a_token_revoked_while_its_socket_joins_still_closes_the_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    """Revocation publishes its close to the user's sockets; a socket that passed the handshake's token
    check but had not joined its user's stream yet cannot hear it, so the consumer asks again after
    the join — about the token, not only whether the account is active."""
    from chat.realtime.broadcast_manager import Hub  # the one place the join happens

    user, password = await database_sync_to_async(person)()
    pair = await database_sync_to_async(token_pair)(user.username, password)
    join_user = Hub.join_user

    async def revoke_then_join(self: Hub, user_id: int, outbox: object) -> None:
        await database_sync_to_async(tokens_revoke)(user_id=user_id)  # its close reaches no socket yet
        await join_user(self, user_id, outbox)  # type: ignore[arg-type]

    monkeypatch.setattr(Hub, "join_user", revoke_then_join)
    client, _, _ = await Client.connect(headers=bearer(pair["access"]))
    assert await client.expect_close() == 4401


async def test_a_revocations_close_that_arrives_late_spares_a_socket_of_the_new_password() -> None:
    """A revocation's close is published after its commit and travels on its own: it can reach this
    process after the person has already logged in again with the new password (seen: the close of a
    password change landing on the socket opened with the new one). Sockets ask the database whether
    their own identity still stands: the new one does and stays, one of an old token does not."""
    user, password = await database_sync_to_async(person)()
    old = await database_sync_to_async(token_pair)(user.username, password)
    old_socket = await ws.connected(None, headers=bearer(old["access"]))
    assert (await old_socket.command("ping"))["ok"] is True  # connected whole, before the change

    def change_password_without_telling() -> None:
        # The close this save publishes is the one that arrives "late": replayed by hand below.
        User.objects.filter(id=user.id).update(password=make_password("a-new-password-123"))

    await database_sync_to_async(change_password_without_telling)()
    new = await database_sync_to_async(token_pair)(user.username, "a-new-password-123")
    new_socket = await ws.connected(None, headers=bearer(new["access"]))
    # Answered only once the connect is handled whole: the socket listens for its user's messages.
    assert (await new_socket.command("ping"))["ok"] is True

    await publish_to_user(user.id, {"action": "close", "code": 4401, "recheck": True})

    assert await old_socket.expect_close() == 4401
    assert (await new_socket.command("ping"))["ok"] is True
    assert not [f for f in new_socket.frames if f.get("type") == "__close__"]
    await new_socket.close()
