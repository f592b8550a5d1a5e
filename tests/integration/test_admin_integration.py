"""Staff run everything from the admin: every model's list renders, the transcript is readable, the
event log cannot be edited, and admin actions go through the services. A run's page reads like what
happened (timeline with offsets, tool calls, approvals, trace id), with times to the second."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.test import Client as HttpClient
from opentelemetry.sdk.trace import TracerProvider

from agents.approvals import approval_decide, run_park
from agents.models import AgentRun, RunStatus
from agents.services import run_claim_next
from chat.models import Event, Message, User
from chat.services.conversations import conversation_create, workspace_create, workspace_member_add
from chat.services.messages import message_send
from monitoring import tracing
from tests.support import factories
from tests.support.ws import connected

pytestmark = [pytest.mark.django_db(transaction=True)]

ADMIN_LISTS = [
    "chat/user",
    "chat/workspace",
    "chat/conversation",
    "chat/message",
    "chat/event",
    "chat/notification",
    "agents/agentrun",
    "agents/toolcall",
    "monitoring/runeventrecord",
]


@pytest.fixture
def staff_client(make_user: Any) -> HttpClient:
    staff = make_user(is_staff=True, is_superuser=True)
    client = HttpClient()
    client.force_login(staff)
    return client


def test_every_admin_list_renders_with_data(staff_client: HttpClient, make_user: Any) -> None:
    user = make_user()
    conv = conversation_create(creator=user, title="Quarterly numbers").conversation
    message_send(
        conversation_id=str(conv.id),
        author_id=user.id,
        username=user.username,
        client_msg_id="1",
        text="what is 2 + 2?",
        can_write=True,
    )
    for path in ADMIN_LISTS:
        response = staff_client.get(f"/admin/{path}/")
        assert response.status_code == 200, path
    page = staff_client.get(f"/admin/chat/conversation/{conv.id}/change/")
    assert page.status_code == 200
    assert "what is 2 + 2?" in page.content.decode()
    assert "Quarterly numbers" in staff_client.get("/admin/chat/conversation/?q=Quarterly").content.decode()


def test_event_log_is_read_only(staff_client: HttpClient, make_user: Any) -> None:
    user = make_user()
    conv = conversation_create(creator=user, title="t", agent="").conversation
    message_send(
        conversation_id=str(conv.id),
        author_id=user.id,
        username=user.username,
        client_msg_id="1",
        text="immutable",
        can_write=True,
    )
    event = Event.objects.get(conversation=conv)
    assert staff_client.get("/admin/chat/event/add/").status_code == 403
    response = staff_client.post(f"/admin/chat/event/{event.pk}/change/", {"type": "forged", "data": "{}"})
    assert response.status_code == 403
    assert staff_client.post(f"/admin/chat/event/{event.pk}/delete/", {"post": "yes"}).status_code == 403
    event.refresh_from_db()
    assert event.type == "message"
    assert Message.objects.get(conversation=conv).text == "immutable"


def test_admin_cancel_action_uses_the_run_service(staff_client: HttpClient, make_user: Any, settings: Any) -> None:
    settings.AGENT_RUNNER = "worker"  # no worker: the run stays queued until cancelled
    user = make_user()
    conv = conversation_create(creator=user, title="t").conversation
    result = message_send(
        conversation_id=str(conv.id),
        author_id=user.id,
        username=user.username,
        client_msg_id="1",
        text="what is 1 + 1?",
        can_write=True,
    )
    response = staff_client.post(
        "/admin/agents/agentrun/", {"action": "cancel_runs", "_selected_action": [result.run_id]}
    )
    assert response.status_code == 302
    run = AgentRun.objects.get(id=result.run_id)
    assert run.status == RunStatus.CANCELLED
    types = list(Event.objects.filter(conversation=conv).order_by("seq").values_list("type", flat=True))
    assert types == ["message", "agent_started", "agent_cancelled"]


def test_admin_deactivate_action(staff_client: HttpClient, make_user: Any) -> None:
    user = make_user()
    response = staff_client.post("/admin/chat/user/", {"action": "deactivate", "_selected_action": [user.id]})
    assert response.status_code == 302
    assert User.objects.get(id=user.id).is_active is False


# --- reading a run and a conversation -----------------------------------------------------------------

TERMINAL = ("agent_completed", "agent_failed", "agent_cancelled")
# A time with seconds, as every admin time is shown (chatsite/formats/en/formats.py).
TIME_WITH_SECONDS = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} UTC")


@pytest.fixture
def traced() -> Iterator[None]:
    """Tracing on (spans dropped: no exporter), so that runs get a trace id."""
    provider = TracerProvider()
    previous = tracing.use_provider(provider)
    yield
    tracing.use_provider(previous)
    provider.shutdown()


def text_of(fragment: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def table_rows(page: str, css: str) -> list[list[str]]:
    """The body rows of the page's `<table class="{css}">`, each cell as plain text."""
    table = re.search(rf'<table class="{css}">(.*?)</table>', page, re.DOTALL)
    assert table is not None, f"no {css} table"
    body = table[1].split("<tbody>", 1)[1]
    return [[text_of(c) for c in re.findall(r"<td>(.*?)</td>", row, re.DOTALL)] for row in body.split("<tr>")[1:]]


def transcript_lines(page: str) -> list[str]:
    assert '<div class="transcript">' in page, "no transcript"
    return [text_of(line) for line in re.findall(r'<div class="transcript-line[^"]*">(.*?)</div>', page, re.DOTALL)]


async def answered(make_user: Any, text: str) -> tuple[Any, str, str]:
    """A user asks the offline agent over the socket and it answers: (user, conversation, run id)."""
    user = await database_sync_to_async(make_user)()
    conv = await factories.conversation(user)
    client = await connected(user)
    await client.command("subscribe", conversation=conv, since_seq=0)
    run_id = (await client.command("send", conversation=conv, client_msg_id="a1", text=text))["run_id"]
    done = await client.seen_or_until(lambda f: f.get("type") in TERMINAL and f["data"]["run_id"] == run_id)
    assert done["type"] == "agent_completed"
    await client.close()
    return user, conv, run_id


async def test_a_runs_page_shows_its_timeline_tool_calls_and_trace_id(
    staff_client: HttpClient, make_user: Any, traced: None
) -> None:
    _, _, run_id = await answered(make_user, "what is 2 + 2?")
    run = await database_sync_to_async(AgentRun.objects.get)(id=run_id)
    assert len(run.trace_id) == 32
    response = await database_sync_to_async(staff_client.get)(f"/admin/agents/agentrun/{run_id}/change/")
    assert response.status_code == 200
    page = response.content.decode()

    # The timeline: every event of the run in order, with its offset in ms from the run's start.
    rows = table_rows(page, "timeline")
    assert [r[2] for r in rows] == [
        "agent_started",
        "agent_thinking",
        "tool_executing",
        "tool_completed",
        "agent_thinking",
        "agent_delta",
        "agent_completed",
    ]
    assert rows[0][0] == "+0 ms"
    offsets = [int(r[0].split(" ")[0].lstrip("+").replace(",", "")) for r in rows]
    assert offsets == sorted(offsets)
    assert rows[2][3] == 'assistant calls calculator {"expression": "2 + 2"}'
    assert re.fullmatch(r"assistant calculator returned in [\d,]+ ms: \{.*\"value\": 4.*\}", rows[3][3])
    assert re.fullmatch(r"\d+ chunk\(s\), \d+ characters: 2 \+ 2 = 4", rows[5][3])  # chunks folded into one row
    assert rows[6][3] == "assistant 2 + 2 = 4"

    # The tool call, read-only: name, arguments, result, duration.
    assert 'name="tool_calls-0-tool"' not in page
    inline = page.split('id="tool_calls-group"', 1)[1].split('id="approvals-group"', 1)[0]
    assert "calculator" in inline
    assert "&quot;expression&quot;: &quot;2 + 2&quot;" in inline
    assert "&quot;value&quot;: 4" in inline
    assert re.search(r'<td class="field-duration">\s*<p>[\d,]+ ms</p>', inline)

    # Its trace id, queue wait and duration in ms, its times to the second.
    assert run.trace_id in page
    assert re.search(r"Duration:</label>\s*<div class=\"readonly\">[\d,]+ ms</div>", page)
    assert TIME_WITH_SECONDS.search(page)
    # A trace id pasted from a tracing backend finds the run.
    found = await database_sync_to_async(staff_client.get)(f"/admin/agents/agentrun/?q={run.trace_id}")
    assert run_id in found.content.decode()
    assert re.search(r"\b1 agent run\b", found.content.decode())


async def test_a_conversations_transcript_shows_the_assistants_steps(staff_client: HttpClient, make_user: Any) -> None:
    user, conv, _ = await answered(make_user, "what is 2 + 2?")
    response = await database_sync_to_async(staff_client.get)(f"/admin/chat/conversation/{conv}/change/")
    lines = transcript_lines(response.content.decode())
    # "#seq HH:MM:SS who text", one per event: answer chunks are left out (the answer repeats them).
    assert [re.sub(r"^#\d+ \d{2}:\d{2}:\d{2} ", "", line) for line in lines] == [
        f"{user.username} what is 2 + 2?",
        "assistant started (queued " + lines[1].split("(queued ", 1)[1],
        "assistant thinking: The message asks for a calculation; I will evaluate 2 + 2 with the calculator.",
        'assistant calls calculator {"expression": "2 + 2"}',
        "assistant calculator returned in " + lines[4].split(" returned in ", 1)[1],
        "assistant thinking: The calculator returned; writing the answer.",
        "assistant 2 + 2 = 4",
    ]
    seqs = [int(line.split(" ", 1)[0].lstrip("#")) for line in lines]
    assert seqs[:6] == [1, 2, 3, 4, 5, 6]
    assert seqs[6] > 7  # after the answer's chunk(s)


def test_a_runs_page_shows_its_approvals(staff_client: HttpClient, make_user: Any, settings: Any) -> None:
    settings.AGENT_RUNNER = "worker"  # nothing claims here but this test
    owner, member, carol = make_user(), make_user(), make_user()
    workspace = workspace_create(owner=owner, name="team")
    for user in (member, carol):
        workspace_member_add(workspace=workspace, actor=owner, username=user.username, role="member")
    conv = factories.conversation_sync(owner, members=((member, "member"),), workspace_id=workspace.id)
    factories.message_sync(conv, member, f"@assistant invite @{carol.username}")
    claimed = run_claim_next(worker_id="admin-test")
    assert claimed is not None
    run_park(
        run_id=claimed.run_id,
        conversation_id=conv,
        call_id="call_1",
        tool="invite_member",
        arguments={"username": carol.username},
        reason="Add them.",
        approver_role="owner",
        ttl_s=600,
        backend_state={},
    )
    approval_decide(
        run_id=claimed.run_id, call_id="call_1", user_id=owner.id, username=owner.username, decision="approve"
    )
    page = staff_client.get(f"/admin/agents/agentrun/{claimed.run_id}/change/").content.decode()
    approvals = page.split('id="approvals-group"', 1)[1]
    assert "invite_member" in approvals
    assert "Approved" in approvals
    assert owner.username in approvals
    assert re.search(r'<td class="field-waited">\s*<p>[\d,]+ ms</p>', approvals)
    assert 'name="approvals-0-status"' not in page  # read-only
    rows = table_rows(page, "timeline")
    assert [r[2] for r in rows] == ["agent_started", "approval_requested", "approval_resolved"]
    asked = f'invite_member {{"username": "{carol.username}"}}: Add them.'
    assert rows[1][3] == f"assistant asks an owner to approve {asked}"
    assert rows[2][3] == f'{owner.username} approved {{"username": "{carol.username}"}}'
