//! The xDS state-of-the-world protocol for one ADS stream, as a pure state machine: a request
//! or a new snapshot goes in, the responses to send and what happened come out. No I/O, no
//! clock, so every rule below is unit-tested.
//!
//! - **Versions are content hashes** of what is sent, so an unchanged resource set is never
//!   re-sent and every Envoy running the same resources reports the same version.
//! - **ACK / NACK by nonce.** A request whose `response_nonce` is not the last one sent for its
//!   type is stale and ignored. With `error_detail` it is a NACK: Envoy keeps its previous
//!   config, and the rejected version is never sent again (no resend loop); the next, different
//!   snapshot is.
//! - **Make-before-break.** The filter config (ECDS) names clusters. It is sent only after Envoy
//!   has ACKed a cluster set containing every cluster it names, and clusters that the filter
//!   config Envoy runs (or was just sent) still names are kept in the cluster set until a filter
//!   config that no longer names them is ACKed. So a new deployment's cluster exists before any
//!   request is routed to it, and a removed one goes only when nothing routes to it.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;
use sha2::{Digest, Sha256};

pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const EXTENSION_CONFIG: &str = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

/// Everything the control plane wants every Envoy to run, at one moment. Built by one writer
/// ([`super::resources`]) and shared read-only by every stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// By type URL, resources by name.
    pub resources: BTreeMap<&'static str, BTreeMap<String, Any>>,
    /// By extension config name, the clusters that config routes to.
    pub clusters_named_by: BTreeMap<String, BTreeSet<String>>,
}

impl Snapshot {
    fn of_type(&self, type_url: &str) -> Option<&BTreeMap<String, Any>> {
        self.resources.get(type_url)
    }
}

/// What the state machine observed; the server turns these into logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Ack {
        type_url: String,
        version: String,
    },
    /// Envoy refused `version`; it keeps running the one before.
    Nack {
        type_url: String,
        version: String,
        detail: String,
    },
    /// A request answering a nonce that is not the latest: superseded, ignored.
    Stale {
        type_url: String,
    },
    /// A request without a type URL (ADS requires one).
    Invalid {
        reason: String,
    },
}

#[derive(Debug, Default)]
pub struct Step {
    pub responses: Vec<DiscoveryResponse>,
    pub events: Vec<Event>,
}

#[derive(Debug, Clone)]
struct Sent {
    version: String,
    nonce: String,
    resources: BTreeMap<String, Any>,
    /// For filter configs: the clusters they route to (kept until a config without them is ACKed).
    routes_to: BTreeSet<String>,
}

#[derive(Debug, Default)]
struct TypeState {
    /// Requested resource names; empty = wildcard (all of the type).
    names: BTreeSet<String>,
    sent: Option<Sent>,
    acked: Option<Sent>,
    /// The version Envoy refused last: never sent again.
    rejected: Option<String>,
}

/// One ADS stream (one Envoy).
#[derive(Debug, Default)]
pub struct AdsStream {
    pub node_id: String,
    types: BTreeMap<String, TypeState>,
    nonces: u64,
}

/// Send order inside one step: secrets before the clusters that use them, clusters before the
/// filter config that routes to them, and the routes before the filter config that picks them
/// (a stream-idle route the filter names but Envoy does not have yet leaves the stream on the
/// plain route, without the gap timeout, until it arrives).
const ORDER: [&str; 4] = [SECRET, CLUSTER, ROUTE, EXTENSION_CONFIG];

impl AdsStream {
    /// A request from Envoy: the first for a type subscribes; later ones ACK or NACK.
    pub fn on_request(&mut self, req: &DiscoveryRequest, snapshot: &Snapshot) -> Step {
        let mut step = Step::default();
        if self.node_id.is_empty()
            && let Some(node) = &req.node
        {
            self.node_id.clone_from(&node.id);
        }
        if req.type_url.is_empty() {
            step.events.push(Event::Invalid { reason: "request without type_url".into() });
            return step;
        }
        let state = self.types.entry(req.type_url.clone()).or_default();
        if !req.response_nonce.is_empty() {
            let Some(sent) = state.sent.as_ref().filter(|s| s.nonce == req.response_nonce) else {
                step.events.push(Event::Stale { type_url: req.type_url.clone() });
                return step;
            };
            if let Some(error) = &req.error_detail {
                state.rejected = Some(sent.version.clone());
                step.events.push(Event::Nack {
                    type_url: req.type_url.clone(),
                    version: sent.version.clone(),
                    detail: error.message.clone(),
                });
            } else {
                state.acked = Some(sent.clone());
                step.events.push(Event::Ack { type_url: req.type_url.clone(), version: sent.version.clone() });
            }
        }
        state.names = req.resource_names.iter().cloned().collect();
        // An ACK can unblock another type (clusters ACKed → the filter config may go; filter
        // config ACKed → clusters it stopped naming may go), so every type is reconsidered.
        self.push(snapshot, &mut step);
        step
    }

    /// A new snapshot: send each subscribed type whose content changed for this Envoy.
    pub fn on_snapshot(&mut self, snapshot: &Snapshot) -> Step {
        let mut step = Step::default();
        self.push(snapshot, &mut step);
        step
    }

    fn push(&mut self, snapshot: &Snapshot, step: &mut Step) {
        for type_url in ORDER {
            let Some(resources) = self.wanted(type_url, snapshot) else { continue };
            let version = version_of(&resources);
            let Some(state) = self.types.get_mut(type_url) else { continue };
            let already_sent = state.sent.as_ref().is_some_and(|s| s.version == version);
            if already_sent || state.rejected.as_deref() == Some(version.as_str()) {
                continue;
            }
            self.nonces += 1;
            let nonce = self.nonces.to_string();
            step.responses.push(DiscoveryResponse {
                version_info: version.clone(),
                resources: resources.values().cloned().collect(),
                type_url: type_url.to_owned(),
                nonce: nonce.clone(),
                ..Default::default()
            });
            let routes_to =
                resources.keys().filter_map(|name| snapshot.clusters_named_by.get(name)).flatten().cloned().collect();
            state.sent = Some(Sent { version, nonce, resources, routes_to });
        }
    }

    /// What this Envoy should run now for `type_url`, or None to send nothing (not subscribed,
    /// or held back until something it depends on is ACKed).
    fn wanted(&self, type_url: &str, snapshot: &Snapshot) -> Option<BTreeMap<String, Any>> {
        let state = self.types.get(type_url)?;
        let all = snapshot.of_type(type_url).cloned().unwrap_or_default();
        match type_url {
            CLUSTER => Some(self.clusters_to_keep(all)),
            EXTENSION_CONFIG => {
                let wanted = requested(all, &state.names);
                if wanted.is_empty() {
                    return None; // nothing to configure yet: Envoy keeps warming
                }
                self.clusters_acked_for(&wanted, snapshot).then_some(wanted)
            }
            // Secrets and anything else: exactly what was asked for, once it exists.
            _ => Some(requested(all, &state.names)).filter(|r| !r.is_empty() || state.names.is_empty()),
        }
    }

    /// The snapshot's clusters plus those still named by the filter config Envoy runs or was
    /// last sent (their last-sent definitions, if the snapshot dropped them).
    fn clusters_to_keep(&self, mut clusters: BTreeMap<String, Any>) -> BTreeMap<String, Any> {
        let Some(ext) = self.types.get(EXTENSION_CONFIG) else { return clusters };
        let previous = self.types.get(CLUSTER).and_then(|s| s.sent.as_ref());
        let in_use = [ext.acked.as_ref(), ext.sent.as_ref()].into_iter().flatten();
        for cluster in in_use.flat_map(|sent| &sent.routes_to) {
            if !clusters.contains_key(cluster)
                && let Some(def) = previous.and_then(|p| p.resources.get(cluster))
            {
                clusters.insert(cluster.clone(), def.clone());
            }
        }
        clusters
    }

    /// True when every cluster the wanted filter configs name is in the cluster set Envoy has
    /// ACKed (or when this Envoy does not take clusters from us at all).
    fn clusters_acked_for(&self, wanted: &BTreeMap<String, Any>, snapshot: &Snapshot) -> bool {
        let Some(cds) = self.types.get(CLUSTER) else { return true };
        let acked = cds.acked.as_ref().map(|a| &a.resources);
        wanted.keys().all(|name| {
            snapshot
                .clusters_named_by
                .get(name)
                .is_none_or(|needed| needed.iter().all(|c| acked.is_some_and(|a| a.contains_key(c))))
        })
    }
}

fn requested(all: BTreeMap<String, Any>, names: &BTreeSet<String>) -> BTreeMap<String, Any> {
    if names.is_empty() {
        return all;
    }
    all.into_iter().filter(|(name, _)| names.contains(name)).collect()
}

/// First 16 hex digits of SHA-256 over names and encoded resources (maps in the resources hold
/// at most one entry, so their encoding is deterministic).
pub fn version_of(resources: &BTreeMap<String, Any>) -> String {
    let mut hash = Sha256::new();
    for (name, any) in resources {
        hash.update((name.len() as u64).to_le_bytes());
        hash.update(name.as_bytes());
        let bytes = any.encode_to_vec();
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(&bytes);
    }
    hash.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::google::rpc::Status;

    use super::*;

    fn any(type_url: &str, body: &str) -> Any {
        Any { type_url: type_url.into(), value: body.as_bytes().to_vec() }
    }

    /// Clusters by name; the filter config "sluice" routing to `routes`.
    fn snapshot(clusters: &[&str], routes: &[&str], filter_body: &str) -> Snapshot {
        let mut s = Snapshot::default();
        let cds = clusters.iter().map(|c| ((*c).to_owned(), any(CLUSTER, c))).collect();
        s.resources.insert(CLUSTER, cds);
        s.resources.insert(EXTENSION_CONFIG, [("sluice".to_owned(), any(EXTENSION_CONFIG, filter_body))].into());
        s.resources
            .insert(SECRET, [("s1".to_owned(), any(SECRET, "one")), ("s2".to_owned(), any(SECRET, "two"))].into());
        s.clusters_named_by.insert("sluice".into(), routes.iter().map(|c| (*c).to_owned()).collect());
        s
    }

    fn request(type_url: &str, names: &[&str]) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: type_url.into(),
            resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
            node: Some(Node { id: "envoy-1".into(), ..Default::default() }),
            ..Default::default()
        }
    }

    fn ack(resp: &DiscoveryResponse) -> DiscoveryRequest {
        let mut r = request(&resp.type_url, &[]);
        if resp.type_url == EXTENSION_CONFIG {
            r.resource_names = vec!["sluice".into()];
        }
        r.version_info.clone_from(&resp.version_info);
        r.response_nonce.clone_from(&resp.nonce);
        r
    }

    fn nack(resp: &DiscoveryResponse, detail: &str) -> DiscoveryRequest {
        let mut r = ack(resp);
        r.version_info = String::new(); // Envoy repeats the last *accepted* version
        r.error_detail = Some(Status { code: 3, message: detail.into(), ..Default::default() });
        r
    }

    fn names(resp: &DiscoveryResponse) -> Vec<String> {
        resp.resources.iter().map(|a| String::from_utf8_lossy(&a.value).into_owned()).collect()
    }

    /// A stream that has cluster set `clusters` and the filter config ACKed.
    fn converged(snap: &Snapshot) -> AdsStream {
        let mut s = AdsStream::default();
        let cds = s.on_request(&request(CLUSTER, &[]), snap).responses;
        let held = s.on_request(&request(EXTENSION_CONFIG, &["sluice"]), snap).responses;
        assert!(held.is_empty(), "the filter config waits for its clusters");
        let ecds = s.on_request(&ack(&cds[0]), snap).responses;
        assert_eq!(ecds.len(), 1);
        assert!(s.on_request(&ack(&ecds[0]), snap).responses.is_empty());
        s
    }

    #[test]
    fn first_request_gets_the_snapshot_and_an_ack_gets_nothing() {
        let snap = snapshot(&["a", "b"], &["a"], "f1");
        let mut s = AdsStream::default();
        let step = s.on_request(&request(CLUSTER, &[]), &snap);
        assert_eq!(s.node_id, "envoy-1");
        assert_eq!(step.responses.len(), 1);
        let resp = &step.responses[0];
        assert_eq!((resp.type_url.as_str(), names(resp)), (CLUSTER, vec!["a".to_owned(), "b".to_owned()]));
        assert_eq!(resp.version_info, version_of(&snap.resources[CLUSTER]));
        let step = s.on_request(&ack(resp), &snap);
        assert!(step.responses.is_empty());
        assert_eq!(step.events, vec![Event::Ack { type_url: CLUSTER.into(), version: resp.version_info.clone() }]);
        // The same content again (a rebuilt but identical snapshot) is not re-sent.
        assert!(s.on_snapshot(&snapshot(&["a", "b"], &["a"], "f1")).responses.is_empty());
    }

    #[test]
    fn a_nack_is_reported_and_the_rejected_version_is_never_resent() {
        let snap = snapshot(&["a"], &["a"], "f1");
        let mut s = converged(&snap);
        let bad = snapshot(&["a"], &["a"], "f2-bad");
        let sent = s.on_snapshot(&bad).responses;
        assert_eq!(sent.len(), 1);
        let step = s.on_request(&nack(&sent[0], "on_configure failed"), &bad);
        assert!(step.responses.is_empty(), "no resend loop");
        assert_eq!(
            step.events,
            vec![Event::Nack {
                type_url: EXTENSION_CONFIG.into(),
                version: sent[0].version_info.clone(),
                detail: "on_configure failed".into()
            }]
        );
        assert!(s.on_snapshot(&bad).responses.is_empty(), "the same bad snapshot is not sent again");
        let fixed = s.on_snapshot(&snapshot(&["a"], &["a"], "f3"));
        assert_eq!(fixed.responses.len(), 1, "a new version goes out");
        assert_eq!(names(&fixed.responses[0]), vec!["f3"]);
    }

    #[test]
    fn a_stale_nonce_is_ignored() {
        let snap = snapshot(&["a"], &[], "f1");
        let mut s = AdsStream::default();
        let first = s.on_request(&request(CLUSTER, &[]), &snap).responses;
        let second = s.on_snapshot(&snapshot(&["a", "b"], &[], "f1")).responses;
        assert_eq!(second.len(), 1);
        // Envoy answers the first response after the second was sent: superseded.
        let step = s.on_request(&nack(&first[0], "old"), &snap);
        assert_eq!(step.events, vec![Event::Stale { type_url: CLUSTER.into() }]);
        assert!(step.responses.is_empty());
        // The second is still outstanding and can be ACKed.
        let step = s.on_request(&ack(&second[0]), &snap);
        assert!(matches!(step.events[0], Event::Ack { .. }));
    }

    #[test]
    fn a_new_cluster_is_acked_before_the_filter_config_routes_to_it() {
        let mut s = converged(&snapshot(&["a"], &["a"], "f1"));
        let next = snapshot(&["a", "c"], &["a", "c"], "f2");
        let step = s.on_snapshot(&next);
        assert_eq!(step.responses.len(), 1, "only clusters first");
        assert_eq!(
            (step.responses[0].type_url.as_str(), names(&step.responses[0])),
            (CLUSTER, vec!["a".into(), "c".into()])
        );
        let step = s.on_request(&ack(&step.responses[0]), &next);
        assert_eq!(step.responses.len(), 1);
        assert_eq!(
            (step.responses[0].type_url.as_str(), names(&step.responses[0])),
            (EXTENSION_CONFIG, vec!["f2".into()])
        );
    }

    #[test]
    fn a_removed_cluster_goes_only_after_the_filter_config_stops_routing_to_it() {
        let mut s = converged(&snapshot(&["a", "b"], &["a", "b"], "f1"));
        let next = snapshot(&["a"], &["a"], "f2");
        let step = s.on_snapshot(&next);
        assert_eq!(step.responses.len(), 1, "the filter config first; b stays while f1 may route to it");
        assert_eq!(step.responses[0].type_url, EXTENSION_CONFIG);
        let step = s.on_request(&ack(&step.responses[0]), &next);
        assert_eq!(step.responses.len(), 1);
        assert_eq!((step.responses[0].type_url.as_str(), names(&step.responses[0])), (CLUSTER, vec!["a".into()]));
    }

    #[test]
    fn a_nacked_cluster_set_holds_back_the_filter_config_that_needs_it() {
        let mut s = converged(&snapshot(&["a"], &["a"], "f1"));
        let next = snapshot(&["a", "c"], &["a", "c"], "f2");
        let cds = s.on_snapshot(&next).responses;
        let step = s.on_request(&nack(&cds[0], "bad cluster c"), &next);
        assert!(step.responses.is_empty(), "f2 would route to a cluster Envoy refused");
    }

    #[test]
    fn secrets_are_sent_as_requested() {
        let snap = snapshot(&["a"], &["a"], "f1");
        let mut s = AdsStream::default();
        let step = s.on_request(&request(SECRET, &["s2"]), &snap);
        assert_eq!(names(&step.responses[0]), vec!["two"]);
        let mut more = ack(&step.responses[0]);
        more.resource_names = vec!["s1".into(), "s2".into()];
        let step = s.on_request(&more, &snap);
        assert_eq!(names(&step.responses[0]), vec!["one", "two"]);
        // A name that does not exist (yet) gets no answer rather than an empty one.
        let mut t = AdsStream::default();
        assert!(t.on_request(&request(SECRET, &["nope"]), &snap).responses.is_empty());
    }

    #[test]
    fn requests_without_a_type_are_refused() {
        let mut s = AdsStream::default();
        let step = s.on_request(&DiscoveryRequest::default(), &Snapshot::default());
        assert!(matches!(step.events[0], Event::Invalid { .. }));
        assert!(step.responses.is_empty());
    }

    #[test]
    fn nonces_are_unique_per_stream() {
        let snap = snapshot(&["a"], &[], "f1");
        let mut s = AdsStream::default();
        let a = s.on_request(&request(CLUSTER, &[]), &snap).responses;
        let b = s.on_request(&request(SECRET, &[]), &snap).responses;
        assert_ne!(a[0].nonce, b[0].nonce);
    }
}
