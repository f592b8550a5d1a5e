"""The OpenAPI schema of the REST API (drf-spectacular) and its Swagger UI page (docs/protocol.md §7).

Both are served to authenticated callers only (a Bearer token or the browser's session): the API is
documented for people who have an account to use it with, and an anonymous visitor learns nothing from
the docs page but the shape of a surface they cannot call. The Swagger UI assets come from
drf-spectacular-sidecar, i.e. from /static/ on this origin, because the Content-Security-Policy allows
scripts and styles from 'self' only (no CDN)."""

from __future__ import annotations

SPECTACULAR_SETTINGS = {
    "TITLE": "chatcore REST API",
    "DESCRIPTION": (
        "The REST half of the chat.v1 protocol (docs/protocol.md §7). Authenticate with "
        "`Authorization: Bearer <access>` from `POST /api/auth/token/`, or the browser session (unsafe "
        'methods then need the X-CSRFToken header). Errors are `{"error": {"code", "message"}}`; DRF\'s '
        "field validation errors are `{field: [message, ...]}`."
    ),
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Every path's id parameters are strings in the URL conf (a malformed id is a 404 like a missing one).
    "SCHEMA_PATH_PREFIX": r"/api/",
    "COMPONENT_SPLIT_REQUEST": True,
}
