//! Workers of the cluster, their health and what they run (none without a coordinator).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde::Serialize;
use utoipa::ToSchema;

use crate::App;
use crate::views::{self, WorkerInfo};

pub fn routes() -> Router<Arc<App>> {
    Router::new().route("/api/v2/workers", get(list))
}

#[derive(Serialize, ToSchema)]
pub struct WorkerList {
    workers: Vec<WorkerInfo>,
}

/// The workers, their health and running tasks.
#[utoipa::path(get, path = "/api/v2/workers", tag = "workers",
    responses((status = 200, body = WorkerList)))]
async fn list(State(app): State<Arc<App>>) -> Json<WorkerList> {
    Json(WorkerList {
        workers: views::workers(&app),
    })
}

/// The operations of this module, for the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(list))]
pub struct Doc;
