//! The invalidation log the singleton service relays to the workers (xDS mode): its shared-data
//! entry and how a worker reads it. The service itself is the wasm build's
//! (`crate::wasm::service`); this part is shared, since the flow applies what it reads.

/// Shared-data entry holding recent invalidations, one `seq kind id` line each (kind `k` key,
/// `t` team, `u` user, `o` organization, `r` drop everything); written only by the singleton.
pub const INVALIDATIONS_KEY: &str = "sluice:invalidations";
/// New invalidations for a worker that has seen up to `after_seq`: what to drop, and the new
/// position. `None` in the list means drop everything.
pub fn invalidations_since(text: &str, after_seq: u64) -> (Vec<Option<(char, String)>>, u64) {
    let mut out = Vec::new();
    let mut last = after_seq;
    let mut oldest = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ' ');
        let (Some(seq), Some(kind), Some(id)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let Ok(seq) = seq.parse::<u64>() else { continue };
        oldest.get_or_insert(seq);
        if seq <= after_seq {
            continue;
        }
        last = last.max(seq);
        // k key, t team, u user, o organization; anything else (`r`) drops everything.
        out.push(match kind {
            "k" | "t" | "u" | "o" => kind.chars().next().map(|k| (k, id.to_owned())),
            _ => None,
        });
    }
    // Lines this worker never saw were trimmed away: it cannot know what they dropped.
    if oldest.is_some_and(|o| o > after_seq + 1) && after_seq > 0 {
        out.push(None);
    }
    (out, last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_read_only_what_they_have_not_seen() {
        let text = "1 k key_a\n2 t ml\n3 k key_b";
        let (drop, last) = invalidations_since(text, 1);
        assert_eq!(drop, vec![Some(('t', "ml".into())), Some(('k', "key_b".into()))]);
        assert_eq!(last, 3);
        assert_eq!(invalidations_since(text, 3), (vec![], 3));
        // A reset line, and a worker that fell behind the kept lines, drop everything.
        assert_eq!(invalidations_since("4 r -", 3).0, vec![None]);
        assert!(invalidations_since("10 k x\n11 k y", 2).0.contains(&None));
        // Users and organizations (ids may contain spaces: the id is the rest of the line).
        let (drop, last) = invalidations_since("4 u alice\n5 o Acme Corp", 3);
        assert_eq!(drop, vec![Some(('u', "alice".into())), Some(('o', "Acme Corp".into()))]);
        assert_eq!(last, 5);
    }
}
