"""(extension) REST on the messages of a conversation (docs/protocol.md §7): the events page, by events
or by messages; edit and delete one message; the caller's feedback on answers; a tool call's whole
result (the `href` of a truncated `tool_completed.result`). Thin views over the
same selectors and services as the socket's `history`, `edit`, `delete` and `feedback`.

Every view resolves the conversation through the membership check first: a conversation the caller
cannot see is a 404 whether or not it exists, and so is a message id that is not one of its
messages. Errors are `{"error": {"code", "message"}}`; bad query fields are DRF's 400."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers, status
from rest_framework.exceptions import NotFound as DRFNotFound
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from agents import selectors as run_selectors
from chat import api_messages_schema, selectors
from chat.errors import NotFound, ServiceError
from chat.history import history_page
from chat.services import message_actions
from chat.tiers import limits_for
from chat.wire.common import HISTORY_MESSAGES_DEFAULT, HISTORY_PAGE_MAX, MAX_FEEDBACK_COMMENT_CHARS
from chat.wire.frames import rfc3339

ERROR_STATUS = {"bad_request": 400, "forbidden": 403, "not_found": 404, "conflict": 409, "too_large": 413}
# `GET …/events/` counts 50 events by default (the chat.v1 contract), 30 items with unit=messages.
EVENTS_PAGE_DEFAULT = 50


def _error(exc: ServiceError) -> Response:
    return Response({"error": {"code": exc.code, "message": exc.message}}, status=ERROR_STATUS.get(exc.code, 400))


def _uid(request: Request) -> int:
    return int(request.user.pk)  # type: ignore[arg-type]  # every view here requires authentication


def _access(request: Request, conversation_id: str) -> selectors.Access:
    try:
        return selectors.conversation_for_member(user_id=_uid(request), conversation_id=conversation_id)
    except NotFound as exc:
        raise DRFNotFound("conversation not found") from exc


def _answer(call: Any) -> Any:
    """The service's result, its refusals as the error body, an id that is not found as a 404."""
    try:
        return call()
    except NotFound as exc:
        raise DRFNotFound("message not found") from exc


class EventsQuery(serializers.Serializer):
    before_seq = serializers.IntegerField(required=False, min_value=1)
    limit = serializers.IntegerField(required=False, min_value=1, max_value=HISTORY_PAGE_MAX)
    unit = serializers.ChoiceField(choices=["events", "messages"], required=False, default="events")


@api_messages_schema.conversation_events
class ConversationEvents(APIView):
    """`GET /api/conversations/{id}/events/?before_seq=&limit=&unit=events|messages`."""

    def get(self, request: Request, conversation_id: str) -> Response:
        access = _access(request, conversation_id)
        query = EventsQuery(data=request.query_params)
        if not query.is_valid():
            raise ValidationError(query.errors)
        unit = query.validated_data["unit"]
        default = HISTORY_MESSAGES_DEFAULT if unit == "messages" else EVENTS_PAGE_DEFAULT
        page = history_page(
            conversation_id=access.conversation_id,
            before_seq=query.validated_data.get("before_seq"),
            limit=query.validated_data.get("limit", default),
            unit=unit,
            retention_days=limits_for(request.user.tier).history_retention_days,  # type: ignore[union-attr]
        )
        body: dict[str, Any] = {"events": [e.frame() for e in page.events], "has_more": page.has_more}
        if page.next_before_seq is not None:
            body["next_before_seq"] = page.next_before_seq
        return Response(body)


class MessageEdit(serializers.Serializer):
    text = serializers.CharField(allow_blank=True, trim_whitespace=False)


@api_messages_schema.message_detail
class MessageDetail(APIView):
    """`PATCH` {text}: edit one's own message; `DELETE`: the author their own, an owner anyone's."""

    def patch(self, request: Request, conversation_id: str, message_id: str) -> Response:
        access = _access(request, conversation_id)
        body = MessageEdit(data=request.data)
        if not body.is_valid():
            raise ValidationError(body.errors)
        try:
            result = _answer(
                lambda: message_actions.message_edit(
                    conversation_id=access.conversation_id,
                    message_id=message_id,
                    user_id=_uid(request),
                    username=request.user.get_username(),
                    role=access.role,
                    text=body.validated_data["text"],
                    max_chars=limits_for(request.user.tier).max_text_chars,  # type: ignore[union-attr]
                )
            )
        except ServiceError as exc:
            return _error(exc)
        return Response({"message_id": result.message_id, "seq": result.seq, "edited_at": rfc3339(result.edited_at)})

    def delete(self, request: Request, conversation_id: str, message_id: str) -> Response:
        access = _access(request, conversation_id)
        try:
            result = _answer(
                lambda: message_actions.message_delete(
                    conversation_id=access.conversation_id,
                    message_id=message_id,
                    user_id=_uid(request),
                    username=request.user.get_username(),
                    role=access.role,
                )
            )
        except ServiceError as exc:
            return _error(exc)
        return Response({"message_id": result.message_id, "seq": result.seq})


class FeedbackBody(serializers.Serializer):
    rating = serializers.ChoiceField(choices=["up", "down"], allow_null=True)
    comment = serializers.CharField(
        required=False, allow_blank=True, allow_null=True, max_length=MAX_FEEDBACK_COMMENT_CHARS
    )


@api_messages_schema.message_feedback
class MessageFeedback(APIView):
    """`PUT` {rating: "up"|"down"|null, comment?}: the caller's rating of an answer (viewers too)."""

    def put(self, request: Request, conversation_id: str, message_id: str) -> Response:
        access = _access(request, conversation_id)
        body = FeedbackBody(data=request.data)
        if not body.is_valid():
            raise ValidationError(body.errors)
        try:
            result = _answer(
                lambda: message_actions.feedback_set(
                    conversation_id=access.conversation_id,
                    message_id=message_id,
                    user_id=_uid(request),
                    rating=body.validated_data["rating"],
                    comment=body.validated_data.get("comment"),
                )
            )
        except ServiceError as exc:
            return _error(exc)
        return Response({"message_id": result.message_id, "rating": result.rating}, status=status.HTTP_200_OK)


@api_messages_schema.conversation_feedback
class ConversationFeedback(APIView):
    """`GET`: the caller's own ratings in the conversation, {message id: "up"|"down"}."""

    def get(self, request: Request, conversation_id: str) -> Response:
        access = _access(request, conversation_id)
        ratings = message_actions.feedback_of(conversation_id=access.conversation_id, user_id=_uid(request))
        return Response({"ratings": ratings})


@api_messages_schema.tool_call_result
class ToolCallResult(APIView):
    """`GET`: a finished tool call of one of the conversation's runs with its whole result, which the
    `tool_completed` event carries only up to its bound (then with this address as `href`)."""

    def get(self, request: Request, conversation_id: str, run_id: str, call_id: str) -> Response:
        access = _access(request, conversation_id)
        try:
            call = run_selectors.tool_call_result(
                conversation_id=access.conversation_id,
                run_id=run_id,
                call_id=call_id,
                retention_days=limits_for(request.user.tier).history_retention_days,  # type: ignore[union-attr]
            )
        except NotFound as exc:
            raise DRFNotFound("tool call not found") from exc
        return Response(call)
