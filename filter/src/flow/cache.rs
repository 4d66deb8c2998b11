//! The response cache (`sluice_core::cache`), between admission and the upstream: an admitted
//! request whose answer is in this Envoy's shared data is answered from it (no upstream, a
//! usage record with `cache_hit` and no cost); otherwise the answer the client gets is copied
//! as it passes and stored once it has ended whole.
//!
//! A hit is admitted like any request first (LiteLLM checks keys, limits and budgets before
//! its cache too): it counts against RPM and TPM with its original tokens, and its reservation
//! is settled at $0.

use sluice_core::cache::{
    CACHE_KEY_HEADER, CACHE_STATUS_HEADER, CacheConfig, CacheKey, CacheScope, Entry, EntryForm, cache_key,
};
use sluice_core::request::LlmRequest;

use super::*;

/// What the cache does for one request.
#[derive(Default)]
pub(super) enum CacheState {
    /// Not cached: no cache, a route or request it does not apply to.
    #[default]
    Off,
    /// Answered from the cache; the usage its entry was billed for the first time.
    Hit(Usage),
    /// Not answered from the cache: the key it was looked up under (a response header), and
    /// the copy of the answer to store (None: `no-store`).
    Miss { key_header: String, fill: Option<Fill> },
}

impl CacheState {
    /// The usage of the stored answer this request was given, if it was answered from the cache.
    pub(super) fn hit(&self) -> Option<Usage> {
        match self {
            CacheState::Hit(usage) => Some(*usage),
            _ => None,
        }
    }
}

/// The answer being copied for the cache.
pub(super) struct Fill {
    slot: String,
    key: CacheKey,
    ttl_ms: u64,
    form: EntryForm,
    limit: usize,
    content_type: Vec<u8>,
    body: Vec<u8>,
    overflow: bool,
}

impl Fill {
    /// The content type the client was sent (an answer the filter made itself).
    pub(super) fn set_content_type(&mut self, content_type: &[u8]) {
        self.content_type = content_type.to_vec();
    }

    /// Appends bytes the client was sent, up to the entry size limit (past it: nothing stored).
    pub(super) fn push(&mut self, bytes: &[u8]) {
        if self.overflow {
            return;
        }
        if self.body.len().saturating_add(bytes.len()) > self.limit {
            self.overflow = true;
            self.body = Vec::new();
        } else {
            self.body.extend_from_slice(bytes);
        }
    }
}

/// The tenant whose answers a request may read: its key, or its team's keys under
/// `scope: team`, and the end user under `semantic_cache_scope: end_user`. None: not cached
/// (a key admitted unverified while the control plane was away).
fn tenant(principal: Option<&Principal>, config: &CacheConfig, end_user: Option<&str>) -> Option<String> {
    let mut tenant = match principal? {
        Principal::Master => "master".to_owned(),
        Principal::Key(resolved) => match (config.scope, resolved.key.team_id.as_deref()) {
            (CacheScope::Team, Some(team)) => format!("team:{team}"),
            _ => format!("key:{}", resolved.key.key_id),
        },
        Principal::Unverified(_) => return None,
    };
    if config.per_end_user {
        tenant.push_str("\nend_user:");
        tenant.push_str(end_user.unwrap_or(""));
    }
    Some(tenant)
}

impl<H: Host> RequestFlow<H> {
    /// Looks the admitted request up. True when it was answered here from the cache; false
    /// when it goes upstream (its answer copied for the cache where it may be stored). Cannot
    /// fail: the request's controls were checked before it was admitted.
    pub(super) fn consult_cache(
        &mut self,
        gateway: &Gateway,
        group: &str,
        body: &[u8],
        req: &LlmRequest<'_>,
        form: EntryForm,
        end_user: Option<&str>,
    ) -> bool {
        let Some(config) = gateway.config.config.cache.as_ref() else { return false };
        let Some(endpoint) = self.endpoint.filter(|e| config.caches(*e) && !self.failover_pass) else {
            return false;
        };
        // The key's own controls replace the body's (LiteLLM's key-level controls), then the
        // header's directives are added (all checked already).
        let key_control = match self.principal.as_ref() {
            Some(Principal::Key(resolved)) => resolved.key.cache_control.clone(),
            _ => None,
        };
        let mut control = key_control.or_else(|| req.cache_control.clone()).unwrap_or_default();
        if let Some(header) = self.header_cache_control.take() {
            control.no_cache |= header.no_cache;
            control.no_store |= header.no_store;
            control.max_age_ms = control.max_age_ms.or(header.max_age_ms);
        }
        if config.mode == sluice_core::cache::CacheMode::DefaultOff && !control.use_cache {
            return false;
        }
        let Some(tenant) = tenant(self.principal.as_ref(), config, end_user) else { return false };
        let namespace = control.namespace.as_deref().or(config.namespace.as_deref());
        let Some(key) = cache_key(config, &tenant, namespace, group, endpoint, body) else { return false };
        // LiteLLM's header: the key, after its namespace.
        let key_header = match namespace {
            Some(ns) => format!("{ns}:{}", key.to_hex()),
            None => key.to_hex(),
        };
        let slot = config.slot_of(&key);
        if !control.no_cache {
            let now = self.host.now_ms();
            if let (Some(bytes), _) = self.host.shared_get(&slot)
                && let Some(entry) = Entry::decode(&bytes)
            {
                if entry.answers(&key, now, control.max_age_ms, form) {
                    let content_type = String::from_utf8_lossy(&entry.content_type);
                    let headers = [
                        ("content-type", content_type.as_ref()),
                        (CACHE_STATUS_HEADER, "hit"),
                        (CACHE_KEY_HEADER, key_header.as_str()),
                    ];
                    self.host.send_local_response(200, &headers, &entry.body);
                    self.status = 200;
                    self.response_complete = true;
                    self.cache = CacheState::Hit(entry.usage);
                    gateway.metrics.cache(true);
                    return true;
                }
                if entry.key == key && now >= entry.expires_ms {
                    // Expired: free its memory now rather than when the slot is next written.
                    self.host.shared_set(&slot, &[], None);
                }
            }
        }
        gateway.metrics.cache(false);
        let ttl_ms = control.ttl_ms.unwrap_or(config.ttl_secs.saturating_mul(1000));
        let fill = (!control.no_store && ttl_ms > 0).then(|| Fill {
            slot,
            key,
            ttl_ms,
            form,
            limit: usize::try_from(config.max_item_bytes).unwrap_or(usize::MAX),
            content_type: Vec::new(),
            body: Vec::new(),
            overflow: false,
        });
        self.cache = CacheState::Miss { key_header, fill };
        false
    }

    /// The response's headers on a miss: say so, and keep the content type for the entry (an
    /// error is never stored).
    pub(super) fn cache_response_headers(&mut self, content_type: &[u8]) {
        let CacheState::Miss { key_header, fill } = &mut self.cache else { return };
        self.host.add_response_header(CACHE_STATUS_HEADER, b"miss");
        self.host.add_response_header(CACHE_KEY_HEADER, key_header.as_bytes());
        if !(200..300).contains(&self.status) {
            *fill = None;
        } else if let Some(fill) = fill {
            fill.content_type = content_type.to_vec();
        }
    }

    /// At the end of a request that went upstream: stores its answer if it ended whole. A
    /// non-streamed answer is the response tap's copy (`json`), a stream the fill's own.
    pub(super) fn store_in_cache(&mut self, usage: Usage, outcome: Outcome, estimated: bool, json: Option<Vec<u8>>) {
        let CacheState::Miss { fill: Some(mut fill), .. } = std::mem::take(&mut self.cache) else { return };
        if outcome != Outcome::Completed || estimated || !(200..300).contains(&self.status) {
            return;
        }
        if let Some(json) = json {
            fill.body = Vec::new();
            fill.push(&json);
        }
        if fill.overflow || fill.body.is_empty() {
            return;
        }
        let now = self.host.now_ms();
        let entry = Entry {
            key: fill.key,
            stored_ms: now,
            expires_ms: now.saturating_add(fill.ttl_ms),
            form: fill.form,
            usage,
            content_type: std::borrow::Cow::Borrowed(&fill.content_type),
            body: std::borrow::Cow::Borrowed(&fill.body),
        };
        if self.host.shared_set(&fill.slot, &entry.encode(), None) == crate::host::CasResult::Failed {
            self.host.log(LogLevel::Warn, "sluice: could not store a response in the cache (shared data)");
        }
    }

    /// The fill of a stream or a translated answer, if this request has one.
    pub(super) fn cache_fill(cache: &mut CacheState) -> Option<&mut Fill> {
        match cache {
            CacheState::Miss { fill: Some(fill), .. } => Some(fill),
            _ => None,
        }
    }
}
