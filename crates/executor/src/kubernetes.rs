//! `type: kubernetes` (or `k8s`): each try of a step is one Kubernetes Job (Dagu's keys
//! under `with:`, see [`crate::kube_config`]). Its name is deterministic per run, step and
//! try, so the handle (`namespace/name`) is recorded before the Job is created: a runner
//! that dies at any moment leaves a handle of a Job that does not exist yet (created on
//! resume) or one that is followed again, never a second Job. Following, logs, stop and
//! clean-up are in [`crate::kube_follow`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::EnvVar;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio_util::sync::CancellationToken;

use crate::Outcome;
use crate::kube_config::{Config, Connection, dns_label};
use crate::seam::{BoxFuture, Handle, StartError, StepExecutor, StepRequest, Work};

#[derive(Default)]
pub struct Kubernetes {
    /// One client per kubeconfig/context: reading a kubeconfig and setting up TLS once,
    /// not per step.
    clients: Mutex<HashMap<Connection, kube::Client>>,
}

impl std::fmt::Debug for Kubernetes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kubernetes")
    }
}

impl StepExecutor for Kubernetes {
    fn kind(&self) -> &'static str {
        "kubernetes"
    }

    /// The image may come from the DAG's `kubernetes:` or the config's defaults, laid
    /// under the step's `with:` when it runs.
    fn check(&self, config: &serde_json::Value) -> Result<(), String> {
        Config::parse_defaults(config).map(|_| ())
    }

    fn start<'a>(&'a self, req: &'a StepRequest) -> BoxFuture<'a, Result<Handle, StartError>> {
        Box::pin(async move {
            let config = Config::parse(&req.config).map_err(StartError)?;
            let client = self.client(&config.connection).await.map_err(StartError)?;
            let job = job(req, &config)?;
            let name = job.metadata.name.clone().unwrap_or_default();
            let handle = Handle::new("kubernetes", format!("{}/{name}", config.namespace));
            let jobs: Api<Job> = Api::namespaced(client, &config.namespace);
            match jobs.create(&PostParams::default(), &job).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 409 => {
                    crate::kube_follow::taken(&jobs, &job, &name).await?;
                }
                Err(e) => return Err(StartError(api_error(&e))),
            }
            // After creating: a Job whose creation was cut off by a crash is found by
            // name (or met as taken, above) by the runner that resumes the step.
            req.record(&handle).await;
            Ok(handle)
        })
    }

    fn find<'a>(&'a self, req: &'a StepRequest) -> BoxFuture<'a, Option<Handle>> {
        Box::pin(async move {
            let config = Config::parse(&req.config).ok()?;
            let (namespace, name) = match req.name.split_once('/') {
                Some((ns, name)) => (ns.to_string(), name.to_string()),
                None => (config.namespace.clone(), job_name(&req.name)),
            };
            let client = self.client(&config.connection).await.ok()?;
            let jobs: Api<Job> = Api::namespaced(client, &namespace);
            jobs.get_opt(&name).await.ok()??;
            Some(Handle::new("kubernetes", format!("{namespace}/{name}")))
        })
    }

    fn wait<'a>(
        &'a self,
        handle: &'a Handle,
        req: &'a StepRequest,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let config = match Config::parse(&req.config) {
                Ok(config) => config,
                Err(e) => return Outcome::SpawnFailed(e),
            };
            let (namespace, name) = handle
                .id
                .split_once('/')
                .unwrap_or((config.namespace.as_str(), handle.id.as_str()));
            match self.client(&config.connection).await {
                Ok(client) => {
                    let target = crate::kube_follow::Target {
                        client,
                        namespace,
                        name,
                        delete_after: config.delete_after,
                    };
                    crate::kube_follow::follow(&target, req, cancel).await
                }
                Err(e) => Outcome::SpawnFailed(e),
            }
        })
    }

    fn probe<'a>(&'a self, config: &'a serde_json::Value) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let config = Config::parse(config)?;
            let client = self.client(&config.connection).await?;
            client
                .apiserver_version()
                .await
                .map(|_| ())
                .map_err(|e| api_error(&e))
        })
    }
}

impl Kubernetes {
    async fn client(&self, connection: &Connection) -> Result<kube::Client, String> {
        if let Ok(clients) = self.clients.lock()
            && let Some(client) = clients.get(connection)
        {
            return Ok(client.clone());
        }
        let config = client_config(connection).await?;
        let client = kube::Client::try_from(config)
            .map_err(|e| format!("kubernetes: cannot make a client: {e}"))?;
        if let Ok(mut clients) = self.clients.lock() {
            clients.insert(connection.clone(), client.clone());
        }
        Ok(client)
    }
}

/// The client's configuration: the pod's service account, a kubeconfig file, or kube's
/// usual inference (KUBECONFIG, ~/.kube/config, in-cluster). Errors never carry
/// credentials: kube's messages name files and keys, not their contents.
async fn client_config(c: &Connection) -> Result<kube::Config, String> {
    let options = KubeConfigOptions {
        context: c.context.clone(),
        ..KubeConfigOptions::default()
    };
    if c.in_cluster {
        return kube::Config::incluster()
            .map_err(|e| format!("kubernetes: not in a cluster's pod: {e}"));
    }
    match &c.kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .map_err(|e| format!("kubernetes: kubeconfig {path}: {e}"))?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| format!("kubernetes: kubeconfig {path}: {e}"))
        }
        None if c.context.is_some() => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| format!("kubernetes: kubeconfig: {e}")),
        None => kube::Config::infer()
            .await
            .map_err(|e| format!("kubernetes: no cluster configured: {e}")),
    }
}

/// The API server's own message, code and reason.
pub(crate) fn api_error(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => {
            format!("kubernetes: {} ({} {})", s.message, s.code, s.reason.trim())
        }
        other => format!("kubernetes: {other}"),
    }
}

/// A Job name from the request's name: a DNS label (at most 63 characters, so that the
/// `job-name` label of its pods is valid), with a hash of the whole whenever the name had
/// to change (cut, or `Load_data` and `load.data`, which would otherwise meet).
pub(crate) fn job_name(raw: &str) -> String {
    let mut clean: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    clean = clean.trim_matches('-').to_string();
    if dns_label(&clean) && clean == raw {
        return clean;
    }
    let hash = raw.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let head: String = clean.chars().take(46).collect();
    format!("{}-{hash:016x}", head.trim_end_matches('-'))
}

/// The request's Job: the template of its options with the name, command, env and
/// Trellis's labels filled in.
fn job(req: &StepRequest, config: &Config) -> Result<Job, StartError> {
    let mut job = config.job.clone();
    job.metadata.name = Some(job_name(&req.name));
    job.metadata.namespace = Some(config.namespace.clone());
    let (labels, annotations) = trellis_labels(&req.labels);
    for meta in [
        Some(&mut job.metadata),
        job.spec.as_mut().and_then(|s| s.template.metadata.as_mut()),
    ]
    .into_iter()
    .flatten()
    {
        meta.labels.get_or_insert_default().extend(labels.clone());
        meta.annotations
            .get_or_insert_default()
            .extend(annotations.clone());
    }
    let command = command(&req.work)?;
    let pod = job
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
        .ok_or_else(|| StartError("kubernetes: the Job has no pod".into()))?;
    // Kubernetes ignores a grace given when deleting a Job: its pods get their own.
    pod.termination_grace_period_seconds
        .get_or_insert(req.grace.as_secs().min(i64::MAX as u64) as i64);
    let container = job
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
        .and_then(|s| s.containers.first_mut())
        .ok_or_else(|| StartError("kubernetes: the Job has no container".into()))?;
    container.command = command;
    let own = container.env.take().unwrap_or_default();
    let mut env: Vec<EnvVar> = req
        .env
        .iter()
        .map(|(name, value)| EnvVar {
            name: name.clone(),
            value: Some(value.clone()),
            value_from: None,
        })
        .collect();
    env.extend(own);
    container.env = (!env.is_empty()).then_some(env);
    Ok(job)
}

/// Trellis's labels as Kubernetes labels where their values are valid label values, and
/// every one whole as an annotation.
fn trellis_labels(
    labels: &BTreeMap<String, String>,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let valid = |v: &str| {
        v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && v.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
            && v.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric())
    };
    let key = |k: &str| format!("trellis.dev/{}", k.trim_start_matches("trellis."));
    let as_labels = labels
        .iter()
        .filter(|(_, v)| valid(v))
        .map(|(k, v)| (key(k), v.clone()))
        .collect();
    let as_annotations = labels.iter().map(|(k, v)| (key(k), v.clone())).collect();
    (as_labels, as_annotations)
}

/// The container's command: none (the image's own), the words of a command line (no
/// shell, as Dagu), a shell's, or a script run by `/bin/sh -c`.
fn command(work: &Work) -> Result<Option<Vec<String>>, StartError> {
    Ok(Some(match work {
        Work::Default => return Ok(None),
        Work::Line(line) => crate::split_command(line)
            .ok_or_else(|| StartError(format!("kubernetes: unbalanced quotes in `{line}`")))?,
        Work::Shell { shell, command } => {
            let mut words = shell.clone();
            words.push(command.clone());
            words
        }
        Work::Argv(argv) => argv.clone(),
        Work::Script { program, text } => {
            let mut words: Vec<String> = program
                .as_deref()
                .unwrap_or("/bin/sh")
                .split_whitespace()
                .map(String::from)
                .collect();
            words.extend(["-c".to_string(), text.clone()]);
            words
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_are_dns_labels_and_stay_unique_when_cut() {
        assert_eq!(job_name("trellis-etl-1-load-0-0"), "trellis-etl-1-load-0-0");
        let (upper, dotted) = (job_name("run-Load_data-0"), job_name("run-load.data-0"));
        assert!(upper.starts_with("run-load-data-0-"), "{upper}");
        assert_ne!(upper, dotted, "names that clean alike stay apart");
        let long = |c: char| format!("trellis-{}", c.to_string().repeat(100));
        let (a, b) = (job_name(&long('a')), job_name(&long('b')));
        assert!(dns_label(&a) && dns_label(&b), "{a}");
        assert_ne!(a, b);
        assert_eq!(a, job_name(&long('a')));
    }
}
