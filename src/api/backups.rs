//! `/rest/artifact-bundles/backups`: the appliance's one backup, as HPE's SDKs drive it
//! (`artifact_bundles.create_backup`, `get_all_backups`, `get_backup`, `download_archive`,
//! `upload_backup_bundle_from_file`, `extract_backup`):
//!
//! ```text
//! GET  /rest/artifact-bundles/backups                 the backups (one at most)
//! POST /rest/artifact-bundles/backups                 {deploymentGroupURI}: make one (task)
//! GET  /rest/artifact-bundles/backups/{id}            one
//! PUT  /rest/artifact-bundles/backups/{id}            {deploymentGroupURI}: restore it (task)
//! GET  /rest/artifact-bundles/backups/archive/{id}    its zip, streamed
//! POST /rest/artifact-bundles/backups/archive?deploymentGrpUri=URI
//!                                                     multipart upload of a backup (task)
//! ```
//!
//! Each task's `associatedResource` is the backup. What a backup holds and how a restore
//! replaces the catalog's artifacts: `appliance::backups`.

use axum::extract::{FromRequest, Multipart, Path, RawQuery, Request, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::Value;

use super::auth::SessionUser;
use super::body::JsonBody;
use super::bundles::{check_group, send_file};
use super::error::ApiError;
use super::golden_images::query_param;
use super::list::ListParams;
use super::stream::{self, UploadJob};
use super::{blocking, AppState};
use crate::appliance::backups as ab;
use crate::catalog::AssociatedResource;

const BASE: &str = "/rest/artifact-bundles/backups";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(BASE, get(list).post(create))
        .route(
            &format!("{BASE}/archive"),
            post(upload).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route(&format!("{BASE}/archive/{{id}}"), get(download))
        .route(&format!("{BASE}/{{id}}"), get(get_one).put(restore))
}

async fn list(State(st): State<AppState>, q: RawQuery) -> Result<Json<Value>, ApiError> {
    let params = ListParams::from_raw(q)?;
    let (cat, query) = (st.catalog.clone(), params.query.clone());
    let page = blocking(move || Ok(ab::list_backups(&cat, &query)?)).await?;
    Ok(Json(params.respond(
        BASE,
        "ArtifactsBundleCollection",
        "artifact-bundles",
        page,
    )))
}

async fn get_one(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let cat = st.catalog.clone();
    Ok(Json(
        blocking(move || Ok(ab::get_backup(&cat, &id)?)).await?,
    ))
}

fn resource(name: &str, uri: &str) -> AssociatedResource {
    AssociatedResource {
        resource_name: name.into(),
        resource_uri: uri.into(),
        resource_category: "artifact-bundles".into(),
        association_type: "MANAGED_BY".into(),
    }
}

/// The `deploymentGroupURI` of a JSON body (absent or null: the one group).
fn group_of(body: &Value) -> Result<String, ApiError> {
    match body.get("deploymentGroupURI") {
        None | Some(Value::Null) => check_group(None),
        Some(Value::String(u)) => check_group(Some(u)),
        Some(other) => Err(ApiError::bad_request(
            "INVALID_BACKUP_REQUEST",
            format!("deploymentGroupURI must be a string, not {other}"),
        )),
    }
}

/// A body that may be empty (the SDK always sends one; curl users may not).
async fn optional_json(req: Request, st: &AppState) -> Result<Value, ApiError> {
    let has_body = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.trim() != "0");
    if !has_body {
        return Ok(Value::Null);
    }
    match JsonBody::from_request(req, st).await {
        Ok(JsonBody(v)) => Ok(v),
        Err(e) if e.code == "INVALID_JSON" && e.message.contains("empty") => Ok(Value::Null),
        Err(e) => Err(e),
    }
}

/// `POST /rest/artifact-bundles/backups`: makes the backup (a task).
async fn create(
    State(st): State<AppState>,
    Extension(who): Extension<SessionUser>,
    req: Request,
) -> Result<Response, ApiError> {
    let body = optional_json(req, &st).await?;
    let group = group_of(&body)?;
    let (cat, repo) = (st.catalog.clone(), st.repo.clone());
    stream::job_task(
        &st,
        &who.user,
        "Create backup",
        "artifact-bundles",
        resource(ab::BACKUP_NAME, ""),
        Box::new(move |progress| ab::create_backup(&cat, &repo, &group, progress)),
    )
    .await
}

/// `PUT /rest/artifact-bundles/backups/{id}`: restores the backup (a task).
async fn restore(
    State(st): State<AppState>,
    Extension(who): Extension<SessionUser>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let body = optional_json(req, &st).await?;
    group_of(&body)?;
    let (cat, key) = (st.catalog.clone(), id.clone());
    let backup = blocking(move || Ok(ab::get_backup(&cat, &key)?)).await?;
    let res = resource(
        backup["name"].as_str().unwrap_or_default(),
        backup["uri"].as_str().unwrap_or_default(),
    );
    let (cat, repo) = (st.catalog.clone(), st.repo.clone());
    stream::job_task(
        &st,
        &who.user,
        "Restore backup",
        "artifact-bundles",
        res,
        Box::new(move |progress| {
            let r = ab::restore_backup(&cat, &repo, &id, progress)?;
            tracing::info!(
                backup = %id,
                artifacts = ?r.artifacts,
                images_removed = r.freed_images.len(),
                "backup restored"
            );
            Ok(backup)
        }),
    )
    .await
}

/// `POST /rest/artifact-bundles/backups/archive?deploymentGrpUri=…`: a backup uploaded
/// (multipart, a task); it replaces the appliance's backup and is restored by a PUT.
async fn upload(
    State(st): State<AppState>,
    Extension(who): Extension<SessionUser>,
    RawQuery(q): RawQuery,
    req: Request,
) -> Result<Response, ApiError> {
    let group = check_group(query_param(q.as_deref(), "deploymentGrpUri").as_deref())?;
    let form = Multipart::from_request(req, &st)
        .await
        .map_err(|e| ApiError::bad_request("INVALID_UPLOAD", e.body_text()))?;
    let (cat, repo) = (st.catalog.clone(), st.repo.clone());
    let job: UploadJob =
        Box::new(move |input, progress| ab::upload_backup(&cat, &repo, &group, input, progress));
    stream::upload_task(
        &st,
        &who.user,
        "Upload backup",
        "artifact-bundles",
        form,
        job,
    )
    .await
}

/// `GET /rest/artifact-bundles/backups/archive/{id}`: the backup's zip, streamed.
async fn download(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (cat, repo) = (st.catalog.clone(), st.repo.clone());
    let (b, path) = blocking(move || Ok(ab::backup_file(&cat, &repo, &id)?)).await?;
    Ok(send_file(b["name"].as_str().unwrap_or("backup"), path))
}
