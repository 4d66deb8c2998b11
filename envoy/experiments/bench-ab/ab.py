"""A/B of two front Envoys on the bench's own files: alternating rounds of wrk (chat, 32
connections, 6 s) against each, Envoy's CPU per request from /proc, the measured Envoy on core 0
and everything else on core 1, as `cargo xtask bench` does.

Run after a `cargo xtask bench` (it reads `.sluice/bench/`: the upstream, the front Envoys'
bootstraps, `chat.lua`): `python3 envoy/experiments/bench-ab/ab.py envoy-18104.yaml` (the native
Sluice front). Edit `variants` for what to compare; as committed it compares the filter at
`/work/ab/new.so` with `/work/ab/old.so` (built from an earlier commit), the older one given the
config without the fields it does not know. BENCHMARKS.md's evening reading used it.
"""
import os, re, subprocess, sys, time, signal
D = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../../.sluice/bench")
ENVOY = os.environ.get("ENVOY_BIN") or subprocess.check_output("ls -d .venv/lib/*/site-packages/envoy/_bin/envoy", shell=True, text=True).strip()
key = re.search(r"bench-provider-[0-9a-f]+", open(f"{D}/chat.lua").read()).group(0)
env = {**os.environ, "BENCH_PROVIDER_KEY": key}
src_name = sys.argv[1] if len(sys.argv) > 1 else "envoy-18104.yaml"
src = open(f"{D}/{src_name}").read()
def variant_b(y):
    y = y.replace("              include_attempt_count_in_response: true\n", "")
    y = re.sub(r"                  retry_policy:\n(                    .*\n|                      .*\n|                        .*\n)+", "", y)
    y = y.replace("                - x-forwarded-for\n                - x-envoy-external-address\n                - x-envoy-expected-rq-timeout-ms\n", "")
    return y
new = src.replace("/work/main/target/release/libsluice_filter.so", "/work/ab/new.so")
old = re.sub(r',"cooldown":\{[^}]*\}', "", src).replace("/work/main/target/release/libsluice_filter.so", "/work/ab/old.so")
assert old != new and "cooldown" not in old
variants = {"new-filter": new, "old-filter": old}
up = subprocess.Popen(["taskset", "-c", "1", ENVOY, "-c", f"{D}/upstream.yaml", "--concurrency", "1", "--disable-hot-restart", "--base-id", "7771", "-l", "error"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
time.sleep(2)
def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().split(")")[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
results = {k: [] for k in variants}
for rnd in range(4):
    for name, y in variants.items():
        path = f"/tmp/ab-{name}.yaml"; open(path, "w").write(y)
        e = subprocess.Popen(["taskset", "-c", "0", ENVOY, "-c", path, "--concurrency", "1", "--disable-hot-restart", "--base-id", "7772", "-l", "error"], env=env, stdout=subprocess.DEVNULL, stderr=open(f"/tmp/ab-{name}.log", "w"))
        time.sleep(3)
        fport = 18104 if "18104" in src_name else int(src_name.split("-")[1].split(".")[0])
        subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c32", "-d2s", "-s", f"{D}/chat.lua", f"http://127.0.0.1:{fport}/v1/chat/completions"], capture_output=True)
        c0 = cpu(e.pid)
        out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c32", "-d6s", "-s", f"{D}/chat.lua", f"http://127.0.0.1:{fport}/v1/chat/completions"], capture_output=True, text=True).stdout
        c1 = cpu(e.pid)
        reqs = int(re.search(r"(\d+) requests in", out).group(1))
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        results[name].append(((c1 - c0) / reqs * 1e6, reqs / 6))
        print(name, f"{(c1-c0)/reqs*1e6:.1f} us/req", f"{reqs/6:.0f} rps", "non2xx", non2xx.group(1) if non2xx else 0, flush=True)
        e.send_signal(signal.SIGTERM); e.wait()
        time.sleep(1)
up.send_signal(signal.SIGTERM); up.wait()
for k, v in results.items():
    us = sorted(x[0] for x in v); print(k, "median us/req", us[len(us)//2], "all", [round(x,1) for x in us])
