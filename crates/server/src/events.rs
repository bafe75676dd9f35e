//! TODO(helper): events routes.

use std::sync::Arc;

use axum::Router;

use crate::App;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
}
