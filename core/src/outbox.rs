//! The singleton's outbox for usage records on their way to the control plane: at most one
//! batch in flight, retried with backoff until the control plane acknowledges it, and a bound on
//! what waits. Ingestion is idempotent by record id, so a batch whose answer was lost is simply
//! sent again; a record is dropped from the outbox only when acknowledged, or handed back to the
//! caller (to be written to the log) when the bound is reached — never silently lost.

use std::collections::VecDeque;

/// First retry delay; doubles per failure up to [`MAX_BACKOFF_MS`].
pub const FIRST_BACKOFF_MS: u64 = 250;
pub const MAX_BACKOFF_MS: u64 = 10_000;

#[derive(Debug)]
pub struct Outbox<T> {
    waiting: VecDeque<T>,
    in_flight: Option<InFlight<T>>,
    batch_size: usize,
    capacity: usize,
    next_id: u64,
    failures: u32,
    retry_at_ms: u64,
}

#[derive(Debug)]
struct InFlight<T> {
    id: u64,
    records: Vec<T>,
    /// Sent and not yet answered (false: failed, waiting for its retry).
    sent: bool,
}

impl<T: Clone> Outbox<T> {
    /// `capacity` bounds the records held (in flight included).
    pub fn new(batch_size: usize, capacity: usize) -> Self {
        Self {
            waiting: VecDeque::new(),
            in_flight: None,
            batch_size: batch_size.max(1),
            capacity: capacity.max(1),
            next_id: 1,
            failures: 0,
            retry_at_ms: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.waiting.len() + self.in_flight.as_ref().map_or(0, |f| f.records.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues a record; when full, the oldest waiting record is handed back for the caller to
    /// keep some other way (the log), so the newest always fit.
    pub fn push(&mut self, record: T) -> Option<T> {
        self.waiting.push_back(record);
        if self.len() > self.capacity { self.waiting.pop_front() } else { None }
    }

    /// The batch to send now, if any: a failed batch once its backoff has passed (the same
    /// records, so the control plane can recognise them), else the next records waiting.
    pub fn next_batch(&mut self, now_ms: u64) -> Option<(u64, Vec<T>)> {
        match &mut self.in_flight {
            Some(f) if f.sent => None,
            Some(f) => {
                if now_ms < self.retry_at_ms {
                    return None;
                }
                f.sent = true;
                Some((f.id, f.records.clone()))
            }
            None => {
                if self.waiting.is_empty() {
                    return None;
                }
                let n = self.batch_size.min(self.waiting.len());
                let records: Vec<T> = self.waiting.drain(..n).collect();
                let id = self.next_id;
                self.next_id += 1;
                self.in_flight = Some(InFlight { id, records: records.clone(), sent: true });
                Some((id, records))
            }
        }
    }

    /// The control plane stored the batch: its records leave the outbox.
    pub fn acknowledged(&mut self, id: u64) {
        if self.in_flight.as_ref().is_some_and(|f| f.id == id) {
            self.in_flight = None;
            self.failures = 0;
        }
    }

    /// The call failed (unreachable, error, timeout): retry the same batch after a backoff.
    pub fn failed(&mut self, id: u64, now_ms: u64) {
        if let Some(f) = self.in_flight.as_mut().filter(|f| f.id == id) {
            f.sent = false;
            self.failures = self.failures.saturating_add(1);
            let backoff = FIRST_BACKOFF_MS.saturating_mul(1 << self.failures.min(16).saturating_sub(1));
            self.retry_at_ms = now_ms.saturating_add(backoff.min(MAX_BACKOFF_MS));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_go_one_at_a_time_and_leave_only_when_acknowledged() {
        let mut o = Outbox::new(2, 100);
        for i in 0..5 {
            assert_eq!(o.push(i), None);
        }
        let (id, batch) = o.next_batch(0).unwrap();
        assert_eq!(batch, [0, 1]);
        assert_eq!(o.next_batch(0), None, "one batch in flight");
        o.acknowledged(id);
        assert_eq!(o.next_batch(0).unwrap().1, [2, 3]);
        assert_eq!(o.len(), 3);
    }

    #[test]
    fn a_failed_batch_is_resent_whole_after_a_growing_backoff() {
        let mut o = Outbox::new(3, 100);
        for i in 0..4 {
            o.push(i);
        }
        let (id, first) = o.next_batch(1000).unwrap();
        o.failed(id, 1000);
        assert_eq!(o.next_batch(1000 + FIRST_BACKOFF_MS - 1), None);
        let (again, same) = o.next_batch(1000 + FIRST_BACKOFF_MS).unwrap();
        assert_eq!((again, &same), (id, &first), "the same records under the same id");
        o.failed(id, 2000);
        assert_eq!(o.next_batch(2000 + FIRST_BACKOFF_MS), None, "the backoff doubled");
        assert!(o.next_batch(2000 + 2 * FIRST_BACKOFF_MS).is_some());
        o.acknowledged(id);
        assert_eq!(o.next_batch(2000).unwrap().1, [3]);
    }

    #[test]
    fn a_long_outage_retries_at_the_capped_backoff() {
        let mut o = Outbox::new(1, 10);
        o.push(1);
        let (id, _) = o.next_batch(0).unwrap();
        for _ in 0..40 {
            o.failed(id, 0);
            assert!(o.next_batch(MAX_BACKOFF_MS).is_some());
        }
    }

    #[test]
    fn a_full_outbox_hands_back_the_oldest_record_instead_of_losing_it() {
        let mut o = Outbox::new(2, 3);
        assert_eq!(o.push('a'), None);
        assert_eq!(o.push('b'), None);
        let (id, _) = o.next_batch(0).unwrap(); // a, b in flight
        assert_eq!(o.push('c'), None);
        assert_eq!(o.push('d'), Some('c'), "over capacity: the oldest waiting one comes back");
        o.acknowledged(id);
        assert_eq!(o.next_batch(0).unwrap().1, ['d']);
    }

    #[test]
    fn stale_answers_change_nothing() {
        let mut o = Outbox::new(1, 10);
        o.push(1);
        o.push(2);
        let (id, _) = o.next_batch(0).unwrap();
        o.acknowledged(id + 7);
        o.failed(id + 7, 0);
        assert_eq!(o.next_batch(0), None, "still in flight");
        o.acknowledged(id);
        assert_eq!(o.next_batch(0).unwrap().1, [2]);
    }
}
