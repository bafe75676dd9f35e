//! Webhooks: `POST /api/v2/webhooks/{name}` starts a DAG for an outside system (CI, a git
//! host, a monitoring alert) that holds the DAG's webhook token rather than an API token.
//!
//! The route is public to the auth middleware and checks its own credential: either
//! `Authorization: Bearer <token>` or `X-Trellis-Signature: sha256=<hex HMAC-SHA256 of the
//! raw body keyed with the token>`, compared in constant time. The token of a name is an
//! HMAC of it with the server secret, so it can be checked for any name without knowing
//! whether such a DAG exists: a caller without the right token gets the same 401 for every
//! name and learns nothing about which DAGs exist; only an authenticated call can get a
//! 404. The JSON body reaches the run's steps whole as `WEBHOOK_PAYLOAD`, and its optional
//! `params` (a string, or an object of `KEY: value`) and `run_id` fields shape the run.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use axum::{Json, Router};
use hmac::{KeyInit, Mac};
use serde::Serialize;
use serde_json::Value;
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

use crate::App;
use crate::error::{Error, ErrorBody, Result};

/// The largest body accepted. The body is handed to the run as one environment variable,
/// and Linux refuses to start a process with any single variable over 128 KiB.
pub const MAX_BODY: usize = 120 * 1024;

/// The OpenAPI description of this module's routes (merged into `/api/v2/openapi.json`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(webhook), components(schemas(WebhookBody, WebhookStarted)))]
pub struct Doc;

pub fn routes() -> Router<Arc<App>> {
    Router::new().route("/api/v2/webhooks/{name}", post(webhook))
}

/// The webhook token of a DAG: an HMAC of its name with the server secret.
pub fn token(app: &App, dag: &str) -> String {
    app.sign(&format!("webhook|{dag}"))
}

/// The fields of a webhook body that Trellis reads; any others are passed on untouched.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct WebhookBody {
    /// Params: `KEY=value KEY2='two words' positional`, or an object `{"KEY": "value"}`.
    params: Option<String>,
    /// Run id instead of a new one (a retried delivery with the same id gets 409).
    run_id: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct WebhookStarted {
    /// The name the run is recorded under (`/api/v2/dag-runs/{name}/{run_id}`).
    pub name: String,
    pub run_id: String,
}

/// Starts a DAG for a holder of its webhook token.
///
/// The body (JSON, optional, at most 120 KiB) reaches the steps as `WEBHOOK_PAYLOAD`.
#[utoipa::path(
    post,
    path = "/api/v2/webhooks/{name}",
    tag = "webhooks",
    params(
        ("name" = String, Path, description = "DAG name (file stem)"),
        ("X-Trellis-Signature" = Option<String>, Header, description = "`sha256=<hex HMAC-SHA256 of the body keyed with the token>`, instead of a bearer token"),
    ),
    request_body(content = WebhookBody, description = "Any JSON; `params` and `run_id` are read"),
    responses(
        (status = 202, description = "The run started", body = WebhookStarted),
        (status = 400, description = "Body is not JSON, or params do not resolve", body = ErrorBody),
        (status = 401, description = "Missing or wrong token or signature", body = ErrorBody),
        (status = 404, description = "No such DAG (only after a valid token)", body = ErrorBody),
        (status = 409, description = "The given run id exists", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
    ),
    // A bearer webhook token, or none but the signature header.
    security(("bearer" = []), ())
)]
async fn webhook(
    State(app): State<Arc<App>>,
    axum::extract::Path(name): axum::extract::Path<String>,
    request: Request,
) -> Result<(StatusCode, Json<WebhookStarted>)> {
    let headers = request.headers().clone();
    let body = read_body(request).await?;
    if !authorized(&app, &name, &headers, &body) {
        return Err(Error::unauthorized(
            "missing or wrong webhook token or signature (see `trellis webhook NAME`)",
        ));
    }
    let wanted = parse(&body)?;
    let task = app.clone();
    let run = crate::api::blocking(move || prepare(&task, &name, wanted)).await?;
    start(&app, &run, &body).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(WebhookStarted {
            name: run.dag_name,
            run_id: run.run_id,
        }),
    ))
}

/// Launches `trellis start` with the body as `WEBHOOK_PAYLOAD` and waits until the run is
/// recorded, so the caller can read it right away.
async fn start(app: &App, run: &Launch, body: &[u8]) -> Result<()> {
    let payload = if body.iter().all(u8::is_ascii_whitespace) {
        "{}".to_string()
    } else {
        String::from_utf8_lossy(body).into_owned()
    };
    let launch = trellis_runs::Launch::Start {
        file: run.path.clone(),
        dag: run.dag_name.clone(),
        run_id: run.run_id.clone(),
        params: run.params.clone(),
        env: vec![("WEBHOOK_PAYLOAD".to_string(), payload)],
    };
    app.runs.launch(launch).await?;
    Ok(())
}

async fn read_body(request: Request) -> Result<axum::body::Bytes> {
    let too_large = || {
        Error::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("webhook bodies are limited to {} KiB", MAX_BODY / 1024),
        )
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        return Err(too_large());
    }
    axum::body::to_bytes(request.into_body(), MAX_BODY)
        .await
        .map_err(|_| too_large())
}

/// The bearer token or the body's signature matches the name's webhook token.
fn authorized(app: &App, name: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |key| headers.get(key).and_then(|v| v.to_str().ok());
    if let Some(bearer) =
        header(header::AUTHORIZATION.as_str()).and_then(|a| a.strip_prefix("Bearer "))
    {
        return app.verify(&format!("webhook|{name}"), bearer.trim());
    }
    if let Some(signature) = header("x-trellis-signature").and_then(|s| s.strip_prefix("sha256=")) {
        let expected = signature_of(&token(app, name), body);
        return bool::from(
            expected
                .as_bytes()
                .ct_eq(signature.trim().to_ascii_lowercase().as_bytes()),
        );
    }
    false
}

/// `hex(HMAC-SHA256(key = token, body))`, as a sender computes it.
pub fn signature_of(token: &str, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(token.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(body);
    crate::auth::hex(&mac.finalize().into_bytes())
}

/// What the body asks for.
#[derive(Debug, Default, PartialEq)]
struct Wanted {
    params: Option<String>,
    run_id: Option<String>,
}

fn parse(body: &[u8]) -> Result<Wanted> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Wanted::default());
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| invalid_body(format!("body is not JSON: {e}")))?;
    let Value::Object(fields) = value else {
        return Ok(Wanted::default());
    };
    let params = match fields.get("params") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Object(map)) => Some(render_params(map)?),
        Some(_) => {
            return Err(invalid_body(
                "`params` must be a string or an object".into(),
            ));
        }
    };
    let run_id = match fields.get("run_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(invalid_body("`run_id` must be a string".into())),
    };
    Ok(Wanted { params, run_id })
}

/// A body the webhook cannot use: 400 with code `invalid_body`.
fn invalid_body(message: String) -> Error {
    Error::new(StatusCode::BAD_REQUEST, "invalid_body", message)
}

/// `{"A": "x y", "N": 3}` as `A="x y" N=3`.
fn render_params(map: &serde_json::Map<String, Value>) -> Result<String> {
    let values = map
        .iter()
        .map(|(name, value)| {
            let value = match value {
                Value::String(s) => s.clone(),
                Value::Number(_) | Value::Bool(_) => value.to_string(),
                _ => {
                    return Err(invalid_body(format!(
                        "param `{name}` must be a string, number or boolean"
                    )));
                }
            };
            Ok(trellis_core::params::ParamValue {
                name: name.clone(),
                value,
                positional: false,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(trellis_core::params::render(&values))
}

/// A checked request, ready to launch.
struct Launch {
    /// The name the run is recorded under.
    dag_name: String,
    path: std::path::PathBuf,
    params: Option<String>,
    run_id: String,
}

/// The DAG, its file and a free run id, with the params checked before anything starts.
fn prepare(app: &App, name: &str, wanted: Wanted) -> Result<Launch> {
    let path = app.dag_file(name)?;
    let (_, dag) = crate::views::load_dag(app, name)?;
    if let Err(errors) = trellis_spec::resolve_params(&dag, wanted.params.as_deref(), &[]) {
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        return Err(Error::new(
            StatusCode::BAD_REQUEST,
            "invalid_params",
            text.join("; "),
        ));
    }
    let run_id = match wanted.run_id {
        Some(id) => {
            crate::api::check_id("run id", &id)?;
            if app.store.find(&dag.name, &id)?.is_some() {
                return Err(Error::conflict(format!("run {id} of {} exists", dag.name)));
            }
            id
        }
        None => trellis_engine::new_run_id(),
    };
    Ok(Launch {
        dag_name: dag.name,
        path,
        params: wanted.params,
        run_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_give_params_and_run_ids() {
        assert_eq!(parse(b"").unwrap(), Wanted::default());
        assert_eq!(parse(b"[1, 2]").unwrap(), Wanted::default());
        let w = parse(br#"{"params": "A=1 two", "run_id": "r1", "ref": "main"}"#).unwrap();
        assert_eq!(w.params.as_deref(), Some("A=1 two"));
        assert_eq!(w.run_id.as_deref(), Some("r1"));
        let w = parse(br#"{"params": {"A": "x y", "N": 3}}"#).unwrap();
        assert_eq!(w.params.as_deref(), Some("A=\"x y\" N=3"));
        assert_eq!(parse(b"{nope").unwrap_err().status, StatusCode::BAD_REQUEST);
        assert!(parse(br#"{"params": 3}"#).is_err());
        assert!(parse(br#"{"params": {"A": [1]}}"#).is_err());
    }

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature_of("Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
