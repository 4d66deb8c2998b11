"""LiteLLM's `GET /health` on the gateway's port: with the master key, every deployment is asked
the smallest question its mode takes, through its own Envoy cluster with its own credential
(translated for Anthropic, Gemini and Bedrock), and the answer is LiteLLM's report. Probes are
the gateway's calls: no usage record, no limit spent."""
import json
import time

import httpx
import pytest

from conftest import Gateway, filter_stat_name, free_port, model_entry


def health(gw, query="", key=None):
    headers = {"Authorization": f"Bearer {key or gw.master_key}"}
    return httpx.get(f"{gw.url}/health{query}", headers=headers, timeout=90)


def test_health_probes_every_deployment_and_reports_litellms_shape(gw):
    records_before = len(gw.records())
    mock_before = gw.mock_stats()
    r = health(gw)
    assert r.status_code == 200, r.text
    report = r.json()
    healthy = {e["model_id"]: e for e in report["healthy_endpoints"]}
    unhealthy = {e["model_id"]: e for e in report["unhealthy_endpoints"]}
    assert report["healthy_count"] == len(healthy) and report["unhealthy_count"] == len(unhealthy)
    # Nothing listens where the dead deployments point; every other one answered its probe
    # with the provider credential its cluster carries (the mock refuses any other).
    assert set(unhealthy) == {"dead", "dead-claude"}, unhealthy
    assert all(e["error"] for e in unhealthy.values())
    assert {"gpt-4o-a", "gpt-4o-b", "mini", "claude", "claude-lenient", "azure-east", "gemini", "bedrock",
            "gemini-embed", "titan-embed", "cohere-embed"} <= set(healthy), healthy
    assert "wild" not in healthy and not any(e["model_name"] == "wild/*" for e in report["unhealthy_endpoints"])
    entry = healthy["claude"]
    assert entry["model"] == "anthropic/claude-3-5-sonnet-20241022"
    assert entry["custom_llm_provider"] == "anthropic"
    assert entry["api_base"] == gw.mock_url
    assert healthy["gemini-embed"]["mode"] == "embedding"
    # No credential in the report.
    for secret in [gw.master_key, *gw.provider_keys.values()]:
        assert secret not in r.text
    # The probes reached the provider; none of them is a client's request; each is counted.
    assert gw.mock_stats()["served"] > mock_before["served"]
    assert len(gw.records()) == records_before
    sent = len(healthy) + len(unhealthy)
    stat = filter_stat_name("sluice.health_probes")
    def probes_counted():
        text = httpx.get(f"{gw.admin}/stats?filter=^{stat}$", timeout=5).text
        return int(text.split(": ")[1]) if ": " in text else 0
    deadline = time.time() + 5
    while probes_counted() < sent:
        assert time.time() < deadline, f"{stat}: {probes_counted()} of {sent}"
        time.sleep(0.1)


def test_health_narrows_to_a_model_or_a_deployment(gw):
    report = health(gw, "?model=gpt-4o").json()
    assert sorted(e["model_id"] for e in report["healthy_endpoints"]) == ["gpt-4o-a", "gpt-4o-b"]
    assert report["unhealthy_count"] == 0
    report = health(gw, "?model_id=dead").json()
    assert (report["healthy_count"], report["unhealthy_count"]) == (0, 1)
    assert report["unhealthy_endpoints"][0]["model"] == "openai/dead"


def test_health_is_for_the_master_key_only(gw):
    r = health(gw, key=gw.keys["open"])
    assert r.status_code == 403 and r.json()["error"]["code"] == "route_not_allowed"
    r = httpx.get(f"{gw.url}/health", timeout=10)
    assert r.status_code == 401
    r = httpx.post(f"{gw.url}/health", headers={"Authorization": f"Bearer {gw.master_key}"}, timeout=10)
    assert r.status_code == 405
    # The probes Kubernetes calls need no key and stay cheap.
    assert httpx.get(f"{gw.url}/health/liveliness", timeout=10).status_code == 200


class BackgroundGateway(Gateway):
    """A group `pool` of two deployments, one of them down, with LiteLLM's background health
    checks every 30 seconds."""

    def write_config(self):
        dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens here
        live = model_entry("gpt-4o-mini", "openai/gpt-4o-mini", f"{self.mock_url}/v1", "MOCK_OPENAI_KEY", "live")
        down = model_entry("gpt-4o-mini", "openai/gpt-4o-mini", dead, "MOCK_OPENAI_KEY", "down")
        for entry in (live, down):
            entry["model_name"] = "pool"
        out = json.loads(self.cli("key", "new", "--alias", "bg", "--json").stdout)
        self.keys["bg"] = out["key"]
        self.key_ids["bg"] = out["key_hash"].removeprefix("sha256:")[:16]
        config = {"model_list": [live, down], "keys": [out["entry"]],
                  "general_settings": {"master_key": "os.environ/SLUICE_MASTER_KEY",
                                       "background_health_checks": True, "health_check_interval": 30}}
        self.config_path = self.workdir / "config.yaml"
        self.config_path.write_text(json.dumps(config))


@pytest.fixture
def background(tmp_path):
    yield from BackgroundGateway(tmp_path).serve()


def test_background_checks_take_a_dead_deployment_out_and_health_answers_from_them(background):
    gw = background
    # The first round runs as Envoy starts (an interval of 30 s: the next one is not due in
    # this test): it probes both deployments once and finds the dead one.
    deadline = time.time() + 15
    while "background health check" not in gw.log_path.read_text():
        assert time.time() < deadline, "no background round"
        time.sleep(0.1)
    assert "background health check: 1 of 2 deployments failed (down)" in gw.log_path.read_text()
    served = gw.mock_stats()["served"]
    assert served == 1, "one probe of the live deployment, by one worker of the two"
    # /health answers from the round: no probe of its own.
    report = health(gw).json()
    assert report["unhealthy_endpoints"][0]["model_id"] == "down"
    assert report["healthy_endpoints"][0]["model_id"] == "live"
    assert gw.mock_stats()["served"] == served
    # Every request goes to the live deployment: the dead one is out of rotation until the next
    # round (without the checks, simple-shuffle would send it about half of them, each a 503).
    for _ in range(20):
        r = gw.post("/v1/chat/completions", "bg", {"model": "pool", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200, r.text
    assert {rec["deployment"] for rec in gw.wait_records("bg", 20)} == {"live"}
    time.sleep(2)
    assert gw.mock_stats()["served"] == served + 20, "no other round before the interval"
    for secret in gw.provider_keys.values():
        assert secret not in gw.log_path.read_text()
