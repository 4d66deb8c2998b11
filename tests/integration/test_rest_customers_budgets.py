"""LiteLLM's customer (end user) and budget endpoints on `sluice serve`'s admin port: the calls a
script written for LiteLLM makes (`/budget/new`, `/customer/new`, `/customer/block`, … and the
older `/end_user/*` names), answered in LiteLLM's shapes through the same services (and
authorisation, validation and audit) as the gRPC admin API and the CLI.

Customers are not enforced by the gateway yet (an Envoy does not read a request's `user` field
for them), so nothing here sends a model request as a customer."""
import json

import httpx
import pytest

from rest_support import audited, call, error, ok, rest_fleet


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    yield from rest_fleet(tmp_path_factory, "rest-customers")


def test_a_budget_is_created_read_updated_listed_and_deleted(fleet):
    body = {"budget_id": "rest-free-tier", "max_budget": 5.0, "soft_budget": 4.0, "budget_duration": "30d",
            "rpm_limit": 10, "tpm_limit": 1000, "max_parallel_requests": 2, "a_field_litellm_ignores_too": 1}
    made = ok(call(fleet, "POST", "/budget/new", json=body))
    assert made["budget_id"] == "rest-free-tier"
    assert (made["max_budget"], made["soft_budget"], made["budget_duration"]) == (5.0, 4.0, "30d")
    assert (made["rpm_limit"], made["tpm_limit"], made["max_parallel_requests"]) == (10, 1000, 2)
    assert made["created_at"] and "spend" not in made and "model_max_budget" not in made
    # Without an id, one is made.
    assert ok(call(fleet, "POST", "/budget/new", json={"max_budget": 1}))["budget_id"]
    # /budget/info: LiteLLM's POST with the ids to describe.
    assert ok(call(fleet, "POST", "/budget/info", json={"budgets": ["rest-free-tier"]})) == [made]
    # Update: a field given changes, a limit set to null is lifted, the rest stays.
    updated = ok(call(fleet, "POST", "/budget/update",
                      json={"budget_id": "rest-free-tier", "max_budget": 10, "rpm_limit": None}))
    assert (updated["max_budget"], updated["rpm_limit"], updated["tpm_limit"]) == (10.0, None, 1000)
    assert updated["budget_duration"] == "30d"
    listed = ok(call(fleet, "GET", "/budget/list"))
    assert [b for b in listed if b["budget_id"] == "rest-free-tier"] == [updated]
    # The CLI (the gRPC API) sees the same budget.
    cli = json.loads(fleet.cli("budget", "info", "rest-free-tier", "--json").stdout)["budgets"][0]
    assert cli["budget_id"] == "rest-free-tier"
    # Delete answers the budget deleted; it is gone.
    assert ok(call(fleet, "POST", "/budget/delete", json={"id": "rest-free-tier"})) == updated
    error(call(fleet, "POST", "/budget/info", json={"budgets": ["rest-free-tier"]}), 404)
    assert all(b["budget_id"] != "rest-free-tier" for b in ok(call(fleet, "GET", "/budget/list")))
    actions = audited(fleet)
    for action in ("budget.create", "budget.update", "budget.delete"):
        assert (action, "rest-free-tier") in actions, actions


def test_a_customer_on_a_budget_is_created_read_updated_blocked_listed_and_deleted(fleet):
    ok(call(fleet, "POST", "/budget/new", json={"budget_id": "paid-tier", "max_budget": 20.0,
                                                  "budget_duration": "1mo"}))
    ada = ok(call(fleet, "POST", "/customer/new", json={"user_id": "ada", "alias": "Ada", "budget_id": "paid-tier",
                                                        "rpm_limit": 30}))
    assert (ada["user_id"], ada["alias"], ada["blocked"], ada["budget_id"]) == ("ada", "Ada", False, "paid-tier")
    assert ada["rpm_limit"] == 30 and ada["max_budget"] is None
    assert ada["litellm_budget_table"]["budget_id"] == "paid-tier"
    assert ada["litellm_budget_table"]["max_budget"] == 20.0
    assert ada["spend"] == 0, "a new customer has spent nothing (counted, not made up)"
    # One with its own budget and no budget table, made blocked.
    bob = ok(call(fleet, "POST", "/customer/new", json={"user_id": "bob", "max_budget": 1.5, "budget_duration": "7d",
                                                        "blocked": True}))
    assert (bob["max_budget"], bob["budget_duration"], bob["blocked"]) == (1.5, "7d", True)
    assert bob["budget_id"] is None and bob["litellm_budget_table"] is None
    # Info by LiteLLM's query parameter.
    assert ok(call(fleet, "GET", "/customer/info", params={"end_user_id": "ada"})) == ada
    # Update: the fields given change, a limit set to null is lifted.
    ok(call(fleet, "POST", "/budget/new", json={"budget_id": "gold-tier", "max_budget": 100.0}))
    updated = ok(call(fleet, "POST", "/customer/update", json={"user_id": "ada", "alias": "Ada L.", "max_budget": 2.0,
                                                               "rpm_limit": None, "budget_id": "gold-tier"}))
    assert (updated["alias"], updated["max_budget"], updated["rpm_limit"]) == ("Ada L.", 2.0, None)
    assert updated["litellm_budget_table"]["max_budget"] == 100.0 and updated["blocked"] is False
    # Block and unblock, several at once, as LiteLLM answers them.
    blocked = ok(call(fleet, "POST", "/customer/block", json={"user_ids": ["ada", "bob"]}))["blocked_users"]
    assert [(c["user_id"], c["blocked"]) for c in blocked] == [("ada", True), ("bob", True)]
    assert ok(call(fleet, "GET", "/customer/info", params={"end_user_id": "ada"}))["blocked"] is True
    still = ok(call(fleet, "POST", "/customer/unblock", json={"user_ids": ["ada"]}))["blocked_users"]
    assert "ada" not in still and "bob" in still
    assert ok(call(fleet, "GET", "/customer/info", params={"end_user_id": "ada"}))["blocked"] is False
    # The CLI (the gRPC API) sees the same customer.
    cli = json.loads(fleet.cli("customer", "info", "ada", "--json").stdout)["customers"][0]
    assert (cli["customer_id"], cli["alias"], cli["budget_id"], cli["blocked"]) == ("ada", "Ada L.", "gold-tier", False)
    listed = {c["user_id"]: c for c in ok(call(fleet, "GET", "/customer/list"))}
    assert listed["ada"]["alias"] == "Ada L." and listed["bob"]["blocked"] is True
    # A budget a customer refers to cannot be deleted.
    error(call(fleet, "POST", "/budget/delete", json={"id": "gold-tier"}), 400)
    assert ok(call(fleet, "POST", "/budget/info", json={"budgets": ["gold-tier"]}))
    # Delete is all or nothing: one unknown id, and nobody is deleted.
    refused = error(call(fleet, "POST", "/customer/delete", json={"user_ids": ["ada", "nobody"]}), 404)
    assert "nobody" in refused["message"] and "ada" not in refused["message"]
    assert ok(call(fleet, "GET", "/customer/info", params={"end_user_id": "ada"}))["user_id"] == "ada"
    deleted = ok(call(fleet, "POST", "/customer/delete", json={"user_ids": ["ada", "bob"]}))
    assert deleted["deleted_customers"] == 2 and "ada" in deleted["message"]
    for gone in ("ada", "bob"):
        error(call(fleet, "GET", "/customer/info", params={"end_user_id": gone}), 404)
    # With no customer on it, the budget goes.
    assert ok(call(fleet, "POST", "/budget/delete", json={"id": "gold-tier"}))["budget_id"] == "gold-tier"
    actions = audited(fleet)
    for action in ("customer.create", "customer.update", "customer.block", "customer.unblock", "customer.delete"):
        assert (action, "ada") in actions, actions


def test_the_older_end_user_names_do_the_same(fleet):
    made = ok(call(fleet, "POST", "/end_user/new", json={"user_id": "eve", "alias": "Eve", "tpm_limit": 500}))
    assert (made["user_id"], made["tpm_limit"]) == ("eve", 500)
    assert ok(call(fleet, "GET", "/end_user/info", params={"end_user_id": "eve"})) == made
    assert ok(call(fleet, "POST", "/end_user/update", json={"user_id": "eve", "alias": "Eve B."}))["alias"] == "Eve B."
    assert ok(call(fleet, "POST", "/end_user/block", json={"user_ids": ["eve"]}))["blocked_users"][0]["blocked"]
    assert "eve" not in ok(call(fleet, "POST", "/end_user/unblock", json={"user_ids": ["eve"]}))["blocked_users"]
    assert "eve" in [c["user_id"] for c in ok(call(fleet, "GET", "/end_user/list"))]
    assert ok(call(fleet, "POST", "/end_user/delete", json={"user_ids": ["eve"]}))["deleted_customers"] == 1
    error(call(fleet, "GET", "/customer/info", params={"end_user_id": "eve"}), 404)


def test_bad_calls_get_litellms_error_shape_and_change_nothing(fleet):
    ok(call(fleet, "POST", "/budget/new", json={"budget_id": "kept-budget", "max_budget": 3.0}))
    kept = ok(call(fleet, "POST", "/customer/new", json={"user_id": "kept", "budget_id": "kept-budget"}))

    def state():
        return ok(call(fleet, "GET", "/customer/list")), ok(call(fleet, "GET", "/budget/list"))

    before = state()
    # No credential, a wrong one, and an LLM key (not an admin credential).
    error(httpx.post(f"{fleet.rest}/customer/new", json={"user_id": "x"}, timeout=10), 401)
    error(httpx.get(f"{fleet.rest}/budget/list", timeout=10), 401)
    error(call(fleet, "POST", "/budget/new", key="sk-master-wrong", json={}), 401)
    llm_key = ok(call(fleet, "POST", "/key/generate", json={"key_alias": "customers-llm-key"}))["key"]
    error(call(fleet, "POST", "/customer/block", key=llm_key, json={"user_ids": ["kept"]}), 403)
    error(call(fleet, "GET", "/customer/list", key=llm_key), 403)
    # Not JSON; fields of the wrong type, or missing, are named (422).
    error(call(fleet, "POST", "/customer/new", content=b"{not json"), 400)
    wrong = [
        ("/customer/new", {"user_id": "x", "max_budget": "lots"}, "max_budget"),
        ("/customer/new", {"user_id": "x", "blocked": "yes"}, "blocked"),
        ("/customer/new", {"alias": "no id"}, "user_id"),
        ("/customer/update", {"user_id": "kept", "rpm_limit": 1.5}, "rpm_limit"),
        ("/customer/delete", {"user_ids": "kept"}, "user_ids"),
        ("/customer/block", {"user_ids": [1]}, "user_ids"),
        ("/budget/new", {"budget_id": "x", "tpm_limit": "many"}, "tpm_limit"),
        ("/budget/update", {"max_budget": 1}, "budget_id"),
        ("/budget/info", {"budgets": "kept-budget"}, "budgets"),
        ("/budget/delete", {}, "id"),
    ]
    for path, body, param in wrong:
        assert error(call(fleet, "POST", path, json=body), 422)["param"] == param, (path, body)
    assert error(call(fleet, "GET", "/customer/info"), 422)["param"] == "end_user_id"
    # LiteLLM settings Sluice would not enforce are refused by name.
    unsupported = [
        ("/customer/new", {"user_id": "x", "allowed_model_region": "eu"}, "allowed_model_region"),
        ("/customer/new", {"user_id": "x", "default_model": "gpt-4o"}, "default_model"),
        ("/customer/new", {"user_id": "x", "spend": 3.0}, "spend"),
        ("/customer/update", {"user_id": "kept", "model_max_budget": {"gpt-4o": 1.0}}, "model_max_budget"),
        ("/budget/new", {"budget_id": "x", "model_max_budget": {"gpt-4o": {"max_budget": 1}}}, "model_max_budget"),
        ("/budget/update", {"budget_id": "kept-budget", "budget_reset_at": "2030-01-01T00:00:00Z"},
         "budget_reset_at"),
    ]
    for path, body, field in unsupported:
        assert error(call(fleet, "POST", path, json=body), 400)["message"] == f"{field}: not supported by Sluice"
    # Blocking is its own call, as for keys.
    assert "/customer/block" in error(call(fleet, "POST", "/customer/update",
                                           json={"user_id": "kept", "blocked": True}), 400)["message"]
    # The services' own validation, in the same shape.
    error(call(fleet, "POST", "/budget/new", json={"budget_id": "x", "max_budget": -1}), 400)
    error(call(fleet, "POST", "/customer/new", json={"user_id": "x", "budget_duration": "forever"}), 400)
    error(call(fleet, "POST", "/customer/new", json={"user_id": "kept"}), 400)
    error(call(fleet, "POST", "/customer/delete", json={"user_ids": []}), 400)
    # Unknown ids.
    error(call(fleet, "GET", "/customer/info", params={"end_user_id": "nobody"}), 404)
    error(call(fleet, "POST", "/customer/update", json={"user_id": "nobody", "alias": "x"}), 404)
    error(call(fleet, "POST", "/customer/new", json={"user_id": "x", "budget_id": "no-such-budget"}), 404)
    assert "nobody" in error(call(fleet, "POST", "/customer/block", json={"user_ids": ["kept", "nobody"]}),
                             404)["message"]
    error(call(fleet, "POST", "/customer/unblock", json={"user_ids": ["nobody"]}), 404)
    error(call(fleet, "POST", "/budget/update", json={"budget_id": "no-such-budget", "max_budget": 1}), 404)
    error(call(fleet, "POST", "/budget/delete", json={"id": "no-such-budget"}), 404)
    missing = error(call(fleet, "POST", "/budget/info", json={"budgets": ["kept-budget", "no-such-budget"]}), 404)
    assert "no-such-budget" in missing["message"] and "kept-budget" not in missing["message"]
    # None of it changed anything (the customer named in a refused block is not blocked).
    assert state() == before
    assert ok(call(fleet, "GET", "/customer/info", params={"end_user_id": "kept"})) == kept
