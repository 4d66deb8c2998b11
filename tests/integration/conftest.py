"""Fixtures: one mock provider and one real Envoy with the Sluice filter for the session.

The four artifacts come from the environment (`cargo xtask test` sets them):
ENVOY_BIN, SLUICE_WASM, SLUICE_CLI, SLUICE_MOCK.

The build of the filter the standalone `gw` fixture runs is chosen by SLUICE_FILTER_BUILD:
`wasm` (the default) or `native`, which loads SLUICE_NATIVE (libsluice_filter.so) as an Envoy
dynamic module; the xDS harness (test_xds.py's Fleet) follows it too. Tests of what only one
build has are marked `wasm_only`.
"""

import hashlib
import json
import os
import re
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

FILTER_BUILD = os.environ.get("SLUICE_FILTER_BUILD", "wasm")
assert FILTER_BUILD in ("wasm", "native"), f"SLUICE_FILTER_BUILD={FILTER_BUILD!r}: wasm or native"
NATIVE = FILTER_BUILD == "native"
ARTIFACTS = ("ENVOY_BIN", "SLUICE_CLI", "SLUICE_MOCK", "SLUICE_NATIVE" if NATIVE else "SLUICE_WASM")


def wasm_only(reason):
    """Marks a test of something only the wasm build has (skipped, with the reason, natively)."""
    return pytest.mark.skipif(NATIVE, reason=f"wasm build only: {reason}")


# The filter's own counters in Envoy's /stats: under `wasmcustom.` from the wasm build and
# `dynamicmodulescustom.` from the native one, with the same names after that (the Prometheus
# output, `sluice_…`, is the same for both).
FILTER_STATS_PREFIX = "dynamicmodulescustom." if NATIVE else "wasmcustom."


def filter_stat_name(name):
    """The /stats name of the filter's counter `name` (e.g. `sluice.usage.shipped`) in this build."""
    return FILTER_STATS_PREFIX + name

PRICES = {
    "gpt-4o": (2.5e-6, 1e-5, 1.25e-6, None),
    "gpt-4o-mini": (1.5e-7, 6e-7, 7.5e-8, None),
    "text-embedding-3-small": (2e-8, 0.0, None, None),
    "claude-3-5-sonnet": (3e-6, 1.5e-5, 3e-7, 3.75e-6),
    "claude-lenient": (3e-6, 1.5e-5, 3e-7, 3.75e-6),
    "dead-model": (1e-6, 1e-6, None, None),
    "dead-claude": (1e-6, 1e-6, None, None),
    "azure-gpt": (2.5e-6, 1e-5, 1.25e-6, None),
    "gemini-flash": (3e-7, 2.5e-6, 3e-8, None),
    "bedrock-claude": (3e-6, 1.5e-5, 3e-7, 3.75e-6),
    # From the built-in table (LiteLLM's price map), per input token.
    "gemini-embed": (1.5e-7, 0.0, None, None),
    "titan-embed": (2e-8, 0.0, None, None),
    "cohere-embed": (1e-7, 0.0, None, None),
}

# Envoy's own AWS credentials (its credential chain reads them from its environment); the mock
# provider checks that Envoy's SigV4 signature names this access key.
AWS_ACCESS_KEY_ID = "AKIDSLUICETEST00001"

# A virtual key of LiteLLM's shape (`sk-` and 22 URL-safe characters), as a team moving from
# LiteLLM brings it.
LITELLM_KEY = "sk-q3Vb8fZc1Ykd0J2mWfN4aA"

# Keys the tests use, by alias: the CLI flags that create them.
KEYS = {
    "open": [],
    "sdk": [],
    "stream": [],
    "faults": [],
    "money-a": [],
    "money-b": ["--team", "platform"],
    "only-gpt4o": ["--models", "gpt-4o"],
    "providers": [],
    "rpm20": ["--rpm", "20"],
    "tpm": ["--tpm", "300"],
    "budget": ["--max-budget", "0.05"],
    "parallel2": ["--max-parallel", "2"],
    "blocked": [],
    "expired": ["--expires", "2020-01-01T00:00:00Z"],
    "embeddings-only": [],
    "capped-a": ["--team", "capped"],
    "capped-b": ["--team", "capped"],
    "frozen": ["--team", "frozen"],
    "per-model": [],
    "security": [],
    "anthropic": [],
}


def stop_all(procs):
    """Terminates processes (newest first) and reaps them, killing any that hang."""
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


# Ports for the test's listeners come from below the kernel's ephemeral range (32768-60999 by
# default): a port the kernel handed out with bind(0) is free only until some outgoing connection
# (Envoy to its upstream, a client to Postgres) is given it as its local port, which made a
# listener fail with "Address already in use" now and then. A counter seeded by the process id
# keeps one run from reusing a port it already handed out.
_PORT_FLOOR, _PORT_CEILING = 20000, 32000
_next_port = _PORT_FLOOR + (os.getpid() * 7919) % (_PORT_CEILING - _PORT_FLOOR)


def free_port() -> int:
    global _next_port
    for _ in range(_PORT_CEILING - _PORT_FLOOR):
        port = _next_port
        _next_port = _PORT_FLOOR + (_next_port + 1 - _PORT_FLOOR) % (_PORT_CEILING - _PORT_FLOOR)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


class CertAuthority:
    """A throwaway certificate authority made at test time with the `openssl` command (EC P-256,
    PKCS#8 keys, valid two days): nothing is committed, nothing outlives the test's directory."""

    def __init__(self, directory: Path, name="Sluice test CA"):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        (self.dir / "ca.cnf").write_text(
            f"[req]\ndistinguished_name = dn\nx509_extensions = ext\nprompt = no\n[dn]\nCN = {name}\n[ext]\n"
            "basicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\n"
            "subjectKeyIdentifier = hash\n")
        self._openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                      "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-config", "ca.cnf")
        self.cert = self.dir / "ca.pem"

    def _openssl(self, *args):
        subprocess.run(["openssl", *args], cwd=self.dir, check=True, capture_output=True, timeout=60)

    def leaf(self, name, sans="DNS:localhost,IP:127.0.0.1"):
        """A certificate for `sans`, usable by a server and by a client: (cert path, key path)."""
        (self.dir / f"{name}.ext").write_text(
            "basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n"
            f"extendedKeyUsage = serverAuth, clientAuth\nsubjectAltName = {sans}\n")
        self._openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                      "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        self._openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                      "-set_serial", "0x" + os.urandom(8).hex(), "-days", "2", "-out", f"{name}.pem",
                      "-extfile", f"{name}.ext")
        return self.dir / f"{name}.pem", self.dir / f"{name}.key"


def model_entry(name, model, api_base, key_env, model_id, weight=None):
    inp, out, cached, write = PRICES[name]
    info = {"id": model_id, "input_cost_per_token": inp, "output_cost_per_token": out}
    if cached is not None:
        info["cache_read_input_token_cost"] = cached
    if write is not None:
        info["cache_creation_input_token_cost"] = write
    params = {"model": model, "api_base": api_base, "api_key": f"os.environ/{key_env}"}
    if weight:
        params["weight"] = weight
    return {"model_name": name, "litellm_params": params, "model_info": info}


# The Entra ID application the mock's token endpoint knows (its secret: MOCK_ENTRA_SECRET).
ENTRA_CLIENT_ID = "sluice-app"


class Gateway:
    """A running Envoy+Sluice and its mock provider."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.env_bin = {k: os.environ[k] for k in ARTIFACTS}
        self.provider_keys = {
            "MOCK_OPENAI_KEY": "mock-openai-" + os.urandom(8).hex(),
            "MOCK_ANTHROPIC_KEY": "mock-anthropic-" + os.urandom(8).hex(),
            "MOCK_AZURE_KEY": "mock-azure-" + os.urandom(8).hex(),
            "MOCK_GEMINI_KEY": "mock-gemini-" + os.urandom(8).hex(),
            # An Entra ID application's secret: the mock's token endpoint knows it.
            "MOCK_ENTRA_SECRET": "mock-entra-" + os.urandom(8).hex(),
        }
        self.master_key = "sk-master-" + os.urandom(16).hex()
        self.env = {**os.environ, **self.provider_keys, "SLUICE_MASTER_KEY": self.master_key,
                    "AWS_ACCESS_KEY_ID": AWS_ACCESS_KEY_ID, "AWS_SECRET_ACCESS_KEY": "test-" + os.urandom(8).hex()}
        self.procs = []
        self.keys = {}
        self.key_ids = {}

    # -- start-up -------------------------------------------------------------------------

    def start_mock(self):
        proc = subprocess.Popen(
            [self.env_bin["SLUICE_MOCK"], "--listen", "127.0.0.1:0",
             "--openai-key", self.provider_keys["MOCK_OPENAI_KEY"],
             "--anthropic-key", self.provider_keys["MOCK_ANTHROPIC_KEY"],
             "--azure-key", self.provider_keys["MOCK_AZURE_KEY"],
             "--gemini-key", self.provider_keys["MOCK_GEMINI_KEY"],
             "--aws-access-key-id", AWS_ACCESS_KEY_ID, "--workers", "2",
             "--azure-ad-client-id", ENTRA_CLIENT_ID, "--azure-ad-client-secret", self.provider_keys["MOCK_ENTRA_SECRET"]],
            stdout=subprocess.PIPE, text=True)
        self.procs.append(proc)
        line = proc.stdout.readline()
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        assert match, f"mock provider did not start: {line!r}"
        self.mock_port = int(match.group(1))
        self.mock_url = f"http://127.0.0.1:{self.mock_port}"
        # The mock is Entra ID's token service too (as for a sovereign cloud).
        self.env["AZURE_AUTHORITY_HOST"] = self.mock_url

    def cli(self, *args, check=True):
        return subprocess.run([self.env_bin["SLUICE_CLI"], *args], env=self.env, capture_output=True,
                              text=True, check=check, timeout=60)

    def write_config(self):
        openai_base = f"{self.mock_url}/v1"
        dead_port = free_port()  # nothing listens here
        # LiteLLM's drop_params on one deployment: what Anthropic cannot take is dropped.
        lenient = model_entry("claude-lenient", "anthropic/claude-3-5-sonnet-20241022", self.mock_url,
                              "MOCK_ANTHROPIC_KEY", "claude-lenient")
        lenient["litellm_params"]["drop_params"] = True
        # Azure OpenAI: the deployment's path, `api-version`, the key in `api-key`.
        azure = model_entry("azure-gpt", "azure/gpt4o-prod", self.mock_url, "MOCK_AZURE_KEY", "azure-east")
        azure["litellm_params"]["api_version"] = "2024-10-21"
        models = [
            model_entry("gpt-4o", "openai/gpt-4o-2024-08-06", openai_base, "MOCK_OPENAI_KEY", "gpt-4o-a", 3),
            model_entry("gpt-4o", "openai/gpt-4o", openai_base, "MOCK_OPENAI_KEY", "gpt-4o-b", 1),
            model_entry("gpt-4o-mini", "openai/gpt-4o-mini", openai_base, "MOCK_OPENAI_KEY", "mini"),
            model_entry("text-embedding-3-small", "openai/text-embedding-3-small", openai_base, "MOCK_OPENAI_KEY", "emb"),
            model_entry("claude-3-5-sonnet", "anthropic/claude-3-5-sonnet-20241022", self.mock_url, "MOCK_ANTHROPIC_KEY", "claude"),
            lenient,
            model_entry("dead-model", "openai/dead", f"http://127.0.0.1:{dead_port}/v1", "MOCK_OPENAI_KEY", "dead"),
            model_entry("dead-claude", "anthropic/dead", f"http://127.0.0.1:{dead_port}", "MOCK_ANTHROPIC_KEY", "dead-claude"),
            azure,
            # Gemini: OpenAI clients through translation, the model in Google's path.
            model_entry("gemini-flash", "gemini/gemini-2.5-flash", self.mock_url, "MOCK_GEMINI_KEY", "gemini"),
            # Bedrock (Converse): no key in config; Envoy signs with its own AWS credentials.
            {"model_name": "bedrock-claude",
             "litellm_params": {"model": "bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0", "api_base": self.mock_url,
                                "aws_region_name": "us-east-1"},
             "model_info": {"id": "bedrock", "input_cost_per_token": PRICES["bedrock-claude"][0],
                            "output_cost_per_token": PRICES["bedrock-claude"][1],
                            "cache_read_input_token_cost": PRICES["bedrock-claude"][2],
                            "cache_creation_input_token_cost": PRICES["bedrock-claude"][3]}},
            # Embeddings behind translations (`mode: embedding`), priced per input token from
            # the built-in table: Gemini's batchEmbedContents, Bedrock's InvokeModel (Titan v2,
            # Cohere), the last two signed by Envoy like Converse.
            # Priced from the built-in table, long-context prices included (test_money.py).
            {"model_name": "gemini-pro",
             "litellm_params": {"model": "gemini/gemini-2.5-pro", "api_base": self.mock_url,
                                "api_key": "os.environ/MOCK_GEMINI_KEY"},
             "model_info": {"id": "gemini-pro"}},
            {"model_name": "gemini-embed",
             "litellm_params": {"model": "gemini/gemini-embedding-001", "api_base": self.mock_url,
                                "api_key": "os.environ/MOCK_GEMINI_KEY"},
             "model_info": {"id": "gemini-embed", "mode": "embedding"}},
            {"model_name": "titan-embed",
             "litellm_params": {"model": "bedrock/amazon.titan-embed-text-v2:0", "api_base": self.mock_url,
                                "aws_region_name": "us-east-1"},
             "model_info": {"id": "titan-embed", "mode": "embedding"}},
            {"model_name": "cohere-embed",
             "litellm_params": {"model": "bedrock/cohere.embed-english-v3", "api_base": self.mock_url,
                                "aws_region_name": "us-east-1"},
             "model_info": {"id": "cohere-embed", "mode": "embedding"}},
            # A wildcard: any `wild/<name>` goes to the OpenAI-format mock as `<name>`, priced
            # from the built-in table.
            {"model_name": "wild/*", "litellm_params": {"model": "openai/*", "api_base": openai_base,
                                                         "api_key": "os.environ/MOCK_OPENAI_KEY"}},
        ]
        keys = []
        for alias, flags in KEYS.items():
            out = self.cli("key", "new", "--alias", alias, *flags, "--json").stdout
            created = json.loads(out)
            entry = created["entry"]
            if alias == "blocked":
                entry["blocked"] = True
            if alias == "embeddings-only":
                entry["allowed_routes"] = ["/v1/embeddings"]
            if alias == "per-model":
                entry["model_rpm_limit"] = {"gpt-4o-mini": 3}
            keys.append(entry)
            self.keys[alias] = created["key"]
            self.key_ids[alias] = created["key_hash"].removeprefix("sha256:")[:16]
        # A key brought from LiteLLM, configured by the digest LiteLLM keeps of it (its `token`).
        self.keys["from-litellm"] = LITELLM_KEY
        keys.append({"key_hash": "sha256:" + hashlib.sha256(LITELLM_KEY.encode()).hexdigest(),
                     "key_alias": "from-litellm", "models": ["gpt-4o-mini"]})
        config = {
            "model_list": models,
            "router_settings": {
                "routing_strategy": "simple-shuffle",
                # The error tests send failures to gpt-4o's two deployments on purpose; cooldown
                # (on by default, as in LiteLLM) is test_retries.py's to test.
                "disable_cooldowns": True,
                "model_group_alias": {"gpt-4": "gpt-4o-mini", "mini-hidden": {"model": "gpt-4o-mini", "hidden": True}},
            },
            "general_settings": {"master_key": "os.environ/SLUICE_MASTER_KEY", "max_request_size_mb": 1},
            "teams": [
                {"team_id": "platform", "rpm_limit": 100000, "max_budget": 1000},
                {"team_id": "capped", "rpm_limit": 5},
                {"team_id": "frozen", "blocked": True},
            ],
            # End users (LiteLLM's customers) the requests name with `user`.
            "customers": [
                {"customer_id": "rpm3-customer", "rpm_limit": 3},
                {"customer_id": "blocked-customer", "blocked": True},
            ],
            "keys": keys,
        }
        self.config_path = self.workdir / "config.yaml"
        # JSON is valid YAML.
        self.config_path.write_text(json.dumps(config, indent=2))

    def start_envoy(self, wasm=None, concurrency=2):
        """Envoy from `sluice envoy-config` with the build SLUICE_FILTER_BUILD names (or the
        given wasm module), once ready."""
        self.port = free_port()
        self.admin_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        self.envoy_yaml = self.workdir / "envoy.yaml"
        self.module_args = self.filter_args(wasm)
        self.cli("envoy-config", "-c", str(self.config_path), *self.module_args,
                 "--out", str(self.envoy_yaml), "--listen", f"127.0.0.1:{self.port}",
                 "--admin-port", str(self.admin_port))
        self.log_path = self.workdir / "envoy.log"
        log = open(self.log_path, "w")
        proc = self.proc = subprocess.Popen(
            [self.env_bin["ENVOY_BIN"], "-c", str(self.envoy_yaml), "--disable-hot-restart",
             "--concurrency", str(concurrency), "--log-level", "info"],
            env=self.env, stdout=subprocess.DEVNULL, stderr=log)
        self.procs.append(proc)
        deadline = time.time() + 60
        while time.time() < deadline:
            assert proc.poll() is None, f"Envoy exited: {self.log_path.read_text()[-3000:]}"
            try:
                if httpx.get(f"{self.admin}/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"Envoy never became ready: {self.log_path.read_text()[-3000:]}")

    def filter_args(self, wasm=None):
        """`sluice envoy-config`'s flags for the build under test (or the given wasm module)."""
        if wasm is None and NATIVE:
            return ["--native", self.env_bin["SLUICE_NATIVE"]]
        return ["--wasm", wasm or self.env_bin["SLUICE_WASM"]]

    def stop(self):
        stop_all(self.procs)

    def serve(self):
        """A fixture's body: the mock, the config and Envoy started, the gateway yielded, all
        stopped afterwards (`yield from Gateway(...).serve()`)."""
        try:
            self.start_mock()
            self.write_config()
            self.start_envoy()
            yield self
        finally:
            self.stop()

    # -- helpers for tests -----------------------------------------------------------------

    def auth(self, alias):
        return {"Authorization": f"Bearer {self.keys[alias]}"}

    def post(self, path, alias, body, headers=None, **kw):
        hdrs = {**self.auth(alias), **(headers or {})}
        if isinstance(body, (dict, list)):
            return httpx.post(self.url + path, json=body, headers=hdrs, timeout=30, **kw)
        return httpx.post(self.url + path, content=body, headers=hdrs, timeout=30, **kw)

    def records(self, alias=None):
        """Usage records written so far (optionally only one key's)."""
        out = []
        text = self.log_path.read_text(errors="replace")
        # Envoy may be writing the last line right now: only complete lines are read.
        for line in text[:text.rfind("\n") + 1].splitlines():
            idx = line.find("sluice.usage ")
            if idx >= 0:
                rec = json.loads(line[idx + len("sluice.usage "):])
                if alias is None or rec["key_alias"] == alias:
                    out.append(rec)
        return out

    def wait_records(self, alias, count, timeout=10.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            recs = self.records(alias)
            if len(recs) >= count:
                time.sleep(0.2)  # anything extra would show up now
                return self.records(alias)
            time.sleep(0.05)
        raise AssertionError(f"expected {count} usage records for {alias}, got {len(self.records(alias))}")

    def wait_for(self, predicate, timeout=10.0):
        """Polls until predicate(records) is truthy; returns the records."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            recs = self.records()
            if predicate(recs):
                return recs
            time.sleep(0.05)
        raise AssertionError("usage records never matched")

    def mock_stats(self):
        return httpx.get(f"{self.mock_url}/mock/stats", timeout=5).json()

    def prometheus(self):
        return httpx.get(f"{self.admin}/stats/prometheus", timeout=5).text


def cost(group, prompt, completion, cached=0, cache_write=0):
    inp, out, cached_price, write_price = PRICES[group]
    plain = prompt - cached - cache_write
    return (plain * inp + cached * (cached_price if cached_price is not None else inp)
            + cache_write * (write_price if write_price is not None else inp) + completion * out)


@pytest.fixture(scope="session")
def gw():
    missing = [k for k in ARTIFACTS if not os.environ.get(k)]
    if missing:
        pytest.fail(f"set {', '.join(missing)} (cargo xtask test does this)")
    with tempfile.TemporaryDirectory(prefix="sluice-it-") as tmp:
        yield from Gateway(Path(tmp)).serve()
