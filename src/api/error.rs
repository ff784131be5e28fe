//! Errors as Image Streamer answers them: an HTTP status and
//! `{errorCode, message, details, recommendedActions, errorSource, nestedErrors, data}`.
//! Client mistakes are 4xx with the reason; only the server's own failures (the catalog's
//! database, a task that panicked) are 500.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::appliance::ApplianceError;
use crate::catalog::CatalogError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: String,
    pub recommended: Vec<String>,
    /// The resource the error is about (a URI), when there is one.
    pub source: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: String::new(),
            recommended: Vec::new(),
            source: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "AUTHORIZATION", message).recommend(
            "Log in with POST /rest/login-sessions and send the sessionID in the auth header.",
        )
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "RESOURCE_NOT_FOUND", message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", message)
            .recommend("See the strata server's log.")
    }

    pub fn recommend(mut self, action: impl Into<String>) -> ApiError {
        self.recommended.push(action.into());
        self
    }

    pub fn details(mut self, details: impl Into<String>) -> ApiError {
        self.details = details.into();
        self
    }

    pub fn source(mut self, uri: impl Into<String>) -> ApiError {
        self.source = Some(uri.into());
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, message = %self.message, "API request failed");
        }
        let body = json!({
            "errorCode": self.code,
            "message": self.message,
            "details": self.details,
            "recommendedActions": self.recommended,
            "errorSource": self.source,
            "nestedErrors": [],
            "data": {},
        });
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> ApiError {
        let msg = e.to_string();
        match e {
            CatalogError::NotFound { .. } | CatalogError::NotExported(_) => {
                ApiError::not_found(msg)
            }
            CatalogError::InUse { users, .. } => {
                let mut err = ApiError::new(StatusCode::CONFLICT, "RESOURCE_IN_USE", msg);
                for u in &users {
                    err = err.recommend(format!("Remove or change {u} first."));
                }
                err
            }
            CatalogError::Conflict { .. } => ApiError::new(StatusCode::CONFLICT, "DUPLICATE", msg)
                .recommend("Choose another name."),
            CatalogError::Missing { .. } => ApiError::bad_request("INVALID_REFERENCE", msg),
            CatalogError::Invalid(_) => ApiError::bad_request("INVALID_RESOURCE", msg)
                .recommend("Correct the request body and send it again."),
            CatalogError::Database { .. }
            | CatalogError::Postgres { .. }
            | CatalogError::TooNew { .. }
            | CatalogError::Corrupt { .. }
            | CatalogError::Hash(_) => ApiError::internal(msg),
        }
    }
}

impl From<ApplianceError> for ApiError {
    fn from(e: ApplianceError) -> ApiError {
        match e {
            ApplianceError::Catalog(c) => c.into(),
            ApplianceError::Invalid(m) => ApiError::bad_request("INVALID_REQUEST", m),
            ApplianceError::Elsewhere(m) => {
                ApiError::new(StatusCode::CONFLICT, "GOLDEN_IMAGE_ON_ANOTHER_NODE", m)
                    .recommend("Use the golden image on the strata node that holds its disk.")
            }
            ApplianceError::Bundle(b) => ApiError::bad_request("INVALID_BUNDLE", b.to_string()),
            ApplianceError::Upload(_) => ApiError::bad_request("INVALID_UPLOAD", e.to_string()),
            other => ApiError::internal(other.to_string()),
        }
    }
}

impl ApiError {
    /// This error as one of a failed task's `taskErrors`.
    pub fn task_error(&self) -> crate::catalog::TaskError {
        crate::catalog::TaskError {
            error_code: self.code.into(),
            message: self.message.clone(),
            details: self.details.clone(),
            recommended_actions: self.recommended.clone(),
            error_source: self.source.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_errors_map_to_client_statuses() {
        let nf = CatalogError::NotFound {
            what: "plan script",
            key: "x".into(),
        };
        assert_eq!(ApiError::from(nf).status, StatusCode::NOT_FOUND);
        let inv = CatalogError::Invalid("bad".into());
        assert_eq!(ApiError::from(inv).status, StatusCode::BAD_REQUEST);
        let used = CatalogError::InUse {
            what: "plan script",
            id: "x".into(),
            users: vec![crate::catalog::UsedBy {
                what: "build plan",
                id: "b".into(),
                name: "bp".into(),
                uri: "/rest/build-plans/b".into(),
            }],
        };
        let e = ApiError::from(used);
        assert_eq!(e.status, StatusCode::CONFLICT);
        assert!(e.message.contains("\"bp\""), "{}", e.message);
    }
}
