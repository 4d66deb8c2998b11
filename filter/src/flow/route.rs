//! Stage two: the whole body is here. Validate it, choose the deployment, translate when the
//! formats differ, admit on every limited scope, and point the held request at the deployment
//! with its credential (or answer `count_tokens`).

use std::borrow::Cow;

use sluice_core::config::{Deployment, FleetBudget, PROXY_COUNTER_NAME};
use sluice_core::conversion::vertex;
use sluice_core::cost::nanos_to_usd;
use sluice_core::customers::CompiledCustomer;
use sluice_core::refusals;

use super::choice::NoChoice;
use super::*;
use crate::translation::Upstream;

/// Where a deployment's credential goes upstream.
#[derive(Debug, Clone, Default)]
pub(crate) struct UpstreamCredential {
    /// The provider's header (None: Envoy signs the request on the cluster, as for Bedrock).
    pub(crate) header: Option<&'static str>,
    /// Its value (None: no key configured; the header is then not sent).
    pub(crate) value: Option<String>,
}

impl UpstreamCredential {
    pub(super) fn new(provider: Provider, credential: Option<&str>) -> UpstreamCredential {
        let (header, value) = match provider {
            Provider::Openai => ("authorization", credential.map(|c| format!("Bearer {c}"))),
            Provider::Anthropic => ("x-api-key", credential.map(str::to_owned)),
            Provider::Azure => ("api-key", credential.map(str::to_owned)),
            Provider::Gemini => ("x-goog-api-key", credential.map(str::to_owned)),
            // Vertex AI's access token is set by Envoy from SDS (xDS mode only): the client's
            // `authorization` is still removed here.
            Provider::VertexGemini | Provider::VertexAnthropic => ("authorization", None),
            // Envoy signs Bedrock's requests (SigV4) on the cluster: no header from here.
            Provider::Bedrock => return UpstreamCredential::default(),
        };
        UpstreamCredential { header: Some(header), value }
    }
}

/// Deployments of `group` that can serve `endpoint`: their `mode` serves it and they speak its
/// wire format or one the gateway translates to (`translation.rs`); a wildcard deployment only
/// for a name it matched (`wildcard`), never as a fallback.
fn candidates<'c>(
    config: &'c CompiledConfig,
    group: &'c sluice_core::config::ModelGroup,
    endpoint: Endpoint,
    wildcard: bool,
) -> impl Iterator<Item = (usize, &'c sluice_core::config::Deployment)> + Clone + 'c {
    let client_format = endpoint.format();
    group.deployments.iter().filter_map(|i| Some((*i, config.deployment(*i)?))).filter(move |(_, d)| {
        d.mode.is_none_or(|m| m.serves(endpoint))
            && (d.provider.format() == client_format || Direction::between(endpoint, d.provider).is_some())
            // The Responses API is OpenAI's own, passed through to OpenAI only.
            && (endpoint != Endpoint::Responses || d.provider == Provider::Openai)
            && (wildcard || !d.upstream_model.contains('*'))
    })
}

impl<H: Host> RequestFlow<H> {
    pub fn on_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.awaiting_body {
            return Action::Continue;
        }
        let limit = self.config().config.max_request_body_bytes;
        if body_size as u64 > limit {
            // No content-length (chunked upload), or a client that lied about it.
            self.awaiting_body = false;
            return self.reject(&GatewayError::BodyTooLarge { limit });
        }
        if !end_of_stream {
            return Action::Pause; // Envoy buffers until the whole body is here
        }
        if self.lookup.is_some() {
            // Routing needs the key: keep the body buffered until the control plane answers.
            self.body_ready = Some(body_size);
            return Action::Pause;
        }
        self.route_body(body_size)
    }

    /// The whole body is buffered: route and admit, or refuse.
    pub(super) fn route_body(&mut self, body_size: usize) -> Action {
        self.awaiting_body = false;
        self.buffered_len = body_size;
        // A failover pass gets the body as the failed pass left it: the plan has the client's.
        let body = match self.plan.as_ref().filter(|_| self.failover_pass) {
            Some(plan) => plan.body.clone(),
            None => self.host.request_body(body_size).unwrap_or_default(),
        };
        match self.route_and_admit(&body) {
            // Answered here: refused, or from the response cache; or sent by the filter itself.
            Ok(()) if self.rejected || self.cache.hit().is_some() || self.fan_out.is_some() => Action::Pause,
            Ok(()) => Action::Continue,
            Err(error) => self.reject(&error),
        }
    }

    /// Validates the body, chooses the deployment, admits the request on every limited scope,
    /// and points the (still held) headers and the body at the deployment.
    fn route_and_admit(&mut self, body: &[u8]) -> Result<(), GatewayError> {
        let endpoint = self.endpoint.ok_or(GatewayError::Internal { detail: "no endpoint" })?;
        let req = parse_request(body)?;
        let gateway = Rc::clone(&self.gateway);
        let config = &gateway.config;
        let model = req.model.as_ref();
        // A failover pass serves its plan's step; a first pass, the group the model names.
        let (own_group, mut matched) = match self.step_group() {
            Some(group) => (group, None),
            None => {
                config.resolve_model(model).ok_or_else(|| GatewayError::UnknownModel { model: model.to_owned() })?
            }
        };
        let group = config.groups.get(own_group).ok_or(GatewayError::Internal { detail: "group" })?;
        // A key may name the group or the name it asked for (an alias, a wildcard's match).
        if !self.failover_pass && !self.may_use(&group.name) && !self.may_use(model) {
            return Err(GatewayError::ModelNotAllowed { model: model.to_owned() });
        }
        if endpoint == Endpoint::CountTokens {
            return self.count_tokens(&gateway, group, matched, body, &req);
        }
        // The end user (LiteLLM's customer): a header names it before the body does.
        let end_user = self.header_end_user.clone().or_else(|| req.end_user.as_deref().map(str::to_owned));
        let customer = end_user.as_deref().and_then(|id| Some(id).zip(config.customers.get(id)));
        if let Some((id, customer)) = customer.as_ref().filter(|_| !self.failover_pass) {
            check_customer(id, customer)?;
        }
        if let Some(budget) = config.config.proxy_budget.as_ref().filter(|b| b.budget_spent && !self.failover_pass) {
            return Err(GatewayError::OwnerBudgetExceeded {
                scope: LimitScope::Proxy,
                id: String::new(),
                spend_usd: budget.max_budget,
                max_budget_usd: budget.max_budget,
            });
        }
        if !self.failover_pass {
            let retries = req.num_retries.unwrap_or(config.config.retries.num_retries);
            self.start_plan(own_group, retries, body);
        }
        // Under a plan, a deployment not tried yet if the group has one.
        let est_prompt_tokens = usage::estimate_tokens_from_bytes(body.len() as u64);
        // LiteLLM's `enable_pre_call_checks`: a deployment the prompt does not fit is not sent it.
        let window_estimate = config.config.pre_call_checks.then(|| refusals::prompt_estimate(body));
        let fits = move |d: &Deployment| match (window_estimate, d.max_input_tokens) {
            (Some(estimate), Some(max)) => estimate <= max,
            _ => true,
        };
        let mut group_index = self.step_group().unwrap_or(own_group);
        // Each step's group in turn, while one has no deployment to offer or is not the key's.
        let (group_index, group, index, deployment) = loop {
            let group = config.groups.get(group_index).ok_or(GatewayError::Internal { detail: "group" })?;
            // The request's own group was checked above (by the name it asked for, too).
            let own = if self.failover_pass {
                self.plan.as_ref().and_then(|p| p.steps.first()) == Some(&group_index)
            } else {
                group_index == own_group
            };
            let allowed = own || self.may_use(&group.name);
            let choice = if allowed {
                let all = candidates(config, group, endpoint, matched.is_some());
                let fitting = all.clone().filter(|(_, d)| fits(d));
                let untried = fitting.clone().any(|(i, _)| !self.tried(i));
                // (Only with the check on can every candidate be too small.)
                let too_long = window_estimate.is_some() && fitting.clone().next().is_none();
                let largest = if too_long { all.clone().filter_map(|(_, d)| d.max_input_tokens).max() } else { None };
                match largest {
                    Some(largest) => Err(NoChoice::PromptTooLong(largest)),
                    None => self.choose(
                        &gateway,
                        group,
                        fitting.filter(|(i, _)| !untried || !self.tried(*i)),
                        est_prompt_tokens,
                    ),
                }
            } else {
                Err(NoChoice::NotAllowed)
            };
            let no_choice = match choice {
                Ok((index, deployment)) => break (group_index, group, index, deployment),
                Err(no_choice) => no_choice,
            };
            // A prompt too long for the group takes its context-window fallbacks.
            let next = match no_choice {
                NoChoice::PromptTooLong(_) => self.divert_too_long(),
                _ => self.next_step(),
            };
            match next {
                Some(next) => {
                    group_index = next;
                    matched = None;
                }
                None => {
                    return Err(match no_choice {
                        NoChoice::NoCandidate => {
                            GatewayError::ModelNotOnRoute { model: model.to_owned(), route: endpoint.route() }
                        }
                        NoChoice::NotAllowed => GatewayError::ModelNotAllowed { model: group.name.clone() },
                        NoChoice::AllCoolingDown(retry_after_secs) => {
                            GatewayError::NoHealthyDeployment { group: group.name.clone(), retry_after_secs }
                        }
                        NoChoice::AllAtCapacity(retry_after_secs) => {
                            GatewayError::GroupAtCapacity { group: group.name.clone(), retry_after_secs }
                        }
                        NoChoice::PromptTooLong(max_input_tokens) => GatewayError::ContextWindowExceeded {
                            group: group.name.clone(),
                            estimate: window_estimate.unwrap_or(est_prompt_tokens),
                            max_input_tokens,
                        },
                    });
                }
            }
        };
        // What the response is parsed as: the deployment's format, or the Responses API's own.
        let format =
            if endpoint == Endpoint::Responses { ApiFormat::OpenAiResponses } else { deployment.provider.format() };
        let streamed = req.stream && endpoint.can_stream();
        let upstream_model = deployment.upstream_model_for(matched);
        let (pricing, price_unknown) = deployment.pricing_for(&upstream_model);
        // Translated before admission: a request that cannot be translated reserves nothing.
        // (`between` names only pairs of different formats.) Titan's embeddings of several
        // texts are a call each, which the filter sends (`fan_out.rs`).
        let mut calls = None;
        let translated = match Direction::between(endpoint, deployment.provider) {
            // Claude on Vertex: the Anthropic client's body with Vertex's two changes.
            None if deployment.provider == Provider::VertexAnthropic => {
                let renamed = rewrite_body(body, &req, &upstream_model, false);
                Some((vertex::anthropic_request(renamed.as_deref().unwrap_or(body))?, None))
            }
            None => None,
            Some(direction) => {
                let mut translation = Translation {
                    direction,
                    client_model: model.to_owned(),
                    include_usage: req.client_wants_usage,
                    embeddings: None,
                    dropped_params: 0,
                    json_mode: false,
                };
                let body = match translation.upstream(body, deployment, &upstream_model, DEFAULT_MAX_OUTPUT_TOKENS)? {
                    Upstream::Body(body) => body,
                    Upstream::Calls(several) => {
                        calls = Some(several);
                        Vec::new()
                    }
                };
                Some((body, Some(translation)))
            }
        };

        // Where it goes, decided before admission: a request refused here reserves nothing.
        let upstream_endpoint =
            translated.as_ref().and_then(|(_, t)| t.as_ref()).map_or(endpoint, |t| t.direction.upstream_endpoint());
        let upstream_path =
            deployment.upstream_path(upstream_endpoint, &upstream_model, streamed).ok_or_else(|| {
                GatewayError::InvalidField {
                    param: "model",
                    detail: "not a model name this provider can be asked for".into(),
                }
            })?;

        // Admission: reserve estimated tokens and the maximum cost on every limited scope.
        let max_output = if endpoint == Endpoint::Embeddings {
            0
        } else {
            req.max_output_tokens.or(deployment.max_output_tokens).unwrap_or(DEFAULT_MAX_OUTPUT_TOKENS)
        };
        let max_cost = pricing.max_cost_nanos(est_prompt_tokens, max_output);
        let mut scopes: Vec<Scope<'_>> = Vec::with_capacity(3);
        // Looked-up scopes (xDS mode) share slots; configured ones have named records.
        let placement = if config.config.key_lookup.is_some() { Placement::Slotted } else { Placement::Named };
        if let Some(key) = self.key() {
            if !key.limits.is_unlimited() {
                scopes.push(Scope { name: &key.counter_name, limits: key.limits, kind: LimitScope::Key, placement });
            }
            if let Some(team) = self.team().filter(|t| !t.limits.is_unlimited()) {
                scopes.push(Scope { name: &team.counter_name, limits: team.limits, kind: LimitScope::Team, placement });
            }
            for owner in key.owners.iter().filter(|o| !o.limits.is_unlimited()) {
                scopes.push(Scope { name: &owner.counter_name, limits: owner.limits, kind: owner.scope, placement });
            }
            if let Some(per_model) = key.model_limits.get(&group.name) {
                // The key's budget for this model, spent across the fleet (xDS mode).
                let fleet = FleetBudget {
                    max_nanos: per_model.limits.max_budget_nanos,
                    spend_nanos: per_model.fleet_spend_nanos,
                };
                if let Some((spent, max)) = fleet.exceeded().filter(|_| !self.failover_pass) {
                    return Err(GatewayError::BudgetExceeded {
                        scope: LimitScope::KeyModel,
                        spend_usd: nanos_to_usd(spent),
                        max_budget_usd: nanos_to_usd(max),
                    });
                }
                scopes.push(Scope {
                    name: &per_model.counter_name,
                    limits: per_model.limits,
                    kind: LimitScope::KeyModel,
                    placement,
                });
            }
        }
        if let Some((_, customer)) = customer.as_ref().filter(|(_, c)| !c.limits.is_unlimited()) {
            // An end user held to the default budget is whoever the client names: never a
            // record of its own for the Envoy's life (clients could make them without end).
            let placement = match customer {
                Cow::Borrowed(_) => placement,
                Cow::Owned(_) => Placement::Slotted,
            };
            scopes.push(Scope {
                name: &customer.counter_name,
                limits: customer.limits,
                kind: LimitScope::Customer,
                placement,
            });
        }
        if let Some(limits) = config.proxy_limits {
            // One named record, whatever the mode (made when the config loads).
            scopes.push(Scope {
                name: PROXY_COUNTER_NAME,
                limits,
                kind: LimitScope::Proxy,
                placement: Placement::Named,
            });
        }
        // usage-based-routing-v2: the deployment's rpm/tpm are limits, admitted with the key's.
        if let Some(name) = gateway.usage_counters.get(index).filter(|_| group.deployments.len() > 1) {
            let limits = choice::usage_limits(deployment);
            scopes.push(Scope { name, limits, kind: LimitScope::Deployment, placement: Placement::Named });
        }
        let (tickets, remaining) = if scopes.is_empty() {
            (Vec::new(), Remaining::default())
        } else {
            // A failover's next pass continues a request admitted already (its parallel slot).
            let admission = if self.failover_pass { Admission::Continuing } else { Admission::New };
            counters::admit_all(&self.host, &scopes, self.start_ms, est_prompt_tokens, max_cost, admission).map_err(
                |e| match e {
                    // Another worker took the room the choice saw.
                    GatewayError::RateLimited { scope: LimitScope::Deployment, retry_after_secs, .. } => {
                        GatewayError::GroupAtCapacity { group: group.name.clone(), retry_after_secs }
                    }
                    other => other,
                },
            )?
        };
        if config.config.key_lookup.is_some() {
            gateway.announce_to_fleet(&self.host, &tickets, self.start_ms);
        }
        // The response cache: an answer stored for this tenant and request is sent from here.
        let usage_chunk =
            req.client_wants_usage && matches!(endpoint, Endpoint::ChatCompletions | Endpoint::Completions);
        let form = sluice_core::cache::EntryForm::wanted(streamed, usage_chunk);
        let cache_hit = self.consult_cache(&gateway, &group.name, body, &req, form, end_user.as_deref());

        let wants_usage_chunk = streamed && format == ApiFormat::OpenAi;
        let strip_usage_chunk = wants_usage_chunk && !req.client_wants_usage;
        let (in_flight, translation, retries) = if cache_hit {
            (false, None, 0)
        } else {
            let in_flight = self.start_load(&gateway, group, index);
            self.commit_plan(index, group_index);
            // The body for the deployment: its model name; OpenAI streams must report usage.
            let (new_body, translation) = match translated {
                Some((body, translation)) => (Some(body), translation),
                None => (rewrite_body(body, &req, &upstream_model, wants_usage_chunk), None),
            };
            if calls.is_some() {
                (in_flight, translation, 0) // sent below, once admitted
            } else {
                // A failover pass replaces what the failed pass left, even with the client's own bytes.
                let new_body = new_body.or_else(|| self.failover_pass.then(|| body.to_vec()));
                self.send_upstream(&gateway, index, &upstream_path, self.buffered_len, new_body.as_deref());
                let retries = self.tell_the_router(&gateway, deployment, &req, streamed);
                (in_flight, translation, retries)
            }
        };
        self.admitted = Some(Admitted {
            group: group_index,
            deployment: index,
            format,
            translation,
            streamed,
            strip_usage_chunk,
            est_prompt_tokens,
            tickets,
            remaining,
            pricing,
            price_unknown,
            wildcard_model: match upstream_model {
                std::borrow::Cow::Owned(name) => Some(name),
                std::borrow::Cow::Borrowed(_) => None,
            },
            retries,
            in_flight,
            end_user,
        });
        let translation = self.admitted.as_ref().and_then(|a| a.translation.as_ref());
        if let Some(dropped) = translation.map(|t| t.dropped_params as u64).filter(|n| *n > 0) {
            gateway.metrics.group(group_index, GroupMetric::DroppedParams, dropped);
        }
        if let Some(calls) = calls.filter(|_| !cache_hit)
            && let Some(translation) = translation.cloned()
        {
            self.start_fan_out(&gateway, index, &upstream_path, calls, translation, &req);
        }
        Ok(())
    }

    /// Points the held request at deployment `index`: its body (when it changed), path, cluster,
    /// the provider's credential in place of the client's, and Anthropic's version header.
    fn send_upstream(
        &mut self,
        gateway: &Gateway,
        index: usize,
        upstream_path: &str,
        body_len: usize,
        new_body: Option<&[u8]>,
    ) {
        let Some(deployment) = gateway.config.deployment(index) else { return };
        if let Some(new_body) = new_body {
            self.host.replace_request_body(body_len, new_body);
            self.host.set_request_header("content-length", Some(itoa::Buffer::new().format(new_body.len()).as_bytes()));
        }
        if upstream_path.as_bytes() != self.path.as_slice() {
            self.host.set_request_header(":path", Some(upstream_path.as_bytes()));
        }
        // Only a request with somewhere to go next takes the route that follows a failover.
        if self.plan_continues() {
            self.host.add_request_header(FAILOVER_ROUTE_HEADER, b"1");
        }
        // A client's own cluster header is replaced; otherwise ours is only added.
        if self.client_sent_cluster {
            self.host.set_request_header(CLUSTER_HEADER, Some(deployment.cluster.as_bytes()));
        } else {
            self.host.add_request_header(CLUSTER_HEADER, deployment.cluster.as_bytes());
        }
        // The provider's credential replaces the client's, in the provider's header; the
        // client's key goes from the others it came in.
        let upstream = gateway.upstream_credentials.get(index);
        let (header, value) = upstream.map_or((None, None), |u| (u.header, u.value.as_deref()));
        for (client_header, sent) in CLIENT_KEY_HEADERS.into_iter().zip(self.client_key_headers) {
            if sent && Some(client_header) != header {
                self.host.set_request_header(client_header, None);
            }
        }
        let client_sent = |name| CLIENT_KEY_HEADERS.iter().zip(self.client_key_headers).any(|(h, s)| s && *h == name);
        if let Some(header) = header
            && (value.is_some() || client_sent(header))
        {
            self.host.set_request_header(header, value.map(str::as_bytes));
        }
        if deployment.provider == Provider::Anthropic && !self.has_anthropic_version {
            self.host.set_request_header("anthropic-version", Some(ANTHROPIC_VERSION.as_bytes()));
        }
    }

    /// `/v1/messages/count_tokens` for `group`: passed to one of its Anthropic deployments
    /// (Claude on Vertex too, at Vertex's `count-tokens`; Anthropic counts for free: nothing is
    /// admitted, billed or recorded), else answered
    /// here with the estimate admission uses (LiteLLM would run the model's tokenizer where it
    /// has one; the figure is labelled an estimate in ARCHITECTURE.md).
    fn count_tokens(
        &mut self,
        gateway: &Gateway,
        group: &sluice_core::config::ModelGroup,
        matched: Option<&str>,
        body: &[u8],
        req: &sluice_core::request::LlmRequest<'_>,
    ) -> Result<(), GatewayError> {
        let config = &gateway.config;
        let anthropic = group.deployments.iter().filter_map(|i| Some((*i, config.deployment(*i)?))).filter(|(_, d)| {
            matches!(d.provider, Provider::Anthropic | Provider::VertexAnthropic)
                && d.mode.is_none_or(|m| m.serves(Endpoint::CountTokens))
        });
        let chosen = choose_weighted(anthropic.clone().map(|(_, d)| d.weight), self.random)
            .and_then(|c| anthropic.clone().nth(c));
        let Some((index, deployment)) = chosen else {
            let estimate = usage::estimate_tokens_from_bytes(body.len() as u64);
            let answer = format!("{{\"input_tokens\":{estimate}}}");
            self.rejected = true; // answered here: no upstream, no usage record
            self.host.send_local_response(200, &[("content-type", "application/json")], answer.as_bytes());
            return Ok(());
        };
        let upstream_model = deployment.upstream_model_for(matched);
        let upstream_path = deployment
            .upstream_path(Endpoint::CountTokens, &upstream_model, false)
            .ok_or(GatewayError::Internal { detail: "count_tokens path" })?;
        let new_body = rewrite_body(body, req, &upstream_model, false);
        self.send_upstream(gateway, index, &upstream_path, body.len(), new_body.as_deref());
        Ok(())
    }
}

/// A customer's standing before anything is reserved: blocked, or its budget spent across the
/// fleet (the control plane's word; this Envoy's own count is its scope's, at admission).
fn check_customer(id: &str, customer: &CompiledCustomer) -> Result<(), GatewayError> {
    if customer.blocked {
        return Err(GatewayError::CustomerBlocked { id: id.to_owned() });
    }
    if customer.budget_spent {
        let max_budget_usd = customer.limits.max_budget_nanos.map_or(0.0, nanos_to_usd);
        return Err(GatewayError::OwnerBudgetExceeded {
            scope: LimitScope::Customer,
            id: id.to_owned(),
            spend_usd: max_budget_usd,
            max_budget_usd,
        });
    }
    Ok(())
}
