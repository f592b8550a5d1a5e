"""Compaction of finished runs' agent_delta events (chat/services/compaction.py, docs/operations.md "Compaction"),
measured before and after on one conversation of --questions answered questions.

In a fresh PostgreSQL database (created from PG_ADMIN_URL, migrated, dropped at the end) it writes, through the
ORM in bulk and in the shapes the services store: per question, a person's `message` event and message row, an
agent run (completed; one question a minute over the two days before) with its `agent_started`, 20 to 60
`agent_delta` events of one to four words each (what 40 ms of coalesced tokens hold), and `agent_completed` with
the whole answer and its message row. Then, before and after one compaction pass (`compact_finished_runs`), it measures:

- the conversation's event rows, the bytes of their payloads (`octet_length(data::text)`) and of the rows
  (`pg_column_size`), and the event table's size on disk (`pg_total_relation_size`, after VACUUM FULL: the
  benchmark's database holds this one conversation; a live database reuses the freed space instead);
- replaying the whole log from seq 0: what a socket's outbox fill reads when the hot buffer cannot serve it
  (chat/realtime/reconnection_handler.py `_events_from_log`: the selector, then each frame encoded), the best
  and the median of --repeat runs, and the bytes of the frames it would send;
- the `history` reply at the head, events unit, default limit (50): its bytes as sent, and the same for the
  messages unit (default 30 items), which already left ended runs' deltas out.

Prints a table and writes tests/benchmarks/results/compaction.json (or --json PATH). Needs PostgreSQL only
(no Redis, no server); about a minute on this machine.

    .venv/bin/python tests/benchmarks/compaction.py [--questions 1000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(ROOT))

from tests.support.servers import create_database, drop_database  # noqa: E402

RESULTS_DIR = ROOT / "tests" / "benchmarks" / "results"
WORDS = (
    "the a of to and in is it that for on with as this was be by are not or at from have but an they which one you "
    "were all we when there can more if no out so what up about into than them could only other new some time "
    "deploy config query index database cluster latency budget retry backoff request response server client schema "
    "migration transaction replica failover cache token stream socket replay deadline error value function return"
).split()


def words(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def build(questions: int, rng: random.Random) -> tuple[str, dict[str, Any]]:
    """One conversation with `questions` answered questions; returns its id and what was written."""
    from django.db import transaction
    from django.utils import timezone

    from agents.models import AgentRun, RunStatus
    from chat.models import AuthorKind, Conversation, Event, Message
    from chat.services.conversations import conversation_create, user_create
    from chat.services.messages import message_event_data

    user = user_create(username="bench", password="bench-" + uuid.uuid4().hex, tier="pro")
    conversation = conversation_create(
        creator=user, title="compaction", agent="assistant", workspace_id=None, agent_mode="always"
    ).conversation
    conv = conversation.id
    seq = Conversation.objects.get(id=conv).last_seq
    start = timezone.now() - timedelta(days=2)
    deltas_total = 0
    for first in range(0, questions, 100):
        events: list[Event] = []
        messages: list[Message] = []
        runs: list[AgentRun] = []
        for q in range(first, min(first + 100, questions)):
            at = start + timedelta(minutes=q)
            asked = Message(
                conversation_id=conv, author_kind=AuthorKind.USER, author=user, text=words(rng, 6, 30) + "?"
            )
            asked.id = uuid.uuid4()
            asked.client_msg_id = uuid.uuid4().hex
            asked.created_at = at
            run = AgentRun(
                id=uuid.uuid4(),
                conversation_id=conv,
                trigger_message_id=asked.id,
                requested_by=user,
                agent="assistant",
                status=RunStatus.COMPLETED,
                started_at=at,
                model="offline",
                usage={"prompt_tokens": rng.randint(50, 400), "completion_tokens": rng.randint(40, 300)},
            )
            seq += 1
            asked.seq = seq
            data = message_event_data(asked, username=user.username)
            events.append(Event(conversation_id=conv, seq=seq, type="message", data=data, created_at=at))
            seq += 1
            started = {"run_id": str(run.id), "agent": "assistant", "trigger_message_id": str(asked.id), "queued_ms": 3}
            events.append(
                Event(conversation_id=conv, seq=seq, type="agent_started", data=started, created_at=at, run_id=run.id)
            )
            answer = ""
            chunks = rng.randint(20, 60)
            deltas_total += chunks
            for k in range(chunks):
                piece = ("" if k == 0 else " ") + words(rng, 1, 4)
                answer += piece
                seq += 1
                events.append(
                    Event(
                        conversation_id=conv,
                        seq=seq,
                        type="agent_delta",
                        data={"run_id": str(run.id), "text": piece},
                        created_at=at + timedelta(milliseconds=40 * (k + 1)),
                        run_id=run.id,
                    )
                )
            ended = at + timedelta(milliseconds=40 * (chunks + 1))
            reply = Message(
                id=uuid.uuid4(),
                conversation_id=conv,
                author_kind=AuthorKind.AGENT,
                text=answer,
                run_id=run.id,
                created_at=ended,
            )
            seq += 1
            reply.seq = seq
            completed = {
                "run_id": str(run.id),
                "message_id": str(reply.id),
                "text": answer,
                "duration_ms": 40 * (chunks + 1),
                "usage": run.usage,
            }
            events.append(
                Event(
                    conversation_id=conv,
                    seq=seq,
                    type="agent_completed",
                    data=completed,
                    created_at=ended,
                    run_id=run.id,
                )
            )
            run.finished_at = ended
            run.partial_text = answer
            messages += [asked, reply]
            runs.append(run)
        with transaction.atomic():
            Message.objects.bulk_create(messages)
            AgentRun.objects.bulk_create(runs)
            Event.objects.bulk_create(events)
    # auto_now_add stamped the runs with the time of writing; they were asked over the last two days.
    AgentRun.objects.filter(conversation_id=conv).update(created_at=start)
    Conversation.objects.filter(id=conv).update(last_seq=seq, last_activity_at=timezone.now())
    return str(conv), {"questions": questions, "events_written": seq, "agent_deltas_written": deltas_total}


def measure(conv: str, repeat: int) -> dict[str, Any]:
    from django.db import connection

    from chat.history import events_page, messages_page
    from chat.models import Conversation
    from chat.realtime.reconnection_handler import _events_from_log
    from chat.wire import encode
    from chat.wire.common import HISTORY_MESSAGES_DEFAULT, HISTORY_PAGE_DEFAULT

    with connection.cursor() as cursor:
        cursor.execute("VACUUM FULL ANALYZE chat_event")
        cursor.execute(
            "SELECT count(*), coalesce(sum(octet_length(data::text)), 0), coalesce(sum(pg_column_size(e.*)), 0)"
            " FROM chat_event e WHERE conversation_id = %s",
            [uuid.UUID(conv)],
        )
        rows, payload, row_bytes = cursor.fetchone()
        cursor.execute("SELECT pg_total_relation_size('chat_event')")
        (table_bytes,) = cursor.fetchone()
    head = Conversation.objects.get(id=conv).last_seq
    times: list[float] = []
    frames: list[tuple[int, str]] = []
    for _ in range(repeat):
        started = time.perf_counter()
        frames = _events_from_log(conv, 0, head)
        times.append(time.perf_counter() - started)
    seqs = [seq for seq, _ in frames]
    if seqs != sorted(set(seqs)) or seqs[-1] != head:
        raise SystemExit("the replay is not increasing up to the head")

    def reply_bytes(page: Any) -> int:
        body: dict[str, Any] = {"conversation": conv, "events": [e.frame() for e in page.events]}
        body["has_more"] = page.has_more
        if page.next_before_seq is not None:
            body["next_before_seq"] = page.next_before_seq
        return len(encode({"type": "reply", "id": "h1", "ok": True, **body}).encode())

    by_events = events_page(conversation_id=conv, before_seq=None, limit=HISTORY_PAGE_DEFAULT)
    by_messages = messages_page(conversation_id=conv, before_seq=None, limit=HISTORY_MESSAGES_DEFAULT)
    return {
        "event_rows": rows,
        "payload_bytes": int(payload),
        "row_bytes": int(row_bytes),
        "event_table_bytes": int(table_bytes),
        "replay_frames": len(frames),
        "replay_frame_bytes": sum(len(text.encode()) for _, text in frames),
        "replay_ms_best": round(min(times) * 1000, 1),
        "replay_ms_median": round(statistics.median(times) * 1000, 1),
        "history_events_page_bytes": reply_bytes(by_events),
        "history_events_page_types": sorted({e.type for e in by_events.events}),
        "history_messages_page_bytes": reply_bytes(by_messages),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5, help="replays timed per phase (best and median reported)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    name = create_database()
    os.environ.update(
        {
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{name}",
            "DJANGO_SETTINGS_MODULE": "chatsite.settings",
            "DB_POOL_MIN": "0",
            "LOG_LEVEL": "WARNING",
        }
    )
    os.environ.pop("REDIS_URL", None)  # nothing is published: the benchmark writes the log directly
    try:
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connections

        from chat.services.compaction import compact_finished_runs

        call_command("migrate", verbosity=0)
        started = time.perf_counter()
        conv, written = build(args.questions, random.Random(args.seed))
        written["build_s"] = round(time.perf_counter() - started, 1)
        before = measure(conv, args.repeat)
        started = time.perf_counter()
        done = compact_finished_runs()
        compaction = {
            "runs": done.runs,
            "events_deleted": done.events,
            "batches": done.batches,
            "seconds": round(time.perf_counter() - started, 2),
        }
        after = measure(conv, args.repeat)
        again = compact_finished_runs()
        compaction["second_pass_events_deleted"] = again.events
        connections.close_all()
    finally:
        drop_database(name)

    report = {"setup": written, "compaction": compaction, "before": before, "after": after}
    print(f"{args.questions} answered questions, {written['agent_deltas_written']} agent_delta events written")
    print(f"compaction: {compaction}")
    print(f"{'':30} {'before':>14} {'after':>14} {'after/before':>13}")
    for key, value in before.items():
        if isinstance(value, int | float):
            ratio = f"{after[key] / value:.3f}" if value else "-"
            print(f"{key:30} {value:>14,} {after[key]:>14,} {ratio:>13}")
        else:
            print(f"{key:30} {value} -> {after[key]}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = args.json or RESULTS_DIR / "compaction.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"report written to {path}")
    return 0 if done.events == written["agent_deltas_written"] and again.events == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
