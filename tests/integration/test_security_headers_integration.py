"""Browser hardening headers on every response, pages without inline script, and the HTTPS settings of
the documented production environment (docs/operations.md "Browser hardening headers and HTTPS"):
`manage.py check --deploy` is clean with exactly the values the page lists, and they do what it says.
The browser's side (no CSP violation on the chat pages and the admin) is
tests/e2e/test_browser_security_headers_e2e.py."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.test import Client

from chat.services.conversations import conversation_create
from chatsite.asgi import application

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS = ROOT / "docs" / "operations.md"

pytestmark = [pytest.mark.django_db(transaction=True)]

EXPECTED_CSP = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self' data:",
    "font-src": "'self'",
    "connect-src": "'self'",
    "object-src": "'none'",
    "base-uri": "'self'",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
}


def policy(header: str) -> dict[str, str]:
    return {d.split(" ", 1)[0]: d.split(" ", 1)[1] for d in (p.strip() for p in header.split(";")) if d}


def assert_hardened(headers: Any, where: str) -> None:
    assert policy(headers["Content-Security-Policy"]) == EXPECTED_CSP, where
    assert "unsafe" not in headers["Content-Security-Policy"], where
    assert headers["X-Content-Type-Options"] == "nosniff", where
    assert headers["Referrer-Policy"] == "same-origin", where


def test_every_kind_of_response_carries_the_headers(make_user: Any) -> None:
    client = Client()
    for path, status in [("/login/", 200), ("/admin/login/", 200), ("/api/conversations/", 401), ("/nowhere/", 404)]:
        response = client.get(path)
        assert response.status_code == status, path
        assert_hardened(response.headers, path)
        assert response.headers["X-Frame-Options"] == "DENY", path
        assert response.headers["Cross-Origin-Opener-Policy"] == "same-origin", path


async def test_static_files_served_by_the_app_carry_them_too() -> None:
    """/static/ is served past Django's middleware (the single-machine layout), by chatsite/asgi.py."""
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
        for path in ("/static/chat/chat.js", "/static/chat/chat.css", "/static/admin/js/core.js"):
            response = await http.get(path)
            assert response.status_code == 200, path
            assert_hardened(response.headers, path)


INLINE = [
    (re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I), "an inline <script>"),
    (re.compile(r"<[^>]+\son[a-z]+\s*=", re.I), "an inline event handler"),
    (re.compile(r"<[^>]+\sstyle\s*=", re.I), "an inline style attribute"),
    (re.compile(r"<style", re.I), "a <style> element"),
    (re.compile(r"javascript:", re.I), "a javascript: URL"),
]


def test_the_chat_pages_need_nothing_the_policy_forbids(make_user: Any) -> None:
    user = make_user()
    conv = conversation_create(creator=user, title="csp", agent="").conversation
    client = Client()
    pages = {"/login/": client.get("/login/")}
    client.force_login(user)
    pages["/"] = client.get("/")
    pages[f"/c/{conv.id}/"] = client.get(f"/c/{conv.id}/")
    for path, response in pages.items():
        assert response.status_code == 200, path
        html = response.content.decode()
        assert re.search(r"<script[^>]*\bsrc=", html) or path == "/login/", path
        for pattern, what in INLINE:
            assert not pattern.search(html), f"{path} has {what}: {pattern.search(html)}"


# --- the documented production environment -----------------------------------------------------------
def documented_production_env() -> dict[str, str]:
    """The `NAME=value` lines of the fenced block under "Production values" in docs/operations.md;
    a value in <angle brackets> is a secret the operator generates, generated here."""
    text = OPERATIONS.read_text()
    section = text[text.index("### Browser hardening headers and HTTPS") :]
    block = section[section.index("Production values") :]
    block = block[block.index("```") + 3 :]
    block = block[block.index("\n") + 1 : block.index("```")]
    env = {}
    for line in block.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, value = line.partition("=")
        env[name.strip()] = secrets.token_urlsafe(48) if value.startswith("<") else value.strip()
    assert {"DEBUG", "SECRET_KEY", "SECURE_SSL_REDIRECT", "SECURE_HSTS_SECONDS"} <= set(env), env
    return env


def production(*args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "DJANGO_SETTINGS_MODULE": "chatsite.settings", **documented_production_env()}
    env.update({k: os.environ[k] for k in ("DATABASE_URL", "REDIS_URL", "CHANNEL_PREFIX") if k in os.environ})
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_check_deploy_is_clean_under_the_documented_production_environment() -> None:
    result = production("check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout, result.stdout


PROBE = """
import json
from django.test import Client
http, https = Client(HTTP_HOST="chat.example.com"), Client(HTTP_HOST="chat.example.com")
page = https.get("/login/", secure=True)
print(json.dumps({
    "login_http": [http.get("/login/").status_code, http.get("/login/").headers.get("Location")],
    "healthz_http": http.get("/healthz").status_code,
    "readyz_http_redirected": http.get("/readyz").status_code in (301, 302),
    "hsts": page.headers.get("Strict-Transport-Security"),
    "csrf_cookie_secure": bool(page.cookies["csrftoken"]["secure"]),
    "forwarded_proto_believed": http.get("/login/", HTTP_X_FORWARDED_PROTO="https").status_code != 301,
}))
"""


def test_the_production_values_redirect_to_https_set_hsts_and_secure_cookies_but_answer_probes() -> None:
    result = production("shell", "-c", PROBE)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["login_http"] == [301, "https://chat.example.com/login/"]
    assert seen["healthz_http"] == 200  # probes inside the network call over plain HTTP
    assert seen["readyz_http_redirected"] is False
    assert seen["hsts"] == "max-age=31536000; includeSubDomains; preload"
    assert seen["csrf_cookie_secure"] is True
    # Without a configured proxy, a client's own X-Forwarded-Proto is not believed.
    assert seen["forwarded_proto_believed"] is False


def test_a_proxy_ssl_header_is_believed_only_with_a_configured_proxy() -> None:
    def with_env(**extra: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": os.environ["PATH"], "SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto", **extra}
        probe = "from django.conf import settings; print(settings.SECURE_PROXY_SSL_HEADER)"
        return subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", probe],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    refused = with_env()
    assert refused.returncode != 0
    assert "SECURE_PROXY_SSL_HEADER" in refused.stderr, refused.stderr
    assert "TRUSTED_PROXIES" in refused.stderr, refused.stderr
    believed = with_env(TRUSTED_PROXIES="10.0.0.1")
    assert believed.returncode == 0, believed.stderr
    assert believed.stdout.strip().splitlines()[-1] == "('HTTP_X_FORWARDED_PROTO', 'https')"
