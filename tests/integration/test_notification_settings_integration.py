"""The caller's notification settings and list over REST (docs/protocol.md §9): every preference
validated whole (a bad value anywhere changes nothing and says which field), the routing each one
causes, and the list with its read state on every device."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone
from rest_framework.test import APIClient

from chat.models import Notification, NotificationSettings
from chat.services import notification_prefs
from chat.services.notifications import notify_agent_finished, notify_approval_requested, notify_mentions
from chat.wire.frames import rfc3339
from tests.support import factories
from tests.support.ws import Client, access_token

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fast_password_hashing")]

URL = "/api/me/notification-settings/"


def api_for(user: Any) -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {access_token(user)}")
    return api


def test_the_defaults_cover_every_kind_and_nothing_else(make_user: Any) -> None:
    body = api_for(make_user()).get(URL).json()
    assert body == {
        "kinds": notification_prefs.DEFAULTS,
        "conversations": {},
        "quiet_hours": None,
        "muted_until": None,
    }


def test_a_patch_changes_only_what_it_names(make_user: Any) -> None:
    owner = make_user()
    conv = factories.conversation_sync(owner, agent="")
    api = api_for(owner)
    muted = (timezone.now() + timedelta(days=30)).astimezone(ZoneInfo("Europe/Paris")).replace(microsecond=0)
    api.patch(URL, {"kinds": {"mention": {"email": False}}}, format="json")
    body = api.patch(
        URL,
        {
            "kinds": {"agent_finished": {"push": False}},
            "conversations": {conv.upper(): "mentions"},  # any spelling of the id
            "quiet_hours": {"start": "22:30", "end": "07:00", "timezone": "Europe/Paris"},
            "muted_until": muted.isoformat(),
        },
        format="json",
    ).json()
    assert body["kinds"]["mention"] == {"in_app": True, "push": True, "email": False}
    assert body["kinds"]["agent_finished"] == {"in_app": True, "push": False, "email": False}
    assert body["conversations"] == {conv: "mentions"}
    assert body["quiet_hours"] == {"start": "22:30", "end": "07:00", "timezone": "Europe/Paris"}
    assert body["muted_until"] == rfc3339(muted)
    assert api.get(URL).json() == body
    # Only what differs from the defaults is stored; null clears; "all" removes the conversation's row.
    assert NotificationSettings.objects.get(user=owner).kinds == {
        "mention": {"email": False},
        "agent_finished": {"push": False},
    }
    cleared = api.patch(
        URL, {"conversations": {conv: "all"}, "quiet_hours": None, "muted_until": None}, format="json"
    ).json()
    assert (cleared["conversations"], cleared["quiet_hours"], cleared["muted_until"]) == ({}, None, None)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "the body must be a JSON object"),
        ({"colour": "red"}, "unknown field(s): colour"),
        ({"kinds": {"gossip": {"push": True}}}, "kinds: unknown kind 'gossip'"),
        ({"kinds": {"mention": {"sms": True}}}, "kinds.mention: unknown channel 'sms'"),
        ({"kinds": {"mention": {"push": "yes"}}}, "kinds.mention.push: expected true or false"),
        ({"kinds": {"mention": True}}, "kinds.mention: expected an object"),
        ({"kinds": []}, "kinds: expected an object"),
        ({"conversations": {str(uuid.uuid4()): "none"}}, "conversations: an id that is not one of your conversations"),
        ({"conversations": {"not-a-uuid": "none"}}, "conversations: an id that is not one of your conversations"),
        ({"conversations": {"{conv}": "loud"}}, 'conversations: each level must be "all", "mentions" or "none"'),
        ({"quiet_hours": {"start": "24:00", "end": "07:00", "timezone": "UTC"}}, "quiet_hours.start: expected"),
        ({"quiet_hours": {"start": "7:00", "end": "08:00", "timezone": "UTC"}}, "quiet_hours.start: expected"),
        ({"quiet_hours": {"start": "07:00", "end": "07:60", "timezone": "UTC"}}, "quiet_hours.end: expected"),
        ({"quiet_hours": {"start": "07:00", "end": "07:00", "timezone": "UTC"}}, "quiet_hours: start and end"),
        ({"quiet_hours": {"start": "22:00", "end": "07:00", "timezone": "Mars/Olympus"}}, "quiet_hours.timezone"),
        ({"quiet_hours": {"start": "22:00", "end": "07:00", "timezone": "../etc/passwd"}}, "quiet_hours.timezone"),
        ({"quiet_hours": {"start": "22:00", "end": "07:00"}}, "quiet_hours: expected null or"),
        ({"quiet_hours": "22:00-07:00"}, "quiet_hours: expected null or"),
        ({"muted_until": "2030-01-02T03:04:05"}, "muted_until: expected null or an RFC 3339 time with its offset"),
        ({"muted_until": "2030-13-02T03:04:05Z"}, "muted_until: expected null or an RFC 3339"),
        ({"muted_until": "tomorrow"}, "muted_until: expected null or an RFC 3339"),
        ({"muted_until": "2099-01-01T00:00:00Z"}, "muted_until: at most 366 days ahead"),
        ({"kinds": {"mention": {"push": False}}, "muted_until": 5}, "muted_until: expected"),
    ],
)
def test_bad_settings_are_refused_whole_with_the_field_named(make_user: Any, body: Any, message: str) -> None:
    owner = make_user()
    conv = factories.conversation_sync(owner, agent="")
    api = api_for(owner)
    before = api.get(URL).json()
    payload = json.loads(json.dumps(body).replace("{conv}", conv))
    answer = api.patch(URL, payload, format="json")
    assert answer.status_code == 400, answer.content
    assert answer.json()["error"]["code"] == "bad_request"
    assert answer.json()["error"]["message"].startswith(message), answer.json()
    assert api.get(URL).json() == before


def test_levels_and_channels_decide_what_is_created(make_user: Any) -> None:
    alice, bob = make_user(), make_user()
    quiet, loud = (factories.conversation_sync(alice, agent="", members=((bob, "member"),)) for _ in range(2))
    api = api_for(bob)
    api.patch(
        URL, {"conversations": {quiet: "mentions"}, "kinds": {"agent_finished": {"in_app": False}}}, format="json"
    )
    seen = Notification.objects.filter(user=bob).count()

    def mention(conv: str) -> int:
        made = notify_mentions(
            conversation_id=conv,
            seq=1,
            author_id=alice.id,
            author_username=alice.username,
            mentioned_ids=[bob.id],
            text="hi",
        )
        return len(made)

    def approval(conv: str) -> int:
        return len(
            notify_approval_requested(
                conversation_id=conv,
                seq=1,
                run_id=str(uuid.uuid4()),
                call_id="c",
                tool="t",
                approver_ids=[bob.id],
                requested_by_id=alice.id,
                requested_by_username=alice.username,
            )
        )

    def finished(conv: str) -> int:
        made = notify_agent_finished(
            user_id=bob.id, conversation_id=conv, seq=1, run_id=str(uuid.uuid4()), status="completed", preview="x"
        )
        return len(made)

    # `mentions` lets through being addressed and being asked to decide; in_app off creates nothing anywhere.
    assert [mention(quiet), approval(quiet), finished(quiet)] == [1, 1, 0]
    assert [mention(loud), approval(loud), finished(loud)] == [1, 1, 0]
    api.patch(URL, {"kinds": {"agent_finished": {"in_app": True}}}, format="json")
    assert [finished(quiet), finished(loud)] == [0, 1]
    assert Notification.objects.filter(user=bob).count() == seen + 5


def test_held_until_spans_midnight_in_the_users_own_time_zone_and_muting() -> None:
    row = NotificationSettings(
        quiet_start=time(22, 0),
        quiet_end=time(7, 0),
        quiet_timezone="Asia/Tokyo",
    )
    tokyo_2330 = datetime.fromisoformat("2026-03-01T14:30:00+00:00")  # 23:30 in Tokyo (UTC+9)
    tokyo_0630 = datetime.fromisoformat("2026-03-01T21:30:00+00:00")  # 06:30 the next morning
    tokyo_1200 = datetime.fromisoformat("2026-03-02T03:00:00+00:00")
    morning = datetime.fromisoformat("2026-03-01T22:00:00+00:00")  # 07:00 in Tokyo
    assert notification_prefs.held_until(row, tokyo_2330) == morning
    assert notification_prefs.held_until(row, tokyo_0630) == morning
    assert notification_prefs.held_until(row, tokyo_1200) is None
    row.muted_until = tokyo_1200 + timedelta(hours=1)
    assert notification_prefs.held_until(row, tokyo_1200) == row.muted_until
    assert notification_prefs.held_until(row, tokyo_2330) == max(morning, row.muted_until)


async def test_the_list_pages_newest_first_and_read_reaches_every_device(make_user: Any) -> None:
    alice = await database_sync_to_async(make_user)()
    bob = await database_sync_to_async(make_user)()
    conv = await factories.conversation(alice, agent="", members=((bob, "member"),))
    for i in range(4):  # bob's seqs 2..5 (1 is being added)
        await database_sync_to_async(notify_mentions)(
            conversation_id=conv,
            seq=i + 2,
            author_id=alice.id,
            author_username=alice.username,
            mentioned_ids=[bob.id],
            text=f"m{i}",
        )
    api = await database_sync_to_async(api_for)(bob)
    get = database_sync_to_async(api.get)
    page = (await get("/api/me/notifications/?limit=2")).json()
    assert [(n["seq"], n["read"]) for n in page["notifications"]] == [(5, False), (4, False)]
    assert (page["has_more"], page["unread"], page["head_seq"], page["read_up_to_seq"]) == (True, 5, 5, 0)
    older = (await get("/api/me/notifications/?limit=2&before=4")).json()
    assert [n["seq"] for n in older["notifications"]] == [3, 2]
    phone, _, _ = await Client.connect(bob)
    laptop, _, _ = await Client.connect(bob)
    for device in (phone, laptop):
        await device.recv()
    answer = await database_sync_to_async(api.post)("/api/me/notifications/read/", {"up_to_seq": 3}, format="json")
    assert answer.json() == {"read_up_to_seq": 3, "unread": 2}
    for device in (phone, laptop):
        told = await device.until(lambda f: f.get("type") == "notifications_read")
        assert told["data"] == {"up_to_seq": 3, "unread": 2}
    # Never backwards, never past the head.
    await database_sync_to_async(api.post)("/api/me/notifications/read/", {"up_to_seq": 1}, format="json")
    assert (await get("/api/me/notifications/?unread=1")).json()["read_up_to_seq"] == 3
    unread = (await get("/api/me/notifications/?unread=1")).json()
    assert [(n["seq"], n["read"]) for n in unread["notifications"]] == [(5, False), (4, False)]
    await database_sync_to_async(api.post)("/api/me/notifications/read/", {"up_to_seq": 10**9}, format="json")
    assert (await get("/api/me/notifications/")).json()["read_up_to_seq"] == 5
    for query, message in (
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("before=x", "before"),
        ("unread=maybe", "unread"),
    ):
        bad = await get(f"/api/me/notifications/?{query}")
        assert bad.status_code == 400
        assert bad.json()["error"]["message"].startswith(message)
    for body in ({"up_to_seq": -1}, {"up_to_seq": "3"}, {"up_to_seq": True}, {}):
        bad = await database_sync_to_async(api.post)("/api/me/notifications/read/", body, format="json")
        assert bad.status_code == 400
        assert bad.json()["error"]["message"].startswith("up_to_seq")
    await phone.close()
    await laptop.close()


def test_muted_until_is_stored_as_the_instant_given(make_user: Any) -> None:
    api = api_for(make_user())
    soon = (timezone.now() + timedelta(hours=1)).replace(microsecond=0)
    body = api.patch(URL, {"muted_until": soon.isoformat()}, format="json").json()
    assert datetime.fromisoformat(body["muted_until"].replace("Z", "+00:00")) == soon
