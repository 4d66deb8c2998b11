"""Every billed upstream call produces exactly one usage record, priced by the table."""

import random
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import cost


def test_records_equal_upstream_calls_and_costs_match(gw):
    served_before = gw.mock_stats()["served"]
    before = {a: len(gw.records(a)) for a in ("money-a", "money-b")}
    rng = random.Random(7)
    jobs = []
    for i in range(120):
        alias = "money-a" if i % 2 else "money-b"
        group = rng.choice(["gpt-4o", "gpt-4o-mini"])
        body = {"model": group, "stream": i % 3 == 0, "messages": [{"role": "user", "content": "x" * rng.randint(1, 400)}]}
        headers = {"x-mock-completion-tokens": str(rng.randint(1, 40)), "x-mock-cached-tokens": str(rng.randint(0, 5))}
        jobs.append((alias, body, headers))

    def run(job):
        alias, body, headers = job
        with httpx.Client(timeout=30) as c:
            r = c.post(gw.url + "/v1/chat/completions", json=body, headers={**gw.auth(alias), **headers})
            r.read()
            return r.status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        codes = list(pool.map(run, jobs))
    assert codes.count(200) == 120
    gw.wait_records("money-a", before["money-a"] + 60)
    gw.wait_records("money-b", before["money-b"] + 60)
    recs = gw.records("money-a")[before["money-a"]:] + gw.records("money-b")[before["money-b"]:]
    assert len(recs) == 120
    assert len({r["request_id"] for r in recs}) == 120, "request ids are unique"
    assert len({r["record_id"] for r in recs}) == 120, "record ids (the idempotency keys) are unique"
    assert gw.mock_stats()["served"] - served_before == 120
    for r in recs:
        assert r["estimated"] is False
        expected = cost(r["model_group"], r["prompt_tokens"], r["completion_tokens"], cached=r["cached_prompt_tokens"])
        assert r["cost_usd"] == pytest.approx(expected, abs=1e-9)
    assert all(r["team_id"] == "platform" for r in recs if r["key_alias"] == "money-b")


def test_a_prompt_over_200k_tokens_is_billed_whole_at_the_long_context_price(gw):
    """Gemini 2.5 Pro from the built-in table: $1.25/$10 per million tokens, $2.50/$15 for a
    request whose prompt is over 200k tokens (Google bills the whole request so). The provider
    counts the prompt (the mock's knob stands in for a long document)."""
    before = len(gw.records("money-a"))
    expected = {}
    for prompt in (200_000, 200_001):
        r = httpx.post(gw.url + "/v1/chat/completions", timeout=30,
                       json={"model": "gemini-pro", "messages": [{"role": "user", "content": "a long document"}]},
                       headers={**gw.auth("money-a"), "x-mock-prompt-tokens": str(prompt),
                                "x-mock-completion-tokens": "1000"})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["prompt_tokens"] == prompt
        expected[prompt] = prompt * 1.25e-6 + 1000 * 1e-5 if prompt <= 200_000 else prompt * 2.5e-6 + 1000 * 1.5e-5
    recs = gw.wait_records("money-a", before + 2)[before:]
    got = {r["prompt_tokens"]: r["cost_usd"] for r in recs}
    # Hand-computed: $0.26 at 200,000 tokens; one more token and $0.5150025.
    assert expected == pytest.approx({200_000: 0.26, 200_001: 0.5150025}, abs=1e-12)
    assert got == pytest.approx(expected, abs=1e-9)


def test_prometheus_counters_move(gw):
    def value(text, name, label):
        for line in text.splitlines():
            if line.startswith(name) and label in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = gw.prometheus()
    for _ in range(3):
        assert gw.post("/v1/chat/completions", "open", {"model": "gpt-4o-mini", "messages": []}).status_code == 200
    assert gw.post("/v1/chat/completions", "open", {"model": "gpt-4o-mini", "stream": "bad"}).status_code == 400
    # Each worker reports its per-model counts on its 250 ms tick.
    requests = lambda text: value(text, "sluice_requests", 'model_group="gpt-4o-mini"')
    deadline = time.time() + 5
    while requests(after := gw.prometheus()) - requests(before) < 3 and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # a later tick must not report them again
    after = gw.prometheus()
    assert requests(after) - requests(before) == 3
    assert value(after, "sluice_rejections", 'reason="invalid_value"') - value(before, "sluice_rejections", 'reason="invalid_value"') >= 1
    assert value(after, "sluice_completion_tokens", 'model_group="gpt-4o-mini"') > value(before, "sluice_completion_tokens", 'model_group="gpt-4o-mini"')
