"""The built-in agent's time and search answers, as people read them, through the real runtime
(agents.runtime.execute_run with the offline backend and the real tools) on PostgreSQL and Redis;
and the page's report of the browser's time zone (GET/PATCH /api/me/, docs/protocol.md §7).

- "what time is it?" is answered in the requester's zone (User.time_zone, blank = UTC), or in the
  place the question names; the tool_completed result keeps ISO times and the zone's name.
- "search for invoices" lists each matching message once, as a snippet with the matched words marked,
  with its author and its time in the asker's zone, best match first (then newest), never the
  question itself, and only from a conversation the asker reads."""

from __future__ import annotations

import re
import uuid
import zoneinfo
from datetime import UTC, datetime
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from django.test import Client
from rest_framework.test import APIClient

from agents.backends.offline import OfflineBackend, spoken_time
from agents.runtime import execute_run
from agents.services import run_claim_next
from agents.tools import ToolContext, default_registry
from agents.tools_conversation import Clock, utc_now
from chat import search
from chat.models import Event, Message, User
from chat.search import SNIPPET_WORDS
from chat.services.accounts import time_zone_set
from tests.support import factories

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("fast_password_hashing")]

# A Tuesday; Paris is on winter time (UTC+1) then.
FROZEN = datetime(2026, 12, 1, 14, 42, 7, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _queued_runs_and_instant_answers(settings: Any) -> None:
    # Runs stay queued until the test runs them itself, one at a time, and answers are not paced.
    settings.AGENT_RUNNER = "worker"
    settings.AGENT_OFFLINE_TOKEN_DELAY_MS = 0


def set_zone(user: Any, zone: str) -> None:
    time_zone_set(user_id=user.id, body={"time_zone": zone})


async def ask(conv: str, user: Any, text: str, *, clock: Clock = utc_now) -> tuple[dict[str, Any], str]:
    """`user` sends `text`; the run it queued runs to its end. The tool_completed result and the answer."""
    sent = await factories.message(conv, user, text)
    claimed = await database_sync_to_async(run_claim_next)(worker_id="answers-test")
    assert claimed is not None
    assert claimed.run_id == sent.run_id
    await execute_run(claimed, backend=OfflineBackend(), tools=default_registry(clock=clock))

    def ended() -> tuple[dict[str, Any], str]:
        events = {e.type: e.data for e in Event.objects.filter(conversation_id=conv, run_id=sent.run_id)}
        assert "agent_completed" in events, sorted(events)
        return events["tool_completed"]["result"], events["agent_completed"]["text"]

    return await database_sync_to_async(ended)()


# --- the time -------------------------------------------------------------------------------------


async def test_the_time_is_told_in_the_requesters_zone_readably(make_user: Any) -> None:
    alice = await database_sync_to_async(make_user)()
    bob = await database_sync_to_async(make_user)()
    await database_sync_to_async(set_zone)(alice, "Europe/Paris")
    await database_sync_to_async(set_zone)(bob, "Asia/Tokyo")
    conv = await factories.conversation(alice, members=((bob, "member"),), agent_mode="always")

    result, answer = await ask(conv, alice, "what time is it?", clock=lambda: FROZEN)
    assert answer == "It's 3:42 PM on Tuesday, 1 December 2026 (Europe/Paris)."
    assert result == {
        "utc": "2026-12-01T14:42:07Z",
        "weekday": "Tuesday",
        "timezone": "Europe/Paris",
        "timezone_source": "user",
        "local": "2026-12-01T15:42:07+01:00",
        "local_weekday": "Tuesday",
    }
    # Bob asks in the same conversation: his own zone, not the last asker's.
    _, answer = await ask(conv, bob, "@assistant what's the date today?", clock=lambda: FROZEN)
    assert answer == "It's 11:42 PM on Tuesday, 1 December 2026 (Asia/Tokyo)."


async def test_no_zone_set_is_utc(make_user: Any) -> None:
    carol = await database_sync_to_async(make_user)()
    conv = await factories.conversation(carol)
    result, answer = await ask(conv, carol, "what time is it?", clock=lambda: FROZEN)
    assert answer == "It's 2:42 PM on Tuesday, 1 December 2026 (UTC)."
    assert (result["timezone"], result["local"]) == ("UTC", "2026-12-01T14:42:07+00:00")


async def test_a_named_city_or_iana_zone_wins_over_the_requesters_on_the_real_clock(make_user: Any) -> None:
    alice = await database_sync_to_async(make_user)()
    await database_sync_to_async(set_zone)(alice, "Europe/Paris")
    conv = await factories.conversation(alice)
    for question, zone in (
        ("what time is it in Tokyo?", "Asia/Tokyo"),
        ("What's the time in New York right now?", "America/New_York"),
        ("what time is it in america/chicago", "America/Chicago"),
    ):
        result, answer = await ask(conv, alice, question)  # the real clock: the answer follows the result
        assert (result["timezone"], result["timezone_source"]) == (zone, "asked")
        utc = datetime.fromisoformat(result["utc"])
        local = utc.astimezone(zoneinfo.ZoneInfo(zone))
        assert datetime.fromisoformat(result["local"]) == local
        assert datetime.fromisoformat(result["local"]).utcoffset() == local.utcoffset()
        assert answer == f"It's {spoken_time(result['local'])} ({zone})."
        hour = int(re.match(r"It's (\d+):", answer)[1])  # type: ignore[index]
        assert hour == (local.hour % 12 or 12)


async def test_an_unknown_place_says_so_and_answers_in_the_requesters_zone(make_user: Any) -> None:
    alice = await database_sync_to_async(make_user)()
    await database_sync_to_async(set_zone)(alice, "Europe/Paris")
    conv = await factories.conversation(alice)
    _, answer = await ask(conv, alice, "what time is it in Atlantis?", clock=lambda: FROZEN)
    assert answer == (
        "I don't know the time zone of Atlantis. For you: It's 3:42 PM on Tuesday, 1 December 2026 (Europe/Paris)."
    )


# --- search ---------------------------------------------------------------------------------------


async def test_search_lists_each_match_once_whole_with_author_and_local_time_never_the_question(
    make_user: Any,
) -> None:
    alice = await database_sync_to_async(make_user)()
    bob = await database_sync_to_async(make_user)()
    await database_sync_to_async(set_zone)(alice, "Asia/Tokyo")
    conv = await factories.conversation(alice, members=((bob, "member"),), agent_mode="mention")
    march = await factories.message(conv, bob, "The invoices for March are attached.")
    multi = await factories.message(conv, alice, "Please pay the invoices\nbefore Friday, and keep the receipts.")
    long_text = "Invoices: " + " ".join(f"line{i}" for i in range(120))  # well over 500 characters
    long = await factories.message(conv, alice, long_text)
    await factories.message(conv, bob, "lunch at noon?")
    # Bob asked first: his question and the agent's answer to it (which quotes the matches) are not matches.
    _, first_answer = await ask(conv, bob, "@assistant search for invoices")
    assert first_answer.startswith("3 messages mention 'invoices', best match first (times in UTC):\n")
    await factories.message(conv, bob, "search for invoices")  # the same request again, unaddressed

    result, answer = await ask(conv, alice, "@assistant search for invoices?")

    assert result["timezone"] == "Asia/Tokyo"
    assert [m["message_id"] for m in result["matches"]] == [long.message_id, multi.message_id, march.message_id]
    stored = await database_sync_to_async(
        lambda: {str(m.id): m.created_at for m in Message.objects.filter(conversation_id=conv)}
    )()
    for match in result["matches"]:
        sent = stored[match["message_id"]].replace(microsecond=0)  # ISO times to the second
        assert datetime.fromisoformat(match["sent_at"]) == sent
        local = datetime.fromisoformat(match["local_time"])
        assert local == sent
        assert local.utcoffset() == zoneinfo.ZoneInfo("Asia/Tokyo").utcoffset(sent)
    # Each as the text around the match, the matched word marked (the long one cut to ts_headline's MinWords).
    assert [m["snippet"] for m in result["matches"]] == [
        "«Invoices»: " + " ".join(f"line{i}" for i in range(SNIPPET_WORDS[0] - 1)),
        "Please pay the «invoices»\nbefore Friday, and keep the receipts.",
        "The «invoices» for March are attached.",
    ]
    lines = answer.split("\n- ")
    # One word each, once: equal ranks, so the newest first.
    assert lines[0] == "3 messages mention 'invoices', best match first (times in Asia/Tokyo):"
    newest, middle, oldest = (_short(m) for m in result["matches"])
    assert lines[1:] == [
        f"{alice.username} ({newest}): {result['matches'][0]['snippet']}",
        f"{alice.username} ({middle}): Please pay the «invoices»\nbefore Friday, and keep the receipts.",
        f"{bob.username} ({oldest}): The «invoices» for March are attached.",
    ]
    assert "search for" not in answer
    assert answer.count("for March are attached.") == 1


def _short(match: dict[str, Any]) -> str:
    """ "9:05 AM, Mon 2 Mar 2026", written out here rather than with the backend's helper."""
    local = datetime.fromisoformat(match["local_time"])
    clock = f"{local.hour % 12 or 12}:{local.minute:02d} {'AM' if local.hour < 12 else 'PM'}"
    return f"{clock}, {local:%a} {local.day} {local:%b %Y}"


async def test_search_with_no_match_says_so(make_user: Any) -> None:
    alice = await database_sync_to_async(make_user)()
    conv = await factories.conversation(alice, agent_mode="mention")
    await factories.message(conv, alice, "nothing about sea mammals here")
    result, answer = await ask(conv, alice, "@assistant search for walrus")
    assert result["matches"] == []
    assert answer == "No messages mention 'walrus' yet."


async def test_search_never_shows_a_conversation_the_asker_is_not_in(make_user: Any) -> None:
    alice = await database_sync_to_async(make_user)()
    mallory = await database_sync_to_async(make_user)()
    conv = await factories.conversation(alice, agent_mode="mention")
    secret = await factories.conversation(mallory, agent="")
    await factories.message(secret, mallory, "invoices: the secret numbers")
    await factories.message(conv, alice, "invoices are late")

    result, answer = await ask(conv, alice, "@assistant search for invoices")
    assert [m["snippet"] for m in result["matches"]] == ["«invoices» are late"]
    assert "secret" not in answer
    # The tool and the selector, pointed at mallory's conversation as alice: nothing, as if it were empty.
    outcome = await default_registry().call(
        "search_history", {"query": "invoices"}, ToolContext(user_id=alice.id, conversation_id=secret)
    )
    assert outcome.ok
    assert outcome.result["matches"] == []
    found = await database_sync_to_async(search.search)(user_id=alice.id, query="invoices", conversation_ids=[secret])
    assert found == []


# --- GET/PATCH /api/me/ ---------------------------------------------------------------------------


def test_me_reports_and_validates_the_time_zone(make_user: Any) -> None:
    user = make_user(tier="pro")
    api = APIClient()
    api.force_authenticate(user)
    assert api.get("/api/me/").json() == {"id": user.id, "username": user.username, "tier": "pro", "time_zone": ""}

    ok = api.patch("/api/me/", {"time_zone": "Europe/Paris"}, format="json")
    assert ok.status_code == 200
    assert ok.json() == {"id": user.id, "username": user.username, "tier": "pro", "time_zone": "Europe/Paris"}
    assert User.objects.get(id=user.id).time_zone == "Europe/Paris"

    refused = {
        "unknown": {"time_zone": "Mars/Olympus"},
        "a path": {"time_zone": "../../../etc/passwd"},
        "wrong case": {"time_zone": "europe/paris"},
        "too long": {"time_zone": "Europe/" + "x" * 10_000},
        "not a string": {"time_zone": 5},
        "null": {"time_zone": None},
        "missing": {},
        "another field": {"time_zone": "UTC", "tier": "enterprise"},
        "not an object": ["UTC"],
    }
    for name, body in refused.items():
        response = api.patch("/api/me/", body, format="json")
        assert response.status_code == 400, name
        error = response.json()["error"]
        assert error["code"] == "bad_request", name
        assert "time_zone" in error["message"], (name, error)
        assert len(error["message"]) < 200, (name, error)
    assert (
        "unknown time zone 'Mars/Olympus'"
        in api.patch("/api/me/", refused["unknown"], format="json").json()["error"]["message"]
    )
    fresh = User.objects.get(id=user.id)
    assert (fresh.time_zone, fresh.tier) == ("Europe/Paris", "pro")  # nothing refused changed anything

    assert api.patch("/api/me/", {"time_zone": ""}, format="json").json()["time_zone"] == ""  # back to UTC
    assert APIClient().get("/api/me/").status_code == 401
    assert APIClient().patch("/api/me/", {"time_zone": "UTC"}, format="json").status_code == 401


def test_the_page_renders_the_stored_zone_and_its_patch_needs_the_csrf_cookie(make_user: Any) -> None:
    user = make_user()
    set_zone(user, "America/Chicago")
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(user)
    page = browser.get("/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'data-time-zone="America/Chicago"' in html
    assert "chat/timezone.js" in html

    body = '{"time_zone": "Europe/Paris"}'
    forged = browser.patch("/api/me/", body, content_type="application/json")
    assert forged.status_code == 403
    assert User.objects.get(id=user.id).time_zone == "America/Chicago"
    token = browser.cookies["csrftoken"].value
    sent = browser.patch("/api/me/", body, content_type="application/json", HTTP_X_CSRFTOKEN=token)
    assert sent.status_code == 200
    assert User.objects.get(id=user.id).time_zone == "Europe/Paris"
    assert 'data-time-zone="Europe/Paris"' in browser.get("/").content.decode()


def test_an_anonymous_page_has_no_zone_to_report() -> None:
    html = Client().get("/login/").content.decode()
    assert "data-time-zone" not in html
    assert "chat/timezone.js" not in html


def test_a_zone_the_tz_database_lost_reads_as_utc(make_user: Any) -> None:
    # Stored before a tz database update removed it (written past the service's check): never an error.
    user = make_user()
    User.objects.filter(id=user.id).update(time_zone="Gone/Zone")
    registry = default_registry(clock=lambda: FROZEN)
    ctx = ToolContext(user_id=user.id, conversation_id=str(uuid.uuid4()))
    outcome = async_to_sync(registry.call)("current_time", {}, ctx)
    assert outcome.ok
    assert outcome.result["timezone"] == "UTC"
