"""Schemathesis against /api/schema/, in-process: every operation gets generated requests (about ten each) through
Django's WSGI application, against the real database and Redis, as a seeded user with a real JWT. Every answer
must be below 500 and match what the schema declares for it (status code, content type, body).

Driven through schemathesis' Python API inside ordinary tests (its pytest fixture integration is not used):
one test per operation, so a failure names the operation. Half the cases put the seeded user's own ids into
the path, so the handlers' success branches run too, not only their 404s."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections, connection
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation.modes import GenerationMode

from agents.models import AgentRun, RunStatus, ToolCall, ToolCallStatus
from chat.api import TokenPairSerializer
from chat.models import User
from chat.services.conversations import conversation_create, user_create, workspace_create
from chat.services.messages import message_send
from enterprise.models import WebhookDelivery, WebhookEndpoint

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# About ten requests per operation keeps the ~45 operations near 30 s on the shared two-core machine.
EXAMPLES = 8
# Log-out-everywhere is fuzzed too: every call mints a fresh token, which carries the user's current token
# version, so a revocation by one case does not turn every later case into a 401.


def fresh_token(user_id: int) -> str:
    user = User.objects.get(id=user_id)
    return str(TokenPairSerializer.get_token(user).access_token)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def api_schema(django_db_setup: Any, django_db_blocker: Any) -> Any:
    """The schema as served, fetched through the WSGI app by a signed-in caller (created and removed here)."""
    with django_db_blocker.unblock():
        reader = user_create(username=f"schema-{uuid.uuid4().hex[:8]}", password="pw-" + uuid.uuid4().hex)
        try:
            headers = {"Authorization": f"Bearer {fresh_token(reader.id)}"}
            return schemathesis.openapi.from_wsgi("/api/schema/?format=json", get_wsgi_application(), headers=headers)
        finally:
            reader.delete()


def operations() -> list[tuple[str, str]]:
    """(method, path) of every operation, for parametrizing (read from the generator: no request needed)."""
    from drf_spectacular.generators import SchemaGenerator

    paths = SchemaGenerator().get_schema(request=None, public=True)["paths"]
    return sorted((method.upper(), path) for path, item in paths.items() for method in item if path not in STREAMED)


# Streamed bodies are read on the database's own threads, which cannot see (or open a connection inside) the
# test's uncommitted transaction: their own integration tests exercise them over committed data instead
# (tests/integration/test_workspace_export_integration.py, tests/integration/test_agui_integration.py).
STREAMED = {"/api/workspaces/{workspace_id}/export/", "/api/ag-ui/"}


@pytest.fixture
def keep_connection() -> Iterator[None]:
    """Django's WSGI handler closes the database connection when a request ends (close_old_connections), which
    inside the test's transaction would lose it; Django's own test client disconnects the same two receivers."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def seeded(db: Any, keep_connection: None, settings: Any) -> dict[str, Any]:
    """An enterprise user who owns a workspace with a conversation, a message, a run with a finished tool
    call, a webhook and a delivery. Exports are budgeted per workspace and hour in Redis, which the
    savepoints do not roll back: a budget no run of cases spends keeps a replayed case's answer the same."""
    settings.WORKSPACE_EXPORT_PER_HOUR = 1_000_000
    owner = user_create(username=f"fuzz-{uuid.uuid4().hex[:8]}", password="pw-" + uuid.uuid4().hex, tier="enterprise")
    workspace = workspace_create(owner=owner, name="fuzzed")
    conversation = conversation_create(creator=owner, title="fuzzed", workspace_id=workspace.id, agent="").conversation
    sent = message_send(
        conversation_id=str(conversation.id),
        author_id=owner.id,
        username=owner.username,
        client_msg_id="m1",
        text="hello",
        can_write=True,
    )
    hook = WebhookEndpoint.objects.create(
        workspace=workspace, url="https://hooks.example.com/in", events=["message.created"], secret="whsec_x"
    )
    delivery = WebhookDelivery.objects.create(
        endpoint=hook, event_type="message.created", message_id="msg_1", payload={}
    )
    run = AgentRun.objects.create(
        conversation=conversation, requested_by=owner, agent="assistant", status=RunStatus.COMPLETED
    )
    ToolCall.objects.create(
        run=run,
        call_id="call_1",
        tool="calculator",
        arguments={"expression": "1 + 1"},
        started_at=timezone.now(),
        finished_at=timezone.now(),
        status=ToolCallStatus.OK,
        result={"value": 2},
    )
    return {
        "run_id": str(run.id),
        "call_id": "call_1",
        "user_id": owner.id,
        "conversation_id": str(conversation.id),
        "workspace_id": str(workspace.id),
        "message_id": sent.message_id,
        "user_id_path": str(owner.id),
        "webhook_id": str(hook.id),
        "delivery_id": str(delivery.id),
    }


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("method", "path"), operations())
def test_operation_answers_as_its_schema_says(api_schema: Any, seeded: dict[str, Any], method: str, path: str) -> None:
    operation = api_schema[path][method]
    # Valid requests and invalid ones (bodies, query and path values outside the schema) mixed in one budget.
    cases = operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(GenerationMode.NEGATIVE)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,  # the same cases every run: a failure reproduces, the suite's time is stable
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases, own_ids=st.booleans())
    def exercise(case: Any, own_ids: bool) -> None:
        if own_ids and case.path_parameters:
            for name in case.path_parameters:
                case.path_parameters[name] = seeded["user_id_path" if name == "user_id" else name]
        # Each case in its own savepoint: a request that fails inside the database cannot poison the next.
        sid = connection.savepoint()
        try:
            case.call_and_validate(headers={"Authorization": f"Bearer {fresh_token(seeded['user_id'])}"}, checks=CHECKS)
        finally:
            connection.savepoint_rollback(sid)

    exercise()
