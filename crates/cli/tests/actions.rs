//! Step actions through the `trellis` binary, against real servers: the run's own mail
//! (`mail_on`, `error_mail` with logs attached), a mail step whose server refuses it,
//! and state kept from one run to the next.

use std::path::Path;
use std::time::Duration;

use assert_cmd::Command;

fn start(home: &Path, dir: &Path, file: &str) -> (i32, serde_json::Value) {
    let code = Command::cargo_bin("trellis")
        .expect("trellis")
        .env("TRELLIS_HOME", home)
        .current_dir(dir)
        .args(["start", "-q", file])
        .output()
        .expect("run")
        .status
        .code()
        .unwrap_or(-1);
    let out = Command::cargo_bin("trellis")
        .expect("trellis")
        .env("TRELLIS_HOME", home)
        .current_dir(dir)
        .args(["status", "--json", file])
        .output()
        .expect("status");
    (
        code,
        serde_json::from_slice(&out.stdout).unwrap_or_default(),
    )
}

#[test]
fn a_failed_run_mails_its_error_mail_with_the_logs_attached() {
    let smtp =
        trellis_testdb::smtp::Smtp::start().expect("the SMTP sink (scripts/test installs it)");
    let (home, dir) = (
        tempfile::tempdir().expect("home"),
        tempfile::tempdir().expect("dir"),
    );
    let dag = format!(
        "name: nightly\nsmtp: {{host: 127.0.0.1, port: {}}}\nmail_on: {{failure: true}}\nerror_mail:\n  from: trellis@example.com\n  to: [oncall@example.com, lead@example.com]\n  prefix: \"[alert]\"\n  attach_logs: true\nsteps:\n  - id: load\n    run: echo loading 42 rows; echo disk full >&2; exit 3\n",
        smtp.port()
    );
    std::fs::write(dir.path().join("nightly.yaml"), dag).expect("write");
    let (code, run) = start(home.path(), dir.path(), "nightly.yaml");
    assert_eq!((code, run["status"].as_str()), (1, Some("failed")), "{run}");
    let mails = smtp
        .wait_for(1, Duration::from_secs(30))
        .expect("the error mail");
    let raw = &mails[0].raw;
    assert!(raw.contains("Subject: [alert] nightly (failed)"), "{raw}");
    assert_eq!(
        mails[0].envelope["rcpt_tos"],
        serde_json::json!(["oncall@example.com", "lead@example.com"])
    );
    // The step table, and both logs as attachments.
    assert!(raw.contains("load"), "{raw}");
    assert!(
        raw.contains("filename=\"load.out\"") && raw.contains("filename=\"load.err\""),
        "{raw}"
    );
}

#[test]
fn a_mail_step_the_server_refuses_fails_and_the_run_says_why() {
    let smtp = trellis_testdb::smtp::Smtp::start_with_auth("ops", "right").expect("the SMTP sink");
    let (home, dir) = (
        tempfile::tempdir().expect("home"),
        tempfile::tempdir().expect("dir"),
    );
    let dag = format!(
        "name: notify\nsmtp: {{host: 127.0.0.1, port: {}, username: ops, password: wrong, tls: none}}\nsteps:\n  - id: send\n    action: mail.send\n    with: {{from: a@example.com, to: b@example.com, subject: hi, message: hello}}\n",
        smtp.port()
    );
    std::fs::write(dir.path().join("notify.yaml"), dag).expect("write");
    let (code, run) = start(home.path(), dir.path(), "notify.yaml");
    assert_eq!(code, 1, "{run}");
    let error = run["steps"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("535"),
        "the step's error names the server's answer: {run}"
    );
    assert!(smtp.messages().is_empty(), "nothing was sent");
}

#[test]
fn state_carries_from_one_run_to_the_next_and_a_stale_write_fails() {
    let (home, dir) = (
        tempfile::tempdir().expect("home"),
        tempfile::tempdir().expect("dir"),
    );
    let dag = "name: counter\nsteps:\n  - id: read\n    action: state.get\n    with: {key: runs, default: 0}\n    output: SEEN\n  - id: bump\n    run: echo $(( ${SEEN.value} + 1 ))\n    output: NEXT\n  - id: write\n    action: state.set\n    with: {key: runs, value: \"${NEXT}\", expected_version: \"${SEEN.version}\"}\n";
    std::fs::write(dir.path().join("counter.yaml"), dag).expect("write");
    for _ in 0..3 {
        let (code, run) = start(home.path(), dir.path(), "counter.yaml");
        assert_eq!(code, 0, "{run}");
    }
    let stale = "name: counter\nsteps:\n  - action: state.set\n    with: {key: runs, value: 0, expected_version: 1}\n";
    std::fs::write(dir.path().join("stale.yaml"), stale).expect("write");
    let (code, run) = start(home.path(), dir.path(), "stale.yaml");
    assert_eq!(code, 1, "{run}");
    let error = run["steps"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("expected version 1, found version 3"),
        "{run}"
    );
    let entries: Vec<_> = walk(&home.path().join("data/dag-state"));
    assert_eq!(entries.len(), 1, "one entry, Dagu's layout: {entries:?}");
    let entry: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&entries[0]).expect("read")).expect("json");
    assert_eq!(
        (entry["value"].clone(), entry["version"].clone()),
        (serde_json::json!("3"), serde_json::json!(3))
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() && !path.ends_with(".locks") {
            found.extend(walk(&path));
        } else if path.extension().is_some_and(|e| e == "json") {
            found.push(path);
        }
    }
    found
}

#[test]
fn a_sub_dags_root_dag_state_is_kept_under_the_top_level_dag() {
    let (home, dir) = (
        tempfile::tempdir().expect("home"),
        tempfile::tempdir().expect("dir"),
    );
    let dag = "name: parent\nsteps:\n  - action: dag.run\n    with: {dag: child}\n  - action: state.get\n    with: {key: seen, scope: root_dag, required: true}\n---\nname: child\nsteps:\n  - action: state.set\n    with: {key: seen, value: yes, scope: root_dag}\n  - action: state.set\n    with: {key: own, value: 1}\n";
    std::fs::write(dir.path().join("parent.yaml"), dag).expect("write");
    let (code, run) = start(home.path(), dir.path(), "parent.yaml");
    assert_eq!(code, 0, "the parent reads what its child wrote: {run}");
    let state = home.path().join("data/dag-state/v1");
    let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    assert!(
        state
            .join("root_dag")
            .join(hex("parent"))
            .join(format!("{}.json", hex("seen")))
            .is_file()
    );
    // `scope: dag` (the default) is the child's own DAG.
    assert!(
        state
            .join("dag")
            .join(hex("child"))
            .join(format!("{}.json", hex("own")))
            .is_file()
    );
}
