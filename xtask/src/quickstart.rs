//! `cargo xtask run`: the quickstart. The control plane (`sluice serve`, SQLite in .sluice/)
//! with the models of examples/config.yaml, the mock provider on :8081, and an Envoy with
//! Sluice on :4000 (admin on 127.0.0.1:9901) configured over xDS; it creates a key with the
//! CLI and prints how to use it. `cargo xtask join` starts one more Envoy (:4010) from the same
//! control plane.
//!
//! `cargo xtask run --native` runs the native build (`libsluice_filter.so`, an Envoy dynamic
//! module) instead of the wasm one: the control plane names it (`sluice serve --envoy-native`)
//! and the Envoys start from `sluice envoy-config --xds … --native`. `join` follows the build
//! the running quickstart chose (kept in its state directory).
//!
//! `SLUICE_QUICKSTART_BASE_PORT=N` moves every port to N and the ones after it, and the state to
//! `.sluice/base-N/` (the integration tests run a quickstart beside a developer's this way).
//! Every port is checked before anything starts, and the children are supervised
//! (src/supervise.rs): a stop signal (Ctrl-C, SIGTERM, SIGHUP) stops them all, and they die with
//! xtask if it is killed.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::proc::{self, root};
use crate::setup::{self, Tools};
use crate::supervise::{self, Children};

/// The build of the filter the quickstart runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// `sluice_filter.wasm` (the default).
    Wasm,
    /// `libsluice_filter.so`, an Envoy dynamic module.
    Native,
}

impl Build {
    /// `--native` among the arguments chooses the native build.
    pub fn from_args(args: &[String]) -> Self {
        if args.iter().any(|a| a == "--native") { Self::Native } else { Self::Wasm }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Wasm => "wasm",
            Self::Native => "native",
        }
    }

    /// `sluice serve`'s flag naming the filter on the Envoy hosts (here: this machine).
    fn serve_args(self, tools: &Tools) -> [String; 2] {
        match self {
            Self::Wasm => ["--envoy-wasm".into(), tools.wasm.to_string_lossy().into_owned()],
            Self::Native => ["--envoy-native".into(), tools.native.to_string_lossy().into_owned()],
        }
    }

    /// `sluice envoy-config --xds`'s: the wasm build's singleton loads the file; the native
    /// module is named by the control plane.
    fn envoy_config_args(self, tools: &Tools) -> Vec<String> {
        match self {
            Self::Wasm => vec!["--wasm".into(), tools.wasm.to_string_lossy().into_owned()],
            Self::Native => vec!["--native".into()],
        }
    }

    /// The file in a quickstart's state directory that tells `join` which build it runs.
    fn marker(dir: &Path) -> PathBuf {
        dir.join("filter-build")
    }

    /// The build the quickstart in `dir` runs (wasm if it does not say).
    fn of_running(dir: &Path) -> Self {
        match std::fs::read_to_string(Self::marker(dir)) {
            Ok(text) if text.trim() == Self::Native.name() => Self::Native,
            _ => Self::Wasm,
        }
    }
}

/// Where a quickstart listens and keeps its state.
struct Quickstart {
    dir: PathBuf,
    listen: u16,
    control_plane: u16,
    xds: u16,
    metrics: u16,
    mock: u16,
    admin: u16,
    /// `cargo xtask join`'s Envoy.
    join_listen: u16,
    join_admin: u16,
}

impl Quickstart {
    fn from_env() -> Result<Self, String> {
        let Ok(base) = std::env::var("SLUICE_QUICKSTART_BASE_PORT") else {
            return Ok(Self {
                dir: root().join(".sluice"),
                listen: 4000,
                control_plane: 4001,
                xds: 4002,
                metrics: 4003,
                mock: 8081,
                admin: 9901,
                join_listen: 4010,
                join_admin: 9911,
            });
        };
        let b = base
            .parse::<u16>()
            .ok()
            .filter(|b| (1024..=65_000).contains(b))
            .ok_or_else(|| format!("SLUICE_QUICKSTART_BASE_PORT={base}: not a port from 1024 to 65000"))?;
        Ok(Self {
            dir: root().join(format!(".sluice/base-{b}")),
            listen: b,
            control_plane: b + 1,
            xds: b + 2,
            metrics: b + 3,
            mock: b + 4,
            admin: b + 5,
            join_listen: b + 10,
            join_admin: b + 11,
        })
    }

    /// The ports `cargo xtask run` listens on, with what for.
    fn ports(&self) -> [(u16, &'static str); 6] {
        [
            (self.listen, "Envoy's listener"),
            (self.control_plane, "the control plane's admin API"),
            (self.xds, "the control plane's xDS and key lookups"),
            (self.metrics, "the control plane's metrics"),
            (self.mock, "the mock provider"),
            (self.admin, "Envoy's admin"),
        ]
    }
}

/// Fails, naming the first taken port and what it was wanted for, before anything starts: a
/// leftover process on a port would otherwise answer in the new one's place (an old control
/// plane refusing the new master key).
fn check_ports_free(ports: &[(u16, &str)], hint: &str) -> Result<(), String> {
    for &(port, what) in ports {
        // Envoy listens on every address; a bind to 0.0.0.0 conflicts with a listener on any.
        match TcpListener::bind(("0.0.0.0", port)) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::AddrInUse => {
                return Err(format!("port {port} ({what}) is in use: {hint} (`ss -ltnp 'sport = :{port}'`)"));
            }
            Err(e) => return Err(format!("cannot listen on port {port} ({what}): {e}")),
        }
    }
    Ok(())
}

/// The comment in examples/config.yaml above its standalone-only sections.
const STANDALONE_ONLY: &str = "# Standalone mode only:";

pub fn run(smoke: bool, build: Build) -> Result<(), String> {
    supervise::catch_stop_signals();
    let qs = Quickstart::from_env()?;
    let tools = setup::setup()?;
    supervise::stopped()?;
    check_ports_free(&qs.ports(), "is another `cargo xtask run` still running?")?;
    let dir = qs.dir.clone();
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let config = dir.join("config.yaml");
    let example = std::fs::read_to_string(root().join("examples/config.yaml"))
        .map_err(|e| format!("examples/config.yaml: {e}"))?;
    // The example's models point at the mock provider on its default port. Its standalone-only
    // sections (teams and keys in the file) go: `sluice serve` keeps those in its database, and
    // refuses a config.yaml that has them.
    let example = example.replace("http://127.0.0.1:8081", &format!("http://127.0.0.1:{}", qs.mock));
    let example = match example.find(STANDALONE_ONLY) {
        Some(at) => example[..at].to_owned(),
        None => return Err(format!("examples/config.yaml: no {STANDALONE_ONLY:?} line before its teams and keys")),
    };
    std::fs::write(&config, example).map_err(|e| format!("{}: {e}", config.display()))?;
    let config_s = config.to_string_lossy().into_owned();
    let cli = tools.cli.to_string_lossy().into_owned();
    let marker = Build::marker(&dir);
    std::fs::write(&marker, build.name()).map_err(|e| format!("{}: {e}", marker.display()))?;
    // A fresh database each run, so the printed master key is the one that owns it.
    let db = dir.join("sluice.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }

    // The data-plane port's mTLS, as in production: a CA made for this run (`sluice pki`).
    let pki = dir.join("pki");
    let _ = std::fs::remove_dir_all(&pki);
    let pki_s = pki.to_string_lossy().into_owned();
    proc::run(&cli, &["pki", "init", "--dir", &pki_s, "--host", "127.0.0.1,localhost"], &[])?;

    // Demo secrets, fresh each run: the master key and the mock provider's own keys.
    let master_key = format!("sk-master-{}", proc::random_hex()?);
    let openai_key = format!("mock-openai-{}", proc::random_hex()?);
    let anthropic_key = format!("mock-anthropic-{}", proc::random_hex()?);
    // Provider keys go to the control plane only: Envoy gets them over SDS.
    let control_plane_env = [
        ("SLUICE_MASTER_KEY", master_key.as_str()),
        ("MOCK_OPENAI_KEY", openai_key.as_str()),
        ("MOCK_ANTHROPIC_KEY", anthropic_key.as_str()),
    ];
    let (mock, control_plane, xds) = (loopback(qs.mock), loopback(qs.control_plane), loopback(qs.xds));
    let mut children = Children(Vec::new());
    children.0.push(
        supervise::command(&tools.mock)
            .args(["--listen", &mock, "--openai-key", &openai_key, "--anthropic-key", &anthropic_key])
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start the mock provider: {e}"))?,
    );
    let cp_log_path = dir.join("control-plane.log");
    let cp_log = std::fs::File::create(&cp_log_path).map_err(|e| format!("{}: {e}", cp_log_path.display()))?;
    let db_url = format!("sqlite:{}", db.display());
    children.0.push(
        supervise::command(&cli)
            .args(["serve", "-c", &config_s, "--database-url", &db_url, "--listen", &control_plane])
            .args(["--xds-listen", &xds, "--metrics-listen", &loopback(qs.metrics)])
            .args(build.serve_args(&tools))
            .args(["--pki-dir", &pki_s])
            .envs(control_plane_env)
            .stdout(Stdio::null())
            .stderr(cp_log)
            .spawn()
            .map_err(|e| format!("cannot start the control plane: {e}"))?,
    );
    wait_for_port(&control_plane, Duration::from_secs(30), &mut children)
        .map_err(|e| format!("{e}; see {}", cp_log_path.display()))?;

    // A key, made the way an operator would: with the CLI against the admin API.
    let server = format!("http://{control_plane}");
    let admin_env = [("SLUICE_API_KEY", master_key.as_str()), ("SLUICE_SERVER", server.as_str())];
    let created = proc::output(&cli, &["key", "create", "--alias", "quickstart", "--json"], &admin_env)?;
    let key = json_string_field(&created, "key").ok_or("`sluice key create --json` printed no key")?;

    let log_path = dir.join("envoy.log");
    let (listen, admin_port) = (format!("0.0.0.0:{}", qs.listen), qs.admin.to_string());
    children.0.push(start_envoy(&tools, &qs, build, "quickstart-1", &listen, &admin_port, &log_path)?);
    wait_for(Duration::from_secs(30), &mut children, || envoy_ready(&loopback(qs.admin)))
        .map_err(|e| format!("Envoy not ready on {}: {e}; see {}", loopback(qs.admin), log_path.display()))?;
    wait_for_port(&mock, Duration::from_secs(10), &mut children)?;

    let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hello from the Sluice quickstart"}]}"#;
    let (port, admin) = (qs.listen, qs.admin);
    println!(
        "\nSluice is running ({} build): Envoy on http://localhost:{port} (admin http://127.0.0.1:{admin}), configured by the control plane \
         (admin API {control_plane}, xDS {xds}, SQLite {}), mock provider on http://{mock}",
        build.name(),
        db.display()
    );
    println!("Logs: {} and {}\n", cp_log_path.display(), log_path.display());
    println!("Master key (admin API and CLI):\n  export SLUICE_API_KEY={master_key}\n");
    println!("An API key, created with `sluice key create --alias quickstart` (shown once):\n  {key}\n");
    println!(
        "Try it:\n  curl -s http://localhost:{port}/v1/chat/completions \\\n    -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\\n    -d '{body}'\n"
    );
    println!("Or with the OpenAI SDK:\n  OpenAI(base_url=\"http://localhost:{port}/v1\", api_key=\"{key}\")\n");
    println!(
        "More keys, limits, spend:\n  {cli} key create --alias my-service --rpm 60 --max-budget 5\n  {cli} spend --group-by key\n"
    );
    println!("Another Envoy from the same control plane (on :{}):\n  cargo xtask join\n", qs.join_listen);

    if smoke {
        let (status, response) = wait_for_answer(&loopback(qs.listen), &key, body)?;
        if status != 200 || !response.contains("\"usage\"") {
            return Err(format!("quickstart request failed: HTTP {status}: {response}"));
        }
        println!("Smoke request: HTTP {status}\n{response}");
        return Ok(());
    }
    println!("Press Ctrl-C to stop.");
    watch(&mut children, &log_path)
}

/// `cargo xtask join`: one more Envoy on :4010 (admin 9911), configured by the running
/// quickstart's control plane.
pub fn join() -> Result<(), String> {
    supervise::catch_stop_signals();
    let qs = Quickstart::from_env()?;
    let tools = setup::setup()?;
    supervise::stopped()?;
    let xds = loopback(qs.xds);
    let mut children = Children(Vec::new());
    wait_for_port(&xds, Duration::from_secs(2), &mut children)
        .map_err(|_| format!("no control plane on {xds}: run `cargo xtask run` first"))?;
    let ports = [(qs.join_listen, "the second Envoy's listener"), (qs.join_admin, "the second Envoy's admin")];
    check_ports_free(&ports, "is another `cargo xtask join` still running?")?;
    let log_path = qs.dir.join("envoy-2.log");
    let (listen, admin_port) = (format!("0.0.0.0:{}", qs.join_listen), qs.join_admin.to_string());
    // The build the control plane serves: a listener asks ECDS for one filter type.
    let build = Build::of_running(&qs.dir);
    children.0.push(start_envoy(&tools, &qs, build, "quickstart-2", &listen, &admin_port, &log_path)?);
    wait_for(Duration::from_secs(30), &mut children, || envoy_ready(&loopback(qs.join_admin)))
        .map_err(|e| format!("Envoy not ready on {}: {e}; see {}", loopback(qs.join_admin), log_path.display()))?;
    println!(
        "A second Envoy is serving on http://localhost:{} with the same keys, models and limits (log: {}).",
        qs.join_listen,
        log_path.display()
    );
    println!("Press Ctrl-C to stop it.");
    watch(&mut children, &log_path)
}

/// An Envoy that knows only the control plane's address.
fn start_envoy(
    tools: &Tools,
    qs: &Quickstart,
    build: Build,
    node_id: &str,
    listen: &str,
    admin_port: &str,
    log_path: &std::path::Path,
) -> Result<Child, String> {
    let cli = tools.cli.to_string_lossy().into_owned();
    let yaml = qs.dir.join(format!("{node_id}.yaml")).to_string_lossy().into_owned();
    let xds = loopback(qs.xds);
    // Its own client certificate, naming its node, from the run's CA.
    let pki = qs.dir.join("pki").to_string_lossy().into_owned();
    if !qs.dir.join(format!("pki/envoy-{node_id}.pem")).exists() {
        proc::run(&cli, &["pki", "envoy", "--dir", &pki, "--node-id", node_id], &[])?;
    }
    let module = build.envoy_config_args(tools);
    let mut args = vec!["envoy-config", "--xds", &xds, "--node-id", node_id];
    args.extend(module.iter().map(String::as_str));
    args.extend(["--out", &yaml, "--listen", listen, "--admin-port", admin_port, "--pki-dir", &pki]);
    proc::run(&cli, &args, &[])?;
    let log = std::fs::File::create(log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    supervise::command(&tools.envoy)
        .args(["-c", &yaml, "--disable-hot-restart", "--log-level", "info", "--concurrency", "2"])
        .args(["--base-id", admin_port])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start Envoy ({}): {e}", tools.envoy.display()))
}

/// The listener serves once the control plane's filter config has arrived.
fn wait_for_answer(listen: &str, key: &str, body: &str) -> Result<(u16, String), String> {
    let start = Instant::now();
    loop {
        supervise::stopped()?;
        let answer = http_post(listen, "/v1/chat/completions", key, body);
        match answer {
            Ok((200, _)) => return answer,
            _ if start.elapsed() > Duration::from_secs(30) => return answer,
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Until a stop signal (then `Ok`: the children are stopped as they drop) or a child's exit.
fn watch(children: &mut Children, log_path: &Path) -> Result<(), String> {
    loop {
        if supervise::stop_signal().is_some() {
            return Ok(());
        }
        if let Some(status) = exited(children) {
            return Err(format!("a process exited ({status}); see {}", log_path.display()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn exited(children: &mut Children) -> Option<std::process::ExitStatus> {
    children.0.iter_mut().find_map(|child| child.try_wait().ok().flatten())
}

/// Polls `ready` every 100 ms until it holds; `Err` on timeout, a stop signal or a child's exit.
fn wait_for(timeout: Duration, children: &mut Children, mut ready: impl FnMut() -> bool) -> Result<(), String> {
    let start = Instant::now();
    loop {
        supervise::stopped()?;
        if let Some(status) = exited(children) {
            return Err(format!("a process exited ({status})"));
        }
        if ready() {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(format!("not ready after {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn loopback(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// Minimal extraction of `"field": "value"` from the CLI's JSON (xtask has no dependencies).
pub fn json_string_field(json: &str, field: &str) -> Option<String> {
    let start = json.find(&format!("\"{field}\""))?;
    let rest = json.get(start + field.len() + 2..)?;
    let open = rest.find('"')?;
    let rest = rest.get(open + 1..)?;
    Some(rest.get(..rest.find('"')?)?.to_owned())
}

fn wait_for_port(addr: &str, timeout: Duration, children: &mut Children) -> Result<(), String> {
    wait_for(timeout, children, || TcpStream::connect(addr).is_ok()).map_err(|e| format!("{addr}: {e}"))
}

fn envoy_ready(admin: &str) -> bool {
    matches!(http(admin, "GET", "/ready", &[], ""), Ok((200, _)))
}

pub fn wait_until_ready(admin: &str, timeout: Duration) -> Result<(), String> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if envoy_ready(admin) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!("Envoy not ready on {admin} after {timeout:?}"))
}

fn http_post(addr: &str, path: &str, key: &str, body: &str) -> Result<(u16, String), String> {
    let auth = format!("Bearer {key}");
    http(addr, "POST", path, &[("authorization", &auth), ("content-type", "application/json")], body)
}

/// One HTTP/1.1 request with `Connection: close`.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("{addr}: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let mut request =
        format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n", body.len());
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| e.to_string())?;
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or("malformed HTTP response")?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    Ok((status, body))
}
