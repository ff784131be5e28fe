//! `/rest/artifact-bundles` and `/rest/deployment-groups`: bundles uploaded (multipart, a
//! task), listed, read, downloaded (streamed, 200 whatever `Accept` says), extracted
//! (`PUT {uri}?extract=true&forceImport=…`, a task; HPE's SDK sends `text/plain` and the
//! body `null`, so the body is not read as JSON) and deleted. The work is
//! `appliance::bundles`'; bundles live as files under the repository's `bundles/` until the
//! catalog has rows for them, so the list reads that directory.
//!
//! Deployment groups: strata is one appliance, so there is one fixed group, [`LOCAL_GROUP`]
//! (Image Streamer's backups name a group; the catalog has no table for them).

use axum::extract::{FromRequest, Multipart, Path, RawQuery, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{json, Value};

use super::auth::SessionUser;
use super::error::ApiError;
use super::golden_images::{is_multipart, query_param};
use super::list::ListParams;
use super::stream::{self, UploadJob};
use super::{blocking, AppState};
use crate::appliance::bundles as ab;
use crate::catalog::{AssociatedResource, Page};

const BASE: &str = "/rest/artifact-bundles";
pub(super) const GROUPS: &str = "/rest/deployment-groups";

/// The id of the one deployment group: this appliance.
pub const LOCAL_GROUP: &str = "local";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            BASE,
            get(list)
                .post(create)
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route(
            &format!("{BASE}/{{id}}"),
            get(get_one).put(put_one).delete(delete),
        )
        .route(&format!("{BASE}/download/{{id}}"), get(download))
        .route(GROUPS, get(list_groups))
        .route(&format!("{GROUPS}/{{id}}"), get(get_group))
}

async fn list(State(st): State<AppState>, q: RawQuery) -> Result<Json<Value>, ApiError> {
    let params = ListParams::from_raw(q)?;
    let (cat, query) = (st.catalog.clone(), params.query.clone());
    let page = blocking(move || Ok(ab::list_bundles(&cat, &query)?)).await?;
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
        blocking(move || Ok(ab::get_bundle(&cat, &id)?)).await?,
    ))
}

/// `POST /rest/artifact-bundles`: a multipart upload of a bundle (a task). A JSON body asks
/// for a bundle made from selected artifacts (a task too).
async fn create(
    State(st): State<AppState>,
    Extension(who): Extension<SessionUser>,
    req: Request,
) -> Result<Response, ApiError> {
    if !is_multipart(&req) {
        let super::body::JsonBody(body) = super::body::JsonBody::from_request(req, &st).await?;
        let name = body["name"].as_str().unwrap_or_default().trim().to_owned();
        if name.is_empty() {
            return Err(ApiError::bad_request(
                "INVALID_BUNDLE_REQUEST",
                "an artifact bundle needs a name",
            ));
        }
        let (cat, repo) = (st.catalog.clone(), st.repo.clone());
        let res = AssociatedResource {
            resource_name: name,
            resource_category: "artifact-bundles".into(),
            association_type: "MANAGED_BY".into(),
            ..AssociatedResource::default()
        };
        return stream::job_task(
            &st,
            &who.user,
            "Create",
            "artifact-bundles",
            res,
            Box::new(move |progress| ab::create_bundle(&cat, &repo, &body, progress)),
        )
        .await;
    }
    let form = Multipart::from_request(req, &st)
        .await
        .map_err(|e| ApiError::bad_request("INVALID_UPLOAD", e.body_text()))?;
    let (cat, repo) = (st.catalog.clone(), st.repo.clone());
    let job: UploadJob = Box::new(move |input, progress| {
        ab::upload_bundle(&cat, &repo, "bundle.zip", input, progress)
    });
    stream::upload_task(&st, &who.user, "Add", "artifact-bundles", form, job).await
}

/// `PUT /rest/artifact-bundles/{id}`: with `extract=true`, extracts it (a task; the body,
/// `null` from HPE's SDK, is ignored). Without, a JSON body renames it.
async fn put_one(
    State(st): State<AppState>,
    Extension(who): Extension<SessionUser>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    req: Request,
) -> Result<Response, ApiError> {
    let flag =
        |n: &str| query_param(q.as_deref(), n).is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if !flag("extract") {
        let super::body::JsonBody(body) = super::body::JsonBody::from_request(req, &st).await?;
        let cat = st.catalog.clone();
        let done = blocking(move || Ok(ab::update_bundle(&cat, &id, &body)?)).await?;
        return Ok(Json(done).into_response());
    }
    let force = flag("forceImport");
    let (cat, key) = (st.catalog.clone(), id.clone());
    let bundle = blocking(move || Ok(ab::get_bundle(&cat, &key)?)).await?;
    let res = AssociatedResource {
        resource_name: bundle["name"].as_str().unwrap_or_default().into(),
        resource_uri: bundle["uri"].as_str().unwrap_or_default().into(),
        resource_category: "artifact-bundles".into(),
        association_type: "MANAGED_BY".into(),
    };
    let (cat, repo) = (st.catalog.clone(), st.repo.clone());
    stream::job_task(
        &st,
        &who.user,
        "Extract",
        "artifact-bundles",
        res,
        Box::new(move |progress| {
            let x = ab::extract_bundle(&cat, &repo, &id, force, progress)?;
            tracing::info!(
                bundle = %id,
                created = x.created.len(),
                replaced = x.replaced.len(),
                kept = x.kept.len(),
                "bundle extracted"
            );
            Ok(bundle)
        }),
    )
    .await
}

async fn delete(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let (cat, repo) = (st.catalog.clone(), st.repo.clone());
    blocking(move || Ok(ab::delete_bundle(&cat, &repo, &id)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /rest/artifact-bundles/download/{id}`: the bundle's zip, streamed.
async fn download(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (cat, repo) = (st.catalog.clone(), st.repo.clone());
    let (b, path) = blocking(move || Ok(ab::bundle_file(&cat, &repo, &id)?)).await?;
    Ok(send_file(b["name"].as_str().unwrap_or("bundle"), path))
}

/// 200 with the file at `path` streamed as `{name}.zip`.
pub(super) fn send_file(name: &str, path: std::path::PathBuf) -> Response {
    stream::download(&format!("{name}.zip"), move |w| {
        let mut f = std::fs::File::open(&path).map_err(|e| {
            crate::appliance::ApplianceError::Download(format!("{}: {e}", path.display()))
        })?;
        std::io::copy(&mut f, w)
            .map(|_| ())
            .map_err(|e| crate::appliance::ApplianceError::Download(e.to_string()))
    })
    .into_response()
}

/// Checks that `uri` (a `deploymentGroupURI` given, if any) names the one group; returns
/// the group's URI.
pub(super) fn check_group(uri: Option<&str>) -> Result<String, ApiError> {
    let own = format!("{GROUPS}/{LOCAL_GROUP}");
    match uri.map(str::trim).filter(|u| !u.is_empty()) {
        None => Ok(own),
        Some(u) if u == own || u == LOCAL_GROUP => Ok(own),
        Some(u) => Err(ApiError::not_found(format!(
            "no deployment group {u:?}: strata has one, {own}"
        ))),
    }
}

/// The one deployment group.
fn local_group() -> Value {
    json!({
        "type": "DeploymentGroup",
        "category": "deployment-groups",
        "id": LOCAL_GROUP,
        "name": "strata",
        "description": "this strata appliance (strata has one deployment group)",
        "uri": format!("{GROUPS}/{LOCAL_GROUP}"),
        "state": "",
        "status": "OK",
        "eTag": "1",
    })
}

async fn list_groups(q: RawQuery) -> Result<Json<Value>, ApiError> {
    let params = ListParams::from_raw(q)?;
    let page: Page = params.query.apply(vec![local_group()]);
    Ok(Json(params.respond(
        GROUPS,
        "DeploymentGroupCollection",
        "deployment-groups",
        page,
    )))
}

async fn get_group(Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let g = local_group();
    if id == LOCAL_GROUP || g["uri"] == id {
        Ok(Json(g))
    } else {
        Err(ApiError::not_found(format!("no deployment group {id:?}")))
    }
}
