"""Every malformed request gets a clear OpenAI-style error with the right status."""

import httpx
import pytest


@pytest.mark.parametrize("body,status,code", [
    (b"{not json", 400, "invalid_json"),
    (b'{"messages": []}', 400, "missing_model"),
    (b'{"model": ""}', 400, "missing_model"),
    (b'{"model": "gpt-4o", "stream": "yes"}', 400, "invalid_value"),
    (b'{"model": "gpt-4o", "max_tokens": -5}', 400, "invalid_value"),
    (b'{"model": "nope"}', 400, "model_not_found"),
])
def test_bad_bodies(gw, body, status, code):
    r = gw.post("/v1/chat/completions", "open", body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"]
    assert r.headers["content-type"].startswith("application/json")


def test_body_over_the_limit_is_a_json_413(gw):
    big = b'{"model": "gpt-4o", "pad": "' + b"x" * (1024 * 1024 + 10) + b'"}'
    r = gw.post("/v1/chat/completions", "open", big, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"


def test_routes_methods_and_keys(gw):
    assert gw.post("/v1/images/generations", "open", {"model": "x"}).json()["error"]["code"] == "unknown_url"
    r = httpx.get(gw.url + "/v1/chat/completions", headers=gw.auth("open"))
    assert r.status_code == 405
    r = httpx.post(gw.url + "/v1/chat/completions", json={"model": "gpt-4o"})
    assert (r.status_code, r.json()["error"]["code"]) == (401, "missing_api_key")
    for alias, status, code in [("blocked", 401, "key_blocked"), ("expired", 401, "key_expired"),
                                ("frozen", 401, "team_blocked"), ("embeddings-only", 403, "route_not_allowed")]:
        r = gw.post("/v1/chat/completions", alias, {"model": "gpt-4o"})
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), alias
    # Without the /v1 prefix, as LiteLLM accepts.
    assert gw.post("/chat/completions", "open", {"model": "gpt-4o-mini", "messages": []}).status_code == 200
    assert httpx.get(gw.url + "/models", headers=gw.auth("open")).status_code == 200
