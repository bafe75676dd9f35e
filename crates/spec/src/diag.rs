//! Problems found in a workflow file, each with a stable code, a location and help, and
//! their rendering (miette) as `file:line:column` reports.

use std::fmt;
use std::sync::Arc;

use miette::{Diagnostic, LabeledSpan, NamedSource, Severity};

use crate::yaml::Span;

/// Stable problem codes; they appear in output as `spec::<code>` and never change meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Code {
    Syntax,
    UnknownKey,
    WrongType,
    MissingField,
    InvalidValue,
    BadEnum,
    Conflict,
    DuplicateStep,
    UnknownDependency,
    Cycle,
    InvalidCron,
    InvalidDuration,
    InvalidParam,
    MissingParam,
    LegacyKey,
    Unsupported,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Syntax => "spec::syntax",
            Code::UnknownKey => "spec::unknown-key",
            Code::WrongType => "spec::wrong-type",
            Code::MissingField => "spec::missing-field",
            Code::InvalidValue => "spec::invalid-value",
            Code::BadEnum => "spec::bad-enum",
            Code::Conflict => "spec::conflicting-fields",
            Code::DuplicateStep => "spec::duplicate-step",
            Code::UnknownDependency => "spec::unknown-dependency",
            Code::Cycle => "spec::cycle",
            Code::InvalidCron => "spec::invalid-cron",
            Code::InvalidDuration => "spec::invalid-duration",
            Code::InvalidParam => "spec::invalid-param",
            Code::MissingParam => "spec::missing-param",
            Code::LegacyKey => "spec::legacy-key",
            Code::Unsupported => "spec::unsupported",
        }
    }
}

/// One problem in one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub code: Code,
    pub warning: bool,
    pub message: String,
    pub span: Span,
    pub label: String,
    pub help: Option<String>,
    /// Other places that take part (for a cycle: every step on it).
    pub related: Vec<(Span, String)>,
}

impl Problem {
    pub fn error(code: Code, span: Span, message: impl Into<String>) -> Problem {
        Problem {
            code,
            warning: false,
            message: message.into(),
            span,
            label: String::from("here"),
            help: None,
            related: Vec::new(),
        }
    }

    pub fn warning(code: Code, span: Span, message: impl Into<String>) -> Problem {
        Problem {
            warning: true,
            ..Problem::error(code, span, message)
        }
    }

    pub fn label(mut self, label: impl Into<String>) -> Problem {
        self.label = label.into();
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Problem {
        self.help = Some(help.into());
        self
    }

    pub fn related(mut self, span: Span, label: impl Into<String>) -> Problem {
        self.related.push((span, label.into()));
        self
    }

    /// 1-based line and column of the problem in `source`.
    pub fn line_col(&self, source: &str) -> (usize, usize) {
        line_col(source, self.span.offset)
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// A problem bound to its file, ready for miette to render.
#[derive(Debug)]
pub struct Report {
    pub problem: Problem,
    pub source: Arc<NamedSource<String>>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problem.message)
    }
}

impl std::error::Error for Report {}

impl Diagnostic for Report {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.problem.code.as_str()))
    }

    fn severity(&self) -> Option<Severity> {
        Some(if self.problem.warning {
            Severity::Warning
        } else {
            Severity::Error
        })
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.problem
            .help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        Some(&*self.source)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let p = &self.problem;
        let main = LabeledSpan::new_primary_with_span(Some(p.label.clone()), p.span);
        let others = p
            .related
            .iter()
            .map(|(s, l)| LabeledSpan::new_with_span(Some(l.clone()), *s));
        Some(Box::new(std::iter::once(main).chain(others)))
    }
}

/// Renders problems as plain text (no colours), as `trellis validate` prints them when
/// output is not a terminal, and as the snapshot tests record them.
pub fn render_plain(name: &str, source: &str, problems: &[Problem]) -> String {
    let handler =
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
            .with_width(100);
    render_with(&handler, name, source, problems)
}

/// Renders problems with the given miette handler, one report after another.
pub fn render_with(
    handler: &miette::GraphicalReportHandler,
    name: &str,
    source: &str,
    problems: &[Problem],
) -> String {
    let named = Arc::new(NamedSource::new(name, source.to_string()).with_language("yaml"));
    let mut out = String::new();
    for problem in problems {
        let report = Report {
            problem: problem.clone(),
            source: named.clone(),
        };
        if handler.render_report(&mut out, &report).is_err() {
            out.push_str(&problem.message);
        }
        out.push('\n');
    }
    out
}
