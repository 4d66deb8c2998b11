"""The soak's short mode (`tests/bench/soak.py` for 60 s; the hour is `cargo xtask soak`).

A control plane on Postgres (SQLite when the machine has none) and two Envoys under a steady
60 req/s with key churn, streams read to the end, streams cancelled midway and refused requests
(malformed, unknown, blocked, deleted and over-limit keys, an unknown model). Asserted:

- every answer is one its request's kind may get: no 5xx from the gateway, no client error, no
  refused good key, no served dead key;
- every upstream call the mock served is exactly one spend row at the control plane;
- after a 15 s warm-up, over the remaining ~45 s, each Envoy's RSS and the control plane's RSS
  grow by under GROWTH_BOUND_MB, each Envoy's own heap (tcmalloc's allocated bytes) by under
  HEAP_BOUND_MB, and no Envoy mints stats (at most STATS_SLACK new names).

The bounds, from measurements on the 2-core VM (BENCHMARKS.md, "Soak"): over any 50 s after
the warm-up, in a 10-minute and an hour-long run, the largest rise was 0.77 MB for an Envoy's
RSS, 0.36 MB for the control plane's and 0.21 MB for an Envoy's heap; stats stop changing within
the first 15 s. Each Envoy serves ~1,300 requests in the measured window and the control plane
ingests ~2,000 usage records, so GROWTH_BOUND_MB catches a leak of ~1.5 KB per request in an
Envoy (a buffered body, a kept stream buffer) and of ~1 KB per usage record in the control plane
(checked: 2 KB kept per request in the filter's `on_log` raised each Envoy's RSS by 2.9 MB, 2 KB
kept per record in the control plane's ingestion its RSS by 4.5 MB); HEAP_BOUND_MB one of
~0.8 KB per request in Envoy's native heap (shared data or host state kept per request); the
stats check a stat name per key (15 keys are made in the window) or per request. Slower leaks
are the hour-long soak's to find (`cargo xtask soak`: its slope).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

DURATION_S = 60
WARMUP_S = 15
GROWTH_BOUND_MB = 2.0
HEAP_BOUND_MB = 1.0
STATS_SLACK = 3

SOAK = Path(__file__).resolve().parents[1] / "bench" / "soak.py"


def test_a_minute_of_churn_streams_and_cancellations_leaks_nothing_and_bills_every_call(tmp_path):
    out = subprocess.run(
        [sys.executable, str(SOAK), "--duration", str(DURATION_S), "--warmup", str(WARMUP_S), "--sample-every", "1",
         "--samples", str(tmp_path / "samples.csv")],
        capture_output=True, text=True, timeout=DURATION_S + 240, env=os.environ)
    assert out.returncode == 0, out.stderr[-5000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(report, indent=1))

    assert report["requests"] >= DURATION_S * 30, "the load ran"
    for kind in ("chat", "stream", "cancel", "limited", "dead", "unknown", "malformed", "bad_model"):
        assert report["by_kind"].get(kind, 0) > 0, kind
    assert report["outcomes"].get("limited 429 rate_limit_exceeded", 0) > 0, "an over-limit key was refused"
    assert report["unexpected"] == {}, report["outcomes"]
    assert report["gateway_5xx"] == {}
    assert report["billing_settled"], (report["spend_rows"], report["upstream_calls"])
    assert report["spend_rows"] == report["upstream_calls"] > 0

    memory = report["memory"]
    for name in ("envoy soak-a", "envoy soak-b", "control plane"):
        m = memory[name]
        assert m["samples_after_warmup"] >= 30, m
        growth = max(m["growth_mb"], m["fit_growth_mb"], m["max_after_warmup_mb"] - m["start_mb"])
        assert growth < GROWTH_BOUND_MB, (name, m)
    for name, m in report["envoy_heap"].items():
        assert max(m["growth_mb"], m["fit_growth_mb"]) < HEAP_BOUND_MB, (name, m)
    for name, c in report["envoy_stats"].items():
        assert c["end"] - c["start"] <= STATS_SLACK, (name, c)
