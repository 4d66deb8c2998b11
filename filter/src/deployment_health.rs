//! Deployments' health probes (LiteLLM's health checks), for `GET /health`
//! (`flow/health_check.rs`) and for `background_health_checks`.
//!
//! A probe is the smallest request of the deployment's mode (`sluice_core::deployment_health`),
//! sent through the deployment's own cluster with the path, credential and body a client's
//! request to it would get (translated where its format differs), as an HTTP call from the
//! filter; its answer is judged by status. It is the gateway's own call: admitted on no limit,
//! no usage record (a one-token answer; LiteLLM does not log its probes either), counted in
//! `sluice.health_probes`.
//!
//! Background checks run on a tick: one caller per Envoy (a worker's root context in wasm, the
//! main thread natively) wins a lease in shared data and probes every deployment (but those
//! with `disable_background_health_check`) every `health_check_interval`. At the end of a round
//! the outcomes go to shared data, where `/health` answers from them as LiteLLM does, and each
//! deployment that failed is out of its group's rotation until the next round (the cooldown
//! record, unless `disable_cooldowns`; the only deployment of a group is never taken out).

use std::cell::RefCell;

use serde::{Deserialize, Serialize};
use sluice_core::config::Provider;
use sluice_core::deployment_health::{self as probe, Outcome};

use crate::flow::{ANTHROPIC_VERSION, Gateway, UpstreamCredential};
use crate::host::{CasResult, Host, LogLevel};
use crate::translation::{Direction, Translation};

/// When the next background round is due (u64 LE, ms): whoever moves it runs the round.
const LEASE_KEY: &str = "sluice:health:lease";
/// The last background round's outcomes ([`Results`], JSON).
const RESULTS_KEY: &str = "sluice:health:results";
/// How long a probe may take (LiteLLM's `HEALTH_CHECK_TIMEOUT_SECONDS`), unless the
/// deployment's own `timeout` is shorter.
const PROBE_TIMEOUT_MS: u64 = 60_000;

/// The headers of a JSON POST to `path` that the filter sends deployment `index` itself (a
/// probe, a call per text: `flow/fan_out.rs`), as the router's request would have them: the
/// deployment's authority, its credential in the provider's header, Anthropic's version.
pub(crate) fn call_headers<'a>(gateway: &'a Gateway, index: usize, path: &'a str) -> Option<Vec<(&'a str, &'a [u8])>> {
    let deployment = gateway.config.deployment(index)?;
    let authority = deployment.origin.split_once("://").map_or(deployment.origin.as_str(), |(_, a)| a);
    let mut headers: Vec<(&str, &[u8])> = vec![
        (":method", b"POST"),
        (":path", path.as_bytes()),
        (":authority", authority.as_bytes()),
        ("content-type", b"application/json"),
    ];
    if let Some(UpstreamCredential { header: Some(header), value: Some(value) }) =
        gateway.upstream_credentials.get(index)
    {
        headers.push((header, value.as_bytes()));
    }
    if deployment.provider == Provider::Anthropic {
        headers.push(("anthropic-version", ANTHROPIC_VERSION.as_bytes()));
    }
    Some(headers)
}

/// Sends deployment `index` its probe; the call's token, or None if it could not be sent.
fn send_probe(host: &impl Host, gateway: &Gateway, index: usize) -> Option<u32> {
    let deployment = gateway.config.deployment(index)?;
    let model = deployment.upstream_model.as_str();
    let (endpoint, body) = probe::probe_request(deployment.mode, model);
    let (endpoint, body) = match Direction::between(endpoint, deployment.provider) {
        None => (endpoint, body),
        Some(direction) => {
            let mut translation = Translation {
                direction,
                client_model: model.to_owned(),
                include_usage: false,
                embeddings: None,
                dropped_params: 0,
                json_mode: false,
            };
            let body = translation.request(&body, deployment, model, 1).ok()?;
            (direction.upstream_endpoint(), body)
        }
    };
    let path = deployment.upstream_path(endpoint, model, false)?;
    let headers = call_headers(gateway, index, &path)?;
    let timeout_ms = deployment.timeout_ms.map_or(PROBE_TIMEOUT_MS, |t| t.min(PROBE_TIMEOUT_MS));
    gateway.metrics.health_probe();
    host.dispatch_http(&deployment.cluster, &headers, &body, timeout_ms)
}

/// Probes out at once and their outcomes, per deployment (index into the config's).
pub struct Probes {
    probes: Vec<(usize, Option<u32>, Option<Outcome>)>,
}

impl Probes {
    /// Sends each deployment of `indices` its probe (one Envoy could not send is unhealthy).
    pub fn send(host: &impl Host, gateway: &Gateway, indices: impl IntoIterator<Item = usize>) -> Probes {
        let probes = indices
            .into_iter()
            .map(|index| {
                let token = send_probe(host, gateway, index);
                let outcome = token.is_none().then(|| Outcome::Unhealthy("the probe could not be sent".into()));
                (index, token, outcome)
            })
            .collect();
        Probes { probes }
    }

    pub fn awaits(&self, token: u32) -> bool {
        self.probes.iter().any(|(_, t, outcome)| *t == Some(token) && outcome.is_none())
    }

    /// Records an answer; false if `token` is not one of these probes (or was answered).
    pub fn answer(&mut self, token: u32, status: Option<u16>, body: &[u8]) -> bool {
        match self.probes.iter_mut().find(|(_, t, outcome)| *t == Some(token) && outcome.is_none()) {
            Some((_, _, outcome)) => {
                *outcome = Some(Outcome::of(status, body));
                true
            }
            None => false,
        }
    }

    pub fn done(&self) -> bool {
        self.probes.iter().all(|(_, _, outcome)| outcome.is_some())
    }

    /// The outcomes so far, in the order the probes were sent.
    pub fn outcomes(&self) -> impl Iterator<Item = (usize, &Outcome)> {
        self.probes.iter().filter_map(|(index, _, outcome)| Some((*index, outcome.as_ref()?)))
    }
}

/// The last background round, as `/health` answers from it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Results {
    /// When the round ended.
    pub checked_ms: u64,
    /// Per deployment id, its error (None: healthy).
    pub outcomes: Vec<(String, Option<String>)>,
}

impl Results {
    pub fn read(host: &impl Host) -> Option<Results> {
        serde_json::from_slice(&host.shared_get(RESULTS_KEY).0?).ok()
    }

    /// Deployment `id`'s outcome, if the round checked it.
    pub fn outcome(&self, id: &str) -> Option<Outcome> {
        self.outcomes.iter().find(|(i, _)| i == id).map(|(_, error)| match error {
            None => Outcome::Healthy,
            Some(e) => Outcome::Unhealthy(e.clone()),
        })
    }
}

/// One caller's share of the background checks: the round it is running, if any.
#[derive(Default)]
pub struct BackgroundHealth {
    round: RefCell<Option<Probes>>,
}

impl BackgroundHealth {
    /// On a tick: starts a round when one is due and this caller moved the lease.
    pub fn tick(&self, host: &impl Host, gateway: &Gateway) {
        let Some(interval_ms) = gateway.config.config.health_check_interval_ms else { return };
        let now = host.now_ms();
        let (lease, cas) = host.shared_get(LEASE_KEY);
        let Some(lease) = lease else {
            // The first tick anywhere: create the entry, so the next one can take it by
            // compare-and-swap (creating cannot be conditional).
            host.shared_set(LEASE_KEY, &0u64.to_le_bytes(), None);
            return;
        };
        let due = lease.get(..8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes);
        if now < due || cas.is_none() {
            return;
        }
        if host.shared_set(LEASE_KEY, &now.saturating_add(interval_ms).to_le_bytes(), cas) != CasResult::Written {
            return; // another worker took this round
        }
        let indices = gateway
            .config
            .config
            .deployments
            .iter()
            .enumerate()
            .filter(|(_, d)| !d.no_background_health_check && !d.upstream_model.contains('*'))
            .map(|(i, _)| i);
        let probes = Probes::send(host, gateway, indices);
        *self.round.borrow_mut() = Some(probes);
        self.finish_if_done(host, gateway, now);
    }

    pub fn awaits(&self, token: u32) -> bool {
        self.round.borrow().as_ref().is_some_and(|r| r.awaits(token))
    }

    /// A probe's answer; false if it is not one of this round's.
    pub fn on_answer(&self, host: &impl Host, gateway: &Gateway, token: u32, status: Option<u16>, body: &[u8]) -> bool {
        let answered = self.round.borrow_mut().as_mut().is_some_and(|r| r.answer(token, status, body));
        if answered {
            self.finish_if_done(host, gateway, host.now_ms());
        }
        answered
    }

    /// A round whose probes all answered: its outcomes to shared data, its failed deployments
    /// out of rotation until the next round.
    fn finish_if_done(&self, host: &impl Host, gateway: &Gateway, now: u64) {
        let Some(round) = self.round.try_borrow_mut().ok().and_then(|mut r| r.take_if(|r| r.done())) else { return };
        let config = &gateway.config;
        let interval_ms = config.config.health_check_interval_ms.unwrap_or_default();
        let mut failed = Vec::new();
        let outcomes = round
            .outcomes()
            .filter_map(|(index, outcome)| {
                let deployment = config.deployment(index)?;
                let error = match outcome {
                    Outcome::Healthy => None,
                    Outcome::Unhealthy(e) => {
                        failed.push(deployment.id.as_str());
                        if config.config.cooldown.enabled {
                            gateway.cooldowns.hold_out(host, index, now.saturating_add(interval_ms), now);
                        }
                        Some(e.clone())
                    }
                };
                Some((deployment.id.clone(), error))
            })
            .collect();
        let results = Results { checked_ms: now, outcomes };
        if let Ok(bytes) = serde_json::to_vec(&results) {
            host.shared_set(RESULTS_KEY, &bytes, None);
        }
        if !failed.is_empty() {
            host.log(
                LogLevel::Warn,
                &format!(
                    "sluice: background health check: {} of {} deployments failed ({}); out of rotation until the next check",
                    failed.len(),
                    results.outcomes.len(),
                    failed.join(", ")
                ),
            );
        }
    }
}
