//! Login sessions (`/rest/login-sessions`) and the gate every other endpoint stands behind.
//!
//! `POST` takes `{userName, password}` and answers `{sessionID}`; the client sends that id
//! in the `auth` header from then on. `PUT` refreshes the session (its idle timeout starts
//! again), `DELETE` ends it. Only `GET /rest/version` and `POST /rest/login-sessions`
//! answer without a live session; everything else, unknown paths included, answers 401 in
//! Image Streamer's error shape. Passwords are never logged: the login body is read into a
//! struct whose Debug hides it, and nothing else sees it.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::body::JsonBody;
use super::error::ApiError;
use super::{blocking, AppState};

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

/// The gate: a live session or 401 (public endpoints pass).
pub async fn require_session(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    if is_public(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    let Some(t) = token(req.headers()) else {
        return ApiError::unauthorized("no session: the request has no auth header")
            .into_response();
    };
    let (cat, idle, t2) = (st.catalog.clone(), st.session_idle, t.clone());
    match blocking(move || Ok(cat.session(&t2, idle)?)).await {
        Ok(Some(s)) => {
            req.extensions_mut().insert(SessionUser {
                user: s.user,
                token: t,
            });
            next.run(req).await
        }
        Ok(None) => ApiError::unauthorized("the session is not valid: expired, ended or unknown")
            .into_response(),
        Err(e) => e.into_response(),
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
