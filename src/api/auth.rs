//! Login sessions (`/rest/login-sessions`) and the gate every other endpoint stands behind.
//!
//! `POST` takes `{userName, password}` and answers `{sessionID}`; the client sends that id
//! in the `auth` header from then on. `PUT` refreshes the session (its idle timeout starts
//! again), `DELETE` ends it. Only `GET /rest/version` and `POST /rest/login-sessions`
//! answer without a live session; everything else, unknown paths included, answers 401 in
//! Image Streamer's error shape. Passwords are never logged: the login body is read into a
//! struct whose Debug hides it, and nothing else sees it.
//!
//! A refused request's body is read and dropped before the 401 goes out (up to
//! [`DRAIN_LIMIT`] bytes, with [`DRAIN_IDLE`] between chunks at most), and the connection is
//! closed after it: a client that sends a whole upload before reading the answer (HPE's
//! SDKs) then reads the 401, where closing on a half-read body would have broken its send
//! (a broken pipe or a reset, the 401 lost). A client that asked `Expect: 100-continue`
//! (curl) is answered at once: it has sent nothing yet and sends nothing more.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;

use super::body::JsonBody;
use super::error::ApiError;
use super::{blocking, read, AppState};
use crate::catalog::SessionPeek;

/// Who the request's session belongs to (put in the request's extensions by the gate).
#[derive(Debug, Clone)]
pub struct SessionUser {
    pub user: String,
    pub token: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Credentials {
    user_name: String,
    password: String,
    // What HPE's SDKs send besides (OneView's directory login and banner acknowledgement).
    #[serde(default)]
    #[allow(dead_code)]
    auth_login_domain: Option<serde_json::Value>,
    #[serde(default)]
    #[allow(dead_code)]
    login_msg_ack: Option<serde_json::Value>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user_name", &self.user_name)
            .field("password", &"***")
            .finish()
    }
}

fn is_public(method: &Method, path: &str) -> bool {
    let path = path.trim_end_matches('/');
    (method == Method::GET && path == "/rest/version")
        || (method == Method::POST && path == "/rest/login-sessions")
}

/// The session token of a request: the `auth` header (as HPE's SDKs send it).
fn token(headers: &HeaderMap) -> Option<String> {
    headers
        .get("auth")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

/// The most of a refused request's body read (and dropped) before its 401 goes out.
pub const DRAIN_LIMIT: u64 = 16 << 30;
/// The longest wait for the next chunk of a refused request's body.
pub const DRAIN_IDLE: Duration = Duration::from_secs(10);

/// Answers a request the gate refuses: its body drained first (bounded), then `error`,
/// with `Connection: close`.
async fn refuse(req: Request, error: ApiError) -> Response {
    let expects_continue = req
        .headers()
        .get(header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if !expects_continue {
        let mut body = req.into_body().into_data_stream();
        let mut read = 0u64;
        while read <= DRAIN_LIMIT {
            match tokio::time::timeout(DRAIN_IDLE, body.next()).await {
                Ok(Some(Ok(b))) => read += b.len() as u64,
                // The end, a broken body, or a client gone quiet: answer now.
                _ => break,
            }
        }
        if read > 0 {
            tracing::debug!(bytes = read, "a refused request's body drained");
        }
    }
    let mut r = error.into_response();
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// The gate: a live session or 401 (public endpoints pass).
pub async fn require_session(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    if is_public(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    let Some(t) = token(req.headers()) else {
        return refuse(
            req,
            ApiError::unauthorized("no session: the request has no auth header"),
        )
        .await;
    };
    let (cat, idle, t2) = (st.catalog.clone(), st.session_idle, t.clone());
    // The lookup reads (at once, when reads never wait); only a session whose expiry is
    // due a move takes a blocking thread to write it.
    let found = match read(&st.catalog, move || Ok(cat.peek_session(&t2, idle)?)).await {
        Ok(SessionPeek::Live(s)) => Ok(Some(s)),
        Ok(SessionPeek::Gone) => Ok(None),
        Ok(SessionPeek::Due) => {
            let (cat, t2) = (st.catalog.clone(), t.clone());
            blocking(move || Ok(cat.session(&t2, idle)?)).await
        }
        Err(e) => Err(e),
    };
    match found {
        Ok(Some(s)) => {
            req.extensions_mut().insert(SessionUser {
                user: s.user,
                token: t,
            });
            next.run(req).await
        }
        Ok(None) => {
            refuse(
                req,
                ApiError::unauthorized("the session is not valid: expired, ended or unknown"),
            )
            .await
        }
        Err(e) => refuse(req, e).await,
    }
}

/// `POST /rest/login-sessions`.
pub async fn login(
    State(st): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let c: Credentials = serde_json::from_value(body).map_err(|e| {
        ApiError::bad_request(
            "INVALID_CREDENTIALS_BODY",
            format!("a login is {{\"userName\": ..., \"password\": ...}}: {e}"),
        )
    })?;
    let (cat, idle) = (st.catalog.clone(), st.session_idle);
    let user = c.user_name.clone();
    let token = blocking(move || Ok(cat.login(&c.user_name, &c.password, idle)?)).await?;
    match token {
        Some(t) => {
            tracing::info!(user = %user, "login");
            Ok((
                StatusCode::OK,
                Json(json!({"sessionID": t, "partnerData": {}})),
            )
                .into_response())
        }
        None => {
            tracing::warn!(user = %user, "login refused");
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "AUTHN_AUTH_FAIL",
                "invalid user name or password",
            )
            .recommend("Check the user name and password (strata user ls lists users)."))
        }
    }
}

/// `PUT /rest/login-sessions`: the gate already extended the session; answer its id.
pub async fn refresh(axum::Extension(s): axum::Extension<SessionUser>) -> Json<serde_json::Value> {
    Json(json!({"sessionID": s.token, "partnerData": {}}))
}

/// `DELETE /rest/login-sessions`.
pub async fn logout(
    State(st): State<AppState>,
    axum::Extension(s): axum::Extension<SessionUser>,
) -> Result<StatusCode, ApiError> {
    let cat = st.catalog.clone();
    let t = s.token.clone();
    blocking(move || Ok(cat.logout(&t)?)).await?;
    tracing::info!(user = %s.user, "logout");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_version_and_login_are_public() {
        assert!(is_public(&Method::GET, "/rest/version"));
        assert!(is_public(&Method::POST, "/rest/login-sessions"));
        assert!(is_public(&Method::POST, "/rest/login-sessions/"));
        assert!(!is_public(&Method::DELETE, "/rest/login-sessions"));
        assert!(!is_public(&Method::PUT, "/rest/login-sessions"));
        assert!(!is_public(&Method::GET, "/rest/plan-scripts"));
        assert!(!is_public(&Method::POST, "/rest/version"));
    }

    #[test]
    fn credentials_debug_hides_the_password() {
        let c: Credentials =
            serde_json::from_value(json!({"userName": "u", "password": "hunter2"})).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
