//! `/rest/plan-scripts`, `/rest/build-plans`, `/rest/deployment-plans` (CRUD and used-by)
//! and `/rest/golden-images` (read; upload is a later slice). One set of thin handlers for
//! the four kinds: each turns the request into a catalog call and the answer into the
//! version's JSON.

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;

use super::body::JsonBody;
use super::error::ApiError;
use super::list::ListParams;
use super::version::{normalize_type, present, present_text, ApiVersion};
use super::{blocking, read, AppState};
use crate::catalog::artifacts::uri_prefix;
use crate::catalog::UsedBy;
use crate::plan::artifacts::ArtifactKind;

/// The collection's path (`/rest/plan-scripts`) and category (`plan-scripts`).
fn base(kind: ArtifactKind) -> &'static str {
    uri_prefix(kind).trim_end_matches('/')
}

fn category(kind: ArtifactKind) -> &'static str {
    base(kind).trim_start_matches("/rest/")
}

/// The routes of one kind; `writable` adds create, replace and delete.
pub fn routes(kind: ArtifactKind, writable: bool) -> Router<AppState> {
    let b = base(kind);
    let one = format!("{b}/{{id}}");
    let mut coll = get(move |st: State<AppState>, v: ApiVersion, q: RawQuery| list(kind, st, v, q));
    let mut item =
        get(move |st: State<AppState>, v: ApiVersion, id: Path<String>| get_one(kind, st, v, id));
    if writable {
        coll = coll.post(move |st: State<AppState>, v: ApiVersion, body: JsonBody| {
            create(kind, st, v, body)
        });
        item = item
            .put(
                move |st: State<AppState>, v: ApiVersion, id: Path<String>, body: JsonBody| {
                    update(kind, st, v, id, body)
                },
            )
            .delete(move |st: State<AppState>, id: Path<String>, q: RawQuery| {
                delete(kind, st, id, q)
            });
    }
    let mut r = Router::new().route(b, coll).route(&one, item);
    let users =
        move |st: State<AppState>, v: ApiVersion, id: Path<String>| used_by(kind, st, v, id);
    match kind {
        ArtifactKind::PlanScript => {
            r = r
                .route(&format!("{b}/{{id}}/usedby/readonly"), get(users))
                .route(
                    &format!("{b}/differences/{{id}}"),
                    axum::routing::post(differences),
                );
        }
        ArtifactKind::DeploymentPlan => {
            r = r
                .route(&format!("{b}/{{id}}/usedby"), get(users))
                .route(&format!("{b}/{{id}}/osdp"), get(osdp));
        }
        ArtifactKind::BuildPlan => {
            r = r.route(&format!("{b}/{{id}}/usedby"), get(users));
        }
        ArtifactKind::GoldenImage => {}
    }
    r
}

async fn list(
    kind: ArtifactKind,
    State(st): State<AppState>,
    v: ApiVersion,
    q: RawQuery,
) -> Result<Json<Value>, ApiError> {
    let params = ListParams::from_raw(q)?;
    let (cat, query) = (st.catalog.clone(), params.query.clone());
    let mut page = read(&st.catalog, move || Ok(cat.list_artifacts(kind, &query)?)).await?;
    page.members = page
        .members
        .into_iter()
        .map(|m| present(kind, v, m))
        .collect();
    Ok(Json(params.respond(
        base(kind),
        &v.collection_type(kind),
        category(kind),
        page,
    )))
}

async fn get_one(
    kind: ArtifactKind,
    State(st): State<AppState>,
    v: ApiVersion,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (cat, key) = (st.catalog.clone(), id.clone());
    let text = read(&st.catalog, move || Ok(cat.get_artifact_text(kind, &key)?)).await?;
    if let Some(b) = present_text(kind, v, &text) {
        return Ok(([(header::CONTENT_TYPE, "application/json")], b).into_response());
    }
    // Not an object as stored: the parsed way, which says what is wrong.
    let cat = st.catalog.clone();
    let body = read(&st.catalog, move || Ok(cat.get_artifact(kind, &id)?)).await?;
    Ok(Json(present(kind, v, body)).into_response())
}

async fn create(
    kind: ArtifactKind,
    State(st): State<AppState>,
    v: ApiVersion,
    JsonBody(mut body): JsonBody,
) -> Result<Response, ApiError> {
    normalize_type(kind, &mut body);
    let cat = st.catalog.clone();
    let made = blocking(move || Ok(cat.create_artifact(kind, body)?)).await?;
    let uri = made["uri"].as_str().unwrap_or_default().to_owned();
    tracing::info!(kind = kind.what(), uri = %uri, "created");
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, uri)],
        Json(present(kind, v, made)),
    )
        .into_response())
}

async fn update(
    kind: ArtifactKind,
    State(st): State<AppState>,
    v: ApiVersion,
    Path(id): Path<String>,
    JsonBody(mut body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    normalize_type(kind, &mut body);
    let cat = st.catalog.clone();
    let done = blocking(move || Ok(cat.update_artifact(kind, &id, body)?)).await?;
    Ok(Json(present(kind, v, done)))
}

/// `DELETE {uri}` (`?force=true`, as HPE's SDKs send `force=True`): refused with 409 naming
/// the users while anything uses the artifact. Force matters for a deployment plan only:
/// OS volumes deployed from it do not keep it (they keep running, their
/// `deploymentPlanUri` cleared, their deployment records kept), as Image Streamer deletes a
/// plan its server profiles still name when forced. A script, build plan or golden image
/// another artifact or an OS volume needs is never deleted, force or not.
async fn delete(
    kind: ArtifactKind,
    State(st): State<AppState>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<StatusCode, ApiError> {
    let force = super::golden_images::query_param(q.as_deref(), "force")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let cat = st.catalog.clone();
    let what = id.clone();
    let detached = blocking(move || Ok(cat.delete_artifact_forced(kind, &id, force)?)).await?;
    tracing::info!(
        kind = kind.what(),
        id = %what,
        force,
        detached = detached.len(),
        "deleted"
    );
    Ok(StatusCode::NO_CONTENT)
}

/// The artifacts (or OS volumes) that use this one, as full resources.
async fn used_by(
    kind: ArtifactKind,
    State(st): State<AppState>,
    v: ApiVersion,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let cat = st.catalog.clone();
    let users: Vec<Value> = blocking(move || {
        let mut out = Vec::new();
        for u in cat.used_by(kind, &id)? {
            out.push(resource_of(&cat, v, &u)?);
        }
        Ok(out)
    })
    .await?;
    Ok(Json(Value::Array(users)))
}

/// `POST /rest/plan-scripts/differences/{id}`: the stored content beside the one sent (a
/// JSON string, as HPE's SDK sends it), and whether they differ.
async fn differences(
    State(st): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let Value::String(given) = body else {
        return Err(ApiError::bad_request(
            "INVALID_REQUEST_BODY",
            "the body is the new content as a JSON string",
        ));
    };
    let cat = st.catalog.clone();
    let stored = blocking(move || Ok(cat.get_artifact(ArtifactKind::PlanScript, &id)?)).await?;
    let current = stored["content"].as_str().unwrap_or_default().to_owned();
    Ok(Json(serde_json::json!({
        "uri": stored["uri"],
        "name": stored["name"],
        "currentContent": current,
        "newContent": given,
        "identical": current == given,
    })))
}

/// `GET /rest/deployment-plans/{id}/osdp`: the plan as OneView's OS deployment plan (its
/// attributes as `additionalParameters`).
async fn osdp(State(st): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let cat = st.catalog.clone();
    let dp = blocking(move || Ok(cat.get_artifact(ArtifactKind::DeploymentPlan, &id)?)).await?;
    let params = dp
        .get("customAttributes")
        .cloned()
        .filter(Value::is_array)
        .unwrap_or(Value::Array(Vec::new()));
    Ok(Json(serde_json::json!({
        "type": "OsDeploymentPlan",
        "category": "os-deployment-plans",
        "id": dp["id"],
        "name": dp["name"],
        "description": dp["description"],
        "uri": dp["uri"],
        "deploymentPlanUri": dp["uri"],
        "additionalParameters": params,
    })))
}

fn resource_of(
    cat: &crate::catalog::Catalog,
    v: ApiVersion,
    u: &UsedBy,
) -> Result<Value, ApiError> {
    let kind = match u.what {
        "build plan" => ArtifactKind::BuildPlan,
        "deployment plan" => ArtifactKind::DeploymentPlan,
        _ => return Ok(cat.get_os_volume(&u.id)?),
    };
    Ok(present(kind, v, cat.get_artifact(kind, &u.id)?))
}
