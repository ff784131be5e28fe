//! `/rest/os-volumes`: the OS volumes the catalog records, listed and read. Deploying one
//! through the API (`POST`, a task) is a later slice.

use axum::extract::{Path, RawQuery, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;

use super::error::ApiError;
use super::list::ListParams;
use super::{blocking, AppState};
use crate::catalog::volumes::TYPE_OS_VOLUME;

const BASE: &str = "/rest/os-volumes";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(BASE, get(list))
        .route(&format!("{BASE}/{{id}}"), get(get_one))
}

async fn list(State(st): State<AppState>, q: RawQuery) -> Result<Json<Value>, ApiError> {
    let params = ListParams::from_raw(q)?;
    let (cat, query) = (st.catalog.clone(), params.query.clone());
    let page = blocking(move || Ok(cat.list_os_volumes(&query)?)).await?;
    Ok(Json(params.respond(
        BASE,
        &format!("{TYPE_OS_VOLUME}Collection"),
        "os-volumes",
        page,
    )))
}

async fn get_one(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let cat = st.catalog.clone();
    Ok(Json(blocking(move || Ok(cat.get_os_volume(&id)?)).await?))
}
