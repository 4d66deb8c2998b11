//! `cargo xtask bench`: Envoy+Sluice against bare Envoy, in one run, alternating, on the same
//! mock provider. A 1 KB chat request with a ~1.4 KB response, at one connection (latency) and
//! at saturation (throughput), plus time to first token on a stream. Results go to stdout and
//! to BENCHMARKS.md (between the generated-results markers).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::proc::{self, Children, root};
use crate::setup;

const MOCK_PORT: u16 = 18_081;
const BARE_PORT: u16 = 18_000;
const SLUICE_PORT: u16 = 18_001;
const BARE_ADMIN: u16 = 18_900;
const SLUICE_ADMIN: u16 = 18_901;

#[derive(Debug, Clone, Copy, Default)]
struct WrkResult {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
}

pub fn bench(args: &[String]) -> Result<(), String> {
    let quick = args.iter().any(|a| a == "--quick");
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
    std::fs::write(&bare_yaml, bare_envoy_config()).map_err(|e| e.to_string())?;

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
    for (yaml, admin, id) in [(&bare_yaml, BARE_ADMIN, "1"), (&sluice_yaml, SLUICE_ADMIN, "2")] {
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
    let envoy_pids = [children.0.get(1).map(Child::id), children.0.get(2).map(Child::id)];
    let rss_before: Vec<u64> = envoy_pids.iter().map(|p| p.map_or(0, rss_kib)).collect();

    // Warm up both paths (VM JIT, connection pools), then alternate bare/sluice each round.
    for port in [BARE_PORT, SLUICE_PORT] {
        check_request(port, &key, &provider_key, &body)?;
        wrk(&lua, port, 4, "2s")?;
    }
    let mut one_conn: [Vec<WrkResult>; 2] = [Vec::new(), Vec::new()];
    let mut saturated: [Vec<WrkResult>; 2] = [Vec::new(), Vec::new()];
    let mut ttft: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        for (i, port) in [BARE_PORT, SLUICE_PORT].into_iter().enumerate() {
            eprintln!(
                "xtask: bench round {} / {rounds}: {} ",
                round + 1,
                if i == 0 { "bare Envoy" } else { "Envoy+Sluice" }
            );
            one_conn[i].push(wrk(&lua, port, 1, duration)?);
            saturated[i].push(wrk(&lua, port, 32, duration)?);
            ttft[i].extend(time_to_first_token(port, &key, &provider_key, &stream_body, ttft_requests / rounds)?);
        }
    }
    let rss_after: Vec<u64> = envoy_pids.iter().map(|p| p.map_or(0, rss_kib)).collect();

    let med = |v: &[WrkResult], f: fn(&WrkResult) -> f64| median(v.iter().map(f).collect());
    let bare1 = (med(&one_conn[0], |r| r.p50_us), med(&one_conn[0], |r| r.p99_us), med(&one_conn[0], |r| r.rps));
    let sl1 = (med(&one_conn[1], |r| r.p50_us), med(&one_conn[1], |r| r.p99_us), med(&one_conn[1], |r| r.rps));
    let bare_sat = (med(&saturated[0], |r| r.rps), med(&saturated[0], |r| r.p50_us), med(&saturated[0], |r| r.p99_us));
    let sl_sat = (med(&saturated[1], |r| r.rps), med(&saturated[1], |r| r.p50_us), med(&saturated[1], |r| r.p99_us));
    let (bare_ttft, sl_ttft) = (percentile(&mut ttft[0].clone(), 50.0), percentile(&mut ttft[1].clone(), 50.0));
    let (bare_ttft99, sl_ttft99) = (percentile(&mut ttft[0].clone(), 99.0), percentile(&mut ttft[1].clone(), 99.0));

    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let ratio = sl_sat.0 / bare_sat.0.max(1.0);
    let added_p50 = sl1.0 - bare1.0;
    let added_p99 = sl1.1 - bare1.1;
    let added_ttft = sl_ttft - bare_ttft;
    let mem_ratio =
        rss_after.get(1).copied().unwrap_or(0) as f64 / rss_after.first().copied().unwrap_or(1).max(1) as f64;
    let report = format!(
        "Measured {date} on this machine ({cores} cores), `cargo xtask bench{quick_flag}`: {rounds} round(s), bare and Sluice alternating, \
each Envoy with `--concurrency 1`, mock provider with 1 worker, wrk 1 thread; medians over rounds.\n\n\
| what | bare Envoy | Envoy+Sluice | result | target |\n|---|---|---|---|---|\n\
| throughput at saturation (32 connections), req/s | {:.0} | {:.0} | ratio **{ratio:.3}** | ≥ 0.85 ({}) |\n\
| one connection, p50 latency | {:.0} µs | {:.0} µs | added **{added_p50:.0} µs** | ≤ 100 µs ({}) |\n\
| one connection, p99 latency | {:.0} µs | {:.0} µs | added **{added_p99:.0} µs** | ≤ 250 µs ({}) |\n\
| one connection, req/s | {:.0} | {:.0} | ratio {:.3} | — |\n\
| saturation p50 / p99 latency | {:.0} / {:.0} µs | {:.0} / {:.0} µs | — | — |\n\
| streaming, time to first token p50 ({} streams each) | {:.0} µs | {:.0} µs | added **{added_ttft:.0} µs** | ≤ 500 µs ({}) |\n\
| streaming, time to first token p99 | {:.0} µs | {:.0} µs | added {:.0} µs | — |\n\
| Envoy RSS after the run (before: {} / {} KiB) | {} KiB | {} KiB | ratio {mem_ratio:.2} | ≤ 1.5 ({}) |\n",
        bare_sat.0,
        sl_sat.0,
        verdict(ratio >= 0.85),
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
        rss_before.first().copied().unwrap_or(0),
        rss_before.get(1).copied().unwrap_or(0),
        rss_after.first().copied().unwrap_or(0),
        rss_after.get(1).copied().unwrap_or(0),
        verdict(mem_ratio <= 1.5),
        date = proc::output("date", &["-u", "+%Y-%m-%d %H:%M UTC"], &[]).unwrap_or_default().trim(),
        cores = std::thread::available_parallelism().map_or(0, |n| n.get()),
        quick_flag = if quick { " --quick" } else { "" },
    );
    println!("\n{report}");
    write_report(&root().join("BENCHMARKS.md"), &report)?;
    Ok(())
}

fn ensure_wrk() -> Result<(), String> {
    if proc::output("wrk", &["--version"], &[]).is_ok()
        || Command::new("wrk").arg("-v").output().is_ok_and(|o| !o.stdout.is_empty() || !o.stderr.is_empty())
    {
        return Ok(());
    }
    eprintln!("xtask: installing wrk from Debian's packages");
    proc::run("apt-get", &["update", "-qq"], &[])?;
    proc::run("apt-get", &["install", "-y", "-qq", "wrk"], &[])
}

fn check_request(port: u16, key: &str, provider_key: &str, body: &str) -> Result<(), String> {
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

fn wrk(script: &Path, port: u16, connections: u32, duration: &str) -> Result<WrkResult, String> {
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
    let mut result = WrkResult::default();
    for line in out.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            result.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = line.strip_prefix("50%") {
            result.p50_us = parse_duration_us(v.trim());
        } else if let Some(v) = line.strip_prefix("99%") {
            result.p99_us = parse_duration_us(v.trim());
        }
    }
    Ok(result)
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

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
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
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    let block = format!("{BEGIN}\n{report}{END}");
    let updated = match (existing.find(BEGIN), existing.find(END)) {
        (Some(b), Some(e)) if e > b => {
            format!("{}{block}{}", existing.get(..b).unwrap_or(""), existing.get(e + END.len()..).unwrap_or(""))
        }
        _ => format!("{existing}\n{block}\n"),
    };
    std::fs::write(path, updated).map_err(|e| format!("{}: {e}", path.display()))
}

/// A ~1 KB chat request, like a short conversation.
fn chat_body(stream: bool) -> String {
    let filler = "Summarise the following meeting notes in three bullet points. ".repeat(14);
    format!(
        r#"{{"model":"gpt-4o","stream":{stream},"max_tokens":256,"messages":[{{"role":"system","content":"You are a concise assistant."}},{{"role":"user","content":"{filler}"}}]}}"#
    )
}

fn wrk_script(key: &str, body: &str, provider_key: &str) -> String {
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

/// Bare Envoy: same listener settings, router only, static route to the same mock. The
/// provider key comes from a request header the load generator sends (bare Envoy has no way
/// to inject it), which the route moves into `Authorization`.
fn bare_envoy_config() -> String {
    format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {BARE_ADMIN}}}}}
static_resources:
  listeners:
    - name: bare
      address: {{socket_address: {{address: 127.0.0.1, port_value: {BARE_PORT}}}}}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: bare
                use_remote_address: true
                route_config:
                  virtual_hosts:
                    - name: all
                      domains: ["*"]
                      routes:
                        - match: {{prefix: /}}
                          route: {{cluster: mock, timeout: 600s}}
                          request_headers_to_add:
                            - header: {{key: authorization, value: "%REQ(x-bench-provider-key)%"}}
                              append_action: OVERWRITE_IF_EXISTS_OR_ADD
                http_filters:
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
