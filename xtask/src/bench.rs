//! `cargo xtask bench [--quick] [--no-litellm] [--profile] [--no-pin] [--native-filter PATH] [--prebuilt DIR]`:
//! every front Envoy issue 15 compares, in one run, in alternating rounds, on one upstream.
//!
//! - Front Envoys, each `--concurrency 1`: bare; the no-op wasm filter (`tests/noop-filter`); the
//!   native no-op module (`tests/native-noop`); Sluice (wasm); Sluice (native, when a
//!   `libsluice_filter.so` is given with `--native-filter` or `SLUICE_NATIVE`).
//! - Upstream: one Envoy with `direct_response` (an OpenAI chat completion with `usage`, or an SSE
//!   stream when the request carries `x-bench-stream`): cheaper than any gateway in front of it,
//!   so the ratios measure the gateway, not the upstream.
//! - With two cores or more (and no `--no-pin`), the measured Envoy runs on core 0, wrk, the
//!   upstream and this process on core 1.
//! - Scenarios (`Scenario`), each run for every Envoy it applies to in every round, the order
//!   rotated per round and scenario so no Envoy always goes first. Per run: req/s, latency, and
//!   the Envoy's own CPU time (utime + stime from /proc) per request.
//! - The translated path: an OpenAI client of an Anthropic deployment (the upstream answers
//!   `/v1/messages` in Anthropic's format), on the standalone Sluice Envoys.
//! - xDS mode (`bench_xds.rs`): per Sluice build a control plane and an Envoy it configures,
//!   for the key-cache rows (a miss per request, looked up at the control plane; a hit).
//!
//! LiteLLM's proxy (pinned, its own venv) is measured on the same upstream unless `--no-litellm`;
//! `--profile` adds a `perf record` of each Sluice Envoy during one saturated run (the native
//! build's host call by host call). The report
//! goes to stdout and to BENCHMARKS.md, between the bench-results markers.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::envoy_yaml::{self, Filter, STREAM_HEADER};
use crate::proc::{self, root};
use crate::setup::{self, Tools};
use crate::supervise::Children;

use crate::bench_xds as xds;

const UPSTREAM_PORT: u16 = 18_110;
const UPSTREAM_ADMIN: u16 = 18_910;
const LITELLM_PORT: u16 = 18_400;
/// LiteLLM's proxy, pinned: the 1.106 line DESIGN.md's anchor was measured with, at the newest
/// release whose dependencies resolve here (1.106.10 needs a certifi newer than any published).
use crate::setup::LITELLM_VERSION;
/// The measured Envoy's core, and everything else's, when the machine has two.
pub(crate) const ENVOY_CORE: &str = "0";
pub(crate) const LOAD_CORE: &str = "1";

/// The front Envoys, in their base order (`BARE` first: everything is compared with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Bare,
    NoopWasm,
    NoopNative,
    SluiceWasm,
    SluiceNative,
}

pub(crate) const KINDS: [Kind; 5] =
    [Kind::Bare, Kind::NoopWasm, Kind::NoopNative, Kind::SluiceWasm, Kind::SluiceNative];
pub(crate) const BARE: usize = 0;

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Bare => "bare Envoy",
            Kind::NoopWasm => "no-op wasm",
            Kind::NoopNative => "no-op native",
            Kind::SluiceWasm => "Sluice (wasm)",
            Kind::SluiceNative => "Sluice (native)",
        }
    }
    pub(crate) fn index(self) -> usize {
        KINDS.iter().position(|k| *k == self).unwrap_or(0)
    }
    fn port(self) -> u16 {
        18_100 + self.index() as u16
    }
    fn admin(self) -> u16 {
        18_920 + self.index() as u16
    }
    pub(crate) fn is_sluice(self) -> bool {
        matches!(self, Kind::SluiceWasm | Kind::SluiceNative)
    }
}

/// A front Envoy: running (its pid), or why not.
pub(crate) struct Front {
    pub(crate) kind: Kind,
    pub(crate) pid: Result<u32, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scenario {
    Chat32,
    Chat1,
    Stream32,
    Ttft1,
    Prompt32k,
    Limited,
    /// An OpenAI client of an Anthropic deployment: the filter translates both ways.
    Translated32,
    /// Chat naming an end user who is a customer with RPM and budget limits (issue 14's
    /// checks in use: one more limited scope per request).
    Customer32,
    /// The same chat asked again (`cache: {"use-cache": true}`): Sluice answers it from its
    /// response cache; bare Envoy and the no-op filters forward it as any chat.
    CacheHit32,
    /// A chat never asked before on every request, with the cache asked for: Sluice's miss path
    /// (the key's digest, the lookup, the answer copied and stored).
    CacheMiss32,
    /// xDS mode, a key new to the Envoy on every request (looked up), in bursts.
    XdsMiss,
    /// xDS mode, one key (cached), the same bursts.
    XdsHitBurst,
    /// xDS mode, one key (cached), saturated.
    XdsHit32,
}

pub(crate) const SCENARIOS: [Scenario; 13] = [
    Scenario::Chat32,
    Scenario::Chat1,
    Scenario::Stream32,
    Scenario::Ttft1,
    Scenario::Prompt32k,
    Scenario::Limited,
    Scenario::Translated32,
    Scenario::Customer32,
    Scenario::CacheHit32,
    Scenario::CacheMiss32,
    // The bursts before the saturated xDS run, whose usage the control plane is still
    // ingesting for a while after it (on the load core).
    Scenario::XdsMiss,
    Scenario::XdsHitBurst,
    Scenario::XdsHit32,
];

impl Scenario {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Scenario::Chat32 => "chat, 32 connections",
            Scenario::Chat1 => "chat, 1 connection",
            Scenario::Stream32 => "streaming, 32 connections",
            Scenario::Ttft1 => "streaming, time to first token (1 connection)",
            Scenario::Prompt32k => "32 KB prompt, 32 connections",
            Scenario::Limited => "limit hit (RPM exhausted), 32 connections",
            Scenario::Translated32 => "translated: OpenAI client, Anthropic deployment, 32 connections",
            Scenario::Customer32 => "chat as a customer with RPM and budget limits, 32 connections",
            Scenario::CacheHit32 => "response cache hit (the same chat again), 32 connections",
            Scenario::CacheMiss32 => "response cache miss (a new chat every request, stored), 32 connections",
            Scenario::XdsMiss => "xDS mode, key-cache miss (a new key per request), bursts of 80 on 8 connections",
            Scenario::XdsHitBurst => "xDS mode, key-cache hit (one key), the same bursts",
            Scenario::XdsHit32 => "xDS mode, key-cache hit (one key), 32 connections",
        }
    }
    /// Latency is what counts at one connection; throughput and CPU elsewhere.
    pub(crate) fn is_latency(self) -> bool {
        matches!(self, Scenario::Chat1 | Scenario::Ttft1)
    }
    /// Runs on the xDS-mode Sluice Envoys, not the standalone ones.
    pub(crate) fn is_xds(self) -> bool {
        matches!(self, Scenario::XdsHit32 | Scenario::XdsMiss | Scenario::XdsHitBurst)
    }
    /// Measured in bursts (`bench_xds.rs`), not with wrk.
    pub(crate) fn is_burst(self) -> bool {
        matches!(self, Scenario::XdsMiss | Scenario::XdsHitBurst)
    }
    /// Whether `kind` runs this scenario: the reference Envoys have no translation, no key
    /// cache and no xDS mode.
    pub(crate) fn applies(self, kind: Kind) -> bool {
        match self {
            Scenario::Translated32 | Scenario::XdsMiss | Scenario::XdsHitBurst | Scenario::XdsHit32 => kind.is_sluice(),
            _ => true,
        }
    }
    /// Bare Envoy's run this scenario is paired with, per round: its own, or, where bare Envoy
    /// has no equivalent, its chat at 32 connections (the same request from the client's side).
    pub(crate) fn bare_pair(self) -> Scenario {
        match self {
            Scenario::Translated32 | Scenario::XdsMiss | Scenario::XdsHitBurst | Scenario::XdsHit32 => Scenario::Chat32,
            other => other,
        }
    }
}

/// One measured run of one Envoy in one scenario.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct WrkResult {
    pub(crate) rps: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) requests: f64,
    /// Responses that were not 2xx (the limit-hit scenario's 429s).
    pub(crate) non_2xx: f64,
    /// Envoy's CPU time (user + system) per request during the run: unlike req/s, this does
    /// not depend on how the cores are shared with wrk and the upstream.
    pub(crate) envoy_cpu_us_per_request: f64,
    /// Key lookups the Envoy started during the run (its `sluice.key_lookups` counter; xDS
    /// mode only): the miss rate is this over `requests`, read, not assumed.
    pub(crate) lookups: Option<f64>,
    /// Requests the response cache answered during the run (its `sluice.response_cache.hits`
    /// counter; the cache rows, Sluice's Envoys): the hit rate, read, not assumed.
    pub(crate) cache_hits: Option<f64>,
}

struct Options {
    quick: bool,
    no_litellm: bool,
    profile: bool,
    no_pin: bool,
    native_filter: Option<PathBuf>,
    /// A cargo target directory whose artifacts are used as they are, without building.
    prebuilt: Option<PathBuf>,
}

fn options(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        quick: false,
        no_litellm: false,
        profile: false,
        no_pin: false,
        native_filter: std::env::var_os("SLUICE_NATIVE").filter(|v| !v.is_empty()).map(PathBuf::from),
        prebuilt: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--no-litellm" => o.no_litellm = true,
            "--profile" => o.profile = true,
            "--no-pin" => o.no_pin = true,
            "--native-filter" => o.native_filter = Some(it.next().ok_or("--native-filter needs a path")?.into()),
            "--prebuilt" => o.prebuilt = Some(it.next().ok_or("--prebuilt needs a target directory")?.into()),
            other => return Err(format!("cargo xtask bench: unknown argument {other}")),
        }
    }
    Ok(o)
}

pub fn bench(args: &[String]) -> Result<(), String> {
    let opts = options(args)?;
    let (duration, rounds, ttft_per_round) = if opts.quick { ("2s", 1, 30) } else { ("6s", 3, 100) };
    // Bursts per run of the key-cache rows (each over 2 s: the lookup budget refills between).
    let bursts = if opts.quick { 2 } else { 4 };
    let tools = match &opts.prebuilt {
        Some(target) => prebuilt_tools(target)?,
        None => setup::setup()?,
    };
    ensure_wrk()?;
    let dir = root().join(".sluice/bench");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let provider_key = format!("bench-provider-{}", proc::random_hex()?);
    let env = [("BENCH_PROVIDER_KEY", provider_key.as_str())];
    let cli = tools.cli.to_string_lossy().into_owned();

    // Sluice's config: one key with RPM, TPM and budget limits high enough never to trigger, so
    // every request pays for auth, limit checks, budget reservation and usage; and one with
    // RPM 1, exhausted by the warm-up, for the limit-hit scenario.
    let config = dir.join("config.yaml");
    std::fs::write(&config, bench_config()).map_err(|e| e.to_string())?;
    let config_s = config.to_string_lossy().into_owned();
    let key = new_key(&cli, &config_s, "bench", &["--rpm", "100000000", "--tpm", "1000000000000"], &env)?;
    let limited_key = new_key(&cli, &config_s, "bench-limited", &["--rpm", "1"], &env)?;

    // Counted before this process pins itself to one core.
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let pin = !opts.no_pin && cores >= 2 && taskset_works();
    if pin {
        // wrk, the upstream and the TTFT client (this process) share the load core.
        let me = std::process::id().to_string();
        proc::output("taskset", &["-a", "-c", "-p", LOAD_CORE, &me], &[])?;
    }
    let mut children = Children(Vec::new());
    let upstream_yaml = dir.join("upstream.yaml");
    std::fs::write(&upstream_yaml, envoy_yaml::upstream(UPSTREAM_PORT, UPSTREAM_ADMIN)).map_err(|e| e.to_string())?;
    start_envoy(&tools.envoy, &upstream_yaml, UPSTREAM_ADMIN, 40, None, &dir, &env, &mut children)?;

    let native = opts.native_filter.clone();
    let mut fronts = Vec::new();
    for kind in KINDS {
        let yaml = dir.join(format!("envoy-{}.yaml", kind.port()));
        let written = match kind {
            Kind::Bare => write(&yaml, &envoy_yaml::front(kind.port(), kind.admin(), UPSTREAM_PORT, &Filter::None)),
            Kind::NoopWasm => write(
                &yaml,
                &envoy_yaml::front(kind.port(), kind.admin(), UPSTREAM_PORT, &Filter::Wasm(&tools.noop_wasm)),
            ),
            Kind::NoopNative => write(
                &yaml,
                &envoy_yaml::front(
                    kind.port(),
                    kind.admin(),
                    UPSTREAM_PORT,
                    &Filter::Native(&tools.native_noop, "sluice-noop"),
                ),
            ),
            Kind::SluiceWasm => sluice_config(&cli, &config_s, "--wasm", &tools.wasm, &yaml, kind, &env),
            Kind::SluiceNative => match &native {
                None => Err("not built: pass `--native-filter PATH` or `SLUICE_NATIVE=PATH`".to_owned()),
                Some(so) if !so.exists() => Err(format!("not built: no file at {}", so.display())),
                // The CLI's error (clap's usage, on several lines) on one line of the table's notes.
                Some(so) => sluice_config(&cli, &config_s, "--native", so, &yaml, kind, &env).map_err(|e| {
                    format!("could not be configured: {}", e.split_whitespace().collect::<Vec<_>>().join(" "))
                }),
            },
        };
        let pid = written.and_then(|()| {
            let core = pin.then_some(ENVOY_CORE);
            start_envoy(&tools.envoy, &yaml, kind.admin(), 30 + kind.index(), core, &dir, &env, &mut children)
        });
        // A native module must have been loaded at this Envoy's ABI version.
        let pid = match kind {
            Kind::SluiceNative => pid.and_then(|p| check_native_abi(&dir, kind).map(|()| p)),
            _ => pid,
        };
        // Only Sluice (native) may be missing; every other Envoy must run.
        let pid = match pid {
            Err(e) if kind != Kind::SluiceNative => return Err(format!("{}: {e}", kind.name())),
            other => other,
        };
        fronts.push(Front { kind, pid });
    }
    check_native_abi(&dir, Kind::NoopNative)?;

    // The same two builds in xDS mode, each with its control plane and enough keys that no
    // request of the miss row carries a key twice (plus the warm-up's miss and flood).
    let xds_setup = xds::Setup {
        envoy: &tools.envoy,
        cli: &cli,
        wasm: &tools.wasm,
        native: native.as_deref().filter(|so| so.exists()),
        dir: &dir,
        load_core: pin.then_some(LOAD_CORE),
        envoy_core: pin.then_some(ENVOY_CORE),
        provider_key: &provider_key,
        upstream_port: UPSTREAM_PORT,
    };
    let miss_keys = rounds * bursts * xds::BURST + 1 + xds::FLOOD;
    let mut xds_fronts: Vec<xds::XdsFront> = [Kind::SluiceWasm, Kind::SluiceNative]
        .into_iter()
        .map(|kind| {
            eprintln!("xtask: bench: {} in xDS mode: control plane, {} keys, Envoy", kind.name(), miss_keys + 1);
            xds::start(kind, &xds_setup, miss_keys, &mut children)
        })
        .collect();

    let chat = chat_body("gpt-4o", false, 14);
    let stream = chat_body("gpt-4o", true, 14);
    let big = chat_body("gpt-4o", false, 520);
    let translated = chat_body(ANTHROPIC_GROUP, false, 14);
    // The end user the bench config's `customers:` limits (bare Envoy ignores the field).
    let customer = chat.replacen('{', &format!(r#"{{"user":"{BENCH_CUSTOMER}","#), 1);
    // LiteLLM's opt-in under `mode: default_off` (the other rows do not ask: no cache for them).
    let cached = chat.replacen('{', r#"{"cache":{"use-cache":true},"#, 1);
    let scripts = Scripts {
        chat: write_script(&dir, "chat.lua", &chat, &key, &provider_key, false)?,
        stream: write_script(&dir, "stream.lua", &stream, &key, &provider_key, true)?,
        big: write_script(&dir, "prompt32k.lua", &big, &key, &provider_key, false)?,
        limited: write_script(&dir, "limited.lua", &chat, &limited_key, &provider_key, false)?,
        translated: write_script(&dir, "translated.lua", &translated, &key, &provider_key, false)?,
        customer: write_script(&dir, "customer.lua", &customer, &key, &provider_key, false)?,
        cache_hit: write_script(&dir, "cache-hit.lua", &cached, &key, &provider_key, false)?,
        cache_miss: write_unique_script(&dir, "cache-miss.lua", &cached, &key, &provider_key)?,
    };
    let mut xds_scripts = Vec::new();
    for f in &xds_fronts {
        let name = format!("xds-hit-{}.lua", xds::port(f.kind));
        xds_scripts.push((f.kind, write_script(&dir, &name, &chat, &f.hit_key, &provider_key, false)?));
    }

    // Warm up every path (VM JIT, connection pools) and check each answers as it should.
    for f in &fronts {
        if f.pid.is_err() {
            continue;
        }
        let port = f.kind.port();
        check_request(port, &key, &provider_key, &chat, false)?;
        check_request(port, &key, &provider_key, &stream, true)?;
        check_request(port, &key, &provider_key, &customer, false)?;
        check_request(port, &key, &provider_key, &cached, false)?;
        if f.kind.is_sluice() {
            check_cache_hit(port, f.kind.admin(), &key, &provider_key, &cached)?;
            check_translated(port, &key, &provider_key, &translated)?;
        }
        for _ in 0..2 {
            let status = post(port, &limited_key, &provider_key, &chat, false)?.0;
            if f.kind.is_sluice() && status == 429 {
                break;
            }
        }
        wrk(&scripts.chat, port, 32, "2s", 0, false)?;
        wrk(&scripts.customer, port, 32, "2s", 0, false)?;
        wrk(&scripts.cache_miss, port, 32, "2s", 0, false)?;
        if f.kind.is_sluice() {
            wrk(&scripts.translated, port, 32, "2s", 0, false)?;
        }
    }
    for f in &mut xds_fronts {
        if f.pid.is_ok()
            && let Err(e) = warm_up_xds(f, &provider_key, &chat, &xds_scripts)
        {
            f.pid = Err(format!("could not be run in xDS mode: {e}"));
        }
    }

    let mut litellm: Result<Litellm, String> = if opts.no_litellm {
        Err("not measured in this run (`--no-litellm`)".into())
    } else {
        start_litellm(&dir, &provider_key, &chat, pin, &mut children).map_err(|e| format!("could not be run here: {e}"))
    };

    let rss_before: Vec<u64> = fronts.iter().map(|f| f.pid.as_ref().map_or(0, |p| rss_kib(*p))).collect();
    let load_before = loadavg();
    // results[scenario][kind] holds one run per round.
    let mut results: Vec<Vec<Vec<WrkResult>>> = vec![vec![Vec::new(); KINDS.len()]; SCENARIOS.len()];
    let mut litellm_runs: Vec<WrkResult> = Vec::new();
    // The hit row's bursts: one key for every request.
    let repeated = |k: &str| vec![k.to_owned(); bursts * xds::BURST];
    for round in 0..rounds {
        for (s, scenario) in SCENARIOS.iter().enumerate() {
            let targets = targets(*scenario, &fronts, &xds_fronts);
            for n in 0..targets.len() {
                let t = targets[(n + round + s) % targets.len()];
                // What the last run left behind (LiteLLM's backlog, a control plane ingesting a
                // burst's usage) must not share the cores with this one.
                wait_for_quiet_machine();
                eprintln!("xtask: bench round {} / {rounds}: {} — {}", round + 1, scenario.label(), t.kind.name());
                let (port, pid) = (t.port, t.pid);
                let hit_key = xds_fronts.iter().find(|f| f.kind == t.kind).map(|f| f.hit_key.clone());
                if matches!(scenario, Scenario::XdsHitBurst | Scenario::XdsHit32) {
                    // Cached now: its 60 s in the cache may have run out since the last hit row.
                    check_request(port, hit_key.as_deref().unwrap_or_default(), &provider_key, &chat, false)?;
                }
                let lookups_before =
                    if scenario.is_xds() && t.kind.is_sluice() { Some(xds::lookups(t.admin)?) } else { None };
                let is_cache_row = matches!(scenario, Scenario::CacheHit32 | Scenario::CacheMiss32);
                let hits_before = if is_cache_row && t.kind.is_sluice() { Some(cache_hits(t.admin)?) } else { None };
                let mut r = match scenario {
                    Scenario::Chat32 => wrk(&scripts.chat, port, 32, duration, pid, false)?,
                    Scenario::Chat1 => wrk(&scripts.chat, port, 1, duration, pid, false)?,
                    Scenario::Stream32 => wrk(&scripts.stream, port, 32, duration, pid, false)?,
                    Scenario::Ttft1 => time_to_first_token(port, &key, &provider_key, &stream, ttft_per_round)?,
                    Scenario::Prompt32k => wrk(&scripts.big, port, 32, duration, pid, false)?,
                    Scenario::Limited => wrk(&scripts.limited, port, 32, duration, pid, true)?,
                    Scenario::Translated32 => wrk(&scripts.translated, port, 32, duration, pid, false)?,
                    Scenario::Customer32 => wrk(&scripts.customer, port, 32, duration, pid, false)?,
                    Scenario::CacheHit32 => wrk(&scripts.cache_hit, port, 32, duration, pid, false)?,
                    Scenario::CacheMiss32 => wrk(&scripts.cache_miss, port, 32, duration, pid, false)?,
                    Scenario::XdsHit32 => {
                        let script = xds_scripts.iter().find(|(k, _)| *k == t.kind).map(|(_, p)| p.as_path());
                        wrk(script.ok_or("no hit script")?, port, 32, duration, pid, false)?
                    }
                    Scenario::XdsMiss => {
                        let front = xds_fronts.iter_mut().find(|f| f.kind == t.kind).ok_or("no xDS front")?;
                        let keys = front.take(bursts * xds::BURST)?;
                        xds::run(port, pid, &chat, &provider_key, &keys, bursts)?
                    }
                    Scenario::XdsHitBurst => {
                        xds::run(port, pid, &chat, &provider_key, &repeated(&hit_key.unwrap_or_default()), bursts)?
                    }
                };
                if let Some(before) = lookups_before {
                    // The counters some builds report on the worker's tick (250 ms) are in by now.
                    std::thread::sleep(Duration::from_millis(300));
                    r.lookups = Some(xds::lookups(t.admin)?.saturating_sub(before) as f64);
                }
                if let Some(before) = hits_before {
                    std::thread::sleep(Duration::from_millis(300));
                    r.cache_hits = Some(cache_hits(t.admin)?.saturating_sub(before) as f64);
                }
                results[s][t.kind.index()].push(r);
            }
        }
        if let Ok(l) = &litellm {
            eprintln!("xtask: bench round {} / {rounds}: LiteLLM proxy", round + 1);
            let pid = l.pid;
            match wrk(&l.script, LITELLM_PORT, 32, duration, pid, false) {
                Ok(r) => litellm_runs.push(r),
                Err(e) => litellm = Err(format!("failed during the run: {e}")),
            }
            // LiteLLM works through the requests wrk left in flight for a while after wrk
            // stops, on the measured Envoys' core: the next Envoy's run waits until it is idle.
            wait_until_idle(pid);
        }
    }
    let load_after = loadavg();
    let rss_after: Vec<u64> = fronts.iter().map(|f| f.pid.as_ref().map_or(0, |p| rss_kib(*p))).collect();
    let running: Vec<&Front> = fronts.iter().filter(|f| f.pid.is_ok()).collect();
    let metered: Vec<(Kind, Result<u64, String>)> =
        running.iter().filter(|f| f.kind.is_sluice()).map(|f| (f.kind, metered_tokens(f.kind))).collect();
    let litellm_rss = litellm.as_ref().map_or(0, |l| rss_kib(l.pid));

    let running_pid = |kind: Kind| fronts.iter().find(|f| f.kind == kind).and_then(|f| f.pid.as_ref().ok().copied());
    let profiles = if !opts.profile {
        None
    } else {
        let wasm = match running_pid(Kind::SluiceWasm) {
            Some(pid) => crate::bench_profile::profile(pid, &dir, || {
                wrk(&scripts.chat, Kind::SluiceWasm.port(), 32, "8s", pid, false)
            }),
            None => Err("Sluice (wasm) is not running".into()),
        };
        let native = match running_pid(Kind::SluiceNative) {
            Some(pid) => crate::bench_profile::profile_native(pid, &dir, || {
                wrk(&scripts.chat, Kind::SluiceNative.port(), 32, "8s", pid, false)
            }),
            None => Err("Sluice (native) is not running".into()),
        };
        Some((wasm, native))
    };

    let mut command = "cargo xtask bench".to_owned();
    for a in args {
        command.push(' ');
        command.push_str(a);
    }
    let xds_summary = xds_fronts
        .iter()
        .map(|f| XdsSummary {
            kind: f.kind,
            missing: f.pid.as_ref().err().cloned(),
            keys_created: f.keys_created,
            keys_per_s: f.keys_per_s,
            flood: f.flood,
        })
        .collect();
    let run = Run {
        command,
        rounds,
        duration,
        ttft_per_round,
        bursts,
        cores,
        pinned: pin,
        metered,
        load_before,
        load_after,
        fronts: &fronts,
        xds: xds_summary,
        results: &results,
        rss_before,
        rss_after,
    };
    let mut report = crate::bench_report::render(&run);
    report.push_str(&litellm_text(&litellm, &litellm_runs, litellm_rss, &run));
    if let Some((wasm, native)) = profiles {
        report.push_str(&crate::bench_profile::render(&wasm));
        report.push_str(&crate::bench_profile::render_native(&native));
    }
    println!("\n{report}");
    write_block(&root().join("BENCHMARKS.md"), BEGIN, END, &report)
}

/// Where one scenario's run goes: an Envoy's listener, admin port and pid.
#[derive(Debug, Clone, Copy)]
struct Target {
    kind: Kind,
    port: u16,
    admin: u16,
    pid: u32,
}

/// The running Envoys a scenario is measured on: the standalone fronts, or for the xDS rows
/// the xDS-mode Sluice Envoys.
fn targets(scenario: Scenario, fronts: &[Front], xds_fronts: &[xds::XdsFront]) -> Vec<Target> {
    let mut out = Vec::new();
    for f in fronts.iter().filter(|f| scenario.applies(f.kind)) {
        if scenario.is_xds() && f.kind.is_sluice() {
            if let Some(Ok(pid)) = xds_fronts.iter().find(|x| x.kind == f.kind).map(|x| x.pid.as_ref()) {
                out.push(Target { kind: f.kind, port: xds::port(f.kind), admin: xds::admin(f.kind), pid: *pid });
            }
        } else if let Ok(pid) = f.pid {
            out.push(Target { kind: f.kind, port: f.kind.port(), admin: f.kind.admin(), pid });
        }
    }
    out
}

/// An xDS-mode Envoy's checks before the rounds: the hit key answers (and is cached), a new
/// key answers and shows as exactly one lookup in Envoy's own counter (so the miss rate can
/// be read), a flood of new keys from one client shows what the lookup budget lets through,
/// and a saturated run warms the path.
fn warm_up_xds(
    f: &mut xds::XdsFront,
    provider_key: &str,
    chat: &str,
    scripts: &[(Kind, PathBuf)],
) -> Result<(), String> {
    let (port, admin) = (xds::port(f.kind), xds::admin(f.kind));
    // The listener serves once the control plane's filter config has arrived over ECDS.
    let start = Instant::now();
    while post(port, &f.hit_key, provider_key, chat, false).map(|(status, _)| status) != Ok(200) {
        if start.elapsed() > Duration::from_secs(30) {
            return check_request(port, &f.hit_key, provider_key, chat, false);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    check_request(port, &f.hit_key, provider_key, chat, false)?;
    let before = xds::lookups(admin)?;
    let new_key = f.take(1)?.concat();
    check_request(port, &new_key, provider_key, chat, false)?;
    std::thread::sleep(Duration::from_millis(300));
    let looked_up = xds::lookups(admin)?.saturating_sub(before);
    if looked_up != 1 {
        return Err(format!(
            "a key new to this Envoy made {looked_up} lookups in its `sluice.key_lookups` counter, not 1: the miss rate could not be read"
        ));
    }
    let flood_keys = f.take(xds::FLOOD)?;
    f.flood = Some(xds::flood(port, admin, chat, provider_key, &flood_keys)?);
    let script = scripts.iter().find(|(k, _)| *k == f.kind).map(|(_, p)| p.as_path()).ok_or("no hit script")?;
    wrk(script, port, 32, "2s", 0, false).map(|_| ())
}

/// The Envoy to run: `ENVOY_BIN`, else the pinned one `cargo xtask setup` put in `.venv`.
pub(crate) fn envoy_bin() -> Result<PathBuf, String> {
    match std::env::var_os("ENVOY_BIN") {
        Some(bin) => Ok(PathBuf::from(bin)),
        None => std::fs::read_dir(root().join(".venv/lib"))
            .map_err(|e| format!(".venv/lib: {e} (run `cargo xtask setup` once, or set ENVOY_BIN)"))?
            .flatten()
            .map(|entry| entry.path().join("site-packages/envoy/_bin/envoy"))
            .find(|p| p.exists())
            .ok_or_else(|| "no Envoy binary in .venv (set ENVOY_BIN)".to_owned()),
    }
}

/// The artifacts of a target directory `cargo xtask setup` (or the same builds) filled, used
/// as they are: nothing is built, so a bench can run beside someone else's build of the tree.
fn prebuilt_tools(target: &Path) -> Result<Tools, String> {
    let root = root();
    let envoy = envoy_bin()?;
    let wasm_dir = target.join("wasm32-wasip1/release");
    let tools = Tools {
        python: root.join(".venv/bin/python"),
        envoy,
        wasm: wasm_dir.join("sluice_filter.wasm"),
        noop_wasm: wasm_dir.join("sluice_noop_filter.wasm"),
        trap_wasm: wasm_dir.join("sluice_filter_trap.wasm"),
        native_noop: target.join("release/libsluice_native_noop.so"),
        native: target.join("release/libsluice_filter.so"),
        cli: target.join("debug/sluice"),
        mock: target.join("debug/sluice-mock-provider"),
        // Installed (with pip) only when the LiteLLM comparison runs.
        litellm_venv: root.join(".venv-litellm"),
    };
    for needed in [&tools.envoy, &tools.wasm, &tools.noop_wasm, &tools.native_noop, &tools.cli] {
        if !needed.exists() {
            return Err(format!("--prebuilt: no {}", needed.display()));
        }
    }
    eprintln!("xtask: bench: using the artifacts in {} as they are (--prebuilt: nothing built)", target.display());
    Ok(tools)
}

/// Everything the report is made from.
pub(crate) struct Run<'a> {
    pub(crate) command: String,
    pub(crate) rounds: usize,
    pub(crate) duration: &'a str,
    pub(crate) ttft_per_round: usize,
    /// Bursts per run of the burst-shaped rows.
    pub(crate) bursts: usize,
    pub(crate) cores: usize,
    pub(crate) pinned: bool,
    /// Completion tokens each Sluice Envoy counted over the run.
    pub(crate) metered: Vec<(Kind, Result<u64, String>)>,
    pub(crate) load_before: String,
    pub(crate) load_after: String,
    pub(crate) fronts: &'a [Front],
    /// The Sluice builds in xDS mode.
    pub(crate) xds: Vec<XdsSummary>,
    pub(crate) results: &'a [Vec<Vec<WrkResult>>],
    pub(crate) rss_before: Vec<u64>,
    pub(crate) rss_after: Vec<u64>,
}

impl Run<'_> {
    /// The runs of one Envoy in one scenario (one per round; none if it did not run).
    pub(crate) fn runs(&self, scenario: Scenario, kind: Kind) -> &[WrkResult] {
        let s = SCENARIOS.iter().position(|x| *x == scenario).unwrap_or(0);
        self.results.get(s).and_then(|v| v.get(kind.index())).map_or(&[], Vec::as_slice)
    }
    /// Why an Envoy has no figures (`None` when it ran).
    pub(crate) fn missing(&self, kind: Kind) -> Option<&str> {
        self.fronts.iter().find(|f| f.kind == kind).and_then(|f| f.pid.as_ref().err().map(String::as_str))
    }
    /// Why an Envoy has no figures in one scenario: the xDS rows' Sluice Envoys are others.
    pub(crate) fn missing_in(&self, scenario: Scenario, kind: Kind) -> Option<&str> {
        if scenario.is_xds() && kind.is_sluice() {
            return match self.xds.iter().find(|x| x.kind == kind) {
                Some(x) => x.missing.as_deref(),
                None => Some("not run in xDS mode"),
            };
        }
        self.missing(kind)
    }
}

/// What the report says about a Sluice build in xDS mode.
pub(crate) struct XdsSummary {
    pub(crate) kind: Kind,
    /// Why it has no figures, if it has none.
    pub(crate) missing: Option<String>,
    /// Keys made through the admin API before the rounds, and how fast.
    pub(crate) keys_created: usize,
    pub(crate) keys_per_s: f64,
    /// New keys at once from one client address: what the lookup budget let through.
    pub(crate) flood: Option<xds::Flood>,
}

/// The wrk scripts of the scenarios.
struct Scripts {
    chat: PathBuf,
    stream: PathBuf,
    big: PathBuf,
    limited: PathBuf,
    translated: PathBuf,
    customer: PathBuf,
    cache_hit: PathBuf,
    cache_miss: PathBuf,
}

pub(crate) fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

pub(crate) fn taskset_works() -> bool {
    Command::new("taskset").arg("-V").output().is_ok_and(|o| o.status.success())
}

/// The completion tokens a Sluice Envoy has counted (its `sluice.completion_tokens.*` metrics):
/// more than zero shows the upstream's `usage` was parsed, i.e. each request was metered.
fn metered_tokens(kind: Kind) -> Result<u64, String> {
    let admin = format!("127.0.0.1:{}", kind.admin());
    let (_, stats) = crate::quickstart::http(&admin, "GET", "/stats?filter=completion_tokens", &[], "")?;
    Ok(stats.lines().filter_map(|l| l.rsplit_once(": ")?.1.trim().parse::<u64>().ok()).sum())
}

/// `sluice key new --append-to config.yaml`, returning the key.
pub(crate) fn new_key(
    cli: &str,
    config: &str,
    alias: &str,
    limits: &[&str],
    env: &[(&str, &str)],
) -> Result<String, String> {
    let mut args = vec!["key", "new", "--alias", alias, "--max-budget", "1000000000", "--append-to", config, "--json"];
    args.extend_from_slice(limits);
    let created = proc::output(cli, &args, env)?;
    crate::quickstart::json_string_field(&created, "key").ok_or_else(|| "no key from the CLI".to_owned())
}

/// Sluice's standalone bootstrap, as `sluice envoy-config` writes it for operators.
fn sluice_config(
    cli: &str,
    config: &str,
    filter_flag: &str,
    filter: &Path,
    out: &Path,
    kind: Kind,
    env: &[(&str, &str)],
) -> Result<(), String> {
    let listen = format!("127.0.0.1:{}", kind.port());
    let admin = kind.admin().to_string();
    let filter = filter.to_string_lossy();
    let out = out.to_string_lossy();
    let args = [
        "envoy-config",
        "-c",
        config,
        filter_flag,
        &filter,
        "--out",
        &out,
        "--listen",
        &listen,
        "--admin-port",
        &admin,
    ];
    proc::output(cli, &args, env).map(|_| ())
}

/// Starts an Envoy (on `core` if given) and waits until its admin says it is ready.
#[allow(clippy::too_many_arguments)]
pub(crate) fn start_envoy(
    envoy: &Path,
    yaml: &Path,
    admin: u16,
    base_id: usize,
    core: Option<&str>,
    dir: &Path,
    env: &[(&str, &str)],
    children: &mut Children,
) -> Result<u32, String> {
    let log = std::fs::File::create(dir.join(format!("envoy-{admin}.log"))).map_err(|e| e.to_string())?;
    // `taskset -c N envoy …` execs Envoy: the child's pid is Envoy's.
    let mut cmd = match core {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", c]).arg(envoy);
            cmd
        }
        None => Command::new(envoy),
    };
    // Info, not warn: the dynamic-module ABI check is logged at info (and nothing per request).
    let child = cmd
        .args(["-c", &yaml.to_string_lossy(), "--disable-hot-restart", "--concurrency", "1"])
        .args(["--log-level", "info", "--base-id", &base_id.to_string()])
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("envoy: {e}"))?;
    let pid = child.id();
    children.0.push(child);
    crate::quickstart::wait_until_ready(&format!("127.0.0.1:{admin}"), Duration::from_secs(30))
        .map_err(|e| format!("{e}; see {}", dir.join(format!("envoy-{admin}.log")).display()))?;
    Ok(pid)
}

/// A dynamic module must have been loaded at Envoy's own ABI version.
fn check_native_abi(dir: &Path, kind: Kind) -> Result<(), String> {
    let log = std::fs::read_to_string(dir.join(format!("envoy-{}.log", kind.admin()))).unwrap_or_default();
    if !log.contains("Dynamic module ABI version") || !log.contains("matched") {
        return Err(format!("{}'s Envoy did not log a matched dynamic-module ABI version", kind.name()));
    }
    Ok(())
}

/// The first three fields of /proc/loadavg (1, 5 and 15 minutes).
pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" / "))
        .unwrap_or_default()
}

fn litellm_text(litellm: &Result<Litellm, String>, runs: &[WrkResult], rss: u64, run: &Run) -> String {
    let sluice = crate::bench_report::of(run, Scenario::Chat32, Kind::SluiceWasm, |r| r.rps).map_or(0.0, |s| s.0);
    let bare = crate::bench_report::of(run, Scenario::Chat32, Kind::Bare, |r| r.rps).map_or(0.0, |s| s.0);
    match (litellm, runs.is_empty()) {
        (Ok(_), false) => {
            let med = |f: fn(&WrkResult) -> f64| median(runs.iter().map(f).collect());
            let rps = med(|r| r.rps);
            let (sl_x, bare_x) = (sluice / rps.max(0.001), bare / rps.max(0.001));
            format!(
                "\n**LiteLLM's proxy** {LITELLM_VERSION} (`litellm --num_workers 1`, its own venv, on the measured Envoys' core; \
master key only: without a database it has no virtual keys, budgets or spend logs, so it does less per request than Sluice), \
same upstream, same body, in the same rounds: {rps:.1} req/s at 32 connections (p50 {:.0} ms, p99 {:.0} ms), {:.0} µs of CPU \
per request, {rss} KiB RSS after the run. Sluice (wasm) serves **{sl_x:.0}×** its throughput (target ≥ 80×: {}), bare Envoy \
{bare_x:.0}×.\n",
                med(|r| r.p50_us) / 1000.0,
                med(|r| r.p99_us) / 1000.0,
                med(|r| r.envoy_cpu_us_per_request),
                if sl_x >= 80.0 { "met" } else { "MISSED" },
            )
        }
        (Ok(_), true) => "\n**LiteLLM's proxy**: no run finished; the ≥ 80× target was not checked.\n".to_owned(),
        (Err(e), _) => {
            format!("\n**LiteLLM's proxy {LITELLM_VERSION}**: {e}. The ≥ 80× target was not checked in this run.\n")
        }
    }
}

/// A running LiteLLM proxy: its pid (for CPU and RSS) and the wrk script with its master key.
struct Litellm {
    pid: u32,
    script: PathBuf,
}

/// Installs the pinned LiteLLM proxy into `.venv-litellm` (only when it is missing or another
/// version), starts it on the upstream with one worker, and waits until it answers a chat
/// request.
fn start_litellm(
    dir: &Path,
    provider_key: &str,
    body: &str,
    pin: bool,
    children: &mut Children,
) -> Result<Litellm, String> {
    let litellm_bin = crate::setup::litellm_venv(&root())?.join("bin/litellm");
    let master_key = format!("sk-litellm-bench-{}", proc::random_hex()?);
    let config = dir.join("litellm.yaml");
    std::fs::write(&config, litellm_config(&master_key)).map_err(|e| e.to_string())?;
    let script = dir.join("post-litellm.lua");
    std::fs::write(&script, litellm_wrk_script(&master_key, body)).map_err(|e| e.to_string())?;
    let log_path = dir.join("litellm.log");
    let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
    let log2 = log.try_clone().map_err(|e| e.to_string())?;
    let port = LITELLM_PORT.to_string();
    // The gateway measured gets the gateways' core, as the Envoys do.
    let mut cmd = if pin {
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", ENVOY_CORE]).arg(&litellm_bin);
        cmd
    } else {
        Command::new(&litellm_bin)
    };
    let child = cmd
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

/// LiteLLM's config for the same upstream deployment.
fn litellm_config(master_key: &str) -> String {
    format!(
        "model_list:\n  - model_name: gpt-4o\n    litellm_params:\n      model: openai/gpt-4o\n      api_base: http://127.0.0.1:{UPSTREAM_PORT}/v1\n      api_key: os.environ/BENCH_PROVIDER_KEY\ngeneral_settings:\n  master_key: {master_key}\nlitellm_settings:\n  telemetry: false\n"
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

/// One request, with the headers the load generator sends: (status, response).
pub(crate) fn post(
    port: u16,
    key: &str,
    provider_key: &str,
    body: &str,
    stream: bool,
) -> Result<(u16, String), String> {
    let auth = format!("Bearer {key}");
    let provider = format!("Bearer {provider_key}");
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
        ("x-bench-provider-key", provider.as_str()),
    ];
    if stream {
        headers.push((STREAM_HEADER, "1"));
    }
    crate::quickstart::http(&format!("127.0.0.1:{port}"), "POST", "/v1/chat/completions", &headers, body)
}

/// A chat (or stream) request through an Envoy is answered 200 with the upstream's body.
pub(crate) fn check_request(port: u16, key: &str, provider_key: &str, body: &str, stream: bool) -> Result<(), String> {
    let (status, response) = post(port, key, provider_key, body, stream)?;
    let expected = if stream { "data: [DONE]" } else { "\"usage\"" };
    if status != 200 || !response.contains(expected) {
        let head: String = response.chars().take(300).collect();
        return Err(format!("bench request to :{port} (stream: {stream}) failed: HTTP {status}: {head}"));
    }
    Ok(())
}

/// An OpenAI client's chat request to the Anthropic deployment comes back as an OpenAI chat
/// completion translated from the upstream's Messages answer (its usage renamed), not as the
/// Messages body itself.
fn check_translated(port: u16, key: &str, provider_key: &str, body: &str) -> Result<(), String> {
    let (status, response) = post(port, key, provider_key, body, false)?;
    let translated = response.contains("\"object\":\"chat.completion\"")
        && response.contains("\"prompt_tokens\":250")
        && response.contains("\"completion_tokens\":300")
        && !response.contains("\"type\":\"message\"");
    if status != 200 || !translated {
        let head: String = response.chars().take(300).collect();
        return Err(format!(
            "translated request to :{port} was not answered with a chat completion: HTTP {status}: {head}"
        ));
    }
    Ok(())
}

/// One wrk run; `envoy_pid` (0: don't) is the Envoy whose CPU time is sampled around it. A
/// non-2xx answer is an error unless `allow_non_2xx` (the limit-hit scenario counts them).
pub(crate) fn wrk(
    script: &Path,
    port: u16,
    connections: u32,
    duration: &str,
    envoy_pid: u32,
    allow_non_2xx: bool,
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
    let cpu_after = cpu_ticks(envoy_pid);
    let mut result = WrkResult::default();
    for line in out.lines().map(str::trim) {
        if let Some((n, _)) = line.split_once(" requests in ") {
            result.requests = n.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = line.strip_prefix("Requests/sec:") {
            result.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            result.non_2xx = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = line.strip_prefix("50%") {
            result.p50_us = parse_duration_us(v.trim());
        } else if let Some(v) = line.strip_prefix("99%") {
            result.p99_us = parse_duration_us(v.trim());
        }
    }
    if result.non_2xx > 0.0 && !allow_non_2xx {
        return Err(format!("wrk saw errors on :{port}:\n{out}"));
    }
    if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
        result.envoy_cpu_us_per_request =
            after.saturating_sub(before) as f64 * 1e6 / CLOCK_TICKS_PER_SEC / result.requests.max(1.0);
    }
    Ok(result)
}

/// `sysconf(_SC_CLK_TCK)`, which is 100 on every Linux this runs on (std has no sysconf).
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// Waits (up to 15 s) until the machine's cores are idle at least 90 % of a quarter of a second
/// (`/proc/stat`), so a run starts with nothing else on its cores.
pub(crate) fn wait_for_quiet_machine() {
    fn busy_and_total() -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let fields: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
        let total: u64 = fields.iter().sum();
        // idle and iowait are the 4th and 5th fields.
        let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
        Some((total.saturating_sub(idle), total))
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let Some(mut last) = busy_and_total() else { return };
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        let Some(now) = busy_and_total() else { return };
        let (busy, total) = (now.0.saturating_sub(last.0), now.1.saturating_sub(last.1));
        if total > 0 && busy * 10 <= total {
            return;
        }
        last = now;
    }
}

/// Waits (up to 20 s) until `pid` used less than one clock tick (10 ms) of CPU in a quarter of
/// a second.
fn wait_until_idle(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = cpu_ticks(pid);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        let now = cpu_ticks(pid);
        match (last, now) {
            (Some(a), Some(b)) if b.saturating_sub(a) == 0 => return,
            (_, None) => return,
            _ => last = now,
        }
    }
}

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

/// `n` streams, one at a time, each timed from sending the request to its first content event;
/// the result holds their p50 and p99 (no CPU figure: the streams are too few and too short).
fn time_to_first_token(port: u16, key: &str, provider_key: &str, body: &str, n: usize) -> Result<WrkResult, String> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
        let request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\nauthorization: Bearer {key}\r\nx-bench-provider-key: Bearer {provider_key}\r\ncontent-type: application/json\r\n{STREAM_HEADER}: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
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
        match first {
            Some(t) if seen.starts_with(b"HTTP/1.1 200") => times.push(t.as_secs_f64() * 1e6),
            _ => {
                return Err(format!(
                    "stream on :{port} failed: {}",
                    String::from_utf8_lossy(seen.get(..300.min(seen.len())).unwrap_or(&[]))
                ));
            }
        }
    }
    Ok(WrkResult {
        p50_us: percentile(&mut times.clone(), 50.0),
        p99_us: percentile(&mut times, 99.0),
        requests: n as f64,
        ..WrkResult::default()
    })
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

pub(crate) fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let idx = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v.get(idx).copied().unwrap_or(0.0)
}

const BEGIN: &str = "<!-- bench-results:begin -->";
const END: &str = "<!-- bench-results:end -->";

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

/// A chat request to `model`: `filler` sentences of 63 bytes (14: ~1 KB, like a short
/// conversation; 520: ~32 KB, a long prompt).
pub(crate) fn chat_body(model: &str, stream: bool, filler: usize) -> String {
    let filler = "Summarise the following meeting notes in three bullet points. ".repeat(filler);
    format!(
        r#"{{"model":"{model}","stream":{stream},"max_tokens":256,"messages":[{{"role":"system","content":"You are a concise assistant."}},{{"role":"user","content":"{filler}"}}]}}"#
    )
}

pub(crate) fn write_script(
    dir: &Path,
    name: &str,
    body: &str,
    key: &str,
    provider_key: &str,
    stream: bool,
) -> Result<PathBuf, String> {
    let escaped = body.replace('\\', "\\\\").replace('"', "\\\"");
    let mut lua = format!(
        "wrk.method = \"POST\"\nwrk.body = \"{escaped}\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.headers[\"Authorization\"] = \"Bearer {key}\"\nwrk.headers[\"x-bench-provider-key\"] = \"Bearer {provider_key}\"\n"
    );
    if stream {
        lua.push_str(&format!("wrk.headers[\"{STREAM_HEADER}\"] = \"1\"\n"));
    }
    let path = dir.join(name);
    write(&path, &lua)?;
    Ok(path)
}

/// A wrk script whose every request is a chat never sent before (the first message's text ends
/// with a number that counts up from a random start, so runs do not repeat each other either).
fn write_unique_script(dir: &Path, name: &str, body: &str, key: &str, provider_key: &str) -> Result<PathBuf, String> {
    let marked = body.replacen("\"content\":\"", "\"content\":\"__N__ ", 1);
    if marked == body {
        return Err("the bench's chat has no message content to make unique".into());
    }
    let escaped = marked.replace('\\', "\\\\").replace('"', "\\\"");
    let lua = format!(
        "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.headers[\"Authorization\"] = \"Bearer {key}\"\nwrk.headers[\"x-bench-provider-key\"] = \"Bearer {provider_key}\"\nlocal template = \"{escaped}\"\nmath.randomseed(os.time())\nlocal n = math.random(1, 1000000000) * 1000\nrequest = function()\n  n = n + 1\n  local body = string.gsub(template, \"__N__\", tostring(n))\n  return wrk.format(nil, nil, nil, body)\nend\n"
    );
    let path = dir.join(name);
    write(&path, &lua)?;
    Ok(path)
}

/// The response cache answers a repeated chat: asked twice more, Envoy's hit counter moves.
fn check_cache_hit(port: u16, admin: u16, key: &str, provider_key: &str, body: &str) -> Result<(), String> {
    let before = cache_hits(admin)?;
    for _ in 0..2 {
        check_request(port, key, provider_key, body, false)?;
    }
    // The counters are reported on the filter's tick.
    std::thread::sleep(Duration::from_millis(600));
    let hits = cache_hits(admin)?.saturating_sub(before);
    if hits < 2 {
        return Err(format!("the response cache of :{port} answered {hits} of 2 repeated chats"));
    }
    Ok(())
}

fn cache_hits(admin: u16) -> Result<u64, String> {
    xds::filter_counter(admin, "sluice.response_cache.hits")
}

/// The model group of the translated path: an Anthropic deployment on the same upstream,
/// which answers its `/v1/messages` in Anthropic's format.
const ANTHROPIC_GROUP: &str = "claude-bench";

/// The customer of the governed row: limits it never reaches, so every request is admitted
/// and pays for their checks.
const BENCH_CUSTOMER: &str = "bench-customer";

fn bench_config() -> String {
    format!(
        "model_list:\n  - model_name: gpt-4o\n    litellm_params:\n      model: openai/gpt-4o\n      api_base: http://127.0.0.1:{UPSTREAM_PORT}/v1\n      api_key: os.environ/BENCH_PROVIDER_KEY\n    model_info:\n      input_cost_per_token: 0.0000025\n      output_cost_per_token: 0.00001\n  - model_name: {ANTHROPIC_GROUP}\n    litellm_params:\n      model: anthropic/claude-3-5-sonnet-20241022\n      api_base: http://127.0.0.1:{UPSTREAM_PORT}\n      api_key: os.environ/BENCH_PROVIDER_KEY\n    model_info:\n      input_cost_per_token: 0.000003\n      output_cost_per_token: 0.000015\nlitellm_settings:\n  cache: true\n  cache_params:\n    type: local\n    mode: default_off\ncustomers:\n  - customer_id: {BENCH_CUSTOMER}\n    rpm_limit: 1000000000\n    max_budget: 1000000000\nkeys:\n"
    )
}
