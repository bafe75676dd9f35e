//! A throwaway SMTP sink for tests of mail notifications: aiosmtpd (PyPI) on 127.0.0.1 and a
//! free port, accepting every message and storing it in a maildir of its temp dir as
//! `<unix-ns>-<seq>.eml` (the raw bytes received) with a `.json` sidecar holding the envelope
//! (`mail_from`, `rcpt_tos` (Bcc included), `auth_user`). Both are written under a dot-temp
//! name and renamed, the sidecar first: a reader never sees half a message.
//!
//! AUTH PLAIN and LOGIN are offered without TLS and never required; any credentials pass,
//! unless started with [`Smtp::start_with_auth`] (then wrong ones get 535). [`Smtp::start_tls`]
//! also offers STARTTLS (not required) with a self-signed certificate for 127.0.0.1.
//!
//! aiosmtpd lives in a venv at [`venv`] (`$HOME/.cache/trellis-ci/py-smtp`), which
//! `scripts/test` creates. Dropped, the sink is killed and its dir deleted.

use std::fs;
use std::io::{self, BufRead, BufReader};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{failure, run};

/// The aiosmtpd version `scripts/test` installs.
pub const AIOSMTPD: &str = "aiosmtpd==1.4.6";

pub struct Smtp {
    dir: tempfile::TempDir,
    child: Child,
    port: u16,
}

/// One stored message: the raw bytes as received (lossily UTF-8) and its envelope sidecar.
#[derive(Clone, Debug)]
pub struct Message {
    pub raw: String,
    /// `{"mail_from": ..., "rcpt_tos": [...], "auth_user": null | "..."}`
    pub envelope: serde_json::Value,
}

/// The venv holding aiosmtpd: `$HOME/.cache/trellis-ci/py-smtp`.
pub fn venv() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    home.join(".cache/trellis-ci/py-smtp")
}

impl Smtp {
    /// The venv exists and imports aiosmtpd.
    pub fn available() -> bool {
        check_venv().is_ok()
    }

    /// A sink accepting any (or no) credentials.
    pub fn start() -> io::Result<Smtp> {
        Self::launch(None, false)
    }

    /// A sink that accepts AUTH only with these credentials (535 otherwise); mail without
    /// AUTH is still accepted.
    pub fn start_with_auth(user: &str, password: &str) -> io::Result<Smtp> {
        Self::launch(Some((user, password)), false)
    }

    /// A sink that also offers STARTTLS, with a self-signed certificate for 127.0.0.1
    /// ([`Smtp::cert_path`]); TLS is not required.
    pub fn start_tls() -> io::Result<Smtp> {
        Self::launch(None, true)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where the messages are stored.
    pub fn maildir(&self) -> PathBuf {
        self.dir.path().join("mail")
    }

    /// The certificate [`Smtp::start_tls`] serves (PEM): a client's CA file.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    /// The sink's own log (session errors), for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("sink.log")).unwrap_or_default()
    }

    /// Every message stored so far, oldest first (sorted by name).
    pub fn messages(&self) -> Vec<Message> {
        let maildir = self.maildir();
        let Ok(entries) = fs::read_dir(&maildir) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.') && n.ends_with(".eml"))
            .collect();
        names.sort();
        names
            .iter()
            .filter_map(|name| {
                let raw = fs::read(maildir.join(name)).ok()?;
                let sidecar = maildir.join(name.replace(".eml", ".json"));
                let envelope = serde_json::from_slice(&fs::read(sidecar).ok()?).ok()?;
                Some(Message {
                    raw: String::from_utf8_lossy(&raw).into_owned(),
                    envelope,
                })
            })
            .collect()
    }

    /// Waits until at least `n` messages are stored; returns them all.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> io::Result<Vec<Message>> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= n {
                return Ok(messages);
            }
            if Instant::now() > deadline {
                return Err(failure(
                    &format!(
                        "{} of {n} messages in {:?} after {timeout:?}",
                        messages.len(),
                        self.maildir()
                    ),
                    Some(&self.dir.path().join("sink.log")),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn launch(auth: Option<(&str, &str)>, tls: bool) -> io::Result<Smtp> {
        let python = check_venv()?;
        let dir = tempfile::Builder::new().prefix("trellis-smtp-").tempdir()?;
        let base = dir.path();
        fs::create_dir(base.join("mail"))?;
        fs::write(base.join("sink.py"), SINK)?;
        let mut cmd = Command::new(python);
        cmd.arg(base.join("sink.py"))
            .arg(base)
            .env_remove("SMTP_AUTH_USER")
            .env_remove("SMTP_AUTH_PASSWORD")
            .env("PYTHONDONTWRITEBYTECODE", "1");
        if let Some((user, password)) = auth {
            cmd.env("SMTP_AUTH_USER", user)
                .env("SMTP_AUTH_PASSWORD", password);
        }
        if tls {
            run(
                Command::new("openssl")
                    .args([
                        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "7",
                    ])
                    .args(["-subj", "/CN=127.0.0.1"])
                    .args(["-addext", "subjectAltName=IP:127.0.0.1"])
                    .arg("-keyout")
                    .arg(base.join("key.pem"))
                    .arg("-out")
                    .arg(base.join("cert.pem"))
                    .stdin(Stdio::null()),
                "openssl req (the STARTTLS certificate)",
                None,
            )?;
            cmd.arg("tls");
        }
        let log = base.join("sink.log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?)
            .spawn()?;
        let mut smtp = Smtp {
            dir,
            child,
            port: 0,
        };
        smtp.wait_ready()?;
        Ok(smtp)
    }

    /// The sink writes the port it bound to `port`; ready once a connection gets its `220`.
    fn wait_ready(&mut self) -> io::Result<()> {
        let base = self.dir.path().to_path_buf();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.port == 0 {
                let port = fs::read_to_string(base.join("port")).unwrap_or_default();
                self.port = port.trim().parse().unwrap_or(0);
            }
            if self.port != 0 && greeting(self.port).is_ok_and(|g| g.starts_with("220")) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                return Err(failure(
                    &format!("the SMTP sink exited with {status}"),
                    Some(&base.join("sink.log")),
                ));
            }
            if Instant::now() > deadline {
                return Err(failure(
                    "the SMTP sink sent no 220 greeting in 10 s",
                    Some(&base.join("sink.log")),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The venv's python, once it imports aiosmtpd.
fn check_venv() -> io::Result<PathBuf> {
    let venv = venv();
    let python = venv.join("bin/python");
    let ok = Command::new(&python)
        .args(["-c", "import aiosmtpd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Ok(python);
    }
    let v = venv.display();
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "aiosmtpd is not installed in {v}: run scripts/test, or \
             `python3 -m venv {v} && {v}/bin/pip install {AIOSMTPD}`"
        ),
    ))
}

/// The first line the server sends.
fn greeting(port: u16) -> io::Result<String> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let _ = io::Write::write_all(&mut &stream, b"QUIT\r\n");
    Ok(line)
}

/// The sink: `sink.py DIR [tls]`. Binds port 0 and writes the port to DIR/port.
const SINK: &str = r#"
import asyncio, itertools, json, logging, os, ssl, sys, time
from aiosmtpd.smtp import SMTP, AuthResult

base = sys.argv[1]
maildir = os.path.join(base, "mail")
tls = len(sys.argv) > 2 and sys.argv[2] == "tls"
want_user, want_pw = os.environ.get("SMTP_AUTH_USER"), os.environ.get("SMTP_AUTH_PASSWORD")
seq = itertools.count(1)
logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
# aiosmtpd warns about its own use of the deprecated login_data on every AUTH.
logging.getLogger("mail.log").addFilter(lambda r: "login_data is deprecated" not in r.getMessage())


def write(name, data):
    tmp = os.path.join(maildir, "." + name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, os.path.join(maildir, name))


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = want_user is None or (
        auth_data.login.decode() == want_user and auth_data.password.decode() == (want_pw or "")
    )
    # handled=False: aiosmtpd itself answers 535 when ok is False.
    return AuthResult(success=ok, handled=False, auth_data=auth_data)


class Sink:
    async def handle_DATA(self, server, session, envelope):
        name = f"{time.time_ns()}-{next(seq):06d}"
        login = getattr(session.auth_data, "login", None)
        meta = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "auth_user": login.decode() if login else None,
        }
        write(name + ".json", json.dumps(meta).encode())  # the sidecar first: .eml means complete
        write(name + ".eml", envelope.original_content)
        return "250 OK stored " + name


context = None
if tls:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(os.path.join(base, "cert.pem"), os.path.join(base, "key.pem"))


async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(Sink(), hostname="trellis-smtp-sink", enable_SMTPUTF8=True, decode_data=False,
                     authenticator=authenticator, auth_require_tls=False, auth_required=False,
                     tls_context=context, require_starttls=False),
        "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    with open(os.path.join(base, ".port.tmp"), "w") as f:
        f.write(str(port))
    os.rename(os.path.join(base, ".port.tmp"), os.path.join(base, "port"))
    await server.serve_forever()


asyncio.run(main())
"#;
