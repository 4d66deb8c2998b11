"""LiteLLM's `generic_api` logging callback, sent by `sluice serve` from the usage real Envoy
traffic reported: a local receiver (the endpoint a user would run) gets LiteLLM's
StandardLoggingPayload for each spend row, successes and failures, with the headers
GENERIC_LOGGER_HEADERS names; a receiver that is down never slows a request or loses spend."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from conftest import free_port
from test_xds import CHAT, Fleet, create_key, wait_until


class Receiver:
    """An HTTP endpoint that keeps what it is POSTed."""

    def __init__(self):
        self.port = free_port()
        self.posts = []
        received = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                received.append(({k.lower(): v for k, v in self.headers.items()}, json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self):
        return [event for _, batch in self.posts for event in batch]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    receiver = Receiver()
    f = Fleet(tmp_path_factory.mktemp("callbacks"))
    try:
        config = json.loads(f.config_path.read_text())
        config["litellm_settings"] = {"success_callback": ["generic_api"], "failure_callback": ["generic_api"]}
        f.config_path.write_text(json.dumps(config))
        f.env["GENERIC_LOGGER_ENDPOINT"] = f"http://127.0.0.1:{receiver.port}/ingest"
        f.env["GENERIC_LOGGER_HEADERS"] = "Authorization=Bearer receiver-secret,X-Source=sluice"
        f.start_control_plane()
        yield f, receiver, f.start_envoy("edge-callbacks")
    finally:
        f.stop()
        receiver.stop()


def test_each_spend_row_reaches_the_generic_api_receiver_as_litellms_payload(world):
    fleet, receiver, envoy = world
    key, key_id = create_key(fleet, "--alias", "logged")
    for _ in range(2):
        assert envoy.chat({**CHAT, "user": "cust-9"}, key=key).status_code == 200
    refused = httpx.post(f"{envoy.url}/v1/chat/completions", json=CHAT, timeout=30,
                         headers={"Authorization": f"Bearer {key}", "x-mock-status": "429"})
    assert refused.status_code == 429
    events = wait_until(lambda: len(e := [x for x in receiver.events()
                                          if x["metadata"]["user_api_key_hash"] == key_id]) == 3 and e,
                        timeout=20, what="three events at the receiver")
    headers = receiver.posts[-1][0]
    assert headers["authorization"] == "Bearer receiver-secret" and headers["x-source"] == "sluice"
    assert headers["content-type"] == "application/json"
    ok = [e for e in events if e["status"] == "success"]
    failed = [e for e in events if e["status"] == "failure"]
    assert len(ok) == 2 and len(failed) == 1
    rows = httpx.get(f"http://127.0.0.1:{fleet.admin_port}/spend/logs", params={"api_key": key_id}, timeout=10,
                     headers={"Authorization": f"Bearer {fleet.master_key}"}).json()
    assert sorted(e["response_cost"] for e in events) == pytest.approx(sorted(r["spend"] for r in rows), abs=1e-12)
    for e in ok:
        assert e["call_type"] == "acompletion" and e["model_group"] == "gpt-4o" and e["end_user"] == "cust-9"
        assert e["metadata"]["user_api_key_alias"] == "logged" and e["total_tokens"] > 0
        assert e["endTime"] >= e["startTime"] > 1.7e9
        assert e["messages"] is None and e["response"] is None, "no text leaves the gateway"
    assert failed[0]["error_information"]["error_code"] == "429" and failed[0]["response_cost"] == 0
    # Each row once, whatever batches the Envoy replays.
    assert len({e["id"] for e in events}) == 3
    # No secret in any event.
    text = json.dumps(receiver.events())
    assert key not in text and fleet.master_key not in text and fleet.openai_key not in text


def test_a_receiver_that_is_down_slows_nothing_and_loses_no_spend(world):
    fleet, receiver, envoy = world
    receiver.stop()
    key, key_id = create_key(fleet, "--alias", "unlogged")
    for _ in range(3):
        r = envoy.chat(CHAT, key=key)
        assert r.status_code == 200 and r.elapsed.total_seconds() < 2
    logs = lambda: httpx.get(f"http://127.0.0.1:{fleet.admin_port}/spend/logs", params={"api_key": key_id},
                             timeout=10, headers={"Authorization": f"Bearer {fleet.master_key}"}).json()
    wait_until(lambda: len(logs()) == 3, what="the spend stored anyway")
    failed = lambda: int(next((line.rsplit(" ", 1)[1] for line in fleet.metrics().splitlines()
                               if line.startswith('sluice_callback_events_total{callback="generic_api",result="failed"}')), 0))
    wait_until(lambda: failed() >= 3, timeout=30, what="the undelivered events counted")
