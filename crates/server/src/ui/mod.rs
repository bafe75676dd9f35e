//! The server-rendered web UI: pages built from the same views as the REST API
//! ([`crate::views`]), drawn by askama templates (which escape everything), with a small
//! script for buttons, live updates over SSE and log tails. Static files are compiled into
//! the binary. Every link and fetch URL carries the server's path prefix.

mod dag;
mod format;
pub mod graph;
mod login;
mod pages;

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use crate::App;
use crate::auth::{Principal, Role};
use crate::error::Error;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/", get(pages::dags))
        .route("/dags/{name}", get(pages::dag))
        .route("/dags/{name}/runs/{run_id}", get(pages::run))
        .route("/runs", get(pages::runs))
        .route("/queue", get(pages::queue))
        .route("/workers", get(pages::workers))
        .route("/login", get(login::form).post(login::submit))
        .route("/logout", post(login::logout))
        .route("/static/{file}", get(asset))
}

/// What every page needs for its frame: the prefix, the active tab, who is signed in and
/// what they may do.
#[derive(Clone, Debug)]
pub struct Base {
    pub prefix: String,
    pub nav: &'static str,
    pub version: &'static str,
    /// Shown in the nav bar with a sign-out button when authentication is on.
    pub user: Option<User>,
    pub can_operate: bool,
}

#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    pub role: &'static str,
}

/// The request's app, principal and prefix, as handlers need them.
#[derive(Clone)]
pub struct Ctx {
    pub app: Arc<App>,
    pub principal: Option<Principal>,
}

impl FromRequestParts<Arc<App>> for Ctx {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Ctx, Self::Rejection> {
        Ok(Ctx {
            app: app.clone(),
            principal: parts.extensions.get::<Principal>().cloned(),
        })
    }
}

impl Ctx {
    pub fn prefix(&self) -> &str {
        &self.app.path_prefix
    }

    pub fn base(&self, nav: &'static str) -> Base {
        let role = self.principal.as_ref().map(|p| p.role);
        Base {
            prefix: self.app.path_prefix.clone(),
            nav,
            version: version(),
            user: self
                .principal
                .as_ref()
                .filter(|_| self.app.auth.enabled)
                .map(|p| User {
                    name: p.name.clone(),
                    role: p.role.as_str(),
                }),
            can_operate: role.is_some_and(|r| r >= Role::Operator),
        }
    }

    /// Builds a page off the async threads (it reads files) and renders it; failures
    /// become an HTML error page with the matching status.
    pub async fn page<T, F>(self, build: F) -> Response
    where
        T: askama::Template + Send + 'static,
        F: FnOnce(&Ctx) -> Result<T, Error> + Send + 'static,
    {
        let ctx = self.clone();
        let built = tokio::task::spawn_blocking(move || build(&ctx))
            .await
            .unwrap_or_else(|e| Err(Error::internal(format!("page failed: {e}"))));
        match built.and_then(|t| render(&t)) {
            Ok(html) => html.into_response(),
            Err(e) => self.error_page(e),
        }
    }

    pub fn error_page(&self, e: Error) -> Response {
        let page = pages::ErrorPage {
            base: self.base(""),
            code: e.status.as_u16(),
            title: e.status.canonical_reason().unwrap_or("Error").to_string(),
            message: e.message,
        };
        let status = e.status;
        match render(&page) {
            Ok(html) => (status, html).into_response(),
            Err(e) => e.into_response(),
        }
    }
}

pub fn render(t: &impl askama::Template) -> Result<Html<String>, Error> {
    t.render()
        .map(Html)
        .map_err(|e| Error::internal(format!("rendering a page: {e}")))
}

/// A browser asking for a page (not the API), which should see the login form rather
/// than a JSON 401.
pub fn wants_html(method: &Method, path: &str, headers: &HeaderMap) -> bool {
    matches!(*method, Method::GET | Method::HEAD)
        && !path.starts_with("/api/")
        && path != "/metrics"
        && headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/html"))
}

/// A redirect to the login page that comes back to `uri` (a path within the prefix).
pub fn login_redirect(app: &App, uri: &axum::http::Uri) -> Response {
    let back = match uri.query() {
        Some(q) => format!("{}{}?{q}", app.path_prefix, uri.path()),
        None => format!("{}{}", app.path_prefix, uri.path()),
    };
    let to = format!(
        "{}/login?next={}",
        app.path_prefix,
        format::percent_encode(&back)
    );
    Redirect::to(&to).into_response()
}

/// The static files, compiled in.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../../static/app.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/app.js"),
    ),
    (
        "theme.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../static/theme.js"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_bytes!("../../static/favicon.svg"),
    ),
];

/// A hash of the static files: links carry it, so a new build is never served stale
/// files from a browser's cache, and the files can be cached for long.
pub fn version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        for (name, _, bytes) in ASSETS {
            hash.update(name.as_bytes());
            hash.update(bytes);
        }
        crate::auth::hex(&hash.finalize()[..6])
    })
}

#[derive(Deserialize)]
struct AssetQuery {
    v: Option<String>,
}

async fn asset(Path(file): Path<String>, Query(q): Query<AssetQuery>) -> Response {
    let Some((_, mime, bytes)) = ASSETS.iter().find(|(name, _, _)| *name == file) else {
        return Error::not_found(format!("no static file `{file}`")).into_response();
    };
    let cache = if q.v.as_deref() == Some(version()) {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let mut response = (StatusCode::OK, *bytes).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_page_requests_from_browsers_want_html() {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static("text/html,*/*"));
        assert!(wants_html(&Method::GET, "/dags/etl", &headers));
        assert!(!wants_html(&Method::GET, "/api/v2/dags", &headers));
        assert!(!wants_html(&Method::POST, "/dags/etl", &headers));
        assert!(!wants_html(&Method::GET, "/dags/etl", &HeaderMap::new()));
    }
}
