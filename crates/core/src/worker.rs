//! Workers as the coordinator sees them: whether a worker's labels satisfy a selector, and
//! its health from the age of its last heartbeat (Dagu's thresholds). Pure: callers pass
//! the ages in.

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::model::WorkerSelector;

/// Health of a worker by the age of its last gRPC heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Health {
    /// Under 5 s.
    Healthy,
    /// 5 to 15 s.
    Warning,
    /// Over 15 s.
    Unhealthy,
    /// Over 30 s: treated as gone.
    Offline,
}

impl Health {
    pub fn from_age_ms(age_ms: i64) -> Health {
        match age_ms {
            a if a < 5_000 => Health::Healthy,
            a if a <= 15_000 => Health::Warning,
            a if a <= 30_000 => Health::Unhealthy,
            _ => Health::Offline,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "HEALTHY",
            Health::Warning => "WARNING",
            Health::Unhealthy => "UNHEALTHY",
            Health::Offline => "OFFLINE",
        }
    }

    /// A worker that may be given new work.
    pub fn is_live(self) -> bool {
        self != Health::Offline
    }
}

impl WorkerSelector {
    /// True when a worker with `labels` may run this: every selector label present with
    /// exactly the same value (case-sensitive). `Local` matches no worker.
    pub fn matches(&self, labels: &IndexMap<String, String>) -> bool {
        match self {
            WorkerSelector::Any => true,
            WorkerSelector::Local => false,
            WorkerSelector::Labels(want) => want.iter().all(|(k, v)| labels.get(k) == Some(v)),
        }
    }

    /// The selector's labels (empty for `Any` and `Local`).
    pub fn labels(&self) -> IndexMap<String, String> {
        match self {
            WorkerSelector::Labels(l) => l.clone(),
            _ => IndexMap::new(),
        }
    }

    /// `k=v,k2=v2`, for messages such as "no live worker matches gpu=true".
    pub fn describe(&self) -> String {
        match self {
            WorkerSelector::Any => "any worker".into(),
            WorkerSelector::Local => "local".into(),
            WorkerSelector::Labels(l) => l
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
        }
    }
}

/// Why a `k=v,k2=v2` label list was rejected; each carries the offending entry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("label `{0}` must be key=value")]
    NotKeyValue(String),
    #[error("label `{0}` has an empty key")]
    EmptyKey(String),
}

/// Parses `k=v,k2=v2` (the `--worker.labels` form); an entry without `=` is an error.
pub fn parse_labels(text: &str) -> Result<IndexMap<String, String>, Error> {
    let mut labels = IndexMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err(Error::NotKeyValue(part.to_string()));
        };
        let key = k.trim();
        if key.is_empty() {
            return Err(Error::EmptyKey(part.to_string()));
        }
        labels.insert(key.to_string(), v.trim().to_string());
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(s: &str) -> IndexMap<String, String> {
        parse_labels(s).unwrap()
    }

    #[test]
    fn every_selector_label_must_match_exactly() {
        let worker = labels("gpu=true,region=eu-west-1,memory=64G");
        let sel = |s: &str| WorkerSelector::Labels(labels(s));
        assert!(sel("gpu=true").matches(&worker));
        assert!(sel("gpu=true,region=eu-west-1").matches(&worker));
        assert!(
            !sel("gpu=TRUE").matches(&worker),
            "values are case-sensitive"
        );
        assert!(!sel("GPU=true").matches(&worker), "keys are case-sensitive");
        assert!(
            !sel("gpu=true,zone=a").matches(&worker),
            "all labels must be present"
        );
        assert!(WorkerSelector::Any.matches(&worker));
        assert!(WorkerSelector::Any.matches(&IndexMap::new()));
        assert!(!WorkerSelector::Local.matches(&worker));
        assert!(!sel("gpu=true").matches(&IndexMap::new()));
    }

    #[test]
    fn health_thresholds() {
        assert_eq!(Health::from_age_ms(0), Health::Healthy);
        assert_eq!(Health::from_age_ms(4_999), Health::Healthy);
        assert_eq!(Health::from_age_ms(5_000), Health::Warning);
        assert_eq!(Health::from_age_ms(15_000), Health::Warning);
        assert_eq!(Health::from_age_ms(15_001), Health::Unhealthy);
        assert_eq!(Health::from_age_ms(30_001), Health::Offline);
    }

    #[test]
    fn labels_parse_with_clear_errors() {
        assert_eq!(labels(" gpu=true , memory=64G ").len(), 2);
        assert_eq!(
            parse_labels("gpu").unwrap_err().to_string(),
            "label `gpu` must be key=value"
        );
        assert_eq!(parse_labels("=x"), Err(Error::EmptyKey("=x".into())));
        assert!(parse_labels("").unwrap().is_empty());
    }
}
