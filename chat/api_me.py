"""REST for the caller's own account (docs/protocol.md §7: who they are, the time zone their browser
reports) and notifications (§9: settings, the list, marking read, Web Push subscriptions and the test
push). Thin views over chat/services; every one acts on the authenticated caller only (no id in any
path), so there is nobody else's to reach. Errors are `{"error": {"code", "message"}}` with 400 and a
message naming the field."""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from chat import api_me_schema
from chat.errors import ServiceError
from chat.models import User
from chat.services import notification_inbox, notification_prefs, push
from chat.services.accounts import time_zone_set
from chat.services.notification_config import push_configured

ERROR_STATUS = {"bad_request": 400, "not_found": 404, "conflict": 409}


def error_response(exc: ServiceError) -> Response:
    return Response({"error": {"code": exc.code, "message": exc.message}}, status=ERROR_STATUS.get(exc.code, 400))


def uid(request: Request) -> int:
    # Every view here requires authentication, so there is always a user.
    return int(request.user.pk)  # type: ignore[arg-type]


def _int_param(request: Request, name: str, default: int | None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ServiceError("bad_request", f"{name}: expected an integer") from None


def _answer(call: Any, ok_status: int = status.HTTP_200_OK) -> Response:
    try:
        result = call()
    except ServiceError as exc:
        return error_response(exc)
    return Response(result, status=ok_status) if ok_status != status.HTTP_204_NO_CONTENT else Response(status=ok_status)


def _me(user: User) -> dict[str, Any]:
    return {"id": user.id, "username": user.username, "tier": user.tier, "time_zone": user.time_zone}


@api_me_schema.me
class Me(APIView):
    """GET: who the caller is. PATCH {"time_zone": "Europe/Paris"}: the zone the page reports."""

    def get(self, request: Request) -> Response:
        return Response(_me(request.user))  # type: ignore[arg-type]

    def patch(self, request: Request) -> Response:
        return _answer(lambda: _me(time_zone_set(user_id=uid(request), body=request.data)))


@api_me_schema.notification_settings
class NotificationSettingsView(APIView):
    def get(self, request: Request) -> Response:
        return Response(notification_prefs.settings_get(user_id=uid(request)))

    def patch(self, request: Request) -> Response:
        return _answer(lambda: notification_prefs.settings_update(user_id=uid(request), body=request.data))


@api_me_schema.notification_list
class NotificationList(APIView):
    def get(self, request: Request) -> Response:
        def page() -> dict[str, Any]:
            unread = request.query_params.get("unread", "0")
            if unread not in ("0", "1", "true", "false"):
                raise ServiceError("bad_request", "unread: expected 1 or 0")
            return notification_inbox.page(
                user_id=uid(request),
                unread_only=unread in ("1", "true"),
                before=_int_param(request, "before", None),
                limit=_int_param(request, "limit", notification_inbox.PAGE_DEFAULT) or 0,
            ).json()

        return _answer(page)


@api_me_schema.notifications_read
class NotificationsRead(APIView):
    def post(self, request: Request) -> Response:
        body = request.data if isinstance(request.data, dict) else {}
        return _answer(lambda: notification_inbox.mark_read(user_id=uid(request), up_to_seq=body.get("up_to_seq")))


@api_me_schema.notification_test
class NotificationTest(APIView):
    """(extension) The settings page's "test push": 409 while this server has no Web Push configured."""

    def post(self, request: Request) -> Response:
        if not push_configured():
            return error_response(ServiceError("conflict", "Web Push is not configured on this server"))

        def send() -> dict[str, Any]:
            note = notification_inbox.push_test(user_id=uid(request))
            return {"seq": note.seq, "devices": request.user.push_subscriptions.count()}  # type: ignore[union-attr]

        return _answer(send, status.HTTP_202_ACCEPTED)


@api_me_schema.push_subscriptions
class PushSubscriptions(APIView):
    def post(self, request: Request) -> Response:
        def save() -> dict[str, Any]:
            sub = push.subscription_save(user_id=uid(request), body=request.data, now=timezone.now())
            return {"endpoint": sub.endpoint, "created_at": sub.created_at.isoformat()}

        return _answer(save, status.HTTP_201_CREATED)

    def delete(self, request: Request) -> Response:
        def delete() -> None:
            if not push.subscription_delete(user_id=uid(request), body=request.data):
                raise ServiceError("not_found", "no such subscription")

        return _answer(delete, status.HTTP_204_NO_CONTENT)
