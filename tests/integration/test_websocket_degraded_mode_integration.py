"""The consumer while the PostgreSQL circuit is open, on a live consumer with real
PostgreSQL and Redis. The circuit is opened the way production opens it — by recording transient
failures into this process's breaker — so the test controls when "PostgreSQL is down" for the
consumer without stopping the database the test itself needs (the real outage, with PostgreSQL
behind a refusing proxy, is tests/integration/websocket_core/test_websocket_error_resilience_integration.py).

- database commands are answered `unavailable` at once, with the circuit's retry_after_ms;
- typing on a subscribed conversation keeps working, with the role the socket last knew: a member
  downgraded to viewer before the outage cannot type during it; ping and unsubscribe work;
- once the circuit's probe succeeds, everything works again without reconnecting."""

from __future__ import annotations

import time
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.db import OperationalError

from chat.infra.breakers import breaker
from chat.services.conversations import conversation_member_add
from tests.support import factories
from tests.support.waiting import eventually
from tests.support.ws import Client

pytestmark = [pytest.mark.django_db(transaction=True)]


def open_postgres_circuit() -> None:
    database = breaker("postgres")
    while database.state != "open":
        database.record_failure(OperationalError("connection refused"))


async def test_commands_during_a_database_outage_and_after(make_user: Any, settings: Any) -> None:
    settings.CHAT_BREAKER_POSTGRES_RESET_S = 0.3
    owner = await database_sync_to_async(make_user)()
    member = await database_sync_to_async(make_user)()
    demoted = await database_sync_to_async(make_user)()
    conv = await factories.conversation(owner, agent="", members=((member, "member"), (demoted, "member")))
    clients = {}
    for name, user in (("owner", owner), ("member", member), ("demoted", demoted)):
        client, ok, _ = await Client.connect(user)
        assert ok
        await client.recv()  # welcome
        assert (await client.command("subscribe", conversation=conv))["ok"] is True
        clients[name] = client
    await database_sync_to_async(conversation_member_add)(
        conversation_id=conv, actor_id=owner.id, username=demoted.username, role="viewer"
    )
    # The role change reaches the demoted socket (as a notification here, once it committed).
    await clients["demoted"].until(lambda f: f.get("type") == "notification")

    open_postgres_circuit()
    started = time.monotonic()
    refused = await clients["member"].command("send", conversation=conv, client_msg_id="m1", text="hello")
    assert refused["ok"] is False
    assert refused["error"]["code"] == "unavailable"
    assert refused["error"]["retry_after_ms"] > 0
    assert (await clients["member"].command("history", conversation=conv))["error"]["code"] == "unavailable"
    assert time.monotonic() - started < 1.0  # at once, not after a pool timeout

    typing = await clients["member"].command("typing", conversation=conv, state="start")
    assert typing["ok"] is True
    seen = await clients["owner"].until(lambda f: f.get("type") == "typing")
    assert seen["data"]["user"]["id"] == member.id
    viewer_typing = await clients["demoted"].command("typing", conversation=conv, state="start")
    assert viewer_typing["error"]["code"] == "forbidden"
    assert (await clients["member"].command("ping"))["ok"] is True

    # The circuit lets a probe through after its reset time; the database is fine, so it closes.
    async def sent_once_the_circuit_closes() -> bool:
        sent = await clients["member"].command("send", conversation=conv, client_msg_id="m1", text="hello")
        if not sent["ok"]:
            assert sent["error"]["code"] == "unavailable"
        return sent["ok"]

    # (Every 50 ms while waiting for the circuit's reset time.)
    await eventually(sent_once_the_circuit_closes, 10, "the circuit to close", interval=0.05)
    assert breaker("postgres").state == "closed"
    await clients["owner"].until(lambda f: f.get("type") == "message" and f["data"]["text"] == "hello")
    assert (await clients["demoted"].command("history", conversation=conv))["ok"] is True


def admin_form_data(response: Any) -> dict[str, Any]:
    """The change form's current values, as the browser would post them back (main form + inlines)."""
    data: dict[str, Any] = {}
    form = response.context["adminform"].form
    for name in form.fields:
        value = form[name].value()
        if value not in (None, False):
            data[name] = value
    for inline in response.context["inline_admin_formsets"]:
        formset = inline.formset
        for key, value in formset.management_form.initial.items():
            data[f"{formset.prefix}-{key}"] = value
        for sub in formset.forms:
            for name in sub.fields:
                value = sub[name].value()
                if value not in (None, False):
                    data[sub.add_prefix(name)] = value
    return data


async def test_a_role_changed_by_staff_in_the_admin_reaches_the_sockets(make_user: Any, settings: Any) -> None:
    from django.test import Client as HttpClient

    owner = await database_sync_to_async(make_user)()
    member = await database_sync_to_async(make_user)()
    staff = await database_sync_to_async(make_user)(is_staff=True, is_superuser=True)
    conv = await factories.conversation(owner, agent="", members=((member, "member"),))
    client, ok, _ = await Client.connect(member)
    assert ok
    await client.recv()
    assert (await client.command("subscribe", conversation=conv))["ok"] is True

    def demote_in_admin() -> int:
        browser = HttpClient()
        browser.force_login(staff)
        url = f"/admin/chat/conversation/{conv}/change/"
        data = admin_form_data(browser.get(url))
        row = next(k for k, v in data.items() if k.endswith("-user") and str(v) == str(member.id))
        data[row.replace("-user", "-role")] = "viewer"
        return browser.post(url, data).status_code

    assert await database_sync_to_async(demote_in_admin)() == 302
    open_postgres_circuit()

    async def typing_forbidden() -> bool:
        typing = await client.command("typing", conversation=conv, state="start")
        return typing.get("error", {}).get("code") == "forbidden"

    # The role message is delivered through the hub, asynchronously. (Typing has its own rate
    # budget: poll gently.)
    await eventually(typing_forbidden, 5, "the socket to learn the new role", interval=0.2)
