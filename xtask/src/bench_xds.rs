//! xDS mode in `cargo xtask bench`: per Sluice build, a control plane (`sluice serve`, SQLite,
//! the data-plane port on mTLS from `sluice pki`, as in production) and a front Envoy it
//! configures (`sluice envoy-config --xds`), for the key-cache rows: a miss (each request a key
//! this Envoy has never seen, looked up at the control plane before it is routed) and a hit
//! (one key, cached). Keys are made up front through the admin API (`sluice key create`).
//!
//! Misses are measured in bursts, not at saturation: the filter budgets key lookups
//! (`key_lookup.rate`, ARCHITECTURE.md: per worker 50 a second and 100 at once, per client
//! address 10 a second and 20 at once; the control plane always sends these defaults and
//! `sluice serve` has no setting for them), so a saturated run of new keys from one client is
//! answered 429 `key_lookup_rate_limited` past its first 20 requests ([`flood`] shows it in
//! every run). A burst of 80 requests from 8 client addresses (127.0.0.10–17, one keep-alive
//! connection each, 10 requests each) fits every bucket, and the bursts are 1.8 s apart so the
//! buckets refill between them. A burst's CPU is the Envoy's over the burst and the 0.6 s after
//! it (the work a request leaves behind: usage shipped, limits synced, metrics flushed on the
//! ticks), minus its idle rate over that time (the mean of the 1.2 s measured just before and
//! just after), from /proc/PID/task/*/schedstat (nanoseconds: a burst is a few ms of CPU, below
//! /proc/PID/stat's 10 ms ticks). The hit row runs the same bursts with one cached key, so a
//! miss's own cost is the difference, paired per round.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use crate::bench::{Kind, WrkResult};
use crate::proc;
use crate::supervise::Children;

/// Connections of a burst, each from its own loopback address (the filter budgets lookups per
/// client address).
const CLIENTS: usize = 8;
/// Requests each connection sends in a burst, one after the other.
const PER_CLIENT: usize = 10;
/// Requests in a burst: under the worker's 100 lookups at once, and 10 per address of its 20.
pub(crate) const BURST: usize = CLIENTS * PER_CLIENT;
/// The first burst's connections are opened this long before the first idle window.
const SETTLE: Duration = Duration::from_millis(400);
/// The idle rate is measured over this, before the first burst and after each; with [`TRAIL`]
/// it is the gap between bursts, in which the lookup budget refills (80 of the worker's 100 in
/// 1.6 s, 10 of each address's 20 in 1 s).
const IDLE_WINDOW: Duration = Duration::from_millis(1200);
/// After a burst, still counted: the worker's tick (250 ms) and the singleton's (200 ms) ship
/// usage, sync limits and flush metrics for the burst's requests.
const TRAIL: Duration = Duration::from_millis(600);
/// The flood: this many new keys at once, all from one client address (127.0.0.30).
pub(crate) const FLOOD: usize = 40;
const FLOOD_ADDRESS: u8 = 30;
/// The burst clients' addresses: 127.0.0.10 and up.
const FIRST_ADDRESS: u8 = 10;
/// `sluice key create` processes run at once.
const KEY_PARALLEL: usize = 4;
/// The limits of every key made here, as the standalone key's: high enough never to trigger,
/// so each request pays for the checks.
const KEY_LIMITS: [&str; 6] = ["--rpm", "100000000", "--tpm", "1000000000000", "--max-budget", "1000000000"];

/// A Sluice build in xDS mode: its Envoy (pid, or why it is not running) and its keys.
pub(crate) struct XdsFront {
    pub(crate) kind: Kind,
    pub(crate) pid: Result<u32, String>,
    /// The key the hit rows repeat (looked up once in the warm-up).
    pub(crate) hit_key: String,
    /// Keys no request has carried yet, each used once.
    fresh: Vec<String>,
    /// How many keys the admin API made, and how fast.
    pub(crate) keys_created: usize,
    pub(crate) keys_per_s: f64,
    /// The flood's outcome (warm-up), when it ran.
    pub(crate) flood: Option<Flood>,
}

/// [`FLOOD`] new keys at once from one client address: how many Envoy looked up, how many it
/// refused with a 429.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Flood {
    pub(crate) requests: usize,
    pub(crate) lookups: u64,
    pub(crate) refused: usize,
}

/// This build's place among the Sluice builds (0: wasm, 1: native): its ports.
fn offset(kind: Kind) -> u16 {
    if kind == Kind::SluiceNative { 1 } else { 0 }
}

pub(crate) fn port(kind: Kind) -> u16 {
    18_105 + offset(kind)
}

pub(crate) fn admin(kind: Kind) -> u16 {
    18_925 + offset(kind)
}

/// The control plane's admin API, data-plane port and metrics port.
fn control_plane_ports(kind: Kind) -> (u16, u16, u16) {
    let base = 18_130 + 10 * offset(kind);
    (base, base + 1, base + 2)
}

impl XdsFront {
    /// The next `n` keys no request has carried.
    pub(crate) fn take(&mut self, n: usize) -> Result<Vec<String>, String> {
        if self.fresh.len() < n {
            return Err(format!("{} in xDS mode: {n} new keys needed, {} left", self.kind.name(), self.fresh.len()));
        }
        Ok(self.fresh.split_off(self.fresh.len() - n))
    }
}

/// What the xDS fronts are started with.
pub(crate) struct Setup<'a> {
    pub(crate) envoy: &'a Path,
    pub(crate) cli: &'a str,
    pub(crate) wasm: &'a Path,
    pub(crate) native: Option<&'a Path>,
    pub(crate) dir: &'a Path,
    /// The load core for the control plane, when pinning.
    pub(crate) load_core: Option<&'a str>,
    /// The measured Envoy's core, when pinning.
    pub(crate) envoy_core: Option<&'a str>,
    pub(crate) provider_key: &'a str,
    pub(crate) upstream_port: u16,
}

/// Starts `kind`'s control plane and Envoy and makes `keys` keys plus the hit key; a failure
/// is kept as the reason the rows have no figures.
pub(crate) fn start(kind: Kind, setup: &Setup, keys: usize, children: &mut Children) -> XdsFront {
    let mut front = XdsFront {
        kind,
        pid: Err(String::new()),
        hit_key: String::new(),
        fresh: Vec::new(),
        keys_created: 0,
        keys_per_s: 0.0,
        flood: None,
    };
    front.pid = start_inner(&mut front, setup, keys, children)
        .map_err(|e| format!("could not be run in xDS mode: {}", e.split_whitespace().collect::<Vec<_>>().join(" ")));
    front
}

fn start_inner(front: &mut XdsFront, setup: &Setup, keys: usize, children: &mut Children) -> Result<u32, String> {
    let kind = front.kind;
    let build = if kind == Kind::SluiceNative { "native" } else { "wasm" };
    let module: PathBuf = match (kind, setup.native) {
        (Kind::SluiceNative, Some(so)) => so.to_path_buf(),
        (Kind::SluiceNative, None) => return Err("not built".into()),
        _ => setup.wasm.to_path_buf(),
    };
    let dir = setup.dir.join(format!("xds-{build}"));
    // Fresh each run: the database (so every key is new to every Envoy), the CA, the logs.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let cli = setup.cli;
    let pki = dir.join("pki").to_string_lossy().into_owned();
    let node = format!("bench-xds-{build}");
    proc::output(cli, &["pki", "init", "--dir", &pki, "--host", "127.0.0.1"], &[])?;
    proc::output(cli, &["pki", "envoy", "--dir", &pki, "--node-id", &node], &[])?;
    let config = dir.join("config.yaml");
    crate::bench::write(&config, &xds_config(setup.upstream_port))?;

    let master_key = format!("sk-bench-master-{}", proc::random_hex()?);
    let (api, xds, metrics) = control_plane_ports(kind);
    let (api, xds, metrics) = (loopback(api), loopback(xds), loopback(metrics));
    let module_s = module.to_string_lossy().into_owned();
    let module_flag = if kind == Kind::SluiceNative { "--envoy-native" } else { "--envoy-wasm" };
    let db = format!("sqlite:{}", dir.join("sluice.db").display());
    let log_path = dir.join("control-plane.log");
    let log = std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    // The control plane runs beside wrk and the upstream, off the measured Envoy's core.
    let mut cmd = match setup.load_core {
        Some(core) => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", core]).arg(cli);
            cmd
        }
        None => Command::new(cli),
    };
    let config_s = config.to_string_lossy().into_owned();
    cmd.args(["serve", "-c", &config_s, "--database-url", &db, "--listen", &api, "--xds-listen", &xds])
        .args(["--metrics-listen", &metrics, module_flag, &module_s, "--pki-dir", &pki])
        .envs([("SLUICE_MASTER_KEY", master_key.as_str()), ("BENCH_PROVIDER_KEY", setup.provider_key)])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    children.0.push(cmd.spawn().map_err(|e| format!("sluice serve: {e}"))?);
    wait_for_control_plane(&api, &log_path, children)?;

    let server = format!("http://{api}");
    let admin_env = [("SLUICE_SERVER", server.as_str()), ("SLUICE_API_KEY", master_key.as_str())];
    let started = Instant::now();
    let mut made = create_keys(cli, &admin_env, keys + 1)?;
    front.keys_per_s = made.len() as f64 / started.elapsed().as_secs_f64().max(0.001);
    front.keys_created = made.len();
    front.hit_key = made.pop().ok_or("no key was created")?;
    front.fresh = made;

    let yaml = dir.join("envoy.yaml");
    let yaml_s = yaml.to_string_lossy().into_owned();
    let listen = loopback(port(kind));
    let admin_port = admin(kind).to_string();
    let wasm_s = setup.wasm.to_string_lossy().into_owned();
    let mut args = vec!["envoy-config", "--xds", &xds, "--node-id", &node, "--pki-dir", &pki];
    // The wasm build's singleton loads the file; the native module is named by the control plane.
    if kind == Kind::SluiceNative {
        args.push("--native");
    } else {
        args.extend(["--wasm", &wasm_s]);
    }
    args.extend(["--out", &yaml_s, "--listen", &listen, "--admin-port", &admin_port]);
    proc::output(cli, &args, &[])?;
    // No provider credential in its environment: it gets them over SDS.
    let pid = crate::bench::start_envoy(
        setup.envoy,
        &yaml,
        admin(kind),
        45 + usize::from(offset(kind)),
        setup.envoy_core,
        setup.dir,
        &[],
        children,
    )?;
    if kind == Kind::SluiceNative {
        let log = std::fs::read_to_string(setup.dir.join(format!("envoy-{}.log", admin(kind)))).unwrap_or_default();
        if !log.contains("Dynamic module ABI version") || !log.contains("matched") {
            return Err("its Envoy did not log a matched dynamic-module ABI version".into());
        }
    }
    Ok(pid)
}

/// The control plane's config.yaml: the bench's OpenAI deployment, the master key from the
/// environment, no keys (they are made through the admin API).
fn xds_config(upstream_port: u16) -> String {
    format!(
        "model_list:\n  - model_name: gpt-4o\n    litellm_params:\n      model: openai/gpt-4o\n      api_base: http://127.0.0.1:{upstream_port}/v1\n      api_key: os.environ/BENCH_PROVIDER_KEY\n    model_info:\n      input_cost_per_token: 0.0000025\n      output_cost_per_token: 0.00001\ngeneral_settings:\n  master_key: os.environ/SLUICE_MASTER_KEY\n"
    )
}

fn loopback(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// Until the control plane logs that its ports are open (30 s at most).
fn wait_for_control_plane(api: &str, log_path: &Path, children: &mut Children) -> Result<(), String> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if let Some(Ok(Some(status))) = children.0.last_mut().map(Child::try_wait) {
            return Err(format!("sluice serve exited ({status}); see {}", log_path.display()));
        }
        let log = std::fs::read_to_string(log_path).unwrap_or_default();
        if log.contains("xDS and key lookups on") && TcpStream::connect(api).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("the control plane did not start in 30 s; see {}", log_path.display()))
}

/// `n` keys through the admin API (`sluice key create`), a few processes at a time. At ~7 ms
/// a key on SQLite this makes the few hundred to few thousand keys a run needs in seconds;
/// a saturated miss run (were the lookup budget configurable) would need the control plane's
/// database filled directly, as `lookup_bench` does.
fn create_keys(cli: &str, env: &[(&str, &str)], n: usize) -> Result<Vec<String>, String> {
    let mut keys = Vec::with_capacity(n);
    let mut args = vec!["key", "create", "--json"];
    args.extend_from_slice(&KEY_LIMITS);
    while keys.len() < n {
        let batch = (n - keys.len()).min(KEY_PARALLEL);
        let mut running = Vec::with_capacity(batch);
        for _ in 0..batch {
            let child = Command::new(cli)
                .args(&args)
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("{cli}: {e}"))?;
            running.push(child);
        }
        for child in running {
            let out = child.wait_with_output().map_err(|e| format!("sluice key create: {e}"))?;
            if !out.status.success() {
                return Err(format!("sluice key create: {}", String::from_utf8_lossy(&out.stderr).trim()));
            }
            let text = String::from_utf8_lossy(&out.stdout);
            keys.push(crate::quickstart::json_string_field(&text, "key").ok_or("`sluice key create` printed no key")?);
        }
    }
    Ok(keys)
}

/// The filter's counter `name` (`sluice.key_lookups`) from an Envoy's /stats, under either
/// build's prefix (`wasmcustom.`, `dynamicmodulescustom.`); 0 while it was never counted.
pub(crate) fn filter_counter(admin: u16, name: &str) -> Result<u64, String> {
    let (status, stats) = crate::quickstart::http(&loopback(admin), "GET", &format!("/stats?filter={name}"), &[], "")?;
    if status != 200 {
        return Err(format!("/stats on :{admin}: HTTP {status}"));
    }
    let suffix = format!(".{name}");
    Ok(stats
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(stat, _)| *stat == name || stat.ends_with(&suffix))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum())
}

/// The lookups an Envoy has started so far (`sluice.key_lookups`).
pub(crate) fn lookups(admin: u16) -> Result<u64, String> {
    filter_counter(admin, "sluice.key_lookups")
}

/// A process's CPU time so far in nanoseconds: the sum over its threads of
/// /proc/PID/task/TID/schedstat's first field (time on a CPU).
fn cpu_ns(pid: u32) -> Result<u64, String> {
    let dir = format!("/proc/{pid}/task");
    let mut total = 0u64;
    for entry in std::fs::read_dir(&dir).map_err(|e| format!("{dir}: {e}"))? {
        let path = entry.map_err(|e| format!("{dir}: {e}"))?.path().join("schedstat");
        // A thread that exits between the listing and the read has nothing more to add.
        if let Ok(text) = std::fs::read_to_string(&path) {
            total += text.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    Ok(total)
}

/// `bursts` bursts of [`BURST`] requests on one Envoy: request `i` carries `keys[i]` (a new key
/// each for the miss row, one key repeated for the hit row). Envoy's CPU per request covers the
/// bursts and what they leave behind, less its idle rate (module docs); req/s is over the
/// bursts' own time; latency over all requests.
pub(crate) fn run(
    port: u16,
    pid: u32,
    body: &str,
    provider_key: &str,
    keys: &[String],
    bursts: usize,
) -> Result<WrkResult, String> {
    if keys.len() < bursts * BURST {
        return Err(format!("{} keys for {bursts} bursts of {BURST}", keys.len()));
    }
    let mut conns = (0..CLIENTS).map(|c| Conn::open(FIRST_ADDRESS + c as u8, port)).collect::<Result<Vec<_>, _>>()?;
    std::thread::sleep(SETTLE);
    let mut idle_before = idle_rate(pid)?;
    let mut latencies = Vec::with_capacity(bursts * BURST);
    let mut non_2xx = 0usize;
    let (mut busy_ns, mut burst_s) = (0.0, 0.0);
    for burst_keys in keys.chunks(BURST).take(bursts) {
        let (cpu_b, t_b) = (cpu_ns(pid)?, Instant::now());
        let answers = burst(&mut conns, burst_keys, body, provider_key)?;
        let t_end = Instant::now();
        std::thread::sleep(TRAIL);
        let (cpu_c, t_c) = (cpu_ns(pid)?, Instant::now());
        let idle_after = idle_rate(pid)?;
        let idle_per_s = (idle_before + idle_after) / 2.0;
        idle_before = idle_after;
        busy_ns += cpu_c.saturating_sub(cpu_b) as f64 - idle_per_s * t_c.duration_since(t_b).as_secs_f64();
        burst_s += t_end.duration_since(t_b).as_secs_f64();
        non_2xx += answers.iter().filter(|(status, _)| !(200..300).contains(status)).count();
        latencies.extend(answers.into_iter().map(|(_, us)| us));
    }
    let requests = latencies.len() as f64;
    Ok(WrkResult {
        rps: requests / burst_s.max(1e-9),
        p50_us: crate::bench::percentile(&mut latencies, 50.0),
        p99_us: crate::bench::percentile(&mut latencies, 99.0),
        requests,
        non_2xx: non_2xx as f64,
        envoy_cpu_us_per_request: busy_ns / 1000.0 / requests.max(1.0),
        lookups: None,
        cache_hits: None,
    })
}

/// The Envoy's CPU nanoseconds per second over [`IDLE_WINDOW`] of no requests.
fn idle_rate(pid: u32) -> Result<f64, String> {
    let (cpu_a, t_a) = (cpu_ns(pid)?, Instant::now());
    std::thread::sleep(IDLE_WINDOW);
    let (cpu_b, t_b) = (cpu_ns(pid)?, Instant::now());
    Ok(cpu_b.saturating_sub(cpu_a) as f64 / t_b.duration_since(t_a).as_secs_f64())
}

/// [`FLOOD`] new keys at once (8 connections), all from one client address: what a saturated
/// client of new keys gets. Envoy's own counter says how many were looked up.
pub(crate) fn flood(port: u16, admin: u16, body: &str, provider_key: &str, keys: &[String]) -> Result<Flood, String> {
    let before = lookups(admin)?;
    let mut conns = (0..CLIENTS).map(|_| Conn::open(FLOOD_ADDRESS, port)).collect::<Result<Vec<_>, _>>()?;
    let answers = burst(&mut conns, keys, body, provider_key)?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(Flood {
        requests: answers.len(),
        lookups: lookups(admin)?.saturating_sub(before),
        refused: answers.iter().filter(|(status, _)| *status == 429).count(),
    })
}

/// One burst: every connection sends its share of `keys` one request after the other, all
/// connections at once; (status, latency in µs) per request.
fn burst(conns: &mut [Conn], keys: &[String], body: &str, provider_key: &str) -> Result<Vec<(u16, f64)>, String> {
    let share = keys.len().div_ceil(conns.len().max(1)).max(1);
    let shares = keys.chunks(share);
    let barrier = Barrier::new(shares.len());
    std::thread::scope(|scope| {
        let handles: Vec<_> = conns
            .iter_mut()
            .zip(shares)
            .map(|(conn, keys)| {
                let barrier = &barrier;
                scope.spawn(move || -> Result<Vec<(u16, f64)>, String> {
                    let requests: Vec<String> = keys.iter().map(|k| request(k, body, provider_key)).collect();
                    barrier.wait();
                    let mut out = Vec::with_capacity(requests.len());
                    for request in &requests {
                        let start = Instant::now();
                        let status = conn.exchange(request.as_bytes())?;
                        out.push((status, start.elapsed().as_secs_f64() * 1e6));
                    }
                    Ok(out)
                })
            })
            .collect();
        let mut all = Vec::with_capacity(keys.len());
        for handle in handles {
            all.extend(handle.join().map_err(|_| "a burst client's thread panicked".to_owned())??);
        }
        Ok(all)
    })
}

/// The chat request the wrk scripts send, with `key`.
fn request(key: &str, body: &str, provider_key: &str) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\nauthorization: Bearer {key}\r\nx-bench-provider-key: Bearer {provider_key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A keep-alive HTTP/1.1 connection from a loopback address (127.0.0.`address`).
struct Conn {
    address: u8,
    port: u16,
    stream: TcpStream,
    /// Bytes read past the last response.
    buf: Vec<u8>,
}

impl Conn {
    fn open(address: u8, port: u16) -> Result<Self, String> {
        let stream = sys::connect_from([127, 0, 0, address], port)?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
        Ok(Self { address, port, stream, buf: Vec::new() })
    }

    /// Sends a request and reads its whole response; its status. A response that closes the
    /// connection gets a new one from the same address.
    fn exchange(&mut self, request: &[u8]) -> Result<u16, String> {
        self.stream.write_all(request).map_err(|e| format!("send to :{}: {e}", self.port))?;
        let head = self.until(b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&head).into_owned();
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or("malformed HTTP response")?;
        let (mut length, mut chunked, mut close) = (0usize, false, false);
        for line in head.lines().skip(1) {
            let Some((name, value)) = line.split_once(':') else { continue };
            let value = value.trim().to_ascii_lowercase();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse().map_err(|_| "bad content-length".to_owned())?,
                "transfer-encoding" => chunked = value.contains("chunked"),
                "connection" => close = value.contains("close"),
                _ => {}
            }
        }
        if chunked {
            loop {
                let size_line = String::from_utf8_lossy(&self.until(b"\r\n")?).into_owned();
                let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|_| format!("bad chunk size {size_line:?}"))?;
                if size == 0 {
                    // Trailers, up to the empty line.
                    while !self.until(b"\r\n")?.is_empty() {}
                    break;
                }
                self.take(size + 2)?;
            }
        } else {
            self.take(length)?;
        }
        if close {
            *self = Self::open(self.address, self.port)?;
        }
        Ok(status)
    }

    fn fill(&mut self) -> Result<(), String> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).map_err(|e| format!("read from :{}: {e}", self.port))?;
        if n == 0 {
            return Err(format!(":{} closed the connection mid-response", self.port));
        }
        self.buf.extend_from_slice(chunk.get(..n).unwrap_or(&[]));
        Ok(())
    }

    /// The bytes up to `delimiter` (consumed with it, not returned).
    fn until(&mut self, delimiter: &[u8]) -> Result<Vec<u8>, String> {
        loop {
            if let Some(at) = self.buf.windows(delimiter.len()).position(|w| w == delimiter) {
                let out: Vec<u8> = self.buf.drain(..at + delimiter.len()).take(at).collect();
                return Ok(out);
            }
            self.fill()?;
        }
    }

    fn take(&mut self, n: usize) -> Result<(), String> {
        while self.buf.len() < n {
            self.fill()?;
        }
        self.buf.drain(..n);
        Ok(())
    }
}

/// The one thing std cannot do: bind a TCP socket to a source address before connecting.
#[allow(unsafe_code)]
mod sys {
    use std::net::TcpStream;
    use std::os::fd::{FromRawFd, OwnedFd};

    fn sockaddr(ip: [u8; 4], port: u16) -> libc::sockaddr_in {
        libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            // Network byte order is the address's bytes in memory order.
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(ip) },
            sin_zero: [0; 8],
        }
    }

    /// A TCP connection from `source` (any port) to 127.0.0.1:`port`.
    pub(super) fn connect_from(source: [u8; 4], port: u16) -> Result<TcpStream, String> {
        // SAFETY: socket(2) takes no pointers; the result is checked before use.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` is an open descriptor this function just created and nothing else owns;
        // the OwnedFd closes it on every path below.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let local = sockaddr(source, 0);
        // SAFETY: `local` is a valid sockaddr_in that outlives the call, and `len` is its size.
        if unsafe { libc::bind(fd, (&raw const local).cast(), len) } != 0 {
            let [a, b, c, d] = source;
            return Err(format!("bind {a}.{b}.{c}.{d}: {}", std::io::Error::last_os_error()));
        }
        let remote = sockaddr([127, 0, 0, 1], port);
        // SAFETY: as above, for `remote`; a blocking connect on a socket this function owns.
        if unsafe { libc::connect(fd, (&raw const remote).cast(), len) } != 0 {
            return Err(format!("connect to 127.0.0.1:{port}: {}", std::io::Error::last_os_error()));
        }
        Ok(TcpStream::from(owned))
    }
}
