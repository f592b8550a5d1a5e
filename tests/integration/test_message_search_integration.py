"""Full-text search over messages (chat/search.py, `GET /api/search/`) against the real PostgreSQL: ranking, the
highlighted snippets, the 'simple' configuration's behaviour, who may read what, deleted messages, the limits,
the GIN index the migration builds, and the SQLite fallback's own path (run here on PostgreSQL, and its migration
step on a real SQLite connection)."""

from __future__ import annotations

import functools
import importlib
import json
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.db.utils import ConnectionHandler
from django.utils import timezone
from rest_framework.test import APIClient

from chat import search
from chat.errors import ServiceError
from chat.models import Message, Role
from chat.services.conversation_admin import conversation_delete
from chat.services.conversations import conversation_member_remove
from chat.services.message_actions import message_delete
from tests.support.factories import conversation_sync, message_sync
from tests.support.faults import hold_exclusive_lock

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_password_hashing")]
migration = importlib.import_module("chat.migrations.0006_message_text_search_index")


def texts(hits: list[search.SearchHit]) -> list[str]:
    return [h.text for h in hits]


def api_for(user: Any) -> APIClient:
    api = APIClient()
    api.force_authenticate(user)
    return api


# --- ranking and snippets -------------------------------------------------------------------------------------
@pytest.mark.parametrize("fulltext", [True, False], ids=["postgres", "fallback"])
def test_more_and_better_matches_rank_first_then_the_newest(make_user: Any, fulltext: bool) -> None:
    alice = make_user()
    conv = conversation_sync(alice, agent="", title="plans")
    message_sync(conv, alice, "the launch budget is approved")  # both words, oldest
    message_sync(conv, alice, "launch day is Friday")  # one word
    message_sync(conv, alice, "budget meeting moved")  # one word, newest
    message_sync(conv, alice, "nothing related")
    got = search.search(user_id=alice.id, query="launch or budget", fulltext=fulltext)
    assert texts(got)[0] == "the launch budget is approved"
    assert sorted(texts(got)[1:]) == ["budget meeting moved", "launch day is Friday"]
    assert got[0].rank > got[1].rank
    # Equal ranks: the newest first.
    same = search.search(user_id=alice.id, query="moved or Friday", fulltext=fulltext)
    assert texts(same) == ["budget meeting moved", "launch day is Friday"]
    # All the words by default (a search box): only the message holding both.
    assert texts(search.search(user_id=alice.id, query="launch budget", fulltext=fulltext)) == [
        "the launch budget is approved"
    ]
    # match="any" (the analyst's): any word, the one holding more of them first.
    assert texts(search.search(user_id=alice.id, query="launch budget", match="any", fulltext=fulltext))[0] == (
        "the launch budget is approved"
    )


def test_a_word_said_more_often_ranks_higher(make_user: Any) -> None:
    alice = make_user()
    conv = conversation_sync(alice, agent="")
    message_sync(conv, alice, "invoices: the invoices and more invoices")
    message_sync(conv, alice, "one invoices line among many other words here")
    got = search.search(user_id=alice.id, query="invoices")
    assert texts(got) == ["invoices: the invoices and more invoices", "one invoices line among many other words here"]


@pytest.mark.parametrize("fulltext", [True, False], ids=["postgres", "fallback"])
def test_snippets_mark_the_matched_words_and_carry_the_conversation(make_user: Any, fulltext: bool) -> None:
    alice = make_user()
    conv = conversation_sync(alice, agent="", title="Launch room")
    sent = message_sync(conv, alice, "We agreed the Launch moves to Friday, after the review.")
    [hit] = search.search(user_id=alice.id, query="launch friday", fulltext=fulltext)
    assert "«Launch»" in hit.snippet
    assert "«Friday»" in hit.snippet
    assert hit.snippet.count("«") == hit.snippet.count("»") == 2  # no other word marked
    assert (hit.conversation_id, hit.conversation_title, hit.message_id, hit.seq, hit.author) == (
        conv,
        "Launch room",
        sent.message_id,
        sent.seq,
        alice.username,
    )


def test_a_long_message_gets_a_snippet_around_the_match(make_user: Any) -> None:
    alice = make_user()
    conv = conversation_sync(alice, agent="")
    long = " ".join(f"filler{i}" for i in range(300)) + " the zebra report " + " ".join(f"tail{i}" for i in range(300))
    message_sync(conv, alice, long)
    [hit] = search.search(user_id=alice.id, query="zebra")
    assert "«zebra»" in hit.snippet
    assert len(hit.snippet.split()) <= search.SNIPPET_WORDS[1] + 1
    [fallback] = search.search(user_id=alice.id, query="zebra", fulltext=False)
    assert fallback.snippet.startswith("…")
    assert fallback.snippet.endswith("…")
    assert "«zebra»" in fallback.snippet
    assert len(fallback.snippet) < 2 * search.FALLBACK_CONTEXT_CHARS + 20


def test_a_snippet_of_very_long_words_is_bounded(make_user: Any) -> None:
    alice = make_user()
    conv = conversation_sync(alice, agent="")
    message_sync(conv, alice, "zebra " + " ".join("w" * 200 for _ in range(20)))
    for fulltext in (True, False):
        [hit] = search.search(user_id=alice.id, query="zebra", fulltext=fulltext)
        assert len(hit.snippet) <= search.SNIPPET_CHARS
        assert hit.snippet.startswith("«zebra» ")
        assert hit.snippet.endswith("…")
    # A mark the cut opened is closed again.
    assert search.bounded_snippet("x" * 293 + " «zebra» y") == "x" * 293 + " «zeb»…"
    assert search.bounded_snippet("short «one»") == "short «one»"


def test_snippet_around_cuts_and_marks() -> None:
    assert search.snippet_around("Zebra zebra ZEBRA", ["zebra"]) == "«Zebra» «zebra» «ZEBRA»"
    assert search.snippet_around("x" * 100 + " cat " + "y" * 100, ["cat"], context=5) == "…xxxx «cat» yyyy…"
    assert search.snippet_around("no hit here", ["cat"], context=3) == "no hit…"
    assert search.snippet_around("a.b* c", ["b*"]) == "a.«b*» c"  # the words are text, not patterns


# --- the 'simple' configuration -------------------------------------------------------------------------------
def test_simple_config_keeps_names_and_stop_words_and_does_not_stem(make_user: Any) -> None:
    alice = make_user()
    conv = conversation_sync(alice, agent="")
    message_sync(conv, alice, "Will and Don reviewed it")
    message_sync(conv, alice, "die Rechnungen sind da")
    message_sync(conv, alice, "we launched it")
    # 'english' drops "will", "don" and "die" as stop words (nothing would be found); 'simple' keeps them.
    assert texts(search.search(user_id=alice.id, query="will")) == ["Will and Don reviewed it"]
    assert texts(search.search(user_id=alice.id, query="DON")) == ["Will and Don reviewed it"]
    assert texts(search.search(user_id=alice.id, query="die rechnungen")) == ["die Rechnungen sind da"]
    # No stemming: a word matches as written (docs/protocol.md §7 "Search"); `or` lists the forms.
    assert search.search(user_id=alice.id, query="launch") == []
    assert texts(search.search(user_id=alice.id, query="launch or launched")) == ["we launched it"]
    with connection.cursor() as cursor:  # what 'english' would have done with the same query
        cursor.execute("SELECT websearch_to_tsquery('english', 'will')::text")
        assert cursor.fetchone() == ("",)


def test_websearch_syntax_phrases_and_exclusions(make_user: Any) -> None:
    alice = make_user()
    conv = conversation_sync(alice, agent="")
    message_sync(conv, alice, "the release notes are ready")
    message_sync(conv, alice, "notes on the release")
    assert texts(search.search(user_id=alice.id, query='"release notes"')) == ["the release notes are ready"]
    assert texts(search.search(user_id=alice.id, query="release -ready")) == ["notes on the release"]
    assert search.search(user_id=alice.id, query="!!! ...") == []  # no word: nothing to find, no error
    assert search.search(user_id=alice.id, query="' OR 1=1 --") == []


def test_the_search_reads_the_gin_index(make_user: Any) -> None:
    alice = make_user()
    conv = conversation_sync(alice, agent="")
    message_sync(conv, alice, "zebra")
    qs = Message.objects.alias(document=search._MessageVector("text")).filter(
        document=search.SearchQuery("zebra", config=search.SEARCH_CONFIG, search_type="websearch")
    )
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        # Only a bitmap scan is left, and only the GIN index can answer the text condition: the planner may
        # otherwise walk another index and filter (it did, on a table whose statistics other tests left).
        cursor.execute("SET LOCAL enable_indexscan = off")
        sql, params = qs.query.sql_with_params()
        cursor.execute("EXPLAIN " + sql, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert migration.INDEX in plan, plan


def test_the_migration_does_nothing_on_sqlite() -> None:
    sqlite = ConnectionHandler({"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}})["default"]
    try:
        with sqlite.schema_editor() as editor:
            migration.create_index(None, editor)  # a GIN index would be a syntax error there
            migration.drop_index(None, editor)
            assert editor.deferred_sql == []
        with sqlite.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM sqlite_master WHERE type = 'index'")
            assert cursor.fetchone() == (0,)
    finally:
        sqlite.close()


SQLITE_PROBE = """
import json, uuid
from django.db import connection
from chat.search import conversations_every_member_reads, search
from chat.services.conversations import conversation_create, user_create
from chat.services.messages import message_send
u = user_create(username="p" + uuid.uuid4().hex[:8], password="pw-" + uuid.uuid4().hex, tier="enterprise")
c = str(conversation_create(creator=u, title="probe", agent="").conversation.id)
for i, t in enumerate(["the launch budget is approved", "launch day is Friday", "nothing"]):
    message_send(conversation_id=c, author_id=u.id, username=u.username, client_msg_id=str(i), text=t, can_write=True)
with connection.cursor() as cursor:
    cursor.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql LIKE '%tsvector%'")
    indexes = cursor.fetchall()
room = conversations_every_member_reads(conversation_id=c)
print(json.dumps({
    "vendor": connection.vendor,
    "indexes": indexes,
    "any": [h.snippet for h in search(user_id=u.id, query="launch or budget")],
    "all": [h.snippet for h in search(user_id=u.id, query="launch budget")],
    "room": [h.snippet for h in search(user_id=u.id, query="friday", match="any", conversation_ids=room,
                                       exclude_text_regex="x", exclude_search_answers=True)],
}))
"""


def test_the_embedded_sqlite_mode_migrates_and_searches_with_the_fallback(tmp_path: Any) -> None:
    """The real thing on SQLite, in its own process: every migration runs (0006 does nothing there) and the
    search answers with the fallback, ranked and marked like PostgreSQL's."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["SQLITE_PATH"] = str(tmp_path / "embedded.sqlite3")
    manage = [sys.executable, str(Path(__file__).resolve().parents[2] / "manage.py")]
    subprocess.run([*manage, "migrate", "-v0"], env=env, check=True, timeout=120)
    probe = subprocess.run(
        [*manage, "shell", "-c", SQLITE_PROBE], env=env, check=True, timeout=120, capture_output=True, text=True
    )
    got = json.loads(probe.stdout.strip().splitlines()[-1])
    assert got == {
        "vendor": "sqlite",
        "indexes": [],
        "any": ["the «launch» «budget» is approved", "«launch» day is Friday"],
        "all": ["the «launch» «budget» is approved"],
        "room": ["launch day is «Friday»"],
    }


# --- who may read what ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fulltext", [True, False], ids=["postgres", "fallback"])
def test_only_live_conversations_the_user_is_an_active_member_of(make_user: Any, fulltext: bool) -> None:
    alice, bob, mallory = make_user(), make_user(), make_user()
    shared = conversation_sync(alice, agent="", members=((bob, Role.MEMBER),), title="shared")
    mine = conversation_sync(alice, agent="", title="mine")
    theirs = conversation_sync(mallory, agent="", title="theirs")
    message_sync(shared, alice, "zebra in the shared room")
    message_sync(mine, alice, "zebra in alice's own")
    message_sync(theirs, mallory, "zebra in mallory's secret")

    def found(user: Any, **kw: Any) -> list[str]:
        return sorted(texts(search.search(user_id=user.id, query="zebra", fulltext=fulltext, **kw)))

    assert found(alice) == ["zebra in alice's own", "zebra in the shared room"]
    assert found(bob) == ["zebra in the shared room"]
    assert found(mallory) == ["zebra in mallory's secret"]
    # Narrowing to someone else's conversation never widens what the user reads.
    assert found(alice, conversation_ids=[theirs]) == []
    # bob leaves: nothing of the room any more, older or newer.
    conversation_member_remove(conversation_id=shared, actor_id=bob.id, user_id=bob.id)
    message_sync(shared, alice, "zebra said after bob left")
    assert found(bob) == []
    # A deleted conversation is gone for everyone.
    conversation_delete(conversation_id=mine, actor_id=alice.id)
    assert found(alice) == ["zebra in the shared room", "zebra said after bob left"]


def test_deleted_messages_are_never_found(make_user: Any) -> None:
    alice = make_user()
    conv = conversation_sync(alice, agent="")
    gone = message_sync(conv, alice, "zebra one")
    kept_text = message_sync(conv, alice, "zebra two")
    message_sync(conv, alice, "zebra three")
    message_delete(conversation_id=conv, message_id=gone.message_id, user_id=alice.id, username="", role=Role.OWNER)
    # Even a deleted row whose text is still there (the filter, not the emptied text, keeps it out).
    Message.objects.filter(id=kept_text.message_id).update(deleted_at=timezone.now())
    for fulltext in (True, False):
        assert texts(search.search(user_id=alice.id, query="zebra", fulltext=fulltext)) == ["zebra three"]


def test_since_leaves_out_older_messages(make_user: Any) -> None:
    alice = make_user()
    conv = conversation_sync(alice, agent="")
    old = message_sync(conv, alice, "zebra long ago")
    message_sync(conv, alice, "zebra now")
    Message.objects.filter(id=old.message_id).update(created_at=timezone.now() - timedelta(days=400))
    since = timezone.now() - timedelta(days=30)
    assert texts(search.search(user_id=alice.id, query="zebra", since=since)) == ["zebra now"]


def test_the_selector_refuses_out_of_bounds_input(make_user: Any) -> None:
    alice = make_user()
    for kw, message in [
        ({"query": ""}, "q: give one or more words"),
        ({"query": "   "}, "q: give one or more words"),
        ({"query": "x" * (search.MAX_QUERY_CHARS + 1)}, f"q: at most {search.MAX_QUERY_CHARS} characters"),
        ({"query": "a\x00b"}, "q: may not contain NUL"),
        ({"query": "zebra", "limit": 0}, f"limit: from 1 to {search.MAX_RESULTS}"),
        ({"query": "zebra", "limit": search.MAX_RESULTS + 1}, f"limit: from 1 to {search.MAX_RESULTS}"),
    ]:
        with pytest.raises(ServiceError) as refused:
            search.search(user_id=alice.id, **kw)
        assert refused.value.code == "bad_request"
        assert refused.value.message.startswith(message), kw


# --- GET /api/search/ -----------------------------------------------------------------------------------------
def test_rest_search_answers_ranked_hits_with_snippets(make_user: Any) -> None:
    alice, bob = make_user(), make_user()
    room = conversation_sync(alice, agent="", members=((bob, Role.MEMBER),), title="Team")
    mine = conversation_sync(alice, agent="", title="Notes")
    best = message_sync(mine, alice, "launch budget: 10k")
    message_sync(room, bob, "the launch is on Friday")
    body = api_for(alice).get("/api/search/", {"q": "launch or budget"}).json()
    assert [(h["conversation_title"], h["snippet"]) for h in body["results"]] == [
        ("Notes", "«launch» «budget»: 10k"),
        ("Team", "the «launch» is on Friday"),
    ]
    first = body["results"][0]
    assert set(first) == {
        "conversation_id",
        "conversation_title",
        "message_id",
        "seq",
        "author",
        "created_at",
        "snippet",
        "rank",
    }
    assert (first["conversation_id"], first["message_id"], first["seq"], first["author"]) == (
        mine,
        best.message_id,
        best.seq,
        alice.username,
    )
    assert first["created_at"].endswith("Z")
    assert first["rank"] > body["results"][1]["rank"]
    one = api_for(alice).get("/api/search/", {"q": "launch", "conversation": room, "limit": 5}).json()
    assert [h["conversation_id"] for h in one["results"]] == [room]
    assert len(api_for(alice).get("/api/search/", {"q": "launch", "limit": 1}).json()["results"]) == 1
    # bob reads only the room.
    assert [h["conversation_title"] for h in api_for(bob).get("/api/search/", {"q": "launch"}).json()["results"]] == [
        "Team"
    ]


def test_rest_search_isolation_and_404_for_a_conversation_not_read(make_user: Any) -> None:
    alice, mallory = make_user(), make_user()
    secret = conversation_sync(alice, agent="", title="secret plans")
    message_sync(secret, alice, "zebra secret")
    api = api_for(mallory)
    assert api.get("/api/search/", {"q": "zebra"}).json() == {"results": []}
    missing = api.get("/api/search/", {"q": "zebra", "conversation": "00000000-0000-0000-0000-000000000000"})
    foreign = api.get("/api/search/", {"q": "zebra", "conversation": secret})
    assert missing.status_code == foreign.status_code == 404
    assert missing.json() == foreign.json()
    assert APIClient().get("/api/search/", {"q": "zebra"}).status_code in (401, 403)


def test_rest_search_applies_the_callers_history_retention(make_user: Any) -> None:
    free, enterprise = make_user(tier="free"), make_user(tier="enterprise")
    conv = conversation_sync(enterprise, agent="", members=((free, Role.MEMBER),))
    old = message_sync(conv, enterprise, "zebra from long ago")
    Message.objects.filter(id=old.message_id).update(created_at=timezone.now() - timedelta(days=10_000))

    def found(user: Any) -> list[str]:
        return [h["snippet"] for h in api_for(user).get("/api/search/", {"q": "zebra"}).json()["results"]]

    assert found(enterprise) == ["«zebra» from long ago"]
    assert found(free) == []


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "q"),
        ({"q": ""}, "q"),
        ({"q": "x" * 201}, "q"),
        ({"q": "zebra", "limit": 0}, "limit"),
        ({"q": "zebra", "limit": 51}, "limit"),
        ({"q": "zebra", "limit": "ten"}, "limit"),
    ],
)
def test_rest_search_limits_are_400s(make_user: Any, params: dict[str, Any], field: str) -> None:
    response = api_for(make_user()).get("/api/search/", params)
    assert response.status_code == 400
    assert list(response.json()) == [field]


def test_rest_search_a_blank_query_is_a_field_error(make_user: Any) -> None:
    response = api_for(make_user()).get("/api/search/", {"q": "   "})
    assert response.status_code == 400
    assert response.json() == {"q": ["This field may not be blank."]}


@pytest.mark.django_db(transaction=True)
def test_rest_search_stuck_on_the_database_is_a_503_at_its_timeout(make_user: Any, settings: Any) -> None:
    settings.CHAT_SEARCH_TIMEOUT_MS = 300
    alice = make_user()
    conversation_sync(alice, agent="")
    locked, release = threading.Event(), threading.Event()

    holder = threading.Thread(target=functools.partial(hold_exclusive_lock, Message._meta.db_table, locked, release))
    holder.start()
    try:
        assert locked.wait(10)
        started = time.monotonic()
        response = api_for(alice).get("/api/search/", {"q": "zebra"})
        took = time.monotonic() - started
    finally:
        release.set()
        holder.join()
    assert response.status_code == 503
    assert response.json() == {
        "error": {"code": "unavailable", "message": "the search took longer than 300 ms and was stopped"}
    }
    assert took < 5
    assert api_for(alice).get("/api/search/", {"q": "zebra"}).status_code == 200  # the lock gone, it answers
