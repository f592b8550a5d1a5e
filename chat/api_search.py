"""(extension) `GET /api/search/`: full-text search over the messages the caller may read (docs/protocol.md §7
"Search"). A thin view over chat/search.py: every live conversation the caller is an active member of, or the
one `conversation` names after the same membership check as every other route (404 for one the caller cannot
see, whether or not it exists). The caller's tier's history retention applies, as to the events page."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone
from rest_framework import serializers
from rest_framework.exceptions import NotFound as DRFNotFound
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from chat import api_messages_schema, search, selectors
from chat.errors import NotFound, ServiceError
from chat.tiers import limits_for
from chat.wire.frames import rfc3339


class SearchParams(serializers.Serializer):
    q = serializers.CharField(max_length=search.MAX_QUERY_CHARS)
    conversation = serializers.CharField(required=False)  # any spelling: conversation_for_member decides (404)
    limit = serializers.IntegerField(required=False, min_value=1, max_value=search.MAX_RESULTS)


@api_messages_schema.message_search
class MessageSearch(APIView):
    """`GET /api/search/?q=&conversation=&limit=`: the best matches first, each with a highlighted snippet."""

    def get(self, request: Request) -> Response:
        params = SearchParams(data=request.query_params)
        if not params.is_valid():
            raise ValidationError(params.errors)
        user_id = int(request.user.pk)  # type: ignore[arg-type]  # authenticated
        conversation_ids = None
        if "conversation" in params.validated_data:
            try:
                access = selectors.conversation_for_member(
                    user_id=user_id, conversation_id=params.validated_data["conversation"]
                )
            except NotFound as exc:
                raise DRFNotFound("conversation not found") from exc
            conversation_ids = [access.conversation_id]
        days = limits_for(request.user.tier).history_retention_days  # type: ignore[union-attr]
        try:
            hits = search.search_within(
                timeout_ms=settings.CHAT_SEARCH_TIMEOUT_MS,
                user_id=user_id,
                query=params.validated_data["q"],
                limit=params.validated_data.get("limit", search.DEFAULT_RESULTS),
                conversation_ids=conversation_ids,
                since=timezone.now() - timedelta(days=days) if days is not None else None,
            )
        except ServiceError as exc:  # a bound (400), or the statement timeout (503: try again, or narrow it)
            status = 503 if isinstance(exc, search.SearchTimedOut) else 400
            return Response({"error": {"code": exc.code, "message": exc.message}}, status=status)
        return Response(
            {
                "results": [
                    {
                        "conversation_id": h.conversation_id,
                        "conversation_title": h.conversation_title,
                        "message_id": h.message_id,
                        "seq": h.seq,
                        "author": h.author,
                        "created_at": rfc3339(h.created_at),
                        "snippet": h.snippet,
                        "rank": h.rank,
                    }
                    for h in hits
                ]
            }
        )
