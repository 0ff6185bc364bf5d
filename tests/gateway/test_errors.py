"""Every error the gateway answers, in OpenAI's error JSON, over a real uvicorn; and secrets never leave it."""

from __future__ import annotations

import json
import re
import socket

import httpx
import openai
import pytest

from antidistill.models.base import BackendError
from antidistill.models.fake import FakeBackend
from antidistill.models.upstream import UpstreamBackend
from antidistill.store.api import is_pending_record
from antidistill.store.sql import hash_api_key

from .conftest import ADMIN_TOKEN, CHAT, MASTER_KEY, LiveServer, auth, start_gateway, stub_upstream


def assert_error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    if code is not None:
        assert err["code"] == code
    return err


@pytest.fixture(scope="module")
def user(gateway):
    _, key, _ = gateway.account("errors-user")
    return key


# ---- 401 / 403 -------------------------------------------------------------------------------------------
def test_401_missing_unknown_and_malformed_keys(gateway, client):
    url = gateway.v1 + "/chat/completions"
    assert_error(client.post(url, json=CHAT), 401, "missing_api_key")
    assert_error(client.post(url, json=CHAT, headers=auth("sk-ad-" + "x" * 43)), 401, "invalid_api_key")
    assert_error(client.post(url, json=CHAT, headers={"Authorization": "Basic abc"}), 401)
    assert_error(client.post(url, json=CHAT, headers=auth("k" * 5000)), 401, "invalid_api_key")
    assert_error(client.get(gateway.v1 + "/models", headers=auth("nope")), 401, "invalid_api_key")


def test_401_revoked_key_and_other_key_still_works(gateway, client):
    account, key, info = gateway.account("revoked-user")
    url = gateway.v1 + "/chat/completions"
    assert client.post(url, json=CHAT, headers=auth(key)).status_code == 200
    r = client.delete(f"{gateway.url}/admin/accounts/{account.id}/keys/{info.id}", headers=gateway.admin_headers())
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    err = assert_error(client.post(url, json=CHAT, headers=auth(key)), 401, "invalid_api_key")
    assert "revoked" in err["message"]
    r = client.post(f"{gateway.url}/admin/accounts/{account.id}/keys", headers=gateway.admin_headers())
    assert r.status_code == 201
    assert client.post(url, json=CHAT, headers=auth(r.json()["api_key"])).status_code == 200


def test_403_disabled_account_and_enable_again(gateway, client):
    account, key, _ = gateway.account("disabled-user")
    url = gateway.v1 + "/chat/completions"
    r = client.post(f"{gateway.url}/admin/accounts/{account.id}/disable", headers=gateway.admin_headers())
    assert r.status_code == 200 and r.json()["enabled"] is False
    err = assert_error(client.post(url, json=CHAT, headers=auth(key)), 403, "account_disabled")
    assert err["type"] == "permission_error"
    assert_error(client.get(gateway.v1 + "/models", headers=auth(key)), 403)
    with (
        openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0) as sdk,
        pytest.raises(openai.PermissionDeniedError),
    ):
        sdk.chat.completions.create(**CHAT)
    client.patch(f"{gateway.url}/admin/accounts/{account.id}", json={"enabled": True}, headers=gateway.admin_headers())
    assert client.post(url, json=CHAT, headers=auth(key)).status_code == 200


# ---- 429 -------------------------------------------------------------------------------------------------
def test_429_rpm_with_retry_after(gateway, client):
    _, key, _ = gateway.account("rpm-user", rpm=3)
    url = gateway.v1 + "/chat/completions"
    codes = [client.post(url, json=CHAT, headers=auth(key)).status_code for _ in range(3)]
    assert codes == [200, 200, 200]
    r = client.post(url, json=CHAT, headers=auth(key))
    err = assert_error(r, 429, "rate_limit_exceeded")
    assert err["type"] == "requests"
    assert 1 <= int(r.headers["retry-after"]) <= 60
    # the SDK reads it as a RateLimitError
    with openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0) as sdk, pytest.raises(openai.RateLimitError):
        sdk.chat.completions.create(**CHAT)


def test_429_tpm_reserves_then_settles(gateway, client):
    # each request reserves prompt estimate + max_tokens (16) and settles to what it used (fewer)
    _, key, _ = gateway.account("tpm-user", tpm=60)
    url = gateway.v1 + "/chat/completions"
    used, statuses = 0, []
    for _ in range(12):
        r = client.post(url, json=CHAT, headers=auth(key))
        statuses.append(r.status_code)
        if r.status_code == 200:
            used += r.json()["usage"]["total_tokens"]
        else:
            err = assert_error(r, 429, "rate_limit_exceeded")
            assert err["type"] == "tokens"
            assert 1 <= int(r.headers["retry-after"]) <= 60
            break
    assert statuses[-1] == 429 and statuses.count(200) >= 2
    assert used <= 60
    # a request that could never fit is told so
    big = dict(CHAT, max_tokens=500)
    r = client.post(url, json=big, headers=auth(key))
    err = assert_error(r, 429, "request_too_large")
    assert "max_tokens" in err["message"]
    assert r.headers["x-should-retry"] == "false"  # the SDKs must not retry what can never pass


def test_429_tokens_per_day(gateway, client):
    _, key, _ = gateway.account("daily-user", tokens_per_day=40)
    url = gateway.v1 + "/chat/completions"
    statuses = [client.post(url, json=CHAT, headers=auth(key)).status_code for _ in range(6)]
    assert 429 in statuses
    r = client.post(url, json=CHAT, headers=auth(key))
    assert_error(r, 429)
    assert int(r.headers["retry-after"]) >= 1


# ---- 400 -------------------------------------------------------------------------------------------------
BAD_BODIES = {
    "invalid JSON": b'{"model": "x", "messages": [',
    "not an object": b"[1, 2, 3]",
    "empty object": b"{}",
    "messages wrong type": json.dumps({"model": "x", "messages": "hello"}).encode(),
    "messages empty": json.dumps({"model": "x", "messages": []}).encode(),
    "bad role": json.dumps({"model": "x", "messages": [{"role": "robot", "content": "hi"}]}).encode(),
    "content wrong type": json.dumps({"model": "x", "messages": [{"role": "user", "content": 5}]}).encode(),
    "max_tokens string": json.dumps(dict(CHAT, max_tokens="10")).encode(),
    "max_tokens negative": json.dumps(dict(CHAT, max_tokens=-5)).encode(),
    "max_tokens zero": json.dumps(dict(CHAT, max_tokens=0)).encode(),
    "max_tokens huge": json.dumps(dict(CHAT, max_tokens=10**30)).encode(),
    "max_tokens over cap": json.dumps(dict(CHAT, max_tokens=100_000)).encode(),
    "max_tokens float": json.dumps(dict(CHAT, max_tokens=1.5)).encode(),
    "max_tokens bool": json.dumps(dict(CHAT, max_tokens=True)).encode(),
    "temperature high": json.dumps(dict(CHAT, temperature=2.5)).encode(),
    "temperature NaN": b'{"model": "x", "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
    "top_p high": json.dumps(dict(CHAT, top_p=1.5)).encode(),
    "n zero": json.dumps(dict(CHAT, n=0)).encode(),
    "n huge": json.dumps(dict(CHAT, n=100)).encode(),
    "stop too many": json.dumps(dict(CHAT, stop=["a", "b", "c", "d", "e"])).encode(),
    "stop wrong type": json.dumps(dict(CHAT, stop=5)).encode(),
    "stream string": json.dumps(dict(CHAT, stream="yes")).encode(),
    "seed huge": json.dumps(dict(CHAT, seed=2**70)).encode(),
    "invalid UTF-8": b'{"model": "x", "messages": [{"role": "user", "content": "\xff\xfe\xfd"}]}',
    "lone surrogate": b'{"model": "x", "messages": [{"role": "user", "content": "\\ud800"}]}',
    "deeply nested": b'{"model": "x", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
}


_FIELD_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.([A-Za-z_][A-Za-z0-9_]*|[0-9]+))*")


@pytest.mark.parametrize("name", list(BAD_BODIES))
def test_400_invalid_bodies(gateway, client, user, name):
    r = client.post(
        gateway.v1 + "/chat/completions",
        content=BAD_BODIES[name],
        headers={**auth(user), "Content-Type": "application/json"},
    )
    err = assert_error(r, 400)
    assert err["type"] == "invalid_request_error"
    # a param names the client's field path, never pydantic's validators or union members
    assert err["param"] is None or _FIELD_PATH.fullmatch(err["param"]), err["param"]
    assert "function-" not in err["message"] and "[" not in (err["param"] or "")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "x", "messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        ({"model": "x", "messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages.0.content"),
        (
            {"model": "x", "messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "hi"}]},
            "messages.1.role",
        ),
        ({"model": "x", "messages": [{"role": "user", "content": "hi"}], "stop": 5}, "stop"),
    ],
)
def test_400_param_is_the_clients_field_path(gateway, client, user, body, param):
    err = assert_error(client.post(gateway.v1 + "/chat/completions", json=body, headers=auth(user)), 400)
    assert err["param"] == param, err


def test_400_names_the_field(gateway, client, user):
    r = client.post(gateway.v1 + "/chat/completions", json=dict(CHAT, temperature=3), headers=auth(user))
    err = assert_error(r, 400, "invalid_value")
    assert err["param"] == "temperature" and "temperature" in err["message"]
    r = client.post(gateway.v1 + "/completions", json={"model": "x", "prompt": ["a", "b"]}, headers=auth(user))
    assert_error(r, 400)


def test_unknown_fields_are_ignored(gateway, client, user):
    body = dict(CHAT, frequency_penalty=0.5, logit_bias={"1": 2}, something_new={"x": [1]})
    assert client.post(gateway.v1 + "/chat/completions", json=body, headers=auth(user)).status_code == 200


def test_json_without_content_type_is_read(gateway, client, user):
    r = client.post(gateway.v1 + "/chat/completions", content=json.dumps(CHAT).encode(), headers=auth(user))
    assert r.status_code == 200


# ---- 404 / 405 / 413 -------------------------------------------------------------------------------------
def test_404_and_405(gateway, client, user):
    assert_error(client.get(gateway.url + "/v1/nothing-here", headers=auth(user)), 404, "not_found")
    assert_error(client.get(gateway.v1 + "/chat/completions", headers=auth(user)), 405)
    assert_error(client.get(gateway.url + "/admin/accounts/acct_missing", headers=gateway.admin_headers()), 404)


def test_413_ten_megabyte_body(gateway, client, user):
    big = json.dumps(dict(CHAT, messages=[{"role": "user", "content": "x" * (10 * 1024 * 1024)}])).encode()
    err = assert_error(
        client.post(
            gateway.v1 + "/chat/completions", content=big, headers={**auth(user), "Content-Type": "application/json"}
        ),
        413,
        "request_too_large",
    )
    assert "limit" in err["message"]


def test_413_chunked_body_without_content_length(gateway, client, user):
    def chunks():
        yield b'{"model": "x", "messages": [{"role": "user", "content": "'
        for _ in range(40):
            yield b"y" * 65536
        yield b'"}]}'

    r = client.post(
        gateway.v1 + "/chat/completions", content=chunks(), headers={**auth(user), "Content-Type": "application/json"}
    )
    assert_error(r, 413)


def test_413_even_before_authentication(gateway, client):
    r = client.post(gateway.v1 + "/chat/completions", content=b"x" * (2 * 1024 * 1024))
    assert_error(r, 413)


# ---- 502 / 504 -------------------------------------------------------------------------------------------
def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when we leave: nothing listens there


def test_502_upstream_unreachable(gateway_dir, store, client):
    backend = UpstreamBackend(f"http://127.0.0.1:{dead_port()}/v1", timeout=2)
    with start_gateway(gateway_dir, store, backend=backend) as gw:
        account, key, _ = gw.account("upstream-dead")
        before = len(gw.audit())
        err = assert_error(client.post(gw.v1 + "/chat/completions", json=CHAT, headers=auth(key)), 502, "backend_error")
        assert err["type"] == "server_error"
        assert_error(client.post(gw.v1 + "/chat/completions", json=dict(CHAT, stream=True), headers=auth(key)), 502)
        failed = gw.audit()[before:]
        assert [r["status"] for r in failed] == [502, 502] and all(r["account_id"] == account.id for r in failed)
        with (
            openai.OpenAI(base_url=gw.v1, api_key=key, max_retries=0) as sdk,
            pytest.raises(openai.InternalServerError),
        ):
            sdk.chat.completions.create(**CHAT)
        metrics = client.get(gw.url + "/metrics").text
        assert 'antidistill_backend_errors_total{backend="upstream",kind="error"} 3.0' in metrics


def test_502_upstream_error_status_and_504_slow_upstream(gateway_dir, store, client):
    mode: dict = {"status": 500}
    with LiveServer(stub_upstream(mode)) as up:
        backend = UpstreamBackend(up.url, timeout=0.5)
        with start_gateway(gateway_dir, store, backend=backend) as gw:
            _, key, _ = gw.account("upstream-slow")
            assert_error(client.post(gw.v1 + "/chat/completions", json=CHAT, headers=auth(key)), 502)
            mode.clear()
            mode["delay"] = 1.5
            err = assert_error(
                client.post(gw.v1 + "/chat/completions", json=CHAT, headers=auth(key)), 504, "backend_timeout"
            )
            assert err["type"] == "server_error"
            assert_error(
                client.post(
                    gw.v1 + "/completions", json={"model": "m", "prompt": "hi", "stream": True}, headers=auth(key)
                ),
                504,
            )
            assert gw.audit()[-1]["status"] == 504


def test_504_request_timeout_of_a_slow_backend(gateway_dir, store, client):
    with start_gateway(gateway_dir, store, backend=FakeBackend(latency=2.0), request_timeout=0.3) as gw:
        _, key, _ = gw.account("slow-fake")
        assert_error(client.post(gw.v1 + "/chat/completions", json=CHAT, headers=auth(key)), 504)


def test_upstream_relay_through_the_sdk(gateway_dir, store):
    mode: dict = {"text": "relayed words here"}
    with LiveServer(stub_upstream(mode)) as up:
        backend = UpstreamBackend(up.url + "/v1/", api_key="upstream-secret-key-123", model="stub-model")
        with start_gateway(gateway_dir, store, backend=backend) as gw:
            _, key, _ = gw.account("upstream-ok")
            with openai.OpenAI(base_url=gw.v1, api_key=key, max_retries=0) as sdk:
                r = sdk.chat.completions.create(
                    model="whatever", messages=[{"role": "user", "content": "hi"}], max_tokens=5, n=2
                )
                chunks = list(
                    sdk.chat.completions.create(
                        model="whatever",
                        max_tokens=5,
                        stream=True,
                        messages=[{"role": "user", "content": "hi"}],
                        stream_options={"include_usage": True},
                    )
                )
                c = sdk.completions.create(model="whatever", prompt="hi", max_tokens=5)
            assert [ch.message.content for ch in r.choices] == ["relayed words here"] * 2
            assert r.usage.prompt_tokens == 7 and r.usage.completion_tokens == 8
            assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "relayed words here "
            assert chunks[-1].usage.completion_tokens == 4
            assert c.choices[0].text == "relayed words here"
            sent = up.server.config.app.state.seen
            assert sent[0]["model"] == "stub-model" and sent[0]["n"] == 2 and sent[0]["max_tokens"] == 5
            assert sent[1]["stream"] is True and sent[1]["stream_options"] == {"include_usage": True}
            (rec,) = gw.audit(r.id)
            assert rec["watermark"]["status"] == "unwatermarked"
            assert "impossible" in rec["watermark"]["reason"]


# ---- 500: an exchange that cannot be logged is not served ----------------------------------------------
class _BrokenAudit:
    """A store whose appends fail (``pending_ok``: except a stream's opening record)."""

    def __init__(self, store, pending_ok: bool = False):
        self._store = store
        self._pending_ok = pending_ok

    def __getattr__(self, name):
        return getattr(self._store, name)

    def append_audit(self, entry):
        if self._pending_ok and is_pending_record(entry):
            return self._store.append_audit(entry)
        raise RuntimeError("disk full")


def test_500_when_the_audit_log_fails(gateway_dir, store, client):
    with start_gateway(gateway_dir, _BrokenAudit(store)) as gw:
        _, key, _ = store.create_account("audit-broken")
        err = assert_error(
            client.post(gw.v1 + "/chat/completions", json=CHAT, headers=auth(key)), 500, "audit_unavailable"
        )
        assert "audit" in err["message"]
        # a stream whose opening record cannot be written is refused before any text
        r = client.post(gw.v1 + "/chat/completions", json=dict(CHAT, stream=True), headers=auth(key))
        assert r.status_code == 503 and r.json()["error"]["code"] == "audit_unavailable"
        assert "antidistill_audit_failures_total 2.0" in client.get(gw.url + "/metrics").text


def test_stream_whose_final_record_fails_ends_in_an_error_event(gateway_dir, store, client):
    with start_gateway(gateway_dir, _BrokenAudit(store, pending_ok=True)) as gw:
        _, key, _ = store.create_account("audit-broken-late")
        r = client.post(gw.v1 + "/chat/completions", json=dict(CHAT, stream=True), headers=auth(key))
        assert r.status_code == 200  # the stream had started; it ends in an error event instead of [DONE]
        assert "[DONE]" not in r.text and "audit_unavailable" in r.text
        assert '"finish_reason":"stop"' not in r.text and '"finish_reason":"length"' not in r.text
        response_id = r.text.split('"id":"')[1].split('"')[0]
        (rec,) = [x for x in store.iter_audit() if x["response_id"] == response_id]
        assert is_pending_record(rec)  # what did leave is on the chain, under its request


def test_backend_failure_mid_stream_ends_with_an_error_event(gateway_dir, store, client):
    class Failing(FakeBackend):
        async def stream(self, request):
            async for item in super().stream(request):
                yield item  # the first chunk goes out, then the model dies
                raise BackendError("model crashed")

    with start_gateway(gateway_dir, store, backend=Failing()) as gw:
        _, key, _ = gw.account("mid-stream")
        with openai.OpenAI(base_url=gw.v1, api_key=key, max_retries=0) as sdk, pytest.raises(openai.APIError) as e:
            list(sdk.chat.completions.create(**CHAT, stream=True))
        assert "model crashed" in str(e.value)
        assert gw.audit()[-1]["status"] == 502


# ---- admin API -------------------------------------------------------------------------------------------
def test_admin_api_requires_the_token(gateway, client):
    url = gateway.url + "/admin/accounts"
    assert_error(client.get(url), 401)
    assert_error(client.get(url, headers=auth("wrong-token")), 401, "invalid_admin_token")
    assert_error(client.get(url, headers=auth(ADMIN_TOKEN + "x")), 401)
    assert client.get(url, headers=gateway.admin_headers()).status_code == 200


def test_admin_api_disabled_without_a_token(gateway_dir, store, client):
    with start_gateway(gateway_dir, store, admin_token=None) as gw:
        err = assert_error(client.get(gw.url + "/admin/accounts", headers=auth("anything")), 401, "admin_disabled")
        assert "ANTIDISTILL_ADMIN_TOKEN" in err["message"]


def test_admin_account_lifecycle(gateway, client):
    h = gateway.admin_headers()
    r = client.post(
        gateway.url + "/admin/accounts",
        headers=h,
        json={"name": "acme", "rpm": 10, "tpm": 1000, "metadata": {"organisation": "Acme"}},
    )
    assert r.status_code == 201
    body = r.json()
    account, key = body["account"], body["api_key"]
    assert account["rpm"] == 10 and account["metadata"] == {"organisation": "Acme"} and key.startswith("sk-ad-")
    assert client.get(f"{gateway.url}/admin/accounts/{account['id']}", headers=h).json()["name"] == "acme"
    assert account["id"] in [a["id"] for a in client.get(gateway.url + "/admin/accounts", headers=h).json()]
    keys = client.get(f"{gateway.url}/admin/accounts/{account['id']}/keys", headers=h).json()
    assert [k["id"] for k in keys] == [body["key"]["id"]]
    assert_error(client.delete(f"{gateway.url}/admin/accounts/{account['id']}/keys/key_other", headers=h), 404)
    for bad in (
        {"name": ""},
        {"name": "x", "rpm": 0},
        {"name": "x", "rpm": "5"},
        {"name": "a\x00b"},
        {"name": "x", "unknown": 1},
        {"name": "x", "metadata": [1]},
    ):
        assert_error(client.post(gateway.url + "/admin/accounts", headers=h, json=bad), 400)


# ---- secrets never leave ---------------------------------------------------------------------------------
def test_no_secret_in_any_response(gateway, client):
    h = gateway.admin_headers()
    created = client.post(gateway.url + "/admin/accounts", headers=h, json={"name": "secretive"}).json()
    key, account_id = created["api_key"], created["account"]["id"]
    ak = gateway.keyring.account_key(account_id)
    pk = gateway.keyring.provider_key()
    secrets = [
        hash_api_key(key),
        ADMIN_TOKEN,
        MASTER_KEY,
        str(ak.value),
        hex(ak.value)[2:],
        str(pk.value),
        hex(pk.value)[2:],
    ]
    responses = [
        client.get(gateway.url + "/admin/accounts", headers=h),
        client.get(f"{gateway.url}/admin/accounts/{account_id}", headers=h),
        client.get(f"{gateway.url}/admin/accounts/{account_id}/keys", headers=h),
        client.post(f"{gateway.url}/admin/accounts/{account_id}/keys", headers=h),
        client.post(gateway.v1 + "/chat/completions", json=CHAT, headers=auth(key)),
        client.post(gateway.v1 + "/chat/completions", json=dict(CHAT, stream=True), headers=auth(key)),
        client.post(gateway.v1 + "/chat/completions", json={"bad": 1}, headers=auth(key)),
        client.post(gateway.v1 + "/chat/completions", json=CHAT, headers=auth(key + "x")),
        client.get(gateway.v1 + "/models", headers=auth(key)),
        client.get(gateway.url + "/metrics"),
        client.get(gateway.url + "/openapi.json"),
        client.get(gateway.url + "/openapi.json", headers=h),
        client.get(gateway.url + "/admin/accounts", headers=auth(ADMIN_TOKEN[:-1])),
    ]
    for r in responses:
        text = r.text + json.dumps(dict(r.headers))
        for s in secrets:
            assert s not in text, f"secret leaked in {r.request.url}"
        if "/admin/" not in str(r.request.url) or r.request.method == "GET":
            assert key not in text, f"API key echoed by {r.request.url}"


# ---- metrics ---------------------------------------------------------------------------------------------
def test_metrics_count_requests_tokens_and_rejections(gateway_dir, store, client):
    with start_gateway(gateway_dir, store) as gw:
        _, key, _ = gw.account("metrics-user", rpm=2)
        usage = [
            client.post(gw.v1 + "/chat/completions", json=CHAT, headers=auth(key)).json()["usage"] for _ in range(2)
        ]
        assert client.post(gw.v1 + "/chat/completions", json=CHAT, headers=auth(key)).status_code == 429
        client.post(gw.v1 + "/chat/completions", json=CHAT)
        text = client.get(gw.url + "/metrics").text
        assert 'antidistill_requests_total{endpoint="/v1/chat/completions",status="200"} 2.0' in text
        assert 'antidistill_requests_total{endpoint="/v1/chat/completions",status="429"} 1.0' in text
        assert 'antidistill_requests_total{endpoint="/v1/chat/completions",status="401"} 1.0' in text
        assert 'antidistill_rate_limit_rejections_total{limit="rpm"} 1.0' in text
        completion = sum(u["completion_tokens"] for u in usage)
        prompt = sum(u["prompt_tokens"] for u in usage)
        assert f'antidistill_tokens_total{{kind="completion"}} {float(completion)}' in text
        assert f'antidistill_tokens_total{{kind="prompt"}} {float(prompt)}' in text
        assert 'antidistill_request_latency_seconds_count{endpoint="/v1/chat/completions"} 4.0' in text
        assert 'antidistill_request_latency_seconds_bucket{endpoint="/v1/chat/completions",le="0.1"}' in text
