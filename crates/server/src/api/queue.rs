//! Queues: what waits where, taking a run out (recorded aborted, like `trellis dequeue`)
//! and changing a waiting run's priority.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Body, Path, QueuePath, blocking, check_id};
use crate::App;
use crate::error::{Error, ErrorBody, Result};
use crate::views::{self, QueueItemView, QueueView};

pub fn routes() -> Router<Arc<App>> {
    Router::new().route("/api/v2/queues", get(list)).route(
        "/api/v2/queues/{queue}/items/{run_id}",
        axum::routing::delete(dequeue).patch(set_priority),
    )
}

#[derive(Serialize, ToSchema)]
pub struct QueueList {
    queues: Vec<QueueView>,
}

/// Every queue with waiting runs (or a configured limit), items in start order.
#[utoipa::path(get, path = "/api/v2/queues", tag = "queues",
    responses((status = 200, body = QueueList)))]
async fn list(State(app): State<Arc<App>>) -> Result<Json<QueueList>> {
    let queues = blocking(move || Ok(views::queues(&app))).await?;
    Ok(Json(QueueList { queues }))
}

fn not_queued(queue: &str, run_id: &str) -> Error {
    Error::not_found(format!("run {run_id} is not in queue {queue}"))
}

/// Take a run out of its queue; it is recorded as aborted.
#[utoipa::path(delete, path = "/api/v2/queues/{queue}/items/{run_id}", tag = "queues",
    params(QueuePath),
    responses((status = 204, description = "dequeued"), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn dequeue(
    State(app): State<Arc<App>>,
    Path(QueuePath { queue, run_id }): Path<QueuePath>,
) -> Result<StatusCode> {
    check_id("queue name", &queue)?;
    check_id("run id", &run_id)?;
    match app.runs.dequeue(&queue, &run_id).await? {
        Some(_) => Ok(StatusCode::NO_CONTENT),
        None => Err(not_queued(&queue, &run_id)),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PriorityRequest {
    /// Higher starts first; runs of equal priority keep their arrival order.
    priority: i32,
}

/// Change the priority of a waiting run.
#[utoipa::path(patch, path = "/api/v2/queues/{queue}/items/{run_id}", tag = "queues",
    request_body = PriorityRequest,
    params(QueuePath),
    responses((status = 200, body = QueueItemView), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn set_priority(
    State(app): State<Arc<App>>,
    Path(QueuePath { queue, run_id }): Path<QueuePath>,
    Body(req): Body<PriorityRequest>,
) -> Result<Json<QueueItemView>> {
    check_id("queue name", &queue)?;
    check_id("run id", &run_id)?;
    blocking(
        move || match app.store.set_priority(&queue, &run_id, req.priority)? {
            Some(item) => Ok(Json(QueueItemView::from(item))),
            None => Err(not_queued(&queue, &run_id)),
        },
    )
    .await
}

/// The operations of this module, for the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(list, dequeue, set_priority))]
pub struct Doc;
