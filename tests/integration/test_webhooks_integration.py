"""Signed outgoing webhooks (docs/operations.md "Webhooks") against the real PostgreSQL: the REST API and
who may use it, validation and the address rule, deliveries written with the event they report, and the
worker's pass (`deliver_due`, driven by its injectable clock) sending to a local receiver that verifies
every signature with standardwebhooks."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.db import transaction
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from chat.models import Notification, Workspace
from chat.services.conversation_admin import conversation_join
from chat.services.conversations import (
    conversation_create,
    conversation_member_add,
    workspace_create,
    workspace_member_add,
)
from chat.services.events import append_event
from enterprise.delivery import MAX_ATTEMPTS, RETRY_SCHEDULE, deliver_due
from enterprise.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from tests.support.factories import message_sync
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_password_hashing")]


@pytest.fixture(autouse=True)
def _private_allowed(settings: Any) -> None:
    settings.WEBHOOKS_ALLOW_PRIVATE = True  # the receiver is on 127.0.0.1


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver.start()
    yield server
    server.stop()


def api_for(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def base(workspace: Workspace) -> str:
    return f"/api/workspaces/{workspace.id}/webhooks/"


def setup_hook(
    make_user: Any, url: str, events: list[str] | None = None
) -> tuple[Any, Workspace, APIClient, dict[str, Any]]:
    owner = make_user(tier="enterprise")
    workspace = workspace_create(owner=owner, name="Acme")
    api = api_for(owner)
    created = api.post(base(workspace), {"url": url, "events": events or ["message.created"]}, format="json")
    assert created.status_code == 201, created.json()
    return owner, workspace, api, created.json()


def people_conversation(owner: Any, workspace: Workspace) -> str:
    created = conversation_create(creator=owner, title="Room", agent="", workspace_id=workspace.id)
    return str(created.conversation.id)


# --- the API -----------------------------------------------------------------------------------------------------


def test_owner_creates_reads_updates_and_deletes(make_user: Any) -> None:
    owner, workspace, api, hook = setup_hook(make_user, "https://93.184.215.14/in", ["run.failed", "message.created"])
    assert hook["secret"].startswith("whsec_")
    assert hook["url"] == "https://93.184.215.14/in"
    assert hook["events"] == ["message.created", "run.failed"]  # de-duplicated, in the catalogue's order
    assert hook["enabled"] is True
    listed = api.get(base(workspace)).json()
    assert [h["id"] for h in listed] == [hook["id"]]
    assert "secret" not in listed[0]  # shown once, on create
    detail = api.get(f"{base(workspace)}{hook['id']}/")
    assert detail.status_code == 200
    assert "secret" not in detail.json()
    patched = api.patch(
        f"{base(workspace)}{hook['id']}/",
        {"url": "https://93.184.215.15/x", "events": ["member.added"], "enabled": False},
        format="json",
    )
    assert patched.status_code == 200, patched.json()
    assert patched.json()["url"] == "https://93.184.215.15/x"
    assert patched.json()["events"] == ["member.added"]
    assert patched.json()["enabled"] is False
    assert api.delete(f"{base(workspace)}{hook['id']}/").status_code == 204
    gone = api.get(f"{base(workspace)}{hook['id']}/")
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "not_found"


def test_only_enterprise_owners_manage_webhooks(make_user: Any) -> None:
    body = {"url": "https://93.184.215.14/in", "events": ["message.created"]}
    for tier in ("free", "pro"):
        owner = make_user(tier=tier)
        workspace = workspace_create(owner=owner, name="Small")
        refused = api_for(owner).post(base(workspace), body, format="json")
        assert refused.status_code == 403
        assert "enterprise" in refused.json()["error"]["message"]
        assert api_for(owner).get(base(workspace)).status_code == 403
    owner, workspace, _, hook = setup_hook(make_user, "https://93.184.215.14/in")
    member = make_user(tier="enterprise")
    workspace_member_add(workspace=workspace, actor=owner, username=member.username, role="member")
    as_member = api_for(member)
    for response in (
        as_member.get(base(workspace)),
        as_member.post(base(workspace), body, format="json"),
        as_member.get(f"{base(workspace)}{hook['id']}/"),
        as_member.post(f"{base(workspace)}{hook['id']}/rotate-secret/"),
    ):
        assert response.status_code == 403
        assert "owner" in response.json()["error"]["message"]
    outsider = api_for(make_user(tier="enterprise"))
    for path in (base(workspace), f"{base(workspace)}{hook['id']}/", f"{base(workspace)}{hook['id']}/deliveries/"):
        response = outsider.get(path)
        assert response.status_code == 404
        assert response.json()["error"]["message"] == "workspace not found"
    assert outsider.get("/api/workspaces/not-a-uuid/webhooks/").status_code == 404
    # Another enterprise owner's webhook is not found from their own workspace.
    _, other_ws, other_api, _ = setup_hook(make_user, "https://93.184.215.14/2")
    assert other_api.get(f"{base(other_ws)}{hook['id']}/").status_code == 404
    assert WebhookEndpoint.objects.filter(workspace=workspace).count() == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"url": "https://93.184.215.14/", "events": ["message.sent"]}, "unknown event type(s) message.sent"),
        ({"url": "https://93.184.215.14/", "events": []}, "events: expected a non-empty list"),
        ({"url": "https://93.184.215.14/", "events": "message.created"}, "events: expected a non-empty list"),
        ({"url": "https://93.184.215.14/"}, "events: expected"),
        ({"url": "ftp://93.184.215.14/", "events": ["message.created"]}, "scheme must be http or https"),
        ({"url": "https:///path", "events": ["message.created"]}, "a host is required"),
        ({"url": "https://u:p@93.184.215.14/", "events": ["message.created"]}, "credentials"),
        ({"url": "https://93.184.215.14/" + "a" * 2000, "events": ["message.created"]}, "at most 2000 characters"),
        ({"url": 5, "events": ["message.created"]}, "url: expected an http(s) URL"),
        ({"url": "https://93.184.215.14:99999/", "events": ["message.created"]}, "not a valid URL"),
        ({"url": "https://93.184.215.14/", "events": ["message.created"], "secret": "x"}, "unknown field(s): secret"),
        (["not", "an", "object"], "expected a JSON object"),
    ],
)
def test_create_validates_everything(make_user: Any, body: Any, message: str) -> None:
    owner = make_user(tier="enterprise")
    workspace = workspace_create(owner=owner, name="Acme")
    response = api_for(owner).post(base(workspace), body, format="json")
    assert response.status_code == 400, response.json()
    assert response.json()["error"]["code"] == "bad_request"
    assert message in response.json()["error"]["message"]
    assert not WebhookEndpoint.objects.filter(workspace=workspace).exists()


def test_update_validates_and_the_endpoint_limit_holds(make_user: Any, settings: Any) -> None:
    settings.WEBHOOKS_MAX_PER_WORKSPACE = 2
    _, workspace, api, hook = setup_hook(make_user, "https://93.184.215.14/1")
    detail = f"{base(workspace)}{hook['id']}/"
    for body, message in (
        ({"enabled": "yes"}, "enabled: expected true or false"),
        ({"events": ["nope"]}, "unknown event type"),
        ({"url": "gopher://x"}, "scheme"),
        ({"id": "x"}, "unknown field(s): id"),
    ):
        response = api.patch(detail, body, format="json")
        assert response.status_code == 400
        assert message in response.json()["error"]["message"]
    assert api.get(detail).json()["events"] == ["message.created"]  # nothing of a refused PATCH was kept
    second = api.post(base(workspace), {"url": "https://93.184.215.14/2", "events": ["run.failed"]}, format="json")
    assert second.status_code == 201
    third = api.post(base(workspace), {"url": "https://93.184.215.14/3", "events": ["run.failed"]}, format="json")
    assert third.status_code == 409
    assert "at most 2 webhook endpoints" in third.json()["error"]["message"]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:8000/hook", "loopback"),
        ("http://10.1.2.3/hook", "private"),
        ("http://192.168.0.10/hook", "private"),
        ("http://[::1]/hook", "loopback"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://224.0.0.1/hook", "multicast"),
        ("http://0.0.0.0/hook", "unspecified"),
        ("http://localhost:8000/hook", "loopback"),  # a name that resolves to loopback
    ],
)
def test_private_addresses_are_refused(make_user: Any, settings: Any, url: str, reason: str) -> None:
    settings.WEBHOOKS_ALLOW_PRIVATE = False
    owner = make_user(tier="enterprise")
    workspace = workspace_create(owner=owner, name="Acme")
    response = api_for(owner).post(base(workspace), {"url": url, "events": ["message.created"]}, format="json")
    assert response.status_code == 400
    text = response.json()["error"]["message"]
    assert reason in text
    assert "public addresses only" in text


def test_the_address_is_checked_again_when_sending(make_user: Any, settings: Any, receiver: WebhookReceiver) -> None:
    owner, workspace, _, _ = setup_hook(make_user, receiver.url)
    message_sync(people_conversation(owner, workspace), owner, "hi")
    settings.WEBHOOKS_ALLOW_PRIVATE = False  # e.g. the name now resolves somewhere internal
    assert deliver_due(timezone.now()) == {"delivered": 0, "retrying": 1, "failed": 0}
    assert receiver.hits == []
    [attempt] = WebhookAttempt.objects.all()
    assert attempt.status_code is None
    assert attempt.error.startswith("refused: url: 127.0.0.1 is refused")


# --- enqueueing: the outbox --------------------------------------------------------------------------------------


def test_deliveries_are_written_in_the_events_transaction(make_user: Any) -> None:
    owner, workspace, _, hook = setup_hook(make_user, "https://93.184.215.14/in")
    conv = people_conversation(owner, workspace)
    written = []

    def rolled_back() -> None:
        with transaction.atomic():
            message_sync(conv, owner, "never happened")
            written.append(WebhookDelivery.objects.count())  # written with the event...
            raise RuntimeError("roll back")

    with pytest.raises(RuntimeError):
        rolled_back()
    assert written == [1]
    assert WebhookDelivery.objects.count() == 0  # ...and gone with it
    sent = message_sync(conv, owner, "hello @nobody")
    [delivery] = WebhookDelivery.objects.all()
    assert str(delivery.endpoint_id) == hook["id"]
    assert delivery.status == "pending"
    assert delivery.event_type == "message.created"
    assert delivery.message_id.startswith("msg_")
    body = delivery.payload
    assert body["type"] == "message.created"
    assert body["timestamp"].endswith("Z")
    assert body["data"] == {
        "conversation_id": conv,
        "workspace_id": str(workspace.id),
        "seq": sent.seq,
        "message_id": str(sent.message_id),
        "author": {"id": owner.id, "username": owner.username, "kind": "user"},
        "text": "hello @nobody",
        "mentions": [],
    }


def test_only_enabled_subscribed_endpoints_of_the_workspace_get_deliveries(make_user: Any) -> None:
    owner, workspace, api, hook = setup_hook(make_user, "https://93.184.215.14/runs", ["run.failed"])
    conv = people_conversation(owner, workspace)
    message_sync(conv, owner, "not subscribed")
    _, other_ws, _, _ = setup_hook(make_user, "https://93.184.215.14/other")  # another workspace's
    assert WebhookDelivery.objects.count() == 0
    api.patch(f"{base(workspace)}{hook['id']}/", {"events": ["message.created"]}, format="json")
    message_sync(conv, owner, "subscribed now")  # the change is seen at once in this process
    assert WebhookDelivery.objects.count() == 1
    api.patch(f"{base(workspace)}{hook['id']}/", {"enabled": False}, format="json")
    message_sync(conv, owner, "disabled")
    assert WebhookDelivery.objects.count() == 1
    assert not WebhookDelivery.objects.filter(endpoint__workspace=other_ws).exists()


def test_run_approval_and_member_events_map_to_their_webhooks(make_user: Any) -> None:
    events = ["run.completed", "run.failed", "approval.requested", "member.added"]
    owner, workspace, _, _ = setup_hook(make_user, "https://93.184.215.14/in", events)
    conv = people_conversation(owner, workspace)
    run = "0b7e2a56-8d1f-4c0e-9f55-1c2d3e4f5a6b"
    with transaction.atomic():
        append_event(
            conversation_id=conv,
            type="agent_completed",
            data={
                "run_id": run,
                "message_id": "5d0f6f43-8d0e-4c61-9a43-0f2b7b0c1a9e",
                "text": "4",
                "duration_ms": 12,
                "usage": {"prompt_tokens": 3, "completion_tokens": 1},
            },
        )
        append_event(
            conversation_id=conv,
            type="agent_failed",
            data={"run_id": run, "error": {"code": "llm_timeout", "message": "slow"}},
        )
        append_event(conversation_id=conv, type="agent_delta", data={"run_id": run, "text": "no webhook"})
        append_event(
            conversation_id=conv,
            type="approval_requested",
            data={
                "run_id": run,
                "call_id": "c1",
                "tool": "invite",
                "arguments": {"username": "bob"},
                "reason": "adds a member",
                "approver_role": "owner",
                "expires_at": "2030-01-01T00:00:00.000Z",
            },
        )
    open_room = conversation_create(
        creator=owner, title="Open", agent="", workspace_id=workspace.id, visibility="open"
    ).conversation
    joiner = make_user()
    workspace_member_add(workspace=workspace, actor=owner, username=joiner.username, role="member")
    conversation_join(conversation_id=str(open_room.id), user_id=joiner.id)
    by_type = {d.event_type: d.payload["data"] for d in WebhookDelivery.objects.all()}
    assert set(by_type) == set(events)
    assert by_type["run.completed"] | {"seq": 0} == {
        "conversation_id": conv,
        "workspace_id": str(workspace.id),
        "seq": 0,
        "run_id": run,
        "status": "completed",
        "message_id": "5d0f6f43-8d0e-4c61-9a43-0f2b7b0c1a9e",
        "text": "4",
        "duration_ms": 12,
        "usage": {"prompt_tokens": 3, "completion_tokens": 1},
    }
    assert by_type["run.failed"]["error"] == {"code": "llm_timeout", "message": "slow"}
    assert by_type["run.failed"]["status"] == "failed"
    assert by_type["approval.requested"]["tool"] == "invite"
    assert by_type["approval.requested"]["approver_role"] == "owner"
    assert by_type["member.added"]["conversation_id"] == str(open_room.id)
    assert by_type["member.added"]["user"] == {"id": joiner.id, "username": joiner.username}
    assert by_type["member.added"]["role"] == "member"


def test_an_invitation_is_a_member_added_webhook(make_user: Any) -> None:
    owner, workspace, _, _ = setup_hook(make_user, "https://93.184.215.14/in", ["member.added"])
    conv = people_conversation(owner, workspace)
    guest = make_user()
    conversation_member_add(conversation_id=conv, actor_id=owner.id, username=guest.username, role="viewer")
    conversation_member_add(conversation_id=conv, actor_id=owner.id, username=guest.username, role="member")
    [delivery] = WebhookDelivery.objects.all()  # the role change that followed is no new member
    assert delivery.payload["data"] == {
        "conversation_id": conv,
        "workspace_id": str(workspace.id),
        "seq": None,
        "user": {"id": guest.id, "username": guest.username},
        "role": "viewer",
        "by": {"id": owner.id, "username": owner.username},
    }
    other_owner = make_user()  # a workspace without webhooks: nothing is written
    other_conv = people_conversation(other_owner, workspace_create(owner=other_owner, name="Quiet"))
    conversation_member_add(conversation_id=other_conv, actor_id=other_owner.id, username=guest.username, role="member")
    assert WebhookDelivery.objects.count() == 1


# --- delivery ----------------------------------------------------------------------------------------------------


def test_deliveries_are_signed_and_sent_once(make_user: Any, receiver: WebhookReceiver) -> None:
    owner, workspace, api, hook = setup_hook(make_user, receiver.url)
    receiver.secrets = [hook["secret"]]
    conv = people_conversation(owner, workspace)
    first, second = message_sync(conv, owner, "one"), message_sync(conv, owner, "two")
    now = timezone.now()
    assert deliver_due(now) == {"delivered": 2, "retrying": 0, "failed": 0}
    assert deliver_due(now + timedelta(hours=1)) == {"delivered": 0, "retrying": 0, "failed": 0}
    assert len(receiver.hits) == 2
    assert sorted(h.payload["data"]["seq"] for h in receiver.hits) == [first.seq, second.seq]
    for hit in receiver.hits:
        assert hit.verified_by == [hook["secret"]]
        assert hit.path == "/hooks"
        assert hit.headers["content-type"] == "application/json"
        assert hit.headers["webhook-signature"].startswith("v1,")
        assert " " not in hit.headers["webhook-signature"]
        assert hit.payload["type"] == "message.created"
    assert len({h.headers["webhook-id"] for h in receiver.hits}) == 2
    log = api.get(f"{base(workspace)}{hook['id']}/deliveries/").json()
    assert [d["status"] for d in log] == ["succeeded", "succeeded"]
    assert all(d["attempts"] == 1 and d["last_status_code"] == 204 and d["delivered_at"] for d in log)
    assert all(len(d["attempt_log"]) == 1 and d["attempt_log"][0]["status_code"] == 204 for d in log)


@pytest.mark.django_db(transaction=True)  # the command runs as in production: its own commits, no test transaction
def test_the_worker_command_sends_what_is_due(make_user: Any, receiver: WebhookReceiver) -> None:
    owner, workspace, _, hook = setup_hook(make_user, receiver.url)
    receiver.secrets = [hook["secret"]]
    message_sync(people_conversation(owner, workspace), owner, "from the worker")
    call_command("webhooks_worker", "--once")
    [hit] = receiver.hits
    assert hit.verified_by == [hook["secret"]]
    assert hit.payload["data"]["text"] == "from the worker"
    assert WebhookDelivery.objects.get().status == "succeeded"


def test_a_failed_attempt_is_retried_on_schedule(make_user: Any, receiver: WebhookReceiver) -> None:
    owner, workspace, api, hook = setup_hook(make_user, receiver.url)
    receiver.secrets = [hook["secret"]]
    receiver.answers = [500]
    message_sync(people_conversation(owner, workspace), owner, "hello")
    now = timezone.now()
    assert deliver_due(now) == {"delivered": 0, "retrying": 1, "failed": 0}
    [delivery] = WebhookDelivery.objects.all()
    assert delivery.next_attempt_at == now + RETRY_SCHEDULE[0]
    assert deliver_due(now + timedelta(seconds=4)) == {"delivered": 0, "retrying": 0, "failed": 0}
    assert deliver_due(now + timedelta(seconds=5)) == {"delivered": 1, "retrying": 0, "failed": 0}
    assert [h.status for h in receiver.hits] == [500, 204]
    assert receiver.hits[0].headers["webhook-id"] == receiver.hits[1].headers["webhook-id"]  # receivers dedupe
    assert all(h.verified_by for h in receiver.hits)
    [entry] = api.get(f"{base(workspace)}{hook['id']}/deliveries/").json()
    assert entry["status"] == "succeeded"
    assert entry["attempts"] == 2
    assert entry["last_status_code"] == 204
    assert [(a["status_code"], a["error"]) for a in entry["attempt_log"]] == [(500, "HTTP 500"), (204, "")]
    assert WebhookEndpoint.objects.get(id=hook["id"]).failure_streak == 0  # a success ends the streak


def test_a_receiver_that_is_down_is_an_attempt_with_its_error(make_user: Any, receiver: WebhookReceiver) -> None:
    owner, workspace, _, _ = setup_hook(make_user, receiver.url)
    receiver.stop()  # nothing listens on the port any more
    message_sync(people_conversation(owner, workspace), owner, "hello")
    assert deliver_due(timezone.now())["retrying"] == 1
    [attempt] = WebhookAttempt.objects.all()
    assert attempt.status_code is None
    assert attempt.error.startswith("ConnectError")
    receiver.server = WebhookReceiver.start().server  # for the fixture's stop


def test_redeliver_sends_again_with_the_same_id(make_user: Any, receiver: WebhookReceiver) -> None:
    owner, workspace, api, hook = setup_hook(make_user, receiver.url)
    receiver.secrets = [hook["secret"]]
    message_sync(people_conversation(owner, workspace), owner, "hello")
    deliver_due(timezone.now())
    [delivery] = WebhookDelivery.objects.all()
    path = f"{base(workspace)}{hook['id']}/deliveries/{delivery.id}/redeliver/"
    queued = api.post(path)
    assert queued.status_code == 202
    assert queued.json()["status"] == "pending"
    again = api.post(path)
    assert again.status_code == 409
    assert "pending" in again.json()["error"]["message"]
    assert deliver_due(timezone.now())["delivered"] == 1
    assert [h.headers["webhook-id"] for h in receiver.hits] == [delivery.message_id] * 2
    assert api.post(f"{base(workspace)}{hook['id']}/deliveries/{hook['id']}/redeliver/").status_code == 404
    # Another owner cannot redeliver it through their own webhook.
    _, other_ws, other_api, other_hook = setup_hook(make_user, "https://93.184.215.14/x")
    assert other_api.post(f"{base(other_ws)}{other_hook['id']}/deliveries/{delivery.id}/redeliver/").status_code == 404


def test_rotation_signs_with_both_secrets_for_a_day(make_user: Any, receiver: WebhookReceiver) -> None:
    owner, workspace, api, hook = setup_hook(make_user, receiver.url)
    rotated = api.post(f"{base(workspace)}{hook['id']}/rotate-secret/")
    assert rotated.status_code == 200
    old, new = hook["secret"], rotated.json()["secret"]
    assert new.startswith("whsec_")
    assert new != old
    receiver.secrets = [old, new]
    conv = people_conversation(owner, workspace)
    message_sync(conv, owner, "during the overlap")
    deliver_due(timezone.now())
    [hit] = receiver.hits
    assert len(hit.headers["webhook-signature"].split(" ")) == 2
    assert hit.verified_by == [old, new]  # each secret verifies on its own
    message_sync(conv, owner, "after the overlap")
    deliver_due(timezone.now() + timedelta(hours=25))
    assert receiver.hits[1].verified_by == [new]
    assert len(receiver.hits[1].headers["webhook-signature"].split(" ")) == 1


def test_sustained_failure_disables_the_endpoint_and_tells_the_owners(
    make_user: Any, receiver: WebhookReceiver
) -> None:
    owner, workspace, api, hook = setup_hook(make_user, receiver.url)
    co_owner = make_user()
    workspace_member_add(workspace=workspace, actor=owner, username=co_owner.username, role="member")
    workspace.memberships.filter(user=co_owner).update(role="owner")
    receiver.answers = [503] * 100
    conv = people_conversation(owner, workspace)
    message_sync(conv, owner, "first")
    start = timezone.now()
    at = start
    for delay in (timedelta(0), *RETRY_SCHEDULE):  # the whole schedule: every attempt fails
        at += delay
        deliver_due(at)
    [first] = WebhookDelivery.objects.all()
    assert first.status == "failed"
    assert first.attempts == MAX_ATTEMPTS == len(receiver.hits)
    endpoint = WebhookEndpoint.objects.get(id=hook["id"])
    assert endpoint.enabled
    assert endpoint.failure_streak == MAX_ATTEMPTS
    message_sync(conv, owner, "second")
    message_sync(conv, owner, "third")
    assert deliver_due(start + timedelta(days=5)) == {"delivered": 0, "retrying": 0, "failed": 2}
    endpoint.refresh_from_db()
    assert not endpoint.enabled
    assert "failed attempts" in endpoint.disabled_reason
    assert set(WebhookDelivery.objects.values_list("status", flat=True)) == {"failed"}
    notes = Notification.objects.filter(kind="webhook_disabled")
    assert sorted(notes.values_list("user_id", flat=True)) == sorted([owner.id, co_owner.id])
    assert receiver.url in notes.first().data["preview"]  # type: ignore[union-attr]
    message_sync(conv, owner, "while disabled")
    assert WebhookDelivery.objects.count() == 3
    enabled = api.patch(f"{base(workspace)}{hook['id']}/", {"enabled": True}, format="json").json()
    assert enabled["enabled"]
    assert enabled["failure_streak"] == 0
    assert enabled["disabled_reason"] == ""


def test_delivery_log_filters_and_limits(make_user: Any, receiver: WebhookReceiver) -> None:
    owner, workspace, api, hook = setup_hook(make_user, receiver.url)
    conv = people_conversation(owner, workspace)
    for text in ("a", "b", "c"):
        message_sync(conv, owner, text)
    receiver.answers = [500, 204, 204]
    deliver_due(timezone.now())
    log = f"{base(workspace)}{hook['id']}/deliveries/"
    assert len(api.get(log, {"limit": 2}).json()) == 2
    assert [d["status"] for d in api.get(log, {"status": "pending"}).json()] == ["pending"]
    assert api.get(log, {"limit": 0}).status_code == 400
    assert api.get(log, {"limit": "x"}).status_code == 400
    assert "status: one of" in api.get(log, {"status": "lost"}).json()["error"]["message"]


def test_admin_shows_no_secret_and_redelivers(make_user: Any, receiver: WebhookReceiver) -> None:
    owner, workspace, _, hook = setup_hook(make_user, receiver.url)
    message_sync(people_conversation(owner, workspace), owner, "hello")
    deliver_due(timezone.now())
    [delivery] = WebhookDelivery.objects.all()
    staff = make_user(is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(staff)
    for path in (
        "/admin/enterprise/webhookendpoint/",
        f"/admin/enterprise/webhookendpoint/{hook['id']}/change/",
        f"/admin/enterprise/webhookdelivery/{delivery.id}/change/",
    ):
        page = client.get(path)
        assert page.status_code == 200
        assert hook["secret"] not in page.content.decode()
    assert "204" in client.get(f"/admin/enterprise/webhookdelivery/{delivery.id}/change/").content.decode()
    response = client.post(
        "/admin/enterprise/webhookdelivery/", {"action": "redeliver", "_selected_action": [str(delivery.id)]}
    )
    assert response.status_code == 302
    delivery.refresh_from_db()
    assert delivery.status == "pending"
    client.post("/admin/enterprise/webhookendpoint/", {"action": "disable", "_selected_action": [hook["id"]]})
    assert WebhookEndpoint.objects.get(id=hook["id"]).disabled_reason == "disabled by staff"
