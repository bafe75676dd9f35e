//! DAG files: list, read, validate, create, edit, delete, suspend. A file is written only
//! after its new text loads without errors, and always whole (temporary file + rename),
//! so the scheduler never reads half a file or an invalid one written by the API.

use std::io::Write;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Router, routing};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{Body, DagPath, Path, Query, blocking};
use crate::App;
use crate::error::{Error, ErrorBody, ErrorDetail, Result};
use crate::views::{self, DagSummary};

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/api/v2/dags", get(list).post(create))
        .route("/api/v2/dags/validate", post(validate))
        .route("/api/v2/dags/{name}", get(detail).delete(remove))
        .route("/api/v2/dags/{name}/spec", get(spec).put(update))
        .route("/api/v2/dags/{name}/suspend", routing::post(suspend))
}

/// Longest DAG name accepted for a new file (the name plus `.yaml` must fit a file name).
const MAX_NAME: usize = 200;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Case-insensitive text to find in the name, description or labels.
    search: Option<String>,
    /// 1-based page number.
    #[param(minimum = 1)]
    page: Option<usize>,
    #[param(minimum = 1, maximum = 500)]
    per_page: Option<usize>,
}

#[derive(Serialize, ToSchema)]
pub struct DagList {
    dags: Vec<DagSummary>,
    total: usize,
    page: usize,
    per_page: usize,
}

/// List the DAGs in the dags dir.
#[utoipa::path(get, path = "/api/v2/dags", tag = "dags", params(ListQuery),
    responses((status = 200, body = DagList), (status = 400, body = ErrorBody)))]
async fn list(State(app): State<Arc<App>>, Query(q): Query<ListQuery>) -> Result<Json<DagList>> {
    let page = q.page.unwrap_or(1).max(1);
    let per_page = q.per_page.unwrap_or(100).clamp(1, 500);
    let mut dags = blocking(move || Ok(views::list_dags(&app))).await?;
    if let Some(search) = q.search.map(|s| s.to_lowercase()).filter(|s| !s.is_empty()) {
        dags.retain(|d| matches_search(d, &search));
    }
    let total = dags.len();
    let dags = dags
        .into_iter()
        .skip((page - 1).saturating_mul(per_page))
        .take(per_page)
        .collect();
    Ok(Json(DagList {
        dags,
        total,
        page,
        per_page,
    }))
}

fn matches_search(d: &DagSummary, search: &str) -> bool {
    let has = |s: &str| s.to_lowercase().contains(search);
    has(&d.name)
        || has(&d.dag_name)
        || d.description.as_deref().is_some_and(has)
        || d.labels.iter().any(|(k, v)| has(k) || has(v))
}

/// One step of a DAG, for graphs and pickers.
#[derive(Serialize, ToSchema)]
pub struct StepInfo {
    name: String,
    depends: Vec<String>,
    description: Option<String>,
}

/// A DAG with its loaded model and steps.
#[derive(Serialize, ToSchema)]
pub struct DagDetail {
    #[serde(flatten)]
    summary: DagSummary,
    /// The loaded model (absent when the file is invalid).
    #[schema(value_type = Option<Object>)]
    dag: Option<serde_json::Value>,
    steps: Vec<StepInfo>,
}

fn detail_of(app: &App, name: &str) -> Result<DagDetail> {
    let (summary, dag) = match views::load_dag(app, name) {
        Ok((summary, dag)) => (summary, Some(dag)),
        Err(e) if e.status == StatusCode::UNPROCESSABLE_ENTITY => {
            (views::dag_summary(app, name)?, None)
        }
        Err(e) => return Err(e),
    };
    let steps = dag
        .iter()
        .flat_map(|d| d.steps.iter())
        .map(|s| StepInfo {
            name: s.name.clone(),
            depends: s.depends.clone(),
            description: s.description.clone(),
        })
        .collect();
    let dag = dag
        .map(|d| serde_json::to_value(d).map_err(|e| Error::internal(e.to_string())))
        .transpose()?;
    Ok(DagDetail {
        summary,
        dag,
        steps,
    })
}

/// A DAG with its model and steps.
#[utoipa::path(get, path = "/api/v2/dags/{name}", tag = "dags",
    params(DagPath),
    responses((status = 200, body = DagDetail), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn detail(
    State(app): State<Arc<App>>,
    Path(DagPath { name }): Path<DagPath>,
) -> Result<Json<DagDetail>> {
    blocking(move || detail_of(&app, &name)).await.map(Json)
}

/// One problem in a workflow file.
#[derive(Serialize, ToSchema)]
pub struct Diagnostic {
    /// Stable code, e.g. `spec::unknown-key`.
    code: String,
    message: String,
    /// 1-based.
    line: usize,
    /// 1-based, in characters.
    column: usize,
    help: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Validation {
    valid: bool,
    errors: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

/// The 422 body for a spec that does not load: the usual error plus every problem.
#[derive(Serialize, ToSchema)]
pub struct InvalidSpec {
    error: ErrorDetail,
    /// Every problem of the spec (absent when the request body itself was malformed).
    #[serde(default)]
    errors: Vec<Diagnostic>,
    #[serde(default)]
    warnings: Vec<Diagnostic>,
}

impl IntoResponse for InvalidSpec {
    fn into_response(self) -> Response {
        (StatusCode::UNPROCESSABLE_ENTITY, Json(self)).into_response()
    }
}

/// Loads a spec the way the scheduler will, as `file_name` in the dags dir.
fn check_spec(file_name: &str, text: &str) -> Validation {
    let diagnostic = |p: &trellis_spec::diag::Problem| {
        let (line, column) = p.line_col(text);
        Diagnostic {
            code: p.code.as_str().to_string(),
            message: p.message.clone(),
            line,
            column,
            help: p.help.clone(),
        }
    };
    match trellis_spec::load_str(file_name, text) {
        Ok(loaded) => Validation {
            valid: true,
            errors: Vec::new(),
            warnings: loaded.warnings.iter().map(diagnostic).collect(),
        },
        Err(problems) => {
            let (errors, warnings): (Vec<_>, Vec<_>) = problems.iter().partition(|p| !p.warning);
            Validation {
                valid: false,
                errors: errors.into_iter().map(diagnostic).collect(),
                warnings: warnings.into_iter().map(diagnostic).collect(),
            }
        }
    }
}

fn invalid(v: Validation) -> InvalidSpec {
    let first = v.errors.first().map_or_else(String::new, |d| {
        format!(": {}:{}: {}", d.line, d.column, d.message)
    });
    InvalidSpec {
        error: ErrorDetail {
            code: "invalid_spec".into(),
            message: format!("the spec has {} error(s){first}", v.errors.len()),
        },
        errors: v.errors,
        warnings: v.warnings,
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidateRequest {
    /// The workflow text (Dagu YAML or Daggy JSON).
    spec: String,
    /// The DAG name the file would have (its default `name`).
    name: Option<String>,
}

/// Check a workflow text without saving it.
#[utoipa::path(post, path = "/api/v2/dags/validate", tag = "dags", request_body = ValidateRequest,
    responses((status = 200, body = Validation), (status = 400, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
async fn validate(Body(req): Body<ValidateRequest>) -> Result<Json<Validation>> {
    let name = req.name.unwrap_or_else(|| "dag".into());
    blocking(move || Ok(check_spec(&format!("{name}.yaml"), &req.spec)))
        .await
        .map(Json)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    /// The new file's stem: letters, digits, `-`, `_` and `.` (not first).
    #[schema(
        pattern = "^[A-Za-z0-9_-][A-Za-z0-9._-]*$",
        max_length = 200,
        example = "etl"
    )]
    name: String,
    spec: String,
}

/// Create a DAG file `<dags dir>/<name>.yaml`.
#[utoipa::path(post, path = "/api/v2/dags", tag = "dags", request_body = CreateRequest,
    responses((status = 201, body = DagDetail), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = InvalidSpec)))]
async fn create(State(app): State<Arc<App>>, Body(req): Body<CreateRequest>) -> Result<Response> {
    blocking(move || {
        check_new_name(&app, &req.name)?;
        let file_name = format!("{}.yaml", req.name);
        let validation = check_spec(&file_name, &req.spec);
        if !validation.valid {
            return Ok(invalid(validation).into_response());
        }
        let path = app.dags_dir.join(&file_name);
        write_file(&path, req.spec.as_bytes(), false)?;
        let detail = detail_of(&app, &req.name)?;
        Ok((StatusCode::CREATED, Json(detail)).into_response())
    })
    .await
}

/// A name for a new DAG file: valid, short enough, and not taken by any file.
fn check_new_name(app: &App, name: &str) -> Result<()> {
    if name.len() > MAX_NAME {
        return Err(Error::new(
            StatusCode::BAD_REQUEST,
            "invalid_name",
            format!("a DAG name has at most {MAX_NAME} characters"),
        ));
    }
    match app.dag_file(name) {
        Ok(path) => Err(Error::conflict(format!(
            "a DAG named `{name}` exists ({})",
            path.file_name().unwrap_or_default().to_string_lossy()
        ))),
        Err(e) if e.status == StatusCode::NOT_FOUND => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes a file whole: a temporary file in the same dir, synced, then moved into place.
/// With `replace` false an existing file is never overwritten (409).
fn write_file(path: &FsPath, bytes: &[u8], replace: bool) -> Result<()> {
    let dir = path.parent().unwrap_or(FsPath::new("."));
    std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    let tmp = temp_path(path);
    let result = (|| -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        if replace {
            std::fs::rename(&tmp, path)
        } else {
            // A link fails if the name is taken, so two creators cannot both win.
            std::fs::hard_link(&tmp, path)
        }
    })();
    let _ = std::fs::remove_file(&tmp);
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(Error::conflict(format!(
            "{} exists",
            path.file_name().unwrap_or_default().to_string_lossy()
        ))),
        Err(e) => Err(io_error(path, e)),
    }
}

/// A hidden name next to `path`, which the dags-dir scan ignores (not `.yaml`).
fn temp_path(path: &FsPath) -> PathBuf {
    let mut bytes = [0u8; 6];
    let _ = getrandom::fill(&mut bytes);
    let suffix: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.{suffix}.tmp"))
}

fn io_error(path: &FsPath, e: std::io::Error) -> Error {
    Error::internal(format!("{}: {e}", path.display()))
}

#[derive(Serialize, ToSchema)]
pub struct SpecText {
    name: String,
    /// The file's text as stored.
    spec: String,
}

/// The text of a DAG file.
#[utoipa::path(get, path = "/api/v2/dags/{name}/spec", tag = "dags",
    params(DagPath),
    responses((status = 200, body = SpecText), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn spec(
    State(app): State<Arc<App>>,
    Path(DagPath { name }): Path<DagPath>,
) -> Result<Json<SpecText>> {
    blocking(move || {
        let path = app.dag_file(&name)?;
        let spec = std::fs::read_to_string(&path).map_err(|e| io_error(&path, e))?;
        Ok(Json(SpecText { name, spec }))
    })
    .await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRequest {
    spec: String,
}

/// Replace the text of a DAG file (only if it loads without errors).
#[utoipa::path(put, path = "/api/v2/dags/{name}/spec", tag = "dags", request_body = UpdateRequest,
    params(DagPath),
    responses((status = 200, body = DagDetail), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = InvalidSpec)))]
async fn update(
    State(app): State<Arc<App>>,
    Path(DagPath { name }): Path<DagPath>,
    Body(req): Body<UpdateRequest>,
) -> Result<Response> {
    blocking(move || {
        let path = app.dag_file(&name)?;
        let file_name = path.file_name().unwrap_or_default().to_string_lossy();
        let validation = check_spec(&file_name, &req.spec);
        if !validation.valid {
            return Ok(invalid(validation).into_response());
        }
        write_file(&path, req.spec.as_bytes(), true)?;
        Ok(Json(detail_of(&app, &name)?).into_response())
    })
    .await
}

/// Delete a DAG file; its runs stay in the history.
#[utoipa::path(delete, path = "/api/v2/dags/{name}", tag = "dags",
    params(DagPath),
    responses((status = 204, description = "deleted"), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn remove(
    State(app): State<Arc<App>>,
    Path(DagPath { name }): Path<DagPath>,
) -> Result<StatusCode> {
    blocking(move || {
        let path = app.dag_file(&name)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(StatusCode::NO_CONTENT),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(Error::not_found(format!("no DAG named `{name}`")))
            }
            Err(e) => Err(io_error(&path, e)),
        }
    })
    .await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SuspendRequest {
    /// `true` stops the DAG's schedules from firing; `false` resumes them.
    suspended: bool,
}

/// Suspend or resume a DAG's schedules.
#[utoipa::path(post, path = "/api/v2/dags/{name}/suspend", tag = "dags", request_body = SuspendRequest,
    params(DagPath),
    responses((status = 200, body = DagSummary), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn suspend(
    State(app): State<Arc<App>>,
    Path(DagPath { name }): Path<DagPath>,
    Body(req): Body<SuspendRequest>,
) -> Result<Json<DagSummary>> {
    blocking(move || {
        let summary = views::dag_summary(&app, &name)?;
        trellis_scheduler::heartbeat::set_suspended(&*app.store, &summary.dag_name, req.suspended)
            .map_err(|e| Error::internal(format!("cannot change the suspend flag: {e}")))?;
        views::dag_summary(&app, &name).map(Json)
    })
    .await
}

/// The loaded DAG and its file, for starting runs; 422 when the file is invalid.
pub fn runnable(app: &App, name: &str) -> Result<(trellis_core::Dag, PathBuf)> {
    let path = app.dag_file(name)?;
    let (_, dag) = views::load_dag(app, name)?;
    Ok((dag, path))
}

/// The name runs of a DAG file are recorded under (its `name:`, else the file stem).
pub fn run_name(app: &App, name: &str) -> Result<String> {
    Ok(views::dag_summary(app, name)?.dag_name)
}

/// The operations of this module, for the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(list, create, validate, detail, remove, spec, update, suspend))]
pub struct Doc;
