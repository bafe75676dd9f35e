//! The leader's side of runs started in containers by the run launcher
//! ([`crate::launcher`]): starting the container, counting the run as active until the
//! container ends, failing a run whose container ended before it did, and adopting the
//! containers an earlier leader started.

use jiff::Timestamp;
use tokio_util::sync::CancellationToken;
use trellis_core::Dag;
use trellis_core::queue::Slot;
use trellis_core::status::{RunRecord, Status};
use trellis_engine::blocking_section;
use trellis_executor::{Outcome, StepRequest};
use trellis_store::{Entry, QueueItem, Shared};

use super::{Active, Leader};
use crate::clock::Clock;
use crate::launcher::{Launch, Mounts, RunLauncher, log_dir};

impl<C: Clock + 'static> Leader<C> {
    /// Starts a run in a container of its own.
    pub(super) fn launch(&mut self, item: &QueueItem, slot: Slot, launcher: &RunLauncher) {
        let launch = Launch {
            dag: &item.dag_name,
            run_id: item.run_id.as_str(),
            file: &item.file,
            params: item.params.as_deref(),
            scheduled_time: item.scheduled_time.as_deref(),
        };
        let logs = log_dir(&self.data);
        let req = std::fs::create_dir_all(&logs)
            .map_err(|e| format!("cannot make {}: {e}", logs.display()))
            .and_then(|()| launcher.request(&launch, &self.mounts(), &logs));
        let req = match req {
            Ok(req) => req,
            Err(e) => return self.fail(item, &e),
        };
        tracing::info!(
            "scheduler: run {} of {} starts in container {}",
            item.run_id,
            item.dag_name,
            req.name
        );
        self.follow(slot, req, true);
    }

    /// Counts a run whose container an earlier leader started as active, and follows
    /// that container to its end; `false` when there is no such container.
    pub(super) fn adopt_launched(&mut self, dag: &Dag, run: &RunRecord) -> bool {
        let Some(launcher) = self.opts.config.run_launcher.clone() else {
            return false;
        };
        if self.active.contains_key(run.run_id.as_str()) {
            return true;
        }
        let launch = Launch {
            dag: &dag.name,
            run_id: run.run_id.as_str(),
            file: "",
            params: None,
            scheduled_time: None,
        };
        let logs = log_dir(&self.data);
        let Ok(req) = launcher.request(&launch, &self.mounts(), &logs) else {
            return false;
        };
        let slot = Slot {
            dag: dag.name.clone(),
            queue: dag.queue.clone().unwrap_or_else(|| dag.name.clone()),
            tags: Default::default(),
        };
        tracing::info!(
            "scheduler: run {} of {} is in container {}: following it",
            run.run_id,
            dag.name,
            req.name
        );
        self.follow(slot, req, false);
        true
    }

    fn follow(&mut self, slot: Slot, req: StepRequest, start: bool) {
        let kind = self
            .opts
            .config
            .run_launcher
            .as_ref()
            .and_then(|l| l.launcher().ok())
            .map_or("docker", |l| l.executor());
        let cancel = CancellationToken::new();
        let run_id = req
            .labels
            .get("trellis.run_id")
            .cloned()
            .unwrap_or_default();
        let dag = slot.dag.clone();
        self.active.insert(
            run_id.clone(),
            Active {
                slot,
                cancel: cancel.clone(),
                task: None,
                contained: true,
            },
        );
        let (store, done) = (self.store.clone(), self.done.clone());
        self.followers.retain(|t| !t.is_finished());
        self.followers.push(tokio::spawn(async move {
            let outcome = container(kind, &req, start, cancel).await;
            let reason = match &outcome {
                Outcome::Exited(0) => None,
                other => Some(describe(other, &req)),
            };
            if let Some(reason) = reason {
                blocking_section(|| fail_unfinished(&store, &dag, &run_id, &reason));
            }
            let _ = done.send(run_id);
        }));
    }

    /// Where a run's container finds the store and files this scheduler uses.
    fn mounts(&self) -> Mounts<'_> {
        let mut store_env: Vec<(String, String)> =
            ["TRELLIS_HOME", "TRELLIS_DATA_DIR", "TRELLIS_LOG_DIR"]
                .iter()
                .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
                .collect();
        if !store_env.iter().any(|(k, _)| k == "TRELLIS_HOME") {
            store_env.push(("TRELLIS_HOME".into(), self.opts.home.display().to_string()));
        }
        store_env.push((
            "TRELLIS_DAGS_DIR".into(),
            self.opts.dags_dir.display().to_string(),
        ));
        if let Some(url) = self.opts.config.storage.database_url().ok().flatten() {
            store_env.push(("TRELLIS_DATABASE_URL".into(), url));
        } else if let Some(url) = trellis_store::database_url_from_env() {
            store_env.push(("TRELLIS_DATABASE_URL".into(), url));
        }
        Mounts {
            home: &self.opts.home,
            dags_dir: &self.opts.dags_dir,
            store_env,
        }
    }
}

/// Starts (or finds again) the run's container and waits for it to end.
async fn container(
    kind: &str,
    req: &StepRequest,
    start: bool,
    cancel: CancellationToken,
) -> Outcome {
    let registry = trellis_executor::Registry::builtin();
    let Some(docker) = registry.get(kind) else {
        return Outcome::SpawnFailed(format!("this build has no {kind} executor"));
    };
    let handle = match docker.find(req).await {
        Some(handle) if !start => handle,
        None if !start => return Outcome::Lost(format!("container {} is gone", req.name)),
        _ => match docker.start(req).await {
            Ok(handle) => handle,
            Err(e) => return Outcome::SpawnFailed(e.0),
        },
    };
    let outcome = docker.wait(&handle, req, cancel).await;
    docker.settle().await;
    outcome
}

fn describe(outcome: &Outcome, req: &StepRequest) -> String {
    let tail = std::fs::read_to_string(&req.stderr)
        .ok()
        .and_then(|t| {
            t.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(String::from)
        })
        .map(|l| format!(": {l}"))
        .unwrap_or_default();
    match outcome {
        Outcome::Exited(code) => format!("the run's container exited with code {code}{tail}"),
        Outcome::Failed { reason, .. } => format!("the run's container failed: {reason}"),
        Outcome::SpawnFailed(e) => format!("the run's container did not start: {e}"),
        Outcome::Lost(e) => format!("the run's container was lost: {e}"),
        other => format!("the run's container ended: {other:?}"),
    }
}

/// A run whose container ended before the run did is recorded as failed, with why; one
/// that ended on its own (exit code 1 for a failed run) is left as it recorded itself.
fn fail_unfinished(store: &Shared, dag: &str, run_id: &str, reason: &str) {
    let Ok(Some(mut run)) = store.find(dag, run_id) else {
        return;
    };
    if run.status.is_final() {
        return;
    }
    tracing::error!("scheduler: run {run_id} of {dag}: {reason}");
    run.status = Status::Failed;
    run.error = Some(reason.to_string());
    run.finished_at = Some(Timestamp::now().into());
    let attempt = match store.latest_attempt(dag, run_id) {
        Ok(Some(attempt)) => Ok(attempt),
        _ => store.retry_attempt(dag, run_id),
    };
    if let Ok(attempt) = attempt {
        let _ = store.append(&attempt, &Entry::Snapshot(Box::new(run)));
    }
}
