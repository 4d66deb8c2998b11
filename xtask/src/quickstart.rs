//! `cargo xtask run`: the quickstart. Mock provider on :8081, Envoy with Sluice on :4000
//! (admin on 127.0.0.1:9901), configured from examples/config.yaml plus a fresh key.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::proc::{self, Children, root};
use crate::setup;

const LISTEN: &str = "127.0.0.1:4000";
const MOCK: &str = "127.0.0.1:8081";
const ADMIN_PORT: &str = "9901";

pub fn run(smoke: bool) -> Result<(), String> {
    let tools = setup::setup()?;
    let dir = root().join(".sluice");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let config = dir.join("config.yaml");
    std::fs::copy(root().join("examples/config.yaml"), &config).map_err(|e| format!("examples/config.yaml: {e}"))?;
    let config_s = config.to_string_lossy().into_owned();
    let cli = tools.cli.to_string_lossy().into_owned();

    // Demo secrets, fresh each run: the master key and the mock provider's own keys.
    let master_key = format!("sk-master-{}", proc::random_hex()?);
    let openai_key = format!("mock-openai-{}", proc::random_hex()?);
    let anthropic_key = format!("mock-anthropic-{}", proc::random_hex()?);
    let env = [
        ("SLUICE_MASTER_KEY", master_key.as_str()),
        ("MOCK_OPENAI_KEY", openai_key.as_str()),
        ("MOCK_ANTHROPIC_KEY", anthropic_key.as_str()),
    ];
    let created =
        proc::output(&cli, &["key", "new", "--alias", "quickstart", "--append-to", &config_s, "--json"], &env)?;
    let key = json_string_field(&created, "key").ok_or("`sluice key new --json` printed no key")?;
    let envoy_yaml = dir.join("envoy.yaml").to_string_lossy().into_owned();
    let wasm = tools.wasm.to_string_lossy().into_owned();
    envoy_config(&cli, &config_s, &wasm, &envoy_yaml, "0.0.0.0:4000", ADMIN_PORT, &env)?;

    let log_path = dir.join("envoy.log");
    let log = std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let mut children = Children(Vec::new());
    children.0.push(
        Command::new(&tools.mock)
            .args(["--listen", MOCK, "--openai-key", &openai_key, "--anthropic-key", &anthropic_key])
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start the mock provider: {e}"))?,
    );
    children.0.push(
        Command::new(&tools.envoy)
            .args(["-c", &envoy_yaml, "--disable-hot-restart", "--log-level", "info", "--concurrency", "2"])
            .envs(env)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start Envoy ({}): {e}", tools.envoy.display()))?,
    );
    wait_until_ready(&format!("127.0.0.1:{ADMIN_PORT}"), Duration::from_secs(30))
        .map_err(|e| format!("{e}; see {}", log_path.display()))?;
    wait_for_port(MOCK, Duration::from_secs(10))?;

    let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hello from the Sluice quickstart"}]}"#;
    println!(
        "\nSluice is running: Envoy on http://localhost:4000 (admin http://127.0.0.1:{ADMIN_PORT}), mock provider on http://{MOCK}"
    );
    println!("Envoy log (usage records are the `sluice.usage` lines): {}\n", log_path.display());
    println!("Your API key (shown once; only its hash is in {}):\n  {key}\n", config.display());
    println!(
        "Try it:\n  curl -s http://localhost:4000/v1/chat/completions \\\n    -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\\n    -d '{body}'\n"
    );
    println!("Or with the OpenAI SDK:\n  OpenAI(base_url=\"http://localhost:4000/v1\", api_key=\"{key}\")\n");

    if smoke {
        let (status, response) = http_post(LISTEN, "/v1/chat/completions", &key, body)?;
        if status != 200 || !response.contains("\"usage\"") {
            return Err(format!("quickstart request failed: HTTP {status}: {response}"));
        }
        println!("Smoke request: HTTP {status}\n{response}");
        return Ok(());
    }
    println!("Press Ctrl-C to stop.");
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
