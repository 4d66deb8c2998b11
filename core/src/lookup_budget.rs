//! How many key lookups an Envoy worker may start (xDS mode): a token bucket for the worker and
//! one per client address.
//!
//! A key the worker has not cached costs one `KeyLookupService/Lookup` at the control plane,
//! i.e. one database query. The key format's checksum is no secret (see [`crate::keys`]), so
//! anyone can make well-formed keys, and every distinct one is a lookup: the negative cache
//! only catches repeats. The worker's bucket bounds what a flood of them can cost: at most
//! `burst + per_second × seconds` lookups per worker, whoever sends them. The per-source
//! buckets keep one client from spending the worker's bucket alone: it gets
//! `per_source_per_second`, the other clients the rest.
//!
//! Sources are client addresses: an IPv4 address, or an IPv6 address's /64 (one subscriber's
//! network; a client given a /64 could otherwise take a new bucket per address). The table of
//! sources is bounded ([`LookupRateConfig::max_sources`]): when full, sources whose bucket has
//! refilled are forgotten (a full bucket is what a new source gets anyway), and if too few
//! have, every source. Many addresses can therefore reset their buckets, but never the
//! worker's: that one is the bound.
//!
//! Integer arithmetic in thousandths of a token: a bucket refilling at `r` tokens per second
//! gains exactly `r` thousandths per millisecond. No clock: the caller passes `now_ms`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use crate::config::LookupRateConfig;

/// Thousandths of a token per token.
const MILLI: u64 = 1000;

/// One bucket's level, at `last_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TokenBucket {
    milli: u64,
    last_ms: u64,
}

/// A bucket's parameters.
#[derive(Debug, Clone, Copy)]
struct Rate {
    per_second: u64,
    burst: u64,
}

impl Rate {
    fn capacity(self) -> u64 {
        self.burst.saturating_mul(MILLI)
    }
}

impl TokenBucket {
    /// A bucket no one has used: full (its first refill, whatever `now_ms`, keeps it full).
    fn full(rate: Rate) -> Self {
        Self { milli: rate.capacity(), last_ms: 0 }
    }

    /// Its level at `now_ms` (a clock that goes back adds nothing and loses nothing).
    fn level(self, rate: Rate, now_ms: u64) -> u64 {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.milli.saturating_add(elapsed.saturating_mul(rate.per_second)).min(rate.capacity())
    }

    fn refill(&mut self, rate: Rate, now_ms: u64) {
        self.milli = self.level(rate, now_ms);
        self.last_ms = self.last_ms.max(now_ms);
    }

    fn has_token(self) -> bool {
        self.milli >= MILLI
    }

    fn take(&mut self) {
        self.milli = self.milli.saturating_sub(MILLI);
    }

    /// Milliseconds until it holds a token again.
    fn wait_ms(self, rate: Rate) -> u64 {
        MILLI.saturating_sub(self.milli).div_ceil(rate.per_second.max(1))
    }
}

/// A client as the per-source buckets see it (see the module's doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(u128);

impl Source {
    /// Every client whose address is unknown or not IP (a unix socket): they share one bucket.
    pub const UNKNOWN: Self = Self(0);

    /// From Envoy's `source.address` property: `1.2.3.4:5678`, `[2001:db8::1]:5678`, or an
    /// address without a port.
    pub fn of_address(address: &[u8]) -> Self {
        let Ok(text) = std::str::from_utf8(address) else { return Self::UNKNOWN };
        let ip = match text.parse::<SocketAddr>() {
            Ok(socket) => socket.ip(),
            Err(_) => match text.parse::<IpAddr>() {
                Ok(ip) => ip,
                Err(_) => return Self::UNKNOWN,
            },
        };
        Self::of_ip(ip)
    }

    pub fn of_ip(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self(u128::from(v4.to_ipv6_mapped())),
            // An IPv4 client of a dual-stack listener is itself, not the mapped range's /64.
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(u128::from(v4.to_ipv6_mapped())),
                None => Self(u128::from(v6) & !u128::from(u64::MAX)),
            },
        }
    }
}

/// Which bucket refused a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    /// The worker's: too many lookups from every client together.
    Worker,
    /// The client's own.
    Source,
}

/// A lookup that may not start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub bucket: Bucket,
    /// When the bucket that refused holds a token again.
    pub retry_after_ms: u64,
}

impl Refused {
    /// For `retry-after` (whole seconds, at least 1).
    pub fn retry_after_secs(self) -> u64 {
        self.retry_after_ms.div_ceil(1000).max(1)
    }
}

/// One worker's lookup buckets.
#[derive(Debug)]
pub struct LookupBudget {
    worker_rate: Rate,
    /// None: no per-source buckets (`per_source_per_second` is 0).
    source_rate: Option<Rate>,
    max_sources: usize,
    worker: TokenBucket,
    sources: HashMap<Source, TokenBucket>,
}

impl LookupBudget {
    pub fn new(config: &LookupRateConfig) -> Self {
        let worker_rate = Rate { per_second: u64::from(config.per_second), burst: u64::from(config.burst) };
        let source_rate = (config.per_source_per_second > 0).then(|| Rate {
            per_second: u64::from(config.per_source_per_second),
            burst: u64::from(config.per_source_burst),
        });
        Self {
            worker_rate,
            source_rate,
            max_sources: usize::try_from(config.max_sources).unwrap_or(usize::MAX).max(1),
            worker: TokenBucket::full(worker_rate),
            sources: HashMap::new(),
        }
    }

    /// Whether [`Self::try_start`] needs the client's address (the caller reads it only then).
    pub fn per_source(&self) -> bool {
        self.source_rate.is_some()
    }

    /// Takes a token from the worker's bucket and the source's, or from neither: a lookup the
    /// worker refuses costs the client nothing, and one the client's bucket refuses costs the
    /// other clients nothing. `source` is ignored without per-source buckets.
    pub fn try_start(&mut self, source: Option<Source>, now_ms: u64) -> Result<(), Refused> {
        self.worker.refill(self.worker_rate, now_ms);
        let worker_ready = self.worker.has_token();
        let worker_wait = self.worker.wait_ms(self.worker_rate);
        if let (Some(rate), Some(source)) = (self.source_rate, source) {
            let bucket = self.source_bucket(source, rate, now_ms);
            if !bucket.has_token() {
                return Err(Refused { bucket: Bucket::Source, retry_after_ms: bucket.wait_ms(rate) });
            }
            if worker_ready {
                bucket.take();
            }
        }
        if !worker_ready {
            return Err(Refused { bucket: Bucket::Worker, retry_after_ms: worker_wait });
        }
        self.worker.take();
        Ok(())
    }

    /// The source's bucket, refilled to `now_ms`; a new source gets a full one, in a table
    /// kept under `max_sources`.
    fn source_bucket(&mut self, source: Source, rate: Rate, now_ms: u64) -> &mut TokenBucket {
        if !self.sources.contains_key(&source) && self.sources.len() >= self.max_sources {
            self.make_room(rate, now_ms);
        }
        let bucket = self.sources.entry(source).or_insert_with(|| TokenBucket::full(rate));
        bucket.refill(rate, now_ms);
        bucket
    }

    /// Frees at least a tenth of the table, so its scans run at most once per that many new
    /// sources: sources whose bucket is full again go first (forgetting them changes nothing),
    /// and if that is not enough, every source.
    fn make_room(&mut self, rate: Rate, now_ms: u64) {
        let target = self.max_sources.saturating_sub(self.max_sources.div_ceil(10));
        self.sources.retain(|_, bucket| bucket.level(rate, now_ms) < rate.capacity());
        if self.sources.len() > target {
            self.sources.clear();
        }
    }

    /// Sources tracked now.
    pub fn sources(&self) -> usize {
        self.sources.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_795_341_610_000;

    fn config(per_second: u32, burst: u32, per_source_per_second: u32, per_source_burst: u32) -> LookupRateConfig {
        LookupRateConfig { per_second, burst, per_source_per_second, per_source_burst, max_sources: 100 }
    }

    fn ip(text: &str) -> Option<Source> {
        Some(Source::of_address(text.as_bytes()))
    }

    /// Lookups that start out of `n` tries at `now_ms`.
    fn started(budget: &mut LookupBudget, source: Option<Source>, n: usize, now_ms: u64) -> usize {
        (0..n).filter(|_| budget.try_start(source, now_ms).is_ok()).count()
    }

    #[test]
    fn the_defaults_are_50_a_second_and_100_at_once_10_and_20_per_source() {
        let d = LookupRateConfig::default();
        assert_eq!((d.per_second, d.burst, d.per_source_per_second, d.per_source_burst), (50, 100, 10, 20));
        assert_eq!(d.max_sources, 4096);
    }

    #[test]
    fn a_burst_passes_then_the_rate_refills() {
        let mut b = LookupBudget::new(&config(50, 100, 0, 0));
        assert!(!b.per_source());
        assert_eq!(started(&mut b, None, 150, NOW), 100, "the burst");
        let refused = b.try_start(None, NOW).unwrap_err();
        assert_eq!(refused, Refused { bucket: Bucket::Worker, retry_after_ms: 20 });
        assert_eq!(refused.retry_after_secs(), 1);
        assert_eq!(started(&mut b, None, 10, NOW + 19), 0);
        assert_eq!(started(&mut b, None, 10, NOW + 20), 1, "one token every 20 ms");
        assert_eq!(started(&mut b, None, 100, NOW + 1_020), 50, "50 a second");
        assert_eq!(started(&mut b, None, 500, NOW + 60_000), 100, "never more than the burst");
    }

    #[test]
    fn a_flood_gets_at_most_burst_plus_rate_times_time() {
        let mut b = LookupBudget::new(&config(50, 100, 0, 0));
        // 10,000 tries spread over 10 s, one a millisecond.
        let ok = (0..10_000u64).filter(|i| b.try_start(None, NOW + i).is_ok()).count();
        assert_eq!(ok, 100 + 50 * 10 - 1, "burst + rate × elapsed (the last token lands at 10 s)");
    }

    #[test]
    fn fractions_of_a_token_accumulate_exactly() {
        let mut b = LookupBudget::new(&config(3, 2, 0, 0));
        assert_eq!(started(&mut b, None, 5, NOW), 2);
        let refused = b.try_start(None, NOW).unwrap_err();
        assert_eq!(refused.retry_after_ms, 334, "1000/3 ms, rounded up");
        let ok = (1..=3_000u64).filter(|i| b.try_start(None, NOW + i).is_ok()).count();
        assert_eq!(ok, 9, "3 a second for 3 s");
    }

    #[test]
    fn a_clock_going_back_neither_adds_nor_loses_tokens() {
        let mut b = LookupBudget::new(&config(10, 2, 0, 0));
        assert_eq!(started(&mut b, None, 5, NOW), 2);
        assert_eq!(started(&mut b, None, 5, NOW - 60_000), 0);
        assert_eq!(started(&mut b, None, 5, NOW + 100), 1, "refilled from the latest time seen");
    }

    #[test]
    fn a_source_gets_its_own_share_and_the_others_the_rest() {
        let mut b = LookupBudget::new(&config(50, 100, 10, 20));
        let abuser = ip("203.0.113.9:40000");
        assert_eq!(started(&mut b, abuser, 1_000, NOW), 20, "its burst");
        let refused = b.try_start(abuser, NOW).unwrap_err();
        assert_eq!(refused, Refused { bucket: Bucket::Source, retry_after_ms: 100 });
        // The same client from another port is the same source.
        assert!(b.try_start(ip("203.0.113.9:40001"), NOW).is_err());
        // Another client still has its whole burst, and the worker's refusals cost it nothing.
        assert_eq!(started(&mut b, ip("198.51.100.7:1234"), 1_000, NOW), 20);
        // Three more take the rest of the worker's 100 between them…
        assert_eq!(started(&mut b, ip("198.51.100.8:1"), 1_000, NOW), 20);
        assert_eq!(started(&mut b, ip("198.51.100.9:1"), 1_000, NOW), 20);
        assert_eq!(started(&mut b, ip("198.51.100.10:1"), 1_000, NOW), 20);
        let refused = b.try_start(ip("198.51.100.11:1"), NOW).unwrap_err();
        assert_eq!(refused.bucket, Bucket::Worker, "…and then nobody gets one");
        // A refusal by the worker did not spend the new source's token.
        assert_eq!(started(&mut b, ip("198.51.100.11:1"), 1_000, NOW + 1_000), 20);
    }

    #[test]
    fn a_refusal_by_the_source_costs_the_worker_nothing() {
        let mut b = LookupBudget::new(&config(50, 30, 10, 20));
        let abuser = ip("203.0.113.9:1");
        assert_eq!(started(&mut b, abuser, 1_000, NOW), 20);
        assert_eq!(started(&mut b, ip("198.51.100.7:1"), 1_000, NOW), 10, "the worker's 30 less the abuser's 20");
    }

    #[test]
    fn addresses_ipv4_by_host_ipv6_by_64_unknown_together() {
        let a = Source::of_address(b"192.0.2.1:5000");
        assert_eq!(a, Source::of_address(b"192.0.2.1"));
        assert_eq!(a, Source::of_address(b"[::ffff:192.0.2.1]:7"), "an IPv4 client of a dual-stack listener");
        assert_ne!(a, Source::of_address(b"192.0.2.2:5000"));
        let v6 = Source::of_address(b"[2001:db8:1:2::1]:443");
        assert_eq!(v6, Source::of_address(b"[2001:db8:1:2:ffff:ffff:ffff:ffff]:1"), "same /64");
        assert_ne!(v6, Source::of_address(b"[2001:db8:1:3::1]:443"), "another /64");
        assert_ne!(Source::of_address(b"[::ffff:192.0.2.2]:7"), a, "mapped addresses are not one /64");
        for junk in [&b""[..], b"/var/run/envoy.sock", b"\xff\xfe", b"1.2.3:4", b"envoy://internal"] {
            assert_eq!(Source::of_address(junk), Source::UNKNOWN);
        }
    }

    #[test]
    fn without_per_source_buckets_the_source_is_ignored() {
        let mut b = LookupBudget::new(&config(5, 5, 0, 0));
        assert_eq!(started(&mut b, ip("192.0.2.1:1"), 10, NOW), 5);
        assert_eq!(b.sources(), 0);
    }

    #[test]
    fn the_source_table_stays_bounded_and_forgets_idle_sources_first() {
        let mut b = LookupBudget::new(&LookupRateConfig { max_sources: 100, ..config(1_000_000, 1_000_000, 10, 20) });
        let source = |i: u32| Some(Source::of_ip(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i))));
        // A busy source, then 99 sources that each make one lookup.
        assert_eq!(started(&mut b, source(0), 100, NOW), 20);
        for i in 1..100 {
            assert!(b.try_start(source(i), NOW).is_ok());
        }
        assert_eq!(b.sources(), 100);
        // 150 ms later the one-lookup sources are full again, the busy one is not: a new source
        // forgets the idle ones and keeps the busy one's state.
        assert!(b.try_start(source(100), NOW + 150).is_ok());
        assert_eq!(b.sources(), 2);
        assert_eq!(started(&mut b, source(0), 100, NOW + 150), 1, "still limited: 1.5 tokens refilled");
        // Thousands of busy sources: the table never grows past its bound.
        for i in 0..5_000 {
            let _ = b.try_start(source(1_000 + i), NOW + 200);
            let _ = b.try_start(source(1_000 + i), NOW + 200);
            assert!(b.sources() <= 100);
        }
    }

    #[test]
    fn forgetting_sources_never_resets_the_worker_bucket() {
        let mut b = LookupBudget::new(&LookupRateConfig { max_sources: 10, ..config(50, 100, 10, 20) });
        let total: usize = (0..10_000u32)
            .map(|i| Source::of_ip(IpAddr::V4(std::net::Ipv4Addr::from(i))))
            .map(|s| started(&mut b, Some(s), 1, NOW))
            .sum();
        assert_eq!(total, 100, "10,000 addresses get the worker's burst between them, no more");
    }
}
