//! `sluice serve`: the control plane's two gRPC servers. The admin API (with health and
//! reflection) is for people and tools; the data-plane port is for Envoys: ADS (clusters, the
//! filter's config, provider credentials) and key lookups. They listen apart so that the admin
//! port can be exposed to operators while the data-plane port, which serves provider
//! credentials over SDS, stays reachable only from Envoys: a network policy, and/or mTLS
//! (`--xds-tls-cert`, `--xds-tls-key`, `--xds-client-ca`: then every connection must present a
//! client certificate signed by that CA before any call, ADS or SDS included, is read).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use sluice_core::keys::KeyHash;
use sluice_proto::admin::v1::audit_service_server::AuditServiceServer;
use sluice_proto::admin::v1::budget_service_server::BudgetServiceServer;
use sluice_proto::admin::v1::customer_service_server::CustomerServiceServer;
use sluice_proto::admin::v1::key_service_server::KeyServiceServer;
use sluice_proto::admin::v1::model_service_server::ModelServiceServer;
use sluice_proto::admin::v1::organization_service_server::OrganizationServiceServer;
use sluice_proto::admin::v1::spend_service_server::SpendServiceServer;
use sluice_proto::admin::v1::team_service_server::TeamServiceServer;
use sluice_proto::admin::v1::user_service_server::UserServiceServer;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sluice_proto::gateway::v1::key_lookup_service_server::KeyLookupServiceServer;
use sluice_proto::gateway::v1::limit_service_server::LimitServiceServer;
use sluice_proto::gateway::v1::usage_service_server::UsageServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::admin::Admin;
use crate::admin::models::{deployment_id, validate_model_list};
use crate::budget::BudgetTracker;
use crate::fleet_limits::{FleetCounts, LimitSyncApi};
use crate::http_client::HttpTarget;
use crate::invalidation::RedisStream;
use crate::key_lookup::KeyLookupApi;
use crate::metrics::Metrics;
use crate::provider_policy::ProviderPolicy;
use crate::store::{Backend, ModelRecord, ModelStore, SqlStore, SyncReport, now_ms};
use crate::usage_ingest::UsageIngest;
use crate::xds::{AdsService, SnapshotPublisher, XdsOptions};

/// Largest admin request the server reads: admin calls are small; a huge one is an error.
const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// A usage batch of `usage_ingest::MAX_BATCH` records stays well under this.
const MAX_USAGE_BYTES: usize = 16 << 20;
/// A connection that has not finished its TLS handshake by then is closed.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// mTLS on the data-plane port: the server's certificate chain and key, and the CA that must
/// have signed every client's (Envoy's) certificate, all PEM files read now. Each is checked
/// here, so a wrong file stops `sluice serve` at start; errors name the file, never its contents.
pub fn data_plane_tls(cert: &Path, key: &Path, client_ca: &Path) -> Result<ServerTlsConfig, String> {
    let read = |flag: &str, path: &Path| -> Result<Vec<u8>, String> {
        std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))
    };
    let certs = |flag: &str, path: &Path, pem: &[u8]| -> Result<(), String> {
        let found = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{flag} {}: {e}", path.display()))?;
        if found.is_empty() {
            return Err(format!("{flag} {}: no PEM certificate in it", path.display()));
        }
        Ok(())
    };
    let (cert_pem, key_pem, ca_pem) =
        (read("--xds-tls-cert", cert)?, read("--xds-tls-key", key)?, read("--xds-client-ca", client_ca)?);
    certs("--xds-tls-cert", cert, &cert_pem)?;
    certs("--xds-client-ca", client_ca, &ca_pem)?;
    PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|_| format!("--xds-tls-key {}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in it", key.display()))?;
    let config = ServerTlsConfig::new()
        .identity(Identity::from_pem(cert_pem, key_pem))
        // Required, not optional: a connection without a certificate from this CA gets nothing.
        .client_ca_root(Certificate::from_pem(ca_pem))
        .timeout(TLS_HANDSHAKE_TIMEOUT);
    // What tonic would refuse only when the server starts (a key that is not the certificate's, …).
    Server::builder()
        .tls_config(config.clone())
        .map_err(|e| format!("data-plane TLS (--xds-tls-cert, --xds-tls-key, --xds-client-ca): {}", error_chain(&e)))?;
    Ok(config)
}

/// An error and its sources, `: `-separated (tonic's own text is only "transport error").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// What Envoys talk to: the data-plane port, its xDS settings, and where metrics are served.
pub struct DataPlane {
    pub listener: TcpListener,
    pub xds: XdsOptions,
    pub metrics: Option<TcpListener>,
    /// Where the fleet's rate-limit counts live (Redis, or this process).
    pub fleet_counts: FleetCounts,
    /// Where budget alerts are POSTed, besides the log and the metrics.
    pub webhook: Option<HttpTarget>,
    /// LiteLLM's `generic_api` logging callback (`callbacks.rs`), with where it sends.
    pub callbacks: Option<(crate::callbacks::GenericApi, HttpTarget)>,
    /// The Redis stream through which replicas share invalidations (None: this process only).
    pub invalidations: Option<RedisStream>,
    /// mTLS ([`data_plane_tls`]); None serves plaintext gRPC (h2c).
    pub tls: Option<ServerTlsConfig>,
}

pub struct ServeOptions {
    pub listen: SocketAddr,
    /// The data-plane port (xDS and key lookups).
    pub xds_listen: SocketAddr,
    /// Prometheus metrics (`GET /metrics`).
    pub metrics_listen: SocketAddr,
    pub xds: XdsOptions,
    pub database_url: String,
    /// Shares fleet rate-limit counts and invalidations between replicas; None keeps them in
    /// this process.
    pub redis_url: Option<String>,
    /// Budget alert webhook (`general_settings.alerting: ["webhook"]` and `WEBHOOK_URL`).
    pub webhook: Option<HttpTarget>,
    /// LiteLLM's `generic_api` callback (`litellm_settings.callbacks`, `GENERIC_LOGGER_ENDPOINT`).
    pub callbacks: Option<(crate::callbacks::GenericApi, HttpTarget)>,
    /// mTLS on the data-plane port ([`data_plane_tls`]).
    pub xds_tls: Option<ServerTlsConfig>,
    pub master_key: Option<String>,
    /// config.yaml's `model_list`, synced into the database at start (None: no config file).
    pub model_list: Option<Vec<serde_json::Value>>,
}

/// Makes the database's `config` deployments match the file's `model_list` (validated by the
/// gateway's own code first); deployments created through the API are kept.
pub async fn sync_models(
    store: &SqlStore,
    model_list: &[serde_json::Value],
    policy: &ProviderPolicy,
) -> Result<SyncReport, String> {
    let warnings = validate_model_list(model_list, policy)
        .map_err(|errs| format!("config.yaml model_list:\n  {}", errs.join("\n  ")))?;
    for w in warnings {
        eprintln!("warning: {w}");
    }
    let now = now_ms();
    let records: Vec<ModelRecord> = model_list
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            let id = deployment_id(entry, i);
            let mut entry = entry.clone();
            // Pin the id, so the deployment keeps it if the file's order changes.
            if let Some(obj) = entry.as_object_mut() {
                let info = obj.entry("model_info").or_insert_with(|| serde_json::json!({}));
                if let Some(info) = info.as_object_mut() {
                    info.insert("id".into(), serde_json::Value::String(id.clone()));
                }
            }
            ModelRecord {
                model_name: entry.get("model_name").and_then(serde_json::Value::as_str).unwrap_or_default().to_owned(),
                deployment_id: id,
                entry,
                source: "config".into(),
                created_at: now,
                updated_at: now,
            }
        })
        .collect();
    store.sync_config_models(&records, "config").await.map_err(|e| format!("model sync: {e}"))
}

/// Opens (and migrates) the database, then serves until the process is stopped.
pub async fn serve(opts: ServeOptions) -> Result<(), String> {
    let store = SqlStore::open(&opts.database_url).await.map_err(|e| format!("database: {e}"))?;
    if let Some(model_list) = &opts.model_list {
        let r = sync_models(&store, model_list, &opts.xds.provider_policy).await?;
        eprintln!("sluice: model_list synced: {} added, {} updated, {} removed", r.added, r.updated, r.removed);
    }
    let listener = TcpListener::bind(opts.listen).await.map_err(|e| format!("listen on {}: {e}", opts.listen))?;
    let xds_listener =
        TcpListener::bind(opts.xds_listen).await.map_err(|e| format!("listen on {}: {e}", opts.xds_listen))?;
    let metrics_listener =
        TcpListener::bind(opts.metrics_listen).await.map_err(|e| format!("listen on {}: {e}", opts.metrics_listen))?;
    let fleet_counts = match &opts.redis_url {
        Some(url) => FleetCounts::redis(url)?,
        None => FleetCounts::in_memory(),
    };
    let invalidations = opts.redis_url.as_deref().map(RedisStream::new);
    let backend = if store.backend() == Backend::Sqlite { "SQLite" } else { "Postgres" };
    eprintln!(
        "sluice: admin API on {} ({backend}); xDS and key lookups on {}{}; metrics on http://{}/metrics; fleet rate limits counted {}; invalidations {}",
        opts.listen,
        opts.xds_listen,
        if opts.xds_tls.is_some() { " (mTLS: client certificates required)" } else { "" },
        opts.metrics_listen,
        fleet_counts.describe(),
        if invalidations.is_some() { "shared through Redis" } else { "in this process" }
    );
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    if let Some(url) = &opts.webhook {
        let scheme = if url.is_https() { "https" } else { "http" };
        eprintln!("sluice: budget alerts are POSTed to the webhook on {scheme}://{}", url.authority());
    }
    if let Some((_, target)) = &opts.callbacks {
        let scheme = if target.is_https() { "https" } else { "http" };
        eprintln!("sluice: generic_api callback events are POSTed to {scheme}://{}", target.authority());
    }
    let data_plane = DataPlane {
        listener: xds_listener,
        xds: opts.xds,
        metrics: Some(metrics_listener),
        fleet_counts,
        webhook: opts.webhook,
        callbacks: opts.callbacks,
        invalidations,
        tls: opts.xds_tls,
    };
    serve_planes(listener, Some(data_plane), store, opts.master_key.as_deref(), shutdown).await
}

/// Serves the admin API on a bound listener until `shutdown` completes (tests bind port 0).
pub async fn serve_on(
    listener: TcpListener,
    store: SqlStore,
    master_key: Option<&str>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), String> {
    serve_planes(listener, None, store, master_key, shutdown).await
}

/// Serves the admin API and, with `xds`, the data-plane port, until `shutdown` completes.
pub async fn serve_planes(
    listener: TcpListener,
    data_plane: Option<DataPlane>,
    store: SqlStore,
    master_key: Option<&str>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), String> {
    let master = master_key.map(|k| KeyHash::of(k.as_bytes()));
    if master.is_none() {
        eprintln!(
            "sluice: no master key (general_settings.master_key or SLUICE_MASTER_KEY): only management keys can call the admin API"
        );
    }
    // The admin API refuses what the snapshot would refuse to send.
    let policy = data_plane.as_ref().map(|d| d.xds.provider_policy.clone()).unwrap_or_default();
    let admin = Admin::with_provider_policy(store.clone(), master, policy);
    let (stop, stopped) = watch::channel(false);
    let until_stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let data_plane = match data_plane {
        None => None,
        Some(DataPlane {
            listener: xds_listener,
            xds: options,
            metrics: metrics_listener,
            fleet_counts,
            webhook,
            callbacks,
            invalidations,
            tls,
        }) => {
            let store = Arc::new(store);
            let metrics = Arc::new(Metrics::default());
            if let Some(stream) = invalidations {
                admin.invalidations().share_through_redis(stream, Arc::clone(&metrics)).await?;
            }
            if let Some(l) = metrics_listener {
                tokio::spawn(crate::metrics::serve(l, Arc::clone(&metrics)));
            }
            let (proxy_budget, end_user_max_budget) = options.budgets();
            let publisher =
                SnapshotPublisher::new(Arc::clone(&store), options, admin.config_changes(), Arc::clone(&metrics));
            // The first snapshot before any Envoy can ask, so none gets an empty config.
            publisher.rebuild().await?;
            let ads = AdsService::new(publisher.subscribe(), Arc::clone(&metrics));
            let ads = if tls.is_some() { ads.with_node_identity() } else { ads };
            let fleet_counts = Arc::new(fleet_counts);
            let budgets = BudgetTracker::with_webhook_url(admin.invalidations(), Arc::clone(&metrics), webhook);
            budgets.rebuild_config_on(admin.config_changes());
            tokio::spawn(publisher.run());
            tokio::spawn(crate::budget::prune_windows(Arc::clone(&store)));
            let ingest = Arc::new(
                UsageIngest::new(Arc::clone(&store), Arc::clone(&metrics), Arc::clone(&budgets))
                    .with_gateway_budgets(proxy_budget.as_ref(), end_user_max_budget)
                    .with_callbacks(callbacks.and_then(|(api, target)| {
                        crate::callbacks::CallbackSender::start(api, target, Arc::clone(&metrics))
                    })),
            );
            ingest.forget_tenancy_on(admin.invalidations());
            let envoy_only = crate::pki::EnvoyOnly { enforced: tls.is_some(), metrics: Arc::clone(&metrics) };
            let mut builder = Server::builder();
            if let Some(tls) = tls {
                builder = builder.tls_config(tls).map_err(|e| format!("data-plane TLS: {}", error_chain(&e)))?;
            }
            // LiteLLM's management REST API for the Envoys' own listeners: an Envoy routes
            // `/key/…` here, over its connection to the control plane (`crate::rest`).
            let server = builder
                .add_routes(tonic::service::Routes::from(crate::rest::router(Arc::clone(&admin))))
                .add_service(AggregatedDiscoveryServiceServer::new(ads))
                .add_service(KeyLookupServiceServer::with_interceptor(
                    KeyLookupApi::new(
                        Arc::clone(&store),
                        admin.invalidations(),
                        Arc::clone(&metrics),
                        Arc::clone(&budgets),
                    )
                    .with_fleet_counts(Arc::clone(&fleet_counts))
                    .with_master_key(master),
                    envoy_only.clone(),
                ))
                .add_service(LimitServiceServer::with_interceptor(
                    LimitSyncApi::new(fleet_counts, Arc::clone(&metrics)).with_node_identity(envoy_only.enforced),
                    envoy_only.clone(),
                ))
                .add_service(tonic::service::interceptor::InterceptedService::new(
                    UsageServiceServer::from_arc(ingest).max_decoding_message_size(MAX_USAGE_BYTES),
                    envoy_only,
                ))
                .serve_with_incoming_shutdown(TcpIncoming::from(xds_listener), until_stopped(stopped.clone()));
            Some(tokio::spawn(server))
        }
    };
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<KeyServiceServer<Admin<SqlStore>>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(sluice_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| format!("reflection: {e}"))?;
    // LiteLLM's management REST API beside the gRPC services, on the same port (HTTP/1.1 for
    // REST clients, HTTP/2 for gRPC), through the same services (`crate::rest`).
    let rest = crate::rest::router(Arc::clone(&admin));
    let admin_server = Server::builder()
        .accept_http1(true)
        .add_routes(tonic::service::Routes::from(rest))
        .add_service(health)
        .add_service(reflection)
        .add_service(KeyServiceServer::from_arc(admin.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES))
        .add_service(UserServiceServer::from_arc(admin.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES))
        .add_service(TeamServiceServer::from_arc(admin.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES))
        .add_service(OrganizationServiceServer::from_arc(admin.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES))
        .add_service(ModelServiceServer::from_arc(admin.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES))
        .add_service(BudgetServiceServer::from_arc(admin.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES))
        .add_service(CustomerServiceServer::from_arc(admin.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES))
        .add_service(SpendServiceServer::from_arc(admin.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES))
        .add_service(AuditServiceServer::from_arc(admin).max_decoding_message_size(MAX_MESSAGE_BYTES))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), until_stopped(stopped));
    let stop_on_shutdown = async move {
        shutdown.await;
        let _ = stop.send(true);
    };
    let (result, ()) = tokio::join!(admin_server, stop_on_shutdown);
    if let Some(task) = data_plane {
        task.await.map_err(|e| format!("data-plane server: {e}"))?.map_err(|e| format!("data-plane server: {e}"))?;
    }
    result.map_err(|e| format!("server: {e}"))
}
