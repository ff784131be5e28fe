//! Artifact bundles taken in and extracted into the catalog and the store.
//!
//! An upload is spooled into the repository's `tmp/`, opened with `plan::bundle::Bundle`
//! (which verifies every checksum and refuses unsafe names, duplicates, zip bombs, naming
//! the reason) and only then moved to `bundles/<id>.zip`, with its description beside it
//! in `bundles/<id>.json` (written last, by rename: a zip without one is a crash's leftover
//! that `recover` removes). Catalog rows for bundles (a migration and `catalog/bundles.rs`)
//! are still to come; the description file stands in for them.
//!
//! Extraction is all or nothing: every change (a row created, a row replaced, a store
//! image imported) is logged and undone, newest first, when a later step fails.
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
use super::golden_images::store_name;
use super::spool::{spool, Scratch};
use super::{percent, Progress};
use crate::catalog::{new_id, now_timestamp, Catalog, CatalogError};
use crate::plan::artifacts::{Artifact, ArtifactKind};
use crate::plan::bundle::Bundle;
use crate::store::Repository;

pub const BUNDLES_DIR: &str = "bundles";
pub const ARTIFACT_BUNDLES_URI: &str = "/rest/artifact-bundles/";

fn dir(repo: &Repository) -> PathBuf {
    repo.root().join(BUNDLES_DIR)
}

fn id_of(key: &str) -> &str {
    key.strip_prefix(ARTIFACT_BUNDLES_URI).unwrap_or(key)
}

/// The zip file of bundle `key` (id or URI), for a download.
pub fn bundle_file(repo: &Repository, key: &str) -> Result<PathBuf> {
    let id = id_of(key);
    crate::store::names::validate(id)?;
    let p = dir(repo).join(format!("{id}.zip"));
    if !p.is_file() || !dir(repo).join(format!("{id}.json")).is_file() {
        return Err(CatalogError::NotFound {
            what: "artifact bundle",
            key: key.into(),
        }
        .into());
    }
    Ok(p)
}

/// The description of bundle `key` (id or URI).
pub fn get_bundle(repo: &Repository, key: &str) -> Result<Value> {
    let zip = bundle_file(repo, key)?;
    let p = zip.with_extension("json");
    let text = fs::read(&p).map_err(io_err("reading", &p))?;
    serde_json::from_slice(&text)
        .map_err(|e| ApplianceError::Invalid(format!("{}: {e}", p.display())))
}

/// Takes in an uploaded bundle: spooled, verified, kept under `bundles/`. Returns its JSON.
/// A refused bundle leaves nothing. Long for a large bundle: run it as a task.
pub fn upload_bundle(
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
    let a = b.artifacts();
    let list = |v: Vec<(String, String)>| -> Vec<Value> {
        v.into_iter()
            .map(|(n, u)| json!({"name": n, "uri": u}))
            .collect()
    };
    let now = now_timestamp();
    let body = json!({
        "type": "ArtifactsBundle",
        "category": "artifact-bundles",
        "id": id,
        "name": name,
        "uri": format!("{ARTIFACT_BUNDLES_URI}{id}"),
        "description": b.manifest().get("description").unwrap_or_default(),
        "size": up.len,
        "planScripts": list(a.plan_scripts.iter().map(|x| (x.name.clone(), format!("/rest/plan-scripts/{}", x.id))).collect()),
        "buildPlans": list(a.build_plans.iter().map(|x| (x.name.clone(), format!("/rest/build-plans/{}", x.id))).collect()),
        "deploymentPlans": list(a.deployment_plans.iter().map(|x| (x.name.clone(), format!("/rest/deployment-plans/{}", x.id))).collect()),
        "goldenImages": list(a.golden_images.iter().map(|x| (x.name.clone(), format!("/rest/golden-images/{}", x.id))).collect()),
        "status": "OK",
        "state": "",
        "created": now,
        "modified": now,
        "eTag": new_id(),
    });
    drop(b);
    let d = dir(repo);
    fs::create_dir_all(&d).map_err(io_err("creating", &d))?;
    let zip = d.join(format!("{id}.zip"));
    fs::rename(&up.path, &zip).map_err(io_err("keeping", &zip))?;
    let tmp = scratch.path().join("bundle.json");
    let write = fs::write(&tmp, serde_json::to_vec_pretty(&body).unwrap_or_default())
        .and_then(|()| fs::File::open(&tmp)?.sync_all())
        .and_then(|()| fs::rename(&tmp, zip.with_extension("json")));
    if let Err(e) = write {
        let _ = fs::remove_file(&zip);
        return Err(io_err("writing", zip.with_extension("json"))(e));
    }
    progress(100, "uploaded");
    Ok(body)
}

/// Deletes bundle `key`: its description first, then its zip.
pub fn delete_bundle(repo: &Repository, key: &str) -> Result<()> {
    let zip = bundle_file(repo, key)?;
    let j = zip.with_extension("json");
    fs::remove_file(&j).map_err(io_err("removing", &j))?;
    fs::remove_file(&zip).map_err(io_err("removing", &zip))?;
    Ok(())
}

/// Bundle zips without a description (a crash between the two), removed.
pub(crate) fn remove_orphan_files(_catalog: &Catalog, repo: &Repository) -> Result<Vec<String>> {
    let d = dir(repo);
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(&d) else {
        return Ok(out);
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "zip")
            && !p.with_extension("json").exists()
            && fs::remove_file(&p).is_ok()
        {
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

enum Undo {
    Delete(ArtifactKind, String),
    Restore(ArtifactKind, String, Value),
    RemoveImage(String),
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
    let zip = bundle_file(repo, key)?;
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
    let mut undo: Vec<Undo> = Vec::new();
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
                        b.import_golden_image(repo, &id, &s, &|_, _| {})?;
                        undo.push(Undo::RemoveImage(s.clone()));
                        if let Value::Object(m) = &mut body {
                            m.insert("importedFromBundle".into(), Value::Bool(true));
                        }
                        catalog.create_golden_image(body, &s)?
                    } else {
                        catalog.create_artifact(kind, body)?
                    };
                    undo.push(Undo::Delete(kind, id));
                    out.created.push(v);
                }
                (_, Some(old)) => {
                    let cid = repoint.get(a.id()).cloned().unwrap_or_default();
                    if let Value::Object(m) = &mut body {
                        m.insert(kind.id_field().into(), Value::String(cid.clone()));
                    }
                    let v = catalog.update_artifact(kind, &cid, body)?;
                    undo.push(Undo::Restore(kind, cid, old.clone()));
                    out.replaced.push(v);
                }
                (_, None) => {
                    let v = catalog.create_artifact(kind, body)?;
                    undo.push(Undo::Delete(kind, a.id().to_owned()));
                    out.created.push(v);
                }
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        for u in undo.into_iter().rev() {
            let r: Result<()> = match u {
                Undo::Delete(k, id) => catalog.delete_artifact(k, &id).map_err(Into::into),
                Undo::Restore(k, id, body) => catalog
                    .update_artifact(k, &id, body)
                    .map(|_| ())
                    .map_err(Into::into),
                Undo::RemoveImage(s) => repo.remove_image(&s).map_err(Into::into),
            };
            if let Err(e2) = r {
                tracing::warn!("undoing a failed bundle extraction: {e2}");
            }
        }
        return Err(e);
    }
    progress(100, "extracted");
    Ok(out)
}

fn name_of(a: &Artifact) -> String {
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
