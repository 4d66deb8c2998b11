//! `sluice`: the command line — standalone mode's tooling, the control plane's server
//! (`sluice serve`) and its admin API client (`sluice key create|list|…`, `sluice audit`).

mod admin_cli;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::{Map, Value, json};
use sluice_control_plane::envoy_bootstrap::{
    BootstrapOptions, ControlPlaneAddress, ControlPlaneTls, standalone_bootstrap, to_yaml, xds_bootstrap,
};
use sluice_control_plane::xds::XdsOptions;
use sluice_control_plane::{config_file, key_file};
use sluice_core::keys::{KeyHash, check_format};
use sluice_core::time::{BudgetDuration, Timestamp};

#[derive(Parser)]
#[command(name = "sluice", version, about = "Sluice, the LLM gateway for Envoy: keys, config checks and Envoy config")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    connection: admin_cli::Connection,
}

// Parsed once per run: the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the control plane: the admin gRPC API over SQLite (default) or Postgres, and the
    /// data-plane port Envoys connect to (xDS, key lookups).
    Serve {
        /// LiteLLM config.yaml: general_settings.master_key and database_url are read from it.
        #[arg(short, long)]
        config: Option<PathBuf>,
        #[arg(long, default_value = "127.0.0.1:4001")]
        listen: std::net::SocketAddr,
        /// Where Envoys connect: ADS and key lookups. Keep it reachable from Envoys only: it
        /// serves provider credentials (SDS).
        #[arg(long, default_value = "127.0.0.1:4002")]
        xds_listen: std::net::SocketAddr,
        /// Prometheus metrics of the control plane (`GET /metrics`).
        #[arg(long, default_value = "127.0.0.1:4003")]
        metrics_listen: std::net::SocketAddr,
        /// Path of sluice_filter.wasm on the Envoy hosts (sent in the filter's config).
        #[arg(long, env = "SLUICE_ENVOY_WASM", default_value = "/usr/local/lib/sluice/sluice_filter.wasm")]
        envoy_wasm: String,
        /// sqlite:PATH or postgres://…; overrides the config file.
        #[arg(long, env = "DATABASE_URL")]
        database_url: Option<String>,
        /// redis://… shared by control-plane replicas for fleet-wide RPM/TPM; overrides
        /// router_settings (redis_url, or redis_host/redis_port/redis_password). Without one,
        /// fleet counts live in this process (right for a single replica).
        #[arg(long, env = "REDIS_URL")]
        redis_url: Option<String>,
        /// mTLS on the data-plane port: this server's certificate chain (PEM). With
        /// --xds-tls-key and --xds-client-ca; Envoys then connect with `sluice envoy-config
        /// --xds-ca --xds-cert --xds-key`. Off by default (plaintext gRPC).
        #[arg(long, value_name = "PEM", requires_all = ["xds_tls_key", "xds_client_ca"])]
        xds_tls_cert: Option<PathBuf>,
        /// The private key of --xds-tls-cert (PEM).
        #[arg(long, value_name = "PEM", requires_all = ["xds_tls_cert", "xds_client_ca"])]
        xds_tls_key: Option<PathBuf>,
        /// The CA (PEM) that must have signed every Envoy's client certificate: a connection
        /// without one is refused before any xDS, SDS or key lookup call.
        #[arg(long, value_name = "PEM", requires_all = ["xds_tls_cert", "xds_tls_key"])]
        xds_client_ca: Option<PathBuf>,
    },
    /// Create and manage API keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Teams and their members.
    #[command(subcommand)]
    Team(admin_cli::TeamAdmin),
    /// Users and their roles.
    #[command(subcommand)]
    User(admin_cli::UserAdmin),
    /// Organizations.
    #[command(subcommand)]
    Org(admin_cli::OrgAdmin),
    /// Model deployments (the `model_list`), validated like the gateway does.
    #[command(subcommand)]
    Model(admin_cli::ModelAdmin),
    /// Spend by key, team, user, org, model, tag and day.
    Spend(admin_cli::SpendArgs),
    /// Reusable budgets.
    #[command(subcommand)]
    Budget(admin_cli::BudgetAdmin),
    /// End users of your product (LiteLLM's customers).
    #[command(subcommand)]
    Customer(admin_cli::CustomerAdmin),
    /// The audit log (admin only).
    Audit {
        #[arg(long)]
        object_type: Option<String>,
        #[arg(long)]
        object_id: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Validate config.yaml.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Generate Envoy's bootstrap: standalone (listener, clusters, the Sluice filter, all from
    /// config.yaml), or with --xds only the control plane's address (the rest comes over xDS).
    EnvoyConfig {
        #[arg(short, long, required_unless_present = "xds")]
        config: Option<PathBuf>,
        /// HOST:PORT of the control plane's data-plane port (`sluice serve --xds-listen`).
        #[arg(long, conflicts_with = "config")]
        xds: Option<String>,
        /// mTLS to the data-plane port (`sluice serve --xds-client-ca …`): the CA (PEM file)
        /// that signed the control plane's certificate, which must also name HOST (DNS or IP
        /// SAN). With --xds-cert and --xds-key. Files are named in the bootstrap, never inlined.
        #[arg(long, value_name = "PEM", conflicts_with = "config", requires_all = ["xds", "xds_cert", "xds_key"])]
        xds_ca: Option<PathBuf>,
        /// This Envoy's client certificate chain (PEM file).
        #[arg(long, value_name = "PEM", conflicts_with = "config", requires_all = ["xds", "xds_ca", "xds_key"])]
        xds_cert: Option<PathBuf>,
        /// The private key of --xds-cert (PEM file, read by Envoy).
        #[arg(long, value_name = "PEM", conflicts_with = "config", requires_all = ["xds", "xds_ca", "xds_cert"])]
        xds_key: Option<PathBuf>,
        /// This Envoy's node id in xDS mode (shown in the control plane's logs).
        #[arg(long, default_value = "sluice-envoy")]
        node_id: String,
        /// Path of sluice_filter.wasm (made absolute in the output).
        #[arg(long)]
        wasm: PathBuf,
        #[arg(short, long)]
        out: PathBuf,
        #[arg(long, default_value = "0.0.0.0:4000")]
        listen: String,
        /// Admin port, always bound to 127.0.0.1.
        #[arg(long, default_value_t = 9901)]
        admin_port: u16,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Generate a key: prints it once, and the `keys:` entry (its hash) for config.yaml.
    New {
        #[arg(long)]
        alias: Option<String>,
        #[arg(long)]
        team: Option<String>,
        #[arg(long)]
        user: Option<String>,
        /// Comma-separated model groups (empty: all).
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        #[arg(long)]
        rpm: Option<u64>,
        #[arg(long)]
        tpm: Option<u64>,
        /// USD.
        #[arg(long)]
        max_budget: Option<f64>,
        /// 30s, 10m, 1h, 1d, 7d, 30d or 1mo.
        #[arg(long)]
        budget_duration: Option<String>,
        /// RFC 3339 expiry, e.g. 2027-01-01T00:00:00Z.
        #[arg(long)]
        expires: Option<String>,
        /// Add the entry to this config file's `keys:` section.
        #[arg(long)]
        append_to: Option<PathBuf>,
    },
    /// Print the `key_hash` of an existing key (argument or stdin).
    Hash { key: Option<String> },
    #[command(flatten)]
    Admin(admin_cli::KeyAdmin),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print warnings and errors; exit 1 on errors.
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn print_warnings(warnings: &[String]) {
    for w in warnings {
        eprintln!("warning: {w}");
    }
}

/// The absolute path of a file that must exist (Envoy reads it; only its name goes in the bootstrap).
fn existing_file(flag: &str, path: &std::path::Path) -> Result<String, String> {
    let absolute = std::path::absolute(path).map_err(|e| format!("{flag} {}: {e}", path.display()))?;
    if !absolute.is_file() {
        return Err(format!("{flag} {}: no such file", absolute.display()));
    }
    Ok(absolute.to_string_lossy().into_owned())
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| format!("tokio: {e}"))
}

/// `serve`'s settings: flags and environment first, then config.yaml's general_settings.
fn serve_options(
    config: Option<PathBuf>,
    listen: std::net::SocketAddr,
    xds_listen: std::net::SocketAddr,
    envoy_wasm: String,
    database_url: Option<String>,
    redis_url: Option<String>,
) -> Result<sluice_control_plane::server::ServeOptions, String> {
    let doc = match &config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            Some(config_file::parse_yaml(&text)?)
        }
        None => None,
    };
    let settings = doc.as_ref().and_then(|d| d.get("general_settings")).cloned().unwrap_or(Value::Null);
    // Budget alerts: `alerting: ["webhook"]` and WEBHOOK_URL, as in LiteLLM; an https receiver's
    // certificate may also chain to the CAs in SSL_CERT_FILE.
    let webhook =
        sluice_control_plane::alerting::webhook_from_settings(&settings, std::env::var("WEBHOOK_URL").ok().as_deref())?;
    let extra_roots = std::env::var_os("SSL_CERT_FILE").filter(|v| !v.is_empty()).map(PathBuf::from);
    let webhook = webhook
        .map(|url| sluice_control_plane::alerting::WebhookTarget::new(url, extra_roots.as_deref()))
        .transpose()?;
    let router = doc.as_ref().and_then(|d| d.get("router_settings")).cloned().unwrap_or(Value::Null);
    let model_list = doc.as_ref().map(|d| d.get("model_list").and_then(Value::as_array).cloned().unwrap_or_default());
    // A setting's value: a string, a number (ports), or `os.environ/VAR`.
    let setting = |section: &Value, section_name: &str, name: &str| -> Result<Option<String>, String> {
        match section.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(v)) => match sluice_core::litellm::env_ref(v) {
                Some(var) => std::env::var(var)
                    .map(Some)
                    .map_err(|_| format!("{section_name}.{name}: environment variable {var} is not set")),
                None => Ok(Some(v.clone())),
            },
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(_) => Err(format!("{section_name}.{name} must be a string")),
        }
    };
    let resolve = |name: &str| setting(&settings, "general_settings", name);
    let redis_url = match redis_url {
        Some(url) => Some(url),
        None => match setting(&router, "router_settings", "redis_url")? {
            Some(url) => Some(url),
            // LiteLLM's other spelling: host, port and password apart.
            None => match setting(&router, "router_settings", "redis_host")? {
                None => None,
                Some(host) => {
                    let port = setting(&router, "router_settings", "redis_port")?.unwrap_or_else(|| "6379".into());
                    let auth = setting(&router, "router_settings", "redis_password")?
                        .map(|p| format!(":{p}@"))
                        .unwrap_or_default();
                    Some(format!("redis://{auth}{host}:{port}"))
                }
            },
        },
    };
    let database_url = match database_url {
        Some(url) => url,
        None => resolve("database_url")?.unwrap_or_else(|| "sqlite:sluice.db".into()),
    };
    let master_key = match std::env::var("SLUICE_MASTER_KEY") {
        Ok(k) if !k.is_empty() => Some(k),
        _ => resolve("master_key")?,
    };
    Ok(sluice_control_plane::server::ServeOptions {
        listen,
        xds_listen,
        metrics_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 4003)),
        xds: XdsOptions::new(envoy_wasm),
        database_url,
        redis_url,
        webhook,
        xds_tls: None,
        master_key,
        model_list,
    })
}

fn run(cli: Cli) -> Result<(), String> {
    let connection = cli.connection;
    match cli.command {
        Command::Serve {
            config,
            listen,
            xds_listen,
            metrics_listen,
            envoy_wasm,
            database_url,
            redis_url,
            xds_tls_cert,
            xds_tls_key,
            xds_client_ca,
        } => {
            let mut opts = serve_options(config, listen, xds_listen, envoy_wasm, database_url, redis_url)?;
            opts.metrics_listen = metrics_listen;
            if let (Some(cert), Some(key), Some(ca)) = (&xds_tls_cert, &xds_tls_key, &xds_client_ca) {
                opts.xds_tls = Some(sluice_control_plane::server::data_plane_tls(cert, key, ca)?);
            }
            runtime()?.block_on(sluice_control_plane::server::serve(opts))
        }
        Command::Key(KeyCommand::Admin(cmd)) => runtime()?.block_on(admin_cli::run_key(&connection, cmd)),
        Command::Team(cmd) => runtime()?.block_on(admin_cli::run_team(&connection, cmd)),
        Command::User(cmd) => runtime()?.block_on(admin_cli::run_user(&connection, cmd)),
        Command::Org(cmd) => runtime()?.block_on(admin_cli::run_org(&connection, cmd)),
        Command::Model(cmd) => runtime()?.block_on(admin_cli::run_model(&connection, cmd)),
        Command::Spend(args) => runtime()?.block_on(admin_cli::run_spend(&connection, args)),
        Command::Budget(cmd) => runtime()?.block_on(admin_cli::run_budget(&connection, cmd)),
        Command::Customer(cmd) => runtime()?.block_on(admin_cli::run_customer(&connection, cmd)),
        Command::Audit { object_type, object_id, limit } => {
            runtime()?.block_on(admin_cli::run_audit(&connection, object_type, object_id, limit))
        }
        Command::Key(KeyCommand::New {
            alias,
            team,
            user,
            models,
            rpm,
            tpm,
            max_budget,
            budget_duration,
            expires,
            append_to,
        }) => {
            let json = connection.json;
            let mut fields = Map::new();
            let mut put = |k: &str, v: Option<Value>| {
                if let Some(v) = v {
                    fields.insert(k.into(), v);
                }
            };
            put("key_alias", alias.map(Value::from));
            put("team_id", team.map(Value::from));
            put("user_id", user.map(Value::from));
            put("models", (!models.is_empty()).then(|| Value::from(models)));
            put("rpm_limit", rpm.map(Value::from));
            put("tpm_limit", tpm.map(Value::from));
            if let Some(b) = max_budget
                && (!b.is_finite() || b < 0.0)
            {
                return Err("--max-budget must be a non-negative number of USD".into());
            }
            put("max_budget", max_budget.map(Value::from));
            if let Some(d) = &budget_duration {
                BudgetDuration::parse(d)
                    .ok_or_else(|| format!("--budget-duration {d:?}: use 30s, 10m, 1h, 1d, 7d, 30d or 1mo"))?;
            }
            put("budget_duration", budget_duration.map(Value::from));
            if let Some(e) = &expires {
                Timestamp::parse(e)
                    .ok_or_else(|| format!("--expires {e:?}: use RFC 3339, e.g. 2027-01-01T00:00:00Z"))?;
            }
            put("expires", expires.map(Value::from));
            let key = key_file::generate_key()?;
            let entry = key_file::entry(&key, fields);
            let item = key_file::entry_yaml(&entry)?;
            if let Some(path) = &append_to {
                key_file::append_to_file(path, &item, |text| config_file::convert(text).map(|_| ()))?;
            }
            if json {
                let hash = entry.get("key_hash").cloned().unwrap_or(Value::Null);
                println!("{}", json!({"key": key, "key_hash": hash, "entry": entry}));
            } else {
                println!("{key}");
                eprintln!("\nThe key above is shown once: store it now. Only its hash goes in config.yaml.");
                match &append_to {
                    Some(path) => eprintln!("Added to the keys: section of {}.", path.display()),
                    None => eprintln!("Add this under `keys:` in config.yaml:\n{item}"),
                }
            }
            Ok(())
        }
        Command::Key(KeyCommand::Hash { key }) => {
            let key = match key {
                Some(k) => k,
                None => {
                    let mut s = String::new();
                    std::io::stdin()
                        .read_to_string(&mut s)
                        .map_err(|e| format!("cannot read the key from stdin: {e}"))?;
                    s
                }
            };
            let key = key.trim();
            check_format(key.as_bytes())
                .map_err(|e| format!("not a Sluice key ({e:?}); keys look like sk-sluice-… and carry a checksum"))?;
            println!("key_hash: sha256:{}", KeyHash::of(key.as_bytes()).to_hex());
            Ok(())
        }
        Command::Config(ConfigCommand::Check { config }) => {
            let s = config_file::load(&config)
                .map_err(|errors| format!("{} is not valid:\n  {}", config.display(), errors.join("\n  ")))?;
            print_warnings(&s.warnings);
            let g = &s.gateway;
            let groups: std::collections::BTreeSet<&str> =
                g.deployments.iter().map(|d| d.model_name.as_str()).collect();
            println!(
                "{}: ok — {} deployments in {} model groups, {} keys, {} teams, {} warnings",
                config.display(),
                g.deployments.len(),
                groups.len(),
                g.keys.len(),
                g.teams.len(),
                s.warnings.len()
            );
            Ok(())
        }
        Command::EnvoyConfig { config, xds, xds_ca, xds_cert, xds_key, node_id, wasm, out, listen, admin_port } => {
            let (address, port) =
                listen.rsplit_once(':').ok_or_else(|| format!("--listen {listen:?}: use HOST:PORT"))?;
            let port: u16 = port.parse().map_err(|_| format!("--listen {listen:?}: invalid port"))?;
            let wasm = std::path::absolute(&wasm).map_err(|e| format!("{}: {e}", wasm.display()))?;
            if !wasm.exists() {
                return Err(format!(
                    "{} does not exist (build it: cargo build --release --target wasm32-wasip1 -p sluice-filter)",
                    wasm.display()
                ));
            }
            let opts = BootstrapOptions {
                listen_address: address.trim_start_matches('[').trim_end_matches(']').to_owned(),
                listen_port: port,
                admin_port,
                wasm_path: wasm.to_string_lossy().into_owned(),
            };
            let bootstrap = match (xds, config) {
                (Some(xds), _) => {
                    let (host, port) = xds.rsplit_once(':').ok_or_else(|| format!("--xds {xds:?}: use HOST:PORT"))?;
                    let port: u16 = port.parse().map_err(|_| format!("--xds {xds:?}: invalid port"))?;
                    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
                    let tls = match (xds_ca, xds_cert, xds_key) {
                        (Some(ca), Some(cert), Some(key)) => Some(ControlPlaneTls {
                            ca: existing_file("--xds-ca", &ca)?,
                            cert: existing_file("--xds-cert", &cert)?,
                            key: existing_file("--xds-key", &key)?,
                        }),
                        _ => None,
                    };
                    let control_plane = ControlPlaneAddress { host, port, tls };
                    xds_bootstrap(&control_plane, &node_id, &opts)
                }
                (None, Some(config)) => {
                    let s = config_file::load(&config)
                        .map_err(|errors| format!("{} is not valid:\n  {}", config.display(), errors.join("\n  ")))?;
                    print_warnings(&s.warnings);
                    standalone_bootstrap(&s, &opts)?
                }
                (None, None) => return Err("give -c config.yaml (standalone) or --xds HOST:PORT".into()),
            };
            let yaml = to_yaml(&bootstrap)?;
            std::fs::write(&out, yaml).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
            eprintln!("wrote {}", out.display());
            Ok(())
        }
    }
}
