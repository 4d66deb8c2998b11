//! `cargo xtask run`: the quickstart. The control plane (`sluice serve`, SQLite in .sluice/)
//! with the models of examples/config.yaml, the mock provider on :8081, and an Envoy with
//! Sluice on :4000 (admin on 127.0.0.1:9901) configured over xDS; it creates a key with the
//! CLI and prints how to use it. `cargo xtask join` starts one more Envoy (:4010) from the same
//! control plane.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::proc::{self, Children, root};
use crate::setup::{self, Tools};

const LISTEN: &str = "127.0.0.1:4000";
const MOCK: &str = "127.0.0.1:8081";
const ADMIN_PORT: &str = "9901";
const CONTROL_PLANE: &str = "127.0.0.1:4001";
const XDS: &str = "127.0.0.1:4002";

pub fn run(smoke: bool) -> Result<(), String> {
    let tools = setup::setup()?;
    let dir = root().join(".sluice");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let config = dir.join("config.yaml");
    std::fs::copy(root().join("examples/config.yaml"), &config).map_err(|e| format!("examples/config.yaml: {e}"))?;
    let config_s = config.to_string_lossy().into_owned();
    let cli = tools.cli.to_string_lossy().into_owned();
    let wasm = tools.wasm.to_string_lossy().into_owned();
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
    let mut children = Children(Vec::new());
    children.0.push(
        Command::new(&tools.mock)
            .args(["--listen", MOCK, "--openai-key", &openai_key, "--anthropic-key", &anthropic_key])
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start the mock provider: {e}"))?,
    );
    let cp_log_path = dir.join("control-plane.log");
    let cp_log = std::fs::File::create(&cp_log_path).map_err(|e| format!("{}: {e}", cp_log_path.display()))?;
    let db_url = format!("sqlite:{}", db.display());
    children.0.push(
        Command::new(&cli)
            .args(["serve", "-c", &config_s, "--database-url", &db_url, "--listen", CONTROL_PLANE])
            .args(["--xds-listen", XDS, "--envoy-wasm", &wasm, "--pki-dir", &pki_s])
            .envs(control_plane_env)
            .stdout(Stdio::null())
            .stderr(cp_log)
            .spawn()
            .map_err(|e| format!("cannot start the control plane: {e}"))?,
    );
    wait_for_port(CONTROL_PLANE, Duration::from_secs(30)).map_err(|e| format!("{e}; see {}", cp_log_path.display()))?;

    // A key, made the way an operator would: with the CLI against the admin API.
    let admin_env = [("SLUICE_API_KEY", master_key.as_str()), ("SLUICE_SERVER", "http://127.0.0.1:4001")];
    let created = proc::output(&cli, &["key", "create", "--alias", "quickstart", "--json"], &admin_env)?;
    let key = json_string_field(&created, "key").ok_or("`sluice key create --json` printed no key")?;

    let log_path = dir.join("envoy.log");
    children.0.push(start_envoy(&tools, "quickstart-1", "0.0.0.0:4000", ADMIN_PORT, &log_path)?);
    wait_until_ready(&format!("127.0.0.1:{ADMIN_PORT}"), Duration::from_secs(30))
        .map_err(|e| format!("{e}; see {}", log_path.display()))?;
    wait_for_port(MOCK, Duration::from_secs(10))?;

    let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hello from the Sluice quickstart"}]}"#;
    println!(
        "\nSluice is running: Envoy on http://localhost:4000 (admin http://127.0.0.1:{ADMIN_PORT}), configured by the control plane \
         (admin API {CONTROL_PLANE}, xDS {XDS}, SQLite {}), mock provider on http://{MOCK}",
        db.display()
    );
    println!("Logs: {} and {}\n", cp_log_path.display(), log_path.display());
    println!("Master key (admin API and CLI):\n  export SLUICE_API_KEY={master_key}\n");
    println!("An API key, created with `sluice key create --alias quickstart` (shown once):\n  {key}\n");
    println!(
        "Try it:\n  curl -s http://localhost:4000/v1/chat/completions \\\n    -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\\n    -d '{body}'\n"
    );
    println!("Or with the OpenAI SDK:\n  OpenAI(base_url=\"http://localhost:4000/v1\", api_key=\"{key}\")\n");
    println!(
        "More keys, limits, spend:\n  {cli} key create --alias my-service --rpm 60 --max-budget 5\n  {cli} spend --group-by key\n"
    );
    println!("Another Envoy from the same control plane (on :4010):\n  cargo xtask join\n");

    if smoke {
        let (status, response) = wait_for_answer(&key, body)?;
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
    let tools = setup::setup()?;
    wait_for_port(XDS, Duration::from_secs(2))
        .map_err(|_| "no control plane on 127.0.0.1:4002: run `cargo xtask run` first")?;
    let log_path = root().join(".sluice/envoy-2.log");
    let mut children = Children(vec![start_envoy(&tools, "quickstart-2", "0.0.0.0:4010", "9911", &log_path)?]);
    wait_until_ready("127.0.0.1:9911", Duration::from_secs(30))
        .map_err(|e| format!("{e}; see {}", log_path.display()))?;
    println!(
        "A second Envoy is serving on http://localhost:4010 with the same keys, models and limits (log: {}).",
        log_path.display()
    );
    println!("Press Ctrl-C to stop it.");
    watch(&mut children, &log_path)
}

/// An Envoy that knows only the control plane's address.
fn start_envoy(
    tools: &Tools,
    node_id: &str,
    listen: &str,
    admin_port: &str,
    log_path: &std::path::Path,
) -> Result<Child, String> {
    let cli = tools.cli.to_string_lossy().into_owned();
    let wasm = tools.wasm.to_string_lossy().into_owned();
    let yaml = root().join(format!(".sluice/{node_id}.yaml")).to_string_lossy().into_owned();
    // Its own client certificate, naming its node, from the run's CA.
    let pki = root().join(".sluice/pki").to_string_lossy().into_owned();
    if !root().join(format!(".sluice/pki/envoy-{node_id}.pem")).exists() {
        proc::run(&cli, &["pki", "envoy", "--dir", &pki, "--node-id", node_id], &[])?;
    }
    proc::run(
        &cli,
        &[
            "envoy-config",
            "--xds",
            XDS,
            "--node-id",
            node_id,
            "--wasm",
            &wasm,
            "--out",
            &yaml,
            "--listen",
            listen,
            "--admin-port",
            admin_port,
            "--pki-dir",
            &pki,
        ],
        &[],
    )?;
    let log = std::fs::File::create(log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    Command::new(&tools.envoy)
        .args(["-c", &yaml, "--disable-hot-restart", "--log-level", "info", "--concurrency", "2"])
        .args(["--base-id", admin_port])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start Envoy ({}): {e}", tools.envoy.display()))
}

/// The listener serves once the control plane's filter config has arrived.
fn wait_for_answer(key: &str, body: &str) -> Result<(u16, String), String> {
    let start = Instant::now();
    loop {
        let answer = http_post(LISTEN, "/v1/chat/completions", key, body);
        match answer {
            Ok((200, _)) => return answer,
            _ if start.elapsed() > Duration::from_secs(30) => return answer,
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn watch(children: &mut Children, log_path: &std::path::Path) -> Result<(), String> {
    loop {
        for child in &mut children.0 {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("a process exited ({status}); see {}", log_path.display()));
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `sluice envoy-config`: the bootstrap for a config, listener and admin port.
pub fn envoy_config(
    cli: &str,
    config: &str,
    wasm: &str,
    out: &str,
    listen: &str,
    admin_port: &str,
    env: &[(&str, &str)],
) -> Result<(), String> {
    let args =
        ["envoy-config", "-c", config, "--wasm", wasm, "--out", out, "--listen", listen, "--admin-port", admin_port];
    proc::run(cli, &args, env)
}

/// Minimal extraction of `"field": "value"` from the CLI's JSON (xtask has no dependencies).
pub fn json_string_field(json: &str, field: &str) -> Option<String> {
    let start = json.find(&format!("\"{field}\""))?;
    let rest = json.get(start + field.len() + 2..)?;
    let open = rest.find('"')?;
    let rest = rest.get(open + 1..)?;
    Some(rest.get(..rest.find('"')?)?.to_owned())
}

fn wait_for_port(addr: &str, timeout: Duration) -> Result<(), String> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("nothing listening on {addr} after {timeout:?}"))
}

pub fn wait_until_ready(admin: &str, timeout: Duration) -> Result<(), String> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Ok((200, _)) = http(admin, "GET", "/ready", &[], "") {
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
