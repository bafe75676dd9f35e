//! `secrets:` end to end with the real binary: steps see the values, and nothing a run
//! leaves behind (logs, records, outputs, error messages, `status`, `logs`) holds them.

mod support;

use std::path::Path;
use std::time::Duration;

use assert_cmd::Command;
use support::files_holding;

const FROM_ENV: &str = "hunter2-Zq9x";
const FROM_FILE: &str = "filesecret-77Kp";

fn trellis(home: &Path, work: &Path, args: &[&str]) -> std::process::Output {
    Command::cargo_bin("trellis")
        .expect("trellis binary")
        .args(args)
        .current_dir(work)
        .env("TRELLIS_HOME", home)
        .env("TOKEN_SOURCE", FROM_ENV)
        .timeout(Duration::from_secs(60))
        .output()
        .expect("run trellis")
}

#[test]
fn steps_see_secrets_and_nothing_kept_holds_them() {
    let (home, work) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let secret_file = work.path().join("db.secret");
    std::fs::write(&secret_file, format!("{FROM_FILE}\n")).unwrap();
    let yaml = format!(
        "secrets:
  - name: TOKEN
    provider: env
    key: TOKEN_SOURCE
  - name: DB_PASSWORD
    provider: file
    key: {}
steps:
  - name: check
    command: sh -c '[ \"$TOKEN\" = \"$TOKEN_SOURCE\" ] && [ \"$DB_PASSWORD\" = \"$(cat {file})\" ] && echo match'
  - name: out
    command: echo \"out $TOKEN\"
  - name: err
    command: sh -c 'echo \"err $DB_PASSWORD\" >&2'
  - name: capture
    command: echo \"$TOKEN\"
    output: CAPTURED
  - name: fails
    command: sh -c 'echo \"bad $TOKEN\" >&2; exit 3'
",
        secret_file.display(),
        file = secret_file.display()
    );
    std::fs::write(work.path().join("sec.yaml"), yaml).unwrap();
    let run = trellis(home.path(), work.path(), &["start", "-q", "sec.yaml"]);
    assert_eq!(run.status.code(), Some(1), "the last step fails");
    let logs = |step: &str, extra: &[&str]| {
        let out = trellis(
            home.path(),
            work.path(),
            &[&["logs", "sec", "--step", step], extra].concat(),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        logs("check", &[]).trim(),
        "match",
        "the steps saw both values"
    );
    assert_eq!(logs("out", &[]).trim(), "out *****");
    assert_eq!(logs("err", &["--stderr"]).trim(), "err *****");
    let status = trellis(home.path(), work.path(), &["status", "sec", "--json"]);
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(status.contains("\"CAPTURED\": \"*****\""), "{status}");
    assert!(
        status.contains("bad *****"),
        "the error message is masked too: {status}"
    );
    for secret in [FROM_ENV, FROM_FILE] {
        assert!(!status.contains(secret), "{status}");
        assert!(!String::from_utf8_lossy(&run.stderr).contains(secret));
        let leaks = files_holding(home.path(), secret);
        assert!(leaks.is_empty(), "{secret} is kept in {leaks:?}");
    }
}

#[test]
fn a_secret_that_cannot_be_read_fails_the_run_before_any_step() {
    let (home, work) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let yaml = "secrets:\n  - name: TOKEN\n    provider: env\n    key: NOT_SET_ANYWHERE\nsteps:\n  - name: a\n    command: echo ran\n";
    std::fs::write(work.path().join("missing.yaml"), yaml).unwrap();
    let run = trellis(home.path(), work.path(), &["start", "-q", "missing.yaml"]);
    assert_eq!(run.status.code(), Some(1));
    let status = trellis(home.path(), work.path(), &["status", "missing", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["status"], "failed");
    assert_eq!(
        status["error"],
        "secret `TOKEN`: environment variable `NOT_SET_ANYWHERE` is not set"
    );
    assert_eq!(status["steps"][0]["status"], "not_started");
}
