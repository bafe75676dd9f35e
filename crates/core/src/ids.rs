//! Typed identifiers and instants of runs: a [`RunId`] is not an [`AttemptId`], and a
//! [`Stamp`] is a point in time, not any string. Stored and sent exactly as the strings
//! they replace (`serde(transparent)`, RFC 3339 for stamps), so records, the API and the
//! database are unchanged.
//!
//! Raw → validated: text from outside (a CLI argument, a URL path) becomes an id through
//! [`RunId::parse`], which applies the rule every name in Trellis follows; ids Trellis
//! made itself or read back from its own records convert with `From`.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Serialize};

/// An id that is not safe as one path component.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} `{value}`: use letters, digits, `-`, `_` and `.`")]
pub struct InvalidId {
    pub kind: &'static str,
    pub value: String,
}

/// The one rule for names that become a path component (DAG names, run ids): ASCII
/// letters, digits, `-`, `_`, `.` and spaces, 1 to 255 bytes, not `.` or `..`.
pub fn is_valid_name(name: &str) -> bool {
    let ok = |c: char| c.is_ascii_alphanumeric() || "-_. ".contains(c);
    !name.is_empty() && name.len() <= 255 && name != "." && name != ".." && name.chars().all(ok)
}

macro_rules! id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Text from outside, checked.
            pub fn parse(text: &str) -> Result<$name, InvalidId> {
                if is_valid_name(text) {
                    Ok($name(text.to_string()))
                } else {
                    Err(InvalidId { kind: $kind, value: text.to_string() })
                }
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl AsRef<std::path::Path> for $name {
            fn as_ref(&self) -> &std::path::Path {
                self.0.as_ref()
            }
        }
        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl From<String> for $name {
            fn from(s: String) -> $name {
                $name(s)
            }
        }
        impl From<&str> for $name {
            fn from(s: &str) -> $name {
                $name(s.to_string())
            }
        }
        impl From<&String> for $name {
            fn from(s: &String) -> $name {
                $name(s.clone())
            }
        }
        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }
        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }
        impl PartialEq<$name> for str {
            fn eq(&self, other: &$name) -> bool {
                self == other.0
            }
        }
        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }
        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }
    };
}

id!(
    /// A run's id: unique per DAG, kept by every attempt of the run.
    RunId,
    "run id"
);
id!(
    /// One attempt of a run (a retry is a new attempt of the same run).
    AttemptId,
    "attempt id"
);

/// A point in time, as runs record it: RFC 3339 in UTC (`2026-11-22T10:00:00.5Z`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Stamp(pub jiff::Timestamp);

impl Stamp {
    pub fn timestamp(self) -> jiff::Timestamp {
        self.0
    }
}

impl From<jiff::Timestamp> for Stamp {
    fn from(t: jiff::Timestamp) -> Stamp {
        Stamp(t)
    }
}

impl std::str::FromStr for Stamp {
    type Err = jiff::Error;
    fn from_str(s: &str) -> Result<Stamp, jiff::Error> {
        s.parse().map(Stamp)
    }
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl Serialize for Stamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Stamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Stamp, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_check_outside_text_and_serialize_as_strings() {
        assert!(RunId::parse("r-1_a.b").is_ok());
        for bad in ["", ".", "..", "a/b", "a\tb", "ü"] {
            let err = RunId::parse(bad).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("invalid run id `{bad}`: use letters, digits, `-`, `_` and `.`")
            );
        }
        let id = RunId::from("r1");
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"r1\"");
        assert_eq!(id, "r1");
    }

    #[test]
    fn stamps_round_trip_as_rfc3339() {
        for text in ["2026-11-22T10:00:00Z", "2026-11-22T10:00:00.123456789Z"] {
            let json = format!("\"{text}\"");
            let stamp: Stamp = serde_json::from_str(&json).unwrap();
            assert_eq!(serde_json::to_string(&stamp).unwrap(), json);
        }
        let offset: Stamp = serde_json::from_str("\"2026-11-22T11:00:00+01:00\"").unwrap();
        assert_eq!(offset.to_string(), "2026-11-22T10:00:00Z");
        assert!(serde_json::from_str::<Stamp>("\"yesterday\"").is_err());
    }
}
