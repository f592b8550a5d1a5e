"""The one publish road, observed from the outside: a `send` costs one membership check, one
existence lookup and one write transaction; events reach sockets because the service that wrote
them scheduled them; the admin's cancel stops a running run as promptly as the socket's does."""

from __future__ import annotations

from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.db.backends.utils import CursorWrapper
from django.test import Client as HttpClient

from tests.support import factories
from tests.support.ws import connected, subscribed_client

pytestmark = [pytest.mark.django_db(transaction=True)]


class Statements:
    """Every SQL statement any database connection runs while recording, with whether it ran
    inside a transaction (atomic block)."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, bool]] = []
        self.recording = False


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> Statements:
    # Recorded where every cursor of every thread executes, not with a per-connection execute
    # wrapper: a wrapper is installed when a connection is created, and the database thread's
    # connection may already exist when this test starts (whether it does depends on which tests
    # ran before in this process), so a wrapper silently recorded nothing.
    recorder = Statements()
    original = CursorWrapper._execute_with_wrappers

    def recording(self: CursorWrapper, sql: str, params: Any, many: bool, executor: Any) -> Any:
        if recorder.recording:
            recorder.rows.append((sql, self.db.in_atomic_block))
        return original(self, sql, params, many, executor)

    monkeypatch.setattr(CursorWrapper, "_execute_with_wrappers", recording)
    return recorder


def _send_statements(rows: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
    # The in-process run supervisor polls the run queue on the same database thread; its reads
    # are not the send's.
    return [
        (sql, atomic)
        for sql, atomic in rows
        if not (sql.startswith("SELECT") and "chat_message" not in sql and "chat_conversationmember" not in sql)
    ]


async def test_a_send_is_one_check_one_lookup_one_transaction(make_user: Any, statements: Statements) -> None:
    user = await database_sync_to_async(make_user)()
    conv = await factories.conversation(user, agent="")
    async with subscribed_client(user, conv) as client:
        statements.recording = True
        reply = await client.command("send", conversation=conv, client_msg_id="q1", text="counted")
        statements.recording = False
        assert reply["ok"] is True
        rows = _send_statements(statements.rows)
        reads = [sql for sql, atomic in rows if sql.startswith("SELECT") and not atomic]
        writes = [(sql.split()[0], atomic) for sql, atomic in rows if not sql.startswith("SELECT")]
        assert len(reads) == 2, "\n".join(sql[:150] for sql, _ in statements.rows)
        assert "chat_conversationmember" in reads[0]  # the membership check
        assert "client_msg_id" in reads[1]
        assert "agents_agentrun" in reads[1]
        assert writes == [("INSERT", True), ("UPDATE", True), ("INSERT", True), ("UPDATE", True)]
        # One transaction: the writes are consecutive statements inside one atomic block.
        flags = [atomic for _, atomic in rows]
        assert flags == [False, False, True, True, True, True]

        statements.rows.clear()
        statements.recording = True
        again = await client.command("send", conversation=conv, client_msg_id="q1", text="counted")
        statements.recording = False
        assert again["duplicate"] is True
        assert again["message"] == reply["message"]
        assert [atomic for _, atomic in _send_statements(statements.rows)] == [False, False]  # no write at all


async def test_admin_cancel_stops_a_running_run_at_once(make_user: Any, settings: Any) -> None:
    """The admin's cancel goes through the same service as the socket's, which rings the run's
    runner after commit: the run ends well before the heartbeat (5 s) would have noticed."""
    settings.AGENT_OFFLINE_TOKEN_DELAY_MS = 300  # a run that takes seconds
    settings.AGENT_HEARTBEAT_S = 30
    user = await database_sync_to_async(make_user)()
    staff = await database_sync_to_async(make_user)(is_staff=True, is_superuser=True)
    conv = await factories.conversation(user)
    async with subscribed_client(user, conv) as client:
        reply = await client.command("send", conversation=conv, client_msg_id="c1", text="tell me a long story")
        run_id = reply["run_id"]
        await client.until(lambda f: f.get("type") == "agent_delta", timeout=10)

        def cancel_in_admin() -> int:
            http = HttpClient()
            http.force_login(staff)
            response = http.post("/admin/agents/agentrun/", {"action": "cancel_runs", "_selected_action": [run_id]})
            return response.status_code

        assert await database_sync_to_async(cancel_in_admin)() == 302
        done = await client.until(lambda f: f.get("type") in ("agent_cancelled", "agent_completed"), timeout=3)
        assert done["type"] == "agent_cancelled"
        assert done["data"]["run_id"] == run_id
        assert done["data"]["by"]["id"] == staff.id


async def test_admin_adds_a_member_through_the_service(make_user: Any) -> None:
    """A member added in the conversation's admin inline is notified like one an owner added."""
    owner = await database_sync_to_async(make_user)()
    newcomer = await database_sync_to_async(make_user)()
    staff = await database_sync_to_async(make_user)(is_staff=True, is_superuser=True)
    conv = await factories.conversation(owner, agent="")
    client = await connected(newcomer)
    try:

        def add_in_admin() -> int:
            http = HttpClient()
            http.force_login(staff)
            page = http.get(f"/admin/chat/conversation/{conv}/change/")
            form = page.context["adminform"].form
            inline = page.context["inline_admin_formsets"][0].formset
            data = {k: v for k, v in form.initial.items() if v is not None and not isinstance(v, list | dict)}
            data.update({"title": form.initial["title"], "workspace": str(form.initial["workspace"])})
            prefix = inline.prefix
            data.update(
                {
                    f"{prefix}-TOTAL_FORMS": "2",
                    f"{prefix}-INITIAL_FORMS": "1",
                    f"{prefix}-0-id": str(inline.forms[0].instance.id),
                    f"{prefix}-0-conversation": conv,
                    f"{prefix}-0-user": str(owner.id),
                    f"{prefix}-0-role": "owner",
                    f"{prefix}-1-conversation": conv,
                    f"{prefix}-1-user": str(newcomer.id),
                    f"{prefix}-1-role": "member",
                }
            )
            return http.post(f"/admin/chat/conversation/{conv}/change/", data).status_code

        assert await database_sync_to_async(add_in_admin)() == 302
        note = await client.until(lambda f: f.get("type") == "notification", timeout=5)
        assert note["data"]["kind"] == "added_to_conversation"
        assert note["data"]["conversation"] == conv
        assert note["data"]["by"] == staff.id
    finally:
        await client.close()
