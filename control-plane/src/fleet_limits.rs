//! `sluice.v1.LimitService/Sync`: RPM/TPM shared across a fleet of Envoys.
//!
//! Every Envoy's singleton reports, per limited scope, its own requests and tokens in the
//! current minute, and gets back the sum of every *other* instance's counts, which its workers
//! add to their own at admission (`sluice_core::fleet`). Reports are absolute counts stored per
//! (window, scope, instance), so a retried or repeated report changes nothing.
//!
//! Counts live in Redis when the control plane has one (`--redis-url`, `REDIS_URL`,
//! `router_settings.redis_url`): every replica then answers from the same counts. Without
//! Redis they live in this process, which is right for one replica. No request ever waits for
//! this: an Envoy that cannot sync limits with its own counts and the last answer it had.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use rustls::pki_types::CertificateDer;
use sluice_core::fleet::window_of;
use sluice_proto::gateway::v1::limit_service_server::LimitService;
use sluice_proto::gateway::v1::{ScopeCounts, SyncLimitsRequest, SyncLimitsResponse};
use tonic::{Request, Response, Status};

use crate::metrics::{Metrics, inc};
use crate::store::now_ms;

/// Counts are kept a little past their minute, for late reports and clock skew between hosts.
const KEEP_SECS: i64 = 180;
/// Windows a report may be off the control plane's own clock (hosts' clocks drift).
const WINDOW_SLACK: u64 = 2;
/// Bounds on one report: an Envoy has far fewer active scopes; a larger report is an error.
const MAX_SCOPES: usize = 20_000;
const MAX_NAME_BYTES: usize = 512;
/// A Redis round trip that takes longer than this fails the sync (the Envoy retries).
const REDIS_TIMEOUT: Duration = Duration::from_millis(1_000);

/// The minute by this host's clock.
pub fn current_window() -> u64 {
    window_of(u64::try_from(now_ms()).unwrap_or(0))
}

/// One scope's counts from one instance.
type Counts = (u64, u64);

/// Where the fleet's counts live.
pub enum FleetCounts {
    /// This process only: one control-plane replica.
    Memory(Mutex<MemoryCounts>),
    /// Shared by every replica.
    Redis(RedisCounts),
}

impl FleetCounts {
    pub fn in_memory() -> Self {
        Self::Memory(Mutex::new(MemoryCounts::default()))
    }

    /// Connects lazily: a Redis that is down at start only fails syncs until it is back.
    pub fn redis(url: &str) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("redis url: {e}"))?;
        Ok(Self::Redis(RedisCounts { client, connection: tokio::sync::Mutex::new(None), failing: Outage::default() }))
    }

    pub fn describe(&self) -> &'static str {
        match self {
            Self::Memory(_) => "in this process",
            Self::Redis(_) => "in Redis",
        }
    }

    /// Stores `instance`'s counts and returns, per scope in the same order, the others' sums.
    pub async fn report(&self, instance: &str, window: u64, counts: &[ScopeCounts]) -> Result<Vec<Counts>, String> {
        match self {
            Self::Memory(memory) => {
                let mut memory = memory.lock().map_err(|_| "fleet counts poisoned".to_owned())?;
                Ok(memory.report(instance, window, counts, current_window()))
            }
            Self::Redis(redis) => redis.report(instance, window, counts).await,
        }
    }

    /// Every instance's counts summed, per scope in the same order (for key lookups).
    pub async fn totals(&self, window: u64, scopes: &[String]) -> Result<Vec<Counts>, String> {
        match self {
            Self::Memory(memory) => {
                let memory = memory.lock().map_err(|_| "fleet counts poisoned".to_owned())?;
                Ok(scopes
                    .iter()
                    .map(|scope| {
                        memory
                            .windows
                            .get(&(window, scope.clone()))
                            .map_or((0, 0), |instances| others(instances.iter().map(|(i, c)| (i.as_str(), *c)), ""))
                    })
                    .collect())
            }
            Self::Redis(redis) => redis.totals(window, scopes).await,
        }
    }
}

/// (window, scope) → instance → counts.
#[derive(Debug, Default)]
pub struct MemoryCounts {
    windows: HashMap<(u64, String), HashMap<String, Counts>>,
}

impl MemoryCounts {
    fn report(&mut self, instance: &str, window: u64, counts: &[ScopeCounts], now_window: u64) -> Vec<Counts> {
        // Minutes that can no longer be reported go (reports are at most WINDOW_SLACK late).
        self.windows.retain(|(w, _), _| w.saturating_add(WINDOW_SLACK) >= now_window);
        counts
            .iter()
            .map(|c| {
                let instances = self.windows.entry((window, c.scope.clone())).or_default();
                instances.insert(instance.to_owned(), (c.requests, c.tokens));
                others(instances.iter().map(|(i, counts)| (i.as_str(), *counts)), instance)
            })
            .collect()
    }
}

/// The sum of every instance's counts but `me`'s.
fn others<'a>(all: impl Iterator<Item = (&'a str, Counts)>, me: &str) -> Counts {
    all.filter(|(instance, _)| *instance != me)
        .fold((0, 0), |(r, t), (_, (dr, dt))| (r.saturating_add(dr), t.saturating_add(dt)))
}

pub struct RedisCounts {
    client: redis::Client,
    /// One multiplexed connection, replaced after an error.
    connection: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    /// Whether the last round trip failed: an outage is logged when it starts and when it
    /// ends, not at every sync (each Envoy syncs every 200 ms; the failures are counted).
    failing: Outage,
}

/// Whether something is failing, told only when that changes.
#[derive(Debug, Default)]
struct Outage(AtomicBool);

impl Outage {
    /// Records an outcome; true when it differs from the previous one (the first failure, or
    /// the first success after failures).
    fn changed(&self, ok: bool) -> bool {
        self.0.swap(!ok, Ordering::Relaxed) == ok
    }
}

impl RedisCounts {
    async fn connection(&self) -> Result<MultiplexedConnection, String> {
        let mut slot = self.connection.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = crate::shared_redis::connect(&self.client, REDIS_TIMEOUT).await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    /// One pipelined round trip: per scope, the instance's field is set, the hash's expiry
    /// renewed and the whole hash read back.
    async fn report(&self, instance: &str, window: u64, counts: &[ScopeCounts]) -> Result<Vec<Counts>, String> {
        let mut pipe = redis::pipe();
        for c in counts {
            let key = fleet_key(window, &c.scope);
            pipe.hset(&key, instance, format!("{} {}", c.requests, c.tokens))
                .ignore()
                .expire(&key, KEEP_SECS)
                .ignore()
                .hgetall(&key);
        }
        let hashes = self.query(&pipe).await?;
        Ok(hashes
            .iter()
            .map(|hash| others(hash.iter().map(|(i, v)| (i.as_str(), parse_counts(v))), instance))
            .collect())
    }

    async fn totals(&self, window: u64, scopes: &[String]) -> Result<Vec<Counts>, String> {
        let mut pipe = redis::pipe();
        for scope in scopes {
            pipe.hgetall(fleet_key(window, scope));
        }
        let hashes = self.query(&pipe).await?;
        Ok(hashes.iter().map(|hash| others(hash.iter().map(|(i, v)| (i.as_str(), parse_counts(v))), "")).collect())
    }

    /// Runs a pipeline whose answers are hashes; after an error the next call reconnects.
    async fn query(&self, pipe: &redis::Pipeline) -> Result<Vec<HashMap<String, String>>, String> {
        let result = self.round_trip(pipe).await;
        if let Err(e) = &result {
            *self.connection.lock().await = None;
            if self.failing.changed(false) {
                eprintln!(
                    "sluice: fleet limit counts: {e}; until Redis answers, syncs fail (counted in \
                     sluice_limit_sync_failures_total) and each Envoy limits on its own counts"
                );
            }
        } else if self.failing.changed(true) {
            eprintln!("sluice: fleet limit counts: Redis answers again");
        }
        result
    }

    async fn round_trip(&self, pipe: &redis::Pipeline) -> Result<Vec<HashMap<String, String>>, String> {
        let mut connection = self.connection().await?;
        match tokio::time::timeout(REDIS_TIMEOUT, pipe.query_async(&mut connection)).await {
            Ok(Ok(hashes)) => Ok(hashes),
            Ok(Err(e)) => Err(format!("redis: {e}")),
            Err(_) => Err("redis: timed out".to_owned()),
        }
    }
}

fn fleet_key(window: u64, scope: &str) -> String {
    format!("sluice:fleet:{window}:{scope}")
}

/// `"<requests> <tokens>"`; anything else counts as nothing.
fn parse_counts(value: &str) -> Counts {
    let mut parts = value.split(' ').map(|p| p.parse::<u64>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

pub struct LimitSyncApi {
    counts: Arc<FleetCounts>,
    metrics: Arc<Metrics>,
    node_identity: bool,
}

impl LimitSyncApi {
    pub fn new(counts: Arc<FleetCounts>, metrics: Arc<Metrics>) -> Self {
        Self { counts, metrics, node_identity: false }
    }

    /// Reports are accepted only for the node the client certificate names: an instance is
    /// `<node id>/<suffix>`, and an Envoy that could report as another node could overwrite
    /// that node's counts (and so lift or tighten its limits). An instance without a node part
    /// is named by the certificate ([`instance_name`]).
    pub fn with_node_identity(mut self, on: bool) -> Self {
        self.node_identity = on;
        self
    }

    /// The name the report's counts are kept under ([`instance_name`]), or why it is refused.
    fn authorise(&self, request: &Request<SyncLimitsRequest>) -> Result<String, Status> {
        let instance = &request.get_ref().instance;
        if !self.node_identity {
            return Ok(instance.clone());
        }
        let cert = crate::pki::peer_certificate(request)?;
        instance_name(Some(&cert), instance).map_err(|e| {
            inc(&self.metrics.data_plane_refused, 1);
            eprintln!("sluice: limit sync: refused instance {instance:?}: {e}");
            Status::permission_denied(e)
        })
    }
}

/// The name a report's counts are kept under, given the caller's verified certificate (`None`:
/// node identity is off, `--insecure-data-plane`, and the instance stays as sent).
///
/// - `<node>/<suffix>` (the wasm build's singleton, which reads Envoy's node id): kept, if the
///   certificate names `<node>` (or is a fleet certificate).
/// - No `/` (the native build, which cannot read Envoy's node id and sends a random suffix
///   only): `<node>/<instance>`, the node being the one the certificate names, `*` for a fleet
///   certificate. So the same rule holds: an Envoy's counts are kept under its own node, and it
///   cannot overwrite another node's.
pub fn instance_name(cert: Option<&CertificateDer<'_>>, instance: &str) -> Result<String, String> {
    let Some(cert) = cert else { return Ok(instance.to_owned()) };
    match instance.split_once('/') {
        Some((node, _)) => crate::pki::check_node(cert, node).map(|()| instance.to_owned()),
        None => crate::pki::node_label(cert).map(|node| format!("{node}/{instance}")),
    }
}

/// Checks a report's shape; the message says what is wrong.
fn validate(request: &SyncLimitsRequest, now_window: u64) -> Result<(), Status> {
    if request.instance.is_empty() || request.instance.len() > MAX_NAME_BYTES {
        return Err(Status::invalid_argument("instance must be 1 to 512 bytes"));
    }
    if request.window.abs_diff(now_window) > WINDOW_SLACK {
        return Err(Status::invalid_argument(format!(
            "window {} is not the current minute ({now_window}): check the Envoy host's clock",
            request.window
        )));
    }
    if request.counts.len() > MAX_SCOPES {
        return Err(Status::invalid_argument(format!("at most {MAX_SCOPES} scopes per report")));
    }
    if request.counts.iter().any(|c| c.scope.is_empty() || c.scope.len() > MAX_NAME_BYTES) {
        return Err(Status::invalid_argument("scope names must be 1 to 512 bytes"));
    }
    Ok(())
}

#[tonic::async_trait]
impl LimitService for LimitSyncApi {
    async fn sync(&self, request: Request<SyncLimitsRequest>) -> Result<Response<SyncLimitsResponse>, Status> {
        let instance = self.authorise(&request)?;
        let request = request.into_inner();
        validate(&request, current_window())?;
        let others = match self.counts.report(&instance, request.window, &request.counts).await {
            Ok(o) => o,
            Err(_) => {
                // Logged where it failed, when the outage starts and ends.
                inc(&self.metrics.limit_sync_failures, 1);
                return Err(Status::unavailable("the fleet's limit counters are unavailable"));
            }
        };
        inc(&self.metrics.limit_syncs, 1);
        let others = request
            .counts
            .into_iter()
            .zip(others)
            .map(|(c, (requests, tokens))| ScopeCounts { scope: c.scope, requests, tokens })
            .collect();
        Ok(Response::new(SyncLimitsResponse { window: request.window, others }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(scope: &str, requests: u64, tokens: u64) -> ScopeCounts {
        ScopeCounts { scope: scope.into(), requests, tokens }
    }

    async fn each_backend(check: impl AsyncFn(FleetCounts, String)) {
        // A fresh prefix of instance names per run: Redis keeps the counts of earlier runs.
        let run = format!("{:x}", now_ms());
        check(FleetCounts::in_memory(), run.clone()).await;
        let redis = FleetCounts::redis("redis://127.0.0.1:6379").unwrap();
        check(redis, run).await;
    }

    #[tokio::test]
    async fn each_instance_hears_the_others_sum_and_a_repeated_report_changes_nothing() {
        each_backend(async |fleet, run| {
            let w = current_window();
            let scope = format!("sluice:k:test-{run}");
            let (a, b, c) = (format!("a-{run}"), format!("b-{run}"), format!("c-{run}"));
            assert_eq!(fleet.report(&a, w, &[counts(&scope, 3, 300)]).await.unwrap(), vec![(0, 0)]);
            assert_eq!(fleet.report(&b, w, &[counts(&scope, 2, 20)]).await.unwrap(), vec![(3, 300)]);
            // A retried report is absolute: the sums do not grow.
            assert_eq!(fleet.report(&b, w, &[counts(&scope, 2, 20)]).await.unwrap(), vec![(3, 300)]);
            assert_eq!(fleet.report(&a, w, &[counts(&scope, 4, 400)]).await.unwrap(), vec![(2, 20)]);
            assert_eq!(fleet.report(&c, w, &[counts(&scope, 0, 0)]).await.unwrap(), vec![(6, 420)]);
            // A key lookup hears the whole fleet's total.
            let unused = format!("{scope}-unused");
            assert_eq!(fleet.totals(w, &[scope.clone(), unused]).await.unwrap(), vec![(6, 420), (0, 0)]);
            // Another minute, and another scope, start from nothing.
            let other = format!("{scope}-other");
            assert_eq!(
                fleet.report(&c, w + 1, &[counts(&scope, 1, 1), counts(&other, 1, 1)]).await.unwrap(),
                vec![(0, 0), (0, 0)]
            );
        })
        .await;
    }

    #[test]
    fn an_outage_is_told_when_it_starts_and_when_it_ends() {
        let outage = Outage::default();
        let told: Vec<bool> = [true, false, false, false, true, true, false].map(|ok| outage.changed(ok)).into();
        assert_eq!(told, [false, true, false, false, true, false, true]);
    }

    /// Redis unreachable: syncs and lookups fail at once (refused, not waiting out a timeout),
    /// and go on failing until it is back.
    #[tokio::test]
    async fn without_redis_reports_fail_fast_and_the_outage_is_remembered() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let fleet = FleetCounts::redis(&format!("redis://127.0.0.1:{port}")).unwrap();
        let started = std::time::Instant::now();
        for _ in 0..3 {
            assert!(fleet.report("a", current_window(), &[counts("s", 1, 1)]).await.is_err());
            assert!(fleet.totals(current_window(), &["s".into()]).await.is_err());
        }
        assert!(started.elapsed() < REDIS_TIMEOUT, "{:?}", started.elapsed());
        let FleetCounts::Redis(redis) = &fleet else { unreachable!() };
        assert!(!redis.failing.changed(false), "already failing");
    }

    #[test]
    fn memory_forgets_minutes_that_can_no_longer_be_reported() {
        let mut m = MemoryCounts::default();
        m.report("a", 10, &[counts("s", 1, 1)], 10);
        m.report("a", 11, &[counts("s", 1, 1)], 11);
        assert_eq!(m.windows.len(), 2);
        m.report("a", 13, &[counts("s", 1, 1)], 13);
        assert_eq!(m.windows.keys().map(|(w, _)| *w).min(), Some(11));
    }

    #[test]
    fn reports_from_a_skewed_clock_or_of_absurd_size_are_refused() {
        let ok = SyncLimitsRequest { instance: "i".into(), window: 100, counts: vec![counts("s", 1, 1)] };
        assert!(validate(&ok, 101).is_ok());
        assert!(validate(&SyncLimitsRequest { window: 90, ..ok.clone() }, 101).is_err());
        assert!(validate(&SyncLimitsRequest { instance: String::new(), ..ok.clone() }, 100).is_err());
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        assert!(validate(&SyncLimitsRequest { counts: vec![counts(&long, 1, 1)], ..ok }, 100).is_err());
        assert_eq!(parse_counts("7 9"), (7, 9));
        assert_eq!(parse_counts("garbage"), (0, 0));
    }

    #[tokio::test]
    async fn an_instance_without_a_node_is_named_by_the_certificate_and_one_with_a_node_is_checked() {
        use crate::pki::{PkiDir, init, issue_envoy};
        use rustls::pki_types::pem::PemObject;
        let dir = PkiDir(std::env::temp_dir().join(format!("sluice-limits-pki-{}", now_ms())));
        init(&dir, &["127.0.0.1".into()]).unwrap();
        issue_envoy(&dir, "edge-1", false).unwrap();
        issue_envoy(&dir, "fleet", true).unwrap();
        let cert = |node: &str| CertificateDer::from_pem_file(dir.envoy_cert(node)).unwrap();
        let (edge, fleet) = (cert("edge-1"), cert("fleet"));

        // The native build's instance: a random suffix, named by the certificate.
        assert_eq!(instance_name(Some(&edge), "0123456789abcdef").unwrap(), "edge-1/0123456789abcdef");
        assert_eq!(instance_name(Some(&fleet), "0123456789abcdef").unwrap(), "*/0123456789abcdef");
        // The wasm build's: as today, kept if the certificate names the node.
        assert_eq!(instance_name(Some(&edge), "edge-1/9").unwrap(), "edge-1/9");
        assert!(instance_name(Some(&edge), "edge-2/9").unwrap_err().contains("edge-2"));
        assert_eq!(instance_name(Some(&fleet), "edge-2/9").unwrap(), "edge-2/9");
        // The control plane's own certificate names no node either way.
        let server = CertificateDer::from_pem_file(dir.server_cert()).unwrap();
        assert!(instance_name(Some(&server), "0123456789abcdef").is_err());
        assert!(instance_name(Some(&server), "edge-1/9").is_err());
        // Node identity off (--insecure-data-plane): as sent.
        assert_eq!(instance_name(None, "0123456789abcdef").unwrap(), "0123456789abcdef");
        assert_eq!(instance_name(None, "edge-2/9").unwrap(), "edge-2/9");

        // Stored and compared under that name: the same suffix sent with another certificate
        // is another instance, whose counts are the others' to the first.
        let fleet_counts = FleetCounts::in_memory();
        let (w, scope) = (current_window(), "sluice:k:named");
        let a = instance_name(Some(&edge), "aaaa").unwrap();
        let b = instance_name(Some(&fleet), "aaaa").unwrap();
        assert_eq!(fleet_counts.report(&a, w, &[counts(scope, 3, 30)]).await.unwrap(), vec![(0, 0)]);
        assert_eq!(fleet_counts.report(&b, w, &[counts(scope, 2, 20)]).await.unwrap(), vec![(3, 30)]);
        assert_eq!(fleet_counts.report(&a, w, &[counts(scope, 4, 40)]).await.unwrap(), vec![(2, 20)]);
        std::fs::remove_dir_all(&dir.0).unwrap();
    }
}
