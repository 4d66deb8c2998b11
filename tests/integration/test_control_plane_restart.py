"""The control plane killed (SIGKILL) and restarted on the same database under load.

One `sluice serve` on a Postgres database of its own, two Envoys configured by it, and steady
traffic through both (plain requests, streams read to the end, streams the client abandons
midway) with keys that count against budgets. Twice, the control plane is killed with SIGKILL
(no shutdown: usage batches in flight are cut, committed or not) and started again on the same
database and ports: once after five seconds down, once at once.

What must hold (ARCHITECTURE.md, "Keys are looked up, not pushed", "Usage arrives in batches"):

- Envoys keep serving from config they have: a key they know keeps working throughout; a key
  none of them has seen gets 503 `key_service_unavailable` while the control plane is down (and
  never goes upstream), and works once it is back;
- each singleton keeps its usage batches and resends them until acknowledged, and ingestion is
  idempotent by record id: once everything has settled, one spend row per upstream call the
  mock served, none twice, none free, and every budget window equal to the rows it counts; the Envoys' own
  counts agree (records accepted = rows; the rest of what they resent was a duplicate).
"""

import time

import pytest

from conftest import cost
from test_fleet_limits import postgres_database
from test_redis_down import Traffic, budget_windows, count_rows, psql
from test_xds import CHAT, Fleet, create_key, wait_until

DOWN_SECONDS = 5.0
QUICK_RESTARTS = 3


@pytest.fixture
def pg_fleet(tmp_path):
    f = Fleet(tmp_path)
    try:
        f.database_url = postgres_database()
        f.start_control_plane()
        yield f
    finally:
        f.stop()


def kill_control_plane(fleet):
    """SIGKILL: nothing flushed, no connection closed politely, transactions cut mid-way."""
    fleet.control_plane.kill()
    fleet.control_plane.wait(timeout=10)


def unavailable(resp):
    return resp.status_code == 503 and resp.json()["error"]["code"] == "key_service_unavailable"


def test_a_control_plane_killed_under_load_loses_no_usage_and_counts_none_twice(pg_fleet):
    fleet = pg_fleet
    db = fleet.database_url
    envoys = [fleet.start_envoy("edge-1"), fleet.start_envoy("edge-2")]
    fleet.cli("team", "create", "--id", "eng", "--max-budget", "50", "--budget-duration", "1d")
    known = [
        create_key(fleet, "--alias", "known-team", "--team", "eng", "--max-budget", "20", "--budget-duration", "1h"),
        create_key(fleet, "--alias", "known-plain", "--rpm", "100000"),
    ]
    strangers = [create_key(fleet, "--alias", f"stranger-{i}") for i in range(2)]
    for envoy in envoys:
        for key, _ in known:
            assert envoy.chat(CHAT, key=key).status_code == 200  # cached on both Envoys
    time.sleep(1.0)  # both Envoys' invalidation watches are established
    wait_until(lambda: count_rows(db) == fleet.served()["served"], timeout=15, what="the warm-up ingested")
    rows_before, served_before = count_rows(db), fleet.served()["served"]
    extra_served = 0  # upstream calls made outside the traffic

    traffic = Traffic(envoys, [k for k, _ in known], seed=29)
    traffic.start()
    outages = []
    try:
        time.sleep(3.0)
        # 1. Killed, down for a while, started again on the same database.
        kill_control_plane(fleet)
        down_at = time.monotonic()
        for envoy in envoys:
            wait_until(lambda e=envoy: e.stat("control_plane.connected_state") == "0", timeout=10,
                       what="the Envoys notice")
        # A key no Envoy has seen cannot be looked up: refused, not sent upstream unchecked.
        for envoy, (stranger, _) in zip(envoys, strangers):
            resp = envoy.chat(CHAT, key=stranger)
            assert unavailable(resp), resp.text
        while time.monotonic() - down_at < DOWN_SECONDS:
            time.sleep(0.1)
        fleet.start_control_plane()
        up_at = time.monotonic()
        outages.append((down_at, up_at))
        for envoy, (stranger, _) in zip(envoys, strangers):
            resp = wait_until(lambda e=envoy, k=stranger: (r := e.chat(CHAT, key=k)).status_code != 503 and r,
                              timeout=10, what="a new key looked up once the control plane is back")
            assert resp.status_code == 200, resp.text
            extra_served += 1
        back_after = time.monotonic() - up_at
        for envoy in envoys:
            wait_until(lambda e=envoy: e.stat("control_plane.connected_state") == "1", timeout=10,
                       what="the Envoys reconnect")
        time.sleep(3.0)

        # 2. Killed and started again at once, three times: a batch the control plane committed
        # but could not acknowledge before it died is resent, and must count once.
        for _ in range(QUICK_RESTARTS):
            kill_control_plane(fleet)
            down_at = time.monotonic()
            fleet.start_control_plane()
            outages.append((down_at, time.monotonic()))
            time.sleep(1.0)
        fresh, _ = create_key(fleet, "--alias", "after-restarts")
        for envoy in envoys:
            resp = wait_until(lambda e=envoy: (r := e.chat(CHAT, key=fresh)).status_code != 503 and r, timeout=10,
                              what="a key made after the restarts")
            assert resp.status_code == 200, resp.text
            extra_served += 1
        time.sleep(3.0)
    finally:
        traffic.finish()
    assert fleet.control_plane.poll() is None, "the control plane exited"

    # Known keys kept working throughout: no request of the traffic failed.
    results = traffic.results
    bad = [r for r in results if not r[6]]
    assert not bad, f"{len(bad)} of {len(results)} requests failed, e.g. {bad[:3]}"
    (down1, up1), quick = outages[0], outages[1:]
    during = [r for r in results if r[0] >= down1 and r[1] <= up1]
    kinds = {k: len([r for r in during if r[4] == k]) for k in ("plain", "streamed", "cancelled")}
    assert min(kinds.values()) >= 10 and {r[2] for r in during} == {"edge-1", "edge-2"}, kinds
    served = fleet.served()["served"] - served_before
    assert served == len(results) + extra_served, "every request went upstream once; the refused ones never"

    # Everything settles: one spend row per upstream call, none twice, none free.
    settle_started = time.monotonic()
    wait_until(lambda: count_rows(db) - rows_before >= served, timeout=30, what="every record ingested")
    settled_in = time.monotonic() - settle_started
    time.sleep(1.5)  # a replay still arriving would show now
    assert count_rows(db) - rows_before == served
    rows = psql(db, "SELECT record_id, model_group, prompt_tokens, completion_tokens, cost_nanos, outcome, start_ms "
                    "FROM spend_logs")
    shipped = {}
    for envoy in envoys:
        for rec in envoy.records():
            assert rec["record_id"] not in shipped, "a record id made twice"
            shipped[rec["record_id"]] = rec
    assert set(shipped) == {r[0] for r in rows}, "the rows are exactly the records the Envoys wrote"
    for record_id, group, prompt, completion, nanos, _, _ in rows:
        rec = shipped[record_id]
        expected = round(cost(group, int(prompt), int(completion), cached=rec["cached_prompt_tokens"]) * 1e9)
        assert int(nanos) > 0 and abs(int(nanos) - expected) <= 1, (record_id, group, prompt, completion, nanos)
    outcomes = [r[5] for r in rows]
    assert outcomes.count("cancelled") >= len([r for r in results if r[4] == "cancelled"])
    # Each budget window is exactly the rows it counts: a batch cut by the kill was stored with
    # its windows or not at all, and its resend counted once.
    windows = budget_windows(db)
    assert {("key", known[0][1]), ("team", "eng")} <= {(k, i) for k, i, _, _ in windows}, windows
    for kind, sid, window_spend, rows_spend in windows:
        assert int(window_spend) == int(rows_spend) > 0, (kind, sid, window_spend, rows_spend)

    # What the Envoys were told: every record accepted once (the rows, warm-up included), except
    # those of a batch the kill cut between its commit and its answer: resent, they come back as
    # duplicates. The batches that failed while the control plane was down were resent.
    stat = lambda e, name: int(e.filter_stat(f"sluice.usage.{name}") or 0)  # noqa: E731
    shipped = sum(stat(e, "shipped") for e in envoys)
    failures = sum(stat(e, "report_failures") for e in envoys)
    duplicates = sum(stat(e, "duplicates") for e in envoys)
    assert shipped <= len(rows) <= shipped + duplicates, (shipped, duplicates, len(rows))
    assert failures >= 1, "usage was shipped while the control plane was down"

    print(f"{len(results)} requests through two Envoys ({len(during)} during a {up1 - down1:.1f} s outage: {kinds}; "
          f"{QUICK_RESTARTS} restarts at once took {max(u - d for d, u in quick):.1f} s at most); an unseen key "
          f"answered {back_after * 1000:.0f} ms after the restart; {served} upstream calls = {served} spend rows "
          f"({outcomes.count('cancelled')} cancelled), settled {settled_in:.1f} s after the traffic; "
          f"{failures} failed reports resent, {duplicates} records in them already stored")
