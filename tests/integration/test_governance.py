"""Governance across a fleet (xDS mode): customers, the gateway's own budget, IP allow-lists.

A real control plane and real Envoys (`test_xds.Fleet`). A request names its end user with the
body's `user` (or LiteLLM's `x-litellm-customer-id` header); a customer made through the CLI or
LiteLLM's `/customer/new` is refused by every Envoy once blocked, counted against its RPM limit
across all keys, and refused by every Envoy once its budget (its own or its budget object's) is
spent through any of them, until it is unblocked or given more budget. `litellm_settings`'
`max_end_user_budget` and `max_budget` hold across the fleet the same way. `allowed_ips` (the
gateway's and a key's) are checked against the address Envoy saw: the clients here connect
from different loopback addresses (127.0.0.0/8 is all local on Linux).
"""

import json
import time

import httpx
import pytest

from test_xds import CHAT, Fleet, create_key, fleet, wait_until  # noqa: F401 (the fixture)


def as_customer(user):
    return dict(CHAT, user=user)


def refused(resp, code):
    return resp.status_code != 200 and resp.json()["error"]["code"] == code and resp


def spend_until_refused(envoy, body, key):
    """Requests until one is refused; returns how many were served and the refusal."""
    for served in range(40):
        resp = envoy.chat(body, key=key)
        if resp.status_code != 200:
            return served, resp
    raise AssertionError("never refused")


def refused_across_the_fleet(first, second, body, fleet_says):
    """After the first Envoy refused by its own count: the control plane counts what it shipped
    and tells every Envoy, so its refusal turns into the fleet's (a refusal spends nothing, so
    waiting on it adds no spend), and the second Envoy, whose config came with it (give or take
    a request), refuses with the same words."""
    (a, key_a), (b, key_b) = first, second
    wait_until(lambda: a.chat(body, key=key_a).json()["error"]["message"] == fleet_says, timeout=5,
               what="the fleet's word on the first Envoy")
    resp = wait_until(lambda: refused(b.chat(body, key=key_b), "budget_exceeded"), timeout=5,
                      what="the second Envoy refuses")
    assert resp.json()["error"]["message"] == fleet_says


def test_a_blocked_customer_is_refused_by_every_envoy_until_unblocked(fleet):
    a = fleet.start_envoy("edge-a")
    b = fleet.start_envoy("edge-b")
    key, _ = create_key(fleet, "--alias", "app")
    assert a.chat(as_customer("ada"), key=key).status_code == 200
    # Through LiteLLM's REST API on the gateway's own URL, as LiteLLM's users script it.
    admin = {"Authorization": f"Bearer {fleet.master_key}"}
    resp = httpx.post(f"{a.url}/customer/new", json={"user_id": "ada"}, headers=admin, timeout=10)
    assert resp.status_code == 200, resp.text
    resp = httpx.post(f"{a.url}/customer/block", json={"user_ids": ["ada"]}, headers=admin, timeout=10)
    assert resp.status_code == 200, resp.text

    for envoy in (a, b):
        resp = wait_until(lambda e=envoy: refused(e.chat(as_customer("ada"), key=key), "customer_blocked"),
                          timeout=5, what="the blocked customer refused")
        error = resp.json()["error"]
        assert resp.status_code == 400
        assert (error["message"], error["param"]) == ("User blocked from making LLM API Calls. User=ada", "user")
    # LiteLLM's header names the customer before the body does.
    resp = httpx.post(f"{b.url}/v1/chat/completions", json=as_customer("someone-else"), timeout=10,
                      headers={"Authorization": f"Bearer {key}", "x-litellm-customer-id": "ada"})
    assert refused(resp, "customer_blocked"), resp.text
    # Nothing of the refused requests went upstream or was billed; others are served.
    assert a.chat(as_customer("grace"), key=key).status_code == 200
    assert a.chat(CHAT, key=key).status_code == 200

    fleet.cli("customer", "unblock", "ada")
    for envoy in (a, b):
        wait_until(lambda e=envoy: e.chat(as_customer("ada"), key=key).status_code == 200, timeout=5,
                   what="the unblocked customer served")


def test_a_customers_budget_spent_through_one_envoy_is_refused_by_the_other(fleet):
    a = fleet.start_envoy("edge-a")
    b = fleet.start_envoy("edge-b")
    # Each request costs ~$0.00016 (gpt-4o, 16 output tokens): ~7 spend the budget.
    fleet.cli("budget", "create", "--id", "free-tier", "--max-budget", "0.001", "--budget-duration", "30d")
    fleet.cli("customer", "create", "--id", "ada", "--budget", "free-tier")
    key_a, _ = create_key(fleet, "--alias", "app-a")
    key_b, _ = create_key(fleet, "--alias", "app-b")
    assert b.chat(as_customer("ada"), key=key_b).status_code == 200

    # a stops at the first of two: its own count of the customer's spend reaching the budget, or
    # the control plane's word that the fleet's total (b's request with a's) did, which comes as
    # soon as a's usage is ingested (a CI run saw the second first).
    fleet_says = "Budget has been exceeded! End User=ada has spent its budget. Max budget: 0.001000"
    served, resp = spend_until_refused(a, as_customer("ada"), key_a)
    assert refused(resp, "budget_exceeded"), resp.text
    message = resp.json()["error"]["message"]
    assert message.startswith("End user budget has been exceeded!") or message == fleet_says, message
    assert 4 <= served <= 8, served
    # b, which served ada once, hears from the control plane that the fleet spent it.
    refused_across_the_fleet((a, key_a), (b, key_b), as_customer("ada"), fleet_says)
    assert b.chat(as_customer("grace"), key=key_b).status_code == 200, "other end users are not affected"

    # The spend is the customer's, as reported, and at most one request over the budget.
    report = fleet.cli("spend", "--group-by", "customer", "--json").stdout
    ada = next(r for r in json.loads(report)["rows"] if r["group"] == "ada")
    assert 0.001 <= ada["spend"] < 0.001 + 0.0005, ada
    # LiteLLM's `/customer/info` shows the same spend, with the window's reset time.
    admin = {"Authorization": f"Bearer {fleet.master_key}"}
    info = httpx.get(f"{a.url}/customer/info", params={"end_user_id": "ada"}, headers=admin, timeout=10).json()
    assert abs(info["spend"] - ada["spend"]) < 1e-9, (info, ada)
    assert info["litellm_budget_table"]["budget_reset_at"], info

    # More budget: served again everywhere.
    fleet.cli("budget", "update", "free-tier", "--max-budget", "1")
    for envoy, key in ((a, key_a), (b, key_b)):
        wait_until(lambda e=envoy, k=key: e.chat(as_customer("ada"), key=k).status_code == 200, timeout=5,
                   what="the customer served with more budget")


def test_a_customers_rpm_limit_counts_every_key_that_names_it(fleet):
    envoy = fleet.start_envoy("edge-a")
    fleet.cli("customer", "create", "--id", "bob", "--rpm", "3")
    keys = [create_key(fleet, "--alias", f"app-{i}")[0] for i in range(3)]
    # One minute's window for the whole test (RPM windows are the clock's minutes).
    if time.time() % 60 > 45:
        time.sleep(60.5 - time.time() % 60)
    wait_until(lambda: refused(envoy.chat(as_customer("bob"), key=keys[0]), "rate_limit_exceeded")
               or None, timeout=5, what="the customer's limit in force")
    # The limit counted the requests above; every key now gets the customer's 429.
    for key in keys:
        resp = envoy.chat(as_customer("bob"), key=key)
        assert refused(resp, "rate_limit_exceeded"), resp.text
        assert "the end user of this request" in resp.json()["error"]["message"]
        assert resp.headers.get("retry-after")
    assert envoy.chat(as_customer("carol"), key=keys[0]).status_code == 200


def fleet_with(tmp_path, litellm_settings):
    f = Fleet(tmp_path)
    config = json.loads(f.config_path.read_text())
    config.setdefault("litellm_settings", {}).update(litellm_settings)
    f.config_path.write_text(json.dumps(config))
    f.start_control_plane()
    return f


def test_an_end_users_default_budget_is_its_own_and_held_across_the_fleet(tmp_path):
    """`litellm_settings.max_end_user_budget`: every end user without a customer entry may spend
    that much; one who did, through one Envoy, is refused by the other too; others are not."""
    fleet = fleet_with(tmp_path, {"max_end_user_budget": 0.0005})
    try:
        a = fleet.start_envoy("edge-a")
        b = fleet.start_envoy("edge-b")
        key, _ = create_key(fleet, "--alias", "app")
        assert b.chat(as_customer("dee"), key=key).status_code == 200
        served, resp = spend_until_refused(a, as_customer("dee"), key)
        assert refused(resp, "budget_exceeded"), resp.text
        assert 2 <= served <= 4, served
        fleet_says = "Budget has been exceeded! End User=dee has spent its budget. Max budget: 0.000500"
        refused_across_the_fleet((a, key), (b, key), as_customer("dee"), fleet_says)
        for envoy in (a, b):
            assert envoy.chat(as_customer("eli"), key=key).status_code == 200
            assert envoy.chat(CHAT, key=key).status_code == 200
    finally:
        fleet.stop()


def test_the_gateways_own_budget_spent_through_one_envoy_stops_every_envoy(tmp_path):
    """LiteLLM's proxy budget (`litellm_settings.max_budget`): all spend, every key, counts."""
    fleet = fleet_with(tmp_path, {"max_budget": 0.001, "budget_duration": "30d"})
    try:
        a = fleet.start_envoy("edge-a")
        b = fleet.start_envoy("edge-b")
        key_a, key_a_id = create_key(fleet, "--alias", "app-a")
        key_b, _ = create_key(fleet, "--alias", "app-b")
        assert b.chat(CHAT, key=key_b).status_code == 200
        served, resp = spend_until_refused(a, CHAT, key_a)
        assert refused(resp, "budget_exceeded"), resp.text
        assert resp.json()["error"]["message"].startswith("The gateway's budget (litellm_settings.max_budget)")
        # a stops at the first of two: its own count reaching the budget (its readiness check and
        # its requests: 4 or 5 of them), or the control plane's word that the fleet's total did,
        # which also has b's request and both Envoys' readiness checks (about 0.00064 before a's
        # first request), so it can come as early as after a's second request, as soon as that
        # request's usage is ingested: how early depends on when a ships its usage.
        assert 2 <= served <= 7, served
        fleet_says = "The gateway's budget (litellm_settings.max_budget) has been exceeded! Max budget: 0.001000"
        refused_across_the_fleet((a, key_a), (b, key_b), CHAT, fleet_says)
        # Either way a never spent past the budget by more than one request, and the fleet's
        # total reached it.
        report = json.loads(fleet.cli("spend", "--group-by", "key", "--json").stdout)
        [own] = [r for r in report["rows"] if r["group"] == key_a_id]
        per_request = own["spend"] / served
        assert own["spend"] < 0.001 + per_request, report
        assert report["spend"] >= 0.001
    finally:
        fleet.stop()


def client_from(address):
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=10)


def test_allow_lists_of_the_gateway_and_of_a_key_hold_on_the_address_envoy_saw(tmp_path):
    fleet = Fleet(tmp_path)
    config = json.loads(fleet.config_path.read_text())
    config["general_settings"]["allowed_ips"] = ["127.0.0.0/29"]
    fleet.config_path.write_text(json.dumps(config))
    try:
        fleet.start_control_plane()
        envoy = fleet.start_envoy("edge-a")
        admin = {"Authorization": f"Bearer {fleet.master_key}"}
        made = httpx.post(f"{envoy.url}/key/generate", headers=admin, timeout=10,
                          json={"key_alias": "from-3", "allowed_ips": ["127.0.0.3/32"]})
        assert made.status_code == 200, made.text
        assert made.json()["allowed_ips"] == ["127.0.0.3/32"]
        narrow = made.json()["key"]
        anywhere, _ = create_key(fleet, "--alias", "anywhere")

        def chat(address, key):
            with client_from(address) as c:
                return c.post(f"{envoy.url}/v1/chat/completions", json=CHAT,
                              headers={"Authorization": f"Bearer {key}"})

        assert chat("127.0.0.2", anywhere).status_code == 200
        assert chat("127.0.0.3", narrow).status_code == 200
        for address, key in (("127.0.0.2", narrow), ("127.0.0.9", anywhere), ("127.0.0.9", "sk-anything")):
            resp = chat(address, key)
            error = resp.json()["error"]
            assert (resp.status_code, error["code"]) == (403, "ip_not_allowed"), resp.text
            assert error["message"] == f"Access forbidden: IP address {address} not allowed."
        # Management calls through the gateway are held to the gateway's list too; probes are not.
        with client_from("127.0.0.9") as c:
            assert c.get(f"{envoy.url}/key/info", params={"key": anywhere}, headers=admin).status_code == 403
            assert c.get(f"{envoy.url}/health/liveliness").status_code == 200
        # A list that does not parse is refused with the entry named.
        bad = httpx.post(f"{envoy.url}/key/generate", headers=admin, timeout=10, json={"allowed_ips": ["10.0.0.0/33"]})
        assert bad.status_code == 400 and "10.0.0.0/33" in bad.text, bad.text
        # Lifted: the key is served from anywhere the gateway allows.
        httpx.post(f"{envoy.url}/key/update", headers=admin, timeout=10, json={"key": narrow, "allowed_ips": []})
        wait_until(lambda: chat("127.0.0.2", narrow).status_code == 200, timeout=5, what="the lifted key list")
    finally:
        fleet.stop()
