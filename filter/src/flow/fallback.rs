//! Fallbacks and retries elsewhere (LiteLLM's `fallbacks`, `default_fallbacks`, and the
//! `num_retries` of a group of several deployments): such a request gets a [`Plan`] before it
//! goes upstream — its steps (the group's own tries, then each fallback group's), what was
//! tried, the client's own body — kept in shared data
//! (`crate::failover`). A step whose group has no deployment to offer (all cooling down, all at
//! capacity) or that the key may not use is skipped here, before anything is sent; a step whose
//! deployment fails comes back through Envoy's internal redirect as a new pass of this flow,
//! which this module recognises, checks and resumes: the same principal, the same route, the
//! client's body, the next step.

use sluice_core::fallbacks::Plan;
use sluice_core::refusals::Refusal;

use super::*;
use crate::failover::{self, FAILOVER_HEADER};

/// Headers a previous pass set for its deployment that the next must not inherit (the next
/// sets its own): provider credentials and Anthropic's version.
const PREVIOUS_PASS_HEADERS: [&str; 7] = [
    "authorization",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "anthropic-version",
    FAILOVER_HEADER,
    // Envoy's, on a redirected request: where it was redirected from.
    "x-envoy-original-url",
];

/// A fresh one-time nonce (128 random bits, hex).
fn nonce() -> Option<String> {
    let (a, b) = (getrandom::u64().ok()?, getrandom::u64().ok()?);
    Some(format!("{a:016x}{b:016x}"))
}

impl<H: Host> RequestFlow<H> {
    /// A request arriving on the failover path: the next pass of a request whose deployment
    /// failed. Its plan must exist under its request id and carry the nonce the redirect
    /// brought; anything else is a client's own try at the path, and unknown.
    pub(super) fn failover_pass_headers(&mut self, request_id: Option<Vec<u8>>) -> Action {
        let now = self.host.now_ms();
        let sent_nonce = self.host.request_header(FAILOVER_HEADER);
        let request_id = request_id.and_then(|r| String::from_utf8(r).ok());
        let plan = request_id.as_deref().and_then(|id| failover::load(&self.host, id, now));
        let Some(mut plan) = plan.filter(|p| sent_nonce.as_deref() == Some(p.nonce.as_bytes())) else {
            return self.reject(&GatewayError::UnknownRoute);
        };
        let Some(endpoint) = Endpoint::from_path(plan.path.as_bytes()) else {
            return self.reject(&GatewayError::UnknownRoute);
        };
        self.endpoint = Some(endpoint);
        let principal = match plan.principal.as_str() {
            "master" => Some(Principal::Master),
            hex => KeyHash::from_hex(hex).and_then(|hash| self.known_key(&hash)).map(Principal::Key),
        };
        let Some(principal) = principal else {
            // The key left this worker's cache between two passes (revoked, or evicted).
            failover::clear(&self.host, &plan.request_id);
            return self.reject(&GatewayError::InvalidKey);
        };
        self.principal = Some(principal);
        for name in PREVIOUS_PASS_HEADERS {
            self.host.set_request_header(name, None);
        }
        self.request_id = request_id;
        // The failed step is behind; the next is the one this pass serves.
        plan.step += 1;
        self.plan = Some(plan);
        self.plan_saved = true;
        self.failover_pass = true;
        self.awaiting_body = true;
        Action::Pause
    }

    /// A key this worker knows by its digest: configured, or in its cache (xDS mode).
    fn known_key(&self, hash: &KeyHash) -> Option<Rc<ResolvedKey>> {
        let config = self.config();
        if let Some(index) = config.key_position(hash) {
            return self.gateway.keys.get(index).cloned();
        }
        match self.gateway.key_cache.borrow().get(hash, self.start_ms) {
            Some(Cached::Found(r)) => Some(Rc::clone(r)),
            _ => self.gateway.key_cache.borrow().stale(hash),
        }
    }

    /// A plan for a request to `group` (index), when it has somewhere to move on to: fallback
    /// groups (for any failure, or for a refusal: `context_window_fallbacks`,
    /// `content_policy_fallbacks`), or retries and another deployment to retry on. Made before
    /// its first step, with the client's body.
    pub(super) fn start_plan(&mut self, group: usize, retries: u32, body: &[u8]) {
        let gateway = Rc::clone(&self.gateway);
        let Some(own) = gateway.config.groups.get(group) else { return };
        if self.plan.is_some() {
            return;
        }
        // Only the groups this key may use: a key never reaches a model through a fallback that
        // it could not ask for (and with none left, the group's own answer is the client's).
        let usable = |chain: &[usize]| -> Vec<usize> {
            chain
                .iter()
                .copied()
                .filter(|g| gateway.config.groups.get(*g).is_some_and(|g| self.may_use(&g.name)))
                .collect()
        };
        let chain = usable(&own.fallbacks);
        let on_context_window = Plan::chain_steps(&usable(&own.context_window_fallbacks), retries);
        let on_content_policy = Plan::chain_steps(&usable(&own.content_policy_fallbacks), retries);
        let retries_elsewhere = retries > 0 && own.deployments.len() > 1;
        if chain.is_empty() && on_context_window.is_empty() && on_content_policy.is_empty() && !retries_elsewhere {
            return;
        }
        let principal = match &self.principal {
            Some(Principal::Master) => "master".to_owned(),
            Some(Principal::Key(r)) => r.key.hash.to_hex(),
            // Unverified (fail open) or none: it could not be resumed; no plan.
            _ => return,
        };
        let (Some(request_id), Some(nonce)) = (self.request_id.clone(), nonce()) else { return };
        self.plan = Some(Plan {
            nonce,
            request_id,
            principal,
            path: String::from_utf8_lossy(&self.path).into_owned(),
            steps: Plan::steps(group, &chain, retries),
            step: 0,
            tried: Vec::new(),
            tried_groups: Vec::new(),
            created_ms: self.start_ms,
            retry_on: gateway.config.config.retries.on,
            on_context_window,
            on_content_policy,
            refused_at: None,
            failed: Vec::new(),
            cooled_down: Vec::new(),
            body: body.to_vec(),
        });
    }

    /// The prompt does not fit the current step's group (the pre-send check): the plan moves on
    /// to its context-window steps (or other groups'); the next one's group, if any.
    pub(super) fn divert_too_long(&mut self) -> Option<usize> {
        let plan = self.plan.as_mut()?;
        if !plan.divert(Refusal::ContextWindow) {
            return None;
        }
        plan.step += 1;
        plan.steps.get(plan.step).copied()
    }

    /// The next step's group, skipping past the current one; None at the end of the plan.
    pub(super) fn next_step(&mut self) -> Option<usize> {
        let plan = self.plan.as_mut()?;
        if !plan.has_next() {
            return None;
        }
        plan.step += 1;
        plan.steps.get(plan.step).copied()
    }

    /// The group the current step serves, on a failover pass.
    pub(super) fn step_group(&self) -> Option<usize> {
        let plan = self.plan.as_ref().filter(|_| self.failover_pass)?;
        plan.steps.get(plan.step).copied()
    }

    /// Whether deployment `index` was tried by an earlier step (a retry prefers another).
    pub(super) fn tried(&self, index: usize) -> bool {
        self.plan.as_ref().is_some_and(|p| p.tried.contains(&index))
    }

    /// The chosen deployment goes into the plan, and the plan to shared data for the next pass
    /// (fresh nonce), or out of it when no step is left. A plan that cannot be saved is
    /// dropped: the request is served without fallbacks, as if it had none.
    pub(super) fn commit_plan(&mut self, deployment: usize, group: usize) {
        let Some(plan) = self.plan.as_mut() else { return };
        plan.tried.push(deployment);
        plan.tried_groups.push(group);
        if !plan.may_continue() {
            if self.plan_saved {
                failover::clear(&self.host, &plan.request_id);
                self.plan_saved = false;
            }
            return;
        }
        let saved = match nonce() {
            Some(nonce) => {
                plan.nonce = nonce;
                failover::save(&self.host, plan, self.start_ms)
            }
            None => false,
        };
        self.plan_saved = saved;
        if !saved {
            self.host
                .log(LogLevel::Warn, "sluice: no room for a fallback plan in shared data: served without fallbacks");
            self.plan = None;
        }
    }

    /// Whether the request has steps after this pass (the router then leaves provider errors to
    /// the plan and retries only failed connections).
    pub(super) fn plan_continues(&self) -> bool {
        self.plan_saved && self.plan.as_ref().is_some_and(Plan::may_continue)
    }

    /// At the end of a pass that Envoy redirected to the next: nothing was billed (the provider
    /// refused), its reservations are released and its deployment's failure counted.
    /// True if this pass was one.
    pub(super) fn end_redirected_pass(&mut self, admitted: &Admitted) -> bool {
        if self.status != 0 || !self.plan_continues() {
            return false;
        }
        let redirected = self.host.response_code_details().is_some_and(|d| d == b"internal_redirect");
        if !redirected {
            return false;
        }
        let gateway = Rc::clone(&self.gateway);
        let now = self.host.now_ms();
        if !counters::settle_all(&self.host, &admitted.tickets, now, 0, 0) {
            self.host.log(LogLevel::Error, "sluice: could not settle counters (shared data unavailable)");
        }
        self.update_load(&gateway, admitted, now);
        // The plan as the attempt filter saved it, with how this pass failed. A refusal (the
        // prompt too long, a content policy) is the request's, not the deployment's failure.
        let step = self.plan.as_ref().map(|plan| plan.step);
        let saved = self.plan.as_ref().and_then(|plan| failover::load(&self.host, &plan.request_id, now));
        let refused = saved.as_ref().is_some_and(|saved| saved.refused_at == step);
        if !refused
            && self.count_failures(&gateway, admitted, now, 1)
            && let Some(mut saved) = saved
        {
            // Its cooldown goes in the request's record, which the pass that answers writes (the
            // same worker, after this: Envoy ends a redirected pass before the next one starts).
            let class = saved.failed.last().copied().unwrap_or(AttemptError::ServerError);
            saved.cooled_down.push((admitted.deployment, class));
            failover::save(&self.host, &saved, now);
        }
        gateway.metrics.failover();
        true
    }

    /// The deployments the request's earlier passes took out of rotation, as the last of them
    /// saved them in the plan (after this pass read its copy).
    pub(super) fn earlier_cooldowns(&self) -> Vec<(usize, AttemptError)> {
        // A first pass has none (and reads nothing: most requests with a plan end there).
        let Some(plan) = self.plan.as_ref().filter(|_| self.failover_pass) else { return Vec::new() };
        let saved = failover::load(&self.host, &plan.request_id, self.host.now_ms());
        saved.map_or_else(|| plan.cooled_down.clone(), |saved| saved.cooled_down)
    }

    /// The request is over (served, refused or cut): its plan's slot is free again.
    pub(super) fn end_plan(&mut self) {
        if let Some(plan) = self.plan.take()
            && std::mem::take(&mut self.plan_saved)
        {
            failover::clear(&self.host, &plan.request_id);
        }
    }

    /// LiteLLM's `x-litellm-attempted-retries` (tries of the answering group before this one,
    /// the router's own included) and, for a group with fallbacks, `x-litellm-attempted-fallbacks`,
    /// on the answer of a request with a plan. False if it has none (the router's count holds).
    pub(super) fn tell_plan_attempts(&self, router_attempts: u32) -> bool {
        let Some(plan) = &self.plan else { return false };
        let mut digits = itoa::Buffer::new();
        let group = plan.tried_groups.last();
        let earlier = plan.tried_groups.iter().filter(|g| Some(*g) == group).count().saturating_sub(1);
        let retried = earlier + router_attempts.saturating_sub(1) as usize;
        self.host.add_response_header("x-litellm-attempted-retries", digits.format(retried).as_bytes());
        if plan.steps.iter().any(|g| Some(g) != plan.steps.first()) {
            let n = digits.format(plan.fallbacks_attempted());
            self.host.add_response_header("x-litellm-attempted-fallbacks", n.as_bytes());
        }
        true
    }
}
