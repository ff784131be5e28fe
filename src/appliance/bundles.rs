//! Artifact bundles: taken in (uploaded, or made from selected artifacts), listed, renamed,
//! downloaded, deleted, and extracted into the catalog and the store.
//!
//! A bundle is a catalog row (`catalog::bundles`, the JSON the API serves) and a zip,
//! `bundles/<id>.zip` in the repository. An upload is spooled into the repository's `tmp/`,
//! opened with `plan::bundle::Bundle` (which verifies every checksum and refuses unsafe
//! names, duplicates, zip bombs, naming the reason) and only then moved to
//! `bundles/<id>.zip`; the row is written last, so a zip no row names is a crash's leftover
//! that `recover` removes. A delete removes the row first, then the file. Repositories from
//! before bundle rows kept a `bundles/<id>.json` description beside each zip: `recover`
//! turns those into rows.
//!
//! Extraction is all or nothing: every change (a row created, a row replaced, a store
//! image imported) is journalled before it is made (`journal.rs`) and undone, newest
//! first, when a later step fails, or by `recover` when a crash interrupted it.
//!
//! `forceImport`: Image Streamer's extract replaces artifacts of the same name on the
//! appliance when it is set, and refuses the bundle when it is not. Here, with it, plan
//! scripts, build plans and deployment plans of the same name are replaced in place (the
//! catalog's id kept, the bundle's references re-pointed to it); a golden image of the same
//! name is kept as it is (its disk is immutable and OS volumes may run from it) and the
//! bundle's references are re-pointed to it. Without it, any name already taken refuses the
//! whole bundle, naming every clash, before anything changes.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::error::{io_err, ApplianceError, Result};
use super::golden_images::{download_golden_image, store_name};
use super::journal::{Journal, Undo};
use super::spool::{spool, Scratch};
use super::{no_progress, percent, Progress};
use crate::catalog::bundles::ARTIFACT_BUNDLES_URI;
use crate::catalog::{new_id, now_timestamp, Catalog, CatalogError, ListQuery, Page};
use crate::plan::artifacts::{Artifact, ArtifactKind, ArtifactSet};
use crate::plan::bundle::{Bundle, Manifest, Payload, PayloadSource};
use crate::store::Repository;

pub const BUNDLES_DIR: &str = "bundles";

fn dir(repo: &Repository) -> PathBuf {
    repo.root().join(BUNDLES_DIR)
}

/// Where the zip of the bundle (or backup) with row id `id` is kept.
pub(crate) fn zip_path(repo: &Repository, id: &str) -> Result<PathBuf> {
    crate::store::names::validate(id)?;
    Ok(dir(repo).join(format!("{id}.zip")))
}

pub fn list_bundles(catalog: &Catalog, q: &ListQuery) -> Result<Page> {
    Ok(catalog.list_bundles(false, q)?)
}

/// The bundle `key` (id, URI or name).
pub fn get_bundle(catalog: &Catalog, key: &str) -> Result<Value> {
    Ok(catalog.get_bundle(key, false)?)
}

/// A bundle's `name` and `description` changed (the zip is not: what it holds is fixed).
pub fn update_bundle(catalog: &Catalog, key: &str, changes: &Value) -> Result<Value> {
    Ok(catalog.update_bundle(key, changes)?)
}

/// The zip of bundle `key` (id, URI or name), for a download, with the bundle's JSON.
pub fn bundle_file(catalog: &Catalog, repo: &Repository, key: &str) -> Result<(Value, PathBuf)> {
    let b = catalog.get_bundle(key, false)?;
    file_of(repo, b)
}

pub(crate) fn file_of(repo: &Repository, b: Value) -> Result<(Value, PathBuf)> {
    let p = zip_path(repo, b["id"].as_str().unwrap_or_default())?;
    if !p.is_file() {
        return Err(ApplianceError::Invalid(format!(
            "the zip of {:?} is missing from the repository ({})",
            b["name"].as_str().unwrap_or_default(),
            p.display()
        )));
    }
    Ok((b, p))
}

/// The JSON of a bundle just verified: what it holds, its size, the catalog's fields.
pub(crate) fn describe(b: &Bundle, id: &str, uri: &str, name: &str, size: u64) -> Value {
    let a = b.artifacts();
    let list = |v: Vec<(String, String)>| -> Vec<Value> {
        v.into_iter()
            .map(|(n, u)| json!({"name": n, "uri": u}))
            .collect()
    };
    let now = now_timestamp();
    json!({
        "type": "ArtifactsBundle",
        "category": "artifact-bundles",
        "id": id,
        "name": name,
        "uri": uri,
        "description": b.manifest().get("description").unwrap_or_default(),
        "size": size,
        "planScripts": list(a.plan_scripts.iter().map(|x| (x.name.clone(), format!("/rest/plan-scripts/{}", x.id))).collect()),
        "buildPlans": list(a.build_plans.iter().map(|x| (x.name.clone(), format!("/rest/build-plans/{}", x.id))).collect()),
        "deploymentPlans": list(a.deployment_plans.iter().map(|x| (x.name.clone(), format!("/rest/deployment-plans/{}", x.id))).collect()),
        "goldenImages": list(a.golden_images.iter().map(|x| (x.name.clone(), format!("/rest/golden-images/{}", x.id))).collect()),
        "status": "OK",
        "state": "",
        "created": now,
        "modified": now,
        "eTag": new_id(),
    })
}

/// A verified bundle (or backup) at `spooled` kept: moved to `bundles/<id>.zip`, then its
/// row written by `record`; if the row is refused, the file goes again.
pub(crate) fn keep(
    repo: &Repository,
    spooled: &Path,
    body: Value,
    record: impl FnOnce(Value) -> std::result::Result<Value, CatalogError>,
) -> Result<Value> {
    let zip = zip_path(repo, body["id"].as_str().unwrap_or_default())?;
    let d = dir(repo);
    fs::create_dir_all(&d).map_err(io_err("creating", &d))?;
    fs::File::open(spooled)
        .and_then(|f| f.sync_all())
        .map_err(io_err("syncing", spooled))?;
    fs::rename(spooled, &zip).map_err(io_err("keeping", &zip))?;
    match record(body) {
        Ok(v) => Ok(v),
        Err(e) => {
            let _ = fs::remove_file(&zip);
            Err(e.into())
        }
    }
}

/// Takes in an uploaded bundle: spooled, verified, kept under `bundles/`, recorded. Returns
/// its JSON. A refused bundle leaves nothing. Long for a large bundle: run it as a task.
pub fn upload_bundle(
    catalog: &Catalog,
    repo: &Repository,
    file_name: &str,
    mut input: impl Read,
    progress: Progress,
) -> Result<Value> {
    let scratch = Scratch::new(repo, "bundle-upload")?;
    let up = spool(&mut input, scratch.path(), "bundle.zip", &|n| {
        progress(0, &format!("received {} MiB", n >> 20))
    })?;
    drop(up.file);
    progress(50, "verifying the bundle");
    let b = Bundle::open(&up.path)?;
    let id = new_id();
    let name = b
        .manifest()
        .artifact_name()
        .map(str::to_owned)
        .unwrap_or_else(|| file_name.trim_end_matches(".zip").to_owned());
    let body = describe(
        &b,
        &id,
        &format!("{ARTIFACT_BUNDLES_URI}{id}"),
        &name,
        up.len,
    );
    drop(b);
    let v = keep(repo, &up.path, body, |b| catalog.add_bundle(b))?;
    progress(100, "uploaded");
    Ok(v)
}

/// The artifacts a create request selects: `planScripts`, `buildPlans`, `deploymentPlans`,
/// `goldenImages`, each `[{resourceUri, readOnly}]` (a URI, id or name), as catalog ids.
fn selected(catalog: &Catalog, body: &Value) -> Result<Vec<(ArtifactKind, String)>> {
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
            let a = catalog.get_artifact(kind, uri)?;
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

/// Writes `set` as a bundle in HPE's layout at `dest`, golden images with their disks
/// (each a zip of one raw disk, made in `scratch`). Progress within `[0, 60]`.
pub(crate) fn write_set(
    catalog: &Catalog,
    repo: &Repository,
    set: &ArtifactSet,
    manifest: &Manifest,
    scratch: &Path,
    dest: &Path,
    progress: Progress,
) -> Result<()> {
    let mut payloads = Vec::new();
    for (n, g) in set.golden_images.iter().enumerate() {
        if catalog.golden_image_store_name(&g.id)?.is_none() {
            continue;
        }
        progress(
            percent(n as u64, set.golden_images.len() as u64, 0, 60),
            "packing the golden images",
        );
        let p = scratch.join(format!("{}.zip", g.id));
        let f = fs::File::create(&p).map_err(io_err("creating", &p))?;
        download_golden_image(
            catalog,
            repo,
            &g.id,
            std::io::BufWriter::new(f),
            &no_progress,
        )?;
        payloads.push(Payload {
            golden_image: g.name.clone(),
            source: PayloadSource::File(p),
        });
    }
    progress(60, "writing the bundle");
    Bundle::write(dest, set, manifest, &payloads)?;
    Ok(())
}

/// Makes a bundle in HPE's layout from the artifacts `body` selects (`name`,
/// `description`, `planScripts`, `buildPlans`, `deploymentPlans`, `goldenImages`; golden
/// images with their disks) and takes it in as an upload is, so it is verified like any
/// other. Long (disks are packed): run it as a task.
pub fn create_bundle(
    catalog: &Catalog,
    repo: &Repository,
    body: &Value,
    progress: Progress,
) -> Result<Value> {
    let name = body["name"].as_str().unwrap_or_default().trim().to_owned();
    if name.is_empty() {
        return Err(ApplianceError::Invalid(
            "an artifact bundle needs a name".into(),
        ));
    }
    let picked = selected(catalog, body)?;
    let has = |k: ArtifactKind, id: &str| picked.iter().any(|(pk, pid)| *pk == k && pid == id);
    let mut set = catalog.artifact_set()?;
    set.plan_scripts
        .retain(|a| has(ArtifactKind::PlanScript, &a.id));
    set.build_plans
        .retain(|a| has(ArtifactKind::BuildPlan, &a.id));
    set.deployment_plans
        .retain(|a| has(ArtifactKind::DeploymentPlan, &a.id));
    set.golden_images
        .retain(|a| has(ArtifactKind::GoldenImage, &a.id));
    let scratch = Scratch::new(repo, "bundle-create")?;
    let mut manifest = Manifest::default();
    manifest.set("Artifact Name", &name);
    manifest.set(
        "description",
        body["description"].as_str().unwrap_or_default(),
    );
    let zip = scratch.path().join("bundle.zip");
    write_set(
        catalog,
        repo,
        &set,
        &manifest,
        scratch.path(),
        &zip,
        progress,
    )?;
    let f = fs::File::open(&zip).map_err(io_err("opening", &zip))?;
    let sub = |p: u8, what: &str| progress(60 + p * 4 / 10, what);
    upload_bundle(catalog, repo, &format!("{name}.zip"), f, &sub)
}

/// Deletes bundle `key`: its row first, then its zip.
pub fn delete_bundle(catalog: &Catalog, repo: &Repository, key: &str) -> Result<()> {
    let id = catalog.delete_bundle(key, false)?;
    remove_file_of(repo, &id);
    Ok(())
}

pub(crate) fn remove_file_of(repo: &Repository, id: &str) {
    if let Ok(p) = zip_path(repo, id) {
        if let Err(e) = fs::remove_file(&p) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("removing {}: {e}", p.display());
            }
        }
    }
}

/// At start: description files of repositories from before bundle rows become rows (and
/// go), and bundle zips no row names (a crash between the file and its row) are removed.
/// Returns the files removed.
pub(crate) fn reconcile_files(catalog: &Catalog, repo: &Repository) -> Result<Vec<String>> {
    let d = dir(repo);
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(&d) else {
        return Ok(out);
    };
    let mut known = catalog.bundle_ids()?;
    let mut zips = Vec::new();
    for e in rd.flatten() {
        let p = e.path();
        let Some(stem) = p.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else {
            continue;
        };
        match p.extension().and_then(|x| x.to_str()) {
            Some("json") => {
                let legacy = fs::read(&p)
                    .ok()
                    .and_then(|t| serde_json::from_slice::<Value>(&t).ok());
                match legacy {
                    Some(v) if v["id"] == stem.as_str() && p.with_extension("zip").is_file() => {
                        if !known.contains(&stem) {
                            catalog.add_bundle(v)?;
                            known.push(stem.clone());
                        }
                        let _ = fs::remove_file(&p);
                    }
                    _ => tracing::warn!("leaving {}: not a bundle description", p.display()),
                }
            }
            Some("zip") => zips.push((stem, p)),
            _ => {}
        }
    }
    for (id, p) in zips {
        if !known.contains(&id) && fs::remove_file(&p).is_ok() {
            out.push(p.display().to_string());
        }
    }
    Ok(out)
}

/// What was imported: the catalog's JSON of every artifact created or replaced.
#[derive(Debug, Default)]
pub struct Extracted {
    pub created: Vec<Value>,
    pub replaced: Vec<Value>,
    /// Golden images of the same name kept as they were (force).
    pub kept: Vec<String>,
}

/// Extracts bundle `key` (id or URI of an uploaded bundle) into the catalog and the store.
/// Long (golden-image disks are imported): run it as a task.
pub fn extract_bundle(
    catalog: &Catalog,
    repo: &Repository,
    key: &str,
    force_import: bool,
    progress: Progress,
) -> Result<Extracted> {
    let (_, zip) = bundle_file(catalog, repo, key)?;
    extract_bundle_file(catalog, repo, &zip, force_import, progress)
}

/// [`extract_bundle`] of a bundle file (zip or folder) anywhere.
pub fn extract_bundle_file(
    catalog: &Catalog,
    repo: &Repository,
    path: &Path,
    force_import: bool,
    progress: Progress,
) -> Result<Extracted> {
    progress(0, "verifying the bundle");
    let b = Bundle::open(path)?;
    let arts = b.artifacts().artifacts();
    // Name clashes, all found before anything changes.
    let mut existing: HashMap<(ArtifactKind, String), Value> = HashMap::new();
    let mut clashes = Vec::new();
    for a in &arts {
        let name = name_of(a);
        let page = catalog.list_artifacts(a.kind(), &Default::default())?;
        if let Some(m) = page
            .members
            .into_iter()
            .find(|m| m["name"] == name.as_str())
        {
            clashes.push(format!("{} {name:?}", a.kind().what()));
            existing.insert((a.kind(), a.id().to_owned()), m);
        }
    }
    if !clashes.is_empty() && !force_import {
        return Err(CatalogError::Conflict {
            what: "artifact bundle",
            detail: format!(
                "the appliance already has {}; extract with forceImport to replace them",
                clashes.join(", ")
            ),
        }
        .into());
    }
    // Bundle id -> catalog id, for the artifacts that keep the catalog's id.
    let mut repoint: HashMap<String, String> = HashMap::new();
    for ((_, bid), m) in &existing {
        let cid = m["id"]
            .as_str()
            .or_else(|| m["buildPlanid"].as_str())
            .unwrap_or_default();
        repoint.insert(bid.clone(), cid.to_owned());
    }
    // Each change is journalled before it is made: undone in process on failure, and by
    // `recover` after a crash.
    let mut undo = Journal::create(repo, "extract")?;
    let mut out = Extracted::default();
    let total = arts.len() as u64;
    let result = (|| -> Result<()> {
        for (n, a) in arts.iter().enumerate() {
            let kind = a.kind();
            let mut body: Value = serde_json::from_slice(&a.to_json())
                .map_err(|e| ApplianceError::Invalid(e.to_string()))?;
            repoint_refs(&mut body, &repoint);
            let ex = existing.get(&(kind, a.id().to_owned()));
            progress(
                percent(n as u64, total, 5, 99),
                &format!("importing {} {:?}", kind.what(), name_of(a)),
            );
            match (kind, ex) {
                (ArtifactKind::GoldenImage, Some(_)) => out.kept.push(name_of(a)),
                (ArtifactKind::GoldenImage, None) => {
                    let id = a.id().to_owned();
                    let v = if b.has_payload(&id) {
                        let s = store_name(&id);
                        undo.push(Undo::RemoveImage { name: s.clone() })?;
                        b.import_golden_image(repo, &id, &s, &|_, _| {})?;
                        if let Value::Object(m) = &mut body {
                            m.insert("importedFromBundle".into(), Value::Bool(true));
                        }
                        undo.push(Undo::delete(kind, &id))?;
                        super::pause_point(repo, "extract-rows");
                        catalog.create_golden_image(body, &s)?
                    } else {
                        undo.push(Undo::delete(kind, &id))?;
                        catalog.create_artifact(kind, body)?
                    };
                    out.created.push(v);
                }
                (_, Some(old)) => {
                    let cid = repoint.get(a.id()).cloned().unwrap_or_default();
                    if let Value::Object(m) = &mut body {
                        m.insert(kind.id_field().into(), Value::String(cid.clone()));
                    }
                    undo.push(Undo::restore(kind, &cid, old.clone()))?;
                    let v = catalog.update_artifact(kind, &cid, body)?;
                    out.replaced.push(v);
                }
                (_, None) => {
                    undo.push(Undo::delete(kind, a.id()))?;
                    let v = catalog.create_artifact(kind, body)?;
                    out.created.push(v);
                }
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        undo.undo(catalog, repo);
        return Err(e);
    }
    undo.close();
    progress(100, "extracted");
    Ok(out)
}

pub(crate) fn name_of(a: &Artifact) -> String {
    match a {
        Artifact::PlanScript(x) => x.name.clone(),
        Artifact::BuildPlan(x) => x.name.clone(),
        Artifact::DeploymentPlan(x) => x.name.clone(),
        Artifact::GoldenImage(x) => x.name.clone(),
    }
}

/// Rewrites references (`buildStep[].planScriptUri`, `oeBuildPlanURI`, `goldenImageURI`)
/// whose id is a key of `map` to the mapped id, keeping their form (URI or bare id).
fn repoint_refs(body: &mut Value, map: &HashMap<String, String>) {
    let fix = |v: &mut Value| {
        if let Value::String(s) = v {
            let (prefix, id) = match s.rfind('/') {
                Some(i) => s.split_at(i + 1),
                None => ("", s.as_str()),
            };
            if let Some(new) = map.get(id) {
                *s = format!("{prefix}{new}");
            }
        }
    };
    if let Some(steps) = body.get_mut("buildStep").and_then(Value::as_array_mut) {
        for s in steps {
            if let Some(v) = s.get_mut("planScriptUri") {
                fix(v);
            }
        }
    }
    for f in ["oeBuildPlanURI", "goldenImageURI"] {
        if let Some(v) = body.get_mut(f) {
            fix(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_repointed_in_their_own_form() {
        let map = HashMap::from([("old".to_string(), "new".to_string())]);
        let mut b = json!({"buildStep": [{"planScriptUri": "/rest/plan-scripts/old"},
                                         {"planScriptUri": "/rest/plan-scripts/other"}],
                           "goldenImageURI": "old", "oeBuildPlanURI": "/rest/build-plans/x"});
        repoint_refs(&mut b, &map);
        assert_eq!(b["buildStep"][0]["planScriptUri"], "/rest/plan-scripts/new");
        assert_eq!(
            b["buildStep"][1]["planScriptUri"],
            "/rest/plan-scripts/other"
        );
        assert_eq!(b["goldenImageURI"], "new");
        assert_eq!(b["oeBuildPlanURI"], "/rest/build-plans/x");
    }
}
