//! DAG parameters: their declaration, the `--params "K=V ..."` syntax, and resolution of
//! defaults plus overrides into the values a run sees, validated before anything runs.

use serde::{Deserialize, Serialize};

/// The type a parameter's value must have. Values always reach steps as strings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamType {
    #[default]
    String,
    Integer,
    Number,
    Boolean,
}

/// One declared parameter. A positional parameter has no name and is read as `$1`, `$2`...
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ParamDef {
    pub name: Option<String>,
    pub default: Option<String>,
    #[serde(rename = "type")]
    pub kind: ParamType,
    pub required: bool,
    #[serde(rename = "enum")]
    pub choices: Vec<String>,
    pub description: Option<String>,
    pub minimum: Option<f64>,
    pub maximum: Option<f64>,
    pub min_length: Option<usize>,
    pub max_length: Option<usize>,
    /// A regular expression the value must match; checked by the caller, which owns a
    /// regex engine (see [`resolve`]).
    pub pattern: Option<String>,
}

/// Every parameter a DAG declares, in order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ParamSpec {
    pub defs: Vec<ParamDef>,
}

/// One token of a params string: `KEY=value` (named) or a bare value (positional).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamToken {
    pub name: Option<String>,
    pub value: String,
}

/// A resolved parameter: positional ones are named `1`, `2`, ...
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamValue {
    pub name: String,
    pub value: String,
    pub positional: bool,
}

/// Why the given params cannot start a run: which param (or `--params` for the string as
/// a whole) and what is wrong with it.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("param `{param}`: {error}")]
pub struct ParamError {
    pub param: String,
    pub error: Error,
}

/// What is wrong with a params string, or with one param's value.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("unclosed {0} quote in params")]
    UnclosedQuote(char),
    /// A named param the DAG does not declare; carries the names it does declare.
    #[error("unknown param (declared: {})", .declared.join(", "))]
    Unknown { declared: Vec<String> },
    #[error("is required but was not given")]
    Required,
    #[error("`{value}` is not one of: {}", .choices.join(", "))]
    NotAChoice { value: String, choices: Vec<String> },
    #[error("`{0}` is not a boolean (true or false)")]
    NotBoolean(String),
    #[error("`{0}` is not an integer")]
    NotInteger(String),
    #[error("`{0}` is not a number")]
    NotNumber(String),
    #[error("`{value}` is outside {}", range_text(.minimum, .maximum))]
    OutOfRange {
        value: String,
        minimum: Option<f64>,
        maximum: Option<f64>,
    },
    #[error("`{value}` has {length} characters, outside the allowed length")]
    Length { value: String, length: usize },
    #[error("`{value}` does not match the pattern `{pattern}`")]
    NoMatch { value: String, pattern: String },
    /// The `pattern:` itself is not a valid regular expression; `message` is the regex
    /// engine's own explanation.
    #[error("{message}")]
    BadPattern { pattern: String, message: String },
}

/// True for names that can be shell variables (`[A-Za-z_][A-Za-z0-9_]*`).
pub fn is_identifier(text: &str) -> bool {
    let mut chars = text.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Splits a params string the way a shell would split words: whitespace separates tokens,
/// single and double quotes group, a backslash escapes the next character. A token
/// `KEY=value` with an identifier key is named; anything else is positional.
pub fn parse_tokens(text: &str) -> Result<Vec<ParamToken>, Error> {
    split_words(text).map(|words| words.into_iter().map(token_of).collect())
}

fn token_of(word: String) -> ParamToken {
    match word.split_once('=') {
        Some((key, value)) if is_identifier(key) => ParamToken {
            name: Some(key.to_string()),
            value: value.to_string(),
        },
        _ => ParamToken {
            name: None,
            value: word,
        },
    }
}

fn split_words(text: &str) -> Result<Vec<String>, Error> {
    let (mut words, mut word, mut in_word) = (Vec::new(), String::new(), false);
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' | '"' => {
                in_word = true;
                let quote = c;
                loop {
                    match chars.next() {
                        Some(q) if q == quote => break,
                        Some('\\') if quote == '"' => word.extend(chars.next()),
                        Some(other) => word.push(other),
                        None => return Err(Error::UnclosedQuote(quote)),
                    }
                }
            }
            '\\' => {
                in_word = true;
                word.extend(chars.next());
            }
            other => {
                in_word = true;
                word.push(other);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// Renders resolved values back to a params string that [`parse_tokens`] reads the same.
pub fn render(values: &[ParamValue]) -> String {
    let words: Vec<String> = values
        .iter()
        .map(|p| {
            let value = quote_if_needed(&p.value);
            if p.positional {
                value
            } else {
                format!("{}={}", p.name, value)
            }
        })
        .collect();
    words.join(" ")
}

fn quote_if_needed(value: &str) -> String {
    let plain = !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || "'\"\\".contains(c));
    if plain {
        value.to_string()
    } else {
        format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// Resolves declared defaults plus overrides into the run's values, and checks each value
/// against its declaration. `matches_pattern(pattern, value)` evaluates `pattern:` checks;
/// its `Err` (normally [`Error::BadPattern`]) becomes that param's error. All problems are
/// returned together.
pub fn resolve(
    spec: &ParamSpec,
    overrides: &[ParamToken],
    matches_pattern: &dyn Fn(&str, &str) -> Result<bool, Error>,
) -> Result<Vec<ParamValue>, Vec<ParamError>> {
    let mut values = defaults(spec);
    let mut errors = Vec::new();
    let declares_names = spec.defs.iter().any(|d| d.name.is_some());
    let mut position = 0;
    for token in overrides {
        match &token.name {
            Some(name) => match values.iter_mut().find(|v| !v.positional && &v.name == name) {
                Some(slot) => slot.value = token.value.clone(),
                None if declares_names => errors.push(ParamError {
                    param: name.clone(),
                    error: Error::Unknown {
                        declared: declared_names(spec),
                    },
                }),
                None => values.push(named(name, &token.value)),
            },
            None => {
                position += 1;
                set_positional(&mut values, position, &token.value);
            }
        }
    }
    for def in &spec.defs {
        let Some(name) = &def.name else { continue };
        let value = values.iter().find(|v| !v.positional && &v.name == name);
        let value = value.map(|v| v.value.as_str()).unwrap_or_default();
        if let Err(error) = check(def, value, overrides, matches_pattern) {
            errors.push(ParamError {
                param: name.clone(),
                error,
            });
        }
    }
    if errors.is_empty() {
        Ok(values)
    } else {
        Err(errors)
    }
}

fn defaults(spec: &ParamSpec) -> Vec<ParamValue> {
    let mut values = Vec::new();
    let mut position = 0;
    for def in &spec.defs {
        let value = def.default.clone().unwrap_or_default();
        match &def.name {
            Some(name) => values.push(named(name, &value)),
            None => {
                position += 1;
                values.push(ParamValue {
                    name: position.to_string(),
                    value,
                    positional: true,
                });
            }
        }
    }
    values
}

fn named(name: &str, value: &str) -> ParamValue {
    ParamValue {
        name: name.to_string(),
        value: value.to_string(),
        positional: false,
    }
}

fn set_positional(values: &mut Vec<ParamValue>, position: usize, value: &str) {
    let name = position.to_string();
    match values.iter_mut().find(|v| v.positional && v.name == name) {
        Some(slot) => slot.value = value.to_string(),
        None => values.push(ParamValue {
            name,
            value: value.to_string(),
            positional: true,
        }),
    }
}

fn declared_names(spec: &ParamSpec) -> Vec<String> {
    spec.defs.iter().filter_map(|d| d.name.clone()).collect()
}

fn check(
    def: &ParamDef,
    value: &str,
    overrides: &[ParamToken],
    matches_pattern: &dyn Fn(&str, &str) -> Result<bool, Error>,
) -> Result<(), Error> {
    let given = overrides
        .iter()
        .any(|t| t.name.as_deref() == def.name.as_deref());
    if def.required && value.is_empty() && !given && def.default.is_none() {
        return Err(Error::Required);
    }
    if value.is_empty() && !given {
        return Ok(());
    }
    if !def.choices.is_empty() && !def.choices.iter().any(|c| c == value) {
        return Err(Error::NotAChoice {
            value: value.to_string(),
            choices: def.choices.clone(),
        });
    }
    check_type(def, value)?;
    if let Some(pattern) = &def.pattern
        && !matches_pattern(pattern, value)?
    {
        return Err(Error::NoMatch {
            value: value.to_string(),
            pattern: pattern.clone(),
        });
    }
    Ok(())
}

fn check_type(def: &ParamDef, value: &str) -> Result<(), Error> {
    let number = match def.kind {
        ParamType::String => None,
        ParamType::Boolean if matches!(value, "true" | "false") => None,
        ParamType::Boolean => return Err(Error::NotBoolean(value.to_string())),
        ParamType::Integer => match value.parse::<i64>() {
            Ok(n) => Some(n as f64),
            Err(_) => return Err(Error::NotInteger(value.to_string())),
        },
        ParamType::Number => match value.parse::<f64>() {
            Ok(n) if n.is_finite() => Some(n),
            _ => return Err(Error::NotNumber(value.to_string())),
        },
    };
    if let Some(n) = number
        && (def.minimum.is_some_and(|min| n < min) || def.maximum.is_some_and(|max| n > max))
    {
        return Err(Error::OutOfRange {
            value: value.to_string(),
            minimum: def.minimum,
            maximum: def.maximum,
        });
    }
    let length = value.chars().count();
    if def.min_length.is_some_and(|m| length < m) || def.max_length.is_some_and(|m| length > m) {
        return Err(Error::Length {
            value: value.to_string(),
            length,
        });
    }
    Ok(())
}

/// How [`Error::OutOfRange`] names the bounds (by reference, as the error's fields are).
fn range_text(min: &Option<f64>, max: &Option<f64>) -> String {
    match (min, max) {
        (Some(a), Some(b)) => format!("the range {a}..={b}"),
        (Some(a), None) => format!("the minimum {a}"),
        (None, Some(b)) => format!("the maximum {b}"),
        (None, None) => "the allowed range".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_pattern(_: &str, _: &str) -> Result<bool, Error> {
        Ok(true)
    }

    fn def(name: &str) -> ParamDef {
        ParamDef {
            name: Some(name.into()),
            ..ParamDef::default()
        }
    }

    #[test]
    fn splits_like_a_shell() {
        let tokens = parse_tokens(r#"A=1 B="two words" 'pos one' C=x\ y"#).unwrap();
        assert_eq!(tokens.len(), 4);
        assert_eq!(
            tokens[1],
            ParamToken {
                name: Some("B".into()),
                value: "two words".into()
            }
        );
        assert_eq!(
            tokens[2],
            ParamToken {
                name: None,
                value: "pos one".into()
            }
        );
        assert_eq!(tokens[3].value, "x y");
        assert_eq!(parse_tokens("A='open"), Err(Error::UnclosedQuote('\'')));
    }

    #[test]
    fn overrides_replace_defaults_and_positionals() {
        let spec = ParamSpec {
            defs: vec![
                ParamDef {
                    default: Some("p1".into()),
                    ..ParamDef::default()
                },
                ParamDef {
                    default: Some("1".into()),
                    ..def("N")
                },
            ],
        };
        let got = resolve(
            &spec,
            &parse_tokens("N=5 first second").unwrap(),
            &no_pattern,
        )
        .unwrap();
        assert_eq!(render(&got), "first N=5 second");
    }

    #[test]
    fn validates_required_enum_and_type() {
        let spec = ParamSpec {
            defs: vec![
                ParamDef {
                    required: true,
                    ..def("DATE")
                },
                ParamDef {
                    choices: vec!["dev".into(), "prod".into()],
                    ..def("ENV")
                },
                ParamDef {
                    kind: ParamType::Integer,
                    ..def("COUNT")
                },
            ],
        };
        let errors =
            resolve(&spec, &parse_tokens("ENV=qa COUNT=x").unwrap(), &no_pattern).unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "param `DATE`: is required but was not given",
                "param `ENV`: `qa` is not one of: dev, prod",
                "param `COUNT`: `x` is not an integer",
            ]
        );
    }

    #[test]
    fn rejects_unknown_names_only_when_names_are_declared() {
        let tokens = parse_tokens("TYPO=1").unwrap();
        let declared = ParamSpec {
            defs: vec![def("REAL")],
        };
        assert!(resolve(&declared, &tokens, &no_pattern).is_err());
        let open = resolve(&ParamSpec::default(), &tokens, &no_pattern).unwrap();
        assert_eq!(open[0].name, "TYPO");
    }
}
