//! The admin API over real gRPC, against SQLite (a fresh file) and the real Postgres on
//! 127.0.0.1:5432 (a fresh database per test). `SLUICE_TEST_POSTGRES` overrides the server URL
//! (default `postgres://postgres@127.0.0.1:5432`).

#![allow(clippy::unwrap_used)] // test helpers: a failure here is a failed test

use sluice_control_plane::store::SqlStore;
use sluice_core::keys::check_format;
use sluice_proto::admin::v1 as pb;
use sluice_proto::admin::v1::key_ref::Ref;
use sluice_proto::admin::v1::key_service_client::KeyServiceClient;
use tonic::Code;
use tonic::transport::Channel;

mod common;

use common::{Db, MASTER, Plane, as_, database};
use sluice_control_plane::provider_policy::ProviderPolicy;
use sluice_control_plane::server::sync_models;
use sluice_control_plane::store::{SpendLog, SpendStore};
use sluice_proto::admin::v1::budget_service_client::BudgetServiceClient;
use sluice_proto::admin::v1::customer_service_client::CustomerServiceClient;
use sluice_proto::admin::v1::model_service_client::ModelServiceClient;
use sluice_proto::admin::v1::spend_service_client::SpendServiceClient;

fn by_id(id: &str) -> pb::KeyRef {
    pb::KeyRef { r#ref: Some(Ref::KeyId(id.into())) }
}

fn spec(alias: &str) -> pb::KeySpec {
    pb::KeySpec { key_alias: Some(alias.into()), ..Default::default() }
}

async fn generate(
    c: &mut KeyServiceClient<Channel>,
    caller: &str,
    spec: pb::KeySpec,
) -> Result<pb::GeneratedKey, tonic::Status> {
    c.generate_key(as_(caller, pb::GenerateKeyRequest { spec: Some(spec) })).await.map(tonic::Response::into_inner)
}

async fn count_keys(c: &mut KeyServiceClient<Channel>) -> u64 {
    c.list_keys(as_(MASTER, pb::ListKeysRequest::default())).await.unwrap().into_inner().total
}

async fn all_audit(plane: &Plane) -> Vec<pb::AuditEntry> {
    let mut c = plane.audit().await;
    c.list_audit(as_(MASTER, pb::ListAuditRequest { page_size: 500, ..Default::default() }))
        .await
        .unwrap()
        .into_inner()
        .entries
}

/// Runs each scenario against both databases, as `<scenario>::sqlite` and `<scenario>::postgres`.
macro_rules! on_both_databases {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let plane = super::Plane::start(super::Db::Sqlite).await;
                super::$scenario(&plane).await;
                plane.stop().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let plane = super::Plane::start(super::Db::Postgres).await;
                super::$scenario(&plane).await;
                plane.stop().await;
            }
        }
    )*};
}

on_both_databases!(
    key_lifecycle,
    rotation_keeps_the_old_key_for_the_grace_period_only,
    listing_is_paged_and_filtered,
    bad_input_is_refused_and_changes_nothing,
    callers_never_exceed_their_own_scope,
    every_mutation_is_audited_without_secrets,
    concurrent_updates_to_one_key_all_land,
    models_are_validated_like_the_gateway,
    config_sync_keeps_models_made_through_the_api,
    spend_queries_answer_from_seeded_records,
    budgets_and_customers,
    expired_and_blocked_keys_lose_access,
    directory_lists_are_paged,
);

async fn key_lifecycle(plane: &Plane) {
    let mut c = plane.keys().await;
    let made = generate(
        &mut c,
        MASTER,
        pb::KeySpec {
            key_alias: Some("ci".into()),
            team_id: Some("t1".into()),
            models: vec!["gpt-4o".into()],
            limits: Some(pb::Limits { max_budget: Some(50.0), rpm_limit: Some(60), ..Default::default() }),
            duration: Some("30d".into()),
            metadata_json: Some(r#"{"owner":"ci"}"#.into()),
            tags: vec!["prod".into()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // The plaintext comes back once, in Sluice's format; the record shows only its ends.
    assert!(check_format(made.key.as_bytes()).is_ok());
    let info = made.info.unwrap();
    assert!(made.key.starts_with(info.key_prefix.trim_end_matches('…')) && made.key.ends_with(&info.last4));
    assert_eq!(info.limits.as_ref().unwrap().max_budget, Some(50.0));
    assert!(info.expires_at.is_some());
    // Found by id, alias and the key itself.
    for r in [Ref::KeyId(info.key_id.clone()), Ref::KeyAlias("ci".into()), Ref::Key(made.key.clone())] {
        let got = c.get_key(as_(MASTER, pb::KeyRef { r#ref: Some(r) })).await.unwrap().into_inner();
        assert_eq!(got.key_id, info.key_id);
    }
    // Update: present fields change, absent ones stay, cleared limits go.
    let updated = c
        .update_key(as_(
            MASTER,
            pb::UpdateKeyRequest {
                r#ref: Some(by_id(&info.key_id)),
                limits: Some(pb::Limits { tpm_limit: Some(1000), ..Default::default() }),
                clear_limits: vec!["rpm_limit".into()],
                models: Some(pb::StringList { values: vec!["gpt-4o".into(), "gpt-4o-mini".into()] }),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let l = updated.limits.unwrap();
    assert_eq!((l.tpm_limit, l.rpm_limit, l.max_budget), (Some(1000), None, Some(50.0)));
    assert_eq!(updated.models, ["gpt-4o", "gpt-4o-mini"]);
    assert_eq!(updated.tags, ["prod"]);
    // Block and unblock.
    assert!(c.block_key(as_(MASTER, by_id(&info.key_id))).await.unwrap().into_inner().blocked);
    assert!(!c.unblock_key(as_(MASTER, by_id(&info.key_id))).await.unwrap().into_inner().blocked);
    // Delete: gone by every name.
    c.delete_key(as_(MASTER, by_id(&info.key_id))).await.unwrap();
    let gone = c.get_key(as_(MASTER, pb::KeyRef { r#ref: Some(Ref::Key(made.key)) })).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    assert_eq!(c.delete_key(as_(MASTER, by_id(&info.key_id))).await.unwrap_err().code(), Code::NotFound);
}

async fn rotation_keeps_the_old_key_for_the_grace_period_only(plane: &Plane) {
    let mut c = plane.keys().await;
    let mgmt = generate(
        &mut c,
        MASTER,
        pb::KeySpec {
            key_alias: Some("ops".into()),
            user_id: Some("alice".into()),
            key_type: pb::KeyType::Management as i32,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let id = mgmt.info.unwrap().key_id;
    let rotated = c
        .regenerate_key(as_(
            MASTER,
            pb::RegenerateKeyRequest { r#ref: Some(by_id(&id)), grace_period: Some("1h".into()) },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(rotated.key, mgmt.key);
    assert_eq!(rotated.info.as_ref().unwrap().key_id, id, "rotation keeps the key's identity");
    assert!(rotated.info.as_ref().unwrap().previous_key_valid_until.is_some());
    // Both keys work during the grace period.
    for k in [&mgmt.key, &rotated.key] {
        c.list_keys(as_(k, pb::ListKeysRequest::default())).await.unwrap();
    }
    // A rotation without grace ends every earlier key at once.
    let again = c
        .regenerate_key(as_(MASTER, pb::RegenerateKeyRequest { r#ref: Some(by_id(&id)), grace_period: None }))
        .await
        .unwrap()
        .into_inner();
    for old in [&mgmt.key, &rotated.key] {
        let err = c.list_keys(as_(old, pb::ListKeysRequest::default())).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }
    c.list_keys(as_(&again.key, pb::ListKeysRequest::default())).await.unwrap();
}

async fn listing_is_paged_and_filtered(plane: &Plane) {
    let mut c = plane.keys().await;
    for i in 0..7 {
        let team = if i % 2 == 0 { "even" } else { "odd" };
        generate(&mut c, MASTER, pb::KeySpec { team_id: Some(team.into()), ..spec(&format!("k{i}")) }).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = c
            .list_keys(as_(MASTER, pb::ListKeysRequest { page_size: 3, page_token: token, ..Default::default() }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.total, 7);
        assert!(page.keys.len() <= 3);
        seen.extend(page.keys.into_iter().map(|k| k.key_id));
        pages += 1;
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(pages, 3);
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 7, "every key once, none twice");
    let even = c
        .list_keys(as_(MASTER, pb::ListKeysRequest { team_id: Some("even".into()), ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((even.total, even.keys.len()), (4, 4));
    assert!(even.keys.iter().all(|k| k.team_id.as_deref() == Some("even")));
}

async fn bad_input_is_refused_and_changes_nothing(plane: &Plane) {
    let mut c = plane.keys().await;
    let base = generate(&mut c, MASTER, spec("base")).await.unwrap().info.unwrap();
    let audit_before = all_audit(plane).await.len();
    let bad_specs = [
        pb::KeySpec { limits: Some(pb::Limits { max_budget: Some(-1.0), ..Default::default() }), ..spec("neg") },
        pb::KeySpec { limits: Some(pb::Limits { rpm_limit: Some(-5), ..Default::default() }), ..spec("neg-rpm") },
        pb::KeySpec {
            limits: Some(pb::Limits { budget_duration: Some("soon".into()), ..Default::default() }),
            ..spec("d")
        },
        pb::KeySpec { duration: Some("forever".into()), ..spec("dur") },
        pb::KeySpec { allowed_routes: vec!["/admin/secrets".into()], ..spec("route") },
        pb::KeySpec { metadata_json: Some("[1,2]".into()), ..spec("meta") },
        pb::KeySpec { key_type: 42, ..spec("type") },
        spec(&"x".repeat(10_000)),
        spec("nul\u{0}alias"),
    ];
    for s in bad_specs {
        let err = generate(&mut c, MASTER, s.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{s:?}");
        assert!(!err.message().is_empty());
    }
    // A duplicate alias is a conflict, not a second key.
    assert_eq!(generate(&mut c, MASTER, spec("base")).await.unwrap_err().code(), Code::AlreadyExists);
    // An invalid update leaves the key as it was.
    let err = c
        .update_key(as_(
            MASTER,
            pb::UpdateKeyRequest {
                r#ref: Some(by_id(&base.key_id)),
                limits: Some(pb::Limits { tpm_limit: Some(5), max_budget: Some(f64::NAN), ..Default::default() }),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let after = c.get_key(as_(MASTER, by_id(&base.key_id))).await.unwrap().into_inner();
    assert_eq!(after.limits.unwrap().tpm_limit, None);
    assert_eq!(count_keys(&mut c).await, 1);
    assert_eq!(all_audit(plane).await.len(), audit_before, "refused requests write no audit rows");
}

async fn callers_never_exceed_their_own_scope(plane: &Plane) {
    let mut c = plane.keys().await;
    let mgmt = |user: &str, models: Vec<String>, t: pb::KeyType| pb::KeySpec {
        key_alias: Some(format!("{user}-{}", t.as_str_name())),
        user_id: Some(user.into()),
        team_id: Some(format!("team-{user}")),
        models,
        key_type: t as i32,
        ..Default::default()
    };
    let alice =
        generate(&mut c, MASTER, mgmt("alice", vec!["gpt-4o".into()], pb::KeyType::Management)).await.unwrap().key;
    let alice_ro = generate(&mut c, MASTER, mgmt("alice", vec![], pb::KeyType::ReadOnly)).await.unwrap().key;
    let bob = generate(&mut c, MASTER, mgmt("bob", vec![], pb::KeyType::Management)).await.unwrap().key;
    let llm = generate(&mut c, MASTER, spec("plain")).await.unwrap().key;

    // No credential, a wrong one, an LLM key.
    let none = c.list_keys(tonic::Request::new(pb::ListKeysRequest::default())).await.unwrap_err();
    assert_eq!(none.code(), Code::Unauthenticated);
    assert_eq!(
        c.list_keys(as_("sk-wrong", pb::ListKeysRequest::default())).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert_eq!(
        c.list_keys(as_(&llm, pb::ListKeysRequest::default())).await.unwrap_err().code(),
        Code::PermissionDenied
    );

    // Alice makes keys for herself, within her models, LLM keys only.
    let own = generate(&mut c, &alice, pb::KeySpec { models: vec!["gpt-4o".into()], ..spec("alice-1") }).await.unwrap();
    assert_eq!(own.info.as_ref().unwrap().user_id.as_deref(), Some("alice"));
    for (what, s) in [
        ("another user", pb::KeySpec { user_id: Some("bob".into()), models: vec!["gpt-4o".into()], ..spec("x1") }),
        ("a model she lacks", pb::KeySpec { models: vec!["o1".into()], ..spec("x2") }),
        ("every model", spec("x3")),
        (
            "a management key",
            pb::KeySpec { models: vec!["gpt-4o".into()], key_type: pb::KeyType::Management as i32, ..spec("x4") },
        ),
        ("another team", pb::KeySpec { team_id: Some("team-bob".into()), models: vec!["gpt-4o".into()], ..spec("x5") }),
    ] {
        let err = generate(&mut c, &alice, s).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{what}");
    }
    // A management key limited to some routes hands out only those.
    let chat_only = generate(
        &mut c,
        MASTER,
        pb::KeySpec {
            user_id: Some("alice".into()),
            key_type: pb::KeyType::Management as i32,
            allowed_routes: vec!["/v1/chat/completions".into()],
            ..spec("alice-chat-ops")
        },
    )
    .await
    .unwrap()
    .key;
    let wider = pb::KeySpec { allowed_routes: vec!["/v1/embeddings".into()], ..spec("alice-emb") };
    assert_eq!(generate(&mut c, &chat_only, wider).await.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(generate(&mut c, &chat_only, spec("alice-any")).await.unwrap_err().code(), Code::PermissionDenied);
    let narrow = pb::KeySpec { allowed_routes: vec!["/v1/chat/completions".into()], ..spec("alice-chat") };
    generate(&mut c, &chat_only, narrow).await.unwrap();
    // She cannot widen her own key past her scope either.
    let widen = c
        .update_key(as_(
            &alice,
            pb::UpdateKeyRequest {
                r#ref: Some(pb::KeyRef { r#ref: Some(Ref::KeyAlias("alice-1".into())) }),
                models: Some(pb::StringList { values: vec!["o1".into()] }),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(widen.code(), Code::PermissionDenied);
    // Bob's keys are invisible to her: not found, not forbidden (no probing).
    let bobs = pb::KeyRef { r#ref: Some(Ref::KeyAlias("bob-KEY_TYPE_MANAGEMENT".into())) };
    for code in [
        c.get_key(as_(&alice, bobs.clone())).await.unwrap_err().code(),
        c.block_key(as_(&alice, bobs.clone())).await.unwrap_err().code(),
        c.delete_key(as_(&alice, bobs.clone())).await.unwrap_err().code(),
    ] {
        assert_eq!(code, Code::NotFound);
    }
    let listed = c.list_keys(as_(&alice, pb::ListKeysRequest::default())).await.unwrap().into_inner();
    assert!(listed.keys.iter().all(|k| k.user_id.as_deref() == Some("alice")), "{listed:?}");
    assert_eq!(listed.total, 5, "her two management keys, the read-only one, and the two she made");
    // Bob sees only his own.
    let listed = c.list_keys(as_(&bob, pb::ListKeysRequest::default())).await.unwrap().into_inner();
    assert_eq!(listed.total, 1);
    // The read-only key reads but changes nothing.
    c.get_key(as_(&alice_ro, pb::KeyRef { r#ref: Some(Ref::KeyAlias("alice-1".into())) })).await.unwrap();
    let ro =
        c.block_key(as_(&alice_ro, pb::KeyRef { r#ref: Some(Ref::KeyAlias("alice-1".into())) })).await.unwrap_err();
    assert_eq!(ro.code(), Code::PermissionDenied);
    assert_eq!(generate(&mut c, &alice_ro, spec("ro-made")).await.unwrap_err().code(), Code::PermissionDenied);
    // Only the admin reads the audit log.
    let mut a = plane.audit().await;
    let denied = a.list_audit(as_(&alice, pb::ListAuditRequest::default())).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
}

async fn every_mutation_is_audited_without_secrets(plane: &Plane) {
    let mut c = plane.keys().await;
    let made = generate(&mut c, MASTER, spec("audited")).await.unwrap();
    let id = made.info.unwrap().key_id;
    let alias_ref = pb::KeyRef { r#ref: Some(Ref::Key(made.key.clone())) };
    c.update_key(as_(
        MASTER,
        pb::UpdateKeyRequest {
            r#ref: Some(alias_ref),
            tags: Some(pb::StringList { values: vec!["a".into()] }),
            ..Default::default()
        },
    ))
    .await
    .unwrap();
    c.block_key(as_(MASTER, by_id(&id))).await.unwrap();
    let rotated = c
        .regenerate_key(as_(
            MASTER,
            pb::RegenerateKeyRequest { r#ref: Some(by_id(&id)), grace_period: Some("5m".into()) },
        ))
        .await
        .unwrap()
        .into_inner();
    c.delete_key(as_(MASTER, by_id(&id))).await.unwrap();
    let entries = all_audit(plane).await;
    let actions: Vec<&str> = entries.iter().rev().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["key.generate", "key.update", "key.block", "key.regenerate", "key.delete"]);
    assert!(entries.iter().all(|e| e.actor == "master" && e.object_id == id));
    let update = entries.iter().find(|e| e.action == "key.update").unwrap();
    let before: serde_json::Value = serde_json::from_str(&update.before_json).unwrap();
    let after: serde_json::Value = serde_json::from_str(&update.after_json).unwrap();
    assert_eq!((before["tags"].clone(), after["tags"].clone()), (serde_json::json!([]), serde_json::json!(["a"])));
    // No plaintext key, digest or master key anywhere in the log.
    let all = format!("{entries:?}");
    for secret in [made.key.as_str(), rotated.key.as_str(), MASTER, "sha256:"] {
        assert!(!all.contains(secret), "audit log contains {secret:?}");
    }
    let digest = sluice_core::keys::KeyHash::of(made.key.as_bytes()).to_hex();
    assert!(!all.contains(&digest));
}

async fn concurrent_updates_to_one_key_all_land(plane: &Plane) {
    let mut c = plane.keys().await;
    let id = generate(&mut c, MASTER, spec("hot")).await.unwrap().info.unwrap().key_id;
    let mut tasks = Vec::new();
    for i in 0..16i64 {
        let mut c = plane.keys().await;
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            c.update_key(as_(
                MASTER,
                pb::UpdateKeyRequest {
                    r#ref: Some(by_id(&id)),
                    limits: Some(pb::Limits { rpm_limit: Some(i), tpm_limit: Some(i), ..Default::default() }),
                    ..Default::default()
                },
            ))
            .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    // Each update is whole: rpm and tpm come from the same request, never a mix.
    let l = c.get_key(as_(MASTER, by_id(&id))).await.unwrap().into_inner().limits.unwrap();
    assert_eq!(l.rpm_limit, l.tpm_limit);
    let updates = all_audit(plane).await.into_iter().filter(|e| e.action == "key.update").count();
    assert_eq!(updates, 16, "every update landed and was audited once");
}

#[tokio::test]
async fn migrations_apply_to_an_empty_database_and_to_the_previous_schema() {
    use sluice_control_plane::store::migrations::migrator_through;
    use sluice_control_plane::store::{Backend, DirectoryStore, UserRecord};
    // Schema 7: spend_logs.cache_hit.
    const LATEST: i64 = 7;
    let applied = |pool: sqlx::AnyPool| async move {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM _sqlx_migrations").fetch_one(&pool).await.unwrap()
    };
    for (db, backend) in [(Db::Sqlite, Backend::Sqlite), (Db::Postgres, Backend::Postgres)] {
        // An empty database gets every version; a second start changes nothing.
        let (url, cleanup) = database(db).await;
        let fresh = SqlStore::open(&url).await.unwrap();
        assert_eq!(applied(fresh.pool().clone()).await, LATEST, "{db:?}");
        fresh.pool().close().await;
        let again = SqlStore::open(&url).await.unwrap();
        assert_eq!(applied(again.pool().clone()).await, LATEST);
        again.pool().close().await;
        drop_database(cleanup).await;

        // A database at schema 1, with data, is brought to the latest and keeps its data.
        let (url, cleanup) = database(db).await;
        let url_rwc = if url.starts_with("sqlite:") { format!("{url}?mode=rwc") } else { url.clone() };
        let old = sqlx::AnyPool::connect(&url_rwc).await.unwrap();
        migrator_through(backend, 1).run(&old).await.unwrap();
        sqlx::query("INSERT INTO users (user_id, user_role, created_at, updated_at) VALUES ($1, $2, $3, $4)")
            .bind("from-schema-1")
            .bind("internal_user")
            .bind(1_i64)
            .bind(1_i64)
            .execute(&old)
            .await
            .unwrap();
        assert_eq!(applied(old.clone()).await, 1);
        old.close().await;
        let upgraded = SqlStore::open(&url).await.unwrap();
        assert_eq!(applied(upgraded.pool().clone()).await, LATEST, "{db:?}");
        let user: UserRecord = upgraded.get("from-schema-1").await.unwrap();
        assert_eq!(user.user_role, "internal_user");
        upgraded.pool().close().await;
        drop_database(cleanup).await;
    }
}

async fn drop_database(cleanup: Option<String>) {
    if let Some(spec) = cleanup {
        let (server, name) = spec.split_once('|').unwrap();
        let admin = sqlx::AnyPool::connect(&format!("{server}/test")).await.unwrap();
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&admin).await.unwrap();
    }
}

#[tokio::test]
async fn health_and_reflection_answer_like_grpcurl_expects() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let plane = Plane::start(Db::Sqlite).await;
    let channel = Channel::from_shared(plane.url.clone()).unwrap().connect().await.unwrap();
    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest { service: "sluice.admin.v1.KeyService".into() })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream_once(request))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.message().await.unwrap().unwrap().message_response
    else {
        panic!("no service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["sluice.admin.v1.KeyService", "sluice.admin.v1.AuditService", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == expected), "{names:?}");
    }
    plane.stop().await;
}

/// A one-message request stream.
fn tokio_stream_once<T: Send + 'static>(item: T) -> impl tonic::codegen::tokio_stream::Stream<Item = T> {
    tonic::codegen::tokio_stream::iter([item])
}

fn model_request(name: &str, id: &str, params: serde_json::Value) -> pb::CreateModelRequest {
    pb::CreateModelRequest {
        model_name: name.into(),
        litellm_params_json: params.to_string(),
        model_info_json: serde_json::json!({"id": id, "input_cost_per_token": 2.5e-6, "output_cost_per_token": 1e-5})
            .to_string(),
    }
}

async fn models_are_validated_like_the_gateway(plane: &Plane) {
    let mut m = ModelServiceClient::new(Channel::from_shared(plane.url.clone()).unwrap().connect().await.unwrap());
    let good = serde_json::json!({"model": "openai/gpt-4o", "api_base": "https://api.openai.com/v1", "api_key": "os.environ/OPENAI_API_KEY"});
    let made =
        m.create_model(as_(MASTER, model_request("gpt-4o", "gpt4o-east", good.clone()))).await.unwrap().into_inner();
    assert_eq!((made.deployment_id.as_str(), made.source.as_str()), ("gpt4o-east", "api"));
    // What the gateway would refuse, the API refuses, with the reason.
    let literal = serde_json::json!({"model": "openai/gpt-4o", "api_key": "sk-live-abc123"});
    for (params, says) in [
        // A setting the gateway would not enforce is refused by name, not stored and ignored.
        (
            serde_json::json!({"model": "openai/gpt-4o", "api_key": "os.environ/OPENAI_API_KEY", "max_retries": 1}),
            "litellm_params.max_retries: not supported by Sluice",
        ),
        (literal, "os.environ"),
        (serde_json::json!({"model": "nosuchprovider/x"}), "provider"),
        (serde_json::json!({"model": "openai/gpt-4o", "api_base": "ftp://x"}), "api_base"),
        // The control plane's own secrets are never a provider credential ...
        (
            serde_json::json!({"model": "openai/gpt-4o", "api_base": "https://collector.example", "api_key": "os.environ/SLUICE_MASTER_KEY"}),
            "os.environ/SLUICE_MASTER_KEY names one of the control plane's own secrets",
        ),
        (
            serde_json::json!({"model": "openai/gpt-4o", "api_key": "os.environ/DATABASE_URL"}),
            "os.environ/DATABASE_URL names one of the control plane's own secrets",
        ),
        // ... nor is any variable off the allow-list ...
        (serde_json::json!({"model": "openai/gpt-4o", "api_key": "os.environ/HOME"}), "--provider-credentials"),
        // ... and no credential goes to the cloud's metadata service.
        (
            serde_json::json!({"model": "openai/gpt-4o", "api_base": "http://169.254.169.254/latest", "api_key": "os.environ/OPENAI_API_KEY"}),
            "link-local",
        ),
        (serde_json::json!({"model": "anthropic/claude", "api_base": "http://metadata.google.internal"}), "metadata"),
    ] {
        let err = m.create_model(as_(MASTER, model_request("bad", "bad-1", params))).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{says}");
        assert!(err.message().contains(says), "{}", err.message());
        assert!(!err.message().contains("sk-live-abc123"), "a credential never appears in an error");
    }
    let mut negative = model_request("bad", "bad-2", good.clone());
    negative.model_info_json = r#"{"input_cost_per_token": -1}"#.into();
    assert_eq!(m.create_model(as_(MASTER, negative)).await.unwrap_err().code(), Code::InvalidArgument);
    let mut not_object = model_request("bad", "bad-3", good.clone());
    not_object.litellm_params_json = "[1]".into();
    assert_eq!(m.create_model(as_(MASTER, not_object)).await.unwrap_err().code(), Code::InvalidArgument);
    let dup = m.create_model(as_(MASTER, model_request("gpt-4o", "gpt4o-east", good.clone()))).await.unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);
    // Update the price; list by group; delete.
    let updated = m
        .update_model(as_(
            MASTER,
            pb::UpdateModelRequest {
                deployment_id: "gpt4o-east".into(),
                model_info_json: Some(r#"{"input_cost_per_token": 5e-6, "output_cost_per_token": 2e-5}"#.into()),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&updated.model_info_json).unwrap();
    assert_eq!((info["input_cost_per_token"].as_f64(), info["id"].as_str()), (Some(5e-6), Some("gpt4o-east")));
    let listed = m
        .list_models(as_(MASTER, pb::ListModelsRequest { model_name: Some("gpt-4o".into()), ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.total, 1);
    // Only admins change deployments; any management key reads them.
    let mut keys = plane.keys().await;
    let ops = generate(
        &mut keys,
        MASTER,
        pb::KeySpec { key_type: pb::KeyType::Management as i32, user_id: Some("ops".into()), ..spec("ops") },
    )
    .await
    .unwrap()
    .key;
    m.get_model(as_(&ops, pb::ModelRef { deployment_id: "gpt4o-east".into() })).await.unwrap();
    let denied = m.create_model(as_(&ops, model_request("x", "x-1", good))).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    m.delete_model(as_(MASTER, pb::ModelRef { deployment_id: "gpt4o-east".into() })).await.unwrap();
    let gone = m.get_model(as_(MASTER, pb::ModelRef { deployment_id: "gpt4o-east".into() })).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let audit = format!("{:?}", all_audit(plane).await);
    assert!(!audit.contains("sk-live-abc123"));
}

async fn config_sync_keeps_models_made_through_the_api(plane: &Plane) {
    let entry = |name: &str, id: &str, price: f64| {
        serde_json::json!({"model_name": name, "litellm_params": {"model": format!("openai/{name}"), "api_key": "os.environ/OPENAI_API_KEY"},
            "model_info": {"id": id, "input_cost_per_token": price, "output_cost_per_token": price}})
    };
    let store = plane.store().await;
    let first = sync_models(&store, &[entry("a", "a-1", 1e-6), entry("b", "b-1", 1e-6)], &ProviderPolicy::default())
        .await
        .unwrap();
    assert_eq!((first.added, first.updated, first.removed), (2, 0, 0));
    let mut m = ModelServiceClient::new(Channel::from_shared(plane.url.clone()).unwrap().connect().await.unwrap());
    m.create_model(as_(
        MASTER,
        model_request("c", "c-1", serde_json::json!({"model": "openai/c", "api_key": "os.environ/OPENAI_API_KEY"})),
    ))
    .await
    .unwrap();
    // The file changes: a's price, b gone. c, made through the API, stays.
    let second = sync_models(&store, &[entry("a", "a-1", 2e-6)], &ProviderPolicy::default()).await.unwrap();
    assert_eq!((second.added, second.updated, second.removed), (0, 1, 1));
    let ids: Vec<String> = m
        .list_models(as_(MASTER, pb::ListModelsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .models
        .into_iter()
        .map(|d| d.deployment_id)
        .collect();
    assert_eq!(ids, ["a-1", "c-1"]);
    let again = sync_models(&store, &[entry("a", "a-1", 2e-6)], &ProviderPolicy::default()).await.unwrap();
    assert_eq!((again.added, again.updated, again.removed), (0, 0, 0), "a second start changes nothing");
    // A file the gateway would refuse does not start the control plane.
    let bad = serde_json::json!({"model_name": "x", "litellm_params": {"model": "openai/x", "api_key": "sk-literal"}});
    let err = sync_models(&store, &[bad], &ProviderPolicy::default()).await.unwrap_err();
    assert!(err.contains("os.environ") && !err.contains("sk-literal"), "{err}");
}

async fn spend_queries_answer_from_seeded_records(plane: &Plane) {
    // 2026-11-20 and 2026-11-21, UTC.
    let (d1, d2) = (1_795_132_800_000i64, 1_795_219_200_000i64);
    let log = |id: &str, key: &str, team: &str, user: &str, model: &str, tags: &[&str], cost: i64, at: i64| SpendLog {
        record_id: id.into(),
        request_id: format!("req-{id}"),
        key_id: Some(key.into()),
        team_id: Some(team.into()),
        user_id: Some(user.into()),
        organization_id: Some("org-1".into()),
        model_group: model.into(),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        prompt_tokens: 100,
        completion_tokens: 10,
        cost_nanos: cost,
        status: 200,
        outcome: "completed".into(),
        start_ms: at,
        ..Default::default()
    };
    let batch = vec![
        log("r1", "k1", "t1", "alice", "gpt-4o", &["prod"], 1_000_000, d1),
        log("r2", "k1", "t1", "alice", "gpt-4o", &["prod", "eu"], 2_000_000, d1 + 3_600_000),
        log("r3", "k2", "t1", "bob", "gpt-4o-mini", &[], 500_000, d2),
        log("r4", "k3", "t2", "carol", "gpt-4o", &["eu"], 4_000_000, d2 + 60_000),
    ];
    let store = plane.store().await;
    assert_eq!(store.record_spend(&batch).await.unwrap(), 4);
    // A replayed batch (and a partial one) changes nothing.
    assert_eq!(store.record_spend(&batch).await.unwrap(), 0);
    assert_eq!(store.record_spend(&batch[1..2]).await.unwrap(), 0);

    let mut s = SpendServiceClient::new(Channel::from_shared(plane.url.clone()).unwrap().connect().await.unwrap());
    let q = |f: fn(&mut pb::SpendQuery)| {
        let mut query = pb::SpendQuery::default();
        f(&mut query);
        query
    };
    let all = s.query_spend(as_(MASTER, q(|_| {}))).await.unwrap().into_inner();
    assert_eq!(all.requests, 4);
    assert!((all.spend - 0.0075).abs() < 1e-12, "{}", all.spend);
    let by_day: Vec<(String, u64)> = all.rows.iter().map(|r| (r.group.clone(), r.requests)).collect();
    assert_eq!(by_day, [("2026-11-20".to_owned(), 2), ("2026-11-21".to_owned(), 2)]);

    let t1 = s
        .query_spend(as_(
            MASTER,
            q(|q| {
                q.team_id = Some("t1".into());
                q.group_by = pb::SpendGroupBy::Key as i32;
            }),
        ))
        .await
        .unwrap()
        .into_inner();
    let rows: Vec<(String, u64, f64)> = t1.rows.iter().map(|r| (r.group.clone(), r.requests, r.spend)).collect();
    assert_eq!(rows, [("k1".to_owned(), 2, 0.003), ("k2".to_owned(), 1, 0.0005)]);
    assert_eq!((t1.rows[0].prompt_tokens, t1.rows[0].completion_tokens), (200, 20));

    let tags = s
        .query_spend(as_(
            MASTER,
            q(|q| {
                q.key_id = Some("k1".into());
                q.group_by = pb::SpendGroupBy::Tag as i32;
            }),
        ))
        .await
        .unwrap()
        .into_inner();
    let rows: Vec<(String, u64)> = tags.rows.iter().map(|r| (r.group.clone(), r.requests)).collect();
    assert_eq!(rows, [("eu".to_owned(), 1), ("prod".to_owned(), 2)]);
    assert_eq!(tags.requests, 2, "a request with two tags is counted once in the total");
    assert!((tags.spend - 0.003).abs() < 1e-12);

    let eu_day2 = s
        .query_spend(as_(
            MASTER,
            q(|q| {
                q.tag = Some("eu".into());
                q.start_day = "2026-11-21".into();
                q.end_day = "2026-11-21".into();
            }),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((eu_day2.requests, eu_day2.spend), (1, 0.004));
    let mini =
        s.query_spend(as_(MASTER, q(|q| q.model_group = Some("gpt-4o-mini".into())))).await.unwrap().into_inner();
    assert_eq!(mini.requests, 1);
    let bad = s.query_spend(as_(MASTER, q(|q| q.start_day = "last week".into()))).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);

    // A scoped caller sees its own slice, whatever it asks for.
    let mut keys = plane.keys().await;
    let alice = generate(
        &mut keys,
        MASTER,
        pb::KeySpec { user_id: Some("alice".into()), key_type: pb::KeyType::Management as i32, ..spec("alice-ops") },
    )
    .await
    .unwrap()
    .key;
    let mine = s.query_spend(as_(&alice, q(|_| {}))).await.unwrap().into_inner();
    assert_eq!(mine.requests, 2);
    let other = s.query_spend(as_(&alice, q(|q| q.user_id = Some("carol".into())))).await.unwrap_err();
    assert_eq!(other.code(), Code::NotFound);

    // The daily aggregates agree with the records.
    let per_team: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT value, requests, cost_nanos FROM daily_spend WHERE dimension = 'team' ORDER BY day, value",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(
        per_team,
        [("t1".to_owned(), 2, 3_000_000), ("t1".to_owned(), 1, 500_000), ("t2".to_owned(), 1, 4_000_000)]
    );
}

async fn budgets_and_customers(plane: &Plane) {
    let channel = Channel::from_shared(plane.url.clone()).unwrap().connect().await.unwrap();
    let mut b = BudgetServiceClient::new(channel.clone());
    let mut c = CustomerServiceClient::new(channel);
    let limits = |usd: f64| {
        Some(pb::Limits { max_budget: Some(usd), budget_duration: Some("30d".into()), ..Default::default() })
    };
    let tier = b
        .create_budget(as_(MASTER, pb::CreateBudgetRequest { budget_id: "free-tier".into(), limits: limits(5.0) }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tier.limits.unwrap().max_budget, Some(5.0));
    let bad = b
        .create_budget(as_(MASTER, pb::CreateBudgetRequest { budget_id: "neg".into(), limits: limits(-5.0) }))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    // Customers refer to budgets that exist.
    let missing = c
        .create_customer(as_(
            MASTER,
            pb::CreateCustomerRequest {
                customer_id: "acme-user-1".into(),
                budget_id: Some("nope".into()),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let cust = c
        .create_customer(as_(
            MASTER,
            pb::CreateCustomerRequest {
                customer_id: "acme-user-1".into(),
                budget_id: Some("free-tier".into()),
                alias: Some("Ada".into()),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((cust.budget_id.as_deref(), cust.blocked), (Some("free-tier"), false));
    assert!(
        c.block_customer(as_(MASTER, pb::CustomerRef { customer_id: "acme-user-1".into() }))
            .await
            .unwrap()
            .into_inner()
            .blocked
    );
    assert!(
        !c.unblock_customer(as_(MASTER, pb::CustomerRef { customer_id: "acme-user-1".into() }))
            .await
            .unwrap()
            .into_inner()
            .blocked
    );
    let updated = c
        .update_customer(as_(
            MASTER,
            pb::UpdateCustomerRequest {
                customer_id: "acme-user-1".into(),
                limits: Some(pb::Limits { rpm_limit: Some(10), ..Default::default() }),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((updated.limits.unwrap().rpm_limit, updated.alias.as_deref()), (Some(10), Some("Ada")));
    // A budget in use cannot be deleted from under its customers.
    let in_use = b.delete_budget(as_(MASTER, pb::BudgetRef { budget_id: "free-tier".into() })).await.unwrap_err();
    assert_eq!(in_use.code(), Code::FailedPrecondition);
    let updated = b
        .update_budget(as_(
            MASTER,
            pb::UpdateBudgetRequest {
                budget_id: "free-tier".into(),
                limits: limits(10.0),
                clear_limits: vec!["budget_duration".into()],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let l = updated.limits.unwrap();
    assert_eq!(
        (l.max_budget, l.budget_duration),
        (Some(10.0), Some("30d".into())),
        "present fields win over cleared ones"
    );
    assert_eq!(c.list_customers(as_(MASTER, pb::ListCustomersRequest::default())).await.unwrap().into_inner().total, 1);
    assert_eq!(b.list_budgets(as_(MASTER, pb::ListBudgetsRequest::default())).await.unwrap().into_inner().total, 1);
    c.delete_customer(as_(MASTER, pb::CustomerRef { customer_id: "acme-user-1".into() })).await.unwrap();
    b.delete_budget(as_(MASTER, pb::BudgetRef { budget_id: "free-tier".into() })).await.unwrap();
    assert_eq!(
        b.get_budget(as_(MASTER, pb::BudgetRef { budget_id: "free-tier".into() })).await.unwrap_err().code(),
        Code::NotFound
    );
}

async fn expired_and_blocked_keys_lose_access(plane: &Plane) {
    let mut c = plane.keys().await;
    let mgmt = |alias: &str, duration: Option<&str>| pb::KeySpec {
        user_id: Some("ops".into()),
        key_type: pb::KeyType::Management as i32,
        duration: duration.map(Into::into),
        ..spec(alias)
    };
    let short = generate(&mut c, MASTER, mgmt("short", Some("1s"))).await.unwrap().key;
    c.list_keys(as_(&short, pb::ListKeysRequest::default())).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let expired = c.list_keys(as_(&short, pb::ListKeysRequest::default())).await.unwrap_err();
    assert_eq!((expired.code(), expired.message()), (Code::Unauthenticated, "the key has expired"));
    // Extending the expiry brings it back; blocking takes it away again.
    c.update_key(as_(
        MASTER,
        pb::UpdateKeyRequest {
            r#ref: Some(pb::KeyRef { r#ref: Some(Ref::KeyAlias("short".into())) }),
            duration: Some("never".into()),
            ..Default::default()
        },
    ))
    .await
    .unwrap();
    c.list_keys(as_(&short, pb::ListKeysRequest::default())).await.unwrap();
    c.block_key(as_(MASTER, pb::KeyRef { r#ref: Some(Ref::KeyAlias("short".into())) })).await.unwrap();
    let blocked = c.list_keys(as_(&short, pb::ListKeysRequest::default())).await.unwrap_err();
    assert_eq!(blocked.code(), Code::Unauthenticated);
}

async fn directory_lists_are_paged(plane: &Plane) {
    let mut users = plane.users().await;
    for i in 0..5 {
        users
            .create_user(as_(
                MASTER,
                pb::CreateUserRequest { user_id: format!("u{i}"), organization_id: None, ..Default::default() },
            ))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = users
            .list_users(as_(MASTER, pb::ListUsersRequest { page_size: 2, page_token: token, ..Default::default() }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(page.total, 5);
        assert!(page.users.len() <= 2);
        seen.extend(page.users.into_iter().map(|u| u.user_id));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(seen, ["u0", "u1", "u2", "u3", "u4"]);
    // Bad input changes nothing.
    let bad = users
        .create_user(as_(MASTER, pb::CreateUserRequest { user_id: "x".repeat(300), ..Default::default() }))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let bad = users
        .create_user(as_(
            MASTER,
            pb::CreateUserRequest {
                user_id: "neg".into(),
                limits: Some(pb::Limits { tpm_limit: Some(-1), ..Default::default() }),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let dup = users
        .create_user(as_(MASTER, pb::CreateUserRequest { user_id: "u0".into(), ..Default::default() }))
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);
    let mut teams = plane.teams().await;
    let orphan = teams
        .create_team(as_(
            MASTER,
            pb::CreateTeamRequest { organization_id: Some("no-such-org".into()), ..Default::default() },
        ))
        .await
        .unwrap_err();
    assert_eq!(orphan.code(), Code::FailedPrecondition, "{}", orphan.message());
    assert_eq!(users.list_users(as_(MASTER, pb::ListUsersRequest::default())).await.unwrap().into_inner().total, 5);
    // A user who still owns keys is not deleted from under them.
    let mut keys = plane.keys().await;
    let owned =
        generate(&mut keys, MASTER, pb::KeySpec { user_id: Some("u0".into()), ..spec("u0-key") }).await.unwrap();
    let refused = users.delete_user(as_(MASTER, pb::UserRef { user_id: "u0".into() })).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    keys.delete_key(as_(MASTER, by_id(&owned.info.unwrap().key_id))).await.unwrap();
    users.delete_user(as_(MASTER, pb::UserRef { user_id: "u0".into() })).await.unwrap();
}
