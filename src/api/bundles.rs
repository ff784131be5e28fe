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
use crate::appliance::golden_images::download_golden_image;
use crate::appliance::spool::Scratch;
use crate::appliance::{no_progress, ApplianceError};
use crate::catalog::{AssociatedResource, Catalog, Page};
use crate::plan::artifacts::ArtifactKind;
use crate::plan::bundle::{Bundle, Manifest, Payload, PayloadSource};
use crate::store::Repository;

const BASE: &str = "/rest/artifact-bundles";
const GROUPS: &str = "/rest/deployment-groups";

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

/// Every bundle's description, as `appliance::bundles` keeps them.
fn all_bundles(repo: &crate::store::Repository) -> Result<Vec<Value>, ApiError> {
    let dir = repo.root().join(ab::BUNDLES_DIR);
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Ok(out);
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "json") {
            if let Some(id) = p.file_stem().and_then(|s| s.to_str()) {
                match ab::get_bundle(repo, id) {
                    Ok(b) => out.push(b),
                    Err(e) => tracing::warn!(bundle = %id, "skipping a bundle: {e}"),
                }
            }
        }
    }
    Ok(out)
}

async fn list(State(st): State<AppState>, q: RawQuery) -> Result<Json<Value>, ApiError> {
    let params = ListParams::from_raw(q)?;
    let (repo, query) = (st.repo.clone(), params.query.clone());
    let page = blocking(move || Ok(query.apply(all_bundles(&repo)?))).await?;
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
    let repo = st.repo.clone();
    Ok(Json(
        blocking(move || Ok(ab::get_bundle(&repo, &id)?)).await?,
    ))
}

/// `POST /rest/artifact-bundles`: a multipart upload of a bundle (a task). A JSON body asks
/// for a bundle made from selected artifacts.
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
            Box::new(move |progress| make_bundle(&cat, &repo, &body, progress)),
        )
        .await;
    }
    let form = Multipart::from_request(req, &st)
        .await
        .map_err(|e| ApiError::bad_request("INVALID_UPLOAD", e.body_text()))?;
    let repo = st.repo.clone();
    let job: UploadJob =
        Box::new(move |input, progress| ab::upload_bundle(&repo, "bundle.zip", input, progress));
    stream::upload_task(&st, &who.user, "Add", "artifact-bundles", form, job).await
}

/// The artifacts a create request selects: `planScripts`, `buildPlans`, `deploymentPlans`,
/// `goldenImages`, each `[{resourceUri, readOnly}]`, as catalog ids per kind.
fn selected(cat: &Catalog, body: &Value) -> Result<Vec<(ArtifactKind, String)>, ApplianceError> {
    let mut out = Vec::new();
    for (field, kind) in [
        ("planScripts", ArtifactKind::PlanScript),
        ("buildPlans", ArtifactKind::BuildPlan),
        ("deploymentPlans", ArtifactKind::DeploymentPlan),
        ("goldenImages", ArtifactKind::GoldenImage),
    ] {
        for item in body[field]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let uri = item["resourceUri"]
                .as_str()
                .or_else(|| item["uri"].as_str())
                .ok_or_else(|| {
                    ApplianceError::Invalid(format!("each entry of {field} needs a resourceUri"))
                })?;
            // The id is the URI's last segment (a build plan's JSON calls it `buildPlanid`).
            let a = cat.get_artifact(kind, uri)?;
            let id = a["uri"].as_str().and_then(|u| u.rsplit('/').next());
            out.push((kind, id.unwrap_or_default().to_owned()));
        }
    }
    if out.is_empty() {
        return Err(ApplianceError::Invalid(
            "the bundle selects no artifacts (planScripts, buildPlans, deploymentPlans, \
             goldenImages)"
                .into(),
        ));
    }
    Ok(out)
}

/// Makes a bundle in HPE's layout from the selected artifacts (golden images with their
/// disks, each a zip of one raw disk) and takes it in as an upload would be, so it is
/// verified like any other. Composed of the appliance's and plan's own steps until
/// `appliance::bundles` has a job for it.
fn make_bundle(
    cat: &Catalog,
    repo: &Repository,
    body: &Value,
    progress: crate::appliance::Progress,
) -> Result<Value, ApplianceError> {
    let name = body["name"].as_str().unwrap_or_default().trim().to_owned();
    let picked = selected(cat, body)?;
    let has = |k: ArtifactKind, id: &str| picked.iter().any(|(pk, pid)| *pk == k && pid == id);
    let mut set = cat.artifact_set()?;
    set.plan_scripts
        .retain(|a| has(ArtifactKind::PlanScript, &a.id));
    set.build_plans
        .retain(|a| has(ArtifactKind::BuildPlan, &a.id));
    set.deployment_plans
        .retain(|a| has(ArtifactKind::DeploymentPlan, &a.id));
    set.golden_images
        .retain(|a| has(ArtifactKind::GoldenImage, &a.id));
    let scratch = Scratch::new(repo, "bundle-create")?;
    let mut payloads = Vec::new();
    for (n, g) in set.golden_images.iter().enumerate() {
        if cat.golden_image_store_name(&g.id)?.is_none() {
            continue;
        }
        progress(
            crate::appliance::percent(n as u64, set.golden_images.len() as u64, 0, 60),
            "packing the golden images",
        );
        let p = scratch.path().join(format!("{}.zip", g.id));
        let f = std::fs::File::create(&p).map_err(|e| ApplianceError::Io {
            action: "creating",
            path: p.clone(),
            source: e,
        })?;
        download_golden_image(cat, repo, &g.id, std::io::BufWriter::new(f), &no_progress)?;
        payloads.push(Payload {
            golden_image: g.name.clone(),
            source: PayloadSource::File(p),
        });
    }
    let mut manifest = Manifest::default();
    manifest.set("Artifact Name", &name);
    manifest.set(
        "description",
        body["description"].as_str().unwrap_or_default(),
    );
    let zip = scratch.path().join("bundle.zip");
    progress(60, "writing the bundle");
    Bundle::write(&zip, &set, &manifest, &payloads)?;
    let f = std::fs::File::open(&zip).map_err(|e| ApplianceError::Io {
        action: "opening",
        path: zip.clone(),
        source: e,
    })?;
    let sub = |p: u8, what: &str| progress(60 + p * 4 / 10, what);
    ab::upload_bundle(repo, &format!("{name}.zip"), f, &sub)
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
        let repo = st.repo.clone();
        let done = blocking(move || rename(&repo, &id, &body)).await?;
        return Ok(Json(done).into_response());
    }
    let force = flag("forceImport");
    let (repo, key) = (st.repo.clone(), id.clone());
    let bundle = blocking(move || Ok(ab::get_bundle(&repo, &key)?)).await?;
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

/// A bundle's `name` and `description` changed (the zip is not: what it holds is fixed).
/// Bundles have no catalog rows yet, so this rewrites the description file
/// `appliance::bundles` keeps beside the zip, atomically (a new file renamed over it).
fn rename(repo: &Repository, id: &str, body: &Value) -> Result<Value, ApiError> {
    let mut b = ab::get_bundle(repo, id)?;
    for f in ["name", "description"] {
        match body.get(f) {
            None | Some(Value::Null) => {}
            Some(Value::String(v)) if f == "name" && v.trim().is_empty() => {
                return Err(ApiError::bad_request(
                    "INVALID_BUNDLE_REQUEST",
                    "an artifact bundle's name cannot be empty",
                ))
            }
            Some(Value::String(v)) => b[f] = Value::String(v.clone()),
            Some(other) => {
                return Err(ApiError::bad_request(
                    "INVALID_BUNDLE_REQUEST",
                    format!("{f} must be a string, not {other}"),
                ))
            }
        }
    }
    b["modified"] = Value::String(crate::catalog::now_timestamp());
    b["eTag"] = Value::String(crate::catalog::new_id());
    let path = ab::bundle_file(repo, id)?.with_extension("json");
    let tmp = path.with_extension("json.new");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&b).unwrap_or_default())
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| ApiError::internal(format!("writing {}: {e}", path.display())))?;
    Ok(b)
}

async fn delete(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let repo = st.repo.clone();
    blocking(move || Ok(ab::delete_bundle(&repo, &id)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /rest/artifact-bundles/download/{id}`: the bundle's zip, streamed.
async fn download(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let repo = st.repo.clone();
    let (path, name) = blocking(move || {
        let b = ab::get_bundle(&repo, &id)?;
        Ok((
            ab::bundle_file(&repo, &id)?,
            b["name"].as_str().unwrap_or(&id).to_owned(),
        ))
    })
    .await?;
    Ok(stream::download(&format!("{name}.zip"), move |w| {
        let mut f = std::fs::File::open(&path).map_err(|e| {
            crate::appliance::ApplianceError::Download(format!("{}: {e}", path.display()))
        })?;
        std::io::copy(&mut f, w)
            .map(|_| ())
            .map_err(|e| crate::appliance::ApplianceError::Download(e.to_string()))
    })
    .into_response())
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
