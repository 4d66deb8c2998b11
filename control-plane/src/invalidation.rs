//! Which cached keys Envoys must drop, as a numbered log that each Envoy's singleton VM
//! long-polls (`KeyLookupService/WatchInvalidations`). The admin API publishes to it after every
//! committed change that a cached key could hide: a key updated, blocked, rotated or deleted, a
//! team changed or blocked, a user or organization changed; and the budget tracker publishes
//! when a key's, team's, user's or organization's budget is spent or its window ends.
//!
//! The log lives in this process: one control plane replica sees its own changes. Replicas
//! sharing a database would publish through it (or Redis) instead; see ARCHITECTURE.md.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use sluice_proto::gateway::v1::{WatchInvalidationsRequest, WatchInvalidationsResponse};
use tokio::sync::Notify;

/// Entries kept for callers that are behind; older ones force a reset.
const KEPT: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Key(String),
    Team(String),
    /// Every key of a user.
    User(String),
    /// Every key of an organization (its own, or its team's).
    Org(String),
}

#[derive(Debug)]
struct Log {
    next_seq: u64,
    entries: VecDeque<(u64, Target)>,
}

#[derive(Debug)]
pub struct Invalidations {
    epoch: String,
    log: Mutex<Log>,
    published: Notify,
}

impl Invalidations {
    pub fn new(epoch: String) -> Self {
        Self { epoch, log: Mutex::new(Log { next_seq: 1, entries: VecDeque::new() }), published: Notify::new() }
    }

    pub fn publish(&self, target: Target) {
        if let Ok(mut log) = self.log.lock() {
            let seq = log.next_seq;
            log.next_seq += 1;
            log.entries.push_back((seq, target));
            while log.entries.len() > KEPT {
                log.entries.pop_front();
            }
        }
        self.published.notify_waiters();
    }

    /// What happened after the caller's position, or an empty answer after `wait`.
    pub async fn watch(&self, req: &WatchInvalidationsRequest, wait: Duration) -> WatchInvalidationsResponse {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Register before looking, so a publish between the look and the wait is not missed.
            let published = self.published.notified();
            tokio::pin!(published);
            published.as_mut().enable();
            let answer = self.since(req);
            // A caller from another epoch (or its first call) learns the current one at once.
            let changed = answer.reset
                || req.epoch != self.epoch
                || !answer.key_ids.is_empty()
                || !answer.team_ids.is_empty()
                || !answer.user_ids.is_empty()
                || !answer.org_ids.is_empty();
            if changed || tokio::time::timeout_at(deadline, published).await.is_err() {
                return answer;
            }
        }
    }

    fn since(&self, req: &WatchInvalidationsRequest) -> WatchInvalidationsResponse {
        let mut answer = WatchInvalidationsResponse { epoch: self.epoch.clone(), ..Default::default() };
        let Ok(log) = self.log.lock() else {
            answer.reset = true;
            return answer;
        };
        answer.last_seq = log.next_seq - 1;
        if req.epoch != self.epoch {
            // A first call, or a control plane that restarted: the caller knows nothing current.
            answer.reset = !req.epoch.is_empty();
            return answer;
        }
        let oldest = log.entries.front().map_or(log.next_seq, |(seq, _)| *seq);
        if req.after_seq + 1 < oldest {
            answer.reset = true;
            return answer;
        }
        for (_, target) in log.entries.iter().filter(|(seq, _)| *seq > req.after_seq) {
            match target {
                Target::Key(id) => answer.key_ids.push(id.clone()),
                Target::Team(id) => answer.team_ids.push(id.clone()),
                Target::User(id) => answer.user_ids.push(id.clone()),
                Target::Org(id) => answer.org_ids.push(id.clone()),
            }
        }
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(epoch: &str, after_seq: u64) -> WatchInvalidationsRequest {
        WatchInvalidationsRequest { epoch: epoch.into(), after_seq }
    }

    #[tokio::test]
    async fn a_watcher_gets_what_was_published_after_its_position() {
        let inv = Invalidations::new("e1".into());
        let first = inv.watch(&req("", 0), Duration::ZERO).await;
        assert_eq!((first.epoch.as_str(), first.last_seq, first.reset), ("e1", 0, false));
        inv.publish(Target::Key("key_a".into()));
        inv.publish(Target::Team("ml".into()));
        let next = inv.watch(&req("e1", first.last_seq), Duration::from_secs(5)).await;
        assert_eq!((next.key_ids, next.team_ids, next.last_seq), (vec!["key_a".to_owned()], vec!["ml".to_owned()], 2));
        let after = inv.watch(&req("e1", 2), Duration::from_millis(20)).await;
        assert!(after.key_ids.is_empty() && !after.reset, "nothing new: an empty answer after the wait");
    }

    #[tokio::test]
    async fn users_and_organizations_are_published_in_their_own_lists() {
        let inv = std::sync::Arc::new(Invalidations::new("e1".into()));
        let waiter = {
            let inv = std::sync::Arc::clone(&inv);
            tokio::spawn(async move { inv.watch(&req("e1", 0), Duration::from_secs(30)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        inv.publish(Target::User("alice".into()));
        let woken = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
        assert_eq!((woken.user_ids, woken.last_seq), (vec!["alice".to_owned()], 1), "a user alone wakes a watcher");
        inv.publish(Target::Org("acme".into()));
        inv.publish(Target::Key("key_a".into()));
        let next = inv.watch(&req("e1", 1), Duration::ZERO).await;
        assert_eq!((next.org_ids, next.key_ids), (vec!["acme".to_owned()], vec!["key_a".to_owned()]));
        assert!(next.user_ids.is_empty() && next.team_ids.is_empty());
    }

    #[tokio::test]
    async fn a_waiting_watcher_is_woken_by_a_publish() {
        let inv = std::sync::Arc::new(Invalidations::new("e1".into()));
        let waiter = {
            let inv = std::sync::Arc::clone(&inv);
            tokio::spawn(async move { inv.watch(&req("e1", 0), Duration::from_secs(30)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        inv.publish(Target::Key("key_b".into()));
        let got = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
        assert_eq!(got.key_ids, ["key_b"]);
    }

    #[tokio::test]
    async fn a_restarted_control_plane_or_a_lagging_watcher_means_reset() {
        let inv = Invalidations::new("e2".into());
        assert!(inv.watch(&req("e1", 7), Duration::ZERO).await.reset, "another epoch");
        for i in 0..(KEPT + 5) {
            inv.publish(Target::Key(format!("k{i}")));
        }
        assert!(inv.watch(&req("e2", 1), Duration::ZERO).await.reset, "fell off the log");
    }
}
