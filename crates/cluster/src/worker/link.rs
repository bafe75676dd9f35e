//! The worker's connection to a coordinator: plain or TLS (with a client certificate for
//! mTLS), and a fresh signed token on every call when the cluster has a signing key.

use std::sync::Arc;
use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::proto::coordinator_client::CoordinatorClient;
use crate::security::{self, ClientTls};

pub type Client = CoordinatorClient<InterceptedService<Channel, Token>>;

/// Adds `authorization: Bearer <token>` to every call when there is a key.
#[derive(Clone)]
pub struct Token {
    pub key: Option<Arc<Vec<u8>>>,
    pub id: String,
}

impl tonic::service::Interceptor for Token {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(key) = &self.key {
            let token = security::worker_token(key, &self.id, jiff::Timestamp::now().as_second());
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| tonic::Status::internal("worker id not valid in a header"))?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

/// How to reach coordinators.
#[derive(Clone, Debug, Default)]
pub struct Dial {
    /// `None` or `insecure`: plaintext HTTP/2.
    pub tls: Option<ClientTls>,
    pub insecure: bool,
    pub key: Option<Vec<u8>>,
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, crate::Error> {
    std::fs::read(path).map_err(|source| crate::Error::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn tls_config(tls: &ClientTls, host: &str) -> Result<ClientTlsConfig, crate::Error> {
    let mut config = ClientTlsConfig::new().domain_name(host.to_string());
    config = match &tls.ca {
        Some(ca) => config.ca_certificate(Certificate::from_pem(read(ca)?)),
        None => config.with_enabled_roots(),
    };
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(config)
}

/// Connects to `addr` (`host:port`) as `id`.
pub async fn dial(addr: &str, how: &Dial, id: &str) -> Result<Client, crate::Error> {
    let secure = how.tls.is_some() && !how.insecure;
    let scheme = if secure { "https" } else { "http" };
    let mut endpoint = Channel::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| crate::Error::Address {
            addr: addr.to_string(),
            message: e.to_string(),
        })?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true);
    if let (true, Some(tls)) = (secure, &how.tls) {
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
        endpoint = endpoint
            .tls_config(tls_config(tls, host)?)
            .map_err(|e| crate::Error::Tls(e.to_string()))?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| crate::Error::Unreachable {
            addr: addr.to_string(),
            message: chain(&e),
        })?;
    let token = Token {
        key: how.key.clone().map(Arc::new),
        id: id.to_string(),
    };
    Ok(CoordinatorClient::with_interceptor(channel, token))
}

/// A refused call: its message and the causes under it (where TLS says what was wrong).
pub fn status_text(status: &tonic::Status) -> String {
    let mut out = status.message().to_string();
    let mut source = std::error::Error::source(status);
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// An error with its causes, which is where TLS says what was wrong.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
