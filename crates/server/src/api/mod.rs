//! The REST API under `/api/v2`: DAG files, runs, queues and workers, described by an
//! OpenAPI 3.1 document generated from the handlers (`/api/v2/openapi.json`).
//!
//! Every failure is a JSON error body, including requests axum itself would refuse with
//! plain text: bad JSON, bad query strings, bad path segments, unknown routes and wrong
//! methods. The extractors here turn those rejections into [`Error`]s.

mod dags;
pub mod doc;
mod queue;
mod runs;
mod workers;

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::App;
use crate::error::{Error, Result};

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .merge(dags::routes())
        .merge(runs::routes())
        .merge(queue::routes())
        .merge(workers::routes())
        .merge(doc::routes())
        .route("/api/v2", axum::routing::any(unknown_route))
        .route("/api/v2/{*rest}", axum::routing::any(unknown_route))
        .method_not_allowed_fallback(wrong_method)
}

async fn unknown_route(uri: axum::http::Uri) -> Error {
    Error::not_found(format!("no API route {}", uri.path()))
}

async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> Error {
    Error::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// A JSON request body. An empty body reads as `{}`, so routes whose fields are all
/// optional work without one; errors are JSON (400 for bad syntax, 422 for bad fields).
pub struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self> {
        let content_type = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_ascii_lowercase);
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| Error::new(e.status(), "bad_request", e.body_text()))?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            if content_type.is_some_and(|c| !c.contains("json")) {
                return Err(Error::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "send the body as JSON (Content-Type: application/json)",
                ));
            }
            &bytes
        };
        serde_json::from_slice(text).map(Body).map_err(|e| {
            let status = if e.is_data() {
                StatusCode::UNPROCESSABLE_ENTITY
            } else {
                StatusCode::BAD_REQUEST
            };
            Error::new(status, "invalid_body", format!("request body: {e}"))
        })
    }
}

/// Query parameters, with a JSON error when they do not parse.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self> {
        let axum::extract::Query(value) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Query(value))
    }
}

/// Path parameters, with a JSON error when they do not parse.
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self> {
        let axum::extract::Path(value) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(Path(value))
    }
}

/// Runs blocking file work off the async workers.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("task failed: {e}")))?
}

/// Longest run id or queue name accepted: the store adds a time stamp and a prefix to
/// make a file name, which must stay under the file system's 255 bytes.
pub const MAX_ID: usize = 200;

/// Checks a run id or queue name given in a request.
pub fn check_id(what: &str, value: &str) -> Result<()> {
    if value.len() > MAX_ID {
        return Err(Error::new(
            StatusCode::BAD_REQUEST,
            "invalid_name",
            format!("a {what} has at most {MAX_ID} characters"),
        ));
    }
    trellis_store::check_name(value).map_err(|_| {
        Error::new(
            StatusCode::BAD_REQUEST,
            "invalid_name",
            format!("invalid {what} `{value}`: use letters, digits, ` `, `-`, `_` and `.`"),
        )
    })
}

/// `{name}` of the `/dags/{name}` routes.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct DagPath {
    /// DAG name: the file's stem in the dags dir.
    #[param(
        pattern = "^[A-Za-z0-9_-][A-Za-z0-9._-]*$",
        max_length = 200,
        example = "hello"
    )]
    pub name: String,
}

/// `{name}/{run_id}` of the `/dag-runs` routes.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct RunPath {
    /// The DAG's name as runs are recorded (its `name:`, else the file stem).
    #[param(pattern = "^[A-Za-z0-9._ -]+$", max_length = 200, example = "hello")]
    pub name: String,
    #[param(pattern = "^[A-Za-z0-9._ -]+$", max_length = 200)]
    pub run_id: String,
}

/// `{name}/{run_id}/steps/{step}` of the log route.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct StepPath {
    #[param(pattern = "^[A-Za-z0-9._ -]+$", max_length = 200, example = "hello")]
    pub name: String,
    #[param(pattern = "^[A-Za-z0-9._ -]+$", max_length = 200)]
    pub run_id: String,
    /// A step or handler (`onSuccess`, ...) of the run.
    pub step: String,
}

/// `{queue}/items/{run_id}` of the queue routes.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct QueuePath {
    #[param(pattern = "^[A-Za-z0-9._ -]+$", max_length = 200)]
    pub queue: String,
    #[param(pattern = "^[A-Za-z0-9._ -]+$", max_length = 200)]
    pub run_id: String,
}
