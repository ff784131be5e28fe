//! An OS volume deployed through the catalog: the deployment plan, its build plan, scripts
//! and golden image come from the catalog's artifacts (`Catalog::artifact_set`), the golden
//! image's blocks from the store image its row names; `plan::deploy::deploy_set` makes the
//! volume (out of sight until every script has succeeded); then the `os_volumes` row and its
//! deployment record are written, and the volume is exported over iSCSI to its server's
//! initiator (the catalog's exports, which a running target polls).
//!
//! Order, for crash consistency: store volume (published last by the pipeline), catalog
//! row, export. A failure after the volume exists removes it again. A crash anywhere leaves
//! the deploy's task unfinished, naming the volume ([`DEPLOY_TASK`]); `recover` then
//! removes whatever of it exists (export, row, store volume). So that the store volume of
//! that name is surely the deploy's own, a name the store already has is refused up front.

use serde_json::Value;

use super::error::{ApplianceError, Result};
use super::{percent, Progress};
use crate::catalog::volumes::NewOsVolume;
use crate::catalog::{Catalog, CatalogError};
use crate::fs::worker::client::WorkerOptions;
use crate::iscsi::exports::{self, Export};
use crate::plan::artifacts::ArtifactKind;
use crate::plan::attrs::{Builtins, DeploymentValues};
use crate::plan::deploy::{self, DeployError, DeployOptions};
use crate::plan::sandbox::SandboxOptions;
use crate::store::Repository;

/// The name of a deploy's task, whose associated resource names the OS volume; `recover`
/// undoes the deploys of the ones a crash left running.
pub const DEPLOY_TASK: &str = "Deploy";

/// What to deploy.
#[derive(Clone, Default)]
pub struct DeployRequest {
    /// The deployment plan: name, id or `/rest/deployment-plans/<id>`.
    pub deployment_plan: String,
    /// The new OS volume's name (also its store volume's name).
    pub volume: String,
    /// The server's initiator IQN: the volume is exported to it alone. None: not exported.
    pub initiator: Option<String>,
    pub values: DeploymentValues,
    pub builtins: Builtins,
    pub worker: WorkerOptions,
    pub sandbox: SandboxOptions,
}

/// A deployed OS volume.
#[derive(Debug)]
pub struct Deployed {
    /// The catalog's JSON of the OS volume.
    pub os_volume: Value,
    /// The deployment record (JSON), as the catalog stores it.
    pub record: Value,
    /// Its iSCSI export, when an initiator was given.
    pub export: Option<Export>,
}

/// Deploys `req.deployment_plan` as the OS volume `req.volume`. Long (scripts run): run it
/// as a task. On failure nothing is left: no store volume, no row, no export.
pub fn deploy_os_volume(
    catalog: &Catalog,
    repo: &Repository,
    req: DeployRequest,
    progress: Progress,
) -> Result<Deployed> {
    crate::store::names::validate(&req.volume)?;
    if let Some(i) = &req.initiator {
        exports::validate_iqn(i)?;
    }
    if catalog.get_os_volume(&req.volume).is_ok() {
        return Err(ApplianceError::Invalid(format!(
            "an OS volume named {:?} exists already",
            req.volume
        )));
    }
    if repo.volume_meta(&req.volume).is_ok() {
        return Err(ApplianceError::Invalid(format!(
            "the store has a volume named {:?} already (made outside the catalog, by the \
             CLI?): choose another name, or remove it with `strata volume rm`",
            req.volume
        )));
    }
    progress(0, "resolving the deployment plan");
    let plan = catalog.get_artifact(ArtifactKind::DeploymentPlan, &req.deployment_plan)?;
    let plan_id = plan["id"].as_str().unwrap_or_default().to_owned();
    let set = catalog.artifact_set()?;
    let golden = set
        .resolve(&plan_id)
        .map_err(|e| ApplianceError::Invalid(e.to_string()))?
        .golden_image_name
        .clone();
    let image_for =
        |gi: &str, _: crate::store::transfer::Progress| -> Result<String, DeployError> {
            match catalog.golden_image_store_name(gi) {
                Ok(Some(s)) => match super::golden_images::disk_is_here(repo, gi, &s) {
                    Ok(()) => Ok(s),
                    Err(e) => Err(DeployError::Artifacts(e.to_string())),
                },
                Ok(None) => Err(DeployError::Artifacts(format!(
                    "golden image {gi:?} has no disk in the store: upload it first"
                ))),
                Err(e) => Err(DeployError::Artifacts(e.to_string())),
            }
        };
    let opts = DeployOptions {
        volume: req.volume.clone(),
        artifacts: Default::default(),
        plan: plan_id.clone(),
        values: req.values,
        builtins: req.builtins,
        initiator: req.initiator.clone(),
        worker: req.worker,
        sandbox: req.sandbox,
        echo: false,
    };
    progress(5, "running the build plan");
    let noop = |d: u64, t: u64| progress(percent(d, t, 5, 10), "running the build plan");
    let d = deploy::deploy_set(
        repo,
        &set,
        &image_for,
        opts,
        std::time::Instant::now(),
        &noop,
    )
    .map_err(|f| ApplianceError::Deploy(f.error.to_string()))?;
    progress(95, "recording the OS volume");
    super::pause_point(repo, "deploy-row");
    let record = serde_json::to_value(&d.record)
        .map_err(|e| ApplianceError::Invalid(format!("the deployment record: {e}")))?;
    let undo = |why: &dyn std::fmt::Display| {
        if let Err(e) = repo.remove_volume(&req.volume) {
            tracing::warn!("removing volume {:?} after {why}: {e}", req.volume);
        }
    };
    let row = catalog.create_os_volume(NewOsVolume {
        name: &req.volume,
        store_volume: &d.volume.name,
        deployment_plan: Some(&plan_id),
        golden_image: golden.as_deref(),
        size: Some(d.volume.size),
        description: None,
    });
    let os_volume = match row.and_then(|v| {
        catalog.add_deployment_record(&req.volume, &record)?;
        Ok(v)
    }) {
        Ok(v) => v,
        Err(e) => {
            let _ = catalog.delete_os_volume(&req.volume);
            undo(&e);
            return Err(e.into());
        }
    };
    let export = match &req.initiator {
        None => None,
        Some(i) => {
            let e = Export {
                volume: d.volume.name.clone(),
                iqn: exports::default_iqn(&d.volume.name),
                initiators: vec![i.clone()],
                chap: None,
                mutual_chap: None,
            };
            if let Err(err) = catalog.add_export(&e) {
                let _ = catalog.delete_os_volume(&req.volume);
                undo(&err);
                return Err(err.into());
            }
            Some(e)
        }
    };
    progress(100, "deployed");
    Ok(Deployed {
        os_volume,
        record,
        export,
    })
}

/// An OS volume's storage, as `/rest/os-volumes/{id}/storage` shows it: the store volume
/// holding its blocks (its size, the golden image it is a copy-on-write clone of) and its
/// iSCSI export (target IQN and the initiators allowed), if it is exported.
pub fn os_volume_storage(catalog: &Catalog, repo: &Repository, key: &str) -> Result<Value> {
    let vol = catalog.get_os_volume(key)?;
    let store = catalog.os_volume_store_name(key)?;
    let meta = repo.volume_meta(&store).ok();
    let export = catalog.exports()?.into_iter().find(|e| e.volume == store);
    Ok(serde_json::json!({
        "type": "OSVolumeStorage",
        "osVolumeURI": vol["uri"],
        "name": vol["name"],
        "storeVolume": store,
        "present": meta.is_some(),
        "size": meta.as_ref().map(|m| m.size),
        "storeImage": meta.as_ref().and_then(|m| m.image.clone()),
        "goldenImageUri": vol["goldenImageUri"],
        "targetIqn": export.as_ref().map(|e| e.iqn.clone()),
        "initiators": export.map(|e| e.initiators).unwrap_or_default(),
    }))
}

/// The deployment log of OS volume `key` (name, id or URI), as `/rest/os-volumes/archive/
/// {name}` serves it: the volume and every deployment record it has (each the steps,
/// their output with secret values masked, timings and result), oldest first, as JSON.
pub fn deployment_log(catalog: &Catalog, key: &str) -> Result<Value> {
    let vol = catalog.get_os_volume(key)?;
    let records = catalog.deployment_records(key)?;
    Ok(serde_json::json!({
        "osVolume": vol,
        "deployments": records,
    }))
}

/// Deletes an OS volume: its export (if any), its row, then its store volume.
pub fn delete_os_volume(catalog: &Catalog, repo: &Repository, key: &str) -> Result<()> {
    let store = catalog.os_volume_store_name(key)?;
    match catalog.remove_export(&store) {
        Ok(()) | Err(CatalogError::NotExported(_)) => {}
        Err(e) => return Err(e.into()),
    }
    catalog.delete_os_volume(key)?;
    if let Err(e) = repo.remove_volume(&store) {
        tracing::warn!("OS volume {key:?} deleted, but not its store volume {store:?}: {e}");
    }
    Ok(())
}
