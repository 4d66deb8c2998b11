//! Which deployment of the group serves a request: of those not cooling down, the lowest
//! `order`, then by the routing strategy; and, when the request ends, what those choices learn
//! from it (its failures for cooldown, its deployment's requests in flight and latency; under
//! `usage-based-routing-v2` its deployment's use is a limited scope admitted with the key's).

use sluice_core::config::{Deployment, ModelGroup, RoutingStrategy};
use sluice_core::limits::{self, ScopeLimits, ScopeState};
use sluice_core::routing::{choose_least, choose_lowest_latency};

use super::*;

/// Why no deployment was chosen.
pub(super) enum NoChoice {
    /// None of the group's deployments serves this route (its `mode`, its format).
    NoCandidate,
    /// Every candidate is cooling down; the first is back in this many seconds.
    AllCoolingDown(u64),
    /// Every candidate is at its `rpm`/`tpm` (`usage-based-routing-v2`), until the next minute.
    AllAtCapacity(u64),
    /// The key may not use the group (a fallback step's).
    NotAllowed,
    /// The prompt's estimate exceeds every candidate's `max_input_tokens` (the largest given):
    /// the pre-send context check.
    PromptTooLong(u64),
}

/// A deployment's limits as `usage-based-routing-v2` counts them: its `rpm` and `tpm`, tokens
/// counted even without a `tpm` (the least-used deployment is the one with the fewest).
pub(super) fn usage_limits(d: &Deployment) -> ScopeLimits {
    ScopeLimits::new(d.rpm, Some(d.tpm.unwrap_or(u64::MAX)), None, None)
}

impl<H: Host> RequestFlow<H> {
    /// One of `candidates` (the group's deployments that can serve the request): of those not
    /// cooling down, the lowest `order`, then by the routing strategy (`est_tokens`: the
    /// request's estimate, for a deployment's room under `usage-based-routing-v2`).
    pub(super) fn choose<'c>(
        &self,
        gateway: &Gateway,
        group: &ModelGroup,
        candidates: impl Iterator<Item = (usize, &'c Deployment)> + Clone,
        est_tokens: u64,
    ) -> Result<(usize, &'c Deployment), NoChoice> {
        let order = |d: &Deployment| d.order.unwrap_or(u32::MAX);
        if !group.can_cool_down() {
            // One deployment and no fallback: nothing to weigh, nothing shared to read.
            return candidates.clone().next().ok_or(NoChoice::NoCandidate);
        }
        let config = &gateway.config.config;
        let now = self.start_ms;
        let mut back_at = u64::MAX;
        let mut any = false;
        let mut pool: Vec<(usize, &'c Deployment)> = Vec::with_capacity(group.deployments.len());
        for (i, d) in candidates {
            any = true;
            let until = if config.cooldown.enabled { gateway.cooldowns.cooled_until(&self.host, i, now) } else { 0 };
            if until > now {
                back_at = back_at.min(until);
            } else {
                pool.push((i, d));
            }
        }
        let Some(lowest) = pool.iter().map(|(_, d)| order(d)).min() else {
            return Err(if any {
                NoChoice::AllCoolingDown(back_at.saturating_sub(now).div_ceil(1000).max(1))
            } else {
                NoChoice::NoCandidate
            });
        };
        pool.retain(|(_, d)| order(d) == lowest);
        let picked = match config.routing_strategy {
            RoutingStrategy::SimpleShuffle => choose_weighted(pool.iter().map(|(_, d)| d.weight), self.random),
            RoutingStrategy::LeastBusy => {
                let busy: Vec<f64> =
                    pool.iter().map(|(i, _)| f64::from(gateway.loads.read(&self.host, *i).busy(now))).collect();
                choose_least(busy.into_iter(), self.random)
            }
            RoutingStrategy::LatencyBased(settings) => {
                let latencies: Vec<Option<f64>> = pool
                    .iter()
                    .map(|(i, _)| gateway.loads.read(&self.host, *i).latency(now, settings.ttl_ms))
                    .collect();
                choose_lowest_latency(&latencies, settings.buffer, self.random)
            }
            RoutingStrategy::CostBased => choose_least(
                pool.iter().map(|(_, d)| d.pricing.input_cost_per_token + d.pricing.output_cost_per_token),
                self.random,
            ),
            RoutingStrategy::UsageBasedV2 => {
                // The deployments the request fits under, with their use this minute.
                let room: Vec<(usize, &'c Deployment, u64)> = pool
                    .iter()
                    .filter_map(|&(i, d)| {
                        let name = gateway.usage_counters.get(i)?;
                        let state = ScopeState::decode(self.host.shared_get(name).0.as_deref().unwrap_or_default());
                        Some((i, d, limits::usage_if_room(&state, &usage_limits(d), now, est_tokens)?))
                    })
                    .collect();
                if room.is_empty() {
                    let next_minute = limits::WINDOW_MS - now % limits::WINDOW_MS;
                    return Err(NoChoice::AllAtCapacity(next_minute.div_ceil(1000).max(1)));
                }
                return choose_least(room.iter().map(|r| r.2 as f64), self.random)
                    .and_then(|c| room.get(c))
                    .map(|&(i, d, _)| (i, d))
                    .ok_or(NoChoice::NoCandidate);
            }
        };
        picked.and_then(|c| pool.get(c).copied()).ok_or(NoChoice::NoCandidate)
    }

    /// Counts an admitted request in its deployment's requests in flight (`least-busy`).
    pub(super) fn start_load(&self, gateway: &Gateway, group: &ModelGroup, index: usize) -> bool {
        let counts =
            group.deployments.len() > 1 && gateway.config.config.routing_strategy == RoutingStrategy::LeastBusy;
        if counts {
            let now = self.start_ms;
            gateway.loads.update(&self.host, index, &mut |load| load.started(now));
        }
        counts
    }

    /// At the end of a request: out of its deployment's requests in flight, and its latency
    /// (time to first byte for a stream) into the deployment's average (`latency-based-routing`;
    /// answers only: a failure is cooldown's to count).
    pub(super) fn update_load(&self, gateway: &Gateway, admitted: &Admitted, now_ms: u64) {
        if admitted.in_flight {
            gateway.loads.update(&self.host, admitted.deployment, &mut |load| load.finished(now_ms));
        }
        let RoutingStrategy::LatencyBased(settings) = gateway.config.config.routing_strategy else { return };
        let in_group = gateway.config.groups.get(admitted.group).is_some_and(|g| g.deployments.len() > 1);
        if !in_group || !(200..300).contains(&self.status) {
            return;
        }
        let end = if admitted.streamed && self.first_byte_ms > 0 { self.first_byte_ms } else { now_ms };
        let sample = end.saturating_sub(self.start_ms);
        gateway.loads.update(&self.host, admitted.deployment, &mut |load| {
            load.observe_latency(sample, now_ms, settings.ttl_ms);
        });
    }

    /// The failed attempts of a finished request at its deployment (the router's retries all
    /// went to it): all of them when the answer was a failure, else all but the last.
    pub(super) fn failed_attempts(&self) -> u32 {
        let failed = self.status != 0 && sluice_core::cooldown::is_failure(self.status);
        if failed { self.attempts } else { self.attempts - 1 }
    }

    /// Counts `failures` against the request's deployment, where cooldowns apply; true if they
    /// took it out of rotation.
    pub(super) fn count_failures(&self, gateway: &Gateway, admitted: &Admitted, now_ms: u64, failures: u32) -> bool {
        let config = &gateway.config;
        let in_group = config.groups.get(admitted.group).is_some_and(sluice_core::config::ModelGroup::can_cool_down);
        config.config.cooldown.enabled
            && in_group
            && failures > 0
            && gateway.cooldowns.record_failures(&self.host, config, admitted.deployment, now_ms, failures)
    }
}
