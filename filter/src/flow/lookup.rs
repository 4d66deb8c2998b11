//! A key this Envoy has not seen (xDS mode): another worker's answer from shared data, or a
//! gRPC call to the control plane within the lookup budget, with the stale entry or
//! `fail_open` when it cannot answer.

use super::*;

/// A key lookup in flight for this request.
pub(super) struct PendingLookup {
    token: u32,
    hash: KeyHash,
    stale: Option<Rc<ResolvedKey>>,
}

/// What another worker left in shared data for a digest.
pub(super) enum Shared {
    Fresh(Rc<ResolvedKey>),
    Stale(Rc<ResolvedKey>),
    Absent,
}

type Answer = (KeyConfig, Option<TeamConfig>);

/// The control plane's answer: the key and its team, or None for an unknown key.
fn parse_answer(bytes: &[u8]) -> Result<Option<Answer>, ()> {
    answer_of(&KeyLookupResponse::decode(bytes).map_err(|_| ())?)
}

fn answer_of(answer: &KeyLookupResponse) -> Result<Option<Answer>, ()> {
    if answer.key_json.is_empty() {
        return Ok(None);
    }
    let key: KeyConfig = serde_json::from_str(&answer.key_json).map_err(|_| ())?;
    let team = if answer.team_json.is_empty() {
        None
    } else {
        Some(serde_json::from_str::<TeamConfig>(&answer.team_json).map_err(|_| ())?)
    };
    Ok(Some((key, team)))
}

impl<H: Host> RequestFlow<H> {
    /// Another worker's answer for this digest, from shared data, unless an invalidation has
    /// named its key or team since it was written (after a reset it is only a fallback). A
    /// fresh one joins this worker's cache.
    pub(super) fn shared_answer(&self, hash: &KeyHash, ttl_ms: u64) -> Shared {
        let Some(entry) = read_shared(&self.host, hash) else { return Shared::Absent };
        let Ok(Some((key, team))) = parse_answer(&entry.answer) else { return Shared::Absent };
        if key.key_hash != Some(*hash) {
            return Shared::Absent;
        }
        let Ok(resolved) = self.config().compile_looked_up(&key, team.as_ref()) else { return Shared::Absent };
        let verdict = self.gateway.invalidations.borrow().judge(entry.seq, &resolved.key);
        let resolved = Rc::new(resolved);
        let age = self.start_ms.saturating_sub(entry.fetched_ms);
        match verdict {
            Verdict::Revoked => return Shared::Absent,
            Verdict::Unconfirmed => return Shared::Stale(resolved),
            Verdict::Valid if age >= ttl_ms => return Shared::Stale(resolved),
            Verdict::Valid => {}
        }
        self.host.count("sluice.key_cache.shared_hits", 1);
        let cached = Cached::Found(Rc::clone(&resolved));
        self.gateway.key_cache.borrow_mut().insert(*hash, cached, self.start_ms, ttl_ms - age);
        Shared::Fresh(resolved)
    }

    /// Asks the control plane about a key no worker has fresh; the request waits. Unless the
    /// worker's lookup budget, or this client's, is spent: then a key known from before serves
    /// from cache and any other is refused (429; a real key gets in on retry).
    pub(super) fn start_lookup(&mut self, hash: KeyHash, stale: Option<Rc<ResolvedKey>>) -> Result<(), GatewayError> {
        if let Err(refused) = self.take_lookup_token() {
            return self.lookup_refused(hash, stale, refused);
        }
        let Some(lookup) = self.config().config.key_lookup.as_ref() else {
            return Err(GatewayError::InvalidKey);
        };
        let message = KeyLookupRequest { key_hash: format!("sha256:{}", hash.to_hex()) }.encode_to_vec();
        self.host.count("sluice.key_lookups", 1);
        match self.host.dispatch_grpc(&lookup.cluster, KEY_LOOKUP_SERVICE, "Lookup", &message, lookup.timeout_ms) {
            Some(token) => {
                self.lookup = Some(PendingLookup { token, hash, stale });
                Ok(())
            }
            None => self.lookup_failed(hash, stale),
        }
    }

    /// A token from the worker's lookup budget and the client's. The client's address is read
    /// here, so only a request that would cost a lookup pays for the property read.
    fn take_lookup_token(&self) -> Result<(), Refused> {
        let Some(budget) = &self.gateway.lookup_budget else { return Ok(()) };
        let mut budget = budget.borrow_mut();
        let source =
            budget.per_source().then(|| self.host.source_address().map_or(Source::UNKNOWN, |a| Source::of_address(&a)));
        budget.try_start(source, self.start_ms)
    }

    /// No lookup may start now. A key known before (past its TTL, or awaiting confirmation
    /// after a reset; never a revoked one) keeps working, as through an outage; any other key
    /// is refused with a 429, whatever `fail_open` says (a flood must not be admitted).
    fn lookup_refused(
        &mut self,
        hash: KeyHash,
        stale: Option<Rc<ResolvedKey>>,
        refused: Refused,
    ) -> Result<(), GatewayError> {
        self.gateway.metrics.lookup_refused();
        match stale {
            Some(known) => self.serve_stale(hash, known),
            None => Err(GatewayError::KeyLookupRateLimited { retry_after_secs: refused.retry_after_secs() }),
        }
    }

    /// Serves a key known from before without asking (for a few seconds, then it asks again).
    fn serve_stale(&mut self, hash: KeyHash, known: Rc<ResolvedKey>) -> Result<(), GatewayError> {
        let endpoint = self.endpoint.ok_or(GatewayError::Internal { detail: "no endpoint" })?;
        let retry = Cached::Found(Rc::clone(&known));
        self.gateway.key_cache.borrow_mut().insert(hash, retry, self.host.now_ms(), STALE_RETRY_MS);
        self.check_key(&known, endpoint)?;
        self.host.count("sluice.key_cache.stale_served", 1);
        self.principal = Some(Principal::Key(known));
        Ok(())
    }

    /// The control plane could not answer. A key known before (past its TTL) keeps working;
    /// otherwise refuse (fail closed, not cached, so the next request asks again), or with
    /// `fail_open` admit the key without limits.
    fn lookup_failed(&mut self, hash: KeyHash, stale: Option<Rc<ResolvedKey>>) -> Result<(), GatewayError> {
        self.host.count("sluice.key_lookup_failures", 1);
        if let Some(known) = stale {
            return self.serve_stale(hash, known);
        }
        let fail_open = self.config().config.key_lookup.as_ref().is_some_and(|l| l.fail_open);
        if !fail_open {
            return Err(GatewayError::KeyServiceUnavailable);
        }
        self.host.log(LogLevel::Warn, "sluice: key service unreachable; admitting a key unchecked (fail_open)");
        self.principal = Some(Principal::Unverified(hash));
        Ok(())
    }

    /// A gRPC answer for this request (Envoy routes it to the context that made the call).
    pub fn on_grpc_response(&mut self, token: u32, status: u32, size: usize) {
        let Some(pending) = self.lookup.take_if(|l| l.token == token) else {
            return;
        };
        let Some(endpoint) = self.endpoint else {
            return;
        };
        let Some(lookup) = self.config().config.key_lookup.clone() else {
            return;
        };
        let now = self.host.now_ms();
        let bytes = if status == GRPC_OK { self.host.grpc_response(size).unwrap_or_default() } else { Vec::new() };
        let decoded =
            if status == GRPC_OK { KeyLookupResponse::decode(bytes.as_slice()).map_err(|_| ()) } else { Err(()) };
        let parsed = decoded.as_ref().map_err(|_| ()).and_then(answer_of);
        let resolved = match parsed {
            Ok(Some((key, team))) if key.key_hash == Some(pending.hash) => {
                match self.config().compile_looked_up(&key, team.as_ref()) {
                    Ok(r) => Some(Rc::new(r)),
                    Err(errors) => {
                        let detail: Vec<String> = errors.iter().map(ToString::to_string).collect();
                        self.host.log(
                            LogLevel::Error,
                            &format!("sluice: unusable key from the control plane: {}", detail.join("; ")),
                        );
                        None
                    }
                }
            }
            Ok(Some(_)) => None, // an answer about another key: never trusted
            Ok(None) => {
                self.gateway.key_cache.borrow_mut().insert(pending.hash, Cached::Unknown, now, lookup.negative_ttl_ms);
                if !self.rejected {
                    self.reject(&GatewayError::InvalidKey);
                }
                return;
            }
            Err(()) => None,
        };
        match resolved {
            Some(r) => {
                // Its limited scopes (an unlimited one is never admitted on, so it gets no
                // record in shared data).
                let names = || {
                    std::iter::once(&r.key)
                        .filter(|k| !k.limits.is_unlimited())
                        .map(|k| &k.counter_name)
                        .chain(r.key.model_limits.values().map(|m| &m.counter_name))
                        .chain(r.team.as_ref().filter(|t| !t.limits.is_unlimited()).map(|t| &t.counter_name))
                };
                // What the rest of the fleet counted on them this minute, so that this Envoy's
                // first requests with the key are limited like its later ones. Only this key's
                // own counters: the answer names shared-data entries.
                if let Ok(answer) = &decoded {
                    for counts in answer.fleet_counts.iter().filter(|c| names().any(|n| *n == c.scope)) {
                        counters::set_fleet_total(
                            &self.host,
                            &counts.scope,
                            answer.fleet_window,
                            counts.requests,
                            counts.tokens,
                        );
                    }
                }
                // Every worker may use this answer (and keep using it through an outage).
                let seq = self.gateway.invalidations.borrow().seq;
                write_shared(&self.host, &SharedEntry { fetched_ms: now, seq, hash: pending.hash, answer: bytes });
                self.gateway.key_cache.borrow_mut().insert(
                    pending.hash,
                    Cached::Found(Rc::clone(&r)),
                    now,
                    lookup.ttl_ms,
                );
                if self.rejected {
                    return; // refused meanwhile (its body was too large): the answer is only cached
                }
                if let Err(e) = self.check_key(&r, endpoint) {
                    self.reject(&e);
                    return;
                }
                self.principal = Some(Principal::Key(r));
            }
            None if self.rejected => return,
            None => {
                if let Err(e) = self.lookup_failed(pending.hash, pending.stale) {
                    self.reject(&e);
                    return;
                }
            }
        }
        if self.health_pending {
            self.start_health_check();
        } else if endpoint == Endpoint::Models {
            self.answer_models();
        } else if let Some(body_size) = self.body_ready.take() {
            // The body is all here: route now, then let the request go.
            if self.route_body(body_size) == Action::Continue {
                self.host.resume_request();
            }
        }
        // Otherwise the body is still arriving; its last callback routes as usual.
    }
}
