//! `type: kubernetes` steps and `run_launcher: {type: k8s}` against a stand-in cluster
//! (`trellis_testdb::kube`): kmock's in-memory API emulator, with the test's own
//! controllers and kubelet running each pod's command as a local process, and every
//! object Trellis sends validated against the Kubernetes 1.33 OpenAPI schema. NOT a real
//! API server: none can run where these tests run (the README says so).

mod support;

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Value, json};
use support::{Env, Proc, step};
use trellis_executor::conformance::{self, Programs, Suite};
use trellis_executor::{StepExecutor, Work};
use trellis_testdb::kube::Cluster;

/// One stand-in for the file; the scenarios run in turn.
#[test]
fn kubernetes_steps_end_to_end() {
    if !Cluster::available() {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 (3.11+) is needed in CI"
        );
        eprintln!("skipped: python3 3.11+ is needed");
        return;
    }
    // The stand-in's kubelet runs the launcher's `trellis run-queued` from its PATH.
    let bin = std::path::Path::new(support::TRELLIS)
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // SAFETY: set before this test starts any thread that reads the environment.
    unsafe { std::env::set_var("PATH", path) };
    let cluster = Cluster::start().expect("start the stand-in cluster");
    for ns in ["batch", "locked"] {
        let labels = if ns == "locked" {
            json!({"trellis.test/forbidden": "true"})
        } else {
            json!({})
        };
        cluster
            .create(
                "/api/v1/namespaces",
                &json!({"apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": ns, "labels": labels}}),
            )
            .expect("namespace");
    }
    the_kubernetes_executor_passes_the_suite(&cluster);
    kubernetes_steps_run_as_jobs(&cluster);
    a_killed_runner_leaves_its_job_and_the_next_one_reattaches(&cluster);
    a_local_dag_runs_on_kubernetes_by_configuration_alone(&cluster);
    each_run_runs_as_a_job_of_its_own(&cluster);
    let validated = cluster.validated();
    assert!(
        validated
            .iter()
            .filter(|(kind, _, _)| kind == "Job")
            .count()
            >= 10,
        "the Jobs were validated: {validated:?}"
    );
    let invalid: Vec<_> = validated.iter().filter(|v| v.2.is_some()).collect();
    assert!(
        invalid.is_empty(),
        "objects the schema refuses: {invalid:?}"
    );
}

struct KubePrograms<'a> {
    dir: PathBuf,
    cluster: &'a Cluster,
}

impl Programs for KubePrograms<'_> {
    fn print(&self, out: &str, err: &str, code: i32) -> Work {
        conformance::sh::print(out, err, code)
    }
    fn await_flag(&self, flag: &str, before: &str, after: &str) -> Work {
        conformance::sh::await_flag(&self.dir, flag, before, after)
    }
    fn sleep(&self) -> Work {
        conformance::sh::sleep()
    }
    fn config(&self) -> Value {
        json!({"image": "busybox:1.36", "namespace": "batch",
               "kubeconfig": self.cluster.kubeconfig()})
    }
    fn flag_dir(&self) -> PathBuf {
        self.dir.clone()
    }
    fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        for path in [
            "/apis/batch/v1/namespaces/batch/jobs",
            "/api/v1/namespaces/batch/pods",
        ] {
            if let Ok(Some(list)) = self.cluster.get(path) {
                left.extend(
                    list["items"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|i| i["metadata"]["name"].as_str())
                        .filter(|n| n.starts_with("kube-"))
                        .map(String::from),
                );
            }
        }
        left
    }
    fn merged_output(&self) -> bool {
        true
    }
}

fn the_kubernetes_executor_passes_the_suite(cluster: &Cluster) {
    let dir = tempfile::tempdir().expect("tempdir");
    let programs = KubePrograms {
        dir: dir.path().to_path_buf(),
        cluster,
    };
    let make = || Arc::new(trellis_executor::Kubernetes::default()) as Arc<dyn StepExecutor>;
    let suite = Suite {
        make: &make,
        programs: &programs,
        logs: dir.path(),
        prefix: "kube",
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    if let Err(e) = runtime.block_on(conformance::run(&suite)) {
        panic!("conformance: {e}\n{}", cluster.log());
    }
}

fn jobs_dag(cluster: &Cluster) -> String {
    format!(
        r#"
name: pods
type: graph
env:
  - RUN_WIDE: everywhere
kubernetes:
  kubeconfig: {kubeconfig}
  namespace: batch
  image: busybox:1.36
steps:
  - name: compute
    type: kubernetes
    with:
      env:
        - name: GREETING
          value: hello
        - name: FROM_SECRET
          value_from:
            secret_key_ref: {{name: creds, key: token}}
      env_from:
        - config_map_ref: {{name: settings}}
          prefix: CM_
      resources:
        requests: {{cpu: 1, memory: 64Mi}}
        limits: {{memory: 128Mi}}
      labels: {{team: data}}
      tolerations:
        - {{key: gpu, operator: Exists, effect: NoSchedule}}
      volumes:
        - name: scratch
          empty_dir: {{}}
      volume_mounts:
        - {{name: scratch, mount_path: /scratch}}
      backoff_limit: 0
      ttl_after_finished: 600
    command: sh -c 'echo "$GREETING $RUN_WIDE $FROM_SECRET $CM_MODE pod=$HOSTNAME"'
    output: SAID
  - name: exits-four
    type: k8s
    command: sh -c 'echo before; exit 4'
    continue_on:
      exit_code: [4]
  - name: oom
    type: kubernetes
    with:
      annotations: {{trellis.test/fault: oom-killed}}
    command: "true"
    continue_on: {{failure: true}}
  - name: evicted
    type: kubernetes
    with:
      annotations: {{trellis.test/fault: evicted}}
    command: "true"
    continue_on: {{failure: true}}
  - name: no-image
    type: kubernetes
    with: {{image: registry.invalid/nothing:1}}
    command: "true"
    continue_on: {{failure: true}}
  - name: no-namespace
    type: kubernetes
    with: {{namespace: nowhere}}
    command: "true"
    continue_on: {{failure: true}}
  - name: forbidden
    type: kubernetes
    with: {{namespace: locked}}
    command: "true"
    continue_on: {{failure: true}}
"#,
        kubeconfig = cluster.kubeconfig().display()
    )
}

/// A DAG of kubernetes steps: env from a secret and a config map, resources and the
/// other Dagu keys, exit codes, logs, outputs; OOMKilled, Evicted and ImagePullBackOff
/// reported as such; the API server's refusals (404, 403) with its message and code.
fn kubernetes_steps_run_as_jobs(cluster: &Cluster) {
    cluster
        .create(
            "/api/v1/namespaces/batch/secrets",
            &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
                    "data": {"token": "czNjcjN0"}}),
        )
        .expect("secret");
    cluster
        .create(
            "/api/v1/namespaces/batch/configmaps",
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
                    "data": {"MODE": "fast"}}),
        )
        .expect("config map");
    let env = Env::new();
    let file = env.dag("pods", &jobs_dag(cluster));
    let out = env
        .trellis()
        .args(["start", "-q"])
        .arg(&file)
        .output()
        .expect("run");
    let said = String::from_utf8_lossy(&out.stderr);
    let run = support::status(&env, "pods", "").unwrap_or_else(|| panic!("no run: {said}"));
    assert_eq!(
        run["status"],
        "partially_succeeded",
        "{run:#}\n{said}\n{}",
        cluster.log()
    );
    let line = run["outputs"]["SAID"].as_str().unwrap_or_default();
    assert!(
        line.starts_with("hello everywhere s3cr3t fast pod=trellis-pods-"),
        "{run:#}"
    );
    let compute = step(&run, "compute");
    assert!(
        compute["handle"]
            .as_str()
            .unwrap_or_default()
            .starts_with("kubernetes:batch/trellis-pods-"),
        "the Job is shown: {compute:#}"
    );
    assert_eq!(step(&run, "exits-four")["exit_code"], 4, "{run:#}");
    let logs = env
        .trellis()
        .args(["logs", "pods", "--step", "exits-four"])
        .output()
        .expect("logs");
    assert_eq!(String::from_utf8_lossy(&logs.stdout), "before\n");
    let error = |name: &str| step(&run, name)["error"].as_str().unwrap_or("").to_string();
    assert!(error("oom").contains("OOMKilled"), "{run:#}");
    assert!(error("evicted").contains("Evicted"), "{run:#}");
    assert!(error("no-image").contains("ImagePullBackOff"), "{run:#}");
    assert!(
        error("no-namespace").contains(r#"namespaces "nowhere" not found"#)
            && error("no-namespace").contains("404"),
        "{run:#}"
    );
    assert!(
        error("forbidden").contains("forbidden") && error("forbidden").contains("403"),
        "{run:#}"
    );
    // Ended Jobs are deleted (cleanup_policy: delete, the default).
    let left = cluster
        .get("/apis/batch/v1/namespaces/batch/jobs")
        .expect("jobs")
        .expect("list");
    let names: Vec<&str> = left["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|j| j["metadata"]["name"].as_str())
        .filter(|n| n.starts_with("trellis-pods-"))
        .collect();
    assert!(names.is_empty(), "left behind: {names:?}");
}

/// `kill -9` of the scheduler while a Job runs: the Job goes on; the next scheduler
/// resumes the run, finds the Job by name and follows it to its exit code and whole log.
fn a_killed_runner_leaves_its_job_and_the_next_one_reattaches(cluster: &Cluster) {
    let env = Env::new();
    let shared = env.path("shared");
    std::fs::create_dir_all(&shared).expect("shared");
    let file = env.dag(
        "crash-pod",
        &format!(
            "steps:\n  - name: long\n    type: kubernetes\n    with:\n      image: busybox:1.36\n      \
             kubeconfig: {1}\n    \
             script: echo started >> {0}/starts; echo one; while [ ! -f {0}/go ]; do sleep 0.1; done; echo two; exit 3\n",
            shared.display(),
            cluster.kubeconfig().display()
        ),
    );
    let mut first = Proc::spawn(&env, &["scheduler"], "leading");
    support::enqueue(&env, &file);
    support::wait_for(60, "the pod to start", || {
        std::fs::read_to_string(shared.join("starts"))
            .ok()
            .filter(|s| !s.is_empty())
    });
    first.kill9();
    let _second = Proc::spawn(&env, &["scheduler"], "leading");
    std::fs::write(shared.join("go"), "").expect("go");
    let run = support::wait_for(60, "the resumed run to end", || {
        support::status(&env, "crash-pod", "")
            .filter(|r| r["status"] == "failed")
            .filter(|r| {
                !r["error"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("process died")
            })
    });
    let long = step(&run, "long");
    assert_eq!(long["exit_code"], 3, "{run:#}");
    let starts = std::fs::read_to_string(shared.join("starts")).unwrap_or_default();
    assert_eq!(starts.lines().count(), 1, "one pod, never a second");
    let log = env
        .trellis()
        .args(["logs", "crash-pod", "--step", "long"])
        .output()
        .expect("logs");
    assert_eq!(String::from_utf8_lossy(&log.stdout), "one\ntwo\n");
}

/// A DAG written for this machine runs as Kubernetes Jobs when the config file says so.
fn a_local_dag_runs_on_kubernetes_by_configuration_alone(cluster: &Cluster) {
    let env = Env::new();
    // A kubeconfig with a bearer token (the stand-in ignores it): it must not reach the
    // run's record or logs.
    let with_token = std::fs::read_to_string(cluster.kubeconfig())
        .expect("kubeconfig")
        .replace("user: {}", "user: {token: TOKEN-never-shown}");
    let kubeconfig = env.path("kubeconfig");
    std::fs::write(&kubeconfig, with_token).expect("kubeconfig");
    let config = env.config(&format!(
        "executors:\n  default: kubernetes\n  kubernetes:\n    image: busybox:1.36\n    namespace: batch\n    kubeconfig: {}\n",
        kubeconfig.display()
    ));
    let file = env.dag(
        "plain",
        "steps:\n  - name: where\n    command: sh -c 'echo \"pod=$HOSTNAME\"'\n    output: WHERE\n",
    );
    let out = env
        .trellis()
        .args(["start", "-q"])
        .arg(&file)
        .env("TRELLIS_CONFIG", &config)
        .output()
        .expect("run");
    let run = support::status(&env, "plain", "").expect("status");
    assert_eq!(
        run["status"],
        "succeeded",
        "{run:#}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = run["outputs"]["WHERE"].as_str().unwrap_or_default();
    assert!(said.starts_with("pod=trellis-plain-"), "{said}");
    let leaks = support::files_holding(env.home.path(), "TOKEN-never-shown");
    assert!(leaks.is_empty(), "the token leaked into {leaks:?}");
}

/// `run_launcher: {type: k8s}`: each queued run executes as `trellis run-queued` in a
/// Job's pod (here a local process, as the stand-in's kubelet runs it) against the same
/// store, with the seed's keys acted on: namespace, service account, env from config
/// maps and secrets, resources, labels and annotations.
fn each_run_runs_as_a_job_of_its_own(cluster: &Cluster) {
    cluster
        .create(
            "/api/v1/namespaces/batch/configmaps",
            &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "run-env"},
                    "data": {"LAUNCH_MARK": "from-a-config-map"}}),
        )
        .expect("config map");
    let env = Env::new();
    let config = env.config(&format!(
        "run_launcher:\n  module: dagster_k8s\n  class: K8sRunLauncher\n  config:\n    \
         job_image: trellis:test\n    job_namespace: batch\n    load_incluster_config: false\n    \
         kubeconfig_file: {}\n    service_account_name: trellis-run\n    image_pull_policy: IfNotPresent\n    \
         env_config_maps: [run-env]\n    env_secrets: [creds]\n    \
         resources: {{limits: {{cpu: 500m, memory: 256Mi}}}}\n    labels: {{app: trellis}}\n    \
         annotations: {{prometheus.io/scrape: \"true\"}}\n",
        cluster.kubeconfig().display()
    ));
    let file = env.dag(
        "launched",
        "steps:\n  - name: where\n    command: sh -c 'echo \"$LAUNCH_MARK $token pod=$HOSTNAME\"'\n    output: SAID\n",
    );
    let _scheduler = Proc::spawn_with(
        &env,
        &["scheduler"],
        "leading",
        &[("TRELLIS_CONFIG", config.to_str().unwrap_or(""))],
    );
    let run_id = support::enqueue(&env, &file);
    let run = support::wait_for(60, "the launched run to end", || {
        support::status(&env, "launched", &run_id).filter(|r| r["status"] == "succeeded")
    });
    let said = run["outputs"]["SAID"].as_str().unwrap_or_default();
    assert!(
        said.starts_with("from-a-config-map s3cr3t pod=trellis-run-launched-"),
        "{said}"
    );
    let sent: Vec<_> = cluster
        .validated()
        .into_iter()
        .filter(|(kind, name, _)| kind == "Job" && name.starts_with("trellis-run-launched"))
        .collect();
    assert_eq!(sent.len(), 1, "one Job per run: {sent:?}");
}
