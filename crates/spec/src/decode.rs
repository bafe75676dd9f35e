//! Typed reading of [`Node`]s against field tables, collecting every problem instead of
//! stopping at the first. The same tables feed `trellis schema`.

use crate::diag::{Code, Problem};
use crate::yaml::{Node, Span, Value};

/// One key an object accepts.
pub struct Field {
    pub name: &'static str,
    /// Other accepted spellings: Dagu v1 camelCase and renamed keys.
    pub aliases: &'static [&'static str],
    /// JSON Schema of the value, as JSON text.
    pub schema: &'static str,
    pub doc: &'static str,
}

/// Builds a [`Field`]: `field!("name", ["alias"], r#"{"type":"string"}"#, "doc")`.
macro_rules! field {
    ($name:literal, [$($alias:literal),*], $schema:expr, $doc:literal) => {
        $crate::decode::Field { name: $name, aliases: &[$($alias),*], schema: $schema, doc: $doc }
    };
}
pub(crate) use field;

/// Collects problems while decoding one file.
#[derive(Default)]
pub struct Cx {
    pub problems: Vec<Problem>,
    /// Names of the DAGs the file's later documents declare (for Dagu 1.x `run: <dag>`).
    pub local_dags: Vec<String>,
}

impl Cx {
    pub fn push(&mut self, problem: Problem) {
        self.problems.push(problem);
    }

    pub fn wrong_type(&mut self, node: &Node, expected: &str) {
        let message = format!("expected {expected}, found {}", node.type_name());
        self.push(
            Problem::error(Code::WrongType, node.span, message)
                .label(format!("this is {}", node.type_name())),
        );
    }

    pub fn invalid(&mut self, node: &Node, message: impl Into<String>) {
        self.push(Problem::error(Code::InvalidValue, node.span, message));
    }

    /// Reads a mapping against a field table: unknown keys and spelling conflicts are
    /// reported, legacy spellings produce a warning.
    pub fn object<'n>(
        &mut self,
        node: &'n Node,
        fields: &'static [Field],
        what: &str,
    ) -> Option<Obj<'n>> {
        let Value::Map(entries) = &node.value else {
            self.wrong_type(node, &format!("a mapping ({what})"));
            return None;
        };
        let mut obj = Obj {
            entries: Vec::new(),
            span: node.span,
        };
        for (key, value) in entries {
            let Some(text) = key.scalar_text() else {
                self.wrong_type(key, "a string key");
                continue;
            };
            match lookup(fields, &text) {
                Some(field) => self.accept(&mut obj, field, &text, key, value),
                None => self.push(unknown_key(fields, &text, key.span, what)),
            }
        }
        Some(obj)
    }

    fn accept<'n>(
        &mut self,
        obj: &mut Obj<'n>,
        field: &'static Field,
        text: &str,
        key: &'n Node,
        value: &'n Node,
    ) {
        if let Some((_, first, _)) = obj.entries.iter().find(|(n, _, _)| *n == field.name) {
            let first_text = first.scalar_text().unwrap_or_default();
            let message = format!(
                "`{text}` and `{first_text}` are two spellings of `{}`",
                field.name
            );
            self.push(
                Problem::error(Code::Conflict, key.span, message)
                    .related(first.span, "first given here")
                    .help(format!("keep only `{}`", field.name)),
            );
            return;
        }
        if text != field.name && is_legacy_spelling(text, field.name) {
            let message = format!("`{text}` is the Dagu v1 spelling of `{}`", field.name);
            self.push(
                Problem::warning(Code::LegacyKey, key.span, message)
                    .help(format!("rename it to `{}`", field.name)),
            );
        }
        obj.entries.push((field.name, key, value));
    }
}

fn lookup(fields: &'static [Field], key: &str) -> Option<&'static Field> {
    fields
        .iter()
        .find(|f| f.name == key || f.aliases.contains(&key))
}

/// camelCase → snake_case, used to tell legacy spellings from renames.
pub fn snake_case(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 4);
    for c in text.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn is_legacy_spelling(text: &str, canonical: &str) -> bool {
    snake_case(text) == canonical
}

fn unknown_key(fields: &'static [Field], key: &str, span: Span, what: &str) -> Problem {
    let problem = Problem::error(
        Code::UnknownKey,
        span,
        format!("unknown key `{key}` in {what}"),
    )
    .label("not a known key");
    match suggest(fields, key) {
        Some(best) => problem.help(format!("did you mean `{best}`?")),
        None => {
            let names: Vec<&str> = fields.iter().map(|f| f.name).collect();
            problem.help(format!("valid keys: {}", names.join(", ")))
        }
    }
}

/// The nearest valid key, if any is close enough to be a plausible typo.
pub fn suggest(fields: &'static [Field], key: &str) -> Option<&'static str> {
    let lower = snake_case(key).to_ascii_lowercase().replace('-', "_");
    let mut best: Option<(f64, &'static str)> = None;
    for field in fields {
        for candidate in std::iter::once(&field.name).chain(field.aliases) {
            let score = strsim::jaro_winkler(&lower, &candidate.to_ascii_lowercase());
            if best.is_none_or(|(s, _)| score > s) {
                best = Some((score, field.name));
            }
        }
    }
    best.filter(|(score, _)| *score >= 0.8)
        .map(|(_, name)| name)
}

/// The fields of one mapping, by canonical name.
pub struct Obj<'n> {
    pub entries: Vec<(&'static str, &'n Node, &'n Node)>,
    pub span: Span,
}

impl<'n> Obj<'n> {
    pub fn get(&self, name: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, _, v)| *v)
    }

    /// The key node as written, for pointing at it.
    pub fn key(&self, name: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, k, _)| *k)
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// A string field; numbers and booleans are accepted as their text. Null means unset.
    pub fn string(&self, cx: &mut Cx, name: &str) -> Option<String> {
        let node = self.get(name)?;
        if node.is_null() {
            return None;
        }
        match &node.value {
            Value::Seq(_) | Value::Map(_) => {
                cx.wrong_type(node, "a string");
                None
            }
            _ => node.scalar_text(),
        }
    }

    pub fn bool(&self, cx: &mut Cx, name: &str) -> Option<bool> {
        let node = self.get(name)?;
        match &node.value {
            Value::Bool(b) => Some(*b),
            Value::Null => None,
            Value::Str { text, .. } if text == "true" || text == "false" => Some(text == "true"),
            _ => {
                cx.wrong_type(node, "true or false");
                None
            }
        }
    }

    /// A non-negative integer; strings holding digits are accepted (Dagu allows
    /// `interval_sec: "5"`).
    pub fn uint(&self, cx: &mut Cx, name: &str) -> Option<u64> {
        uint(cx, self.get(name)?)
    }

    /// A non-negative number (integer or decimal).
    pub fn number(&self, cx: &mut Cx, name: &str) -> Option<f64> {
        let node = self.get(name)?;
        let value = match &node.value {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            Value::Str { text, .. } => text.trim().parse::<f64>().ok(),
            Value::Null => return None,
            _ => None,
        };
        match value {
            Some(v) if v.is_finite() && v >= 0.0 => Some(v),
            Some(_) => {
                cx.invalid(node, "expected a non-negative number");
                None
            }
            None => {
                cx.wrong_type(node, "a number");
                None
            }
        }
    }

    /// Any finite number, negative allowed.
    pub fn number_signed(&self, cx: &mut Cx, name: &str) -> Option<f64> {
        let node = self.get(name)?;
        match node
            .scalar_text()
            .and_then(|t| t.trim().parse::<f64>().ok())
        {
            Some(v) if v.is_finite() => Some(v),
            _ => {
                cx.wrong_type(node, "a number");
                None
            }
        }
    }

    /// One of a fixed set of words.
    pub fn choice(&self, cx: &mut Cx, name: &str, choices: &[&str]) -> Option<String> {
        let node = self.get(name)?;
        let text = self.string(cx, name)?;
        if choices.contains(&text.as_str()) {
            return Some(text);
        }
        let mut problem = Problem::error(
            Code::BadEnum,
            node.span,
            format!("`{text}` is not a valid {name}"),
        )
        .help(format!("use one of: {}", choices.join(", ")));
        if let Some(best) = choices.iter().max_by(|a, b| {
            strsim::jaro_winkler(&text, a).total_cmp(&strsim::jaro_winkler(&text, b))
        }) && strsim::jaro_winkler(&text, best) >= 0.8
        {
            problem = problem.help(format!("did you mean `{best}`?"));
        }
        cx.push(problem);
        None
    }

    /// A string or a list of strings (`depends: a` or `depends: [a, b]`).
    pub fn strings(&self, cx: &mut Cx, name: &str) -> Vec<String> {
        self.get(name).map(|n| strings(cx, n)).unwrap_or_default()
    }
}

pub fn uint(cx: &mut Cx, node: &Node) -> Option<u64> {
    match &node.value {
        Value::Int(i) if *i >= 0 => Some(*i as u64),
        Value::Int(_) => {
            cx.invalid(node, "expected a non-negative integer");
            None
        }
        Value::Str { text, .. } if text.trim().parse::<u64>().is_ok() => text.trim().parse().ok(),
        Value::Null => None,
        _ => {
            cx.wrong_type(node, "a non-negative integer");
            None
        }
    }
}

/// A scalar or a list of scalars, as strings.
pub fn strings(cx: &mut Cx, node: &Node) -> Vec<String> {
    match &node.value {
        Value::Null => Vec::new(),
        Value::Seq(items) => items
            .iter()
            .filter_map(|item| {
                let text = item.scalar_text();
                if text.is_none() {
                    cx.wrong_type(item, "a string");
                }
                text
            })
            .collect(),
        Value::Map(_) => {
            cx.wrong_type(node, "a string or a list of strings");
            Vec::new()
        }
        _ => node.scalar_text().into_iter().collect(),
    }
}

/// Key/value pairs from a mapping, a list of one-entry mappings, or a list of `K=V` strings.
pub fn pairs(cx: &mut Cx, node: &Node) -> Vec<(String, String, Span)> {
    let mut out = Vec::new();
    match &node.value {
        Value::Null => {}
        Value::Map(entries) => push_entries(cx, entries, &mut out),
        Value::Seq(items) => {
            for item in items {
                match &item.value {
                    Value::Map(entries) => push_entries(cx, entries, &mut out),
                    Value::Str { text, .. } => match text.split_once('=') {
                        Some((k, v)) => out.push((k.trim().to_string(), v.to_string(), item.span)),
                        None => cx.push(
                            Problem::error(
                                Code::InvalidValue,
                                item.span,
                                format!("`{text}` is not KEY=value"),
                            )
                            .help("write `KEY=value` or `KEY: value`"),
                        ),
                    },
                    _ => cx.wrong_type(item, "`KEY: value` or `KEY=value`"),
                }
            }
        }
        _ => cx.wrong_type(node, "a mapping or a list of `KEY: value`"),
    }
    out
}

fn push_entries(cx: &mut Cx, entries: &[(Node, Node)], out: &mut Vec<(String, String, Span)>) {
    for (k, v) in entries {
        let Some(key) = k.scalar_text() else {
            cx.wrong_type(k, "a string key");
            continue;
        };
        let value = match &v.value {
            Value::Null => String::new(),
            Value::Seq(_) | Value::Map(_) => v.to_json().to_string(),
            _ => v.scalar_text().unwrap_or_default(),
        };
        out.push((key, value, k.span));
    }
}
