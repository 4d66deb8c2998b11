"""Soak: a control plane and two Envoys under a steady, bounded load for a while, with key churn,
streams and cancellations; the resident memory of each Envoy and of the control plane sampled
throughout, and its growth after a warm-up reported.

The load (loopback only, paced to `--rate` requests a second in total, stops by itself after
`--duration` seconds), each request to one of the two Envoys at random:

- `chat`: a non-streaming chat completion with one of the live churned keys;
- `stream`: a streaming one, read to `data: [DONE]`;
- `cancel`: a stream the client abandons after its second event (the filter bills it as an
  estimate: the mock counted the call);
- `limited`: a key with `--rpm 3` (made afresh every minute): a few 200s, then 429s;
- `dead`: a key this run blocked or deleted (401 `key_blocked`, then `invalid_api_key`);
- `unknown`: a well-formed key that was never created (a lookup, then the negative cache);
- `malformed`: a key with a wrong checksum (refused in the filter, no lookup);
- `bad_model`: a model group that does not exist (400).

Key churn, every `--churn-every` seconds: a new key (RPM/TPM limits and a budget, so counters,
budget windows and lookups all churn) joins the live pool and the oldest leaves it; a key that
left is blocked a few seconds later (requests in flight with it have ended by then), deleted
30 s after that, and used as a dead key for a minute more. The database holds a bounded number
of keys, the Envoys' caches see a steady stream of new keys and of invalidations.

RSS (VmRSS of /proc/PID/status) of each Envoy, of the control plane and of the mock provider is
sampled every few seconds. After the load stops, the control plane's spend rows are counted
until they equal the upstream calls the mock served (every upstream call billed exactly once).

Prints one JSON object: duration, requests by outcome, per process RSS at the end of the
warm-up (`--warmup`, default 10 % of the run, at least 10 s), at the end, the maximum, growth
in MB and in %/hour from a least-squares line through the post-warm-up samples, and spend rows
against upstream calls. `--report-md PATH` also writes a Markdown summary (what `cargo xtask
soak` puts in BENCHMARKS.md); `--samples PATH` the raw RSS samples as CSV.

Database: `--database postgres` (the machine's Postgres at 127.0.0.1:5432, a fresh database
made from `test` and dropped afterwards; what production runs), `sqlite`, or `auto` (Postgres
when it answers). Needs ENVOY_BIN, SLUICE_WASM, SLUICE_CLI and SLUICE_MOCK (`cargo xtask soak`
sets them).
"""

import argparse
import collections
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from test_xds import Fleet, create_key, wait_until  # noqa: E402

# What each kind of request is, and how often (weights).
MIX = {"chat": 45, "stream": 20, "cancel": 12, "limited": 8, "dead": 5, "unknown": 4, "malformed": 4,
       "bad_model": 2}
# Answers each kind may get; anything else is counted under `unexpected`.
EXPECTED = {
    "chat": {"200"}, "stream": {"200"}, "cancel": {"200"},
    "limited": {"200", "429 rate_limit_exceeded"},
    "dead": {"401 key_blocked", "401 invalid_api_key"},
    "unknown": {"401 invalid_api_key"},
    "malformed": {"401 invalid_api_key"},
    "bad_model": {"400 model_not_found"},
}
LIVE_KEYS = 6
BLOCK_AFTER_S = 3.0  # a key that left the live pool is blocked this long after
DELETE_AFTER_S = 30.0  # ... and deleted this long after it was blocked
FORGET_AFTER_S = 60.0  # ... and used as a dead key this long after it was deleted
# A blocked key is used as a dead key from this long after the admin API answered the block:
# revocation reaches the Envoys in ~0.2 s (BENCHMARKS.md, target under 1 s); until then a 200
# is the documented propagation delay, not an error.
REVOKED_AFTER_S = 2.0
LIMITED_EVERY_S = 60.0
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def log(*args):
    print(f"soak {time.strftime('%H:%M:%S')}:", *args, file=sys.stderr, flush=True)


def made_up_key(rng):
    """A well-formed Sluice key (prefix, 32 base62 characters, CRC32 checksum) no one created."""
    body = "".join(rng.choice(BASE62) for _ in range(32))
    crc = zlib.crc32(body.encode())
    check = []
    for _ in range(6):
        check.append(BASE62[crc % 62])
        crc //= 62
    return "sk-sluice-" + body + "".join(reversed(check))


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class Postgres:
    """A fresh database on the machine's Postgres (made from `test`), dropped at the end."""

    def __init__(self):
        self.name = "sluice_soak_" + os.urandom(6).hex()
        self.psql("test", f"CREATE DATABASE {self.name}")
        self.url = f"postgres://postgres@127.0.0.1:5432/{self.name}"

    @staticmethod
    def psql(db, sql):
        return subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-qtA", "-c", sql],
                              check=True, capture_output=True, text=True, timeout=60).stdout.strip()

    @staticmethod
    def available():
        try:
            return Postgres.psql("test", "SELECT 1") == "1"
        except (OSError, subprocess.SubprocessError):
            return False

    def spend_rows(self):
        return int(self.psql(self.name, "SELECT count(*) FROM spend_logs"))

    def drop(self):
        try:
            self.psql("test", f"DROP DATABASE IF EXISTS {self.name}")
        except subprocess.SubprocessError as e:
            log(f"could not drop database {self.name}: {e}")


class Sqlite:
    def __init__(self, path):
        self.path = path
        self.url = f"sqlite:{path}"

    def spend_rows(self):
        with sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10) as db:
            return db.execute("SELECT count(*) FROM spend_logs").fetchone()[0]

    def drop(self):
        pass


class Keys:
    """The churned keys: a live pool, keys on their way out, and keys blocked or deleted."""

    def __init__(self, fleet):
        self.fleet = fleet
        self.lock = threading.Lock()
        self.live = []  # (key, key_id)
        self.leaving = []  # (key, key_id, since): left the pool, blocked at since + BLOCK_AFTER_S
        self.blocked = []  # (key, key_id, since)
        self.deleted = []  # (key, since)
        self.limited = None
        self.limited_since = 0.0
        self.made = 0
        self.cli_calls = collections.Counter()
        for _ in range(LIVE_KEYS):
            self.live.append(self.new_key())
        self.renew_limited()

    def new_key(self):
        self.made += 1
        self.cli_calls["create"] += 1
        return create_key(self.fleet, "--alias", f"soak-{self.made}", "--rpm", "100000", "--tpm", "100000000",
                          "--max-budget", "1000", "--budget-duration", "1h", "--tags", "soak")

    def renew_limited(self):
        """A fresh key with `--rpm 3`; the previous one leaves like a churned key (requests in
        flight with it end first)."""
        self.made += 1
        self.cli_calls["create"] += 1
        fresh = create_key(self.fleet, "--alias", f"soak-limited-{self.made}", "--rpm", "3")
        with self.lock:
            old, self.limited = self.limited, fresh
            if old:
                self.leaving.append((*old, time.monotonic()))
        self.limited_since = time.monotonic()

    def pick(self, rng, kind):
        with self.lock:
            if kind == "limited":
                return self.limited[0]
            if kind == "dead":
                now = time.monotonic()
                dead = [k for k, _, since in self.blocked if now - since >= REVOKED_AFTER_S]
                dead += [k for k, _ in self.deleted]
                return rng.choice(dead) if dead else None
            return rng.choice(self.live)[0]

    def churn(self):
        """One step: a new key in, the oldest out; blocks, deletes and forgets what is due."""
        fresh = self.new_key()
        now = time.monotonic()
        with self.lock:
            self.live.append(fresh)
            gone = self.live.pop(0)
            self.leaving.append((*gone, now))
            due_block = [e for e in self.leaving if now - e[2] >= BLOCK_AFTER_S]
            self.leaving = [e for e in self.leaving if now - e[2] < BLOCK_AFTER_S]
            due_delete = [e for e in self.blocked if now - e[2] >= DELETE_AFTER_S]
            self.deleted = [e for e in self.deleted if now - e[1] < FORGET_AFTER_S]
        for key, key_id, _ in due_block:
            self.cli_calls["block"] += 1
            self.fleet.cli("key", "block", key_id)
            with self.lock:
                self.blocked.append((key, key_id, time.monotonic()))
        for key, key_id, _ in due_delete:
            self.cli_calls["delete"] += 1
            self.fleet.cli("key", "delete", key_id)
            with self.lock:
                self.blocked = [e for e in self.blocked if e[1] != key_id]
                self.deleted.append((key, time.monotonic()))
        if now - self.limited_since >= LIMITED_EVERY_S:
            self.renew_limited()


class Load:
    def __init__(self, envoys, keys, rate, workers, seed):
        self.envoys = envoys
        self.keys = keys
        self.rate = rate
        self.workers = workers
        self.seed = seed
        self.lock = threading.Lock()
        self.outcomes = collections.Counter()  # "kind status [code]" -> count
        self.unexpected = collections.Counter()
        self.by_kind = collections.Counter()
        self.stop = threading.Event()

    def record(self, kind, answer):
        with self.lock:
            self.by_kind[kind] += 1
            self.outcomes[f"{kind} {answer}"] += 1
            if answer not in EXPECTED[kind]:
                self.unexpected[f"{kind} {answer}"] += 1

    def run(self, deadline):
        threads = [threading.Thread(target=self.worker, args=(i, deadline), daemon=True) for i in range(self.workers)]
        for t in threads:
            t.start()
        return threads

    def worker(self, index, deadline):
        rng = random.Random(self.seed * 1000 + index)
        kinds, weights = list(MIX), list(MIX.values())
        interval = self.workers / self.rate
        client = httpx.Client(timeout=30)
        next_at = time.monotonic() + rng.random() * interval
        try:
            while not self.stop.is_set():
                now = time.monotonic()
                if now >= deadline:
                    return
                if next_at > now:
                    time.sleep(min(next_at - now, deadline - now))
                    continue
                # Paced, never bursting to catch up: a slow spell lowers the rate, not the reverse.
                next_at = max(next_at + interval, now)
                kind = rng.choices(kinds, weights)[0]
                envoy = rng.choice(self.envoys)
                try:
                    answer = self.one(client, rng, envoy, kind)
                except (httpx.HTTPError, OSError) as e:
                    answer = f"client_error {type(e).__name__}"
                    client.close()
                    client = httpx.Client(timeout=30)
                if answer is not None:
                    self.record(kind, answer)
        finally:
            client.close()

    def one(self, client, rng, envoy, kind):
        model = rng.choice(["gpt-4o", "gpt-4o-mini"])
        tokens = rng.randint(4, 40)
        if kind == "malformed":
            key = self.keys.pick(rng, "chat")
            key = key[:-1] + ("A" if key[-1] != "A" else "B")
        elif kind == "unknown":
            key = made_up_key(rng)
        elif kind == "bad_model":
            key, model = self.keys.pick(rng, "chat"), "no-such-model"
        else:
            key = self.keys.pick(rng, kind)
            if key is None:  # no dead key yet
                return None
        headers = {"Authorization": f"Bearer {key}", "x-mock-completion-tokens": str(tokens)}
        body = {"model": model, "messages": [{"role": "user", "content": "soak " * tokens}]}
        if kind == "cancel":
            return self.cancelled_stream(envoy, key, model, tokens)
        if kind == "stream":
            headers["x-mock-chunk-delay-ms"] = "3"
            with client.stream("POST", f"{envoy.url}/v1/chat/completions", json={**body, "stream": True},
                               headers=headers) as resp:
                if resp.status_code != 200:
                    resp.read()
                    return answer_of(resp)
                done = False
                for line in resp.iter_lines():
                    if line.strip() == "data: [DONE]":
                        done = True
                return "200" if done else "200 incomplete"
        resp = client.post(f"{envoy.url}/v1/chat/completions", json=body, headers=headers)
        return answer_of(resp)

    @staticmethod
    def cancelled_stream(envoy, key, model, tokens):
        body = json.dumps({"model": model, "stream": True, "messages": [{"role": "user", "content": "soak"}]}).encode()
        req = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: soak\r\ncontent-type: application/json\r\n"
               + f"authorization: Bearer {key}\r\nx-mock-chunk-delay-ms: 20\r\n".encode()
               + f"x-mock-completion-tokens: {tokens + 20}\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body)
        with socket.create_connection(("127.0.0.1", envoy.port), timeout=30) as s:
            s.sendall(req)
            got = b""
            while got.count(b"data: ") < 2:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
        status = got[9:12].decode(errors="replace") if got.startswith(b"HTTP/1.1 ") else "no_answer"
        if status == "200" and got.count(b"data: ") < 2:
            return "200 ended_early"
        return status


def answer_of(resp):
    if resp.status_code == 200:
        return "200"
    try:
        code = resp.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = "?"
    return f"{resp.status_code} {code}"


class Sampler:
    """Every `interval` seconds, from a thread of its own: each probe's value (MB, or a count)."""

    def __init__(self, probes, interval):
        self.probes = probes  # name -> callable returning a number or None
        self.interval = interval
        self.samples = []  # (seconds since start, {name: value})
        self.stop = threading.Event()
        self.start = time.monotonic()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self):
        next_at = time.monotonic()
        while True:
            self.take()
            next_at = max(next_at + self.interval, time.monotonic())
            if self.stop.wait(next_at - time.monotonic()):
                self.take()
                return

    def take(self):
        t = time.monotonic() - self.start
        values = {}
        for name, probe in self.probes.items():
            try:
                values[name] = probe()
            except (httpx.HTTPError, OSError, ValueError, KeyError):
                values[name] = None
        self.samples.append((t, values))


def rss_probe(pid):
    def probe():
        kib = rss_kib(pid)
        return None if kib is None else kib / 1024
    return probe


def envoy_heap_probe(envoy):
    """Bytes Envoy's allocator (tcmalloc) has handed out, in MB: Envoy's own heap, without the
    wasm VMs' linear memory (V8 maps that itself) and without the allocator's free lists."""
    return lambda: int(httpx.get(f"{envoy.admin}/memory", timeout=5).json()["allocated"]) / (1 << 20)


def envoy_stats_probe(envoy):
    """How many stats the Envoy has (a name minted per key or per request would grow it)."""
    return lambda: float(httpx.get(f"{envoy.admin}/stats", timeout=5).text.count("\n"))


def slope_per_hour(points):
    """Least-squares slope of (seconds, MB) points, in MB per hour."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in points) / sxx * 3600


def memory_report(samples, warmup_s, names):
    out = {}
    for name in names:
        series = [(t, s[name]) for t, s in samples if s.get(name) is not None]
        if not series:
            continue
        after = [(t, mb) for t, mb in series if t >= warmup_s] or series[-1:]
        start, end = after[0][1], after[-1][1]
        slope = slope_per_hour(after)
        span_h = (after[-1][0] - after[0][0]) / 3600
        out[name] = {
            "first_mb": round(series[0][1], 2),
            "start_mb": round(start, 2),
            "end_mb": round(end, 2),
            "max_mb": round(max(mb for _, mb in series), 2),
            "max_after_warmup_mb": round(max(mb for _, mb in after), 2),
            "growth_mb": round(end - start, 2),
            "fit_growth_mb": round(slope * span_h, 2),
            "slope_mb_per_hour": round(slope, 2),
            "slope_pct_per_hour": round(100 * slope / start, 2) if start else None,
            "samples_after_warmup": len(after),
        }
    return out


def count_report(samples, warmup_s, names):
    out = {}
    for name in names:
        series = [(t, s[name]) for t, s in samples if s.get(name) is not None]
        if series:
            after = [v for t, v in series if t >= warmup_s] or [series[-1][1]]
            out[name] = {"first": int(series[0][1]), "start": int(after[0]), "end": int(series[-1][1])}
    return out


def load_report(samples):
    """The machine's one-minute load average over the run: the figures share its two cores."""
    loads = [s["load average"] for _, s in samples if s.get("load average") is not None]
    return {"mean": round(sum(loads) / len(loads), 2), "max": round(max(loads), 2)} if loads else {}


def markdown(report):
    lines = [
        f"{report['duration_s']:.0f} s at {report['rate_target']} req/s (target) through two Envoys "
        f"(`--concurrency {report['envoy_concurrency']}`), control plane on {report['database']}; "
        f"warm-up {report['warmup_s']:.0f} s; RSS sampled every {report['sample_interval_s']:g} s "
        f"({report['samples']} samples). Keys: {report['keys_created']} created, "
        f"{report['cli_calls'].get('block', 0)} blocked, {report['cli_calls'].get('delete', 0)} deleted. "
        f"Load average over the run: mean {report['load_average'].get('mean')}, "
        f"max {report['load_average'].get('max')}.",
        "",
        "| process | after warm-up | at the end | max | growth (end − start) | fitted slope |",
        "|---|---|---|---|---|---|",
    ]
    rows = [(f"{name} RSS", m) for name, m in report["memory"].items()]
    rows += [(f"{name.replace(' heap', '')} heap (tcmalloc allocated)", m) for name, m in report["envoy_heap"].items()]
    for name, m in rows:
        lines.append(f"| {name} | {m['start_mb']} MB | {m['end_mb']} MB | {m['max_mb']} MB "
                     f"| {m['growth_mb']:+} MB | {m['slope_mb_per_hour']:+} MB/h ({m['slope_pct_per_hour']:+} %/h) |")
    stats = "; ".join(f"{name.replace(' stats', '')}: {c['start']} after warm-up, {c['end']} at the end"
                      for name, c in report["envoy_stats"].items())
    lines += ["", f"Envoy stats (a name minted per key or request would grow these): {stats}."]
    total = report["requests"]
    lines += [
        "",
        f"Requests: {total} ({total / report['duration_s']:.1f}/s); by outcome: "
        + ", ".join(f"{k}: {v}" for k, v in sorted(report["outcomes"].items())) + ".",
        f"Unexpected answers: {dict(report['unexpected']) or 'none'}; 5xx from the gateway: "
        f"{report['gateway_5xx'] or 'none'}.",
        f"Spend rows {report['spend_rows']} / upstream calls {report['upstream_calls']} "
        f"({'equal' if report['billing_settled'] else 'NOT EQUAL'}, settled in {report['settle_s']:.1f} s).",
        "",
    ]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3600)
    parser.add_argument("--warmup", type=float, help="seconds (default: 10%% of the run, at least 10)")
    parser.add_argument("--rate", type=float, default=60, help="requests a second, all kinds together")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--churn-every", type=float, default=3.0)
    parser.add_argument("--sample-every", type=float, help="seconds (default: duration/200, 1 to 10)")
    parser.add_argument("--database", choices=["auto", "postgres", "sqlite"], default="auto")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--report-md")
    parser.add_argument("--samples")
    args = parser.parse_args()
    warmup = args.warmup if args.warmup is not None else max(10.0, args.duration / 10)
    interval = args.sample_every or min(10.0, max(1.0, args.duration / 200))
    # A SIGTERM stops the run like Ctrl-C: through the finally clauses, children stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    with tempfile.TemporaryDirectory(prefix="sluice-soak-") as tmp:
        fleet = Fleet(Path(tmp))
        db = None
        load = None
        try:
            if args.database == "postgres" or (args.database == "auto" and Postgres.available()):
                db = Postgres()
            else:
                db = Sqlite(fleet.db)
            fleet.database_url = db.url
            fleet.start_control_plane()
            envoys = [fleet.start_envoy("soak-a"), fleet.start_envoy("soak-b")]
            keys = Keys(fleet)
            load = Load(envoys, keys, args.rate, args.workers, args.seed)
            rss = {**{f"envoy {e.node_id}": rss_probe(e.proc.pid) for e in envoys},
                   "control plane": rss_probe(fleet.control_plane.pid), "mock provider": rss_probe(fleet.procs[0].pid)}
            heap = {f"envoy {e.node_id} heap": envoy_heap_probe(e) for e in envoys}
            stats = {f"envoy {e.node_id} stats": envoy_stats_probe(e) for e in envoys}
            sampler = Sampler({**rss, **heap, **stats, "load average": lambda: os.getloadavg()[0]}, interval)
            log(f"{args.duration:.0f} s at {args.rate} req/s, {type(db).__name__} database, warm-up {warmup:.0f} s")
            started = time.monotonic()
            deadline = started + args.duration
            sampler.start = started
            sampler.thread.start()
            threads = load.run(deadline)
            next_churn = started + args.churn_every
            next_log = started + 60
            while time.monotonic() < deadline:
                now = time.monotonic()
                if now >= next_churn:
                    keys.churn()
                    next_churn = max(next_churn + args.churn_every, time.monotonic())
                if now >= next_log:
                    last = sampler.samples[-1][1]
                    log(f"{now - started:.0f} s: {sum(load.by_kind.values())} requests, unexpected "
                        f"{sum(load.unexpected.values())}, RSS MB "
                        + ", ".join(f"{n} {last[n]:.1f}" for n in rss if last.get(n)))
                    next_log += 60
                time.sleep(max(0.0, min(next_churn, deadline, next_log) - time.monotonic()))
            for t in threads:
                t.join(timeout=60)
            elapsed = time.monotonic() - started
            sampler.stop.set()
            sampler.thread.join(timeout=30)

            # Every upstream call is one spend row, once the Envoys have shipped their records.
            settle_start = time.monotonic()
            served = fleet.served()["served"]
            try:
                wait_until(lambda: db.spend_rows() == served, timeout=90, what="spend rows = upstream calls")
                settled = True
            except AssertionError:
                settled = False
            settle_s = time.monotonic() - settle_start
            time.sleep(2.0)
            rows = db.spend_rows()
            settled = settled and rows == served and fleet.served()["served"] == served

            outcomes = dict(sorted(load.outcomes.items()))
            report = {
                "duration_s": round(elapsed, 1),
                "warmup_s": warmup,
                "rate_target": args.rate,
                "envoy_concurrency": fleet.envoy_concurrency,
                "database": "Postgres" if isinstance(db, Postgres) else "SQLite",
                "sample_interval_s": interval,
                "samples": len(sampler.samples),
                "requests": sum(load.by_kind.values()),
                "by_kind": dict(sorted(load.by_kind.items())),
                "outcomes": outcomes,
                "unexpected": dict(load.unexpected),
                "gateway_5xx": {k: v for k, v in outcomes.items() if k.split(" ")[1].startswith("5")},
                "keys_created": keys.made,
                "cli_calls": dict(keys.cli_calls),
                "upstream_calls": served,
                "spend_rows": rows,
                "billing_settled": settled,
                "settle_s": round(settle_s, 1),
                "memory": memory_report(sampler.samples, warmup, rss),
                "envoy_heap": memory_report(sampler.samples, warmup, heap),
                "envoy_stats": count_report(sampler.samples, warmup, stats),
                "load_average": load_report(sampler.samples),
            }
            if args.samples:
                names = list(sampler.probes)
                with open(args.samples, "w") as f:
                    f.write("seconds," + ",".join(n.replace(" ", "_") for n in names) + "\n")
                    for t, s in sampler.samples:
                        f.write(f"{t:.1f}," + ",".join(("" if s.get(n) is None else f"{s[n]:.3f}") for n in names) + "\n")
            if args.report_md:
                Path(args.report_md).write_text(markdown(report))
            print(json.dumps(report))
        finally:
            if load:
                load.stop.set()
            fleet.stop()
            if db:
                db.drop()


if __name__ == "__main__":
    main()
