//! Variable expansion inside commands, conditions and outputs: `${VAR}`, `${VAR.json.path}`,
//! `${VAR:0:5}`, `${step.output}`, `${step.output.key}`, `${step.exitCode}`,
//! `${step.stdout}`, and (where no shell will do it) bare `$VAR` and `$1`.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use indexmap::IndexMap;
use serde_json::Value;

/// What a finished step exposes to later steps. Kept small: a run holds one per step.
#[derive(Clone, Debug, Default)]
pub struct StepVars {
    pub output: Option<String>,
    pub fields: Option<Box<Value>>,
    pub exit_code: Option<i32>,
    /// The step's log files when they are not this attempt's (a step a retry carried
    /// over); `None` means `<log dir>/<safe name>.out|.err`, derived when asked for, so a
    /// 10 000-step run does not hold 20 000 paths.
    pub logs: Option<Box<(String, String)>>,
}

/// Everything `${...}` can refer to. Clones are cheap: the run's variables and step
/// results are shared (steps see what has settled so far), and each clone adds its own
/// local overlay (a step's `env`, a parallel child's `ITEM`). A per-step deep copy would
/// make a 10 000-step run quadratic.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    shared: Arc<RwLock<Shared>>,
    local: IndexMap<String, String>,
}

#[derive(Debug, Default)]
struct Shared {
    vars: IndexMap<String, String>,
    /// Keyed by step id or name; the name is kept beside the vars for the log path.
    steps: IndexMap<Box<str>, (Box<str>, StepVars)>,
    positional: Vec<String>,
    log_dir: Option<PathBuf>,
}

impl Scope {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Shared> {
        self.shared
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Shared> {
        self.shared
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A variable: the local overlay first, then the run's.
    pub fn var(&self, name: &str) -> Option<String> {
        self.local
            .get(name)
            .cloned()
            .or_else(|| self.read().vars.get(name).cloned())
    }

    /// Sets a run-wide variable, seen by every step that starts later.
    pub fn set_var(&self, name: &str, value: String) {
        self.write().vars.insert(name.to_string(), value);
    }

    /// Sets a variable for this clone only.
    pub fn set_local(&mut self, name: &str, value: String) {
        self.local.insert(name.to_string(), value);
    }

    /// Records what step `name` (known to later steps as `key`, its id or its name) left.
    pub fn set_step(&self, key: &str, name: &str, vars: StepVars) {
        self.write().steps.insert(key.into(), (name.into(), vars));
    }

    /// Where this attempt's step logs are, for `${step.stdout}` and `${step.stderr}`.
    pub fn set_log_dir(&self, dir: PathBuf) {
        self.write().log_dir = Some(dir);
    }

    pub fn push_positional(&self, value: String) {
        self.write().positional.push(value);
    }

    /// Every variable, run-wide then local (local wins), for a process environment.
    pub fn all_vars(&self) -> Vec<(String, String)> {
        let mut all: IndexMap<String, String> = self.read().vars.clone();
        all.extend(self.local.iter().map(|(k, v)| (k.clone(), v.clone())));
        all.into_iter().collect()
    }

    fn positional(&self, n: usize) -> Option<String> {
        self.read().positional.get(n.wrapping_sub(1)).cloned()
    }
    /// Expands `${...}` forms we can resolve; unknown ones stay for the shell. With `bare`,
    /// `$VAR` and `$1` are expanded too (for conditions, which no shell sees).
    pub fn expand(&self, text: &str, bare: bool) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            let after = &rest[pos + 1..];
            if let Some(inner) = after
                .strip_prefix('{')
                .and_then(|a| a.find('}').map(|end| &a[..end]))
            {
                match self.lookup(inner) {
                    Some(v) => out.push_str(&v),
                    None => out.push_str(&rest[pos..pos + inner.len() + 3]),
                }
                rest = &after[inner.len() + 2..];
                continue;
            }
            let len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            let name = &after[..len];
            let positional = name.chars().next().is_some_and(|c| c.is_ascii_digit());
            let value = if positional {
                name.parse::<usize>().ok().and_then(|n| self.positional(n))
            } else if bare {
                self.var(name)
            } else {
                None
            };
            match (value, len) {
                (Some(v), _) => out.push_str(&v),
                _ => out.push_str(&rest[pos..pos + 1 + len]),
            }
            rest = &after[len..];
        }
        out.push_str(rest);
        out
    }

    fn lookup(&self, inner: &str) -> Option<String> {
        if let Some((name, slice)) = inner.split_once(':') {
            return self.lookup(name).map(|v| substring(&v, slice));
        }
        if let Ok(n) = inner.parse::<usize>() {
            return self.positional(n);
        }
        if let Some(v) = self.var(inner) {
            return Some(v);
        }
        let (head, path) = inner.split_once('.')?;
        // A variable wins over a step id of the same name, where its JSON has the path.
        let from_var = self
            .var(head)
            .and_then(|v| json_path(&serde_json::from_str(&v).ok()?, path));
        if from_var.is_some() {
            return from_var;
        }
        let shared = self.read();
        let (name, step) = shared.steps.get(head)?;
        let log = |ext: &str| {
            let dir = shared.log_dir.as_ref()?;
            let safe = crate::log_file_name(name, ext);
            Some(dir.join(safe).display().to_string())
        };
        match path {
            "output" => step
                .output
                .clone()
                .or_else(|| step.fields.as_ref().map(|f| f.to_string())),
            "exitCode" | "exit_code" => step.exit_code.map(|c| c.to_string()),
            "stdout" => step
                .logs
                .as_ref()
                .map(|l| l.0.clone())
                .or_else(|| log("out")),
            "stderr" => step
                .logs
                .as_ref()
                .map(|l| l.1.clone())
                .or_else(|| log("err")),
            _ => {
                let sub = path.strip_prefix("output.")?;
                let from_fields = step.fields.as_ref().and_then(|f| json_path(f, sub));
                from_fields.or_else(|| {
                    json_path(&serde_json::from_str(step.output.as_deref()?).ok()?, sub)
                })
            }
        }
    }
}

/// `a.b.0.c` into a JSON value; strings come back unquoted.
pub fn json_path(value: &Value, path: &str) -> Option<String> {
    Some(match select_json(value, path)? {
        Value::String(s) => s,
        other => other.to_string(),
    })
}

/// The value at `.a.b.0` (or `a.b[0]`, as Dagu writes an index) inside `value`.
pub fn select_json(value: &Value, path: &str) -> Option<Value> {
    let mut cur = value;
    for segment in path
        .trim_start_matches('.')
        .split('.')
        .filter(|k| !k.is_empty())
    {
        let (key, indices) = segment.split_at(segment.find('[').unwrap_or(segment.len()));
        if !key.is_empty() {
            cur = match cur {
                Value::Object(map) => map.get(key)?,
                Value::Array(items) => items.get(key.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        for index in indices.split('[').skip(1) {
            let n = index.strip_suffix(']')?.parse::<usize>().ok()?;
            cur = cur.as_array()?.get(n)?;
        }
    }
    Some(cur.clone())
}

/// `${VAR:offset:length}` in characters.
fn substring(value: &str, slice: &str) -> String {
    let mut parts = slice.split(':');
    let start = parts
        .next()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let len = parts.next().and_then(|s| s.trim().parse::<usize>().ok());
    let chars = value.chars().skip(start);
    match len {
        Some(n) => chars.take(n).collect(),
        None => chars.collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_every_form() {
        let scope = Scope::default();
        scope.set_var("CONFIG", r#"{"host":"h","port":80}"#.into());
        scope.set_var("DATA", "hello world".into());
        let build = StepVars {
            exit_code: Some(3),
            output: Some(r#"{"v":"1.2"}"#.into()),
            ..StepVars::default()
        };
        scope.set_step("build", "build", build);
        scope.push_positional("first".into());
        assert_eq!(scope.expand("${CONFIG.host}:${CONFIG.port}", false), "h:80");
        assert_eq!(scope.expand("${DATA:0:5}", false), "hello");
        assert_eq!(
            scope.expand("${build.exitCode} ${build.output.v}", false),
            "3 1.2"
        );
        assert_eq!(
            scope.expand("$1 ${UNKNOWN} $HOME", false),
            "first ${UNKNOWN} $HOME"
        );
        assert_eq!(scope.expand("$DATA!", true), "hello world!");
    }

    #[test]
    fn a_json_path_may_index_with_brackets() {
        let scope = Scope::default();
        scope.set_var(
            "OUT",
            r#"{"outputs":[{"v":"a"},{"v":"b"}],"grid":[[1,2],[3,4]]}"#.into(),
        );
        assert_eq!(scope.expand("${OUT.outputs[1].v}", false), "b");
        assert_eq!(scope.expand("${OUT.outputs.0.v}", false), "a");
        assert_eq!(scope.expand("${OUT.grid[1][0]}", false), "3");
        assert_eq!(
            scope.expand("${OUT.outputs[9].v}", false),
            "${OUT.outputs[9].v}"
        );
    }
}
