"""Rate limits and budgets under concurrency, across Envoy's two worker threads."""

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def away_from_minute_boundary():
    """RPM/TPM windows are calendar minutes: start a burst well inside one."""
    while time.time() % 60 > 45:
        time.sleep(0.5)


def burst(gw, alias, n, body=CHAT, headers=None):
    with httpx.Client(timeout=30) as c, ThreadPoolExecutor(max_workers=20) as pool:
        hdrs = {**gw.auth(alias), **(headers or {})}
        return list(pool.map(lambda _: c.post(gw.url + "/v1/chat/completions", json=body, headers=hdrs), range(n)))


def test_rpm_is_exact_across_workers(gw):
    away_from_minute_boundary()
    responses = burst(gw, "rpm20", 60)
    codes = [r.status_code for r in responses]
    assert codes.count(200) == 20, codes
    assert codes.count(429) == 40
    rejected = next(r for r in responses if r.status_code == 429)
    assert rejected.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(rejected.headers["retry-after"]) <= 60
    assert rejected.headers["x-ratelimit-limit-requests"] == "20"
    assert rejected.headers["x-ratelimit-remaining-requests"] == "0"
    ok = next(r for r in responses if r.status_code == 200)
    assert ok.headers["x-ratelimit-limit-requests"] == "20"
    assert 0 <= int(ok.headers["x-ratelimit-remaining-requests"]) < 20


def test_tpm_counts_real_tokens(gw):
    away_from_minute_boundary()
    codes = []
    for _ in range(30):
        r = gw.post("/v1/chat/completions", "tpm", CHAT, headers={"x-mock-completion-tokens": "40"})
        codes.append(r.status_code)
        if r.status_code == 429:
            assert r.json()["error"]["code"] == "token_rate_limit_exceeded"
            assert r.headers["x-ratelimit-limit-tokens"] == "300"
            break
    assert codes[-1] == 429 and 3 <= codes.count(200) <= 8, codes
    recs = gw.wait_records("tpm", codes.count(200))
    used = sum(r["total_tokens"] for r in recs)
    assert used <= 300 + max(r["total_tokens"] for r in recs)


def test_a_customers_rules_from_config_yaml_hold_across_workers_and_keys(gw):
    """config.yaml's `customers:`: the end user a request names with `user` is held to its RPM
    limit over both workers and every key (exact: three of thirty), and a blocked one is refused."""
    away_from_minute_boundary()
    as_customer = dict(CHAT, user="rpm3-customer")
    codes = [r.status_code for r in burst(gw, "open", 15, body=as_customer)]
    codes += [r.status_code for r in burst(gw, "sdk", 15, body=as_customer)]
    assert (codes.count(200), codes.count(429)) == (3, 27), codes
    refused = gw.post("/v1/chat/completions", "stream", as_customer)
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert "the end user of this request" in refused.json()["error"]["message"]
    blocked = gw.post("/v1/chat/completions", "open", dict(CHAT, user="blocked-customer"))
    assert (blocked.status_code, blocked.json()["error"]["code"]) == (400, "customer_blocked")
    assert gw.post("/v1/chat/completions", "open", dict(CHAT, user="someone-else")).status_code == 200


def test_team_rpm_is_shared_by_its_keys(gw):
    away_from_minute_boundary()
    codes = [gw.post("/v1/chat/completions", alias, CHAT).status_code for alias in ["capped-a", "capped-b"] * 4]
    assert codes.count(200) == 5, codes
    last = gw.post("/v1/chat/completions", "capped-b", CHAT)
    assert last.status_code == 429 and "team" in last.json()["error"]["message"]


def test_per_model_rpm(gw):
    away_from_minute_boundary()
    mini = {"model": "gpt-4o-mini", "messages": []}
    codes = [gw.post("/v1/chat/completions", "per-model", mini).status_code for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    assert gw.post("/v1/chat/completions", "per-model", CHAT).status_code == 200


def test_budget_overspend_is_bounded_by_one_request(gw):
    body = {**CHAT, "max_tokens": 200}
    headers = {"x-mock-completion-tokens": "200"}
    responses = burst(gw, "budget", 60, body=body, headers=headers)
    codes = [r.status_code for r in responses]
    admitted = codes.count(200)
    assert admitted > 0 and codes.count(400) > 0, codes
    assert all(r.json()["error"]["type"] == "budget_exceeded" for r in responses if r.status_code == 400)
    recs = gw.wait_records("budget", admitted)
    spent = sum(r["cost_usd"] for r in recs)
    one_request = max(r["cost_usd"] for r in recs)
    assert spent <= 0.05 + one_request * 1.05, (spent, one_request)
    # Spent: nothing more gets through.
    after = gw.post("/v1/chat/completions", "budget", body, headers=headers)
    assert after.status_code == 400 and "Budget has been exceeded" in after.json()["error"]["message"]


def test_parallel_requests_are_limited_and_every_end_frees_a_slot(gw):
    """max_parallel_requests: 2 (LiteLLM's parallel request limiter), across Envoy's workers:
    of six concurrent slow requests two are served and four refused at once, as LiteLLM refuses
    them; a slot frees when its request ends, also when the client gives up mid-request."""
    slow = {"x-mock-latency-ms": "1500"}
    responses = burst(gw, "parallel2", 6, headers=slow)
    codes = sorted(r.status_code for r in responses)
    assert codes == [200, 200, 429, 429, 429, 429], codes
    refused = next(r for r in responses if r.status_code == 429)
    error = refused.json()["error"]
    assert error["code"] == "parallel_request_limit_reached" and error["type"] == "rate_limit_error"
    assert error["message"].startswith("Max parallel request limit reached"), error
    assert refused.headers["retry-after"] == "1"
    # Two clients give up while their requests wait on the provider: their slots come back.
    for _ in range(2):
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(gw.url + "/v1/chat/completions", json=CHAT, timeout=0.3,
                       headers={**gw.auth("parallel2"), "x-mock-latency-ms": "2000"})
    deadline = time.time() + 10
    while True:
        codes = [r.status_code for r in burst(gw, "parallel2", 2, headers={"x-mock-latency-ms": "300"})]
        if codes == [200, 200] or time.time() > deadline:
            break
        time.sleep(0.2)
    assert codes == [200, 200], "the abandoned requests' slots were not given back"
