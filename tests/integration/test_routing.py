"""LiteLLM's routing strategies within a model group of several deployments: least-busy,
latency-based-routing and cost-based-routing (simple-shuffle is every other test's). A strategy
is the gateway's (router_settings), so each test starts its own gateway; the usage records say
which deployment served each request."""
import json
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import Gateway, model_entry

CHAT = {"model": "pool", "messages": [{"role": "user", "content": "hi"}]}


class StrategyGateway(Gateway):
    """A gateway whose group `pool` has two deployments, `a` and `b`, each on a mock of its own
    answering after `latency_ms[name]`, routed by `strategy`."""

    def __init__(self, workdir, strategy, args=None, prices=None, latency_ms=None, rpm=None):
        super().__init__(workdir)
        self.strategy, self.args, self.prices = strategy, args, prices or {}
        self.latency_ms, self.rpm = latency_ms or {}, rpm or {}

    def deployment_mock(self, latency_ms):
        mock = subprocess.Popen([self.env_bin["SLUICE_MOCK"], "--listen", "127.0.0.1:0", "--openai-key",
                                 self.provider_keys["MOCK_OPENAI_KEY"], "--latency-ms", str(latency_ms)],
                                stdout=subprocess.PIPE, text=True)
        self.procs.append(mock)
        return "http://127.0.0.1:" + re.search(r"listening on 127\.0\.0\.1:(\d+)", mock.stdout.readline()).group(1)

    def write_config(self):
        entries = []
        for name in ("a", "b"):
            base = self.deployment_mock(self.latency_ms.get(name, 0))
            entry = model_entry("gpt-4o-mini", "openai/gpt-4o-mini", f"{base}/v1", "MOCK_OPENAI_KEY", name)
            entry["model_name"] = "pool"
            if name in self.prices:
                entry["model_info"]["input_cost_per_token"] = self.prices[name]
            if name in self.rpm:
                entry["litellm_params"]["rpm"] = self.rpm[name]
            entries.append(entry)
        out = json.loads(self.cli("key", "new", "--alias", "routing", "--json").stdout)
        self.keys["routing"] = out["key"]
        router = {"routing_strategy": self.strategy}
        if self.args:
            router["routing_strategy_args"] = self.args
        config = {"model_list": entries, "router_settings": router,
                  "general_settings": {"master_key": "os.environ/SLUICE_MASTER_KEY"}, "keys": [out["entry"]]}
        self.config_path = self.workdir / "config.yaml"
        self.config_path.write_text(json.dumps(config))


@pytest.fixture
def start(tmp_path):
    gateways = []

    def start(strategy, **kw):
        g = StrategyGateway(tmp_path / str(len(gateways)), strategy, **kw)
        g.workdir.mkdir()
        gateways.append(g)
        g.write_config()
        g.start_envoy()
        return g

    yield start
    for g in gateways:
        g.stop()


def served_by(gw, responses):
    """Which deployment served each response, from the usage records."""
    ids = [r.headers["x-request-id"] for r in responses]
    recs = gw.wait_for(lambda recs: {r["request_id"] for r in recs} >= set(ids), timeout=15)
    by_id = {r["request_id"]: r["deployment"] for r in recs}
    return [by_id[i] for i in ids]


def test_cost_based_routing_sends_everything_to_the_cheaper_deployment(start):
    gw = start("cost-based-routing", prices={"a": 5e-7, "b": 1e-7})
    responses = [gw.post("/v1/chat/completions", "routing", CHAT) for _ in range(12)]
    assert all(r.status_code == 200 for r in responses)
    assert served_by(gw, responses) == ["b"] * 12


def test_latency_based_routing_prefers_the_faster_deployment(start):
    """A 20 ms and a 200 ms deployment: each is measured, then the faster takes the traffic
    (LiteLLM's lowest latency; no buffer)."""
    gw = start("latency-based-routing", args={"ttl": 60}, latency_ms={"a": 20, "b": 200})
    responses = [gw.post("/v1/chat/completions", "routing", CHAT) for _ in range(30)]
    assert all(r.status_code == 200 for r in responses)
    served = served_by(gw, responses)
    # Each Envoy worker shares the measurements; the slow one is tried a few times at most.
    assert served.count("b") <= 4 and served[-10:] == ["a"] * 10, served


def test_least_busy_spreads_concurrent_slow_requests(start):
    gw = start("least-busy")
    slow = {"x-mock-latency-ms": "800"}
    with ThreadPoolExecutor(4) as pool:
        futures = []
        for _ in range(4):
            futures.append(pool.submit(gw.post, "/v1/chat/completions", "routing", CHAT, headers=slow))
            time.sleep(0.1)  # each starts after the previous one is counted in flight
        responses = [f.result() for f in futures]
    assert all(r.status_code == 200 for r in responses)
    served = served_by(gw, responses)
    assert sorted(served) == ["a", "a", "b", "b"], served


def test_usage_based_routing_v2_keeps_each_deployment_under_its_rpm(start):
    """Each deployment's rpm is a limit across the Envoy's workers: the least-used deployment
    with room serves; with none left the group answers 429, until the next minute."""
    gw = start("usage-based-routing-v2", rpm={"a": 3, "b": 2})
    # Close to a minute's end the limits would reset mid-test.
    if time.time() % 60 > 50:
        time.sleep(61 - time.time() % 60)
    responses = [gw.post("/v1/chat/completions", "routing", CHAT) for _ in range(5)]
    assert [r.status_code for r in responses] == [200] * 5, [r.text for r in responses]
    assert sorted(served_by(gw, responses)) == ["a", "a", "a", "b", "b"]
    r = gw.post("/v1/chat/completions", "routing", CHAT)
    assert r.status_code == 429, r.text
    error = r.json()["error"]
    assert error["code"] == "deployments_at_capacity" and "pool" in error["message"]
    assert 1 <= int(r.headers["retry-after"]) <= 60
