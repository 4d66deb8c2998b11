//! `cargo xtask bench-native [--quick] [--quiet-usage]`: the native build against the wasm build
//! (issue 15).
//! Five Envoys, the same request each, in one run, alternating each round:
//!
//! - bare Envoy: the route's `request_headers_to_add` moves `x-bench-provider-key` into
//!   `authorization`;
//! - Envoy + the no-op wasm filter (`tests/noop-filter`, on V8) doing that move;
//! - Envoy + the native no-op module (`tests/native-noop`) doing that move;
//! - Envoy + Sluice, the wasm build, and Envoy + Sluice, the native build (`libsluice_filter.so`),
//!   each from `sluice envoy-config` (`--wasm` / `--native`) for the same config: one key with
//!   RPM, TPM and budget limits that never trigger, so every request pays for the key check, the
//!   limit and budget reservations, the body parse and rewrite, usage and settlement.
//!
//! Each with `--concurrency 1`, in front of one upstream Envoy answering every request with a
//! canned chat completion (a `direct_response` with usage: cheaper than the mock provider, so
//! more of the machine goes to the Envoy measured). wrk, 1 thread, 32 connections, a ~1 KB chat
//! POST. Per Envoy and round: req/s and Envoy's own CPU per request (utime + stime from /proc);
//! the table gives the median and the range over the rounds, and goes to stdout and
//! BENCHMARKS.md (between its native-floor markers).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::bench::{WrkResult, chat_body, check_request, ensure_wrk, median, rss_kib, write_block, wrk, wrk_script};
use crate::proc::{self, root};
use crate::setup;
use crate::supervise::Children;

const UPSTREAM_PORT: u16 = 18_110;
const UPSTREAM_ADMIN: u16 = 18_910;
/// The Envoys measured, in the order each round runs them.
const PORTS: [u16; 5] = [18_100, 18_101, 18_102, 18_103, 18_104];
const ADMINS: [u16; 5] = [18_911, 18_912, 18_913, 18_914, 18_915];
const NAMES: [&str; 5] = [
    "bare Envoy",
    "Envoy + no-op wasm filter",
    "Envoy + native no-op module",
    "Envoy + Sluice (wasm)",
    "Envoy + Sluice (native)",
];
const BARE: usize = 0;
const WASM: usize = 1;
const NATIVE: usize = 2;
const SLUICE_WASM: usize = 3;
const SLUICE_NATIVE: usize = 4;

const BEGIN: &str = "<!-- native-floor:begin -->";
const END: &str = "<!-- native-floor:end -->";
/// What the upstream answers: an OpenAI chat completion with usage, as Sluice meters it.
const COMPLETION: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":0,"model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":"Three bullet points."},"finish_reason":"stop"}],"usage":{"prompt_tokens":250,"completion_tokens":20,"total_tokens":270}}"#;

/// The filter a reference Envoy runs.
enum Filter<'a> {
    None,
    Wasm(&'a Path),
    Native(&'a Path),
}

pub fn bench_native(args: &[String]) -> Result<(), String> {
    let quick = args.iter().any(|a| a == "--quick");
    // `--quiet-usage`: the Sluice Envoys log at `warn`, so standalone mode's usage lines (info)
    // are not written, as in `cargo xtask bench`: what the filter costs without its log I/O.
    let quiet_usage = args.iter().any(|a| a == "--quiet-usage");
    let (duration, rounds) = if quick { ("3s", 1) } else { ("10s", 7) };
    // Builds both filters (wasm and native), both no-op floors and the CLI.
    let tools = setup::setup()?;
    ensure_wrk()?;

    let dir = root().join(".sluice/bench-native");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let provider_key = format!("bench-provider-{}", proc::random_hex()?);
    let env = [("BENCH_PROVIDER_KEY", provider_key.as_str())];

    // Sluice's config and key, as `cargo xtask bench` makes them, pointed at the upstream Envoy.
    let config = dir.join("config.yaml");
    std::fs::write(&config, sluice_config()).map_err(|e| e.to_string())?;
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
    let body = chat_body(false);
    let script = dir.join("post.lua");
    std::fs::write(&script, wrk_script(&key, &body, &provider_key)).map_err(|e| e.to_string())?;

    let mut configs = vec![(dir.join("upstream.yaml"), UPSTREAM_ADMIN)];
    std::fs::write(dir.join("upstream.yaml"), upstream_config()).map_err(|e| e.to_string())?;
    for (i, filter) in
        [Filter::None, Filter::Wasm(&tools.noop_wasm), Filter::Native(&tools.native_noop)].iter().enumerate()
    {
        let (port, admin) = (PORTS.get(i).copied().unwrap_or(0), ADMINS.get(i).copied().unwrap_or(0));
        let yaml = dir.join(format!("envoy-{port}.yaml"));
        std::fs::write(&yaml, front_config(port, admin, filter)).map_err(|e| e.to_string())?;
        configs.push((yaml, admin));
    }
    for (i, flag, module) in [(SLUICE_WASM, "--wasm", &tools.wasm), (SLUICE_NATIVE, "--native", &tools.native)] {
        let (port, admin) = (PORTS.get(i).copied().unwrap_or(0), ADMINS.get(i).copied().unwrap_or(0));
        let yaml = dir.join(format!("envoy-{port}.yaml"));
        let (listen, admin_s) = (format!("127.0.0.1:{port}"), admin.to_string());
        let args = [
            "envoy-config",
            "-c",
            &config_s,
            flag,
            &module.to_string_lossy(),
            "--out",
            &yaml.to_string_lossy(),
            "--listen",
            &listen,
            "--admin-port",
            &admin_s,
        ];
        proc::run(&cli, &args, &env)?;
        configs.push((yaml, admin));
    }
    let mut children = Children(Vec::new());
    for (n, (yaml, admin)) in configs.iter().enumerate() {
        // configs: the upstream, then the Envoys in PORTS order.
        let sluice = n.checked_sub(1).is_some_and(|i| i >= SLUICE_WASM);
        let level = if sluice && quiet_usage { "warn" } else { "info" };
        let log = std::fs::File::create(dir.join(format!("envoy-{admin}.log"))).map_err(|e| e.to_string())?;
        children.0.push(
            Command::new(&tools.envoy)
                .args(["-c", &yaml.to_string_lossy(), "--disable-hot-restart", "--concurrency", "1"])
                // Info: the ABI line below. Sluice's usage lines are logged by both builds alike.
                .args(["--log-level", level, "--base-id", &(20 + n).to_string()])
                .envs(env)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| format!("envoy: {e}"))?,
        );
        crate::quickstart::wait_until_ready(&format!("127.0.0.1:{admin}"), Duration::from_secs(30))?;
    }
    // Both native modules must have been loaded at Envoy's own ABI version (Sluice's is checked
    // only when its Envoy logs at info).
    let checked = if quiet_usage { &[NATIVE][..] } else { &[NATIVE, SLUICE_NATIVE][..] };
    for &i in checked {
        let log = std::fs::read_to_string(dir.join(format!("envoy-{}.log", ADMINS[i]))).unwrap_or_default();
        if !log.contains("Dynamic module ABI version v0.2.0 matched.") {
            return Err(format!("{}: Envoy did not log `Dynamic module ABI version v0.2.0 matched.`", NAMES[i]));
        }
    }
    // Children: the upstream, then the Envoys in PORTS order.
    let pids: Vec<u32> = (1..=PORTS.len()).map(|i| children.0.get(i).map_or(0, Child::id)).collect();

    for port in PORTS {
        check_request(port, &key, &provider_key, &body)?;
        wrk(&script, port, 4, "2s", 0)?;
    }
    let load_before = loadavg();
    let mut results: [Vec<WrkResult>; 5] = Default::default();
    for round in 0..rounds {
        for (i, port) in PORTS.into_iter().enumerate() {
            eprintln!("xtask: bench-native round {} / {rounds}: {}", round + 1, NAMES.get(i).copied().unwrap_or("?"));
            results[i].push(wrk(&script, port, 32, duration, pids.get(i).copied().unwrap_or(0))?);
        }
    }
    let load_after = loadavg();
    let rss: Vec<u64> = pids.iter().map(|p| rss_kib(*p)).collect();
    // Each Sluice Envoy recorded usage for what it served (standalone mode logs one line each).
    for i in [SLUICE_WASM, SLUICE_NATIVE].into_iter().filter(|_| !quiet_usage) {
        let log = std::fs::read_to_string(dir.join(format!("envoy-{}.log", ADMINS[i]))).unwrap_or_default();
        if !log.contains("sluice.usage {") {
            return Err(format!("{}: no usage record in its log", NAMES[i]));
        }
    }

    let stat = |i: usize, f: fn(&WrkResult) -> f64| {
        let v: Vec<f64> = results[i].iter().map(f).collect();
        let (lo, hi) = v.iter().fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
        (median(v), lo, hi)
    };
    let rps = |r: &WrkResult| r.rps;
    let cpu = |r: &WrkResult| r.envoy_cpu_us_per_request;
    // What a filter adds, paired per round (the same minute of a shared machine): median and
    // range of (this Envoy's CPU per request − the baseline Envoy's) over the rounds.
    let added_over = |i: usize, base: usize| {
        let v: Vec<f64> = results[i]
            .iter()
            .zip(&results[base])
            .map(|(r, b)| r.envoy_cpu_us_per_request - b.envoy_cpu_us_per_request)
            .collect();
        let (lo, hi) = v.iter().fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
        (median(v), lo, hi)
    };
    let mut rows = String::new();
    for (i, name) in NAMES.iter().enumerate() {
        let (r, r_lo, r_hi) = stat(i, rps);
        let (c, c_lo, c_hi) = stat(i, cpu);
        let (a, a_lo, a_hi) = added_over(i, BARE);
        let added = if i == BARE { "—".to_owned() } else { format!("{a:+.1} ({a_lo:+.1} to {a_hi:+.1}) µs") };
        rows.push_str(&format!(
            "| {name} | {r:.0} ({r_lo:.0}–{r_hi:.0}) | {c:.1} ({c_lo:.1}–{c_hi:.1}) µs | {added} | {} KiB |\n",
            rss.get(i).copied().unwrap_or(0)
        ));
    }
    let added = |i: usize| added_over(i, BARE).0;
    let (own_wasm, own_native) = (added_over(SLUICE_WASM, WASM).0, added_over(SLUICE_NATIVE, NATIVE).0);
    let report = format!(
        "Measured {date} on this machine ({cores} cores), `cargo xtask bench-native{quick_flag}`: {rounds} round(s) of \
{duration}, the five Envoys alternating, each `--concurrency 1` in front of one upstream Envoy (`direct_response`: a canned \
chat completion with usage), wrk 1 thread at 32 connections, a ~1 KB chat POST; median (min–max over rounds). Load \
average {load_before} before, {load_after} after.\n\n\
| Envoy | req/s | Envoy CPU per request (user + system) | added CPU vs bare, paired per round | RSS after |\n|---|---|---|---|---|\n\
{rows}\n\
Median of the per-round differences over bare Envoy: the native no-op module {native:+.1} µs of CPU per request, the wasm \
no-op filter {wasm:+.1} µs; Sluice native {sluice_native:+.1} µs, Sluice wasm {sluice_wasm:+.1} µs. Sluice's own work over its \
build's no-op (paired per round): native {own_native:+.1} µs, wasm {own_wasm:+.1} µs.\n",
        date = proc::output("date", &["-u", "+%Y-%m-%d %H:%M UTC"], &[]).unwrap_or_default().trim(),
        cores = std::thread::available_parallelism().map_or(0, |n| n.get()),
        quick_flag = match (quick, quiet_usage) {
            (false, false) => "",
            (true, false) => " --quick",
            (false, true) => " --quiet-usage",
            (true, true) => " --quick --quiet-usage",
        },
        native = added(NATIVE),
        wasm = added(WASM),
        sluice_native = added(SLUICE_NATIVE),
        sluice_wasm = added(SLUICE_WASM),
    );
    println!("\n{report}");
    write_block(&root().join("BENCHMARKS.md"), BEGIN, END, &report)
}

/// The first three fields of /proc/loadavg (1, 5 and 15 minutes).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" / "))
        .unwrap_or_default()
}

/// Sluice's config: one deployment on the upstream Envoy; the key is appended by the CLI.
fn sluice_config() -> String {
    format!(
        "model_list:\n  - model_name: gpt-4o\n    litellm_params:\n      model: openai/gpt-4o\n      api_base: http://127.0.0.1:{UPSTREAM_PORT}/v1\n      api_key: os.environ/BENCH_PROVIDER_KEY\n    model_info:\n      input_cost_per_token: 0.0000025\n      output_cost_per_token: 0.00001\nkeys:\n"
    )
}

fn upstream_config() -> String {
    format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {UPSTREAM_ADMIN}}}}}
static_resources:
  listeners:
    - name: upstream
      address: {{socket_address: {{address: 127.0.0.1, port_value: {UPSTREAM_PORT}}}}}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: upstream
                route_config:
                  virtual_hosts:
                    - name: all
                      domains: ["*"]
                      routes:
                        - match: {{prefix: /}}
                          direct_response: {{status: 200, body: {{inline_string: '{COMPLETION}'}}}}
                          response_headers_to_add:
                            - header: {{key: content-type, value: application/json}}
                http_filters:
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#
    )
}

fn front_config(port: u16, admin: u16, filter: &Filter) -> String {
    let (move_key, http_filter) = match filter {
        Filter::None => (
            r#"
                          request_headers_to_add:
                            - header: {key: authorization, value: "%REQ(x-bench-provider-key)%"}
                              append_action: OVERWRITE_IF_EXISTS_OR_ADD"#
                .to_owned(),
            String::new(),
        ),
        Filter::Wasm(path) => (
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
        Filter::Native(path) => (
            String::new(),
            format!(
                r#"
                  - name: envoy.filters.http.dynamic_modules
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
                      dynamic_module_config: {{module: {{local: {{filename: "{}"}}}}}}
                      filter_name: sluice-noop"#,
                path.display()
            ),
        ),
    };
    format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:
    - name: front
      address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: front
                route_config:
                  virtual_hosts:
                    - name: all
                      domains: ["*"]
                      routes:
                        - match: {{prefix: /}}
                          route: {{cluster: upstream}}{move_key}
                http_filters:{http_filter}
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
    - name: upstream
      type: STATIC
      load_assignment:
        cluster_name: upstream
        endpoints:
          - lb_endpoints:
              - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {UPSTREAM_PORT}}}}}}}
"#
    )
}
