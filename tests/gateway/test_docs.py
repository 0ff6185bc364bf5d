"""The API schema and the docs pages: the full schema needs the admin token; the pages (and a schema of the
client API alone) are public only when ``ANTIDISTILL_API_DOCS`` is on."""

from __future__ import annotations

import pytest

from antidistill.gateway import create_app
from antidistill.models.fake import FakeBackend
from antidistill.settings import Settings

from .conftest import ADMIN_TOKEN, auth, start_gateway
from .test_errors import assert_error

PAGES = ("/docs", "/redoc")


def admin_paths(schema: dict) -> list[str]:
    return [p for p in schema["paths"] if p.startswith("/admin")]


def test_docs_off_by_default_and_the_schema_needs_the_admin_token(gateway, client):
    for page in PAGES:
        assert_error(client.get(gateway.url + page), 404)
    url = gateway.url + "/openapi.json"
    assert_error(client.get(url), 401, "invalid_admin_token")
    assert_error(client.get(url, headers=auth("wrong")), 401, "invalid_admin_token")
    r = client.get(url, headers=gateway.admin_headers())
    assert r.status_code == 200
    schema = r.json()
    assert "/admin/accounts" in admin_paths(schema) and "/v1/chat/completions" in schema["paths"]
    assert r.json() == gateway.app.openapi()


def test_no_schema_at_all_without_an_admin_token(gateway_dir, store, client):
    with start_gateway(gateway_dir, store, admin_token=None) as gw:
        assert_error(client.get(gw.url + "/openapi.json", headers=auth("anything")), 401, "admin_disabled")


def test_public_docs_show_the_client_api_only(gateway_dir, store, client):
    with start_gateway(gateway_dir, store, api_docs=True) as gw:
        for page in PAGES:
            r = client.get(gw.url + page)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
            assert "/openapi.json" in r.text
        public = client.get(gw.url + "/openapi.json")
        assert public.status_code == 200
        schema = public.json()
        assert admin_paths(schema) == []
        assert {"/v1/chat/completions", "/v1/completions", "/v1/models"} <= set(schema["paths"])
        # the admin API's models are left out with its routes
        assert not {"AccountCreate", "AccountCreated", "KeyCreated"} & set(schema["components"]["schemas"])
        assert "AdminToken" not in public.text
        # a wrong token gets the public schema too; the right one the full schema
        assert client.get(gw.url + "/openapi.json", headers=auth("wrong")).json() == schema
        full = client.get(gw.url + "/openapi.json", headers=auth(ADMIN_TOKEN)).json()
        assert admin_paths(full) and full == gw.app.openapi()


@pytest.mark.parametrize("api_docs", [False, True])
def test_app_openapi_still_lists_every_route(api_docs):
    """The schema the app builds (schemathesis fuzzes from it) is the full one, whatever is served."""
    schema = create_app(Settings(env="test", api_docs=api_docs), backend=FakeBackend()).openapi()
    assert "/admin/accounts" in schema["paths"] and "/v1/chat/completions" in schema["paths"]
    assert "/openapi.json" not in schema["paths"] and "/docs" not in schema["paths"]
