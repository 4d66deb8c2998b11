"""LiteLLM's team management REST API on `sluice serve`'s admin port: the calls a script written
for LiteLLM makes (`/team/new`, `/team/member_add`, `/team/block`, …), answered in LiteLLM's
shapes through the same team service (and authorisation, validation and audit) as the gRPC
admin API; a team's key then used through a real Envoy with the OpenAI SDK."""
import json
import time

import httpx
import openai
import pytest

from rest_support import call, error, ok, rest_fleet
from test_xds import CHAT, wait_until


def add_users(f):
    """Members are users: made with the CLI (the user endpoints are not under test here)."""
    for user, email in [("alice", "alice@example.com"), ("bob", "bob@example.com"), ("carol", None),
                        ("dave", "dave@example.com"), ("erin", None)]:
        f.cli("user", "create", "--id", user, *(["--email", email] if email else []))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    yield from rest_fleet(tmp_path_factory, "rest-teams", add_users)


def info(fleet, team_id):
    return ok(call(fleet, "GET", "/team/info", params={"team_id": team_id}))


def members(team):
    return {m["user_id"]: m["role"] for m in team["members_with_roles"]}


def test_a_team_made_with_litellms_body_reads_back_and_updates(fleet):
    body = {"team_id": "search", "team_alias": "Search", "models": ["gpt-4o-mini"], "max_budget": 50.0,
            "budget_duration": "30d", "tpm_limit": 100000, "rpm_limit": 100, "metadata": {"cost_center": "42"},
            "members_with_roles": [{"role": "admin", "user_id": "alice"},
                                   {"role": "user", "user_email": "bob@example.com"}],
            "team_member_budget": 5.0, "blocked": False, "a_field_litellm_ignores_too": 1}
    made = ok(call(fleet, "POST", "/team/new", json=body))
    assert (made["team_id"], made["team_alias"], made["models"]) == ("search", "Search", ["gpt-4o-mini"])
    limits = (made["max_budget"], made["budget_duration"], made["tpm_limit"], made["rpm_limit"])
    assert limits == (50.0, "30d", 100000, 100)
    assert made["metadata"] == {"cost_center": "42"} and made["blocked"] is False
    assert made["team_member_budget"] == 5.0 and made["created_at"] and made["updated_at"]
    assert members(made) == {"alice": "admin", "bob": "user"}, "bob was named by his email"
    assert made["spend"] == 0, "a new team has spent nothing (its spend is counted, not made up)"
    # /team/info: LiteLLM's envelope, the members' rows and the team's keys.
    got = info(fleet, "search")
    assert got["team_id"] == "search" and got["team_info"]["team_alias"] == "Search" and got["keys"] == []
    assert {m["user_id"] for m in got["team_memberships"]} == {"alice", "bob"}
    # Update: a field given changes, a limit set to null is lifted, the rest stays.
    r = ok(call(fleet, "POST", "/team/update", json={"team_id": "search", "team_alias": "Search 2", "rpm_limit": None,
                                                     "max_budget": 75, "team_member_budget": 7.5}))
    assert r["team_id"] == "search"
    data = r["data"]
    changed = (data["team_alias"], data["rpm_limit"], data["max_budget"], data["tpm_limit"])
    assert changed == ("Search 2", None, 75.0, 100000)
    assert data["team_member_budget"] == 7.5 and data["models"] == ["gpt-4o-mini"]
    assert info(fleet, "search")["team_info"]["team_alias"] == "Search 2"
    # Audited like the CLI's.
    audit = json.loads(fleet.cli("audit", "--json").stdout)["entries"]
    actions = {e["action"] for e in audit if e["object_id"] == "search"}
    assert {"team.create", "team.update", "team.member_add"} <= actions, actions


def test_members_are_added_changed_and_removed_with_their_roles(fleet):
    ok(call(fleet, "POST", "/team/new", json={"team_id": "crew", "team_alias": "Crew"}))
    # One member, with a budget in the team.
    r = ok(call(fleet, "POST", "/team/member_add",
                json={"team_id": "crew", "member": {"role": "admin", "user_id": "carol"}, "max_budget_in_team": 10.0}))
    assert members(r) == {"carol": "admin"}
    assert r["updated_users"] == [{"user_id": "carol"}]
    assert r["updated_team_memberships"][0]["litellm_budget_table"]["max_budget"] == 10.0
    # A list, by id and by email.
    r = ok(call(fleet, "POST", "/team/member_add",
                json={"team_id": "crew", "member": [{"role": "user", "user_email": "dave@example.com"},
                                                    {"role": "user", "user_id": "erin"}]}))
    assert members(r) == {"carol": "admin", "dave": "user", "erin": "user"}
    # Adding a member again is refused (its role and budget change with member_update) …
    again = {"team_id": "crew", "member": {"role": "user", "user_id": "carol"}}
    error(call(fleet, "POST", "/team/member_add", json=again), 400)
    # … and a list with an unknown user adds none of it.
    error(call(fleet, "POST", "/team/member_add",
               json={"team_id": "crew", "member": [{"role": "user", "user_id": "alice"},
                                                   {"role": "user", "user_id": "nobody"}]}), 404)
    error(call(fleet, "POST", "/team/member_add",
               json={"team_id": "crew", "member": {"role": "user", "user_email": "nobody@example.com"}}), 404)
    assert members(info(fleet, "crew")["team_info"]) == {"carol": "admin", "dave": "user", "erin": "user"}
    # member_update: the role changes and the budget stays; then the budget, and the role stays.
    r = ok(call(fleet, "POST", "/team/member_update", json={"team_id": "crew", "user_id": "carol", "role": "user"}))
    assert (r["team_id"], r["user_id"], r["role"], r["max_budget_in_team"]) == ("crew", "carol", "user", 10.0)
    r = ok(call(fleet, "POST", "/team/member_update",
                json={"team_id": "crew", "user_email": "dave@example.com", "max_budget_in_team": 20.0}))
    assert (r["user_id"], r["role"], r["max_budget_in_team"]) == ("dave", "user", 20.0)
    rows = {m["user_id"]: m for m in info(fleet, "crew")["team_memberships"]}
    assert rows["carol"]["role"] == "user" and rows["carol"]["litellm_budget_table"]["max_budget"] == 10.0
    assert rows["dave"]["litellm_budget_table"]["max_budget"] == 20.0 and rows["erin"]["litellm_budget_table"] is None
    not_a_member = {"team_id": "crew", "user_id": "alice", "role": "admin"}
    error(call(fleet, "POST", "/team/member_update", json=not_a_member), 404)
    # member_delete, by email and by id.
    r = ok(call(fleet, "POST", "/team/member_delete", json={"team_id": "crew", "user_email": "dave@example.com"}))
    assert members(r) == {"carol": "user", "erin": "user"}
    r = ok(call(fleet, "POST", "/team/member_delete", json={"team_id": "crew", "user_id": "erin"}))
    assert members(r) == {"carol": "user"}
    error(call(fleet, "POST", "/team/member_delete", json={"team_id": "crew", "user_id": "erin"}), 404)


def test_models_are_added_and_deleted_but_never_widened_to_all(fleet):
    ok(call(fleet, "POST", "/team/new", json={"team_id": "modelled", "models": ["gpt-4o-mini"]}))
    r = ok(call(fleet, "POST", "/team/model/add", json={"team_id": "modelled", "models": ["gpt-4o", "gpt-4o-mini"]}))
    assert r["models"] == ["gpt-4o-mini", "gpt-4o"]
    r = ok(call(fleet, "POST", "/team/model/delete", json={"team_id": "modelled", "models": ["gpt-4o-mini"]}))
    assert r["models"] == ["gpt-4o"]
    # An empty list means every model: removing the last one is refused, not a widening.
    assert "every model" in error(call(fleet, "POST", "/team/model/delete",
                                       json={"team_id": "modelled", "models": ["gpt-4o"]}), 400)["message"]
    assert info(fleet, "modelled")["team_info"]["models"] == ["gpt-4o"]


def test_block_unblock_list_and_delete_all_or_nothing(fleet):
    ok(call(fleet, "POST", "/team/new", json={"team_id": "zeta", "team_alias": "Zeta",
                                              "members_with_roles": [{"role": "user", "user_id": "erin"}]}))
    ok(call(fleet, "POST", "/team/new", json={"team_id": "alpha", "team_alias": "Alpha"}))
    assert ok(call(fleet, "POST", "/team/block", json={"team_id": "alpha"}))["blocked"] is True
    assert info(fleet, "alpha")["team_info"]["blocked"] is True
    assert ok(call(fleet, "POST", "/team/unblock", json={"team_id": "alpha"}))["blocked"] is False
    # The list: every team, sorted by alias as LiteLLM sorts it, with members and keys.
    listed = ok(call(fleet, "GET", "/team/list"))
    ids = [t["team_id"] for t in listed]
    assert ids.index("alpha") < ids.index("zeta")
    zeta = next(t for t in listed if t["team_id"] == "zeta")
    assert zeta["team_memberships"][0]["user_id"] == "erin" and zeta["keys"] == []
    assert "zeta" in [t["team_id"] for t in ok(call(fleet, "GET", "/team/list", params={"user_id": "erin"}))]
    assert "alpha" not in [t["team_id"] for t in ok(call(fleet, "GET", "/team/list", params={"user_id": "erin"}))]
    no_org = [t["team_id"] for t in ok(call(fleet, "GET", "/team/list",
                                             params={"organization_id": "default_organization"}))]
    assert {"alpha", "zeta"} <= set(no_org)
    # LiteLLM's paged list (its client's `list_v2`): filtered by part of the alias, sorted, paged.
    v2 = ok(call(fleet, "GET", "/v2/team/list", params={"team_alias": "et", "page_size": 1}))
    assert [t["team_id"] for t in v2["teams"]] == ["zeta"] and (v2["total"], v2["total_pages"]) == (1, 1)
    desc = ok(call(fleet, "GET", "/v2/team/list", params={"sort_by": "team_id", "sort_order": "desc",
                                                          "page_size": 100}))
    ids = [t["team_id"] for t in desc["teams"]]
    assert ids == sorted(ids, reverse=True) and {"alpha", "zeta"} <= set(ids)
    second = ok(call(fleet, "GET", "/v2/team/list", params={"sort_by": "team_id", "page": 2, "page_size": 1}))
    assert second["page"] == 2 and len(second["teams"]) == 1 and second["teams"][0]["team_id"] == sorted(ids)[1]
    assert error(call(fleet, "GET", "/v2/team/list", params={"sort_by": "spend"}), 422)["param"] == "sort_by"
    # Delete: every team named must exist first, or nothing is deleted.
    error(call(fleet, "POST", "/team/delete", json={"team_ids": ["alpha", "no-such-team"]}), 404)
    assert info(fleet, "alpha")["team_id"] == "alpha"
    # A team that still owns a key is not deleted, nor any other named with it.
    key = ok(call(fleet, "POST", "/key/generate", json={"team_id": "zeta", "key_alias": "zeta-key"}))
    assert [k["token"] for k in info(fleet, "zeta")["keys"]] == [key["token"]]
    assert "key" in error(call(fleet, "POST", "/team/delete", json={"team_ids": ["alpha", "zeta"]}), 400)["message"]
    assert info(fleet, "alpha")["team_id"] == "alpha"
    ok(call(fleet, "POST", "/key/delete", json={"keys": [key["token"]]}))
    deleted = ok(call(fleet, "POST", "/team/delete", json={"team_ids": ["alpha", "zeta"]}))
    assert deleted == {"deleted_teams": ["alpha", "zeta"]}
    error(call(fleet, "GET", "/team/info", params={"team_id": "alpha"}), 404)
    audit = json.loads(fleet.cli("audit", "--json").stdout)["entries"]
    assert any(e["action"] == "team.delete" and e["object_id"] == "zeta" for e in audit)
    assert any(e["action"] == "team.block" and e["object_id"] == "alpha" for e in audit)


def test_a_teams_key_serves_its_models_through_envoy_until_the_team_is_blocked(fleet):
    ok(call(fleet, "POST", "/team/new", json={"team_id": "serving", "models": ["gpt-4o-mini"]}))
    made = ok(call(fleet, "POST", "/key/generate", json={"team_id": "serving", "key_alias": "serving-key"}))
    assert made["team_id"] == "serving"
    envoy = fleet.start_envoy("edge-rest-teams")
    client = openai.OpenAI(base_url=f"{envoy.url}/v1", api_key=made["key"], max_retries=0)
    ask = lambda model: client.chat.completions.create(model=model, messages=CHAT["messages"])  # noqa: E731
    assert ask("gpt-4o-mini").choices[0].message.content
    # The team's models bound its key: gpt-4o is not one until it is added.
    with pytest.raises(openai.PermissionDeniedError):
        ask("gpt-4o")
    ok(call(fleet, "POST", "/team/model/add", json={"team_id": "serving", "models": ["gpt-4o"]}))

    def serves(model):
        try:
            return bool(ask(model).choices[0].message.content)
        except openai.APIStatusError:
            return False

    wait_until(lambda: serves("gpt-4o"), what="gpt-4o served once added to the team")
    # Blocked: the team's key is refused at the gateway (401 team_blocked, the gateway's answer
    # to a blocked key or team, as LiteLLM's key auth answers 401); unblocked: served again.
    ok(call(fleet, "POST", "/team/block", json={"team_id": "serving"}))

    def refused():
        try:
            ask("gpt-4o-mini")
            return None
        except openai.APIStatusError as e:
            return e

    refusal = wait_until(refused, what="the blocked team's key refused")
    assert refusal.status_code == 401 and refusal.code == "team_blocked", refusal
    ok(call(fleet, "POST", "/team/unblock", json={"team_id": "serving"}))
    wait_until(lambda: serves("gpt-4o-mini"), what="the unblocked team's key served again")


def test_bad_team_calls_get_litellms_error_shape_and_change_nothing(fleet):
    ok(call(fleet, "POST", "/team/new", json={"team_id": "steady", "team_alias": "Steady", "max_budget": 3.0,
                                              "models": ["gpt-4o"]}))
    teams_before = ok(call(fleet, "GET", "/team/list"))
    steady_before = info(fleet, "steady")["team_info"]
    # No credential, a wrong one, and an LLM key (not an admin credential).
    error(httpx.post(f"{fleet.rest}/team/new", json={"team_alias": "x"}, timeout=10), 401)
    error(httpx.get(f"{fleet.rest}/team/list", timeout=10), 401)
    error(call(fleet, "POST", "/team/new", key="sk-master-wrong", json={"team_alias": "x"}), 401)
    llm_key = ok(call(fleet, "POST", "/key/generate", json={"key_alias": "just-llm-for-teams"}))["key"]
    error(call(fleet, "POST", "/team/new", key=llm_key, json={"team_alias": "x"}), 403)
    error(call(fleet, "POST", "/team/block", key=llm_key, json={"team_id": "steady"}), 403)
    # Not JSON; fields of the wrong type name themselves (422).
    error(call(fleet, "POST", "/team/new", content=b"{not json"), 400)
    assert error(call(fleet, "POST", "/team/new", json={"models": "gpt-4o"}), 422)["param"] == "models"
    assert error(call(fleet, "POST", "/team/update", json={"team_id": "steady", "max_budget": "lots"}),
                 422)["param"] == "max_budget"
    owner = {"team_id": "steady", "member": {"role": "owner", "user_id": "carol"}}
    assert error(call(fleet, "POST", "/team/member_add", json=owner), 422)["param"] == "member"
    assert error(call(fleet, "POST", "/team/delete", json={"team_ids": "steady"}), 422)["param"] == "team_ids"
    assert error(call(fleet, "GET", "/team/info"), 422)["param"] == "team_id"
    assert error(call(fleet, "POST", "/team/block", json={"team_id": 5}), 422)["param"] == "team_id"
    assert error(call(fleet, "POST", "/team/model/add", json={"team_id": "steady"}), 422)["param"] == "models"
    # LiteLLM settings Sluice would not enforce are refused by name (400).
    for body in [{"team_alias": "g", "guardrails": ["pii"]}, {"team_alias": "m", "model_aliases": {"a": "gpt-4o"}},
                 {"team_alias": "p", "team_member_permissions": ["/key/generate"]},
                 {"team_alias": "r", "model_rpm_limit": {"gpt-4o": 5}}]:
        name = next(k for k in body if k != "team_alias")
        assert error(call(fleet, "POST", "/team/new", json=body), 400)["message"] == f"{name}: not supported by Sluice"
    tags = {"team_id": "steady", "tags": ["a"]}
    assert "tags" in error(call(fleet, "POST", "/team/update", json=tags), 400)["message"]
    assert "/team/block" in error(call(fleet, "POST", "/team/update", json={"team_id": "steady", "blocked": True}),
                                  400)["message"]
    # Unknown teams (404).
    error(call(fleet, "GET", "/team/info", params={"team_id": "no-such-team"}), 404)
    error(call(fleet, "POST", "/team/update", json={"team_id": "no-such-team", "max_budget": 1}), 404)
    error(call(fleet, "POST", "/team/block", json={"team_id": "no-such-team"}), 404)
    error(call(fleet, "POST", "/team/member_add",
               json={"team_id": "no-such-team", "member": {"role": "user", "user_id": "carol"}}), 404)
    error(call(fleet, "POST", "/team/model/add", json={"team_id": "no-such-team", "models": ["gpt-4o"]}), 404)
    # A body over the limit.
    error(call(fleet, "POST", "/team/new", content=b'{"team_alias": "' + b"x" * 400_000 + b'"}'), 413)
    # Nothing changed (but spend, which usage from the other tests may still be adding to).
    assert without_spend(ok(call(fleet, "GET", "/team/list"))) == without_spend(teams_before)
    assert without_spend(info(fleet, "steady")["team_info"]) == without_spend(steady_before)


def without_spend(value):
    """`value` with every `spend` left out, however deep."""
    if isinstance(value, dict):
        return {k: without_spend(v) for k, v in value.items() if k != "spend"}
    if isinstance(value, list):
        return [without_spend(v) for v in value]
    return value


def test_a_members_rpm_limit_set_with_member_update_holds_on_its_keys_of_the_team(fleet):
    """`/team/member_update` with `rpm_limit`: the member's requests through its keys of that team
    are counted together (two keys, three a minute); another member of the team and the same
    user's key outside it are not; lifting it (null) lets the member through again."""
    ok(call(fleet, "POST", "/team/new", json={"team_id": "metered",
                                              "members_with_roles": [{"role": "user", "user_id": "alice"},
                                                                     {"role": "user", "user_id": "bob"}]}))
    r = ok(call(fleet, "POST", "/team/member_update", json={"team_id": "metered", "user_id": "alice", "rpm_limit": 3}))
    assert (r["rpm_limit"], r["tpm_limit"]) == (3, None)
    keys = [ok(call(fleet, "POST", "/key/generate", json={"team_id": "metered", "user_id": "alice"}))["key"]
            for _ in range(2)]
    bobs = ok(call(fleet, "POST", "/key/generate", json={"team_id": "metered", "user_id": "bob"}))["key"]
    own = ok(call(fleet, "POST", "/key/generate", json={"user_id": "alice"}))["key"]
    envoy = fleet.start_envoy("edge-rest-members")
    # One minute's window for the counting below.
    while time.time() % 60 > 45:
        time.sleep(0.5)
    codes = [envoy.chat(CHAT, key=keys[i % 2]).status_code for i in range(6)]
    assert codes == [200, 200, 200, 429, 429, 429], codes
    refusal = envoy.chat(CHAT, key=keys[0]).json()["error"]
    assert refusal["code"] == "rate_limit_exceeded" and "the user of this API key in its team" in refusal["message"]
    assert envoy.chat(CHAT, key=bobs).status_code == 200, "another member is not limited"
    assert envoy.chat(CHAT, key=own).status_code == 200, "alice outside the team is not limited"
    ok(call(fleet, "POST", "/team/member_update", json={"team_id": "metered", "user_id": "alice", "rpm_limit": None}))
    wait_until(lambda: envoy.chat(CHAT, key=keys[1]).status_code == 200, timeout=5, what="the lifted limit")
