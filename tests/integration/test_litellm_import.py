"""`sluice import litellm`: a LiteLLM proxy's database, built by LiteLLM's own migrations (PyPI's
`litellm-proxy-extras`, installed with `litellm[proxy]`) on the machine's Postgres and seeded as
LiteLLM's admin API would have left it, imported into a Sluice fleet. The keys LiteLLM handed
out keep working through Envoy, a second run changes nothing, and what Sluice cannot carry is
reported."""
import hashlib
import json
import os
import subprocess
from pathlib import Path

import openai
import pytest

from rest_support import call, ok, rest_fleet
from test_xds import CHAT

VENV = Path(os.environ.get("SLUICE_LITELLM_VENV", ".venv-litellm"))
# LiteLLM's keys: `sk-` and 22 characters, stored as the SHA-256 of the whole key.
PLAIN = {name: "sk-" + hashlib.sha256(f"{name}-{os.getpid()}".encode()).hexdigest()[:22]
         for name in ("alice", "ops", "blocked", "spent", "expired")}


def digest(key):
    return hashlib.sha256(key.encode()).hexdigest()


def psql(database, sql=None, file=None):
    args = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", database, "-q", "-v", "ON_ERROR_STOP=1"]
    args += ["-f", str(file)] if file else ["-c", sql]
    subprocess.run(args, check=True, capture_output=True, timeout=120)


def litellm_database():
    """A fresh database with LiteLLM's schema, from its migrations in order."""
    migrations = sorted(VENV.glob("lib/python*/site-packages/litellm_proxy_extras/migrations/*/migration.sql"))
    assert len(migrations) > 100, f"LiteLLM's migrations not found under {VENV}"
    name = "litellm_" + os.urandom(6).hex()
    psql("test", f"CREATE DATABASE {name}")
    for migration in migrations:
        psql(name, file=migration)
    return name


SEED = """
INSERT INTO "LiteLLM_BudgetTable" (budget_id, max_budget, rpm_limit, budget_duration, created_by, updated_by)
  VALUES ('b-acme', 500, 1000, '30d', 'admin', 'admin'), ('b-gold', 20, NULL, '30d', 'admin', 'admin');
INSERT INTO "LiteLLM_EndUserTable" (user_id, alias, spend, budget_id, blocked, models)
  VALUES ('cust-1', 'Customer One', 0, 'b-gold', false, ARRAY[]::text[]),
         ('cust-2', NULL, 3, 'b-gold', false, ARRAY[]::text[]),
         ('cust-3', NULL, 0, NULL, true, ARRAY['gpt-4o']);
INSERT INTO "LiteLLM_OrganizationTable" (organization_id, organization_alias, budget_id, models, created_by, updated_by)
  VALUES ('org-acme', 'Acme', 'b-acme', ARRAY['gpt-4o-mini', 'gpt-4o'], 'admin', 'admin');
INSERT INTO "LiteLLM_UserTable" (user_id, user_email, user_role, organization_id, models, max_budget, spend)
  VALUES ('alice', 'alice@acme.test', 'internal_user', 'org-acme', ARRAY[]::text[], 50, 2.5),
         ('ops', 'ops@acme.test', 'proxy_admin', NULL, ARRAY[]::text[], NULL, 0);
INSERT INTO "LiteLLM_TeamTable" (team_id, team_alias, organization_id, models, rpm_limit, members_with_roles,
                                 max_budget, spend)
  VALUES ('team-search', 'search', 'org-acme', ARRAY['gpt-4o-mini'], 600,
          '[{{"user_id": "alice", "role": "admin"}}]', 100, 2.5);
INSERT INTO "LiteLLM_VerificationToken" (token, key_name, key_alias, models, user_id, team_id, rpm_limit,
                                         metadata, aliases, spend)
  VALUES ('{alice}', 'sk-...{alice4}', 'alice-laptop', ARRAY['gpt-4o-mini'], 'alice', 'team-search', 60,
          '{{"tags": ["search"], "env": "prod"}}', '{{"gpt-4": "gpt-4o-mini"}}', 2.5),
         ('{ops}', 'sk-...{ops4}', 'ops-all', ARRAY['all-team-models'], 'ops', NULL, NULL, '{{}}', '{{}}', 0);
INSERT INTO "LiteLLM_ProxyModelTable" (model_id, model_name, litellm_params, created_by, updated_by)
  VALUES ('m-1', 'gpt-4o-db', '{{"model": "openai/gpt-4o", "api_key": "encrypted-by-litellm"}}', 'admin', 'admin');
INSERT INTO "LiteLLM_VerificationToken" (token, key_name, key_alias, models, blocked)
  VALUES ('{blocked}', 'sk-...{blocked4}', 'revoked', ARRAY[]::text[], true);
INSERT INTO "LiteLLM_VerificationToken" (token, key_name, key_alias, models, max_budget, spend)
  VALUES ('{spent}', 'sk-...{spent4}', 'spent', ARRAY[]::text[], 10, 10);
INSERT INTO "LiteLLM_VerificationToken" (token, key_name, key_alias, models, expires)
  VALUES ('{expired}', 'sk-...{expired4}', 'old', ARRAY[]::text[], '2024-01-01T00:00:00Z');
"""


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    database = litellm_database()
    values = {name: digest(key) for name, key in PLAIN.items()}
    values.update({f"{name}4": key[-4:] for name, key in PLAIN.items()})
    psql(database, SEED.format(**values))
    url = f"postgres://postgres@127.0.0.1:5432/{database}"
    try:
        for fleet in rest_fleet(tmp_path_factory, "litellm-import"):
            fleet.litellm_url = url
            yield fleet
    finally:
        psql("test", f"DROP DATABASE {database} WITH (FORCE)")


def run_import(fleet, *flags, carry=True):
    """`sluice import litellm` against the fleet's admin API (and, with `carry`, its data-plane
    port, where LiteLLM's spend goes as opening balances)."""
    data_plane = ["--xds", f"127.0.0.1:{fleet.xds_port}", "--pki-dir", str(fleet.pki)] if carry else []
    r = subprocess.run([fleet.bins["SLUICE_CLI"], "--server", f"http://127.0.0.1:{fleet.admin_port}",
                        "--api-key", fleet.master_key, "import", "litellm", "--from", fleet.litellm_url,
                        *data_plane, *flags],
                       env=fleet.env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_a_dry_run_reports_and_changes_nothing(imported):
    out = run_import(imported, "--dry-run")
    assert "budgets: would create 2" in out and "customers: would create 2" in out, out
    # An end user's spend is its keys' too: not carried twice, so a spent budget holds it back.
    assert "customer cust-2: $3.000000 of its $3.000000 spent of a $20.00 budget" in out, out
    assert "LiteLLM_EndUserTable.models: 1 row(s)" in out, out
    # A deployment LiteLLM kept in its database carries its key: named, never imported.
    assert "deployment gpt-4o-db (m-1): not imported" in out and "encrypted-by-litellm" not in out, out
    assert "organizations: would create 1" in out and "users: would create 2" in out, out
    assert "teams: would create 1" in out and "keys: would create 5" in out, out
    assert "spend to carry: 2 key balance(s), $12.500000 in all" in out, out
    assert "LiteLLM_VerificationToken.aliases: 1 row(s)" in out, out
    # Without the data-plane port LiteLLM's spend would not be carried: whatever has a budget
    # and spend is held back, with the reason, rather than given its budget back.
    out = run_import(imported, "--dry-run", carry=False)
    assert "spend: not carried (no --xds)" in out, out
    assert "key spent: $10.000000 of its $10.000000 spent of a $10.00 budget" in out, out
    assert "team team-search: $2.500000 of its $2.500000" in out and "user alice: $2.500000" in out, out
    assert ok(call(imported, "GET", "/key/list"))["keys"] == []
    assert call(imported, "GET", "/team/info", params={"team_id": "team-search"}).status_code == 404


def test_litellm_keys_keep_working_with_their_owners_limits_and_spend(imported):
    out = run_import(imported)
    assert "keys: created 5, already in Sluice 0" in out, out
    assert "spend carried: 2 key balance(s), $12.500000 in all (2 new, 0 carried before)" in out, out
    envoy = imported.start_envoy("edge-import")
    alice = openai.OpenAI(base_url=f"{envoy.url}/v1", api_key=PLAIN["alice"], max_retries=0)
    assert alice.chat.completions.create(model="gpt-4o-mini", messages=CHAT["messages"]).choices[0].message.content
    with pytest.raises(openai.PermissionDeniedError):
        alice.chat.completions.create(model="gpt-4o", messages=CHAT["messages"])
    # LiteLLM's "all-team-models": whatever its owner may use.
    ops = openai.OpenAI(base_url=f"{envoy.url}/v1", api_key=PLAIN["ops"], max_retries=0)
    assert ops.chat.completions.create(model="gpt-4o", messages=CHAT["messages"]).choices[0].message.content
    for name in ("blocked", "expired"):
        client = openai.OpenAI(base_url=f"{envoy.url}/v1", api_key=PLAIN[name], max_retries=0)
        with pytest.raises(openai.APIStatusError) as e:
            client.chat.completions.create(model="gpt-4o-mini", messages=CHAT["messages"])
        assert e.value.status_code in (401, 403), (name, e.value)
    # A key that spent its budget in LiteLLM has spent it in Sluice: refused, not given it back.
    spent = openai.OpenAI(base_url=f"{envoy.url}/v1", api_key=PLAIN["spent"], max_retries=0)
    with pytest.raises(openai.APIStatusError) as e:
        spent.chat.completions.create(model="gpt-4o-mini", messages=CHAT["messages"])
    assert "budget" in str(e.value).lower(), e.value
    assert ok(call(imported, "GET", "/key/info", params={"key": PLAIN["spent"]}))["info"]["spend"] == 10
    # A customer LiteLLM blocked is blocked here; one with a reusable budget keeps it.
    with pytest.raises(openai.BadRequestError) as e:
        alice.chat.completions.create(model="gpt-4o-mini", messages=CHAT["messages"], user="cust-3")
    assert "cust-3" in str(e.value), e.value
    cust = ok(call(imported, "GET", "/customer/info", params={"end_user_id": "cust-1"}))
    assert (cust["alias"], cust["budget_id"], cust["litellm_budget_table"]["max_budget"]) == \
        ("Customer One", "b-gold", 20)
    # Owners, team, members, limits and spend as LiteLLM had them.
    info = ok(call(imported, "GET", "/key/info", params={"key": PLAIN["alice"]}))["info"]
    assert (info["key_alias"], info["user_id"], info["team_id"], info["rpm_limit"]) == \
        ("alice-laptop", "alice", "team-search", 60)
    assert info["metadata"]["env"] == "prod" and info["key_name"].endswith(PLAIN["alice"][-4:])
    assert info["spend"] >= 2.5
    team = ok(call(imported, "GET", "/team/info", params={"team_id": "team-search"}))["team_info"]
    assert (team["team_alias"], team["organization_id"], team["rpm_limit"], team["max_budget"]) == \
        ("search", "org-acme", 600, 100)
    assert team["spend"] >= 2.5
    assert [(m["user_id"], m["role"]) for m in team["members_with_roles"]] == [("alice", "admin")]
    user = ok(call(imported, "GET", "/user/info", params={"user_id": "ops"}))["user_info"]
    assert user["user_role"] == "proxy_admin"
    org = ok(call(imported, "GET", "/organization/info", params={"organization_id": "org-acme"}))
    assert org["litellm_budget_table"]["max_budget"] == 500 and org["litellm_budget_table"]["rpm_limit"] == 1000
    audit = json.loads(imported.cli("audit", "--json").stdout)["entries"]
    assert sum(e["action"] == "key.import" for e in audit) == 5


def test_a_second_run_changes_nothing(imported):
    out = run_import(imported)
    assert "keys: created 0, already in Sluice 5" in out and "teams: created 0, already in Sluice 1" in out, out
    assert "budgets: created 0, already in Sluice 2" in out and "customers: created 0, already in Sluice 2" in out, out
    assert "(0 new, 2 carried before)" in out, out
    assert ok(call(imported, "GET", "/key/info", params={"key": PLAIN["spent"]}))["info"]["spend"] == 10
