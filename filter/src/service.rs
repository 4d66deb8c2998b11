//! The singleton service, binding-neutral: one per Envoy. It takes the usage records every
//! worker hands over and writes each as one JSON line to Envoy's log ([`USAGE_LOG_PREFIX`]).
//! With a control plane (xDS mode) it also
//!
//! - ships the records in batches over gRPC (`sluice.v1.UsageService/Report`) through an
//!   [`Outbox`]: one batch in flight, retried with backoff until acknowledged (ingestion is
//!   idempotent by record id, so a resent batch counts once), bounded in size;
//! - long-polls `KeyLookupService/WatchInvalidations` and relays what it hears to the workers
//!   through one shared-data entry ([`INVALIDATIONS_KEY`]): keys revoked, blocked or rotated
//!   leave every worker's cache within a tick;
//! - syncs rate limits with the fleet (`sluice.v1.LimitService/Sync`): for every limited scope
//!   the workers announced this minute, it reports this Envoy's counts, at once for a new scope
//!   and then every tick, and writes what the other Envoys counted into the scope's shared
//!   record, where admission counts it.
//!
//! Each binding runs it where it can: the wasm build in the singleton VM of a `WasmService`
//! (`crate::wasm::service` drains proxy-wasm's shared queues into it), the native build on
//! Envoy's main thread (`crate::native::service`: config-level callouts and scheduler). Its
//! calls to Envoy go through [`Host`]: only the shared data, the clock, the log, counters and
//! gRPC calls, none of a stream's.

use prost::Message;
use serde::Deserialize;
use sluice_core::fleet::{self, WindowSet};
use sluice_core::outbox::Outbox;
use sluice_proto::gateway::v1 as pb;
use sluice_proto::usage_line::record_from_json;

use crate::counters;
use crate::host::{Host, LogLevel};
use crate::usage_record::USAGE_LOG_PREFIX;

/// Shared-data entry holding recent invalidations, one `seq kind id` line each (kind `k` key,
/// `t` team, `u` user, `o` organization, `r` drop everything); written only by the singleton.
pub const INVALIDATIONS_KEY: &str = "sluice:invalidations";
/// New invalidations for a worker that has seen up to `after_seq`: what to drop, and the new
/// position. `None` in the list means drop everything.
pub fn invalidations_since(text: &str, after_seq: u64) -> (Vec<Option<(char, String)>>, u64) {
    let mut out = Vec::new();
    let mut last = after_seq;
    let mut oldest = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ' ');
        let (Some(seq), Some(kind), Some(id)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let Ok(seq) = seq.parse::<u64>() else { continue };
        oldest.get_or_insert(seq);
        if seq <= after_seq {
            continue;
        }
        last = last.max(seq);
        // k key, t team, u user, o organization; anything else (`r`) drops everything.
        out.push(match kind {
            "k" | "t" | "u" | "o" => kind.chars().next().map(|k| (k, id.to_owned())),
            _ => None,
        });
    }
    // Lines this worker never saw were trimmed away: it cannot know what they dropped.
    if oldest.is_some_and(|o| o > after_seq + 1) && after_seq > 0 {
        out.push(None);
    }
    (out, last)
}

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
/// Usage lines are written to the log in calls of about this many bytes.
const LOG_CALL_BYTES: usize = 64 * 1024;
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
    /// `<node id>/<random>`, or `<random>` when the binding cannot read the node id (the control
    /// plane then names it after the client certificate): the fleet's counts are kept per
    /// instance, and a restarted Envoy must not overwrite what its predecessor counted this
    /// minute.
    instance: String,
    scopes: WindowSet,
    /// The Sync call in flight: its token and the window it reported.
    call: Option<(u32, u64)>,
    /// A new scope arrived while a call was in flight: sync again when it returns.
    again: bool,
    /// Where the next call starts when there are more scopes than one call carries.
    cursor: usize,
}

pub struct UsageService<H: Host> {
    host: H,
    link: Option<ControlPlaneLink>,
}

impl<H: Host> UsageService<H> {
    /// `node` names this Envoy in the fleet's limit counts, when the binding knows it; `random`
    /// tells this run apart from the node's earlier ones.
    pub fn start(host: H, config: ServiceConfig, node: Option<&str>, random: u64) -> Self {
        let instance = match node.filter(|n| !n.is_empty()) {
            Some(node) => format!("{node}/{random:016x}"),
            None => format!("{random:016x}"),
        };
        let link = config.control_plane_cluster.map(|cluster| ControlPlaneLink {
            fleet: FleetSync { instance, scopes: WindowSet::default(), call: None, again: false, cursor: 0 },
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
        Self { host, link }
    }

    /// Envoy is stopping or draining (the binding handed over what the workers sent last):
    /// what was never shipped is named, so an operator knows to replay it from this log.
    pub fn stop(&mut self) {
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

    /// Scope names the workers announced (`fleet::announced_names`' format). A scope new to
    /// this Envoy, or one whose count passed a tenth of its limit, is synced at once (so a
    /// burst is seen by the fleet while it lasts).
    pub fn take_announcements<'a>(&mut self, messages: impl IntoIterator<Item = &'a [u8]>) {
        let Some(link) = &mut self.link else { return };
        let window = fleet::window_of(self.host.now_ms());
        for message in messages {
            for name in fleet::announced_names(message) {
                link.fleet.scopes.insert(name, window);
            }
        }
        self.sync_limits(true);
    }

    /// Usage records from the workers: newline-separated JSON, any number per batch. Each is
    /// one `sluice.usage {…}` line of Envoy's log, written a batch per log call (one write
    /// instead of one per record: the line was a tenth of the native build's cost per request);
    /// only a batch's first line carries Envoy's log prefix.
    pub fn take_usage<'a>(&mut self, batches: impl IntoIterator<Item = &'a [u8]>) {
        let mut lines = String::new();
        for batch in batches {
            // Room for the batch and a prefix per record (a few % of a record), up to one log
            // call's worth: the buffer is reused after each call, never grown record by record.
            lines.reserve((batch.len() + batch.len() / 16).min(LOG_CALL_BYTES + 4096).saturating_sub(lines.len()));
            // Records are the filter's own JSON, so valid UTF-8: checked once per batch (a
            // damaged one is still logged, with replacement characters).
            let batch = match std::str::from_utf8(batch) {
                Ok(text) => std::borrow::Cow::Borrowed(text),
                Err(_) => String::from_utf8_lossy(batch),
            };
            for line in batch.split('\n').filter(|r| !r.is_empty()) {
                // The log line is kept in every mode: operators grep it, and it holds any record
                // the outbox had to let go during a long outage.
                if !lines.is_empty() {
                    lines.push('\n');
                }
                lines.push_str(USAGE_LOG_PREFIX);
                lines.push_str(line);
                if lines.len() >= LOG_CALL_BYTES {
                    self.host.log(LogLevel::Info, &lines);
                    lines.clear();
                }
                if let Some(link) = &mut self.link {
                    match record_from_json(line.as_bytes()) {
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
        if !lines.is_empty() {
            self.host.log(LogLevel::Info, &lines);
        }
        self.send_report();
    }

    /// Every call in flight was lost without an answer (the native build: the config that
    /// carried them was replaced): the batch goes back to the outbox, the rest starts again.
    pub fn calls_lost(&mut self) {
        let now = self.host.now_ms();
        let Some(link) = &mut self.link else { return };
        if let Some((_, batch_id)) = link.report.take() {
            link.outbox.failed(batch_id, now);
        }
        link.watch = None;
        link.fleet.call = None;
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
    /// `body` is the answer's message (empty unless `status` is 0, OK).
    pub fn on_grpc_response(&mut self, token: u32, status: u32, body: &[u8]) {
        let now = self.host.now_ms();
        let body = if status == 0 { body } else { &[] };
        let Some(link) = &mut self.link else { return };
        if let Some((_, batch_id)) = link.report.take_if(|(t, _)| *t == token) {
            match (status, pb::ReportUsageResponse::decode(body)) {
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
            match (status, pb::SyncLimitsResponse::decode(body)) {
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
            match (status, pb::WatchInvalidationsResponse::decode(body)) {
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

/// Appends the control plane's invalidations to the workers' shared-data entry.
fn relay<H: Host>(host: &H, link: &mut ControlPlaneLink, answer: &pb::WatchInvalidationsResponse) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock_host::{MockEnvoy, MockHost};
    use std::rc::Rc;

    const RECORD: &str = r#"{"record_id":"b6ae2ae49ec53db2269f72111de0a4b1","request_id":"r1","key_id":"key_1","key_alias":"svc","team_id":null,"user_id":null,"model_group":"gpt-4o","deployment":"gpt-4o-a","upstream_model":"gpt-4o","route":"/v1/chat/completions","status":200,"outcome":"completed","prompt_tokens":18,"cached_prompt_tokens":0,"cache_write_tokens":0,"completion_tokens":16,"reasoning_tokens":0,"total_tokens":34,"cost_usd":0.000205,"start_ms":1796541701996,"latency_ms":51,"streamed":false,"estimated":false}"#;

    fn service(node: Option<&str>) -> (Rc<MockEnvoy>, UsageService<MockHost>) {
        let envoy = MockEnvoy::new(1_796_541_702_000);
        let config = ServiceConfig { control_plane_cluster: Some("cp".into()), node_id: None };
        let service = UsageService::start(MockHost::new(Rc::clone(&envoy)), config, node, 0xabc);
        (envoy, service)
    }

    fn last_call(envoy: &MockEnvoy, method: &str) -> crate::mock_host::GrpcCall {
        let calls = envoy.grpc_calls.borrow();
        calls.iter().rev().find(|c| c.method == method).cloned().unwrap_or_else(|| panic!("no {method} call"))
    }

    /// Records are logged at once and shipped in one call; an acknowledged batch is never sent
    /// again, a failed one is, after its backoff, and so is one whose call was lost.
    #[test]
    fn usage_is_logged_shipped_once_and_retried_until_acknowledged() {
        let (envoy, mut service) = service(Some("edge-1"));
        let batch = format!("{RECORD}\n{RECORD}\nnot json\n");
        service.take_usage([batch.as_bytes()]);
        // One log call, one line per record, each findable by its prefix.
        let logs = envoy.logs.borrow().clone();
        let usage: Vec<&String> = logs.iter().filter(|l| l.starts_with(USAGE_LOG_PREFIX)).collect();
        assert_eq!(usage.len(), 1);
        assert_eq!(usage[0].lines().filter(|l| l.starts_with(USAGE_LOG_PREFIX)).count(), 3);
        assert_eq!(envoy.metric("sluice.usage.unreadable"), 1);
        let report = last_call(&envoy, "Report");
        assert_eq!(pb::ReportUsageRequest::decode(report.message.as_slice()).map(|r| r.records.len()).ok(), Some(2));
        // Lost (its config was replaced): sent again once the backoff has passed.
        service.calls_lost();
        service.tick();
        assert_eq!(envoy.grpc_calls.borrow().iter().filter(|c| c.method == "Report").count(), 1);
        envoy.now_ms.set(envoy.now_ms.get() + 1_000);
        service.tick();
        let resent = last_call(&envoy, "Report");
        assert_ne!(resent.token, report.token);
        assert_eq!(resent.message, report.message);
        // A failure answer: retried later; an acknowledgement: done.
        service.on_grpc_response(resent.token, 14, &[]);
        assert_eq!(envoy.metric("sluice.usage.report_failures"), 1);
        envoy.now_ms.set(envoy.now_ms.get() + 1_000);
        service.tick();
        let third = last_call(&envoy, "Report");
        let ack = pb::ReportUsageResponse { accepted: 2, duplicates: 0 }.encode_to_vec();
        service.on_grpc_response(third.token, 0, &ack);
        assert_eq!(envoy.metric("sluice.usage.shipped"), 2);
        let reports = envoy.grpc_calls.borrow().iter().filter(|c| c.method == "Report").count();
        envoy.now_ms.set(envoy.now_ms.get() + 60_000);
        service.tick();
        assert_eq!(envoy.grpc_calls.borrow().iter().filter(|c| c.method == "Report").count(), reports);
    }

    /// A large hand-over is written in several log calls of bounded size, no line lost or cut.
    #[test]
    fn a_large_batch_is_logged_in_bounded_calls() {
        let (envoy, mut service) = service(None);
        let batch: String = (0..300).map(|_| format!("{RECORD}\n")).collect();
        service.take_usage([batch.as_bytes()]);
        let logs = envoy.logs.borrow().clone();
        let calls: Vec<&String> = logs.iter().filter(|l| l.starts_with(USAGE_LOG_PREFIX)).collect();
        assert!(calls.len() >= 2, "{} calls", calls.len());
        assert!(calls.iter().all(|c| c.len() < LOG_CALL_BYTES + RECORD.len() + USAGE_LOG_PREFIX.len()));
        let lines: Vec<&str> = calls.iter().flat_map(|c| c.lines()).collect();
        assert_eq!(lines.len(), 300);
        assert!(lines.iter().all(|l| *l == format!("{USAGE_LOG_PREFIX}{RECORD}")));
    }

    /// An instance is `<node>/<random>` when the binding knows the node, else `<random>` alone,
    /// which the control plane names after the client certificate.
    #[test]
    fn announced_scopes_are_synced_under_this_instances_name() {
        for (node, expected) in [(Some("edge-1"), "edge-1/0000000000000abc"), (None, "0000000000000abc")] {
            let (envoy, mut service) = service(node);
            service.take_announcements([b"key:a\nkey:b\n".as_slice()]);
            let sync = pb::SyncLimitsRequest::decode(last_call(&envoy, "Sync").message.as_slice()).ok();
            assert_eq!(sync.as_ref().map(|s| s.instance.as_str()), Some(expected));
            assert_eq!(sync.map(|s| s.counts.len()), Some(2));
        }
    }

    /// The first answer of the watch resets the workers' caches; later ones name what to drop.
    #[test]
    fn invalidations_are_relayed_to_the_workers_log() {
        let (envoy, mut service) = service(None);
        service.tick();
        let watch = last_call(&envoy, "WatchInvalidations");
        let first = pb::WatchInvalidationsResponse { epoch: "e1".into(), last_seq: 4, ..Default::default() };
        service.on_grpc_response(watch.token, 0, &first.encode_to_vec());
        let next = last_call(&envoy, "WatchInvalidations");
        assert_ne!(next.token, watch.token, "the watch is renewed at once");
        let revoked = pb::WatchInvalidationsResponse {
            epoch: "e1".into(),
            last_seq: 5,
            key_ids: vec!["key_9".into()],
            ..Default::default()
        };
        service.on_grpc_response(next.token, 0, &revoked.encode_to_vec());
        let host = MockHost::new(Rc::clone(&envoy));
        let log = host.shared_get(INVALIDATIONS_KEY).0.map(|b| String::from_utf8_lossy(&b).into_owned());
        assert_eq!(log.as_deref(), Some("1 r -\n2 k key_9"));
    }

    #[test]
    fn workers_read_only_what_they_have_not_seen() {
        let text = "1 k key_a\n2 t ml\n3 k key_b";
        let (drop, last) = invalidations_since(text, 1);
        assert_eq!(drop, vec![Some(('t', "ml".into())), Some(('k', "key_b".into()))]);
        assert_eq!(last, 3);
        assert_eq!(invalidations_since(text, 3), (vec![], 3));
        // A reset line, and a worker that fell behind the kept lines, drop everything.
        assert_eq!(invalidations_since("4 r -", 3).0, vec![None]);
        assert!(invalidations_since("10 k x\n11 k y", 2).0.contains(&None));
        // Users and organizations (ids may contain spaces: the id is the rest of the line).
        let (drop, last) = invalidations_since("4 u alice\n5 o Acme Corp", 3);
        assert_eq!(drop, vec![Some(('u', "alice".into())), Some(('o', "Acme Corp".into()))]);
        assert_eq!(last, 5);
    }
}
