//! Fallbacks' plans in shared data, and the upstream part of a failover.
//!
//! A request to a group with fallbacks carries a [`Plan`] (`sluice_core::fallbacks`): saved
//! here under its request id before it goes upstream, in one of [`SLOTS`] shared-data entries
//! (proxy-wasm cannot delete an entry, so they are reused: a finished or stale plan's slot is
//! free). When a deployment fails such a request, Sluice's module in the deployment cluster's
//! upstream chain (the "attempt" filter) turns the failed answer into a 307 to
//! [`FAILOVER_PATH`] carrying the plan's one-time nonce in [`FAILOVER_HEADER`]; Envoy's router
//! follows it internally (the failover route, which a request with a next step takes, has an
//! `internal_redirect_policy` that copies that header into the redirected request), and the request passes through the filter again, which reads the plan
//! and serves its next step (`flow/fallback.rs`).

use sluice_core::attempts::AttemptError;
pub use sluice_core::fallbacks::{FAILOVER_HEADER, FAILOVER_PATH};
use sluice_core::fallbacks::{PLAN_TTL_MS, Plan};
use sluice_core::refusals::Refusal;

use crate::host::{CasResult, Host};

/// Where the redirect's `location` points: [`FAILOVER_PATH`] on any host (the route's domains
/// are `*`).
pub const FAILOVER_LOCATION: &str = "http://sluice.internal/__sluice/failover";
/// Shared-data slots for plans; a plan takes the first free of [`PROBES`] from its request id's.
const SLOTS: u64 = 4096;
const PROBES: u64 = 8;

fn slot_key(request_id: &str, probe: u64) -> String {
    // FNV-1a: request ids are Envoy's UUIDs, spread enough for a slot number.
    let hash =
        request_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    format!("sluice:fo:{}", hash.wrapping_add(probe) % SLOTS)
}

/// Saves `plan` under its request id (replacing the request's earlier one); false if every
/// slot it may take holds another live plan.
pub fn save(host: &impl Host, plan: &Plan, now_ms: u64) -> bool {
    let encoded = plan.encode();
    for probe in 0..PROBES {
        let key = slot_key(&plan.request_id, probe);
        let (bytes, cas) = host.shared_get(&key);
        let free = match bytes.as_deref().and_then(Plan::decode) {
            None => true,
            Some(held) => held.request_id == plan.request_id || now_ms > held.created_ms.saturating_add(PLAN_TTL_MS),
        };
        if free && host.shared_set(&key, &encoded, cas) == CasResult::Written {
            return true;
        }
    }
    false
}

/// The live plan of `request_id`, if it has one.
pub fn load(host: &impl Host, request_id: &str, now_ms: u64) -> Option<Plan> {
    (0..PROBES).find_map(|probe| {
        let plan = Plan::decode(&host.shared_get(&slot_key(request_id, probe)).0?)?;
        (plan.request_id == request_id && now_ms <= plan.created_ms.saturating_add(PLAN_TTL_MS)).then_some(plan)
    })
}

/// Frees `request_id`'s slot: its request is over, or has no step left.
pub fn clear(host: &impl Host, request_id: &str) {
    for probe in 0..PROBES {
        let key = slot_key(request_id, probe);
        let (bytes, cas) = host.shared_get(&key);
        if bytes.as_deref().and_then(Plan::decode).is_some_and(|p| p.request_id == request_id) {
            host.shared_set(&key, b"", cas);
            return;
        }
    }
}

/// What the attempt filter does with an upstream answer, decided at its headers.
#[derive(Debug)]
pub enum AttemptVerdict {
    /// Pass it to the client's side untouched (a success, or a failure that stays).
    Pass,
    /// Turn it into the redirect to the next pass, with this nonce.
    Redirect(String),
    /// A 400 that may be a refusal with somewhere to go (`context_window_fallbacks`,
    /// `content_policy_fallbacks`, or another group's step): hold the headers, read the
    /// body, then [`refusal_redirect`].
    ReadBody(Box<Plan>),
}

/// The attempt filter's decision on an upstream answer's headers: a status that moves a
/// request whose plan has a step left on becomes a redirect to the next pass; a 400 that
/// could be a refusal is read first. Only a failed answer reads shared data: a success costs a
/// comparison.
pub fn attempt_verdict(host: &impl Host, status: u16, request_id: Option<&[u8]>) -> AttemptVerdict {
    if !may_move_on(status) {
        return AttemptVerdict::Pass;
    }
    let Some(plan) =
        request_id.and_then(|id| std::str::from_utf8(id).ok()).and_then(|id| load(host, id, host.now_ms()))
    else {
        return AttemptVerdict::Pass;
    };
    // A refusal is told apart before a 400 is retried (LiteLLM does not retry one that has a
    // fallback of its own).
    if status == 400 && plan.may_divert() {
        return AttemptVerdict::ReadBody(Box::new(plan));
    }
    if !plan.moves_on(status) {
        return AttemptVerdict::Pass;
    }
    moved_on(host, plan, status, None).map_or(AttemptVerdict::Pass, AttemptVerdict::Redirect)
}

/// The current step failed with `status` (a `refusal`, for a 400 that states one): its class
/// goes into the plan, saved for the next pass; the nonce of the redirect (None if the plan
/// could not be saved: the failure is then the client's answer, never a pass without its plan).
fn moved_on(host: &impl Host, mut plan: Plan, status: u16, refusal: Option<Refusal>) -> Option<String> {
    plan.failed.extend(AttemptError::of(status, refusal));
    save(host, &plan, host.now_ms()).then_some(plan.nonce)
}

/// The end of a 400's body held by [`AttemptVerdict::ReadBody`]: a refusal the body states
/// moves the plan on to its steps (saved for the next pass) and the answer becomes the
/// redirect, with the nonce returned; any other 400 is retried when `retry_policy` says so,
/// else passed to the client.
pub fn refusal_redirect(host: &impl Host, mut plan: Box<Plan>, body: &[u8]) -> Option<String> {
    let refusal = sluice_core::refusals::classify(400, body);
    let moves_on = match refusal {
        Some(refusal) => plan.divert(refusal),
        None => plan.moves_on(400),
    };
    moves_on.then(|| moved_on(host, *plan, 400, refusal)).flatten()
}

/// Whether an answer with `status` could move a request on (an error): the attempt filter
/// looks for a plan only then.
pub fn may_move_on(status: u16) -> bool {
    status >= 400
}

/// The attempt filter's whole decision on an answer with `status` and `body`, as the bindings
/// make it in two parts (the headers, then a held 400's body).
#[cfg(test)]
pub fn redirect_nonce(host: &impl Host, status: u16, request_id: Option<&[u8]>, body: &[u8]) -> Option<String> {
    match attempt_verdict(host, status, request_id) {
        AttemptVerdict::Pass => None,
        AttemptVerdict::Redirect(nonce) => Some(nonce),
        AttemptVerdict::ReadBody(plan) => refusal_redirect(host, plan, body),
    }
}

/// The response headers that turn an attempt's answer into the redirect (`:status`, where to,
/// the nonce), for either binding to set.
pub fn redirect_headers(nonce: &str) -> [(&'static str, &str); 3] {
    [(":status", "307"), ("location", FAILOVER_LOCATION), (FAILOVER_HEADER, nonce)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock_host::{MockEnvoy, MockHost};

    fn plan(request_id: &str, steps: Vec<usize>, created_ms: u64) -> Plan {
        Plan {
            nonce: format!("nonce-{request_id}"),
            request_id: request_id.into(),
            principal: "master".into(),
            path: "/v1/chat/completions".into(),
            steps,
            step: 0,
            tried: vec![0],
            tried_groups: vec![0],
            retry_on: Default::default(),
            created_ms,
            on_context_window: Vec::new(),
            on_content_policy: Vec::new(),
            refused_at: None,
            failed: Vec::new(),
            cooled_down: Vec::new(),
            body: b"{}".to_vec(),
        }
    }

    #[test]
    fn plans_are_found_by_request_id_and_their_slots_reused() {
        let host = MockHost::new(MockEnvoy::new(1_000));
        assert!(save(&host, &plan("r1", vec![0, 1], 1_000), 1_000));
        assert_eq!(load(&host, "r1", 1_000).map(|p| p.steps), Some(vec![0, 1]));
        assert_eq!(load(&host, "r2", 1_000), None);
        // A failure of r1 redirects; a success or a client's error does not.
        assert_eq!(redirect_nonce(&host, 503, Some(b"r1"), b""), Some("nonce-r1".into()));
        assert_eq!(redirect_nonce(&host, 200, Some(b"r1"), b""), None);
        assert_eq!(redirect_nonce(&host, 400, Some(b"r1"), b""), None);
        assert_eq!(redirect_nonce(&host, 503, Some(b"r2"), b""), None);
        // The last step: nothing to redirect to.
        let mut last = plan("r1", vec![0, 1], 1_000);
        last.step = 1;
        assert!(save(&host, &last, 1_000));
        assert_eq!(redirect_nonce(&host, 503, Some(b"r1"), b""), None);
        clear(&host, "r1");
        assert_eq!(load(&host, "r1", 1_000), None);
        // Every slot one request id may take, held by others: a stale one is reused.
        let crowd: Vec<String> = (0..100_000)
            .map(|i| format!("x{i}"))
            .filter(|id| slot_key(id, 0) == slot_key("r3", 0))
            .take(PROBES as usize)
            .collect();
        for (i, id) in crowd.iter().enumerate() {
            let created = if i == 3 { 0 } else { 1_000 };
            let mut p = plan(id, vec![0, 1], created);
            p.request_id.clone_from(id);
            // Each taken in order of its own probes; the crowd fills r3's first slots.
            assert!(save(&host, &p, 1_000));
        }
        assert!(save(&host, &plan("r3", vec![0, 1], 1_000), PLAN_TTL_MS + 500));
        assert!(load(&host, "r3", PLAN_TTL_MS + 500).is_some());
    }
}
