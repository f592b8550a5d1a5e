"""Bad frames get the documented error and the connection stays usable (docs/protocol.md §2, §6.5)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from channels.db import database_sync_to_async

from chat.models import Event, Message
from tests.support import factories
from tests.support.ws import connected

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("not json", "bad_request"),
        ("[1, 2, 3]", "bad_request"),
        ('"a string"', "bad_request"),
        ("{}", "bad_request"),
        ('{"type": 5}', "bad_request"),
        ('{"type": "ping", "id": 7}', "bad_request"),
        ('{"type": "ping", "id": "' + "x" * 65 + '"}', "bad_request"),
        ('{"type": "launch_missiles"}', "unknown_command"),
        ("[" * 5000 + "]" * 5000, "bad_request"),
        ('{"type": "ping", "a": ' + '{"b": ' * 40 + "1" + "}" * 40 + "}", "bad_request"),
    ],
)
async def test_malformed_frame_gets_error_and_socket_stays_usable(make_user: Any, raw: str, code: str) -> None:
    client = await connected(await database_sync_to_async(make_user)())
    await client.send_raw(raw)
    frame = await client.recv()
    assert frame["type"] == "error"
    assert frame["error"]["code"] == code
    assert (await client.command("ping"))["ok"] is True
    await client.close()


async def test_binary_frame_is_refused(make_user: Any) -> None:
    client = await connected(await database_sync_to_async(make_user)())
    await client.send_raw(data=b"\x00\x01binary")
    frame = await client.recv()
    assert frame["type"] == "error"
    assert frame["error"]["code"] == "bad_request"
    assert (await client.command("ping"))["ok"] is True
    await client.close()


async def test_oversized_frame_is_too_large_and_nothing_is_stored(make_user: Any) -> None:
    user = await database_sync_to_async(make_user)()
    client = await connected(user)
    conv = await factories.conversation(user, agent="")
    text = "x" * (64 * 1024)
    await client.send_raw(
        json.dumps({"type": "send", "id": "big", "conversation": conv, "client_msg_id": "big", "text": text})
    )
    frame = await client.recv()
    assert frame["type"] == "error"
    assert frame["error"]["code"] == "too_large"
    assert await database_sync_to_async(Message.objects.filter(conversation_id=conv).count)() == 0
    assert (await client.command("ping"))["ok"] is True
    await client.close()


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"client_msg_id": "m", "text": 5}, "bad_request"),
        ({"client_msg_id": 5, "text": "hi"}, "bad_request"),
        ({"client_msg_id": "", "text": "hi"}, "bad_request"),
        ({"client_msg_id": "m" * 65, "text": "hi"}, "bad_request"),
        ({"client_msg_id": "m", "text": "   "}, "bad_request"),
        ({"client_msg_id": "m"}, "bad_request"),
        ({"client_msg_id": "m", "text": "y" * 16_001}, "too_large"),
    ],
)
async def test_send_with_bad_fields_is_refused_with_no_side_effect(
    make_user: Any, fields: dict[str, Any], code: str
) -> None:
    user = await database_sync_to_async(make_user)()
    client = await connected(user)
    conv = await factories.conversation(user)
    reply = await client.command("send", conversation=conv, **fields)
    assert reply["ok"] is False
    assert reply["error"]["code"] == code
    assert await database_sync_to_async(Event.objects.filter(conversation_id=conv).count)() == 0
    await client.close()


@pytest.mark.parametrize(
    ("command", "fields"),
    [
        ("subscribe", {"conversation": "c", "since_seq": -1}),
        ("subscribe", {"since_seq": 1}),
        ("history", {"conversation": "c", "limit": 101}),
        ("history", {"conversation": "c", "limit": "10"}),
        ("history", {"conversation": "c", "before_seq": True}),
        ("typing", {"conversation": "c", "state": "dancing"}),
        ("read", {"conversation": "c", "seq": "1"}),
        ("cancel", {}),
        ("sync_notifications", {}),
        ("auth", {"token": 12}),
    ],
)
async def test_wrong_field_types_get_bad_request(make_user: Any, command: str, fields: dict[str, Any]) -> None:
    user = await database_sync_to_async(make_user)()
    client = await connected(user)
    conv = await factories.conversation(user)
    fields = {k: (conv if v == "c" else v) for k, v in fields.items()}
    reply = await client.command(command, **fields)
    assert reply["ok"] is False
    assert reply["error"]["code"] == "bad_request"
    await client.close()


async def test_repeated_abuse_closes_4400(make_user: Any) -> None:
    client = await connected(await database_sync_to_async(make_user)())
    for _ in range(31):
        await client.send_raw("garbage")
    assert await client.expect_close() == 4400
