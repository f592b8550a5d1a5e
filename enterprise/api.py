"""REST for a workspace's webhooks (docs/operations.md "Webhooks"): thin views over enterprise/webhook_endpoints.py.

    /api/workspaces/{id}/webhooks/                                  GET list, POST create (answers the secret)
    /api/workspaces/{id}/webhooks/{hid}/                            GET, PATCH {url, events, enabled}, DELETE
    /api/workspaces/{id}/webhooks/{hid}/rotate-secret/              POST (answers the new secret)
    /api/workspaces/{id}/webhooks/{hid}/deliveries/                 GET ?limit=&status= (the delivery log)
    /api/workspaces/{id}/webhooks/{hid}/deliveries/{did}/redeliver/ POST

Owners of the workspace whose tier includes webhooks only; other members 403, anyone else 404. Errors are
`{"error": {"code", "message"}}`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.utils import timezone
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from chat.errors import NotFound, ServiceError
from enterprise import api_schema
from enterprise import webhook_endpoints as hooks
from enterprise.models import WebhookEndpoint

ERROR_STATUS = {"bad_request": 400, "forbidden": 403, "not_found": 404, "conflict": 409}


def _error(code: str, message: str) -> Response:
    return Response({"error": {"code": code, "message": message}}, status=ERROR_STATUS.get(code, 400))


def _answer(call: Callable[[], Any], ok_status: int = status.HTTP_200_OK) -> Response:
    """Run the service call: its result with `ok_status`, a ServiceError as its status, NotFound as 404."""
    try:
        result = call()
    except NotFound:
        return _error("not_found", "delivery not found")  # the workspace and webhook say so themselves
    except ServiceError as exc:
        return _error(exc.code, exc.message)
    return Response(status=ok_status) if ok_status == status.HTTP_204_NO_CONTENT else Response(result, status=ok_status)


def _user_id(request: Request) -> int:
    return int(request.user.pk)  # type: ignore[arg-type]


def _access(request: Request, workspace_id: str) -> hooks.Access:
    try:
        return hooks.webhook_access(user_id=_user_id(request), workspace_id=workspace_id)
    except NotFound:
        raise ServiceError("not_found", "workspace not found") from None


def _endpoint(request: Request, workspace_id: str, webhook_id: str) -> WebhookEndpoint:
    try:
        return hooks.endpoint_for(_access(request, workspace_id), webhook_id)
    except NotFound:
        raise ServiceError("not_found", "webhook not found") from None


@api_schema.webhook_list
class WebhookList(APIView):
    def get(self, request: Request, workspace_id: str) -> Response:
        return _answer(lambda: hooks.endpoint_list(access=_access(request, workspace_id)))

    def post(self, request: Request, workspace_id: str) -> Response:
        return _answer(
            lambda: hooks.endpoint_create(access=_access(request, workspace_id), body=request.data),
            status.HTTP_201_CREATED,
        )


@api_schema.webhook_detail
class WebhookDetail(APIView):
    def get(self, request: Request, workspace_id: str, webhook_id: str) -> Response:
        return _answer(lambda: hooks.endpoint_json(_endpoint(request, workspace_id, webhook_id)))

    def patch(self, request: Request, workspace_id: str, webhook_id: str) -> Response:
        return _answer(
            lambda: hooks.endpoint_update(
                endpoint=_endpoint(request, workspace_id, webhook_id), body=request.data, actor_id=_user_id(request)
            )
        )

    def delete(self, request: Request, workspace_id: str, webhook_id: str) -> Response:
        return _answer(
            lambda: hooks.endpoint_delete(
                endpoint=_endpoint(request, workspace_id, webhook_id), actor_id=_user_id(request)
            ),
            status.HTTP_204_NO_CONTENT,
        )


@api_schema.webhook_rotate
class WebhookRotateSecret(APIView):
    def post(self, request: Request, workspace_id: str, webhook_id: str) -> Response:
        return _answer(
            lambda: hooks.secret_rotate(
                endpoint=_endpoint(request, workspace_id, webhook_id), now=timezone.now(), actor_id=_user_id(request)
            )
        )


@api_schema.webhook_deliveries
class WebhookDeliveries(APIView):
    def get(self, request: Request, workspace_id: str, webhook_id: str) -> Response:
        params = request.query_params
        return _answer(
            lambda: hooks.deliveries_page(
                endpoint=_endpoint(request, workspace_id, webhook_id),
                limit=params.get("limit") or 50,
                status=params.get("status") or None,
            )
        )


@api_schema.webhook_redeliver
class WebhookRedeliver(APIView):
    def post(self, request: Request, workspace_id: str, webhook_id: str, delivery_id: str) -> Response:
        def redeliver() -> dict[str, Any]:
            endpoint = _endpoint(request, workspace_id, webhook_id)
            return hooks.redeliver(endpoint_id=endpoint.id, delivery_id=delivery_id, now=timezone.now())

        return _answer(redeliver, status.HTTP_202_ACCEPTED)
