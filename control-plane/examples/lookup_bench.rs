//! Key lookup latency with 1,000,000 keys in Postgres: what an Envoy's cache miss costs at the
//! control plane. Keys are made in the database with `generate_series` (their digests are
//! SHA-256 of `key-<n>`), then `KeyLookupService/Lookup` is called over gRPC, one call at a
//! time, for random existing keys and for unknown ones; p50/p99/max are printed.
//!
//! `cargo run --release -p sluice-control-plane --example lookup_bench -- [keys] [lookups] [budgeted]`
//! (Postgres from SLUICE_TEST_POSTGRES, default postgres://postgres@127.0.0.1:5432). With
//! `budgeted` = 1 every key has a daily max budget, so each lookup also reads its window's
//! spend (`budget_windows`): half the keys have a row for today's window, the others none (the
//! lookup then sums `spend_logs` for the window).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: failing loudly is the point

use std::time::{Duration, Instant};

mod support;

use sluice_core::keys::KeyHash;
use sluice_core::routing::SplitMix64;
use sluice_proto::gateway::v1::KeyLookupRequest;
use sluice_proto::gateway::v1::key_lookup_service_client::KeyLookupServiceClient;
use sqlx::Executor;
use support::BenchPlane;
use tonic::transport::Channel;

fn digest(n: u64) -> String {
    format!("sha256:{}", KeyHash::of(format!("key-{n}").as_bytes()).to_hex())
}

fn percentiles(mut v: Vec<Duration>) -> String {
    v.sort();
    let at = |p: f64| v[((v.len() as f64 * p) as usize).min(v.len() - 1)].as_secs_f64() * 1e3;
    format!("p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms", at(0.5), at(0.99), at(1.0))
}

#[tokio::main]
async fn main() {
    let args: Vec<u64> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let keys = args.first().copied().unwrap_or(1_000_000);
    let lookups = args.get(1).copied().unwrap_or(20_000) as usize;
    let budgeted = args.get(2).copied().unwrap_or(0) == 1;

    let plane = BenchPlane::start("sluice_lookup_bench").await;
    let store = &plane.store;
    let started = Instant::now();
    let (budget, budget_values) =
        if budgeted { (", max_budget_nanos, budget_duration", ", 1000000000000, '1d'") } else { ("", "") };
    store
        .pool()
        .execute(
            format!(
                "INSERT INTO keys (key_id, key_prefix, last4, key_type, created_at, updated_at, rpm_limit, models{budget}) \
                 SELECT 'key_' || g, 'sk-sluice-', 'abcd', 'llm_api', 0, 0, 600, '[\"gpt-4o\"]'{budget_values} \
                 FROM generate_series(1, {keys}) g"
            )
            .as_str(),
        )
        .await
        .unwrap();
    if budgeted {
        let day_ms = 86_400_000;
        let today = sluice_control_plane::store::now_ms() / day_ms * day_ms;
        store
            .pool()
            .execute(
                format!(
                    "INSERT INTO budget_windows (scope_kind, scope_id, period_start, period_end, spend_nanos, seeded) \
                     SELECT 'key', 'key_' || g, {today}, {}, g, 1 FROM generate_series(1, {keys}, 2) g",
                    today + day_ms
                )
                .as_str(),
            )
            .await
            .unwrap();
    }
    store
        .pool()
        .execute(
            format!(
                "INSERT INTO key_hashes (key_hash, key_id) SELECT 'sha256:' || encode(sha256(('key-' || g)::bytea), 'hex'), \
                 'key_' || g FROM generate_series(1, {keys}) g"
            )
            .as_str(),
        )
        .await
        .unwrap();
    // Settle the load (statistics, a checkpoint) before measuring, as a database in service is.
    store.pool().execute("ANALYZE").await.unwrap();
    store.pool().execute("CHECKPOINT").await.unwrap();
    let what = if budgeted { " (each with a daily budget)" } else { "" };
    println!("{keys} keys{what} created in {:.1} s", started.elapsed().as_secs_f64());

    let channel = Channel::from_shared(plane.data_url.clone()).unwrap().connect().await.unwrap();
    let mut client = KeyLookupServiceClient::new(channel);

    let mut rng = SplitMix64::new(7);
    let mut found = Vec::with_capacity(lookups);
    let mut missing = Vec::with_capacity(lookups / 4);
    // Warm the connection and the database's caches a little, as a running system would be.
    for _ in 0..500 {
        let n = rng.next_u64() % keys + 1;
        client.lookup(KeyLookupRequest { key_hash: digest(n) }).await.unwrap();
    }
    for i in 0..lookups + lookups / 4 {
        let (n, known) =
            if i < lookups { (rng.next_u64() % keys + 1, true) } else { (keys + 1 + rng.next_u64() % keys, false) };
        let t = Instant::now();
        let answer = client.lookup(KeyLookupRequest { key_hash: digest(n) }).await.unwrap().into_inner();
        let took = t.elapsed();
        assert_eq!(answer.key_json.is_empty(), !known);
        if known { found.push(took) } else { missing.push(took) }
    }
    println!("lookup of an existing key{what} ({lookups} calls, random over {keys} keys): {}", percentiles(found));
    println!("lookup of an unknown key ({} calls): {}", lookups / 4, percentiles(missing));

    plane.finish().await;
}
