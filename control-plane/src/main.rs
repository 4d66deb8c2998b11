//! `sluice`: the command line — standalone mode's tooling, the control plane's server
//! (`sluice serve`) and its admin API client (`sluice key create|list|…`, `sluice audit`).

mod admin_cli;
mod litellm_import;
mod usage_import;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::{Map, Value, json};
use sluice_control_plane::envoy_bootstrap::{
    BootstrapOptions, ControlPlaneAddress, ControlPlaneTls, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_HEAP_MB,
    standalone_bootstrap, standalone_native_bootstrap, to_yaml, xds_bootstrap, xds_native_bootstrap,
};
use sluice_control_plane::pki::{self, PkiDir};
use sluice_control_plane::provider_policy::ProviderPolicy;
use sluice_control_plane::server::data_plane_tls;
use sluice_control_plane::xds::{FilterModule, XdsOptions};
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
    Serve(ServeArgs),
    /// The data-plane port's certificates: a private CA, the control plane's certificate and
    /// one per Envoy node (mTLS is required unless `serve --insecure-data-plane`).
    #[command(subcommand)]
    Pki(PkiCommand),
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
    /// Usage records Envoys logged: `import` replays them to the control plane (idempotent).
    #[command(subcommand)]
    Usage(UsageCommand),
    /// Reusable budgets.
    #[command(subcommand)]
    Budget(admin_cli::BudgetAdmin),
    /// Bring another gateway's objects in: `litellm` reads a LiteLLM proxy's database.
    #[command(subcommand)]
    Import(ImportCommand),
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
        /// mTLS from `sluice pki`'s directory: its ca.pem, envoy-NODE.pem and envoy-NODE.key
        /// (instead of the three --xds-ca/--xds-cert/--xds-key flags).
        #[arg(long, value_name = "DIR", conflicts_with_all = ["config", "xds_ca"], requires = "xds")]
        pki_dir: Option<PathBuf>,
        /// Connect to the data-plane port in plaintext (`sluice serve --insecure-data-plane`).
        /// Local development only.
        #[arg(long, conflicts_with_all = ["config", "xds_ca", "pki_dir"], requires = "xds")]
        insecure_data_plane: bool,
        /// This Envoy's node id in xDS mode; with mTLS, its certificate must name it
        /// (`<node-id>.envoy.sluice`, see `sluice pki envoy`).
        #[arg(long, default_value = "sluice-envoy")]
        node_id: String,
        /// Path of sluice_filter.wasm (made absolute in the output).
        #[arg(long, required_unless_present = "native")]
        wasm: Option<PathBuf>,
        /// The native build, loaded as an Envoy dynamic module instead of the wasm filter
        /// (Envoy 1.40 exactly). Standalone (-c): the path of libsluice_filter.so (made
        /// absolute). xDS (--xds): no path; the control plane names the module (`sluice serve
        /// --envoy-native PATH`).
        #[arg(long, value_name = "SO", num_args = 0..=1, conflicts_with = "wasm")]
        native: Option<Option<PathBuf>>,
        #[arg(short, long)]
        out: PathBuf,
        #[arg(long, default_value = "0.0.0.0:4000")]
        listen: String,
        /// Admin port, always bound to 127.0.0.1.
        #[arg(long, default_value_t = 9901)]
        admin_port: u16,
        /// Envoy's heap limit in MiB (overload manager): it releases free memory at 90% and
        /// answers new requests with a 503 at 98%. Keep it below the container's memory limit.
        #[arg(long, value_name = "MIB", default_value_t = DEFAULT_MAX_HEAP_MB, value_parser = clap::value_parser!(u64).range(1..=1 << 30))]
        max_heap_mb: u64,
        /// Downstream connections Envoy keeps open at once (over all listeners but admin); more
        /// are refused. Keep it under half of Envoy's file-descriptor limit (`ulimit -n`).
        #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS, value_parser = clap::value_parser!(u64).range(1..))]
        max_connections: u64,
        /// Standalone Vertex AI deployments: the directory `sluice google-tokens` keeps their
        /// access tokens in (Envoy reads each deployment's from its SDS file there).
        #[arg(long, value_name = "DIR", conflicts_with = "xds")]
        google_token_dir: Option<PathBuf>,
    },
    /// Standalone mode's Vertex AI access tokens: mints each `vertex_ai/` deployment's token
    /// from its `vertex_credentials` (else Google's application default credentials), keeps it
    /// fresh, and writes it to DIR as the SDS file the Envoy of `envoy-config --google-token-dir
    /// DIR` reads. Runs beside Envoy (`sluice serve` does this itself in xDS mode).
    GoogleTokens {
        #[arg(short, long)]
        config: PathBuf,
        /// Where the token files go (created, mode 0700; each file 0600).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
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
    /// The native build instead: path of libsluice_filter.so on the Envoy hosts, sent in the
    /// filter's config (an Envoy dynamic module). Every Envoy of this control plane then starts
    /// from `sluice envoy-config --xds … --native`.
    #[arg(long, value_name = "PATH", env = "SLUICE_ENVOY_NATIVE", conflicts_with = "envoy_wasm")]
    envoy_native: Option<String>,
    /// sqlite:PATH or postgres://…; overrides the config file.
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// redis://… shared by control-plane replicas for fleet-wide RPM/TPM; overrides
    /// router_settings (redis_url, or redis_host/redis_port/redis_password). Without one,
    /// fleet counts live in this process (right for a single replica).
    #[arg(long, env = "REDIS_URL")]
    redis_url: Option<String>,
    /// The directory `sluice pki init` wrote: its ca.pem, control-plane.pem and
    /// control-plane.key serve the data-plane port's mTLS (instead of the three --xds-tls flags).
    #[arg(long, value_name = "DIR", env = "SLUICE_PKI_DIR", conflicts_with_all = ["xds_tls_cert", "xds_tls_key", "xds_client_ca"])]
    pki_dir: Option<PathBuf>,
    /// mTLS on the data-plane port: this server's certificate chain (PEM). With
    /// --xds-tls-key and --xds-client-ca; Envoys then connect with `sluice envoy-config
    /// --xds-ca --xds-cert --xds-key`.
    #[arg(long, value_name = "PEM", requires_all = ["xds_tls_key", "xds_client_ca"])]
    xds_tls_cert: Option<PathBuf>,
    /// The private key of --xds-tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires_all = ["xds_tls_cert", "xds_client_ca"])]
    xds_tls_key: Option<PathBuf>,
    /// The CA (PEM) that must have signed every Envoy's client certificate: a connection
    /// without one is refused before any xDS, SDS or key lookup call, and an ADS stream whose
    /// node id the certificate does not name (`<node-id>.envoy.sluice`) is refused.
    #[arg(long, value_name = "PEM", requires_all = ["xds_tls_cert", "xds_tls_key"])]
    xds_client_ca: Option<PathBuf>,
    /// Serve the data-plane port in plaintext, to any client that reaches it (provider
    /// credentials included). Local development only.
    #[arg(long, conflicts_with_all = ["pki_dir", "xds_tls_cert"])]
    insecure_data_plane: bool,
    /// Environment variables deployments may name as their credential (`api_key:
    /// os.environ/NAME`): comma-separated names or NAME_PREFIX*. Default: OPENAI_API_KEY,
    /// ANTHROPIC_API_KEY and those config.yaml's model_list names. The control plane's own
    /// settings (SLUICE_*, DATABASE_URL, REDIS_URL, WEBHOOK_URL, …) are never allowed.
    #[arg(long, env = "SLUICE_PROVIDER_CREDENTIALS", value_name = "LIST")]
    provider_credentials: Option<String>,
    /// Hosts deployments may send credentials to (`api_base`): comma-separated names,
    /// *.domain or IP addresses. Default: any host except link-local and cloud metadata
    /// addresses (which listing them here allows).
    #[arg(long, env = "SLUICE_UPSTREAM_HOSTS", value_name = "LIST")]
    upstream_hosts: Option<String>,
    /// Key lookups each Envoy worker may start, as `PER_SECOND/BURST` (default 50/100): a key
    /// the worker knew before keeps being served from its cache when they are spent; a new key
    /// gets a 429 with `retry-after`. Raise it where many new keys arrive at once.
    #[arg(long, env = "SLUICE_KEY_LOOKUP_RATE", value_name = "RATE", value_parser = lookup_rate)]
    key_lookup_rate: Option<(u32, u32)>,
    /// The same per client address on each worker (default 10/20); `0/0` turns the per-client
    /// limit off (behind a proxy whose clients Envoy cannot tell apart).
    #[arg(long, env = "SLUICE_KEY_LOOKUP_CLIENT_RATE", value_name = "RATE", value_parser = client_lookup_rate)]
    key_lookup_client_rate: Option<(u32, u32)>,
    /// Accept a master key shorter than 32 characters (LiteLLM's docs' sk-1234). Local
    /// development only.
    #[arg(long, env = "SLUICE_ALLOW_WEAK_MASTER_KEY")]
    allow_weak_master_key: bool,
}

#[derive(Subcommand)]
enum ImportCommand {
    /// A LiteLLM proxy's budgets, end users, organizations, users, teams and virtual keys, from
    /// its Postgres database: its keys keep working (imported by the digest LiteLLM stored).
    /// Idempotent; `--dry-run` reports what it would do and what it cannot carry.
    Litellm(litellm_import::ImportArgs),
}

#[derive(Subcommand)]
enum UsageCommand {
    /// Replay the `sluice.usage` lines of Envoy logs through the data-plane port: records the
    /// control plane never got (an Envoy stopped while it was unreachable) are added, the rest
    /// are recognised by record id and counted once.
    Import(usage_import::ImportArgs),
}

#[derive(Subcommand)]
enum PkiCommand {
    /// A new CA and the control plane's server certificate (never overwrites files).
    Init {
        #[arg(long, default_value = ".sluice/pki")]
        dir: PathBuf,
        /// Names or addresses Envoys dial the control plane by (comma-separated), e.g.
        /// sluice-control-plane,sluice-control-plane.sluice.svc,127.0.0.1.
        #[arg(long, value_delimiter = ',', required = true)]
        host: Vec<String>,
    },
    /// A client certificate for one Envoy node (envoy-NODE.pem, envoy-NODE.key), signed by the
    /// CA of `pki init`.
    Envoy {
        #[arg(long, default_value = ".sluice/pki")]
        dir: PathBuf,
        /// The node id the Envoy runs with (`sluice envoy-config --node-id`).
        #[arg(long)]
        node_id: String,
        /// A fleet certificate valid for any node id (`*.envoy.sluice`), e.g. one Kubernetes
        /// Secret shared by every gateway pod; files named after --node-id.
        #[arg(long)]
        any_node: bool,
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
        /// Requests of the key in flight at once (max_parallel_requests).
        #[arg(long)]
        max_parallel: Option<u64>,
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

/// The variables a config section reads through `os.environ/NAME`: the control plane's own.
fn env_refs(section: &Value) -> Vec<String> {
    let Some(map) = section.as_object() else { return Vec::new() };
    map.values().filter_map(Value::as_str).filter_map(sluice_core::litellm::env_ref).map(str::to_owned).collect()
}

/// `serve`'s settings: flags and environment first, then config.yaml's general_settings.
fn serve_options(args: &ServeArgs) -> Result<sluice_control_plane::server::ServeOptions, String> {
    let doc = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            Some(config_file::parse_yaml(&text)?)
        }
        None => None,
    };
    if let Some(doc) = &doc {
        config_file::refuse_unserved(doc)?;
    }
    let settings = doc.as_ref().and_then(|d| d.get("general_settings")).cloned().unwrap_or(Value::Null);
    // Budget alerts: `alerting: ["webhook"]` and WEBHOOK_URL, as in LiteLLM; an https receiver's
    // certificate may also chain to the CAs in SSL_CERT_FILE.
    let webhook =
        sluice_control_plane::alerting::webhook_from_settings(&settings, std::env::var("WEBHOOK_URL").ok().as_deref())?;
    let extra_roots = sluice_control_plane::http_client::extra_roots_from_env();
    let webhook = webhook
        .map(|url| sluice_control_plane::http_client::HttpTarget::new(url, extra_roots.as_deref()))
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
    let redis_url = match &args.redis_url {
        Some(url) => Some(url.clone()),
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
    let database_url = match &args.database_url {
        Some(url) => url.clone(),
        None => resolve("database_url")?.unwrap_or_else(|| "sqlite:sluice.db".into()),
    };
    let master_key = match std::env::var("SLUICE_MASTER_KEY") {
        Ok(k) if !k.is_empty() => Some(k),
        _ => {
            if settings
                .get("master_key")
                .and_then(Value::as_str)
                .is_some_and(|v| sluice_core::litellm::env_ref(v).is_none())
            {
                eprintln!(
                    "warning: general_settings.master_key is written in config.yaml; read it from the environment (os.environ/NAME) or a mounted secret instead"
                );
            }
            resolve("master_key")?
        }
    };
    if let Some(key) = &master_key
        && let Err(e) = sluice_core::keys::check_master_key(key)
    {
        if !args.allow_weak_master_key {
            return Err(format!("{e}; for local development only, pass --allow-weak-master-key"));
        }
        eprintln!("warning: {e} (accepted: --allow-weak-master-key)");
    }
    // Provider credentials: the allow-list, and the variables that are this process's own.
    let credentials_named = |field: &str| -> Vec<&str> {
        model_list.iter().flatten().filter_map(|m| m.pointer(field).and_then(Value::as_str)).collect()
    };
    let config_names: Vec<String> = [
        credentials_named("/litellm_params/api_key"),
        credentials_named("/litellm_params/vertex_credentials"),
        credentials_named("/litellm_params/client_secret"),
    ]
    .concat()
    .into_iter()
    .filter_map(sluice_core::litellm::env_ref)
    .map(str::to_owned)
    .collect();
    // Google credentials files the operator's config.yaml names (Vertex AI).
    let credential_files: Vec<String> = credentials_named("/litellm_params/vertex_credentials")
        .into_iter()
        .filter(|v| sluice_core::litellm::env_ref(v).is_none())
        .map(str::to_owned)
        .collect();
    let own = [env_refs(&settings), env_refs(&router)].concat();
    let module = match &args.envoy_native {
        Some(path) => FilterModule::Native(path.clone()),
        None => FilterModule::Wasm(args.envoy_wasm.clone()),
    };
    let mut xds = XdsOptions::with_module(module);
    // What shapes the filter in standalone mode shapes it here too.
    for name in [
        "max_request_size_mb",
        "sluice_failure_policy",
        "background_health_checks",
        "health_check_interval",
        "allowed_ips",
    ] {
        if let Some(value) = settings.get(name) {
            xds.general_settings.insert(name.to_owned(), value.clone());
        }
    }
    // litellm_settings and router_settings shape the filter whole, through the same conversion
    // as standalone mode, which refuses what Sluice would not enforce (the Redis settings are
    // this process's own, read above).
    // Its logging callbacks are this process's to send (`callbacks.rs`), not the filter's.
    let mut callbacks = None;
    if let Some(Value::Object(litellm)) = doc.as_ref().and_then(|d| d.get("litellm_settings")) {
        let endpoint = std::env::var("GENERIC_LOGGER_ENDPOINT").ok();
        let headers = std::env::var("GENERIC_LOGGER_HEADERS").ok();
        if let Some(api) = sluice_control_plane::callbacks::generic_api_from_settings(
            litellm,
            endpoint.as_deref(),
            headers.as_deref(),
        )? {
            let target = sluice_control_plane::http_client::HttpTarget::new(api.url.clone(), extra_roots.as_deref())?;
            callbacks = Some((api, target));
        }
        xds.litellm_settings = litellm
            .iter()
            .filter(|(k, _)| !sluice_control_plane::callbacks::SETTINGS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
    }
    if let Value::Object(router) = &router {
        xds.router_settings =
            router.iter().filter(|(k, _)| !k.starts_with("redis_")).map(|(k, v)| (k.clone(), v.clone())).collect();
    }
    if let Some((per_second, burst)) = args.key_lookup_rate {
        (xds.key_lookup.rate.per_second, xds.key_lookup.rate.burst) = (per_second, burst);
    }
    if let Some((per_second, burst)) = args.key_lookup_client_rate {
        (xds.key_lookup.rate.per_source_per_second, xds.key_lookup.rate.per_source_burst) = (per_second, burst);
    }
    // Before anything starts: a failure policy the native build cannot apply, a lookup rate the
    // filter would refuse.
    xds.check()?;
    xds.provider_policy =
        ProviderPolicy::new(args.provider_credentials.as_deref(), &config_names, &own, args.upstream_hosts.as_deref())?
            .with_credential_files(credential_files);
    let xds_tls = match (&args.pki_dir, &args.xds_tls_cert, &args.xds_tls_key, &args.xds_client_ca) {
        (Some(dir), ..) => {
            let dir = PkiDir(dir.clone());
            Some(data_plane_tls(&dir.server_cert(), &dir.server_key(), &dir.ca_cert())?)
        }
        (None, Some(cert), Some(key), Some(ca)) => Some(data_plane_tls(cert, key, ca)?),
        _ if args.insecure_data_plane => {
            eprintln!(
                "warning: --insecure-data-plane: the data-plane port on {} answers any client in plaintext, provider credentials included",
                args.xds_listen
            );
            None
        }
        _ => {
            return Err(
                "the data-plane port serves provider credentials and needs mTLS: give --pki-dir (made by `sluice pki init`) or --xds-tls-cert, --xds-tls-key and --xds-client-ca; for local development only, --insecure-data-plane"
                    .into(),
            );
        }
    };
    Ok(sluice_control_plane::server::ServeOptions {
        listen: args.listen,
        xds_listen: args.xds_listen,
        metrics_listen: args.metrics_listen,
        xds,
        database_url,
        redis_url,
        webhook,
        callbacks,
        xds_tls,
        master_key,
        model_list,
    })
}

fn run(cli: Cli) -> Result<(), String> {
    let connection = cli.connection;
    match cli.command {
        Command::Serve(args) => {
            let opts = serve_options(&args)?;
            runtime()?.block_on(sluice_control_plane::server::serve(opts))
        }
        Command::Pki(PkiCommand::Init { dir, host }) => {
            for path in pki::init(&PkiDir(dir), &host)? {
                eprintln!("wrote {}", path.display());
            }
            eprintln!("keep ca.key offline or in a secret store: whoever holds it can make Envoy identities");
            Ok(())
        }
        Command::Pki(PkiCommand::Envoy { dir, node_id, any_node }) => {
            for path in pki::issue_envoy(&PkiDir(dir), &node_id, any_node)? {
                eprintln!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Key(KeyCommand::Admin(cmd)) => runtime()?.block_on(admin_cli::run_key(&connection, cmd)),
        Command::Team(cmd) => runtime()?.block_on(admin_cli::run_team(&connection, cmd)),
        Command::User(cmd) => runtime()?.block_on(admin_cli::run_user(&connection, cmd)),
        Command::Org(cmd) => runtime()?.block_on(admin_cli::run_org(&connection, cmd)),
        Command::Model(cmd) => runtime()?.block_on(admin_cli::run_model(&connection, cmd)),
        Command::Spend(args) => runtime()?.block_on(admin_cli::run_spend(&connection, args)),
        Command::Usage(UsageCommand::Import(args)) => runtime()?.block_on(usage_import::run(args)),
        Command::Budget(cmd) => runtime()?.block_on(admin_cli::run_budget(&connection, cmd)),
        Command::Import(ImportCommand::Litellm(args)) => runtime()?.block_on(litellm_import::run(&connection, args)),
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
            max_parallel,
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
            put("max_parallel_requests", max_parallel.map(Value::from));
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
        Command::GoogleTokens { config, dir } => {
            let s = config_file::load(&config)
                .map_err(|errors| format!("{} is not valid:\n  {}", config.display(), errors.join("\n  ")))?;
            let deployments: Vec<(String, sluice_core::litellm::GoogleCredentials)> =
                s.upstreams.iter().filter_map(|u| Some((u.cluster.clone(), u.google_credentials.clone()?))).collect();
            if deployments.is_empty() {
                return Err(format!("{} has no vertex_ai/ deployment: nothing to mint tokens for", config.display()));
            }
            {
                use std::os::unix::fs::DirBuilderExt as _;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&dir)
                    .map_err(|e| format!("--dir {}: {e}", dir.display()))?;
            }
            let extra_roots = sluice_control_plane::http_client::extra_roots_from_env();
            let count = deployments.len();
            let shown = dir.display().to_string();
            let ready = move || println!("sluice google-tokens: {count} Vertex AI token(s) in {shown}, kept fresh");
            runtime()?.block_on(sluice_control_plane::google_tokens::keep_files_fresh(
                deployments,
                dir,
                extra_roots,
                ready,
            ))
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
        Command::EnvoyConfig {
            config,
            xds,
            xds_ca,
            xds_cert,
            xds_key,
            pki_dir,
            insecure_data_plane,
            node_id,
            wasm,
            native,
            out,
            listen,
            admin_port,
            max_heap_mb,
            max_connections,
            google_token_dir,
        } => {
            let google_token_dir = google_token_dir
                .map(|dir| std::path::absolute(&dir).map_err(|e| format!("--google-token-dir {}: {e}", dir.display())))
                .transpose()?
                .map(|dir| dir.to_string_lossy().into_owned());
            let (address, port) =
                listen.rsplit_once(':').ok_or_else(|| format!("--listen {listen:?}: use HOST:PORT"))?;
            let port: u16 = port.parse().map_err(|_| format!("--listen {listen:?}: invalid port"))?;
            let module = |path: &PathBuf, build: &str| {
                let path = std::path::absolute(path).map_err(|e| format!("{}: {e}", path.display()))?;
                if !path.exists() {
                    return Err(format!("{} does not exist (build it: {build})", path.display()));
                }
                Ok(path.to_string_lossy().into_owned())
            };
            let wasm = match &wasm {
                Some(w) => module(w, "cargo build --release --target wasm32-wasip1 -p sluice-filter")?,
                None => String::new(),
            };
            // Standalone names the module; in xDS mode the control plane does (in ECDS).
            let native = match (native, &xds) {
                (None, _) => None,
                (Some(Some(_)), Some(_)) => {
                    return Err("--native takes no path with --xds: the control plane names the module: sluice serve --envoy-native PATH".into());
                }
                (Some(None), None) => {
                    return Err("--native needs the path of libsluice_filter.so in standalone mode: --native path/to/libsluice_filter.so".into());
                }
                (Some(Some(path)), None) => Some(Some(module(&path, "cargo build --release -p sluice-filter")?)),
                (Some(None), Some(_)) => Some(None),
            };
            let opts = BootstrapOptions {
                listen_address: address.trim_start_matches('[').trim_end_matches(']').to_owned(),
                listen_port: port,
                admin_port,
                wasm_path: wasm,
                max_heap_mb,
                max_connections,
                google_token_dir,
            };
            let bootstrap = match (xds, config) {
                (Some(xds), _) => {
                    let (host, port) = xds.rsplit_once(':').ok_or_else(|| format!("--xds {xds:?}: use HOST:PORT"))?;
                    let port: u16 = port.parse().map_err(|_| format!("--xds {xds:?}: invalid port"))?;
                    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
                    let files = match (pki_dir, xds_ca, xds_cert, xds_key) {
                        (Some(dir), ..) => {
                            let dir = PkiDir(dir);
                            Some((dir.ca_cert(), dir.envoy_cert(&node_id), dir.envoy_key(&node_id)))
                        }
                        (None, Some(ca), Some(cert), Some(key)) => Some((ca, cert, key)),
                        _ => None,
                    };
                    let tls = match files {
                        Some((ca, cert, key)) => {
                            // The control plane refuses a node its certificate does not name.
                            pki::node_name(&node_id).map_err(|e| format!("--node-id: {e}"))?;
                            Some(ControlPlaneTls {
                                ca: existing_file("--xds-ca", &ca)?,
                                cert: existing_file("--xds-cert", &cert)?,
                                key: existing_file("--xds-key", &key)?,
                            })
                        }
                        None if insecure_data_plane => None,
                        None => {
                            return Err("--xds needs mTLS to the data-plane port: --pki-dir (from `sluice pki`) or --xds-ca, --xds-cert and --xds-key; for local development only, --insecure-data-plane".into());
                        }
                    };
                    let control_plane = ControlPlaneAddress { host, port, tls };
                    match native {
                        Some(_) => xds_native_bootstrap(&control_plane, &node_id, &opts),
                        None => xds_bootstrap(&control_plane, &node_id, &opts),
                    }
                }
                (None, Some(config)) => {
                    let s = config_file::load(&config)
                        .map_err(|errors| format!("{} is not valid:\n  {}", config.display(), errors.join("\n  ")))?;
                    print_warnings(&s.warnings);
                    match &native {
                        Some(Some(module)) => standalone_native_bootstrap(&s, &opts, module)?,
                        _ => standalone_bootstrap(&s, &opts)?,
                    }
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

/// `--key-lookup-rate`: `PER_SECOND/BURST`, whole numbers, the rate above zero (a worker that
/// may look up nothing would refuse every new key) and the burst at least the rate.
fn lookup_rate(value: &str) -> Result<(u32, u32), String> {
    match client_lookup_rate(value)? {
        (0, _) => Err(format!("{value:?}: a worker must be allowed some lookups (the rate above 0)")),
        rate => Ok(rate),
    }
}

/// `--key-lookup-client-rate`: as `--key-lookup-rate`, or `0/0` for no per-client limit.
fn client_lookup_rate(value: &str) -> Result<(u32, u32), String> {
    let (per_second, burst) =
        value.split_once('/').ok_or_else(|| format!("{value:?}: expected PER_SECOND/BURST, e.g. 50/100"))?;
    let number = |n: &str| n.trim().parse::<u32>().map_err(|_| format!("{value:?}: {n:?} is not a whole number"));
    let (per_second, burst) = (number(per_second)?, number(burst)?);
    if burst < per_second || (per_second > 0 && burst == 0) {
        return Err(format!("{value:?}: the burst must be at least the rate per second"));
    }
    Ok((per_second, burst))
}

#[cfg(test)]
mod lookup_rate_tests {
    use super::{client_lookup_rate, lookup_rate};

    #[test]
    fn a_lookup_rate_is_per_second_and_burst() {
        assert_eq!(lookup_rate("50/100"), Ok((50, 100)));
        assert_eq!(client_lookup_rate("0/0"), Ok((0, 0)), "no per-client limit");
        for bad in ["50", "x/100", "100/50", "-1/5", "5/", "0/0", "0/5"] {
            assert!(lookup_rate(bad).is_err(), "{bad}");
        }
        assert!(client_lookup_rate("5/0").is_err());
    }
}
