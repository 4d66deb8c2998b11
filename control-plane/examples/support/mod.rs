//! What the control-plane benchmarks share: a fresh Postgres database and a control plane
//! serving on it (admin API and data-plane port on free local ports), torn down at the end.

use sluice_control_plane::server::{DataPlane, serve_planes};
use sluice_control_plane::store::SqlStore;
use sluice_control_plane::xds::XdsOptions;
use sqlx::Executor;

pub struct BenchPlane {
    pub store: SqlStore,
    /// `http://…` of the data-plane port.
    pub data_url: String,
    server: sqlx::AnyPool,
    name: String,
    stop: tokio::sync::oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<Result<(), String>>,
}

impl BenchPlane {
    /// A new database `<prefix>_<pid>` on SLUICE_TEST_POSTGRES (default the local server).
    pub async fn start(prefix: &str) -> Self {
        let server = std::env::var("SLUICE_TEST_POSTGRES").unwrap_or("postgres://postgres@127.0.0.1:5432".into());
        let name = format!("{prefix}_{}", std::process::id());
        sqlx::any::install_default_drivers();
        let admin = sqlx::AnyPool::connect(&format!("{server}/test")).await.unwrap();
        admin.execute(format!("CREATE DATABASE {name}").as_str()).await.unwrap();
        let store = SqlStore::open(&format!("{server}/{name}")).await.unwrap();
        let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let data = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let data_url = format!("http://{}", data.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let data_plane = DataPlane {
            listener: data,
            xds: XdsOptions::new("/unused.wasm".into()),
            metrics: None,
            fleet_counts: sluice_control_plane::fleet_limits::FleetCounts::in_memory(),
            webhook: None,
            callbacks: None,
            invalidations: None,
            tls: None,
        };
        let serving = tokio::spawn(serve_planes(admin_listener, Some(data_plane), store.clone(), None, async {
            let _ = stopped.await;
        }));
        Self { store, data_url, server: admin, name, stop, serving }
    }

    pub async fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.serving.await;
        self.store.pool().close().await;
        let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        self.server.execute(drop.as_str()).await.unwrap();
    }
}
