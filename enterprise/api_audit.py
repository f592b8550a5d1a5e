"""(extension) REST `GET /api/workspaces/{id}/audit/?action=&from=&to=&before=&limit=` (docs/protocol.md §7):
a workspace's audit log for its owners, newest first, a page at a time. A thin view over enterprise/audit.py.

A non-member gets 404 (the workspace does not exist for them), a member who is not an owner 403. Query
fields: `action` (exact), `from`/`to` (RFC 3339, `from <= at < to`), `before` (an entry id: the page after
it, from the previous page's `next_before`), `limit` (1-200, default 50); anything else malformed is a 400."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers
from rest_framework.exceptions import NotFound as DRFNotFound
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from chat.errors import NotFound, ServiceError
from chat.wire.frames import rfc3339
from enterprise import api_schema
from enterprise.audit import PAGE_DEFAULT, PAGE_MAX, audit_page, audit_workspace_for_owner
from enterprise.models import AuditEntry

ERROR_STATUS = {"bad_request": 400, "forbidden": 403, "not_found": 404}


class AuditQuery(serializers.Serializer):
    action = serializers.CharField(required=False, max_length=64)
    to = serializers.DateTimeField(required=False)
    before = serializers.IntegerField(required=False, min_value=1)
    limit = serializers.IntegerField(required=False, min_value=1, max_value=PAGE_MAX)

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        fields["from"] = serializers.DateTimeField(required=False)  # a keyword: not declarable as an attribute
        return fields


def entry_json(entry: AuditEntry) -> dict[str, Any]:
    # No IP address: the log keeps one only for staff logins, which belong to no workspace.
    return {
        "id": entry.id,
        "at": rfc3339(entry.at),
        "action": entry.action,
        "actor": {"id": entry.actor_id, "username": entry.actor_username} if entry.actor_username else None,
        "conversation_id": str(entry.conversation_id) if entry.conversation_id else None,
        "target": entry.target,
        "data": entry.data,
    }


@api_schema.workspace_audit
class WorkspaceAudit(APIView):
    def get(self, request: Request, workspace_id: str) -> Response:
        try:
            wid = audit_workspace_for_owner(user_id=int(request.user.pk), workspace_id=workspace_id)  # type: ignore[arg-type]
        except NotFound as exc:
            raise DRFNotFound("workspace not found") from exc
        except ServiceError as exc:
            return _error(exc)
        query = AuditQuery(data=request.query_params)
        if not query.is_valid():
            raise ValidationError(query.errors)
        fields = query.validated_data
        try:
            page = audit_page(
                workspace_id=wid,
                action=fields.get("action"),
                since=fields.get("from"),
                until=fields.get("to"),
                before=fields.get("before"),
                limit=fields.get("limit", PAGE_DEFAULT),
            )
        except ServiceError as exc:
            return _error(exc)
        return Response({"entries": [entry_json(e) for e in page.entries], "next_before": page.next_before})


def _error(exc: ServiceError) -> Response:
    return Response({"error": {"code": exc.code, "message": exc.message}}, status=ERROR_STATUS.get(exc.code, 400))
