//! `/rest/golden-images` beyond reading (which `artifacts.rs` serves): the multipart upload
//! of a zipped or raw image (name and description in the query string, as HPE's SDK sends
//! them) run as a task, a capture from an OS volume (a JSON body, a task),
//! `/download/{id}` streamed as a zip of one raw disk, `/archive/{id}` the capture's log,
//! update (name, description) and delete. The work is `appliance::golden_images`'.
//!
//! A capture, as HPE's SDK's `golden_images.create` sends it:
//!
//! ```text
//! POST /rest/golden-images
//! {"type": "GoldenImage", "name": "rhel-gold", "description": "...",
//!  "imageCapture": "true",
//!  "osVolumeURI": "/rest/os-volumes/ID",          (or the volume's id or name)
//!  "buildPlanURI": "/rest/build-plans/ID",        (a capture build plan; or buildPlanUri)
//!  "customAttributes": [{"name": "...", "value": "..."}]}   (optional)
//! ```
//!
//! answers 202 with a task whose resource is the new golden image once it completes.
//!
//! `DELETE ?force=true` (HPE's SDKs send `force=True`): accepted; a golden image is never
//! deleted while a deployment plan or an OS volume uses it, force or not (every OS volume
//! made from it reads its blocks), so force changes nothing here.

use axum::extract::{FromRequest, Multipart, Path, RawQuery, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::Value;

use super::auth::SessionUser;
use super::body::JsonBody;
use super::error::ApiError;
use super::stream::{self, UploadJob};
use super::version::{normalize_type, present, ApiVersion};
use super::{blocking, AppState};
use crate::appliance::{golden_images as gi, no_progress};
use crate::plan::artifacts::ArtifactKind;

const BASE: &str = "/rest/golden-images";
const KIND: ArtifactKind = ArtifactKind::GoldenImage;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            BASE,
            post(create).layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route(
            &format!("{BASE}/{{id}}"),
            axum::routing::put(update).delete(delete),
        )
        .route(&format!("{BASE}/download/{{id}}"), get(download))
        .route(&format!("{BASE}/archive/{{id}}"), get(archive))
}

/// Whether a request carries a multipart body.
pub fn is_multipart(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("multipart/")
        })
}

/// One parameter of a query string, percent-decoded.
pub fn query_param(q: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(q.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// `POST /rest/golden-images`: a multipart upload (a task). A JSON body asks for a capture
/// from an OS volume, which this endpoint does not do yet: 400 saying so.
async fn create(
    State(st): State<AppState>,
    Extension(who): Extension<SessionUser>,
    RawQuery(q): RawQuery,
    req: Request,
) -> Result<Response, ApiError> {
    if !is_multipart(&req) {
        let JsonBody(body) = JsonBody::from_request(req, &st).await?;
        return capture(st, who, body).await;
    }
    let form = Multipart::from_request(req, &st)
        .await
        .map_err(|e| ApiError::bad_request("INVALID_UPLOAD", e.body_text()))?;
    let name = query_param(q.as_deref(), "name").unwrap_or_default();
    let description = query_param(q.as_deref(), "description").unwrap_or_default();
    let (cat, repo) = (st.catalog.clone(), st.repo.clone());
    let job: UploadJob = Box::new(move |input, progress| {
        gi::upload_golden_image(&cat, &repo, &name, &description, input, progress)
    });
    stream::upload_task(&st, &who.user, "Add", "golden-images", form, job).await
}

/// A capture request's body (Image Streamer's field names; `buildPlanUri` and
/// `osVolumeUri` accepted too).
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct CaptureBody {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(rename = "osVolumeURI", alias = "osVolumeUri")]
    os_volume_uri: String,
    #[serde(rename = "buildPlanURI", alias = "buildPlanUri")]
    build_plan_uri: String,
    #[serde(default)]
    custom_attributes: Option<Value>,
}

/// `POST /rest/golden-images` with JSON: a capture (a task).
async fn capture(st: AppState, who: SessionUser, body: Value) -> Result<Response, ApiError> {
    let b: CaptureBody = serde_json::from_value(body).map_err(|e| {
        ApiError::bad_request(
            "INVALID_CAPTURE_REQUEST",
            format!("the capture request: {e}"),
        )
        .recommend(
            "Send {name, description, osVolumeURI, buildPlanURI} to capture an OS volume, \
                 or upload an image as multipart/form-data.",
        )
    })?;
    let values = super::volumes::values_of(b.custom_attributes)?;
    // What can be refused at once is, before the task.
    let (cat, vol, plan) = (
        st.catalog.clone(),
        b.os_volume_uri.clone(),
        b.build_plan_uri.clone(),
    );
    blocking(move || {
        cat.get_os_volume(&vol)?;
        cat.get_artifact(ArtifactKind::BuildPlan, &plan)?;
        Ok(())
    })
    .await?;
    let req = gi::CaptureRequest {
        name: b.name.clone(),
        description: b.description.unwrap_or_default(),
        os_volume: b.os_volume_uri,
        build_plan: b.build_plan_uri,
        values,
        ..gi::CaptureRequest::default()
    };
    let res = crate::catalog::AssociatedResource {
        resource_name: b.name,
        resource_category: "golden-images".into(),
        association_type: "MANAGED_BY".into(),
        ..Default::default()
    };
    let (cat, repo) = (st.catalog.clone(), st.repo.clone());
    stream::job_task(
        &st,
        &who.user,
        "Capture",
        "golden-images",
        res,
        Box::new(move |progress| gi::capture_golden_image(&cat, &repo, req, progress)),
    )
    .await
}

/// `GET /rest/golden-images/archive/{id}`: the log of the capture that made the image
/// (the capture's record, JSON), 404 for an image not captured here.
async fn archive(State(st): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let (cat, repo, key) = (st.catalog.clone(), st.repo.clone(), id.clone());
    let log = blocking(move || match gi::capture_log(&cat, &repo, &key) {
        Ok(l) => Ok(l),
        Err(crate::appliance::ApplianceError::Invalid(m)) => Err(ApiError::not_found(m)),
        Err(e) => Err(e.into()),
    })
    .await?;
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{id}-capture.json\""),
            ),
        ],
        log,
    )
        .into_response())
}

/// `PUT /rest/golden-images/{id}`: name and description (the disk does not change).
async fn update(
    State(st): State<AppState>,
    v: ApiVersion,
    Path(id): Path<String>,
    JsonBody(mut body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    normalize_type(KIND, &mut body);
    let cat = st.catalog.clone();
    let done = blocking(move || Ok(cat.update_artifact(KIND, &id, body)?)).await?;
    Ok(Json(present(KIND, v, done)))
}

/// `DELETE /rest/golden-images/{id}`: its row (refused while used), then its disk.
async fn delete(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (cat, repo, what) = (st.catalog.clone(), st.repo.clone(), id.clone());
    blocking(move || Ok(gi::delete_golden_image(&cat, &repo, &id)?)).await?;
    tracing::info!(id = %what, "golden image deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /rest/golden-images/download/{id}`: the image as a zip of one raw disk, streamed,
/// 200 whatever the `Accept` header says (HPE's SDK sends JSON first).
async fn download(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (cat, key, repo) = (st.catalog.clone(), id.clone(), st.repo.clone());
    let name = blocking(move || {
        let g = cat.get_artifact(KIND, &key)?;
        let Some(store) = cat.golden_image_store_name(&key)? else {
            return Err(ApiError::not_found(format!(
                "golden image {key:?} has no disk in the store (its description only)"
            )));
        };
        gi::disk_is_here(&repo, &key, &store)?;
        Ok(g["name"].as_str().unwrap_or(&key).to_owned())
    })
    .await?;
    let (cat, repo) = (st.catalog.clone(), st.repo.clone());
    Ok(stream::download(&format!("{name}.zip"), move |w| {
        gi::download_golden_image(&cat, &repo, &id, w, &no_progress).map(|_| ())
    })
    .into_response())
}
