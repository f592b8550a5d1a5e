"""(extension) REST for a workspace's owners (docs/protocol.md §7): thin views over enterprise/analytics.py
and enterprise/sla.py.

    GET /api/workspaces/{id}/analytics/?from=YYYY-MM-DD&to=YYYY-MM-DD&granularity=day|week[&format=csv]
    GET /api/workspaces/{id}/sla/?month=YYYY-MM

A non-member gets 404 (the workspace does not exist for them), a member who is not an owner 403, and so does
an owner whose workspace's tier lacks the section asked for (CSV, SLA reports). Errors are
`{"error": {"code", "message"}}`, as JSON whatever format was asked for.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from django.http import HttpResponse, JsonResponse
from django.utils import timezone
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from chat.errors import NotFound, ServiceError
from enterprise import analytics, api_schema, sla

ERROR_STATUS = {"bad_request": 400, "forbidden": 403, "not_found": 404}
FORMATS = ("json", "csv")


class CsvRenderer(BaseRenderer):
    """Lets `?format=csv` through DRF's content negotiation; the view writes the CSV itself."""

    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        return data if isinstance(data, bytes) else str(data).encode()


def _error(code: str, message: str) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message}}, status=ERROR_STATUS.get(code, 400))


def _user_id(request: Request) -> int:
    return int(request.user.pk)  # type: ignore[arg-type]


@api_schema.workspace_analytics
class WorkspaceAnalytics(APIView):
    renderer_classes = [JSONRenderer, CsvRenderer]

    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        # DRF answers an unknown ?format= with a bare 404 before the view runs; forced, it falls back to JSON
        # and get() refuses the value as a 400 after the membership check, like any other bad query field.
        return super().perform_content_negotiation(request, force=True)

    def get(self, request: Request, workspace_id: str) -> Response | HttpResponse:
        params = request.query_params
        as_csv = params.get("format") == "csv"
        try:
            access = analytics.analytics_access(user_id=_user_id(request), workspace_id=workspace_id)
            if params.get("format") not in (None, "", *FORMATS):
                raise ServiceError("bad_request", f"format: expected json or csv, got {params['format'][:20]!r}")
            if as_csv and "csv" not in access.limits.analytics:
                raise ServiceError("forbidden", f"CSV export is not part of this workspace's tier ({access.tier})")
            span = analytics.parse_range(params, today=timezone.now().date())
            report = analytics.workspace_analytics(access=access, span=span)
        except NotFound:
            return _error("not_found", "workspace not found")
        except ServiceError as exc:
            return _error(exc.code, exc.message)
        if not as_csv:
            return Response(report)
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows(analytics.csv_rows(report))
        response = HttpResponse(out.getvalue(), content_type="text/csv; charset=utf-8")
        name = f"analytics-{workspace_id}-{report['from']}-{report['to']}-{report['granularity']}.csv"
        response["Content-Disposition"] = f'attachment; filename="{name}"'
        return response


@api_schema.workspace_sla
class WorkspaceSla(APIView):
    def get(self, request: Request, workspace_id: str) -> Response | HttpResponse:
        try:
            access = sla.sla_access(user_id=_user_id(request), workspace_id=workspace_id)
            month = sla.parse_month(request.query_params.get("month"), today=timezone.now().date())
            return Response(sla.report(workspace_id=access.workspace.id, tier=access.tier, month=month))
        except NotFound:
            return _error("not_found", "workspace not found")
        except ServiceError as exc:
            return _error(exc.code, exc.message)
