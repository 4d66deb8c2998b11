"""xDS mode: a real control plane (`sluice serve`) configures real Envoys over ADS.

Each Envoy starts from `sluice envoy-config --xds` (the control plane's address and nothing
else); clusters, the Sluice filter's config and provider credentials arrive over xDS. The mock
provider refuses requests without its key, so a 200 proves the credential came through SDS.

The build follows SLUICE_FILTER_BUILD (conftest.py): natively the control plane runs with
`--envoy-native SLUICE_NATIVE` and the Envoys start from `envoy-config --xds … --native`. A test
that gives the control plane a wasm module of its own (`start_control_plane(wasm=…)`) runs the
wasm build whatever the setting, and is `wasm_only`.
"""

import json
import os
import random
import re
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from conftest import AWS_ACCESS_KEY_ID, NATIVE, cost, filter_stat_name, free_port, model_entry, stop_all

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello there"}]}


def wait_until(predicate, timeout=15.0, what="condition"):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except httpx.HTTPError as e:
            last = e
        time.sleep(0.05)
    raise AssertionError(f"{what} never held (last: {last!r})")


class Fleet:
    """A control plane, its mock provider and any number of Envoys configured over xDS."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        module = "SLUICE_NATIVE" if NATIVE else "SLUICE_WASM"
        self.bins = {k: os.environ[k] for k in ("ENVOY_BIN", "SLUICE_CLI", "SLUICE_MOCK", module)}
        if os.environ.get("SLUICE_WASM"):
            self.bins["SLUICE_WASM"] = os.environ["SLUICE_WASM"]
        # The build the control plane serves and the Envoys' bootstraps ask for: they must agree
        # (a listener asks ECDS for one filter type).
        self.native = NATIVE
        self.openai_key = "mock-openai-" + os.urandom(8).hex()
        self.master_key = "sk-master-" + os.urandom(16).hex()
        self.azure_key = "mock-azure-" + os.urandom(8).hex()
        self.gemini_key = "mock-gemini-" + os.urandom(8).hex()
        # An Entra ID application the mock's token endpoint knows (its secret only in the
        # control plane's environment), and the mock as the token service.
        self.entra_secret = "mock-entra-" + os.urandom(8).hex()
        self.env = {**os.environ, "MOCK_OPENAI_KEY": self.openai_key, "MOCK_ANTHROPIC_KEY": "unused",
                    "MOCK_AZURE_KEY": self.azure_key, "MOCK_GEMINI_KEY": self.gemini_key,
                    "MOCK_ENTRA_SECRET": self.entra_secret, "SLUICE_MASTER_KEY": self.master_key}
        self.admin_port = free_port()
        self.xds_port = free_port()
        self.metrics_port = free_port()
        self.control_plane = None
        self.envoys = []
        self.procs = []
        mock = subprocess.Popen([self.bins["SLUICE_MOCK"], "--listen", "127.0.0.1:0", "--openai-key", self.openai_key,
                                 "--anthropic-key", "unused", "--azure-key", self.azure_key,
                                 "--gemini-key", self.gemini_key, "--aws-access-key-id", AWS_ACCESS_KEY_ID,
                                 "--azure-ad-client-id", "sluice-app", "--azure-ad-client-secret", self.entra_secret],
                                stdout=subprocess.PIPE, text=True)
        self.procs.append(mock)
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", mock.stdout.readline())
        assert match, "mock provider did not start"
        self.mock_url = f"http://127.0.0.1:{match.group(1)}"
        self.env["AZURE_AUTHORITY_HOST"] = self.mock_url
        config = {
            "model_list": [
                model_entry("gpt-4o", "openai/gpt-4o", f"{self.mock_url}/v1", "MOCK_OPENAI_KEY", "gpt-4o-a"),
                model_entry("gpt-4o-mini", "openai/gpt-4o-mini", f"{self.mock_url}/v1", "MOCK_OPENAI_KEY", "mini"),
                model_entry("azure-gpt", "azure/gpt4o-prod", self.mock_url, "MOCK_AZURE_KEY", "azure-east"),
                model_entry("gemini-flash", "gemini/gemini-2.5-flash", self.mock_url, "MOCK_GEMINI_KEY", "gemini"),
                # No key: the Envoys sign Bedrock's requests with their own AWS credentials.
                {"model_name": "bedrock-claude",
                 "litellm_params": {"model": "bedrock/anthropic.claude-3-haiku-20240307-v1:0", "api_base": self.mock_url,
                                    "aws_region_name": "us-west-2"},
                 "model_info": {"id": "bedrock", "input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}},
            ],
            "general_settings": {"master_key": "os.environ/SLUICE_MASTER_KEY"},
        }
        self.config_path = workdir / "config.yaml"
        self.config_path.write_text(json.dumps(config))
        self.db = workdir / "sluice.db"
        # Set before start_control_plane to run it on another database (Postgres).
        self.database_url = f"sqlite:{self.db}"
        # The data-plane port's mTLS, as in production: a CA and certificates from `sluice pki`.
        self.pki = workdir / "sluice-pki"
        subprocess.run([self.bins["SLUICE_CLI"], "pki", "init", "--dir", str(self.pki), "--host", "127.0.0.1,localhost"],
                       check=True, capture_output=True, timeout=60)
        # `sluice serve`'s data-plane flags (a test may give other certificates).
        self.serve_args = ["--pki-dir", str(self.pki)]
        self.envoy_concurrency = 2

    def spend_rows(self, request_id):
        """The control plane's spend rows of one request (its SQLite database, read directly)."""
        import sqlite3
        with sqlite3.connect(self.db) as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute("SELECT * FROM spend_logs WHERE request_id = ?", (request_id,))]

    def start_control_plane(self, wasm=None, module=None):
        """`sluice serve` with the build under test, `module` naming another file of that build
        (e.g. one missing on the Envoy hosts); `wasm` runs the given wasm module, in any run."""
        if wasm is not None:
            self.native = False
            module_args = ["--envoy-wasm", wasm]
        elif self.native:
            module_args = ["--envoy-native", module or self.bins["SLUICE_NATIVE"]]
        else:
            module_args = ["--envoy-wasm", module or self.bins["SLUICE_WASM"]]
        self.cp_log_path = self.workdir / f"control-plane-{len(self.procs)}.log"
        self.control_plane = subprocess.Popen(
            [self.bins["SLUICE_CLI"], "serve", "-c", str(self.config_path), "--database-url", self.database_url,
             "--listen", f"127.0.0.1:{self.admin_port}", "--xds-listen", f"127.0.0.1:{self.xds_port}",
             "--metrics-listen", f"127.0.0.1:{self.metrics_port}", *module_args, *self.serve_args],
            env=self.env, stdout=subprocess.DEVNULL, stderr=open(self.cp_log_path, "w"))
        self.procs.append(self.control_plane)
        def started():
            if self.control_plane.poll() is not None:
                raise AssertionError(f"the control plane exited: {self.cp_log_path.read_text()}")
            return "xDS and key lookups on" in self.cp_log_path.read_text()

        wait_until(started, what="control plane start")

    def filter_args(self):
        """`sluice envoy-config --xds`'s flag for the build this fleet serves: the native build's
        module is named by the control plane, the wasm build's singleton needs the file."""
        return ["--native"] if self.native else ["--wasm", self.bins["SLUICE_WASM"]]

    def stop_control_plane(self):
        self.control_plane.terminate()
        self.control_plane.wait(timeout=10)

    def envoy_pki_args(self, node_id):
        """`sluice envoy-config` flags for a client certificate naming `node_id` (issued once)."""
        if not (self.pki / f"envoy-{node_id}.pem").exists():
            subprocess.run([self.bins["SLUICE_CLI"], "pki", "envoy", "--dir", str(self.pki), "--node-id", node_id],
                           check=True, capture_output=True, timeout=60)
        return ["--pki-dir", str(self.pki)]

    def start_envoy(self, node_id, config_args=None, wait=True):
        """An Envoy from `sluice envoy-config --xds` with `config_args` for the data-plane port
        (default: its own certificate from the fleet's CA), serving unless `wait` is off."""
        if config_args is None:
            config_args = self.envoy_pki_args(node_id)
        envoy = Envoy(self, node_id, config_args)
        self.envoys.append(envoy)
        self.procs.append(envoy.proc)
        if wait:
            envoy.wait_serving()
        return envoy

    def cli(self, *args):
        return subprocess.run([self.bins["SLUICE_CLI"], "--server", f"http://127.0.0.1:{self.admin_port}",
                               "--api-key", self.master_key, *args],
                              env=self.env, capture_output=True, text=True, check=True, timeout=60)

    def metrics(self):
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text

    def metric(self, name):
        """One sample of the control plane's metrics (`name` with its labels, if any); 0 if absent."""
        match = re.search(rf"^{re.escape(name)} (\d+)$", self.metrics(), re.M)
        return int(match.group(1)) if match else 0

    def served(self):
        return httpx.get(f"{self.mock_url}/mock/stats", timeout=5).json()

    def stop(self):
        stop_all(self.procs)


class Envoy:
    def __init__(self, fleet, node_id, config_args):
        self.fleet = fleet
        self.node_id = node_id
        self.port = free_port()
        self.admin_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        self.yaml = fleet.workdir / f"{node_id}.yaml"
        subprocess.run([fleet.bins["SLUICE_CLI"], "envoy-config", "--xds", f"127.0.0.1:{fleet.xds_port}",
                        "--node-id", node_id, *fleet.filter_args(), "--out", str(self.yaml),
                        "--listen", f"127.0.0.1:{self.port}", "--admin-port", str(self.admin_port), *config_args],
                       check=True, capture_output=True, timeout=60)
        self.start()

    def start(self):
        self.log_path = self.fleet.workdir / f"{self.node_id}-{time.time_ns()}.log"
        # The Envoy gets no provider credential: those come from the control plane over SDS. It
        # has its own AWS identity (as from EKS's IRSA), with which it signs Bedrock's requests.
        env = {k: v for k, v in os.environ.items() if not k.startswith("MOCK_")}
        env.update({"AWS_ACCESS_KEY_ID": AWS_ACCESS_KEY_ID, "AWS_SECRET_ACCESS_KEY": "envoy-own-aws-secret"})
        self.proc = subprocess.Popen(
            [self.fleet.bins["ENVOY_BIN"], "-c", str(self.yaml), "--disable-hot-restart",
             "--concurrency", str(self.fleet.envoy_concurrency),
             "--log-level", "info", "--base-id", str(self.port)],
            env=env, stdout=subprocess.DEVNULL, stderr=open(self.log_path, "w"))

    def restart(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.start()
        self.fleet.procs.append(self.proc)
        self.wait_serving()

    def wait_serving(self):
        wait_until(lambda: self.chat(CHAT).status_code == 200, timeout=30, what=f"{self.node_id} serving")

    def chat(self, body, key=None):
        return httpx.post(f"{self.url}/v1/chat/completions", json=body, timeout=30,
                          headers={"Authorization": f"Bearer {key or self.fleet.master_key}"})

    def stat(self, name):
        text = httpx.get(f"{self.admin}/stats?filter=^{re.escape(name)}$", timeout=5).text
        match = re.search(r": (\S+)", text)
        return match.group(1) if match else None

    def filter_stat(self, name):
        """The filter's own counter `name` (`sluice.…`), in either build (conftest.filter_stat_name)."""
        return self.stat(filter_stat_name(name))

    def records(self):
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            idx = line.find("sluice.usage ")
            if idx >= 0:
                out.append(json.loads(line[idx + len("sluice.usage "):]))
        return out


@pytest.fixture
def fleet(tmp_path):
    f = Fleet(tmp_path)
    try:
        f.start_control_plane()
        yield f
    finally:
        f.stop()


def test_envoy_runs_on_config_from_the_control_plane_and_never_sees_a_provider_key(fleet):
    envoy = fleet.start_envoy("edge-1")
    before = fleet.served()["served"]
    resp = envoy.chat(CHAT)
    assert resp.status_code == 200, resp.text
    assert resp.json()["usage"]["prompt_tokens"] > 0
    assert fleet.served()["served"] == before + 1
    assert envoy.stat("control_plane.connected_state") == "1"
    assert "sluice_xds_connected_envoys 1\n" in fleet.metrics()
    dump = httpx.get(f"{envoy.admin}/config_dump?include_eds", timeout=5).text
    assert "sluice_gpt_4o_a" in dump  # the deployment's cluster arrived over CDS
    assert fleet.openai_key not in dump  # the SDS secret is redacted
    assert fleet.openai_key not in envoy.log_path.read_text()
    assert fleet.master_key not in dump


def test_an_azure_deployment_gets_its_key_in_api_key_from_sds(fleet):
    """xDS mode: Envoy's credential injector puts the Azure key in `api-key` on Azure's path;
    the client's key goes nowhere upstream, and the key is never in Envoy's config dump."""
    envoy = fleet.start_envoy("edge-azure")
    resp = httpx.post(f"{envoy.url}/v1/chat/completions", json={**CHAT, "model": "azure-gpt"}, timeout=30,
                      headers={"api-key": fleet.master_key})
    assert resp.status_code == 200, resp.text
    seen = fleet.served()["requests"][-1]
    assert seen["path"] == "/openai/deployments/gpt4o-prod/chat/completions"
    assert seen["query"] == "api-version=2024-10-21"
    assert seen["api_key"] == fleet.azure_key and seen["authorization"] is None
    dump = httpx.get(f"{envoy.admin}/config_dump?include_eds", timeout=5).text
    assert fleet.azure_key not in dump


def test_gemini_and_bedrock_get_their_credentials_from_envoy_not_the_filter(fleet):
    """xDS mode: Gemini's key injected by Envoy from SDS in `x-goog-api-key`; Bedrock's request
    signed by the Envoy's aws_request_signing with the Envoy's own AWS credentials."""
    envoy = fleet.start_envoy("edge-google-aws")
    resp = envoy.chat({**CHAT, "model": "gemini-flash"})
    assert resp.status_code == 200 and resp.json()["choices"][0]["message"]["content"], resp.text
    seen = fleet.served()["requests"][-1]
    assert seen["path"] == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert seen["x_goog_api_key"] == fleet.gemini_key and seen["authorization"] is None
    resp = envoy.chat({**CHAT, "model": "bedrock-claude"})
    assert resp.status_code == 200 and resp.json()["choices"][0]["message"]["content"], resp.text
    seen = fleet.served()["requests"][-1]
    assert seen["path"].endswith("/converse")
    assert seen["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={AWS_ACCESS_KEY_ID}/")
    assert "/us-west-2/bedrock/aws4_request" in seen["authorization"]
    dump = httpx.get(f"{envoy.admin}/config_dump?include_eds", timeout=5).text
    assert fleet.gemini_key not in dump and "envoy-own-aws-secret" not in dump


def test_health_with_the_master_key_probes_every_deployment_with_envoys_credentials(fleet):
    """xDS mode: `/health` on the gateway's port, the master key looked up at the control plane;
    each probe carries the credential Envoy injects (SDS) or the signature it makes (Bedrock),
    never one the filter holds."""
    envoy = fleet.start_envoy("edge-health")
    before = fleet.served()["served"]
    resp = httpx.get(f"{envoy.url}/health", headers={"Authorization": f"Bearer {fleet.master_key}"}, timeout=90)
    assert resp.status_code == 200, resp.text
    report = resp.json()
    assert report["unhealthy_count"] == 0, report["unhealthy_endpoints"]
    assert sorted(e["model_id"] for e in report["healthy_endpoints"]) == ["azure-east", "bedrock", "gemini",
                                                                        "gpt-4o-a", "mini"]
    assert fleet.served()["served"] == before + 5
    assert fleet.openai_key not in resp.text and fleet.master_key not in resp.text
    key, _ = create_key(fleet)
    resp = httpx.get(f"{envoy.url}/health", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert resp.status_code == 403
    assert fleet.served()["served"] == before + 5


def test_an_azure_deployment_with_an_entra_id_application_is_sent_envoys_token(tmp_path):
    """LiteLLM's tenant_id/client_id/client_secret on an azure/ deployment: Envoy fetches the
    access token from Entra ID (the mock, as AZURE_AUTHORITY_HOST) with the client secret the
    control plane serves over SDS, and sends it as a bearer token; no key goes, and the
    secret is nowhere in Envoy's config dump."""
    f = Fleet(tmp_path)
    try:
        config = json.loads(f.config_path.read_text())
        config["model_list"].append({
            "model_name": "azure-entra",
            "litellm_params": {"model": "azure/gpt4o-prod", "api_base": f.mock_url, "api_version": "2024-08-01-preview",
                               "tenant_id": "contoso", "client_id": "sluice-app",
                               "client_secret": "os.environ/MOCK_ENTRA_SECRET"},
            "model_info": {"id": "azure-entra", "input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}})
        # An application Entra ID does not know: no token ever, so no request goes upstream.
        unknown = json.loads(json.dumps(config["model_list"][-1]))
        unknown["model_name"], unknown["model_info"]["id"] = "azure-unknown-app", "azure-unknown-app"
        unknown["litellm_params"]["client_id"] = "not-registered"
        config["model_list"].append(unknown)
        f.config_path.write_text(json.dumps(config))
        f.start_control_plane()
        envoy = f.start_envoy("edge-entra")
        body = {**CHAT, "model": "azure-entra"}
        # Until Envoy has fetched its first token: a 503 in the client's shape, the provider not asked.
        early = envoy.chat(body)
        if early.status_code != 200:
            assert early.status_code == 503, early.text
            assert early.json()["error"]["code"] == "provider_credential_unavailable", early.text
        wait_until(lambda: envoy.chat(body).status_code == 200, what="served with an Entra ID token")
        refused = envoy.chat({**CHAT, "model": "azure-unknown-app"})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "provider_credential_unavailable", \
            refused.text
        seen = [r for r in f.served()["requests"] if r["path"].startswith("/openai/deployments/gpt4o-prod/")][-1]
        assert seen["authorization"].startswith("Bearer ya29.mock-") and seen["api_key"] is None, seen
        assert f.served()["google_tokens_issued"] >= 1, "the token came from the token endpoint"
        dump = httpx.get(f"{envoy.admin}/config_dump?include_eds", timeout=5).text
        assert f.entra_secret not in dump and "contoso/oauth2/v2.0/token" in dump
        # The usage is billed as any Azure request.
        wait_until(lambda: any(r["deployment"] == "azure-entra" and r["cost_usd"] > 0 for r in envoy.records()),
                   what="the request's usage record")
    finally:
        f.stop()


def test_background_health_checks_in_config_yaml_reach_the_envoys(tmp_path):
    """`general_settings.background_health_checks` in `sluice serve`'s config.yaml shapes the
    filter as it does standalone: the Envoy probes every deployment and answers `/health`
    from the round."""
    f = Fleet(tmp_path)
    try:
        config = json.loads(f.config_path.read_text())
        config["general_settings"].update({"background_health_checks": True, "health_check_interval": 30})
        config["model_list"].append(model_entry("gpt-4o", "openai/gpt-4o", f"http://127.0.0.1:{free_port()}/v1",
                                                "MOCK_OPENAI_KEY", "gpt-4o-down"))
        f.config_path.write_text(json.dumps(config))
        f.start_control_plane()
        envoy = f.start_envoy("edge-background", wait=False)
        wait_until(lambda: "background health check: 1 of 6 deployments failed (gpt-4o-down)"
                   in envoy.log_path.read_text(), timeout=30, what="a background round")
        served = f.served()["served"]
        resp = httpx.get(f"{envoy.url}/health", headers={"Authorization": f"Bearer {f.master_key}"}, timeout=30)
        assert resp.status_code == 200
        assert [e["model_id"] for e in resp.json()["unhealthy_endpoints"]] == ["gpt-4o-down"]
        assert resp.json()["healthy_count"] == 5
        assert f.served()["served"] == served, "answered from the round"
    finally:
        f.stop()


def test_fallbacks_in_config_yaml_fail_a_request_over_on_every_envoy(tmp_path):
    """`router_settings.fallbacks` in `sluice serve`'s config.yaml: a group whose deployment
    answers 503 is served by its fallback, the provider credential of each step injected by
    Envoy (SDS), the request billed once at the control plane, where it was answered."""
    f = Fleet(tmp_path)
    try:
        down = subprocess.Popen([f.bins["SLUICE_MOCK"], "--listen", "127.0.0.1:0", "--status", "503",
                                 "--openai-key", f.openai_key], stdout=subprocess.PIPE, text=True)
        f.procs.append(down)
        down_url = "http://127.0.0.1:" + re.search(r"listening on 127\.0\.0\.1:(\d+)", down.stdout.readline()).group(1)
        config = json.loads(f.config_path.read_text())
        broken = model_entry("gpt-4o", "openai/gpt-4o", f"{down_url}/v1", "MOCK_OPENAI_KEY", "broken-a")
        broken["model_name"] = "broken"
        config["model_list"].append(broken)
        guarded = model_entry("gpt-4o", "openai/gpt-4o", f"{f.mock_url}/v1", "MOCK_OPENAI_KEY", "guarded-a")
        guarded["model_name"] = "guarded"
        config["model_list"].append(guarded)
        config["router_settings"] = {"fallbacks": [{"broken": ["gpt-4o-mini"]}],
                                     "content_policy_fallbacks": [{"guarded": ["gpt-4o-mini"]}]}
        f.config_path.write_text(json.dumps(config))
        f.start_control_plane()
        envoy = f.start_envoy("edge-fallbacks")
        key, key_id = create_key(f)
        resp = envoy.chat({**CHAT, "model": "broken"}, key=key)
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-litellm-attempted-fallbacks"] == "1"
        seen = f.served()["requests"][-1]
        assert seen["authorization"] == f"Bearer {f.openai_key}" and seen["model"] == "gpt-4o-mini"
        by_model = lambda: json.loads(f.cli("spend", "--group-by", "model", "--key", key_id, "--json").stdout)
        rows = wait_until(lambda: by_model()["requests"] == 1 and by_model(), what="the spend row")
        assert [r["group"] for r in rows["rows"]] == ["gpt-4o-mini"], rows
        # `content_policy_fallbacks`: the provider's refusal (a 400 the attempt filter reads)
        # moves the request on to its own fallback.
        resp = httpx.post(f"{envoy.url}/v1/chat/completions", timeout=30,
                          json={**CHAT, "model": "guarded"},
                          headers={"Authorization": f"Bearer {key}", "x-mock-refuse": "content_policy",
                                   "x-mock-fault-attempts": "1"})
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-litellm-attempted-fallbacks"] == "1"
        assert f.served()["requests"][-1]["model"] == "gpt-4o-mini"
        # The control plane keeps the failed try with the spend row (schema 5).
        rows = wait_until(lambda: f.spend_rows(resp.headers["x-request-id"]), what="the refused request's row")
        assert json.loads(rows[0]["failed_attempts"]) == [{"deployment": "guarded-a", "error": "content_policy"}]
    finally:
        f.stop()


def test_admin_changes_reach_every_envoy(fleet):
    a = fleet.start_envoy("edge-a")
    b = fleet.start_envoy("edge-b")
    new_model = {"model": "brand-new", "messages": [{"role": "user", "content": "hi"}]}
    assert a.chat(new_model).status_code == 400  # unknown model, for now

    fleet.cli("model", "create", "brand-new", "--params",
              json.dumps({"model": "openai/upstream-new", "api_base": f"{fleet.mock_url}/v1",
                          "api_key": "os.environ/MOCK_OPENAI_KEY"}),
              "--info", json.dumps({"id": "newdep", "input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}))
    for envoy in (a, b):
        resp = wait_until(lambda e=envoy: (r := e.chat(new_model)).status_code == 200 and r, what="new model served")
        assert resp.json()["model"] == "upstream-new"

    # A price change is what the next usage record is charged with.
    fleet.cli("model", "update", "newdep", "--info",
              json.dumps({"id": "newdep", "input_cost_per_token": 1e-3, "output_cost_per_token": 2e-3}))

    def repriced(envoy):
        envoy.chat(new_model)
        recs = [r for r in envoy.records() if r["deployment"] == "newdep"]
        last = recs[-1] if recs else None
        return last and abs(last["cost_usd"] - (last["prompt_tokens"] * 1e-3 + last["completion_tokens"] * 2e-3)) < 1e-9

    for envoy in (a, b):
        wait_until(lambda e=envoy: repriced(e), what="new price charged")

    # A deleted deployment stops serving; the rest is untouched.
    fleet.cli("model", "delete", "newdep")
    for envoy in (a, b):
        wait_until(lambda e=envoy: e.chat(new_model).status_code == 400, what="deleted model refused")
        assert envoy.chat(CHAT).status_code == 200


def stalled_stream(envoy, model, stall_ms):
    """A stream whose provider goes quiet for `stall_ms` after three events: (what the client
    got, whether the stream ended with [DONE], seconds taken)."""
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": f"Bearer {envoy.fleet.master_key}", "x-mock-completion-tokens": "6",
               "x-mock-stall-after": "3", "x-mock-stall-ms": str(stall_ms)}
    got, t0 = b"", time.monotonic()
    try:
        with httpx.stream("POST", f"{envoy.url}/v1/chat/completions", json=body, headers=headers, timeout=10) as r:
            assert r.status_code == 200, r.read()
            for chunk in r.iter_bytes():
                got += chunk
    except httpx.HTTPError:
        pass
    return got, b"[DONE]" in got, time.monotonic() - t0


def test_a_deployments_stream_timeout_reaches_every_envoy_as_its_routes(fleet):
    """stream_timeout bounds a stream's gaps between chunks: a route per timeout (RDS), which
    follows the deployments as the admin API changes them."""
    a = fleet.start_envoy("edge-a")
    params = {"model": "openai/gpt-4o-mini", "api_base": f"{fleet.mock_url}/v1",
              "api_key": "os.environ/MOCK_OPENAI_KEY", "stream_timeout": 0.6}
    info = {"id": "stalls", "input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}
    fleet.cli("model", "create", "stalls", "--params", json.dumps(params), "--info", json.dumps(info))
    wait_until(lambda: a.chat({**CHAT, "model": "stalls"}).status_code == 200, what="new model served")
    wait_until(lambda: stalled_stream(a, "stalls", 3000)[1] is False, what="the stream cut")
    got, done, took = stalled_stream(a, "stalls", 3000)
    assert not done and got.count(b"data: ") == 3 and took < 2.5, (got, took)
    # A longer stream_timeout: the same stall passes.
    fleet.cli("model", "update", "stalls", "--params", json.dumps({**params, "stream_timeout": 5}))
    wait_until(lambda: stalled_stream(a, "stalls", 1500)[1], what="the longer timeout")
    assert a.chat(CHAT).status_code == 200


def test_envoy_keeps_serving_without_the_control_plane_and_a_restarted_envoy_gets_the_current_config(fleet):
    envoy = fleet.start_envoy("edge-1")
    fleet.stop_control_plane()
    wait_until(lambda: envoy.stat("control_plane.connected_state") == "0", what="disconnect noticed")
    for _ in range(5):
        assert envoy.chat(CHAT).status_code == 200

    fleet.start_control_plane()
    wait_until(lambda: envoy.stat("control_plane.connected_state") == "1", what="reconnected")
    fleet.cli("model", "create", "after-restart", "--params",
              json.dumps({"model": "openai/x", "api_base": f"{fleet.mock_url}/v1", "api_key": "os.environ/MOCK_OPENAI_KEY"}))
    envoy.restart()
    assert envoy.chat({"model": "after-restart", "messages": []}).status_code == 200


def test_a_config_envoy_rejects_is_nacked_and_the_previous_one_keeps_serving(fleet):
    envoy = fleet.start_envoy("edge-1")
    version = envoy.stat("extension_config_discovery.http_filter.sluice.version_text")
    # An operator points the control plane at a filter module that is not on the Envoy host.
    fleet.stop_control_plane()
    fleet.start_control_plane(module=str(fleet.workdir / ("missing.so" if NATIVE else "missing.wasm")))
    wait_until(lambda: "rejected type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
               in fleet.cp_log_path.read_text(), what="NACK logged by the control plane")
    assert envoy.stat("extension_config_discovery.http_filter.sluice.update_rejected") == "1"
    assert envoy.stat("extension_config_discovery.http_filter.sluice.version_text") == version
    # Visible in the control plane's metrics too, with Envoy's reason.
    metrics = fleet.metrics()
    assert "sluice_xds_nacks_total 1\n" in metrics
    assert re.search(r'sluice_xds_last_nack_info\{node="edge-1",type_url="[^"]*TypedExtensionConfig",detail="[^"]+"\} 1', metrics)
    assert envoy.chat(CHAT).status_code == 200
    # No resend loop: the rejected version was sent once.
    time.sleep(1.0)
    assert envoy.stat("extension_config_discovery.http_filter.sluice.update_rejected") == "1"


def create_key(fleet, *flags):
    out = fleet.cli("key", "create", *flags, "--json").stdout
    created = json.loads(out)
    return created["key"], created["key_id"]


def spend(fleet, *flags):
    return json.loads(fleet.cli("spend", "--group-by", "key", *flags, "--json").stdout)


def test_a_key_made_with_the_cli_works_at_once_and_its_spend_reaches_the_control_plane(fleet):
    envoy = fleet.start_envoy("edge-1")
    key, key_id = create_key(fleet, "--alias", "svc", "--rpm", "1000")
    before = fleet.served()["served"]
    for _ in range(5):
        resp = envoy.chat(CHAT, key=key)
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-ratelimit-limit-requests"] == "1000"
    served = fleet.served()["served"] - before
    assert served == 5
    # Every upstream call is one spend row at the control plane, exactly once.
    report = wait_until(lambda: (r := spend(fleet, "--key", key_id)) and r["requests"] == served and r,
                        what="usage ingested")
    assert re.search(r"sluice_usage_records_ingested_total [1-9]", fleet.metrics())
    # Looked up once (again only if a cache reset raced with the first requests), not per request.
    found = int(re.search(r'sluice_key_lookups_total\{result="found"\} (\d+)', fleet.metrics()).group(1))
    assert 1 <= found < 5
    records = [r for r in envoy.records() if r["key_id"] == key_id]
    assert len(records) == 5
    assert abs(report["spend"] - sum(r["cost_usd"] for r in records)) < 1e-9
    # Unknown and malformed keys are refused; the plaintext key never reached a log.
    bogus = key[:-8] + ("A" * 8)
    assert envoy.chat(CHAT, key=bogus).status_code == 401
    assert key not in envoy.log_path.read_text() and key not in fleet.cp_log_path.read_text()


def test_revocation_reaches_every_envoy_within_a_second(fleet):
    a = fleet.start_envoy("edge-a")
    b = fleet.start_envoy("edge-b")
    key, key_id = create_key(fleet, "--alias", "to-revoke")
    for envoy in (a, b):
        assert envoy.chat(CHAT, key=key).status_code == 200  # now cached in both
    started = time.monotonic()
    fleet.cli("key", "block", key_id)
    for envoy in (a, b):
        resp = wait_until(lambda e=envoy: (r := e.chat(CHAT, key=key)).status_code == 401 and r, timeout=10,
                          what="block seen")
        assert resp.json()["error"]["code"] == "key_blocked"
    elapsed = time.monotonic() - started
    print(f"revocation reached both Envoys after {elapsed * 1000:.0f} ms")
    fleet.cli("key", "unblock", key_id)
    for envoy in (a, b):
        wait_until(lambda e=envoy: e.chat(CHAT, key=key).status_code == 200, timeout=10, what="unblock seen")
    fleet.cli("key", "delete", key_id)
    for envoy in (a, b):
        resp = wait_until(lambda e=envoy: (r := e.chat(CHAT, key=key)).status_code == 401 and r, timeout=10,
                          what="delete seen")
        assert resp.json()["error"]["code"] == "invalid_api_key"


def test_with_the_control_plane_down_known_keys_work_unknown_keys_fail_closed_and_usage_waits(fleet):
    envoy = fleet.start_envoy("edge-1")
    known, known_id = create_key(fleet, "--alias", "known")
    stranger, _ = create_key(fleet, "--alias", "never-used")
    assert envoy.chat(CHAT, key=known).status_code == 200
    fleet.stop_control_plane()
    wait_until(lambda: envoy.stat("control_plane.connected_state") == "0", what="disconnect noticed")
    before = fleet.served()["served"]
    for _ in range(4):
        assert envoy.chat(CHAT, key=known).status_code == 200
    resp = envoy.chat(CHAT, key=stranger)
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "key_service_unavailable"
    assert fleet.served()["served"] == before + 4, "the refused request never went upstream"

    fleet.start_control_plane()
    # The records made during the outage arrive once the control plane is back, exactly once.
    report = wait_until(lambda: (r := spend(fleet, "--key", known_id)) and r["requests"] == 5 and r, timeout=30,
                        what="usage delivered after restart")
    time.sleep(1.0)
    assert spend(fleet, "--key", known_id)["requests"] == 5
    assert envoy.chat(CHAT, key=stranger).status_code == 200, "the control plane answers again"


def test_ten_thousand_requests_with_cancelled_streams_each_billed_once_at_the_control_plane(fleet):
    """10,000 requests through one Envoy, 10% of them streams the client abandons midway:
    the control plane's spend rows equal the upstream calls the mock served, and the spend is
    what the price table gives for the tokens recorded."""
    envoy = fleet.start_envoy("edge-1")
    key, key_id = create_key(fleet, "--alias", "load")
    served_before = fleet.served()["served"]
    rng = random.Random(11)
    jobs = [(i % 10 == 0, rng.choice(["gpt-4o", "gpt-4o-mini"]), rng.randint(1, 30)) for i in range(10_000)]

    def cancelled_stream(group, tokens):
        body = json.dumps({"model": group, "stream": True, "messages": []}).encode()
        req = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
               + f"authorization: Bearer {key}\r\nx-mock-chunk-delay-ms: 20\r\n".encode()
               + f"x-mock-completion-tokens: {tokens + 10}\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body)
        with socket.create_connection(("127.0.0.1", envoy.port), timeout=30) as s:
            s.sendall(req)
            got = b""
            while got.count(b"data: ") < 2:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
        return 200 if b" 200 " in got[:20] else 0

    local = threading.local()

    def run(job):
        cancel, group, tokens = job
        if cancel:
            return cancelled_stream(group, tokens)
        if not hasattr(local, "client"):
            local.client = httpx.Client(timeout=30)
        r = local.client.post(f"{envoy.url}/v1/chat/completions", headers={
            "Authorization": f"Bearer {key}", "x-mock-completion-tokens": str(tokens)},
            json={"model": group, "messages": [{"role": "user", "content": "x" * tokens}]})
        return r.status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        codes = list(pool.map(run, jobs))
    assert codes.count(200) == 10_000, {c: codes.count(c) for c in set(codes)}
    served = fleet.served()["served"] - served_before
    assert served == 10_000

    def settled():
        report = spend(fleet, "--key", key_id)
        return report if report["requests"] == served else None

    report = wait_until(settled, timeout=60, what="every record ingested")
    records = [r for r in envoy.records() if r["key_id"] == key_id]
    assert len(records) == served and len({r["record_id"] for r in records}) == served
    cancelled = [r for r in records if r["outcome"] == "cancelled"]
    assert len(cancelled) >= 900 and all(r["estimated"] for r in cancelled)
    for r in records:
        expected = cost(r["model_group"], r["prompt_tokens"], r["completion_tokens"], cached=r["cached_prompt_tokens"])
        assert r["cost_usd"] == pytest.approx(expected, abs=1e-9)
    assert report["spend"] == pytest.approx(sum(r["cost_usd"] for r in records), abs=1e-6)
    time.sleep(1.0)
    assert spend(fleet, "--key", key_id)["requests"] == served, "nothing counted twice"


def test_a_budget_spent_through_one_envoy_is_refused_by_every_envoy(fleet):
    a = fleet.start_envoy("edge-a")
    b = fleet.start_envoy("edge-b")
    key, key_id = create_key(fleet, "--alias", "capped", "--max-budget", "0.002")
    assert b.chat(CHAT, key=key).status_code == 200  # b knows the key (cached)
    # Spend it through a alone (each request costs ~0.00016 with 16 output tokens of gpt-4o).
    for _ in range(40):
        if a.chat(CHAT, key=key).status_code != 200:
            break
    resp = wait_until(lambda: (r := b.chat(CHAT, key=key)).status_code == 400 and r, timeout=10,
                      what="b refuses a budget spent through a")
    error = resp.json()["error"]
    assert error["code"] == "budget_exceeded" and "Max budget: 0.002" in error["message"]
    assert 'sluice_budget_exhausted_total 1\n' in fleet.metrics()
