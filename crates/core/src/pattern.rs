//! Texts that are either literal or a regular expression, written `re:<regex>` as in
//! Dagu (conditions' `expected`, `continue_on.output`, router routes). Decoded once, in
//! the loader, which also checks the regex; nothing downstream looks for the prefix.
//! Stored and sent as the text the user wrote, so definitions saved before keep loading.

use serde::{Deserialize, Serialize};

/// A literal text, or a regular expression.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum Pattern {
    Literal(String),
    Regex(String),
}

impl Pattern {
    pub fn parse(text: &str) -> Pattern {
        match text.strip_prefix("re:") {
            Some(re) => Pattern::Regex(re.to_string()),
            None => Pattern::Literal(text.to_string()),
        }
    }

    /// The text without the `re:` prefix.
    pub fn text(&self) -> &str {
        match self {
            Pattern::Literal(t) | Pattern::Regex(t) => t,
        }
    }

    /// The same kind of pattern over another text (e.g. after expanding variables).
    pub fn map(&self, f: impl FnOnce(&str) -> String) -> Pattern {
        match self {
            Pattern::Literal(t) => Pattern::Literal(f(t)),
            Pattern::Regex(t) => Pattern::Regex(f(t)),
        }
    }

    /// A regex's compile error (literals have none).
    pub fn check(&self) -> Result<(), regex::Error> {
        match self {
            Pattern::Literal(_) => Ok(()),
            Pattern::Regex(re) => regex::Regex::new(re).map(drop),
        }
    }

    /// Whether `text` equals the literal, or the regex matches somewhere in it. An
    /// invalid regex (possible only after expansion) matches nothing.
    pub fn matches_exactly(&self, text: &str) -> bool {
        match self {
            Pattern::Literal(t) => t == text,
            Pattern::Regex(_) => self.regex_match(text),
        }
    }

    /// Whether `text` contains the literal, or the regex matches somewhere in it.
    pub fn found_in(&self, text: &str) -> bool {
        match self {
            Pattern::Literal(t) => text.contains(t.as_str()),
            Pattern::Regex(_) => self.regex_match(text),
        }
    }

    fn regex_match(&self, text: &str) -> bool {
        regex::Regex::new(self.text()).is_ok_and(|r| r.is_match(text))
    }
}

impl From<String> for Pattern {
    fn from(text: String) -> Pattern {
        Pattern::parse(&text)
    }
}

impl From<Pattern> for String {
    fn from(p: Pattern) -> String {
        p.to_string()
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pattern::Literal(t) => f.write_str(t),
            Pattern::Regex(t) => write!(f, "re:{t}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_makes_a_regex_and_round_trips() {
        let p = Pattern::parse("re:^a.c$");
        assert_eq!(p, Pattern::Regex("^a.c$".into()));
        assert_eq!(p.to_string(), "re:^a.c$");
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, "\"re:^a.c$\"");
        assert_eq!(serde_json::from_str::<Pattern>(&json).unwrap(), p);
    }

    #[test]
    fn literals_compare_or_search_and_regexes_search() {
        let lit = Pattern::parse("abc");
        assert!(lit.matches_exactly("abc") && !lit.matches_exactly("xabc"));
        assert!(lit.found_in("xabcx"));
        let re = Pattern::parse("re:b+");
        assert!(re.matches_exactly("abbbc") && re.found_in("abbbc"));
        assert!(!Pattern::parse("re:(").found_in("("));
        assert!(Pattern::parse("re:(").check().is_err());
    }
}
