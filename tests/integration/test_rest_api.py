"""LiteLLM's management REST API on `sluice serve`'s admin port (issue 13, keys first): the
calls a script written for LiteLLM makes (`curl -X POST …/key/generate -H "Authorization:
Bearer $MASTER" -d '{…}'`), answered in LiteLLM's shapes, through the same services (and
authorisation, validation and audit) as the gRPC admin API, the keys then used through a real
Envoy with the OpenAI SDK."""
import datetime
import json
import re
from concurrent.futures import ThreadPoolExecutor

import anthropic
import httpx
import openai
import pytest

from rest_support import call, error, rest_fleet
from test_xds import CHAT, wait_until


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    yield from rest_fleet(tmp_path_factory, "rest")


def test_a_key_generated_over_rest_has_litellms_shape_and_works_through_envoy(fleet):
    body = {"key_alias": "rest-made", "models": ["gpt-4o-mini"], "max_budget": 5.0, "budget_duration": "30d",
            "rpm_limit": 100, "tpm_limit": 100000, "metadata": {"team": "search"}, "duration": "7d",
            "some_field_litellm_ignores_too": 1}
    r = call(fleet, "POST", "/key/generate", json=body)
    assert r.status_code == 200, r.text
    made = r.json()
    assert made["key"].startswith("sk-") and made["key_alias"] == "rest-made"
    assert made["models"] == ["gpt-4o-mini"] and made["max_budget"] == 5.0 and made["rpm_limit"] == 100
    assert made["metadata"] == {"team": "search"} and made["expires"] is not None
    assert made["key_name"].endswith(made["key"][-4:]) and made["token"]
    # It serves the model it was given, through an Envoy of the fleet, and no other.
    envoy = fleet.start_envoy("edge-rest")
    client = openai.OpenAI(base_url=f"{envoy.url}/v1", api_key=made["key"], max_retries=0)
    assert client.chat.completions.create(model="gpt-4o-mini", messages=CHAT["messages"]).choices[0].message.content
    assert wait_until(lambda: fleet.served()["served"] > 0, what="the mock's answer")
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="gpt-4o", messages=CHAT["messages"])
    # /key/info by the key itself; the key never comes back after it was made.
    r = call(fleet, "GET", "/key/info", params={"key": made["key"]})
    assert r.status_code == 200, r.text
    info = r.json()["info"]
    assert (info["key_alias"], info["budget_duration"], info["tpm_limit"]) == ("rest-made", "30d", 100000)
    # LiteLLM's calendar: a 30d budget resets on the 1st of next month at 00:00 UTC.
    now = datetime.datetime.now(datetime.timezone.utc)
    first = datetime.datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=datetime.timezone.utc)
    assert info["budget_reset_at"] == first.strftime("%Y-%m-%dT00:00:00.000Z"), info
    assert made["key"] not in r.text
    # The action is audited like the CLI's.
    audit = json.loads(fleet.cli("audit", "--json").stdout)["entries"]
    assert any(e["action"] == "key.generate" and e["object_id"] == made["token"] for e in audit), audit


def test_a_weekly_budget_resets_on_monday_at_midnight_utc(fleet):
    r = call(fleet, "POST", "/key/generate", json={"key_alias": "weekly", "max_budget": 1.0, "budget_duration": "7d"})
    reset = datetime.datetime.fromisoformat(r.json()["budget_reset_at"].replace("Z", "+00:00"))
    now = datetime.datetime.now(datetime.timezone.utc)
    assert (reset.weekday(), reset.hour, reset.minute) == (0, 0, 0), reset
    assert datetime.timedelta(0) < reset - now <= datetime.timedelta(days=7)
    info = call(fleet, "GET", "/key/info", params={"key": r.json()["key"]}).json()["info"]
    assert info["budget_reset_at"] == r.json()["budget_reset_at"]


def test_update_block_regenerate_and_delete_follow_litellm(fleet):
    made = call(fleet, "POST", "/key/generate", json={"key_alias": "to-change", "rpm_limit": 5}).json()
    # Update: a field given changes, a limit set to null is lifted, the rest stays.
    r = call(fleet, "POST", "/key/update", json={"key": made["key"], "models": ["gpt-4o"], "rpm_limit": None,
                                                 "tpm_limit": 1000})
    assert r.status_code == 200, r.text
    assert (r.json()["models"], r.json()["rpm_limit"], r.json()["tpm_limit"]) == (["gpt-4o"], None, 1000)
    # Block and unblock.
    assert call(fleet, "POST", "/key/block", json={"key": made["key"]}).json()["blocked"] is True
    assert call(fleet, "POST", "/key/unblock", json={"key": made["key"]}).json()["blocked"] is False
    # Regenerate (LiteLLM's path form): a new secret, the same key id and settings.
    r = call(fleet, "POST", f"/key/{made['key']}/regenerate", json={})
    assert r.status_code == 200, r.text
    again = r.json()
    assert again["key"] != made["key"] and again["token"] == made["token"] and again["tpm_limit"] == 1000
    assert call(fleet, "GET", "/key/info", params={"key": made["key"]}).status_code in (401, 404)
    # List: LiteLLM's pages, tokens by default, whole objects on request.
    listed = call(fleet, "GET", "/key/list", params={"key_alias": "to-change"}).json()
    assert listed["keys"] == [made["token"]] and listed["total_count"] == 1 and listed["current_page"] == 1
    full = call(fleet, "GET", "/key/list", params={"key_alias": "to-change", "return_full_object": "true"}).json()
    assert full["keys"][0]["key_alias"] == "to-change"
    # Delete: every key named must exist first, or nothing is deleted.
    r = call(fleet, "POST", "/key/delete", json={"keys": [again["key"], "sk-sluice-nope"]})
    assert r.status_code >= 400
    assert call(fleet, "GET", "/key/info", params={"key": again["key"]}).status_code == 200
    by_hash = call(fleet, "GET", "/key/list", params={"key_hash": made["token"]}).json()
    assert by_hash["keys"] == [made["token"]] and by_hash["total_count"] == 1
    assert call(fleet, "GET", "/key/list", params={"include_team_keys": "true"}).status_code == 400
    # LiteLLM's client sends the list it was not given as null.
    r = call(fleet, "POST", "/key/delete", json={"keys": [again["key"], again["key"]], "key_aliases": None})
    assert r.status_code == 200 and r.json() == {"deleted_keys": [again["key"]]}, r.text
    assert call(fleet, "GET", "/key/info", params={"key": again["key"]}).status_code == 404


def test_bad_calls_get_litellms_error_shape_and_change_nothing(fleet):
    before = call(fleet, "GET", "/key/list").json()["total_count"]
    # No credential, a wrong one, and an LLM key (not an admin credential).
    error(httpx.post(f"{fleet.rest}/key/generate", json={}, timeout=10), 401)
    error(call(fleet, "POST", "/key/generate", key="sk-master-wrong", json={}), 401)
    llm_key = call(fleet, "POST", "/key/generate", json={"key_alias": "just-llm"}).json()["key"]
    error(call(fleet, "POST", "/key/generate", key=llm_key, json={}), 403)
    # Not JSON; a field of the wrong type names it; a setting Sluice would not enforce is refused.
    error(call(fleet, "POST", "/key/generate", content=b"{not json"), 400)
    assert error(call(fleet, "POST", "/key/generate", json={"models": "gpt-4o"}), 422)["param"] == "models"
    assert error(call(fleet, "POST", "/key/block", json={"key": 5}), 422)["param"] == "key"
    assert "guardrails" in error(call(fleet, "POST", "/key/generate", json={"guardrails": ["pii"]}), 400)["message"]
    assert "budget_id" in error(call(fleet, "POST", "/key/generate", json={"budget_id": "b1"}), 400)["message"]
    assert "spend" in error(call(fleet, "POST", "/key/generate", json={"spend": 3.5}), 400)["message"]
    # A body over the limit.
    error(call(fleet, "POST", "/key/generate", content=b'{"key_alias": "' + b"x" * 400_000 + b'"}'), 413)
    # An unknown key.
    error(call(fleet, "GET", "/key/info", params={"key": "sk-sluice-unknown"}), 404)
    after = call(fleet, "GET", "/key/list").json()["total_count"]
    assert after == before + 1, "only the LLM key made above"


def test_the_gateways_own_listener_serves_the_management_api(fleet):
    """As LiteLLM serves it on its one port: an Envoy of the fleet routes `/key/…` to the control
    plane (the filter lets it pass unchecked; the control plane checks the caller's key)."""
    envoy = fleet.start_envoy("edge-rest-routes")
    r = httpx.post(f"{envoy.url}/key/generate", json={"key_alias": "via-envoy", "models": ["gpt-4o"]},
                   headers={"Authorization": f"Bearer {fleet.master_key}"}, timeout=30)
    assert r.status_code == 200, r.text
    made = r.json()
    info = httpx.get(f"{envoy.url}/key/info", params={"key": made["key"]},
                     headers={"Authorization": f"Bearer {fleet.master_key}"}, timeout=30)
    assert info.status_code == 200 and info.json()["info"]["key_alias"] == "via-envoy", info.text
    # A client's own cluster header does not send a management call to a deployment (whose
    # cluster would add the provider's credential).
    dump = httpx.get(f"{envoy.admin}/config_dump?include_eds", timeout=5).text
    cluster = re.search(r"sluice_gpt_4o_a[a-z0-9_]*", dump).group(0)
    served = fleet.served()["served"]
    r = httpx.post(f"{envoy.url}/key/generate", json={"key_alias": "with-cluster"}, timeout=30,
                   headers={"Authorization": f"Bearer {fleet.master_key}", "x-sluice-cluster": cluster})
    assert r.status_code == 200 and r.json()["key_alias"] == "with-cluster", r.text
    assert fleet.served()["served"] == served, "nothing reached a provider"
    # The control plane's refusals come back as they are: no key, or a model key.
    assert httpx.post(f"{envoy.url}/key/generate", json={}, timeout=30).status_code == 401
    r = httpx.post(f"{envoy.url}/key/generate", json={}, headers={"Authorization": f"Bearer {made['key']}"},
                   timeout=30)
    assert r.status_code == 403 and r.json()["error"]["code"] == "403", r.text
    # And the key it made serves models through the same listener.
    client = openai.OpenAI(base_url=f"{envoy.url}/v1", api_key=made["key"], max_retries=0)
    assert client.chat.completions.create(**CHAT).choices[0].message.content
    # The read-only reports too: model groups, spend, the audit log.
    admin = {"Authorization": f"Bearer {fleet.master_key}"}
    groups = httpx.get(f"{envoy.url}/model_group/info", headers=admin, timeout=30)
    assert groups.status_code == 200 and "gpt-4o" in {g["model_group"] for g in groups.json()["data"]}, groups.text
    assert httpx.get(f"{envoy.url}/spend/logs", headers=admin, timeout=30).status_code == 200
    audit = httpx.get(f"{envoy.url}/audit", params={"object_id": made["token"]}, headers=admin, timeout=30)
    assert audit.status_code == 200 and audit.json()["audit_logs"], audit.text


def test_a_standalone_gateway_says_where_the_management_api_is(gw):
    r = httpx.post(f"{gw.url}/key/generate", json={"key_alias": "x"},
                   headers={"Authorization": f"Bearer {gw.master_key}"}, timeout=10)
    assert r.status_code == 404
    error = r.json()["error"]
    assert error["code"] == "management_api_unavailable" and "sluice serve" in error["message"], error


def test_models_are_added_changed_and_removed_over_rest_and_every_envoy_follows(fleet):
    envoy = fleet.start_envoy("edge-rest-models")
    ask = {"model": "rest-model", "messages": [{"role": "user", "content": "hi"}]}
    assert envoy.chat(ask).status_code == 400  # unknown, for now
    r = call(fleet, "POST", "/model/new", json={
        "model_name": "rest-model",
        "litellm_params": {"model": "openai/upstream-rest", "api_base": f"{fleet.mock_url}/v1",
                           "api_key": "os.environ/MOCK_OPENAI_KEY"},
        "model_info": {"id": "rest-dep", "input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}})
    assert r.status_code == 200, r.text
    assert (r.json()["model_info"]["id"], r.json()["model_name"]) == ("rest-dep", "rest-model")
    served = wait_until(lambda: (resp := envoy.chat(ask)).status_code == 200 and resp, what="the new model served")
    assert served.json()["model"] == "upstream-rest"
    # /model/info (and LiteLLM's /v1/model/info) list it, its key by name only.
    for path in ("/model/info", "/v1/model/info"):
        data = call(fleet, "GET", path).json()["data"]
        mine = [m for m in data if m["model_info"]["id"] == "rest-dep"]
        assert mine and mine[0]["litellm_params"]["api_key"] == "os.environ/MOCK_OPENAI_KEY", data
    assert fleet.openai_key not in call(fleet, "GET", "/model/info").text
    one = call(fleet, "GET", "/model/info", params={"litellm_model_id": "rest-dep"}).json()["data"]
    assert [m["model_name"] for m in one] == ["rest-model"]
    # Renamed: the old name is gone from every Envoy, the new one served.
    r = call(fleet, "POST", "/model/update", json={"model_name": "rest-model-2", "model_info": {"id": "rest-dep"}})
    assert r.status_code == 200 and r.json()["model_name"] == "rest-model-2", r.text
    renamed = {**ask, "model": "rest-model-2"}
    wait_until(lambda: envoy.chat(renamed).status_code == 200, what="the renamed model served")
    # Deleted: refused again. A bad body changes nothing.
    assert call(fleet, "POST", "/model/new", json={"model_name": "x", "litellm_params": "nope"}).status_code == 422
    # A timeout Envoy could not apply is refused with the reason, as `sluice config check` does.
    for setting in ("timeout", "stream_timeout"):
        r = call(fleet, "POST", "/model/new", json={
            "model_name": "bad-timeout", "model_info": {"id": f"bad-{setting}"},
            "litellm_params": {"model": "openai/gpt-4o", "api_key": "os.environ/MOCK_OPENAI_KEY", setting: -1}})
        assert r.status_code == 400 and f"litellm_params.{setting}" in r.text, r.text
    assert call(fleet, "POST", "/model/delete", json={"id": "rest-dep"}).status_code == 200
    wait_until(lambda: envoy.chat(renamed).status_code == 400, what="the deleted model refused")
    assert call(fleet, "POST", "/model/delete", json={"id": "rest-dep"}).status_code == 404


def test_spend_logs_show_each_request_of_a_key(fleet):
    envoy = fleet.start_envoy("edge-rest-spend")
    made = call(fleet, "POST", "/key/generate", json={"key_alias": "spender", "models": ["gpt-4o-mini"]}).json()
    client = openai.OpenAI(base_url=f"{envoy.url}/v1", api_key=made["key"], max_retries=0)
    ids = []
    # The first for an end user (OpenAI's `user`, LiteLLM's customer) and with LiteLLM's request
    # tags header, the second for neither, the third named by LiteLLM's header (before the
    # body's `user`), the fourth by Anthropic's `metadata.user_id` (Claude Code sends it).
    tag = f"job-{made['token'][-6:]}"
    for user in ("customer-42", None):
        extra = {"user": user, "extra_headers": {"x-litellm-tags": f"{tag}, nightly"}} if user else {}
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=CHAT["messages"], **extra)
        ids.append(raw.headers["x-request-id"])
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=CHAT["messages"], user="not-this-one",
        extra_headers={"x-litellm-end-user-id": "customer-7"})
    ids.append(raw.headers["x-request-id"])
    claude_code = anthropic.Anthropic(base_url=envoy.url, api_key=made["key"], max_retries=0)
    raw = claude_code.messages.with_raw_response.create(model="gpt-4o-mini", max_tokens=20, messages=CHAT["messages"],
                                                        metadata={"user_id": "claude-user-1"})
    ids.append(raw.headers["x-request-id"])
    rows = wait_until(lambda: len(r := call(fleet, "GET", "/spend/logs", params={"api_key": made["key"]}).json()) == 4
                      and r, what="the requests' spend rows")
    assert {r["request_id"] for r in rows} == set(ids)
    for r in rows:
        assert r["api_key"] == made["token"] and r["model_group"] == "gpt-4o-mini" and r["status"] == "success"
        assert r["spend"] > 0 and r["total_tokens"] == r["prompt_tokens"] + r["completion_tokens"]
        assert r["metadata"]["failed_attempts"] == [] and r["startTime"].endswith("Z")
    assert {r["request_id"]: r["end_user"] for r in rows} == {
        ids[0]: "customer-42", ids[1]: None, ids[2]: "customer-7", ids[3]: "claude-user-1"}
    # The key's `spend`, as LiteLLM shows it on /key/info (and in /key/list's full objects).
    info = call(fleet, "GET", "/key/info", params={"key": made["key"]}).json()["info"]
    assert info["spend"] == pytest.approx(sum(r["spend"] for r in rows), abs=1e-9) and info["spend"] > 0
    listed = call(fleet, "GET", "/key/list", params={"key_alias": "spender", "return_full_object": "true"}).json()
    assert [k["spend"] for k in listed["keys"]] == [info["spend"]]
    rows = [r for r in rows if r["request_id"] in ids[:2]]
    assert {r["request_id"]: r["request_tags"] for r in rows} == {ids[0]: [tag, "nightly"], ids[1]: []}
    # LiteLLM's /spend/tags counts the tagged request under each of its tags.
    by_tag = {t["individual_request_tag"]: t for t in call(fleet, "GET", "/spend/tags").json()}
    assert by_tag[tag]["log_count"] == 1 and by_tag[tag]["total_spend"] > 0, by_tag
    # Spend by customer (the CLI's --group-by customer; '-' is the requests that named none).
    by_customer = json.loads(fleet.cli("spend", "--group-by", "customer", "--key", made["token"], "--json").stdout)
    assert {row["group"]: row["requests"] for row in by_customer["rows"]} == {
        "customer-42": 1, "-": 1, "customer-7": 1, "claude-user-1": 1}
    # By request id, by token, and the admin's global view; a day range that excludes them.
    one = call(fleet, "GET", "/spend/logs", params={"request_id": ids[0]}).json()
    assert [r["request_id"] for r in one] == [ids[0]]
    assert len(call(fleet, "GET", "/spend/logs", params={"api_key": made["token"]}).json()) == 4
    assert len(call(fleet, "GET", "/global/spend/logs", params={"api_key": made["token"]}).json()) == 4
    assert call(fleet, "GET", "/spend/logs", params={"api_key": made["token"], "end_date": "2000-01-01"}).json() == []
    # Paged.
    page2 = call(fleet, "GET", "/spend/logs", params={"api_key": made["token"], "page": 2, "page_size": 1}).json()
    assert len(page2) == 1
    # A key of no one's may not read them: an LLM key is no admin credential.
    assert call(fleet, "GET", "/spend/logs", key=made["key"]).status_code == 403
    # But, as in LiteLLM, it may read its own /key/info (named or not), and no other key's.
    own = call(fleet, "GET", "/key/info", key=made["key"])
    assert own.status_code == 200 and own.json()["info"]["token"] == made["token"], own.text
    assert own.json()["info"]["spend"] == pytest.approx(info["spend"]) and "key" not in own.json()["info"]
    assert call(fleet, "GET", "/key/info", params={"key": made["key"]}, key=made["key"]).status_code == 200
    other = call(fleet, "POST", "/key/generate", json={"key_alias": "someone-else"}).json()
    assert error(call(fleet, "GET", "/key/info", params={"key": other["key"]}, key=made["key"]), 403)
    assert error(call(fleet, "GET", "/key/info", params={"key": "sk-sluice-unknown"}, key=made["key"]), 403)
    assert isinstance(call(fleet, "GET", "/spend/tags").json(), list)


def test_parallel_limits_set_over_rest_hold_on_the_fleets_envoys(fleet):
    """max_parallel_requests on a key and on a team, made with LiteLLM's calls, are enforced by
    an Envoy that looked the key up (xDS mode): concurrent slow requests past the limit get
    LiteLLM's 429 at once, and the slots come back when the requests end."""
    envoy = fleet.start_envoy("edge-parallel")
    team = call(fleet, "POST", "/team/new", json={"team_alias": "one-at-a-time", "max_parallel_requests": 1}).json()
    solo = call(fleet, "POST", "/key/generate", json={"max_parallel_requests": 2}).json()["key"]
    members = [call(fleet, "POST", "/key/generate", json={"team_id": team["team_id"]}).json()["key"] for _ in range(2)]

    def at_once(keys):
        def one(key):
            return httpx.post(f"{envoy.url}/v1/chat/completions", json=CHAT, timeout=30,
                              headers={"Authorization": f"Bearer {key}", "x-mock-latency-ms": "1500"})
        with ThreadPoolExecutor(max_workers=len(keys)) as pool:
            return list(pool.map(one, keys))

    # Looked up first (a miss waits for the control plane), so the burst meets the limit itself.
    for key in [solo, *members]:
        assert httpx.post(f"{envoy.url}/v1/chat/completions", json=CHAT, timeout=30,
                          headers={"Authorization": f"Bearer {key}"}).status_code == 200
    responses = at_once([solo] * 5)
    assert sorted(r.status_code for r in responses) == [200, 200, 429, 429, 429]
    refused = next(r for r in responses if r.status_code == 429).json()["error"]
    assert refused["code"] == "parallel_request_limit_reached", refused
    responses = at_once(members)
    assert sorted(r.status_code for r in responses) == [200, 429]
    assert "team" in next(r for r in responses if r.status_code == 429).json()["error"]["message"]
    # Every slot came back.
    assert sorted(r.status_code for r in at_once([solo] * 2)) == [200, 200]
