//! Usage ingestion throughput: N concurrent senders (as N Envoys' singleton VMs would be) push
//! batches of usage records through the data-plane gRPC port into a fresh Postgres database,
//! then the rows are counted and one batch is replayed (it must change nothing).
//!
//! `cargo run --release -p sluice-control-plane --example ingest_bench -- [records] [batch] [senders]`
//! (Postgres from SLUICE_TEST_POSTGRES, default postgres://postgres@127.0.0.1:5432).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: failing loudly is the point

use std::time::Instant;

mod support;

use sluice_proto::gateway::v1::usage_service_client::UsageServiceClient;
use sluice_proto::gateway::v1::{Outcome, ReportUsageRequest, UsageRecord};
use sqlx::Row;
use support::BenchPlane;
use tonic::transport::Channel;

fn record(i: usize) -> UsageRecord {
    UsageRecord {
        request_id: format!("req-{i}"),
        record_id: format!("bench-{i:012}"),
        key_id: format!("key_{:04}", i % 1000),
        team_id: Some(format!("team-{}", i % 20)),
        user_id: Some(format!("user-{}", i % 200)),
        model_group: ["gpt-4o", "gpt-4o-mini", "claude"][i % 3].into(),
        deployment: "d1".into(),
        route: "/v1/chat/completions".into(),
        status: 200,
        outcome: Outcome::Completed.into(),
        prompt_tokens: 250,
        completion_tokens: 350,
        total_tokens: 600,
        cost_usd: 0.0041,
        start_ms: 1_795_300_000_000 + i as u64,
        streamed: i.is_multiple_of(2),
        ..Default::default()
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let total = args.first().copied().unwrap_or(200_000);
    let batch = args.get(1).copied().unwrap_or(500);
    let senders = args.get(2).copied().unwrap_or(4);

    let plane = BenchPlane::start("sluice_ingest_bench").await;
    let data_url = plane.data_url.clone();

    let records: Vec<UsageRecord> = (0..total).map(record).collect();
    let batches: Vec<Vec<UsageRecord>> = records.chunks(batch).map(<[UsageRecord]>::to_vec).collect();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..senders {
        let mine: Vec<Vec<UsageRecord>> = batches.iter().skip(s).step_by(senders).cloned().collect();
        let url = data_url.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = UsageServiceClient::new(Channel::from_shared(url).unwrap().connect().await.unwrap());
            for b in mine {
                client.report(ReportUsageRequest { records: b }).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();

    let count: i64 = sqlx::query("SELECT COUNT(*) AS n FROM spend_logs")
        .fetch_one(plane.store.pool())
        .await
        .unwrap()
        .try_get("n")
        .unwrap();
    let mut client = UsageServiceClient::new(Channel::from_shared(data_url).unwrap().connect().await.unwrap());
    let replay = client.report(ReportUsageRequest { records: batches[0].clone() }).await.unwrap().into_inner();
    println!(
        "ingested {total} records in {elapsed:.2} s: {:.0} records/s (batches of {batch}, {senders} senders); \
         rows in spend_logs: {count}; replayed batch: {} new, {} duplicates",
        total as f64 / elapsed,
        replay.accepted,
        replay.duplicates
    );
    assert_eq!(count as usize, total, "every record exactly once");
    assert_eq!(replay.accepted, 0);

    plane.finish().await;
}
