"""The OpenAPI description of the message views (chat/api_messages.py, docs/protocol.md §7): the events page,
editing and deleting a message, feedback, a tool call's whole result. One decorator per view, as in
chat/api_schema.py, whose error bodies and path parameters it shares; the shapes are documentation only."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import serializers

from chat.api_schema import (
    AUTH_ERRORS,
    BAD_REQUEST,
    BODY_ERRORS,
    CONFLICT,
    CONVERSATION_ID,
    ERROR,
    MESSAGE_ID,
    NOT_FOUND,
    TOO_LARGE,
    uuid_path,
)
from chat.wire.common import HISTORY_PAGE_MAX, MAX_FEEDBACK_COMMENT_CHARS


class Event(serializers.Serializer):
    """A durable conversation event exactly as the socket sends it (docs/protocol.md §4)."""

    type = serializers.CharField()
    conversation = serializers.UUIDField()
    seq = serializers.IntegerField()
    ts = serializers.DateTimeField()
    data = serializers.DictField()  # type: ignore[assignment]  # a declared field: DRF pops it, .data stays


class EventsPage(serializers.Serializer):
    events = Event(many=True)
    has_more = serializers.BooleanField()
    next_before_seq = serializers.IntegerField(required=False, help_text="unit=messages: the next page's before_seq")


class EventsQuery(serializers.Serializer):
    before_seq = serializers.IntegerField(required=False, min_value=1)
    limit = serializers.IntegerField(
        required=False, min_value=1, max_value=HISTORY_PAGE_MAX, help_text="default 50 events, or 30 messages"
    )
    unit = serializers.ChoiceField(choices=["events", "messages"], required=False, default="events")


class MessageEditBody(serializers.Serializer):
    text = serializers.CharField(allow_blank=True)


class MessageEdited(serializers.Serializer):
    message_id = serializers.CharField()
    seq = serializers.IntegerField()
    edited_at = serializers.DateTimeField()


class MessageDeleted(serializers.Serializer):
    message_id = serializers.CharField()
    seq = serializers.IntegerField()


class FeedbackBody(serializers.Serializer):
    rating = serializers.ChoiceField(choices=["up", "down"], allow_null=True)
    comment = serializers.CharField(
        required=False, allow_blank=True, allow_null=True, max_length=MAX_FEEDBACK_COMMENT_CHARS
    )


class FeedbackSet(serializers.Serializer):
    message_id = serializers.CharField()
    rating = serializers.ChoiceField(choices=["up", "down"], allow_null=True)


class Ratings(serializers.Serializer):
    ratings = serializers.DictField(
        child=serializers.ChoiceField(choices=["up", "down"]), help_text="message id: rating"
    )


conversation_events = extend_schema_view(
    get=extend_schema(
        summary="A page of the event log (or of messages), oldest first",
        tags=["messages"],
        parameters=[CONVERSATION_ID, EventsQuery],
        responses={200: EventsPage, 400: BAD_REQUEST, **AUTH_ERRORS, 404: NOT_FOUND},
    )
)
conversation_feedback = extend_schema_view(
    get=extend_schema(
        summary="The caller's own ratings in the conversation",
        tags=["messages"],
        parameters=[CONVERSATION_ID],
        responses={200: Ratings, **AUTH_ERRORS, 404: NOT_FOUND},
    )
)
message_detail = extend_schema_view(
    patch=extend_schema(
        summary="Edit one's own message",
        tags=["messages"],
        parameters=[CONVERSATION_ID, MESSAGE_ID],
        request=MessageEditBody,
        responses={200: MessageEdited, **BODY_ERRORS, **AUTH_ERRORS, 404: NOT_FOUND, 409: CONFLICT, 413: TOO_LARGE},
    ),
    delete=extend_schema(
        summary="Delete a message (its author, or an owner)",
        tags=["messages"],
        parameters=[CONVERSATION_ID, MESSAGE_ID],
        responses={200: MessageDeleted, 400: BAD_REQUEST, **AUTH_ERRORS, 404: NOT_FOUND, 409: CONFLICT},
    ),
)
message_feedback = extend_schema_view(
    put=extend_schema(
        summary="Rate an answer (null clears the rating)",
        tags=["messages"],
        parameters=[CONVERSATION_ID, MESSAGE_ID],
        request=FeedbackBody,
        responses={200: FeedbackSet, **BODY_ERRORS, **AUTH_ERRORS, 404: NOT_FOUND, 409: CONFLICT},
    )
)


class ToolCallWhole(serializers.Serializer):
    run_id = serializers.UUIDField()
    call_id = serializers.CharField()
    tool = serializers.CharField()
    ok = serializers.BooleanField()
    result = serializers.JSONField(help_text="the tool's JSON, whole (stored up to 1,000,000 characters)")
    duration_ms = serializers.IntegerField(allow_null=True)


tool_call_result = extend_schema_view(
    get=extend_schema(
        summary="A tool call's whole result (the href of a truncated tool_completed result)",
        tags=["messages"],
        parameters=[
            CONVERSATION_ID,
            uuid_path("run_id", "run"),
            OpenApiParameter("call_id", OpenApiTypes.STR, OpenApiParameter.PATH, description="the tool call's id"),
        ],
        responses={200: ToolCallWhole, **AUTH_ERRORS, 404: NOT_FOUND},
    )
)


class SearchParams(serializers.Serializer):
    q = serializers.CharField(
        max_length=200,
        help_text="what a search box takes: words (all of them), \"a phrase\", `or`, `-word`; 'simple' matching:"
        " words as written, no stemming",
    )
    conversation = serializers.UUIDField(required=False, help_text="only this conversation (404 if not a member)")
    limit = serializers.IntegerField(required=False, min_value=1, max_value=50, help_text="default 20")


class SearchHit(serializers.Serializer):
    conversation_id = serializers.UUIDField()
    conversation_title = serializers.CharField()
    message_id = serializers.UUIDField()
    seq = serializers.IntegerField()
    author = serializers.CharField(help_text="a username, `agent`, or `deleted user`")
    created_at = serializers.DateTimeField()
    snippet = serializers.CharField(help_text="the text around the matches, each matched word between « and »")
    rank = serializers.FloatField(help_text="PostgreSQL's ts_rank (higher is better)")


class SearchResults(serializers.Serializer):
    results = SearchHit(many=True, help_text="best rank first, then newest")


message_search = extend_schema_view(
    get=extend_schema(
        summary="Full-text search over the messages of every conversation the caller may read (or one)",
        tags=["messages"],
        parameters=[SearchParams],
        responses={
            200: SearchResults,
            400: BAD_REQUEST,
            **AUTH_ERRORS,
            404: NOT_FOUND,
            503: OpenApiResponse(ERROR, description="the search took longer than its statement timeout: stopped"),
        },
    )
)
