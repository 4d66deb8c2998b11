//! Stage two: the whole body is here. Validate it, choose the deployment, translate when the
//! formats differ, admit on every limited scope, and point the held request at the deployment
//! with its credential (or answer `count_tokens`).

use sluice_core::config::{Deployment, RoutingStrategy};
use sluice_core::routing::{choose_least, choose_lowest_latency};

use super::*;

/// Where a deployment's credential goes upstream.
#[derive(Debug, Clone, Default)]
pub(super) struct UpstreamCredential {
    /// The provider's header (None: Envoy signs the request on the cluster, as for Bedrock).
    pub(super) header: Option<&'static str>,
    /// Its value (None: no key configured; the header is then not sent).
    pub(super) value: Option<String>,
}

impl UpstreamCredential {
    pub(super) fn new(provider: Provider, credential: Option<&str>) -> UpstreamCredential {
        let (header, value) = match provider {
            Provider::Openai => ("authorization", credential.map(|c| format!("Bearer {c}"))),
            Provider::Anthropic => ("x-api-key", credential.map(str::to_owned)),
            Provider::Azure => ("api-key", credential.map(str::to_owned)),
            Provider::Gemini => ("x-goog-api-key", credential.map(str::to_owned)),
            // Envoy signs Bedrock's requests (SigV4) on the cluster: no header from here.
            Provider::Bedrock => return UpstreamCredential::default(),
        };
        UpstreamCredential { header: Some(header), value }
    }
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
        let body = self.host.request_body(body_size).unwrap_or_default();
        match self.route_and_admit(&body) {
            Ok(()) if self.rejected => Action::Pause, // answered here
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
        let (group_index, matched) =
            config.resolve_model(model).ok_or_else(|| GatewayError::UnknownModel { model: model.to_owned() })?;
        let group = config.groups.get(group_index).ok_or(GatewayError::Internal { detail: "group" })?;
        // A key may name the group or the name it asked for (an alias, a wildcard's match).
        if !self.may_use(&group.name) && !self.may_use(model) {
            return Err(GatewayError::ModelNotAllowed { model: model.to_owned() });
        }
        if endpoint == Endpoint::CountTokens {
            return self.count_tokens(&gateway, group, matched, body, &req);
        }
        // Deployments of the group whose `mode` serves this route and that speak its wire
        // format, or one the gateway translates to (`translation.rs`).
        let client_format = endpoint.format();
        let candidates =
            group.deployments.iter().filter_map(|i| Some((*i, config.deployment(*i)?))).filter(|(_, d)| {
                d.mode.is_none_or(|m| m.serves(endpoint))
                    && (d.provider.format() == client_format || Direction::between(endpoint, d.provider).is_some())
                    // The Responses API is OpenAI's own, passed through to OpenAI only.
                    && (endpoint != Endpoint::Responses || d.provider == Provider::Openai)
            });
        let (index, deployment) = match self.choose(&gateway, group, candidates) {
            Ok(chosen) => chosen,
            Err(None) => {
                return Err(GatewayError::ModelNotOnRoute { model: model.to_owned(), route: endpoint.route() });
            }
            Err(Some(retry_after_secs)) => {
                return Err(GatewayError::NoHealthyDeployment { group: group.name.clone(), retry_after_secs });
            }
        };
        // What the response is parsed as: the deployment's format, or the Responses API's own.
        let format =
            if endpoint == Endpoint::Responses { ApiFormat::OpenAiResponses } else { deployment.provider.format() };
        let streamed = req.stream && endpoint.can_stream();
        let upstream_model = deployment.upstream_model_for(matched);
        let (pricing, price_unknown) = deployment.pricing_for(&upstream_model);
        // Translated before admission: a request that cannot be translated reserves nothing.
        // (`between` names only pairs of different formats.)
        let translated = match Direction::between(endpoint, deployment.provider) {
            None => None,
            Some(direction) => {
                let mut translation = Translation {
                    direction,
                    client_model: model.to_owned(),
                    include_usage: req.client_wants_usage,
                    embeddings: None,
                };
                let body = translation.request(body, deployment, &upstream_model, DEFAULT_MAX_OUTPUT_TOKENS)?;
                Some((body, translation))
            }
        };

        // Where it goes, decided before admission: a request refused here reserves nothing.
        let upstream_endpoint = translated.as_ref().map_or(endpoint, |(_, t)| t.direction.upstream_endpoint());
        let upstream_path =
            deployment.upstream_path(upstream_endpoint, &upstream_model, streamed).ok_or_else(|| {
                GatewayError::InvalidField {
                    param: "model",
                    detail: "not a model name this provider can be asked for".into(),
                }
            })?;

        // Admission: reserve estimated tokens and the maximum cost on every limited scope.
        let est_prompt_tokens = usage::estimate_tokens_from_bytes(body.len() as u64);
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
            if let Some(per_model) = key.model_limits.get(&group.name) {
                scopes.push(Scope {
                    name: &per_model.counter_name,
                    limits: per_model.limits,
                    kind: LimitScope::KeyModel,
                    placement,
                });
            }
        }
        let (tickets, remaining) = if scopes.is_empty() {
            (Vec::new(), Remaining::default())
        } else {
            counters::admit_all(&self.host, &scopes, self.start_ms, est_prompt_tokens, max_cost)?
        };
        if config.config.key_lookup.is_some() {
            gateway.announce_to_fleet(&self.host, &tickets, self.start_ms);
        }
        let in_flight = self.start_load(&gateway, group, index);

        // The body for the deployment: its model name; OpenAI streams must report usage.
        let wants_usage_chunk = streamed && format == ApiFormat::OpenAi;
        let strip_usage_chunk = wants_usage_chunk && !req.client_wants_usage;
        let (new_body, translation) = match translated {
            Some((body, translation)) => (Some(body), Some(translation)),
            None => (rewrite_body(body, &req, &upstream_model, wants_usage_chunk), None),
        };
        self.send_upstream(&gateway, index, &upstream_path, body.len(), new_body.as_deref());
        let retries = self.tell_the_router(&gateway, deployment, &req, streamed);
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
        });
        Ok(())
    }

    /// One of `candidates` (the group's deployments that can serve the request): of those not
    /// cooling down, the lowest `order`, then by the routing strategy. Err(None) when there are
    /// no candidates; Err(Some(seconds)) when every one is cooling down, with when the first
    /// comes back.
    fn choose<'c>(
        &self,
        gateway: &Gateway,
        group: &sluice_core::config::ModelGroup,
        candidates: impl Iterator<Item = (usize, &'c Deployment)> + Clone,
    ) -> Result<(usize, &'c Deployment), Option<u64>> {
        let order = |d: &Deployment| d.order.unwrap_or(u32::MAX);
        if group.deployments.len() < 2 {
            // One deployment: nothing to weigh, nothing shared to read.
            return candidates.clone().next().ok_or(None);
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
            return Err(any.then(|| back_at.saturating_sub(now).div_ceil(1000).max(1)));
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
        };
        picked.and_then(|c| pool.get(c).copied()).ok_or(None)
    }

    /// Counts an admitted request in its deployment's requests in flight (`least-busy`).
    fn start_load(&self, gateway: &Gateway, group: &sluice_core::config::ModelGroup, index: usize) -> bool {
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

    /// Counts the failed attempts of a finished request against its deployment (the router's
    /// retries all went to it): all of them when the answer was a failure, else all but the
    /// last. Only where cooldowns apply.
    pub(super) fn count_failures(&self, gateway: &Gateway, admitted: &Admitted, now_ms: u64) {
        let config = &gateway.config;
        let in_group = config.groups.get(admitted.group).is_some_and(|g| g.deployments.len() > 1);
        if !config.config.cooldown.enabled || !in_group {
            return;
        }
        let failed = self.status != 0 && sluice_core::cooldown::is_failure(self.status);
        let failures = if failed { self.attempts } else { self.attempts - 1 };
        if failures > 0 {
            gateway.cooldowns.record_failures(&self.host, config, admitted.deployment, now_ms, failures);
        }
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
    /// (Anthropic counts for free: nothing is admitted, billed or recorded), else answered
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
            d.provider == Provider::Anthropic && d.mode.is_none_or(|m| m.serves(Endpoint::CountTokens))
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
