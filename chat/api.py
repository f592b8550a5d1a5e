"""REST API (docs/protocol.md §7): tokens, log-out-everywhere and workspaces; thin DRF views over the
same services and selectors as the socket. The conversation endpoints are in chat/api_conversations.py."""

from __future__ import annotations

from typing import Any

from rest_framework import status
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.exceptions import NotFound as DRFNotFound
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle
from rest_framework.views import APIView
from rest_framework_simplejwt.exceptions import ExpiredTokenError, InvalidToken, TokenError
from rest_framework_simplejwt.serializers import TokenObtainPairSerializer, TokenRefreshSerializer
from rest_framework_simplejwt.tokens import RefreshToken, Token
from rest_framework_simplejwt.views import TokenObtainPairView, TokenRefreshView

from chat import api_schema, selectors
from chat.errors import NotFound, ServiceError
from chat.infra import rate_limiter
from chat.models import Workspace, WorkspaceMember
from chat.serializers import MemberAddSerializer, WorkspaceCreateSerializer
from chat.services import accounts, login_guard
from chat.services import conversations as conversation_services

ERROR_STATUS = {"bad_request": 400, "forbidden": 403, "not_found": 404, "conflict": 409, "too_large": 413}


def error_response(exc: ServiceError) -> Response:
    return Response({"error": {"code": exc.code, "message": exc.message}}, status=ERROR_STATUS.get(exc.code, 400))


class IPThrottle(BaseThrottle):
    """Per-IP limit on the token endpoints (password guessing, token farming), held in Redis so
    it holds across server processes. DRF answers 429 with a Retry-After header."""

    endpoint = "token"

    def allow_request(self, request: Request, view: Any) -> bool:
        self.decision = rate_limiter.ip_admit(self.endpoint, rate_limiter.client_ip(request.META))
        return self.decision.allowed

    def wait(self) -> float:
        return self.decision.retry_after_ms / 1000


class RefreshThrottle(IPThrottle):
    endpoint = "token-refresh"


def refusal_response(refusal: login_guard.Refusal) -> Response:
    """A login the guard refused: 429, the wait in the body and in Retry-After."""
    body = {"error": {"code": "login_locked", "message": refusal.message, "retry_after": refusal.retry_after_s}}
    return Response(body, status=status.HTTP_429_TOO_MANY_REQUESTS, headers={"Retry-After": str(refusal.retry_after_s)})


class TokenPairSerializer(TokenObtainPairSerializer):
    @classmethod
    def get_token(cls, user: Any) -> Token:
        return accounts.stamp_token(super().get_token(user), user)  # type: ignore[no-any-return]


@api_schema.token
class TokenView(TokenObtainPairView):
    """The password is checked by the guarded backend (chat/services/login_guard.py) like every login."""

    serializer_class = TokenPairSerializer
    throttle_classes = [IPThrottle]

    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        try:
            return super().post(request, *args, **kwargs)
        except AuthenticationFailed:
            refusal = login_guard.refusal_of(request)
            if refusal is None:
                raise
            return refusal_response(refusal)


class RefreshSerializer(TokenRefreshSerializer):
    def validate(self, attrs: dict[str, Any]) -> dict[str, str]:
        refresh = RefreshToken(attrs["refresh"])
        # A deleted user, an inactive one, a changed password or a log-out-everywhere: 401 alike.
        if selectors.token_holder(refresh.payload) is None:
            raise AuthenticationFailed("unknown or inactive user, or revoked token", code="token_not_valid")
        return {"access": str(refresh.access_token)}  # carries the refresh token's revocation claims


@api_schema.token_refresh
class TokenRefresh(TokenRefreshView):
    """A refresh token carries no password to guess, so the guard counts only forged or malformed
    ones, per address; an expired or revoked token is a client's ordinary state and is not counted."""

    serializer_class = RefreshSerializer
    throttle_classes = [RefreshThrottle]

    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        attempt = login_guard.admit(login_guard.token_keys(rate_limiter.client_ip(request.META)))
        if isinstance(attempt, login_guard.Refusal):
            return refusal_response(attempt)
        serializer = self.get_serializer(data=request.data)
        try:
            serializer.is_valid(raise_exception=True)
        except TokenError as exc:
            lock = login_guard.record(attempt, failed=not isinstance(exc, ExpiredTokenError))
            if lock is not None:
                return refusal_response(lock)  # the failure that locks the address already says so
            raise InvalidToken(exc.args[0]) from exc
        except Exception:
            login_guard.record(attempt, failed=False)  # a missing field, a revoked token: not a forgery
            raise
        login_guard.record(attempt, failed=False)
        return Response(serializer.validated_data, status=status.HTTP_200_OK)


@api_schema.logout_all
class LogoutAll(APIView):
    """Log out everywhere: every token and session of the caller ends, every socket closes."""

    def post(self, request: Request) -> Response:
        accounts.tokens_revoke(user_id=uid(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


def uid(request: Request) -> int:
    """The authenticated caller's id (every view here requires authentication)."""
    return int(request.user.pk)  # type: ignore[arg-type]


def member_json(member: WorkspaceMember) -> dict[str, Any]:
    return {"user": {"id": member.user_id, "username": member.user.username}, "role": member.role}


@api_schema.workspace_list
class WorkspaceList(APIView):
    def get(self, request: Request) -> Response:
        rows = selectors.workspaces_for_user(user_id=uid(request))
        return Response([{"id": str(m.workspace_id), "name": m.workspace.name, "role": m.role} for m in rows])

    def post(self, request: Request) -> Response:
        body = WorkspaceCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            workspace = conversation_services.workspace_create(
                owner=request.user,  # type: ignore[arg-type]
                name=body.validated_data["name"],
            )
        except ServiceError as exc:
            return error_response(exc)
        return Response(
            {"id": str(workspace.id), "name": workspace.name, "role": "owner"}, status=status.HTTP_201_CREATED
        )


@api_schema.workspace_members
class WorkspaceMembers(APIView):
    def _workspace(self, request: Request, workspace_id: str) -> Workspace:
        try:
            return selectors.workspace_for_member(user_id=uid(request), workspace_id=workspace_id)
        except NotFound as exc:
            raise DRFNotFound("workspace not found") from exc

    def get(self, request: Request, workspace_id: str) -> Response:
        workspace = self._workspace(request, workspace_id)
        rows = selectors.workspace_members(workspace=workspace)
        return Response([member_json(m) for m in rows])

    def post(self, request: Request, workspace_id: str) -> Response:
        workspace = self._workspace(request, workspace_id)
        body = MemberAddSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            member = conversation_services.workspace_member_add(
                workspace=workspace,
                actor=request.user,  # type: ignore[arg-type]
                username=body.validated_data["username"],
                role=body.validated_data["role"],
            )
        except ServiceError as exc:
            return error_response(exc)
        return Response(member_json(member), status=status.HTTP_201_CREATED)
