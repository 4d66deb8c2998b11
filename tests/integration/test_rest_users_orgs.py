"""LiteLLM's user and organization management REST API on `sluice serve`'s admin port: the calls
a script written for LiteLLM makes (`/organization/new`, `/user/new`, `/organization/member_add`
…), answered in LiteLLM's shapes through the same services (authorisation, validation, audit) as
the gRPC admin API; the key `/user/new` makes is then used through a real Envoy with the OpenAI
SDK, and an organization admin's management key is held to its own organization."""
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from rest_support import call, error, ok, rest_fleet
from test_limits import away_from_minute_boundary
from test_xds import CHAT, wait_until


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    yield from rest_fleet(tmp_path_factory, "rest-users")


def unique(name):
    return f"{name}-{os.urandom(3).hex()}"


def new_org(fleet, alias, **fields):
    return ok(call(fleet, "POST", "/organization/new", json={"organization_alias": alias, **fields}))


def test_an_organization_and_its_users_key_work_through_envoy(fleet):
    org = new_org(fleet, unique("acme"), models=["gpt-4o-mini", "gpt-4o"], max_budget=100.0, budget_duration="30d",
                  rpm_limit=1000, metadata={"cost_center": "42"})
    assert org["organization_id"] and org["max_budget"] == 100.0 and org["rpm_limit"] == 1000
    assert org["litellm_budget_table"]["budget_duration"] == "30d"
    assert "spend" not in org and "budget_id" not in org, "Sluice holds no organization spend or budget id"
    info = ok(call(fleet, "GET", "/organization/info", params={"organization_id": org["organization_id"]}))
    assert (info["organization_alias"], info["models"], info["metadata"]) == \
        (org["organization_alias"], ["gpt-4o-mini", "gpt-4o"], {"cost_center": "42"})
    assert info["created_at"] and info["members"] == []

    # A user in it, with a role and a model: /user/new makes its key too, as LiteLLM does.
    user_id = unique("alice")
    made = ok(call(fleet, "POST", "/user/new", json={
        "user_id": user_id, "user_email": f"{user_id}@acme.test", "user_role": "internal_user",
        "organizations": [org["organization_id"]], "models": ["gpt-4o-mini"], "max_budget": 10.0,
        "budget_duration": "30d", "tpm_limit": 50000, "key_alias": f"{user_id}-key",
        "a_field_litellm_ignores_too": 1}))
    assert (made["user_id"], made["user_role"], made["organization_id"]) == \
        (user_id, "internal_user", org["organization_id"])
    assert made["organization_memberships"] == [
        {"user_id": user_id, "organization_id": org["organization_id"], "user_role": "internal_user"}]
    assert (made["models"], made["max_budget"], made["tpm_limit"]) == (["gpt-4o-mini"], 10.0, 50000)
    assert made["key"].startswith("sk-") and made["token"] and made["key_alias"] == f"{user_id}-key"
    assert made["spend"] == 0, "a new user has spent nothing (its spend is counted, not made up)"

    # The key serves the user's model through an Envoy of the fleet, and no other.
    envoy = fleet.start_envoy("edge-rest-users")
    client = openai.OpenAI(base_url=f"{envoy.url}/v1", api_key=made["key"], max_retries=0)
    assert client.chat.completions.create(model="gpt-4o-mini", messages=CHAT["messages"]).choices[0].message.content
    assert wait_until(lambda: fleet.served()["served"] > 0, what="the mock's answer")
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="gpt-4o", messages=CHAT["messages"])

    # /user/info: the user, its keys (never their secret), its teams; the org lists it as member.
    info = ok(call(fleet, "GET", "/user/info", params={"user_id": user_id}))
    assert info["user_id"] == user_id and info["user_info"]["user_email"] == f"{user_id}@acme.test"
    assert [k["token"] for k in info["keys"]] == [made["token"]] and info["teams"] == []
    assert made["key"] not in json.dumps(info)
    members = ok(call(fleet, "GET", "/organization/info", params={"organization_id": org["organization_id"]}))
    assert members["members"] == [{"user_id": user_id, "organization_id": org["organization_id"],
                                   "user_role": "internal_user", "user_email": f"{user_id}@acme.test"}]

    # Audited as the CLI's changes are.
    audit = json.loads(fleet.cli("audit", "--json").stdout)["entries"]
    actions = {(e["action"], e["object_id"]) for e in audit}
    assert {("organization.create", org["organization_id"]), ("user.create", user_id),
            ("key.generate", made["token"])} <= actions, audit


def test_a_users_and_an_organizations_rules_hold_on_every_key_they_own(fleet):
    """Issue 14: a user's models and RPM and an organization's parallel limit, set with LiteLLM's
    calls, hold on keys that set none of their own, through an Envoy that looked the keys up;
    each owner's count is shared by all of its keys."""
    org_id = new_org(fleet, unique("limited"), max_parallel_requests=1)["organization_id"]
    alice, bob = unique("alice"), unique("bob")
    ok(call(fleet, "POST", "/user/new", json={"user_id": alice, "organization_id": org_id, "models": ["gpt-4o-mini"],
                                              "rpm_limit": 2, "auto_create_key": False}))
    ok(call(fleet, "POST", "/user/new", json={"user_id": bob, "organization_id": org_id, "auto_create_key": False}))
    keys = {who: ok(call(fleet, "POST", "/key/generate", json={"user_id": who, "organization_id": org_id}))["key"]
            for who in (alice, bob)}
    envoy = fleet.start_envoy("edge-rest-owners")

    def chat(who, model="gpt-4o-mini", latency_ms=0):
        return httpx.post(f"{envoy.url}/v1/chat/completions", json={**CHAT, "model": model}, timeout=30,
                          headers={"Authorization": f"Bearer {keys[who]}", "x-mock-latency-ms": str(latency_ms)})

    # The user's models: alice's key (every model) may not use what alice may not.
    refused = chat(alice, "gpt-4o")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "model_not_allowed", refused.text
    away_from_minute_boundary()
    # The organization's one request in flight is shared by its users' keys (bob's key is
    # looked up first, so its slow request is in flight when alice's arrives).
    assert chat(bob).status_code == 200
    with ThreadPoolExecutor(max_workers=1) as pool:
        slow = pool.submit(chat, bob, latency_ms=2000)
        time.sleep(0.7)
        refused = chat(alice)
        assert slow.result().status_code == 200
    assert refused.status_code == 429, refused.text
    error_body = refused.json()["error"]
    assert error_body["code"] == "parallel_request_limit_reached" and "organization" in error_body["message"]
    # alice's RPM of 2 (the refusal took none of it), then LiteLLM's 429 for the user.
    assert [chat(alice).status_code for _ in range(2)] == [200, 200]
    refused = chat(alice)
    assert refused.status_code == 429 and "the user of this API key" in refused.json()["error"]["message"]


def test_update_list_and_all_or_nothing_delete(fleet):
    org = new_org(fleet, unique("globex"))
    org_id = org["organization_id"]
    ids = [unique(f"u{n}") for n in range(3)]
    for n, uid in enumerate(ids):
        role = "internal_user_viewer" if n == 0 else "internal_user"
        made = ok(call(fleet, "POST", "/user/new", json={"user_id": uid, "organization_id": org_id, "user_role": role,
                                                         "rpm_limit": 5, "auto_create_key": False}))
        assert "key" not in made, "no key was asked for"

    # Update: LiteLLM's answer {"user_id", "data"}; a field given changes, a null limit is lifted.
    r = ok(call(fleet, "POST", "/user/update", json={"user_id": ids[1], "user_role": "org_admin", "rpm_limit": None,
                                                     "tpm_limit": 900, "metadata": {"desk": "7"}}))
    assert r["user_id"] == ids[1]
    data = r["data"]
    assert (data["user_role"], data["rpm_limit"], data["tpm_limit"], data["metadata"]) == \
        ("org_admin", None, 900, {"desk": "7"})
    # LiteLLM's clients send `models: []` as a default: it leaves the models as they are.
    r = ok(call(fleet, "POST", "/user/update", json={"user_id": ids[1], "models": [], "max_budget": 3.5}))
    assert (r["data"]["models"], r["data"]["max_budget"], r["data"]["tpm_limit"]) == ([], 3.5, 900)

    # List: LiteLLM's pages, filtered by organization and role.
    listed = ok(call(fleet, "GET", "/user/list", params={"organization_id": org_id, "page_size": 2}))
    assert (listed["total"], listed["page"], listed["page_size"], listed["total_pages"]) == (3, 1, 2, 2)
    page2 = ok(call(fleet, "GET", "/user/list", params={"organization_id": org_id, "page_size": 2, "page": 2}))
    assert {u["user_id"] for u in listed["users"] + page2["users"]} == set(ids)
    viewers = ok(call(fleet, "GET", "/user/list", params={"organization_id": org_id, "role": "internal_user_viewer"}))
    assert [u["user_id"] for u in viewers["users"]] == [ids[0]] and viewers["total"] == 1
    assert viewers["users"][0]["organization_id"] == org_id

    # Delete: every user named must exist (and own no key) before any goes.
    r = call(fleet, "POST", "/user/delete", json={"user_ids": [ids[0], "no-such-user"]})
    error(r, 404)
    assert call(fleet, "GET", "/user/info", params={"user_id": ids[0]}).status_code == 200
    keyed = ok(call(fleet, "POST", "/user/new", json={"user_id": unique("keyed"), "organization_id": org_id}))
    r = call(fleet, "POST", "/user/delete", json={"user_ids": [ids[0], keyed["user_id"]]})
    assert "key" in error(r, 400)["message"]
    assert call(fleet, "GET", "/user/info", params={"user_id": ids[0]}).status_code == 200
    assert ok(call(fleet, "POST", "/user/delete", json={"user_ids": ids})) == 3
    for uid in ids:
        error(call(fleet, "GET", "/user/info", params={"user_id": uid}), 404)

    # Organizations: update (LiteLLM's PATCH, or its older POST), list, delete all or nothing.
    r = ok(call(fleet, "PATCH", "/organization/update", json={"organization_id": org_id, "models": ["gpt-4o"],
                                                               "max_budget": 20.0}))
    assert (r["models"], r["max_budget"], r["litellm_budget_table"]["max_budget"]) == (["gpt-4o"], 20.0, 20.0)
    r = ok(call(fleet, "POST", "/organization/update", json={"organization_id": org_id, "max_budget": None,
                                                              "organization_alias": "globex-renamed"}))
    assert (r["organization_alias"], r["max_budget"], r["models"]) == ("globex-renamed", None, ["gpt-4o"])
    empty_id = new_org(fleet, unique("empty"))["organization_id"]
    listed = [o["organization_id"] for o in ok(call(fleet, "GET", "/organization/list"))]
    assert {org_id, empty_id} <= set(listed)
    r = call(fleet, "DELETE", "/organization/delete", json={"organization_ids": [empty_id, "no-such-org"]})
    error(r, 404)
    # One that still has a user: refused before the empty one goes.
    r = call(fleet, "DELETE", "/organization/delete", json={"organization_ids": [empty_id, org_id]})
    assert "user" in error(r, 400)["message"]
    for oid in (empty_id, org_id):
        assert call(fleet, "GET", "/organization/info", params={"organization_id": oid}).status_code == 200
    ok(call(fleet, "POST", "/key/delete", json={"keys": [keyed["token"]]}))
    assert ok(call(fleet, "POST", "/user/delete", json={"user_ids": [keyed["user_id"]]})) == 1
    deleted = ok(call(fleet, "POST", "/organization/delete", json={"organization_ids": [org_id, empty_id]}))
    assert [o["organization_id"] for o in deleted] == [org_id, empty_id]
    for oid in (empty_id, org_id):
        error(call(fleet, "GET", "/organization/info", params={"organization_id": oid}), 404)


def test_an_org_admins_management_key_manages_its_organization_only(fleet):
    mine, theirs = new_org(fleet, unique("initech")), new_org(fleet, unique("hooli"))
    mine_id, theirs_id = mine["organization_id"], theirs["organization_id"]
    admin_id, outsider_id = unique("boss"), unique("outsider")
    ok(call(fleet, "POST", "/user/new", json={"user_id": admin_id, "user_role": "org_admin",
                                              "organization_id": mine_id, "auto_create_key": False}))
    ok(call(fleet, "POST", "/user/new", json={"user_id": outsider_id, "organization_id": theirs_id,
                                              "auto_create_key": False}))
    key = ok(call(fleet, "POST", "/key/generate", json={"key_type": "management", "user_id": admin_id}))["key"]

    # Its own organization's users: made (with their key), changed, listed, added as members.
    worker_id = unique("worker")
    made = ok(call(fleet, "POST", "/user/new", key=key, json={"user_id": worker_id, "organization_id": mine_id,
                                                               "user_role": "internal_user"}))
    assert made["key"].startswith("sk-") and made["organization_id"] == mine_id
    ok(call(fleet, "POST", "/user/update", key=key, json={"user_id": worker_id, "rpm_limit": 30}))
    listed = ok(call(fleet, "GET", "/user/list", key=key))
    assert {u["organization_id"] for u in listed["users"]} == {mine_id}
    assert {admin_id, worker_id} <= {u["user_id"] for u in listed["users"]}
    newcomer_id = unique("newcomer")
    added = ok(call(fleet, "POST", "/organization/member_add", key=key, json={
        "organization_id": mine_id, "member": [{"user_id": newcomer_id, "user_email": f"{newcomer_id}@initech.test",
                                                "role": "internal_user"}]}))
    assert added["organization_id"] == mine_id
    assert added["updated_organization_memberships"] == [{"user_id": newcomer_id, "organization_id": mine_id,
                                                          "user_role": "internal_user",
                                                          "user_email": f"{newcomer_id}@initech.test"}]
    r = ok(call(fleet, "PATCH", "/organization/member_update", key=key, json={
        "organization_id": mine_id, "user_id": newcomer_id, "role": "internal_user_viewer"}))
    assert r["user_role"] == "internal_user_viewer"
    members = ok(call(fleet, "GET", "/organization/info", key=key, params={"organization_id": mine_id}))["members"]
    assert {m["user_id"] for m in members} == {admin_id, worker_id, newcomer_id}
    # The org admin takes the newcomer out again: the user stays, in no organization.
    gone = ok(call(fleet, "DELETE", "/organization/member_delete", key=key,
                   json={"organization_id": mine_id, "user_id": newcomer_id}))
    assert (gone["user_id"], gone["organization_id"]) == (newcomer_id, mine_id)
    members = ok(call(fleet, "GET", "/organization/info", key=key, params={"organization_id": mine_id}))["members"]
    assert {m["user_id"] for m in members} == {admin_id, worker_id}
    assert ok(call(fleet, "GET", "/user/info", params={"user_id": newcomer_id}))["user_info"]["organization_id"] is None
    error(call(fleet, "POST", "/organization/member_delete", key=key,
               json={"organization_id": mine_id, "user_id": newcomer_id}), 404)

    # Another organization's: not found (ids cannot be probed), and nothing changes there.
    before = ok(call(fleet, "GET", "/user/list", params={"organization_id": theirs_id}))
    assert call(fleet, "POST", "/user/new", key=key, json={"user_id": unique("x"), "organization_id": theirs_id,
                                                           "auto_create_key": False}).status_code in (403, 404)
    error(call(fleet, "GET", "/user/info", key=key, params={"user_id": outsider_id}), 404)
    assert call(fleet, "POST", "/user/update", key=key,
                json={"user_id": outsider_id, "rpm_limit": 1}).status_code in (403, 404)
    assert call(fleet, "POST", "/user/delete", key=key, json={"user_ids": [outsider_id]}).status_code in (403, 404)
    error(call(fleet, "GET", "/organization/info", key=key, params={"organization_id": theirs_id}), 404)
    assert call(fleet, "POST", "/organization/member_add", key=key, json={
        "organization_id": theirs_id, "member": {"user_id": unique("y"), "role": "internal_user"}
    }).status_code in (403, 404)
    # Nor may it pull another organization's user into its own, make organizations, or raise roles.
    assert call(fleet, "POST", "/organization/member_add", key=key, json={
        "organization_id": mine_id, "member": {"user_id": outsider_id, "role": "internal_user"}
    }).status_code in (400, 403, 404)
    error(call(fleet, "POST", "/organization/new", key=key, json={"organization_alias": "mine-too"}), 403)
    assert call(fleet, "POST", "/user/new", key=key, json={"user_id": unique("z"), "organization_id": mine_id,
                                                           "user_role": "proxy_admin"}).status_code == 403
    assert [o["organization_id"] for o in ok(call(fleet, "GET", "/organization/list", key=key))] == [mine_id]
    # A key it may not make (its key holds one model; the user's key would hold them all): the
    # user made for it goes again, so a refused /user/new leaves nothing behind.
    narrow = ok(call(fleet, "POST", "/key/generate", json={"key_type": "management", "user_id": admin_id,
                                                           "models": ["gpt-4o-mini"]}))["key"]
    keyless_id = unique("keyless")
    error(call(fleet, "POST", "/user/new", key=narrow, json={"user_id": keyless_id, "organization_id": mine_id}), 403)
    error(call(fleet, "GET", "/user/info", params={"user_id": keyless_id}), 404)
    after = ok(call(fleet, "GET", "/user/list", params={"organization_id": theirs_id}))
    assert after == before
    assert ok(call(fleet, "GET", "/user/info", params={"user_id": outsider_id}))["user_info"]["rpm_limit"] is None


def test_bad_calls_get_litellms_error_shape_and_change_nothing(fleet):
    org = new_org(fleet, unique("umbrella"))
    users_before = ok(call(fleet, "GET", "/user/list"))["total"]
    orgs_before = len(ok(call(fleet, "GET", "/organization/list")))

    # No credential.
    error(httpx.post(f"{fleet.rest}/user/new", json={"user_id": "anon"}, timeout=10), 401)
    error(httpx.post(f"{fleet.rest}/organization/new", json={"organization_alias": "anon"}, timeout=10), 401)
    error(httpx.get(f"{fleet.rest}/user/list", timeout=10), 401)
    # Not JSON; a field of the wrong type names it; a role LiteLLM does not have.
    error(call(fleet, "POST", "/user/new", content=b"{not json"), 400)
    assert error(call(fleet, "POST", "/user/new", json={"max_budget": "lots"}), 422)["param"] == "max_budget"
    assert error(call(fleet, "POST", "/user/new", json={"models": "gpt-4o"}), 422)["param"] == "models"
    assert error(call(fleet, "POST", "/user/new", json={"user_role": "emperor"}), 422)["param"] == "user_role"
    assert error(call(fleet, "POST", "/organization/new", json={"rpm_limit": "fast"}), 422)["param"] == "rpm_limit"
    assert error(call(fleet, "POST", "/user/update", json={"rpm_limit": 3}), 422)["param"] == "user_id"
    assert error(call(fleet, "GET", "/user/info"), 422)["param"] == "user_id"
    # LiteLLM settings Sluice would not keep are refused by name.
    for path, body, field in [
        ("/user/new", {"send_invite_email": True}, "send_invite_email"),
        ("/user/new", {"teams": ["t1"]}, "teams"),
        ("/user/new", {"model_max_budget": {"gpt-4o": 1.0}}, "model_max_budget"),
        ("/user/new", {"spend": 5.0}, "spend"),
        ("/organization/new", {"organization_alias": "x", "object_permission": {"vector_stores": ["v"]}},
         "object_permission"),
        ("/organization/new", {"organization_alias": "x", "budget_id": "b1"}, "budget_id"),
        ("/organization/member_add", {"organization_id": org["organization_id"], "max_budget_in_organization": 5,
                                      "member": {"user_id": "m", "role": "internal_user"}},
         "max_budget_in_organization"),
    ]:
        message = error(call(fleet, "POST", path, json=body), 400)["message"]
        assert message == f"{field}: not supported by Sluice", (path, message)
    # …but LiteLLM's defaults, which ask for nothing, are not.
    quiet = ok(call(fleet, "POST", "/user/new", json={"user_id": unique("quiet"), "send_invite_email": False,
                                                      "spend": 0, "blocked": False, "auto_create_key": False}))
    assert "key" not in quiet
    ok(call(fleet, "POST", "/user/delete", json={"user_ids": [quiet["user_id"]]}))
    # A list filter the user service cannot apply is refused, not ignored.
    assert "user_email" in error(call(fleet, "GET", "/user/list", params={"user_email": "a@b"}), 400)["message"]
    # Removing a member who is not one, or naming no user.
    error(call(fleet, "DELETE", "/organization/member_delete", json={
        "organization_id": org["organization_id"], "user_id": "no-such-user"}), 404)
    assert error(call(fleet, "DELETE", "/organization/member_delete", json={
        "organization_id": org["organization_id"]}), 422)["param"] == "user_id"
    # Unknown ids.
    error(call(fleet, "GET", "/user/info", params={"user_id": "no-such-user"}), 404)
    error(call(fleet, "POST", "/user/update", json={"user_id": "no-such-user", "rpm_limit": 1}), 404)
    error(call(fleet, "GET", "/organization/info", params={"organization_id": "no-such-org"}), 404)
    error(call(fleet, "PATCH", "/organization/update", json={"organization_id": "no-such-org", "max_budget": 1}), 404)
    error(call(fleet, "POST", "/organization/member_add", json={
        "organization_id": "no-such-org", "member": {"user_id": "m", "role": "internal_user"}}), 404)
    error(call(fleet, "PATCH", "/organization/member_update", json={
        "organization_id": org["organization_id"], "user_id": "no-such-user", "role": "internal_user"}), 404)

    assert ok(call(fleet, "GET", "/user/list"))["total"] == users_before
    assert len(ok(call(fleet, "GET", "/organization/list"))) == orgs_before
    assert call(fleet, "GET", "/user/info", params={"user_id": "m"}).status_code == 404
