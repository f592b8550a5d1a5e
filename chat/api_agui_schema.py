"""The OpenAPI description of the AG-UI views (chat/api_agui.py, docs/protocol.md §14). The bodies are
AG-UI's own (RunAgentInput in, its events out), which the `ag-ui-protocol` package defines; the schema
names them and declares every status, as chat/api_schema.py does for the rest."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import serializers

from chat.api_schema import AUTH_ERRORS, BODY_ERRORS, CONFLICT, ERROR, NOT_FOUND, TOO_LARGE, uuid_path


class RunExport(serializers.Serializer):
    thread_id = serializers.UUIDField()
    run_id = serializers.UUIDField()
    events = serializers.ListField(child=serializers.DictField(), help_text="AG-UI events, in order")


agui_run = extend_schema_view(
    post=extend_schema(
        summary="Run the assistant on a conversation as an AG-UI agent (Server-Sent Events)",
        tags=["ag-ui"],
        request={"application/json": OpenApiTypes.OBJECT},
        description=(
            "The body is AG-UI's RunAgentInput: `threadId` a conversation the caller may write to, the last"
            " message a user message (its id the idempotency key). The answer streams AG-UI events as"
            " Server-Sent Events, RUN_STARTED first and RUN_FINISHED or RUN_ERROR last."
        ),
        responses={
            (200, "text/event-stream"): OpenApiResponse(OpenApiTypes.STR, description="AG-UI events"),
            **BODY_ERRORS,
            **AUTH_ERRORS,
            404: NOT_FOUND,
            409: CONFLICT,
            413: TOO_LARGE,
            429: OpenApiResponse(ERROR, description="over the caller's message or run budget (Retry-After)"),
        },
    )
)
run_agui_export = extend_schema_view(
    get=extend_schema(
        summary="A finished run as the AG-UI events its stream carried",
        tags=["ag-ui"],
        parameters=[uuid_path("run_id", "run")],
        responses={200: RunExport, **AUTH_ERRORS, 404: NOT_FOUND, 409: CONFLICT},
    )
)
