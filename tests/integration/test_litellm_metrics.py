"""LiteLLM's Prometheus metrics on the control plane's /metrics, from the usage real Envoy traffic
reported (xDS mode): the names and labels LiteLLM's dashboards query, and figures that are the
spend logs' own."""
import json
import re
import time
from collections import defaultdict

import httpx
import pytest

from test_xds import CHAT, Fleet, create_key, wait_until

SAMPLE = re.compile(r'^(\w+)\{(.*)\} (\S+)$')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(fleet):
    """{family: [(labels, value)]} of the control plane's LiteLLM families."""
    out = defaultdict(list)
    for line in fleet.metrics().splitlines():
        m = SAMPLE.match(line)
        if m and m.group(1).startswith("litellm_"):
            out[m.group(1)].append((dict(LABEL.findall(m.group(2))), float(m.group(3))))
    return out


def total(samples, **labels):
    return sum(v for l, v in samples if all(l.get(k) == want for k, want in labels.items()))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    f = Fleet(tmp_path_factory.mktemp("litellm-metrics"))
    try:
        f.start_control_plane()
        yield f
    finally:
        f.stop()


@pytest.fixture(scope="module")
def traffic(fleet):
    """Three chats of one key for an end user, one of another key, and one the provider refuses
    with a 429: (key id, the other key's id)."""
    envoy = fleet.start_envoy("edge-metrics")
    key, key_id = create_key(fleet, "--alias", "metered", "--max-budget", "5", "--budget-duration", "1d")
    other, other_id = create_key(fleet, "--alias", "other")
    for _ in range(3):
        assert envoy.chat({**CHAT, "user": "cust-1"}, key=key).status_code == 200
    assert envoy.chat(CHAT, key=other).status_code == 200
    refused = httpx.post(f"{envoy.url}/v1/chat/completions", json=CHAT, timeout=30,
                         headers={"Authorization": f"Bearer {key}", "x-mock-status": "429"})
    assert refused.status_code == 429
    return key_id, other_id


def test_spend_tokens_and_requests_under_litellms_names_and_labels(fleet, traffic):
    key_id, other_id = traffic

    def logs(kid):
        r = httpx.get(f"http://127.0.0.1:{fleet.admin_port}/spend/logs", params={"api_key": kid}, timeout=10,
                      headers={"Authorization": f"Bearer {fleet.master_key}"})
        return r.json()

    rows = wait_until(lambda: len(r := logs(key_id)) == 4 and r, what="the key's four spend rows")
    wait_until(lambda: len(logs(other_id)) == 1, what="the other key's row")
    families = wait_until(lambda: (s := scrape(fleet)) and total(s["litellm_requests_metric_total"],
                                                                 hashed_api_key=key_id) == 4 and s,
                          what="the rows in the metrics")
    spend = families["litellm_spend_metric_total"]
    assert total(spend, hashed_api_key=key_id) == pytest.approx(sum(r["spend"] for r in rows), abs=1e-9)
    assert total(spend, api_key_alias="metered", end_user="cust-1", requested_model="gpt-4o") > 0
    assert total(spend, api_key_alias="other") == pytest.approx(logs(other_id)[0]["spend"], abs=1e-9)
    tokens = families["litellm_total_tokens_metric_total"]
    assert total(tokens, hashed_api_key=key_id) == sum(r["total_tokens"] for r in rows)
    assert total(families["litellm_input_tokens_metric_total"], hashed_api_key=key_id) == \
        sum(r["prompt_tokens"] for r in rows)
    # Requests by status as the client saw it, and the failure by LiteLLM's exception class.
    requests = families["litellm_proxy_total_requests_metric_total"]
    assert total(requests, hashed_api_key=key_id, status_code="200", route="/v1/chat/completions") == 3
    assert total(requests, hashed_api_key=key_id, status_code="429") == 1
    failed = families["litellm_proxy_failed_requests_metric_total"]
    assert total(failed, hashed_api_key=key_id, exception_status="429", exception_class="RateLimitError") == 1
    assert total(failed, hashed_api_key=other_id) == 0
    # Every sample of a family has LiteLLM's label set.
    for labels, _ in spend:
        assert {"end_user", "hashed_api_key", "api_key_alias", "model", "team", "team_alias", "user",
                "user_email", "requested_model", "model_id"} <= set(labels)
    # The key's budget, as LiteLLM's gauges show it: what is left of it, its max, its reset.
    gauges = scrape(fleet)
    assert total(gauges["litellm_api_key_max_budget_metric"], hashed_api_key=key_id, api_key_alias="metered") == 5
    assert total(gauges["litellm_remaining_api_key_budget_metric"], hashed_api_key=key_id) == \
        pytest.approx(5 - sum(r["spend"] for r in rows), abs=1e-9)
    assert 0 < total(gauges["litellm_api_key_budget_remaining_hours_metric"], hashed_api_key=key_id) <= 24
    assert total(gauges["litellm_api_key_max_budget_metric"], hashed_api_key=other_id) == 0, "no budget, no gauge"
    # A replayed batch adds nothing: the figures stay the spend logs' own.
    time.sleep(1.0)
    assert total(scrape(fleet)["litellm_requests_metric_total"], hashed_api_key=key_id) == 4
    assert "sluice_usage_metric_series_overflow_total 0" in fleet.metrics()


def test_the_grafana_dashboard_queries_only_metrics_a_scrape_has(fleet, traffic):
    """deploy/grafana/sluice.json parses, and every metric its panels query is on the control
    plane's /metrics after traffic."""
    wait_until(lambda: "litellm_proxy_failed_requests_metric_total{" in fleet.metrics(), what="the traffic's rows")
    import json
    from pathlib import Path
    dashboard = json.loads((Path(__file__).parents[2] / "deploy/grafana/sluice.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 8
    names = {n for e in exprs for n in re.findall(r"\b((?:litellm|sluice)_\w+)", e)}
    scraped = {m.group(1) for line in fleet.metrics().splitlines()
               if (m := re.match(r"^(\w+)(?:\{| )", line))}
    assert names and names <= scraped, f"queried but not exported: {sorted(names - scraped)}"
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"])


def test_cooldowns_on_any_envoy_are_counted_fleet_wide_under_litellms_name(fleet, traffic):
    """A deployment an Envoy takes out of rotation (more than allowed_fails failures in a
    minute) is counted by the control plane from the request's usage record, as LiteLLM's
    litellm_deployment_cooled_down with its deployment labels."""
    envoy = fleet.envoys[0]
    params = {"model": "openai/gpt-4o-mini", "api_base": f"{fleet.mock_url}/v1", "api_key": "os.environ/MOCK_OPENAI_KEY"}
    for i in (1, 2):
        fleet.cli("model", "create", "cooling", "--params", json.dumps(params),
                  "--info", json.dumps({"id": f"cooling-{i}", "input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}))
    body = {**CHAT, "model": "cooling"}
    wait_until(lambda: envoy.chat(body).status_code == 200, what="the new group served")
    # Every answer a 500: each deployment fails past allowed_fails (3) and cools down; then
    # the group has none left and the filter answers 503 itself.
    statuses = [httpx.post(f"{envoy.url}/v1/chat/completions", json=body, timeout=30,
                           headers={"Authorization": f"Bearer {fleet.master_key}", "x-mock-status": "500"}).status_code
                for _ in range(20)]
    assert 503 in statuses, statuses

    def cooled():
        samples = scrape(fleet)["litellm_deployment_cooled_down_total"]
        return {l["model_id"]: (l, v) for l, v in samples if l["model_id"].startswith("cooling-")}

    seen = wait_until(lambda: len(c := cooled()) == 2 and c, what="both cooldowns at the control plane")
    for model_id, (labels, value) in seen.items():
        assert value == 1, seen
        assert labels == {"litellm_model_name": "openai/gpt-4o-mini", "model_id": model_id,
                          "api_base": f"{fleet.mock_url}/v1", "api_provider": "openai",
                          "exception_status": "server_error"}
