//! Rate limits across a fleet of Envoys: the bookkeeping both sides of the sync share.
//!
//! Each Envoy counts its own requests and tokens per scope exactly (shared data, CAS). Its
//! workers *announce* a limited scope the first time they admit on it in a minute; the
//! singleton then reports this Envoy's counts of every announced scope to the control plane
//! (`sluice.v1.LimitService/Sync`), at once for a new scope and then every tick, and writes
//! back what the *other* Envoys counted ([`crate::limits::ScopeState::set_remote`]). Reports
//! are absolute counts per (window, scope, Envoy instance), so a retried or repeated report
//! changes nothing; the control plane keeps them in Redis (shared by its replicas) or in
//! memory (one replica).

use std::collections::HashSet;

use crate::limits::WINDOW_MS;

/// The minute a timestamp falls in: the window every Envoy and the control plane agree on.
pub fn window_of(now_ms: u64) -> u64 {
    now_ms / WINDOW_MS
}

/// Names seen in the current minute; a new minute starts empty.
#[derive(Debug, Default)]
pub struct WindowSet {
    window: u64,
    names: HashSet<String>,
}

impl WindowSet {
    /// Adds `name` for `window`; true if it was not there yet (the caller announces it).
    pub fn insert(&mut self, name: &str, window: u64) -> bool {
        if window != self.window {
            self.window = window;
            self.names.clear();
        }
        if self.names.contains(name) {
            return false;
        }
        self.names.insert(name.to_owned())
    }

    /// The names of `window` (none if the set belongs to another minute).
    pub fn names(&self, window: u64) -> impl Iterator<Item = &str> {
        self.names.iter().filter(move |_| self.window == window).map(String::as_str)
    }

    pub fn contains(&self, name: &str, window: u64) -> bool {
        self.window == window && self.names.contains(name)
    }
}

/// The scope names in an announcement message (one per line).
pub fn announced_names(message: &[u8]) -> impl Iterator<Item = &str> {
    message.split(|b| *b == b'\n').filter_map(|line| std::str::from_utf8(line).ok()).filter(|l| !l.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_new_once_per_minute() {
        let mut set = WindowSet::default();
        let w = window_of(1_795_341_600_000);
        assert!(set.insert("sluice:k:a", w));
        assert!(!set.insert("sluice:k:a", w));
        assert!(set.insert("sluice:t:ml", w));
        let mut names: Vec<&str> = set.names(w).collect();
        names.sort_unstable();
        assert_eq!(names, ["sluice:k:a", "sluice:t:ml"]);
        assert_eq!(set.names(w + 1).count(), 0, "another minute's names are not this one's");
        assert!(set.contains("sluice:k:a", w) && !set.contains("sluice:k:a", w + 1) && !set.contains("x", w));
        assert!(set.insert("sluice:k:a", w + 1), "a new minute announces again");
        assert_eq!(set.names(w + 1).collect::<Vec<_>>(), ["sluice:k:a"]);
    }

    #[test]
    fn announcements_are_lines_and_garbage_is_skipped() {
        let names: Vec<&str> = announced_names(b"sluice:k:a\n\n\xff\xfe\nsluice:t:b").collect();
        assert_eq!(names, ["sluice:k:a", "sluice:t:b"]);
    }
}
