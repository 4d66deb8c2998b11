//! Keys looked up in the control plane, at two levels:
//!
//! - [`KeyCache`], per worker: compiled keys for the config's `ttl_ms`, unknown ones for
//!   `negative_ttl_ms` (so a flood of bad keys stays in Envoy). A hit costs no host call.
//!   Bounded: a flood of distinct well-formed keys cannot grow it past [`CAPACITY`].
//! - [`SharedEntry`], in Envoy's shared data (every worker): the control plane's answer for a
//!   found key, so a key one worker looked up is known to all, and keeps working on every
//!   worker while the control plane is down. Unknown keys are never written there. Proxy-wasm
//!   cannot remove a shared-data entry, so entries live in a fixed set of slots
//!   ([`SHARED_SLOTS`], two candidates per key) that are overwritten, never added: the memory
//!   is bounded whatever the number of distinct keys an Envoy serves over its life.
//!
//! The control plane's pushes (`WatchInvalidations`, relayed by the singleton) drop entries
//! early: from the worker caches directly, and for shared entries by their sequence number (an
//! entry written before an invalidation that names its key, team, user or organization is
//! ignored).

use std::collections::HashMap;
use std::rc::Rc;

use sluice_core::config::{CompiledKey, ResolvedKey};
use sluice_core::keys::KeyHash;

use crate::host::Host;

/// Entries per worker.
pub const CAPACITY: usize = 10_000;
/// Invalidation lines a worker remembers, to judge shared entries by.
const RECENT: usize = 256;

/// Shared-data slots for found keys' answers. An answer is ~0.5 KB, so at most ~16 MB per
/// Envoy; past this many keys in use at once, the less recently fetched of a key's two slots
/// is replaced (that key is then looked up again by the next worker that needs it).
pub const SHARED_SLOTS: u32 = 32_768;

/// The two shared-data slots a digest's answer may live in (two choices: a key is displaced
/// only when both hold other keys, which stays rare far below [`SHARED_SLOTS`] keys).
pub fn shared_slots(hash: &KeyHash) -> [String; 2] {
    let slot = |i: usize| {
        let bytes = [hash.0[i], hash.0[i + 1], hash.0[i + 2], hash.0[i + 3]];
        u32::from_le_bytes(bytes) % SHARED_SLOTS
    };
    [format!("sluice:key:{}", slot(0)), format!("sluice:key:{}", slot(4))]
}

/// The shared answer for `hash`, from whichever of its slots holds it.
pub fn read_shared<H: Host>(host: &H, hash: &KeyHash) -> Option<SharedEntry> {
    shared_slots(hash).iter().find_map(|slot| {
        let bytes = host.shared_get(slot).0?;
        SharedEntry::decode(&bytes).filter(|e| e.hash == *hash)
    })
}

/// Stores `entry` in the slot that already holds its key, else an empty one, else the one
/// whose answer is older.
pub fn write_shared<H: Host>(host: &H, entry: &SharedEntry) {
    let [a, b] = shared_slots(&entry.hash);
    let fetched = |slot: &str| -> Option<(bool, u64)> {
        let bytes = host.shared_get(slot).0?;
        SharedEntry::decode(&bytes).map(|e| (e.hash == entry.hash, e.fetched_ms))
    };
    let slot = match (fetched(&a), fetched(&b)) {
        (Some((true, _)), _) | (None, _) => a,
        (_, Some((true, _)) | None) => b,
        (Some((_, at_a)), Some((_, at_b))) => {
            if at_a <= at_b {
                a
            } else {
                b
            }
        }
    };
    host.shared_set(&slot, &entry.encode(), None);
}

/// A found key as stored in shared data: when it was fetched, the invalidation position of the
/// worker that wrote it, its digest (whose slot it is), and the control plane's answer
/// (protobuf `KeyLookupResponse`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedEntry {
    pub fetched_ms: u64,
    pub seq: u64,
    pub hash: KeyHash,
    pub answer: Vec<u8>,
}

impl SharedEntry {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48 + self.answer.len());
        out.extend_from_slice(&self.fetched_ms.to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.hash.0);
        out.extend_from_slice(&self.answer);
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let fetched_ms = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
        let seq = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
        let hash = KeyHash(bytes.get(16..48)?.try_into().ok()?);
        Some(Self { fetched_ms, seq, hash, answer: bytes.get(48..)?.to_vec() })
    }
}

/// What a worker has applied of the singleton's invalidation log.
#[derive(Debug, Default)]
pub struct Invalidations {
    pub seq: u64,
    /// Recent lines: (seq, kind, id); kind `k` key, `t` team, `u` user, `o` organization,
    /// `r` = everything.
    recent: Vec<(u64, char, String)>,
}

impl Invalidations {
    pub fn record(&mut self, seq: u64, kind: char, id: &str) {
        self.recent.push((seq, kind, id.to_owned()));
        let excess = self.recent.len().saturating_sub(RECENT);
        self.recent.drain(..excess);
    }

    /// What an entry written at `written_seq` for this key (and its team, user and
    /// organization) is worth now.
    pub fn judge(&self, written_seq: u64, key: &CompiledKey) -> Verdict {
        if let Some((oldest, _, _)) = self.recent.first()
            && written_seq + 1 < *oldest
            && written_seq < self.seq
        {
            return Verdict::Revoked; // older than anything remembered: cannot tell, so never trusted
        }
        let mut verdict = Verdict::Valid;
        for (_, kind, id) in self.recent.iter().filter(|(seq, _, _)| *seq > written_seq) {
            match named_by(key, *kind) {
                Named::Id(named) if named == Some(id.as_str()) => return Verdict::Revoked,
                Named::Id(_) => {}
                Named::Everything => verdict = Verdict::Unconfirmed,
            }
        }
        verdict
    }
}

/// What an invalidation line of `kind` names on a key.
enum Named<'a> {
    /// The key's own id (`k`), or its team's (`t`), user's (`u`), organization's (`o`).
    Id(Option<&'a str>),
    /// Every key (`r`, a reset).
    Everything,
}

fn named_by(key: &CompiledKey, kind: char) -> Named<'_> {
    Named::Id(match kind {
        'k' => Some(key.key_id.as_str()),
        't' => key.team_id.as_deref(),
        'u' => key.user_id.as_deref(),
        'o' => key.organization_id.as_deref(),
        _ => return Named::Everything,
    })
}

/// How far a cached answer may be trusted after invalidations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Valid,
    /// A reset happened since (a new watch, a restarted control plane): ask again, but it may
    /// still serve while the control plane cannot be asked.
    Unconfirmed,
    /// Its key or team changed since: never serve it.
    Revoked,
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
            self.make_room(now_ms);
        }
        self.entries.insert(hash, (entry, now_ms.saturating_add(ttl_ms)));
    }

    /// Frees at least a tenth of the cache, so its scans run at most once per thousand
    /// inserts: expired entries go first, then unknown keys (a flood of made-up keys must not
    /// push out the real ones), and only if real keys alone fill it, everything (each then
    /// costs one lookup, or one shared-data read, to come back).
    fn make_room(&mut self, now_ms: u64) {
        let target = CAPACITY - CAPACITY / 10;
        self.entries.retain(|_, (_, expires)| now_ms < *expires);
        if self.entries.len() > target {
            self.entries.retain(|_, (c, _)| matches!(c, Cached::Found(_)));
        }
        if self.entries.len() > target {
            self.entries.clear();
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops one digest's entry, found or unknown (a revocation that names the digest).
    pub fn invalidate_digest(&mut self, hash: &KeyHash) -> bool {
        self.entries.remove(hash).is_some()
    }

    /// Drops the keys an invalidation line names: `k` the key with this control-plane id
    /// (every digest of it: a rotated key has two), `t`/`u`/`o` every key of this team, user
    /// or organization (the key's own, or its team's). Other kinds drop nothing here.
    pub fn invalidate(&mut self, kind: char, id: &str) {
        self.entries.retain(|_, (c, _)| {
            !matches!(c, Cached::Found(r) if matches!(named_by(&r.key, kind), Named::Id(Some(named)) if named == id))
        });
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// After a reset: every found key must be confirmed again before it serves, but stays as a
    /// fallback for an outage; unknown entries go.
    pub fn expire_all(&mut self, now_ms: u64) {
        self.entries.retain(|_, (c, expires)| {
            *expires = (*expires).min(now_ms);
            matches!(c, Cached::Found(_))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::config::{CompiledConfig, GatewayConfig, KeyConfig, SCHEMA_VERSION, TeamConfig};

    const NOW: u64 = 1_000_000;

    fn found(seed: u32, team: Option<&str>) -> (KeyHash, Cached) {
        found_owned(seed, team, None, None)
    }

    fn found_owned(seed: u32, team: Option<&str>, user: Option<&str>, org: Option<&str>) -> (KeyHash, Cached) {
        let hash = KeyHash::of(&seed.to_le_bytes());
        let config: GatewayConfig =
            serde_json::from_value(serde_json::json!({"schema_version": SCHEMA_VERSION})).expect("an empty config");
        let compiled = CompiledConfig::compile(config).expect("valid");
        let key = KeyConfig {
            key_hash: Some(hash),
            key_id: Some(format!("key_{seed}")),
            team_id: team.map(str::to_owned),
            user_id: user.map(str::to_owned),
            organization_id: org.map(str::to_owned),
            ..KeyConfig::default()
        };
        let team = team.map(|t| TeamConfig { team_id: t.to_owned(), ..TeamConfig::default() });
        let resolved = compiled.compile_looked_up(&key, team.as_ref()).expect("valid key");
        (hash, Cached::Found(Rc::new(resolved)))
    }

    fn unknown(seed: u32) -> KeyHash {
        KeyHash::of(&(u64::from(seed) << 32).to_le_bytes())
    }

    #[test]
    fn entries_live_for_their_ttl() {
        let mut cache = KeyCache::default();
        let (k, entry) = found(1, None);
        cache.insert(k, entry, NOW, 60_000);
        cache.insert(unknown(1), Cached::Unknown, NOW, 5_000);
        assert!(matches!(cache.get(&k, NOW + 59_999), Some(Cached::Found(_))));
        assert!(cache.get(&k, NOW + 60_000).is_none(), "expired");
        assert!(cache.stale(&k).is_some(), "but kept as a fallback for an outage");
        assert!(matches!(cache.get(&unknown(1), NOW + 4_999), Some(Cached::Unknown)));
        assert!(cache.get(&unknown(1), NOW + 5_000).is_none());
        assert!(cache.stale(&unknown(1)).is_none(), "unknown keys are never served stale");
    }

    #[test]
    fn invalidation_drops_a_digest_a_key_a_team_or_everything() {
        let mut cache = KeyCache::default();
        for (seed, team) in [(1, None), (2, Some("ml")), (3, Some("ml")), (4, None)] {
            let (k, e) = found(seed, team);
            cache.insert(k, e, NOW, 60_000);
        }
        cache.insert(unknown(1), Cached::Unknown, NOW, 5_000);
        assert!(cache.invalidate_digest(&unknown(1)));
        assert!(!cache.invalidate_digest(&unknown(1)), "already gone");
        assert!(cache.invalidate_digest(&found(4, None).0));
        cache.invalidate('k', "key_1");
        assert!(cache.get(&found(1, None).0, NOW).is_none());
        assert_eq!(cache.len(), 2);
        cache.invalidate('t', "ml");
        assert!(cache.is_empty());
        let (k, e) = found(5, None);
        cache.insert(k, e, NOW, 60_000);
        cache.clear();
        assert!(cache.is_empty());
    }

    #[test]
    fn invalidation_drops_every_key_of_a_user_or_an_organization() {
        let mut cache = KeyCache::default();
        let keys = [
            found_owned(1, None, Some("alice"), None),
            found_owned(2, Some("ml"), Some("alice"), Some("acme")),
            found_owned(3, Some("ml"), Some("bob"), Some("acme")),
            found_owned(4, None, Some("bob"), Some("other")),
        ];
        for (k, e) in &keys {
            cache.insert(*k, e.clone(), NOW, 60_000);
        }
        cache.invalidate('u', "alice");
        let left = |cache: &KeyCache| keys.iter().map(|(k, _)| cache.get(k, NOW).is_some()).collect::<Vec<_>>();
        assert_eq!(left(&cache), [false, false, true, true]);
        cache.invalidate('o', "acme");
        assert_eq!(left(&cache), [false, false, false, true]);

        // A shared entry written before a line naming its user or organization is revoked.
        let Cached::Found(r) = &keys[2].1 else { unreachable!() };
        let mut inv = Invalidations::default();
        inv.record(5, 'u', "alice");
        assert_eq!(inv.judge(4, &r.key), Verdict::Valid, "another user");
        inv.record(6, 'o', "acme");
        assert_eq!(inv.judge(4, &r.key), Verdict::Revoked);
        assert_eq!(inv.judge(6, &r.key), Verdict::Valid, "written after the line");
    }

    #[test]
    fn a_flood_of_unknown_keys_is_bounded_and_keeps_the_real_ones() {
        let mut cache = KeyCache::default();
        let real: Vec<_> = (0..100).map(|i| found(i, None)).collect();
        for (k, e) in &real {
            cache.insert(*k, e.clone(), NOW, 60_000);
        }
        for i in 0..(3 * CAPACITY as u32) {
            cache.insert(unknown(i), Cached::Unknown, NOW, 5_000);
            assert!(cache.len() <= CAPACITY);
        }
        assert!(real.iter().all(|(k, _)| cache.get(k, NOW).is_some()), "real keys survive the flood");
    }

    #[test]
    fn expired_entries_are_evicted_first() {
        let mut cache = KeyCache::default();
        for i in 0..CAPACITY as u32 {
            cache.insert(unknown(i), Cached::Unknown, NOW, 5_000);
        }
        let (k, e) = found(1, None);
        cache.insert(k, e, NOW + 5_000, 60_000);
        assert_eq!(cache.len(), 1, "every unknown entry had expired");
        assert!(cache.get(&k, NOW + 5_000).is_some());
    }

    #[test]
    fn a_cache_full_of_real_keys_starts_over_rather_than_grow() {
        let mut cache = KeyCache::default();
        for i in 0..=CAPACITY as u32 {
            let (k, e) = found(i, None);
            cache.insert(k, e, NOW, 60_000);
        }
        assert_eq!(cache.len(), 1);
    }
}
