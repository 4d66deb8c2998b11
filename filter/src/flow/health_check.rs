//! LiteLLM's `GET /health` (master key only): every deployment, or those `?model=` /
//! `?model_id=` name. With `background_health_checks`, the last round's outcomes answer at once
//! (as in LiteLLM); otherwise, or before the first round ends, every selected deployment is
//! probed now (`crate::deployment_health`) and the request waits for all the answers.

use sluice_core::deployment_health::{self as report, Outcome};

use super::*;
use crate::deployment_health::{Probes, Results};

/// Whether `path` is `/health` itself (its probes, `/health/liveliness` and the rest, are not).
pub(super) fn is_health_path(path: &[u8]) -> bool {
    let path = path.split(|b| *b == b'?').next().unwrap_or(path);
    path == b"/health" || path == b"/health/"
}

impl<H: Host> RequestFlow<H> {
    /// `/health` with a credential that is known by now: the master key's is answered.
    pub(super) fn start_health_check(&mut self) {
        let master = match &self.principal {
            Some(Principal::Master) => true,
            Some(Principal::Key(r)) => r.key.master,
            _ => false,
        };
        if !master {
            // LiteLLM answers any key with a trimmed report; Sluice keeps the deployments' list
            // and the provider calls it costs to the master key.
            self.reject(&GatewayError::RouteNotAllowed { route: "/health" });
            return;
        }
        let gateway = Rc::clone(&self.gateway);
        let deployments = &gateway.config.config.deployments;
        let query = self.path.splitn(2, |b| *b == b'?').nth(1).unwrap_or_default();
        let selected = report::selected(deployments, &String::from_utf8_lossy(query));
        let background = gateway.config.config.health_check_interval_ms.and_then(|_| Results::read(&self.host));
        if let Some(results) = background {
            let outcomes: Vec<(usize, Outcome)> =
                selected.iter().filter_map(|i| Some((*i, results.outcome(&deployments.get(*i)?.id)?))).collect();
            let body = report::report(outcomes.iter().filter_map(|(i, o)| Some((deployments.get(*i)?, o))));
            self.answer_health(&body);
            return;
        }
        self.health_check = Some(Probes::send(&self.host, &gateway, selected));
        self.answer_health_if_done();
    }

    /// Whether `token` is one of this request's HTTP calls, a probe or a call of its own (the
    /// native build's callout hook asks, since these and key lookups answer through one hook).
    pub fn awaits_http_call(&self, token: u32) -> bool {
        self.health_check.as_ref().is_some_and(|c| c.awaits(token))
            || self.fan_out.as_ref().is_some_and(|f| f.awaits(token))
    }

    /// An HTTP call's answer: a probe's, or one of the request's own calls (`fan_out.rs`).
    pub fn on_http_response(&mut self, token: u32, size: usize) {
        if self.fan_out.as_ref().is_some_and(|f| f.awaits(token)) {
            self.on_fan_out_answer(token, size);
            return;
        }
        if !self.awaits_http_call(token) {
            return;
        }
        let (status, body) = self.host.http_response(size);
        if let Some(check) = self.health_check.as_mut() {
            check.answer(token, status, &body);
        }
        self.answer_health_if_done();
    }

    fn answer_health_if_done(&mut self) {
        let Some(check) = self.health_check.take_if(|c| c.done()) else { return };
        let deployments = &self.gateway.config.config.deployments;
        let body = report::report(check.outcomes().filter_map(|(i, o)| Some((deployments.get(i)?, o))));
        self.answer_health(&body);
    }

    fn answer_health(&mut self, body: &[u8]) {
        self.rejected = true; // answered here: no upstream, no usage record
        self.host.send_local_response(200, &[("content-type", "application/json")], body);
    }
}
