//! LiteLLM's `fallbacks` and `default_fallbacks`, and the plan a request carries through them.
//!
//! A request to a group with a chain may be served by the group, then by each group of its
//! chain in order, each tried `1 + num_retries` times (a retry prefers a deployment not tried
//! yet). Each try is one pass of the request through the filter: a failed one is redirected
//! inside Envoy to the next (ARCHITECTURE.md, "Fallbacks"), and the [`Plan`] is what the next
//! pass needs to know, kept in shared data under the request's id. Pure: encoding, choosing
//! the next step, validating the config.

use serde::{Deserialize, Serialize};

use crate::attempts::AttemptError;
use crate::refusals::Refusal;
use crate::retries::RetryOn;

/// The name of Sluice's module in a deployment cluster's upstream chain, where it turns a
/// failed attempt into the redirect to the next pass (the wasm build's `root_id`, the native
/// build's `filter_name`; the bootstraps and both bindings use this one constant).
pub const ATTEMPT_FILTER_NAME: &str = "sluice_attempt";
/// The plan's nonce, on the attempt filter's 307 and, copied by the route's redirect policy, on
/// the next pass's request.
pub const FAILOVER_HEADER: &str = "x-sluice-failover";
/// Set by the filter on a request whose plan has a step after this pass: only then does the
/// request take the route that follows the attempt filter's 307. Following redirects makes
/// Envoy's router keep a copy of every request body (to send it again), a cost a request that
/// cannot move should not pay; the route removes the header upstream, and the filter removes a
/// client's own.
pub const FAILOVER_ROUTE_HEADER: &str = "x-sluice-failover-route";
/// The path a failover pass arrives on (the route matches every path; the filter knows this one).
pub const FAILOVER_PATH: &str = "/__sluice/failover";

/// One `fallbacks` entry: requests for `group` that fail move on to `to`, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackRule {
    pub group: String,
    pub to: Vec<String>,
}

/// Each group's chain of fallback groups (indices into `names`): its own rule, else
/// `default_fallbacks`, never itself. Refused: a name that is not a group, two rules for one
/// group, a group falling back to itself, a cycle of rules.
pub fn chains(names: &[&str], rules: &[FallbackRule], default: &[String]) -> Result<Vec<Vec<usize>>, Vec<String>> {
    let mut errors = Vec::new();
    let index = |name: &str, at: &str, errors: &mut Vec<String>| {
        let found = names.iter().position(|n| *n == name);
        if found.is_none() {
            errors.push(format!("{at}: {name:?} is not a model group in model_list"));
        }
        found
    };
    let defaults: Vec<usize> = default.iter().filter_map(|g| index(g, "default_fallbacks", &mut errors)).collect();
    let mut explicit: Vec<Option<Vec<usize>>> = vec![None; names.len()];
    for rule in rules {
        let at = format!("fallbacks.{}", rule.group);
        let Some(from) = index(&rule.group, "fallbacks", &mut errors) else { continue };
        let to: Vec<usize> = rule.to.iter().filter_map(|g| index(g, &at, &mut errors)).collect();
        if to.contains(&from) {
            errors.push(format!("{at}: a group cannot fall back to itself"));
        }
        match explicit.get_mut(from) {
            Some(slot @ None) => *slot = Some(to),
            _ => errors.push(format!("{at}: the group has two fallbacks entries")),
        }
    }
    // A cycle of rules (a → b, b → a) would send a failing request round and round.
    for start in 0..names.len() {
        let mut stack = vec![(start, vec![start])];
        while let Some((at, path)) = stack.pop() {
            for next in explicit.get(at).and_then(Option::as_ref).into_iter().flatten() {
                if *next == start {
                    let cycle: Vec<&str> = path.iter().chain([next]).filter_map(|i| names.get(*i).copied()).collect();
                    errors.push(format!("fallbacks: a cycle: {}", cycle.join(" → ")));
                } else if !path.contains(next) {
                    let mut longer = path.clone();
                    longer.push(*next);
                    stack.push((*next, longer));
                }
            }
        }
        if errors.iter().any(|e| e.starts_with("fallbacks: a cycle")) {
            break; // one cycle named is enough
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(explicit
        .into_iter()
        .enumerate()
        .map(|(group, rule)| rule.unwrap_or_else(|| defaults.iter().copied().filter(|g| *g != group).collect()))
        .collect())
}

/// Whether a provider's answer moves a request with a plan on to its next step: LiteLLM falls
/// back on rate limits, timeouts, server errors and a deployment's auth or not-found errors;
/// a bad request is the client's and goes back to it.
pub fn fails_over(status: u16) -> bool {
    crate::cooldown::is_failure(status)
}

/// Whether a request to a group may move between passes (and needs the attempt filter on its
/// deployments' clusters): the config has fallbacks of any kind, or a group of several
/// deployments, whose retries go to another deployment.
pub fn config_fails_over(config: &crate::config::GatewayConfig) -> bool {
    let mut groups: Vec<&str> = config.deployments.iter().map(|d| d.model_name.as_str()).collect();
    let all = groups.len();
    groups.sort_unstable();
    groups.dedup();
    !config.fallbacks.is_empty()
        || !config.default_fallbacks.is_empty()
        || !config.context_window_fallbacks.is_empty()
        || !config.content_policy_fallbacks.is_empty()
        || groups.len() < all
}

/// What a request's next pass needs: who asked, what, the client's own body, the steps left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// One-time: the redirect carries it, the next pass checks it (a client cannot forge a
    /// pass with a request id it saw).
    pub nonce: String,
    pub request_id: String,
    /// The key's digest (hex), or `master`.
    pub principal: String,
    /// The client's `:path`.
    pub path: String,
    /// The groups of the steps (index into the config's groups), the first the request's own.
    pub steps: Vec<usize>,
    /// The step the current pass is serving.
    pub step: usize,
    /// Deployments tried so far (a retry prefers another), and their groups.
    pub tried: Vec<usize>,
    pub tried_groups: Vec<usize>,
    /// When the plan was made (a stale plan is never followed).
    pub created_ms: u64,
    /// Which answers a try of the same group retries (`retry_policy`); a move to a fallback
    /// group follows [`fails_over`].
    #[serde(default)]
    pub retry_on: RetryOn,
    /// The steps a provider's context-window refusal moves the request on to
    /// (`context_window_fallbacks` of its group), and a content-policy refusal
    /// (`content_policy_fallbacks`); empty: the group has none, and such a refusal follows the
    /// fallbacks' steps (LiteLLM's order). Used once: a step of one of them has none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_context_window: Vec<usize>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_content_policy: Vec<usize>,
    /// The step a provider refused (a 400 that moved the request on): not its deployment's
    /// failure, so it does not count towards cooldown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_at: Option<usize>,
    /// How each step that failed failed, in the order of `tried` (the attempt filter adds one
    /// as it moves the request on): the usage record's `failed_attempts`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<AttemptError>,
    /// The deployments (by index) this request's failures took out of rotation, each with the
    /// class of the failure that did: the usage record's `cooled_down` (a failed pass adds its
    /// own after it counted the failure; the pass that answers writes the record).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cooled_down: Vec<(usize, AttemptError)>,
    /// The client's body, as it sent it (not serialised: appended after the JSON).
    #[serde(skip)]
    pub body: Vec<u8>,
}

/// How long a plan is followed: longer than any request's own timeout allows.
pub const PLAN_TTL_MS: u64 = 15 * 60 * 1000;

impl Plan {
    /// The steps of a request to `group`: its own `1 + retries` tries, then each fallback's.
    pub fn steps(group: usize, chain: &[usize], retries: u32) -> Vec<usize> {
        let mut steps = Plan::chain_steps(&[group], retries);
        steps.extend(Plan::chain_steps(chain, retries));
        steps
    }

    /// Whether a step follows the current one.
    pub fn has_next(&self) -> bool {
        self.step + 1 < self.steps.len()
    }

    /// Whether the request may still move on after the current step: a step follows, or a
    /// refusal's steps could (the plan must then be kept for the next pass).
    pub fn may_continue(&self) -> bool {
        self.has_next() || !self.on_context_window.is_empty() || !self.on_content_policy.is_empty()
    }

    /// The steps of a chain of groups: each group's `1 + retries` tries, in order.
    pub fn chain_steps(chain: &[usize], retries: u32) -> Vec<usize> {
        let tries = 1 + retries as usize;
        chain.iter().flat_map(|g| std::iter::repeat_n(*g, tries)).collect()
    }

    /// Whether an answer with `status` to the current step moves the request on to the next:
    /// a retry of the same group on what `retry_policy` retries, a fallback on a failure.
    pub fn moves_on(&self, status: u16) -> bool {
        match (self.steps.get(self.step), self.steps.get(self.step + 1)) {
            (Some(now), Some(next)) if now == next => self.retry_on.retries(status),
            (Some(_), Some(_)) => fails_over(status),
            _ => false,
        }
    }

    /// Whether a provider's 400 could move the request on once the body says why
    /// ([`crate::refusals`]): there is a step of another group to take, or a refusal's own.
    pub fn may_divert(&self) -> bool {
        let now = self.steps.get(self.step);
        !self.on_context_window.is_empty()
            || !self.on_content_policy.is_empty()
            || self.steps.iter().skip(self.step + 1).any(|g| Some(g) != now)
    }

    /// The current step was refused for `refusal`: what follows it becomes that refusal's steps
    /// or, where its group has none, the remaining steps of other groups (the same model would
    /// refuse the same prompt again). True if a step follows.
    pub fn divert(&mut self, refusal: Refusal) -> bool {
        let chain = match refusal {
            Refusal::ContextWindow => std::mem::take(&mut self.on_context_window),
            Refusal::ContentPolicy => std::mem::take(&mut self.on_content_policy),
        };
        let now = self.steps.get(self.step).copied();
        let rest: Vec<usize> = if chain.is_empty() {
            self.steps.iter().skip(self.step + 1).copied().filter(|g| Some(*g) != now).collect()
        } else {
            chain
        };
        self.steps.truncate(self.step + 1);
        self.steps.extend(rest);
        self.refused_at = Some(self.step);
        self.has_next()
    }

    /// `[len u32 LE][JSON][body]`.
    pub fn encode(&self) -> Vec<u8> {
        let json = serde_json::to_vec(self).unwrap_or_default();
        let len = u32::try_from(json.len()).unwrap_or(u32::MAX);
        let mut out = Vec::with_capacity(4 + json.len() + self.body.len());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&json);
        out.extend_from_slice(&self.body);
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Plan> {
        let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
        let json = bytes.get(4..4 + len)?;
        let mut plan: Plan = serde_json::from_slice(json).ok()?;
        plan.body = bytes.get(4 + len..)?.to_vec();
        Some(plan)
    }

    /// Fallback groups sent to so far (LiteLLM's `x-litellm-attempted-fallbacks`): the distinct
    /// groups tried but the request's own (one skipped before sending is not counted).
    pub fn fallbacks_attempted(&self) -> usize {
        let Some(own) = self.steps.first() else { return 0 };
        let mut seen: Vec<usize> = Vec::new();
        for g in self.tried_groups.iter().filter(|g| *g != own) {
            if !seen.contains(g) {
                seen.push(*g);
            }
        }
        seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(group: &str, to: &[&str]) -> FallbackRule {
        FallbackRule { group: group.into(), to: to.iter().map(|s| (*s).to_owned()).collect() }
    }

    #[test]
    fn chains_come_from_rules_else_the_default_never_the_group_itself() {
        let names = ["gpt-4o", "claude", "mini"];
        let chains = chains(&names, &[rule("gpt-4o", &["claude", "mini"])], &["mini".into()]).unwrap();
        assert_eq!(chains, [vec![1, 2], vec![2], Vec::<usize>::new()]);
        assert!(super::chains(&names, &[], &[]).unwrap().iter().all(Vec::is_empty));
    }

    #[test]
    fn unknown_groups_self_fallbacks_duplicates_and_cycles_are_refused() {
        let names = ["a", "b", "c"];
        let says = |rules: &[FallbackRule], default: &[String], what: &str| {
            let errors = chains(&names, rules, default).unwrap_err();
            assert!(errors.iter().any(|e| e.contains(what)), "{what}: {errors:?}");
        };
        says(&[rule("a", &["zzz"])], &[], "fallbacks.a: \"zzz\" is not a model group");
        says(&[rule("zzz", &["a"])], &[], "fallbacks: \"zzz\" is not a model group");
        says(&[], &["nope".into()], "default_fallbacks: \"nope\"");
        says(&[rule("a", &["a"])], &[], "cannot fall back to itself");
        says(&[rule("a", &["b"]), rule("a", &["c"])], &[], "two fallbacks entries");
        says(&[rule("a", &["b"]), rule("b", &["c"]), rule("c", &["a"])], &[], "a cycle: a → b → c → a");
        // A default that names every group is no cycle: it is followed one level only.
        assert!(chains(&names, &[], &["a".into(), "b".into()]).is_ok());
    }

    #[test]
    fn steps_give_each_group_its_tries_and_plans_round_trip() {
        assert_eq!(Plan::steps(0, &[2, 1], 1), [0, 0, 2, 2, 1, 1]);
        assert_eq!(Plan::steps(3, &[], 0), [3]);
        let plan = Plan {
            nonce: "n".into(),
            request_id: "r".into(),
            principal: "master".into(),
            path: "/v1/chat/completions".into(),
            steps: vec![0, 0, 2],
            step: 2,
            tried: vec![4, 5],
            tried_groups: vec![0, 2],
            created_ms: 7,
            retry_on: RetryOn::default(),
            on_context_window: vec![3],
            on_content_policy: Vec::new(),
            refused_at: None,
            failed: Vec::new(),
            cooled_down: Vec::new(),
            body: b"{\"model\":\"gpt-4o\"}\xff".to_vec(),
        };
        assert_eq!(Plan::decode(&plan.encode()), Some(plan.clone()));
        assert_eq!(plan.fallbacks_attempted(), 1);
        assert!(!plan.has_next());
        assert_eq!(Plan::decode(b"\x09\x00\x00\x00{}"), None);
        assert_eq!(Plan::decode(b""), None);
        assert!(fails_over(429) && fails_over(503) && !fails_over(400) && !fails_over(200));
        // A retry of the same group follows retry_policy; a move to a fallback, any failure.
        let mut p = Plan { steps: vec![0, 0, 2], step: 0, ..plan };
        p.retry_on.rate_limit = false;
        assert!(!p.moves_on(429) && p.moves_on(503) && !p.moves_on(404));
        p.step = 1;
        assert!(p.moves_on(429) && p.moves_on(404) && !p.moves_on(400));
        p.step = 2;
        assert!(!p.moves_on(503), "the last step");
    }

    #[test]
    fn a_refusal_moves_on_to_its_own_steps_else_to_other_groups() {
        let plan = Plan {
            nonce: "n".into(),
            request_id: "r".into(),
            principal: "master".into(),
            path: "/v1/chat/completions".into(),
            // Group 0 twice, then its fallback group 2 twice.
            steps: vec![0, 0, 2, 2],
            step: 0,
            tried: vec![],
            tried_groups: vec![],
            created_ms: 0,
            retry_on: RetryOn::default(),
            on_context_window: vec![5, 5],
            on_content_policy: Vec::new(),
            refused_at: None,
            failed: Vec::new(),
            cooled_down: Vec::new(),
            body: Vec::new(),
        };
        assert!(plan.may_divert());
        // A context-window refusal takes context_window_fallbacks' steps, once.
        let mut p = plan.clone();
        assert!(p.divert(Refusal::ContextWindow));
        assert_eq!(p.steps, [0, 5, 5]);
        assert!(p.on_context_window.is_empty());
        assert_eq!(p.refused_at, Some(0));
        p.step = 1;
        assert!(!p.may_divert(), "another try of 5 is not another group");
        assert!(!p.divert(Refusal::ContextWindow), "a second refusal has nowhere else to go");
        // Content policy, with no chain of its own: the fallbacks' groups, not the same group again.
        let mut p = plan.clone();
        assert!(p.divert(Refusal::ContentPolicy));
        assert_eq!(p.steps, [0, 2, 2]);
        // On the last group, with no chain: nothing follows.
        let mut p = Plan { step: 2, on_context_window: Vec::new(), ..plan.clone() };
        assert!(!p.may_divert());
        assert!(!p.divert(Refusal::ContextWindow));
        assert_eq!(p.steps, [0, 0, 2]);
        // Round trip with the chains.
        assert_eq!(Plan::decode(&plan.encode()), Some(plan));
    }
}
