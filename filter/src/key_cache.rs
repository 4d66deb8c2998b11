//! Keys looked up in the control plane, cached per worker: found keys for the config's
//! `ttl_ms`, unknown ones for `negative_ttl_ms` (so a flood of bad keys stays in Envoy). The
//! control plane's pushes (`WatchInvalidations`, relayed by the singleton) drop entries early.
//! Bounded: a flood of distinct well-formed keys cannot grow it past [`CAPACITY`].

use std::collections::HashMap;
use std::rc::Rc;

use sluice_core::config::ResolvedKey;
use sluice_core::keys::KeyHash;

/// Entries per worker.
pub const CAPACITY: usize = 10_000;

#[derive(Debug, Clone)]
pub enum Cached {
    Found(Rc<ResolvedKey>),
    Unknown,
}

#[derive(Debug, Default)]
pub struct KeyCache {
    entries: HashMap<KeyHash, (Cached, u64)>,
}

impl KeyCache {
    /// The entry for a digest, unless it has expired.
    pub fn get(&self, hash: &KeyHash, now_ms: u64) -> Option<&Cached> {
        self.entries.get(hash).filter(|(_, expires)| now_ms < *expires).map(|(c, _)| c)
    }

    pub fn insert(&mut self, hash: KeyHash, entry: Cached, now_ms: u64, ttl_ms: u64) {
        if self.entries.len() >= CAPACITY && !self.entries.contains_key(&hash) {
            self.entries.retain(|_, (_, expires)| now_ms < *expires);
            if self.entries.len() >= CAPACITY {
                // Still full of live entries: start over (each costs one lookup to refill).
                self.entries.clear();
            }
        }
        self.entries.insert(hash, (entry, now_ms.saturating_add(ttl_ms)));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops the key with this control-plane id (every digest of it: a rotated key has two).
    pub fn invalidate_key(&mut self, key_id: &str) {
        self.entries.retain(|_, (c, _)| !matches!(c, Cached::Found(r) if r.key.key_id == key_id));
    }

    /// Drops every key of a team.
    pub fn invalidate_team(&mut self, team_id: &str) {
        self.entries.retain(|_, (c, _)| !matches!(c, Cached::Found(r) if r.key.team_id.as_deref() == Some(team_id)));
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }
}
