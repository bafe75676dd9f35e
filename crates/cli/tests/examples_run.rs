//! Every example in `examples/` runs with the status its comments promise.

use std::path::PathBuf;

use assert_cmd::Command;

fn run(example: &str, params: Option<&str>) -> (i32, serde_json::Value) {
    let home = tempfile::tempdir().unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let file = root.join("examples").join(example);
    let mut start = Command::cargo_bin("trellis").unwrap();
    start
        .env("TRELLIS_HOME", home.path())
        .current_dir(&root)
        .arg("start")
        .arg("-q")
        .arg(&file);
    if let Some(p) = params {
        start.args(["--params", p]);
    }
    let code = start.output().unwrap().status.code().unwrap_or(-1);
    let out = Command::cargo_bin("trellis")
        .unwrap()
        .env("TRELLIS_HOME", home.path())
        .current_dir(&root)
        .args(["status", "--json"])
        .arg(&file)
        .output()
        .unwrap();
    (
        code,
        serde_json::from_slice(&out.stdout).unwrap_or_default(),
    )
}

#[test]
fn examples_end_as_documented() {
    let cases: &[(&str, Option<&str>, i32, &str)] = &[
        ("hello.yaml", None, 0, "succeeded"),
        ("chain.yaml", None, 0, "succeeded"),
        ("commands.yaml", None, 0, "succeeded"),
        ("conditions.yaml", None, 0, "partially_succeeded"),
        ("custom_step_type.yaml", None, 0, "succeeded"),
        ("inferred_graph.yaml", None, 0, "succeeded"),
        ("outputs.yaml", None, 0, "succeeded"),
        ("retries.yaml", None, 0, "succeeded"),
        ("router.yaml", None, 0, "succeeded"),
        ("sub_dags.yaml", None, 0, "succeeded"),
        ("approval.yaml", None, 1, "waiting"),
        ("legacy/v1_camel_case.yaml", None, 0, "succeeded"),
        ("params/positional.yaml", None, 0, "succeeded"),
        ("daggy/etl_run.json", None, 0, "succeeded"),
        ("daggy/generator.json", None, 0, "succeeded"),
    ];
    let mut wrong = Vec::new();
    for (example, params, code, status) in cases {
        let (got_code, run) = run(example, *params);
        if got_code != *code || run["status"] != *status {
            wrong.push(format!(
                "{example}: exit {got_code}, status {} (error {})",
                run["status"], run["error"]
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn hello_greets_the_given_name() {
    let (code, run) = run("hello.yaml", Some("WHO=Ada"));
    assert_eq!(code, 0);
    assert_eq!(run["params"][0], "WHO=Ada");
}
