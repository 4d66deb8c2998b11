//! LiteLLM's `/users` endpoints (to be written).

use std::sync::Arc;

use axum::Router;

use crate::admin::Admin;
use crate::store::Store;

pub fn routes<S: Store>() -> Router<Arc<Admin<S>>> {
    Router::new()
}
