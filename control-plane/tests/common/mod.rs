//! Shared by the control plane's integration tests: a running control plane on a fresh SQLite
//! file or a fresh Postgres database (`SLUICE_TEST_POSTGRES` overrides the server URL, default
//! `postgres://postgres@127.0.0.1:5432`), and an authenticated request.

#![allow(clippy::unwrap_used, dead_code)] // test helpers: a failure here is a failed test

pub mod certs;

use std::time::Duration;

use sluice_control_plane::server::{DataPlane, serve_planes};
use sluice_control_plane::store::SqlStore;
use sluice_control_plane::xds::XdsOptions;
use sluice_proto::admin::v1::audit_service_client::AuditServiceClient;
use sluice_proto::admin::v1::budget_service_client::BudgetServiceClient;
use sluice_proto::admin::v1::customer_service_client::CustomerServiceClient;
use sluice_proto::admin::v1::key_service_client::KeyServiceClient;
use sluice_proto::admin::v1::model_service_client::ModelServiceClient;
use sluice_proto::admin::v1::organization_service_client::OrganizationServiceClient;
use sluice_proto::admin::v1::team_service_client::TeamServiceClient;
use sluice_proto::admin::v1::user_service_client::UserServiceClient;
use sqlx::Executor;
use tonic::transport::Channel;

pub const MASTER: &str = "sk-master-admin-test";

/// A running control plane on a fresh database; dropped at the end of the test.
pub struct Plane {
    pub url: String,
    /// The data-plane port: xDS, key lookups, usage ingestion.
    pub data_url: String,
    /// host:port of the Prometheus metrics.
    pub metrics_addr: String,
    pub database_url: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    cleanup: Option<String>,
}

#[derive(Clone, Copy, Debug)]
pub enum Db {
    Sqlite,
    Postgres,
}

pub fn unique(prefix: &str) -> String {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).unwrap();
    format!("{prefix}{}", b.iter().map(|x| format!("{x:02x}")).collect::<String>())
}

pub async fn database(db: Db) -> (String, Option<String>) {
    match db {
        Db::Sqlite => (format!("sqlite:{}/{}.db", std::env::temp_dir().display(), unique("sluice-test-")), None),
        Db::Postgres => {
            let server = std::env::var("SLUICE_TEST_POSTGRES").unwrap_or("postgres://postgres@127.0.0.1:5432".into());
            let name = unique("sluice_test_");
            sqlx::any::install_default_drivers();
            let admin = sqlx::AnyPool::connect(&format!("{server}/test")).await.unwrap();
            admin.execute(format!("CREATE DATABASE {name}").as_str()).await.unwrap();
            admin.close().await;
            (format!("{server}/{name}"), Some(format!("{server}|{name}")))
        }
    }
}

impl Plane {
    pub async fn start(db: Db) -> Self {
        Self::start_with(db, None).await
    }

    /// With the data-plane port behind mTLS (`data_url` is then `https://…`).
    pub async fn start_with(db: Db, tls: Option<tonic::transport::ServerTlsConfig>) -> Self {
        let (database_url, cleanup) = database(db).await;
        let store = SqlStore::open(&database_url).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let data = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let data_url = format!("{scheme}://{}", data.local_addr().unwrap());
        let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics_addr = metrics.local_addr().unwrap().to_string();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let xds = XdsOptions::new("/unused/sluice_filter.wasm".into());
        tokio::spawn(serve_planes(
            listener,
            Some(DataPlane {
                listener: data,
                xds,
                metrics: Some(metrics),
                fleet_counts: sluice_control_plane::fleet_limits::FleetCounts::in_memory(),
                webhook: None,
                callbacks: None,
                invalidations: None,
                tls,
            }),
            store,
            Some(MASTER),
            async {
                let _ = rx.await;
            },
        ));
        Self { url, data_url, metrics_addr, database_url, shutdown: Some(tx), cleanup }
    }

    pub async fn keys(&self) -> KeyServiceClient<Channel> {
        KeyServiceClient::new(Channel::from_shared(self.url.clone()).unwrap().connect().await.unwrap())
    }

    /// A second connection to the plane's database (as another replica would have).
    pub async fn store(&self) -> SqlStore {
        SqlStore::open(&self.database_url).await.unwrap()
    }

    /// The control plane's metrics, as Prometheus reads them.
    pub async fn metrics_text(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(&self.metrics_addr).await.unwrap();
        stream.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out
    }

    pub async fn data_channel(&self) -> Channel {
        Channel::from_shared(self.data_url.clone()).unwrap().connect().await.unwrap()
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url.clone()).unwrap().connect().await.unwrap()
    }

    pub async fn users(&self) -> UserServiceClient<Channel> {
        UserServiceClient::new(self.channel().await)
    }

    pub async fn teams(&self) -> TeamServiceClient<Channel> {
        TeamServiceClient::new(self.channel().await)
    }

    pub async fn orgs(&self) -> OrganizationServiceClient<Channel> {
        OrganizationServiceClient::new(self.channel().await)
    }

    pub async fn models(&self) -> ModelServiceClient<Channel> {
        ModelServiceClient::new(self.channel().await)
    }

    pub async fn budgets(&self) -> BudgetServiceClient<Channel> {
        BudgetServiceClient::new(self.channel().await)
    }

    pub async fn customers(&self) -> CustomerServiceClient<Channel> {
        CustomerServiceClient::new(self.channel().await)
    }

    pub async fn audit(&self) -> AuditServiceClient<Channel> {
        AuditServiceClient::new(Channel::from_shared(self.url.clone()).unwrap().connect().await.unwrap())
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(spec) = self.cleanup.take() {
            let (server, name) = spec.split_once('|').unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            let admin = sqlx::AnyPool::connect(&format!("{server}/test")).await.unwrap();
            let _ = admin.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await;
        }
    }
}

pub fn as_<T>(key: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
    r
}
