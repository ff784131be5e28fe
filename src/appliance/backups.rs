//! The appliance's backup, as Image Streamer's `/rest/artifact-bundles/backups` keeps it:
//! one backup bundle at a time, holding every artifact of the catalog, made on request,
//! downloaded, uploaded (from another appliance, or this one's earlier download) and
//! restored.
//!
//! What a backup holds: every plan script, build plan, deployment plan and golden image
//! in HPE's bundle layout (so any bundle reader opens it), with each golden image's disk
//! as its payload (a zip of one raw disk), and the manifest naming it a backup of this
//! appliance. HPE's documentation describes the backup as holding all the appliance's
//! artifacts and does not say whether the golden images' disks travel in it; strata's do,
//! so that a restore on an empty appliance can deploy again. Not in a backup: users,
//! sessions, tasks, OS volumes (they are the servers' disks, not artifacts) and other
//! artifact bundles.
//!
//! A restore replaces the catalog's artifacts with the backup's (`Catalog::
//! restore_artifacts`: one transaction). Disks first: a golden image the catalog already
//! holds under the same id keeps its store image (a disk never changes), the others are
//! imported from the backup's payloads. Then the transaction; if it is refused (an OS
//! volume still uses an artifact the backup lacks, or the backup's artifacts do not hold
//! together), the disks just imported go again and nothing has changed. After it, the
//! store images no row names any more are removed (a crash before leaves images `recover`
//! removes).

use std::collections::HashMap;
use std::io::Read;

use serde_json::Value;

use super::bundles::{describe, file_of, keep, remove_file_of, write_set};
use super::error::Result;
use super::golden_images::store_name;
use super::spool::{spool, Scratch};
use super::{percent, Progress};
use crate::catalog::bundles::BACKUPS_URI;
use crate::catalog::restore::Restored;
use crate::catalog::{new_id, Catalog, ListQuery, Page};
use crate::plan::artifacts::ArtifactKind;
use crate::plan::bundle::{Bundle, Manifest};
use crate::store::Repository;

/// The manifest's `Artifact Name` of the backups strata makes.
pub const BACKUP_NAME: &str = "strata backup";

pub fn list_backups(catalog: &Catalog, q: &ListQuery) -> Result<Page> {
    Ok(catalog.list_bundles(true, q)?)
}

/// The backup `key` (id, URI or name).
pub fn get_backup(catalog: &Catalog, key: &str) -> Result<Value> {
    Ok(catalog.get_bundle(key, true)?)
}

/// The zip of backup `key`, for a download, with the backup's JSON.
pub fn backup_file(
    catalog: &Catalog,
    repo: &Repository,
    key: &str,
) -> Result<(Value, std::path::PathBuf)> {
    file_of(repo, catalog.get_bundle(key, true)?)
}

/// Keeps the verified bundle at `path` as the one backup (the previous one goes).
fn keep_backup(
    catalog: &Catalog,
    repo: &Repository,
    b: Bundle,
    path: &std::path::Path,
    size: u64,
    group: &str,
) -> Result<Value> {
    let id = new_id();
    let name = b
        .manifest()
        .artifact_name()
        .unwrap_or(BACKUP_NAME)
        .to_owned();
    let mut body = describe(&b, &id, &format!("{BACKUPS_URI}{id}"), &name, size);
    body["deploymentGroupURI"] = Value::String(group.into());
    drop(b);
    let mut replaced = Vec::new();
    let v = keep(repo, path, body, |body| {
        replaced = catalog.replace_backup(body.clone())?;
        Ok(body)
    })?;
    for old in replaced {
        remove_file_of(repo, &old);
    }
    Ok(v)
}

/// Makes the backup: every artifact, golden images with their disks. Replaces the previous
/// backup. `group` is the deployment group's URI it is recorded under. Long: run it as a
/// task.
pub fn create_backup(
    catalog: &Catalog,
    repo: &Repository,
    group: &str,
    progress: Progress,
) -> Result<Value> {
    progress(0, "reading the catalog");
    let set = catalog.artifact_set()?;
    let scratch = Scratch::new(repo, "backup")?;
    let mut manifest = Manifest::default();
    manifest.set("Artifact Name", BACKUP_NAME);
    manifest.set(
        "description",
        &format!(
            "backup of every artifact, {}",
            crate::catalog::now_timestamp()
        ),
    );
    let zip = scratch.path().join("backup.zip");
    let sub = |p: u8, what: &str| progress(p * 9 / 10, what);
    write_set(catalog, repo, &set, &manifest, scratch.path(), &zip, &sub)?;
    progress(90, "verifying the backup");
    let b = Bundle::open(&zip)?;
    let size = std::fs::metadata(&zip).map(|m| m.len()).unwrap_or_default();
    let v = keep_backup(catalog, repo, b, &zip, size, group)?;
    progress(100, "backed up");
    Ok(v)
}

/// Takes in an uploaded backup (any bundle in HPE's layout) as the one backup: spooled,
/// verified, kept. Restoring it is a separate step ([`restore_backup`]).
pub fn upload_backup(
    catalog: &Catalog,
    repo: &Repository,
    group: &str,
    mut input: impl Read,
    progress: Progress,
) -> Result<Value> {
    let scratch = Scratch::new(repo, "backup-upload")?;
    let up = spool(&mut input, scratch.path(), "backup.zip", &|n| {
        progress(0, &format!("received {} MiB", n >> 20))
    })?;
    drop(up.file);
    progress(50, "verifying the backup");
    let b = Bundle::open(&up.path)?;
    let v = keep_backup(catalog, repo, b, &up.path, up.len, group)?;
    progress(100, "uploaded");
    Ok(v)
}

/// Restores backup `key`: the catalog's artifacts become the backup's, all or nothing (see
/// the module doc). Long (disks are imported): run it as a task.
pub fn restore_backup(
    catalog: &Catalog,
    repo: &Repository,
    key: &str,
    progress: Progress,
) -> Result<Restored> {
    let (_, path) = backup_file(catalog, repo, key)?;
    progress(0, "verifying the backup");
    let b = Bundle::open(&path)?;
    let set = b.artifacts().clone();
    let mut disks: HashMap<String, String> = HashMap::new();
    let mut imported: Vec<String> = Vec::new();
    let total = set.golden_images.len() as u64;
    let result = (|| -> Result<Restored> {
        for (n, g) in set.golden_images.iter().enumerate() {
            progress(
                percent(n as u64, total, 5, 90),
                &format!("restoring the disk of golden image {:?}", g.name),
            );
            let current = catalog
                .get_artifact(ArtifactKind::GoldenImage, &g.id)
                .ok()
                .filter(|v| v["id"] == g.id.as_str())
                .and_then(|_| catalog.golden_image_store_name(&g.id).ok().flatten())
                .filter(|s| repo.image_meta(s).is_ok());
            if let Some(s) = current {
                disks.insert(g.id.clone(), s);
            } else if b.has_payload(&g.id) {
                let s = store_name(&g.id);
                b.import_golden_image(repo, &g.id, &s, &|_, _| {})?;
                imported.push(s.clone());
                disks.insert(g.id.clone(), s);
            }
        }
        progress(90, "replacing the catalog's artifacts");
        Ok(catalog.restore_artifacts(&set, &disks)?)
    })();
    let restored = match result {
        Ok(r) => r,
        Err(e) => {
            for s in imported {
                if let Err(e2) = repo.remove_image(&s) {
                    tracing::warn!("removing image {s:?} after a failed restore: {e2}");
                }
            }
            return Err(e);
        }
    };
    for s in &restored.freed_images {
        if let Err(e) = repo.remove_image(s) {
            tracing::warn!("restore done, but the unused store image {s:?} stays: {e}");
        }
    }
    progress(100, "restored");
    Ok(restored)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::appliance::no_progress;
    use crate::store::RepoOptions;

    #[test]
    fn an_empty_catalog_backs_up_and_restores() {
        let d = tempfile::tempdir().unwrap();
        let r = Repository::open(d.path().join("repo"), RepoOptions::default()).unwrap();
        let c = Catalog::open(r.root()).unwrap();
        let b = create_backup(&c, &r, "/rest/deployment-groups/local", &no_progress).unwrap();
        assert!(b["uri"].as_str().unwrap().starts_with(BACKUPS_URI), "{b}");
        let x = restore_backup(&c, &r, b["id"].as_str().unwrap(), &no_progress).unwrap();
        assert_eq!(x.artifacts, [0; 4]);
        let e = restore_backup(&c, &r, "nope", &no_progress).unwrap_err();
        assert!(
            matches!(e, crate::appliance::ApplianceError::Catalog(_)),
            "{e}"
        );
    }
}
