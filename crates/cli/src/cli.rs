//! Command-line arguments, as the user typed them (validated later by each command).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Trellis: a DAG workflow orchestrator that runs Dagu and Daggy workflow files.
#[derive(Debug, Parser)]
#[command(name = "trellis", version, about, long_about = None, propagate_version = true)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
    /// How services log to stderr: `text` lines or one JSON object per line. `RUST_LOG`
    /// picks what is logged (default: info).
    #[arg(
        long,
        value_enum,
        global = true,
        env = "TRELLIS_LOG_FORMAT",
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
}

/// The format of the log lines on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines: time, level, message.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
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
    /// Run a queued run a scheduler took from its queue: what the container run launcher
    /// starts in each run's container.
    #[command(hide = true)]
    RunQueued(RunQueuedArgs),
    /// Show the latest (or a given) run of a workflow.
    Status(StatusArgs),
    /// Stop a running run: its steps get the stop signal, the run ends cancelled.
    Stop(RunTarget),
    /// Run again, in a new attempt of the same run id, the steps that did not succeed
    /// (or, with --step, that step and everything after it).
    Retry(RetryArgs),
    /// Stop a run if it is running, then start the DAG again with the same params as a
    /// new run.
    Restart(RestartArgs),
    /// List the runs of a DAG, newest first.
    History(HistoryArgs),
    /// Print a step's log.
    Logs(LogsArgs),
    /// Put a run in a queue for the scheduler; prints its run id.
    Enqueue(EnqueueArgs),
    /// Take a queued run out of its queue; it is recorded as aborted.
    Dequeue(DequeueArgs),
    /// Delete finished runs (and their logs) older than the retention period.
    Cleanup(CleanupArgs),
    /// Fire schedules and start queued runs within the configured limits. Several may run
    /// on the same data dir: one leads, the others take over within seconds if it dies.
    Scheduler(SchedulerArgs),
    /// Serve the web UI, the REST API (/api/v2), health checks and metrics.
    ///
    /// Listens on 127.0.0.1:8080 by default; it refuses a non-loopback address unless
    /// authentication is configured or --insecure-no-auth is given.
    Server(ServerArgs),
    /// Run every Trellis service in one process: the scheduler and the web server (the
    /// coordinator joins them when it lands). Takes the flags of both.
    #[command(name = "start-all")]
    StartAll(StartAllArgs),
    /// Hand runs to workers over gRPC (127.0.0.1:50055 by default); tracks worker health
    /// and the leases of the tasks they run.
    Coordinator(CoordinatorArgs),
    /// Run tasks from the coordinator with the engine in-process. Labels route DAGs here
    /// through their `worker_selector`. SIGTERM drains running tasks, then exits.
    Worker(WorkerArgs),
    /// List workers with their health and running tasks.
    Workers(WorkersArgs),
    /// Manage API tokens for the server (`create` prints the token once; only its hash
    /// is kept).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print the webhook token of a DAG (`POST /api/v2/webhooks/<dag>`).
    Webhook(WebhookArgs),
    /// List the DAGs in the dags dir with their validity, last run and next run.
    Dags(DagsArgs),
    /// Queue one run per scheduled time in a range (the scheduler starts them).
    Backfill(BackfillArgs),
    /// Copy the file store (runs, queued items, suspended DAGs) into the configured
    /// database; safe to repeat, and checks every run arrived.
    Migrate(MigrateArgs),
    /// The Daggy daemon: daggyd's REST API and config file (also run as `daggyd`).
    ///
    /// Listens on 127.0.0.1:2503 with the forking executor and the OStream logger on
    /// stdout when given nothing; `--config FILE` reads daggyd's JSON config.
    Daggyd(DaggydArgs),
}

/// `daggyd`, the second name of this binary: the same flags as `trellis daggyd`.
#[derive(Debug, Parser)]
#[command(name = "daggyd", version, about = "The Daggy daemon (Trellis)", long_about = None)]
pub struct DaggydCommand {
    #[command(flatten)]
    pub args: DaggydArgs,
    #[arg(long, value_enum, env = "TRELLIS_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, clap::Args)]
pub struct DaggydArgs {
    /// daggyd's JSON config file (web-threads, dag-threads, port, ip, logger, executor).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Daemonize: detach, write the pid file, log to the log file; refused while another
    /// daemon holds the pid file.
    #[arg(short = 'd', long = "daemon")]
    pub daemonize: bool,
    /// The pid file (default with -d: $TRELLIS_HOME/data/daggyd.pid); held locked while
    /// the daemon runs, so a second one refuses to start.
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Where a daemonized daggyd logs (default: $TRELLIS_HOME/data/daggyd.log).
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// Trellis's own config file, for `auth:`, `paths:` and the database (default:
    /// $TRELLIS_CONFIG).
    #[arg(long, value_name = "FILE")]
    pub trellis_config: Option<PathBuf>,
    /// Allow a non-loopback `ip` with authentication off. Anyone who can reach the port
    /// can then run commands on this machine.
    #[arg(long)]
    pub insecure_no_auth: bool,
}

impl Command {
    /// The `--dags`/`--config` flags of commands that take them.
    pub fn setup(&self) -> Option<&Setup> {
        match self {
            Command::Scheduler(a) => Some(&a.setup),
            Command::Server(a) => Some(&a.setup),
            Command::StartAll(a) => Some(&a.setup),
            Command::Coordinator(a) => Some(&a.setup),
            Command::Worker(a) => Some(&a.setup),
            Command::Workers(a) => Some(&a.setup),
            Command::Webhook(a) => Some(&a.setup),
            Command::Dags(a) => Some(&a.setup),
            Command::Backfill(a) => Some(&a.setup),
            Command::Migrate(a) => Some(&a.setup),
            _ => None,
        }
    }
}

/// Where DAGs and settings come from.
#[derive(Debug, clap::Args)]
pub struct Setup {
    /// Directory of workflow files (default: $TRELLIS_DAGS_DIR, the config's
    /// paths.dags_dir, else $TRELLIS_HOME/dags).
    #[arg(short, long, value_name = "DIR")]
    pub dags: Option<PathBuf>,
    /// Config file (default: $TRELLIS_CONFIG); see docs/CONFIG.md.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct SchedulerArgs {
    #[command(flatten)]
    pub setup: Setup,
    /// Name of this scheduler in the lease file and logs (default hostname@pid).
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
}

/// Flags of the web server (also accepted by `start-all`).
#[derive(Debug, Default, clap::Args)]
pub struct ServeFlags {
    /// Address to listen on (default: the config's server.host, else 127.0.0.1).
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// Port to listen on; 0 picks a free one (default: server.port, else 8080).
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Serve under this path (e.g. /trellis) behind a reverse proxy.
    #[arg(long, value_name = "PATH")]
    pub path_prefix: Option<String>,
    /// TLS certificate chain (PEM); with --tls-key, serves HTTPS.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Allow a non-loopback address with authentication off. Anyone who can reach the
    /// port can then run commands on this machine.
    #[arg(long)]
    pub insecure_no_auth: bool,
}

#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    #[command(flatten)]
    pub setup: Setup,
    #[command(flatten)]
    pub serve: ServeFlags,
}

#[derive(Debug, clap::Args)]
pub struct StartAllArgs {
    #[command(flatten)]
    pub setup: Setup,
    /// Name of the scheduler in the lease file and logs (default hostname@pid).
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    #[command(flatten)]
    pub serve: ServeFlags,
    #[command(flatten)]
    pub coordinator: CoordinatorFlags,
}

/// Flags of the coordinator (also accepted by `start-all`).
#[derive(Debug, Default, clap::Args)]
pub struct CoordinatorFlags {
    /// Address to listen on (env TRELLIS_COORDINATOR_HOST; config coordinator.host;
    /// default 127.0.0.1).
    #[arg(
        id = "coordinator.host",
        long = "coordinator.host",
        value_name = "HOST"
    )]
    pub host: Option<String>,
    /// Port (env TRELLIS_COORDINATOR_PORT; config coordinator.port; default 50055).
    #[arg(
        id = "coordinator.port",
        long = "coordinator.port",
        value_name = "PORT"
    )]
    pub port: Option<u16>,
    /// Host that workers should dial, written to the service registry (default: the
    /// listening address).
    #[arg(long = "coordinator.advertise", value_name = "HOST")]
    pub advertise: Option<String>,
    /// Seconds without a heartbeat before a worker's task is re-queued or failed
    /// (config coordinator.lease_timeout; default 30).
    #[arg(long = "coordinator.lease-timeout", value_name = "SECS")]
    pub lease_timeout: Option<u64>,
    /// Seconds a run waits for a matching live worker before failing
    /// (config coordinator.dispatch_timeout; default 300).
    #[arg(long = "coordinator.dispatch-timeout", value_name = "SECS")]
    pub dispatch_timeout: Option<u64>,
    /// Serve TLS with this certificate chain (PEM; config coordinator.tls.certFile).
    #[arg(
        id = "coordinator.tls_cert",
        long = "coordinator.tls-cert",
        env = "TRELLIS_COORDINATOR_TLS_CERT",
        value_name = "FILE",
        requires = "coordinator.tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The TLS private key (PEM; config coordinator.tls.keyFile).
    #[arg(
        id = "coordinator.tls_key",
        long = "coordinator.tls-key",
        env = "TRELLIS_COORDINATOR_TLS_KEY",
        value_name = "FILE",
        requires = "coordinator.tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// mTLS: require worker certificates signed by this CA (config coordinator.tls.caFile).
    #[arg(
        long = "coordinator.tls-ca",
        env = "TRELLIS_COORDINATOR_TLS_CA",
        value_name = "FILE"
    )]
    pub tls_ca: Option<PathBuf>,
    /// Allow a non-loopback address without a signing key or mTLS: anyone who can reach
    /// the port could then take tasks (commands, params) or report results.
    #[arg(
        long = "coordinator.insecure-no-auth",
        id = "coordinator_insecure_no_auth"
    )]
    pub insecure_no_auth: bool,
    /// Workers must present tokens made with this key, and tasks are signed with it
    /// (env TRELLIS_COORDINATOR_SIGNING_KEY; config coordinator.signing_key / signingKey).
    #[arg(long = "coordinator.signing-key", value_name = "KEY")]
    pub signing_key: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct CoordinatorArgs {
    #[command(flatten)]
    pub setup: Setup,
    #[command(flatten)]
    pub coordinator: CoordinatorFlags,
}

#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub setup: Setup,
    /// Worker id (env TRELLIS_WORKER_ID; config worker.id; default hostname@PID).
    #[arg(long = "worker.id", value_name = "ID")]
    pub id: Option<String>,
    /// Labels `k=v,k2=v2` (env TRELLIS_WORKER_LABELS; config worker.labels).
    #[arg(long = "worker.labels", value_name = "LABELS")]
    pub labels: Option<String>,
    /// Runs at once (config worker.max_active_runs; default 100).
    #[arg(
        long = "worker.max-active-runs",
        env = "TRELLIS_WORKER_MAX_ACTIVE_RUNS",
        value_name = "N"
    )]
    pub max_active_runs: Option<u32>,
    /// Coordinator host (env TRELLIS_WORKER_COORDINATOR_HOST or TRELLIS_COORDINATOR_HOST;
    /// default: found in the service registry).
    #[arg(long = "worker.coordinator-host", value_name = "HOST")]
    pub coordinator_host: Option<String>,
    /// Coordinator port (env TRELLIS_COORDINATOR_PORT; default 50055).
    #[arg(long = "worker.coordinator-port", value_name = "PORT")]
    pub coordinator_port: Option<u16>,
    /// Seconds a shutdown waits for running tasks before cancelling them (default 60).
    #[arg(long = "worker.drain-grace", value_name = "SECS")]
    pub drain_grace: Option<u64>,
    /// Shared-nothing mode: coordinators `host:port,...` to relay runs to; the worker then
    /// needs no access to the data and log dirs (config worker.coordinators).
    #[arg(
        long = "worker.coordinators",
        env = "TRELLIS_WORKER_COORDINATORS",
        value_name = "ADDRS"
    )]
    pub coordinators: Option<String>,
    /// The CA that signed the coordinator's certificate; turns TLS on
    /// (config worker.tls.caFile).
    #[arg(
        long = "worker.tls-ca",
        env = "TRELLIS_WORKER_TLS_CA",
        value_name = "FILE"
    )]
    pub tls_ca: Option<PathBuf>,
    /// This worker's certificate, for mTLS (config worker.tls.certFile).
    #[arg(
        long = "worker.tls-cert",
        env = "TRELLIS_WORKER_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// This worker's key, for mTLS (config worker.tls.keyFile).
    #[arg(
        long = "worker.tls-key",
        env = "TRELLIS_WORKER_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Plaintext to the coordinator even if TLS settings exist (config worker.insecure).
    #[arg(long = "worker.insecure", env = "TRELLIS_WORKER_INSECURE")]
    pub insecure: bool,
    /// The cluster signing key (env TRELLIS_COORDINATOR_SIGNING_KEY; config
    /// coordinator.signing_key).
    #[arg(long = "coordinator.signing-key", value_name = "KEY")]
    pub signing_key: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct WorkersArgs {
    #[command(flatten)]
    pub setup: Setup,
    /// Coordinator `host:port` (default: found in the service registry).
    #[arg(long, value_name = "ADDR")]
    pub coordinator: Option<String>,
    /// Print JSON (the shape of GET /api/v2/workers).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a new API token and print it (it cannot be shown again).
    Create {
        /// A name to recognise the token by (shown as the principal in logs).
        #[arg(long)]
        name: String,
        /// viewer, operator or admin.
        #[arg(long, default_value = "viewer")]
        role: String,
    },
    /// List tokens by name and role.
    List,
    /// Revoke a token by name.
    Revoke { name: String },
}

#[derive(Debug, clap::Args)]
pub struct WebhookArgs {
    #[command(flatten)]
    pub setup: Setup,
    /// The DAG the webhook starts.
    pub dag: String,
}

#[derive(Debug, clap::Args)]
pub struct DagsArgs {
    #[command(flatten)]
    pub setup: Setup,
}

#[derive(Debug, clap::Args)]
pub struct BackfillArgs {
    /// The DAG's name.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// First scheduled time included (RFC 3339).
    #[arg(long, value_name = "TIME")]
    pub from: String,
    /// Last scheduled time included (RFC 3339).
    #[arg(long, value_name = "TIME")]
    pub to: String,
    /// Backfill runs at once.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub max_concurrent: usize,
    #[command(flatten)]
    pub setup: Setup,
}

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub setup: Setup,
    /// The database to fill (default: the config's `storage.url` or
    /// $TRELLIS_DATABASE_URL).
    #[arg(long, value_name = "URL")]
    pub to: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct RunTarget {
    /// A workflow file, or a DAG name.
    #[arg(value_name = "FILE|NAME")]
    pub target: String,
    /// A specific run instead of the latest.
    #[arg(short, long, value_name = "ID")]
    pub run_id: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct RestartArgs {
    #[command(flatten)]
    pub run: RunTarget,
    /// Run id of the new run instead of a new UUIDv7.
    #[arg(long, value_name = "ID")]
    pub new_run_id: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct RetryArgs {
    /// A workflow file, or a DAG name (the stored definition is used).
    #[arg(value_name = "FILE|NAME")]
    pub target: String,
    /// The run to retry.
    #[arg(short, long, value_name = "ID")]
    pub run_id: String,
    /// Re-run this step and everything that depends on it.
    #[arg(short, long, value_name = "NAME")]
    pub step: Option<String>,
    /// Print nothing but errors.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// A workflow file, or a DAG name.
    #[arg(value_name = "FILE|NAME")]
    pub target: String,
    /// How many runs to show.
    #[arg(short, long, default_value_t = 20)]
    pub limit: usize,
    /// Print the runs as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// A workflow file, or a DAG name.
    #[arg(value_name = "FILE|NAME")]
    pub target: String,
    /// The step whose log to print (handlers are onInit, onSuccess, ...).
    #[arg(short, long, value_name = "NAME")]
    pub step: String,
    /// A specific run instead of the latest.
    #[arg(short, long, value_name = "ID")]
    pub run_id: Option<String>,
    /// Print stderr instead of stdout.
    #[arg(long)]
    pub stderr: bool,
    /// Keep printing as the step writes, until it ends.
    #[arg(short, long)]
    pub follow: bool,
}

#[derive(Debug, clap::Args)]
pub struct EnqueueArgs {
    /// Workflow file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Parameters: "KEY=value KEY2='two words' positional".
    #[arg(short, long, value_name = "PARAMS")]
    pub params: Option<String>,
    /// Run id to use instead of a new UUIDv7.
    #[arg(short, long, value_name = "ID")]
    pub run_id: Option<String>,
    /// Queue name (default: the DAG's `queue`, else its name).
    #[arg(short = 'u', long, value_name = "QUEUE")]
    pub queue: Option<String>,
    /// Higher starts first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
    /// Extra tags for tag concurrency limits: "k=v,k2=v2".
    #[arg(long, value_name = "TAGS")]
    pub tags: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct DequeueArgs {
    /// Queue name.
    #[arg(value_name = "QUEUE")]
    pub queue: String,
    /// The queued run to remove.
    #[arg(short, long, value_name = "ID")]
    pub run_id: String,
}

#[derive(Debug, clap::Args)]
pub struct CleanupArgs {
    /// Only this workflow file or DAG name (default: every DAG).
    #[arg(value_name = "FILE|NAME")]
    pub target: Option<String>,
    /// Keep runs that ended within this many days.
    #[arg(long, value_name = "DAYS")]
    pub retention_days: u32,
    /// Show what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
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
pub struct RunQueuedArgs {
    /// The DAG's name.
    #[arg(value_name = "DAG")]
    pub dag: String,
    /// The queued run.
    #[arg(long, value_name = "ID")]
    pub run_id: String,
    /// The file it was queued from (else the definition stored with the run).
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    #[arg(long, value_name = "PARAMS")]
    pub params: Option<String>,
    /// The tick that queued it (DAG_RUN_SCHEDULED_TIME).
    #[arg(long, value_name = "TIME")]
    pub scheduled_time: Option<String>,
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
    /// Also check that what the steps need answers now (the Docker API of docker steps
    /// and of a DAG-level container); an unreachable one is a warning.
    #[arg(long)]
    pub check_runtime: bool,
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
