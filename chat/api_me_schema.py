"""The OpenAPI description of the caller's own account and notifications (chat/api_me.py, docs/protocol.md §7,
§9): one decorator per view, as in chat/api_schema.py, whose error bodies it shares. The services read these
bodies themselves, so the shapes here are documentation only."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import serializers

from chat.api_schema import AUTH_ERRORS, BODY_ERRORS, CONFLICT, ERROR, NO_CONTENT, NOT_FOUND
from chat.services.notification_inbox import PAGE_DEFAULT, PAGE_MAX


class MeOut(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()
    tier = serializers.CharField()
    time_zone = serializers.CharField(allow_blank=True, help_text="IANA name; empty: UTC")


class TimeZoneBody(serializers.Serializer):
    time_zone = serializers.CharField(allow_blank=True, help_text="an IANA name such as Europe/Paris, or empty")


class QuietHours(serializers.Serializer):
    start = serializers.CharField(help_text="HH:MM")
    end = serializers.CharField(help_text="HH:MM")
    timezone = serializers.CharField()


class NotificationSettingsOut(serializers.Serializer):
    kinds = serializers.DictField(
        child=serializers.DictField(child=serializers.BooleanField()), help_text="kind: {channel: on}"
    )
    conversations = serializers.DictField(child=serializers.CharField(), help_text="conversation id: level")
    quiet_hours = QuietHours(allow_null=True)
    muted_until = serializers.DateTimeField(allow_null=True)


class NotificationSettingsPatch(serializers.Serializer):
    """Only the keys present change; a bad value anywhere changes nothing (docs/protocol.md §9)."""

    kinds = serializers.DictField(child=serializers.DictField(child=serializers.BooleanField()), required=False)
    conversations = serializers.DictField(child=serializers.CharField(), required=False)
    quiet_hours = QuietHours(allow_null=True, required=False)
    muted_until = serializers.DateTimeField(allow_null=True, required=False)


class NotificationItem(serializers.Serializer):
    seq = serializers.IntegerField()
    ts = serializers.DateTimeField()
    data = serializers.DictField()  # type: ignore[assignment]  # a declared field: DRF pops it, .data stays
    read = serializers.BooleanField()


class NotificationPage(serializers.Serializer):
    notifications = NotificationItem(many=True)
    has_more = serializers.BooleanField()
    unread = serializers.IntegerField()
    read_up_to_seq = serializers.IntegerField()
    head_seq = serializers.IntegerField()


class ReadBody(serializers.Serializer):
    up_to_seq = serializers.IntegerField(min_value=0)


class ReadOut(serializers.Serializer):
    read_up_to_seq = serializers.IntegerField()
    unread = serializers.IntegerField()


class TestPushOut(serializers.Serializer):
    seq = serializers.IntegerField()
    devices = serializers.IntegerField()


class PushKeys(serializers.Serializer):
    p256dh = serializers.CharField()
    auth = serializers.CharField()


class PushSubscriptionBody(serializers.Serializer):
    """The browser's PushSubscription JSON."""

    endpoint = serializers.URLField()
    keys = PushKeys()


class PushSubscriptionOut(serializers.Serializer):
    endpoint = serializers.CharField()
    created_at = serializers.DateTimeField()


class PushEndpointBody(serializers.Serializer):
    endpoint = serializers.CharField()


# The services' own checks answer 400 as {"error": {...}} only (no DRF serializer runs in these views).
BAD = OpenApiResponse(ERROR, description="invalid input; the message names the field")

me = extend_schema_view(
    get=extend_schema(summary="Who the caller is", tags=["me"], responses={200: MeOut, **AUTH_ERRORS}),
    patch=extend_schema(
        summary="Set the time zone the browser reports",
        tags=["me"],
        request=TimeZoneBody,
        responses={200: MeOut, **BODY_ERRORS, **AUTH_ERRORS},
    ),
)
notification_settings = extend_schema_view(
    get=extend_schema(tags=["me"], responses={200: NotificationSettingsOut, **AUTH_ERRORS}),
    patch=extend_schema(
        tags=["me"],
        request=NotificationSettingsPatch,
        responses={200: NotificationSettingsOut, **BODY_ERRORS, **AUTH_ERRORS},
    ),
)
notification_list = extend_schema_view(
    get=extend_schema(
        summary="The caller's notifications, newest first",
        tags=["me"],
        parameters=[
            OpenApiParameter("unread", str, enum=["0", "1", "true", "false"], description="unread ones only"),
            OpenApiParameter("before", int, description="only those with a smaller seq (the next page)"),
            OpenApiParameter("limit", int, description=f"1-{PAGE_MAX}, default {PAGE_DEFAULT}"),
        ],
        responses={200: NotificationPage, 400: BAD, **AUTH_ERRORS},
    )
)
notifications_read = extend_schema_view(
    post=extend_schema(
        summary="Everything up to up_to_seq is read",
        tags=["me"],
        request=ReadBody,
        responses={200: ReadOut, **BODY_ERRORS, **AUTH_ERRORS},
    )
)
notification_test = extend_schema_view(
    post=extend_schema(
        summary="Send a test push to every device of the caller",
        tags=["me"],
        request=None,
        responses={202: TestPushOut, **AUTH_ERRORS, 409: CONFLICT},
    )
)
push_subscriptions = extend_schema_view(
    post=extend_schema(
        summary="Store this device's Web Push subscription",
        tags=["me"],
        request=PushSubscriptionBody,
        responses={201: PushSubscriptionOut, **BODY_ERRORS, **AUTH_ERRORS},
    ),
    delete=extend_schema(
        summary="Remove this device's subscription",
        tags=["me"],
        request=PushEndpointBody,
        responses={204: NO_CONTENT, **BODY_ERRORS, **AUTH_ERRORS, 404: NOT_FOUND},
    ),
)
