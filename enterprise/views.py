"""The workspace analytics page (/w/{id}/analytics/): a shell that enterprise/static/enterprise/analytics.js
fills from GET /api/workspaces/{id}/analytics/ (and /sla/ when the tier has SLA reports)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from chat.errors import NotFound, ServiceError
from enterprise.analytics import analytics_access


@login_required
def workspace_analytics(request: HttpRequest, workspace_id: str) -> HttpResponse:
    try:
        access = analytics_access(user_id=int(request.user.pk or 0), workspace_id=workspace_id)
    except NotFound as exc:  # not a member: the workspace does not exist for them
        raise Http404("workspace not found") from exc
    except ServiceError as exc:
        return render(request, "enterprise/forbidden.html", {"message": exc.message}, status=403)
    context = {
        "workspace": access.workspace,
        "tier": access.tier,
        "sections": sorted(access.limits.analytics),
        "sla_reports": access.limits.sla_reports,
    }
    return render(request, "enterprise/analytics.html", context)
