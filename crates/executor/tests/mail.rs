//! `mail` steps against a real SMTP server (`trellis_testdb::smtp`, aiosmtpd on a
//! loopback port), each run through the executor seam as the engine runs it: `start`,
//! then `wait`. The sink stores every message it receives, raw; the tests read them back.
//! Skipped (with a message) where aiosmtpd is not installed.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use trellis_executor::{Outcome, Registry, StepRequest, Work};
use trellis_testdb::smtp::{Message, Smtp};

fn sink(start: impl FnOnce() -> std::io::Result<Smtp>) -> Option<Smtp> {
    if !Smtp::available() {
        eprintln!("skipped: aiosmtpd is not installed (see crates/testdb/SETUP.md)");
        return None;
    }
    Some(start().expect("start the SMTP sink"))
}

fn request(dir: &Path, config: Value) -> StepRequest {
    StepRequest {
        name: format!("mail-test-{}", dir.display()),
        work: Work::Default,
        env: Vec::new(),
        working_dir: Some(dir.to_path_buf()),
        config,
        stdout: dir.join("stdout.log"),
        stderr: dir.join("stderr.log"),
        timeout: None,
        stop_signal: Signal::SIGTERM,
        grace: Duration::from_secs(1),
        mask: None,
        labels: BTreeMap::new(),
        record: None,
    }
}

/// Runs `req` to its end through the `mail` executor; its outcome, stdout and stderr.
async fn run(req: &StepRequest) -> (Outcome, String, String) {
    let registry = Registry::builtin();
    let mail = registry.get("mail").expect("a built-in executor");
    let handle = mail.start(req).await.expect("start");
    let outcome = mail.wait(&handle, req, CancellationToken::new()).await;
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    (outcome, read(&req.stdout), read(&req.stderr))
}

/// The one message the sink holds (the step has ended, so it is stored already).
fn only_message(smtp: &Smtp) -> Message {
    let mut all = smtp
        .wait_for(1, Duration::from_secs(10))
        .expect("a stored message");
    assert_eq!(all.len(), 1, "{all:?}");
    all.remove(0)
}

fn plain(smtp: &Smtp) -> Value {
    json!({"host": "127.0.0.1", "port": smtp.port(), "tls": "none"})
}

fn failed_reason(outcome: &Outcome) -> &str {
    match outcome {
        Outcome::Failed { reason, .. } => reason,
        other => panic!("the step should fail: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mail_reaches_both_recipients_with_its_attachment() {
    let Some(smtp) = sink(Smtp::start) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    // Not text: sent as base64, which the test decodes back.
    let attached = b"\x00\x9f\xffa,b\n1,2\n";
    std::fs::write(dir.path().join("report.bin"), attached).expect("write");
    let config = json!({
        "from": "Trellis <trellis@example.com>",
        "to": ["ops@example.com", "dev@example.org"],
        "subject": "Nightly report ✓",
        "message": "Line one\nLine two",
        "attachments": ["report.bin"],
        "smtp": plain(&smtp),
    });
    let (outcome, stdout, stderr) = run(&request(dir.path(), config)).await;
    assert_eq!(outcome, Outcome::Exited(0), "stderr: {stderr}");
    assert_eq!(
        stdout,
        "sending email\n-----\nfrom: Trellis <trellis@example.com>\n\
         to: ops@example.com, dev@example.org\nsubject: Nightly report ✓\n\
         message: Line one\nLine two\n-----\nsending email succeed.\n"
    );

    let message = only_message(&smtp);
    assert_eq!(message.envelope["mail_from"], "trellis@example.com");
    assert_eq!(
        message.envelope["rcpt_tos"],
        json!(["ops@example.com", "dev@example.org"])
    );
    let raw = &message.raw;
    assert!(
        raw.contains("To: ops@example.com, dev@example.org"),
        "{raw}"
    );
    assert!(raw.contains("From: Trellis <trellis@example.com>"), "{raw}");
    // A non-ASCII word is encoded (RFC 2047): base64 of "✓".
    assert!(
        raw.contains("Subject: Nightly report =?utf-8?b?4pyT?=\r\n"),
        "{raw}"
    );
    assert!(
        raw.contains("Content-Type: text/html; charset=utf-8"),
        "{raw}"
    );
    assert!(raw.contains("Line one<br />Line two"), "{raw}");
    assert!(raw.contains("filename=\"report.bin\""), "{raw}");
    let encoded = base64::engine::general_purpose::STANDARD.encode(attached);
    assert!(
        raw.contains(&format!("base64\r\n\r\n{encoded}\r\n")),
        "the attachment's bytes, base64: {raw}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipients_may_be_one_comma_separated_string() {
    let Some(smtp) = sink(Smtp::start) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let config = json!({
        "from": "trellis@example.com",
        "to": "ops@example.com, dev@example.org",
        "subject": "Done",
        "message": "<!DOCTYPE html><html><body><p>Done</p>\n</body></html>",
        "smtp": plain(&smtp),
    });
    let (outcome, _, stderr) = run(&request(dir.path(), config)).await;
    assert_eq!(outcome, Outcome::Exited(0), "stderr: {stderr}");
    let message = only_message(&smtp);
    assert_eq!(
        message.envelope["rcpt_tos"],
        json!(["ops@example.com", "dev@example.org"])
    );
    let raw = &message.raw;
    assert!(raw.contains("Subject: Done\r\n"), "{raw}");
    // An HTML document is sent as it is: no <br /> put in.
    assert!(raw.contains("<p>Done</p>\r\n</body>"), "{raw}");
    assert!(!raw.contains("<br />"), "{raw}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_right_credentials_are_accepted() {
    let Some(smtp) = sink(|| Smtp::start_with_auth("alice", "pa55")) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = plain(&smtp);
    server["username"] = json!("alice");
    server["password"] = json!("pa55");
    let config = json!({"from": "a@example.com", "to": "b@example.com", "subject": "s",
                        "message": "m", "smtp": server});
    let (outcome, _, stderr) = run(&request(dir.path(), config)).await;
    assert_eq!(outcome, Outcome::Exited(0), "stderr: {stderr}");
    assert_eq!(only_message(&smtp).envelope["auth_user"], "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_fail_with_the_servers_answer() {
    let Some(smtp) = sink(|| Smtp::start_with_auth("alice", "pa55")) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = plain(&smtp);
    server["username"] = json!("alice");
    server["password"] = json!("wrong");
    let config = json!({"from": "a@example.com", "to": "b@example.com", "subject": "s",
                        "message": "m", "smtp": server});
    let (outcome, stdout, stderr) = run(&request(dir.path(), config)).await;
    let reason = failed_reason(&outcome);
    assert!(reason.contains("535"), "{reason}");
    assert!(stderr.contains("535"), "{stderr}");
    assert!(!stdout.contains("succeed"), "{stdout}");
    assert!(smtp.messages().is_empty(), "nothing was sent");
}

/// aiosmtpd requiring STARTTLS, with a certificate for 127.0.0.1 issued by a private CA
/// (`ca.pem`), as a company's mail relay has. The sink of `trellis_testdb` serves a
/// self-signed CA certificate as its own, which rustls refuses whatever the CA file says
/// (see `a_ca_certificate_serving_as_its_own_server_certificate_is_explained`).
struct PrivateCaServer {
    dir: tempfile::TempDir,
    child: std::process::Child,
    port: u16,
}

const STARTTLS_SERVER: &str = r#"
import asyncio, os, ssl, sys
from aiosmtpd.smtp import SMTP

base = sys.argv[1]


class Sink:
    async def handle_DATA(self, server, session, envelope):
        tmp = os.path.join(base, ".got.tmp")
        with open(tmp, "wb") as f:
            f.write(envelope.original_content)
        os.rename(tmp, os.path.join(base, "got.eml"))
        return "250 OK"


context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(os.path.join(base, "cert.pem"), os.path.join(base, "key.pem"))


async def main():
    server = await asyncio.get_running_loop().create_server(
        lambda: SMTP(Sink(), tls_context=context, require_starttls=True, decode_data=False),
        "127.0.0.1", 0)
    with open(os.path.join(base, ".port.tmp"), "w") as f:
        f.write(str(server.sockets[0].getsockname()[1]))
    os.rename(os.path.join(base, ".port.tmp"), os.path.join(base, "port"))
    await server.serve_forever()


asyncio.run(main())
"#;

fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ca.pem` (a CA) and, signed by it, `cert.pem` / `key.pem` for 127.0.0.1 (not a CA).
fn issue_certificates(d: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let ca = ["req", "-x509", "-days", "2", "-subj", "/CN=trellis test CA"];
    let ca_out = ["-keyout", "ca.key", "-out", "ca.pem"];
    openssl(d, &[&ca[..], &ec, &ca_out].concat());
    let csr = [
        "req",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "key.pem",
        "-out",
        "req.csr",
    ];
    openssl(d, &[&csr[..], &ec].concat());
    let ext = "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n";
    std::fs::write(d.join("ext.cnf"), ext).expect("write");
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "req.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "cert.pem",
        ],
    );
}

impl PrivateCaServer {
    fn start() -> PrivateCaServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        issue_certificates(d);
        std::fs::write(d.join("server.py"), STARTTLS_SERVER).expect("write");
        let child = std::process::Command::new(trellis_testdb::smtp::venv().join("bin/python"))
            .arg(d.join("server.py"))
            .arg(d)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(d.join("server.log")).expect("log"))
            .spawn()
            .expect("python");
        let mut server = PrivateCaServer {
            dir,
            child,
            port: 0,
        };
        server.port = server.wait_port();
        server
    }

    /// The port the server bound, once it listens (it writes the file after binding).
    fn wait_port(&mut self) -> u16 {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(port) = std::fs::read_to_string(self.dir.path().join("port")) {
                return port.trim().parse().expect("a port");
            }
            let log = std::fs::read_to_string(self.dir.path().join("server.log"));
            let exited = self.child.try_wait().expect("try_wait");
            assert!(exited.is_none(), "the server exited: {log:?}");
            assert!(
                std::time::Instant::now() < deadline,
                "the server never listened: {log:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn received(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join("got.eml")).ok()
    }
}

impl Drop for PrivateCaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_with_the_servers_ca_file_works() {
    if !Smtp::available() {
        eprintln!("skipped: aiosmtpd is not installed (see crates/testdb/SETUP.md)");
        return;
    }
    let server = PrivateCaServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let smtp = json!({"host": "127.0.0.1", "port": server.port, "tls": "starttls",
                      "ca_file": server.dir.path().join("ca.pem")});
    let config = json!({"from": "a@example.com", "to": ["b@example.com"], "subject": "tls",
                        "message": "over TLS", "smtp": smtp});
    let (outcome, _, stderr) = run(&request(dir.path(), config)).await;
    assert_eq!(outcome, Outcome::Exited(0), "stderr: {stderr}");
    // The server takes no mail before STARTTLS: what it received came over TLS.
    let received = server.received().expect("the message");
    assert!(received.contains("over TLS"), "{received}");

    // The same server without the CA file: its certificate is from an unknown issuer.
    let config = json!({"from": "a@example.com", "to": ["b@example.com"], "subject": "tls",
                        "message": "over TLS",
                        "smtp": {"host": "127.0.0.1", "port": server.port, "tls": "starttls"}});
    let (outcome, _, _) = run(&request(dir.path(), config)).await;
    let reason = failed_reason(&outcome);
    assert!(reason.contains("UnknownIssuer"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_certificate_serving_as_its_own_server_certificate_is_explained() {
    let Some(smtp) = sink(Smtp::start_tls) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let server = json!({"host": "127.0.0.1", "port": smtp.port(), "tls": "starttls",
                        "ca_file": smtp.cert_path()});
    let config = json!({"from": "a@example.com", "to": ["b@example.com"], "subject": "tls",
                        "message": "over TLS", "smtp": server});
    let (outcome, _, _) = run(&request(dir.path(), config)).await;
    let reason = failed_reason(&outcome);
    assert!(
        reason.contains("the server's certificate is a CA certificate"),
        "{reason}"
    );
    assert_eq!(
        reason.matches("invalid peer certificate").count(),
        1,
        "said once: {reason}"
    );
    assert!(smtp.messages().is_empty(), "nothing was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_without_the_ca_file_fails_on_the_certificate() {
    let Some(smtp) = sink(Smtp::start_tls) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let server = json!({"host": "127.0.0.1", "port": smtp.port(), "tls": "starttls"});
    let config = json!({"from": "a@example.com", "to": ["b@example.com"], "subject": "tls",
                        "message": "over TLS", "smtp": server});
    let (outcome, _, _) = run(&request(dir.path(), config)).await;
    let reason = failed_reason(&outcome);
    assert!(reason.to_lowercase().contains("certificate"), "{reason}");
    assert!(smtp.messages().is_empty(), "nothing was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_tls_verify_accepts_a_self_signed_certificate() {
    let Some(smtp) = sink(Smtp::start_tls) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let server = json!({"host": "127.0.0.1", "port": smtp.port(), "tls": "starttls",
                        "skip_tls_verify": true});
    let config = json!({"from": "a@example.com", "to": ["b@example.com"], "subject": "tls",
                        "message": "unverified", "smtp": server});
    let (outcome, _, stderr) = run(&request(dir.path(), config)).await;
    assert_eq!(outcome, Outcome::Exited(0), "stderr: {stderr}");
    assert!(only_message(&smtp).raw.contains("unverified"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_smtp_server_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = json!({"from": "a@example.com", "to": "b@example.com", "subject": "s",
                        "message": "m"});
    let (outcome, _, stderr) = run(&request(dir.path(), config)).await;
    let reason = failed_reason(&outcome);
    assert!(
        reason.contains("no SMTP server") && reason.contains("smtp:"),
        "{reason}"
    );
    assert!(stderr.contains("no SMTP server"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_attachment_is_a_clear_error() {
    let Some(smtp) = sink(Smtp::start) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let config = json!({"from": "a@example.com", "to": "b@example.com", "subject": "s",
                        "message": "m", "attachments": ["nowhere.txt"], "smtp": plain(&smtp)});
    let (outcome, _, _) = run(&request(dir.path(), config)).await;
    let reason = failed_reason(&outcome);
    assert!(reason.contains("nowhere.txt"), "{reason}");
    assert!(smtp.messages().is_empty(), "nothing was sent");
}

#[test]
fn check_rejects_unknown_keys_and_bad_values() {
    let registry = Registry::builtin();
    let mail = registry.get("mail").expect("mail");
    let good = json!({"from": "a@example.com", "to": "b@example.com", "subject": "s",
                      "message": "m", "smtp": {"host": "h", "port": "587", "tls": "starttls"}});
    mail.check(&good).expect("a good config");
    let with = |key: &str, value: Value| {
        let mut config = good.clone();
        config[key] = value;
        config
    };
    let cases = [
        (with("cc", json!("c@example.com")), "cc"),
        (with("to", json!(5)), "to"),
        (with("to", json!("not an address")), "not an address"),
        (with("from", json!("nobody")), "from"),
        (with("attachments", json!("one.txt")), "attachments"),
        (with("subject", json!(["a", "list"])), "subject"),
        (with("smtp", json!({"host": "h", "tls": "ssl"})), "ssl"),
        (with("smtp", json!({"host": "h", "port": "smtp"})), "port"),
        (
            with("smtp", json!({"host": "h", "pasword": "x"})),
            "pasword",
        ),
        (Value::Null, "from"),
    ];
    for (config, wanted) in cases {
        let err = mail.check(&config).expect_err(&config.to_string());
        assert!(err.contains(wanted), "{config}: {err}");
    }
}
