"""Postgres restarted mid-ingestion: nothing lost, nothing doubled.

A control plane (`sluice serve`) on a private Postgres instance, two Envoys configured by it,
and a steady stream of chat requests (streaming and not) through the first. Midway, Postgres is
killed (`pg_ctl stop -m immediate`: no shutdown checkpoint, open transactions die with their
connections, the next start runs crash recovery), kept down while traffic continues, and started
again; meanwhile a second key starts spending through the second Envoy, so its first usage batch
reaches the control plane while the key's tenancy (tags, organization, budgets) cannot be read.
Afterwards every upstream call the mock provider served is exactly one spend row, with its key's
tags; the daily aggregates agree with the rows; the money is what the price table says; the
control plane stayed up, counted the batches it could not store, and reads Postgres again.

The instance is the test's own (initdb into a temporary directory, a free port), so stopping it
never disturbs a Postgres the machine shares.
"""

import glob
import json
import os
import pwd
import random
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest

from conftest import cost, free_port
from test_xds import Fleet, create_key, spend, wait_until

DOWN_SECONDS = 5.0
WORKERS = 4


def postgres_bindir():
    """Where initdb and pg_ctl are: pg_config's answer, else Debian's versioned directories."""
    candidates = []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False)
        candidates.append(out.stdout.strip())
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted(versions, key=lambda p: [int(n) for n in re.findall(r"\d+", p)], reverse=True)
    for c in candidates:
        if c and all(os.access(os.path.join(c, b), os.X_OK) for b in ("initdb", "pg_ctl", "psql")):
            return c
    return None


class PrivatePostgres:
    """A throwaway Postgres cluster on a free port. Postgres refuses to run as root, so as root its
    programs run as the `postgres` user (through runuser) in a directory that user owns; a
    temporary directory directly under /tmp, since pytest's own tmp_path is private to root."""

    def __init__(self, bindir, keep_logs_in: Path):
        self.bindir = bindir
        self.port = free_port()
        self.keep_logs_in = keep_logs_in
        self.dir = Path(tempfile.mkdtemp(prefix="sluice-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.run_as = []
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root and there is no postgres user to run Postgres as")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self.run_as = ["runuser", "-u", "postgres", "--"]
        self.url = f"postgres://sluice@127.0.0.1:{self.port}/sluice"

    def _run(self, *args, timeout=60):
        cmd = [*self.run_as, os.path.join(self.bindir, args[0]), *args[1:]]
        return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=timeout, cwd=self.dir)

    def init(self):
        self._run("initdb", "-D", str(self.data), "-U", "sluice", "-A", "trust", "-E", "UTF8", "--locale=C",
                  "--no-sync", "--no-instructions")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{self.dir}'\n")
        self.start()
        self.psql("CREATE DATABASE sluice", db="postgres")

    def start(self):
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def crash(self):
        """Stops at once, as a crash would: no checkpoint, every connection cut."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def psql(self, sql, db="sluice"):
        out = subprocess.run([os.path.join(self.bindir, "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U",
                              "sluice", "-d", db, "-v", "ON_ERROR_STOP=1", "-At", "-F", "|", "-c", sql],
                             capture_output=True, text=True, check=True, timeout=30)
        return [line.split("|") for line in out.stdout.splitlines() if line]

    def destroy(self):
        if (self.data / "postmaster.pid").exists():
            try:
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=30)
            except subprocess.SubprocessError:
                pass
        if self.log.exists():
            shutil.copy(self.log, self.keep_logs_in / "postgres.log")
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def postgres(tmp_path):
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server programs (initdb, pg_ctl, psql) not found: no pg_config on PATH "
                    "and nothing in /usr/lib/postgresql/*/bin")
    pg = PrivatePostgres(bindir, tmp_path)
    try:
        pg.init()
        yield pg
    finally:
        pg.destroy()


@pytest.fixture
def pg_fleet(tmp_path, postgres):
    f = Fleet(tmp_path)
    f.database_url = postgres.url
    try:
        f.start_control_plane()
        yield f
    finally:
        f.stop()


class Traffic:
    """Chat requests from a few threads until stopped: half of them streams read to the end."""

    def __init__(self, url, key, models=("gpt-4o", "gpt-4o-mini"), workers=WORKERS, seed=7):
        self.url = url
        self.key = key
        self.models = list(models)
        self.stop = threading.Event()
        self.results = []  # (started, finished, status, streamed, ok)
        self.seed = seed
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(workers)]

    def start(self):
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in self.threads), "a client thread hung"

    def run(self, worker):
        rng = random.Random(self.seed * 100 + worker)
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                streamed = rng.random() < 0.5
                tokens = rng.randint(1, 40)
                body = {"model": rng.choice(self.models), "stream": streamed,
                        "messages": [{"role": "user", "content": "y" * rng.randint(1, 200)}]}
                h = {**headers, "x-mock-completion-tokens": str(tokens), "x-mock-latency-ms": str(rng.randint(2, 20))}
                started = time.monotonic()
                try:
                    if streamed:
                        with client.stream("POST", f"{self.url}/v1/chat/completions", json=body, headers=h) as r:
                            data = b"".join(r.iter_bytes())
                            ok = r.status_code == 200 and b"data: [DONE]" in data
                            status = r.status_code
                    else:
                        r = client.post(f"{self.url}/v1/chat/completions", json=body, headers=h)
                        status = r.status_code
                        ok = status == 200 and r.json()["usage"]["completion_tokens"] == tokens
                except httpx.HTTPError as e:
                    status, ok = repr(e), False
                self.results.append((started, time.monotonic(), status, streamed, ok))
                time.sleep(rng.uniform(0.005, 0.03))


def test_postgres_restarted_mid_ingestion_loses_nothing_and_doubles_nothing(pg_fleet, postgres):
    fleet = pg_fleet
    edge1 = fleet.start_envoy("edge-1")
    edge2 = fleet.start_envoy("edge-2")
    key, key_id = create_key(fleet, "--alias", "steady", "--tags", "pg-restart")
    # Only used through edge-2, and only once Postgres is down: its first usage batch reaches
    # the control plane during the outage, when the key's tags cannot be read.
    late, late_id = create_key(fleet, "--alias", "late", "--models", "gpt-4o-mini", "--tags", "late-tag")
    # Both keys are looked up (and cached by the Envoys) before the outage. The late key's
    # request asks for a model it may not use: refused by the filter, nothing goes upstream,
    # no usage record.
    assert edge1.chat({"model": "gpt-4o", "messages": []}, key=key).status_code == 200
    refused = edge2.chat({"model": "gpt-4o", "messages": []}, key=late)
    assert refused.status_code in (401, 403), refused.text
    wait_until(lambda: spend(fleet, "--key", key_id)["requests"] == 1, what="first record ingested")
    failed_before = fleet.metric("sluice_usage_batches_failed_total")
    served_before = fleet.served()["served"]

    steady = Traffic(edge1.url, key)
    late_traffic = Traffic(edge2.url, late, models=["gpt-4o-mini"], workers=1, seed=8)
    steady.start()
    try:
        time.sleep(3.0)  # ingestion is running: a batch every few hundred ms
        rows_before_crash = int(postgres.psql("SELECT COUNT(*) FROM spend_logs")[0][0])
        postgres.crash()
        down_at = time.monotonic()
        late_traffic.start()
        failed_while_down = failed_before
        while time.monotonic() - down_at < DOWN_SECONDS:
            assert fleet.control_plane.poll() is None, "the control plane exited when Postgres went away"
            failed_while_down = max(failed_while_down, fleet.metric("sluice_usage_batches_failed_total"))
            time.sleep(0.25)
        postgres.start()
        up_at = time.monotonic()
        # A key no Envoy has seen needs the control plane to read Postgres again: its pool
        # reconnects by itself.
        fresh, fresh_id = create_key(fleet, "--alias", "after-restart")
        resp = wait_until(lambda: (r := edge1.chat({"model": "gpt-4o-mini", "messages": []}, key=fresh))
                          .status_code == 200 and r, timeout=15, what="a new key looked up after the restart")
        time.sleep(3.0)
    finally:
        steady.finish()
        if late_traffic.threads[0].is_alive():
            late_traffic.finish()
    assert fleet.control_plane.poll() is None, "the control plane exited"
    assert resp.status_code == 200

    results = steady.results + late_traffic.results
    bad = [r for r in results if not r[4]]
    assert not bad, f"{len(bad)} of {len(results)} requests failed, e.g. {bad[:3]}"
    during = [r for r in results if r[0] >= down_at and r[1] <= up_at]
    assert len(during) >= 50 and any(r[3] for r in during) and not all(r[3] for r in during), \
        f"only {len(during)} requests ran while Postgres was down"
    # (Fewer of these: a key an Envoy looked up in its first second, before its invalidation
    # watch was established, is only a fallback for its other worker, which asks the control
    # plane first and waits out the lookup timeout before using it.)
    assert len([r for r in late_traffic.results if r[1] <= up_at]) >= 3
    served = fleet.served()["served"] - served_before
    assert served == len(results) + 1, "every request went upstream once (+1: the new key's)"
    assert rows_before_crash > 0, "the crash came mid-ingestion, not before it"
    assert failed_while_down > failed_before, "failed batches were reported while Postgres was down"

    # The outboxes drain: one spend row per upstream call (+1: the steady key's first request,
    # made before served_before was read).
    mine = f"key_id IN ('{key_id}', '{late_id}', '{fresh_id}')"
    count = lambda: int(postgres.psql(f"SELECT COUNT(*) FROM spend_logs WHERE {mine}")[0][0])  # noqa: E731
    wait_until(lambda: count() >= served + 1, timeout=40, what="every record ingested")
    time.sleep(1.0)  # a replay still arriving would show now
    rows = postgres.psql(f"SELECT record_id, key_id, model_group, prompt_tokens, completion_tokens, cost_nanos, "
                         f"tags FROM spend_logs WHERE {mine}")
    assert len(rows) == served + 1
    assert len({r[0] for r in rows}) == len(rows), "no record_id twice"
    shipped = {r["record_id"]: r for e in (edge1, edge2) for r in e.records() if r["key_id"] in (key_id, late_id, fresh_id)}
    assert set(shipped) == {r[0] for r in rows}, "the rows are exactly the records the Envoys wrote"

    # The money: each row is what the price table gives for its tokens; the total is their sum.
    expected_total = 0
    for record_id, _, group, prompt, completion, nanos, _ in rows:
        rec = shipped[record_id]
        assert (int(prompt), int(completion)) == (rec["prompt_tokens"], rec["completion_tokens"])
        expected = round(cost(group, int(prompt), int(completion), cached=rec["cached_prompt_tokens"]) * 1e9)
        assert abs(int(nanos) - expected) <= 1, (record_id, group, prompt, completion, nanos, expected)
        expected_total += expected
    assert abs(sum(int(r[5]) for r in rows) - expected_total) <= len(rows)

    # The daily aggregates were updated in the same transactions as the rows: not doubled by a
    # replayed batch, not missing one that was committed. And every record kept its key's tags,
    # including those that arrived while the key's tenancy could not be read.
    for kid, tag in ((key_id, "pg-restart"), (late_id, "late-tag")):
        theirs = [r for r in rows if r[1] == kid]
        assert theirs and all(json.loads(r[6]) == [tag] for r in theirs), f"records of {kid} stored without their tags"
        (daily,) = postgres.psql(f"SELECT CAST(SUM(requests) AS BIGINT), CAST(SUM(cost_nanos) AS BIGINT) "
                                 f"FROM daily_spend WHERE dimension = 'key' AND value = '{kid}'")
        assert (int(daily[0]), int(daily[1])) == (len(theirs), sum(int(r[5]) for r in theirs))
        (tagged,) = postgres.psql(f"SELECT CAST(SUM(requests) AS BIGINT) FROM daily_spend "
                                  f"WHERE dimension = 'tag' AND value = '{tag}'")
        assert int(tagged[0]) == len(theirs)
        # What a user sees through the spend API.
        report = spend(fleet, "--key", kid)
        assert report["requests"] == len(theirs)
        assert report["spend"] == pytest.approx(sum(int(r[5]) for r in theirs) / 1e9, abs=1e-9)

    print(f"{len(results)} requests ({len(during)} while Postgres was down for {up_at - down_at:.1f} s); "
          f"failed batches {failed_while_down - failed_before} during the outage, "
          f"{fleet.metric('sluice_usage_batches_failed_total') - failed_before} in all; "
          f"duplicates ignored {fleet.metric('sluice_usage_records_duplicate_total')}")
