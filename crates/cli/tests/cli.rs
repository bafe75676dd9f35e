//! End-to-end tests of the `trellis` binary: exit codes and what a user sees on stdout and
//! stderr. Files are written to a temporary directory and named relative to it, so reports
//! read `bad.yaml:3:5`, exactly as they would in a project checkout.

use std::path::Path;

use assert_cmd::Command;
use predicates::prelude::*;
use tempfile::TempDir;

const VALID: &str = "\
name: etl
steps:
  - name: extract
    command: ./extract.sh
  - name: load
    command: ./load.sh
    depends: extract
";

/// The typo is at line 3, column 5.
const TYPO: &str = "\
steps:
  - name: build
    dependz: fetch
    command: make
";

/// A valid v1 file: loads, with one legacy-key warning.
const LEGACY: &str = "\
name: legacy
steps:
  - name: main
    command: ./main.sh
    continueOn:
      failure: true
";

fn dir_with(files: &[(&str, &str)]) -> TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("write file");
    }
    dir
}

fn trellis(dir: &Path) -> Command {
    let mut cmd = Command::cargo_bin("trellis").expect("trellis binary");
    cmd.current_dir(dir).env("NO_COLOR", "1");
    cmd
}

fn stdout_of(output: &std::process::Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("utf-8 stdout")
}

// ---------------------------------------------------------------------------------------
// validate

#[test]
fn validate_accepts_a_valid_file() {
    let dir = dir_with(&[("good.yaml", VALID)]);
    trellis(dir.path())
        .args(["validate", "good.yaml"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("good.yaml: ok"))
        .stderr(predicate::str::is_empty());
}

#[test]
fn validate_rejects_an_invalid_file_with_its_location() {
    let dir = dir_with(&[("bad.yaml", TYPO)]);
    trellis(dir.path())
        .args(["validate", "bad.yaml"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("bad.yaml:3:5"))
        .stderr(predicate::str::contains("unknown key `dependz`"))
        .stderr(predicate::str::contains("did you mean `depends`?"))
        .stderr(predicate::str::contains("spec::unknown-key"))
        .stderr(predicate::str::contains("bad.yaml: 1 error"))
        .stdout(predicate::str::contains("ok").not());
}

#[test]
fn validate_fails_when_any_of_several_files_is_invalid() {
    let dir = dir_with(&[("a.yaml", VALID), ("bad.yaml", TYPO), ("c.yaml", VALID)]);
    trellis(dir.path())
        .args(["validate", "a.yaml", "bad.yaml", "c.yaml"])
        .assert()
        .code(2)
        .stdout(predicate::str::contains("a.yaml: ok"))
        .stdout(predicate::str::contains("c.yaml: ok"))
        .stderr(predicate::str::contains("bad.yaml:3:5"))
        .stderr(predicate::str::contains("bad.yaml: 1 error"));
}

#[test]
fn validate_reports_every_problem_of_a_file() {
    let text = "\
name: several
overlap_policy: sometimes
steps:
  - name: a
    command: ./a.sh
    depends: [a]
  - name: b
    command: ./b.sh
    timeout_sec: [1]
";
    let dir = dir_with(&[("several.yaml", text)]);
    trellis(dir.path())
        .args(["validate", "several.yaml"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("several.yaml:2:17"))
        .stderr(predicate::str::contains("several.yaml:6:15"))
        .stderr(predicate::str::contains("step `a` depends on itself"))
        .stderr(predicate::str::contains("several.yaml:9:18"))
        .stderr(predicate::str::contains("several.yaml: 3 errors"));
}

#[test]
fn validate_of_a_missing_file_exits_2_and_names_it() {
    let dir = dir_with(&[]);
    trellis(dir.path())
        .args(["validate", "nowhere.yaml"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("cannot read nowhere.yaml"));
}

#[test]
fn validate_accepts_legacy_keys_with_a_warning() {
    let dir = dir_with(&[("legacy.yaml", LEGACY)]);
    trellis(dir.path())
        .args(["validate", "legacy.yaml"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("legacy.yaml: ok (1 warning)"))
        .stderr(predicate::str::contains(
            "`continueOn` is the Dagu v1 spelling",
        ))
        .stderr(predicate::str::contains("legacy.yaml:5:5"));
}

#[test]
fn validate_quiet_hides_warnings_and_ok_lines() {
    let dir = dir_with(&[("legacy.yaml", LEGACY)]);
    trellis(dir.path())
        .args(["validate", "--quiet", "legacy.yaml"])
        .assert()
        .code(0)
        .stdout(predicate::str::is_empty())
        .stderr(predicate::str::is_empty());
}

#[test]
fn validate_rejects_bad_daggy_json() {
    let spec = r#"{
  "tasks": {
    "a": {"details": {"command": ["./a.sh"]}, "children": ["b"],},
    "b": {"details": {"command": ["./b.sh"]}}
  }
}"#;
    let dir = dir_with(&[("run.json", spec)]);
    trellis(dir.path())
        .args(["validate", "run.json"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("invalid JSON"))
        .stderr(predicate::str::contains("run.json:3:"));
}

#[test]
fn validate_reports_a_broken_jq_filter_and_a_bad_action_where_they_are() {
    let file = "\
steps:
  - id: pick
    action: jq.filter
    with: {filter: \".items | map(\"}
  - id: call
    action: http.request
    with: {method: GET, url: http://127.0.0.1:1/, colour: red}
";
    let dir = dir_with(&[("actions.yaml", file)]);
    trellis(dir.path())
        .args(["validate", "actions.yaml"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("actions.yaml:4:11"))
        .stderr(predicate::str::contains(
            "invalid jq filter `.items | map(`",
        ))
        .stderr(predicate::str::contains("actions.yaml:7:11"))
        .stderr(predicate::str::contains("unknown field `colour`"))
        .stderr(predicate::str::contains("actions.yaml: 2 errors"));
}

#[test]
fn validate_json_prints_one_object_per_problem() {
    let dir = dir_with(&[("bad.yaml", TYPO), ("legacy.yaml", LEGACY)]);
    let output = trellis(dir.path())
        .args(["validate", "--json", "bad.yaml", "legacy.yaml"])
        .output()
        .expect("run trellis");
    assert_eq!(output.status.code(), Some(2));
    let stdout = stdout_of(&output);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}")))
        .collect();
    assert_eq!(lines.len(), 2, "one error and one warning: {stdout}");

    let error = &lines[0];
    assert_eq!(error["file"], "bad.yaml");
    assert_eq!(error["line"], 3);
    assert_eq!(error["column"], 5);
    assert_eq!(error["severity"], "error");
    assert_eq!(error["code"], "spec::unknown-key");
    assert_eq!(error["message"], "unknown key `dependz` in a step");
    assert_eq!(error["help"], "did you mean `depends`?");

    let warning = &lines[1];
    assert_eq!(warning["file"], "legacy.yaml");
    assert_eq!(warning["line"], 5);
    assert_eq!(warning["column"], 5);
    assert_eq!(warning["severity"], "warning");
    assert_eq!(warning["code"], "spec::legacy-key");
    assert_eq!(warning["help"], "rename it to `continue_on`");

    for line in &lines {
        let keys: Vec<&str> = line
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "file", "line", "column", "severity", "code", "message", "help"
            ]
        );
    }
}

#[test]
fn validate_json_prints_nothing_for_a_clean_file() {
    let dir = dir_with(&[("good.yaml", VALID)]);
    trellis(dir.path())
        .args(["validate", "--json", "good.yaml"])
        .assert()
        .code(0)
        .stdout(predicate::str::is_empty());
}

#[test]
fn validate_needs_a_file() {
    let dir = dir_with(&[]);
    trellis(dir.path())
        .arg("validate")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("FILE"));
}

// ---------------------------------------------------------------------------------------
// schema and version

#[test]
fn schema_is_json_with_step_definitions() {
    let dir = dir_with(&[]);
    let output = trellis(dir.path())
        .arg("schema")
        .output()
        .expect("run trellis");
    assert!(output.status.success());
    let schema: serde_json::Value =
        serde_json::from_str(&stdout_of(&output)).expect("schema is JSON");
    let step = &schema["$defs"]["step"];
    assert!(step.is_object(), "no $defs.step in {schema}");
    assert!(step["properties"]["depends"].is_object());
    assert!(step["properties"]["command"].is_object());
    assert_eq!(step["additionalProperties"], false);
    assert!(schema["properties"]["steps"].is_object());
    assert_eq!(
        schema["properties"]["handlerOn"]["deprecated"], true,
        "v1 spellings are accepted but marked deprecated"
    );
}

#[test]
fn version_prints_the_crate_version() {
    let dir = dir_with(&[]);
    trellis(dir.path())
        .arg("--version")
        .assert()
        .code(0)
        .stdout(predicate::str::diff(format!(
            "trellis {}\n",
            env!("CARGO_PKG_VERSION")
        )));
}

// ---------------------------------------------------------------------------------------
// dry

const DIAMOND: &str = "\
name: diamond
params:
  - name: TARGET
    default: dev
    enum: [dev, staging, prod]
  - name: COUNT
    type: integer
    default: 3
steps:
  - name: fetch
    command: ./fetch.sh ${TARGET}
  - name: left
    command: ./left.sh
    depends: fetch
  - name: right
    command: ./right.sh
    depends: fetch
  - name: join
    command: ./join.sh $1
    depends: [left, right]
";

/// The level each step is listed under in `dry`'s text output.
fn levels_of(stdout: &str) -> Vec<(usize, String)> {
    let mut level = 0;
    let mut out = Vec::new();
    for line in stdout.lines() {
        let trimmed = line.trim();
        if let Some(n) = trimmed
            .strip_prefix("level ")
            .and_then(|r| r.strip_suffix(':'))
        {
            level = n.parse().expect("level number");
        } else if let Some(step) = trimmed.strip_prefix("- ") {
            let name = step.split(':').next().unwrap_or_default().to_string();
            out.push((level, name));
        }
    }
    out
}

#[test]
fn dry_prints_levels_and_default_params() {
    let dir = dir_with(&[("diamond.yaml", DIAMOND)]);
    let output = trellis(dir.path())
        .args(["dry", "diamond.yaml"])
        .output()
        .expect("run trellis");
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let stdout = stdout_of(&output);
    assert!(stdout.contains("DAG diamond"), "{stdout}");
    assert!(stdout.contains("TARGET=dev"), "{stdout}");
    assert!(stdout.contains("COUNT=3"), "{stdout}");
    assert!(stdout.contains("nothing was run"), "{stdout}");
    let mut levels = levels_of(&stdout);
    levels.sort();
    assert_eq!(
        levels,
        [
            (1, "fetch".to_string()),
            (2, "left".to_string()),
            (2, "right".to_string()),
            (3, "join".to_string()),
        ]
    );
    assert!(stdout.contains("- join: ./join.sh $1"), "{stdout}");
}

#[test]
fn dry_resolves_params_given_on_the_command_line() {
    let dir = dir_with(&[("diamond.yaml", DIAMOND)]);
    trellis(dir.path())
        .args(["dry", "diamond.yaml", "--params", "TARGET=prod COUNT=7"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("TARGET=prod"))
        .stdout(predicate::str::contains("COUNT=7"))
        .stdout(predicate::str::contains("TARGET=dev").not());
}

#[test]
fn dry_rejects_a_param_outside_its_enum() {
    let dir = dir_with(&[("diamond.yaml", DIAMOND)]);
    trellis(dir.path())
        .args(["dry", "diamond.yaml", "--params", "TARGET=qa"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("param `TARGET`"))
        .stderr(predicate::str::contains("`qa`"))
        .stderr(predicate::str::contains("dev, staging, prod"))
        .stdout(predicate::str::contains("level").not());
}

#[test]
fn dry_rejects_a_param_of_the_wrong_type() {
    let dir = dir_with(&[("diamond.yaml", DIAMOND)]);
    trellis(dir.path())
        .args(["dry", "diamond.yaml", "-p", "COUNT=many"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("param `COUNT`"))
        .stderr(predicate::str::contains("not an integer"));
}

#[test]
fn dry_rejects_an_undeclared_param() {
    let dir = dir_with(&[("diamond.yaml", DIAMOND)]);
    trellis(dir.path())
        .args(["dry", "diamond.yaml", "--params", "TARGTE=prod"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("param `TARGTE`"))
        .stderr(predicate::str::contains("unknown param"));
}

#[test]
fn dry_passes_positional_args_after_double_dash() {
    let text = "\
name: positional
params: first second
steps:
  - name: greet
    command: echo $1 $2
";
    let dir = dir_with(&[("positional.yaml", text)]);
    trellis(dir.path())
        .args(["dry", "positional.yaml"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("$1=first"))
        .stdout(predicate::str::contains("$2=second"));
    trellis(dir.path())
        .args(["dry", "positional.yaml", "--", "hello", "--world"])
        .assert()
        .code(0)
        .stdout(predicate::str::contains("$1=hello"))
        .stdout(predicate::str::contains("$2=--world"))
        .stdout(predicate::str::contains("$1=first").not());
}

#[test]
fn dry_json_lists_levels_and_params() {
    let dir = dir_with(&[("diamond.yaml", DIAMOND)]);
    let output = trellis(dir.path())
        .args(["dry", "--json", "diamond.yaml", "--", "extra"])
        .output()
        .expect("run trellis");
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let plan: serde_json::Value = serde_json::from_str(&stdout_of(&output)).expect("JSON plan");
    assert_eq!(plan["name"], "diamond");
    let names = |level: &serde_json::Value| {
        let mut names: Vec<String> = level
            .as_array()
            .expect("a level is a list")
            .iter()
            .map(|s| s["name"].as_str().expect("step name").to_string())
            .collect();
        names.sort();
        names
    };
    let levels = plan["levels"].as_array().expect("levels");
    assert_eq!(levels.len(), 3);
    assert_eq!(names(&levels[0]), ["fetch"]);
    assert_eq!(names(&levels[1]), ["left", "right"]);
    assert_eq!(names(&levels[2]), ["join"]);
    let params = plan["params"].as_array().expect("params");
    assert!(
        params
            .iter()
            .any(|p| p["name"] == "TARGET" && p["value"] == "dev")
    );
    assert!(
        params
            .iter()
            .any(|p| p["name"] == "1" && p["value"] == "extra")
    );
}

#[test]
fn dry_of_an_invalid_file_exits_2_with_the_report() {
    let dir = dir_with(&[("bad.yaml", TYPO)]);
    trellis(dir.path())
        .args(["dry", "bad.yaml"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("bad.yaml:3:5"))
        .stdout(predicate::str::is_empty());
}
