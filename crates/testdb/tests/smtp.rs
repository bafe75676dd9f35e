//! The throwaway SMTP sink, spoken to in raw SMTP over TCP.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use trellis_testdb::smtp::Smtp;

const WAIT: Duration = Duration::from_secs(5);

fn start(smtp: std::io::Result<Smtp>) -> Smtp {
    smtp.expect("the SMTP sink starts (scripts/test installs aiosmtpd)")
}

struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    /// Connects and reads the 220 greeting.
    fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut client = Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        };
        assert_eq!(client.reply().0, 220);
        client
    }

    /// One reply, its lines joined: `250-a`, `250 b` → (250, "a\nb").
    fn reply(&mut self) -> (u16, String) {
        let mut text = Vec::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            assert!(line.len() >= 3, "short reply line {line:?}");
            text.push(line.get(4..).unwrap_or("").to_string());
            if line.as_bytes().get(3) != Some(&b'-') {
                return (line[..3].parse().unwrap(), text.join("\n"));
            }
        }
    }

    fn send(&mut self, line: &str) -> (u16, String) {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .unwrap();
        self.reply()
    }

    fn expect(&mut self, line: &str, code: u16) -> String {
        let (got, text) = self.send(line);
        assert_eq!(got, code, "{line} -> {got} {text}");
        text
    }

    /// MAIL FROM, RCPT TO each, DATA with `body` (CRLF lines, no final dot).
    fn mail(&mut self, from: &str, to: &[&str], body: &str) {
        self.expect(&format!("MAIL FROM:<{from}>"), 250);
        for rcpt in to {
            self.expect(&format!("RCPT TO:<{rcpt}>"), 250);
        }
        self.expect("DATA", 354);
        self.expect(&format!("{body}\r\n."), 250);
    }
}

fn base64(data: &[u8]) -> String {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn a_message_is_stored_with_its_envelope() {
    let smtp = start(Smtp::start());
    let mut client = Client::connect(smtp.port());
    let ehlo = client.expect("EHLO client.test", 250);
    assert!(ehlo.contains("AUTH LOGIN PLAIN"), "{ehlo}");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    let body = "From: a@example.com\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nhello there";
    client.mail("a@example.com", &["b@example.com", "bcc@example.com"], body);
    client.expect("QUIT", 221);

    let messages = smtp.wait_for(1, WAIT).unwrap();
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert_eq!(m.raw, format!("{body}\r\n"));
    assert_eq!(
        m.envelope,
        serde_json::json!({
            "mail_from": "a@example.com",
            "rcpt_tos": ["b@example.com", "bcc@example.com"],
            "auth_user": null,
        })
    );
    let names: Vec<_> = std::fs::read_dir(smtp.maildir()).unwrap().collect();
    assert_eq!(names.len(), 2, "one .eml and one .json, no temp files");
}

#[test]
fn any_credentials_pass_by_default() {
    let smtp = start(Smtp::start());
    let mut client = Client::connect(smtp.port());
    client.expect("EHLO client.test", 250);
    client.expect("AUTH LOGIN", 334);
    client.expect(&base64(b"whoever"), 334);
    client.expect(&base64(b"whatever"), 235);
    client.mail("a@example.com", &["b@example.com"], "Subject: 1\r\n\r\none");
    client.mail("a@example.com", &["c@example.com"], "Subject: 2\r\n\r\ntwo");
    client.expect("QUIT", 221);

    let messages = smtp.wait_for(2, WAIT).unwrap();
    assert!(messages[0].raw.contains("Subject: 1"), "in order");
    assert!(messages[1].raw.contains("Subject: 2"), "in order");
    assert_eq!(messages[1].envelope["auth_user"], "whoever");
    assert_eq!(
        messages[1].envelope["rcpt_tos"],
        serde_json::json!(["c@example.com"])
    );
}

#[test]
fn wrong_credentials_get_535() {
    let smtp = start(Smtp::start_with_auth("alice", "s3cret"));
    let mut client = Client::connect(smtp.port());
    client.expect("EHLO client.test", 250);
    client.expect(&format!("AUTH PLAIN {}", base64(b"\0alice\0wrong")), 535);
    client.expect(&format!("AUTH PLAIN {}", base64(b"\0alice\0s3cret")), 235);
    client.mail(
        "alice@example.com",
        &["b@example.com"],
        "Subject: x\r\n\r\nx",
    );
    client.expect("QUIT", 221);
    let messages = smtp.wait_for(1, WAIT).unwrap();
    assert_eq!(messages[0].envelope["auth_user"], "alice");
    assert!(smtp.wait_for(2, Duration::from_millis(100)).is_err());
}

#[test]
fn starttls_is_offered_with_a_certificate_for_127_0_0_1() {
    let smtp = start(Smtp::start_tls());
    let mut client = Client::connect(smtp.port());
    let ehlo = client.expect("EHLO client.test", 250);
    assert!(ehlo.contains("STARTTLS"), "{ehlo}");
    client.expect("QUIT", 221);

    // A verifying TLS client trusts it with cert_path() as its CA (stdin at EOF: it
    // hangs up once the handshake is done).
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-brief",
            "-starttls",
            "smtp",
            "-verify_return_error",
        ])
        .args(["-verify_ip", "127.0.0.1", "-CAfile"])
        .arg(smtp.cert_path())
        .arg("-connect")
        .arg(format!("127.0.0.1:{}", smtp.port()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{}", smtp.log());
    assert!(stderr.contains("Verification: OK"), "{stderr}");
    assert!(
        stderr.contains("Peer certificate: CN = 127.0.0.1"),
        "{stderr}"
    );
}
