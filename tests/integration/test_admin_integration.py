"""Staff run everything from the admin: every model's list renders, the transcript is readable, the
event log cannot be edited, and admin actions go through the services."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client as HttpClient

from agents.models import AgentRun, RunStatus
from chat.models import Event, Message, User
from chat.services.conversations import conversation_create
from chat.services.messages import message_send

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
