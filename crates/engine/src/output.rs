//! What a step publishes: the capped stdout, and object-form outputs taken from stdout,
//! stderr or a file, decoded and selected.

use std::path::{Path, PathBuf};

use serde_json::Value;
use trellis_core::{OutputDecode, OutputField, OutputSource, Step};

use crate::expand::select_json;
use crate::{Error, StepEnv};

pub(crate) fn out_text(path: &Path, max: usize) -> String {
    read_capped(path, max)
}

/// Reads at most `max` bytes of a log file (the output cap), never the whole file.
pub(crate) fn read_capped(path: &Path, max: usize) -> String {
    use std::io::Read;
    let Ok(file) = std::fs::File::open(path) else {
        return String::new();
    };
    let mut buf = Vec::new();
    let _ = file.take(max as u64).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

pub(crate) fn capture_fields<S: ?Sized, E>(
    env: &StepEnv<S, E>,
    step: &Step,
    fields: &indexmap::IndexMap<String, OutputField>,
    stdout: &str,
    stderr: &str,
) -> Result<Value, Error> {
    let mut out = serde_json::Map::new();
    for (key, field) in fields {
        let value = match field {
            OutputField::Literal(v) => expand_json(env, v, true),
            OutputField::Capture {
                from,
                path,
                decode,
                select,
            } => {
                let text = match from {
                    OutputSource::Stdout => stdout.to_string(),
                    OutputSource::Stderr => stderr.to_string(),
                    OutputSource::File => read_output_file(env, step, key, path.as_deref())?,
                };
                let decoded = decode_output(key, &text, decode)?;
                match select {
                    Some(path) => {
                        select_json(&decoded, path).ok_or_else(|| Error::OutputSelect {
                            key: key.clone(),
                            path: path.clone(),
                        })?
                    }
                    None => decoded,
                }
            }
        };
        out.insert(key.clone(), value);
    }
    Ok(Value::Object(out))
}

/// The text of a `from: file` output: its path expanded, relative to the step's working
/// directory.
fn read_output_file<S: ?Sized, E>(
    env: &StepEnv<S, E>,
    step: &Step,
    key: &str,
    path: Option<&str>,
) -> Result<String, Error> {
    let rel = env.scope.expand(path.unwrap_or_default(), true);
    let dir = step
        .working_dir
        .clone()
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::current_dir().unwrap_or_default());
    std::fs::read_to_string(dir.join(&rel)).map_err(|error| Error::OutputRead {
        key: key.to_string(),
        path: rel,
        error,
    })
}

/// Captured text decoded as the output's `decode:` says.
fn decode_output(key: &str, text: &str, decode: &OutputDecode) -> Result<Value, Error> {
    Ok(match decode {
        OutputDecode::Json => serde_json::from_str(text).map_err(|error| Error::OutputJson {
            key: key.to_string(),
            error,
        })?,
        OutputDecode::Yaml => {
            let docs = trellis_spec::yaml::parse(text).map_err(|error| Error::OutputYaml {
                key: key.to_string(),
                error,
            })?;
            docs.first()
                .map_or(Value::Null, trellis_spec::yaml::Node::to_json)
        }
        _ => Value::String(text.trim().to_string()),
    })
}

/// `${...}` in every string of a JSON value; with `bare`, `$VAR` too (where no shell
/// will expand it later).
pub(crate) fn expand_json<S: ?Sized, E>(env: &StepEnv<S, E>, v: &Value, bare: bool) -> Value {
    expand_in(&env.scope, v, bare)
}

/// [`expand_json`] with `${...}` only, from a scope.
pub(crate) fn expand_value(scope: &crate::expand::Scope, v: &Value) -> Value {
    expand_in(scope, v, false)
}

fn expand_in(scope: &crate::expand::Scope, v: &Value, bare: bool) -> Value {
    match v {
        Value::String(s) => Value::String(scope.expand(s, bare)),
        Value::Array(items) => {
            Value::Array(items.iter().map(|i| expand_in(scope, i, bare)).collect())
        }
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), expand_in(scope, v, bare)))
                .collect(),
        ),
        other => other.clone(),
    }
}
