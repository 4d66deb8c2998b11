"""Budgets of users and organizations across the fleet, and LiteLLM's budget webhook.

A real control plane and two real Envoys (xDS mode, `test_xds.Fleet`): a user's or an
organization's budget spent through one Envoy is refused by the other, whose key of that owner
was cached, within the revocation time; the webhook named by `WEBHOOK_URL` (with
`general_settings.alerting: ["webhook"]`) receives one `threshold_crossed` and one
`budget_crossed` event. One run delivers over https, to a receiver whose certificate comes from
a CA made for the test and trusted through `SSL_CERT_FILE`.
"""

import hashlib
import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from conftest import CertAuthority
from test_xds import CHAT, Fleet, create_key, wait_until


class WebhookReceiver:
    """A tiny HTTP server in the test process that keeps every JSON body POSTed to it; with
    `tls` (certificate and key files) an https server, reached by the name `localhost`."""

    def __init__(self, tls=None):
        self.events = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver.lock:
                    receiver.events.append((time.monotonic(), self.path, json.loads(body)))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{port}/sluice-alerts?team=platform"
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            self.url = f"https://localhost:{port}/sluice-alerts?team=platform"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of(self, event):
        with self.lock:
            return [(at, body) for at, _, body in self.events if body["event"] == event]

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def alerting_fleet(tmp_path, request):
    """A fleet whose budget webhook is http, or https when the test asks (indirect "https")."""
    https = getattr(request, "param", "http") == "https"
    ca = CertAuthority(tmp_path / "webhook-ca") if https else None
    hook = WebhookReceiver(tls=ca.leaf("receiver", "DNS:localhost") if https else None)
    f = Fleet(tmp_path)
    config = json.loads(f.config_path.read_text())
    config["general_settings"]["alerting"] = ["webhook"]
    f.config_path.write_text(json.dumps(config))
    f.env["WEBHOOK_URL"] = hook.url
    if https:
        # Trusted besides the built-in roots: the test's own CA.
        f.env["SSL_CERT_FILE"] = str(ca.cert)
    try:
        f.start_control_plane()
        yield f, hook
    finally:
        f.stop()
        hook.stop()


def refused(resp):
    return resp.status_code == 400 and resp


def test_a_user_budget_spent_through_one_envoy_is_refused_by_another_and_the_webhook_hears_it(alerting_fleet):
    fleet, hook = alerting_fleet
    a = fleet.start_envoy("edge-a")
    b = fleet.start_envoy("edge-b")
    # Each request costs ~$0.00016 (gpt-4o, 16 output tokens): ~6 reach the soft budget, ~13 the max.
    fleet.cli("user", "create", "--id", "alice", "--max-budget", "0.002", "--soft-budget", "0.001")
    key_a, key_a_id = create_key(fleet, "--alias", "alice-a", "--user", "alice")
    key_b, key_b_id = create_key(fleet, "--alias", "alice-b", "--user", "alice")
    other, _ = create_key(fleet, "--alias", "someone-else")
    assert b.chat(CHAT, key=key_b).status_code == 200  # b has alice's other key cached
    assert b.chat(CHAT, key=other).status_code == 200

    # Spend alice's budget through a alone. a has no counter for users: it goes on admitting
    # until the control plane has counted the usage a shipped, then refuses like every Envoy.
    a_refused = None
    for _ in range(80):
        resp = a.chat(CHAT, key=key_a)
        if resp.status_code != 200:
            a_refused = time.monotonic()
            break
    assert a_refused, "a never refused alice's key"
    error = resp.json()["error"]
    assert (resp.status_code, error["code"], error["type"]) == (400, "budget_exceeded", "budget_exceeded")
    assert error["message"].startswith("Budget has been exceeded! User=alice Current cost: ")
    assert error["message"].endswith("Max budget: 0.002000")

    crossed = wait_until(lambda: hook.of("budget_crossed"), timeout=10, what="budget_crossed delivered")
    spent_at = min(a_refused, crossed[0][0])
    resp = wait_until(lambda: refused(b.chat(CHAT, key=key_b)), timeout=5, what="b refuses alice's other key")
    elapsed = time.monotonic() - spent_at
    print(f"b refused alice's other key {elapsed * 1000:.0f} ms after the budget was spent")
    assert elapsed < 1.0
    assert "User=alice" in resp.json()["error"]["message"]
    assert b.chat(CHAT, key=other).status_code == 200, "other users are not affected"

    # Usage a shipped after the crossing still arrives: no second event of either kind.
    time.sleep(1.5)
    soft, hard = hook.of("threshold_crossed"), hook.of("budget_crossed")
    assert (len(soft), len(hard)) == (1, 1), hook.events
    assert soft[0][0] <= hard[0][0]
    for (_, event), threshold in ((soft[0], 0.001), (hard[0], 0.002)):
        assert (event["event_group"], event["user_id"]) == ("user", "alice")
        assert event["spend"] >= threshold
        assert (event["max_budget"], event["soft_budget"]) == (0.002, 0.001)
        # The key by its id, never the key or its digest.
        assert event["token"] in (key_a_id, key_b_id)
        assert event["key_alias"] in ("alice-a", "alice-b")
        assert event["team_id"] is None and event["organization_id"] is None
    assert hard[0][1]["event_message"] == "User Budget: Budget Crossed"
    assert soft[0][1]["event_message"] == "User Budget: Soft Budget Crossed"
    with hook.lock:
        assert {path for _, path, _ in hook.events} == {"/sluice-alerts?team=platform"}
        raw = json.dumps([body for _, _, body in hook.events])
    for key in (key_a, key_b):
        assert key not in raw and hashlib.sha256(key.encode()).hexdigest() not in raw
    assert 'sluice_webhook_events_total{result="sent"} 2\n' in fleet.metrics()


@pytest.mark.parametrize("alerting_fleet", ["https"], indirect=True)
def test_an_organization_budget_is_refused_across_the_fleet_until_its_window_resets(alerting_fleet):
    """Its webhook is https: a certificate for `localhost` from the test's CA (SSL_CERT_FILE)."""
    fleet, hook = alerting_fleet
    assert hook.url.startswith("https://localhost:")
    a = fleet.start_envoy("edge-a")
    b = fleet.start_envoy("edge-b")
    window = 10
    fleet.cli("org", "create", "--id", "acme", "--max-budget", "0.001", "--budget-duration", f"{window}s")
    fleet.cli("team", "create", "--id", "ml", "--org", "acme")
    # Two keys of the organization through its team (neither names the organization itself).
    key_a, _ = create_key(fleet, "--alias", "ml-a", "--team", "ml")
    key_b, _ = create_key(fleet, "--alias", "ml-b", "--team", "ml")
    # Start at the beginning of a budget window (epoch-aligned), so spending and refusal share one.
    time.sleep(window - time.time() % window + 0.05)
    assert b.chat(CHAT, key=key_b).status_code == 200  # cached on b
    for _ in range(60):
        if a.chat(CHAT, key=key_a).status_code != 200:
            break
    resp = wait_until(lambda: refused(b.chat(CHAT, key=key_b)), timeout=5, what="b refuses the organization's key")
    spent_in = time.time() % window
    assert resp.json()["error"]["message"].startswith("Budget has been exceeded! Organization=acme ")
    assert spent_in < window - 1, "spent too late in the window for this test to tell a reset apart"
    [(_, event)] = wait_until(lambda: hook.of("budget_crossed"), timeout=5, what="budget_crossed delivered")
    assert (event["event_group"], event["organization_id"], event["team_id"]) == ("organization", "acme", "ml")
    metrics = fleet.metrics()
    assert 'sluice_webhook_events_total{result="sent"} 1\n' in metrics
    assert 'sluice_webhook_events_total{result="failed"} 0\n' in metrics
    assert "on https://localhost:" in fleet.cp_log_path.read_text()
    # The window ends: the control plane tells every Envoy, and both keys spend again.
    for envoy, key in ((a, key_a), (b, key_b)):
        wait_until(lambda e=envoy, k=key: e.chat(CHAT, key=k).status_code == 200, timeout=window + 5,
                   what="the organization's new window")


def test_a_team_members_budget_is_refused_across_the_fleet_and_no_one_elses(alerting_fleet):
    """LiteLLM's team member budget: alice's spend through her keys of team ml counts against her
    own budget in ml (`max_budget_in_team`). Spent through one Envoy, her other key of the team
    is refused by the other Envoy, which had it cached; bob in the same team and alice's key
    outside the team are not; the webhook hears of it once, naming the member and the team."""
    fleet, hook = alerting_fleet
    a = fleet.start_envoy("edge-a")
    b = fleet.start_envoy("edge-b")
    for user in ("alice", "bob"):
        fleet.cli("user", "create", "--id", user)
    fleet.cli("team", "create", "--id", "ml")
    fleet.cli("team", "add-member", "ml", "alice", "--max-budget", "0.001")
    fleet.cli("team", "add-member", "ml", "bob")
    key_a, _ = create_key(fleet, "--alias", "alice-ml-a", "--team", "ml", "--user", "alice")
    key_b, _ = create_key(fleet, "--alias", "alice-ml-b", "--team", "ml", "--user", "alice")
    bobs, _ = create_key(fleet, "--alias", "bob-ml", "--team", "ml", "--user", "bob")
    personal, _ = create_key(fleet, "--alias", "alice-own", "--user", "alice")
    assert b.chat(CHAT, key=key_b).status_code == 200  # cached on b

    for _ in range(60):
        resp = a.chat(CHAT, key=key_a)
        if resp.status_code != 200:
            break
    error = resp.json()["error"]
    assert (resp.status_code, error["code"]) == (400, "budget_exceeded"), resp.text
    assert error["message"].startswith("Budget has been exceeded! Team member=alice in team=ml Current cost: ")
    resp = wait_until(lambda: refused(b.chat(CHAT, key=key_b)), timeout=5, what="b refuses alice's other ml key")
    assert "Team member=alice in team=ml" in resp.json()["error"]["message"]
    assert b.chat(CHAT, key=bobs).status_code == 200, "another member of the team is not affected"
    assert b.chat(CHAT, key=personal).status_code == 200, "alice outside the team is not affected"

    [(_, event)] = wait_until(lambda: hook.of("budget_crossed"), timeout=10, what="budget_crossed delivered")
    assert (event["event_group"], event["team_id"], event["user_id"]) == ("team", "ml", "alice")
    assert event["event_message"] == "Team member Budget: Budget Crossed" and event["max_budget"] == 0.001


def test_a_keys_model_budget_is_refused_across_the_fleet_for_that_model_only(alerting_fleet):
    """LiteLLM's `model_max_budget` on `/key/generate`: the key's spend on gpt-4o, in its own
    budget window, is capped; spent through one Envoy (which counts it itself), the other Envoy
    refuses gpt-4o for the key once the control plane counted it, and gpt-4o-mini stays open."""
    fleet, hook = alerting_fleet
    a = fleet.start_envoy("edge-a")
    b = fleet.start_envoy("edge-b")
    admin = {"Authorization": f"Bearer {fleet.master_key}"}
    resp = httpx.post(f"{a.url}/key/generate", headers=admin, timeout=10,
                      json={"model_max_budget": {"gpt-4o": {"budget_limit": 0.001}}, "budget_duration": "30d"})
    assert resp.status_code == 200, resp.text
    key, key_id = resp.json()["key"], resp.json()["token"]
    mini = dict(CHAT, model="gpt-4o-mini")
    assert b.chat(CHAT, key=key).status_code == 200  # cached on b

    served = 0
    for _ in range(40):
        resp = a.chat(CHAT, key=key)
        if resp.status_code != 200:
            break
        served += 1
    assert (resp.status_code, resp.json()["error"]["code"]) == (400, "budget_exceeded"), resp.text
    assert resp.json()["error"]["message"].startswith("This API key's budget for the model has been exceeded!")
    assert 4 <= served <= 8, served

    resp = wait_until(lambda: refused(b.chat(CHAT, key=key)), timeout=5, what="b refuses gpt-4o for the key")
    assert resp.json()["error"]["message"].endswith("Max budget: 0.001000")
    for envoy in (a, b):
        assert envoy.chat(mini, key=key).status_code == 200, "the key's other models are not limited"
    [(_, event)] = wait_until(lambda: hook.of("budget_crossed"), timeout=5, what="budget_crossed delivered")
    assert (event["event_group"], event["token"], event["max_budget"]) == ("key", key_id, 0.001)
