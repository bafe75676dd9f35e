//! `state.*` steps (Dagu's `state.get`, `state.set`, `state.delete`, `state.list`,
//! `state.diff`): small JSON values kept between runs, with versions for optimistic
//! concurrency, in [`crate::state_store`]: files under the state dir
//! (`paths.dag_state_dir`, exported by the CLI as `TRELLIS_DAG_STATE_DIR`; else
//! `$TRELLIS_DATA_DIR/dag-state`), or, once [`set_state_store`] is called (the CLI does
//! when its store is a database), the store's named values, so processes on machines
//! that share only the database share state.
//! Each step prints one JSON line, Dagu's shape, which `output:` captures for later steps.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Digest;
use tokio_util::sync::CancellationToken;

use crate::Outcome;
use crate::inproc::{Action, Output};
use crate::seam::{BoxFuture, StepRequest, Work};
use crate::state_store::{Expect, MAX_VALUE_BYTES, Ref, Store};

const OPERATIONS: &[&str] = &["get", "set", "delete", "list", "diff"];

/// The step's `with:`; `operation` is what `action: state.<operation>` names.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    operation: Option<String>,
    scope: Option<String>,
    namespace: Option<String>,
    key: Option<String>,
    prefix: Option<String>,
    #[serde(default, deserialize_with = "present")]
    value: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    default: Option<Value>,
    expected_version: Option<Value>,
    #[serde(default)]
    create_only: bool,
    #[serde(default)]
    required: bool,
    update: Option<bool>,
    limit: Option<i64>,
    #[serde(default)]
    include_values: bool,
}

/// `Some(null)` for a key given as null, `None` (by `default`) for one not given.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

fn parse(config: &Value) -> Result<Config, String> {
    let config: Config = if config.is_null() {
        Config::default()
    } else {
        serde_json::from_value(config.clone()).map_err(|e| e.to_string())?
    };
    if let Some(op) = &config.operation {
        require(&config, op)?;
    }
    match config.scope.as_deref().map(str::trim) {
        None | Some("" | "dag" | "root_dag" | "global") => {}
        Some("custom")
            if config
                .namespace
                .as_deref()
                .is_some_and(|n| !n.trim().is_empty()) => {}
        Some("custom") => return Err("scope `custom` needs `namespace`".into()),
        Some(other) => {
            return Err(format!(
                "scope: `{other}` is not one of dag, root_dag, global, custom"
            ));
        }
    }
    if let Some(key) = config.key.as_deref().filter(|k| !k.contains("${")) {
        check_key(key, "key")?;
    }
    if let Some(ns) = config.namespace.as_deref().filter(|n| !n.contains("${")) {
        check_namespace(ns)?;
    }
    if config.limit.is_some_and(|l| l < 0) {
        return Err("limit: give 0 (no limit) or more".into());
    }
    if let Some(v) = &config.expected_version {
        version(v)?;
    }
    Ok(config)
}

/// What an operation needs.
fn require(config: &Config, op: &str) -> Result<(), String> {
    if !OPERATIONS.contains(&op) {
        return Err(format!(
            "unknown state operation `{op}`: one of {}",
            OPERATIONS.join(", ")
        ));
    }
    if op != "list" && config.key.is_none() {
        return Err(format!("state.{op} needs `key`"));
    }
    if matches!(op, "set" | "diff") && config.value.is_none() {
        return Err(format!("state.{op} needs `value`"));
    }
    Ok(())
}

/// `expected_version`: a whole number, or text holding one (what `${...}` gives);
/// `None` for a reference left for run time.
fn version(value: &Value) -> Result<Option<i64>, String> {
    match value {
        Value::Number(n) => n.as_i64().map(Some),
        Value::String(s) if s.contains("${") => return Ok(None),
        Value::String(s) => s.trim().parse().ok().map(Some),
        _ => None,
    }
    .ok_or_else(|| format!("expected_version: `{value}` is not a whole number"))
}

fn check_key(key: &str, what: &str) -> Result<(), String> {
    let key = key.trim();
    let bad = key.is_empty()
        || key.starts_with('/')
        || key.ends_with('/')
        || key.contains('\\')
        || key.split('/').any(|s| matches!(s, "" | "." | ".."));
    if bad {
        return Err(format!(
            "{what}: `{key}` is not a state key (parts separated by `/`, none empty, `.` or `..`, no `\\`)"
        ));
    }
    Ok(())
}

fn check_namespace(ns: &str) -> Result<(), String> {
    let ns = ns.trim();
    if ns.is_empty() || ns.contains(['/', '\\']) || matches!(ns, "." | "..") {
        return Err(format!(
            "namespace: `{ns}` is not a namespace (no `/`, `\\`, `.` or `..`)"
        ));
    }
    Ok(())
}

/// Lowercase hex SHA-256 of `text`.
pub(crate) fn digest(text: &str) -> String {
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The value as kept: compact JSON with object keys sorted (so `{a,b}` and `{b,a}` are
/// one value), and its hash.
fn normalise(value: &Value) -> Result<(Value, String), String> {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                Value::Object(
                    keys.into_iter()
                        .map(|k| (k.clone(), sorted(&map[k])))
                        .collect(),
                )
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    let value = sorted(value);
    let text = value.to_string();
    if text.len() > MAX_VALUE_BYTES {
        return Err(format!(
            "state value too large: {} bytes exceeds {MAX_VALUE_BYTES}",
            text.len()
        ));
    }
    let hash = digest(&text);
    Ok((value, hash))
}

/// The state dir this process uses.
pub(crate) fn state_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("TRELLIS_DAG_STATE_DIR") {
        return Ok(PathBuf::from(dir));
    }
    std::env::var_os("TRELLIS_DATA_DIR")
        .map(|d| PathBuf::from(d).join("dag-state"))
        .ok_or_else(|| "no state dir: set `paths.dag_state_dir` (TRELLIS_DAG_STATE_DIR)".into())
}

/// Where this process keeps state values instead of the state dir, once set.
static SHARED: OnceLock<Arc<dyn trellis_storage_api::State>> = OnceLock::new();

/// Keeps the values of `state.*` steps in `store`'s named values (a store that machines
/// share: a database) instead of files under the state dir. From `main`, once; a later
/// call changes nothing.
pub fn set_state_store(store: Arc<dyn trellis_storage_api::State>) {
    let _ = SHARED.set(store);
}

/// The store of this process's state values.
fn open() -> Result<Store, String> {
    match SHARED.get() {
        Some(shared) => Ok(Store::shared(shared.clone())),
        None => Ok(Store::files(state_dir()?)),
    }
}

pub(crate) struct State;

impl Action for State {
    fn kind(&self) -> &'static str {
        "state"
    }

    fn check(&self, config: &Value) -> Result<(), String> {
        parse(config).map(|_| ())
    }

    fn run(
        self: Arc<Self>,
        req: StepRequest,
        out: Output,
        _cancel: CancellationToken,
    ) -> BoxFuture<'static, Outcome> {
        Box::pin(async move {
            let done = tokio::task::spawn_blocking(move || {
                let answer = operate(&req);
                (answer, out)
            });
            match done.await {
                Ok((Ok(answer), mut out)) => {
                    let line = format!("{answer}\n");
                    match out.out(line.as_bytes()) {
                        Ok(()) => Outcome::Exited(0),
                        Err(e) => out.fail(format!("cannot write the step's output: {e}")),
                    }
                }
                Ok((Err(why), mut out)) => out.fail(why),
                Err(e) => Outcome::Failed {
                    code: None,
                    reason: format!("state step stopped: {e}"),
                },
            }
        })
    }
}

fn label<'a>(req: &'a StepRequest, name: &str) -> &'a str {
    req.labels.get(name).map_or("", String::as_str)
}

/// Scope and namespace: the DAG's name unless another is given.
fn place(req: &StepRequest, config: &Config) -> (String, String) {
    let scope = config
        .scope
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("dag")
        .to_string();
    let given = config
        .namespace
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty());
    let namespace = match (scope.as_str(), given) {
        (_, Some(ns)) => ns.to_string(),
        ("global", None) => "_".to_string(),
        // A sub-DAG's run carries its top-level run's DAG (set by the engine's call).
        ("root_dag", None) => req
            .env
            .iter()
            .find(|(k, _)| k == "TRELLIS_ROOT_DAG")
            .map_or_else(|| label(req, "trellis.dag").to_string(), |(_, v)| v.clone()),
        _ => label(req, "trellis.dag").to_string(),
    };
    (scope, namespace)
}

fn operate(req: &StepRequest) -> Result<Value, String> {
    let config = parse(&req.config)?;
    let op = match (&config.operation, &req.work) {
        (Some(op), _) => op.clone(),
        (None, Work::Line(line)) => line.trim().to_string(),
        _ => {
            return Err(
                "no state operation: use `action: state.get` (or set, delete, list, diff)".into(),
            );
        }
    };
    require(&config, &op)?;
    if let Some(key) = &config.key {
        check_key(key, "key")?;
    }
    if let Some(ns) = &config.namespace {
        check_namespace(ns)?;
    }
    let store = open()?;
    let (scope, namespace) = place(req, &config);
    let at = Ref {
        scope,
        namespace,
        key: config
            .key
            .as_deref()
            .map(str::trim)
            .unwrap_or("")
            .to_string(),
    };
    let head = json!({"operation": op, "scope": at.scope, "namespace": at.namespace});
    let mut answer = match op.as_str() {
        "get" => get(&store, &at, &config),
        "set" => set(&store, &at, &config, req),
        "delete" => store
            .delete(&at)
            .map(|deleted| json!({"key": at.key, "deleted": deleted}))
            .map_err(|e| e.to_string()),
        "list" => list(&store, &at, &config),
        "diff" => diff(&store, &at, &config, req),
        other => Err(format!("unknown state operation `{other}`")),
    }?;
    let mut merged = head;
    if let (Value::Object(m), Value::Object(a)) = (&mut merged, &mut answer) {
        m.append(a);
    }
    Ok(merged)
}

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

fn get(store: &Store, at: &Ref, config: &Config) -> Result<Value, String> {
    match store.get(at).map_err(|e| e.to_string())? {
        Some(e) => Ok(
            json!({"key": at.key, "found": true, "version": e.version, "hash": e.hash, "value": e.value}),
        ),
        None if config.required => Err(format!(
            "state `{}` not found ({} {})",
            at.key, at.scope, at.namespace
        )),
        None => {
            // Version 0 is what `expected_version` says for "not there yet", so a read
            // can feed a create (Dagu leaves the version out here).
            let mut answer = json!({"key": at.key, "found": false, "version": 0});
            if let Some(default) = &config.default {
                answer["value"] = default.clone();
            }
            Ok(answer)
        }
    }
}

fn expected(config: &Config) -> Result<Option<i64>, String> {
    match &config.expected_version {
        Some(v) => version(v)?
            .map(Some)
            .ok_or_else(|| format!("expected_version: `{v}` is not a whole number")),
        None => Ok(None),
    }
}

fn by(req: &StepRequest) -> Value {
    json!({
        "dag_name": label(req, "trellis.dag"),
        "dag_run_id": label(req, "trellis.run_id"),
        "step_name": label(req, "trellis.step"),
    })
}

fn set(store: &Store, at: &Ref, config: &Config, req: &StepRequest) -> Result<Value, String> {
    let (value, hash) = normalise(config.value.as_ref().unwrap_or(&Value::Null))?;
    let expect = Expect {
        version: expected(config)?,
        create_only: config.create_only,
    };
    let entry = store
        .put(at, value, hash, expect, &now(), by(req))
        .map_err(|e| e.to_string())?;
    Ok(
        json!({"key": at.key, "version": entry.version, "hash": entry.hash, "created": entry.version == 1}),
    )
}

fn list(store: &Store, at: &Ref, config: &Config) -> Result<Value, String> {
    let prefix = config.prefix.as_deref().map(str::trim).unwrap_or("");
    if !prefix.is_empty() {
        check_key(prefix.strip_suffix('/').unwrap_or(prefix), "prefix")?;
    }
    let mut entries = store
        .list(&at.scope, &at.namespace, prefix)
        .map_err(|e| e.to_string())?;
    if let Some(limit) = config.limit.filter(|l| *l > 0) {
        entries.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    }
    let entries: Vec<Value> = entries
        .into_iter()
        .map(|(key, e)| {
            let mut item = json!({"scope": at.scope, "namespace": at.namespace, "key": key, "version": e.version, "hash": e.hash, "createdAt": e.created_at, "updatedAt": e.updated_at});
            if config.include_values {
                item["value"] = e.value;
            }
            item
        })
        .collect();
    let mut answer = json!({"entries": entries});
    if !prefix.is_empty() {
        answer["prefix"] = prefix.into();
    }
    Ok(answer)
}

fn diff(store: &Store, at: &Ref, config: &Config, req: &StepRequest) -> Result<Value, String> {
    let (current, hash) = normalise(config.value.as_ref().unwrap_or(&Value::Null))?;
    let expected = expected(config)?;
    let update = config.update.unwrap_or(true);
    let previous = store.get(at).map_err(|e| e.to_string())?;
    if let (Some(want), found) = (expected, previous.as_ref().map(|p| p.version))
        && found.unwrap_or(0) != want
    {
        return Err(crate::state_store::Error::Version {
            key: at.key.clone(),
            expected: want,
            found,
        }
        .to_string());
    }
    let changed = previous.as_ref().is_none_or(|p| p.hash != hash);
    let mut answer = json!({"key": at.key, "changed": changed, "foundPrevious": previous.is_some(), "current": current});
    if let Some(p) = &previous {
        answer["previous"] = p.value.clone();
        answer["version"] = p.version.into();
        answer["hash"] = p.hash.clone().into();
    }
    if changed && update {
        let expect = Expect {
            version: Some(previous.as_ref().map_or(0, |p| p.version)),
            create_only: false,
        };
        let entry = store
            .put(at, current, hash, expect, &now(), by(req))
            .map_err(|e| e.to_string())?;
        if let Some(p) = &previous {
            answer["previousVersion"] = p.version.into();
        }
        answer["version"] = entry.version.into();
        answer["hash"] = entry.hash.into();
    }
    Ok(answer)
}
