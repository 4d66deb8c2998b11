//! What proxy-wasm's shared data is to the wasm build: one process-wide key → value store with
//! compare-and-swap versions, which every worker thread's counters read and write. A native
//! module lives in Envoy's process, so this is plain memory behind a mutex, with the semantics
//! the counters' CAS loops were written against (Envoy's `SharedData`): every write gets a new
//! non-zero version; a write naming a version fails with a conflict unless the entry still has
//! it; a write without one (or to an absent entry) always succeeds.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use crate::host::CasResult;

#[derive(Default)]
pub struct SharedData {
    inner: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    values: HashMap<String, (Vec<u8>, u32)>,
    last_cas: u32,
}

impl SharedData {
    fn entries(&self) -> MutexGuard<'_, Entries> {
        // A poisoned lock would mean a panic while holding it, which this module never does;
        // the data is still consistent (each write replaces one entry whole), so go on with it.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        match self.entries().values.get(key) {
            Some((value, cas)) => (Some(value.clone()), Some(*cas)),
            None => (None, None),
        }
    }

    /// Changes an entry in place under the lock (`change` gets the value, empty when absent,
    /// and says whether it changed it): what a get and a CAS set do, with no other writer in
    /// between possible.
    pub fn update(&self, key: &str, change: &mut dyn FnMut(&mut Vec<u8>) -> bool) {
        let mut entries = self.entries();
        let entries = &mut *entries;
        let cas = entries.last_cas.checked_add(1).unwrap_or(1);
        match entries.values.get_mut(key) {
            Some((value, version)) => {
                if change(value) {
                    *version = cas;
                    entries.last_cas = cas;
                }
            }
            None => {
                let mut value = Vec::new();
                if change(&mut value) {
                    entries.values.insert(key.to_owned(), (value, cas));
                    entries.last_cas = cas;
                }
            }
        }
    }

    pub fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> CasResult {
        let mut entries = self.entries();
        if let (Some(expected), Some((_, current))) = (cas.filter(|c| *c != 0), entries.values.get(key))
            && expected != *current
        {
            return CasResult::Conflict;
        }
        entries.last_cas = entries.last_cas.checked_add(1).unwrap_or(1);
        let cas = entries.last_cas;
        match entries.values.get_mut(key) {
            Some(entry) => {
                entry.0.clear();
                entry.0.extend_from_slice(value);
                entry.1 = cas;
            }
            None => {
                entries.values.insert(key.to_owned(), (value.to_vec(), cas));
            }
        }
        CasResult::Written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_and_swap_as_envoy_does_it() {
        let data = SharedData::default();
        assert_eq!(data.get("k"), (None, None));
        assert_eq!(data.set("k", b"a", Some(7)), CasResult::Written, "an absent entry takes any version");
        let (value, Some(first)) = data.get("k") else { panic!("no version") };
        assert_eq!(value.as_deref(), Some(&b"a"[..]));
        assert_eq!(data.set("k", b"b", Some(first)), CasResult::Written);
        assert_eq!(data.set("k", b"c", Some(first)), CasResult::Conflict, "another writer came first");
        assert_eq!(data.get("k").0.as_deref(), Some(&b"b"[..]));
        assert_eq!(data.set("k", b"d", None), CasResult::Written, "no version: always written");
        let (_, Some(last)) = data.get("k") else { panic!("no version") };
        assert!(last > first);
    }

    #[test]
    fn an_update_in_place_changes_the_value_and_its_version() {
        let data = SharedData::default();
        data.update("k", &mut |v| {
            v.extend_from_slice(b"a");
            true
        });
        let (value, Some(first)) = data.get("k") else { panic!("no version") };
        assert_eq!(value.as_deref(), Some(&b"a"[..]));
        data.update("k", &mut |v| {
            v.push(b'b');
            true
        });
        let (value, Some(second)) = data.get("k") else { panic!("no version") };
        assert_eq!(value.as_deref(), Some(&b"ab"[..]));
        assert!(second > first);
        assert_eq!(data.set("k", b"c", Some(first)), CasResult::Conflict, "an update moves the version");
        data.update("absent", &mut |_| false);
        assert_eq!(data.get("absent"), (None, None), "an unchanged absent entry is not created");
    }

    /// Concurrent read-modify-write loops lose no update: what the counters rely on.
    #[test]
    fn cas_loops_on_threads_lose_nothing() {
        let data = std::sync::Arc::new(SharedData::default());
        // Created first, as `counters::ensure_exists` does: two first writes would both succeed.
        data.set("n", &0u64.to_le_bytes(), None);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let data = std::sync::Arc::clone(&data);
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        loop {
                            let (value, cas) = data.get("n");
                            let n = value.map_or(0, |v| u64::from_le_bytes(v.try_into().unwrap_or([0; 8])));
                            if data.set("n", &(n + 1).to_le_bytes(), cas) == CasResult::Written {
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let n = u64::from_le_bytes(data.get("n").0.unwrap().try_into().unwrap());
        assert_eq!(n, 2000);
    }
}
