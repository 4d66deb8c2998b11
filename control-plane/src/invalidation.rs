//! Which cached keys Envoys must drop, as a numbered log that each Envoy's singleton VM
//! long-polls (`KeyLookupService/WatchInvalidations`). The admin API publishes to it after every
//! committed change that a cached key could hide: a key updated, blocked, rotated or deleted, a
//! team changed or blocked, a user or organization changed; and the budget tracker publishes
//! when a key's, team's, user's or organization's budget is spent or its window ends.
//!
//! The log lives in this process; replicas of the control plane share what they publish through
//! a Redis stream when they have Redis (`share_through_redis`): every entry a replica publishes
//! is also added to the stream (by a background task with a bounded retry buffer: no admin call
//! waits for Redis), and every replica reads the stream and appends the other replicas' entries
//! to its own log, so that its watchers hear them. Each stream entry carries a number from one
//! counter (added with it by one script, so the stream's order is the numbers' order): a reader
//! that finds a number missing (the stream was trimmed past it, Redis lost its data, or a
//! replica's buffer overflowed) resets its watchers (`reset`), which makes every Envoy confirm
//! every cached key, instead of silently missing a revocation.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use sluice_proto::gateway::v1::{WatchInvalidationsRequest, WatchInvalidationsResponse};
use tokio::sync::Notify;

use crate::metrics::{Metrics, inc};

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

impl Target {
    /// The entry's `kind` and `id` in the Redis stream.
    fn fields(&self) -> (&'static str, &str) {
        match self {
            Self::Key(id) => ("key", id),
            Self::Team(id) => ("team", id),
            Self::User(id) => ("user", id),
            Self::Org(id) => ("org", id),
        }
    }

    fn parse(kind: &str, id: &str) -> Option<Self> {
        let id = id.to_owned();
        match kind {
            "key" => Some(Self::Key(id)),
            "team" => Some(Self::Team(id)),
            "user" => Some(Self::User(id)),
            "org" => Some(Self::Org(id)),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct Log {
    next_seq: u64,
    entries: VecDeque<(u64, Target)>,
    /// Watchers at or before this position must start over (entries may have been missed).
    reset_seq: u64,
}

#[derive(Debug)]
pub struct Invalidations {
    epoch: String,
    log: Mutex<Log>,
    published: Notify,
    /// What this replica publishes, on its way to the other replicas (with Redis).
    outbox: OnceLock<Arc<Outbox>>,
}

impl Invalidations {
    pub fn new(epoch: String) -> Self {
        Self {
            epoch,
            log: Mutex::new(Log { next_seq: 1, entries: VecDeque::new(), reset_seq: 0 }),
            published: Notify::new(),
            outbox: OnceLock::new(),
        }
    }

    /// Appends to this replica's log and, when replicas share a stream, to the stream (later,
    /// from a background task: this never waits for Redis).
    pub fn publish(&self, target: Target) {
        if let Some(outbox) = self.outbox.get() {
            outbox.push(target.clone());
        }
        self.apply([Incoming::Entry(target)]);
    }

    /// Appends entries (another replica's, from the stream) to this replica's log only, or
    /// makes every watcher start over; then wakes the watchers once.
    fn apply(&self, incoming: impl IntoIterator<Item = Incoming>) {
        if let Ok(mut log) = self.log.lock() {
            for item in incoming {
                let seq = log.next_seq;
                log.next_seq += 1;
                match item {
                    Incoming::Entry(target) => log.entries.push_back((seq, target)),
                    Incoming::Reset => log.reset_seq = seq,
                }
            }
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
        if req.after_seq + 1 < oldest || req.after_seq < log.reset_seq {
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

    /// Shares this replica's log with the other replicas through a Redis stream: starts the
    /// task that adds what this replica publishes and the one that reads what the others do.
    /// Redis being down is not an error (both tasks retry); a bad URL is.
    pub async fn share_through_redis(
        self: &Arc<Self>,
        config: RedisStream,
        metrics: Arc<Metrics>,
    ) -> Result<(), String> {
        let client = redis::Client::open(config.url.as_str()).map_err(|e| format!("redis url: {e}"))?;
        let outbox = Arc::new(Outbox::new(config.buffer));
        if self.outbox.set(Arc::clone(&outbox)).is_err() {
            return Err("invalidations are already shared".into());
        }
        let config = Arc::new(config);
        // Where the stream stands now (`$`): what was added before is not this replica's news.
        // If Redis cannot say yet, the reader resets its watchers when it first can.
        let mut reader = StreamReader::new(Arc::clone(&config), self.epoch.clone());
        let started = match connect(&client).await {
            Ok(mut connection) => reader.resync(&mut connection).await.map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = started {
            eprintln!("sluice: invalidation stream: {e}; retrying");
            reader.unknown_start = true;
        }
        tokio::spawn(forward(
            Arc::downgrade(&outbox),
            client.clone(),
            Arc::clone(&config),
            self.epoch.clone(),
            Arc::clone(&metrics),
        ));
        tokio::spawn(consume(Arc::downgrade(self), client, reader, metrics));
        Ok(())
    }
}

/// What the stream brings a replica.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Incoming {
    Entry(Target),
    /// Entries may have been missed: every watcher starts over.
    Reset,
}

/// Where replicas share their invalidations (`--redis-url`).
#[derive(Debug, Clone)]
pub struct RedisStream {
    pub url: String,
    /// The stream's key; the counter that numbers its entries is `<stream>:n`.
    pub stream: String,
    /// Entries the stream keeps (approximately: `XADD … MAXLEN ~`).
    pub max_len: usize,
    /// Entries this replica holds while Redis is unreachable; past that they are dropped and
    /// the other replicas are told to reset their watchers.
    pub buffer: usize,
}

impl RedisStream {
    pub fn new(url: &str) -> Self {
        Self { url: url.to_owned(), stream: "sluice:invalidations".into(), max_len: 100_000, buffer: 10_000 }
    }

    /// The same stream, reached through another URL (tests).
    #[cfg(test)]
    fn with_stream(self, other: &RedisStream) -> Self {
        Self { stream: other.stream.clone(), ..self }
    }

    fn counter(&self) -> String {
        format!("{}:n", self.stream)
    }
}

/// A Redis command that takes longer than this fails (the connection is then replaced).
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one read waits for new entries before it asks again.
const READ_BLOCK_MS: u64 = 5_000;
/// Entries added to the stream, or read from it, per round trip.
const BATCH: usize = 500;
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Numbers the entry and adds it in one step, so that the stream's order is the numbers'
/// order and a reader can tell when one is missing. Trimming keeps about ARGV[1] entries.
const ADD_SCRIPT: &str = "local n = redis.call('INCR', KEYS[2]) \
     redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'n', n, 'origin', ARGV[2], 'kind', ARGV[3], 'id', ARGV[4]) \
     return n";

async fn connect(client: &redis::Client) -> Result<MultiplexedConnection, String> {
    crate::shared_redis::connect(client, REDIS_TIMEOUT).await
}

/// This replica's entries on their way to the stream, oldest first.
#[derive(Debug)]
struct Outbox {
    state: Mutex<OutboxState>,
    ready: Notify,
    capacity: usize,
}

#[derive(Debug, Default)]
struct OutboxState {
    /// Entries not in the stream yet, each with a local number.
    queue: VecDeque<(u64, Target)>,
    next: u64,
    /// The buffer overflowed and entries were dropped: the stream gets a reset entry first.
    lost: bool,
    /// Bumped at each overflow, so that a reset sent for an earlier one does not clear a later one.
    losses: u64,
}

impl Outbox {
    fn new(capacity: usize) -> Self {
        Self { state: Mutex::new(OutboxState::default()), ready: Notify::new(), capacity: capacity.max(1) }
    }

    fn push(&self, target: Target) {
        if let Ok(mut state) = self.state.lock() {
            if state.queue.len() >= self.capacity {
                // Redis has been away too long: what is dropped is covered by a reset.
                state.queue.clear();
                state.lost = true;
                state.losses += 1;
            }
            let n = state.next;
            state.next += 1;
            state.queue.push_back((n, target));
        }
        self.ready.notify_one();
    }

    /// The next entries to add (up to `BATCH`), whether a reset goes first (with the loss it
    /// covers), or nothing yet.
    fn next_batch(&self) -> (Vec<(u64, Target)>, Option<u64>) {
        let Ok(state) = self.state.lock() else { return (Vec::new(), None) };
        let batch = state.queue.iter().take(BATCH).cloned().collect();
        (batch, state.lost.then_some(state.losses))
    }

    /// The entries up to `last` (and the reset for `loss`) are in the stream.
    fn sent(&self, last: Option<u64>, loss: Option<u64>) {
        if let Ok(mut state) = self.state.lock() {
            if let Some(last) = last {
                while state.queue.front().is_some_and(|(n, _)| *n <= last) {
                    state.queue.pop_front();
                }
            }
            if loss.is_some_and(|loss| loss == state.losses) {
                state.lost = false;
            }
        }
    }
}

/// Adds this replica's entries to the stream, in order, retrying with backoff while Redis is
/// unreachable (a retried batch may add an entry twice: harmless). Ends with the log.
async fn forward(
    outbox: Weak<Outbox>,
    client: redis::Client,
    config: Arc<RedisStream>,
    origin: String,
    metrics: Arc<Metrics>,
) {
    let mut connection: Option<MultiplexedConnection> = None;
    let mut backoff = FIRST_BACKOFF;
    let mut failing = false;
    loop {
        let Some(outbox) = outbox.upgrade() else { return };
        let (batch, loss) = outbox.next_batch();
        if batch.is_empty() && loss.is_none() {
            // Woken by the next publish (a stored permit: one made meanwhile is not missed), or
            // after a while to see whether the log is still there.
            let _ = tokio::time::timeout(Duration::from_secs(5), outbox.ready.notified()).await;
            continue;
        }
        let mut pipe = redis::pipe();
        let entries = loss.map(|_| ("reset", "-")).into_iter().chain(batch.iter().map(|(_, t)| t.fields()));
        for (kind, id) in entries {
            pipe.cmd("EVAL")
                .arg(ADD_SCRIPT)
                .arg(2)
                .arg(&config.stream)
                .arg(config.counter())
                .arg(config.max_len)
                .arg(&origin)
                .arg(kind)
                .arg(id)
                .ignore();
        }
        let result = match &mut connection {
            Some(c) => tokio::time::timeout(REDIS_TIMEOUT, pipe.query_async::<()>(c))
                .await
                .map_err(|_| "redis: timed out".to_owned())
                .and_then(|r| r.map_err(|e| format!("redis: {e}"))),
            None => match connect(&client).await {
                Ok(c) => {
                    connection = Some(c);
                    continue;
                }
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(()) => {
                outbox.sent(batch.last().map(|(n, _)| *n), loss);
                inc(&metrics.invalidations_shared, batch.len() as u64);
                if failing {
                    eprintln!("sluice: invalidation stream: adding entries again");
                }
                (failing, backoff) = (false, FIRST_BACKOFF);
            }
            Err(e) => {
                connection = None;
                inc(&metrics.invalidation_stream_failures, 1);
                if !failing {
                    eprintln!("sluice: invalidation stream: cannot add entries ({e}); keeping them and retrying");
                }
                failing = true;
                drop(outbox);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// A stream entry id, `<ms>-<seq>`, for comparing positions.
fn entry_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// A replica's position in the stream and what it makes of each entry.
#[derive(Debug)]
struct StreamReader {
    config: Arc<RedisStream>,
    origin: String,
    /// The last entry read (id and number); None until Redis first answered.
    position: Option<(String, u64)>,
    /// Redis did not answer at start: whatever was added meanwhile is unknown.
    unknown_start: bool,
}

type Entry = (String, Vec<String>);

impl StreamReader {
    fn new(config: Arc<RedisStream>, origin: String) -> Self {
        Self { config, origin, position: None, unknown_start: false }
    }

    /// After (re)connecting: where the stream stands, compared with where this reader was.
    /// `true` when entries may have been missed (the reader then starts from the stream's end).
    async fn resync(&mut self, connection: &mut MultiplexedConnection) -> Result<bool, String> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .get(self.config.counter())
            .cmd("XREVRANGE")
            .arg(&self.config.stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1);
        let (counter, top): (Option<u64>, Vec<Entry>) =
            tokio::time::timeout(REDIS_TIMEOUT, pipe.query_async(connection))
                .await
                .map_err(|_| "redis: timed out".to_owned())?
                .map_err(|e| format!("redis: {e}"))?;
        let counter = counter.unwrap_or(0);
        let top_id = top.first().map_or_else(|| "0-0".to_owned(), |(id, _)| id.clone());
        let missed = match &self.position {
            None => std::mem::take(&mut self.unknown_start),
            // Read on from where it was: the numbers tell whether anything went missing.
            Some((last_id, last_n)) => match counter.cmp(last_n) {
                // The counter went back: Redis lost its data, and whatever the stream held.
                std::cmp::Ordering::Less => true,
                std::cmp::Ordering::Equal => top_id != *last_id,
                std::cmp::Ordering::Greater => entry_id(&top_id) <= entry_id(last_id),
            },
        };
        if missed || self.position.is_none() {
            self.position = Some((top_id, counter));
        }
        Ok(missed)
    }

    /// The entries after this reader's position (waiting up to `block_ms` for some): the
    /// other replicas' entries, and a reset wherever a number is missing (or, after a wait
    /// that brought nothing, when `resync` finds that entries went missing).
    async fn read(&mut self, connection: &mut MultiplexedConnection, block_ms: u64) -> Result<Vec<Incoming>, String> {
        let Some((last_id, mut last_n)) = self.position.clone() else { return Err("no position yet".into()) };
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT").arg(BATCH).arg("BLOCK").arg(block_ms).arg("STREAMS").arg(&self.config.stream).arg(&last_id);
        let wait = Duration::from_millis(block_ms) + REDIS_TIMEOUT;
        let reply: Option<Vec<(String, Vec<Entry>)>> = tokio::time::timeout(wait, cmd.query_async(connection))
            .await
            .map_err(|_| "redis: timed out".to_owned())?
            .map_err(|e| format!("redis: {e}"))?;
        let Some(reply) = reply else {
            // Nothing new for a while: make sure that is so. A stream that Redis lost and
            // refilled may number from 1 again under ids at or before this reader's.
            return Ok(if self.resync(connection).await? { vec![Incoming::Reset] } else { Vec::new() });
        };
        let mut out = Vec::new();
        let mut position = last_id;
        for (id, fields) in reply.into_iter().flat_map(|(_, entries)| entries) {
            let field = |name: &str| fields.chunks_exact(2).find(|kv| kv[0] == name).map(|kv| kv[1].as_str());
            let n = field("n").and_then(|n| n.parse::<u64>().ok());
            if n != Some(last_n + 1) {
                // Trimmed past this reader, or numbered afresh after Redis lost its data.
                out.push(Incoming::Reset);
            }
            last_n = n.unwrap_or(last_n + 1);
            position = id;
            if field("origin") == Some(self.origin.as_str()) {
                continue;
            }
            match (field("kind"), field("id")) {
                (Some("reset"), _) => out.push(Incoming::Reset),
                (Some(kind), Some(id)) => out.push(Target::parse(kind, id).map_or(Incoming::Reset, Incoming::Entry)),
                _ => out.push(Incoming::Reset),
            }
        }
        self.position = Some((position, last_n));
        Ok(out)
    }
}

/// Reads the stream for as long as the log exists, appending the other replicas' entries to
/// it; reconnects with backoff after an error, and resets the watchers when entries may have
/// been missed meanwhile.
async fn consume(log: Weak<Invalidations>, client: redis::Client, mut reader: StreamReader, metrics: Arc<Metrics>) {
    let mut backoff = FIRST_BACKOFF;
    let mut failing = false;
    loop {
        if log.strong_count() == 0 {
            return;
        }
        let fail = |e: String, failing: &mut bool| {
            inc(&metrics.invalidation_stream_failures, 1);
            if !*failing {
                eprintln!("sluice: invalidation stream: cannot read ({e}); reconnecting");
            }
            *failing = true;
        };
        let mut connection = match connect(&client).await {
            Ok(c) => c,
            Err(e) => {
                fail(e, &mut failing);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        match reader.resync(&mut connection).await {
            Ok(missed) => {
                if missed && let Some(log) = log.upgrade() {
                    inc(&metrics.invalidation_resets, 1);
                    eprintln!(
                        "sluice: invalidation stream: entries may have been missed; Envoys re-confirm their keys"
                    );
                    log.apply([Incoming::Reset]);
                }
            }
            Err(e) => {
                fail(e, &mut failing);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        }
        if failing {
            eprintln!("sluice: invalidation stream: reading again");
        }
        (failing, backoff) = (false, FIRST_BACKOFF);
        loop {
            let incoming = match reader.read(&mut connection, READ_BLOCK_MS).await {
                Ok(incoming) => incoming,
                Err(e) => {
                    fail(e, &mut failing);
                    break;
                }
            };
            let Some(log) = log.upgrade() else { return };
            if incoming.is_empty() {
                continue;
            }
            let resets = incoming.iter().filter(|i| **i == Incoming::Reset).count() as u64;
            inc(&metrics.invalidation_resets, resets);
            inc(&metrics.invalidations_received, incoming.len() as u64 - resets);
            log.apply(incoming);
        }
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

    // With Redis: the real one on 127.0.0.1:6379, each test on a stream of its own.

    const REDIS: &str = "redis://127.0.0.1:6379";

    fn test_stream(url: &str) -> RedisStream {
        let mut salt = [0u8; 6];
        getrandom::fill(&mut salt).unwrap();
        let name: String = salt.iter().map(|b| format!("{b:02x}")).collect();
        RedisStream { stream: format!("sluice:test:invalidations:{name}"), ..RedisStream::new(url) }
    }

    async fn forget(config: &RedisStream) {
        let mut c = connect(&redis::Client::open(REDIS).unwrap()).await.unwrap();
        let _: () = redis::cmd("DEL").arg(&config.stream).arg(config.counter()).query_async(&mut c).await.unwrap();
    }

    async fn replica(epoch: &str, config: &RedisStream) -> (Arc<Invalidations>, Arc<Metrics>) {
        let inv = Arc::new(Invalidations::new(epoch.into()));
        let metrics = Arc::new(Metrics::default());
        inv.share_through_redis(config.clone(), Arc::clone(&metrics)).await.unwrap();
        (inv, metrics)
    }

    /// Waits until the watcher's answers after `after` hold `n` entries (or a reset).
    async fn collect(inv: &Invalidations, epoch: &str, mut after: u64, n: usize) -> (Vec<String>, bool, u64) {
        let (mut ids, mut reset) = (Vec::new(), false);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while ids.len() < n && !reset && tokio::time::Instant::now() < deadline {
            let got = inv.watch(&req(epoch, after), Duration::from_secs(1)).await;
            ids.extend(got.key_ids.into_iter().chain(got.team_ids));
            reset |= got.reset;
            after = got.last_seq;
        }
        (ids, reset, after)
    }

    fn count(c: &std::sync::atomic::AtomicU64) -> u64 {
        c.load(std::sync::atomic::Ordering::Relaxed)
    }

    #[tokio::test]
    async fn replicas_hear_each_others_invalidations_through_redis() {
        let config = test_stream(REDIS);
        let (a, a_metrics) = replica("a", &config).await;
        let (b, b_metrics) = replica("b", &config).await;
        let b_start = b.watch(&req("", 0), Duration::ZERO).await;

        let published = tokio::time::Instant::now();
        a.publish(Target::Key("k1".into()));
        let got = b.watch(&req("b", b_start.last_seq), Duration::from_secs(5)).await;
        let took = published.elapsed();
        assert_eq!((got.key_ids.as_slice(), got.reset), (["k1".to_owned()].as_slice(), false));
        assert!(took < Duration::from_millis(500), "{took:?}");
        eprintln!("a's invalidation reached b's watcher in {took:?}");

        b.publish(Target::Team("t1".into()));
        let (ids, reset, _) = collect(&a, "a", 1, 1).await;
        assert_eq!((ids, reset), (vec!["t1".to_owned()], false));
        // Each replica's log has each entry once: its own are not read back from the stream.
        tokio::time::sleep(Duration::from_millis(200)).await;
        for inv in [&a, &b] {
            let all = inv.watch(&req(&inv.epoch, 0), Duration::ZERO).await;
            assert_eq!((all.key_ids, all.team_ids), (vec!["k1".to_owned()], vec!["t1".to_owned()]));
        }
        assert_eq!((count(&a_metrics.invalidations_shared), count(&a_metrics.invalidations_received)), (1, 1));
        assert_eq!((count(&b_metrics.invalidation_resets), count(&b_metrics.invalidation_stream_failures)), (0, 0));
        forget(&config).await;
    }

    /// Adds an entry as a replica named `origin` would.
    async fn add(c: &mut MultiplexedConnection, config: &RedisStream, origin: &str, kind: &str, id: &str) {
        let _: u64 = redis::cmd("EVAL")
            .arg(ADD_SCRIPT)
            .arg(2)
            .arg(&config.stream)
            .arg(config.counter())
            .arg(config.max_len)
            .arg(origin)
            .arg(kind)
            .arg(id)
            .query_async(c)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_reader_that_may_have_missed_entries_resets_its_watchers() {
        let config = Arc::new(test_stream(REDIS));
        let mut c = connect(&redis::Client::open(REDIS).unwrap()).await.unwrap();
        add(&mut c, &config, "other", "key", "before-start").await;
        let mut reader = StreamReader::new(Arc::clone(&config), "me".into());
        assert!(!reader.resync(&mut c).await.unwrap(), "starts at the stream's end");
        add(&mut c, &config, "other", "key", "k1").await;
        add(&mut c, &config, "me", "key", "mine").await;
        add(&mut c, &config, "other", "org", "acme").await;
        assert_eq!(
            reader.read(&mut c, 100).await.unwrap(),
            [Incoming::Entry(Target::Key("k1".into())), Incoming::Entry(Target::Org("acme".into()))],
            "what came before the start is not news; a replica's own entries are skipped"
        );
        assert_eq!(reader.read(&mut c, 50).await.unwrap(), [], "nothing new: an empty read after the block");

        // Reconnected with nothing missed: reads on.
        assert!(!reader.resync(&mut c).await.unwrap());
        add(&mut c, &config, "other", "team", "ml").await;
        assert!(!reader.resync(&mut c).await.unwrap(), "behind, but everything it missed is still there");
        assert_eq!(reader.read(&mut c, 100).await.unwrap(), [Incoming::Entry(Target::Team("ml".into()))]);

        // The stream trimmed past the reader: a reset, then what is left.
        for i in 0..20 {
            add(&mut c, &config, "other", "key", &format!("t{i}")).await;
        }
        let _: u64 = redis::cmd("XTRIM").arg(&config.stream).arg("MAXLEN").arg(5).query_async(&mut c).await.unwrap();
        let got = reader.read(&mut c, 100).await.unwrap();
        assert_eq!(got.len(), 6, "{got:?}");
        assert_eq!((&got[0], &got[5]), (&Incoming::Reset, &Incoming::Entry(Target::Key("t19".into()))));
        // ... also when it is found on reconnecting.
        for i in 0..3 {
            add(&mut c, &config, "other", "key", &format!("u{i}")).await;
        }
        let _: u64 = redis::cmd("XTRIM").arg(&config.stream).arg("MAXLEN").arg(0).query_async(&mut c).await.unwrap();
        assert!(reader.resync(&mut c).await.unwrap(), "entries were added and are gone");
        assert_eq!(reader.read(&mut c, 50).await.unwrap(), []);

        // Redis lost its data (a restart without persistence): the counter starts over.
        forget(&config).await;
        assert!(reader.resync(&mut c).await.unwrap());
        add(&mut c, &config, "other", "key", "after-loss").await;
        assert_eq!(reader.read(&mut c, 100).await.unwrap(), [Incoming::Entry(Target::Key("after-loss".into()))]);
        for i in 0..2 {
            add(&mut c, &config, "other", "key", &format!("v{i}")).await;
        }
        assert_eq!(reader.read(&mut c, 100).await.unwrap().len(), 2);
        // Lost and refilled before the reader looked: the numbers went back.
        forget(&config).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        add(&mut c, &config, "other", "key", "refilled").await;
        let got = reader.read(&mut c, 100).await.unwrap();
        assert_eq!(got, [Incoming::Reset, Incoming::Entry(Target::Key("refilled".into()))]);
        for i in 0..2 {
            add(&mut c, &config, "other", "key", &format!("w{i}")).await;
        }
        assert_eq!(reader.read(&mut c, 100).await.unwrap().len(), 2);
        // ... under ids before the reader's (Redis's clock behind): there is nothing after its
        // position to read, and the counter, checked after a read that brought nothing, went back.
        forget(&config).await;
        let _: String = redis::cmd("XADD")
            .arg(&config.stream)
            .arg("1-1")
            .arg(&["n", "1", "origin", "other", "kind", "key", "id", "early"])
            .query_async(&mut c)
            .await
            .unwrap();
        let _: () = redis::cmd("SET").arg(config.counter()).arg(1).query_async(&mut c).await.unwrap();
        assert_eq!(reader.read(&mut c, 100).await.unwrap(), [Incoming::Reset]);
        // Another replica's buffer overflowed while Redis was away.
        add(&mut c, &config, "other", "reset", "-").await;
        assert_eq!(reader.read(&mut c, 100).await.unwrap(), [Incoming::Reset]);
        forget(&config).await;
    }

    /// A TCP relay to the real Redis that can be switched off: its connections are cut and new
    /// ones closed at once, as when Redis is unreachable.
    struct Relay {
        url: String,
        up: tokio::sync::watch::Sender<bool>,
    }

    impl Relay {
        async fn start() -> Self {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("redis://{}", listener.local_addr().unwrap());
            let (up, watch) = tokio::sync::watch::channel(true);
            tokio::spawn(async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else { return };
                    let mut watch = watch.clone();
                    if !*watch.borrow() {
                        continue;
                    }
                    tokio::spawn(async move {
                        let Ok(mut outbound) = tokio::net::TcpStream::connect("127.0.0.1:6379").await else { return };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = watch.wait_for(|up| !*up) => {}
                        }
                    });
                }
            });
            Self { url, up }
        }

        fn set(&self, up: bool) {
            self.up.send_replace(up);
        }
    }

    #[tokio::test]
    async fn entries_wait_out_a_redis_outage_and_an_overflow_resets_the_other_replicas() {
        let relay = Relay::start().await;
        let config = test_stream(REDIS);
        let (a, a_metrics) =
            replica("a", &RedisStream { buffer: 4, ..test_stream(&relay.url) }.with_stream(&config)).await;
        let (b, b_metrics) = replica("b", &config).await;
        let b_start = b.watch(&req("", 0), Duration::ZERO).await;

        relay.set(false);
        let started = std::time::Instant::now();
        for k in ["k1", "k2", "k3"] {
            a.publish(Target::Key(k.into()));
        }
        assert!(started.elapsed() < Duration::from_millis(20), "publishing never waits for Redis");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(b.watch(&req("b", b_start.last_seq), Duration::ZERO).await.key_ids.is_empty());
        relay.set(true);
        let (ids, reset, after) = collect(&b, "b", b_start.last_seq, 3).await;
        assert_eq!((ids, reset), (vec!["k1".to_owned(), "k2".to_owned(), "k3".to_owned()], false), "kept, in order");
        assert!(count(&a_metrics.invalidation_stream_failures) >= 1);

        // Longer than the buffer holds: what was dropped is covered by a reset of b's watchers.
        relay.set(false);
        for i in 0..10 {
            a.publish(Target::Key(format!("o{i}")));
        }
        relay.set(true);
        let (_, reset, after) = collect(&b, "b", after, usize::MAX).await;
        assert!(reset, "b's watchers start over");
        assert_eq!(count(&b_metrics.invalidation_resets), 1);
        // ... and the entries kept after the overflow still arrive.
        let (ids, reset, _) = collect(&b, "b", after, 2).await;
        assert!(!reset);
        assert_eq!(ids.last().map(String::as_str), Some("o9"), "{ids:?}");
        forget(&config).await;
    }

    #[tokio::test]
    async fn a_reader_cut_off_from_redis_reads_on_without_a_reset() {
        let relay = Relay::start().await;
        let config = test_stream(REDIS);
        let (a, _) = replica("a", &config).await;
        let (b, b_metrics) = replica("b", &RedisStream::new(&relay.url).with_stream(&config)).await;
        let b_start = b.watch(&req("", 0), Duration::ZERO).await;
        relay.set(false);
        tokio::time::sleep(Duration::from_millis(100)).await;
        a.publish(Target::Key("while-away".into()));
        tokio::time::sleep(Duration::from_millis(200)).await;
        relay.set(true);
        let (ids, reset, _) = collect(&b, "b", b_start.last_seq, 1).await;
        assert_eq!((ids, reset), (vec!["while-away".to_owned()], false));
        assert_eq!(count(&b_metrics.invalidation_resets), 0);
        assert!(count(&b_metrics.invalidation_stream_failures) >= 1);
        forget(&config).await;
    }

    /// At start Redis cannot be reached: once it can, the watchers reset (whatever was added
    /// meanwhile is unknown).
    #[tokio::test]
    async fn a_replica_that_starts_without_redis_resets_its_watchers_once_it_is_back() {
        let relay = Relay::start().await;
        relay.set(false);
        let config = test_stream(REDIS);
        let (b, b_metrics) = replica("b", &RedisStream::new(&relay.url).with_stream(&config)).await;
        let b_start = b.watch(&req("", 0), Duration::ZERO).await;
        relay.set(true);
        let (_, reset, _) = collect(&b, "b", b_start.last_seq, usize::MAX).await;
        assert!(reset);
        assert_eq!(count(&b_metrics.invalidation_resets), 1);
        forget(&config).await;
    }
}
