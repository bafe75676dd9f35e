//! TODO(helper): webhook routes.

use std::sync::Arc;

use axum::Router;

use crate::App;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
}

/// The webhook token of a DAG: an HMAC of its name with the server secret.
pub fn token(app: &App, dag: &str) -> String {
    app.sign(&format!("webhook|{dag}"))
}
