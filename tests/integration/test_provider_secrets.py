"""The control plane's own secrets never leave it as a provider credential.

A deployment names its credential (`api_key: os.environ/NAME`) and its upstream (`api_base`);
Envoy sends the first to the second. An admin who could name `SLUICE_MASTER_KEY` or
`DATABASE_URL` and point `api_base` at a server of theirs would walk away with them. A capture
server stands in for that server: whatever the admin API is asked, and whatever is then sent
through Envoy, none of the control plane's secrets ever reaches it.
"""

import json
import os
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from test_xds import CHAT, Fleet, wait_until


class Capture:
    """An HTTP server that answers like OpenAI and keeps every request it got (headers, body)."""

    def __init__(self):
        seen = self.seen = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                seen.append(str(self.headers) + body.decode("utf-8", "replace"))
                reply = json.dumps({"id": "c", "object": "chat.completion", "model": "x", "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            do_GET = do_POST

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()


@pytest.fixture
def setup(tmp_path):
    capture = Capture()
    fleet = Fleet(tmp_path)
    # Secrets of the control plane's own, as a production one would have them.
    fleet.secrets = {
        "SLUICE_MASTER_KEY": fleet.master_key,
        "DATABASE_URL": f"sqlite:{fleet.db}?password=db-secret-{os.urandom(6).hex()}",
        "REDIS_PASSWORD": "redis-secret-" + os.urandom(6).hex(),
        "WEBHOOK_URL": f"http://127.0.0.1:9/hooks/webhook-secret-{os.urandom(6).hex()}",
    }
    fleet.env.update(fleet.secrets)
    fleet.database_url = fleet.secrets["DATABASE_URL"].split("?")[0]
    try:
        fleet.start_control_plane()
        yield fleet, capture
    finally:
        fleet.stop()
        capture.stop()


def create_model(fleet, name, params):
    return subprocess.run([fleet.bins["SLUICE_CLI"], "--server", f"http://127.0.0.1:{fleet.admin_port}",
                           "--api-key", fleet.master_key, "model", "create", name, "--params", json.dumps(params),
                           "--info", json.dumps({"id": name, "input_cost_per_token": 1e-6})],
                          env=fleet.env, capture_output=True, text=True, timeout=60)


def test_no_secret_of_the_control_plane_reaches_a_server_an_admin_chose(setup, tmp_path):
    fleet, capture = setup
    envoy = fleet.start_envoy("edge-1")
    for var in fleet.secrets:
        refused = create_model(fleet, f"steal-{var.lower().replace('_', '-')}",
                               {"model": "openai/gpt-4o", "api_base": f"{capture.url}/v1", "api_key": f"os.environ/{var}"})
        assert refused.returncode != 0, f"{var} was accepted as a provider credential"
        assert f"os.environ/{var} names one of the control plane's own secrets" in refused.stderr, refused.stderr
        assert fleet.secrets[var] not in refused.stderr
    # A variable nobody allowed, and the cloud's metadata service, are refused too.
    off_list = create_model(fleet, "steal-home", {"model": "openai/x", "api_base": capture.url, "api_key": "os.environ/HOME"})
    assert off_list.returncode != 0 and "--provider-credentials" in off_list.stderr, off_list.stderr
    metadata = create_model(fleet, "steal-metadata", {"model": "openai/x", "api_base": "http://169.254.169.254/latest",
                                                      "api_key": "os.environ/MOCK_OPENAI_KEY"})
    assert metadata.returncode != 0 and "link-local" in metadata.stderr, metadata.stderr

    # An allowed credential may go where an admin points it (that is what deployments are), and
    # requests through Envoy reach the capture server with it, and with nothing else.
    allowed = create_model(fleet, "captured", {"model": "openai/gpt-4o", "api_base": f"{capture.url}/v1",
                                               "api_key": "os.environ/MOCK_OPENAI_KEY"})
    assert allowed.returncode == 0, allowed.stderr
    wait_until(lambda: envoy.chat({**CHAT, "model": "captured"}).status_code == 200, what="the captured deployment")
    for model in ("captured", "gpt-4o", "steal-sluice-master-key", "steal-database-url"):
        envoy.chat({**CHAT, "model": model})
    assert capture.seen, "the capture server got nothing: the test proves nothing"
    assert any(fleet.openai_key in request for request in capture.seen)
    everything = "\n".join(capture.seen)
    for var, value in fleet.secrets.items():
        assert value not in everything, f"{var} reached the capture server"
    dump = httpx.get(f"{envoy.admin}/config_dump?include_eds", timeout=5).text
    for var, value in fleet.secrets.items():
        assert value not in dump, f"{var} is in Envoy's config dump"


def test_a_config_file_naming_the_control_planes_secret_does_not_start(tmp_path):
    fleet = Fleet(tmp_path)
    try:
        config = json.loads(fleet.config_path.read_text())
        config["model_list"][0]["litellm_params"]["api_key"] = "os.environ/SLUICE_MASTER_KEY"
        fleet.config_path.write_text(json.dumps(config))
        with pytest.raises(AssertionError):
            fleet.start_control_plane()
        log = fleet.cp_log_path.read_text()
        assert "os.environ/SLUICE_MASTER_KEY names one of the control plane's own secrets" in log, log
        assert fleet.master_key not in log
    finally:
        fleet.stop()
