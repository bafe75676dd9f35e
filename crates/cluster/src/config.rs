//! The `coordinator:` and `worker:` sections of the config file, in both Dagu spellings
//! (`maxActiveRuns` or `max_active_runs`). Flags and environment variables override them;
//! the CLI does the layering.

use indexmap::IndexMap;
use serde::{Deserialize, Deserializer};

#[derive(Clone, Debug, Default, Deserialize)]
pub struct ClusterFile {
    #[serde(default)]
    pub coordinator: CoordinatorSection,
    #[serde(default)]
    pub worker: WorkerSection,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorSection {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub advertise: Option<String>,
    /// Seconds without a heartbeat before a task's lease is lost.
    #[serde(alias = "leaseTimeout")]
    pub lease_timeout: Option<u64>,
    /// Seconds a run may wait for a matching live worker before it fails.
    #[serde(alias = "dispatchTimeout")]
    pub dispatch_timeout: Option<u64>,
    #[serde(alias = "signingKey")]
    pub signing_key: Option<String>,
    pub tls: Option<TlsSection>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSection {
    pub id: Option<String>,
    /// A map, or a `k=v,k2=v2` string.
    #[serde(default, deserialize_with = "labels")]
    pub labels: Option<IndexMap<String, String>>,
    #[serde(alias = "maxActiveRuns")]
    pub max_active_runs: Option<u32>,
    #[serde(alias = "coordinatorHost")]
    pub coordinator_host: Option<String>,
    #[serde(alias = "coordinatorPort")]
    pub coordinator_port: Option<u16>,
    /// Seconds between gRPC heartbeats (default 1).
    #[serde(alias = "heartbeatInterval")]
    pub heartbeat_interval: Option<f64>,
    /// Seconds between registry file refreshes (default 10).
    #[serde(alias = "registryInterval")]
    pub registry_interval: Option<f64>,
    pub insecure: Option<bool>,
    pub tls: Option<TlsSection>,
    /// Shared-nothing mode: `host:port` list (or one comma-separated string).
    #[serde(default, deserialize_with = "addresses")]
    pub coordinators: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    #[serde(alias = "certFile")]
    pub cert_file: Option<std::path::PathBuf>,
    #[serde(alias = "keyFile")]
    pub key_file: Option<std::path::PathBuf>,
    #[serde(alias = "caFile")]
    pub ca_file: Option<std::path::PathBuf>,
}

fn addresses<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        List(Vec<String>),
    }
    Ok(Option::<Raw>::deserialize(d)?.map(|raw| match raw {
        Raw::Text(t) => split_addresses(&t),
        Raw::List(l) => l,
    }))
}

/// `host:port,host:port` as a list (blank entries dropped).
pub fn split_addresses(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn labels<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IndexMap<String, String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Map(IndexMap<String, serde_json::Value>),
    }
    match Option::<Raw>::deserialize(d)? {
        None => Ok(None),
        Some(Raw::Text(t)) => trellis_core::worker::parse_labels(&t)
            .map(Some)
            .map_err(serde::de::Error::custom),
        Some(Raw::Map(m)) => Ok(Some(
            m.into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (k, v)
                })
                .collect(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_dagu_shaped_worker_section() {
        let json = serde_json::json!({
            "worker": {"id": "worker-gpu-01", "maxActiveRuns": 10,
                       "coordinatorHost": "c.example", "coordinatorPort": 50055,
                       "labels": {"gpu": "true", "memory": "64G"}},
            "coordinator": {"host": "0.0.0.0", "port": 50055}
        });
        let file: ClusterFile = serde_json::from_value(json).unwrap();
        assert_eq!(file.worker.max_active_runs, Some(10));
        assert_eq!(file.worker.labels.unwrap()["gpu"], "true");
        assert_eq!(file.coordinator.port, Some(50055));
        let secure: ClusterFile = serde_json::from_value(serde_json::json!({
            "coordinator": {"signingKey": "k", "tls": {"certFile": "/c.crt", "keyFile": "/c.key", "caFile": "/ca.crt"}},
            "worker": {"insecure": false, "tls": {"certFile": "/w.crt", "keyFile": "/w.key", "caFile": "/ca.crt"}}
        }))
        .unwrap();
        let tls = secure.coordinator.tls.unwrap();
        assert_eq!(tls.ca_file.unwrap().to_str(), Some("/ca.crt"));
        assert_eq!(
            secure.worker.tls.unwrap().cert_file.unwrap().to_str(),
            Some("/w.crt")
        );
        assert_eq!(secure.coordinator.signing_key.as_deref(), Some("k"));
        let text: ClusterFile =
            serde_json::from_value(serde_json::json!({"worker": {"labels": "a=1,b=2"}})).unwrap();
        assert_eq!(text.worker.labels.unwrap().len(), 2);
    }
}
