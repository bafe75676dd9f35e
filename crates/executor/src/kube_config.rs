//! A kubernetes step's `with:` (Dagu's keys, snake_case) turned into a Job template, key
//! by key: a top-level key Trellis does not know is an error naming the known ones, and a
//! nested one is found by round-tripping each part through the Kubernetes API types (what
//! the types drop was not a field of theirs).

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec, PodFailurePolicy};
use k8s_openapi::api::core::v1::{
    Affinity, Container, EnvFromSource, EnvVar, LocalObjectReference, PodSecurityContext, PodSpec,
    PodTemplateSpec, ResourceRequirements, SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// Where the API server is and how to reach it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Connection {
    pub kubeconfig: Option<String>,
    pub context: Option<String>,
    /// The pod's service account (`load_incluster_config`), not a kubeconfig.
    pub in_cluster: bool,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub connection: Connection,
    pub namespace: String,
    /// Delete the Job once the step has ended (`cleanup_policy: delete`, the default).
    pub delete_after: bool,
    /// Everything but the name, the command and the step's env.
    pub job: Job,
}

const KEYS: &[&str] = &[
    "kubeconfig",
    "context",
    "load_incluster_config",
    "namespace",
    "image",
    "image_pull_policy",
    "image_pull_secrets",
    "working_dir",
    "env",
    "env_from",
    "resources",
    "service_account",
    "node_selector",
    "tolerations",
    "security_context",
    "pod_security_context",
    "affinity",
    "termination_grace_period_seconds",
    "priority_class_name",
    "labels",
    "annotations",
    "volumes",
    "volume_mounts",
    "active_deadline",
    "backoff_limit",
    "ttl_after_finished",
    "cleanup_policy",
    "pod_failure_policy",
];

/// The container's name in every step's pod.
pub const CONTAINER: &str = "step";

impl Config {
    pub fn parse(value: &Value) -> Result<Config, String> {
        let empty = Map::new();
        let map = match value {
            Value::Object(map) => map,
            Value::Null => &empty,
            _ => return Err("kubernetes: `with:` must be a mapping of options".into()),
        };
        if let Some(unknown) = map.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(format!(
                "kubernetes: unknown option `{unknown}`; the options are: {}",
                KEYS.join(", ")
            ));
        }
        let delete_after = match text(map, "cleanup_policy")?.as_deref() {
            None | Some("delete") => true,
            Some("keep") => false,
            Some(other) => {
                return Err(format!(
                    "kubernetes: cleanup_policy `{other}` must be delete or keep"
                ));
            }
        };
        let namespace = text(map, "namespace")?.unwrap_or_else(|| "default".into());
        if !dns_label(&namespace) {
            return Err(format!(
                "kubernetes: namespace `{namespace}` is not a valid name (lowercase letters, digits and '-')"
            ));
        }
        let in_cluster = match map.get("load_incluster_config") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err("kubernetes: `load_incluster_config` must be true or false".into());
            }
        };
        Ok(Config {
            connection: Connection {
                kubeconfig: text(map, "kubeconfig")?,
                context: text(map, "context")?,
                in_cluster,
            },
            namespace,
            delete_after,
            job: job(map)?,
        })
    }
}

/// The Job: its spec, labels and annotations (on the Job and its pods).
fn job(map: &Map<String, Value>) -> Result<Job, String> {
    let labels = strings(map, "labels")?;
    let annotations = strings(map, "annotations")?;
    let spec = JobSpec {
        backoff_limit: Some(count(map, "backoff_limit")?.unwrap_or(0) as i32),
        active_deadline_seconds: count(map, "active_deadline")?,
        ttl_seconds_after_finished: ttl(map)?,
        pod_failure_policy: typed::<PodFailurePolicy>(map, "pod_failure_policy", camel)?,
        template: PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: labels.clone(),
                annotations: annotations.clone(),
                ..ObjectMeta::default()
            }),
            spec: Some(pod(map)?),
        },
        ..JobSpec::default()
    };
    Ok(Job {
        metadata: ObjectMeta {
            labels,
            annotations,
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    })
}

/// The pod of every try: one container, never restarted in place (the Job retries).
fn pod(map: &Map<String, Value>) -> Result<PodSpec, String> {
    Ok(PodSpec {
        containers: vec![container(map)?],
        restart_policy: Some("Never".into()),
        service_account_name: text(map, "service_account")?,
        node_selector: strings(map, "node_selector")?,
        tolerations: typed::<Vec<Toleration>>(map, "tolerations", camel)?,
        security_context: typed::<PodSecurityContext>(map, "pod_security_context", camel)?,
        affinity: typed::<Affinity>(map, "affinity", camel)?,
        termination_grace_period_seconds: count(map, "termination_grace_period_seconds")?,
        priority_class_name: text(map, "priority_class_name")?,
        volumes: typed::<Vec<Volume>>(map, "volumes", camel)?,
        image_pull_secrets: pull_secrets(map)?,
        ..PodSpec::default()
    })
}

fn container(map: &Map<String, Value>) -> Result<Container, String> {
    let image = text(map, "image")?.ok_or(
        "kubernetes: `image` is required (in the step's with:, the DAG's kubernetes: or the config file's executors.kubernetes)",
    )?;
    let pull_policy = match text(map, "image_pull_policy")?.as_deref() {
        None => None,
        Some(p @ ("Always" | "IfNotPresent" | "Never")) => Some(p.to_string()),
        Some(other) => {
            return Err(format!(
                "kubernetes: image_pull_policy `{other}` must be Always, IfNotPresent or Never"
            ));
        }
    };
    Ok(Container {
        name: CONTAINER.into(),
        image: Some(image),
        image_pull_policy: pull_policy,
        working_dir: text(map, "working_dir")?,
        env: typed::<Vec<EnvVar>>(map, "env", env_list)?,
        env_from: typed::<Vec<EnvFromSource>>(map, "env_from", camel)?,
        resources: typed::<ResourceRequirements>(map, "resources", quantities)?,
        security_context: typed::<SecurityContext>(map, "security_context", camel)?,
        volume_mounts: typed::<Vec<VolumeMount>>(map, "volume_mounts", camel)?,
        ..Container::default()
    })
}

fn text(map: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
        Some(_) => Err(format!("kubernetes: `{key}` must be a non-empty string")),
    }
}

impl Config {
    /// DAG-level `kubernetes:` defaults: the image may be left to each step.
    pub fn parse_defaults(value: &Value) -> Result<Config, String> {
        let mut value = match value {
            Value::Null => Value::Object(Map::new()),
            other => other.clone(),
        };
        if let Value::Object(map) = &mut value {
            map.entry("image")
                .or_insert_with(|| Value::from("defaults"));
        }
        Config::parse(&value)
    }
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    !name.is_empty()
        && name.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// A part of `with:` as a Kubernetes type: snake_case keys made camelCase by `shape`,
/// then deserialized; a key the type does not have is an error naming its path.
fn typed<T: DeserializeOwned + serde::Serialize>(
    map: &Map<String, Value>,
    key: &str,
    shape: fn(&Value) -> Value,
) -> Result<Option<T>, String> {
    let Some(raw) = map.get(key).filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let shaped = shape(raw);
    let parsed: T =
        serde_json::from_value(shaped.clone()).map_err(|e| format!("kubernetes: `{key}`: {e}"))?;
    let back = serde_json::to_value(&parsed).map_err(|e| format!("kubernetes: `{key}`: {e}"))?;
    if let Some(path) = dropped(&shaped, &back, key) {
        return Err(format!(
            "kubernetes: `{path}` is not a field Kubernetes knows there"
        ));
    }
    Ok(Some(parsed))
}

/// The path of the first key of `input` that `output` lacks.
fn dropped(input: &Value, output: &Value, path: &str) -> Option<String> {
    match (input, output) {
        (Value::Object(a), Value::Object(b)) => a.iter().find_map(|(k, v)| match b.get(k) {
            None if !v.is_null() => Some(format!("{path}.{}", snake(k))),
            None => None,
            Some(w) => dropped(v, w, &format!("{path}.{}", snake(k))),
        }),
        (Value::Array(a), Value::Array(b)) => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (v, w))| dropped(v, w, &format!("{path}[{i}]"))),
        _ => None,
    }
}

/// snake_case keys → camelCase, recursively, except under keys whose own keys are the
/// user's (labels, annotations, node selectors, resource names, data).
fn camel(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let key = camel_case(k);
                    let v = if matches!(
                        key.as_str(),
                        "matchLabels" | "labels" | "annotations" | "nodeSelector"
                    ) {
                        v.clone()
                    } else {
                        camel(v)
                    };
                    (key, v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(camel).collect()),
        other => other.clone(),
    }
}

/// `env:` as a list of `{name, value | value_from}`, or a mapping / `K=V` list (Trellis's
/// step env shapes).
fn env_list(value: &Value) -> Value {
    let item = |k: &str, v: &Value| {
        let v = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        serde_json::json!({"name": k, "value": v})
    };
    match value {
        Value::Object(map) => Value::Array(map.iter().map(|(k, v)| item(k, v)).collect()),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| match i.as_str().and_then(|s| s.split_once('=')) {
                    Some((k, v)) => item(k, &Value::String(v.into())),
                    None => camel(&scalars_as_strings(i, "value")),
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// `resources:` with numbers as quantities (`cpu: 1`).
fn quantities(value: &Value) -> Value {
    let mut shaped = camel(value);
    for part in ["requests", "limits"] {
        if let Some(Value::Object(map)) = shaped.get_mut(part) {
            for v in map.values_mut() {
                if let Value::Number(n) = v {
                    *v = Value::String(n.to_string());
                }
            }
        }
    }
    shaped
}

fn scalars_as_strings(value: &Value, key: &str) -> Value {
    let mut value = value.clone();
    if let Some(v) = value.get_mut(key)
        && (v.is_number() || v.is_boolean())
    {
        *v = Value::String(v.to_string());
    }
    value
}

fn camel_case(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut upper = false;
    for c in key.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn snake(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn strings(
    map: &Map<String, Value>,
    key: &str,
) -> Result<Option<BTreeMap<String, String>>, String> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                Value::Number(_) | Value::Bool(_) => Ok((k.clone(), v.to_string())),
                _ => Err(format!("kubernetes: `{key}.{k}` must be a string")),
            })
            .collect::<Result<_, _>>()
            .map(Some),
        Some(_) => Err(format!("kubernetes: `{key}` must be a mapping")),
    }
}

/// At least a minute: a Job deleted by its TTL before Trellis read its end (a poll, or a
/// runner restarting) would leave a finished step lost, or run again.
fn ttl(map: &Map<String, Value>) -> Result<Option<i32>, String> {
    match count(map, "ttl_after_finished")? {
        Some(n) if n < 60 => Err(format!(
            "kubernetes: ttl_after_finished {n} is too short: at least 60 seconds, so the Job outlives the reading of its end (cleanup_policy: delete removes it at once after that)"
        )),
        other => Ok(other.map(|n| n as i32)),
    }
}

fn count(map: &Map<String, Value>, key: &str) -> Result<Option<i64>, String> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_i64() {
            Some(n) if (0..=i64::from(i32::MAX)).contains(&n) => Ok(Some(n)),
            _ => Err(format!("kubernetes: `{key}` must be a whole number >= 0")),
        },
    }
}

/// `image_pull_secrets`: names, or `{name: ...}` as Kubernetes writes them.
fn pull_secrets(map: &Map<String, Value>) -> Result<Option<Vec<LocalObjectReference>>, String> {
    let Some(Value::Array(items)) = map.get("image_pull_secrets") else {
        return match map.get("image_pull_secrets") {
            None | Some(Value::Null) => Ok(None),
            Some(_) => Err("kubernetes: `image_pull_secrets` must be a list of names".into()),
        };
    };
    items
        .iter()
        .map(|i| {
            let name = i.as_str().or_else(|| i.get("name").and_then(Value::as_str));
            name.map(|n| LocalObjectReference { name: n.into() })
                .ok_or_else(|| "kubernetes: `image_pull_secrets` must be a list of names".into())
        })
        .collect::<Result<_, _>>()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dagu_keys_become_a_job_and_unknown_keys_are_named() {
        let c = Config::parse(&json!({
            "image": "alpine:3", "namespace": "batch",
            "env": [{"name": "A", "value": 1},
                    {"name": "B", "value_from": {"secret_key_ref": {"name": "s", "key": "k"}}}],
            "env_from": [{"config_map_ref": {"name": "cm"}, "prefix": "CM_"}],
            "resources": {"limits": {"cpu": 1, "memory": "64Mi"}},
            "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "volumes": [{"name": "data", "empty_dir": {}}],
            "volume_mounts": [{"name": "data", "mount_path": "/data"}],
            "backoff_limit": 2, "ttl_after_finished": 60, "cleanup_policy": "keep",
            "labels": {"team_name": "x"}
        }))
        .expect("valid");
        assert_eq!(c.namespace, "batch");
        assert!(!c.delete_after);
        let job = serde_json::to_value(&c.job).unwrap();
        let container = &job["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["env"][0]["value"], "1");
        assert_eq!(container["env"][1]["valueFrom"]["secretKeyRef"]["key"], "k");
        assert_eq!(container["resources"]["limits"]["cpu"], "1");
        assert_eq!(container["volumeMounts"][0]["mountPath"], "/data");
        assert_eq!(job["spec"]["backoffLimit"], 2);
        assert_eq!(job["metadata"]["labels"]["team_name"], "x");

        let err = Config::parse(&json!({"image": "a", "colour": 1})).unwrap_err();
        assert!(err.contains("`colour`"), "{err}");
        let err =
            Config::parse(&json!({"image": "a", "volumes": [{"name": "v", "empty_dirr": {}}]}))
                .unwrap_err();
        assert!(err.contains("volumes[0].empty_dirr"), "{err}");
        assert!(
            Config::parse(&json!({"namespace": "x"})).is_err(),
            "image required"
        );
        assert!(Config::parse(&json!({"image": "a", "namespace": "Bad_NS"})).is_err());
        let err = Config::parse(&json!({"image": "a", "ttl_after_finished": 0})).unwrap_err();
        assert!(err.contains("at least 60"), "{err}");
    }
}
