//! Why a step failed: its process, its outputs, its preconditions, or the sub-DAG runs of a
//! `call` step. The engine keeps the text in the step's record (`StepRecord::error`), so
//! each variant's message is what `trellis status` and the UI show. Inner errors are part
//! of that message, so none is also given as `source()`: a chain would say it twice.

use trellis_core::params::ParamError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The process exited non-zero; `stderr` holds the last lines it wrote, if any.
    #[error("exit status {code}{}", tail(.stderr))]
    Exited { code: i32, stderr: Option<String> },
    #[error("killed by signal {signal}{}", tail(.stderr))]
    Signaled { signal: i32, stderr: Option<String> },
    #[error("step timed out after {secs}s")]
    TimedOut { secs: u64 },
    #[error("cancelled")]
    Cancelled,
    /// The process could not start: the executor's explanation.
    #[error("{0}")]
    SpawnFailed(String),
    /// It ran and ended badly for a reason beyond its exit code (out of memory).
    #[error("{reason}")]
    Failed { reason: String },
    /// What ran it vanished before saying how it ended.
    #[error("lost: {0}")]
    Lost(String),
    #[error("cannot write script: {0}")]
    WriteScript(std::io::Error),
    #[error("failed to create working directory {dir}: {error}")]
    WorkingDir { dir: String, error: std::io::Error },
    /// Dagu's words: the step's stdout, captured for `output:`, passed `max_output_size`.
    #[error("failed to capture output: output exceeded maximum size limit of {max} bytes")]
    OutputTooLarge { max: u64 },
    #[error(
        "step type `{kind}` cannot run yet: its executor is not built in this version of trellis (local shell, exec, call, router and docker steps run)"
    )]
    UnsupportedType { kind: String },
    /// A precondition did not hold; `condition` as written in the DAG.
    #[error("`{condition}`")]
    ConditionNotMet { condition: String },
    #[error("output `{key}`: cannot read {path}: {error}")]
    OutputRead {
        key: String,
        path: String,
        error: std::io::Error,
    },
    #[error("output `{key}`: not JSON: {error}")]
    OutputJson {
        key: String,
        error: serde_json::Error,
    },
    #[error("output `{key}`: not YAML: {}", .error.message)]
    OutputYaml {
        key: String,
        error: trellis_spec::yaml::SyntaxError,
    },
    #[error("output `{key}`: `{path}` selects nothing")]
    OutputSelect { key: String, path: String },
    #[error("sub-DAG `{name}` not found (no document or file named {name})")]
    SubDagNotFound { name: String },
    #[error("parallel items `{variable}` is not a JSON array: {error}")]
    ParallelItems {
        variable: String,
        error: serde_json::Error,
    },
    /// The params a sub-DAG run was given do not fit its declaration.
    #[error("{}", joined(.0))]
    SubDagParams(Vec<ParamError>),
    #[error(
        "this step's worker_selector needs the cluster, and this process has no coordinator to hand the sub-DAG to"
    )]
    NoCoordinator,
    /// The [`Remote`](crate::Remote) could not hand a child run over: its own error.
    #[error("{0}")]
    Remote(crate::RemoteError),
    #[error("{0}")]
    Store(trellis_store::Error),
    /// A sub-DAG run's task panicked or was aborted.
    #[error("{0}")]
    Join(tokio::task::JoinError),
    /// A sub-DAG run ended without succeeding: its status and its own error.
    #[error("sub-DAG `{name}` {status}: {error}")]
    SubDagFailed {
        name: String,
        status: &'static str,
        error: String,
    },
}

/// `: <last stderr lines>` when the process wrote any.
fn tail(stderr: &Option<String>) -> String {
    stderr
        .as_deref()
        .map(|text| format!(": {text}"))
        .unwrap_or_default()
}

/// Every param problem, as one line.
fn joined(errors: &[ParamError]) -> String {
    let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
    all.join("; ")
}
