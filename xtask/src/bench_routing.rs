//! `cargo xtask bench-routing [--quick] [--write] [--no-pin] [--prebuilt DIR]`: issue 12's two
//! figures for LiteLLM's routing strategies, measured the way `cargo xtask bench` measures.
//!
//! 1. **Each strategy's cost on the hot path.** A model group `pool` of two deployments (distinct
//!    `model_info.id`, different prices, rpm and tpm high enough never to refuse) on one upstream
//!    Envoy answering with `direct_response` (the bench's); one front Envoy per strategy and
//!    Sluice build (`--concurrency 1`, pinned to core 0; wrk and the upstream on core 1), plus
//!    bare Envoy for the ratio. Rounds alternate the Envoys in a rotating order; each run is
//!    chat at 32 connections, the Envoy's CPU per request from /proc. Figures: median (min–max)
//!    over rounds, and the CPU each strategy adds over `simple-shuffle`, paired per round.
//! 2. **Latency-based routing's split.** The same group over a 20 ms and a 200 ms deployment (two
//!    upstream Envoys, the fault filter delaying the same answer); a few hundred requests from 4
//!    concurrent clients, counted at each upstream (its `downstream_rq_completed`), under
//!    `latency-based-routing` and, for contrast, `simple-shuffle`.
//!
//! Nothing is built: the artifacts of the target directory (`--prebuilt DIR`, else
//! `CARGO_TARGET_DIR` or `target/`) are used as they are; a Sluice build that is missing is
//! reported as such. The report goes to stdout, and to BENCHMARKS.md between the
//! routing-results markers only with `--write`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::bench::{self, ENVOY_CORE, LOAD_CORE, WrkResult};
use crate::bench_report::{Spread, fmt, fmt_signed, spread};
use crate::envoy_yaml::{self, Filter};
use crate::proc::{self, root};
use crate::supervise::Children;

/// The hot-path upstream, and the split's fast and slow ones.
const UPSTREAM: (u16, u16) = (18_310, 18_810);
const FAST: (u16, u16) = (18_311, 18_811);
const SLOW: (u16, u16) = (18_312, 18_812);
/// Front Envoy `i` listens on `FRONT_PORT + i`, its admin on `FRONT_ADMIN + i`.
const FRONT_PORT: u16 = 18_320;
const FRONT_ADMIN: u16 = 18_840;
const FAST_MS: u64 = 20;
const SLOW_MS: u64 = 200;
/// The split's concurrent clients.
const CLIENTS: usize = 4;
/// The model group of both measurements.
const GROUP: &str = "pool";

const STRATEGIES: [&str; 5] =
    ["simple-shuffle", "least-busy", "latency-based-routing", "cost-based-routing", "usage-based-routing-v2"];
/// The reference every other strategy is paired with.
const SHUFFLE: &str = "simple-shuffle";
const LATENCY: &str = "latency-based-routing";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Build {
    Wasm,
    Native,
}

impl Build {
    fn name(self) -> &'static str {
        match self {
            Build::Wasm => "wasm",
            Build::Native => "native",
        }
    }
}

/// A front Envoy: bare (`build` None) or Sluice with one strategy, and its runs (one per round).
struct Front {
    build: Option<Build>,
    strategy: &'static str,
    port: u16,
    admin: u16,
    pid: u32,
    runs: Vec<WrkResult>,
    /// Requests each deployment (`a`, `b`) served over the whole run, warm-up included.
    served: Option<(u64, u64)>,
}

struct Options {
    quick: bool,
    write: bool,
    no_pin: bool,
    prebuilt: Option<PathBuf>,
}

fn options(args: &[String]) -> Result<Options, String> {
    let mut o = Options { quick: false, write: false, no_pin: false, prebuilt: None };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--write" => o.write = true,
            "--no-pin" => o.no_pin = true,
            "--prebuilt" => o.prebuilt = Some(it.next().ok_or("--prebuilt needs a target directory")?.into()),
            other => return Err(format!("cargo xtask bench-routing: unknown argument {other}")),
        }
    }
    Ok(o)
}

/// What the bench runs, from a target directory: Envoy, the CLI and each Sluice build (or why
/// it is missing).
struct Artifacts {
    envoy: PathBuf,
    cli: String,
    builds: Vec<(Build, Result<PathBuf, String>)>,
}

fn artifacts(prebuilt: Option<&Path>) -> Result<Artifacts, String> {
    let root = root();
    let target = match (prebuilt, std::env::var_os("CARGO_TARGET_DIR")) {
        (Some(dir), _) => dir.to_path_buf(),
        (None, Some(dir)) => PathBuf::from(dir),
        (None, None) => root.join("target"),
    };
    let envoy = bench::envoy_bin()?;
    let cli = ["debug/sluice", "release/sluice"]
        .iter()
        .map(|p| target.join(p))
        .find(|p| p.exists())
        .ok_or_else(|| format!("no sluice CLI in {} (cargo build -p sluice-control-plane)", target.display()))?;
    let found = |path: PathBuf, build: &str| {
        if path.exists() { Ok(path) } else { Err(format!("not built: no {} ({build})", path.display())) }
    };
    let builds = vec![
        (
            Build::Wasm,
            found(
                target.join("wasm32-wasip1/release/sluice_filter.wasm"),
                "cargo build --release --target wasm32-wasip1 -p sluice-filter",
            ),
        ),
        (Build::Native, found(target.join("release/libsluice_filter.so"), "cargo build --release -p sluice-filter")),
    ];
    if builds.iter().all(|(_, b)| b.is_err()) {
        let why: Vec<&str> = builds.iter().filter_map(|(_, b)| b.as_ref().err().map(String::as_str)).collect();
        return Err(format!("no Sluice build to measure: {}", why.join("; ")));
    }
    Ok(Artifacts { envoy, cli: cli.to_string_lossy().into_owned(), builds })
}

pub fn bench_routing(args: &[String]) -> Result<(), String> {
    let opts = options(args)?;
    let (duration, rounds, split_requests) = if opts.quick { ("2s", 1, 100) } else { ("5s", 3, 400) };
    let tools = artifacts(opts.prebuilt.as_deref())?;
    bench::ensure_wrk()?;
    let dir = root().join(".sluice/bench-routing");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let provider_key = format!("bench-provider-{}", proc::random_hex()?);
    let env = [("BENCH_PROVIDER_KEY", provider_key.as_str())];

    // Counted before this process pins itself to one core.
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let pin = !opts.no_pin && cores >= 2 && bench::taskset_works();
    if pin {
        // wrk, the upstreams and the split's clients (this process) share the load core.
        proc::output("taskset", &["-a", "-c", "-p", LOAD_CORE, &std::process::id().to_string()], &[])?;
    }
    let core = pin.then_some(ENVOY_CORE);
    let mut children = Children(Vec::new());
    let mut base_id = 60;
    let mut start = |yaml: &Path, admin: u16, core: Option<&str>, children: &mut Children| {
        base_id += 1;
        bench::start_envoy(&tools.envoy, yaml, admin, base_id, core, &dir, &env, children)
    };
    for (name, (port, admin), text) in [
        ("upstream", UPSTREAM, envoy_yaml::upstream(UPSTREAM.0, UPSTREAM.1)),
        ("upstream-fast", FAST, envoy_yaml::delayed_upstream(FAST.0, FAST.1, FAST_MS)),
        ("upstream-slow", SLOW, envoy_yaml::delayed_upstream(SLOW.0, SLOW.1, SLOW_MS)),
    ] {
        let yaml = dir.join(format!("{name}-{port}.yaml"));
        bench::write(&yaml, &text)?;
        start(&yaml, admin, None, &mut children).map_err(|e| format!("{name} Envoy: {e}"))?;
    }

    // The group on the one upstream: `a` at gpt-4o's prices, `b` cheaper (cost-based routing
    // sends it everything); one key for every strategy.
    let hot = configs(
        &dir,
        "hot",
        &[("a", UPSTREAM.0, 0.000_002_5, 0.000_01), ("b", UPSTREAM.0, 0.000_000_15, 0.000_000_6)],
        &STRATEGIES,
        &tools.cli,
        &env,
    )?;
    // The split's group: `a` fast, `b` slow, the same prices.
    let split = configs(
        &dir,
        "split",
        &[("a", FAST.0, 0.000_002_5, 0.000_01), ("b", SLOW.0, 0.000_002_5, 0.000_01)],
        &[LATENCY, SHUFFLE],
        &tools.cli,
        &env,
    )?;

    // The front Envoys: bare, then each build's strategies; the split's after them.
    let mut next = 0u16;
    let mut slot = || {
        next += 1;
        (FRONT_PORT + next - 1, FRONT_ADMIN + next - 1)
    };
    let mut fronts = Vec::new();
    let (port, admin) = slot();
    let yaml = dir.join(format!("envoy-{port}.yaml"));
    bench::write(&yaml, &envoy_yaml::front(port, admin, UPSTREAM.0, &Filter::None))?;
    let pid = start(&yaml, admin, core, &mut children).map_err(|e| format!("bare Envoy: {e}"))?;
    fronts.push(Front { build: None, strategy: "", port, admin, pid, runs: Vec::new(), served: None });
    let mut missing: Vec<(Build, String)> = Vec::new();
    let mut split_fronts = Vec::new();
    for (build, filter) in &tools.builds {
        let filter = match filter {
            Ok(f) => f,
            Err(e) => {
                missing.push((*build, e.clone()));
                continue;
            }
        };
        let mut started = |config: &Path, strategy: &'static str| -> Result<Front, String> {
            let (port, admin) = slot();
            let yaml = dir.join(format!("envoy-{port}.yaml"));
            sluice_config(&tools.cli, config, *build, filter, &yaml, port, admin, &env)?;
            let pid = start(&yaml, admin, core, &mut children)?;
            if *build == Build::Native {
                check_native_abi(&dir, admin)?;
            }
            Ok(Front { build: Some(*build), strategy, port, admin, pid, runs: Vec::new(), served: None })
        };
        let built: Result<Vec<Front>, String> =
            hot.configs.iter().chain(&split.configs).map(|(strategy, config)| started(config, strategy)).collect();
        match built {
            Ok(mut built) => {
                split_fronts.extend(built.split_off(STRATEGIES.len()));
                fronts.extend(built);
            }
            // A build the CLI or Envoy refuses is reported, not fatal (as `cargo xtask bench`).
            Err(e) => {
                let one_line = e.split_whitespace().collect::<Vec<_>>().join(" ");
                missing.push((*build, format!("could not be run: {one_line}")));
            }
        }
    }

    // Warm up every path and check each answers as it should.
    let chat = bench::chat_body(GROUP, false, 14);
    let script = bench::write_script(&dir, "chat.lua", &chat, &hot.key, &provider_key, false)?;
    for f in &fronts {
        bench::check_request(f.port, &hot.key, &provider_key, &chat, false)?;
        bench::wrk(&script, f.port, 32, "2s", 0, false)?;
    }

    let load_before = bench::loadavg();
    for round in 0..rounds {
        for n in 0..fronts.len() {
            let i = (n + round) % fronts.len();
            let Some(f) = fronts.get_mut(i) else { continue };
            bench::wait_for_quiet_machine();
            eprintln!("xtask: bench-routing round {} / {rounds}: {}", round + 1, label(f));
            f.runs.push(bench::wrk(&script, f.port, 32, duration, f.pid, false)?);
        }
    }
    let load_after = bench::loadavg();
    for f in fronts.iter_mut().filter(|f| f.build.is_some()) {
        f.served = served(f.admin);
    }

    let split_chat = bench::chat_body(GROUP, false, 1);
    let warm = split_requests / 10;
    let mut splits = Vec::new();
    for f in &split_fronts {
        bench::check_request(f.port, &split.key, &provider_key, &split_chat, false)?;
        let (before_fast, before_slow) = (completed(FAST.1)?, completed(SLOW.1)?);
        eprintln!("xtask: bench-routing split: {} ({split_requests} requests)", label(f));
        let mut refused = send(f.port, &split.key, &provider_key, &split_chat, warm)?;
        let (mid_fast, mid_slow) = (completed(FAST.1)?, completed(SLOW.1)?);
        refused += send(f.port, &split.key, &provider_key, &split_chat, split_requests - warm)?;
        let (after_fast, after_slow) = (completed(FAST.1)?, completed(SLOW.1)?);
        splits.push(Split {
            build: f.build,
            strategy: f.strategy,
            warm: (mid_fast.saturating_sub(before_fast), mid_slow.saturating_sub(before_slow)),
            rest: (after_fast.saturating_sub(mid_fast), after_slow.saturating_sub(mid_slow)),
            refused,
        });
    }

    let mut command = "cargo xtask bench-routing".to_owned();
    for a in args {
        command.push(' ');
        command.push_str(a);
    }
    let report = render(&Report {
        command,
        rounds,
        duration,
        cores,
        pinned: pin,
        load: (load_before, load_after),
        fronts: &fronts,
        splits: &splits,
        split_requests,
        warm,
        missing: &missing,
    });
    println!("\n{report}");
    if opts.write {
        bench::write_block(&root().join("BENCHMARKS.md"), BEGIN, END, &report)?;
    }
    Ok(())
}

const BEGIN: &str = "<!-- routing-results:begin -->";
const END: &str = "<!-- routing-results:end -->";

/// One config per strategy, all with one key: (the key, (strategy, config path) each).
struct Configs {
    key: String,
    configs: Vec<(&'static str, PathBuf)>,
}

/// The group `pool` of `deployments` (id, upstream port, input and output price per token),
/// under each strategy.
fn configs(
    dir: &Path,
    name: &str,
    deployments: &[(&str, u16, f64, f64)],
    strategies: &[&'static str],
    cli: &str,
    env: &[(&str, &str)],
) -> Result<Configs, String> {
    let mut base = String::from("model_list:\n");
    for (id, port, input, output) in deployments {
        base.push_str(&format!(
            "  - model_name: {GROUP}\n    litellm_params:\n      model: openai/gpt-4o\n      api_base: http://127.0.0.1:{port}/v1\n      api_key: os.environ/BENCH_PROVIDER_KEY\n      rpm: 100000000\n      tpm: 1000000000000\n    model_info:\n      id: {id}\n      input_cost_per_token: {input}\n      output_cost_per_token: {output}\n"
        ));
    }
    base.push_str(&format!("router_settings:\n  routing_strategy: {SHUFFLE}\nkeys:\n"));
    let path = dir.join(format!("{name}-base.yaml"));
    bench::write(&path, &base)?;
    // Limits high enough never to trigger: every request pays for the checks.
    let limits = ["--rpm", "100000000", "--tpm", "1000000000000"];
    let key = bench::new_key(cli, &path.to_string_lossy(), &format!("routing-{name}"), &limits, env)?;
    let with_key = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut configs = Vec::new();
    for strategy in strategies {
        let config = dir.join(format!("{name}-{strategy}.yaml"));
        let text =
            with_key.replacen(&format!("routing_strategy: {SHUFFLE}"), &format!("routing_strategy: {strategy}"), 1);
        bench::write(&config, &text)?;
        configs.push((*strategy, config));
    }
    Ok(Configs { key, configs })
}

/// `sluice envoy-config` for one front Envoy, as operators get it.
#[allow(clippy::too_many_arguments)]
fn sluice_config(
    cli: &str,
    config: &Path,
    build: Build,
    filter: &Path,
    out: &Path,
    port: u16,
    admin: u16,
    env: &[(&str, &str)],
) -> Result<(), String> {
    let flag = match build {
        Build::Wasm => "--wasm",
        Build::Native => "--native",
    };
    let (config, filter, out) = (config.to_string_lossy(), filter.to_string_lossy(), out.to_string_lossy());
    let (listen, admin) = (format!("127.0.0.1:{port}"), admin.to_string());
    let args =
        ["envoy-config", "-c", &config, flag, &filter, "--out", &out, "--listen", &listen, "--admin-port", &admin];
    proc::output(cli, &args, env).map(|_| ())
}

/// A dynamic module must have been loaded at Envoy's own ABI version.
fn check_native_abi(dir: &Path, admin: u16) -> Result<(), String> {
    let log = std::fs::read_to_string(dir.join(format!("envoy-{admin}.log"))).unwrap_or_default();
    if !log.contains("Dynamic module ABI version") || !log.contains("matched") {
        return Err(format!("the Envoy on admin port {admin} did not log a matched dynamic-module ABI version"));
    }
    Ok(())
}

fn label(f: &Front) -> String {
    match f.build {
        None => "bare Envoy".to_owned(),
        Some(b) => format!("{} (Sluice {})", f.strategy, b.name()),
    }
}

/// Requests an upstream Envoy has answered (its listener's `downstream_rq_completed`).
fn completed(admin: u16) -> Result<u64, String> {
    let (_, stats) = crate::quickstart::http(
        &format!("127.0.0.1:{admin}"),
        "GET",
        "/stats?filter=downstream_rq_completed",
        &[],
        "",
    )?;
    stats
        .lines()
        .find_map(|l| l.strip_prefix("http.upstream.downstream_rq_completed: "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no http.upstream.downstream_rq_completed in :{admin}'s /stats"))
}

/// Requests the front Envoy's clusters of deployments `a` and `b` completed (`envoy-config` names
/// a deployment's cluster `sluice_<id>_<hash>`), or `None` where they are not found.
fn served(admin: u16) -> Option<(u64, u64)> {
    let (_, stats) =
        crate::quickstart::http(&format!("127.0.0.1:{admin}"), "GET", "/stats?filter=upstream_rq_completed", &[], "")
            .ok()?;
    let count = |id: &str| {
        stats
            .lines()
            .filter(|l| l.starts_with(&format!("cluster.sluice_{id}_")))
            .find_map(|l| l.split_once(".upstream_rq_completed: ")?.1.trim().parse::<u64>().ok())
    };
    Some((count("a")?, count("b")?))
}

/// `n` chat requests from `CLIENTS` concurrent clients (one connection per request); the
/// number answered other than 200.
fn send(port: u16, key: &str, provider_key: &str, body: &str, n: usize) -> Result<usize, String> {
    let taken = AtomicUsize::new(0);
    let client = || -> Result<usize, String> {
        let mut refused = 0;
        while taken.fetch_add(1, Ordering::SeqCst) < n {
            if bench::post(port, key, provider_key, body, false)?.0 != 200 {
                refused += 1;
            }
        }
        Ok(refused)
    };
    let results: Vec<Result<usize, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CLIENTS).map(|_| s.spawn(client)).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("a client thread panicked".into()))).collect()
    });
    let mut refused = 0;
    for r in results {
        refused += r?;
    }
    // The upstreams' counters move as each answer is sent: the last ones are in by now.
    std::thread::sleep(Duration::from_millis(200));
    Ok(refused)
}

/// Where one front Envoy's split requests went: (fast, slow) upstream answers in the warm-up's
/// first tenth and in the rest.
struct Split {
    build: Option<Build>,
    strategy: &'static str,
    warm: (u64, u64),
    rest: (u64, u64),
    refused: usize,
}

struct Report<'a> {
    command: String,
    rounds: usize,
    duration: &'a str,
    cores: usize,
    pinned: bool,
    load: (String, String),
    fronts: &'a [Front],
    splits: &'a [Split],
    split_requests: usize,
    warm: usize,
    missing: &'a [(Build, String)],
}

/// `g(a's run, b's run)`, paired per round, then median and range.
fn paired(a: &[WrkResult], b: &[WrkResult], g: fn(&WrkResult, &WrkResult) -> f64) -> Option<Spread> {
    spread(a.iter().zip(b).map(|(x, y)| g(x, y)).collect())
}

fn render(r: &Report) -> String {
    let date = proc::output("date", &["-u", "+%Y-%m-%d %H:%M UTC"], &[]).unwrap_or_default();
    let kernel = proc::output("uname", &["-r"], &[]).unwrap_or_default();
    let pinning = if r.pinned {
        "the measured Envoy pinned to core 0; wrk (1 thread) and the upstream Envoys on core 1"
    } else {
        "nothing pinned (`--no-pin`, fewer than two cores, or no `taskset`)"
    };
    let mut out = format!(
        "Measured {} on this machine ({} cores, Linux {}), `{}`: {} round(s), {} per run, every front Envoy run in each \
round in a rotating order; each `--concurrency 1`, {pinning}. A model group `{GROUP}` of two deployments (`model_info.id` \
`a` and `b`, `b` cheaper; rpm 100,000,000 and tpm 10¹² each, never refusing) on one upstream Envoy answering with \
`direct_response` (the bench's), one key with limits high enough never to trigger, chat at 32 connections. Load average {} \
before, {} after. Figures are the median (min–max) over rounds; CPU is the Envoy process's utime + stime from /proc per \
request; the CPU ratio (bare's ÷ this Envoy's) and the CPU added over `{SHUFFLE}` pair each run with the other's run of \
the same round. Served by: the requests each deployment's cluster in the front Envoy completed over the whole run, \
warm-up included (both clusters point at the same upstream).\n\n",
        date.trim(),
        r.cores,
        kernel.trim(),
        r.command,
        r.rounds,
        r.duration,
        r.load.0,
        r.load.1,
    );
    out.push_str(
        "**Routing strategies on the hot path**\n\n\
| strategy | build | req/s | Envoy CPU per request | CPU ratio vs bare | added CPU vs simple-shuffle | served by `a` / `b` |\n|---|---|---|---|---|---|---|\n",
    );
    let bare = r.fronts.iter().find(|f| f.build.is_none());
    let bare_runs = bare.map_or(&[][..], |f| f.runs.as_slice());
    let cell = |s: Option<Spread>, d: usize, unit: &str| s.map_or("—".to_owned(), |s| format!("{}{unit}", fmt(s, d)));
    for f in r.fronts {
        let rps = cell(spread(f.runs.iter().map(|x| x.rps).collect()), 0, "");
        let cpu = cell(spread(f.runs.iter().map(|x| x.envoy_cpu_us_per_request).collect()), 1, " µs");
        let Some(build) = f.build else {
            out.push_str(&format!("| bare Envoy (no filter) | — | {rps} | {cpu} | — | — | — |\n"));
            continue;
        };
        let ratio =
            paired(&f.runs, bare_runs, |x, b| b.envoy_cpu_us_per_request / x.envoy_cpu_us_per_request.max(0.001))
                .map_or("—".to_owned(), |s| format!("{:.2}×", s.0));
        let added = if f.strategy == SHUFFLE {
            "(reference)".to_owned()
        } else {
            let shuffle = r.fronts.iter().find(|s| s.build == f.build && s.strategy == SHUFFLE);
            paired(&f.runs, shuffle.map_or(&[][..], |s| s.runs.as_slice()), |x, s| {
                x.envoy_cpu_us_per_request - s.envoy_cpu_us_per_request
            })
            .map_or("—".to_owned(), |s| format!("{} µs", fmt_signed(s, 1)))
        };
        let served = f.served.map_or("—".to_owned(), |(a, b)| format!("{a} / {b}"));
        out.push_str(&format!(
            "| `{}` | {} | {rps} | {cpu} | {ratio} | {added} | {served} |\n",
            f.strategy,
            build.name()
        ));
    }
    let rest = r.split_requests - r.warm;
    out.push_str(&format!(
        "\n**Latency-based routing's split** between a {FAST_MS} ms and a {SLOW_MS} ms deployment (`a` and `b` of `{GROUP}`: \
two upstream Envoys, Envoy's fault filter holding the same `direct_response` back {FAST_MS} ms and {SLOW_MS} ms; \
`routing_strategy_args` at their defaults, so `lowest_latency_buffer` 0). {} requests per front Envoy from {CLIENTS} \
concurrent clients (a connection per request), after one request alone; counted at each upstream's \
`http.upstream.downstream_rq_completed`, for the first {} requests and the {rest} after them.\n\n\
| strategy | build | first {}: fast / slow | next {rest}: fast / slow | fast deployment's share, all |\n|---|---|---|---|---|\n",
        r.split_requests, r.warm, r.warm,
    ));
    for s in r.splits {
        let fast = s.warm.0 + s.rest.0;
        let all = fast + s.warm.1 + s.rest.1;
        let refused = if s.refused > 0 { format!(" ({} not 200)", s.refused) } else { String::new() };
        out.push_str(&format!(
            "| `{}` | {} | {} / {} | {} / {} | {:.1} % of {all}{refused} |\n",
            s.strategy,
            s.build.map_or("—", Build::name),
            s.warm.0,
            s.warm.1,
            s.rest.0,
            s.rest.1,
            fast as f64 * 100.0 / all.max(1) as f64,
        ));
    }
    if !r.missing.is_empty() {
        out.push_str("\n**Not measured.**");
        for (build, why) in r.missing {
            out.push_str(&format!(" Sluice ({}): {why}.", build.name()));
        }
        out.push('\n');
    }
    out
}
