"""Redis stopped mid-traffic under two control-plane replicas: budgets, spend and revocations.

Two replicas of `sluice serve` share one Postgres database and one Redis of the test's own (the
`replicas` fixture of test_fleet_limits.py), one Envoy on each. Keys, a team and a user have
budgets with durations; steady traffic (plain requests, streams read to the end, and streams
the client abandons after two events) runs through both Envoys. Midway, Redis is killed and,
some seconds later, started again empty (no persistence), as a Redis restart would leave it.

What must hold (ARCHITECTURE.md, "Replicas share the log through Redis", "Budgets across the
fleet", "Limits across a fleet"):

- no request fails because Redis is away: every one is served, or refused by its budget;
- spend is in Postgres, not Redis: one `spend_logs` row per upstream call the mock served,
  no record twice, every cost what the price table says (none $0), and each budget window's
  spend equal to the rows it counts;
- a budget reached while Redis is down is refused by every Envoy (the windows live in the
  database), within the revocation time of the usage that reaches each replica;
- a key blocked through replica 1 while Redis is down is refused at once by replica 1's Envoy,
  and by replica 2's once Redis is back (its entry waits in replica 1's outbox, or replica 2
  finds the stream emptied and resets its watchers), at the latest when its cache entry expires.
"""

import random
import subprocess
import threading
import time

import httpx

from conftest import cost
from test_fleet_limits import replicas  # noqa: F401  (the fixture)
from test_xds import CHAT, create_key, wait_until

REDIS_DOWN_SECONDS = 10.0
BUDGET = 0.004
WORKERS_PER_ENVOY = 3


class Traffic:
    """Chat requests from `workers` threads per Envoy until stopped, each with one of `keys`:
    a third plain, a third streams read to the end, a third streams the client abandons once
    two events arrived (the upstream call was made: it is billed, estimated from what was
    delivered)."""

    def __init__(self, envoys, keys, workers=WORKERS_PER_ENVOY, seed=17):
        self.keys = list(keys)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        # (started, finished, envoy, key, kind, status, ok, detail)
        self.results = []
        self.seed = seed
        self.threads = [threading.Thread(target=self.run, args=(envoy, i), daemon=True)
                        for envoy in envoys for i in range(workers)]

    def start(self):
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in self.threads), "a client thread hung"

    def one(self, client, envoy, key, kind, rng):
        tokens = rng.randint(5, 30)
        body = {"model": rng.choice(["gpt-4o", "gpt-4o-mini"]), "stream": kind != "plain",
                "messages": [{"role": "user", "content": "z" * rng.randint(1, 200)}]}
        headers = {"Authorization": f"Bearer {key}", "x-mock-completion-tokens": str(tokens),
                   "x-mock-latency-ms": str(rng.randint(2, 15))}
        if kind == "cancelled":
            headers["x-mock-chunk-delay-ms"] = "20"
        url = f"{envoy.url}/v1/chat/completions"
        if kind == "plain":
            r = client.post(url, json=body, headers=headers)
            ok = r.status_code == 200 and r.json()["usage"]["completion_tokens"] == tokens
            return r.status_code, ok, "" if ok else r.text[:200]
        with client.stream("POST", url, json=body, headers=headers) as r:
            got = b""
            for chunk in r.iter_bytes():
                got += chunk
                if kind == "cancelled" and got.count(b"data: ") >= 2:
                    break  # leaving the block closes the connection mid-stream
            if kind == "cancelled":
                ok = r.status_code == 200 and got.count(b"data: ") >= 2 and b"[DONE]" not in got
            else:
                ok = r.status_code == 200 and b"data: [DONE]" in got
            return r.status_code, ok, "" if ok else got[:200].decode(errors="replace")

    def run(self, envoy, worker):
        rng = random.Random(self.seed * 1000 + envoy.port * 10 + worker)
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                key = rng.choice(self.keys)
                kind = rng.choice(["plain", "streamed", "cancelled"])
                started = time.monotonic()
                try:
                    status, ok, detail = self.one(client, envoy, key, kind, rng)
                except httpx.HTTPError as e:
                    status, ok, detail = 0, False, repr(e)
                with self.lock:
                    self.results.append((started, time.monotonic(), envoy.node_id, key, kind, status, ok, detail))
                time.sleep(rng.uniform(0.005, 0.03))


def psql(database_url, sql):
    out = subprocess.run(["psql", database_url, "-v", "ON_ERROR_STOP=1", "-At", "-F", "|", "-c", sql],
                         capture_output=True, text=True, check=True, timeout=30)
    return [line.split("|") for line in out.stdout.splitlines() if line]


def count_rows(database_url):
    return int(psql(database_url, "SELECT COUNT(*) FROM spend_logs")[0][0])


def budget_windows(database_url):
    """Every budget window: (kind, id, its spend, the spend of the `spend_logs` rows it counts)."""
    return psql(database_url, """
        SELECT w.scope_kind, w.scope_id, w.spend_nanos,
               (SELECT CAST(COALESCE(SUM(s.cost_nanos), 0) AS BIGINT) FROM spend_logs s
                 WHERE s.start_ms >= w.period_start AND (w.period_end IS NULL OR s.start_ms < w.period_end)
                   AND CASE w.scope_kind WHEN 'key' THEN s.key_id WHEN 'team' THEN s.team_id
                                         WHEN 'user' THEN s.user_id ELSE s.organization_id END = w.scope_id)
          FROM budget_windows w""")


def refused_by_budget(resp):
    return resp.status_code == 400 and resp.json()["error"]["code"] == "budget_exceeded"


def spend_until_refused_everywhere(envoys, keys, attempts=60):
    """Requests with each of `keys` through `envoys` in turn, 0.1 s apart, until every Envoy has
    refused every key by its budget; returns, per key, the number served and when each Envoy
    first refused it."""
    served, refused_at = {k: 0 for k in keys}, {k: {} for k in keys}
    for i in range(attempts):
        for j, key in enumerate(keys):
            if len(refused_at[key]) == len(envoys):
                continue
            envoy = envoys[(i + j) % len(envoys)]
            resp = envoy.chat(CHAT, key=key)
            if resp.status_code == 200:
                served[key] += 1
            else:
                assert refused_by_budget(resp), resp.text
                refused_at[key].setdefault(envoy.node_id, time.monotonic())
        if all(len(r) == len(envoys) for r in refused_at.values()):
            break
        time.sleep(0.1)
    return served, refused_at


def test_redis_down_keeps_serving_counts_every_call_once_and_budgets_hold_fleet_wide(replicas):  # noqa: F811
    first, second, redis = replicas
    db = first.database_url
    a = first.start_envoy("edge-a")
    b = second.start_envoy("edge-b")
    # Budgets that the steady traffic never reaches, with durations (windows in budget_windows).
    first.cli("user", "create", "--id", "ops", "--max-budget", "50", "--budget-duration", "1h")
    first.cli("team", "create", "--id", "eng", "--max-budget", "50", "--budget-duration", "1d")
    steady = [
        create_key(first, "--alias", "steady-team", "--team", "eng", "--max-budget", "20", "--budget-duration", "1h"),
        create_key(first, "--alias", "steady-user", "--user", "ops", "--max-budget", "20", "--budget-duration", "1d",
                   "--rpm", "100000"),
        create_key(first, "--alias", "steady-plain", "--tpm", "10000000"),
    ]
    # Budgets reached while Redis is down: a key's, and a team's (each request costs ~$0.0002:
    # ~20 requests). Each Envoy alone would admit that many on its own counter.
    first.cli("team", "create", "--id", "tiny", "--max-budget", str(BUDGET), "--budget-duration", "1d")
    capped, capped_id = create_key(first, "--alias", "capped", "--max-budget", str(BUDGET), "--budget-duration", "1d")
    tiny, _ = create_key(first, "--alias", "tiny-team", "--team", "tiny")
    revoked, revoked_id = create_key(first, "--alias", "to-block")
    for envoy in (a, b):
        for key in [k for k, _ in steady] + [capped, tiny, revoked]:
            assert envoy.chat(CHAT, key=key).status_code == 200  # cached on both Envoys
    time.sleep(1.0)  # both Envoys' invalidation watches are established
    wait_until(lambda: count_rows(db) == first.served()["served"], timeout=15, what="the warm-up ingested")
    rows_before, served_before = count_rows(db), first.served()["served"]
    metrics_before = {cp: (cp.metric("sluice_limit_sync_failures_total"),
                           cp.metric("sluice_invalidation_stream_failures_total")) for cp in (first, second)}

    traffic = Traffic([a, b], [k for k, _ in steady])
    traffic.start()
    try:
        time.sleep(3.0)
        redis.stop()
        down_at = time.monotonic()

        # A key blocked through replica 1: refused by replica 1's Envoy at once.
        first.cli("key", "block", revoked_id)
        blocked_at = time.monotonic()
        wait_until(lambda: a.chat(CHAT, key=revoked).status_code == 401, timeout=2,
                   what="the Envoy on replica 1 refuses the blocked key")
        # Replica 2 cannot hear of it before Redis is back; its Envoy may still serve the key.
        b_still_served = b.chat(CHAT, key=revoked).status_code == 200

        # Budgets reached while Redis is down are refused by both Envoys: the windows are in the
        # database, and the usage each replica stores tells it that they are spent.
        served_capped, refused_at = spend_until_refused_everywhere([a, b], [capped, tiny])
        for key, name in ((capped, "key"), (tiny, "team")):
            assert len(refused_at[key]) == 2, f"{name} budget: refused by {sorted(refused_at[key])} only " \
                                              f"after {served_capped[key]} requests"
        refusal_gap = {name: max(refused_at[k].values()) - min(refused_at[k].values())
                       for k, name in ((capped, "key"), (tiny, "team"))}
        # The second Envoy refuses within the time its own usage takes to reach its replica and
        # the invalidation to come back, not when its own counter reaches the budget.
        assert max(refusal_gap.values()) < 2.0, refusal_gap

        # A key no Envoy has seen, with rate limits (its lookup asks Redis for the fleet's counts).
        fresh, fresh_id = create_key(second, "--alias", "fresh-while-down", "--rpm", "1000", "--tpm", "1000000")
        assert b.chat(CHAT, key=fresh).status_code == 200
        assert a.chat(CHAT, key=fresh).status_code == 200

        while time.monotonic() - down_at < REDIS_DOWN_SECONDS:
            time.sleep(0.1)
        assert time.monotonic() - blocked_at < 55, "the outage outlasted the cache's 60 s (the test would tell nothing)"
        redis.start()
        up_at = time.monotonic()
        # Replica 1's outbox delivers the block (or replica 2 finds the stream emptied and resets
        # its watchers): replica 2's Envoy refuses the key.
        resp = wait_until(lambda: (r := b.chat(CHAT, key=revoked)).status_code == 401 and r, timeout=10,
                          what="the Envoy on replica 2 refuses the key blocked while Redis was down")
        heard_after = time.monotonic() - up_at
        assert resp.json()["error"]["code"] == "key_blocked"
        # Both replicas retry Redis with a backoff capped at 2 s; then one stream round trip.
        assert heard_after < 4.0, f"{heard_after:.1f} s after Redis was back"
        time.sleep(3.0)
    finally:
        traffic.finish()
    for cp in (first, second):
        assert cp.control_plane.poll() is None, "a control plane exited"

    # Nothing failed because Redis was away.
    results = traffic.results
    bad = [r for r in results if not r[6]]
    assert not bad, f"{len(bad)} of {len(results)} requests failed, e.g. {bad[:3]}"
    during = [r for r in results if r[0] >= down_at and r[1] <= up_at]
    kinds = {k: len([r for r in during if r[4] == k]) for k in ("plain", "streamed", "cancelled")}
    assert min(kinds.values()) >= 10 and {r[2] for r in during} == {"edge-a", "edge-b"}, kinds

    # The outage was seen and counted: syncs and the stream failed, and resumed. Each is logged
    # when it starts and when it ends, not at every failed sync (5 a second per Envoy).
    for cp in (first, second):
        syncs, stream = metrics_before[cp]
        assert cp.metric("sluice_limit_sync_failures_total") > syncs + 10
        assert cp.metric("sluice_invalidation_stream_failures_total") > stream
        log = cp.cp_log_path.read_text()
        assert 1 <= log.count("sluice: fleet limit counts: redis") <= 2, log
        assert "sluice: fleet limit counts: Redis answers again" in log
        assert len(log.splitlines()) < 30, log

    # Once the outboxes drained: one spend row per upstream call, none twice, none free.
    served = first.served()["served"] - served_before
    wait_until(lambda: count_rows(db) - rows_before >= served, timeout=30, what="every record ingested")
    time.sleep(1.0)  # a replay still arriving would show now
    assert count_rows(db) - rows_before == served
    rows = psql(db, "SELECT record_id, key_id, model_group, prompt_tokens, completion_tokens, cost_nanos, outcome "
                    "FROM spend_logs")
    shipped = {}
    for envoy in (a, b):
        for rec in envoy.records():
            assert rec["record_id"] not in shipped, "a record id made twice"
            shipped[rec["record_id"]] = rec
    assert set(shipped) == {r[0] for r in rows}, "the rows are exactly the records the Envoys wrote"
    for record_id, _, group, prompt, completion, nanos, _ in rows:
        rec = shipped[record_id]
        expected = round(cost(group, int(prompt), int(completion), cached=rec["cached_prompt_tokens"]) * 1e9)
        assert int(nanos) > 0 and abs(int(nanos) - expected) <= 1, (record_id, group, prompt, completion, nanos)
    outcomes = [r[6] for r in rows]
    assert outcomes.count("cancelled") >= kinds["cancelled"], "abandoned streams are billed"

    # Each budget window's spend is exactly the rows it counts (kept in the database, advanced in
    # the transactions that stored them, whichever replica ingested them, Redis or not).
    windows = budget_windows(db)
    scopes = {(kind, sid) for kind, sid, _, _ in windows}
    expected_scopes = {("key", kid) for _, kid in steady[:2]} | {("key", capped_id), ("team", "eng"),
                                                                  ("team", "tiny"), ("user", "ops")}
    assert expected_scopes <= scopes, scopes
    for kind, sid, window_spend, rows_spend in windows:
        assert int(window_spend) == int(rows_spend) > 0, (kind, sid, window_spend, rows_spend)

    # Refused once the fleet's spend reached the budget, plus what the Envoys admitted until the
    # usage reached a replica and its invalidation came back: not twice the budget, which is
    # what two Envoys each counting only their own spend would admit.
    overrun = {}
    for kind, sid, window_spend, _ in windows:
        if (kind, sid) in (("key", capped_id), ("team", "tiny")):
            overrun[kind] = int(window_spend) / 1e9 / BUDGET
            assert 1.0 <= overrun[kind] < 1.3, f"{kind} budget spent {overrun[kind]:.2f} times over"

    # The spent budgets stay refused on both Envoys; the others' keys were untouched.
    for envoy in (a, b):
        for key in (capped, tiny):
            assert refused_by_budget(envoy.chat(CHAT, key=key))
        assert envoy.chat(CHAT, key=steady[0][0]).status_code == 200

    # With Redis back, a revocation through replica 2 reaches replica 1's Envoy as usual.
    second.cli("key", "block", fresh_id)
    wait_until(lambda: a.chat(CHAT, key=fresh).status_code == 401, timeout=2,
               what="a key blocked through replica 2 after Redis is back refused by replica 1's Envoy")

    print(f"{len(results)} requests ({len(during)} while Redis was down for {up_at - down_at:.1f} s: {kinds}); "
          f"blocked key still served by replica 2's Envoy during the outage: {b_still_served}; "
          f"refused there {heard_after * 1000:.0f} ms after Redis was back; "
          + "; ".join(f"{n} budget ${BUDGET}: spent {overrun[n]:.2f}x, the second Envoy "
                      f"refused {gap * 1000:.0f} ms after the first" for n, gap in refusal_gap.items())
          + f"; {served} upstream calls = {served} spend rows ({outcomes.count('cancelled')} cancelled)")
