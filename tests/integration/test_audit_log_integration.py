"""The audit log (enterprise/audit.py, docs/operations.md "Audit log") against the real PostgreSQL: an
entry for each recorded action, written with the change; append-only in Python and, by the trigger of
migration 0002, in the database itself (raw SQL UPDATE and DELETE fail; only the retention purge deletes);
read-only in the admin; the owners' REST view with its permissions, filters and pages."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.db import DatabaseError, connection, transaction
from django.test import Client as HttpClient
from django.utils import timezone
from rest_framework.test import APIClient

from agents.approvals import approval_decide, run_park
from agents.services import run_claim_next
from chat.errors import ServiceError
from chat.models import User, Workspace
from chat.services.conversation_admin import conversation_member_role_set
from chat.services.conversations import (
    conversation_member_remove,
    workspace_create,
    workspace_member_add,
    workspace_member_remove_by_staff,
)
from enterprise.audit import audit_purge, audit_record
from enterprise.models import AppendOnlyError, AuditEntry
from tests.support import factories

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("runner", "fast_password_hashing")]


def entries(action: str | None = None) -> list[AuditEntry]:
    rows = AuditEntry.objects.order_by("id")
    return list(rows.filter(action=action) if action else rows)


def shape(entry: AuditEntry) -> tuple[Any, ...]:
    return (entry.action, entry.actor_id, entry.actor_username, entry.target)


def team(make_user: Any) -> dict[str, Any]:
    owner, member = make_user(), make_user()
    workspace = workspace_create(owner=owner, name="team")
    workspace_member_add(workspace=workspace, actor=owner, username=member.username, role="member")
    conv = factories.conversation_sync(owner, members=((member, "member"),), workspace_id=workspace.id)
    return {"owner": owner, "member": member, "workspace": workspace, "conv": conv}


# --- what is recorded ------------------------------------------------------------------------------------------


def test_membership_and_role_changes_of_workspaces_and_conversations(make_user: Any) -> None:
    t = team(make_user)
    owner, member, workspace, conv = t["owner"], t["member"], t["workspace"], t["conv"]
    conversation_member_role_set(conversation_id=conv, actor_id=owner.id, user_id=member.id, role="viewer")
    conversation_member_remove(conversation_id=conv, actor_id=member.id, user_id=member.id)  # leaves
    workspace_member_remove_by_staff(workspace=workspace, user_id=member.id)

    assert [shape(e) for e in entries()] == [
        ("workspace.member_set", owner.id, owner.username, member.username),
        ("conversation.member_set", owner.id, owner.username, member.username),
        ("conversation.member_role_changed", owner.id, owner.username, member.username),
        ("conversation.member_left", member.id, member.username, member.username),
        ("workspace.member_removed", None, "", ""),
    ]
    rows = entries()
    assert {e.workspace_id for e in rows} == {workspace.id}  # a conversation's entries name its workspace
    assert [str(e.conversation_id) if e.conversation_id else None for e in rows] == [None, conv, conv, conv, None]
    assert rows[0].data == {"role": "member"}
    assert rows[2].data["role"] == "viewer"
    assert rows[4].data == {"user_id": member.id}
    assert all(e.ip is None for e in rows)


def test_a_refused_change_records_nothing(make_user: Any) -> None:
    t = team(make_user)
    before = len(entries())
    with pytest.raises(ServiceError):  # a member may not change roles: the change and its entry roll back together
        conversation_member_role_set(
            conversation_id=t["conv"], actor_id=t["member"].id, user_id=t["owner"].id, role="member"
        )
    assert len(entries()) == before


def test_an_entry_is_written_in_the_transaction_of_its_change(make_user: Any) -> None:
    owner = make_user()

    def change_that_fails() -> None:
        with transaction.atomic():
            audit_record("webhook.created", owner, target="https://example.com/hook")
            raise RuntimeError("the change failed")

    with pytest.raises(RuntimeError):
        change_that_fails()
    assert entries() == []


def test_approval_decisions(make_user: Any, settings: Any) -> None:
    settings.AGENT_RUNNER = "worker"  # nothing claims here but this test
    t = team(make_user)
    sent = factories.message_sync(t["conv"], t["member"], "@assistant invite someone")
    claimed = run_claim_next(worker_id="audit-test")
    assert claimed is not None
    assert claimed.run_id == sent.run_id
    run_park(
        run_id=claimed.run_id,
        conversation_id=t["conv"],
        call_id="call_1",
        tool="invite_member",
        arguments={"username": "x"},
        reason="Add them.",
        approver_role="owner",
        ttl_s=600,
        backend_state={},
    )
    approval_decide(
        run_id=claimed.run_id, call_id="call_1", user_id=t["owner"].id, username=t["owner"].username, decision="reject"
    )

    [entry] = entries("approval.rejected")
    assert shape(entry) == ("approval.rejected", t["owner"].id, t["owner"].username, "invite_member")
    assert entry.data == {"run_id": claimed.run_id, "call_id": "call_1"}
    assert (str(entry.conversation_id), entry.workspace_id) == (t["conv"], t["workspace"].id)


def test_tier_changes_are_recorded_and_other_saves_are_not(make_user: Any) -> None:
    user = make_user()
    user.first_name = "Ann"
    user.save()
    user.tier = "pro"
    user.save()
    User.objects.get(id=user.id).save(update_fields=["last_login"])

    [entry] = entries()
    assert shape(entry) == ("user.tier_changed", None, "", user.username)
    assert entry.data == {"user_id": user.id, "from": "free", "to": "pro"}


def test_staff_logins_with_their_address_and_not_other_logins(make_user: Any) -> None:
    password = "pw-" + uuid.uuid4().hex
    staff = make_user(is_staff=True)
    staff.set_password(password)
    staff.save()
    member = make_user()
    member.set_password(password)
    member.save()

    for user in (member, staff):
        client = HttpClient(REMOTE_ADDR="203.0.113.7")
        response = client.post("/login/", {"username": user.username, "password": password})
        assert response.status_code == 302, response.content

    [entry] = entries("staff.login")
    assert shape(entry) == ("staff.login", staff.id, staff.username, staff.username)
    assert entry.ip == "203.0.113.7"
    assert entry.data == {"superuser": False}


def test_admin_actions_are_copied_with_who_made_them(make_user: Any) -> None:
    admin_user, newcomer = make_user(is_staff=True, is_superuser=True), make_user()
    staff = HttpClient()
    staff.force_login(admin_user)
    workspace = Workspace.objects.create(name="before")

    response = staff.post(
        f"/admin/chat/workspace/{workspace.id}/change/",
        {
            "name": "after",
            "memberships-TOTAL_FORMS": "1",
            "memberships-INITIAL_FORMS": "0",
            "memberships-0-user": str(newcomer.id),
            "memberships-0-role": "member",
        },
    )
    assert response.status_code == 302, response.content

    # The member's entry, from the membership service staff's inline calls, and the admin's own log entry,
    # which names who made the change.
    assert [shape(e) for e in entries() if e.action != "staff.login"] == [
        ("workspace.member_set", None, "", newcomer.username),
        ("admin.changed", admin_user.id, admin_user.username, f"chat.workspace:{workspace.id} after"),
    ]
    [copied] = entries("admin.changed")
    assert copied.data["model"] == "chat.workspace"
    assert copied.data["object_id"] == str(workspace.id)
    assert "Name" in copied.data["change"]


# --- append-only -----------------------------------------------------------------------------------------------


def one_entry(make_user: Any) -> AuditEntry:
    return audit_record("webhook.created", make_user(), workspace_id=uuid.uuid4(), target="https://example.com/h")


def test_python_refuses_to_change_or_delete_an_entry(make_user: Any) -> None:
    entry = one_entry(make_user)
    entry.target = "forged"
    with pytest.raises(AppendOnlyError):
        entry.save()
    with pytest.raises(AppendOnlyError):
        entry.delete()
    with pytest.raises(AppendOnlyError):
        AuditEntry.objects.filter(id=entry.id).update(target="forged")
    with pytest.raises(AppendOnlyError):
        AuditEntry.objects.filter(id=entry.id).delete()
    assert AuditEntry.objects.get(id=entry.id).target == "https://example.com/h"


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE enterprise_auditentry SET target = 'forged' WHERE id = %s",
        "UPDATE enterprise_auditentry SET actor_id = NULL, target = 'forged' WHERE id = %s",
        "DELETE FROM enterprise_auditentry WHERE id = %s",
    ],
)
def test_the_database_refuses_raw_sql_update_and_delete(make_user: Any, sql: str) -> None:
    entry = one_entry(make_user)
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, [entry.id])
    assert AuditEntry.objects.filter(id=entry.id, target="https://example.com/h").exists()


def test_deleting_an_actor_keeps_their_entries_under_their_name(make_user: Any) -> None:
    entry = one_entry(make_user)
    User.objects.filter(id=entry.actor_id).delete()  # the one UPDATE the trigger allows: actor_id to NULL
    kept = AuditEntry.objects.get(id=entry.id)
    assert (kept.actor_id, kept.actor_username, kept.target) == (None, entry.actor_username, entry.target)


def test_the_retention_purge_deletes_only_entries_past_retention(make_user: Any, settings: Any) -> None:
    settings.AUDIT_RETENTION_DAYS = 400
    now = timezone.now()
    old = AuditEntry.objects.create(at=now - timedelta(days=401), action="staff.login")
    edge = AuditEntry.objects.create(at=now - timedelta(days=399), action="staff.login")
    fresh = one_entry(make_user)

    assert audit_purge(now) == 1
    assert set(AuditEntry.objects.values_list("id", flat=True)) == {edge.id, fresh.id}
    assert not AuditEntry.objects.filter(id=old.id).exists()
    # The purge's permission ended with its transaction: a raw DELETE is refused again.
    with pytest.raises(DatabaseError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("DELETE FROM enterprise_auditentry WHERE id = %s", [edge.id])


def test_the_purge_command(make_user: Any, settings: Any, capsys: Any) -> None:
    settings.AUDIT_RETENTION_DAYS = 1
    AuditEntry.objects.create(at=timezone.now() - timedelta(days=2), action="staff.login")
    kept = one_entry(make_user)
    call_command("purge_audit_log")
    assert "purged 1 audit" in capsys.readouterr().out
    assert list(AuditEntry.objects.values_list("id", flat=True)) == [kept.id]


# --- admin -----------------------------------------------------------------------------------------------------


def test_the_admin_lists_and_filters_but_never_changes(make_user: Any) -> None:
    entry = one_entry(make_user)
    staff = HttpClient()
    staff.force_login(make_user(is_staff=True, is_superuser=True))

    listing = staff.get("/admin/enterprise/auditentry/")
    assert listing.status_code == 200
    assert entry.actor_username in listing.content.decode()
    filtered = staff.get(f"/admin/enterprise/auditentry/?action=webhook.created&q={entry.actor_username}")
    assert filtered.status_code == 200
    assert entry.actor_username in filtered.content.decode()
    assert staff.get(f"/admin/enterprise/auditentry/?workspace_id={entry.workspace_id}").status_code == 200

    assert staff.get("/admin/enterprise/auditentry/add/").status_code == 403
    changed = staff.post(f"/admin/enterprise/auditentry/{entry.id}/change/", {"target": "forged"})
    assert changed.status_code == 403
    assert staff.get(f"/admin/enterprise/auditentry/{entry.id}/delete/").status_code == 403
    assert staff.post(f"/admin/enterprise/auditentry/{entry.id}/delete/", {"post": "yes"}).status_code == 403
    bulk = staff.post(
        "/admin/enterprise/auditentry/", {"action": "delete_selected", "_selected_action": [entry.id], "post": "yes"}
    )
    assert bulk.status_code in (200, 302)  # no such action offered: nothing happens
    assert AuditEntry.objects.get(id=entry.id).target == "https://example.com/h"


# --- REST ------------------------------------------------------------------------------------------------------


def api_for(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_owners_read_their_workspaces_log_newest_first_a_page_at_a_time(make_user: Any) -> None:
    t = team(make_user)
    owner, workspace = t["owner"], t["workspace"]
    audit_record("webhook.created", owner, workspace_id=workspace.id, target="https://example.com/a")
    audit_record("elsewhere", owner, workspace_id=uuid.uuid4())
    url = f"/api/workspaces/{workspace.id}/audit/"
    ids = list(AuditEntry.objects.filter(workspace_id=workspace.id).order_by("-id").values_list("id", flat=True))
    assert len(ids) == 3

    everything = api_for(owner).get(url)
    assert everything.status_code == 200
    body = everything.json()
    assert [e["id"] for e in body["entries"]] == ids
    assert body["next_before"] is None
    newest = body["entries"][0]
    assert newest == {
        "id": ids[0],
        "at": newest["at"],
        "action": "webhook.created",
        "actor": {"id": owner.id, "username": owner.username},
        "conversation_id": None,
        "target": "https://example.com/a",
        "data": {},
    }
    assert body["entries"][1]["conversation_id"] == t["conv"]

    first = api_for(owner).get(url, {"limit": 2}).json()
    assert [e["id"] for e in first["entries"]] == ids[:2]
    assert first["next_before"] == ids[1]
    second = api_for(owner).get(url, {"limit": 2, "before": first["next_before"]}).json()
    assert ([e["id"] for e in second["entries"]], second["next_before"]) == (ids[2:], None)

    only = api_for(owner).get(url, {"action": "conversation.member_set"}).json()
    assert [e["action"] for e in only["entries"]] == ["conversation.member_set"]


def test_the_time_window_filters(make_user: Any) -> None:
    t = team(make_user)
    url = f"/api/workspaces/{t['workspace'].id}/audit/"
    now = timezone.now()
    AuditEntry.objects.create(at=now - timedelta(days=3), action="old", workspace_id=t["workspace"].id)
    window = {"from": (now - timedelta(days=4)).isoformat(), "to": (now - timedelta(days=2)).isoformat()}
    assert [e["action"] for e in api_for(t["owner"]).get(url, window).json()["entries"]] == ["old"]
    recent = api_for(t["owner"]).get(url, {"from": (now - timedelta(days=1)).isoformat()}).json()
    assert "old" not in [e["action"] for e in recent["entries"]]
    assert len(recent["entries"]) == 2


@pytest.mark.parametrize(
    "query",
    [{"limit": 0}, {"limit": 201}, {"limit": "x"}, {"before": 0}, {"from": "yesterday"}, {"to": "2026-13-01"}],
)
def test_malformed_queries_are_bad_requests(make_user: Any, query: dict[str, Any]) -> None:
    t = team(make_user)
    response = api_for(t["owner"]).get(f"/api/workspaces/{t['workspace'].id}/audit/", query)
    assert response.status_code == 400, response.content


def test_an_empty_window_is_a_bad_request(make_user: Any) -> None:
    t = team(make_user)
    at = timezone.now().isoformat()
    response = api_for(t["owner"]).get(f"/api/workspaces/{t['workspace'].id}/audit/", {"from": at, "to": at})
    assert response.status_code == 400
    assert response.json() == {"error": {"code": "bad_request", "message": "from must be before to"}}


def test_members_are_refused_and_others_told_it_does_not_exist(make_user: Any) -> None:
    t = team(make_user)
    url = f"/api/workspaces/{t['workspace'].id}/audit/"
    refused = api_for(t["member"]).get(url)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "forbidden"
    stranger = make_user()
    assert api_for(stranger).get(url).status_code == 404
    assert api_for(stranger).get(f"/api/workspaces/{uuid.uuid4()}/audit/").status_code == 404
    assert api_for(stranger).get("/api/workspaces/not-a-uuid/audit/").status_code == 404
    assert APIClient().get(url).status_code in (401, 403)


# --- webhooks --------------------------------------------------------------------------------------------------


def test_webhook_endpoint_changes_are_recorded_without_their_secrets(make_user: Any, settings: Any) -> None:
    settings.WEBHOOKS_ALLOW_PRIVATE = True  # a loopback URL: nothing is sent here
    owner = make_user(tier="enterprise")
    workspace = workspace_create(owner=owner, name="hooks")
    api = api_for(owner)
    base = f"/api/workspaces/{workspace.id}/webhooks/"
    created = api.post(base, {"url": "http://127.0.0.1:9/a", "events": ["message.created"]}, format="json")
    assert created.status_code == 201, created.content
    hook = created.json()
    detail = f"{base}{hook['id']}/"
    patch = {"url": "http://127.0.0.1:9/b", "events": ["run.failed"], "enabled": False}
    assert api.patch(detail, patch, format="json").status_code == 200
    rotated = api.post(f"{detail}rotate-secret/")
    assert rotated.status_code == 200
    assert api.delete(detail).status_code == 204
    # A refused change records nothing.
    assert api.patch(detail, {"enabled": True}, format="json").status_code == 404
    assert api.post(base, {"url": "ftp://x", "events": ["message.created"]}, format="json").status_code == 400

    rows = [e for e in entries() if e.action.startswith("webhook.")]
    assert [shape(e) for e in rows] == [
        ("webhook.created", owner.id, owner.username, "http://127.0.0.1:9/a"),
        ("webhook.updated", owner.id, owner.username, "http://127.0.0.1:9/b"),
        ("webhook.secret_rotated", owner.id, owner.username, "http://127.0.0.1:9/b"),
        ("webhook.deleted", owner.id, owner.username, "http://127.0.0.1:9/b"),
    ]
    assert {e.workspace_id for e in rows} == {workspace.id}
    assert all(e.data["webhook_id"] == hook["id"] for e in rows)
    assert rows[0].data["events"] == ["message.created"]
    assert rows[1].data["changed"] == patch
    assert rows[2].data["previous_secret_expires_at"] == rotated.json()["previous_secret_expires_at"]
    secrets = (hook["secret"], rotated.json()["secret"])
    assert not [e for e in rows if any(s in repr(e.data) + e.target for s in secrets)]
    # The owners read them over REST like every other entry.
    listed = api.get(f"/api/workspaces/{workspace.id}/audit/", {"action": "webhook.deleted"}).json()["entries"]
    assert [e["data"]["webhook_id"] for e in listed] == [hook["id"]]


def test_staff_webhook_actions_in_the_admin_are_recorded(make_user: Any, settings: Any) -> None:
    settings.WEBHOOKS_ALLOW_PRIVATE = True
    owner = make_user(tier="enterprise")
    workspace = workspace_create(owner=owner, name="hooks")
    hook = (
        api_for(owner)
        .post(
            f"/api/workspaces/{workspace.id}/webhooks/",
            {"url": "http://127.0.0.1:9/a", "events": ["message.created"]},
            format="json",
        )
        .json()
    )
    admin_user = make_user(is_staff=True, is_superuser=True)
    staff = HttpClient()
    staff.force_login(admin_user)
    listing = "/admin/enterprise/webhookendpoint/"
    for action in ("disable", "enable"):
        response = staff.post(listing, {"action": action, "_selected_action": [hook["id"]]})
        assert response.status_code == 302, response.content
    deleted = staff.post(f"{listing}{hook['id']}/delete/", {"post": "yes"})
    assert deleted.status_code == 302, deleted.content

    rows = [e for e in entries() if e.action.startswith("webhook.") and e.actor_id == admin_user.id]
    assert [(e.action, e.data.get("changed")) for e in rows] == [
        ("webhook.updated", {"enabled": False}),
        ("webhook.updated", {"enabled": True}),
        ("webhook.deleted", None),
    ]
    assert {e.workspace_id for e in rows} == {workspace.id}
