"""The browser pages: the conversation list and the chat view (static JS, no build step)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from mozilla_django_oidc import views as oidc_views

from chat import selectors
from chat.infra import rate_limiter
from chat.services import login_guard
from chat.services.notification_config import vapid_public_key


class GuardedLoginForm(AuthenticationForm):
    def get_invalid_login_error(self) -> ValidationError:
        # A guard refusal says so (and when to come back) instead of "wrong username or password".
        return login_guard.refusal_error(self.request) or super().get_invalid_login_error()


def _window(request: HttpRequest, endpoint: str) -> None:
    """The endpoint's per-address window (chat/infra/rate_limiter.py): over it, the attempt is refused
    before any password is checked (the backend sees the refusal left on the request)."""
    decision = rate_limiter.ip_admit(endpoint, rate_limiter.client_ip(request.META))
    if not decision.allowed:
        login_guard.refuse(request, login_guard.refusal_for(decision.retry_after_ms / 1000, "window"))


def _answer_refusal(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    """A refused (or just locked) login page answers 429 with Retry-After; the form shows why."""
    refusal = login_guard.refusal_of(request)
    if refusal is not None:
        response.status_code = 429
        response["Retry-After"] = str(refusal.retry_after_s)
    return response


class LoginView(auth_views.LoginView):
    """Django's login page behind the per-address window and the login guard (password guessing)."""

    template_name = "chat/login.html"
    authentication_form = GuardedLoginForm

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        _window(request, "login")
        return _answer_refusal(request, super().post(request, *args, **kwargs))

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        # "Sign in with SSO" only when SSO is configured; `?sso=refused` is where a refused SSO login lands.
        context: dict[str, Any] = super().get_context_data(**kwargs)
        context["sso_enabled"] = settings.OIDC_ENABLED
        context["sso_refused"] = settings.OIDC_ENABLED and self.request.GET.get("sso") == "refused"
        return context


class SsoStart(oidc_views.OIDCAuthenticationRequestView):  # type: ignore[misc]  # the library has no hints
    """/oidc/authenticate/: off (404) unless SSO is configured; on, off to the provider (enterprise/sso.py)."""

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not settings.OIDC_ENABLED:
            raise Http404("single sign-on is not configured")
        response: HttpResponse = super().dispatch(request, *args, **kwargs)
        return response


class SsoCallback(oidc_views.OIDCAuthenticationCallbackView):  # type: ignore[misc]
    """/oidc/callback/: where the provider sends the browser back; 404 unless SSO is configured."""

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not settings.OIDC_ENABLED:
            raise Http404("single sign-on is not configured")
        response: HttpResponse = super().dispatch(request, *args, **kwargs)
        return response


def admin_login(request: HttpRequest) -> HttpResponse:
    """The admin's own login page (chat/admin.py gives it the guarded form) behind its own window."""
    if request.method == "POST":
        _window(request, "admin-login")
    return _answer_refusal(request, admin.site.login(request))


@login_required
def index(request: HttpRequest) -> HttpResponse:
    rows = selectors.conversations_for_user(user_id=int(request.user.pk or 0))
    # `sidebar`: base.html renders the conversation sidebar (chat/templates/chat/_sidebar.html).
    return render(request, "chat/index.html", {"memberships": rows, "sidebar": True})


# What the page says for each agent mode (docs/protocol.md §8); the owner picks one of them.
AGENT_MODE_LABELS = {
    "auto": "Assistant: when addressed in a group",
    "always": "Assistant: every message",
    "mention": "Assistant: only when @mentioned",
    "off": "Assistant: off",
}


@login_required
def conversation(request: HttpRequest, conversation_id: str) -> HttpResponse:
    try:
        access = selectors.conversation_for_member(user_id=int(request.user.pk or 0), conversation_id=conversation_id)
    except selectors.NotFound as exc:
        raise Http404("conversation not found") from exc
    context = {
        "access": access,
        "agent_modes": list(AGENT_MODE_LABELS.items()),
        "agent_mode_label": AGENT_MODE_LABELS.get(access.agent_mode, access.agent_mode),
        # base.html: the sidebar, and the conversation menu's dialogs (chat/templates/chat/_manage.html).
        "sidebar": True,
        "manage": True,
    }
    return render(request, "chat/conversation.html", context)


@login_required
def notification_settings(request: HttpRequest) -> HttpResponse:
    """Every notification preference (docs/protocol.md §9) on one page; chat/static/chat/settings.js
    reads and saves them through /api/me/notification-settings/."""
    rows = selectors.conversations_for_user(user_id=int(request.user.pk or 0))
    context = {"memberships": rows, "vapid_public_key": vapid_public_key() or ""}
    return render(request, "chat/notification_settings.html", context)


SERVICE_WORKER = Path(__file__).resolve().parent / "static" / "chat" / "sw.js"


def service_worker(request: HttpRequest) -> HttpResponse:
    """The Web Push service worker, served from the site's root: a worker's scope is its script's
    directory, and /static/chat/ would cover no page. Not cached, so an update reaches browsers."""
    response = HttpResponse(SERVICE_WORKER.read_bytes(), content_type="application/javascript; charset=utf-8")
    response["Service-Worker-Allowed"] = "/"
    response["Cache-Control"] = "no-cache"
    return response
