"""(extension) REST: a workspace's archive for its owners (docs/operations.md "Workspace export"), a thin view over
enterprise/export.py.

    GET /api/workspaces/{id}/export/

200 streams one JSON document (`application/json`, as an attachment). Refusals are `{"error": {"code",
"message"}}`: 404 for a non-member or an unknown or malformed id (the same answer), 403 for a member who is not an
owner or a tier without export, 409 while another export of the workspace runs and 429 past the hourly budget
(both with Retry-After), 503 when the limits cannot be checked.
"""

from __future__ import annotations

import math

from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.utils import timezone
from rest_framework.request import Request
from rest_framework.views import APIView

from chat.errors import NotFound, ServiceError
from enterprise import api_schema, export

ERROR_STATUS = {"forbidden": 403, "not_found": 404, "conflict": 409, "rate_limited": 429, "unavailable": 503}


def _refusal(exc: ServiceError) -> JsonResponse:
    response = JsonResponse({"error": exc.as_dict()}, status=ERROR_STATUS.get(exc.code, 400))
    if exc.retry_after_ms is not None:
        response["Retry-After"] = str(math.ceil(exc.retry_after_ms / 1000))
    return response


@api_schema.workspace_export
class WorkspaceExport(APIView):
    def get(self, request: Request, workspace_id: str) -> HttpResponse | StreamingHttpResponse:
        try:
            ticket = export.export_start(
                user_id=int(request.user.pk),  # type: ignore[arg-type]
                user_tier=request.user.tier,  # type: ignore[union-attr]
                workspace_id=workspace_id,
            )
        except NotFound:
            return _refusal(ServiceError("not_found", "workspace not found"))
        except ServiceError as exc:
            return _refusal(exc)
        # An async iterator: under ASGI Django sends each chunk as it comes (a sync one it would read whole first).
        response = StreamingHttpResponse(export.export_stream(ticket), content_type="application/json")
        response["Content-Disposition"] = f'attachment; filename="{export.filename(ticket, timezone.now())}"'
        response["Cache-Control"] = "no-store"
        return response
