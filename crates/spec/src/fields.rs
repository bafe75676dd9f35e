//! Every key of the Dagu format that Trellis reads, with its accepted spellings, JSON Schema
//! and a one-line description. Decoding and `trellis schema` both read these tables, so the
//! schema cannot drift from what the loader accepts.

use crate::decode::{Field, field};

const STR: &str = r#"{"type":"string"}"#;
const BOOL: &str = r#"{"type":["boolean","string"]}"#;
const UINT: &str = r#"{"type":["integer","string"],"minimum":0}"#;
const NUM: &str = r#"{"type":["number","string"]}"#;
const ANY: &str = "{}";
const OBJ: &str = r#"{"type":"object"}"#;
const STRS: &str = r#"{"type":["string","array"],"items":{"type":["string","number","boolean"]}}"#;
const PAIRS: &str = r#"{"type":["object","array","null"],"items":{"type":["object","string"]}}"#;
const SHELL: &str = r#"{"type":["string","array"],"items":{"type":"string"}}"#;
const SELECTOR: &str = r#"{"oneOf":[{"type":"object","additionalProperties":{"type":["string","number","boolean"]}},{"const":"local"}]}"#;
const STEP: &str = r##"{"$ref":"#/$defs/step"}"##;
const PRECONDITIONS: &str = r##"{"oneOf":[{"type":"string"},{"type":"array","items":{"oneOf":[{"type":"string"},{"$ref":"#/$defs/precondition"}]}},{"$ref":"#/$defs/precondition"}]}"##;
const RETRY: &str = r##"{"$ref":"#/$defs/retry_policy"}"##;
const REPEAT: &str = r##"{"$ref":"#/$defs/repeat_policy"}"##;
const CONTINUE: &str =
    r##"{"oneOf":[{"enum":["failed","failure","skipped"]},{"$ref":"#/$defs/continue_on"}]}"##;
const EXIT_CODES: &str =
    r#"{"type":["integer","string","array"],"items":{"type":["integer","string"]}}"#;
const LOG_OUTPUT: &str = r#"{"enum":["separate","merged"]}"#;

/// Top-level DAG keys.
pub static DAG: &[Field] = &[
    field!(
        "name",
        [],
        STR,
        "Name of the DAG; defaults to the file name."
    ),
    field!("description", [], STR, "What the DAG does."),
    field!("group", [], STR, "Group shown in listings."),
    field!(
        "type",
        [],
        r#"{"enum":["chain","graph"]}"#,
        "chain runs steps in order; graph follows depends. Inferred as graph when a step has depends."
    ),
    field!(
        "labels",
        ["tags"],
        r#"{"type":["string","array","object"]}"#,
        "Labels: `a,b`, `k=v`, a list, or a map."
    ),
    field!(
        "env",
        [],
        PAIRS,
        "Environment for every step (map, list of maps, or list of K=V)."
    ),
    field!("dotenv", [], STRS, ".env files to load."),
    field!(
        "params",
        [],
        r#"{"type":["string","array","object"]}"#,
        "Parameters: positional string, named list/map, rich entries, or an inline JSON Schema."
    ),
    field!(
        "defaults",
        [],
        r##"{"$ref":"#/$defs/defaults"}"##,
        "Defaults applied to every step."
    ),
    field!(
        "handler_on",
        ["handlerOn"],
        r##"{"$ref":"#/$defs/handler_on"}"##,
        "Steps run on init, success, failure, abort, exit and wait."
    ),
    field!(
        "schedule",
        [],
        r#"{"type":["string","array","object"]}"#,
        "Cron expression(s), start/stop/restart schedules, or one-off `{kind: at, at: RFC3339}`."
    ),
    field!(
        "skip_if_successful",
        ["skipIfSuccessful"],
        BOOL,
        "Skip a scheduled run when the DAG already succeeded since the previous tick."
    ),
    field!(
        "catchup_window",
        ["catchupWindow"],
        STR,
        "How far back missed cron runs are replayed (e.g. 6h, 2d12h)."
    ),
    field!(
        "overlap_policy",
        ["overlapPolicy"],
        r#"{"enum":["skip","all","latest"]}"#,
        "What to do with catch-up runs while a run is active."
    ),
    field!(
        "max_active_runs",
        ["maxActiveRuns"],
        r#"{"type":["integer","string"]}"#,
        "Runs of this DAG that may be active at once (-1 = unlimited)."
    ),
    field!(
        "max_active_steps",
        ["maxActiveSteps"],
        UINT,
        "Steps that may run at once."
    ),
    field!("queue", [], STR, "Named queue for runs of this DAG."),
    field!(
        "worker_selector",
        ["workerSelector"],
        SELECTOR,
        "Labels a worker must have to run this DAG, or `local`."
    ),
    field!(
        "timeout_sec",
        ["timeoutSec"],
        UINT,
        "Whole-run timeout in seconds."
    ),
    field!(
        "delay_sec",
        ["delaySec"],
        UINT,
        "Delay before the first step, in seconds."
    ),
    field!(
        "restart_wait_sec",
        ["restartWaitSec"],
        UINT,
        "Wait before a restart, in seconds."
    ),
    field!(
        "max_clean_up_time_sec",
        ["maxCleanUpTimeSec"],
        UINT,
        "Grace period between the stop signal and SIGKILL."
    ),
    field!(
        "max_output_size",
        ["maxOutputSize"],
        UINT,
        "Bytes of stdout captured into an output variable (default 1 MiB)."
    ),
    field!(
        "hist_retention_days",
        ["histRetentionDays"],
        UINT,
        "Days of run history to keep."
    ),
    field!(
        "hist_retention_runs",
        ["histRetentionRuns"],
        UINT,
        "Number of runs of history to keep."
    ),
    field!(
        "log_dir",
        ["logDir"],
        STR,
        "Base directory for this DAG's logs."
    ),
    field!(
        "log_output",
        ["logOutput"],
        LOG_OUTPUT,
        "separate: .out and .err files; merged: one .log."
    ),
    field!(
        "working_dir",
        ["workingDir", "dir"],
        STR,
        "Working directory for every step."
    ),
    field!("shell", [], SHELL, "Default shell, e.g. `bash -e`."),
    field!(
        "preconditions",
        ["precondition"],
        PRECONDITIONS,
        "Conditions that must hold for the run to start."
    ),
    field!(
        "retry_policy",
        ["retryPolicy"],
        r##"{"$ref":"#/$defs/dag_retry_policy"}"##,
        "Automatic retry of a failed run."
    ),
    field!(
        "steps",
        [],
        r##"{"type":["array","object"],"items":{"oneOf":[{"type":"string"},{"$ref":"#/$defs/step"},{"type":"array"}]},"additionalProperties":{"$ref":"#/$defs/step"}}"##,
        "The steps: a list (strings, steps, nested lists for parallel groups) or a map of name to step."
    ),
    field!(
        "step_types",
        ["stepTypes"],
        OBJ,
        "Reusable custom step types."
    ),
    field!(
        "actions",
        [],
        OBJ,
        "Custom actions: name → {description, input_schema, template (with `run` or `action`)}."
    ),
    field!("timezone", ["tz"], STR, "IANA timezone for the schedules."),
    field!(
        "secrets",
        [],
        r#"{"type":"array"}"#,
        "Values resolved at run start (providers env, file), given to steps as variables and masked in logs and records."
    ),
    field!(
        "container",
        [],
        r#"{"type":["string","object"]}"#,
        "Default container for every step."
    ),
    field!(
        "registry_auths",
        ["registryAuths"],
        r#"{"type":["string","object"]}"#,
        "Container registry credentials."
    ),
    field!("ssh", [], OBJ, "Default SSH settings."),
    field!("s3", [], OBJ, "Default S3 settings."),
    field!("redis", [], OBJ, "Default Redis settings."),
    field!(
        "kubernetes",
        [],
        OBJ,
        "Defaults under the with: of every kubernetes step (namespace, image, kubeconfig, ...)."
    ),
    field!(
        "slurm",
        [],
        OBJ,
        "Defaults under the with: of every slurm step (partition, time, account, ...)."
    ),
    field!("smtp", [], OBJ, "SMTP server for mail notifications."),
    field!(
        "mail_on",
        ["mailOn"],
        OBJ,
        "Send mail on failure, success or wait."
    ),
    field!(
        "error_mail",
        ["errorMail"],
        OBJ,
        "Mail settings for failures."
    ),
    field!(
        "info_mail",
        ["infoMail"],
        OBJ,
        "Mail settings for successes."
    ),
    field!(
        "wait_mail",
        ["waitMail"],
        OBJ,
        "Mail settings for waiting runs."
    ),
    field!("llm", [], OBJ, "Default LLM settings for chat steps."),
    field!("harness", [], OBJ, "Default coding-agent harness settings."),
    field!("harnesses", [], OBJ, "Custom harness definitions."),
    field!("artifacts", [], OBJ, "Artifact storage for runs."),
    field!("otel", [], OBJ, "OpenTelemetry tracing."),
    field!(
        "run_config",
        ["runConfig"],
        OBJ,
        "What users may edit when starting a run."
    ),
    field!("webhook", [], OBJ, "Webhook trigger behaviour."),
];

/// Step keys.
pub static STEP_FIELDS: &[Field] = &[
    field!(
        "name",
        [],
        STR,
        "Unique step name; defaults to the id or a generated name."
    ),
    field!(
        "id",
        [],
        STR,
        "Short identifier used in `${id.output}` references."
    ),
    field!("description", [], STR, "What the step does."),
    field!(
        "command",
        [],
        STRS,
        "Shell command, or a list of commands run in order."
    ),
    field!(
        "script",
        [],
        STR,
        "Script text, run by `command`/`shell` or its shebang."
    ),
    field!(
        "exec",
        [],
        r##"{"$ref":"#/$defs/exec"}"##,
        "Program and argv, run without a shell."
    ),
    field!("shell", [], SHELL, "Shell for this step."),
    field!(
        "shell_packages",
        ["shellPackages"],
        r#"{"type":"array"}"#,
        "Packages to install first (container steps)."
    ),
    field!(
        "working_dir",
        ["workingDir", "dir"],
        STR,
        "Working directory."
    ),
    field!(
        "env",
        [],
        PAIRS,
        "Environment for this step, added to the DAG's."
    ),
    field!(
        "output",
        [],
        r#"{"type":["string","object"]}"#,
        "Variable that captures stdout, or named step outputs."
    ),
    field!("stdout", [], STR, "File that receives stdout."),
    field!("stderr", [], STR, "File that receives stderr."),
    field!(
        "log_output",
        ["logOutput"],
        LOG_OUTPUT,
        "Override the DAG's log_output."
    ),
    field!(
        "depends",
        [],
        STRS,
        "Steps (names or ids) that must finish first."
    ),
    field!(
        "preconditions",
        ["precondition"],
        PRECONDITIONS,
        "Conditions for running this step; otherwise it is skipped."
    ),
    field!(
        "continue_on",
        ["continueOn"],
        CONTINUE,
        "When a failure or skip lets the run go on."
    ),
    field!(
        "retry_policy",
        ["retryPolicy"],
        RETRY,
        "Retries of a failed step."
    ),
    field!(
        "repeat_policy",
        ["repeatPolicy"],
        REPEAT,
        "Repeat the step while/until a condition holds."
    ),
    field!(
        "timeout_sec",
        ["timeoutSec"],
        UINT,
        "Step timeout in seconds."
    ),
    field!(
        "signal_on_stop",
        ["signalOnStop"],
        STR,
        "Signal sent when stopping, e.g. SIGINT."
    ),
    field!(
        "mail_on_error",
        ["mailOnError"],
        BOOL,
        "Send mail when this step fails."
    ),
    field!("call", [], STR, "Name of a DAG to run as a sub-DAG."),
    field!(
        "run",
        [],
        r#"{"type":["string","array"]}"#,
        "Shell command (Dagu 2.15); several lines make a script, a list several commands. A DAG's name here calls it (Dagu 1.x)."
    ),
    field!(
        "action",
        [],
        STR,
        "Built-in action (http.request, ssh.run, sftp.upload, jq.filter, mail.send, state.get, dag.run, wait.duration, ...) or one from `actions:`; its inputs under `with:`."
    ),
    field!(
        "params",
        [],
        r#"{"type":["string","array","object"]}"#,
        "Params for the called DAG."
    ),
    field!(
        "parallel",
        [],
        r##"{"oneOf":[{"type":"string"},{"type":"array"},{"$ref":"#/$defs/parallel"}]}"##,
        "Run the called DAG once per item."
    ),
    field!(
        "worker_selector",
        ["workerSelector"],
        SELECTOR,
        "Worker labels for the called DAG."
    ),
    field!(
        "approval",
        [],
        r##"{"$ref":"#/$defs/approval"}"##,
        "Wait for a human decision after the step."
    ),
    field!(
        "type",
        [],
        STR,
        "Step type: command, docker, ssh, http, jq, mail, kubernetes, slurm, router, ..."
    ),
    field!("with", ["config"], ANY, "Settings for the step type."),
    field!(
        "executor",
        [],
        r#"{"type":["string","object"]}"#,
        "Dagu v1 form of type + with."
    ),
    field!(
        "container",
        [],
        r#"{"type":["string","object"]}"#,
        "Container for this step."
    ),
    field!(
        "value",
        [],
        STR,
        "Router: the value matched against routes."
    ),
    field!("routes", [], OBJ, "Router: pattern → steps to run."),
    field!("llm", [], OBJ, "LLM settings (chat steps)."),
    field!("agent", [], OBJ, "Agent settings (agent steps)."),
    field!(
        "messages",
        [],
        r#"{"type":"array"}"#,
        "Chat messages (chat steps)."
    ),
    field!(
        "tools",
        [],
        r#"{"type":"array"}"#,
        "Tool DAGs for LLM steps."
    ),
];

pub static HANDLERS: &[Field] = &[
    field!(
        "init",
        [],
        STEP,
        "Runs before the first step; failure aborts the run."
    ),
    field!("success", [], STEP, "Runs when the run succeeded."),
    field!("failure", [], STEP, "Runs when the run failed."),
    field!(
        "abort",
        ["cancel"],
        STEP,
        "Runs when the run was aborted or cancelled."
    ),
    field!("exit", [], STEP, "Always runs last."),
    field!(
        "wait",
        [],
        STEP,
        "Runs when the run starts waiting for approval."
    ),
];

pub static RETRY_FIELDS: &[Field] = &[
    field!("limit", [], UINT, "Retries after the first attempt."),
    field!(
        "interval_sec",
        ["intervalSec"],
        NUM,
        "Seconds between attempts."
    ),
    field!(
        "backoff",
        [],
        r#"{"type":["boolean","number"]}"#,
        "true (×2) or a multiplier > 1 applied after each attempt."
    ),
    field!(
        "max_interval_sec",
        ["maxIntervalSec"],
        NUM,
        "Upper bound of the interval with backoff."
    ),
    field!(
        "exit_code",
        ["exitCode"],
        EXIT_CODES,
        "Exit codes that are retried (default: any failure)."
    ),
];

pub static REPEAT_FIELDS: &[Field] = &[
    field!(
        "repeat",
        [],
        r#"{"enum":[true,false,"while","until"]}"#,
        "true/while: repeat while the condition holds; until: until it holds."
    ),
    field!(
        "interval_sec",
        ["intervalSec"],
        NUM,
        "Seconds between repetitions."
    ),
    field!("limit", [], UINT, "Maximum number of runs."),
    field!(
        "backoff",
        [],
        r#"{"type":["boolean","number"]}"#,
        "Interval multiplier."
    ),
    field!(
        "max_interval_sec",
        ["maxIntervalSec"],
        NUM,
        "Upper bound of the interval."
    ),
    field!("condition", [], STR, "Value or command tested each time."),
    field!(
        "expected",
        [],
        STR,
        "Expected value of the condition (`re:` for a regex)."
    ),
    field!(
        "exit_code",
        ["exitCode"],
        EXIT_CODES,
        "Exit codes that count as a match."
    ),
];

pub static CONTINUE_FIELDS: &[Field] = &[
    field!("failure", ["failed"], BOOL, "Continue when the step fails."),
    field!("skipped", [], BOOL, "Continue when the step is skipped."),
    field!(
        "exit_code",
        ["exitCode"],
        EXIT_CODES,
        "Continue on these exit codes."
    ),
    field!(
        "output",
        [],
        STRS,
        "Continue when the output matches (`re:` allowed)."
    ),
    field!(
        "mark_success",
        ["markSuccess"],
        BOOL,
        "Record the step as succeeded."
    ),
];

pub static CONDITION_FIELDS: &[Field] = &[
    field!(
        "condition",
        ["command"],
        STR,
        "Value to test, or a command when `expected` is absent."
    ),
    field!("expected", [], STR, "Expected value (`re:` for a regex)."),
    field!("negate", [], BOOL, "Invert the result."),
];

pub static SCHEDULE_FIELDS: &[Field] = &[
    field!("start", [], STRS, "Cron expressions that start the DAG."),
    field!("stop", [], STRS, "Cron expressions that stop it."),
    field!("restart", [], STRS, "Cron expressions that restart it."),
];

pub static SCHEDULE_ENTRY_FIELDS: &[Field] = &[
    field!(
        "kind",
        [],
        r#"{"enum":["cron","at"]}"#,
        "cron or at (one-off)."
    ),
    field!("expression", ["cron"], STR, "Cron expression (kind: cron)."),
    field!("at", [], STR, "RFC 3339 time (kind: at)."),
];

pub static PARALLEL_FIELDS: &[Field] = &[
    field!(
        "items",
        [],
        r#"{"type":["string","array"]}"#,
        "Items, or a `${VAR}` holding a JSON array."
    ),
    field!(
        "max_concurrent",
        ["maxConcurrent"],
        UINT,
        "Child runs at once (1..1000, default 10)."
    ),
];

pub static SECRET_FIELDS: &[Field] = &[
    field!("name", [], STR, "The variable steps see the value as."),
    field!(
        "provider",
        [],
        r#"{"enum":["env","file"]}"#,
        "Where the value is: `env` (a variable of the process running the DAG) or `file`."
    ),
    field!("key", [], STR, "The variable's name, or the file's path."),
];

pub static APPROVAL_FIELDS: &[Field] = &[
    field!("prompt", [], STR, "Text shown to the approver."),
    field!("input", [], STRS, "Inputs the approver may fill in."),
    field!("required", [], STRS, "Inputs the approver must fill in."),
    field!(
        "rewind_to",
        ["rewindTo"],
        STR,
        "Step to run again on push-back."
    ),
];

pub static EXEC_FIELDS: &[Field] = &[
    field!("command", [], STR, "Program to run."),
    field!(
        "args",
        [],
        r#"{"type":"array","items":{"type":["string","number","boolean"]}}"#,
        "Arguments, passed as-is."
    ),
];

pub static OUTPUT_FIELDS: &[Field] = &[
    field!(
        "from",
        [],
        r#"{"enum":["stdout","stderr","file"]}"#,
        "Where the value comes from."
    ),
    field!(
        "path",
        [],
        STR,
        "File path (from: file), relative to the working dir."
    ),
    field!(
        "decode",
        [],
        r#"{"enum":["text","json","yaml"]}"#,
        "How to decode it."
    ),
    field!(
        "select",
        [],
        STR,
        "Path into the decoded value, e.g. `.a.b`."
    ),
    field!("value", [], ANY, "A literal value."),
];

pub static PARAM_FIELDS: &[Field] = &[
    field!("name", [], STR, "Parameter name."),
    field!(
        "type",
        [],
        r#"{"enum":["string","integer","number","boolean"]}"#,
        "Value type."
    ),
    field!("default", [], ANY, "Default value."),
    field!("eval", [], STR, "Command whose output is the default."),
    field!("description", [], STR, "Help text."),
    field!("required", [], BOOL, "Must be given (or have a default)."),
    field!("enum", [], r#"{"type":"array"}"#, "Allowed values."),
    field!("minimum", [], r#"{"type":"number"}"#, "Smallest number."),
    field!("maximum", [], r#"{"type":"number"}"#, "Largest number."),
    field!("min_length", ["minLength"], UINT, "Shortest string."),
    field!("max_length", ["maxLength"], UINT, "Longest string."),
    field!(
        "pattern",
        [],
        STR,
        "Regular expression the value must match."
    ),
];

pub static DEFAULTS_FIELDS: &[Field] = &[
    field!(
        "retry_policy",
        ["retryPolicy"],
        RETRY,
        "Default retry policy."
    ),
    field!(
        "continue_on",
        ["continueOn"],
        CONTINUE,
        "Default continue_on."
    ),
    field!(
        "repeat_policy",
        ["repeatPolicy"],
        REPEAT,
        "Default repeat policy."
    ),
    field!("timeout_sec", ["timeoutSec"], UINT, "Default step timeout."),
    field!(
        "mail_on_error",
        ["mailOnError"],
        BOOL,
        "Default mail_on_error."
    ),
    field!(
        "signal_on_stop",
        ["signalOnStop"],
        STR,
        "Default stop signal."
    ),
    field!("env", [], PAIRS, "Env added to every step."),
    field!(
        "preconditions",
        ["precondition"],
        PRECONDITIONS,
        "Preconditions added to every step."
    ),
    field!("agent", [], OBJ, "Default agent settings."),
];

pub static EXECUTOR_FIELDS: &[Field] = &[
    field!("type", [], STR, "Step type."),
    field!("config", ["with"], ANY, "Settings for the step type."),
];

pub static DAG_RETRY_FIELDS: &[Field] = &[
    field!("limit", [], UINT, "Automatic re-runs of a failed run."),
    field!(
        "interval_sec",
        ["intervalSec"],
        NUM,
        "Seconds between re-runs."
    ),
    field!(
        "backoff",
        [],
        r#"{"type":["boolean","number"]}"#,
        "Interval multiplier."
    ),
    field!(
        "max_interval_sec",
        ["maxIntervalSec"],
        NUM,
        "Upper bound of the interval."
    ),
];

/// Step types Trellis knows. Types other than these must be declared in `step_types`.
pub const STEP_TYPES: &[&str] = &[
    "command",
    "shell",
    "docker",
    "container",
    "kubernetes",
    "k8s",
    "http",
    "mail",
    "ssh",
    "sftp",
    "s3",
    "jq",
    "dag",
    "subworkflow",
    "parallel",
    "archive",
    "chat",
    "log",
    "postgres",
    "sqlite",
    "redis",
    "harness",
    "router",
    "agent",
    "template",
    "noop",
    "slurm",
    "state",
    "wait",
    "dag_enqueue",
];
