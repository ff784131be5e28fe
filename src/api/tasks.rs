//! `/rest/tasks/{id}`: long work as clients poll it, and [`accepted`], the answer an
//! endpoint that starts long work gives (`202 Accepted`, `Location: /rest/tasks/{id}`, the
//! task as body).

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;

use super::error::ApiError;
use super::{read, AppState};
use crate::catalog::Task;

pub fn routes() -> Router<AppState> {
    Router::new().route("/rest/tasks/{id}", get(get_one))
}

async fn get_one(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let cat = st.catalog.clone();
    let t = read(&st.catalog, move || Ok(cat.get_task(&id)?)).await?;
    Ok(Json(serde_json::to_value(t).unwrap_or(Value::Null)))
}

/// `202 Accepted` for a task just started.
pub fn accepted(t: &Task) -> Response {
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, t.uri.clone())],
        Json(serde_json::to_value(t).unwrap_or(Value::Null)),
    )
        .into_response()
}
