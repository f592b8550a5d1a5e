"""The browser pages: the conversation list and the chat view (static JS, no build step)."""

from __future__ import annotations

import math
from typing import Any

from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from chat import selectors
from chat.infra import rate_limiter


class LoginView(auth_views.LoginView):
    """Django's login page with a per-IP limit on attempts (password guessing)."""

    template_name = "chat/login.html"

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        decision = rate_limiter.ip_admit("login", rate_limiter.client_ip(request.META))
        if not decision.allowed:
            seconds = math.ceil(decision.retry_after_ms / 1000)
            form = self.get_form()
            form.add_error(None, f"Too many login attempts from your address; try again in {seconds} s.")
            response = self.render_to_response(self.get_context_data(form=form), status=429)
            response["Retry-After"] = str(seconds)
            return response
        return super().post(request, *args, **kwargs)


@login_required
def index(request: HttpRequest) -> HttpResponse:
    rows = selectors.conversations_for_user(user_id=int(request.user.pk or 0))
    return render(request, "chat/index.html", {"memberships": rows})


@login_required
def conversation(request: HttpRequest, conversation_id: str) -> HttpResponse:
    try:
        access = selectors.conversation_for_member(user_id=int(request.user.pk or 0), conversation_id=conversation_id)
    except selectors.NotFound as exc:
        raise Http404("conversation not found") from exc
    return render(request, "chat/conversation.html", {"access": access})
