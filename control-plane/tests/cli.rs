//! The `sluice` CLI against a running `sluice serve` (SQLite), as a user would drive it.

#![allow(clippy::unwrap_used)] // test helpers: a failure here is a failed test

use std::net::TcpStream;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");
const MASTER: &str = "sk-master-cli-test-0123456789abcdef";

struct Server {
    child: Child,
    url: String,
    database_url: String,
    /// Everything `sluice serve` wrote (stdout and stderr).
    log: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until `sluice serve` accepts connections on `port`.
fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "sluice serve did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A path under the temp dir that no earlier run used: a port can repeat across runs, and a
/// database left by one would leak into the next.
fn fresh_path(prefix: &str) -> std::path::PathBuf {
    let mut random = [0u8; 6];
    getrandom::fill(&mut random).unwrap();
    std::env::temp_dir().join(format!("{prefix}{}", random.iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

fn start() -> Server {
    let port = free_port();
    let db = fresh_path("sluice-cli-").with_extension("db");
    let log = db.with_extension("log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(SLUICE)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--xds-listen",
            &format!("127.0.0.1:{}", free_port()),
            "--metrics-listen",
            &format!("127.0.0.1:{}", free_port()),
            "--database-url",
            &format!("sqlite:{}", db.display()),
            // These tests are about the admin API; the data-plane port's mTLS has its own.
            "--insecure-data-plane",
        ])
        .env("SLUICE_MASTER_KEY", MASTER)
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    wait_for_port(port);
    Server { child, url: format!("http://127.0.0.1:{port}"), database_url: format!("sqlite:{}", db.display()), log }
}

fn sluice(server: &str, key: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(SLUICE);
    cmd.args(args).env("SLUICE_SERVER", server).env_remove("SLUICE_API_KEY");
    if let Some(k) = key {
        cmd.env("SLUICE_API_KEY", k);
    }
    cmd.output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_str(&ok(out)).unwrap()
}

#[test]
fn the_cli_drives_keys_and_the_audit_log() {
    let s = start();
    let created = json(&sluice(
        &s.url,
        Some(MASTER),
        &[
            "key",
            "create",
            "--alias",
            "cli-1",
            "--team",
            "t1",
            "--models",
            "gpt-4o",
            "--max-budget",
            "50",
            "--rpm",
            "60",
            "--json",
        ],
    ));
    let key = created["key"].as_str().unwrap().to_owned();
    assert!(sluice_core::keys::check_format(key.as_bytes()).is_ok());
    assert_eq!((created["key_alias"].as_str(), created["max_budget"].as_f64()), (Some("cli-1"), Some(50.0)));

    // The table: a header and the key's row, with the key shown only by its ends.
    let table = ok(&sluice(&s.url, Some(MASTER), &["key", "list"]));
    let mut lines = table.lines();
    assert!(lines.next().unwrap().starts_with("KEY_ID"));
    let row = lines.next().unwrap();
    assert!(row.contains("cli-1") && row.contains("gpt-4o") && row.contains("active"));
    assert!(!table.contains(&key), "the list never shows a whole key");

    let blocked = ok(&sluice(&s.url, Some(MASTER), &["key", "block", "cli-1"]));
    assert!(blocked.contains("blocked"));
    let info = json(&sluice(&s.url, Some(MASTER), &["key", "info", &key, "--json"]));
    assert_eq!(info["blocked"], true);
    let updated = json(&sluice(
        &s.url,
        Some(MASTER),
        &["key", "update", "cli-1", "--tpm", "500", "--clear", "rpm_limit", "--json"],
    ));
    assert_eq!((updated["tpm_limit"].as_i64(), updated["rpm_limit"].as_i64()), (Some(500), None));

    let audit = json(&sluice(&s.url, Some(MASTER), &["audit", "--json"]));
    let actions: Vec<&str> = audit["entries"].as_array().unwrap().iter().filter_map(|e| e["action"].as_str()).collect();
    assert_eq!(actions, ["key.update", "key.block", "key.generate"]);
    assert!(!audit.to_string().contains(&key));

    // Nothing the server logged, and no error a client saw, holds a key or the master key.
    let wrong = sluice(&s.url, Some(&key), &["key", "list"]);
    let errors = String::from_utf8_lossy(&wrong.stderr).into_owned();
    let logged = std::fs::read_to_string(&s.log).unwrap();
    assert!(logged.contains("admin API on"), "the log is the server's: {logged}");
    for text in [&logged, &errors] {
        assert!(!text.contains(&key) && !text.contains(MASTER), "a secret in: {text}");
    }
    let deleted = ok(&sluice(&s.url, Some(MASTER), &["key", "delete", "cli-1"]));
    assert!(deleted.starts_with("deleted key_"));
    assert_eq!(json(&sluice(&s.url, Some(MASTER), &["key", "list", "--json"]))["keys"], serde_json::json!([]));
}

#[test]
fn the_cli_explains_what_went_wrong() {
    let s = start();
    let no_key = sluice(&s.url, None, &["key", "list"]);
    assert!(!no_key.status.success());
    assert!(String::from_utf8_lossy(&no_key.stderr).contains("--api-key"));

    let wrong = sluice(&s.url, Some("sk-not-the-master"), &["key", "list"]);
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("Unauthenticated"));

    let bad = sluice(&s.url, Some(MASTER), &["key", "create", "--max-budget", "-3"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("max_budget must be a non-negative number"));

    let down = sluice(&format!("http://127.0.0.1:{}", free_port()), Some(MASTER), &["key", "list"]);
    assert!(!down.status.success());
    assert!(String::from_utf8_lossy(&down.stderr).contains("cannot reach the control plane"));
}

#[test]
fn the_cli_drives_organizations_users_and_teams() {
    let s = start();
    let run = |args: &[&str]| sluice(&s.url, Some(MASTER), args);
    ok(&run(&["org", "create", "--id", "acme", "--max-budget", "1000"]));
    ok(&run(&["user", "create", "--id", "alice", "--org", "acme", "--email", "alice@acme.test"]));
    ok(&run(&["user", "create", "--id", "bob", "--org", "acme", "--role", "internal_user_viewer"]));
    ok(&run(&["team", "create", "--id", "t1", "--org", "acme", "--max-budget", "100", "--rpm", "600"]));
    ok(&run(&["team", "add-member", "t1", "alice", "--role", "admin"]));
    let team = json(&run(&["team", "add-member", "t1", "bob", "--json"]));
    let members: Vec<(String, String)> = team["teams"][0]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["user_id"].as_str().unwrap().to_owned(), m["role"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(members, [("alice".to_owned(), "admin".to_owned()), ("bob".to_owned(), "user".to_owned())]);
    let users = json(&run(&["user", "list", "--org", "acme", "--json"]));
    assert_eq!(users["users"].as_array().unwrap().len(), 2);
    assert_eq!(users["users"][0]["teams"], serde_json::json!(["t1"]));
    let table = ok(&run(&["team", "list"]));
    assert!(table.lines().nth(1).unwrap().starts_with("t1"));
    ok(&run(&["team", "remove-member", "t1", "bob"]));
    // An organization with teams and users cannot be deleted out from under them.
    let refused = run(&["org", "delete", "acme"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("FailedPrecondition"));
}

#[test]
fn the_cli_manages_model_deployments_and_serve_syncs_the_config_file() {
    // `serve -c config.yaml` syncs model_list into the database at start.
    let port = free_port();
    let dir = fresh_path("sluice-cli-models-");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        "model_list:\n  - model_name: gpt-4o\n    litellm_params:\n      model: openai/gpt-4o\n      api_key: os.environ/OPENAI_API_KEY\n    model_info:\n      id: from-file\n      input_cost_per_token: 0.0000025\n      output_cost_per_token: 0.00001\ngeneral_settings:\n  master_key: os.environ/TEST_MASTER\n",
    )
    .unwrap();
    let mut child = Command::new(SLUICE)
        .args(["serve", "-c", &config.to_string_lossy(), "--listen", &format!("127.0.0.1:{port}")])
        .args(["--xds-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--metrics-listen", &format!("127.0.0.1:{}", free_port()), "--insecure-data-plane"])
        .env("DATABASE_URL", format!("sqlite:{}", dir.join("db.sqlite").display()))
        .env("TEST_MASTER", MASTER)
        .env_remove("SLUICE_MASTER_KEY")
        .spawn()
        .unwrap();
    wait_for_port(port);
    let url = format!("http://127.0.0.1:{port}");
    let run = |args: &[&str]| sluice(&url, Some(MASTER), args);
    let listed = json(&run(&["model", "list", "--json"]));
    assert_eq!(listed["models"][0]["deployment_id"], "from-file");
    assert_eq!(listed["models"][0]["source"], "config");
    let made = json(&run(&[
        "model",
        "create",
        "gpt-4o-mini",
        "--params",
        r#"{"model": "openai/gpt-4o-mini", "api_key": "os.environ/OPENAI_API_KEY"}"#,
        "--info",
        r#"{"id": "mini", "input_cost_per_token": 1.5e-7, "output_cost_per_token": 6e-7}"#,
        "--json",
    ]));
    assert_eq!(made["models"][0]["source"], "api");
    let refused = run(&["model", "create", "x", "--params", r#"{"model": "openai/x", "api_key": "sk-literal"}"#]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("os.environ"));
    // The variable config.yaml reads the master key from is the control plane's own: never a
    // provider credential, even for the master key's holder.
    let own = run(&[
        "model",
        "create",
        "x",
        "--params",
        r#"{"model": "openai/x", "api_base": "https://collector.example", "api_key": "os.environ/TEST_MASTER"}"#,
    ]);
    assert!(!own.status.success());
    let says = String::from_utf8_lossy(&own.stderr);
    assert!(says.contains("os.environ/TEST_MASTER names one of the control plane's own secrets"), "{says}");
    assert!(!says.contains(MASTER));
    let table = ok(&run(&["model", "list"]));
    assert!(table.contains("from-file") && table.contains("mini") && table.contains("openai/gpt-4o-mini"));
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn the_cli_reports_spend() {
    let s = start();
    // Seed two records as ingestion would write them (yesterday and today, team t1).
    let now = sluice_control_plane::store::now_ms();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        use sluice_control_plane::store::{SpendLog, SpendStore, SqlStore};
        let store = SqlStore::open(&s.database_url).await.unwrap();
        let log = |id: &str, at: i64, cost: i64| SpendLog {
            record_id: id.into(),
            team_id: Some("t1".into()),
            model_group: "gpt-4o".into(),
            prompt_tokens: 10,
            completion_tokens: 5,
            cost_nanos: cost,
            start_ms: at,
            ..Default::default()
        };
        store.record_spend(&[log("a", now - 86_400_000, 1_500_000), log("b", now, 2_000_000)]).await.unwrap();
    });
    let report = json(&sluice(&s.url, Some(MASTER), &["spend", "--team", "t1", "--since", "7d", "--json"]));
    assert_eq!(report["requests"], 2);
    assert!((report["spend"].as_f64().unwrap() - 0.0035).abs() < 1e-12);
    assert_eq!(report["rows"].as_array().unwrap().len(), 2, "one row per day");
    let table = ok(&sluice(&s.url, Some(MASTER), &["spend", "--team", "t1", "--group-by", "model"]));
    assert!(
        table.starts_with("MODEL") && table.contains("gpt-4o") && table.contains("total: 2 requests, $0.003500"),
        "{table}"
    );
    let today = sluice_control_plane::store::day_of(now);
    let today_only = json(&sluice(&s.url, Some(MASTER), &["spend", "--team", "t1", "--since", &today, "--json"]));
    assert_eq!(today_only["requests"], 1);
    let nobody = json(&sluice(&s.url, Some(MASTER), &["spend", "--team", "t2", "--json"]));
    assert_eq!(nobody["requests"], 0);
}

#[test]
fn the_cli_drives_budgets_and_customers() {
    let s = start();
    let run = |args: &[&str]| sluice(&s.url, Some(MASTER), args);
    ok(&run(&["budget", "create", "--id", "free-tier", "--max-budget", "5", "--budget-duration", "30d"]));
    ok(&run(&["customer", "create", "--id", "ada", "--budget", "free-tier", "--alias", "Ada"]));
    let blocked = ok(&run(&["customer", "block", "ada"]));
    assert!(blocked.contains("blocked"));
    let listed = json(&run(&["customer", "list", "--json"]));
    assert_eq!(
        (listed["customers"][0]["budget_id"].as_str(), listed["customers"][0]["blocked"].as_bool()),
        (Some("free-tier"), Some(true))
    );
    let budgets = ok(&run(&["budget", "list"]));
    assert!(budgets.contains("free-tier") && budgets.contains("30d"));
    let refused = run(&["customer", "create", "--id", "x", "--budget", "missing"]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no such budget"));
}

#[test]
fn a_weak_master_key_does_not_start_the_control_plane() {
    let serve = |key: &str, extra: &[&str]| {
        let dir = fresh_path("sluice-cli-weak-");
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let child = Command::new(SLUICE)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--insecure-data-plane"])
            .args(["--xds-listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--metrics-listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--database-url", &format!("sqlite:{}", dir.join("db.sqlite").display())])
            .args(extra)
            .env("SLUICE_MASTER_KEY", key)
            .env_remove("SLUICE_ALLOW_WEAK_MASTER_KEY")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        (port, child)
    };
    let (_, refused) = serve("sk-1234", &[]);
    let out = refused.wait_with_output().unwrap();
    let says = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && says.contains("at least 32") && !says.contains("sk-1234"), "{says}");
    // The development escape hatch starts it, with a warning.
    let (port, mut dev) = serve("sk-1234", &["--allow-weak-master-key"]);
    wait_for_port(port);
    dev.kill().unwrap();
    let says = String::from_utf8_lossy(&dev.wait_with_output().unwrap().stderr).into_owned();
    assert!(says.contains("accepted: --allow-weak-master-key"), "{says}");
}

#[test]
fn the_native_build_is_chosen_by_the_control_plane_in_xds_mode_and_named_in_standalone_mode() {
    let dir = fresh_path("sluice-cli-native-");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("envoy.yaml");
    let envoy_config = |extra: &[&str]| {
        Command::new(SLUICE).args(["envoy-config", "--out", out.to_str().unwrap()]).args(extra).output().unwrap()
    };
    let stderr = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();
    // xDS: `--native` alone; the bootstrap asks ECDS for the dynamic-module filter.
    ok(&envoy_config(&["--xds", "127.0.0.1:4002", "--insecure-data-plane", "--native"]));
    let yaml = std::fs::read_to_string(&out).unwrap();
    assert!(
        yaml.contains("dynamic_modules.v3.DynamicModuleFilter") && !yaml.contains("envoy.bootstrap.wasm"),
        "{yaml}"
    );
    // xDS with a path, standalone without one: refused, saying what to do.
    let with_path = envoy_config(&["--xds", "127.0.0.1:4002", "--insecure-data-plane", "--native", "/x.so"]);
    assert!(!with_path.status.success() && stderr(&with_path).contains("sluice serve --envoy-native"), "{with_path:?}");
    let config = dir.join("config.yaml");
    std::fs::write(&config, r#"{"model_list": []}"#).unwrap();
    let without = envoy_config(&["-c", config.to_str().unwrap(), "--native"]);
    assert!(!without.status.success() && stderr(&without).contains("standalone mode"), "{without:?}");
    // The control plane: one build at a time, and the native build refuses a failure policy it
    // cannot apply before anything starts.
    let serve = |config: &std::path::Path, extra: &[&str]| {
        Command::new(SLUICE)
            .args(["serve", "-c", config.to_str().unwrap(), "--insecure-data-plane"])
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--xds-listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--metrics-listen", &format!("127.0.0.1:{}", free_port())])
            .args(["--database-url", &format!("sqlite:{}", dir.join("db.sqlite").display())])
            .args(extra)
            .env("SLUICE_MASTER_KEY", MASTER)
            .env_remove("SLUICE_ENVOY_WASM")
            .env_remove("SLUICE_ENVOY_NATIVE")
            .output()
            .unwrap()
    };
    let both = serve(&config, &["--envoy-native", "/x.so", "--envoy-wasm", "/x.wasm"]);
    assert!(!both.status.success() && stderr(&both).contains("cannot be used with"), "{both:?}");
    let fail_open = dir.join("fail-open.yaml");
    std::fs::write(&fail_open, r#"{"model_list": [], "general_settings": {"sluice_failure_policy": "fail_open"}}"#)
        .unwrap();
    let refused = serve(&fail_open, &["--envoy-native", "/x.so"]);
    assert!(!refused.status.success() && stderr(&refused).contains("only fail_closed"), "{refused:?}");
    assert!(!dir.join("db.sqlite").exists(), "refused before the database was opened");
    std::fs::remove_dir_all(&dir).unwrap();
}
