"""Full-text search over message text: a selector, ranked, with highlighted snippets (docs/protocol.md §7 "Search").

On PostgreSQL it is PostgreSQL's full-text search: `websearch_to_tsquery` (what people type into a search
box: words, "a phrase", `or`, `-word`), `ts_rank` and `ts_headline`, over the GIN expression index of
migration 0006. On SQLite (the embedded default) it is a plain fallback: `icontains` on each word, the number of
words a message holds as its rank, and a snippet cut around the first hit, with the same markers.

The text search configuration is 'simple' on purpose: it lower-cases and splits words, and nothing else. The
'english' configuration stems ("launch" finds "launched") but also drops its stop words, which are names and
words of other languages here ("Will", "Don", "die", "was" are gone from both the index and the query, so a
search for the person Will finds nothing), and stems words of other languages by English rules. People search a
chat for names, codes and the word they remember, in any language; 'simple' finds exactly those. The price: a
word matches only as written ("invoice" does not find "invoices"; `invoice or invoices` does).

Who may read what: only live conversations in which the user is an active member, deleted messages never;
`conversation_ids` narrows that further (never widens it). Every limit is checked here and refused with a
`ServiceError("bad_request", …)` a caller turns into its 400.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from django.contrib.postgres.search import SearchHeadline, SearchQuery, SearchRank, SearchVectorField
from django.db import OperationalError, connection, transaction
from django.db.models import Count, Func, Q, QuerySet, Subquery
from django.utils import timezone

from chat.errors import ServiceError
from chat.models import AuthorKind, ConversationMember, Message
from chat.selectors import LIVE, SEARCH_TEXT_CHARS, author_name
from chat.tiers import limits_for

SEARCH_CONFIG = "simple"  # see the module docstring
MAX_QUERY_CHARS = 200
MAX_RESULTS = 50
DEFAULT_RESULTS = 20
MAX_ANY_WORDS = 8  # `match="any"`: the first eight words count
# The markers around each matched word of a snippet: plain characters no client has to unescape, and rare in
# chat text (unlike `**`, which is Markdown people type).
START_SEL, STOP_SEL = "«", "»"
SNIPPET_WORDS = (20, 40)  # ts_headline's MinWords, MaxWords
SNIPPET_CHARS = 300  # a snippet's bound in characters, whatever its words' length
FALLBACK_CONTEXT_CHARS = 60  # the fallback's snippet: this much text on each side of the first hit
FALLBACK_CANDIDATES = 500  # the fallback ranks at most the newest 500 matches
WORDS = re.compile(r"\w+")
# "websearch": what a search box takes (REST); "any": any of the words, ranked (the analyst's).
Match = Literal["websearch", "any"]


@dataclass(frozen=True)
class SearchHit:
    conversation_id: str
    conversation_title: str
    message_id: str
    seq: int
    author: str
    created_at: datetime
    snippet: str
    rank: float
    text: str  # the whole text, cut to SEARCH_TEXT_CHARS


class _MessageVector(Func):
    """to_tsvector('simple', text): exactly the expression migration 0006 indexes (Django's SearchVector wraps
    the column in COALESCE, which the index would not serve)."""

    template = "to_tsvector('simple'::regconfig, %(expressions)s)"
    output_field = SearchVectorField()


def readable_conversations(*, user_id: int) -> QuerySet[Any, Any]:
    """The ids of the live conversations the user is an active member of (a subquery)."""
    return ConversationMember.objects.filter(LIVE, user_id=user_id, user__is_active=True).values("conversation_id")


def conversations_every_member_reads(*, conversation_id: str) -> QuerySet[Any, Any]:
    """The ids of the live conversations that every current active member of `conversation_id` is an active
    member of (a subquery; the conversation itself among them). What the analyst may search across when its
    answer goes to all of them: text no member of the room could read never reaches the room. One statement,
    so the room's members and their memberships are read in the same snapshot."""
    room = ConversationMember.objects.filter(LIVE, conversation_id=conversation_id, user__is_active=True)
    room_size = room.order_by().values("conversation_id").annotate(n=Count("user_id")).values("n")
    return (
        ConversationMember.objects.filter(LIVE, user__is_active=True, user_id__in=room.values("user_id"))
        .order_by()
        .values("conversation_id")
        .annotate(readers=Count("user_id"))
        .filter(readers=Subquery(room_size))
        .values("conversation_id")
    )


def room_history_since(*, conversation_id: str) -> datetime | None:
    """The oldest moment every current active member of the conversation may still read, by the shortest
    `history_retention_days` of their tiers (None: all of them keep history forever). A search whose result
    all of them read starts there: no member is shown text older than their own tier lets them read."""
    tiers = set(
        ConversationMember.objects.filter(conversation_id=conversation_id, user__is_active=True).values_list(
            "user__tier", flat=True
        )
    )
    days = [d for d in (limits_for(t).history_retention_days for t in tiers) if d is not None]
    return timezone.now() - timedelta(days=min(days)) if days else None


def _check(query: str, limit: int) -> None:
    if not query.strip():
        raise ServiceError("bad_request", "q: give one or more words to search for")
    if len(query) > MAX_QUERY_CHARS:
        raise ServiceError("bad_request", f"q: at most {MAX_QUERY_CHARS} characters")
    if "\x00" in query:
        raise ServiceError("bad_request", "q: may not contain NUL characters")
    if not 1 <= limit <= MAX_RESULTS:
        raise ServiceError("bad_request", f"limit: from 1 to {MAX_RESULTS}")


def search(
    *,
    user_id: int,
    query: str,
    limit: int = DEFAULT_RESULTS,
    conversation_ids: QuerySet[Any] | list[str] | None = None,
    match: Match = "websearch",
    author_username: str = "",
    since: datetime | None = None,
    exclude_run_id: str | None = None,
    exclude_text_regex: str = "",
    exclude_search_answers: bool = False,
    fulltext: bool | None = None,
) -> list[SearchHit]:
    """Messages matching `query`, best rank first, then newest. `match="websearch"`: the query as a search box
    reads it (every word, "phrases", `or`, `-word`); `match="any"`: any of its first eight words, ranked by how
    many and how often (the analyst's search). `author_username` keeps one author's messages, `since` newer
    ones (the caller's history retention). The exclusions are the analyst's: the message that asked
    (`exclude_run_id`'s trigger), the same request asked again (`exclude_text_regex`, PostgreSQL's regex, so
    PostgreSQL only), and answers built from an earlier search (they quote what they found). `fulltext`: None
    picks by the database; False runs the fallback anywhere (its tests run it on PostgreSQL)."""
    _check(query, limit)
    postgres = connection.vendor == "postgresql"
    words = WORDS.findall(query)
    if match == "any":  # one-letter words ("a", "I") would match nearly everything
        words = list(dict.fromkeys(w.lower() for w in words if len(w) > 1))[:MAX_ANY_WORDS]
        query = " or ".join(words)
    if not words:
        return []  # only punctuation: nothing any message could match
    qs = Message.objects.filter(
        conversation_id__in=readable_conversations(user_id=user_id), seq__isnull=False, deleted_at__isnull=True
    )
    if conversation_ids is not None:
        qs = qs.filter(conversation_id__in=conversation_ids)
    if author_username:
        qs = qs.filter(author__username__iexact=author_username, author_kind=AuthorKind.USER)
    if since is not None:
        qs = qs.filter(created_at__gte=since)
    if exclude_run_id is not None:
        qs = qs.exclude(triggered_runs__id=exclude_run_id)
    if exclude_text_regex and postgres:
        qs = qs.exclude(text__iregex=exclude_text_regex)
    if exclude_search_answers:
        qs = qs.exclude(run__tool_calls__tool="search_history")
    qs = qs.select_related("author", "conversation")
    if postgres if fulltext is None else fulltext:
        return _fulltext(qs, query, limit)
    return _fallback(qs, words, match, limit)


def bounded_snippet(snippet: str) -> str:
    """At most SNIPPET_CHARS characters ("…" where cut), a mark cut open closed again."""
    if len(snippet) <= SNIPPET_CHARS:
        return snippet
    cut = snippet[: SNIPPET_CHARS - 2]
    return cut + (STOP_SEL if cut.count(START_SEL) > cut.count(STOP_SEL) else "") + "…"


class SearchTimedOut(ServiceError):
    """The database stopped the search at its statement timeout."""

    def __init__(self, timeout_ms: int) -> None:
        super().__init__("unavailable", f"the search took longer than {timeout_ms} ms and was stopped")


def search_within(*, timeout_ms: int, **kwargs: Any) -> list[SearchHit]:
    """`search(**kwargs)` under a statement timeout shorter than the database's default (30 s): a search that
    is slow (a very common word over millions of messages, a locked table) is cancelled by PostgreSQL instead of
    holding a connection, and answered with SearchTimedOut. SQLite has no statement timeout."""
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute("SELECT set_config('statement_timeout', %s, true)", [str(timeout_ms)])
            return search(**kwargs)
    except OperationalError as exc:
        if getattr(exc.__cause__, "sqlstate", None) == "57014":  # query_canceled: the timeout
            raise SearchTimedOut(timeout_ms) from exc
        raise


def _hit(m: Message, snippet: str, rank: float) -> SearchHit:
    return SearchHit(
        conversation_id=str(m.conversation_id),
        conversation_title=m.conversation.title,
        message_id=str(m.id),
        seq=m.seq or 0,
        author=author_name(m),
        created_at=m.created_at,
        snippet=bounded_snippet(snippet),
        rank=rank,
        text=m.text if len(m.text) <= SEARCH_TEXT_CHARS else m.text[: SEARCH_TEXT_CHARS - 1] + "…",
    )


def _fulltext(qs: QuerySet[Message], query: str, limit: int) -> list[SearchHit]:
    tsquery = SearchQuery(query, config=SEARCH_CONFIG, search_type="websearch")
    vector = _MessageVector("text")
    rows = (
        qs.alias(document=vector)
        .filter(document=tsquery)
        .annotate(
            rank=SearchRank(vector, tsquery),
            # Computed for the `limit` rows only: PostgreSQL postpones costly select-list functions past the LIMIT.
            snippet=SearchHeadline(
                "text",
                tsquery,
                config=SEARCH_CONFIG,
                start_sel=START_SEL,
                stop_sel=STOP_SEL,
                min_words=SNIPPET_WORDS[0],
                max_words=SNIPPET_WORDS[1],
            ),
        )
        .order_by("-rank", "-created_at", "-seq")[:limit]
    )
    return [_hit(m, m.snippet, round(float(m.rank), 6)) for m in rows]


def _fallback(qs: QuerySet[Message], words: list[str], match: Match, limit: int) -> list[SearchHit]:
    """icontains on every word (any word with `match="any"`), the newest candidates ranked by how many of the
    words they hold, then how often; a snippet around the first hit."""
    # A search box's `or` is an operator: with one, any word will do (`-word` and quotes are read as plain words).
    any_word = match == "any" or any(w.lower() == "or" for w in words)
    terms = list(dict.fromkeys(w.lower() for w in words if w.lower() != "or")) or ["or"]
    cond = Q(text__icontains=terms[0])
    for term in terms[1:]:
        cond = (cond | Q(text__icontains=term)) if any_word else (cond & Q(text__icontains=term))
    candidates = list(qs.filter(cond).order_by("-created_at", "-seq")[:FALLBACK_CANDIDATES])
    scored = []
    for m in candidates:
        lower = m.text.lower()
        held = [t for t in terms if t in lower]
        rank = len(held) + sum(lower.count(t) for t in held) / 100
        scored.append((rank, m))
    scored.sort(key=lambda pair: (-pair[0], -pair[1].created_at.timestamp(), -(pair[1].seq or 0)))
    return [_hit(m, snippet_around(m.text, terms), round(rank, 6)) for rank, m in scored[:limit]]


def snippet_around(text: str, terms: list[str], context: int = FALLBACK_CONTEXT_CHARS) -> str:
    """Up to `context` characters each side of the first hit of any term, "…" where the text was cut, each
    hit in the window between START_SEL and STOP_SEL (case kept as written)."""
    pattern = re.compile("|".join(re.escape(t) for t in sorted(terms, key=len, reverse=True)), re.IGNORECASE)
    first = pattern.search(text)
    if first is None:
        return text[: 2 * context] + ("…" if len(text) > 2 * context else "")
    start = max(0, first.start() - context)
    end = min(len(text), first.end() + context)
    window = pattern.sub(lambda hit: f"{START_SEL}{hit.group(0)}{STOP_SEL}", text[start:end])
    return ("…" if start else "") + window + ("…" if end < len(text) else "")
