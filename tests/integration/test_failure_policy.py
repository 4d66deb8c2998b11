"""A trapping filter fails closed; under FAIL_RELOAD the gateway recovers (DESIGN.md §7).

Sluice's own filter has no trap path (no panics, no unwraps), so these tests start Envoy from
Sluice's own generated bootstrap (`sluice envoy-config`) with the wasm module swapped for the
no-op test filter (`tests/noop-filter`, `SLUICE_NOOP_WASM`). Under Sluice's root id it executes
wasm's `unreachable` instruction — a real V8 trap — on a request carrying `x-sluice-test-trap`;
otherwise it lets the request through (the client names the cluster in `x-sluice-cluster`, the
header Sluice's filter would set, and the provider key in `x-bench-provider-key`), so a normal
request provably reaches the mock provider as long as the VM is alive.

A trap fails the VM of the worker that ran it; every other worker keeps its own VM (measured
with two workers: the trapping worker answers 503, the other 200). Envoy runs one worker here
so that "the next request" is a request to the failed VM.
"""

import json
import os
import re
import time
import zlib

import httpx
import pytest

from conftest import Gateway, model_entry, wasm_only
from wasm_stats import LOG_KEY, vm_failures

pytestmark = wasm_only("the VM failure policy (a native module has no VM to fail or reload)")

TRAP = {"x-sluice-test-trap": "1"}
# What Envoy logs when the module executes `unreachable` in V8.
TRAP_LOG = "proxy_on_request_headers failed: Uncaught RuntimeError: unreachable"
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}


class TrapGateway(Gateway):
    """Sluice's generated standalone bootstrap, running the trap module instead of Sluice."""

    def __init__(self, workdir, policy):
        super().__init__(workdir)
        self.policy = policy
        self.trap_wasm = os.environ["SLUICE_NOOP_WASM"]

    def write_config(self):
        general = {"master_key": "os.environ/SLUICE_MASTER_KEY"}
        if self.policy is not None:
            general["sluice_failure_policy"] = self.policy
        config = {
            "model_list": [model_entry("gpt-4o", "openai/gpt-4o", f"{self.mock_url}/v1", "MOCK_OPENAI_KEY", "gpt-4o-a")],
            "general_settings": general,
        }
        self.config_path = self.workdir / "config.yaml"
        self.config_path.write_text(json.dumps(config))

    def start_envoy(self):
        super().start_envoy(wasm=self.trap_wasm, concurrency=1)
        text = self.envoy_yaml.read_text()
        expected = {None: "FAIL_CLOSED", "fail_reload": "FAIL_RELOAD"}[self.policy]
        assert f"failure_policy: {expected}" in text
        assert self.trap_wasm in text, "the bootstrap does not run the trap module"
        self.cluster = re.search(r"cluster_name: (sluice_\S+)", text).group(1)

    def send(self, trap=False):
        headers = {"x-sluice-cluster": self.cluster,
                   "x-bench-provider-key": f"Bearer {self.provider_keys['MOCK_OPENAI_KEY']}",
                   **(TRAP if trap else {})}
        return httpx.post(f"{self.url}/v1/chat/completions", json=CHAT, headers=headers, timeout=10)

    def upstream_calls(self):
        """Every request the mock provider received, whatever it answered."""
        return sum(self.mock_stats()["by_path"].values())


def start(gw):
    gw.start_mock()
    gw.write_config()
    gw.start_envoy()


def factory(new_gateway, start_gateway):
    """A fixture body: `make(policy)` makes a gateway and starts it; all stop after the test (a
    start that failed halfway too)."""
    started = []

    def make(policy):
        gw = new_gateway(policy)
        started.append(gw)
        start_gateway(gw)
        return gw

    yield make
    for gw in started:
        gw.stop()


@pytest.fixture
def gateway_factory(tmp_path):
    yield from factory(lambda policy: TrapGateway(tmp_path, policy), start)


def assert_failed_closed(response):
    """What a client sees from a failed VM: a 503 in OpenAI's error shape, nothing forwarded."""
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == "gateway_filter_failed"
    assert error["type"] == "service_unavailable"
    assert "not forwarded" in error["message"]


def trap(gw):
    """Runs the trap and checks it was a real wasm trap that reached no upstream, and that
    wasm_stats (the other tests' "no VM failed" check) counts it."""
    before = gw.upstream_calls()
    traps = gw.log_path.read_text().count(TRAP_LOG)
    failures = vm_failures(gw)[LOG_KEY]
    assert_failed_closed(gw.send(trap=True))
    assert gw.upstream_calls() == before
    deadline = time.time() + 5  # Envoy's log is written by its own thread
    while gw.log_path.read_text().count(TRAP_LOG) == traps and time.time() < deadline:
        time.sleep(0.05)
    assert gw.log_path.read_text().count(TRAP_LOG) == traps + 1
    assert vm_failures(gw)[LOG_KEY] == failures + 1


def test_a_trap_fails_closed_by_default(gateway_factory):
    gw = gateway_factory(None)  # no sluice_failure_policy: the default
    # The stand-in filter lets a normal request through to the provider while its VM lives.
    assert gw.send().status_code == 200
    assert gw.upstream_calls() == 1
    assert not any(vm_failures(gw).values())

    trap(gw)

    # From now on the worker's VM is dead: every request is refused, none reaches the provider,
    # however long we keep asking (no reload under FAIL_CLOSED).
    deadline = time.time() + 3
    refused = 0
    while time.time() < deadline:
        assert_failed_closed(gw.send())
        refused += 1
        time.sleep(0.05)
    assert refused >= 10
    assert gw.upstream_calls() == 1
    assert gw.mock_stats()["served"] == 1
    # Under FAIL_CLOSED Envoy counts the failure nowhere, however many requests it refuses:
    # every wasm counter stays 0 (no reload), and its log line is the only record of the trap
    # (which is why wasm_stats reads the log too).
    assert {name: n for name, n in vm_failures(gw).items() if n} == {LOG_KEY: 1}
    # Envoy itself is up and still reports ready: failing closed is per request, not a crash.
    assert gw.proc.poll() is None
    assert httpx.get(f"{gw.admin}/ready", timeout=5).status_code == 200


def test_fail_reload_recovers_after_a_trap(gateway_factory):
    gw = gateway_factory("fail_reload")
    assert gw.send().status_code == 200
    assert gw.upstream_calls() == 1
    assert not any(vm_failures(gw).values())

    refused_in_all = 0
    for round_ in range(2):
        trap(gw)
        before = gw.upstream_calls()
        # Envoy makes a new VM for a request once its reload backoff has passed (about 1 s
        # here: `vm_reload_backoff` counts the requests refused meanwhile); until then requests
        # still fail closed. Poll until one is served.
        served = refused = 0
        deadline = time.time() + 30
        while time.time() < deadline:
            response = gw.send()
            if response.status_code == 200:
                served += 1
                break
            assert_failed_closed(response)
            refused += 1
            time.sleep(0.05)
        assert served == 1, f"round {round_}: no recovery within 30 s ({refused} requests refused)"
        # Exactly the served request reached the provider; the refused ones did not.
        assert gw.upstream_calls() == before + 1
        # Under FAIL_RELOAD the counters record the failure too: each request refused while
        # the VM waits for its reload is one `vm_reload_backoff`, each recovery one
        # `vm_reload_success`; the log has one failed call per trap.
        refused_in_all += refused
        failures = vm_failures(gw)
        assert failures["wasm.sluice.vm_reload_backoff"] == refused_in_all
        assert failures["wasm.sluice.vm_reload_success"] == round_ + 1
        assert failures[LOG_KEY] == round_ + 1

    # The reloaded VM keeps serving.
    for _ in range(5):
        assert gw.send().status_code == 200


def test_in_xds_mode_the_policy_comes_from_the_control_planes_config(tmp_path):
    """`sluice serve` sends the filter with config.yaml's `sluice_failure_policy` over ECDS, so
    an Envoy configured over xDS recovers from a trap under fail_reload, as a standalone one."""
    from test_xds import Fleet, wait_until

    fleet = Fleet(tmp_path)
    try:
        config = json.loads(fleet.config_path.read_text())
        config["general_settings"]["sluice_failure_policy"] = "fail_reload"
        fleet.config_path.write_text(json.dumps(config))
        fleet.start_control_plane(wasm=os.environ["SLUICE_NOOP_WASM"])  # the filter Envoys get over ECDS
        fleet.envoy_concurrency = 1  # "the next request" goes to the VM that trapped
        envoy = fleet.start_envoy("edge-trap", wait=False)
        cluster = "sluice_gpt_4o_a_" + format(zlib.crc32(b"gpt-4o-a"), "08x")

        def send(trap=False):
            headers = {"x-sluice-cluster": cluster, **(TRAP if trap else {})}
            return httpx.post(f"{envoy.url}/v1/chat/completions", json=CHAT, headers=headers, timeout=10)

        # The stand-in filter forwards; the provider credential comes from SDS, so a 200 means the
        # whole xDS config arrived.
        wait_until(lambda: send().status_code == 200, timeout=30, what="the Envoy serving over xDS")
        dump = httpx.get(f"{envoy.admin}/config_dump", timeout=5).text
        assert '"failure_policy": "FAIL_RELOAD"' in dump
        for _ in range(2):
            assert_failed_closed(send(trap=True))
            wait_until(lambda: send().status_code == 200, timeout=30, what="recovery after a trap")
        # One worker: each recovery was a reload of the VM that trapped.
        assert int(envoy.stat("wasm.sluice.vm_reload_success") or 0) >= 2
    finally:
        fleet.stop()


class TwoWorkerGateway(Gateway):
    """Sluice's own filter, built with the `test-trap` feature, on two workers: the probes must
    tell when one of them cannot serve."""

    def __init__(self, workdir, policy):
        super().__init__(workdir)
        self.policy = policy

    def write_config(self):
        super().write_config()
        if self.policy is not None:
            config = json.loads(self.config_path.read_text())
            config["general_settings"]["sluice_failure_policy"] = self.policy
            self.config_path.write_text(json.dumps(config))

    def probe(self, path="/health/readiness"):
        """One probe on a new connection (each lands on the worker the kernel picks), no key."""
        with httpx.Client() as client:
            return client.get(f"{self.url}{path}", timeout=5)


def start_two_workers(gw):
    gw.start_mock()
    gw.write_config()
    gw.start_envoy(wasm=os.environ["SLUICE_TRAP_WASM"], concurrency=2)
    # Both workers tick (every 250 ms) soon after they are configured, and so does the
    # filter's root context on Envoy's main thread: three.
    deadline = time.time() + 10
    while time.time() < deadline and gw.probe().json().get("workers_running") != 3:
        time.sleep(0.1)


@pytest.fixture
def two_workers(tmp_path):
    yield from factory(lambda policy: TwoWorkerGateway(tmp_path, policy), start_two_workers)


def trap_one_worker(gw):
    with httpx.Client() as client:
        response = client.post(f"{gw.url}/v1/chat/completions", json=CHAT, timeout=10,
                               headers={**gw.auth("sdk"), **TRAP})
    assert_failed_closed(response)
    deadline = time.time() + 5
    while TRAP_LOG not in gw.log_path.read_text():
        assert time.time() < deadline, "no trap in Envoy's log"
        time.sleep(0.05)


def test_readiness_is_false_while_a_worker_cannot_serve(two_workers):
    gw = two_workers(None)
    # Ready: every probe, whichever worker answers it, says both serve. No key needed.
    for _ in range(10):
        r = gw.probe()
        assert r.status_code == 200, r.text
        assert r.json() == {"status": "healthy", "workers_running": 3, "workers_failed": 0}
    alive = gw.probe("/health/liveliness")
    assert (alive.status_code, alive.json()) == (200, "I'm alive!")
    assert gw.probe("/health/liveness").status_code == 200

    trap_one_worker(gw)
    time.sleep(3.5)  # the failed worker's last heartbeat goes stale (3 s)

    # Now no probe says ready: the live worker answers 503 and why; the failed one's VM
    # answers nothing, so Envoy's fail-closed 503 does.
    answered_by = set()
    for _ in range(30):
        r = gw.probe()
        assert r.status_code == 503, r.text
        body = r.json()
        if "error" in body:
            assert body["error"]["code"] == "gateway_filter_failed"
            answered_by.add("failed worker")
        else:
            assert body == {"status": "unhealthy", "workers_running": 2, "workers_failed": 1}
            answered_by.add("live worker")
    assert answered_by == {"failed worker", "live worker"}, answered_by
    # Liveness is not readiness: the live worker still says it is alive.
    assert any(gw.probe("/health/liveliness").status_code == 200 for _ in range(20))
    assert not any(vm_failures(gw).get(k) for k in vm_failures(gw) if k != LOG_KEY)


def test_readiness_comes_back_when_envoy_reloads_the_failed_worker(two_workers):
    gw = two_workers("fail_reload")
    assert gw.probe().status_code == 200
    trap_one_worker(gw)
    # Probes reach the failed worker too, which makes Envoy reload its VM (after its backoff);
    # the new VM ticks and takes the old one's place.
    deadline, streak = time.time() + 30, 0
    while streak < 10:
        assert time.time() < deadline, "readiness never came back"
        r = gw.probe()
        streak = streak + 1 if r.status_code == 200 else 0
        time.sleep(0.1)
    # Once the failed VM's heartbeat is stale, it is accounted for by its replacement.
    time.sleep(3.5)
    for _ in range(10):
        r = gw.probe()
        assert r.json() == {"status": "healthy", "workers_running": 3, "workers_failed": 0}, r.text
    assert vm_failures(gw)["wasm.sluice.vm_reload_success"] >= 1


def test_in_xds_mode_readiness_also_sees_a_failed_worker(tmp_path):
    """The same probe on an Envoy configured over xDS (the filter from ECDS, fail_closed)."""
    from test_xds import Fleet, wait_until

    fleet = Fleet(tmp_path)
    try:
        fleet.start_control_plane(wasm=os.environ["SLUICE_TRAP_WASM"])
        fleet.envoy_concurrency = 2
        envoy = fleet.start_envoy("edge-ready")

        def probe():
            with httpx.Client() as client:
                return client.get(f"{envoy.url}/health/readiness", timeout=5)

        wait_until(lambda: probe().json().get("workers_running") == 3, timeout=30, what="every worker ticking")
        assert all(probe().status_code == 200 for _ in range(10))
        with httpx.Client() as client:
            assert_failed_closed(client.post(f"{envoy.url}/v1/chat/completions", json=CHAT, headers=TRAP, timeout=10))
        time.sleep(3.5)
        answers = [probe() for _ in range(20)]
        assert all(r.status_code == 503 for r in answers), [r.text for r in answers]
        assert any(r.json().get("workers_failed") == 1 for r in answers)
    finally:
        fleet.stop()
