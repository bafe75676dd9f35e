//! Following a step's Job to its end: its state read with backoff, the logs of its pods
//! (one per try of the Job, in order) streamed into the step's stdout log while they run,
//! and the exit code from the last pod's container. A reattached step skips what its log
//! already holds. A pod that cannot start (ImagePullBackOff, InvalidImageName, a missing
//! config map or secret) fails the step at once. Stop and timeout delete the Job with
//! foreground propagation and the step's grace period; an ended Job is deleted unless
//! `cleanup_policy: keep`.

use std::io::Write;
use std::time::Duration;

use futures_util::AsyncBufReadExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStateTerminated, Pod};
use kube::api::{Api, DeleteParams, ListParams, LogParams};
use tokio_util::sync::CancellationToken;

use crate::Outcome;
use crate::seam::{StartError, StepRequest};

const POLL_FIRST: Duration = Duration::from_millis(50);
/// The longest an API call may take before it counts as failed (kube sets no read
/// timeout): a stalled connection must not hold up a stop or a timeout.
const CALL_LIMIT: Duration = Duration::from_secs(30);
const POLL_MAX: Duration = Duration::from_millis(500);

/// Waiting reasons of a container that will not start without someone's help.
const STUCK: &[&str] = &[
    "ImagePullBackOff",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CreateContainerConfigError",
];

pub(crate) struct Target<'a> {
    pub client: kube::Client,
    pub namespace: &'a str,
    pub name: &'a str,
    pub delete_after: bool,
}

pub(crate) async fn follow(
    t: &Target<'_>,
    req: &StepRequest,
    cancel: CancellationToken,
) -> Outcome {
    let jobs: Api<Job> = Api::namespaced(t.client.clone(), t.namespace);
    let pods: Api<Pod> = Api::namespaced(t.client.clone(), t.namespace);
    let ended = CancellationToken::new();
    // In this future, not spawned: a follower that is dropped (its runner stops) stops
    // copying too, and the next one continues the log alone.
    let watching = async {
        let outcome = watch(t, &jobs, &pods, req, cancel).await;
        ended.cancel();
        outcome
    };
    let (outcome, ()) = tokio::join!(watching, copy_logs(&pods, t.name, req, &ended));
    if t.delete_after && !matches!(outcome, Outcome::Lost(_)) {
        let _ = jobs.delete(t.name, &DeleteParams::background()).await;
    }
    outcome
}

/// Creating the Job met one of the same name. Still running, it is this try's (its
/// runner died before recording it): followed. Ended and made by this attempt: followed
/// (to its result). Ended and left by an earlier attempt (`cleanup_policy: keep`): it is
/// replaced, once it is gone.
pub(crate) async fn taken(jobs: &Api<Job>, job: &Job, name: &str) -> Result<(), StartError> {
    let attempt = |j: &Job| {
        j.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("trellis.dev/attempt").cloned())
    };
    let existing = match jobs.get_opt(name).await {
        Ok(Some(existing)) => existing,
        Ok(None) => return create(jobs, job).await,
        Err(e) => return Err(StartError(crate::kubernetes::api_error(&e))),
    };
    let running = ended(&existing, &[]).is_none();
    if running || attempt(&existing) == attempt(job) {
        return Ok(());
    }
    let _ = jobs.delete(name, &DeleteParams::foreground()).await;
    for _ in 0..300 {
        if matches!(jobs.get_opt(name).await, Ok(None)) {
            return create(jobs, job).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(StartError(format!(
        "kubernetes: Job {name} of an earlier attempt is still being deleted"
    )))
}

async fn create(jobs: &Api<Job>, job: &Job) -> Result<(), StartError> {
    jobs.create(&kube::api::PostParams::default(), job)
        .await
        .map(|_| ())
        .map_err(|e| StartError(crate::kubernetes::api_error(&e)))
}

/// Reads the Job's state until it ends, is stopped, or cannot go on.
async fn watch(
    t: &Target<'_>,
    jobs: &Api<Job>,
    pods: &Api<Pod>,
    req: &StepRequest,
    cancel: CancellationToken,
) -> Outcome {
    let deadline = req.timeout.map(|d| tokio::time::Instant::now() + d);
    let mut pause = POLL_FIRST;
    let mut last_seen = String::from("not started");
    loop {
        match bounded(jobs.get_opt(t.name)).await {
            Ok(Some(job)) => {
                let list = job_pods(pods, t.name).await;
                if let Some(outcome) = ended(&job, &list) {
                    return outcome;
                }
                if let Some(reason) = list.iter().find_map(stuck) {
                    stop(t, jobs, req).await;
                    return Outcome::Failed { code: None, reason };
                }
                last_seen = describe(&list);
            }
            Ok(None) => {
                return Outcome::Lost(format!(
                    "Job {}/{} is gone from the cluster (last seen: {last_seen})",
                    t.namespace, t.name
                ));
            }
            Err(e) => tracing::debug!(job = t.name, "reading the Job failed, trying again: {e}"),
        }
        let stopped = crate::seam::pause(pause, deadline, &cancel).await;
        if let Some(stopped) = stopped {
            stop(t, jobs, req).await;
            return stopped;
        }
        pause = (pause * 2).min(POLL_MAX);
    }
}

/// An API call bounded by [`CALL_LIMIT`]; a stalled one is retried like a failed one.
async fn bounded<T>(
    call: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(CALL_LIMIT, call).await {
        Ok(answer) => answer.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {} s", CALL_LIMIT.as_secs())),
    }
}

/// The Job's pods, oldest first (one per try the Job made).
async fn job_pods(pods: &Api<Pod>, job: &str) -> Vec<Pod> {
    let params = ListParams::default().labels(&format!("job-name={job}"));
    let mut list: Vec<Pod> = match bounded(pods.list(&params)).await {
        Ok(list) => list.items,
        Err(e) => {
            tracing::debug!(job, "listing the Job's pods failed: {e}");
            return Vec::new();
        }
    };
    // Whatever the server did with the selector.
    list.retain(|p| {
        p.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("job-name"))
            .is_some_and(|n| n == job)
    });
    list.sort_by(|a, b| {
        let key = |p: &Pod| {
            (
                p.metadata.creation_timestamp.clone().map(|t| t.0),
                p.metadata.name.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    list
}

/// How an ended Job ended; `None` while it runs.
fn ended(job: &Job, pods: &[Pod]) -> Option<Outcome> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    let done = conditions
        .iter()
        .find(|c| c.status == "True" && matches!(c.type_.as_str(), "Complete" | "Failed"))?;
    let last = pods.last();
    let terminated = last.and_then(terminated);
    if done.type_ == "Complete" {
        return Some(Outcome::Exited(terminated.map_or(0, |t| t.exit_code)));
    }
    let reason = done.reason.clone().unwrap_or_default();
    let status = last.and_then(|p| p.status.as_ref());
    if status.and_then(|s| s.reason.as_deref()) == Some("Evicted") {
        let message = status.and_then(|s| s.message.clone()).unwrap_or_default();
        return Some(Outcome::Failed {
            code: terminated.map(|t| t.exit_code),
            reason: format!("the pod was evicted (Evicted): {message}"),
        });
    }
    Some(match terminated {
        Some(t) if t.reason.as_deref() == Some("OOMKilled") => Outcome::Failed {
            code: Some(t.exit_code),
            reason: "out of memory: the container went over its memory limit (OOMKilled)".into(),
        },
        _ if reason == "DeadlineExceeded" => Outcome::Failed {
            code: terminated.map(|t| t.exit_code),
            reason: "the Job ran past its active_deadline (DeadlineExceeded)".into(),
        },
        Some(t) => Outcome::Exited(t.exit_code),
        None => Outcome::Failed {
            code: None,
            reason: format!(
                "the Job failed ({reason}): {}",
                done.message.clone().unwrap_or_default()
            ),
        },
    })
}

fn terminated(pod: &Pod) -> Option<&ContainerStateTerminated> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    statuses.first()?.state.as_ref()?.terminated.as_ref()
}

/// Why a pod's container will not start, when it will not.
fn stuck(pod: &Pod) -> Option<String> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    let waiting = statuses.first()?.state.as_ref()?.waiting.as_ref()?;
    let reason = waiting.reason.as_deref()?;
    STUCK.contains(&reason).then(|| {
        format!(
            "the container cannot start ({reason}): {}",
            waiting.message.clone().unwrap_or_default()
        )
    })
}

fn describe(pods: &[Pod]) -> String {
    match pods.last() {
        None => "no pod yet".into(),
        Some(p) => format!(
            "pod {} {}",
            p.metadata.name.as_deref().unwrap_or("?"),
            p.status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .unwrap_or("Pending")
        ),
    }
}

/// Deletes the Job, its pods first (foreground), giving them the step's grace period,
/// and returns once they are gone (bounded).
async fn stop(t: &Target<'_>, jobs: &Api<Job>, req: &StepRequest) {
    let mut params = DeleteParams::foreground();
    params.grace_period_seconds = Some(req.grace.as_secs().min(u64::from(u32::MAX)) as u32);
    if let Err(e) = jobs.delete(t.name, &params).await {
        tracing::warn!(job = t.name, "cannot delete the Job: {e}");
        return;
    }
    let pods: Api<Pod> = Api::namespaced(t.client.clone(), t.namespace);
    let until = tokio::time::Instant::now() + req.grace + Duration::from_secs(10);
    while tokio::time::Instant::now() < until {
        let job_gone = matches!(bounded(jobs.get_opt(t.name)).await, Ok(None));
        if job_gone && job_pods(&pods, t.name).await.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Streams the logs of the Job's pods in order into the step's stdout log, line by line
/// and masked, after the bytes the log already holds (a reattached step).
async fn copy_logs(pods: &Api<Pod>, job: &str, req: &StepRequest, ended: &CancellationToken) {
    let mut skip = std::fs::metadata(&req.stdout).map_or(0, |m| m.len());
    let mut done: Vec<String> = Vec::new();
    // Bytes of each pod's log already handled (written or skipped), for a stream reopened.
    let mut consumed: std::collections::HashMap<String, u64> = Default::default();
    loop {
        let list = job_pods(pods, job).await;
        let next = list.iter().find(|p| {
            let name = p.metadata.name.clone().unwrap_or_default();
            !done.contains(&name) && started(p)
        });
        let Some(pod) = next else {
            if ended.is_cancelled() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = ended.cancelled() => {}
            }
            continue;
        };
        let name = pod.metadata.name.clone().unwrap_or_default();
        // The stream of a pod that ended closes by itself; one of a vanished pod may not.
        let late = async {
            ended.cancelled().await;
            tokio::time::sleep(Duration::from_secs(10)).await;
        };
        let read = consumed.entry(name.clone()).or_insert(0);
        tokio::select! {
            streamed = stream_pod(pods, &name, req, &mut skip, read) => {
                if let Err(e) = streamed {
                    tracing::debug!(pod = name, "the pod's log stream ended early: {e}");
                }
            }
            _ = late => return,
        }
        // A stream can close while the container runs (an idle connection cut): it is
        // opened again, after what this pod has already given.
        if still_running(pods, &name).await && !ended.is_cancelled() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        done.push(name);
    }
}

/// Whether the pod's container is still running (not ended, not gone).
async fn still_running(pods: &Api<Pod>, name: &str) -> bool {
    match bounded(pods.get_opt(name)).await {
        Ok(Some(pod)) => terminated(&pod).is_none() && started(&pod),
        _ => false,
    }
}

/// Whether a pod's container has started (its log exists).
fn started(pod: &Pod) -> bool {
    let state = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|s| s.first())
        .and_then(|s| s.state.as_ref());
    state.is_some_and(|s| s.running.is_some() || s.terminated.is_some())
}

async fn stream_pod(
    pods: &Api<Pod>,
    name: &str,
    req: &StepRequest,
    skip: &mut u64,
    consumed: &mut u64,
) -> Result<(), String> {
    let params = LogParams {
        follow: true,
        container: Some(crate::kube_config::CONTAINER.into()),
        ..LogParams::default()
    };
    let mut stream = pods
        .log_stream(name, &params)
        .await
        .map_err(|e| e.to_string())?;
    let mut log = crate::append(&req.stdout).map_err(|e| e.to_string())?;
    let mut line = Vec::new();
    let mut seen = 0u64;
    loop {
        line.clear();
        let n = stream
            .read_until(b'\n', &mut line)
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Ok(());
        }
        let masked = match &req.mask {
            Some(mask) if !mask.is_empty() => {
                mask.apply(&String::from_utf8_lossy(&line)).into_bytes()
            }
            _ => std::mem::take(&mut line),
        };
        let len = masked.len() as u64;
        seen += len;
        if seen <= *consumed {
            continue;
        }
        *consumed = seen;
        if *skip >= len {
            *skip -= len;
            continue;
        }
        log.write_all(&masked[*skip as usize..])
            .map_err(|e| e.to_string())?;
        *skip = 0;
    }
}
