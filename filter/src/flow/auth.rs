//! Stage one: who is asking. The request's headers are read once; a probe or `/v1/models` is
//! answered here; the credential is checked against configured keys, this worker's cache and
//! shared data (a key no worker knows is looked up: `lookup.rs`); the request is held for its
//! body.

use sluice_core::ip_rules::{IpRules, parse_client_address};

use super::*;

/// The client's key: a bearer token in `authorization`, else `x-api-key`, else `api-key`.
fn client_credential(
    authorization: Option<Vec<u8>>,
    x_api_key: Option<Vec<u8>>,
    api_key: Option<Vec<u8>>,
) -> Result<Vec<u8>, GatewayError> {
    if let Some(token) = authorization.as_deref().and_then(keys::bearer_token) {
        return Ok(token.to_vec());
    }
    [x_api_key, api_key]
        .into_iter()
        .flatten()
        .map(|v| v.trim_ascii().to_vec())
        .find(|v| !v.is_empty())
        .ok_or(GatewayError::MissingKey)
}

impl<H: Host> RequestFlow<H> {
    /// What the request's record says of it from LiteLLM's headers: its tags
    /// (`x-litellm-tags`) and its end user (`x-litellm-customer-id`, else
    /// `x-litellm-end-user-id`, before the body's). One it cannot record whole is a 400.
    fn read_record_headers(
        &mut self,
        tags: Option<Vec<u8>>,
        customer_id: Option<Vec<u8>>,
        end_user_id: Option<Vec<u8>>,
    ) -> Result<(), GatewayError> {
        if let Some(tags) = tags {
            self.request_tags = sluice_core::request::parse_tags_header(&tags)?;
        }
        for (header, value) in sluice_core::request::END_USER_HEADERS.into_iter().zip([customer_id, end_user_id]) {
            if let Some(value) = value.filter(|_| self.header_end_user.is_none()) {
                self.header_end_user = sluice_core::request::end_user_header(header, &value)?;
            }
        }
        Ok(())
    }

    pub fn on_request_headers(&mut self, end_of_stream: bool) -> Action {
        #[cfg(all(feature = "test-trap", target_arch = "wasm32"))]
        if self.host.request_header("x-sluice-test-trap").is_some() {
            core::arch::wasm32::unreachable();
        }
        self.start_ms = self.host.now_ms();
        let [
            path,
            method,
            authorization,
            x_api_key,
            api_key,
            content_length,
            request_id,
            anthropic_version,
            tags,
            customer_id,
            end_user_id,
            cache_control,
            cluster,
            gateway_headers @ ..,
        ] = self.host.request_headers(READ_REQUEST_HEADERS);
        self.client_sent_cluster = cluster.is_some();
        // How often and how long the router tries, and whether the route follows a failover,
        // are the gateway's to say, never a client's (Envoy strips its own headers from outside
        // clients, not from one it counts as internal; a previous pass's are set again if due).
        let gateway_header_names = attempts::ROUTER_HEADERS
            .into_iter()
            .chain([FAILOVER_ROUTE_HEADER, sluice_core::retries::STREAM_IDLE_HEADER]);
        for (name, sent) in gateway_header_names.zip(gateway_headers) {
            if sent.is_some() {
                self.host.set_request_header(name, None);
            }
        }
        self.path = path.unwrap_or_default();
        if let Some(probe) = Probe::from_path(&self.path) {
            self.answer_probe(probe);
            return Action::Pause;
        }
        // `general_settings.allowed_ips`: before anything else is read or asked (LiteLLM's
        // liveness and readiness probes above answer anyone, as Kubernetes' kubelet asks them).
        if let Some(rules) = &self.gateway.config.allowed_ips
            && let Err(e) = self.check_client_ip(rules)
        {
            return self.reject(&e);
        }
        if self.path == crate::failover::FAILOVER_PATH.as_bytes() {
            // The redirected request carries the client's headers: its record names the same
            // tags and end user as the first pass would have.
            if let Err(e) = self.read_record_headers(tags, customer_id, end_user_id) {
                return self.reject(&e);
            }
            return self.failover_pass_headers(request_id);
        }
        if health_check::is_health_path(&self.path) {
            return self.health_headers(method.as_deref(), authorization, x_api_key, api_key);
        }
        if sluice_core::endpoint::is_management(&self.path) {
            // The control plane's to serve and authorise: the route sends it there (xDS mode),
            // never a client's choice of cluster (a deployment's would add its credential).
            if self.config().config.key_lookup.is_some() {
                if self.client_sent_cluster {
                    self.host.set_request_header(CLUSTER_HEADER, None);
                }
                return Action::Continue;
            }
            return self.reject(&GatewayError::ManagementUnavailable);
        }
        let Some(endpoint) = Endpoint::from_path(&self.path) else {
            return self.reject(&GatewayError::UnknownRoute);
        };
        self.endpoint = Some(endpoint);
        if method.as_deref() != Some(endpoint.method().as_bytes()) {
            return self
                .reject(&GatewayError::MethodNotAllowed { route: endpoint.route(), allowed: endpoint.method() });
        }
        self.client_key_headers = [authorization.is_some(), x_api_key.is_some(), api_key.is_some()];
        self.has_anthropic_version = anthropic_version.is_some();
        // A key to ask the control plane about is asked about only once the request passed
        // every check that needs no key, so a request refused anyway costs no call.
        let mut to_look_up = None;
        let credential = client_credential(authorization, x_api_key, api_key);
        match credential.and_then(|token| self.authenticate(&token, endpoint)) {
            Ok(Auth::Known(principal)) => self.principal = Some(principal),
            Ok(Auth::Lookup(hash, stale)) => to_look_up = Some((hash, stale)),
            Err(e) => return self.reject(&e),
        }
        // The client's credential never goes upstream: `authorization`, `x-api-key` and
        // `api-key` are replaced or removed when the request is routed (nothing leaves before
        // that); the route removes `accept-encoding` (the gateway meters plain responses) and
        // any client-sent `x-sluice-cluster` (the filter always sets its own).
        if endpoint == Endpoint::Models {
            if let Some((hash, stale)) = to_look_up
                && let Err(e) = self.start_lookup(hash, stale)
            {
                return self.reject(&e);
            }
            if self.lookup.is_none() {
                self.answer_models();
            }
            return Action::Pause;
        }
        if end_of_stream {
            return self.reject(&GatewayError::MissingModel);
        }
        let limit = self.config().config.max_request_body_bytes;
        let declared = content_length.and_then(|v| std::str::from_utf8(&v).ok()?.trim().parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit) {
            return self.reject(&GatewayError::BodyTooLarge { limit });
        }
        self.request_id = request_id.map(|v| String::from_utf8_lossy(&v).into_owned());
        if let Err(e) = self.read_record_headers(tags, customer_id, end_user_id) {
            return self.reject(&e);
        }
        // Checked before anything is reserved: a bad directive is a 400, not a leaked slot.
        if let Some(value) = cache_control.filter(|_| self.config().config.cache.is_some()) {
            let mut control = sluice_core::cache::CacheControl::default();
            if let Err(e) = sluice_core::cache::apply_cache_control_header(&mut control, &value) {
                return self.reject(&e);
            }
            self.header_cache_control = Some(control);
        }
        if let Some((hash, stale)) = to_look_up
            && let Err(e) = self.start_lookup(hash, stale)
        {
            return self.reject(&e);
        }
        // Hold the headers until the body is here: routing needs the body's `model`. The
        // bootstrap sets `allow_on_headers_stop_iteration`, so Envoy keeps calling the body
        // callback while the headers wait (without it, a paused headers phase stops the body too).
        self.awaiting_body = true;
        Action::Pause
    }

    /// `GET /health`: the credential is checked like any (in xDS mode the master key is looked
    /// up), then the probes start (`health_check.rs`); the request waits for their answers.
    fn health_headers(
        &mut self,
        method: Option<&[u8]>,
        authorization: Option<Vec<u8>>,
        x_api_key: Option<Vec<u8>>,
        api_key: Option<Vec<u8>>,
    ) -> Action {
        if method != Some(b"GET") {
            return self.reject(&GatewayError::MethodNotAllowed { route: "/health", allowed: "GET" });
        }
        // A key's route check reads the route it asks for: `/health` is answered like
        // `/v1/models`, here, with no upstream and no usage record.
        self.endpoint = Some(Endpoint::Models);
        let credential = client_credential(authorization, x_api_key, api_key);
        match credential.and_then(|token| self.authenticate(&token, Endpoint::Models)) {
            Ok(Auth::Known(principal)) => {
                self.principal = Some(principal);
                self.start_health_check();
            }
            Ok(Auth::Lookup(hash, stale)) => {
                self.health_pending = true;
                if let Err(e) = self.start_lookup(hash, stale) {
                    return self.reject(&e);
                }
                if self.lookup.is_none() {
                    self.start_health_check(); // the stale entry served
                }
            }
            Err(e) => return self.reject(&e),
        }
        Action::Pause
    }

    fn authenticate(&self, token: &[u8], endpoint: Endpoint) -> Result<Auth, GatewayError> {
        if token.len() > MAX_CREDENTIAL_LEN {
            return Err(GatewayError::MalformedKey);
        }
        let hash = KeyHash::of(token);
        let config = self.config();
        if self.gateway.master_key.is_some_and(|m| m.ct_eq(&hash)) {
            return Ok(Auth::Known(Principal::Master));
        }
        // In xDS mode the master key stays with the control plane (the filter's config holds no
        // digest of it): a credential that could be one is looked up like a key, within the
        // lookup budget. A key of LiteLLM's shape is found by its digest like any key (a team
        // moving from LiteLLM keeps its keys). Anything else must be a well-formed Sluice key.
        let master_by_lookup = config.config.key_lookup.is_some()
            && self.gateway.master_key.is_none()
            && token.len() >= keys::MIN_MASTER_KEY_LEN;
        if !master_by_lookup && !keys::is_litellm_shaped(token) {
            keys::check_format(token).map_err(|_| GatewayError::MalformedKey)?;
        }
        let resolved = match config.key_position(&hash) {
            Some(index) => self.gateway.keys.get(index).cloned().ok_or(GatewayError::InvalidKey)?,
            None => {
                let Some(lookup) = config.config.key_lookup.as_ref() else {
                    return Err(GatewayError::InvalidKey);
                };
                let cached = self.gateway.key_cache.borrow().get(&hash, self.start_ms).cloned();
                match cached {
                    Some(Cached::Found(r)) => {
                        self.gateway.metrics.key_cache_hit();
                        r
                    }
                    Some(Cached::Unknown) => {
                        self.host.count("sluice.key_cache.negative_hits", 1);
                        return Err(GatewayError::InvalidKey);
                    }
                    None => match self.shared_answer(&hash, lookup.ttl_ms) {
                        Shared::Fresh(r) => r,
                        Shared::Stale(r) => return Ok(Auth::Lookup(hash, Some(r))),
                        Shared::Absent => {
                            let stale = self.gateway.key_cache.borrow().stale(&hash);
                            return Ok(Auth::Lookup(hash, stale));
                        }
                    },
                }
            }
        };
        self.check_key(&resolved, endpoint)?;
        Ok(Auth::Known(Principal::Key(resolved)))
    }

    /// The client's address against an allow-list, read from Envoy only when one applies. No
    /// address (not an IP connection) is refused: a rule that cannot be checked does not pass.
    fn check_client_ip(&self, rules: &IpRules) -> Result<(), GatewayError> {
        match self.host.source_address().as_deref().and_then(parse_client_address) {
            Some(ip) if rules.allows(ip) => Ok(()),
            Some(ip) => Err(GatewayError::IpNotAllowed { ip: ip.to_string() }),
            None => Err(GatewayError::IpNotAllowed { ip: "unknown".into() }),
        }
    }

    /// What a known key may not do, whichever way it became known.
    pub(super) fn check_key(&self, resolved: &ResolvedKey, endpoint: Endpoint) -> Result<(), GatewayError> {
        let key = &resolved.key;
        if key.blocked {
            return Err(GatewayError::KeyBlocked);
        }
        if let Some(rules) = &key.allowed_ips {
            self.check_client_ip(rules)?;
        }
        if let Some(expires) = key.expires_unix_secs {
            let now_secs = i64::try_from(self.start_ms / 1000).unwrap_or(i64::MAX);
            if now_secs >= expires {
                return Err(GatewayError::KeyExpired);
            }
        }
        if resolved.team.as_ref().is_some_and(|t| t.blocked) {
            return Err(GatewayError::TeamBlocked);
        }
        if let Some(owner) = key.owners.iter().find(|o| o.blocked) {
            return Err(GatewayError::OwnerBlocked { scope: owner.scope });
        }
        // The control plane's fleet-wide count (xDS mode): a budget spent on any Envoy is spent
        // on all of them. This Envoy's own counters still reserve and settle each request.
        let over = |spend_nanos, max_nanos| {
            FleetBudget { max_nanos, spend_nanos }
                .exceeded()
                .map(|(spent, max)| (nanos_to_usd(spent), nanos_to_usd(max)))
        };
        if let Some((spend_usd, max_budget_usd)) = over(key.fleet_spend_nanos, key.limits.max_budget_nanos) {
            return Err(GatewayError::BudgetExceeded { scope: LimitScope::Key, spend_usd, max_budget_usd });
        }
        if let Some(team) = &resolved.team
            && let Some((spend_usd, max_budget_usd)) = over(team.fleet_spend_nanos, team.limits.max_budget_nanos)
        {
            return Err(GatewayError::BudgetExceeded { scope: LimitScope::Team, spend_usd, max_budget_usd });
        }
        // The user's and the organization's budgets are counted by the control plane alone
        // (no counter here): spent on the fleet, the key is refused until the window resets.
        let owners = [
            (LimitScope::User, key.user_id.as_deref(), key.user_budget),
            (LimitScope::Organization, key.organization_id.as_deref(), key.org_budget),
        ];
        for (scope, id, budget) in owners {
            if let (Some(id), Some((spend, max))) = (id, budget.exceeded()) {
                return Err(GatewayError::OwnerBudgetExceeded {
                    scope,
                    id: id.to_owned(),
                    spend_usd: nanos_to_usd(spend),
                    max_budget_usd: nanos_to_usd(max),
                });
            }
        }
        // The user's budget in the key's team, likewise (its id names both).
        if let (Some(team), Some(user), Some((spend, max))) =
            (key.team_id.as_deref(), key.user_id.as_deref(), key.member_budget.exceeded())
        {
            return Err(GatewayError::OwnerBudgetExceeded {
                scope: LimitScope::TeamMember,
                id: sluice_core::config::member_scope_id(team, user),
                spend_usd: nanos_to_usd(spend),
                max_budget_usd: nanos_to_usd(max),
            });
        }
        if !key.routes.contains(endpoint) {
            return Err(GatewayError::RouteNotAllowed { route: endpoint.route() });
        }
        Ok(())
    }

    pub(super) fn may_use(&self, group: &str) -> bool {
        let Some(key) = self.key() else {
            return true; // the master key may use every model
        };
        key.models.allows(group)
            && self.team().is_none_or(|t| t.models.allows(group))
            && key.owners.iter().all(|o| o.models.allows(group))
    }

    /// A liveness or readiness probe (no key: Kubernetes and load balancers call these).
    fn answer_probe(&mut self, probe: Probe) {
        let json = [("content-type", "application/json")];
        match probe {
            Probe::Liveness => self.host.send_local_response(200, &json, br#""I'm alive!""#),
            Probe::Readiness => {
                let readiness = health::readiness(&self.host);
                let status = if readiness.ready() { 200 } else { 503 };
                self.host.send_local_response(status, &json, &readiness.body());
            }
        }
    }

    /// `GET /v1/models`: the model groups and aliases this key may use, answered without an
    /// upstream.
    pub(super) fn answer_models(&mut self) {
        #[derive(serde::Serialize)]
        struct Model<'a> {
            id: &'a str,
            object: &'static str,
            created: u64,
            owned_by: &'static str,
        }
        let config = self.config();
        let data: Vec<Model<'_>> = config
            .listed_models
            .iter()
            .filter(|(name, group)| {
                self.may_use(name) || config.groups.get(*group).is_some_and(|g| self.may_use(&g.name))
            })
            .map(|(name, _)| Model { id: name, object: "model", created: 0, owned_by: "sluice" })
            .collect();
        let body = serde_json::to_vec(&serde_json::json!({ "object": "list", "data": data })).unwrap_or_default();
        self.rejected = true; // answered locally: no upstream, no usage record
        self.host.send_local_response(200, &[("content-type", "application/json")], &body);
    }
}
