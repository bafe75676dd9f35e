//! Valid files the loader has never seen in the examples: each must load, and the model must
//! say what the file means (inferred graph type, materialised chain order, Daggy expansion,
//! legacy-key warnings).

use trellis_core::{Action, DagType, ParallelItems, Step, WorkerSelector};
use trellis_spec::diag::Code;
use trellis_spec::{Loaded, load_str};

fn load(name: &str, text: &str) -> Loaded {
    match load_str(name, text) {
        Ok(loaded) => loaded,
        Err(problems) => panic!(
            "{name} should load:\n{}",
            trellis_spec::diag::render_plain(name, text, &problems)
        ),
    }
}

fn step<'d>(steps: &'d [Step], name: &str) -> &'d Step {
    steps
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no step `{name}` in {:?}", names(steps)))
}

fn names(steps: &[Step]) -> Vec<&str> {
    steps.iter().map(|s| s.name.as_str()).collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

const V1_CAMEL: &str = "\
name: nightly-v1
workerSelector:
  region: eu-west
  gpu: true
handlerOn:
  failure:
    command: ./notify.sh failed
  exit:
    command: ./cleanup.sh
steps:
  - name: download
    command: curl -fsSLO https://example.com/feed.xml
    retryPolicy:
      limit: 3
      intervalSec: 10
  - name: parse
    command: ./parse.sh feed.xml
    depends: download
    continueOn:
      failure: true
      exitCode: [3, 4]
  - name: publish
    command: ./publish.sh
    depends:
      - parse
";

#[test]
fn v1_camel_case_file_loads_as_an_inferred_graph() {
    let loaded = load("nightly-v1.yaml", V1_CAMEL);
    let dag = &loaded.dag;
    assert_eq!(dag.name, "nightly-v1");
    assert_eq!(
        dag.dag_type,
        DagType::Graph,
        "depends without `type` means graph"
    );
    assert_eq!(names(&dag.steps), ["download", "parse", "publish"]);
    assert!(step(&dag.steps, "download").depends.is_empty());
    assert_eq!(step(&dag.steps, "parse").depends, ["download"]);
    assert_eq!(step(&dag.steps, "publish").depends, ["parse"]);

    let WorkerSelector::Labels(labels) = &dag.worker_selector else {
        panic!("worker selector: {:?}", dag.worker_selector);
    };
    assert_eq!(labels.get("region").map(String::as_str), Some("eu-west"));
    assert_eq!(labels.get("gpu").map(String::as_str), Some("true"));

    let retry = step(&dag.steps, "download")
        .retry_policy
        .as_ref()
        .expect("retry policy");
    assert_eq!(retry.limit, 3);
    assert_eq!(retry.interval_sec, 10.0);

    let cont = &step(&dag.steps, "parse").continue_on;
    assert!(cont.failure);
    assert_eq!(cont.exit_codes, [3, 4]);

    let failure = dag.handlers.failure.as_ref().expect("failure handler");
    assert!(
        matches!(&failure.action, Action::Commands { commands } if commands == &["./notify.sh failed"])
    );
    assert!(dag.handlers.exit.is_some());
    assert!(dag.handlers.success.is_none());
}

#[test]
fn v1_camel_case_keys_warn_with_their_v2_spelling() {
    let loaded = load("nightly-v1.yaml", V1_CAMEL);
    assert!(
        loaded
            .warnings
            .iter()
            .all(|w| w.warning && w.code == Code::LegacyKey),
        "{:?}",
        loaded.warnings
    );
    let mut renamed: Vec<(usize, String)> = loaded
        .warnings
        .iter()
        .map(|w| {
            let (line, _) = w.line_col(V1_CAMEL);
            (line, w.help.clone().unwrap_or_default())
        })
        .collect();
    renamed.sort();
    assert_eq!(
        renamed,
        [
            (2, "rename it to `worker_selector`".to_string()),
            (5, "rename it to `handler_on`".to_string()),
            (13, "rename it to `retry_policy`".to_string()),
            (15, "rename it to `interval_sec`".to_string()),
            (19, "rename it to `continue_on`".to_string()),
            (21, "rename it to `exit_code`".to_string()),
        ]
    );
}

const V2_CHAIN: &str = "\
name: build-and-ship
description: chain with a parallel group in the middle
type: chain
env:
  - GOFLAGS: -trimpath
labels: [ci, release]
steps:
  - name: checkout
    command: git fetch && git checkout ${REF}
  - - name: test-unit
      command: go test ./...
    - name: test-lint
      command: golangci-lint run
  - name: ship
    script: |
      set -e
      ./package.sh
      ./upload.sh
    working_dir: /src
    timeout_sec: 600
";

#[test]
fn v2_chain_materialises_step_order_as_depends() {
    let loaded = load("ship.yaml", V2_CHAIN);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let dag = &loaded.dag;
    assert_eq!(dag.dag_type, DagType::Chain);
    assert_eq!(
        names(&dag.steps),
        ["checkout", "test-unit", "test-lint", "ship"]
    );
    assert!(step(&dag.steps, "checkout").depends.is_empty());
    assert_eq!(step(&dag.steps, "test-unit").depends, ["checkout"]);
    assert_eq!(step(&dag.steps, "test-lint").depends, ["checkout"]);
    assert_eq!(
        sorted(step(&dag.steps, "ship").depends.clone()),
        ["test-lint", "test-unit"],
        "a step after a parallel group waits for the whole group"
    );

    let ship = step(&dag.steps, "ship");
    assert!(
        matches!(&ship.action, Action::Script { script, .. } if script.contains("./upload.sh"))
    );
    assert_eq!(ship.working_dir.as_deref(), Some("/src"));
    assert_eq!(ship.timeout_sec, Some(600));
    assert_eq!(dag.env, [("GOFLAGS".to_string(), "-trimpath".to_string())]);
    assert!(dag.labels.contains_key("ci") && dag.labels.contains_key("release"));
}

#[test]
fn steps_without_depends_or_type_form_a_chain() {
    let loaded = load(
        "plain.yaml",
        "steps:\n  - echo one\n  - echo two\n  - echo three\n",
    );
    let dag = &loaded.dag;
    assert_eq!(dag.name, "plain", "the file stem names the DAG");
    assert_eq!(dag.dag_type, DagType::Chain);
    assert_eq!(names(&dag.steps), ["cmd_1", "cmd_2", "cmd_3"]);
    assert_eq!(dag.steps[2].depends, ["cmd_2"]);
}

const MULTI_DOC: &str = "\
name: orchestrate
steps:
  - name: prepare
    command: ./prepare.sh
  - name: per-shard
    call: shard-worker
    params:
      MODE: full
    parallel:
      items: [a, b, c]
      max_concurrent: 2
  - name: report
    call: reporter
---
name: shard-worker
params:
  - ITEM
  - MODE: quick
steps:
  - command: ./work.sh ${ITEM} ${MODE}
---
name: reporter
steps:
  - command: ./report.sh
";

#[test]
fn multi_document_file_keeps_local_sub_dags_and_calls() {
    let loaded = load("orchestrate.yaml", MULTI_DOC);
    let dag = &loaded.dag;
    assert_eq!(dag.name, "orchestrate");
    let locals: Vec<&str> = dag.local_dags.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(locals, ["shard-worker", "reporter"]);

    let Action::Call(call) = &step(&dag.steps, "per-shard").action else {
        panic!("per-shard is not a call");
    };
    assert_eq!(call.dag, "shard-worker");
    assert!(call.params.contains("MODE=full"), "{:?}", call.params);
    let parallel = call.parallel.as_ref().expect("parallel");
    assert_eq!(parallel.max_concurrent, 2);
    assert!(matches!(&parallel.items, ParallelItems::List(items) if items.len() == 3));

    let Action::Call(report) = &step(&dag.steps, "report").action else {
        panic!("report is not a call");
    };
    assert_eq!(report.dag, "reporter");
    assert_eq!(step(&dag.steps, "report").depends, ["per-shard"]);

    let worker = &dag.local_dags[0];
    let param_names: Vec<Option<&str>> = worker
        .params
        .defs
        .iter()
        .map(|d| d.name.as_deref())
        .collect();
    assert_eq!(param_names, [Some("ITEM"), Some("MODE")]);
    assert_eq!(worker.params.defs[1].default.as_deref(), Some("quick"));
}

const DAGGY: &str = r#"{
  "tags": {"owner": "ingest"},
  "parameters": {"DATE": ["2024-01-01", "2024-01-02"], "UNUSED": ["x", "y"]},
  "tasks": {
    "extract": {
      "details": {"command": ["./extract.sh", "--date", "DATE"], "timeout": 60},
      "children": ["load"],
      "max_retries": 2
    },
    "load": {
      "details": {"command": ["./load.sh"]}
    },
    "notify": {
      "details": {"command": ["./notify.sh"]},
      "parents": ["load"]
    }
  }
}"#;

#[test]
fn daggy_parameters_expand_into_head_instances_and_tail() {
    let loaded = load("ingest.json", DAGGY);
    let dag = &loaded.dag;
    assert_eq!(dag.name, "ingest");
    assert_eq!(dag.dag_type, DagType::Graph);
    assert_eq!(dag.labels.get("owner").map(String::as_str), Some("ingest"));
    assert_eq!(
        names(&dag.steps),
        [
            "extract",
            "extract.DATE:2024-01-01",
            "extract.DATE:2024-01-02",
            "extract.tail",
            "load",
            "notify",
        ],
        "only parameters the command uses expand; UNUSED does not"
    );

    let head = step(&dag.steps, "extract");
    assert!(matches!(head.action, Action::Noop));
    assert!(head.depends.is_empty());

    let first = step(&dag.steps, "extract.DATE:2024-01-01");
    assert_eq!(first.depends, ["extract"]);
    assert_eq!(
        first.action,
        Action::Exec {
            program: "./extract.sh".into(),
            args: vec!["--date".into(), "2024-01-01".into()],
        }
    );
    assert_eq!(first.timeout_sec, Some(60));
    assert_eq!(first.retry_policy.as_ref().map(|r| r.limit), Some(2));

    let tail = step(&dag.steps, "extract.tail");
    assert!(matches!(tail.action, Action::Noop));
    assert_eq!(
        sorted(tail.depends.clone()),
        ["extract.DATE:2024-01-01", "extract.DATE:2024-01-02"]
    );
    assert_eq!(
        step(&dag.steps, "load").depends,
        ["extract.tail"],
        "children edges leave from the tail"
    );
    assert_eq!(step(&dag.steps, "notify").depends, ["load"]);
}

#[test]
fn yaml_merge_keys_can_be_overridden() {
    let text = "\
name: merged
steps:
  - &base
    name: short
    command: ./job.sh
    timeout_sec: 60
  - <<: *base
    name: long
    timeout_sec: 3600
";
    let loaded = load("merged.yaml", text);
    let dag = &loaded.dag;
    assert_eq!(names(&dag.steps), ["short", "long"]);
    let long = step(&dag.steps, "long");
    assert_eq!(long.timeout_sec, Some(3600), "keys after `<<` win");
    assert!(matches!(&long.action, Action::Commands { commands } if commands == &["./job.sh"]));
    assert_eq!(step(&dag.steps, "short").timeout_sec, Some(60));
    assert_eq!(long.depends, ["short"]);
}

/// A Dagu 1.x file (1.17–1.21): `type: chain` with `depends` on some steps. Dagu 2 rejects
/// it; Dagu 1.x ran it, a step's own `depends` replacing the edge to the step before it.
const V1_CHAIN_WITH_DEPENDS: &str = "\
name: pipeline
type: chain
steps:
  - name: fetch
    command: ./fetch.sh
  - name: parse
    command: ./parse.sh
  - name: store
    command: ./store.sh
    depends: [fetch]
  - name: report
    command: ./report.sh
  - name: standalone
    command: ./standalone.sh
    depends: []
  - name: last
    command: ./last.sh
";

#[test]
fn v1_chain_with_depends_loads_as_dagu_1_ran_it_with_a_warning() {
    let loaded = load("pipeline.yaml", V1_CHAIN_WITH_DEPENDS);
    let dag = &loaded.dag;
    assert_eq!(dag.dag_type, DagType::Chain);
    assert!(step(&dag.steps, "fetch").depends.is_empty());
    assert_eq!(step(&dag.steps, "parse").depends, ["fetch"]);
    assert_eq!(
        step(&dag.steps, "store").depends,
        ["fetch"],
        "explicit depends replace the implicit edge to `parse`"
    );
    assert_eq!(step(&dag.steps, "report").depends, ["store"]);
    assert!(
        step(&dag.steps, "standalone").depends.is_empty(),
        "`depends: []` opts out of the chain"
    );
    assert_eq!(step(&dag.steps, "last").depends, ["standalone"]);
    let warnings: Vec<(Code, usize)> = loaded
        .warnings
        .iter()
        .map(|w| (w.code, w.line_col(V1_CHAIN_WITH_DEPENDS).0))
        .collect();
    assert_eq!(warnings, [(Code::LegacyKey, 10), (Code::LegacyKey, 15)]);
    assert!(loaded.warnings.iter().all(|w| w.warning));
    assert!(
        loaded.warnings[0].message.contains("Dagu 1"),
        "{}",
        loaded.warnings[0].message
    );
}

#[test]
fn a_relative_working_dir_is_anchored_at_the_dag_file() {
    let text =
        "working_dir: out/data\nsteps:\n  - name: a\n    command: pwd\n    working_dir: sub\n";
    let file = std::path::Path::new("/srv/dags/job.yaml");
    let dag = trellis_spec::load_file_str(file, text).expect("loads").dag;
    assert_eq!(dag.working_dir.as_deref(), Some("/srv/dags/out/data"));
    assert_eq!(
        dag.steps[0].working_dir.as_deref(),
        Some("sub"),
        "a step's relative dir is taken against the DAG's at run time"
    );
    for kept in ["/abs/dir", "~/work", "$HOME/x", "${ROOT}/y"] {
        let text = format!("working_dir: {kept}\nsteps:\n  - pwd\n");
        let dag = trellis_spec::load_file_str(file, &text).expect("loads").dag;
        assert_eq!(dag.working_dir.as_deref(), Some(kept), "{kept}");
    }
    let relative_file = std::path::Path::new("job.yaml");
    let dag = trellis_spec::load_file_str(relative_file, "working_dir: w\nsteps:\n  - pwd\n")
        .expect("loads")
        .dag;
    let cwd = std::env::current_dir().expect("cwd");
    assert_eq!(
        dag.working_dir.as_deref(),
        Some(cwd.join("w").to_str().expect("utf-8")),
        "a file named relatively is anchored at the current directory"
    );
}
