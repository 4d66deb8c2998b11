//! `cargo xtask bench-native [--quick]`: the floor of the native build (issue 15). Three Envoys
//! doing the same work per request (`authorization` := `x-bench-provider-key`), in one run,
//! alternating each round:
//!
//! - bare Envoy: the route's `request_headers_to_add`;
//! - Envoy + the no-op wasm filter (`tests/noop-filter`, on V8, as `cargo xtask bench` runs it);
//! - Envoy + the native no-op module (`tests/native-noop`, `envoy.filters.http.dynamic_modules`).
//!
//! Each with `--concurrency 1`, in front of one upstream Envoy answering with a
//! `direct_response` (cheaper than the mock provider, so more of the machine goes to the Envoy
//! measured). wrk, 1 thread, 32 connections, a GET without a body. Per Envoy and round: req/s
//! and Envoy's own CPU per request (utime + stime from /proc); the table gives the median and
//! the range over the rounds, and goes to stdout and BENCHMARKS.md (between its native-floor
//! markers). Builds only the two no-op filters.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::bench::{WrkResult, ensure_wrk, median, rss_kib, write_block, wrk};
use crate::proc::{self, root};
use crate::setup;
use crate::supervise::Children;

const UPSTREAM_PORT: u16 = 18_110;
const UPSTREAM_ADMIN: u16 = 18_910;
/// The Envoys measured, in the order each round runs them.
const PORTS: [u16; 3] = [18_100, 18_101, 18_102];
const ADMINS: [u16; 3] = [18_911, 18_912, 18_913];
const NAMES: [&str; 3] = ["bare Envoy", "Envoy + no-op wasm filter", "Envoy + native no-op module"];
const BARE: usize = 0;
const WASM: usize = 1;
const NATIVE: usize = 2;

const BEGIN: &str = "<!-- native-floor:begin -->";
const END: &str = "<!-- native-floor:end -->";

/// The filter an Envoy runs.
enum Filter<'a> {
    None,
    Wasm(&'a Path),
    Native(&'a Path),
}

pub fn bench_native(args: &[String]) -> Result<(), String> {
    let quick = args.iter().any(|a| a == "--quick");
    let (duration, rounds) = if quick { ("3s", 1) } else { ("10s", 7) };
    let envoy = setup::envoy()?;
    ensure_wrk()?;
    let cargo = proc::cargo();
    proc::step(
        "build the no-op wasm filter (wasm32-wasip1, release)",
        proc::run(
            &cargo,
            &["build", "--quiet", "--release", "--target", "wasm32-wasip1", "-p", "sluice-noop-filter"],
            &[],
        ),
    )?;
    proc::step(
        "build the native no-op module (release)",
        proc::run(&cargo, &["build", "--quiet", "--release", "-p", "sluice-native-noop"], &[]),
    )?;
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root().join("target"));
    let wasm = target.join("wasm32-wasip1/release/sluice_noop_filter.wasm");
    let native = target.join("release/libsluice_native_noop.so");

    let dir = root().join(".sluice/bench-native");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let lua = dir.join("get.lua");
    std::fs::write(
        &lua,
        "wrk.method = \"GET\"\nwrk.headers[\"x-bench-provider-key\"] = \"Bearer bench-provider-key\"\n",
    )
    .map_err(|e| e.to_string())?;

    let mut configs = vec![(dir.join("upstream.yaml"), UPSTREAM_ADMIN, upstream_config())];
    for (i, filter) in [Filter::None, Filter::Wasm(&wasm), Filter::Native(&native)].iter().enumerate() {
        let (port, admin) = (PORTS.get(i).copied().unwrap_or(0), ADMINS.get(i).copied().unwrap_or(0));
        configs.push((dir.join(format!("envoy-{port}.yaml")), admin, front_config(port, admin, filter)));
    }
    let mut children = Children(Vec::new());
    for (n, (yaml, admin, text)) in configs.iter().enumerate() {
        std::fs::write(yaml, text).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(dir.join(format!("envoy-{admin}.log"))).map_err(|e| e.to_string())?;
        children.0.push(
            Command::new(&envoy)
                .args(["-c", &yaml.to_string_lossy(), "--disable-hot-restart", "--concurrency", "1"])
                .args(["--log-level", "info", "--base-id", &(20 + n).to_string()])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| format!("envoy: {e}"))?,
        );
        crate::quickstart::wait_until_ready(&format!("127.0.0.1:{admin}"), Duration::from_secs(30))?;
    }
    // The native module must have been loaded at Envoy's own ABI version.
    let native_log = std::fs::read_to_string(dir.join(format!("envoy-{}.log", ADMINS[NATIVE]))).unwrap_or_default();
    if !native_log.contains("Dynamic module ABI version v0.2.0 matched.") {
        return Err("the native module's Envoy did not log `Dynamic module ABI version v0.2.0 matched.`".into());
    }
    // Children: the upstream, then the Envoys in PORTS order.
    let pids: Vec<u32> = (1..=PORTS.len()).map(|i| children.0.get(i).map_or(0, Child::id)).collect();

    for port in PORTS {
        check(port)?;
        wrk(&lua, port, 4, "2s", 0)?;
    }
    let load_before = loadavg();
    let mut results: [Vec<WrkResult>; 3] = Default::default();
    for round in 0..rounds {
        for (i, port) in PORTS.into_iter().enumerate() {
            eprintln!("xtask: bench-native round {} / {rounds}: {}", round + 1, NAMES.get(i).copied().unwrap_or("?"));
            results[i].push(wrk(&lua, port, 32, duration, pids.get(i).copied().unwrap_or(0))?);
        }
    }
    let load_after = loadavg();
    let rss: Vec<u64> = pids.iter().map(|p| rss_kib(*p)).collect();

    let stat = |i: usize, f: fn(&WrkResult) -> f64| {
        let v: Vec<f64> = results[i].iter().map(f).collect();
        let (lo, hi) = v.iter().fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
        (median(v), lo, hi)
    };
    let rps = |r: &WrkResult| r.rps;
    let cpu = |r: &WrkResult| r.envoy_cpu_us_per_request;
    // What a filter adds, paired per round (the same minute of a shared machine): median and
    // range of (this Envoy's CPU per request − bare Envoy's) over the rounds.
    let added = |i: usize| {
        let v: Vec<f64> = results[i]
            .iter()
            .zip(&results[BARE])
            .map(|(r, b)| r.envoy_cpu_us_per_request - b.envoy_cpu_us_per_request)
            .collect();
        let (lo, hi) = v.iter().fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
        (median(v), lo, hi)
    };
    let mut rows = String::new();
    for (i, name) in NAMES.iter().enumerate() {
        let (r, r_lo, r_hi) = stat(i, rps);
        let (c, c_lo, c_hi) = stat(i, cpu);
        let (a, a_lo, a_hi) = added(i);
        let added = if i == BARE { "—".to_owned() } else { format!("{a:+.1} ({a_lo:+.1} to {a_hi:+.1}) µs") };
        rows.push_str(&format!(
            "| {name} | {r:.0} ({r_lo:.0}–{r_hi:.0}) | {c:.1} ({c_lo:.1}–{c_hi:.1}) µs | {added} | {} KiB |\n",
            rss.get(i).copied().unwrap_or(0)
        ));
    }
    let (wasm_added, native_added) = (added(WASM).0, added(NATIVE).0);
    let report = format!(
        "Measured {date} on this machine ({cores} cores), `cargo xtask bench-native{quick_flag}`: {rounds} round(s) of \
{duration}, the three Envoys alternating, each `--concurrency 1` in front of one upstream Envoy (`direct_response`), wrk 1 thread \
at 32 connections, a GET carrying `x-bench-provider-key`; median (min–max over rounds). Load average {load_before} before, \
{load_after} after.\n\n\
| Envoy | req/s | Envoy CPU per request (user + system) | added CPU vs bare, paired per round | RSS after |\n|---|---|---|---|---|\n\
{rows}\n\
Median of the per-round differences: the native module adds {native_added:.1} µs of CPU per request over bare Envoy, the \
wasm filter {wasm_added:.1} µs.\n",
        date = proc::output("date", &["-u", "+%Y-%m-%d %H:%M UTC"], &[]).unwrap_or_default().trim(),
        cores = std::thread::available_parallelism().map_or(0, |n| n.get()),
        quick_flag = if quick { " --quick" } else { "" },
    );
    println!("\n{report}");
    write_block(&root().join("BENCHMARKS.md"), BEGIN, END, &report)
}

/// One request through an Envoy: 200, and the key arrived upstream as `authorization`.
fn check(port: u16) -> Result<(), String> {
    let (status, _) = crate::quickstart::http(
        &format!("127.0.0.1:{port}"),
        "GET",
        "/v1/chat/completions",
        &[("x-bench-provider-key", "Bearer bench-provider-key")],
        "",
    )?;
    if status != 200 {
        return Err(format!("bench-native request to :{port} failed: HTTP {status}"));
    }
    Ok(())
}

/// The first three fields of /proc/loadavg (1, 5 and 15 minutes).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" / "))
        .unwrap_or_default()
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
                          direct_response: {{status: 200, body: {{inline_string: "ok"}}}}
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
