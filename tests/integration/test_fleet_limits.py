"""RPM/TPM across a fleet: two control-plane replicas sharing Postgres and Redis, one Envoy on
each. Each Envoy's singleton reports its own counts per limited scope every ~200 ms
(`sluice.v1.LimitService/Sync`) and hears what the others counted; admission adds them up.

The documented error bound (ARCHITECTURE.md, "Limits across a fleet"): exact within one Envoy;
across Envoys, a limit can be overrun by what the other Envoys admit between two syncs: at most
N x limit for N Envoys in a burst shorter than the sync period. An Envoy new to a key gets the
fleet's counts with the key's lookup. No request waits for a sync.
"""

import copy
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from conftest import free_port
from test_xds import CHAT, Fleet, create_key, wait_until


class PrivateRedis:
    """A Redis of this test's own, so that it can be stopped without touching the machine's."""

    def __init__(self, workdir):
        self.port = free_port()
        self.workdir = workdir
        self.url = f"redis://127.0.0.1:{self.port}"
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True,
                                          text=True).stdout.strip() == "PONG", what="redis up")

    def stop(self):
        self.proc.kill()
        self.proc.wait(timeout=10)


def postgres_database():
    name = "sluice_fleet_" + os.urandom(6).hex()
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-q", "-c", f"CREATE DATABASE {name}"],
                   check=True, capture_output=True, timeout=30)
    return f"postgres://postgres@127.0.0.1:5432/{name}"


def replica_of(fleet):
    """A second control plane on the same database and Redis, with ports of its own."""
    other = copy.copy(fleet)  # shares procs, bins, env, config and database
    other.admin_port, other.xds_port, other.metrics_port = free_port(), free_port(), free_port()
    other.start_control_plane()
    return other


@pytest.fixture
def replicas(tmp_path):
    redis = PrivateRedis(tmp_path)
    fleet = Fleet(tmp_path)
    try:
        fleet.env["REDIS_URL"] = redis.url
        fleet.database_url = postgres_database()
        fleet.start_control_plane()
        second = replica_of(fleet)
        for cp in (fleet, second):
            assert "fleet rate limits counted in Redis" in cp.cp_log_path.read_text()
        yield fleet, second, redis
    finally:
        fleet.stop()
        redis.stop()


def in_one_minute():
    """Waits, if need be, so that the next ~12 s fall in one rate-limit minute."""
    into = time.time() % 60
    if into > 45:
        time.sleep(60.5 - into)


def one_envoy_per_replica(replicas, *key_flags):
    """An Envoy on each replica and a new key, at a moment that leaves ~12 s of this minute."""
    first, second, _ = replicas
    a = first.start_envoy("edge-a")
    b = second.start_envoy("edge-b")
    key, _ = create_key(first, *key_flags)
    in_one_minute()
    return a, b, key


def admitted(envoy, key, n):
    codes = [envoy.chat(CHAT, key=key).status_code for _ in range(n)]
    assert set(codes) <= {200, 429}, codes
    return codes.count(200)


def test_an_rpm_limit_holds_across_envoys_on_different_replicas(replicas):
    a, b, key = one_envoy_per_replica(replicas, "--alias", "fleet-rpm", "--rpm", "20")
    # Both Envoys know the key and have used it once this minute.
    assert a.chat(CHAT, key=key).status_code == 200
    assert b.chat(CHAT, key=key).status_code == 200
    assert admitted(a, key, 10) == 10
    # Within a sync period, b hears of a's 11 requests: 20 - 12 leaves 8 for b.
    time.sleep(1.0)
    resp = b.chat(CHAT, key=key)
    assert resp.status_code == 200
    assert resp.headers["x-ratelimit-remaining-requests"] == "7", resp.headers
    assert admitted(b, key, 12) == 7
    # a hears of b's too: the fleet is spent.
    time.sleep(1.0)
    refused = a.chat(CHAT, key=key)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert int(refused.headers["retry-after"]) >= 1
    # Each replica answered syncs (each Envoy talks to its own), and none failed.
    for cp in replicas[:2]:
        assert cp.metric("sluice_limit_syncs_total") >= 1
        assert cp.metric("sluice_limit_sync_failures_total") == 0
    # Syncs are periodic, not per request.
    syncs = int(a.filter_stat("sluice.fleet_limits.syncs") or 0)
    assert syncs >= 1


def test_an_envoy_new_to_a_key_starts_from_the_fleets_count(replicas):
    a, b, key = one_envoy_per_replica(replicas, "--alias", "fleet-first-sight", "--rpm", "20")
    assert admitted(a, key, 15) == 15
    time.sleep(1.0)  # a's counts reach Redis with its next sync
    # b has never seen the key: its lookup brings the fleet's 15 along, so it admits 5, not 20.
    first_answer = b.chat(CHAT, key=key)
    assert first_answer.status_code == 200
    assert first_answer.headers["x-ratelimit-remaining-requests"] == "4"
    assert admitted(b, key, 10) == 4


def test_a_tpm_limit_counts_the_other_envoys_tokens(replicas):
    a, b, key = one_envoy_per_replica(replicas, "--alias", "fleet-tpm", "--tpm", "400")
    # The mock answers with ~16 output tokens; a's traffic uses the budget of tokens.
    assert b.chat(CHAT, key=key).status_code == 200
    used = 0
    while (resp := a.chat(CHAT, key=key)).status_code == 200:
        used += resp.json()["usage"]["total_tokens"]
    assert resp.status_code == 429 and used > 300
    time.sleep(1.0)
    refused = b.chat(CHAT, key=key)
    assert refused.status_code == 429, "b must count a's tokens"
    assert refused.headers["x-ratelimit-limit-tokens"] == "400"


def test_a_burst_on_both_envoys_stays_within_the_documented_bound(replicas):
    a, b, key = one_envoy_per_replica(replicas, "--alias", "fleet-burst", "--rpm", "60")
    assert a.chat(CHAT, key=key).status_code == 200
    assert b.chat(CHAT, key=key).status_code == 200
    time.sleep(0.5)

    def burst(envoy):
        with httpx.Client(timeout=30) as client:
            def one(_):
                return client.post(f"{envoy.url}/v1/chat/completions", json=CHAT,
                                   headers={"Authorization": f"Bearer {key}"}).status_code
            with ThreadPoolExecutor(16) as pool:
                return list(pool.map(one, range(200)))

    with ThreadPoolExecutor(2) as pool:
        codes = [c for result in pool.map(burst, (a, b)) for c in result]
    assert set(codes) <= {200, 429}
    ok = codes.count(200) + 2
    # At least the limit (no Envoy refuses early), at most N x limit (each Envoy exact).
    assert 60 <= ok <= 120, ok
    # Once both have synced, neither admits more this minute.
    time.sleep(1.0)
    assert a.chat(CHAT, key=key).status_code == 429
    assert b.chat(CHAT, key=key).status_code == 429


def test_without_redis_each_envoy_limits_alone_and_nothing_fails(replicas):
    first, second, redis = replicas
    a, b, key = one_envoy_per_replica(replicas, "--alias", "fleet-redis-down", "--rpm", "10")
    redis.stop()
    # No request waits for Redis or fails because of it: each Envoy enforces the limit alone.
    assert admitted(a, key, 12) == 10
    assert admitted(b, key, 12) == 10
    wait_until(lambda: first.metric("sluice_limit_sync_failures_total") >= 1, what="failed syncs counted")
    assert int(a.filter_stat("sluice.fleet_limits.sync_failures") or 0) >= 1
    # Redis back (empty, as after a restart): the Envoys report their counts again and the
    # fleet total is restored from them, so a fresh key's limit is shared again.
    redis.start()
    wait_until(lambda: second.metric("sluice_limit_syncs_total") >= 1 and
               int(b.filter_stat("sluice.fleet_limits.syncs") or 0) >= 1, what="syncs resume")
    key2, _ = create_key(first, "--alias", "fleet-redis-back", "--rpm", "10")
    assert a.chat(CHAT, key=key2).status_code == 200
    assert b.chat(CHAT, key=key2).status_code == 200
    assert admitted(a, key2, 6) == 6
    time.sleep(1.0)
    assert admitted(b, key2, 5) == 2
