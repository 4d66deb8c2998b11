"""LiteLLM's spend reports on `sluice serve`'s REST API: `/spend/keys`, `/spend/users`,
`/global/spend/report` (by team, customer or key, per day) and the CSV export of `/spend/logs`,
over spend that real traffic through a real Envoy (xDS mode) wrote. Each answer is checked
against what a user would add up themselves: the requests' own rows and costs."""
import csv
import datetime
import io
import os
from collections import defaultdict
from types import SimpleNamespace

import openai
import pytest

from rest_support import call, error, ok, rest_fleet
from test_xds import CHAT, wait_until

# The JSON rows' columns, in the CSV export's order.
CSV_COLUMNS = ["request_id", "api_key", "spend", "prompt_tokens", "completion_tokens", "total_tokens", "startTime",
               "model_group", "model_id", "user", "end_user", "team_id", "organization_id", "request_tags", "status"]

# An end user (OpenAI's `user`, LiteLLM's customer) a CSV must quote, and one a spreadsheet would
# run as a formula.
TRICKY_CUSTOMER = 'acme, "the best"\ninc'
FORMULA_CUSTOMER = "=1+2"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    yield from rest_fleet(tmp_path_factory, "rest-spend")


def logs(fleet, key=None, **params):
    return ok(call(fleet, "GET", "/spend/logs", key=key, params={"page_size": 500, **params}))


def report(fleet, key=None, **params):
    return call(fleet, "GET", "/global/spend/report", key=key, params=params)


def shift(day, days):
    return (datetime.date.fromisoformat(day) + datetime.timedelta(days=days)).isoformat()


def totals(rows, *fields):
    """Spend summed by the rows' values of `fields` (`day` is the row's UTC day)."""
    out = defaultdict(float)
    for r in rows:
        out[tuple(r["startTime"][:10] if f == "day" else r[f] for f in fields)] += r["spend"]
    return dict(out)


def assert_same_money(got, want):
    assert set(got) == set(want), (got, want)
    for k in want:
        assert got[k] == pytest.approx(want[k], abs=1e-9), (k, got[k], want[k])


@pytest.fixture(scope="module")
def world(fleet):
    """Two users in two teams, a key of each (and one of no team or user), and traffic through
    an Envoy: 3 requests on team alpha's key, 2 on beta's, 1 on the loose key."""
    tag = os.urandom(3).hex()
    ann, bob, carl = f"ann-{tag}", f"bob-{tag}", f"carl-{tag}"
    for user in (ann, bob, carl):
        ok(call(fleet, "POST", "/user/new", json={"user_id": user, "user_role": "internal_user",
                                                  "auto_create_key": False}))
    alpha = ok(call(fleet, "POST", "/team/new", json={"team_alias": "spend-alpha", "members_with_roles": [
        {"role": "user", "user_id": ann}, {"role": "admin", "user_id": carl}]}))
    beta = ok(call(fleet, "POST", "/team/new", json={"team_alias": "spend-beta",
                                                     "members_with_roles": [{"role": "user", "user_id": bob}]}))
    key_a = ok(call(fleet, "POST", "/key/generate", json={"key_alias": "spend-a", "team_id": alpha["team_id"],
                                                          "user_id": ann, "max_budget": 10.0}))
    key_b = ok(call(fleet, "POST", "/key/generate", json={"key_alias": "spend-b", "team_id": beta["team_id"],
                                                          "user_id": bob}))
    key_n = ok(call(fleet, "POST", "/key/generate", json={"key_alias": "spend-none"}))
    # Ann's management key: a caller who is no admin.
    ann_admin = ok(call(fleet, "POST", "/key/generate", json={"key_type": "management", "user_id": ann}))
    # Carl's: team alpha's admin.
    carl_admin = ok(call(fleet, "POST", "/key/generate", json={"key_type": "management", "user_id": carl}))
    envoy = fleet.start_envoy("edge-rest-spend-report")

    def send(made, model, n, users=()):
        client = openai.OpenAI(base_url=f"{envoy.url}/v1", api_key=made["key"], max_retries=0)
        ids = []
        for i in range(n):
            extra = {"user": users[i]} if i < len(users) else {}
            raw = client.chat.completions.with_raw_response.create(model=model, messages=CHAT["messages"], **extra)
            ids.append(raw.headers["x-request-id"])
        return ids

    sent = {key_a["token"]: send(key_a, "gpt-4o-mini", 3, [TRICKY_CUSTOMER]),
            key_b["token"]: send(key_b, "gpt-4o", 2, ["cust-beta", "cust-beta"]),
            key_n["token"]: send(key_n, "gpt-4o-mini", 1, [FORMULA_CUSTOMER])}
    for token, ids in sent.items():
        wait_until(lambda: {r["request_id"] for r in logs(fleet, api_key=token)} == set(ids),
                   what=f"the spend rows of {token}")
    return SimpleNamespace(ann=ann, bob=bob, alpha=alpha["team_id"], beta=beta["team_id"], key_a=key_a,
                           key_b=key_b, key_n=key_n, ann_admin=ann_admin["key"], ann_admin_token=ann_admin["token"],
                           carl_admin=carl_admin["key"],
                           envoy=envoy, sent=sent)


def test_spend_keys_lists_every_key_most_spent_first_with_the_sum_of_its_requests(fleet, world):
    rows = ok(call(fleet, "GET", "/spend/keys"))
    spends = [r["spend"] for r in rows]
    assert spends == sorted(spends, reverse=True)
    by_token = {r["token"]: r for r in rows}
    records = world.envoy.records()
    for made in (world.key_a, world.key_b, world.key_n):
        token = made["token"]
        mine = logs(fleet, api_key=token)
        assert len(mine) == len(world.sent[token])
        # Equal to its rows' spend, and to what the Envoy billed each request.
        assert by_token[token]["spend"] > 0
        assert by_token[token]["spend"] == pytest.approx(sum(r["spend"] for r in mine), abs=1e-9)
        billed = [r["cost_usd"] for r in records if r["key_id"] == token]
        assert len(billed) == len(mine)
        assert by_token[token]["spend"] == pytest.approx(sum(billed), abs=1e-9)
    a = by_token[world.key_a["token"]]
    assert (a["key_alias"], a["team_id"], a["user_id"], a["max_budget"], a["models"]) == \
        ("spend-a", world.alpha, world.ann, 10.0, [])
    assert a["key_name"].endswith(world.key_a["key"][-4:]) and a["created_at"] and "expires" in a
    assert world.key_a["key"] not in str(rows), "never the key itself"
    # A key that spent nothing is listed with 0.
    assert by_token[world.ann_admin_token]["spend"] == 0


def test_spend_users_gives_each_users_spend_and_one_user_on_request(fleet, world):
    rows = ok(call(fleet, "GET", "/spend/users"))
    spends = [r["spend"] for r in rows]
    assert spends == sorted(spends, reverse=True)
    by_id = {r["user_id"]: r for r in rows}
    for user, made in ((world.ann, world.key_a), (world.bob, world.key_b)):
        want = sum(r["spend"] for r in logs(fleet, user_id=user))
        assert want > 0 and by_id[user]["spend"] == pytest.approx(want, abs=1e-9)
        assert want == pytest.approx(sum(r["spend"] for r in logs(fleet, api_key=made["token"])), abs=1e-9)
    one = ok(call(fleet, "GET", "/spend/users", params={"user_id": world.bob}))
    assert [u["user_id"] for u in one] == [world.bob]
    assert one[0]["spend"] == pytest.approx(by_id[world.bob]["spend"], abs=1e-12)
    assert one[0]["user_role"] == "internal_user" and "max_budget" in one[0]
    error(call(fleet, "GET", "/spend/users", params={"user_id": "nobody-at-all"}), 404)


def test_report_by_team_splits_each_days_spend_between_the_teams(fleet, world):
    rows = logs(fleet)
    first, last = min(r["startTime"][:10] for r in rows), max(r["startTime"][:10] for r in rows)
    days = ok(report(fleet, start_date=first, end_date=last))  # group_by=team is LiteLLM's default
    assert [d["group_by_day"] for d in days] == sorted({r["startTime"][:10] for r in rows})
    got = {(d["group_by_day"], t["team_id"]): t["total_spend"] for d in days for t in d["teams"]}
    assert_same_money(got, totals(rows, "day", "team_id"))
    teams = {t["team_id"]: t for d in days for t in d["teams"]}
    assert teams[world.alpha]["team_name"] == "spend-alpha" and teams[world.beta]["team_name"] == "spend-beta"
    assert teams[None]["team_name"] == "Unassigned Team"
    # Per team, its spend by model and key: alpha's is key a's, on gpt-4o-mini.
    for d in days:
        for t in d["teams"]:
            assert t["total_spend"] == pytest.approx(sum(m["spend"] for m in t["metadata"]), abs=1e-9)
            spent = [t["total_spend"] for t in d["teams"]]
            assert spent == sorted(spent, reverse=True)
    alpha_rows = logs(fleet, api_key=world.key_a["token"])
    meta = [m for d in days for t in d["teams"] if t["team_id"] == world.alpha for m in t["metadata"]]
    assert {(m["model"], m["api_key"]) for m in meta} == {("gpt-4o-mini", world.key_a["token"])}
    assert sum(m["total_tokens"] for m in meta) == sum(r["total_tokens"] for r in alpha_rows)
    assert sum(m["spend"] for m in meta) == pytest.approx(sum(r["spend"] for r in alpha_rows), abs=1e-9)
    # team_id narrows the report to that team.
    only_beta = ok(report(fleet, start_date=first, end_date=last, team_id=world.beta))
    assert {t["team_id"] for d in only_beta for t in d["teams"]} == {world.beta}


def test_report_dates_exclude_the_days_outside_them(fleet, world):
    rows = logs(fleet)
    first, last = min(r["startTime"][:10] for r in rows), max(r["startTime"][:10] for r in rows)
    assert ok(report(fleet, start_date=shift(first, -30), end_date=shift(first, -1))) == []
    assert ok(report(fleet, start_date=shift(last, 1), end_date=shift(last, 30))) == []
    assert ok(report(fleet, start_date=shift(last, 1), end_date=shift(last, 30), group_by="api_key")) == []
    wide = ok(report(fleet, start_date=shift(first, -1), end_date=shift(last, 1)))
    assert wide == ok(report(fleet, start_date=first, end_date=last))
    # One day alone is that day's spend (and the same from /spend/logs' own day filter).
    one = ok(report(fleet, start_date=last, end_date=last))
    assert [d["group_by_day"] for d in one] == [last]
    day_rows = logs(fleet, start_date=last, end_date=last)
    assert sum(t["total_spend"] for t in one[0]["teams"]) == pytest.approx(sum(r["spend"] for r in day_rows),
                                                                           abs=1e-9)


def test_report_by_customer_and_by_team_and_customer(fleet, world):
    rows = logs(fleet)
    first, last = min(r["startTime"][:10] for r in rows), max(r["startTime"][:10] for r in rows)
    days = ok(report(fleet, start_date=first, end_date=last, group_by="customer"))
    got = {(d["group_by_day"], c["customer"]): c["total_spend"] for d in days for c in d["customers"]}
    assert_same_money(got, totals(rows, "day", "end_user"))
    assert {c["customer"] for d in days for c in d["customers"]} >= {TRICKY_CUSTOMER, "cust-beta", FORMULA_CUSTOMER}
    # LiteLLM's team_id with customer_id: that team's spend for that customer.
    both = ok(report(fleet, start_date=first, end_date=last, team_id=world.alpha, customer_id=TRICKY_CUSTOMER))
    entries = [e for d in both for e in d["teams_customers"]]
    assert [(e["team_id"], e["team_name"], e["customer"]) for e in entries] == \
        [(world.alpha, "spend-alpha", TRICKY_CUSTOMER)]
    want = [r["spend"] for r in logs(fleet, api_key=world.key_a["token"]) if r["end_user"] == TRICKY_CUSTOMER]
    assert len(want) == 1 and entries[0]["total_spend"] == pytest.approx(want[0], abs=1e-9)


def test_report_by_key_totals_each_key_with_its_models(fleet, world):
    rows = logs(fleet)
    first, last = min(r["startTime"][:10] for r in rows), max(r["startTime"][:10] for r in rows)
    keys = ok(report(fleet, start_date=first, end_date=last, group_by="api_key"))
    assert_same_money({(k["api_key"],): k["total_cost"] for k in keys}, totals(rows, "api_key"))
    costs = [k["total_cost"] for k in keys]
    assert costs == sorted(costs, reverse=True)
    b_rows = logs(fleet, api_key=world.key_b["token"])
    b = next(k for k in keys if k["api_key"] == world.key_b["token"])
    assert b["model_details"] == [{"model": "gpt-4o", "total_cost": pytest.approx(b["total_cost"], abs=1e-12),
                                   "total_input_tokens": sum(r["prompt_tokens"] for r in b_rows),
                                   "total_output_tokens": sum(r["completion_tokens"] for r in b_rows)}]
    # LiteLLM's api_key (the key itself or its token) and internal_user_id: that key's, that user's.
    for named in (world.key_a["key"], world.key_a["token"]):
        one = ok(report(fleet, start_date=first, end_date=last, api_key=named))
        assert [k["api_key"] for k in one] == [world.key_a["token"]]
    bobs = ok(report(fleet, start_date=first, end_date=last, internal_user_id=world.bob))
    assert [k["api_key"] for k in bobs] == [world.key_b["token"]]
    assert bobs[0]["total_cost"] == pytest.approx(b["total_cost"], abs=1e-12)


def test_bad_report_calls_get_litellms_error_naming_the_parameter(fleet, world):
    day = datetime.date.today().isoformat()
    assert error(report(fleet, end_date=day), 400)["param"] == "start_date"
    assert error(report(fleet, start_date=day), 400)["param"] == "end_date"
    assert error(report(fleet), 400)["param"] == "start_date"
    for bad in ("2024-13-01", "2024-02-30", "yesterday", "05/10/2024", "2024-05-10T00:00:00Z"):
        body = error(report(fleet, start_date=bad, end_date=day), 400)
        assert body["param"] == "start_date" and "YYYY-MM-DD" in body["message"], body
    assert error(report(fleet, start_date=day, end_date="2024-1-1"), 400)["param"] == "end_date"
    assert error(report(fleet, start_date=day, end_date=shift(day, -1)), 400)["param"] == "end_date"
    assert error(report(fleet, start_date=day, end_date=day, group_by="model"), 422)["param"] == "group_by"
    assert error(call(fleet, "GET", "/spend/logs", params={"format": "xml"}), 422)["param"] == "format"
    # An LLM key is no admin credential.
    error(report(fleet, key=world.key_a["key"], start_date=day, end_date=day), 403)
    error(call(fleet, "GET", "/spend/keys", key=world.key_a["key"]), 403)


def test_a_caller_who_is_no_admin_sees_only_its_own_spend(fleet, world):
    mine = logs(fleet, api_key=world.key_a["token"])
    first, last = min(r["startTime"][:10] for r in mine), max(r["startTime"][:10] for r in mine)
    as_ann = world.ann_admin
    keys = ok(call(fleet, "GET", "/spend/keys", key=as_ann))
    assert {k["token"] for k in keys} == {world.key_a["token"], world.ann_admin_token}
    assert keys[0]["token"] == world.key_a["token"]
    assert keys[0]["spend"] == pytest.approx(sum(r["spend"] for r in mine), abs=1e-9)
    users = ok(call(fleet, "GET", "/spend/users", key=as_ann))
    assert [u["user_id"] for u in users] == [world.ann]
    error(call(fleet, "GET", "/spend/users", key=as_ann, params={"user_id": world.bob}), 404)
    days = ok(report(fleet, key=as_ann, start_date=first, end_date=last))
    assert {t["team_id"] for d in days for t in d["teams"]} == {world.alpha}
    assert sum(t["total_spend"] for d in days for t in d["teams"]) == pytest.approx(sum(r["spend"] for r in mine),
                                                                                    abs=1e-9)
    by_key = ok(report(fleet, key=as_ann, start_date=first, end_date=last, group_by="api_key"))
    assert [k["api_key"] for k in by_key] == [world.key_a["token"]]
    error(report(fleet, key=as_ann, start_date=first, end_date=last, internal_user_id=world.bob), 404)
    exported = list(csv.DictReader(io.StringIO(call(fleet, "GET", "/spend/logs", key=as_ann,
                                                    params={"format": "csv"}).text, newline="")))
    assert {r["request_id"] for r in exported} == set(world.sent[world.key_a["token"]])


def test_spend_logs_export_as_csv_one_row_per_request(fleet, world):
    token = world.key_a["token"]
    r = call(fleet, "GET", "/spend/logs", params={"api_key": token, "format": "csv"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    reader = csv.DictReader(io.StringIO(r.text, newline=""))
    assert reader.fieldnames == CSV_COLUMNS
    rows = list(reader)
    json_rows = {j["request_id"]: j for j in logs(fleet, api_key=token)}
    assert len(rows) == len(json_rows) == len(world.sent[token])
    assert {row["request_id"] for row in rows} == set(world.sent[token])
    for row in rows:
        j = json_rows[row["request_id"]]
        assert float(row["spend"]) == pytest.approx(j["spend"], abs=1e-12)
        for column in ("prompt_tokens", "completion_tokens", "total_tokens"):
            assert int(row[column]) == j[column]
        for column in ("api_key", "startTime", "model_group", "model_id", "user", "team_id", "status"):
            assert row[column] == (j[column] or ""), column
        assert row["end_user"] == (j["end_user"] or "")
        assert row["organization_id"] == "" and row["request_tags"] == "[]"
    # The customer with a comma, quotes and a line break comes back whole.
    assert TRICKY_CUSTOMER in {row["end_user"] for row in rows}
    # Every request, one row each, without a page; a page when asked for one.
    everything = list(csv.DictReader(io.StringIO(call(fleet, "GET", "/spend/logs",
                                                      params={"format": "csv"}).text, newline="")))
    all_json = logs(fleet)
    assert len(everything) == len(all_json) and len({row["request_id"] for row in everything}) == len(all_json)
    # A customer named like a formula is shown, not run, by a spreadsheet.
    loose = next(row for row in everything if row["api_key"] == world.key_n["token"])
    assert loose["end_user"] == "'" + FORMULA_CUSTOMER
    paged = call(fleet, "GET", "/spend/logs", params={"format": "csv", "page": 1, "page_size": 2}).text
    assert len(list(csv.DictReader(io.StringIO(paged, newline="")))) == 2
    # A day range without requests: the header alone.
    none = call(fleet, "GET", "/spend/logs", params={"format": "csv", "end_date": "2000-01-01"})
    assert list(csv.reader(io.StringIO(none.text, newline=""))) == [CSV_COLUMNS]


def test_a_team_admin_sees_the_spend_of_its_teams_keys(fleet, world):
    """Key a is Ann's, in the team Carl administers: Carl lists it, with all of its spend."""
    mine = logs(fleet, api_key=world.key_a["token"])
    first, last = min(r["startTime"][:10] for r in mine), max(r["startTime"][:10] for r in mine)
    keys = {k["token"]: k for k in ok(call(fleet, "GET", "/spend/keys", key=world.carl_admin))}
    assert world.key_a["token"] in keys and world.key_b["token"] not in keys
    assert keys[world.key_a["token"]]["spend"] == pytest.approx(sum(r["spend"] for r in mine), abs=1e-9)
    days = ok(report(fleet, key=world.carl_admin, start_date=first, end_date=last, team_id=world.alpha))
    assert {t["team_id"] for d in days for t in d["teams"]} == {world.alpha}
    assert sum(t["total_spend"] for d in days for t in d["teams"]) == pytest.approx(sum(r["spend"] for r in mine),
                                                                                    abs=1e-9)
    # Another team's: none of its spend (the service narrows it to Carl's own requests there).
    assert ok(report(fleet, key=world.carl_admin, start_date=first, end_date=last, team_id=world.beta)) == []
