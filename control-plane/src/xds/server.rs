//! The ADS service and the snapshot cache.
//!
//! One writer ([`SnapshotPublisher`]) rebuilds the snapshot from the database whenever the admin
//! API reports a change (and periodically, to catch changes made by another replica), and
//! publishes it through a `watch` channel only if it differs. Each connected Envoy has one task
//! running an [`AdsStream`] state machine over its requests and the published snapshots.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use rustls::pki_types::CertificateDer;
use tokio::sync::{Notify, mpsc, watch};
use tonic::codegen::tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::protocol::{AdsStream, Event, Snapshot};
use sluice_core::config::ProxyBudget;
use sluice_core::litellm::GoogleCredentials;

use super::resources::{PushedStanding, XdsOptions, build_with_tokens};
use crate::google_tokens::GoogleTokens;
use crate::metrics::{Metrics, inc};
use crate::store::Store;

/// How often the snapshot is rebuilt without a change notice (changes made by another replica,
/// customers' budget windows that ended).
const REBUILD_PERIOD: Duration = Duration::from_secs(5);

/// The single writer of snapshots.
pub struct SnapshotPublisher<S> {
    store: Arc<S>,
    options: XdsOptions,
    sender: watch::Sender<Arc<Snapshot>>,
    changed: Arc<Notify>,
    metrics: Arc<Metrics>,
    /// Refusals already logged (the snapshot is rebuilt every few seconds).
    reported: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// Vertex AI deployments' access tokens, minted in the background; a new one wakes `changed`.
    google_tokens: Arc<GoogleTokens>,
    /// `litellm_settings`' budgets (the gateway's own, the end users' default), read once.
    budgets: (Option<ProxyBudget>, Option<f64>),
}

impl<S: Store> SnapshotPublisher<S> {
    pub fn new(store: Arc<S>, options: XdsOptions, changed: Arc<Notify>, metrics: Arc<Metrics>) -> Self {
        let (sender, _) = watch::channel(Arc::new(Snapshot::default()));
        let google_tokens = GoogleTokens::new(Arc::clone(&changed), crate::http_client::extra_roots_from_env());
        let budgets = options.budgets();
        Self { store, options, sender, changed, metrics, reported: Default::default(), google_tokens, budgets }
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.sender.subscribe()
    }

    /// Rebuilds from the database and publishes if anything changed. A database error or an
    /// invalid deployment set keeps the last good snapshot serving.
    pub async fn rebuild(&self) -> Result<bool, String> {
        let models = self.store.all_models().await.map_err(|e| format!("reading deployments: {e}"))?;
        let entries: Vec<serde_json::Value> = models.into_iter().map(|m| m.entry).collect();
        let now_ms = u64::try_from(crate::store::now_ms()).unwrap_or(0);
        let (proxy_budget, end_user_max_budget) = &self.budgets;
        let customers = crate::customers::customer_configs(&*self.store, now_ms, *end_user_max_budget)
            .await
            .map_err(|e| format!("reading customers: {e}"))?;
        let proxy_budget_spent = match proxy_budget {
            Some(budget) => crate::budget::proxy_budget_spent(&*self.store, budget, now_ms)
                .await
                .map_err(|e| format!("reading the gateway's budget: {e}"))?,
            None => false,
        };
        let standing = PushedStanding { customers, proxy_budget_spent };
        let env = |name: &str| std::env::var(name).ok();
        let token = |source: &GoogleCredentials| self.google_tokens.current(source);
        let (snapshot, warnings) = build_with_tokens(&entries, standing, &self.options, &env, &token)?;
        // Only what the policy refuses: the rest was said when the deployment was accepted.
        for w in warnings.iter().filter(|w| w.contains("no credential sent")) {
            if self.reported.lock().map(|mut seen| seen.insert(w.clone())).unwrap_or(false) {
                eprintln!("sluice: xds: {w}");
            }
        }
        let changed = self.sender.send_if_modified(|current| {
            if **current == snapshot {
                return false;
            }
            *current = Arc::new(snapshot);
            true
        });
        if changed {
            inc(&self.metrics.xds_snapshots, 1);
        }
        Ok(changed)
    }

    /// Runs until the process stops: rebuild on every change notice, and every few seconds.
    pub async fn run(self) {
        loop {
            if let Err(e) = self.rebuild().await {
                eprintln!("sluice: xds: keeping the last snapshot: {e}");
            }
            let _ = tokio::time::timeout(REBUILD_PERIOD, self.changed.notified()).await;
        }
    }
}

/// The tonic ADS service: one task and one state machine per stream.
pub struct AdsService {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    metrics: Arc<Metrics>,
    /// mTLS is on: each stream must come from a certificate naming its node (`pki::check_node`).
    node_identity: bool,
}

impl AdsService {
    pub fn new(snapshots: watch::Receiver<Arc<Snapshot>>, metrics: Arc<Metrics>) -> Self {
        Self { snapshots, metrics, node_identity: false }
    }

    /// Requires every stream's node id to be the one its client certificate names.
    pub fn with_node_identity(mut self) -> Self {
        self.node_identity = true;
        self
    }
}

/// Whether the stream's first request may be answered: the node it names must be the one the
/// connection's client certificate names (when identities are required).
fn authorise_node(certs: Option<&[CertificateDer<'static>]>, req: &DiscoveryRequest) -> Result<(), Status> {
    let node = req.node.as_ref().map(|n| n.id.as_str()).unwrap_or_default();
    let cert = certs
        .and_then(<[_]>::first)
        .ok_or_else(|| Status::unauthenticated("the data-plane port requires a client certificate"))?;
    crate::pki::check_node(cert, node).map_err(Status::permission_denied)
}

pub struct ResponseStream<T>(mpsc::Receiver<Result<T, Status>>);

impl<T> Stream for ResponseStream<T> {
    type Item = Result<T, Status>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

fn record(events: &[Event], node: &str, metrics: &Metrics) {
    for event in events {
        match event {
            Event::Ack { .. } => inc(&metrics.xds_acks, 1),
            Event::Nack { type_url, version, detail } => {
                inc(&metrics.xds_nacks, 1);
                if let Ok(mut last) = metrics.last_nack.lock() {
                    *last = Some((node.to_owned(), type_url.clone(), detail.clone()));
                }
                eprintln!("sluice: xds: envoy {node:?} rejected {type_url} version {version}: {detail}");
            }
            Event::Stale { .. } => {}
            Event::Invalid { reason } => eprintln!("sluice: xds: envoy {node:?}: {reason}"),
        }
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsService {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        // Checked on the first request, which names the node.
        let mut unchecked = self.node_identity.then(|| request.peer_certs());
        let mut inbound = request.into_inner();
        let mut snapshots = self.snapshots.clone();
        let metrics = Arc::clone(&self.metrics);
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            metrics.xds_connected.fetch_add(1, Ordering::Relaxed);
            let mut stream = AdsStream::default();
            loop {
                let step = tokio::select! {
                    message = inbound.message() => match message {
                        Ok(Some(req)) => {
                            if let Some(certs) = unchecked.take()
                                && let Err(refused) = authorise_node(certs.as_deref().map(Vec::as_slice), &req)
                            {
                                eprintln!("sluice: xds: refused a stream: {}", refused.message());
                                inc(&metrics.xds_refused, 1);
                                let _ = tx.send(Err(refused)).await;
                                break;
                            }
                            let snapshot = Arc::clone(&snapshots.borrow_and_update());
                            stream.on_request(&req, &snapshot)
                        }
                        // Envoy went away (or the stream broke): it reconnects with a new one.
                        Ok(None) | Err(_) => break,
                    },
                    changed = snapshots.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        let snapshot = Arc::clone(&snapshots.borrow_and_update());
                        stream.on_snapshot(&snapshot)
                    }
                };
                record(&step.events, &stream.node_id, &metrics);
                for response in step.responses {
                    if tx.send(Ok(response)).await.is_err() {
                        break;
                    }
                    inc(&metrics.xds_pushes, 1);
                }
            }
            metrics.xds_connected.fetch_sub(1, Ordering::Relaxed);
        });
        Ok(Response::new(ResponseStream(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented("Sluice serves state-of-the-world ADS; delta xDS is not supported"))
    }
}
