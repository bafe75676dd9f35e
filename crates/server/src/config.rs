//! The `server:` and `auth:` sections of the Trellis config file (the scheduler reads the
//! same file for its own sections). Unknown keys in these sections are errors.

use std::path::Path;

use serde::Deserialize;

#[derive(Clone, Debug, Default, Deserialize)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub auth: crate::auth::AuthSection,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    pub host: Option<String>,
    pub port: Option<u16>,
    #[serde(alias = "basePath", alias = "base_path", alias = "pathPrefix")]
    pub path_prefix: Option<String>,
    pub tls: Option<TlsSection>,
    /// Secret that webhook tokens are derived from (HMAC-SHA256); generated and kept in
    /// the data dir when unset.
    #[serde(alias = "webhookSecret")]
    pub webhook_secret: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    #[serde(alias = "certFile")]
    pub cert_file: std::path::PathBuf,
    #[serde(alias = "keyFile")]
    pub key_file: std::path::PathBuf,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<FileConfig, trellis_scheduler::Error> {
        let json = trellis_scheduler::config::load_json(path)?;
        if json.is_null() {
            return Ok(FileConfig::default());
        }
        serde_json::from_value(json).map_err(|source| trellis_scheduler::Error::Config {
            path: path.to_path_buf(),
            source,
        })
    }
}
