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

/// A plain HTTP server for the http example: `/items.json` answers a list, anything
/// else `{"ok": true}`. Each connection gets one answer.
fn http_server() -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 8192];
            let n = stream.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]);
            let body = if head.contains("/items.json") {
                r#"{"items":[{"name":"ada"},{"name":"bob"}]}"#
            } else {
                r#"{"ok":true}"#
            };
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    base
}

/// The step actions' examples, each against its real server: HTTP, sshd, an SMTP sink.
#[test]
fn action_examples_run_against_real_servers() {
    let base = http_server();
    let sshd = trellis_testdb::sshd::Sshd::start().expect("sshd (scripts/test installs it)");
    let smtp =
        trellis_testdb::smtp::Smtp::start().expect("the SMTP sink (scripts/test installs it)");
    let http = format!("BASE={base}");
    let ssh = format!(
        "HOST=127.0.0.1 PORT={} USER={} KEY={} KNOWN_HOSTS={}",
        sshd.port(),
        sshd.user(),
        sshd.key_path().display(),
        sshd.known_hosts().display()
    );
    let mail = format!("SMTP_HOST=127.0.0.1 SMTP_PORT={}", smtp.port());
    let cases: &[(&str, Option<&str>)] = &[
        ("actions/http.yaml", Some(&http)),
        ("actions/jq.yaml", None),
        ("actions/state.yaml", None),
        ("actions/run_and_actions.yaml", None),
        ("actions/ssh.yaml", Some(&ssh)),
        ("actions/mail.yaml", Some(&mail)),
    ];
    let mut wrong = Vec::new();
    for (example, params) in cases {
        let (code, run) = run(example, *params);
        if code != 0 || run["status"] != "succeeded" {
            wrong.push(format!(
                "{example}: exit {code}, status {} (error {})",
                run["status"], run["error"]
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The mail step's message, then the run's own `info_mail` once it succeeded.
    let mails = smtp
        .wait_for(2, std::time::Duration::from_secs(30))
        .expect("two mails");
    assert!(
        mails[0].raw.contains("Subject: Nightly load"),
        "{}",
        mails[0].raw
    );
    assert!(
        mails[1]
            .raw
            .contains("Subject: [done] mail-actions (succeeded)"),
        "{}",
        mails[1].raw
    );
}
