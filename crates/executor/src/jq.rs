//! `jq` steps, in-process with jaq: Dagu 2.15's `action: jq.filter` (`with: {filter,
//! data, input, raw, args}`) and the older `type: jq` (the filter in `command`, the data
//! in `script`, `raw` in the config). Each result is printed as `jq` prints it: pretty
//! with two spaces, one per line, keys in their order; `raw` prints strings bare.

use std::sync::Arc;

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Ctx, Vars, data, unwrap_valr};
use jaq_json::Val;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::Outcome;
use crate::inproc::{Action, Output};
use crate::seam::{BoxFuture, StepRequest, Work};

/// The step's `with:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    filter: Option<String>,
    /// Inline JSON (a value, or a string holding JSON), or `file://<path>`.
    data: Option<serde_json::Value>,
    /// A file holding the input (one or more JSON values).
    input: Option<String>,
    #[serde(default)]
    raw: bool,
    /// `$name` variables for the filter.
    #[serde(default)]
    args: serde_json::Map<String, serde_json::Value>,
}

fn parse(config: &serde_json::Value) -> Result<Config, String> {
    if config.is_null() {
        return Ok(Config::default());
    }
    let config: Config = serde_json::from_value(config.clone()).map_err(|e| e.to_string())?;
    if config.data.is_some() && config.input.is_some() {
        return Err("`data` and `input` both give the input: keep one".into());
    }
    for name in config.args.keys() {
        if !is_ident(name) {
            return Err(format!("args: `{name}` is not a jq variable name"));
        }
    }
    if let Some(filter) = &config.filter
        && !filter.contains("${")
    {
        compile(filter, &config.args.keys().cloned().collect::<Vec<_>>())?;
    }
    Ok(config)
}

fn is_ident(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

type Filter = jaq_core::compile::Filter<jaq_core::Native<data::JustLut<Val>>>;

/// Compiles `code` with the standard library and the `$name`s of `args`.
fn compile(code: &str, args: &[String]) -> Result<Filter, String> {
    // jq's standard library, parsed once per process (parsing it is most of a small
    // filter's cost); each compile takes a copy.
    static DEFS: std::sync::LazyLock<Vec<jaq_core::load::parse::Def<&'static str>>> =
        std::sync::LazyLock::new(|| {
            jaq_core::defs()
                .chain(jaq_std::defs())
                .chain(jaq_json::defs())
                .collect()
        });
    let defs = DEFS.iter().cloned();
    let funs = jaq_core::funs()
        .chain(jaq_std::funs())
        .chain(jaq_json::funs());
    let arena = Arena::default();
    let modules = Loader::new(defs)
        .load(&arena, File { code, path: () })
        .map_err(|errs| load_error(code, errs))?;
    let vars: Vec<String> = args.iter().map(|a| format!("${a}")).collect();
    jaq_core::Compiler::default()
        .with_funs(funs)
        .with_global_vars(vars.iter().map(String::as_str))
        .compile(modules)
        .map_err(|errs| {
            let names: Vec<String> = errs
                .iter()
                .flat_map(|(_, e)| e.iter().map(|(name, kind)| format!("{kind:?} `{name}`")))
                .collect();
            format!(
                "invalid jq filter `{code}`: undefined {}",
                names.join(", ").to_lowercase()
            )
        })
}

fn load_error(code: &str, errs: jaq_core::load::Errors<&str, ()>) -> String {
    use jaq_core::load::Error;
    let mut problems = Vec::new();
    for (_, err) in errs {
        match err {
            Error::Io(io) => problems.extend(io.into_iter().map(|(p, e)| format!("{p}: {e}"))),
            Error::Lex(lex) => problems.extend(lex.into_iter().map(|(expect, at)| {
                let at = jaq_core::load::span(code, at).start;
                format!("expected {} at column {}", expect.as_str(), at + 1)
            })),
            Error::Parse(parse) => problems.extend(parse.into_iter().map(|(expect, at)| {
                let at = jaq_core::load::span(code, at).start;
                format!("expected {} at column {}", expect.as_str(), at + 1)
            })),
        }
    }
    format!("invalid jq filter `{code}`: {}", problems.join("; "))
}

pub(crate) struct Jq;

impl Action for Jq {
    fn kind(&self) -> &'static str {
        "jq"
    }

    fn check(&self, config: &serde_json::Value) -> Result<(), String> {
        parse(config).map(|_| ())
    }

    fn run(
        self: Arc<Self>,
        req: StepRequest,
        mut out: Output,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, Outcome> {
        Box::pin(async move {
            // A stop or timeout reaches the filter between two results (a filter that
            // never ends, `repeat(1)`, must not outlive its step).
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let watcher = {
                let stop = stop.clone();
                tokio::spawn(async move {
                    cancel.cancelled().await;
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                })
            };
            // jaq runs synchronously; a large input must not hold up the runtime.
            let done = tokio::task::spawn_blocking(move || {
                filter(&req, &mut out, &stop).map_err(|e| (e, out))
            });
            let done = done.await;
            watcher.abort();
            match done {
                Ok(Ok(())) => Outcome::Exited(0),
                Ok(Err((why, mut out))) => out.fail(why),
                Err(e) => Outcome::Failed {
                    code: None,
                    reason: format!("jq stopped: {e}"),
                },
            }
        })
    }
}

/// The filter and its input text from the step: `with:` first, else the older form.
fn program(req: &StepRequest, config: &Config) -> Result<(String, Option<String>), String> {
    let (line, script) = match &req.work {
        Work::Line(line) => (Some(line.clone()), None),
        Work::Script { program, text } => (program.clone(), Some(text.clone())),
        _ => (None, None),
    };
    let filter = config
        .filter
        .clone()
        .or(line)
        .ok_or("no filter: give `with: {filter: ...}` (or the filter as the step's command)")?;
    Ok((filter, script))
}

fn input_text(
    req: &StepRequest,
    config: &Config,
    script: Option<String>,
) -> Result<String, String> {
    let read = |path: &str| {
        let path = req.resolve(path);
        std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    match (&config.data, &config.input) {
        (Some(serde_json::Value::String(text)), _) => match text.strip_prefix("file://") {
            Some(path) => read(path),
            None => Ok(text.clone()),
        },
        (Some(value), _) => Ok(value.to_string()),
        (None, Some(path)) => read(path),
        (None, None) => script.ok_or_else(|| {
            "no input: give `with: {data: ...}` or `input: <file>` (or the JSON as the step's script)"
                .into()
        }),
    }
}

/// The most a filter may print before it is stopped (its output is held until it ends).
const MAX_PRINTED: usize = 64 << 20;

fn filter(
    req: &StepRequest,
    out: &mut Output,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<(), String> {
    let config = parse(&req.config)?;
    let (code, script) = program(req, &config)?;
    let text = input_text(req, &config, script)?;
    let names: Vec<String> = config.args.keys().cloned().collect();
    let filter = compile(&code, &names)?;
    let args: Vec<Val> = config.args.values().map(to_val).collect::<Result<_, _>>()?;
    let pp = jaq_json::write::Pp {
        indent: Some("  ".to_string()),
        sep_space: true,
        ..Default::default()
    };
    let mut printed = Vec::new();
    for input in jaq_json::read::parse_many(text.as_bytes()) {
        let input = input.map_err(|e| format!("the input is not JSON: {e}"))?;
        let ctx = Ctx::<data::JustLut<Val>>::new(&filter.lut, Vars::new(args.iter().cloned()));
        for value in filter.id.run((ctx, input)).map(unwrap_valr) {
            let value = value.map_err(|e| format!("jq: error: {e}"))?;
            print(&mut printed, &pp, &value, config.raw).map_err(|e| e.to_string())?;
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                return Err("jq stopped".into());
            }
            if printed.len() > MAX_PRINTED {
                return Err(format!(
                    "jq printed more than {} MiB: stopped",
                    MAX_PRINTED >> 20
                ));
            }
        }
    }
    out.out(&printed)
        .map_err(|e| format!("cannot write the step's output: {e}"))
}

fn to_val(value: &serde_json::Value) -> Result<Val, String> {
    jaq_json::read::parse_single(value.to_string().as_bytes()).map_err(|e| e.to_string())
}

fn print(
    buf: &mut Vec<u8>,
    pp: &jaq_json::write::Pp,
    value: &Val,
    raw: bool,
) -> std::io::Result<()> {
    use std::io::Write;
    match value {
        Val::TStr(s) if raw => buf.write_all(&s[..])?,
        _ => jaq_json::write::write(buf, pp, 0, value)?,
    }
    buf.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_filter_is_refused_with_where() {
        let err = parse(&serde_json::json!({"filter": ".a | map("})).unwrap_err();
        assert!(err.contains("invalid jq filter"), "{err}");
        let err = parse(&serde_json::json!({"filter": ".a | nosuchfn"})).unwrap_err();
        assert!(err.contains("nosuchfn"), "{err}");
        assert!(parse(&serde_json::json!({"filter": "$x", "args": {"x": 1}})).is_ok());
        assert!(parse(&serde_json::json!({"filter": ".", "colour": 1})).is_err());
    }
}
