//! How problems and results are shown to a person or a program.

use std::io::IsTerminal;

use trellis_spec::diag::{self, Problem};

/// Exit code for invalid input: a bad file, bad params, bad flags.
pub const EXIT_INVALID: u8 = 2;
/// The configured database cannot be reached.
pub const EXIT_UNAVAILABLE: u8 = 3;

/// Renders problems for stderr, with colours when it is a terminal.
pub fn problems(name: &str, source: &str, problems: &[Problem]) -> String {
    if std::io::stderr().is_terminal() {
        let handler = miette::GraphicalReportHandler::new();
        diag::render_with(&handler, name, source, problems)
    } else {
        diag::render_plain(name, source, problems)
    }
}

/// One problem as a JSON object, for `--json`.
pub fn problem_json(name: &str, source: &str, p: &Problem) -> serde_json::Value {
    let (line, column) = p.line_col(source);
    serde_json::json!({
        "file": name,
        "line": line,
        "column": column,
        "severity": if p.warning { "warning" } else { "error" },
        "code": p.code.as_str(),
        "message": p.message,
        "help": p.help,
    })
}

/// An error and its causes on one line, `a: b: c`, leaving out a cause whose text the
/// message before it already ends with (an error that prints its source itself, as an IO
/// error with its path does, would otherwise say it twice).
pub fn chain(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod chain_tests {
    #[test]
    fn a_cause_already_in_its_message_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::StorageFull, "No space left on device");
        let err = anyhow::Error::new(trellis_store::Error::Io {
            path: "/x/y".into(),
            source: io,
        })
        .context("start the run");
        assert_eq!(
            super::chain(&err),
            "start the run: /x/y: No space left on device"
        );
    }
}
