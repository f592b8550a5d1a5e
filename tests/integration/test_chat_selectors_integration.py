"""chat/selectors.py against the real PostgreSQL: every read, every branch, built with the real
services (tests/support/factories.py), never with mocks.

The access reads (`conversation_for_member`, `workspace_for_member`, chat/search.py's `search`) are the
walls between users: whatever the reason a caller may not see something (not a member, only a
member of the workspace, deactivated, removed, a malformed id, an id that names nothing), the
answer is the same `NotFound`, byte for byte, so the refusal itself tells nothing."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from agents.services import run_claim_next, run_complete
from chat import search, selectors
from chat.errors import NotFound
from chat.models import Event, Message, Notification, Role
from chat.selectors import DELETED_AUTHOR, SEARCH_TEXT_CHARS
from chat.services.accounts import user_deactivate
from chat.services.conversations import (
    conversation_member_add,
    conversation_member_remove,
    personal_workspace_for,
    workspace_create,
    workspace_member_add,
)
from chat.services.notifications import notification_create
from tests.support.factories import conversation_sync, message_sync
from tests.support.refusals import refusal

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_password_hashing")]


def seqs(events: list[Any]) -> list[int]:
    return [e.seq for e in events]


# --- conversation_for_member ---------------------------------------------------------------------


def test_each_member_gets_their_access_with_their_own_role(make_user: Any) -> None:
    owner, member, viewer = make_user(), make_user(), make_user()
    conv = conversation_sync(owner, title="Quarterly", members=((member, Role.MEMBER), (viewer, Role.VIEWER)))
    message_sync(conv, owner, "one")
    message_sync(conv, member, "two")
    workspace = str(personal_workspace_for(user=owner).id)

    got = {
        u.username: selectors.conversation_for_member(user_id=u.id, conversation_id=conv)
        for u in (owner, member, viewer)
    }

    def expected(role: str) -> selectors.Access:
        return selectors.Access(
            conversation_id=conv, role=role, head_seq=2, agent="assistant", title="Quarterly", workspace_id=workspace
        )

    assert got == {
        owner.username: expected(Role.OWNER),
        member.username: expected(Role.MEMBER),
        viewer.username: expected(Role.VIEWER),
    }
    assert [(a.can_write, a.is_owner) for a in got.values()] == [(True, True), (True, False), (False, False)]


def test_a_people_only_conversation_says_so(make_user: Any) -> None:
    owner = make_user()
    conv = conversation_sync(owner, agent="", title="people")
    access = selectors.conversation_for_member(user_id=owner.id, conversation_id=conv)
    assert (access.agent, access.title, access.head_seq) == ("", "people", 0)


@pytest.mark.parametrize(
    "spelling",
    [str.upper, lambda s: "{" + s + "}", lambda s: "urn:uuid:" + s, lambda s: s.replace("-", ""), uuid.UUID],
    ids=["upper", "braces", "urn", "no-hyphens", "uuid-object"],
)
def test_any_spelling_of_the_id_resolves_to_the_canonical_id(make_user: Any, spelling: Callable[[str], Any]) -> None:
    owner = make_user()
    conv = conversation_sync(owner)
    access = selectors.conversation_for_member(user_id=owner.id, conversation_id=spelling(conv))
    assert access.conversation_id == conv
    assert access.role == Role.OWNER


MALFORMED: list[Any] = [
    "",
    "not-a-uuid",
    "123",
    "12345678-1234-1234-1234-1234567890123",  # one digit too many
    " 12345678-1234-1234-1234-123456789012",  # padded
    "12345678-1234-1234-1234-12345678901g",
    "\x00",
    "x" * 10_000,
    None,
    42,
    4.2,
    b"12345678123412341234123456789012",
    ["12345678-1234-1234-1234-123456789012"],
    {"id": "12345678-1234-1234-1234-123456789012"},
]


def test_every_reason_to_refuse_a_conversation_gives_the_same_not_found(make_user: Any) -> None:
    owner, outsider, colleague, leaver, deactivated = (make_user() for _ in range(5))
    workspace = workspace_create(owner=owner, name="team")
    workspace_member_add(workspace=workspace, actor=owner, username=colleague.username, role=Role.MEMBER)
    conv = conversation_sync(
        owner, workspace_id=workspace.id, members=((leaver, Role.MEMBER), (deactivated, Role.MEMBER))
    )
    message_sync(conv, owner, "secret")
    conversation_member_remove(conversation_id=conv, actor_id=owner.id, user_id=leaver.id)
    user_deactivate(user_id=deactivated.id)

    def for_member(user: Any, conversation_id: Any) -> Callable[[], Any]:
        return lambda: selectors.conversation_for_member(user_id=user.id, conversation_id=conversation_id)

    missing = refusal(for_member(owner, str(uuid.uuid4())))
    assert missing == (NotFound, (), b"", "NotFound()", "client")
    cases = {
        "not a member": for_member(outsider, conv),
        "a member of the workspace only": for_member(colleague, conv),
        "removed from it": for_member(leaver, conv),
        "deactivated": for_member(deactivated, conv),
        "deactivated, upper-case id": for_member(deactivated, conv.upper()),
        "no such user": lambda: selectors.conversation_for_member(user_id=2**31 - 1, conversation_id=conv),
        "the workspace's id": for_member(owner, str(workspace.id)),
        **{f"malformed #{i}": for_member(owner, value) for i, value in enumerate(MALFORMED)},
    }
    assert {name: refusal(call) for name, call in cases.items()} == {name: missing for name in cases}
    # The owner still sees it: the refusals above were about who asks, not about the conversation.
    assert selectors.conversation_for_member(user_id=owner.id, conversation_id=conv).head_seq == 2  # + member_left


def test_parse_uuid_refuses_what_is_not_a_uuid_with_the_same_not_found() -> None:
    value = uuid.uuid4()
    assert selectors.parse_uuid(value) is value
    assert selectors.parse_uuid(str(value).upper()) == value
    reference = refusal(lambda: selectors.parse_uuid("nope"))
    assert {repr(v): refusal(lambda v=v: selectors.parse_uuid(v)) for v in MALFORMED} == {
        repr(v): reference for v in MALFORMED
    }


# --- conversations_for_user, heads, members ---------------------------------------------------------


def test_conversations_for_user_lists_only_their_memberships_newest_first(make_user: Any) -> None:
    alice, bob = make_user(), make_user()
    first = conversation_sync(alice, title="first")
    theirs = conversation_sync(bob, title="bob's", members=((alice, Role.VIEWER),))
    conversation_sync(bob, title="bob only")
    last = conversation_sync(alice, title="last", agent="")
    rows = list(selectors.conversations_for_user(user_id=alice.id))
    assert [(str(r.conversation_id), r.role, r.conversation.title) for r in rows] == [
        (last, Role.OWNER, "last"),
        (theirs, Role.VIEWER, "bob's"),
        (first, Role.OWNER, "first"),
    ]


def test_conversation_head_and_heads(make_user: Any) -> None:
    owner = make_user()
    busy, quiet = conversation_sync(owner, agent=""), conversation_sync(owner, agent="")
    for text in ("a", "b", "c"):
        message_sync(busy, owner, text)
    assert selectors.conversation_head(conversation_id=busy) == 3
    assert selectors.conversation_head(conversation_id=quiet) == 0
    gone = str(uuid.uuid4())
    # In the order asked, 0 for one that does not exist (any more).
    assert selectors.conversation_heads(conversation_ids=[quiet, gone, busy]) == [0, 0, 3]
    assert selectors.conversation_heads(conversation_ids=[]) == []


def test_members_and_member_names(make_user: Any) -> None:
    owner, member, viewer, stranger = make_user(), make_user(), make_user(), make_user()
    conv = conversation_sync(owner, members=((member, Role.MEMBER), (viewer, Role.VIEWER)))
    conversation_sync(stranger, members=((owner, Role.MEMBER),))
    rows = selectors.conversation_members(conversation_id=conv)
    assert sorted((r.user.username, r.role) for r in rows) == sorted(
        [(owner.username, Role.OWNER), (member.username, Role.MEMBER), (viewer.username, Role.VIEWER)]
    )
    assert selectors.member_names(conversation_id=conv) == sorted(
        [(owner.id, owner.username, 0), (member.id, member.username, 0), (viewer.id, viewer.username, 0)],
        key=lambda row: row[1],
    )


# --- events_after / events_before -------------------------------------------------------------------


def seven_messages(make_user: Any) -> tuple[str, str]:
    """A conversation with seven message events (seq 1..7) and another one with three."""
    owner = make_user()
    conv, other = conversation_sync(owner, agent=""), conversation_sync(owner, agent="")
    for n in range(1, 8):
        message_sync(conv, owner, f"m{n}")
    for n in range(1, 4):
        message_sync(other, owner, f"other{n}")
    return conv, other


def test_events_after_pages_forward_in_seq_order_within_one_conversation(make_user: Any) -> None:
    conv, other = seven_messages(make_user)
    everything = selectors.events_after(conversation_id=conv, after_seq=0)
    assert seqs(everything) == [1, 2, 3, 4, 5, 6, 7]
    assert [(e.conversation_id, e.type, e.data["text"]) for e in everything] == [
        (conv, "message", f"m{n}") for n in range(1, 8)
    ]
    assert seqs(selectors.events_after(conversation_id=conv, after_seq=4)) == [5, 6, 7]
    assert seqs(selectors.events_after(conversation_id=conv, after_seq=2, up_to_seq=5)) == [3, 4, 5]
    assert seqs(selectors.events_after(conversation_id=conv, after_seq=2, limit=2)) == [3, 4]
    assert seqs(selectors.events_after(conversation_id=conv, after_seq=2, up_to_seq=6, limit=10)) == [3, 4, 5, 6]
    assert selectors.events_after(conversation_id=conv, after_seq=7) == []
    assert selectors.events_after(conversation_id=conv, after_seq=3, up_to_seq=3) == []
    assert selectors.events_after(conversation_id=conv, after_seq=0, limit=0) == []
    assert [e.data["text"] for e in selectors.events_after(conversation_id=other, after_seq=0)] == [
        "other1",
        "other2",
        "other3",
    ]


def test_events_after_skips_what_the_log_no_longer_has(make_user: Any) -> None:
    conv, _ = seven_messages(make_user)
    Event.objects.filter(conversation_id=conv, seq__in=[3, 4]).delete()  # compacted
    assert seqs(selectors.events_after(conversation_id=conv, after_seq=1, up_to_seq=6)) == [2, 5, 6]


def test_events_before_pages_backward_oldest_first_with_has_more(make_user: Any) -> None:
    conv, _ = seven_messages(make_user)
    page, more = selectors.events_before(conversation_id=conv, before_seq=None, limit=3)
    assert (seqs(page), more) == ([5, 6, 7], True)
    page, more = selectors.events_before(conversation_id=conv, before_seq=5, limit=3)
    assert (seqs(page), more) == ([2, 3, 4], True)
    page, more = selectors.events_before(conversation_id=conv, before_seq=2, limit=3)
    assert (seqs(page), more) == ([1], False)
    # Exactly `limit` left: no further page.
    page, more = selectors.events_before(conversation_id=conv, before_seq=4, limit=3)
    assert (seqs(page), more) == ([1, 2, 3], False)
    page, more = selectors.events_before(conversation_id=conv, before_seq=None, limit=100)
    assert (seqs(page), more) == ([1, 2, 3, 4, 5, 6, 7], False)
    assert selectors.events_before(conversation_id=conv, before_seq=1, limit=3) == ([], False)
    assert [e.data["text"] for e in page] == [f"m{n}" for n in range(1, 8)]  # not the other conversation's


def test_events_before_serves_no_further_back_than_the_retention(make_user: Any) -> None:
    conv, _ = seven_messages(make_user)
    now = timezone.now()
    Event.objects.filter(conversation_id=conv, seq__lte=2).update(created_at=now - timedelta(days=31))
    Event.objects.filter(conversation_id=conv, seq=3).update(created_at=now - timedelta(days=29))

    page, more = selectors.events_before(conversation_id=conv, before_seq=None, limit=3, retention_days=30)
    assert (seqs(page), more) == ([5, 6, 7], True)
    # The page ends at the retention: older events exist, but there is no more to serve.
    page, more = selectors.events_before(conversation_id=conv, before_seq=5, limit=3, retention_days=30)
    assert (seqs(page), more) == ([3, 4], False)
    page, more = selectors.events_before(conversation_id=conv, before_seq=3, limit=3, retention_days=30)
    assert (seqs(page), more) == ([], False)
    # Another member on a tier with a longer (or no) retention sees further back in the same log.
    page, more = selectors.events_before(conversation_id=conv, before_seq=5, limit=3, retention_days=365)
    assert (seqs(page), more) == ([2, 3, 4], True)
    page, more = selectors.events_before(conversation_id=conv, before_seq=5, limit=10, retention_days=None)
    assert (seqs(page), more) == ([1, 2, 3, 4], False)


# --- messages_before ---------------------------------------------------------------------------------


def test_messages_before_gives_author_kind_and_text_oldest_first(make_user: Any, settings: Any) -> None:
    settings.AGENT_RUNNER = "worker"
    owner = make_user()
    conv = conversation_sync(owner)
    message_sync(conv, owner, "what is 2 + 2?")  # seq 1, queues a run
    claimed = run_claim_next(worker_id="selector-test")
    assert claimed is not None
    assert claimed.conversation_id == conv
    run_complete(run_id=claimed.run_id, conversation_id=conv, text="4", usage={})  # seq 3
    message_sync(conv, owner, "thanks")  # seq 4, queues another run
    assert selectors.messages_before(conversation_id=conv, before_seq=100, limit=10) == [
        ("user", "what is 2 + 2?"),
        ("agent", "4"),
        ("user", "thanks"),
    ]
    assert selectors.messages_before(conversation_id=conv, before_seq=4, limit=10) == [
        ("user", "what is 2 + 2?"),
        ("agent", "4"),
    ]
    assert selectors.messages_before(conversation_id=conv, before_seq=100, limit=2) == [
        ("agent", "4"),
        ("user", "thanks"),
    ]
    assert selectors.messages_before(conversation_id=conv, before_seq=1, limit=10) == []


# --- notifications -----------------------------------------------------------------------------------


def test_notifications_after_are_the_users_own_in_seq_order(make_user: Any) -> None:
    owner, bob, carol = make_user(), make_user(), make_user()
    convs = [conversation_sync(owner, members=((bob, Role.MEMBER),)) for _ in range(3)]
    conversation_sync(owner, members=((carol, Role.VIEWER),))
    conversation_member_add(conversation_id=convs[0], actor_id=owner.id, username=bob.username, role=Role.VIEWER)

    got = selectors.notifications_after(user_id=bob.id, after_seq=0)
    assert [(n.seq, n.data["kind"], n.data["conversation"], n.data["role"]) for n in got] == [
        (1, "added_to_conversation", convs[0], Role.MEMBER),
        (2, "added_to_conversation", convs[1], Role.MEMBER),
        (3, "added_to_conversation", convs[2], Role.MEMBER),
        (4, "role_changed", convs[0], Role.VIEWER),
    ]
    assert {n.user_id for n in got} == {bob.id}
    assert [n.seq for n in selectors.notifications_after(user_id=bob.id, after_seq=2)] == [3, 4]
    assert [n.seq for n in selectors.notifications_after(user_id=bob.id, after_seq=1, limit=2)] == [2, 3]
    assert selectors.notifications_after(user_id=bob.id, after_seq=4) == []
    assert [n.seq for n in selectors.notifications_after(user_id=carol.id, after_seq=0)] == [1]
    assert selectors.notifications_after(user_id=owner.id, after_seq=0) == []
    assert selectors.notification_head(user_id=bob.id) == 4
    assert selectors.notification_head(user_id=owner.id) == 0


def test_notifications_after_reads_the_store_not_a_counter(make_user: Any) -> None:
    user = make_user()
    for n in range(3):
        notification_create(user_id=user.id, data={"kind": "test", "n": n})
    Notification.objects.filter(user_id=user.id, seq=2).delete()
    assert [(n.seq, n.data["n"]) for n in selectors.notifications_after(user_id=user.id, after_seq=0)] == [
        (1, 0),
        (3, 2),
    ]
    assert selectors.notification_head(user_id=user.id) == 3


# --- search (chat/search.py), as the analyst's search_history calls it: any word, one conversation -------------


def found(user: Any, query: str, conv: str, **kw: Any) -> list[search.SearchHit]:
    return search.search(user_id=user.id, query=query, conversation_ids=[conv], match="any", **kw)


def test_search_finds_matches_in_the_one_conversation_asked(make_user: Any) -> None:
    alice, bob = make_user(), make_user()
    conv = conversation_sync(alice, agent="", members=((bob, Role.MEMBER),))
    elsewhere = conversation_sync(alice, agent="")
    first = message_sync(conv, alice, "the Zebra report is due")
    message_sync(conv, bob, "nothing to see")
    second = message_sync(conv, bob, "zebra everywhere")
    message_sync(elsewhere, alice, "zebra in another conversation")

    got = found(bob, "zebra", conv)
    sent = dict(Message.objects.filter(conversation_id=conv).values_list("id", "created_at"))
    # Equal ranks: newest first.
    assert [(h.message_id, h.seq, h.author, h.text, h.created_at) for h in got] == [
        (second.message_id, second.seq, bob.username, "zebra everywhere", sent[uuid.UUID(second.message_id)]),
        (first.message_id, first.seq, alice.username, "the Zebra report is due", sent[uuid.UUID(first.message_id)]),
    ]
    assert [h.seq for h in found(bob, "zebra", conv, limit=1)] == [second.seq]
    # Alice is in both: still only the conversation asked about.
    assert [h.text for h in found(alice, "zebra", elsewhere)] == ["zebra in another conversation"]


def test_search_is_only_for_members(make_user: Any) -> None:
    alice, bob, mallory = make_user(), make_user(), make_user()
    conv = conversation_sync(alice, agent="", members=((bob, Role.MEMBER),))
    conversation_sync(mallory, agent="", members=((alice, Role.MEMBER),))  # mallory shares another one with alice
    message_sync(conv, alice, "the launch code is zebra")
    assert found(mallory, "zebra", conv) == []
    conversation_member_remove(conversation_id=conv, actor_id=alice.id, user_id=bob.id)
    assert found(bob, "zebra", conv) == []
    assert len(found(alice, "zebra", conv)) == 1
    user_deactivate(user_id=alice.id)
    assert found(alice, "zebra", conv) == []


def test_search_terms_any_of_up_to_eight_words_of_two_letters_or_more(make_user: Any) -> None:
    owner = make_user()
    conv = conversation_sync(owner, agent="")
    for text in ("alpha", "bravo", "a b c", "ninth-word", "x"):
        message_sync(conv, owner, text)

    def texts(query: str) -> list[str]:
        return sorted(h.text for h in found(owner, query, conv, limit=50))

    assert texts("ALPHA bravo") == ["alpha", "bravo"]  # any term, any case
    assert texts("a b c x") == []  # one-letter terms are dropped: nothing left to search
    assert texts("w1 w2 w3 w4 w5 w6 w7 ninth") == ["ninth-word"]  # the eighth term counts
    assert texts("w1 w2 w3 w4 w5 w6 w7 w8 ninth") == []  # the ninth does not
    assert texts("al%") == []  # LIKE wildcards and regex are text, not patterns
    assert texts("_l") == []
    assert texts("alph.*") == []


def test_search_results_are_bounded_and_name_the_agent(make_user: Any, settings: Any) -> None:
    settings.AGENT_RUNNER = "worker"
    owner = make_user()
    conv = conversation_sync(owner)
    long = "zebra " + "y" * 600
    message_sync(conv, owner, long)
    whole = "zebra " + "w" * (SEARCH_TEXT_CHARS - 6)  # exactly as long as a result's text may be
    message_sync(conv, owner, whole)
    claimed = run_claim_next(worker_id="selector-test")
    assert claimed is not None
    assert claimed.conversation_id == conv
    event = run_complete(run_id=claimed.run_id, conversation_id=conv, text="a zebra answer", usage={})
    got = found(owner, "zebra", conv)
    assert [(h.author, h.text, h.seq) for h in got] == [
        ("agent", "a zebra answer", event.seq),
        (owner.username, whole, 2),
        (owner.username, long[: SEARCH_TEXT_CHARS - 1] + "…", 1),  # cut only past the bound
    ]


# --- users and workspaces ----------------------------------------------------------------------------


def test_user_reads(make_user: Any) -> None:
    user, other = make_user(tier="pro"), make_user()
    assert selectors.user_is_active(user_id=user.id) is True
    found = selectors.user_for_token(user_id=user.id)
    assert found is not None
    assert (found.id, found.username, found.tier, found.is_active) == (
        user.id,
        user.username,
        "pro",
        True,
    )
    assert selectors.user_for_token(user_id=str(user.id)) == found
    user_deactivate(user_id=user.id)
    assert selectors.user_is_active(user_id=user.id) is False
    deactivated = selectors.user_for_token(user_id=user.id)
    assert deactivated is not None
    assert deactivated.is_active is False
    assert selectors.user_is_active(user_id=other.id) is True
    assert selectors.user_for_token(user_id=2**31 - 1) is None
    assert selectors.user_is_active(user_id=2**31 - 1) is False


def test_workspace_reads(make_user: Any) -> None:
    owner, member, outsider = make_user(), make_user(), make_user()
    team = workspace_create(owner=owner, name="team")
    workspace_member_add(workspace=team, actor=owner, username=member.username, role=Role.VIEWER)
    personal = personal_workspace_for(user=member)

    assert sorted((str(m.workspace.id), m.role) for m in selectors.workspaces_for_user(user_id=member.id)) == sorted(
        [(str(team.id), Role.VIEWER), (str(personal.id), Role.OWNER)]
    )
    assert sorted((m.user.username, m.role) for m in selectors.workspace_members(workspace=team)) == sorted(
        [(owner.username, Role.OWNER), (member.username, Role.VIEWER)]
    )
    assert selectors.workspace_for_member(user_id=member.id, workspace_id=str(team.id)) == team
    assert selectors.workspace_for_member(user_id=member.id, workspace_id=str(team.id).upper()) == team

    missing = refusal(lambda: selectors.workspace_for_member(user_id=owner.id, workspace_id=str(uuid.uuid4())))
    conv = conversation_sync(owner, workspace_id=team.id)
    cases: dict[str, Callable[[], Any]] = {
        "not a member": lambda: selectors.workspace_for_member(user_id=outsider.id, workspace_id=str(team.id)),
        "someone else's personal": lambda: selectors.workspace_for_member(user_id=owner.id, workspace_id=personal.id),
        "a conversation's id": lambda: selectors.workspace_for_member(user_id=owner.id, workspace_id=conv),
        **{
            f"malformed #{i}": (lambda v=v: selectors.workspace_for_member(user_id=owner.id, workspace_id=v))
            for i, v in enumerate(MALFORMED)
        },
    }
    assert {name: refusal(call) for name, call in cases.items()} == {name: missing for name in cases}


def test_search_never_attributes_a_deleted_users_message_to_the_agent(make_user: Any) -> None:
    alice, bob = make_user(), make_user()
    conv = conversation_sync(alice, agent="", members=((bob, Role.MEMBER),))
    message_sync(conv, bob, "zebra: bob's own words")
    bob.delete()  # the admin's user delete: his messages stay, their author becomes NULL
    got = found(alice, "zebra", conv)
    assert [h.text for h in got] == ["zebra: bob's own words"]
    assert got[0].author == DELETED_AUTHOR
