//! The Redis that control-plane replicas share (fleet rate-limit counts, the invalidation
//! stream): one way to connect, bounded in time, with errors that say it was Redis.

use std::time::Duration;

use redis::aio::MultiplexedConnection;

/// A new multiplexed connection, or an error after `timeout`.
pub async fn connect(client: &redis::Client, timeout: Duration) -> Result<MultiplexedConnection, String> {
    tokio::time::timeout(timeout, client.get_multiplexed_async_connection())
        .await
        .map_err(|_| "redis: connect timed out".to_owned())?
        .map_err(|e| format!("redis: {e}"))
}
