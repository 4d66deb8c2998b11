//! The singleton service VM (the wasm build): one per Envoy. It drains the usage queue that
//! every worker feeds and writes each record as one JSON line to Envoy's log
//! ([`USAGE_LOG_PREFIX`]). With a control plane (xDS mode: the bootstrap names its cluster) it
//! also
//!
//! - ships the records in batches over gRPC (`sluice.v1.UsageService/Report`) through an
//!   [`Outbox`]: one batch in flight, retried with backoff until acknowledged (ingestion is
//!   idempotent by record id, so a resent batch counts once), bounded in size;
//! - long-polls `KeyLookupService/WatchInvalidations` and relays what it hears to the workers
//!   through one shared-data entry ([`INVALIDATIONS_KEY`]), which each worker reads on its
//!   tick: keys revoked, blocked or rotated leave every worker's cache within a tick;
//! - syncs rate limits with the fleet (`sluice.v1.LimitService/Sync`): for every limited scope
//!   the workers announced this minute ([`LIMIT_SCOPES_QUEUE`]), it reports this Envoy's
//!   counts, at once for a new scope and then every tick, and writes what the other Envoys
//!   counted into the scope's shared record, where admission counts it.

use prost::Message;
use proxy_wasm::hostcalls;
use serde::Deserialize;
use sluice_core::fleet::{self, WindowSet};
use sluice_core::outbox::Outbox;
use sluice_proto::gateway::v1 as pb;
use sluice_proto::usage_line::record_from_json;

use super::host::{EnvoyHost, LIMIT_SCOPES_QUEUE, USAGE_QUEUE};
use crate::counters;
use crate::host::{Host, LogLevel};
use crate::service::INVALIDATIONS_KEY;
use crate::usage_record::USAGE_LOG_PREFIX;

/// Lines kept in [`INVALIDATIONS_KEY`]; a worker further behind drops its whole cache.
const INVALIDATIONS_KEPT: usize = 256;
const USAGE_SERVICE: &str = "sluice.v1.UsageService";
const KEY_SERVICE: &str = crate::flow::KEY_LOOKUP_SERVICE;
const LIMIT_SERVICE: &str = "sluice.v1.LimitService";
/// A sync slower than this is abandoned; the next tick sends a fresh one.
const SYNC_TIMEOUT_MS: u64 = 2_000;
/// Scopes per Sync call (the control plane takes up to 20,000); an Envoy with more active
/// scopes reports them in turns, one call per tick.
const SYNC_SCOPES_PER_CALL: usize = 5_000;
/// Records per batch, and records the outbox holds while the control plane is away (beyond
/// that, the oldest are only in the log).
const BATCH: usize = 500;
const OUTBOX_CAPACITY: usize = 200_000;
/// How often a control plane that does not answer is mentioned in the log.
const PENDING_LOG_EVERY_MS: u64 = 30_000;
/// Where unshipped records are, and how to get them to the control plane.
const REPLAY_HINT: &str =
    "every record is also in this log, on its usage line: `sluice usage import` replays them (idempotent)";
const REPORT_TIMEOUT_MS: u64 = 10_000;
/// Above the control plane's 20 s hold, so an idle watch ends with an answer, not a timeout.
const WATCH_TIMEOUT_MS: u64 = 30_000;
const WATCH_RETRY_MS: u64 = 1_000;

/// The singleton's plugin configuration (absent in standalone mode).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// The cluster that reaches the control plane's data-plane port.
    #[serde(default)]
    pub control_plane_cluster: Option<String>,
    /// Envoy's node id, as its bootstrap names it: the first part of this singleton's instance
    /// name in limit syncs, which the control plane checks against the node's certificate
    /// (the `node.id` property reads empty in the singleton's VM).
    #[serde(default)]
    pub node_id: Option<String>,
}

struct ControlPlaneLink {
    cluster: String,
    outbox: Outbox<pb::UsageRecord>,
    /// The Report call in flight: its token and the outbox batch it carries.
    report: Option<(u32, u64)>,
    watch: Option<u32>,
    watch_retry_at_ms: u64,
    epoch: String,
    after_seq: u64,
    /// Numbering of the lines this singleton writes for the workers.
    relay_seq: u64,
    relayed: Vec<String>,
    fleet: FleetSync,
    /// When the last "records wait" line was logged (at most one per [`PENDING_LOG_EVERY_MS`]).
    pending_logged_ms: u64,
}

/// The fleet rate-limit sync: which scopes, and the call in flight.
struct FleetSync {
    /// `<node id>/<random>`: the fleet's counts are kept per instance, and a restarted Envoy
    /// must not overwrite what its predecessor counted this minute.
    instance: String,
    queue: Option<u32>,
    scopes: WindowSet,
    /// The Sync call in flight: its token and the window it reported.
    call: Option<(u32, u64)>,
    /// A new scope arrived while a call was in flight: sync again when it returns.
    again: bool,
    /// Where the next call starts when there are more scopes than one call carries.
    cursor: usize,
}

pub struct UsageService {
    host: EnvoyHost,
    /// The queue the workers hand their records to.
    usage_queue: u32,
    link: Option<ControlPlaneLink>,
}

impl UsageService {
    /// Registers the usage queue; workers resolve it by VM id and name.
    pub fn start(host: EnvoyHost, config: &[u8]) -> Option<Self> {
        let config: ServiceConfig = if config.is_empty() {
            ServiceConfig::default()
        } else {
            match serde_json::from_slice(config) {
                Ok(c) => c,
                Err(e) => {
                    host.log(LogLevel::Critical, &format!("sluice: invalid service configuration: {e}"));
                    return None;
                }
            }
        };
        let usage_queue = match hostcalls::register_shared_queue(USAGE_QUEUE) {
            Ok(id) => id,
            Err(e) => {
                host.log(LogLevel::Critical, &format!("sluice: cannot register the usage queue: {e:?}"));
                return None;
            }
        };
        let link = config.control_plane_cluster.map(|cluster| ControlPlaneLink {
            fleet: FleetSync {
                instance: instance_name(&host, config.node_id.as_deref()),
                // Without this queue workers cannot announce scopes: limits stay per Envoy.
                queue: match hostcalls::register_shared_queue(LIMIT_SCOPES_QUEUE) {
                    Ok(id) => Some(id),
                    Err(e) => {
                        host.log(LogLevel::Error, &format!("sluice: cannot register the limit-scope queue: {e:?}"));
                        None
                    }
                },
                scopes: WindowSet::default(),
                call: None,
                again: false,
                cursor: 0,
            },
            cluster,
            outbox: Outbox::new(BATCH, OUTBOX_CAPACITY),
            report: None,
            watch: None,
            watch_retry_at_ms: 0,
            epoch: String::new(),
            after_seq: 0,
            relay_seq: 0,
            relayed: Vec::new(),
            pending_logged_ms: 0,
        });
        let mode = if link.is_some() { "shipping usage to the control plane" } else { "usage to the log" };
        host.log(LogLevel::Info, &format!("sluice: usage service started ({mode})"));
        Some(Self { host, usage_queue, link })
    }

    /// The VM is going away (Envoy stopping or draining): what was never shipped is named, so
    /// an operator knows to replay it from this log.
    pub fn stop(&mut self) {
        // What the workers handed over last is logged (and counted) before the count.
        self.drain_usage(self.usage_queue);
        if let Some(link) = &self.link
            && !link.outbox.is_empty()
        {
            self.host.log(
                LogLevel::Warn,
                &format!(
                    "sluice: stopping with {} usage records not shipped to the control plane; {REPLAY_HINT}",
                    link.outbox.len()
                ),
            );
        }
    }

    pub fn has_control_plane(&self) -> bool {
        self.link.is_some()
    }

    /// A queue has messages: scope announcements, or usage records.
    pub fn drain(&mut self, queue_id: u32) {
        if let Some(link) = &mut self.link
            && link.fleet.queue == Some(queue_id)
        {
            let window = fleet::window_of(self.host.now_ms());
            while let Ok(Some(message)) = hostcalls::dequeue_shared_queue(queue_id) {
                for name in fleet::announced_names(&message) {
                    link.fleet.scopes.insert(name, window);
                }
            }
            // A scope new to this Envoy, or one whose count passed a tenth of its limit, is
            // synced at once (so a burst is seen by the fleet while it lasts).
            self.sync_limits(true);
            return;
        }
        self.drain_usage(queue_id);
    }

    /// Each message is a worker's batch: newline-separated JSON records.
    fn drain_usage(&mut self, queue_id: u32) {
        while let Ok(Some(batch)) = hostcalls::dequeue_shared_queue(queue_id) {
            for line in batch.split(|b| *b == b'\n').filter(|r| !r.is_empty()) {
                // The log line is kept in every mode: operators grep it, and it holds any record
                // the outbox had to let go during a long outage.
                self.host.log(LogLevel::Info, &format!("{USAGE_LOG_PREFIX}{}", String::from_utf8_lossy(line)));
                if let Some(link) = &mut self.link {
                    match record_from_json(line) {
                        Some(record) => {
                            if link.outbox.push(record).is_some() {
                                self.host.count("sluice.usage.outbox_overflow", 1);
                            }
                        }
                        None => self.host.count("sluice.usage.unreadable", 1),
                    }
                }
            }
        }
        self.send_report();
    }

    /// Periodic work: retry a failed batch, keep the invalidation watch open, sync limits.
    pub fn tick(&mut self) {
        self.send_report();
        self.watch();
        self.sync_limits(false);
    }

    /// Reports this Envoy's counts of every scope announced this minute. One call at a time;
    /// `urgent` (a new scope, or a count past a tenth of its limit) asks for another as soon as
    /// the one in flight returns.
    fn sync_limits(&mut self, urgent: bool) {
        let now = self.host.now_ms();
        let Some(link) = &mut self.link else { return };
        let sync = &mut link.fleet;
        if sync.call.is_some() {
            sync.again |= urgent;
            return;
        }
        sync.again = false;
        let window = fleet::window_of(now);
        let active = sync.scopes.names(window).count();
        if active == 0 {
            return;
        }
        if sync.cursor >= active {
            sync.cursor = 0;
        }
        let counts: Vec<pb::ScopeCounts> = sync
            .scopes
            .names(window)
            .skip(sync.cursor)
            .take(SYNC_SCOPES_PER_CALL)
            .map(|name| {
                let (requests, tokens) = counters::local_counts(&self.host, name, window);
                pb::ScopeCounts { scope: name.to_owned(), requests, tokens }
            })
            .collect();
        sync.cursor += counts.len();
        let message = pb::SyncLimitsRequest { instance: sync.instance.clone(), window, counts }.encode_to_vec();
        if let Some(token) = self.host.dispatch_grpc(&link.cluster, LIMIT_SERVICE, "Sync", &message, SYNC_TIMEOUT_MS) {
            sync.call = Some((token, window));
        }
    }

    fn send_report(&mut self) {
        let now = self.host.now_ms();
        let Some(link) = &mut self.link else { return };
        if link.report.is_some() {
            return;
        }
        let Some((batch_id, records)) = link.outbox.next_batch(now) else { return };
        let message = pb::ReportUsageRequest { records }.encode_to_vec();
        match self.host.dispatch_grpc(&link.cluster, USAGE_SERVICE, "Report", &message, REPORT_TIMEOUT_MS) {
            Some(token) => link.report = Some((token, batch_id)),
            None => link.outbox.failed(batch_id, now),
        }
    }

    fn watch(&mut self) {
        let now = self.host.now_ms();
        let Some(link) = &mut self.link else { return };
        if link.watch.is_some() || now < link.watch_retry_at_ms {
            return;
        }
        let request = pb::WatchInvalidationsRequest { epoch: link.epoch.clone(), after_seq: link.after_seq };
        let message = request.encode_to_vec();
        match self.host.dispatch_grpc(&link.cluster, KEY_SERVICE, "WatchInvalidations", &message, WATCH_TIMEOUT_MS) {
            Some(token) => link.watch = Some(token),
            None => link.watch_retry_at_ms = now + WATCH_RETRY_MS,
        }
    }

    /// An answer to one of the singleton's calls.
    pub fn on_grpc_response(&mut self, token: u32, status: u32, size: usize) {
        let now = self.host.now_ms();
        let body = if status == 0 { self.host.grpc_response(size).unwrap_or_default() } else { Vec::new() };
        let Some(link) = &mut self.link else { return };
        if let Some((_, batch_id)) = link.report.take_if(|(t, _)| *t == token) {
            match (status, pb::ReportUsageResponse::decode(body.as_slice())) {
                (0, Ok(answer)) => {
                    link.outbox.acknowledged(batch_id);
                    self.host.count("sluice.usage.shipped", u64::from(answer.accepted));
                    self.host.count("sluice.usage.duplicates", u64::from(answer.duplicates));
                }
                _ => {
                    link.outbox.failed(batch_id, now);
                    self.host.count("sluice.usage.report_failures", 1);
                    if now >= link.pending_logged_ms + PENDING_LOG_EVERY_MS {
                        link.pending_logged_ms = now;
                        self.host.log(
                            LogLevel::Warn,
                            &format!(
                                "sluice: usage not shipped: the control plane did not answer (gRPC status {status}); {} records wait in memory (at most {OUTBOX_CAPACITY}); {}",
                                link.outbox.len(),
                                REPLAY_HINT
                            ),
                        );
                    }
                }
            }
            self.send_report();
        } else if link.fleet.call.take_if(|(t, _)| *t == token).is_some() {
            match (status, pb::SyncLimitsResponse::decode(body.as_slice())) {
                (0, Ok(answer)) => {
                    // Only scopes this singleton reported: the answer names shared-data entries.
                    let reported = &link.fleet.scopes;
                    for others in answer.others.iter().filter(|o| reported.contains(&o.scope, answer.window)) {
                        counters::set_remote(&self.host, &others.scope, answer.window, others.requests, others.tokens);
                    }
                    self.host.count("sluice.fleet_limits.syncs", 1);
                }
                // Until the next answer, admission uses the last counts it had for this minute.
                _ => self.host.count("sluice.fleet_limits.sync_failures", 1),
            }
            if link.fleet.again {
                self.sync_limits(true);
            }
        } else if link.watch.take_if(|t| *t == token).is_some() {
            match (status, pb::WatchInvalidationsResponse::decode(body.as_slice())) {
                (0, Ok(answer)) => {
                    if answer.epoch != link.epoch {
                        self.host.log(
                            LogLevel::Info,
                            &format!("sluice: watching key invalidations (epoch {})", answer.epoch),
                        );
                    }
                    relay(&self.host, link, &answer);
                    self.watch();
                }
                _ => {
                    self.host.log(
                        LogLevel::Warn,
                        &format!("sluice: key invalidation watch failed (gRPC status {status}); retrying"),
                    );
                    link.watch_retry_at_ms = now + WATCH_RETRY_MS;
                }
            }
        }
    }
}

/// This singleton's name in the fleet's counts: Envoy's node id and a random suffix.
fn instance_name(host: &EnvoyHost, configured: Option<&str>) -> String {
    let node = match configured {
        Some(node) => node.as_bytes().to_vec(),
        None => hostcalls::get_property(vec!["node", "id"]).ok().flatten().unwrap_or_default(),
    };
    let node = String::from_utf8_lossy(&node);
    let suffix = getrandom::u64().unwrap_or_else(|_| host.now_ms());
    format!("{}/{suffix:016x}", if node.is_empty() { "envoy" } else { &node })
}

/// Appends the control plane's invalidations to the workers' shared-data entry.
fn relay(host: &EnvoyHost, link: &mut ControlPlaneLink, answer: &pb::WatchInvalidationsResponse) {
    let first = link.epoch.is_empty();
    link.epoch.clone_from(&answer.epoch);
    link.after_seq = answer.last_seq;
    // The first answer only tells where the log stands; whatever workers cached before it was
    // not covered by a watch, so it goes (as on a reset: the control plane restarted, or this
    // singleton fell behind its log).
    let mut lines: Vec<(char, &str)> = Vec::new();
    if answer.reset || first {
        lines.push(('r', "-"));
    }
    lines.extend(answer.key_ids.iter().map(|id| ('k', id.as_str())));
    lines.extend(answer.team_ids.iter().map(|id| ('t', id.as_str())));
    lines.extend(answer.user_ids.iter().map(|id| ('u', id.as_str())));
    lines.extend(answer.org_ids.iter().map(|id| ('o', id.as_str())));
    if lines.is_empty() {
        return;
    }
    for (kind, id) in lines {
        link.relay_seq += 1;
        link.relayed.push(format!("{} {kind} {id}", link.relay_seq));
    }
    let excess = link.relayed.len().saturating_sub(INVALIDATIONS_KEPT);
    link.relayed.drain(..excess);
    let text = link.relayed.join("\n");
    // The only writer: no CAS needed.
    host.shared_set(INVALIDATIONS_KEY, text.as_bytes(), None);
    host.count("sluice.key_invalidations", 1);
}
