"""Browser hardening headers (docs/operations.md "Browser hardening headers and HTTPS").

Django's SecurityMiddleware and XFrameOptionsMiddleware set nosniff, Referrer-Policy,
Cross-Origin-Opener-Policy, HSTS and X-Frame-Options from settings. Django 5.2 has no
Content-Security-Policy support of its own (it arrives in 6.0), so the one header it lacks is set
here, from settings.CHAT_CONTENT_SECURITY_POLICY. /static/ served by the app itself (SERVE_STATIC)
bypasses the middleware, so its handler adds the same headers.
"""

from __future__ import annotations

from typing import Any, TypeVar

from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.http import FileResponse, HttpRequest, HttpResponse, HttpResponseBase
from django.utils.deprecation import MiddlewareMixin


def content_security_policy() -> str:
    """The policy as a header value: `directive source source; directive source; …`."""
    return "; ".join(f"{name} {' '.join(sources)}" for name, sources in settings.CHAT_CONTENT_SECURITY_POLICY.items())


Response = TypeVar("Response", bound=HttpResponseBase)


def harden(response: Response) -> Response:
    """Set the policy (unless a view chose its own) on `response`."""
    response.headers.setdefault("Content-Security-Policy", content_security_policy())
    return response


class ContentSecurityPolicyMiddleware(MiddlewareMixin):
    def process_response(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        return harden(response)


class HardenedStaticFilesHandler(ASGIStaticFilesHandler):
    """/static/ from the app (one-machine deployments, `make run`), with the headers the middleware
    would have set: the policy, nosniff (a script or stylesheet is only ever used as its declared
    type) and the referrer policy."""

    def serve(self, request: Any) -> HttpResponse | FileResponse:
        response = harden(super().serve(request))
        if settings.SECURE_CONTENT_TYPE_NOSNIFF:
            response.headers.setdefault("X-Content-Type-Options", "nosniff")
        if settings.SECURE_REFERRER_POLICY:
            response.headers.setdefault("Referrer-Policy", str(settings.SECURE_REFERRER_POLICY))
        return response
