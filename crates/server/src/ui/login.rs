//! Signing in and out of the UI. The form takes a user name and password or an API
//! token, checks them like the API does, and sets the signed `trellis_session` cookie
//! (HttpOnly, SameSite=Strict, Secure under TLS) that the auth middleware accepts.

use axum::Form;
use axum::extract::Query;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::{Base, Ctx, render};
use crate::auth::{self, Principal, SESSION_COOKIE};

/// How long a session lasts.
const SESSION_TTL: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

#[derive(askama::Template)]
#[template(path = "login.html")]
pub struct LoginPage {
    pub base: Base,
    pub next: String,
    pub error: Option<String>,
    pub username: String,
}

#[derive(Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

pub async fn form(ctx: Ctx, Query(q): Query<NextQuery>) -> Response {
    if !ctx.app.auth.enabled {
        return Redirect::to(&format!("{}/", ctx.prefix())).into_response();
    }
    let page = LoginPage {
        base: ctx.base("login"),
        next: safe_next(&ctx, q.next.as_deref()),
        error: None,
        username: String::new(),
    };
    render(&page).into_response()
}

#[derive(Deserialize)]
pub struct Credentials {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    token: String,
    next: Option<String>,
}

pub async fn submit(ctx: Ctx, headers: HeaderMap, Form(form): Form<Credentials>) -> Response {
    let next = safe_next(&ctx, form.next.as_deref());
    if !ctx.app.auth.enabled {
        return Redirect::to(&next).into_response();
    }
    // Sign-in forms posted from other sites would plant their session in this browser.
    if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"cross-site")
    {
        return ctx.error_page(crate::Error::forbidden("cross-site sign-in refused"));
    }
    let who: Option<Principal> = if !form.token.trim().is_empty() {
        ctx.app.check_token(form.token.trim())
    } else {
        auth::check_user(&ctx.app.auth.users, &form.username, &form.password)
    };
    let Some(who) = who else {
        let error = if form.token.trim().is_empty() {
            "Wrong user name or password."
        } else {
            "That API token is not valid."
        };
        return failed(&ctx, next, form.username, error);
    };
    let value = ctx.app.make_session(&who, SESSION_TTL);
    let Some(cookie) = cookie(&ctx, &value, SESSION_TTL.as_secs()) else {
        return failed(
            &ctx,
            next,
            form.username,
            "This name cannot be kept in a session cookie; use an API token instead.",
        );
    };
    let mut response = Redirect::to(&next).into_response();
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    response
}

pub async fn logout(ctx: Ctx) -> Response {
    let to = if ctx.app.auth.enabled {
        format!("{}/login", ctx.prefix())
    } else {
        format!("{}/", ctx.prefix())
    };
    let mut response = Redirect::to(&to).into_response();
    if let Some(cookie) = cookie(&ctx, "", 0) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

fn failed(ctx: &Ctx, next: String, username: String, error: &str) -> Response {
    let page = LoginPage {
        base: ctx.base("login"),
        next,
        error: Some(error.to_string()),
        username,
    };
    (StatusCode::UNAUTHORIZED, render(&page)).into_response()
}

/// The `Set-Cookie` value; `None` when `value` has characters a cookie cannot hold.
fn cookie(ctx: &Ctx, value: &str, max_age: u64) -> Option<HeaderValue> {
    let valid = value
        .bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b',' | b';' | b'\\'));
    if !valid {
        return None;
    }
    let path = if ctx.prefix().is_empty() {
        "/"
    } else {
        ctx.prefix()
    };
    let secure = if ctx.app.tls { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
    ))
    .ok()
}

/// Where to go after signing in: a path on this server, else the DAG list.
fn safe_next(ctx: &Ctx, next: Option<&str>) -> String {
    let home = format!("{}/", ctx.prefix());
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n.contains('\\')
                && !n.chars().any(char::is_control)
                && n.starts_with(ctx.prefix()) =>
        {
            n.to_string()
        }
        _ => home,
    }
}
