//! Keys looked up in the control plane, at two levels:
//!
//! - [`KeyCache`], per worker: compiled keys for the config's `ttl_ms`, unknown ones for
//!   `negative_ttl_ms` (so a flood of bad keys stays in Envoy). A hit costs no host call.
//!   Bounded: a flood of distinct well-formed keys cannot grow it past [`CAPACITY`].
//! - [`SharedEntry`], in Envoy's shared data (every worker): the control plane's answer for a
//!   found key, so a key one worker looked up is known to all, and keeps working on every
//!   worker while the control plane is down. Unknown keys are never written there (shared data
//!   only shrinks when entries are removed, so a flood of bad keys must not reach it).
//!
//! The control plane's pushes (`WatchInvalidations`, relayed by the singleton) drop entries
//! early: from the worker caches directly, and for shared entries by their sequence number (an
//! entry written before an invalidation that names its key or team is ignored).

use std::collections::HashMap;
use std::rc::Rc;

use sluice_core::config::ResolvedKey;
use sluice_core::keys::KeyHash;

/// Entries per worker.
pub const CAPACITY: usize = 10_000;
/// Invalidation lines a worker remembers, to judge shared entries by.
const RECENT: usize = 256;

/// Shared-data name of a digest's entry.
pub fn shared_key(hash: &KeyHash) -> String {
    format!("sluice:key:{}", hash.to_hex())
}

/// A found key as stored in shared data: when it was fetched, the invalidation position of the
/// worker that wrote it, and the control plane's answer (protobuf `KeyLookupResponse`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedEntry {
    pub fetched_ms: u64,
    pub seq: u64,
    pub answer: Vec<u8>,
}

impl SharedEntry {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.answer.len());
        out.extend_from_slice(&self.fetched_ms.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.answer);
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let fetched_ms = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
        let seq = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
        Some(Self { fetched_ms, seq, answer: bytes.get(16..)?.to_vec() })
    }
}

/// What a worker has applied of the singleton's invalidation log.
#[derive(Debug, Default)]
pub struct Invalidations {
    pub seq: u64,
    /// Recent lines: (seq, kind, id); kind `r` = everything.
    recent: Vec<(u64, char, String)>,
}

impl Invalidations {
    pub fn record(&mut self, seq: u64, kind: char, id: &str) {
        self.recent.push((seq, kind, id.to_owned()));
        let excess = self.recent.len().saturating_sub(RECENT);
        self.recent.drain(..excess);
    }

    /// Whether an entry written at `written_seq` for this key and team may still be trusted.
    pub fn still_valid(&self, written_seq: u64, key_id: &str, team_id: Option<&str>) -> bool {
        if let Some((oldest, _, _)) = self.recent.first()
            && written_seq + 1 < *oldest
            && written_seq < self.seq
        {
            return false; // older than anything remembered: cannot tell
        }
        !self.recent.iter().filter(|(seq, _, _)| *seq > written_seq).any(|(_, kind, id)| match kind {
            'k' => id == key_id,
            't' => Some(id.as_str()) == team_id,
            _ => true,
        })
    }
}

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

    /// A found key past its TTL: served only while the control plane cannot be asked.
    pub fn stale(&self, hash: &KeyHash) -> Option<Rc<ResolvedKey>> {
        match self.entries.get(hash) {
            Some((Cached::Found(r), _)) => Some(Rc::clone(r)),
            _ => None,
        }
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
