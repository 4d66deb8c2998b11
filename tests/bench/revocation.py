"""Revocation time: from the admin API's answer to `sluice key block` until two Envoys both
refuse the key (each polled every few milliseconds). Run by `cargo xtask bench-fleet`, which
sets ENVOY_BIN, SLUICE_WASM, SLUICE_CLI and SLUICE_MOCK; prints one JSON line."""

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from test_xds import CHAT, Fleet, create_key  # noqa: E402


def main(rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="sluice-revocation-") as tmp:
        fleet = Fleet(Path(tmp))
        try:
            fleet.start_control_plane()
            envoys = [fleet.start_envoy("edge-a"), fleet.start_envoy("edge-b")]
            samples = []
            for _ in range(rounds):
                key, key_id = create_key(fleet)
                for envoy in envoys:
                    assert envoy.chat(CHAT, key=key).status_code == 200
                fleet.cli("key", "block", key_id)
                committed = time.monotonic()
                pending = set(range(len(envoys)))
                last = {}
                while pending:
                    for i in list(pending):
                        resp = envoys[i].chat(CHAT, key=key)
                        last[i] = (resp.status_code, resp.text[:200])
                        if resp.status_code == 401:
                            pending.discard(i)
                    if time.monotonic() - committed > 10:
                        for e in envoys:  # what each Envoy knew, for the report
                            stats = httpx.get(f"{e.admin}/stats?filter=wasmcustom", timeout=5).text
                            print(e.node_id, stats, file=sys.stderr)
                        print(fleet.cp_log_path.read_text()[-3000:], file=sys.stderr)
                        raise SystemExit(f"a revocation took over 10 s (round {len(samples) + 1}; last answers {last})")
                samples.append((time.monotonic() - committed) * 1000)
            samples.sort()
            p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
            print(json.dumps({"rounds": rounds, "p50_ms": statistics.median(samples), "p99_ms": p99,
                              "max_ms": samples[-1]}))
        finally:
            fleet.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50)
