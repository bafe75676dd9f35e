//! API errors: every failure is a JSON body `{"error": {"code", "message"}}` with the
//! matching 4xx or 5xx status, never an HTML page or an empty response.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug, Clone)]
pub struct Error {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `not_found`, `invalid_name`, `forbidden`.
    pub code: String,
    pub message: String,
}

impl Error {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Error {
        Error {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn not_found(message: impl Into<String>) -> Error {
        Error::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn bad_request(message: impl Into<String>) -> Error {
        Error::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn conflict(message: impl Into<String>) -> Error {
        Error::new(StatusCode::CONFLICT, "conflict", message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Error {
        Error::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub fn forbidden(message: impl Into<String>) -> Error {
        Error::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn internal(message: impl Into<String>) -> Error {
        Error::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            // Lets a browser ask for basic credentials; API clients ignore it.
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Basic realm=\"trellis\", charset=\"UTF-8\""),
            );
        }
        response
    }
}

impl From<trellis_store::Error> for Error {
    fn from(e: trellis_store::Error) -> Error {
        match e {
            trellis_store::Error::InvalidName(_) => {
                Error::new(StatusCode::BAD_REQUEST, "invalid_name", e.to_string())
            }
            trellis_store::Error::Db {
                transient: true, ..
            }
            | trellis_store::Error::Unreachable { .. } => Error::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                e.to_string(),
            ),
            trellis_store::Error::Io { .. }
            | trellis_store::Error::Db { .. }
            | trellis_store::Error::Fenced(_) => Error::internal(e.to_string()),
        }
    }
}

impl From<trellis_runs::Error> for Error {
    fn from(e: trellis_runs::Error) -> Error {
        use trellis_runs::Error as E;
        match e {
            E::Store(e) => e.into(),
            E::NotFound { .. } => Error::not_found(e.to_string()),
            E::NotInAnyQueue { .. } | E::Busy { .. } | E::NotFinal { .. } => {
                Error::conflict(e.to_string())
            }
            E::NoProcess { .. } | E::NoLauncher | E::Io { .. } | E::Deadline { .. } => {
                Error::internal(e.to_string())
            }
        }
    }
}

/// Rejections from axum's extractors (bad JSON, bad query) as our JSON errors.
impl From<axum::extract::rejection::JsonRejection> for Error {
    fn from(e: axum::extract::rejection::JsonRejection) -> Error {
        Error::new(e.status(), "bad_request", e.body_text())
    }
}

impl From<axum::extract::rejection::QueryRejection> for Error {
    fn from(e: axum::extract::rejection::QueryRejection) -> Error {
        Error::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text())
    }
}

impl From<axum::extract::rejection::PathRejection> for Error {
    fn from(e: axum::extract::rejection::PathRejection) -> Error {
        Error::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text())
    }
}

pub type Result<T> = std::result::Result<T, Error>;
