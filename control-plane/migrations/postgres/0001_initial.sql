-- Sluice control plane, schema 1 (Postgres). The SQLite twin is ../sqlite/0001_initial.sql:
-- same tables, columns and meanings. Money is integer nano-dollars (BIGINT), times are Unix
-- milliseconds (BIGINT), flags are 0/1 (BIGINT), lists and maps are JSON text.

CREATE TABLE organizations (
    organization_id   TEXT PRIMARY KEY,
    organization_alias TEXT,
    models            TEXT NOT NULL DEFAULT '[]',
    rpm_limit         BIGINT,
    tpm_limit         BIGINT,
    max_parallel_requests BIGINT,
    max_budget_nanos  BIGINT,
    soft_budget_nanos BIGINT,
    budget_duration   TEXT,
    metadata          TEXT NOT NULL DEFAULT '{}',
    blocked           BIGINT NOT NULL DEFAULT 0,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    version           BIGINT NOT NULL DEFAULT 1
);

CREATE TABLE teams (
    team_id           TEXT PRIMARY KEY,
    team_alias        TEXT,
    organization_id   TEXT REFERENCES organizations (organization_id),
    models            TEXT NOT NULL DEFAULT '[]',
    rpm_limit         BIGINT,
    tpm_limit         BIGINT,
    max_parallel_requests BIGINT,
    max_budget_nanos  BIGINT,
    soft_budget_nanos BIGINT,
    budget_duration   TEXT,
    member_max_budget_nanos BIGINT,
    metadata          TEXT NOT NULL DEFAULT '{}',
    blocked           BIGINT NOT NULL DEFAULT 0,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    version           BIGINT NOT NULL DEFAULT 1
);
CREATE INDEX teams_by_org ON teams (organization_id);

CREATE TABLE users (
    user_id           TEXT PRIMARY KEY,
    user_email        TEXT,
    user_role         TEXT NOT NULL,
    organization_id   TEXT REFERENCES organizations (organization_id),
    models            TEXT NOT NULL DEFAULT '[]',
    rpm_limit         BIGINT,
    tpm_limit         BIGINT,
    max_parallel_requests BIGINT,
    max_budget_nanos  BIGINT,
    soft_budget_nanos BIGINT,
    budget_duration   TEXT,
    metadata          TEXT NOT NULL DEFAULT '{}',
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    version           BIGINT NOT NULL DEFAULT 1
);
CREATE INDEX users_by_org ON users (organization_id);

CREATE TABLE memberships (
    team_id           TEXT NOT NULL REFERENCES teams (team_id) ON DELETE CASCADE,
    user_id           TEXT NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    role              TEXT NOT NULL,
    rpm_limit         BIGINT,
    tpm_limit         BIGINT,
    max_parallel_requests BIGINT,
    max_budget_nanos  BIGINT,
    soft_budget_nanos BIGINT,
    budget_duration   TEXT,
    created_at        BIGINT NOT NULL,
    PRIMARY KEY (team_id, user_id)
);
CREATE INDEX memberships_by_user ON memberships (user_id);

CREATE TABLE keys (
    key_id            TEXT PRIMARY KEY,
    key_prefix        TEXT NOT NULL,
    last4             TEXT NOT NULL,
    key_alias         TEXT,
    user_id           TEXT,
    team_id           TEXT,
    organization_id   TEXT,
    models            TEXT NOT NULL DEFAULT '[]',
    rpm_limit         BIGINT,
    tpm_limit         BIGINT,
    max_parallel_requests BIGINT,
    max_budget_nanos  BIGINT,
    soft_budget_nanos BIGINT,
    budget_duration   TEXT,
    model_limits      TEXT NOT NULL DEFAULT '{}',
    allowed_routes    TEXT NOT NULL DEFAULT '[]',
    metadata          TEXT NOT NULL DEFAULT '{}',
    tags              TEXT NOT NULL DEFAULT '[]',
    key_type          TEXT NOT NULL,
    blocked           BIGINT NOT NULL DEFAULT 0,
    expires_at        BIGINT,
    created_by        TEXT,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    last_used_at      BIGINT,
    -- Bumped by every update: concurrent writers compare and retry.
    version           BIGINT NOT NULL DEFAULT 1
);
CREATE UNIQUE INDEX keys_alias ON keys (key_alias);
CREATE INDEX keys_by_team ON keys (team_id);
CREATE INDEX keys_by_user ON keys (user_id);
CREATE INDEX keys_by_org ON keys (organization_id);

-- A key's SHA-256 digests: the current one, and during a rotation's grace period the previous
-- one with the time it stops working. Only digests are ever stored.
CREATE TABLE key_hashes (
    key_hash          TEXT PRIMARY KEY,
    key_id            TEXT NOT NULL REFERENCES keys (key_id) ON DELETE CASCADE,
    valid_until       BIGINT
);
CREATE INDEX key_hashes_by_key ON key_hashes (key_id);

CREATE TABLE budgets (
    budget_id         TEXT PRIMARY KEY,
    rpm_limit         BIGINT,
    tpm_limit         BIGINT,
    max_parallel_requests BIGINT,
    max_budget_nanos  BIGINT,
    soft_budget_nanos BIGINT,
    budget_duration   TEXT,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    version           BIGINT NOT NULL DEFAULT 1
);

-- End users of a platform's own product (LiteLLM's customers), named in requests' `user` field.
CREATE TABLE customers (
    customer_id       TEXT PRIMARY KEY,
    alias             TEXT,
    budget_id         TEXT REFERENCES budgets (budget_id),
    rpm_limit         BIGINT,
    tpm_limit         BIGINT,
    max_parallel_requests BIGINT,
    max_budget_nanos  BIGINT,
    soft_budget_nanos BIGINT,
    budget_duration   TEXT,
    blocked           BIGINT NOT NULL DEFAULT 0,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    version           BIGINT NOT NULL DEFAULT 1
);

CREATE TABLE model_deployments (
    deployment_id     TEXT PRIMARY KEY,
    model_name        TEXT NOT NULL,
    -- The deployment as the core crate's config model serialises it (validated by the same code).
    deployment        TEXT NOT NULL,
    -- `config` (synced from config.yaml at start) or `api` (created through the admin API).
    source            TEXT NOT NULL,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL
);
CREATE INDEX model_deployments_by_name ON model_deployments (model_name);

CREATE TABLE spend_logs (
    record_id         TEXT PRIMARY KEY,
    request_id        TEXT NOT NULL,
    key_id            TEXT,
    team_id           TEXT,
    user_id           TEXT,
    organization_id   TEXT,
    customer_id       TEXT,
    model_group       TEXT NOT NULL,
    deployment_id     TEXT,
    tags              TEXT NOT NULL DEFAULT '[]',
    prompt_tokens     BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    cost_nanos        BIGINT NOT NULL,
    status            BIGINT NOT NULL,
    outcome           TEXT NOT NULL,
    estimated         BIGINT NOT NULL,
    start_ms          BIGINT NOT NULL,
    day               TEXT NOT NULL
);
CREATE INDEX spend_logs_by_day ON spend_logs (day);
CREATE INDEX spend_logs_by_key ON spend_logs (key_id, day);
CREATE INDEX spend_logs_by_team ON spend_logs (team_id, day);

-- One row per (day, dimension, value): dimension is key, team, user, org, customer, model or tag.
CREATE TABLE daily_spend (
    day               TEXT NOT NULL,
    dimension         TEXT NOT NULL,
    value             TEXT NOT NULL,
    requests          BIGINT NOT NULL,
    prompt_tokens     BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    cost_nanos        BIGINT NOT NULL,
    PRIMARY KEY (day, dimension, value)
);

CREATE TABLE audit_log (
    id                BIGSERIAL PRIMARY KEY,
    at                BIGINT NOT NULL,
    actor             TEXT NOT NULL,
    action            TEXT NOT NULL,
    object_type       TEXT NOT NULL,
    object_id         TEXT NOT NULL,
    before_json       TEXT NOT NULL,
    after_json        TEXT NOT NULL
);
CREATE INDEX audit_by_object ON audit_log (object_type, object_id);
