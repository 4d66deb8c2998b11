//! `cargo xtask bench`: Envoy+Sluice against bare Envoy, in one run, alternating, on the same
//! mock provider. A 1 KB chat request with a ~1.4 KB response, at one connection (latency) and
//! at saturation (throughput), plus time to first token on a stream. LiteLLM's proxy (pinned, in
//! its own venv, `.venv-litellm`) is measured at saturation against the same mock, unless
//! `--no-litellm`. Results go to stdout and to BENCHMARKS.md (between the generated-results
//! markers).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::proc::{self, root};
use crate::setup;
use crate::supervise::Children;

const MOCK_PORT: u16 = 18_081;
const BARE_PORT: u16 = 18_000;
const SLUICE_PORT: u16 = 18_001;
const NOOP_PORT: u16 = 18_002;
const BARE_ADMIN: u16 = 18_900;
const SLUICE_ADMIN: u16 = 18_901;
const NOOP_ADMIN: u16 = 18_902;
const LITELLM_PORT: u16 = 18_400;
/// LiteLLM's proxy, pinned: the 1.106 line DESIGN.md's anchor was measured with, at the newest
/// release whose dependencies resolve here (1.106.10 needs a certifi newer than any published).
const LITELLM_VERSION: &str = "1.106.0";

/// The Envoys measured, in the order each round runs them: bare, Sluice, and the floor (a
/// no-op wasm filter) that shows what any proxy-wasm filter costs on this Envoy.
const BARE: usize = 0;
const SLUICE: usize = 1;
const NOOP: usize = 2;
const PORTS: [u16; 3] = [BARE_PORT, SLUICE_PORT, NOOP_PORT];
const NAMES: [&str; 3] = ["bare Envoy", "Envoy+Sluice", "Envoy+no-op wasm filter"];

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct WrkResult {
    pub(crate) rps: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) requests: f64,
    /// Envoy's CPU time (user + system) per request during the run: unlike req/s, this does
    /// not depend on how the two cores are shared with wrk and the mock.
    pub(crate) envoy_cpu_us_per_request: f64,
}

pub fn bench(args: &[String]) -> Result<(), String> {
    let quick = args.iter().any(|a| a == "--quick");
    let no_litellm = args.iter().any(|a| a == "--no-litellm");
    let (duration, rounds, ttft_requests) = if quick { ("3s", 1, 50) } else { ("10s", 3, 300) };
    let tools = setup::setup()?;
    ensure_wrk()?;
    let cargo = proc::cargo();
    proc::step(
        "build the mock provider (release)",
        proc::run(&cargo, &["build", "--quiet", "--release", "-p", "sluice-mock-provider"], &[]),
    )?;
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root().join("target"));
    let mock_bin = target.join("release/sluice-mock-provider");
    // The floor: setup builds the no-op filter with Sluice's.
    let noop_wasm = tools.noop_wasm.clone();

    let dir = root().join(".sluice/bench");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let provider_key = format!("bench-provider-{}", proc::random_hex()?);
    let env = [("BENCH_PROVIDER_KEY", provider_key.as_str())];

    // Sluice's config: one key with RPM, TPM and budget limits high enough never to trigger, so
    // every request pays for auth, limit checks, budget reservation, body rewrite and usage.
    let config = dir.join("config.yaml");
    std::fs::write(&config, bench_config()).map_err(|e| e.to_string())?;
    let cli = tools.cli.to_string_lossy().into_owned();
    let config_s = config.to_string_lossy().into_owned();
    let created = proc::output(
        &cli,
        &[
            "key",
            "new",
            "--alias",
            "bench",
            "--rpm",
            "100000000",
            "--tpm",
            "1000000000000",
            "--max-budget",
            "1000000000",
            "--append-to",
            &config_s,
            "--json",
        ],
        &env,
    )?;
    let key = crate::quickstart::json_string_field(&created, "key").ok_or("no key from the CLI")?;
    let sluice_yaml = dir.join("sluice-envoy.yaml");
    crate::quickstart::envoy_config(
        &cli,
        &config_s,
        &tools.wasm.to_string_lossy(),
        &sluice_yaml.to_string_lossy(),
        &format!("127.0.0.1:{SLUICE_PORT}"),
        &SLUICE_ADMIN.to_string(),
        &env,
    )?;
    let bare_yaml = dir.join("bare-envoy.yaml");
    std::fs::write(&bare_yaml, reference_envoy_config(BARE_PORT, BARE_ADMIN, None)).map_err(|e| e.to_string())?;
    let noop_yaml = dir.join("noop-envoy.yaml");
    std::fs::write(&noop_yaml, reference_envoy_config(NOOP_PORT, NOOP_ADMIN, Some(&noop_wasm)))
        .map_err(|e| e.to_string())?;

    let body = chat_body(false);
    let stream_body = chat_body(true);
    let lua = dir.join("post.lua");
    std::fs::write(&lua, wrk_script(&key, &body, &provider_key)).map_err(|e| e.to_string())?;

    let mut children = Children(Vec::new());
    children.0.push(
        Command::new(&mock_bin)
            .args(["--listen", &format!("127.0.0.1:{MOCK_PORT}"), "--openai-key", &provider_key, "--workers", "1"])
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("mock: {e}"))?,
    );
    for (yaml, admin, id) in
        [(&bare_yaml, BARE_ADMIN, "1"), (&sluice_yaml, SLUICE_ADMIN, "2"), (&noop_yaml, NOOP_ADMIN, "3")]
    {
        let log = std::fs::File::create(dir.join(format!("envoy-{admin}.log"))).map_err(|e| e.to_string())?;
        children.0.push(
            Command::new(&tools.envoy)
                .args([
                    "-c",
                    &yaml.to_string_lossy(),
                    "--disable-hot-restart",
                    "--concurrency",
                    "1",
                    "--log-level",
                    "warn",
                    "--base-id",
                    id,
                ])
                .envs(env)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| format!("envoy: {e}"))?,
        );
        crate::quickstart::wait_until_ready(&format!("127.0.0.1:{admin}"), Duration::from_secs(30))?;
    }
    // Children: the mock, then the Envoys in PORTS order (then LiteLLM, if it runs).
    let envoy_pids: Vec<u32> = (1..=PORTS.len()).map(|i| children.0.get(i).map_or(0, Child::id)).collect();
    let rss_before: Vec<u64> = envoy_pids.iter().map(|p| rss_kib(*p)).collect();

    // LiteLLM's proxy on the same mock, one worker; any failure is reported, not hidden.
    let mut litellm: Result<Litellm, String> = if no_litellm {
        Err("not measured in this run (`--no-litellm`)".into())
    } else {
        start_litellm(&dir, &provider_key, &body, &mut children).map_err(|e| format!("could not be run here: {e}"))
    };

    // Warm up every path (VM JIT, connection pools), then alternate the Envoys each round.
    for port in PORTS {
        check_request(port, &key, &provider_key, &body)?;
        wrk(&lua, port, 4, "2s", 0)?;
    }
    let mut one_conn: [Vec<WrkResult>; 3] = Default::default();
    let mut saturated: [Vec<WrkResult>; 3] = Default::default();
    let mut ttft: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut litellm_saturated: Vec<WrkResult> = Vec::new();
    for round in 0..rounds {
        for (i, port) in PORTS.into_iter().enumerate() {
            let name = NAMES.get(i).copied().unwrap_or("?");
            eprintln!("xtask: bench round {} / {rounds}: {name}", round + 1);
            let pid = envoy_pids.get(i).copied().unwrap_or(0);
            one_conn[i].push(wrk(&lua, port, 1, duration, pid)?);
            saturated[i].push(wrk(&lua, port, 32, duration, pid)?);
            if let Some(samples) = ttft.get_mut(i) {
                samples.extend(time_to_first_token(port, &key, &provider_key, &stream_body, ttft_requests / rounds)?);
            }
        }
        if let Ok(l) = &litellm {
            eprintln!("xtask: bench round {} / {rounds}: LiteLLM proxy", round + 1);
            match wrk(&l.script, LITELLM_PORT, 32, duration, l.pid) {
                Ok(r) => litellm_saturated.push(r),
                Err(e) => litellm = Err(format!("failed during the run: {e}")),
            }
        }
    }
    let litellm_rss = litellm.as_ref().map_or(0, |l| rss_kib(l.pid));
    let rss_after: Vec<u64> = envoy_pids.iter().map(|p| rss_kib(*p)).collect();

    let med = |v: &[WrkResult], f: fn(&WrkResult) -> f64| median(v.iter().map(f).collect());
    let bare1 =
        (med(&one_conn[BARE], |r| r.p50_us), med(&one_conn[BARE], |r| r.p99_us), med(&one_conn[BARE], |r| r.rps));
    let sl1 =
        (med(&one_conn[SLUICE], |r| r.p50_us), med(&one_conn[SLUICE], |r| r.p99_us), med(&one_conn[SLUICE], |r| r.rps));
    let noop1 = med(&one_conn[NOOP], |r| r.p50_us);
    let sat =
        |i: usize| (med(&saturated[i], |r| r.rps), med(&saturated[i], |r| r.p50_us), med(&saturated[i], |r| r.p99_us));
    let (bare_sat, sl_sat, noop_sat) = (sat(BARE), sat(SLUICE), sat(NOOP));
    let cpu = |i: usize| med(&saturated[i], |r| r.envoy_cpu_us_per_request);
    let (bare_cpu, sl_cpu, noop_cpu) = (cpu(BARE), cpu(SLUICE), cpu(NOOP));
    let rss = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0);
    let (bare_ttft, sl_ttft) = (percentile(&mut ttft[0].clone(), 50.0), percentile(&mut ttft[1].clone(), 50.0));
    let (bare_ttft99, sl_ttft99) = (percentile(&mut ttft[0].clone(), 99.0), percentile(&mut ttft[1].clone(), 99.0));

    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let ratio = sl_sat.0 / bare_sat.0.max(1.0);
    let added_p50 = sl1.0 - bare1.0;
    let added_p99 = sl1.1 - bare1.1;
    let added_ttft = sl_ttft - bare_ttft;
    let mem_ratio = rss(&rss_after, SLUICE) as f64 / rss(&rss_after, BARE).max(1) as f64;
    let cpu_ratio = bare_cpu / sl_cpu.max(0.001);
    let (litellm_row, litellm_text) = match (&litellm, litellm_saturated.is_empty()) {
        (Ok(_), false) => {
            let rps = med(&litellm_saturated, |r| r.rps);
            let (sl_x, bare_x) = (sl_sat.0 / rps.max(0.001), bare_sat.0 / rps.max(0.001));
            (
                format!(
                    "| throughput / LiteLLM proxy at saturation (LiteLLM: {rps:.1} req/s) | {bare_x:.0}× | {sl_x:.0}× | Envoy+Sluice **{sl_x:.0}×** LiteLLM | ≥ 80× ({}) |\n",
                    verdict(sl_x >= 80.0)
                ),
                format!(
                    "\nLiteLLM's proxy {LITELLM_VERSION} (`litellm --num_workers 1`, its own venv; master key only: without a database it has \
no virtual keys, budgets or spend logs, so it does less per request than Sluice), same mock, same body, in the same rounds: \
{rps:.1} req/s at 32 connections (p50 {:.0} ms, p99 {:.0} ms), {:.0} µs of CPU per request, {litellm_rss} KiB RSS after the run. \
Envoy+Sluice serves {sl_x:.0}× and bare Envoy {bare_x:.0}× its throughput.\n",
                    med(&litellm_saturated, |r| r.p50_us) / 1000.0,
                    med(&litellm_saturated, |r| r.p99_us) / 1000.0,
                    med(&litellm_saturated, |r| r.envoy_cpu_us_per_request),
                ),
            )
        }
        (Ok(_), true) => {
            ("| throughput / LiteLLM proxy | — | — | **not measured** | ≥ 80× |\n".to_owned(), String::new())
        }
        (Err(e), _) => (
            "| throughput / LiteLLM proxy | — | — | **not measured** | ≥ 80× |\n".to_owned(),
            format!("\n**LiteLLM's proxy {LITELLM_VERSION}: {e}.** The ≥ 80× target was not checked in this run.\n"),
        ),
    };
    let report = format!(
        "Measured {date} on this machine ({cores} cores), `cargo xtask bench{quick_flag}`: {rounds} round(s), bare Envoy, Envoy+Sluice and the no-op floor alternating, \
each Envoy with `--concurrency 1`, mock provider with 1 worker, wrk 1 thread; medians over rounds.\n\n\
| what | bare Envoy | Envoy+Sluice | result | target |\n|---|---|---|---|---|\n\
| throughput at saturation (32 connections), req/s | {:.0} | {:.0} | ratio **{ratio:.3}** | ≥ 0.85 ({}) |\n\
| Envoy CPU per request at saturation (user + system) | {bare_cpu:.1} µs | {sl_cpu:.1} µs | ratio **{cpu_ratio:.3}**, added {:.1} µs | ≥ 0.85 ({}) |\n\
| one connection, p50 latency | {:.0} µs | {:.0} µs | added **{added_p50:.0} µs** | ≤ 100 µs ({}) |\n\
| one connection, p99 latency | {:.0} µs | {:.0} µs | added **{added_p99:.0} µs** | ≤ 250 µs ({}) |\n\
| one connection, req/s | {:.0} | {:.0} | ratio {:.3} | — |\n\
| saturation p50 / p99 latency | {:.0} / {:.0} µs | {:.0} / {:.0} µs | — | — |\n\
| streaming, time to first token p50 ({} streams each) | {:.0} µs | {:.0} µs | added **{added_ttft:.0} µs** | ≤ 500 µs ({}) |\n\
| streaming, time to first token p99 | {:.0} µs | {:.0} µs | added {:.0} µs | — |\n\
| Envoy RSS after the run (before: {} / {} KiB) | {} KiB | {} KiB | ratio {mem_ratio:.2} | ≤ 1.5 ({}) |\n\
{litellm_row}\n\
The floor, measured in the same rounds: Envoy with a no-op wasm filter (`tests/noop-filter`: one header read and one \
write) serves {:.0} req/s (ratio {:.3}), spends {noop_cpu:.1} µs of CPU per request (ratio {:.3}), adds {:.0} µs at p50 \
on one connection and holds {} KiB after the run (ratio {:.2}). What Sluice adds beyond any wasm filter: {:.1} µs of CPU per \
request.\n{litellm_text}",
        bare_sat.0,
        sl_sat.0,
        verdict(ratio >= 0.85),
        sl_cpu - bare_cpu,
        verdict(cpu_ratio >= 0.85),
        bare1.0,
        sl1.0,
        verdict(added_p50 <= 100.0),
        bare1.1,
        sl1.1,
        verdict(added_p99 <= 250.0),
        bare1.2,
        sl1.2,
        sl1.2 / bare1.2.max(1.0),
        bare_sat.1,
        bare_sat.2,
        sl_sat.1,
        sl_sat.2,
        ttft[0].len(),
        bare_ttft,
        sl_ttft,
        verdict(added_ttft <= 500.0),
        bare_ttft99,
        sl_ttft99,
        sl_ttft99 - bare_ttft99,
        rss(&rss_before, BARE),
        rss(&rss_before, SLUICE),
        rss(&rss_after, BARE),
        rss(&rss_after, SLUICE),
        verdict(mem_ratio <= 1.5),
        noop_sat.0,
        noop_sat.0 / bare_sat.0.max(1.0),
        bare_cpu / noop_cpu.max(0.001),
        noop1 - bare1.0,
        rss(&rss_after, NOOP),
        rss(&rss_after, NOOP) as f64 / rss(&rss_after, BARE).max(1) as f64,
        sl_cpu - noop_cpu,
        date = proc::output("date", &["-u", "+%Y-%m-%d %H:%M UTC"], &[]).unwrap_or_default().trim(),
        cores = std::thread::available_parallelism().map_or(0, |n| n.get()),
        quick_flag = if quick { " --quick" } else { "" },
    );
    println!("\n{report}");
    write_report(&root().join("BENCHMARKS.md"), &report)?;
    Ok(())
}

/// A running LiteLLM proxy: its pid (for CPU and RSS) and the wrk script with its master key.
struct Litellm {
    pid: u32,
    script: PathBuf,
}

/// Installs the pinned LiteLLM proxy into `.venv-litellm` (only when it is missing or another
/// version), starts it on the mock with one worker, and waits until it answers a chat request.
fn start_litellm(dir: &Path, provider_key: &str, body: &str, children: &mut Children) -> Result<Litellm, String> {
    let litellm_bin = litellm_binary(&root())?;
    let master_key = format!("sk-litellm-bench-{}", proc::random_hex()?);
    let config = dir.join("litellm.yaml");
    std::fs::write(&config, litellm_config(&master_key)).map_err(|e| e.to_string())?;
    let script = dir.join("post-litellm.lua");
    std::fs::write(&script, litellm_wrk_script(&master_key, body)).map_err(|e| e.to_string())?;
    let log_path = dir.join("litellm.log");
    let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
    let log2 = log.try_clone().map_err(|e| e.to_string())?;
    let port = LITELLM_PORT.to_string();
    let child = Command::new(&litellm_bin)
        .args(["--config", &config.to_string_lossy(), "--host", "127.0.0.1", "--port", &port, "--num_workers", "1"])
        .envs([
            ("BENCH_PROVIDER_KEY", provider_key),
            // The price map shipped in the package: no download at start.
            ("LITELLM_LOCAL_MODEL_COST_MAP", "True"),
            ("LITELLM_LOG", "ERROR"),
        ])
        .stdout(log)
        .stderr(log2)
        .spawn()
        .map_err(|e| format!("{}: {e}", litellm_bin.display()))?;
    let pid = child.id();
    children.0.push(child);
    let addr = format!("127.0.0.1:{LITELLM_PORT}");
    let auth = format!("Bearer {master_key}");
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < Duration::from_secs(180) {
        if let Some(Ok(Some(status))) = children.0.last_mut().map(Child::try_wait) {
            return Err(format!("LiteLLM exited ({status}); see {}", log_path.display()));
        }
        match crate::quickstart::http(&addr, "POST", "/v1/chat/completions", &headers, body) {
            Ok((200, _)) => return Ok(Litellm { pid, script }),
            Ok((status, response)) => {
                last = format!("HTTP {status}: {}", response.chars().take(300).collect::<String>())
            }
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Err(format!("LiteLLM never served a chat request (last: {last}); see {}", log_path.display()))
}

/// `.venv-litellm/bin/litellm` at `LITELLM_VERSION`, installed with pip on first use. Its own
/// venv: LiteLLM's dependency pins must not move the test venv's SDKs.
fn litellm_binary(root: &Path) -> Result<PathBuf, String> {
    let venv = root.join(".venv-litellm");
    let python = venv.join("bin/python");
    if !python.exists() {
        proc::step("create .venv-litellm", proc::run("python3", &["-m", "venv", &venv.to_string_lossy()], &[]))?;
    }
    let py = python.to_string_lossy().into_owned();
    let version = || {
        proc::output(&py, &["-c", "import importlib.metadata as m; print(m.version('litellm'))"], &[])
            .map(|v| v.trim().to_owned())
    };
    if version().ok().as_deref() != Some(LITELLM_VERSION) {
        let requirement = format!("litellm[proxy]=={LITELLM_VERSION}");
        proc::step(
            &format!("pip install {requirement} into .venv-litellm"),
            proc::run(&py, &["-m", "pip", "install", "--quiet", "--disable-pip-version-check", &requirement], &[]),
        )?;
        let installed = version()?;
        if installed != LITELLM_VERSION {
            return Err(format!("pip installed litellm {installed}, not {LITELLM_VERSION}"));
        }
    }
    Ok(venv.join("bin/litellm"))
}

/// LiteLLM's config for the same mock deployment; the mock's response size (a request header
/// for the Envoys) is sent by LiteLLM itself, since it does not forward client headers.
fn litellm_config(master_key: &str) -> String {
    format!(
        "model_list:\n  - model_name: gpt-4o\n    litellm_params:\n      model: openai/gpt-4o\n      api_base: http://127.0.0.1:{MOCK_PORT}/v1\n      api_key: os.environ/BENCH_PROVIDER_KEY\n      extra_headers: {{\"x-mock-response-bytes\": \"1400\"}}\ngeneral_settings:\n  master_key: {master_key}\nlitellm_settings:\n  telemetry: false\n"
    )
}

fn litellm_wrk_script(master_key: &str, body: &str) -> String {
    let escaped = body.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        "wrk.method = \"POST\"\nwrk.body = \"{escaped}\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.headers[\"Authorization\"] = \"Bearer {master_key}\"\n"
    )
}

pub(crate) fn ensure_wrk() -> Result<(), String> {
    if proc::output("wrk", &["--version"], &[]).is_ok()
        || Command::new("wrk").arg("-v").output().is_ok_and(|o| !o.stdout.is_empty() || !o.stderr.is_empty())
    {
        return Ok(());
    }
    eprintln!("xtask: installing wrk from Debian's packages");
    proc::run("apt-get", &["update", "-qq"], &[])?;
    proc::run("apt-get", &["install", "-y", "-qq", "wrk"], &[])
}

pub(crate) fn check_request(port: u16, key: &str, provider_key: &str, body: &str) -> Result<(), String> {
    let auth = format!("Bearer {key}");
    let provider = format!("Bearer {provider_key}");
    let (status, response) = crate::quickstart::http(
        &format!("127.0.0.1:{port}"),
        "POST",
        "/v1/chat/completions",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
            ("x-mock-response-bytes", "1400"),
            ("x-bench-provider-key", &provider),
        ],
        body,
    )?;
    if status != 200 {
        return Err(format!("bench request to :{port} failed: HTTP {status}: {response}"));
    }
    Ok(())
}

/// One wrk run; `envoy_pid` (0: don't) is the Envoy whose CPU time is sampled around it.
pub(crate) fn wrk(
    script: &Path,
    port: u16,
    connections: u32,
    duration: &str,
    envoy_pid: u32,
) -> Result<WrkResult, String> {
    let cpu_before = cpu_ticks(envoy_pid);
    let out = proc::output(
        "wrk",
        &[
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{duration}"),
            "--latency",
            "-s",
            &script.to_string_lossy(),
            &format!("http://127.0.0.1:{port}/v1/chat/completions"),
        ],
        &[],
    )?;
    if out.contains("Non-2xx") {
        return Err(format!("wrk saw errors on :{port}:\n{out}"));
    }
    let cpu_after = cpu_ticks(envoy_pid);
    let mut result = WrkResult::default();
    for line in out.lines().map(str::trim) {
        if let Some((n, _)) = line.split_once(" requests in ") {
            result.requests = n.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = line.strip_prefix("Requests/sec:") {
            result.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = line.strip_prefix("50%") {
            result.p50_us = parse_duration_us(v.trim());
        } else if let Some(v) = line.strip_prefix("99%") {
            result.p99_us = parse_duration_us(v.trim());
        }
    }
    if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
        result.envoy_cpu_us_per_request =
            after.saturating_sub(before) as f64 * 1e6 / CLOCK_TICKS_PER_SEC / result.requests.max(1.0);
    }
    Ok(result)
}

/// `sysconf(_SC_CLK_TCK)`, which is 100 on every Linux this runs on (std has no sysconf).
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// A process's user + system CPU time so far, in clock ticks (fields 14 and 15 of /proc/PID/stat).
fn cpu_ticks(pid: u32) -> Option<u64> {
    if pid == 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; count fields after its closing parenthesis.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

fn parse_duration_us(s: &str) -> f64 {
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let value: f64 = s.get(..split).unwrap_or("0").parse().unwrap_or(0.0);
    match s.get(split..).unwrap_or("") {
        "us" => value,
        "ms" => value * 1_000.0,
        "s" => value * 1_000_000.0,
        _ => value,
    }
}

/// Microseconds from sending a streaming request to receiving its first content event.
fn time_to_first_token(port: u16, key: &str, provider_key: &str, body: &str, n: usize) -> Result<Vec<f64>, String> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
        let request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\nauthorization: Bearer {key}\r\nx-bench-provider-key: Bearer {provider_key}\r\ncontent-type: application/json\r\nx-mock-chunk-delay-ms: 2\r\nx-mock-completion-tokens: 8\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let start = Instant::now();
        stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
        let mut seen = Vec::with_capacity(4096);
        let mut buf = [0u8; 4096];
        let mut first = None;
        loop {
            let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            seen.extend_from_slice(buf.get(..n).unwrap_or(&[]));
            if first.is_none() && seen.windows(7).any(|w| w == b"data: {") {
                first = Some(start.elapsed());
            }
        }
        let status_ok = seen.starts_with(b"HTTP/1.1 200");
        match first {
            Some(t) if status_ok => out.push(t.as_secs_f64() * 1e6),
            _ => {
                return Err(format!(
                    "stream on :{port} failed: {}",
                    String::from_utf8_lossy(seen.get(..300.min(seen.len())).unwrap_or(&[]))
                ));
            }
        }
    }
    Ok(out)
}

pub(crate) fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    percentile(&mut v, 50.0)
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let idx = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v.get(idx).copied().unwrap_or(0.0)
}

const BEGIN: &str = "<!-- bench-results:begin -->";
const END: &str = "<!-- bench-results:end -->";

fn write_report(path: &Path, report: &str) -> Result<(), String> {
    write_block(path, BEGIN, END, report)
}

/// Replaces the text between two marker lines of a file (or appends the block).
pub fn write_block(path: &Path, begin: &str, end: &str, report: &str) -> Result<(), String> {
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    let block = format!("{begin}\n{report}{end}");
    let updated = match (existing.find(begin), existing.find(end)) {
        (Some(b), Some(e)) if e > b => {
            format!("{}{block}{}", existing.get(..b).unwrap_or(""), existing.get(e + end.len()..).unwrap_or(""))
        }
        _ => format!("{existing}\n{block}\n"),
    };
    std::fs::write(path, updated).map_err(|e| format!("{}: {e}", path.display()))
}

/// A ~1 KB chat request, like a short conversation.
pub(crate) fn chat_body(stream: bool) -> String {
    let filler = "Summarise the following meeting notes in three bullet points. ".repeat(14);
    format!(
        r#"{{"model":"gpt-4o","stream":{stream},"max_tokens":256,"messages":[{{"role":"system","content":"You are a concise assistant."}},{{"role":"user","content":"{filler}"}}]}}"#
    )
}

pub(crate) fn wrk_script(key: &str, body: &str, provider_key: &str) -> String {
    let escaped = body.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        "wrk.method = \"POST\"\nwrk.body = \"{escaped}\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.headers[\"Authorization\"] = \"Bearer {key}\"\nwrk.headers[\"x-bench-provider-key\"] = \"Bearer {provider_key}\"\nwrk.headers[\"x-mock-response-bytes\"] = \"1400\"\n"
    )
}

fn bench_config() -> String {
    format!(
        "model_list:\n  - model_name: gpt-4o\n    litellm_params:\n      model: openai/gpt-4o\n      api_base: http://127.0.0.1:{MOCK_PORT}/v1\n      api_key: os.environ/BENCH_PROVIDER_KEY\n    model_info:\n      input_cost_per_token: 0.0000025\n      output_cost_per_token: 0.00001\nkeys:\n"
    )
}

/// The reference Envoys: same listener settings, a static route to the same mock, router only
/// (bare) or a no-op wasm filter first (the floor). The provider key comes from a request header
/// the load generator sends, which bare Envoy's route (or the no-op filter) moves into
/// `Authorization`.
fn reference_envoy_config(port: u16, admin: u16, wasm: Option<&Path>) -> String {
    let (move_key, wasm_filter) = match wasm {
        None => (
            r#"
                          request_headers_to_add:
                            - header: {key: authorization, value: "%REQ(x-bench-provider-key)%"}
                              append_action: OVERWRITE_IF_EXISTS_OR_ADD"#
                .to_owned(),
            String::new(),
        ),
        Some(path) => (
            String::new(),
            format!(
                r#"
                  - name: envoy.filters.http.wasm
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
                      config:
                        vm_config: {{runtime: envoy.wasm.runtime.v8, code: {{local: {{filename: "{}"}}}}}}"#,
                path.display()
            ),
        ),
    };
    format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
    - name: reference
      address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: reference
                use_remote_address: true
                route_config:
                  virtual_hosts:
                    - name: all
                      domains: ["*"]
                      routes:
                        - match: {{prefix: /}}
                          route: {{cluster: mock, timeout: 600s}}{move_key}
                http_filters:{wasm_filter}
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
    - name: mock
      type: STATIC
      connect_timeout: 10s
      load_assignment:
        cluster_name: mock
        endpoints:
          - lb_endpoints:
              - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {MOCK_PORT}}}}}}}
"#
    )
}
