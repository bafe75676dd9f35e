//! Cluster security: TLS settings for both ends, and the signing key. With a signing key,
//! workers authenticate every call with a short-lived token derived from it
//! (`<worker id>.<expiry>.<HMAC>`), and every task carries an HMAC of its content made by
//! the scheduler, which the worker checks before running anything. A task changed on its
//! way (a task file edited on shared storage, say) is refused.

use std::path::PathBuf;

use hmac::{KeyInit, Mac};
use subtle::ConstantTimeEq;

use crate::table::TaskSpec;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// How long a worker token is valid; workers make a fresh one for every call.
pub const TOKEN_TTL_SECS: i64 = 300;

/// The coordinator's TLS: its certificate and key, and (for mTLS) the CA that client
/// certificates must chain to.
#[derive(Clone, Debug, Default)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// A worker's TLS: the CA that signs the coordinator's certificate (system roots when
/// unset) and, for mTLS, its own certificate and key.
#[derive(Clone, Debug, Default)]
pub struct ClientTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

fn mac(key: &[u8], parts: &[&str]) -> String {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for p in parts {
        // Length-prefixed, so no two different part lists hash alike.
        m.update(&(p.len() as u64).to_be_bytes());
        m.update(p.as_bytes());
    }
    m.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn same(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// A token for `worker_id`, valid for [`TOKEN_TTL_SECS`] from `now` (unix seconds).
pub fn worker_token(key: &[u8], worker_id: &str, now: i64) -> String {
    let expiry = (now + TOKEN_TTL_SECS).to_string();
    let sig = mac(key, &["worker", worker_id, &expiry]);
    format!("{worker_id}.{expiry}.{sig}")
}

/// The worker id a token proves, or why it is refused.
pub fn check_token(key: &[u8], token: &str, now: i64) -> Result<String, crate::Error> {
    let mut parts = token.rsplitn(3, '.');
    let (Some(sig), Some(expiry), Some(worker)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(crate::Error::MalformedToken);
    };
    if !same(sig, &mac(key, &["worker", worker, expiry])) {
        let worker = worker.to_string();
        return Err(crate::Error::BadTokenSignature { worker });
    }
    let worker = worker.to_string();
    match expiry.parse::<i64>() {
        Ok(t) if t >= now => Ok(worker),
        Ok(_) => Err(crate::Error::TokenExpired { worker }),
        Err(_) => Err(crate::Error::MalformedToken),
    }
}

fn task_parts(s: &TaskSpec) -> Vec<String> {
    let mut selector: Vec<String> = s.selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    selector.sort();
    let mut env: Vec<String> = s.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    env.sort();
    vec![
        "task".into(),
        s.task_id.clone(),
        s.dag_name.clone(),
        s.run_id.clone(),
        s.definition_json.clone(),
        s.params.clone(),
        selector.join("\n"),
        env.join("\n"),
        s.parent
            .as_ref()
            .and_then(|p| serde_json::to_string(p).ok())
            .unwrap_or_default(),
    ]
}

/// The signature of what a task runs (not of its attempt number or claim, which the
/// coordinator changes).
pub fn sign_task(key: &[u8], spec: &TaskSpec) -> String {
    let parts = task_parts(spec);
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    mac(key, &refs)
}

pub fn verify_task(key: &[u8], spec: &TaskSpec, signature: &str) -> bool {
    !signature.is_empty() && same(signature, &sign_task(key, spec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_expire_and_need_the_key() {
        let token = worker_token(b"k1", "w@1", 1_000);
        assert_eq!(check_token(b"k1", &token, 1_000).unwrap(), "w@1");
        assert!(matches!(
            check_token(b"k1", &token, 1_000 + TOKEN_TTL_SECS + 1),
            Err(crate::Error::TokenExpired { worker }) if worker == "w@1"
        ));
        let bad = check_token(b"k2", &token, 1_000).unwrap_err();
        assert_eq!(bad.to_string(), "bad signature on the token of worker w@1");
        let forged = token.replacen("w@1", "w@2", 1);
        assert!(matches!(
            check_token(b"k1", &forged, 1_000),
            Err(crate::Error::BadTokenSignature { .. })
        ));
        assert!(matches!(
            check_token(b"k1", "junk", 1_000),
            Err(crate::Error::MalformedToken)
        ));
    }
}
