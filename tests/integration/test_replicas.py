"""Two control-plane replicas sharing one Postgres database and one Redis, one Envoy on each
(the `replicas` fixture of test_fleet_limits.py): what one replica learns, every Envoy obeys.

- Invalidations: each replica adds what it publishes to a Redis stream and reads the others'
  entries into its own log, so an Envoy watching replica 2 hears of a key revoked through
  replica 1's admin API at once, not when its cache expires (60 s).
- Budgets: each budget window's spend is kept in the database, advanced in the transaction that
  stores each usage batch, so whichever replica an Envoy ships its usage to, every lookup
  answers with the whole fleet's spend, and the max budget is announced (and alerted) once.
"""

import statistics
import time

from conftest import cost
from test_fleet_limits import replicas  # noqa: F401  (the fixture)
from test_xds import CHAT, create_key, spend, wait_until


def test_a_key_revoked_through_one_replica_is_refused_by_an_envoy_on_the_other_within_a_second(replicas):  # noqa: F811
    first, second, _ = replicas
    for cp in (first, second):
        assert "invalidations shared through Redis" in cp.cp_log_path.read_text()
    a = first.start_envoy("edge-a")
    b = second.start_envoy("edge-b")
    key, key_id = create_key(first, "--alias", "cross-replica")
    for envoy in (a, b):
        assert envoy.chat(CHAT, key=key).status_code == 200  # cached on both

    # Blocked through replica 1 (the CLI's --server is replica 1's admin port): b, whose Envoy
    # watches replica 2 only, refuses the key within a second of the admin API's answer.
    answered_after = []
    for _ in range(5):
        started = time.monotonic()
        first.cli("key", "block", key_id)
        answered = time.monotonic()
        resp = wait_until(lambda: (r := b.chat(CHAT, key=key)).status_code == 401 and r, timeout=10,
                          what="b refuses the key blocked through replica 1")
        refused = time.monotonic()
        assert resp.json()["error"]["code"] == "key_blocked"
        assert refused - answered < 1.0, f"{(refused - answered) * 1000:.0f} ms"
        answered_after.append(refused - answered)
        print(f"blocked through replica 1: refused by the Envoy on replica 2 {(refused - answered) * 1000:.0f} ms "
              f"after the admin API answered ({(refused - started) * 1000:.0f} ms after the CLI started)")
        first.cli("key", "unblock", key_id)
        wait_until(lambda: b.chat(CHAT, key=key).status_code == 200, timeout=10, what="unblock reaches b")
    print(f"revocation across replicas over {len(answered_after)} rounds: "
          f"median {statistics.median(answered_after) * 1000:.0f} ms, max {max(answered_after) * 1000:.0f} ms")
    assert second.metric("sluice_invalidations_received_total") >= 10
    assert first.metric("sluice_invalidations_shared_total") >= 10

    # The other way round: deleted through replica 2, refused by the Envoy on replica 1.
    assert a.chat(CHAT, key=key).status_code == 200
    second.cli("key", "delete", key_id)
    resp = wait_until(lambda: (r := a.chat(CHAT, key=key)).status_code == 401 and r, timeout=1.0,
                      what="a refuses the key deleted through replica 2")
    assert resp.json()["error"]["code"] == "invalid_api_key"
    for cp in (first, second):
        assert cp.metric("sluice_invalidation_resets_total") == 0, "no entry was missed"
        assert cp.metric("sluice_invalidation_stream_failures_total") == 0


def test_a_key_budget_spent_through_both_replicas_is_refused_on_both(replicas):  # noqa: F811
    first, second, _ = replicas
    a = first.start_envoy("edge-a")
    b = second.start_envoy("edge-b")
    max_budget = 0.002
    # Each request costs ~$0.00016 (gpt-4o, 16 output tokens): ~13 spend the budget. Either
    # Envoy alone would admit that many on its own counter, so without the fleet's count the
    # two would admit about twice the budget.
    key, key_id = create_key(first, "--alias", "fleet-budget", "--max-budget", str(max_budget))
    served_before = first.served()["served"]

    # Alternating, each Envoy shipping its usage to its own replica.
    usages, refused = [], {}
    for i in range(80):
        envoy = (a, b)[i % 2]
        if envoy in refused:
            envoy = b if envoy is a else a
        resp = envoy.chat(CHAT, key=key)
        if resp.status_code == 200:
            usages.append(resp.json()["usage"])
        else:
            assert resp.status_code == 400, resp.text
            refused[envoy] = resp
        if len(refused) == 2:
            break
        time.sleep(0.2)
    assert len(refused) == 2, f"both Envoys must refuse; {len(usages)} requests served"
    for resp in refused.values():
        error = resp.json()["error"]
        assert error["code"] == "budget_exceeded" and "Max budget: 0.002" in error["message"], error
    # Both keep refusing.
    for envoy in (a, b):
        assert envoy.chat(CHAT, key=key).status_code == 400

    served = first.served()["served"] - served_before
    assert served == len(usages)
    prices = {cost("gpt-4o", u["prompt_tokens"], u["completion_tokens"]) for u in usages}
    assert len(prices) == 1, prices  # the mock answers every request alike
    price = prices.pop()
    print(f"{served} requests served through two Envoys on two replicas (${served * price:.6f}) "
          f"against a ${max_budget} budget")
    # Refused once the fleet's spend crossed the budget: not at twice the budget, which is what
    # two Envoys each counting only their own spend would have admitted.
    assert served * price >= max_budget
    assert served * price < 1.6 * max_budget
    # The control plane's spend is what the mock served, at its price; both replicas answer it.
    report = wait_until(lambda: (r := spend(first, "--key", key_id)) and r["requests"] == served and r, timeout=10,
                        what="every request ingested")
    assert abs(report["spend"] - served * price) < 1e-9, (report, served, price)
    assert abs(spend(second, "--key", key_id)["spend"] - served * price) < 1e-9
    # The budget was found spent once across the fleet (one invalidation, one alert).
    exhausted = [cp.metric("sluice_budget_exhausted_total") for cp in (first, second)]
    assert sum(exhausted) == 1, exhausted
