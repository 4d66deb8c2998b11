//! The data-plane port, as an Envoy uses it: key lookups and usage ingestion, on SQLite and on
//! a fresh Postgres database.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Db, MASTER, Plane, as_};
use sluice_core::config::{KeyConfig, TeamConfig};
use sluice_core::keys::KeyHash;
use sluice_proto::admin::v1 as pb;
use sluice_proto::admin::v1::key_service_client::KeyServiceClient;
use sluice_proto::admin::v1::spend_service_client::SpendServiceClient;
use sluice_proto::gateway::v1::key_lookup_service_client::KeyLookupServiceClient;
use sluice_proto::gateway::v1::usage_service_client::UsageServiceClient;
use sluice_proto::gateway::v1::{KeyLookupRequest, Outcome, ReportUsageRequest, UsageRecord};

fn digest(key: &str) -> String {
    format!("sha256:{}", KeyHash::of(key.as_bytes()).to_hex())
}

async fn generate(plane: &Plane, spec: pb::KeySpec) -> pb::GeneratedKey {
    let mut keys: KeyServiceClient<_> = plane.keys().await;
    keys.generate_key(as_(MASTER, pb::GenerateKeyRequest { spec: Some(spec) })).await.unwrap().into_inner()
}

async fn lookup(plane: &Plane, key: &str) -> (Option<KeyConfig>, Option<TeamConfig>) {
    let mut c = KeyLookupServiceClient::new(plane.data_channel().await);
    let r = c.lookup(KeyLookupRequest { key_hash: digest(key) }).await.unwrap().into_inner();
    let key = (!r.key_json.is_empty()).then(|| serde_json::from_str(&r.key_json).unwrap());
    let team = (!r.team_json.is_empty()).then(|| serde_json::from_str(&r.team_json).unwrap());
    (key, team)
}

async fn key_lookup_answers_what_the_filter_needs(db: Db) {
    let plane = Plane::start(db).await;
    let mut teams = plane.teams().await;
    teams
        .create_team(as_(
            MASTER,
            pb::CreateTeamRequest {
                team_id: "ml".into(),
                limits: Some(pb::Limits { rpm_limit: Some(50), ..Default::default() }),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let created = generate(
        &plane,
        pb::KeySpec {
            key_alias: Some("svc".into()),
            team_id: Some("ml".into()),
            models: vec!["gpt-4o".into()],
            limits: Some(pb::Limits {
                rpm_limit: Some(7),
                max_budget: Some(2.5),
                budget_duration: Some("1d".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    let (key, team) = lookup(&plane, &created.key).await;
    let key = key.expect("a stored key is found by its digest");
    assert_eq!(key.key_hash, KeyHash::from_hex(&digest(&created.key)));
    assert_eq!((key.rpm_limit, key.max_budget, key.models.clone()), (Some(7), Some(2.5), vec!["gpt-4o".to_owned()]));
    assert_eq!(key.team_id.as_deref(), Some("ml"));
    assert_eq!(team.unwrap().rpm_limit, Some(50));
    // The filter compiles what it is given.
    assert!(!key.blocked);

    // Unknown keys, and management keys (admin API only), are not found.
    assert_eq!(lookup(&plane, "sk-sluice-unknown").await.0, None);
    let management =
        generate(&plane, pb::KeySpec { key_type: pb::KeyType::Management.into(), ..Default::default() }).await;
    assert_eq!(lookup(&plane, &management.key).await.0, None);

    // A blocked key is returned blocked (the filter gives the precise error).
    let mut keys = plane.keys().await;
    keys.block_key(as_(MASTER, pb::KeyRef { r#ref: Some(pb::key_ref::Ref::KeyId(created.info.unwrap().key_id)) }))
        .await
        .unwrap();
    assert!(lookup(&plane, &created.key).await.0.unwrap().blocked);

    // A malformed digest is the caller's error, not a miss.
    let mut c = KeyLookupServiceClient::new(plane.data_channel().await);
    let err = c.lookup(KeyLookupRequest { key_hash: "sha256:xyz".into() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    plane.stop().await;
}

fn record(id: &str, key_id: &str, cost: f64) -> UsageRecord {
    UsageRecord {
        request_id: format!("req-{id}"),
        record_id: id.into(),
        key_id: key_id.into(),
        team_id: Some("ml".into()),
        model_group: "gpt-4o".into(),
        deployment: "gpt-4o-a".into(),
        route: "/v1/chat/completions".into(),
        status: 200,
        outcome: Outcome::Completed.into(),
        prompt_tokens: 100,
        completion_tokens: 20,
        total_tokens: 120,
        cost_usd: cost,
        start_ms: 1_795_300_000_000,
        ..Default::default()
    }
}

async fn replayed_batches_count_once_and_spend_is_enriched(db: Db) {
    let plane = Plane::start(db).await;
    let mut orgs = plane.orgs().await;
    orgs.create_organization(as_(
        MASTER,
        pb::CreateOrganizationRequest { organization_id: "acme".into(), ..Default::default() },
    ))
    .await
    .unwrap();
    let created = generate(
        &plane,
        pb::KeySpec { organization_id: Some("acme".into()), tags: vec!["prod".into()], ..Default::default() },
    )
    .await;
    let key_id = created.info.unwrap().key_id;
    let batch: Vec<UsageRecord> = (0..50).map(|i| record(&format!("rec-{i}"), &key_id, 0.001)).collect();
    let mut usage = UsageServiceClient::new(plane.data_channel().await);
    let first = usage.report(ReportUsageRequest { records: batch.clone() }).await.unwrap().into_inner();
    assert_eq!((first.accepted, first.duplicates), (50, 0));
    // The singleton retries a batch whose answer it lost: nothing changes.
    let again = usage.report(ReportUsageRequest { records: batch[10..30].to_vec() }).await.unwrap().into_inner();
    assert_eq!((again.accepted, again.duplicates), (0, 20));

    let mut spend = SpendServiceClient::new(plane.channel().await);
    let q = |query: pb::SpendQuery| as_(MASTER, query);
    let by_key = spend.query_spend(q(pb::SpendQuery { key_id: Some(key_id.clone()), ..Default::default() })).await;
    let by_key = by_key.unwrap().into_inner();
    assert_eq!(by_key.requests, 50);
    assert!((by_key.spend - 0.05).abs() < 1e-9, "{}", by_key.spend);
    // Organization and tags come from the stored key, not from the filter.
    let by_org = spend
        .query_spend(q(pb::SpendQuery { organization_id: Some("acme".into()), ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_org.requests, 50);
    let by_tag = spend
        .query_spend(q(pb::SpendQuery { tag: Some("prod".into()), ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_tag.requests, 50);

    // The same record twice in one batch counts once.
    let twice = vec![record("rec-dup", &key_id, 0.001), record("rec-dup", &key_id, 0.001)];
    let dup = usage.report(ReportUsageRequest { records: twice }).await.unwrap().into_inner();
    assert_eq!((dup.accepted, dup.duplicates), (1, 1));

    // A record without its idempotency key is refused whole.
    let mut bad = record("", &key_id, 0.0);
    bad.record_id.clear();
    let err = usage.report(ReportUsageRequest { records: vec![bad] }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    plane.stop().await;
}

#[tokio::test]
async fn key_lookup_sqlite() {
    key_lookup_answers_what_the_filter_needs(Db::Sqlite).await;
}

#[tokio::test]
async fn key_lookup_postgres() {
    key_lookup_answers_what_the_filter_needs(Db::Postgres).await;
}

#[tokio::test]
async fn usage_ingestion_sqlite() {
    replayed_batches_count_once_and_spend_is_enriched(Db::Sqlite).await;
}

#[tokio::test]
async fn usage_ingestion_postgres() {
    replayed_batches_count_once_and_spend_is_enriched(Db::Postgres).await;
}

async fn admin_changes_are_pushed_to_watchers(db: Db) {
    use sluice_proto::gateway::v1::WatchInvalidationsRequest;
    let plane = Plane::start(db).await;
    let mut lookups = KeyLookupServiceClient::new(plane.data_channel().await);
    let start = lookups.watch_invalidations(WatchInvalidationsRequest::default()).await.unwrap().into_inner();
    assert!(!start.reset && !start.epoch.is_empty());

    // A watch is held open until something changes; blocking a key answers it.
    let waiting = {
        let mut c = KeyLookupServiceClient::new(plane.data_channel().await);
        let req = WatchInvalidationsRequest { epoch: start.epoch.clone(), after_seq: start.last_seq };
        tokio::spawn(async move { c.watch_invalidations(req).await.unwrap().into_inner() })
    };
    let created = generate(&plane, pb::KeySpec::default()).await;
    let key_id = created.info.unwrap().key_id;
    let mut keys = plane.keys().await;
    keys.block_key(as_(MASTER, pb::KeyRef { r#ref: Some(pb::key_ref::Ref::KeyId(key_id.clone())) })).await.unwrap();
    let woken = tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await.unwrap().unwrap();
    assert_eq!(woken.key_ids, std::slice::from_ref(&key_id));

    // Deletion and team changes too, in order, from where the watcher left off.
    keys.delete_key(as_(MASTER, pb::KeyRef { r#ref: Some(pb::key_ref::Ref::KeyId(key_id.clone())) })).await.unwrap();
    let mut teams = plane.teams().await;
    teams
        .create_team(as_(MASTER, pb::CreateTeamRequest { team_id: "ops".into(), ..Default::default() }))
        .await
        .unwrap();
    teams.block_team(as_(MASTER, pb::TeamRef { team_id: "ops".into() })).await.unwrap();
    let next = lookups
        .watch_invalidations(WatchInvalidationsRequest { epoch: woken.epoch.clone(), after_seq: woken.last_seq })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((next.key_ids, next.team_ids), (vec![key_id], vec!["ops".to_owned()]));
    // A watcher from another epoch (the control plane restarted) must drop everything.
    let stale = lookups
        .watch_invalidations(WatchInvalidationsRequest { epoch: "old".into(), after_seq: 3 })
        .await
        .unwrap()
        .into_inner();
    assert!(stale.reset);
    plane.stop().await;
}

#[tokio::test]
async fn invalidations_sqlite() {
    admin_changes_are_pushed_to_watchers(Db::Sqlite).await;
}

#[tokio::test]
async fn invalidations_postgres() {
    admin_changes_are_pushed_to_watchers(Db::Postgres).await;
}

async fn budgets_are_counted_across_the_fleet(db: Db) {
    use sluice_proto::gateway::v1::WatchInvalidationsRequest;
    let plane = Plane::start(db).await;
    let created = generate(
        &plane,
        pb::KeySpec {
            limits: Some(pb::Limits {
                max_budget: Some(0.01),
                soft_budget: Some(0.005),
                budget_duration: Some("2s".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    let key_id = created.info.unwrap().key_id;
    let fleet_spend = |answer: (Option<KeyConfig>, Option<TeamConfig>)| answer.0.unwrap().fleet_spend.unwrap();
    assert_eq!(fleet_spend(lookup(&plane, &created.key).await), 0.0);

    let mut lookups = KeyLookupServiceClient::new(plane.data_channel().await);
    let start = lookups.watch_invalidations(WatchInvalidationsRequest::default()).await.unwrap().into_inner();
    // A record counts in the window it started in: start at the beginning of a 2 s window, so
    // that the records and the lookups below share one.
    let ms = || u64::try_from(sluice_control_plane::store::now_ms()).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2_000 - ms() % 2_000 + 20)).await;
    let now = ms();
    let batch = |from: usize| -> Vec<UsageRecord> {
        (from..from + 4).map(|i| UsageRecord { start_ms: now, ..record(&format!("b-{i}"), &key_id, 0.002) }).collect()
    };
    let mut usage = UsageServiceClient::new(plane.data_channel().await);
    // Two Envoys report $0.008 between them: over the soft budget, under the max.
    usage.report(ReportUsageRequest { records: batch(0) }).await.unwrap();
    let metrics_before_max = plane.metrics_text().await;
    assert!(metrics_before_max.contains("sluice_budget_soft_alerts_total 1\n"), "{metrics_before_max}");
    assert!(metrics_before_max.contains("sluice_budget_exhausted_total 0\n"));
    assert!((fleet_spend(lookup(&plane, &created.key).await) - 0.008).abs() < 1e-9);
    // One more batch crosses $0.01: every Envoy is told to look the key up again.
    usage.report(ReportUsageRequest { records: batch(4) }).await.unwrap();
    let told = lookups
        .watch_invalidations(WatchInvalidationsRequest { epoch: start.epoch.clone(), after_seq: start.last_seq })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(told.key_ids, std::slice::from_ref(&key_id));
    assert!(fleet_spend(lookup(&plane, &created.key).await) >= 0.01);
    // A replayed batch does not count again.
    usage.report(ReportUsageRequest { records: batch(4) }).await.unwrap();
    assert!((fleet_spend(lookup(&plane, &created.key).await) - 0.016).abs() < 1e-9);
    // When the 2 s window ends, Envoys are told again, and the key starts the new window at $0.
    let reset = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        lookups.watch_invalidations(WatchInvalidationsRequest { epoch: told.epoch.clone(), after_seq: told.last_seq }),
    )
    .await
    .unwrap()
    .unwrap()
    .into_inner();
    assert_eq!(reset.key_ids, [key_id]);
    assert_eq!(fleet_spend(lookup(&plane, &created.key).await), 0.0);
    plane.stop().await;
}

#[tokio::test]
async fn fleet_budgets_sqlite() {
    budgets_are_counted_across_the_fleet(Db::Sqlite).await;
}

#[tokio::test]
async fn fleet_budgets_postgres() {
    budgets_are_counted_across_the_fleet(Db::Postgres).await;
}

/// A user's and an organization's budgets (LiteLLM's `max_budget` on users and organizations):
/// counted from every Envoy's usage, carried by every lookup of their keys, and announced to
/// Envoys (every key of the user or organization) when spent and when the window ends.
async fn user_and_org_budgets_are_counted_across_the_fleet(db: Db) {
    use sluice_proto::gateway::v1::{WatchInvalidationsRequest, WatchInvalidationsResponse};
    let plane = Plane::start(db).await;
    let limits = |max: f64, duration: Option<&str>| pb::Limits {
        max_budget: Some(max),
        budget_duration: duration.map(str::to_owned),
        ..Default::default()
    };
    let mut orgs = plane.orgs().await;
    let org = pb::CreateOrganizationRequest {
        organization_id: "acme".into(),
        limits: Some(limits(0.02, None)),
        ..Default::default()
    };
    orgs.create_organization(as_(MASTER, org)).await.unwrap();
    let mut teams = plane.teams().await;
    let team =
        pb::CreateTeamRequest { team_id: "ml".into(), organization_id: Some("acme".into()), ..Default::default() };
    teams.create_team(as_(MASTER, team)).await.unwrap();
    let mut users = plane.users().await;
    for (user_id, budget) in [("alice", Some(limits(0.01, Some("3s")))), ("bob", None)] {
        let user = pb::CreateUserRequest { user_id: user_id.into(), limits: budget, ..Default::default() };
        users.create_user(as_(MASTER, user)).await.unwrap();
    }
    let key = |user: &str, team: Option<&str>| pb::KeySpec {
        user_id: Some(user.into()),
        team_id: team.map(str::to_owned),
        ..Default::default()
    };
    // alice's personal key, alice's key in team ml (organization acme through the team), bob's.
    let alice_own = generate(&plane, key("alice", None)).await;
    let alice_ml = generate(&plane, key("alice", Some("ml"))).await;
    let bob_ml = generate(&plane, key("bob", Some("ml"))).await;
    let id = |k: &pb::GeneratedKey| k.info.clone().unwrap().key_id;

    let answer = lookup(&plane, &alice_ml.key).await.0.unwrap();
    // LiteLLM's rule: a team's key answers to the team's budgets, not its owner's own.
    assert_eq!((answer.user_max_budget, answer.user_fleet_spend), (None, None));
    let own = lookup(&plane, &alice_own.key).await.0.unwrap();
    assert_eq!((own.user_max_budget, own.user_fleet_spend), (Some(0.01), Some(0.0)));
    assert_eq!(answer.organization_id.as_deref(), Some("acme"), "the team's organization");
    assert_eq!((answer.organization_max_budget, answer.organization_fleet_spend), (Some(0.02), Some(0.0)));
    let bob = lookup(&plane, &bob_ml.key).await.0.unwrap();
    assert_eq!((bob.user_max_budget, bob.user_fleet_spend), (None, None), "bob has no budget of his own");
    assert_eq!(bob.organization_max_budget, Some(0.02));
    let plain = lookup(&plane, &alice_own.key).await.0.unwrap();
    assert_eq!((plain.organization_id, plain.organization_max_budget), (None, None));

    // Start at the beginning of a 3 s window of alice's, so the steps below share one window.
    let now = || u64::try_from(sluice_control_plane::store::now_ms()).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(3_000 - now() % 3_000 + 20)).await;
    let mut lookups = KeyLookupServiceClient::new(plane.data_channel().await);
    let start = lookups.watch_invalidations(WatchInvalidationsRequest::default()).await.unwrap().into_inner();
    let mut usage = UsageServiceClient::new(plane.data_channel().await);
    let records = |prefix: &str, k: &pb::GeneratedKey, user: &str, team: Option<&str>, n: usize, cost: f64| {
        let start_ms = now();
        (0..n)
            .map(|i| UsageRecord {
                start_ms,
                user_id: Some(user.into()),
                team_id: team.map(str::to_owned),
                ..record(&format!("{prefix}-{i}"), &id(k), cost)
            })
            .collect::<Vec<_>>()
    };
    // alice spends $0.008 through her personal key: under her budget.
    usage.report(ReportUsageRequest { records: records("a", &alice_own, "alice", None, 4, 0.002) }).await.unwrap();
    let seen = lookup(&plane, &alice_own.key).await.0.unwrap();
    assert!((seen.user_fleet_spend.unwrap() - 0.008).abs() < 1e-9, "{seen:?}");
    let team_key = lookup(&plane, &alice_ml.key).await.0.unwrap();
    assert_eq!(team_key.organization_fleet_spend, Some(0.0), "a personal key's spend is not the organization's");
    // Two more requests cross $0.01: Envoys are told to drop every key of alice's.
    usage.report(ReportUsageRequest { records: records("b", &alice_own, "alice", None, 2, 0.002) }).await.unwrap();
    let next = |after: &WatchInvalidationsResponse| WatchInvalidationsRequest {
        epoch: after.epoch.clone(),
        after_seq: after.last_seq,
    };
    let told = lookups.watch_invalidations(next(&start)).await.unwrap().into_inner();
    assert_eq!((told.user_ids.as_slice(), told.key_ids.len()), (["alice".to_owned()].as_slice(), 0));
    assert!(lookup(&plane, &alice_own.key).await.0.unwrap().user_fleet_spend.unwrap() >= 0.01);
    assert_eq!(lookup(&plane, &alice_ml.key).await.0.unwrap().user_fleet_spend, None, "her team key is not refused");

    // bob spends $0.02 through the team: the organization (through the team) is spent.
    usage.report(ReportUsageRequest { records: records("c", &bob_ml, "bob", Some("ml"), 5, 0.004) }).await.unwrap();
    let told_org = lookups.watch_invalidations(next(&told)).await.unwrap().into_inner();
    assert_eq!(told_org.org_ids, ["acme"]);
    let answer = lookup(&plane, &alice_ml.key).await.0.unwrap();
    assert!((answer.organization_fleet_spend.unwrap() - 0.02).abs() < 1e-9, "{answer:?}");
    // Spend reports see the team's organization on the records too.
    let mut spend = SpendServiceClient::new(plane.channel().await);
    let by_org = pb::SpendQuery { organization_id: Some("acme".into()), ..Default::default() };
    assert_eq!(spend.query_spend(as_(MASTER, by_org)).await.unwrap().into_inner().requests, 5);

    // Raising alice's budget reaches cached keys at once.
    let raise =
        pb::UpdateUserRequest { user_id: "alice".into(), limits: Some(limits(1.0, None)), ..Default::default() };
    users.update_user(as_(MASTER, raise)).await.unwrap();
    let told_update = lookups.watch_invalidations(next(&told_org)).await.unwrap().into_inner();
    assert_eq!(told_update.user_ids, ["alice"]);
    assert_eq!(lookup(&plane, &alice_own.key).await.0.unwrap().user_max_budget, Some(1.0));
    let back =
        pb::UpdateUserRequest { user_id: "alice".into(), limits: Some(limits(0.01, Some("3s"))), ..Default::default() };
    users.update_user(as_(MASTER, back)).await.unwrap();
    let told_back = lookups.watch_invalidations(next(&told_update)).await.unwrap().into_inner();

    // alice's 3 s window ends: Envoys are told again, and her keys start the new one at $0.
    let reset = tokio::time::timeout(std::time::Duration::from_secs(6), lookups.watch_invalidations(next(&told_back)))
        .await
        .unwrap()
        .unwrap()
        .into_inner();
    assert_eq!(reset.user_ids, ["alice"]);
    assert_eq!(lookup(&plane, &alice_own.key).await.0.unwrap().user_fleet_spend, Some(0.0));
    // The organization has no duration: still spent.
    assert!(lookup(&plane, &bob_ml.key).await.0.unwrap().organization_fleet_spend.unwrap() >= 0.02);
    let metrics = plane.metrics_text().await;
    assert!(metrics.contains("sluice_budget_exhausted_total 2\n"), "{metrics}");
    plane.stop().await;
}

#[tokio::test]
async fn owner_budgets_sqlite() {
    user_and_org_budgets_are_counted_across_the_fleet(Db::Sqlite).await;
}

#[tokio::test]
async fn owner_budgets_postgres() {
    user_and_org_budgets_are_counted_across_the_fleet(Db::Postgres).await;
}
