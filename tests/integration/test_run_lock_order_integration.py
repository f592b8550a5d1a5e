"""Lock order of the run services: conversation first, then the run, in every service that writes a
run's events. The claim, cancel and the approval services need the conversation first (they keep a
conversation's runs in order); a writer that locked the run first and the conversation second (its
event's seq) waited on them in a circle: an answer streaming while its owner pressed Stop deadlocked,
and PostgreSQL aborted the cancel, which the page showed as "postgres unavailable" while the run went
on. Checked directly: with the conversation held by another transaction, each writer must be waiting
for it while the run is still free to lock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from django.db import connection, connections

from agents.services import (
    run_claim_next,
    run_complete,
    run_emit,
    run_fail,
    run_finish_cancelled,
    tool_call_finish,
    tool_call_start,
)
from tests.support import factories
from tests.support.waiting import eventually

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("runner", "fast_password_hashing")]


def _raw() -> psycopg.Connection[Any]:
    """A connection of its own to the test database, outside Django's (a second transaction)."""
    db = connection.settings_dict
    return psycopg.connect(
        dbname=db["NAME"], host=db["HOST"], port=db["PORT"] or 5432, user=db["USER"], password=db["PASSWORD"]
    )


@contextmanager
def conversation_held(conversation_id: str) -> Iterator[int]:
    """Another transaction holds the conversation's row lock; yields its backend pid."""
    with _raw() as holder:
        holder.execute("SELECT id FROM chat_conversation WHERE id = %s FOR UPDATE", (conversation_id,))
        try:
            yield holder.info.backend_pid
        finally:
            holder.rollback()


def waiting_for_a_lock(holder_pid: int) -> bool:
    with _raw() as probe:
        row = probe.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            " AND %s = ANY(pg_blocking_pids(pid))",
            (holder_pid,),
        ).fetchone()
    return bool(row and row[0])


def run_is_free(run_id: str) -> bool:
    """Nobody holds the run's row lock: a third transaction takes it without waiting."""
    with _raw() as probe:
        try:
            probe.execute("SELECT id FROM agents_agentrun WHERE id = %s FOR UPDATE NOWAIT", (run_id,))
        except psycopg.errors.LockNotAvailable:
            return False
        finally:
            probe.rollback()
    return True


def running(owner: Any) -> tuple[str, str]:
    conv = factories.conversation_sync(owner)
    sent = factories.message_sync(conv, owner, "hello")
    claimed = run_claim_next(worker_id="lock-order:1")
    assert claimed is not None
    assert claimed.run_id == sent.run_id
    return conv, claimed.run_id


def with_a_started_call(conv: str, run_id: str) -> None:
    tool_call_start(run_id=run_id, conversation_id=conv, call_id="c1", tool="calculator", arguments={})


WRITERS: dict[str, tuple[Callable[[str, str], None] | None, Callable[[str, str], Any]]] = {
    "run_emit": (None, lambda c, r: run_emit(run_id=r, conversation_id=c, type="agent_delta", data={"text": "x"})),
    "tool_call_start": (
        None,
        lambda c, r: tool_call_start(run_id=r, conversation_id=c, call_id="c2", tool="calculator", arguments={}),
    ),
    "tool_call_finish": (
        with_a_started_call,
        lambda c, r: tool_call_finish(run_id=r, conversation_id=c, call_id="c1", ok=True, result=4),
    ),
    "run_complete": (None, lambda c, r: run_complete(run_id=r, conversation_id=c, text="done", usage={})),
    "run_fail": (None, lambda c, r: run_fail(run_id=r, conversation_id=c, code="internal", message="boom")),
    "run_finish_cancelled": (None, lambda c, r: run_finish_cancelled(run_id=r, conversation_id=c)),
}


def _in_thread(call: Callable[[], Any]) -> Any:
    try:
        return call()
    finally:
        connections.close_all()


@pytest.mark.parametrize("name", list(WRITERS))
async def test_a_run_writer_waits_for_the_conversation_before_it_locks_the_run(make_user: Any, name: str) -> None:
    prepare, write = WRITERS[name]

    def setup() -> tuple[str, str]:
        conv, run_id = running(make_user())
        if prepare is not None:
            prepare(conv, run_id)
        return conv, run_id

    conv, run_id = await asyncio.to_thread(_in_thread, setup)
    with conversation_held(conv) as holder:
        writer = asyncio.ensure_future(asyncio.to_thread(_in_thread, lambda: write(conv, run_id)))
        await eventually(lambda: waiting_for_a_lock(holder), what=f"{name} waiting on the held conversation")
        # It waits for the conversation holding nothing of the run's: a cancel (conversation, then
        # run) that got the conversation first could still take the run.
        assert run_is_free(run_id), f"{name} locked the run before the conversation"
    await asyncio.wait_for(writer, timeout=10)  # and once the conversation is free, it writes (or raises here)
