"""How fast an admin change reaches two Envoys (issue target: under 1 s), each Envoy polled every
few milliseconds from the moment the admin API answered:

- revocation: `sluice key block` → both refuse the key (401);
- limit: `sluice key update --rpm 1` on a key both have used this minute → both answer 429;
- deployment: `sluice model create` → both serve the new model;
- price: `sluice model update --info` with a new price → both charge it (the first request each
  prices with it, timed by the request's start in its usage record).

And what a key-cache miss costs through Envoy: the first request with a new key (looked up in
the control plane while it waits) against the next ones (served from the worker's cache),
client-side latency over the same connection (`miss_*`, `hit_*`; the control plane's own lookup
time with 1,000,000 keys is `examples/lookup_bench.rs`).

Run by `cargo xtask bench-fleet`, which sets ENVOY_BIN, SLUICE_WASM, SLUICE_CLI and SLUICE_MOCK;
prints one JSON line of flat fields (`<what>_p50_ms`, `<what>_p99_ms`, `<what>_max_ms`)."""

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from test_xds import CHAT, Fleet, create_key  # noqa: E402

GIVE_UP_S = 10


def time_until(fleet, envoys, done, what):
    """Milliseconds from now until `done(envoy)` holds for every Envoy."""
    start = time.monotonic()
    pending = list(envoys)
    while pending:
        pending = [e for e in pending if not done(e)]
        if time.monotonic() - start > GIVE_UP_S:
            for e in envoys:  # what each Envoy knew, for the report
                print(e.node_id, httpx.get(f"{e.admin}/stats?filter=wasmcustom", timeout=5).text, file=sys.stderr)
            print(fleet.cp_log_path.read_text()[-3000:], file=sys.stderr)
            raise SystemExit(f"{what} took over {GIVE_UP_S} s")
    return (time.monotonic() - start) * 1000


def first_charged_ms(fleet, envoys, model, deployment, price_in, price_out):
    """Milliseconds from now (the admin API's answer) to the start of the first request each
    Envoy charged at the new price; the slowest Envoy counts. Records reach the log a worker
    tick after their request, so the time is read from the record, not from when it shows."""
    since_ms = time.time() * 1000
    firsts = {}
    deadline = time.monotonic() + GIVE_UP_S
    while len(firsts) < len(envoys):
        for e in envoys:
            if e.node_id in firsts:
                continue
            e.chat({**CHAT, "model": model})
            for r in e.records():
                if r["deployment"] == deployment and r["start_ms"] >= since_ms and abs(
                        r["cost_usd"] - (r["prompt_tokens"] * price_in + r["completion_tokens"] * price_out)) < 1e-12:
                    firsts[e.node_id] = r["start_ms"] - since_ms
                    break
        if time.monotonic() > deadline:
            raise SystemExit(f"a price change took over {GIVE_UP_S} s")
    return max(firsts.values())


def latency_ms(client, envoy, key):
    start = time.perf_counter()
    resp = client.post(f"{envoy.url}/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"})
    elapsed = (time.perf_counter() - start) * 1000
    assert resp.status_code == 200, resp.text
    return elapsed


def summary(samples):
    samples = sorted(samples)
    return {"p50_ms": statistics.median(samples), "p99_ms": samples[min(len(samples) - 1, int(len(samples) * 0.99))],
            "max_ms": samples[-1]}


def main(rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="sluice-propagation-") as tmp:
        fleet = Fleet(Path(tmp))
        try:
            fleet.start_control_plane()
            envoys = [fleet.start_envoy("edge-a"), fleet.start_envoy("edge-b")]
            samples = {"revocation": [], "limit": [], "deployment": [], "price": [], "miss": [], "hit": []}
            with httpx.Client(timeout=30) as client:
                for _ in range(rounds * 4):
                    key, _ = create_key(fleet)
                    samples["miss"].append(latency_ms(client, envoys[0], key))
                    samples["hit"].extend(latency_ms(client, envoys[0], key) for _ in range(3))
            for n in range(rounds):
                key, key_id = create_key(fleet)
                for envoy in envoys:
                    assert envoy.chat(CHAT, key=key).status_code == 200
                fleet.cli("key", "update", key_id, "--rpm", "1")
                samples["limit"].append(time_until(fleet, envoys, lambda e: e.chat(CHAT, key=key).status_code == 429,
                                                   "a limit change"))
                fleet.cli("key", "block", key_id)
                samples["revocation"].append(time_until(fleet, envoys,
                                                        lambda e: e.chat(CHAT, key=key).status_code == 401,
                                                        "a revocation"))
                # Deployments and prices: fewer rounds (each adds a cluster to every Envoy).
                if n % 5 == 0:
                    model, deployment = f"bench-model-{n}", f"bench-dep-{n}"
                    fleet.cli("model", "create", model, "--params",
                              json.dumps({"model": "openai/gpt-4o", "api_base": f"{fleet.mock_url}/v1",
                                          "api_key": "os.environ/MOCK_OPENAI_KEY"}),
                              "--info", json.dumps({"id": deployment, "input_cost_per_token": 1e-6,
                                                    "output_cost_per_token": 2e-6}))
                    body = {**CHAT, "model": model}
                    samples["deployment"].append(time_until(fleet, envoys, lambda e: e.chat(body).status_code == 200,
                                                            "a new deployment"))
                    fleet.cli("model", "update", deployment, "--info",
                              json.dumps({"id": deployment, "input_cost_per_token": 3e-6, "output_cost_per_token": 4e-6}))
                    samples["price"].append(first_charged_ms(fleet, envoys, model, deployment, 3e-6, 4e-6))
                    fleet.cli("model", "delete", deployment)
            out = {"rounds": rounds}
            for what, values in samples.items():
                for field, value in summary(values).items():
                    out[f"{what}_{field}"] = value
                out[f"{what}_samples"] = len(values)
            print(json.dumps(out))
        finally:
            fleet.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50)
