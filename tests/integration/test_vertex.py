"""Vertex AI through a real control plane and real Envoys (xDS mode).

The mock provider plays Vertex AI (Gemini's generateContent and Claude's rawPredict on a
project's path) with `--google-auth`: it answers only requests carrying an access token it
issued itself and that has not expired. It also plays Google's token endpoint (a service
account's signed assertion exchanged for a token) and the metadata server. So a 200 here means
the control plane minted a token from the deployment's credentials and Envoy set it from SDS;
the filter never held it.

Three deployments, one per credentials source: a service account's JSON in an environment
variable, the same JSON in a file config.yaml names, and the metadata server (application
default credentials, `GCE_METADATA_HOST` pointed at the mock).
"""

import json
import os
import re
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from anthropic import Anthropic
from openai import OpenAI

from conftest import NATIVE, free_port, stop_all
from test_xds import Fleet, wait_until

ROOT = Path(__file__).resolve().parents[2]
# The RSA key the control plane's unit tests sign with: made for tests, grants nothing.
TEST_KEY = (ROOT / "control-plane/src/testdata/test-service-account-key.pem").read_text()
# Short-lived tokens, so the test sees them refreshed (the control plane renews at half-life).
TOKEN_TTL_SECS = 4
PROJECT = "acme-ml"
LOCATION = "europe-west4"


def start_google_mock(fleet):
    """A second mock provider that is Vertex AI and Google's token services."""
    mock = subprocess.Popen([fleet.bins["SLUICE_MOCK"], "--listen", "127.0.0.1:0", "--google-auth",
                             "--google-token-ttl", str(TOKEN_TTL_SECS)], stdout=subprocess.PIPE, text=True)
    fleet.procs.append(mock)
    match = re.search(r"listening on 127\.0\.0\.1:(\d+)", mock.stdout.readline())
    assert match, "mock provider did not start"
    return f"127.0.0.1:{match.group(1)}"


@pytest.fixture(scope="module")
def vertex(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("vertex")
    fleet = Fleet(workdir)
    try:
        google = start_google_mock(fleet)
        fleet.google_url = f"http://{google}"
        account = {"type": "service_account", "project_id": PROJECT, "private_key_id": "test-kid",
                   "private_key": TEST_KEY, "client_email": f"sluice@{PROJECT}.iam.gserviceaccount.com",
                   "token_uri": f"http://{google}/token"}
        key_file = workdir / "service-account.json"
        key_file.write_text(json.dumps(account))
        fleet.env["VERTEX_SA_JSON"] = json.dumps(account)
        # Application default credentials: no file, so the metadata server (the mock).
        fleet.env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
        fleet.env["GCE_METADATA_HOST"] = google

        def entry(name, model, credentials=None, model_id=None):
            params = {"model": model, "api_base": fleet.google_url, "vertex_project": PROJECT,
                      "vertex_location": LOCATION}
            if credentials:
                params["vertex_credentials"] = credentials
            return {"model_name": name, "litellm_params": params, "model_info": {"id": model_id or name}}

        config = json.loads(fleet.config_path.read_text())
        config["model_list"] += [
            entry("vertex-gemini", "vertex_ai/gemini-2.5-flash", "os.environ/VERTEX_SA_JSON"),
            entry("vertex-claude", "vertex_ai/claude-3-5-haiku@20241022", str(key_file)),
            entry("vertex-metadata", "vertex_ai/gemini-2.5-flash", None),
        ]
        fleet.config_path.write_text(json.dumps(config))
        # A Google token goes only to Vertex AI's hosts, or to hosts the operator lists.
        fleet.serve_args += ["--upstream-hosts", "127.0.0.1"]
        fleet.start_control_plane()
        envoy = fleet.start_envoy("edge-vertex")
        fleet.envoy = envoy
        # The first tokens are minted in the background: wait until Envoy has them.
        for model in ("vertex-gemini", "vertex-claude", "vertex-metadata"):
            wait_until(lambda: envoy.chat({"model": model, "max_tokens": 5,
                                           "messages": [{"role": "user", "content": "hi"}]}).status_code == 200,
                       timeout=30, what=f"{model} served with a token")
        yield fleet
    finally:
        fleet.stop()


def google_stats(fleet):
    return httpx.get(f"{fleet.google_url}/mock/stats", timeout=5).json()


def last_vertex_request(fleet):
    return google_stats(fleet)["requests"][-1]


def openai_client(fleet):
    return OpenAI(base_url=f"{fleet.envoy.url}/v1", api_key=fleet.master_key, max_retries=0)


def test_the_openai_sdk_reaches_gemini_on_vertex_with_a_minted_token(vertex):
    client = openai_client(vertex)
    reply = client.chat.completions.create(model="vertex-gemini", messages=[{"role": "user", "content": "hello"}])
    assert reply.choices[0].message.content and reply.model == "vertex-gemini"
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0
    seen = last_vertex_request(vertex)
    assert seen["path"] == f"/v1/projects/{PROJECT}/locations/{LOCATION}/publishers/google/models/gemini-2.5-flash:generateContent"
    assert seen["authorization"].startswith("Bearer ya29.mock-")
    assert vertex.master_key not in json.dumps(seen)

    chunks = list(client.chat.completions.create(model="vertex-gemini", stream=True,
                                                 stream_options={"include_usage": True},
                                                 messages=[{"role": "user", "content": "hello"}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].usage.completion_tokens > 0
    seen = last_vertex_request(vertex)
    assert seen["path"].endswith(":streamGenerateContent") and seen["query"] == "alt=sse"


def test_claude_on_vertex_answers_the_openai_and_the_anthropic_sdks(vertex):
    client = openai_client(vertex)
    reply = client.chat.completions.create(model="vertex-claude", max_tokens=50,
                                           messages=[{"role": "user", "content": "hello"}])
    assert reply.choices[0].message.content and reply.usage.prompt_tokens > 0
    seen = last_vertex_request(vertex)
    assert seen["path"] == (f"/v1/projects/{PROJECT}/locations/{LOCATION}/publishers/anthropic/models/"
                            "claude-3-5-haiku@20241022:rawPredict")
    assert seen["authorization"].startswith("Bearer ya29.mock-")
    # Vertex's body: no model (it is the path's), Vertex's anthropic_version.
    assert "model" not in seen["body_json"] and seen["body_json"]["anthropic_version"] == "vertex-2023-10-16"

    anthropic = Anthropic(base_url=vertex.envoy.url, api_key=vertex.master_key, max_retries=0)
    message = anthropic.messages.create(model="vertex-claude", max_tokens=50,
                                        messages=[{"role": "user", "content": "hello"}])
    assert message.content[0].text and message.usage.output_tokens > 0
    with anthropic.messages.stream(model="vertex-claude", max_tokens=50,
                                   messages=[{"role": "user", "content": "hello"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.usage.output_tokens > 0
    assert last_vertex_request(vertex)["path"].endswith(":streamRawPredict")
    counted = anthropic.messages.count_tokens(model="vertex-claude", messages=[{"role": "user", "content": "hello"}])
    assert counted.input_tokens > 0
    assert last_vertex_request(vertex)["path"].endswith("/publishers/anthropic/models/count-tokens:rawPredict")


def test_the_metadata_servers_token_serves_its_deployment(vertex):
    before = google_stats(vertex)["google_tokens_issued"]
    resp = vertex.envoy.chat({"model": "vertex-metadata", "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 200, resp.text
    seen = last_vertex_request(vertex)
    assert seen["authorization"].startswith("Bearer ya29.mock-")
    assert google_stats(vertex)["google_tokens_issued"] >= before


def test_each_vertex_request_is_billed_once_at_the_tables_price(vertex):
    resp = vertex.envoy.chat({"model": "vertex-gemini", "messages": [{"role": "user", "content": "price me"}]})
    assert resp.status_code == 200, resp.text
    usage = resp.json()["usage"]
    rows = wait_until(lambda: vertex.spend_rows(resp.headers["x-request-id"]), what="the spend row")
    assert len(rows) == 1
    # gemini-2.5-flash on Vertex in the built-in table: $0.30 in, $2.50 out per million tokens.
    expected = usage["prompt_tokens"] * 3e-7 + usage["completion_tokens"] * 2.5e-6
    assert rows[0]["cost_nanos"] > 0
    assert rows[0]["cost_nanos"] / 1e9 == pytest.approx(expected, abs=2e-9)


def test_tokens_are_refreshed_before_they_expire_and_no_request_fails(vertex):
    """Tokens live four seconds here: over ten seconds every request still carries a valid one
    (the mock refuses an expired token), because each is renewed at half-life and reaches the
    Envoy over SDS at once."""
    issued_before = google_stats(vertex)["google_tokens_issued"]
    seen_tokens = set()
    deadline = time.time() + 10
    while time.time() < deadline:
        resp = vertex.envoy.chat({"model": "vertex-gemini", "messages": [{"role": "user", "content": "hi"}]})
        assert resp.status_code == 200, resp.text
        seen_tokens.add(last_vertex_request(vertex)["authorization"])
        time.sleep(0.2)
    # Three sources renew every two seconds: a handful of new tokens, several seen by one deployment.
    assert google_stats(vertex)["google_tokens_issued"] - issued_before >= 6
    assert len(seen_tokens) >= 3, seen_tokens
    # No token in Envoy's config dump, the control plane's log or the Envoy's log.
    dump = httpx.get(f"{vertex.envoy.admin}/config_dump?include_eds", timeout=5).text
    for token in seen_tokens:
        value = token.removeprefix("Bearer ")
        assert value not in dump
        assert value not in vertex.cp_log_path.read_text()
        assert value not in vertex.envoy.log_path.read_text()
    assert "PRIVATE KEY" not in dump and "PRIVATE KEY" not in vertex.cp_log_path.read_text()


def standalone_filter_args():
    if NATIVE:
        return ["--native", os.environ["SLUICE_NATIVE"]]
    return ["--wasm", os.environ["SLUICE_WASM"]]


def test_a_standalone_envoy_is_served_by_sluice_google_tokens(tmp_path):
    """Standalone mode: no control plane, so `sluice google-tokens` beside Envoy mints the
    tokens and keeps each deployment's SDS file fresh; Envoy re-reads it when replaced.
    Without --google-token-dir, envoy-config refuses the Vertex deployment and says why."""
    procs = []
    try:
        mock = subprocess.Popen([os.environ["SLUICE_MOCK"], "--listen", "127.0.0.1:0", "--google-auth",
                                 "--google-token-ttl", str(TOKEN_TTL_SECS)], stdout=subprocess.PIPE, text=True)
        procs.append(mock)
        google = re.search(r"listening on (127\.0\.0\.1:\d+)", mock.stdout.readline()).group(1)
        account = {"type": "service_account", "private_key": TEST_KEY, "client_email": "sa@p.iam.gserviceaccount.com",
                   "token_uri": f"http://{google}/token"}
        master = "sk-master-" + os.urandom(16).hex()
        env = {**os.environ, "VERTEX_SA_JSON": json.dumps(account), "SLUICE_MASTER_KEY": master}
        config = tmp_path / "config.yaml"
        config.write_text(json.dumps({
            "model_list": [{"model_name": "g", "litellm_params": {
                "model": "vertex_ai/gemini-2.5-flash", "vertex_project": PROJECT, "api_base": f"http://{google}",
                "vertex_credentials": "os.environ/VERTEX_SA_JSON"}}],
            "general_settings": {"master_key": "os.environ/SLUICE_MASTER_KEY"}}))
        port, admin = free_port(), free_port()
        envoy_config = [os.environ["SLUICE_CLI"], "envoy-config", "-c", str(config), *standalone_filter_args(),
                        "--out", str(tmp_path / "envoy.yaml"), "--listen", f"127.0.0.1:{port}",
                        "--admin-port", str(admin)]
        refused = subprocess.run(envoy_config, capture_output=True, text=True, timeout=60, env=env)
        assert refused.returncode != 0
        assert "run `sluice google-tokens -c CONFIG --dir DIR`" in refused.stderr, refused.stderr

        tokens_dir = tmp_path / "tokens"
        refresher = subprocess.Popen([os.environ["SLUICE_CLI"], "google-tokens", "-c", str(config),
                                      "--dir", str(tokens_dir)], env=env, stdout=subprocess.PIPE, text=True,
                                     stderr=open(tmp_path / "google-tokens.log", "w"))
        procs.append(refresher)
        assert "kept fresh" in refresher.stdout.readline()
        files = list(tokens_dir.iterdir())
        assert len(files) == 1 and oct(files[0].stat().st_mode & 0o777) == "0o600"
        assert oct(tokens_dir.stat().st_mode & 0o777) == "0o700"
        subprocess.run([*envoy_config, "--google-token-dir", str(tokens_dir)], check=True, capture_output=True,
                       timeout=60, env=env)
        envoy_log = tmp_path / "envoy.log"
        envoy = subprocess.Popen([os.environ["ENVOY_BIN"], "-c", str(tmp_path / "envoy.yaml"), "--disable-hot-restart",
                                  "--concurrency", "1", "--base-id", str(port)],
                                 env=env, stdout=subprocess.DEVNULL, stderr=open(envoy_log, "w"))
        procs.append(envoy)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        body = {"model": "g", "messages": [{"role": "user", "content": "hi"}]}
        headers = {"Authorization": f"Bearer {master}"}
        wait_until(lambda: httpx.post(url, json=body, headers=headers, timeout=10).status_code == 200, timeout=30,
                   what="the standalone Envoy serving Vertex")
        # Over three token lifetimes every request carries a valid token: the file is replaced
        # at each renewal and Envoy follows.
        seen = set()
        deadline = time.time() + 3 * TOKEN_TTL_SECS
        while time.time() < deadline:
            resp = httpx.post(url, json=body, headers=headers, timeout=10)
            assert resp.status_code == 200, resp.text
            seen.add(httpx.get(f"http://{google}/mock/stats", timeout=5).json()["requests"][-1]["authorization"])
            time.sleep(0.2)
        assert len(seen) >= 3, seen
        # The token is in the SDS file only: not in Envoy's config dump or either log.
        dump = httpx.get(f"http://127.0.0.1:{admin}/config_dump", timeout=5).text
        for token in seen:
            value = token.removeprefix("Bearer ")
            assert value not in dump and value not in envoy_log.read_text()
            assert value not in (tmp_path / "google-tokens.log").read_text()
    finally:
        stop_all(procs)


def test_a_vertex_token_never_goes_to_a_host_that_is_not_vertex_or_listed(vertex):
    """Through the admin API: a Vertex deployment whose api_base is elsewhere is refused with
    the reason (the token is the control plane's Google identity)."""
    resp = httpx.post(f"http://127.0.0.1:{vertex.admin_port}/model/new", timeout=10,
                      headers={"Authorization": f"Bearer {vertex.master_key}"},
                      json={"model_name": "stolen", "litellm_params": {
                          "model": "vertex_ai/gemini-2.5-flash", "vertex_project": PROJECT,
                          "api_base": "https://attacker.example"}})
    assert resp.status_code >= 400, resp.text
    assert "not in --upstream-hosts" in resp.text or "goes only to Vertex AI's hosts" in resp.text, resp.text
