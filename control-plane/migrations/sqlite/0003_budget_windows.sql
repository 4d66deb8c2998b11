-- Schema 3: each budgeted key's, team's, user's and organization's spend in each budget window,
-- shared by every control-plane replica (budget.rs). A window is epoch-aligned: period_start is
-- its start in Unix ms (0 for a budget without a duration: one window forever), period_end its
-- end (NULL: never). spend_nanos is advanced in the same transaction as the spend_logs rows it
-- counts; seeded is 1 once it also holds the spend recorded before the row existed (the first
-- writer sums spend_logs for the window, once). soft_alerted and max_alerted hold the soft and
-- max budget (nano-dollars) an alert was raised for in this window, so that it is raised once,
-- by one replica. Same on SQLite and Postgres.
CREATE TABLE budget_windows (
    scope_kind    TEXT NOT NULL,
    scope_id      TEXT NOT NULL,
    period_start  BIGINT NOT NULL,
    period_end    BIGINT,
    spend_nanos   BIGINT NOT NULL,
    seeded        BIGINT NOT NULL DEFAULT 0,
    soft_alerted  BIGINT,
    max_alerted   BIGINT,
    PRIMARY KEY (scope_kind, scope_id, period_start)
);
CREATE INDEX budget_windows_by_end ON budget_windows (period_end);
