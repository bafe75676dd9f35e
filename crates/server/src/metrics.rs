//! TODO(helper): Prometheus metrics.

use std::sync::Arc;

use axum::Router;

use crate::App;

#[derive(Default)]
pub struct Metrics {}

pub fn routes() -> Router<Arc<App>> {
    Router::new()
}
