"""LiteLLM's model discovery and audit endpoints on `sluice serve`'s admin port: `/model_group/info`
(each model group with its providers, limits and prices, as the gateway prices it), OpenAI's
`/models` and `/v1/models` list for management keys, and LiteLLM Enterprise's `/audit` log, all
through the same services (and authorisation) as the gRPC admin API and the CLI."""
import json
import os
from pathlib import Path

import httpx
import pytest

from conftest import PRICES
from rest_support import call, error, ok, rest_fleet

TABLE = json.loads((Path(__file__).resolve().parents[2] / "core" / "data" / "model_prices.json").read_text())
CONFIG_GROUPS = {"gpt-4o": ["openai"], "gpt-4o-mini": ["openai"], "azure-gpt": ["azure"],
                 "gemini-flash": ["gemini"], "bedrock-claude": ["bedrock"]}
# The fleet's config.yaml prices (test_xds.Fleet): conftest's, and its Bedrock entry's own.
CONFIG_PRICES = {**{g: PRICES[g][:2] for g in CONFIG_GROUPS}, "bedrock-claude": (1e-6, 2e-6)}


def unique(name):
    return f"{name}-{os.urandom(3).hex()}"


def add_models(f):
    """A group of two deployments made over REST: one priced by the built-in table (no prices in
    model_info), one by its model_info, on two providers, each with an rpm."""
    for body in [
        {"model_name": "table-priced",
         "litellm_params": {"model": "openai/gpt-4o-mini", "api_base": f"{f.mock_url}/v1",
                            "api_key": "os.environ/MOCK_OPENAI_KEY", "rpm": 10},
         "model_info": {"id": "tp-a"}},
        {"model_name": "table-priced",
         "litellm_params": {"model": "azure/gpt4o-other", "api_base": f.mock_url,
                            "api_key": "os.environ/MOCK_AZURE_KEY", "rpm": 20},
         "model_info": {"id": "tp-b", "input_cost_per_token": 9e-7, "output_cost_per_token": 1e-7,
                        "max_input_tokens": 1000}},
    ]:
        ok(call(f, "POST", "/model/new", json=body))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    yield from rest_fleet(tmp_path_factory, "rest-models-audit", add_models)


def management_key(fleet, role, **fields):
    """A management key of a new user with `role` (made by the master key)."""
    user_id = unique(role)
    ok(call(fleet, "POST", "/user/new", json={"user_id": user_id, "user_role": role, "auto_create_key": False}))
    made = ok(call(fleet, "POST", "/key/generate", json={"key_type": "management", "user_id": user_id, **fields}))
    return made["key"], made["token"]


def groups(fleet, key=None, **params):
    return {g["model_group"]: g for g in ok(call(fleet, "GET", "/model_group/info", key=key, params=params))["data"]}


def no_secret_in(fleet, text):
    for secret in (fleet.openai_key, fleet.azure_key, fleet.gemini_key, fleet.master_key, "os.environ", "MOCK_"):
        assert secret not in text, secret


def test_model_group_info_lists_every_group_with_its_providers_and_prices(fleet):
    r = call(fleet, "GET", "/model_group/info")
    info = {g["model_group"]: g for g in ok(r)["data"]}
    assert set(info) == {*CONFIG_GROUPS, "table-priced"}, info.keys()
    for group, providers in CONFIG_GROUPS.items():
        g = info[group]
        assert g["providers"] == providers, g
        # config.yaml's model_info prices.
        assert (g["input_cost_per_token"], g["output_cost_per_token"]) == CONFIG_PRICES[group], g
        assert g["mode"] == "chat" and g["supports_vision"] is False and g["supports_function_calling"] is False
    # Limits config.yaml leaves out come from the built-in table, as the gateway reads them.
    assert info["gpt-4o"]["max_input_tokens"] == TABLE["gpt-4o"]["max_input_tokens"]
    assert info["gpt-4o"]["max_output_tokens"] == TABLE["gpt-4o"]["max_output_tokens"]
    # A group of two: both providers, the larger limits and prices (the table's for the deployment
    # that names none), the summed rpm, as LiteLLM's router combines a group.
    tp = info["table-priced"]
    assert tp["providers"] == ["openai", "azure"], tp
    assert tp["input_cost_per_token"] == max(TABLE["gpt-4o-mini"]["input"], 9e-7)
    assert tp["output_cost_per_token"] == max(TABLE["gpt-4o-mini"]["output"], 1e-7)
    assert tp["max_input_tokens"] == TABLE["gpt-4o-mini"]["max_input_tokens"]
    assert (tp["rpm"], tp["tpm"]) == (30, None)
    no_secret_in(fleet, r.text)


def test_model_group_info_filters_by_group(fleet):
    only = groups(fleet, model_group="table-priced")
    assert list(only) == ["table-priced"]
    assert only["table-priced"]["input_cost_per_token"] == 9e-7
    assert groups(fleet, model_group="no-such-group") == {}


def test_a_price_changed_over_rest_shows_at_once(fleet):
    ok(call(fleet, "POST", "/model/new", json={
        "model_name": unique("priced-later"),
        "litellm_params": {"model": "openai/gpt-4o", "api_base": f"{fleet.mock_url}/v1",
                           "api_key": "os.environ/MOCK_OPENAI_KEY"},
        "model_info": {"id": "later"}}))
    name = ok(call(fleet, "GET", "/model/info", params={"litellm_model_id": "later"}))["data"][0]["model_name"]
    assert groups(fleet, model_group=name)[name]["input_cost_per_token"] == TABLE["gpt-4o"]["input"]
    ok(call(fleet, "POST", "/model/update", json={"model_info": {"id": "later", "input_cost_per_token": 4e-6,
                                                                 "output_cost_per_token": 8e-6}}))
    g = groups(fleet, model_group=name)[name]
    assert (g["input_cost_per_token"], g["output_cost_per_token"]) == (4e-6, 8e-6)
    ok(call(fleet, "POST", "/model/delete", json={"id": "later"}))
    assert groups(fleet, model_group=name) == {}


def test_the_model_list_shows_each_caller_what_it_may_see(fleet):
    everything = {*CONFIG_GROUPS, "table-priced"}
    for path in ("/models", "/v1/models"):
        listed = ok(call(fleet, "GET", path))
        assert listed["object"] == "list"
        assert {m["id"] for m in listed["data"]} == everything, listed
        assert all(m["object"] == "model" and m["owned_by"] and "created" in m for m in listed["data"])
        assert [m["id"] for m in listed["data"]] == sorted(m["id"] for m in listed["data"])
    # A management key restricted to some models sees those groups (exact names and `prefix*`).
    narrow, _ = management_key(fleet, "internal_user", models=["gpt-4o-mini", "table-*"])
    for path in ("/models", "/v1/models"):
        assert {m["id"] for m in ok(call(fleet, "GET", path, key=narrow))["data"]} == {"gpt-4o-mini", "table-priced"}
    assert set(groups(fleet, key=narrow)) == {"gpt-4o-mini", "table-priced"}
    assert groups(fleet, key=narrow, model_group="gpt-4o") == {}
    # One restricted to nothing sees everything, as the gateway reads a key's models.
    wide, _ = management_key(fleet, "internal_user")
    assert {m["id"] for m in ok(call(fleet, "GET", "/v1/models", key=wide))["data"]} == everything
    # No key; a wrong one; an LLM key (no admin credential).
    error(httpx.get(f"{fleet.rest}/v1/models", timeout=10), 401)
    error(httpx.get(f"{fleet.rest}/model_group/info", timeout=10), 401)
    error(call(fleet, "GET", "/v1/models", key="sk-sluice-wrong"), 401)
    llm_key = ok(call(fleet, "POST", "/key/generate", json={"models": ["gpt-4o"]}))["key"]
    error(call(fleet, "GET", "/v1/models", key=llm_key), 403)
    error(call(fleet, "GET", "/model_group/info", key=llm_key), 403)


def test_the_audit_log_shows_who_changed_what_newest_first(fleet):
    admin_key, admin_token = management_key(fleet, "proxy_admin")
    made = ok(call(fleet, "POST", "/key/generate", json={"key_alias": unique("audited"), "models": ["gpt-4o"]}))
    team_id = ok(call(fleet, "POST", "/team/new", json={"team_alias": "before"}))["team_id"]
    ok(call(fleet, "POST", "/team/update", key=admin_key, json={"team_id": team_id, "team_alias": "after"}))

    # The key's creation, by the master key: LiteLLM's row, Sluice's own action under metadata.
    r = call(fleet, "GET", "/audit", params={"table_name": "LiteLLM_VerificationToken", "object_id": made["token"]})
    page = ok(r)
    assert (page["total"], page["page"], page["page_size"], page["total_pages"]) == (1, 1, 10, 1)
    [row] = page["audit_logs"]
    assert (row["action"], row["table_name"], row["object_id"]) == ("created", "LiteLLM_VerificationToken",
                                                                    made["token"])
    assert (row["changed_by"], row["changed_by_api_key"]) == ("master", "")
    assert row["metadata"] == {"action": "key.generate", "object_type": "key"}
    assert row["before_value"] is None and row["updated_values"]["key_alias"] == made["key_alias"]
    assert row["updated_at"].endswith("Z") and isinstance(row["id"], str)
    # No key, and no digest a key could be looked up by.
    assert made["key"] not in r.text and "sha256:" not in r.text
    no_secret_in(fleet, r.text)

    # The team's creation and its update by the admin's management key, newest first.
    team_rows = ok(call(fleet, "GET", "/audit", params={"object_type": "team", "object_id": team_id}))
    assert team_rows["total"] == 2
    update, create = team_rows["audit_logs"]
    assert (update["action"], update["metadata"]["action"], update["table_name"]) == ("updated", "team.update",
                                                                                     "LiteLLM_TeamTable")
    assert (update["changed_by"], update["changed_by_api_key"]) == (f"key:{admin_token}", admin_token)
    assert (update["before_value"]["team_alias"], update["updated_values"]["team_alias"]) == ("before", "after")
    assert (create["action"], create["changed_by"]) == ("created", "master")
    # LiteLLM's other filters, over the same rows.
    by_admin = ok(call(fleet, "GET", "/audit", params={"changed_by_api_key": admin_token}))
    assert [(x["object_id"], x["action"]) for x in by_admin["audit_logs"]] == [(team_id, "updated")]
    assert ok(call(fleet, "GET", "/audit", params={"object_id": team_id, "action": "created"}))["total"] == 1
    assert ok(call(fleet, "GET", "/audit", params={"object_id": team_id, "end_date": "2000-01-01"}))["total"] == 0

    # One row by its id; an unknown id.
    assert ok(call(fleet, "GET", f"/audit/{update['id']}")) == update
    error(call(fleet, "GET", "/audit/999999999"), 404)

    # The newest rows are these changes, and they are the CLI's rows too.
    newest = ok(call(fleet, "GET", "/audit", params={"page_size": 2}))["audit_logs"]
    assert [x["id"] for x in newest] == [update["id"], create["id"]]
    cli = json.loads(fleet.cli("audit", "--json").stdout)["entries"]
    assert [str(e["id"]) for e in cli[:2]] == [x["id"] for x in newest]


def test_the_audit_log_pages(fleet):
    team_id = ok(call(fleet, "POST", "/team/new", json={"team_alias": "paged-0"}))["team_id"]
    for i in (1, 2):
        ok(call(fleet, "POST", "/team/update", json={"team_id": team_id, "team_alias": f"paged-{i}"}))
    mine = {"object_type": "team", "object_id": team_id}
    pages = [ok(call(fleet, "GET", "/audit", params={**mine, "page_size": 2, "page": n})) for n in (1, 2, 3)]
    assert [(p["total"], p["total_pages"], p["page"]) for p in pages] == [(3, 2, 1), (3, 2, 2), (3, 2, 3)]
    aliases = [[x["updated_values"]["team_alias"] for x in p["audit_logs"]] for p in pages]
    assert aliases == [["paged-2", "paged-1"], ["paged-0"], []]
    oldest = ok(call(fleet, "GET", "/audit", params={**mine, "page_size": 2, "sort_order": "asc"}))["audit_logs"]
    assert [x["updated_values"]["team_alias"] for x in oldest] == ["paged-0", "paged-1"]
    # The whole log: every row once across its pages.
    everything = ok(call(fleet, "GET", "/audit", params={"page_size": 100}))
    total = everything["total"]
    assert total >= 3 + len(CONFIG_GROUPS)
    seen = []
    for n in range(1, -(-total // 7) + 1):
        seen += [x["id"] for x in ok(call(fleet, "GET", "/audit", params={"page_size": 7, "page": n}))["audit_logs"]]
    assert len(seen) == len(set(seen)) >= total


def test_the_audit_log_is_for_admins_and_refuses_bad_pages(fleet):
    user_key, _ = management_key(fleet, "internal_user")
    assert "admin" in error(call(fleet, "GET", "/audit", key=user_key), 403)["message"]
    error(call(fleet, "GET", "/audit/1", key=user_key), 403)
    llm_key = ok(call(fleet, "POST", "/key/generate", json={}))["key"]
    error(call(fleet, "GET", "/audit", key=llm_key), 403)
    error(httpx.get(f"{fleet.rest}/audit", timeout=10), 401)
    # A viewer of everything may read it (the service's rule, as for the CLI).
    viewer_key, _ = management_key(fleet, "proxy_admin_viewer")
    assert ok(call(fleet, "GET", "/audit", key=viewer_key, params={"page_size": 1}))["total"] >= 1
    # Bounded pages, named when wrong (LiteLLM's 1..100).
    for params, param in [({"page_size": 101}, "page_size"), ({"page_size": 0}, "page_size"),
                          ({"page_size": "ten"}, "page_size"), ({"page": 0}, "page")]:
        assert error(call(fleet, "GET", "/audit", params=params), 422)["param"] == param
    assert len(ok(call(fleet, "GET", "/audit", params={"page_size": 100}))["audit_logs"]) <= 100
    # A filter Sluice cannot apply is refused, not ignored.
    assert "object_key_hash" in error(call(fleet, "GET", "/audit", params={"object_key_hash": "abc"}), 400)["message"]
