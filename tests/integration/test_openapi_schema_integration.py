"""The published OpenAPI schema (/api/schema/, chatsite/config/api_docs.py) and its Swagger UI page
(/api/docs/): the schema is valid OpenAPI 3, describes exactly the /api/ routes the URL conf has (no
route missing, no path invented), every operation declares its answers, and the docs page loads its
assets from this origin and renders under the site's Content-Security-Policy."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from django.conf import settings
from django.contrib.staticfiles import finders
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.validation import validate_schema
from playwright.sync_api import sync_playwright
from rest_framework.test import APIClient
from rest_framework.views import APIView

from chat.services.conversations import user_create

CHROMIUM = "/usr/bin/chromium"
# The schema and docs routes describe the API; they are not part of it, so the schema leaves them out.
SELF_ROUTES = {"/api/schema/", "/api/docs/"}
METHODS = ("get", "post", "put", "patch", "delete")


def url_conf_api_operations() -> set[tuple[str, str]]:
    """(OpenAPI-style path, method) for every DRF handler under /api/ in chatsite/urls.py."""
    found: set[tuple[str, str]] = set()
    for entry in get_resolver().url_patterns:
        assert not isinstance(entry, URLResolver) or not str(entry.pattern).startswith("api/"), entry
        if not isinstance(entry, URLPattern) or not str(entry.pattern).startswith("api/"):
            continue
        path = "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", str(entry.pattern))
        if path in SELF_ROUTES:
            continue
        view_class = getattr(entry.callback, "view_class", None)
        assert view_class is not None, f"{path}: not a DRF view"
        assert issubclass(view_class, APIView), f"{path}: not a DRF view"
        found |= {(path, m) for m in METHODS if hasattr(view_class, m)}
    return found


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return SchemaGenerator().get_schema(request=None, public=True)


def test_the_schema_is_valid_openapi_3(schema: dict[str, Any]) -> None:
    validate_schema(schema)  # drf-spectacular's bundled OpenAPI 3.0 JSON schema; raises on any violation
    assert schema["openapi"].startswith("3.")
    assert set(schema["components"]["securitySchemes"]) == {"jwtAuth", "cookieAuth"}
    bearer = {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    assert schema["components"]["securitySchemes"]["jwtAuth"] == bearer


def test_schema_paths_and_url_conf_routes_are_the_same(schema: dict[str, Any]) -> None:
    in_schema = {(path, method) for path, item in schema["paths"].items() for method in item if method in METHODS}
    in_urls = url_conf_api_operations()
    assert in_urls - in_schema == set(), "routes the schema does not describe"
    assert in_schema - in_urls == set(), "schema operations no route serves"
    assert len(in_urls) >= 40


def test_every_operation_declares_its_answers_and_parameters(schema: dict[str, Any]) -> None:
    for path, item in schema["paths"].items():
        for method, op in item.items():
            codes = set(op["responses"])
            assert any(c.startswith("2") for c in codes), (path, method)
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == set(re.findall(r"{(\w+)}", path)), (path, method)
            if path.startswith(("/api/auth/token/",)):
                assert "security" not in op or op["security"] in ([], [{}]), (path, method)  # anonymous by design
                continue
            assert {"401", "403"} <= codes, (path, method)
            assert op["security"] == [{"jwtAuth": []}, {"cookieAuth": []}], (path, method)
            if "requestBody" in op:
                assert "400" in codes, (path, method)
                assert set(op["requestBody"]["content"]) == {"application/json"}, (path, method)


def test_analytics_query_parameters_are_declared(schema: dict[str, Any]) -> None:
    op = schema["paths"]["/api/workspaces/{workspace_id}/analytics/"]["get"]
    query = {p["name"]: p["schema"] for p in op["parameters"] if p["in"] == "query"}
    assert query["from"]["format"] == query["to"]["format"] == "date"
    assert query["granularity"]["enum"] == ["day", "week"]
    assert sorted(query["format"]["enum"]) == ["csv", "json"]
    assert set(op["responses"]["200"]["content"]) == {"application/json", "text/csv"}


@pytest.mark.django_db
def test_schema_and_docs_are_for_signed_in_callers_only(make_user: Any) -> None:
    anonymous = APIClient()
    assert anonymous.get("/api/schema/").status_code == 401
    assert anonymous.get("/api/docs/").status_code in (401, 403)
    api = APIClient()
    api.force_authenticate(make_user())
    response = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi")
    assert response.status_code == 200
    served = yaml.safe_load(response.content)
    assert "/api/conversations/{conversation_id}/" in served["paths"]
    assert api.get("/api/schema/?format=json").json()["openapi"].startswith("3.")


@pytest.mark.django_db
def test_docs_page_loads_swagger_ui_from_this_origin(make_user: Any) -> None:
    browser = Client()
    browser.force_login(make_user())
    page = browser.get("/api/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "<style" not in html  # nothing inline: the CSP would refuse it
    assert "<script>" not in html
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets
    assert all(a.startswith("/") and not a.startswith("//") for a in assets), assets  # this origin only
    assert "default-src 'self'" in page["Content-Security-Policy"]
    static = [a for a in assets if a.startswith(settings.STATIC_URL)]
    # Swagger UI's css, bundle, preset and favicon from drf-spectacular-sidecar, and the page's own css.
    assert len(static) == 5, assets
    for asset in static:  # the test client has no static handler: the files must exist where /static/ serves
        assert finders.find(asset.removeprefix(settings.STATIC_URL)) is not None, asset
    (script,) = set(assets) - set(static)  # the init script, a request of its own
    answer = browser.get(script)
    assert answer.status_code == 200
    assert answer["Content-Type"].startswith("application/javascript")
    assert b"/api/schema/" in answer.content
    assert b"SwaggerUIBundle(" in answer.content


@pytest.mark.timeout(60)
def test_swagger_ui_renders_under_the_csp_without_console_errors(live_server: Any, transactional_db: Any) -> None:
    user = user_create(username="docs-reader", password="pw-docs-reader")
    session = Client()
    session.force_login(user)
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            context = browser.new_context()
            context.add_cookies(
                [{"name": "sessionid", "value": session.cookies["sessionid"].value, "url": live_server.url}]
            )
            page = context.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(live_server.url + "/api/docs/")
            page.wait_for_selector(".opblock-tag", timeout=20_000)  # the operations, grouped by tag, are drawn
            assert page.locator(".opblock").count() >= 40
            assert "chatcore REST API" in page.locator(".info .title").inner_text()
        finally:
            browser.close()
    assert errors == []
