//! Authentication and roles. Off by default (loopback only, everyone is admin); when on,
//! a request carries HTTP basic credentials, a bearer API token, or the UI's signed session
//! cookie. API tokens are kept only as SHA-256 hashes. One table, [`required_role`], says
//! which role every route needs, so no handler can forget to check.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::ServeError;
use crate::error::Error;
use crate::state::App;

/// What a principal may do; each role includes the ones below it.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read everything.
    Viewer,
    /// Also start, stop, retry, enqueue and dequeue runs, suspend schedules.
    Operator,
    /// Also create, edit and delete DAG files.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// Who made a request; put in the request's extensions by [`middleware`].
#[derive(Clone, Debug)]
pub struct Principal {
    pub name: String,
    pub role: Role,
}

/// The `auth:` section of the config file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// `none`, `basic` or `token`; unset means on when any credential is configured.
    pub mode: Option<String>,
    /// One admin user (Dagu's `auth.basic`).
    pub basic: Option<UserEntry>,
    #[serde(default)]
    pub users: Vec<UserEntry>,
    /// API tokens by hash (`sha256:<hex>`), besides those made with `trellis token create`.
    #[serde(default)]
    pub tokens: Vec<TokenEntry>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    pub username: String,
    pub password: String,
    #[serde(default = "admin")]
    pub role: Role,
}

fn admin() -> Role {
    Role::Admin
}

/// An API token as stored: its hash, never the token.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub name: String,
    /// `sha256:<hex>` of the token.
    pub hash: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
}

/// Resolved authentication settings.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub enabled: bool,
    pub users: Vec<UserEntry>,
    pub tokens: Vec<TokenEntry>,
    /// Tokens made with `trellis token create`, re-read when the file changes.
    pub tokens_file: Option<PathBuf>,
}

impl Settings {
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Settings from the config section plus `TRELLIS_AUTH_BASIC_USERNAME`/`_PASSWORD`
    /// and `TRELLIS_AUTH_TOKEN` (an admin token).
    pub fn resolve(section: &AuthSection, home: &Path) -> Result<Settings, ServeError> {
        let mut users: Vec<UserEntry> = section.basic.iter().cloned().collect();
        users.extend(section.users.iter().cloned());
        if let (Ok(username), Ok(password)) = (
            std::env::var("TRELLIS_AUTH_BASIC_USERNAME"),
            std::env::var("TRELLIS_AUTH_BASIC_PASSWORD"),
        ) {
            users.push(UserEntry {
                username,
                password,
                role: Role::Admin,
            });
        }
        let mut tokens = section.tokens.clone();
        if let Ok(token) = std::env::var("TRELLIS_AUTH_TOKEN") {
            tokens.push(TokenEntry {
                name: "TRELLIS_AUTH_TOKEN".into(),
                hash: hash_token(&token),
                role: Role::Admin,
                created_at: None,
            });
        }
        if let Some(t) = tokens.iter().find(|t| parse_hash(&t.hash).is_none()) {
            let name = t.name.clone();
            return Err(ServeError::TokenHash { name });
        }
        let configured = !users.is_empty() || !tokens.is_empty();
        let enabled = match section.mode.as_deref() {
            None => configured,
            Some("none") => false,
            Some("basic" | "token") => true,
            Some(other) => {
                let mode = other.to_string();
                return Err(ServeError::AuthMode { mode });
            }
        };
        let tokens_file = tokens_path(home);
        if enabled && !configured && read_tokens(&tokens_file).is_empty() {
            return Err(ServeError::NoCredentials);
        }
        Ok(Settings {
            enabled,
            users,
            tokens,
            tokens_file: Some(tokens_file),
        })
    }
}

/// Where `trellis token create` keeps token hashes.
pub fn tokens_path(home: &Path) -> PathBuf {
    trellis_store::data_dir(home)
        .join("auth")
        .join("tokens.json")
}

pub fn read_tokens(path: &Path) -> Vec<TokenEntry> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// `sha256:<hex>` of a token.
pub fn hash_token(token: &str) -> String {
    format!("sha256:{}", hex(&Sha256::digest(token.as_bytes())))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hash(hash: &str) -> Option<Vec<u8>> {
    let hex = hash.strip_prefix("sha256:")?;
    if hex.len() != 64 {
        return None;
    }
    (0..32)
        .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

/// A new random API token (32 bytes, URL-safe base64 with a `trl_` prefix).
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    format!(
        "trl_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// The role every route needs; `None` means public (the route does its own checks, or
/// shows nothing that needs protecting).
pub fn required_role(method: &Method, path: &str) -> Option<Role> {
    let public = path == "/health"
        || path == "/health/deep"
        || path == "/login"
        || path == "/logout"
        || path.starts_with("/static/")
        || path.starts_with("/api/v2/webhooks/");
    if public {
        return None;
    }
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Some(Role::Viewer);
    }
    if path == "/api/v2/dags/validate" {
        return Some(Role::Viewer);
    }
    let edits_files = (path == "/api/v2/dags" && method == Method::POST)
        || (path.starts_with("/api/v2/dags/")
            && (path.ends_with("/spec") || method == Method::DELETE)
            && path.matches('/').count() <= 5);
    Some(if edits_files {
        Role::Admin
    } else {
        Role::Operator
    })
}

/// Authenticates the request and enforces [`required_role`]. Also refuses cross-site
/// state changes, since browsers attach basic credentials and cookies to them.
pub async fn middleware(
    State(app): State<Arc<App>>,
    mut request: Request,
    next: Next,
) -> Result<Response, Error> {
    let path = request.uri().path().to_string();
    let method = request.method().clone();
    if !app.auth.enabled && app.loopback_only && !loopback_host(request.headers()) {
        // With auth off, only a loopback name may reach us: a page on another site that
        // points its own name at 127.0.0.1 (DNS rebinding) must not drive this server.
        return Err(Error::forbidden(
            "this server answers only to localhost names while authentication is off",
        ));
    }
    let principal = if app.auth.enabled {
        authenticate(&app, request.headers())
    } else {
        Some(Principal {
            name: "anonymous".into(),
            role: Role::Admin,
        })
    };
    if let Some(needed) = required_role(&method, &path) {
        let Some(who) = &principal else {
            // A browser opening a page gets the login form rather than a JSON 401.
            if crate::ui::wants_html(&method, &path, request.headers()) {
                return Ok(crate::ui::login_redirect(&app, request.uri()));
            }
            return Err(Error::unauthorized("authentication required"));
        };
        if who.role < needed {
            return Err(Error::forbidden(format!(
                "{} has role {}; this needs {}",
                who.name,
                who.role.as_str(),
                needed.as_str()
            )));
        }
        if !matches!(method, Method::GET | Method::HEAD) && cross_site(request.headers()) {
            return Err(Error::forbidden("cross-site request refused"));
        }
    }
    if let Some(p) = principal {
        request.extensions_mut().insert(p);
    }
    Ok(next.run(request).await)
}

/// The Host header names this machine's loopback (or is absent, as in HTTP/1.0).
pub fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name.to_ascii_lowercase().ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A request a browser sent from another site (by `Sec-Fetch-Site`, else `Origin` vs `Host`).
pub fn cross_site(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return site == "cross-site";
    }
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    match (origin, host) {
        (Some(origin), Some(host)) => {
            let origin_host = origin.split("://").nth(1).unwrap_or(origin);
            origin_host != host
        }
        _ => false,
    }
}

/// The principal the headers prove, if any.
pub fn authenticate(app: &App, headers: &HeaderMap) -> Option<Principal> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Some(token) = auth.and_then(|a| a.strip_prefix("Bearer ")) {
        return app.check_token(token.trim());
    }
    if let Some(basic) = auth.and_then(|a| a.strip_prefix("Basic ")) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(basic.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (user, password) = text.split_once(':')?;
        return check_user(&app.auth.users, user, password);
    }
    let cookie = headers.get(header::COOKIE).and_then(|v| v.to_str().ok())?;
    let session = cookie
        .split(';')
        .find_map(|c| c.trim().strip_prefix(&format!("{SESSION_COOKIE}=")))?;
    app.check_session(session)
}

/// Who a request is, by its bearer token or basic credentials alone (no sessions): for
/// daemons that share this server's auth settings but not its state (daggyd).
pub fn authenticate_headers(settings: &Settings, headers: &HeaderMap) -> Option<Principal> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())?;
    if let Some(token) = auth.strip_prefix("Bearer ") {
        let token = token.trim();
        return match_token(&settings.tokens, token).or_else(|| {
            let path = settings.tokens_file.as_ref()?;
            match_token(&read_tokens(path), token)
        });
    }
    let basic = auth.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(basic.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    check_user(&settings.users, user, password)
}

pub const SESSION_COOKIE: &str = "trellis_session";

pub fn check_user(users: &[UserEntry], user: &str, password: &str) -> Option<Principal> {
    let digest = |s: &str| Sha256::digest(s.as_bytes());
    let mut found = None;
    // Compare every entry (in constant time) so timing does not reveal which user exists.
    for u in users {
        let same_user = digest(&u.username).ct_eq(&digest(user));
        let same_password = digest(&u.password).ct_eq(&digest(password));
        if bool::from(same_user & same_password) {
            found = Some(Principal {
                name: u.username.clone(),
                role: u.role,
            });
        }
    }
    found
}

/// Finds the token among `entries` by hash, in constant time per entry.
pub fn match_token(entries: &[TokenEntry], token: &str) -> Option<Principal> {
    let digest = Sha256::digest(token.as_bytes());
    let mut found = None;
    for entry in entries {
        if let Some(hash) = parse_hash(&entry.hash)
            && bool::from(hash.as_slice().ct_eq(digest.as_slice()))
        {
            found = Some(Principal {
                name: entry.name.clone(),
                role: entry.role,
            });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_per_route() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(required_role(&get, "/health"), None);
        assert_eq!(required_role(&post, "/api/v2/webhooks/etl"), None);
        assert_eq!(required_role(&get, "/api/v2/dags"), Some(Role::Viewer));
        assert_eq!(required_role(&get, "/metrics"), Some(Role::Viewer));
        assert_eq!(
            required_role(&post, "/api/v2/dags/etl/start"),
            Some(Role::Operator)
        );
        assert_eq!(required_role(&post, "/api/v2/dags"), Some(Role::Admin));
        assert_eq!(
            required_role(&Method::PUT, "/api/v2/dags/etl/spec"),
            Some(Role::Admin)
        );
        assert_eq!(
            required_role(&Method::DELETE, "/api/v2/dags/etl"),
            Some(Role::Admin)
        );
        assert_eq!(
            required_role(&Method::DELETE, "/api/v2/queues/default/items/r1"),
            Some(Role::Operator)
        );
    }

    #[test]
    fn only_loopback_names_pass_the_host_check() {
        let with = |h: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::HOST, h.parse().unwrap());
            loopback_host(&m)
        };
        assert!(with("localhost:8080"));
        assert!(with("127.0.0.1:8080"));
        assert!(with("[::1]:8080"));
        assert!(with("app.localhost"));
        assert!(!with("evil.example:8080"));
        assert!(!with("10.0.0.5"));
        assert!(loopback_host(&HeaderMap::new()));
    }

    #[test]
    fn tokens_match_by_hash_only() {
        let token = new_token();
        let entries = vec![TokenEntry {
            name: "ci".into(),
            hash: hash_token(&token),
            role: Role::Operator,
            created_at: None,
        }];
        assert_eq!(
            match_token(&entries, &token).map(|p| p.role),
            Some(Role::Operator)
        );
        assert!(match_token(&entries, "trl_wrong").is_none());
    }

    #[test]
    fn users_need_both_name_and_password() {
        let users = vec![UserEntry {
            username: "ann".into(),
            password: "s3cret".into(),
            role: Role::Viewer,
        }];
        assert!(check_user(&users, "ann", "s3cret").is_some());
        assert!(check_user(&users, "ann", "nope").is_none());
        assert!(check_user(&users, "bob", "s3cret").is_none());
    }
}
