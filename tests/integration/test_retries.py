"""Retries and timeouts (LiteLLM's num_retries, retry_policy, timeout, stream_timeout, and a
request's own num_retries and timeout), carried out by Envoy's router as the filter tells it.

The mock's faults hit only the first attempts of a request (`x-mock-fault-attempts`; a
request's attempts share Envoy's x-request-id), so a retry that happened is a success the
client sees, and the mock's own log says how many attempts reached it.
"""
import json
import time

import httpx
import openai
import pytest

from conftest import Gateway, free_port, model_entry

CHAT = {"model": "flaky", "messages": [{"role": "user", "content": "hi"}]}


class RetryGateway(Gateway):
    """A gateway whose config retries twice, with a slow deployment's timeouts."""

    def write_config(self):
        base = f"{self.mock_url}/v1"
        flaky = model_entry("gpt-4o-mini", "openai/gpt-4o-mini", base, "MOCK_OPENAI_KEY", "flaky")
        flaky["model_name"] = "flaky"
        slow = model_entry("gpt-4o-mini", "openai/gpt-4o-mini", base, "MOCK_OPENAI_KEY", "slow")
        slow["model_name"] = "slow"
        slow["litellm_params"].update({"timeout": 0.6, "stream_timeout": 0.6})
        dead = model_entry("gpt-4o-mini", "openai/gpt-4o-mini", f"http://127.0.0.1:{free_port()}/v1",
                           "MOCK_OPENAI_KEY", "dead")
        dead["model_name"] = "dead"
        out = json.loads(self.cli("key", "new", "--alias", "retry", "--json").stdout)
        self.keys["retry"] = out["key"]
        # Two groups of two for cooldown: one deployment down, then both.
        pair = [model_entry("gpt-4o-mini", "openai/gpt-4o-mini", base, "MOCK_OPENAI_KEY", "pair-up"),
                model_entry("gpt-4o-mini", "openai/gpt-4o-mini", f"http://127.0.0.1:{free_port()}/v1",
                            "MOCK_OPENAI_KEY", "pair-down")]
        dead_pair = [model_entry("gpt-4o-mini", "openai/gpt-4o-mini", f"http://127.0.0.1:{free_port()}/v1",
                                 "MOCK_OPENAI_KEY", f"dead-pair-{i}") for i in range(2)]
        for entry in pair:
            entry["model_name"] = "pair"
        for entry in dead_pair:
            entry["model_name"] = "dead-pair"
        # `order`: the second deployment only while the first is cooling down.
        ordered = [model_entry("gpt-4o-mini", "openai/gpt-4o-mini", base, "MOCK_OPENAI_KEY", f"ordered-{i}")
                   for i in (1, 2)]
        for i, entry in enumerate(ordered, 1):
            entry["model_name"] = "ordered"
            entry["litellm_params"]["order"] = i
        # Two healthy deployments of different upstream models: a retry's, told apart upstream.
        twins = [model_entry("gpt-4o-mini", f"openai/{model}", base, "MOCK_OPENAI_KEY", f"twin-{i}")
                 for i, model in ((1, "gpt-4o-mini"), (2, "gpt-4o"))]
        for entry in twins:
            entry["model_name"] = "twins"
        config = {
            "model_list": [flaky, slow, dead, *pair, *dead_pair, *ordered, *twins],
            "router_settings": {"num_retries": 2, "allowed_fails": 1, "cooldown_time": 1.5},
            "general_settings": {"master_key": "os.environ/SLUICE_MASTER_KEY"},
            "keys": [out["entry"]],
        }
        self.config_path = self.workdir / "config.yaml"
        self.config_path.write_text(json.dumps(config, indent=2))


@pytest.fixture(scope="module")
def rgw(tmp_path_factory):
    yield from RetryGateway(tmp_path_factory.mktemp("retries")).serve()


def attempts_of(gw, request_id):
    """The attempts of one request that reached the mock, oldest first."""
    return [r for r in gw.mock_stats()["requests"] if r["request_id"] == request_id]


def record_of(gw, response):
    """The one usage record of a request (its attempts share one x-request-id)."""
    request_id = response.headers["x-request-id"]
    gw.wait_for(lambda recs: any(r["request_id"] == request_id for r in recs))
    time.sleep(0.3)  # a second one would show up now
    mine = [r for r in gw.records() if r["request_id"] == request_id]
    assert len(mine) == 1, mine
    return mine[0]


def chat(gw, body=None, headers=None, **kw):
    return gw.post("/v1/chat/completions", "retry", body or CHAT, headers=headers, **kw)


def test_a_transient_429_is_retried_billed_once_and_reported(rgw):
    r = chat(rgw, headers={"x-mock-status": "429", "x-mock-fault-attempts": "2", "x-mock-prompt-tokens": "9"})
    assert r.status_code == 200, r.text
    assert r.headers["x-litellm-attempted-retries"] == "2"
    seen = attempts_of(rgw, r.headers["x-request-id"])
    assert [s["status"] for s in seen] == [429, 429, 200]
    # The router kept the gateway's instructions to itself: none reached the provider.
    router = {"x-envoy-max-retries", "x-envoy-retry-on", "x-envoy-retriable-status-codes",
              "x-envoy-upstream-rq-timeout-ms", "x-envoy-upstream-rq-per-try-timeout-ms"}
    assert all(not router & set(s["envoy_headers"]) for s in seen), [s["envoy_headers"] for s in seen]
    rec = record_of(rgw, r)
    assert (rec["prompt_tokens"], rec["status"], rec["outcome"]) == (9, 200, "completed")


def test_retries_run_out_and_the_last_answer_is_the_clients(rgw):
    r = chat(rgw, headers={"x-mock-status": "503"})
    assert r.status_code == 503 and "error" in r.json()
    assert r.headers["x-litellm-attempted-retries"] == "2"
    assert len(attempts_of(rgw, r.headers["x-request-id"])) == 3


def test_a_429s_retry_after_is_waited_for(rgw):
    t0 = time.monotonic()
    r = chat(rgw, headers={"x-mock-status": "429", "x-mock-fault-attempts": "1", "x-mock-retry-after": "1"})
    elapsed = time.monotonic() - t0
    assert r.status_code == 200 and r.headers["x-litellm-attempted-retries"] == "1"
    assert 0.95 <= elapsed < 5, elapsed


def test_a_bad_request_is_not_retried(rgw):
    r = chat(rgw, headers={"x-mock-status": "400", "x-mock-fault-attempts": "1"})
    assert r.status_code == 400
    assert len(attempts_of(rgw, r.headers["x-request-id"])) == 1


def test_a_requests_num_retries_wins_and_never_reaches_the_provider(rgw):
    r = chat(rgw, {**CHAT, "num_retries": 0}, headers={"x-mock-status": "500", "x-mock-fault-attempts": "1"})
    assert r.status_code == 500
    seen = attempts_of(rgw, r.headers["x-request-id"])
    assert len(seen) == 1
    r = chat(rgw, {**CHAT, "num_retries": 3}, headers={"x-mock-status": "500", "x-mock-fault-attempts": "3"})
    assert r.status_code == 200 and r.headers["x-litellm-attempted-retries"] == "3"
    r = chat(rgw, {**CHAT, "num_retries": "lots"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "num_retries"


def test_a_client_cannot_set_the_routers_retries_itself(rgw):
    r = chat(rgw, {**CHAT, "num_retries": 0},
             headers={"x-mock-status": "500", "x-mock-fault-attempts": "1", "x-envoy-max-retries": "5",
                      "x-envoy-retry-on": "5xx", "x-envoy-upstream-rq-timeout-ms": "1"})
    assert r.status_code == 500
    assert len(attempts_of(rgw, r.headers["x-request-id"])) == 1


def test_an_unreachable_deployment_is_retried_then_a_clear_error(rgw):
    r = chat(rgw, {**CHAT, "model": "dead"})
    assert r.status_code == 503 and r.json()["error"]["type"] == "upstream_error"
    assert r.headers["x-litellm-attempted-retries"] == "2"


def test_a_slow_attempt_times_out_and_the_retry_answers(rgw):
    r = chat(rgw, {**CHAT, "model": "slow"}, headers={"x-mock-latency-ms": "3000", "x-mock-fault-attempts": "1"})
    assert r.status_code == 200 and r.headers["x-litellm-attempted-retries"] == "1"
    assert record_of(rgw, r)["status"] == 200


def test_a_deployment_that_never_answers_in_time_is_litellms_408(rgw):
    t0 = time.monotonic()
    r = chat(rgw, {**CHAT, "model": "slow", "num_retries": 1}, headers={"x-mock-latency-ms": "5000"})
    elapsed = time.monotonic() - t0
    assert r.status_code == 408, r.text
    error = r.json()["error"]
    assert error["type"] == "timeout_error" and "in time" in error["message"]
    assert 1.1 <= elapsed < 3, f"two attempts of 0.6 s each, took {elapsed}"
    rec = record_of(rgw, r)
    assert (rec["status"], rec["cost_usd"]) == (408, 0), rec
    # Anthropic's clients get Anthropic's shape.
    r = httpx.post(rgw.url + "/v1/messages", headers={"x-api-key": rgw.keys["retry"], "x-mock-latency-ms": "5000"},
                   json={"model": "slow", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}],
                         "timeout": 0.3}, timeout=30)
    assert r.status_code == 408 and r.json()["type"] == "error", r.text


def test_a_requests_own_timeout_applies(rgw):
    r = chat(rgw, {**CHAT, "timeout": 0.3, "num_retries": 0}, headers={"x-mock-latency-ms": "2000"})
    assert r.status_code == 408


def test_stream_timeout_is_the_time_to_first_byte_not_the_streams_length(rgw):
    body = {**CHAT, "model": "slow", "stream": True, "num_retries": 0}
    r = chat(rgw, body, headers={"x-mock-latency-ms": "2000"})
    assert r.status_code == 408
    # Chunks 0.4 s apart for ~2.4 s in all: four times the stream_timeout, never cut.
    r = chat(rgw, body, headers={"x-mock-chunk-delay-ms": "400", "x-mock-completion-tokens": "5"})
    assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
    rec = record_of(rgw, r)
    assert (rec["completion_tokens"], rec["outcome"]) == (5, "completed")


def test_a_stream_that_stalls_longer_than_its_stream_timeout_is_cut_and_billed_for_what_came(rgw):
    """LiteLLM's stream_timeout is its HTTP client's read timeout: a gap between chunks longer
    than it ends the stream. Envoy's router cuts it (the route the filter picks for the
    deployment's timeout has that per_try_idle_timeout); the client keeps the chunks it got."""
    body = {**CHAT, "model": "slow", "stream": True, "num_retries": 0}
    headers = {"x-mock-completion-tokens": "6", "x-mock-stall-after": "3", "x-mock-stall-ms": "3000"}
    t0 = time.monotonic()
    got = b""
    with pytest.raises(httpx.HTTPError):
        with httpx.stream("POST", rgw.url + "/v1/chat/completions", json=body, timeout=10,
                          headers={"authorization": f"Bearer {rgw.keys['retry']}", **headers}) as r:
            assert r.status_code == 200
            request_id = r.headers["x-request-id"]
            for chunk in r.iter_bytes():
                got += chunk
    elapsed = time.monotonic() - t0
    # Cut 0.6 s into the stall, not after the provider's 3 s: three events came, no [DONE].
    assert 0.5 <= elapsed < 2.5, elapsed
    assert got.count(b"data: ") == 3 and b"[DONE]" not in got, got
    rgw.wait_for(lambda recs: any(rec["request_id"] == request_id for rec in recs))
    rec = next(rec for rec in rgw.records() if rec["request_id"] == request_id)
    assert (rec["status"], rec["outcome"], rec["streamed"]) == (200, "truncated", True)
    assert 0 < rec["completion_tokens"] < 6 and rec["cost_usd"] > 0


def test_a_streams_own_stream_timeout_replaces_the_deployments(rgw):
    """A request's own `stream_timeout` comes first (LiteLLM's order: then the deployment's, then
    the request's `timeout`): it bounds the first byte, and the deployment's 0.6 s gap timeout
    does not apply, so the stall above passes. Its `timeout` alone does not replace the
    deployment's stream_timeout."""
    headers = {"x-mock-completion-tokens": "4", "x-mock-stall-after": "2", "x-mock-stall-ms": "1000"}
    body = {**CHAT, "model": "slow", "stream": True, "num_retries": 0, "stream_timeout": 5}
    r = chat(rgw, body, headers=headers)
    assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
    body = {**CHAT, "model": "slow", "stream": True, "num_retries": 0, "timeout": 5}
    with pytest.raises(httpx.HTTPError):
        with httpx.stream("POST", rgw.url + "/v1/chat/completions", json=body, timeout=10,
                          headers={"authorization": f"Bearer {rgw.keys['retry']}", **headers}) as r:
            for _ in r.iter_bytes():
                pass


def test_a_stream_is_retried_before_its_first_byte(rgw):
    r = chat(rgw, {**CHAT, "stream": True}, headers={"x-mock-status": "502", "x-mock-fault-attempts": "1"})
    assert r.status_code == 200 and "data: [DONE]" in r.text
    assert r.headers["x-litellm-attempted-retries"] == "1"
    rec = record_of(rgw, r)
    assert (rec["status"], rec["outcome"], rec["streamed"]) == (200, "completed", True)


def test_the_openai_sdk_with_retries_off_sees_the_gateways(rgw):
    client = openai.OpenAI(base_url=rgw.url + "/v1", api_key=rgw.keys["retry"], max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="flaky", messages=[{"role": "user", "content": "hi"}], extra_body={"num_retries": 1},
        extra_headers={"x-mock-status": "429", "x-mock-fault-attempts": "1"})
    assert raw.headers["x-litellm-attempted-retries"] == "1"
    assert raw.parse().choices[0].message.content


def test_config_check_refuses_retry_settings_envoy_cannot_apply(rgw, tmp_path):
    cfg = json.loads(rgw.config_path.read_text())
    cfg["router_settings"]["retry_policy"] = {"RateLimitErrorRetries": 5, "Typo": 1}
    cfg["model_list"][0]["litellm_params"]["timeout"] = -1
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(cfg))
    r = rgw.cli("config", "check", "-c", str(path), check=False)
    assert r.returncode == 1
    for needle in ["RateLimitErrorRetries is 5 but InternalServerErrorRetries is 2",
                   "retry_policy.Typo: not an error class", "litellm_params.timeout: must be a number of seconds"]:
        assert needle in r.stderr, r.stderr


def test_many_requests_retried_at_once_are_all_retried(rgw):
    """Envoy lets 3 retries run at once to a cluster by default; Sluice's clusters allow as many
    retries as requests, so a burst of transient failures is retried, not passed on."""
    from concurrent.futures import ThreadPoolExecutor

    def one(_):
        return chat(rgw, headers={"x-mock-status": "503", "x-mock-fault-attempts": "1", "x-mock-latency-ms": "300"})

    with ThreadPoolExecutor(12) as pool:
        statuses = [r.status_code for r in pool.map(one, range(12))]
    assert statuses == [200] * 12, statuses


def test_in_xds_mode_the_control_planes_retry_settings_reach_the_envoys(tmp_path):
    from test_xds import Fleet

    fleet = Fleet(tmp_path)
    try:
        config = json.loads(fleet.config_path.read_text())
        config["router_settings"] = {"num_retries": 1, "timeout": 0.5}
        fleet.config_path.write_text(json.dumps(config))
        fleet.start_control_plane()
        envoy = fleet.start_envoy("edge-1")
        key = {"Authorization": f"Bearer {fleet.master_key}"}
        url = f"{envoy.url}/v1/chat/completions"
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
        r = httpx.post(url, json=body, headers={**key, "x-mock-status": "500", "x-mock-fault-attempts": "1"}, timeout=30)
        assert r.status_code == 200 and r.headers["x-litellm-attempted-retries"] == "1", r.text
        # The gateway's timeout, per attempt (xDS mode's route alone would wait 600 s).
        t0 = time.monotonic()
        r = httpx.post(url, json=body, headers={**key, "x-mock-latency-ms": "5000"}, timeout=30)
        assert r.status_code == 408 and 0.9 <= time.monotonic() - t0 < 3
    finally:
        fleet.stop()


def test_a_dead_deployment_cools_down_and_its_group_keeps_answering(rgw):
    """Of a group's two deployments one is down: after it failed (each of the router's attempts
    counting) it is out of rotation on every worker for cooldown_time, then tried again."""
    statuses = [chat(rgw, {**CHAT, "model": "pair"}).status_code for _ in range(24)]
    assert statuses.count(200) >= 22, statuses
    time.sleep(1.6)  # cooldown_time 1.5 s
    statuses = [chat(rgw, {**CHAT, "model": "pair"}).status_code for _ in range(24)]
    assert 1 <= statuses.count(503) <= 2, f"back in rotation, then cooled again: {statuses}"


def test_a_group_with_every_deployment_cooling_down_says_so_at_once(rgw):
    seen = []
    for _ in range(6):
        r = chat(rgw, {**CHAT, "model": "dead-pair"})
        seen.append(r.status_code)
        if r.status_code == 503 and r.json()["error"]["code"] == "no_healthy_deployment":
            break
    else:
        raise AssertionError(f"never refused as cooling down: {seen}")
    error = r.json()["error"]
    assert "dead-pair" in error["message"] and int(r.headers["retry-after"]) >= 1
    time.sleep(0.3)  # every worker has re-read the records by now
    t0 = time.monotonic()
    assert chat(rgw, {**CHAT, "model": "dead-pair"}).json()["error"]["code"] == "no_healthy_deployment"
    assert time.monotonic() - t0 < 0.5, "answered by the gateway, no attempt upstream"


def test_order_sends_everything_to_the_first_until_it_cools_down(rgw):
    first = [chat(rgw, {**CHAT, "model": "ordered"}) for _ in range(6)]
    assert all(r.status_code == 200 for r in first)
    recs = [record_of(rgw, r)["deployment"] for r in first]
    assert recs == ["ordered-1"] * 6, recs
    # Order 1 fails twice (more than allowed_fails 1; retries off, so both are its).
    for _ in range(2):
        r = chat(rgw, {**CHAT, "model": "ordered", "num_retries": 0}, headers={"x-mock-status": "500"})
        assert r.status_code == 500
    time.sleep(0.3)  # every worker has re-read the records by now
    then = [chat(rgw, {**CHAT, "model": "ordered"}) for _ in range(4)]
    assert [record_of(rgw, r)["deployment"] for r in then] == ["ordered-2"] * 4


def test_a_retry_goes_to_another_deployment_of_the_group(rgw):
    """LiteLLM's retries move to another deployment of the group: the first attempt fails (the
    mock fails a request's first attempt only), the retry is the other deployment's, through
    Envoy's internal redirect; billed once, there."""
    r = chat(rgw, {**CHAT, "model": "twins", "num_retries": 1},
             headers={"x-mock-status": "500", "x-mock-fault-attempts": "1"})
    assert r.status_code == 200, r.text
    assert r.headers["x-litellm-attempted-retries"] == "1"
    attempts = attempts_of(rgw, r.headers["x-request-id"])
    assert [a["status"] for a in attempts] == [500, 200], attempts
    assert attempts[0]["model"] != attempts[1]["model"], "two deployments"
    record = record_of(rgw, r)
    assert record["deployment"] == {"gpt-4o-mini": "twin-1", "gpt-4o": "twin-2"}[attempts[1]["model"]]
    assert record["status"] == 200 and record["cost_usd"] > 0
