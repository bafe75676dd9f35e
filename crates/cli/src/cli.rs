//! Command-line arguments, as the user typed them (validated later by each command).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Trellis: a DAG workflow orchestrator that runs Dagu and Daggy workflow files.
#[derive(Debug, Parser)]
#[command(name = "trellis", version, about, long_about = None, propagate_version = true)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check workflow files and report every problem with file:line:column.
    ///
    /// Exits 0 when every file is valid (warnings allowed) and 2 otherwise.
    Validate(ValidateArgs),
    /// Show what a run would do: params, env and the steps by execution level. Runs nothing.
    Dry(DryArgs),
    /// Print the JSON Schema of the workflow format, for editors.
    Schema,
    /// Run a workflow in the foreground until it ends.
    ///
    /// Exits 0 when the run succeeded or partially succeeded, 1 when it failed, was
    /// aborted, cancelled or is waiting for approval, and 2 for invalid input (then no run
    /// is recorded).
    Start(StartArgs),
    /// Show the latest (or a given) run of a workflow.
    Status(StatusArgs),
}

#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// Workflow file (Dagu YAML or Daggy JSON).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Parameters: "KEY=value KEY2='two words' positional".
    #[arg(short, long, value_name = "PARAMS")]
    pub params: Option<String>,
    /// Run id to use instead of a new UUIDv7.
    #[arg(short, long, value_name = "ID")]
    pub run_id: Option<String>,
    /// Print nothing but errors.
    #[arg(short, long)]
    pub quiet: bool,
    /// Positional parameters ($1, $2, ...), after `--`.
    #[arg(last = true, value_name = "ARGS")]
    pub positional: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// A workflow file, or a DAG name.
    #[arg(value_name = "FILE|NAME")]
    pub target: String,
    /// A specific run instead of the latest.
    #[arg(short, long, value_name = "ID")]
    pub run_id: Option<String>,
    /// Print the run as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// Workflow files (Dagu YAML or Daggy JSON).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Print problems as JSON lines instead of annotated source.
    #[arg(long)]
    pub json: bool,
    /// Print only errors, not warnings or "ok" lines.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, clap::Args)]
pub struct DryArgs {
    /// Workflow file (Dagu YAML or Daggy JSON).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Parameters: "KEY=value KEY2='two words' positional".
    #[arg(short, long, value_name = "PARAMS")]
    pub params: Option<String>,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
    /// Positional parameters ($1, $2, ...), after `--`.
    #[arg(last = true, value_name = "ARGS")]
    pub positional: Vec<String>,
}
