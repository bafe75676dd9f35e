//! `mail` steps (`action: mail.send`, `type: mail`) and the run's own notifications,
//! sent over SMTP with lettre. The server is the DAG's `smtp:` section (or the config
//! file's `executors.mail.smtp`), laid under the step's `with:` as `smtp`: `host`,
//! `username`, `password`, `tls` — `starttls` (required), `tls` (implicit), `none`, or by
//! default STARTTLS when the server offers it — `port` (by default 465 for `tls`, 587 for
//! `starttls`, else 25), and `ca_file` / `skip_tls_verify` for a private or self-signed
//! server (a `ca_file` names the CA, not a server certificate that is its own CA: rustls
//! refuses those). As in Dagu, the message is sent as HTML (line breaks kept) unless it
//! already is an HTML document.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::Outcome;
use crate::inproc::{Action, Output};
use crate::seam::{BoxFuture, StepRequest};
use crate::ssh_conn::from_map;

/// An SMTP server (Dagu's `smtp:` keys, v1 spellings too).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Smtp {
    pub host: Option<String>,
    #[serde(default, deserialize_with = "port")]
    pub port: Option<u16>,
    #[serde(alias = "user")]
    pub username: Option<String>,
    pub password: Option<String>,
    /// `starttls`, `tls`, `none` (default: STARTTLS when offered; TLS on port 465).
    pub tls: Option<String>,
    pub ca_file: Option<String>,
    #[serde(default, alias = "skipTLSVerify")]
    pub skip_tls_verify: bool,
}

fn port<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    use serde::de::Error;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(s) if s.contains("${") || s.is_empty() => Ok(None),
        v => v
            .as_u64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            .and_then(|p| u16::try_from(p).ok())
            .map(Some)
            .ok_or_else(|| D::Error::custom(format!("port: {v} is not a port"))),
    }
}

impl Smtp {
    /// Checks the section (DAG-level `smtp:`).
    pub fn parse(value: &serde_json::Value) -> Result<Smtp, String> {
        let smtp: Smtp = from_map(value).map_err(|e| format!("smtp: {e}"))?;
        match smtp.tls.as_deref() {
            None | Some("starttls" | "tls" | "none" | "auto") => Ok(smtp),
            Some(other) => Err(format!(
                "smtp.tls: `{other}` is not starttls, tls, none or auto"
            )),
        }
    }

    fn transport(&self) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
        let host = self
            .host
            .as_deref()
            .filter(|h| !h.is_empty())
            .ok_or("no SMTP server: give the DAG an `smtp:` section with `host`")?;
        // The usual port of each mode: 465 for implicit TLS, 587 for submission.
        let port = self.port.unwrap_or(match self.tls.as_deref() {
            Some("tls") => 465,
            Some("starttls") => 587,
            _ => 25,
        });
        let mut params = TlsParameters::builder(host.to_string())
            .dangerous_accept_invalid_certs(self.skip_tls_verify);
        if let Some(file) = &self.ca_file {
            let pem = std::fs::read(file).map_err(|e| format!("smtp.ca_file {file}: {e}"))?;
            let cert =
                Certificate::from_pem(&pem).map_err(|e| format!("smtp.ca_file {file}: {e}"))?;
            params = params.add_root_certificate(cert);
        }
        let params = params
            .build_rustls()
            .map_err(|e| format!("smtp TLS: {e}"))?;
        // A password never crosses the network in clear: with credentials, STARTTLS is
        // required unless the server is this machine or `tls: none` says otherwise (Go's
        // PlainAuth, which Dagu uses, refuses the same).
        let guarded = self.username.as_deref().is_some_and(|u| !u.is_empty())
            && !matches!(host, "localhost" | "127.0.0.1" | "::1");
        let tls = match (self.tls.as_deref(), port) {
            (Some("none"), _) => Tls::None,
            (Some("tls"), _) | (None | Some("auto"), 465) => Tls::Wrapper(params),
            (Some("starttls"), _) => Tls::Required(params),
            _ if guarded => Tls::Required(params),
            _ => Tls::Opportunistic(params),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(port)
            .tls(tls)
            .timeout(Some(Duration::from_secs(60)));
        if let Some(user) = self.username.as_deref().filter(|u| !u.is_empty()) {
            let password = self.password.clone().unwrap_or_default();
            builder = builder.credentials(Credentials::new(user.to_string(), password));
        }
        Ok(builder.build())
    }
}

/// One message.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mail {
    pub from: Option<String>,
    #[serde(default, deserialize_with = "addresses")]
    pub to: Vec<String>,
    #[serde(default)]
    pub subject: String,
    #[serde(default, alias = "body")]
    pub message: String,
    #[serde(default)]
    pub attachments: Vec<String>,
    /// The server, laid in from the DAG's `smtp:`.
    pub smtp: Option<serde_json::Value>,
}

/// `a@x`, `a@x, b@y` or a list.
fn addresses<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    use serde::de::Error;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => Ok(Vec::new()),
        serde_json::Value::String(s) => Ok(s
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(String::from)
            .collect()),
        serde_json::Value::Array(items) => items
            .into_iter()
            .map(|i| match i {
                serde_json::Value::String(s) => Ok(s.trim().to_string()),
                other => Err(D::Error::custom(format!("to: {other} is not an address"))),
            })
            .collect(),
        other => Err(D::Error::custom(format!(
            "to: {other} is not an address or a list"
        ))),
    }
}

fn mailbox(text: &str, what: &str) -> Result<Mailbox, String> {
    text.parse()
        .map_err(|e| format!("{what}: `{text}` is not a mail address: {e}"))
}

/// The body as Dagu sends it: HTML, with line breaks kept unless it is HTML already.
fn html(message: &str) -> String {
    let lower = message.trim_start().to_ascii_lowercase();
    if lower.starts_with("<!doctype html") || lower.starts_with("<html") {
        return message.to_string();
    }
    message.replace("\r\n", "\n").replace('\n', "<br />")
}

impl Mail {
    pub fn parse(value: &serde_json::Value) -> Result<Mail, String> {
        if !value.is_object() {
            return Err("a mail step needs `with:` (from, to, subject, message)".into());
        }
        let mail: Mail = from_map(value)?;
        if let Some(smtp) = &mail.smtp {
            Smtp::parse(smtp)?;
        }
        for to in mail.to.iter().filter(|t| !t.contains("${")) {
            mailbox(to, "to")?;
        }
        if let Some(from) = mail.from.as_deref().filter(|f| !f.contains("${")) {
            mailbox(from, "from")?;
        }
        Ok(mail)
    }

    fn message(&self, base: Option<&Path>) -> Result<Message, String> {
        let from = self.from.as_deref().ok_or("no sender: give `from`")?;
        let mut builder = Message::builder()
            .from(mailbox(from, "from")?)
            .subject(self.subject.clone());
        if self.to.is_empty() {
            return Err("no valid recipients specified".into());
        }
        for to in &self.to {
            builder = builder.to(mailbox(to, "to")?);
        }
        let body = SinglePart::builder()
            .header(ContentType::TEXT_HTML)
            .body(html(&self.message));
        let mut parts = MultiPart::mixed().singlepart(body);
        for path in &self.attachments {
            let path = crate::seam::under(base, path);
            let bytes =
                std::fs::read(&path).map_err(|e| format!("attachment {}: {e}", path.display()))?;
            let name = path
                .file_name()
                .map_or_else(|| "attachment".into(), |n| n.to_string_lossy().into_owned());
            let kind = ContentType::parse("application/octet-stream").map_err(|e| e.to_string())?;
            parts = parts.singlepart(Attachment::new(name).body(bytes, kind));
        }
        builder
            .multipart(parts)
            .map_err(|e| format!("cannot build the mail: {e}"))
    }

    /// Sends it through `smtp` (or its own `smtp`).
    pub async fn send(&self, smtp: Option<&Smtp>, base: Option<&Path>) -> Result<(), String> {
        let own = self.smtp.as_ref().map(Smtp::parse).transpose()?;
        let smtp = own.as_ref().or(smtp).ok_or(
            "no SMTP server: give the DAG an `smtp:` section (host, port, username, password)",
        )?;
        let message = self.message(base)?;
        smtp.transport()?
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| {
                format!(
                    "sending mail through {}: {}",
                    smtp.host.as_deref().unwrap_or(""),
                    describe(&e)
                )
            })
    }
}

/// The error and its causes, each said once (lettre's text already holds its source's).
fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(&format!(": {said}"));
        }
        source = cause.source();
    }
    if text.contains("CaUsedAsEndEntity") {
        // A self-signed certificate made with `openssl req -x509` is a CA certificate, which
        // rustls never accepts as a server's own, even when `ca_file` names it.
        text.push_str(
            " (the server's certificate is a CA certificate: issue the server its own \
             certificate, signed by that CA, or set skip_tls_verify)",
        );
    }
    text
}

/// The run's notifications: `mail_on: {failure, success}`, and the mail sent for each
/// (`error_mail` / `info_mail`: `from`, `to`, `prefix`, `attach_logs`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notice {
    pub from: Option<String>,
    #[serde(default, deserialize_with = "addresses")]
    pub to: Vec<String>,
    #[serde(default)]
    pub prefix: String,
    #[serde(default, alias = "attachLogs")]
    pub attach_logs: bool,
}

/// When the run mails (`mail_on`).
#[derive(Clone, Copy, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailOn {
    #[serde(default)]
    pub failure: bool,
    #[serde(default)]
    pub success: bool,
    /// Dagu's `wait` (a run waiting for approval): accepted, mailed as `info_mail`.
    #[serde(default)]
    pub wait: bool,
}

/// Checks `mail_on`, `error_mail` or `info_mail`.
pub fn check_notice(key: &str, value: &serde_json::Value) -> Result<(), String> {
    let checked = if key == "mail_on" {
        from_map::<MailOn>(value).map(|_| ())
    } else {
        from_map::<Notice>(value).map(|_| ())
    };
    checked.map_err(|e| format!("{key}: {e}"))
}

pub(crate) struct MailStep;

impl Action for MailStep {
    fn kind(&self) -> &'static str {
        "mail"
    }

    fn check(&self, config: &serde_json::Value) -> Result<(), String> {
        Mail::parse(config).map(|_| ())
    }

    fn run(
        self: Arc<Self>,
        req: StepRequest,
        mut out: Output,
        _cancel: CancellationToken,
    ) -> BoxFuture<'static, Outcome> {
        Box::pin(async move {
            let mail = match Mail::parse(&req.config) {
                Ok(mail) => mail,
                Err(why) => return out.fail(why),
            };
            let head = format!(
                "sending email\n-----\nfrom: {}\nto: {}\nsubject: {}\nmessage: {}\n-----\n",
                mail.from.as_deref().unwrap_or(""),
                mail.to.join(", "),
                mail.subject,
                mail.message
            );
            let _ = out.out(head.as_bytes());
            match mail.send(None, req.working_dir.as_deref()).await {
                Ok(()) => {
                    let _ = out.out(b"sending email succeed.\n");
                    Outcome::Exited(0)
                }
                Err(why) => out.fail(why),
            }
        })
    }
}
