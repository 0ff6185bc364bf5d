"""The API's schema and documentation pages, outside the schema themselves.

``GET /openapi.json`` answers the full schema (admin and monitor routes included) to the admin token only: the
admin API's shape is no business of the public, and tools that read the schema (client generators, fuzzers)
can send a bearer token. With ``ANTIDISTILL_API_DOCS`` on, ``/docs`` (Swagger UI) and ``/redoc`` are served to
everyone, and so, without the admin token, is a schema of the client API alone (the routes outside
``/admin``): a browser cannot attach a bearer token when a docs page loads its schema, and an operator who
publishes docs for customers wants the API they use documented, not the one that issues keys. With it off
(the default) the pages are not served at all.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from antidistill.gateway.deps import AdminCredentials, GatewayDep, check_admin
from antidistill.gateway.errors import APIError

OPENAPI_URL = "/openapi.json"
#: routes under this prefix are the admin API: left out of the public schema
ADMIN_PREFIX = "/admin"
_SCHEMA_REF = "#/components/schemas/"

schema_router = APIRouter(include_in_schema=False)
pages_router = APIRouter(include_in_schema=False)


def _refs(node: Any) -> Iterator[str]:
    """The component schemas ``node`` refers to directly (``{"$ref": "#/components/schemas/Name"}``)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(_SCHEMA_REF):
            yield ref.removeprefix(_SCHEMA_REF)
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def client_schema(full: dict[str, Any]) -> dict[str, Any]:
    """``full`` without the admin API: its paths, and the models and security schemes only those used.

    Example:
        >>> full = {"paths": {"/v1/a": {"get": {"$ref": "#/components/schemas/A"}},
        ...                   "/admin/b": {"get": {"$ref": "#/components/schemas/B",
        ...                                        "security": [{"AdminToken": []}]}}},
        ...         "components": {"schemas": {"A": {}, "B": {}}, "securitySchemes": {"AdminToken": {}}}}
        >>> client_schema(full)["components"]
        {'schemas': {'A': {}}, 'securitySchemes': {}}
    """
    schema = copy.deepcopy(full)
    schema["paths"] = {p: ops for p, ops in schema.get("paths", {}).items() if not p.startswith(ADMIN_PREFIX)}
    components = schema.get("components")
    if components:
        models = components.get("schemas", {})
        keep: set[str] = set()
        todo = list(_refs(schema["paths"]))
        while todo:  # the models the client paths use, and the models those use
            name = todo.pop()
            if name not in keep and name in models:
                keep.add(name)
                todo.extend(_refs(models[name]))
        if "schemas" in components:
            components["schemas"] = {k: v for k, v in models.items() if k in keep}
        if "securitySchemes" in components:
            used = {
                name
                for ops in schema["paths"].values()
                for op in ops.values()
                if isinstance(op, dict)
                for requirement in op.get("security", [])
                for name in requirement
            }
            components["securitySchemes"] = {k: v for k, v in components["securitySchemes"].items() if k in used}
    return schema


def public_openapi(app: FastAPI) -> dict[str, Any]:
    """The schema of the client API alone (:func:`client_schema` of the app's schema), built once."""
    full = app.openapi()
    cached = getattr(app.state, "public_openapi", None)
    if cached is None or cached[0] is not full:  # the app rebuilds its schema when its routes change
        cached = (full, client_schema(full))
        app.state.public_openapi = cached
    return cached[1]


@schema_router.get(OPENAPI_URL)
async def openapi_schema(request: Request, gw: GatewayDep, credentials: AdminCredentials) -> JSONResponse:
    try:
        check_admin(gw.settings, credentials)
    except APIError:
        if not gw.settings.api_docs:
            raise
        return JSONResponse(public_openapi(request.app))
    return JSONResponse(request.app.openapi())


@pages_router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(openapi_url=OPENAPI_URL, title=f"{request.app.title} - Swagger UI")


@pages_router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    return get_redoc_html(openapi_url=OPENAPI_URL, title=f"{request.app.title} - ReDoc")
