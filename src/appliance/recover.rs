//! What the appliance does when it starts, after a crash or a `kill -9` mid-job. Staged
//! files need nothing: they live in the repository's `tmp/`, which `Repository::open`
//! empties. Left to do here, in this order:
//! - journals of interrupted multi-step jobs (a bundle's extraction) are undone
//!   (`journal.rs`);
//! - a deploy this node was running is undone whole: its task names the OS volume, so its
//!   export, its row and its store volume go (the deploy refuses a name the store already
//!   has, so the volume is the task's own); store volumes no task names are left alone
//!   (the CLI makes volumes without rows);
//! - this node's tasks that were running are marked failed
//!   (`Catalog::fail_unfinished_tasks`; on a shared catalog another node's are its own);
//! - store images the appliance made (`gi-<id>`) whose catalog row was never written (the
//!   row is written last) are removed, as are bundle files no bundle row names
//!   (bundle descriptions of older repositories become rows first).

use super::deploy::DEPLOY_TASK;
use super::error::Result;
use super::golden_images::STORE_PREFIX;
use crate::catalog::{Catalog, CatalogError};
use crate::plan::artifacts::ArtifactKind;
use crate::store::Repository;

/// What [`recover`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    pub failed_tasks: usize,
    /// Journals of interrupted jobs undone.
    pub undone_jobs: usize,
    /// OS volumes of interrupted deploys removed.
    pub undone_deploys: Vec<String>,
    /// Store images removed because no golden image row names them.
    pub orphan_images: Vec<String>,
    /// Bundle files removed because no bundle row names them.
    pub orphan_bundles: Vec<String>,
}

/// Run once at start, before taking requests.
pub fn recover(catalog: &Catalog, repo: &Repository) -> Result<Recovered> {
    let mut r = Recovered {
        undone_jobs: super::journal::replay_all(catalog, repo)?,
        ..Recovered::default()
    };
    for t in catalog.unfinished_tasks()? {
        let res = &t.associated_resource;
        if t.name == DEPLOY_TASK && res.resource_category == "os-volumes" {
            if undo_deploy(catalog, repo, &res.resource_name)? {
                r.undone_deploys.push(res.resource_name.clone());
            }
        }
    }
    r.failed_tasks =
        catalog.fail_unfinished_tasks("the appliance stopped while this task was running")?;
    for img in repo.list_images()? {
        let Some(id) = img.name.strip_prefix(STORE_PREFIX) else {
            continue;
        };
        if catalog.get_artifact(ArtifactKind::GoldenImage, id).is_ok() {
            continue;
        }
        match repo.remove_image(&img.name) {
            Ok(()) => r.orphan_images.push(img.name),
            Err(e) => tracing::warn!("keeping unrecorded image {:?}: {e}", img.name),
        }
    }
    r.orphan_bundles = super::bundles::reconcile_files(catalog, repo)?;
    if r != Recovered::default() {
        tracing::info!(
            "recovered: {} task(s) failed, {} job(s) and {} deploy(s) undone, {} unrecorded \
             image(s) and {} bundle file(s) removed",
            r.failed_tasks,
            r.undone_jobs,
            r.undone_deploys.len(),
            r.orphan_images.len(),
            r.orphan_bundles.len()
        );
    }
    Ok(r)
}

/// Undoes what an interrupted deploy of OS volume `name` made: its export, its row, its
/// store volume, whichever exist. Whether anything was there.
fn undo_deploy(catalog: &Catalog, repo: &Repository, name: &str) -> Result<bool> {
    if crate::store::names::validate(name).is_err() {
        return Ok(false);
    }
    let row = catalog.get_os_volume(name).is_ok();
    let store = match catalog.os_volume_store_name(name) {
        Ok(s) => s,
        Err(_) => name.to_owned(),
    };
    let mut found = row;
    match catalog.remove_export(&store) {
        Ok(()) => found = true,
        Err(CatalogError::NotExported(_)) => {}
        Err(e) => return Err(e.into()),
    }
    if row {
        catalog.delete_os_volume(name)?;
    }
    if repo.volume_meta(&store).is_ok() {
        repo.remove_volume(&store)?;
        found = true;
    }
    Ok(found)
}
