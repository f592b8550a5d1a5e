"""User notifications: stored with a per-user gap-free seq, pushed live to every socket of that
user only, and replayed by `sync_notifications`."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone
from rest_framework.test import APIClient

from agents.models import TERMINAL_STATUSES, AgentRun
from chat import wire
from chat.models import Notification, RunEndNote, User
from chat.realtime import commands, notification_worker
from chat.services import push
from chat.services.conversations import conversation_member_add
from chat.services.notification_config import generate_vapid_private_key, vapid_public_key
from chat.services.notifications import notify_approval_requested
from monitoring.metrics import metrics
from tests.support import factories
from tests.support.push_endpoint import Browser, PushEndpoint
from tests.support.waiting import eventually
from tests.support.ws import Client, access_token

pytestmark = [pytest.mark.django_db(transaction=True)]


async def test_being_added_to_a_conversation_notifies_every_socket_of_that_user_only(make_user: Any) -> None:
    alice = await database_sync_to_async(make_user)()
    bob = await database_sync_to_async(make_user)()
    carol = await database_sync_to_async(make_user)()
    conv = await factories.conversation(alice)
    bob_tabs = [(await Client.connect(bob))[0] for _ in range(2)]
    carol_client, _, _ = await Client.connect(carol)
    for client in [*bob_tabs, carol_client]:
        await client.recv()
    await database_sync_to_async(conversation_member_add)(
        conversation_id=conv, actor_id=alice.id, username=bob.username, role="member"
    )
    for tab in bob_tabs:
        note = await tab.seen_or_until(lambda f: f.get("type") == "notification")
        assert note["seq"] == 1
        assert note["data"]["kind"] == "added_to_conversation"
        assert note["data"]["conversation"] == conv
        assert note["data"]["role"] == "member"
    assert (await carol_client.command("ping"))["ok"] is True
    assert not [f for f in carol_client.frames if f.get("type") == "notification"]
    for client in [*bob_tabs, carol_client]:
        await client.close()


async def test_sync_notifications_replays_what_was_missed(make_user: Any) -> None:
    alice = await database_sync_to_async(make_user)()
    bob = await database_sync_to_async(make_user)()
    convs = [await factories.conversation(alice, agent="") for _ in range(3)]
    for conv in convs:
        await database_sync_to_async(conversation_member_add)(
            conversation_id=conv, actor_id=alice.id, username=bob.username, role="viewer"
        )
    client, _, _ = await Client.connect(bob)
    await client.recv()
    from_buffer = metrics.counter("notification_replays", source="buffer")
    reply = await client.command("sync_notifications", since_seq=1)
    assert metrics.counter("notification_replays", source="buffer") == from_buffer + 1  # not the database
    assert reply["head_seq"] == 3
    missed = [await client.recv(), await client.recv()]
    assert [n["seq"] for n in missed] == [2, 3]
    assert [n["data"]["conversation"] for n in missed] == convs[1:]
    assert (await client.command("sync_notifications", since_seq=3))["head_seq"] == 3
    assert (await client.command("ping"))["ok"] is True
    assert [f["seq"] for f in client.frames if f.get("type") == "notification"] == [2, 3]
    await client.close()


def _many_notifications(user: Any, count: int) -> None:
    """`count` stored notifications, written in one statement: none is in the user's hot buffer, so
    a sync reads them from the database, where a page ends."""
    now = timezone.now()
    Notification.objects.bulk_create(
        Notification(user=user, seq=seq, data={"kind": "test", "n": seq}, created_at=now) for seq in range(1, count + 1)
    )
    User.objects.filter(id=user.id).update(notification_seq=count)


async def test_sync_notifications_says_when_a_page_stops_before_the_head(make_user: Any) -> None:
    """More missed than one reply carries: the reply says where its frames stop and that more exist,
    and asking again from there gets the rest, none twice."""
    page = commands.SYNC_NOTIFICATIONS_PAGE
    bob = await database_sync_to_async(make_user)()
    await database_sync_to_async(_many_notifications)(bob, page + 2)
    client, _, _ = await Client.connect(bob)
    await client.recv()
    first = await client.command("sync_notifications", since_seq=0)
    assert (first["head_seq"], first["until_seq"], first["has_more"]) == (page + 2, page, True)
    second = await client.command("sync_notifications", since_seq=first["until_seq"])
    assert (second["head_seq"], second["until_seq"], second["has_more"]) == (page + 2, page + 2, False)
    third = await client.command("sync_notifications", since_seq=page + 2)
    assert (third["until_seq"], third["has_more"]) == (page + 2, False)
    assert (await client.command("ping"))["ok"] is True
    seqs = [f["seq"] for f in client.frames if f.get("type") == "notification"]
    assert seqs == list(range(1, page + 3))
    await client.close()


# --- routing to Web Push and the email digest (docs/protocol.md §9) ------------------------------------------
# The worker's passes are driven here with a clock of the test's own (`now`), never by waiting.


@pytest.fixture
def push_service(settings: Any) -> Iterator[PushEndpoint]:
    """A local push service the server may deliver to, and Web Push configured with a new VAPID key."""
    endpoint = PushEndpoint.start()
    settings.VAPID_PRIVATE_KEY = generate_vapid_private_key()
    settings.NOTIFICATIONS = {"push_insecure_hosts": [endpoint.host], "digest_grace_s": GRACE_S}
    yield endpoint
    endpoint.stop()


GRACE_S = 600


@dataclass
class Pair:
    alice: Any
    bob: Any  # the one who is mentioned: offline, with a laptop subscribed to push
    conv: str
    laptop: Browser
    api: APIClient  # bob's REST client


async def _pair(make_user: Any, endpoint: PushEndpoint) -> Pair:
    alice = await database_sync_to_async(make_user)()
    bob = await database_sync_to_async(make_user)(email="bob@example.com")
    conv = await factories.conversation(alice, agent="", members=((bob, "member"),))
    laptop = Browser()
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {await database_sync_to_async(access_token)(bob)}")
    answer = await database_sync_to_async(api.post)(
        "/api/me/push-subscriptions/", laptop.subscription(endpoint.url("bob-laptop")), format="json"
    )
    assert answer.status_code == 201, answer.content
    return Pair(alice, bob, conv, laptop, api)


async def _mention(pair: Pair, text: str) -> None:
    client, _, _ = await Client.connect(pair.alice)
    await client.recv()
    reply = await client.command("send", conversation=pair.conv, client_msg_id=uuid.uuid4().hex, text=text)
    assert reply["ok"] is True, reply
    await client.close()


async def _synced_mentions(user: Any) -> list[dict[str, Any]]:
    client, _, _ = await Client.connect(user)
    await client.recv()
    reply = await client.command("sync_notifications", since_seq=0)
    assert reply["has_more"] is False
    await client.command("ping")  # the replayed frames came before this reply
    await client.close()
    return [f["data"] for f in client.frames if f.get("type") == "notification" and f["data"]["kind"] == "mention"]


async def _patch(pair: Pair, body: dict[str, Any]) -> dict[str, Any]:
    answer = await database_sync_to_async(pair.api.patch)("/api/me/notification-settings/", body, format="json")
    assert answer.status_code == 200, answer.content
    return answer.json()  # type: ignore[no-any-return]


async def test_a_mention_of_an_offline_user_is_one_notification_one_push_and_one_email(
    make_user: Any, push_service: PushEndpoint, mailoutbox: list[Any]
) -> None:
    pair = await _pair(make_user, push_service)
    await _mention(pair, f"@{pair.bob.username} can you review the launch plan?")

    [mention] = await _synced_mentions(pair.bob)
    assert mention["actor"] == {"id": pair.alice.id, "username": pair.alice.username}
    assert (mention["conversation"], mention["priority"]) == (pair.conv, "normal")
    assert mention["preview"] == f"@{pair.bob.username} can you review the launch plan?"

    now = timezone.now()
    await notification_worker.run_once(now=now)
    [push] = push_service.received("bob-laptop")
    payload = pair.laptop.decrypt(push.body)
    assert (payload["kind"], payload["count"], payload["body"]) == ("mention", 1, mention["preview"])
    assert (payload["conversation"], payload["url"], payload["seq"]) == (pair.conv, f"/c/{pair.conv}/", mention["seq"])
    assert push.headers["urgency"] == "normal"
    assert push.headers["content-encoding"] == "aes128gcm"
    assert push.vapid_claims["sub"].startswith("mailto:")
    assert mailoutbox == []  # the digest waits: the mention might be read in the app first

    await notification_worker.run_once(now=now + timedelta(seconds=GRACE_S + 1))
    await notification_worker.run_once(now=now + timedelta(seconds=GRACE_S + 2))  # one per period
    [email] = mailoutbox
    assert email.to == ["bob@example.com"]
    assert "can you review the launch plan?" in email.body
    assert len(push_service.received("bob-laptop")) == 1


async def test_a_conversation_set_to_none_gets_no_notification_push_or_email(
    make_user: Any, push_service: PushEndpoint, mailoutbox: list[Any]
) -> None:
    pair = await _pair(make_user, push_service)
    settings_now = await _patch(pair, {"conversations": {pair.conv: "none"}})
    assert settings_now["conversations"] == {pair.conv: "none"}
    read = await database_sync_to_async(pair.api.post)("/api/me/notifications/read/", {"up_to_seq": 10}, format="json")
    assert read.status_code == 200  # being added is read: the digest has nothing older to send
    await _mention(pair, f"@{pair.bob.username} are you there?")

    assert await _synced_mentions(pair.bob) == []
    now = timezone.now()
    for later in (0, GRACE_S + 1, 2 * GRACE_S):
        await notification_worker.run_once(now=now + timedelta(seconds=later))
    assert push_service.received("bob-laptop") == []
    assert mailoutbox == []


async def test_quiet_hours_hold_push_and_email_until_they_end_but_never_an_urgent_one(
    make_user: Any, push_service: PushEndpoint, mailoutbox: list[Any]
) -> None:
    pair = await _pair(make_user, push_service)
    zone = ZoneInfo("America/New_York")
    local = timezone.now().astimezone(zone)
    start, end = (local - timedelta(hours=1)).strftime("%H:%M"), (local + timedelta(hours=2)).strftime("%H:%M")
    await _patch(pair, {"quiet_hours": {"start": start, "end": end, "timezone": "America/New_York"}})
    await _mention(pair, f"@{pair.bob.username} tomorrow is fine")
    assert len(await _synced_mentions(pair.bob)) == 1  # in-app is never held

    now = timezone.now()
    await notification_worker.run_once(now=now)
    await notification_worker.run_once(now=now + timedelta(seconds=GRACE_S + 1))
    assert push_service.received("bob-laptop") == []
    assert mailoutbox == []

    # An urgent one (a run waits on bob's approval) goes out during quiet hours all the same.
    await database_sync_to_async(notify_approval_requested)(
        conversation_id=pair.conv,
        seq=1,
        run_id=str(uuid.uuid4()),
        call_id="call-1",
        tool="invite_member",
        approver_ids=[pair.bob.id],
        requested_by_id=pair.alice.id,
        requested_by_username=pair.alice.username,
    )
    await notification_worker.run_once(now=timezone.now())
    [urgent] = push_service.received("bob-laptop")
    assert pair.laptop.decrypt(urgent.body)["kind"] == "approval_requested"
    assert urgent.headers["urgency"] == "high"

    # When the quiet hours end, the held mention goes out, and the digest with it.
    after = now + timedelta(hours=2, minutes=1)
    await notification_worker.run_once(now=after)
    kinds = [pair.laptop.decrypt(p.body)["kind"] for p in push_service.received("bob-laptop")]
    assert kinds == ["approval_requested", "mention"]
    [email] = mailoutbox
    assert "tomorrow is fine" in email.body


async def test_ten_mentions_in_a_minute_are_one_push_with_their_count_and_the_author_is_never_told(
    make_user: Any, push_service: PushEndpoint
) -> None:
    pair = await _pair(make_user, push_service)
    alices_laptop = Browser()
    await database_sync_to_async(push.subscription_save)(
        user_id=pair.alice.id, body=alices_laptop.subscription(push_service.url("alice")), now=timezone.now()
    )
    for i in range(10):
        await database_sync_to_async(factories.message_sync)(
            pair.conv, pair.alice, f"@{pair.bob.username} @{pair.alice.username} ping {i}"
        )
    now = timezone.now()
    await notification_worker.run_once(now=now)
    [first] = push_service.received("bob-laptop")
    assert (pair.laptop.decrypt(first.body)["count"], pair.laptop.decrypt(first.body)["body"]) == (
        10,
        f"@{pair.bob.username} @{pair.alice.username} ping 9",
    )
    # Two more within the window wait for its end, then go out as one.
    for i in range(2):
        await database_sync_to_async(factories.message_sync)(pair.conv, pair.alice, f"@{pair.bob.username} again {i}")
    await notification_worker.run_once(now=now + timedelta(seconds=30))
    assert len(push_service.received("bob-laptop")) == 1
    await notification_worker.run_once(now=now + timedelta(seconds=61))
    second = push_service.received("bob-laptop")[1]
    assert pair.laptop.decrypt(second.body)["count"] == 2
    assert push_service.received("alice") == []
    assert await database_sync_to_async(Notification.objects.filter(user=pair.alice).count)() == 0


async def _run_ends(user: Any, conv: str, *, watching: bool) -> list[dict[str, Any]]:
    """`user` asks the agent; their socket stays subscribed to the conversation, or unsubscribes,
    until the run has ended; then a worker pass. Returns their agent_finished notifications."""
    client, _, _ = await Client.connect(user)
    await client.recv()
    assert (await client.command("subscribe", conversation=conv))["ok"] is True
    reply = await client.command("send", conversation=conv, client_msg_id=uuid.uuid4().hex, text="summarise")
    if not watching:
        assert (await client.command("unsubscribe", conversation=conv))["ok"] is True

    def ended() -> bool:
        return AgentRun.objects.filter(id=reply["run_id"], status__in=TERMINAL_STATUSES).exists()

    await eventually(database_sync_to_async(ended), what="the run ended")
    await notification_worker.run_once(now=timezone.now())
    await client.close()
    rows = await database_sync_to_async(list)(Notification.objects.filter(user=user, kind="agent_finished"))
    return [n.data for n in rows]


async def test_agent_finished_tells_a_requester_who_was_not_watching_only(make_user: Any) -> None:
    alice = await database_sync_to_async(make_user)()
    conv = await factories.conversation(alice)
    assert await _run_ends(alice, conv, watching=True) == []
    [finished] = await _run_ends(alice, conv, watching=False)
    assert (finished["conversation"], finished["actor"], finished["status"]) == (conv, None, "completed")
    assert finished["preview"]  # the answer's first 200 characters
    assert await database_sync_to_async(RunEndNote.objects.count)() == 0  # every ended run decided once


async def test_the_welcome_carries_the_vapid_public_key_only_when_push_is_configured(
    make_user: Any, settings: Any
) -> None:
    user = await database_sync_to_async(make_user)()
    settings.VAPID_PRIVATE_KEY = ""
    client, _, _ = await Client.connect(user)
    assert "vapid_public_key" not in (await client.recv())["data"]
    await client.close()
    settings.VAPID_PRIVATE_KEY = generate_vapid_private_key()
    client, _, _ = await Client.connect(user)
    welcome = await client.recv()
    assert welcome["data"]["vapid_public_key"] == vapid_public_key()
    wire.decode_frame(welcome)  # the declared schema, extension included
    await client.close()
