//! Loads workflow files into the [`trellis_core::Dag`] model and explains every mistake.
//!
//! Two formats are read: Dagu YAML (v2 snake_case and v1 camelCase, multi-document files
//! whose later documents are local sub-DAGs) and Daggy JSON run specs. Loading is two-stage,
//! like ripgrep's flags: [`yaml`] builds a tree in which every node has a span, then the
//! decoders turn it into the model, collecting all [`diag::Problem`]s at once rather than
//! stopping at the first.

mod action;
mod dag;
mod daggy;
mod decode;
pub mod diag;
mod error;
pub use daggy::PARAMETERS_KEY as DAGGY_PARAMETERS;
pub use daggy::generated_steps;
pub use error::Error;
mod fields;
mod graph;
mod params;
mod policy;
mod schedule;
pub mod schema;
mod secrets;
mod step;
mod step_types;
pub mod yaml;

use std::path::Path;

use trellis_core::Dag;
use trellis_core::params::{ParamError, ParamToken, ParamValue};

use crate::decode::Cx;
use crate::diag::{Code, Problem};

/// What the binary's executors say about a step type and its `with:`: `None` when no
/// executor serves the type, else the executor's check. Installed once by the binary
/// ([`set_executor_check`]); without it every known type loads (this crate alone cannot
/// know which executors a build has).
pub type ExecutorCheck = fn(&str, &serde_json::Value) -> Option<Result<(), String>>;

static EXECUTOR_CHECK: std::sync::OnceLock<ExecutorCheck> = std::sync::OnceLock::new();

/// Makes loading refuse step types no executor serves, and check each step's `with:`.
pub fn set_executor_check(check: ExecutorCheck) {
    let _ = EXECUTOR_CHECK.set(check);
}

pub use action::set_dag_exists;

pub(crate) fn executor_check() -> Option<ExecutorCheck> {
    EXECUTOR_CHECK.get().copied()
}

/// Checks a DAG-level option the executors read (`container`, `registry_auths`): `None`
/// when no executor reads that key.
pub type DagOptionCheck = fn(&str, &serde_json::Value) -> Option<Result<(), String>>;

static DAG_OPTION_CHECK: std::sync::OnceLock<DagOptionCheck> = std::sync::OnceLock::new();

/// Makes loading check the DAG-level options executors read, and refuse those none does.
pub fn set_dag_option_check(check: DagOptionCheck) {
    let _ = DAG_OPTION_CHECK.set(check);
}

pub(crate) fn dag_option_check() -> Option<DagOptionCheck> {
    DAG_OPTION_CHECK.get().copied()
}

/// A file that loaded; `warnings` may still be worth showing.
#[derive(Debug)]
pub struct Loaded {
    pub dag: Dag,
    pub warnings: Vec<Problem>,
}

/// Which format a file is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Dagu,
    Daggy,
}

/// Loads a workflow from its text. `name` is the file name, used for the default DAG name.
/// The format is Daggy when the text is a JSON object with `tasks` and no `steps`.
pub fn load_str(name: &str, text: &str) -> Result<Loaded, Vec<Problem>> {
    let json_like = text.trim_start().starts_with('{');
    if json_like && let Err(e) = serde_json::from_str::<serde_json::Value>(text) {
        return Err(vec![json_problem(text, &e)]);
    }
    let docs = yaml::parse(text).map_err(|e| {
        let problem = Problem::error(Code::Syntax, e.span, format!("invalid YAML: {}", e.message))
            .label("the parser stopped here");
        vec![if e.message.contains("quoted scalar") {
            problem
                .label("this quoted string")
                .help("check that the quote opened here is closed")
        } else {
            problem
        }]
    })?;
    let stem = default_name(name);
    let mut cx = Cx {
        local_dags: docs
            .iter()
            .skip(1)
            .filter_map(|d| d.get("name").and_then(yaml::Node::as_str).map(String::from))
            .collect(),
        ..Cx::default()
    };
    let format = detect(&docs);
    let dag = match (format, docs.split_first()) {
        (_, None) => {
            let span = yaml::Span::default();
            cx.push(
                Problem::error(Code::MissingField, span, "the file is empty")
                    .help("a DAG needs at least `steps:`"),
            );
            None
        }
        (Format::Daggy, Some((first, _))) => daggy::decode_run(&mut cx, first, &stem),
        (Format::Dagu, Some((first, rest))) => decode_documents(&mut cx, first, rest, &stem),
    };
    let (mut errors, mut warnings): (Vec<Problem>, Vec<Problem>) =
        cx.problems.into_iter().partition(|p| !p.warning);
    // In file order, as a reader goes through it (stable: ties keep decoding order).
    errors.sort_by_key(|p| p.span.offset);
    warnings.sort_by_key(|p| p.span.offset);
    match dag {
        Some(dag) if errors.is_empty() => Ok(Loaded { dag, warnings }),
        _ => Err(errors.into_iter().chain(warnings).collect()),
    }
}

/// [`load_str`] for the text of the file at `path`: a relative DAG `working_dir` is then
/// taken against the file's directory, as Dagu does, and stored absolute, so the run (or a
/// worker given the DAG) finds it wherever it starts. One that starts with `~` or `$` is
/// left for the run to expand.
pub fn load_file_str(path: &Path, text: &str) -> Result<Loaded, Vec<Problem>> {
    let mut loaded = load_str(&path.display().to_string(), text)?;
    let dir = std::path::absolute(path)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    if let Some(dir) = dir {
        anchor_working_dir(&mut loaded.dag, &dir);
        for local in &mut loaded.dag.local_dags {
            anchor_working_dir(local, &dir);
        }
    }
    Ok(loaded)
}

fn anchor_working_dir(dag: &mut Dag, dir: &Path) {
    let Some(wd) = dag.working_dir.as_deref() else {
        return;
    };
    if !(wd.starts_with('/') || wd.starts_with('~') || wd.starts_with('$')) {
        dag.working_dir = Some(clean(&dir.join(wd)).display().to_string());
    }
}

/// `path` with `.` and `..` resolved lexically, as Go's `filepath.Join` does.
fn clean(path: &Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut out = std::path::PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn decode_documents(
    cx: &mut Cx,
    first: &yaml::Node,
    rest: &[yaml::Node],
    stem: &str,
) -> Option<Dag> {
    let mut dag = dag::decode_dag(cx, first, Some(stem))?;
    for doc in rest {
        if doc.is_null() {
            continue;
        }
        if let Some(sub) = dag::decode_dag(cx, doc, None) {
            if sub.name == dag.name || dag.local_dags.iter().any(|d| d.name == sub.name) {
                let span = doc.get("name").map_or(doc.span, |n| n.span);
                cx.push(
                    Problem::error(
                        Code::DuplicateStep,
                        span,
                        format!("two DAGs in this file are named `{}`", sub.name),
                    )
                    .help("give each document its own `name`"),
                );
            }
            dag.local_dags.push(sub);
        }
    }
    Some(dag)
}

fn detect(docs: &[yaml::Node]) -> Format {
    match docs.first() {
        Some(doc) if doc.get("tasks").is_some() && doc.get("steps").is_none() => Format::Daggy,
        _ => Format::Dagu,
    }
}

fn json_problem(text: &str, e: &serde_json::Error) -> Problem {
    let offset = offset_of(text, e.line(), e.column());
    let message = e.to_string();
    let message = message
        .split(" at line")
        .next()
        .unwrap_or(&message)
        .to_string();
    Problem::error(
        Code::Syntax,
        yaml::Span { offset, len: 0 },
        format!("invalid JSON: {message}"),
    )
    .label("here")
}

fn offset_of(text: &str, line: usize, column: usize) -> usize {
    let start: usize = text
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum();
    let line_text = text
        .get(start..)
        .unwrap_or("")
        .split('\n')
        .next()
        .unwrap_or("");
    let col_bytes: usize = line_text
        .chars()
        .take(column.saturating_sub(1))
        .map(char::len_utf8)
        .sum();
    (start + col_bytes).min(text.len())
}

/// The DAG name a file gets when it has no `name:`: its file stem.
pub fn default_name(file_name: &str) -> String {
    let path = Path::new(file_name);
    path.file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or(file_name)
        .to_string()
}

/// Resolves a DAG's params with `--params` text and positional arguments, validating
/// required, enum, type and pattern constraints.
pub fn resolve_params(
    dag: &Dag,
    params: Option<&str>,
    positional: &[String],
) -> Result<Vec<ParamValue>, Vec<ParamError>> {
    let mut tokens = match params.map(trellis_core::params::parse_tokens) {
        Some(Ok(tokens)) => tokens,
        Some(Err(error)) => {
            return Err(vec![ParamError {
                param: "--params".into(),
                error,
            }]);
        }
        None => Vec::new(),
    };
    tokens.extend(positional.iter().map(|p| ParamToken {
        name: None,
        value: p.clone(),
    }));
    trellis_core::params::resolve(&dag.params, &tokens, &params::regex_match)
}
