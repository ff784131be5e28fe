//! `/rest/os-volumes`: the OS volumes the catalog records, listed and read, their storage
//! (`/{id}/storage`) and deployment log (`/archive/{name}`), and deployed.
//!
//! Deploying is strata's own endpoint (Image Streamer deploys only for OneView's server
//! profiles, with no public call for it):
//!
//! ```text
//! POST /rest/os-volumes
//! {"deploymentPlanURI": "/rest/deployment-plans/ID",   (or the plan's id or name)
//!  "name": "web01",                                     (the new OS volume)
//!  "initiatorIqn": "iqn.2026-01.com.example:web01",     (optional: exported to it alone)
//!  "customAttributes": [{"name": "Hostname", "value": "web01"}, ...]}
//!                                    (optional; or an object {"Hostname": "web01", ...})
//! ```
//!
//! answers 202 with a task (`Location: /rest/tasks/ID`) that runs the appliance's deploy
//! (`appliance::deploy::deploy_os_volume`: the build plan's scripts on a copy of the golden
//! image, the volume's row and deployment record, its iSCSI export) and whose
//! `associatedResource.resourceUri` is the new OS volume once it completes. It is the
//! pipeline `strata deploy` runs (`plan::deploy`), on the catalog's artifacts.

use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::Value;

use super::auth::SessionUser;
use super::body::JsonBody;
use super::error::ApiError;
use super::list::ListParams;
use super::stream;
use super::{blocking, AppState};
use crate::appliance::deploy::{
    deploy_os_volume, deployment_log, os_volume_storage, DeployRequest, DEPLOY_TASK,
};
use crate::catalog::volumes::TYPE_OS_VOLUME;
use crate::catalog::AssociatedResource;
use crate::plan::attrs::DeploymentValues;

const BASE: &str = "/rest/os-volumes";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(BASE, get(list).post(deploy))
        .route(&format!("{BASE}/{{id}}"), get(get_one))
        .route(&format!("{BASE}/{{id}}/storage"), get(storage))
        .route(&format!("{BASE}/archive/{{name}}"), get(archive))
}

/// `GET /rest/os-volumes/{id}/storage`: where the volume's blocks are and how it is
/// exported (`appliance::deploy::os_volume_storage`).
async fn storage(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (cat, repo) = (st.catalog.clone(), st.repo.clone());
    Ok(Json(
        blocking(move || Ok(os_volume_storage(&cat, &repo, &id)?)).await?,
    ))
}

/// `GET /rest/os-volumes/archive/{name}`: the volume's deployment log, a JSON document
/// (`{osVolume, deployments}`) sent as a file, as HPE's SDK's `download_archive` saves it.
/// Image Streamer sent an archive of its deployment logs; strata's log is the records its
/// deployments wrote.
async fn archive(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let (cat, key) = (st.catalog.clone(), name.clone());
    let log = blocking(move || Ok(deployment_log(&cat, &key)?)).await?;
    let bytes = serde_json::to_vec_pretty(&log).unwrap_or_default();
    Ok((
        axum::http::StatusCode::OK,
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/json".to_owned(),
            ),
            (
                axum::http::header::CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=\"{}-deployment.json\"",
                    name.replace('"', "")
                ),
            ),
        ],
        bytes,
    )
        .into_response())
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

/// A deploy request's body.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeployBody {
    #[serde(rename = "deploymentPlanURI", alias = "deploymentPlanUri")]
    deployment_plan_uri: String,
    name: String,
    #[serde(default)]
    initiator_iqn: Option<String>,
    #[serde(default)]
    custom_attributes: Option<Value>,
}

/// `customAttributes` as `[{name, value}]` (Image Streamer's form) or `{NAME: VALUE}`.
pub(super) fn values_of(attrs: Option<Value>) -> Result<DeploymentValues, ApiError> {
    let obj = match attrs {
        None | Some(Value::Null) => return Ok(DeploymentValues::default()),
        Some(Value::Array(list)) => {
            let mut m = serde_json::Map::new();
            for a in list {
                let Some(n) = a.get("name").and_then(Value::as_str) else {
                    return Err(ApiError::bad_request(
                        "INVALID_ATTRIBUTES",
                        format!("each customAttributes entry needs a name: {a}"),
                    ));
                };
                m.insert(n.to_owned(), a.get("value").cloned().unwrap_or(Value::Null));
            }
            Value::Object(m)
        }
        Some(v) => v,
    };
    DeploymentValues::from_json(&obj)
        .map_err(|e| ApiError::bad_request("INVALID_ATTRIBUTES", e.to_string()))
}

/// `POST /rest/os-volumes`: deploys a deployment plan as a new OS volume (a task).
async fn deploy(
    State(st): State<AppState>,
    Extension(who): Extension<SessionUser>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let b: DeployBody = serde_json::from_value(body).map_err(|e| {
        ApiError::bad_request("INVALID_DEPLOY_REQUEST", format!("the deploy request: {e}"))
            .recommend("Send {deploymentPlanURI, name, initiatorIqn?, customAttributes?}.")
    })?;
    let values = values_of(b.custom_attributes)?;
    let (cat, plan) = (st.catalog.clone(), b.deployment_plan_uri.clone());
    blocking(move || {
        cat.get_artifact(crate::plan::artifacts::ArtifactKind::DeploymentPlan, &plan)?;
        Ok(())
    })
    .await?;
    let req = DeployRequest {
        deployment_plan: b.deployment_plan_uri,
        volume: b.name.clone(),
        initiator: b.initiator_iqn.filter(|s| !s.is_empty()),
        values,
        ..DeployRequest::default()
    };
    let res = AssociatedResource {
        resource_name: b.name,
        resource_uri: String::new(),
        resource_category: "os-volumes".into(),
        association_type: "MANAGED_BY".into(),
    };
    let (cat, repo) = (st.catalog.clone(), st.repo.clone());
    stream::job_task(
        &st,
        &who.user,
        DEPLOY_TASK,
        "os-volumes",
        res,
        Box::new(move |progress| Ok(deploy_os_volume(&cat, &repo, req, progress)?.os_volume)),
    )
    .await
}
