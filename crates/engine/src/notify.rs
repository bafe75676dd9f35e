//! The run's mail, sent once it has ended (Dagu's `mail_on`, `error_mail`, `info_mail`):
//! a failed run mails `error_mail` when `mail_on.failure` is set or a failed step has
//! `mail_on_error`; a run that succeeded mails `info_mail` when `mail_on.success` is set.
//! The subject is `<prefix> <dag> (<status>)`, the body a table of the steps, and with
//! `attach_logs` the steps' logs are attached. A mail that cannot be sent never changes
//! the run's status: the run records why as a warning.

use serde_json::Value;
use trellis_core::status::{RunRecord, Status};
use trellis_executor::mail::{Mail, MailOn, Notice, Smtp};

use crate::RunCtx;

/// Sends the mail the run's end calls for, if any.
pub(crate) async fn run_ended<S: ?Sized, E>(ctx: &RunCtx<S, E>, run: &mut RunRecord) {
    let options = &ctx.dag.executor_defaults;
    let read = |key: &str| {
        options
            .get(key)
            .map(|v| crate::output::expand_value(&ctx.scope, v))
    };
    let on: MailOn = read("mail_on")
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    let step_asked = ctx
        .dag
        .steps
        .iter()
        .zip(&run.steps)
        .any(|(s, r)| s.mail_on_error && r.status == Status::Failed);
    let key = match run.status {
        Status::Failed if on.failure || step_asked => "error_mail",
        Status::Succeeded if on.success => "info_mail",
        Status::Waiting if on.wait => "info_mail",
        _ => return,
    };
    let Some(notice) = read(key).and_then(|v| serde_json::from_value::<Notice>(v).ok()) else {
        run.warnings
            .push(format!("mail_on asks for mail but `{key}` is not set"));
        return;
    };
    let smtp = read("smtp").map(|v| Smtp::parse(&v)).transpose();
    let sent = match smtp {
        Ok(smtp) => mail(ctx, run, &notice).send(smtp.as_ref(), None).await,
        Err(e) => Err(e),
    };
    if let Err(why) = sent {
        tracing::warn!(run = %run.run_id, "{key} not sent: {why}");
        run.warnings.push(format!("{key} not sent: {why}"));
    }
}

fn mail<S: ?Sized, E>(ctx: &RunCtx<S, E>, run: &RunRecord, notice: &Notice) -> Mail {
    let status = run.status.to_string();
    let subject = format!("{} {} ({status})", notice.prefix, ctx.dag.name)
        .trim()
        .to_string();
    let mut rows = String::new();
    for step in &run.steps {
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&step.name),
            step.status,
            escape(step.error.as_deref().unwrap_or(""))
        ));
    }
    let message = format!(
        "<html><body><p>DAG <b>{}</b>, run {}: {status}{}</p><table border=\"1\"><tr><th>Step</th><th>Status</th><th>Error</th></tr>{rows}</table></body></html>",
        escape(&ctx.dag.name),
        run.run_id,
        run.error
            .as_deref()
            .map(|e| format!(" — {}", escape(e)))
            .unwrap_or_default(),
    );
    let attachments = if notice.attach_logs {
        logs(run)
    } else {
        Vec::new()
    };
    Mail {
        from: notice.from.clone(),
        to: notice.to.clone(),
        subject,
        message,
        attachments,
        smtp: None::<Value>,
    }
}

/// The steps' log files that exist and hold something.
fn logs(run: &RunRecord) -> Vec<String> {
    run.steps
        .iter()
        .flat_map(|s| [s.stdout.clone(), s.stderr.clone()])
        .flatten()
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
        .collect()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
