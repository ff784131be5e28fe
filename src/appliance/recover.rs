//! What the appliance does when it starts, after a crash or a `kill -9` mid-job. Staged
//! files need nothing: they live in the repository's `tmp/`, which `Repository::open`
//! empties. Left to do here: tasks that were running are marked failed
//! (`Catalog::fail_unfinished_tasks`), and store images the appliance made (`gi-<id>`) whose
//! catalog row was never written (the row is written last) are removed, as are bundle files
//! no bundle row names (bundle descriptions of older repositories become rows first). Store volumes are left alone: the CLI makes volumes without rows.

use super::error::Result;
use super::golden_images::STORE_PREFIX;
use crate::catalog::Catalog;
use crate::plan::artifacts::ArtifactKind;
use crate::store::Repository;

/// What [`recover`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    pub failed_tasks: usize,
    /// Store images removed because no golden image row names them.
    pub orphan_images: Vec<String>,
    /// Bundle files removed because no bundle row names them.
    pub orphan_bundles: Vec<String>,
}

/// Run once at start, before taking requests.
pub fn recover(catalog: &Catalog, repo: &Repository) -> Result<Recovered> {
    let mut r = Recovered {
        failed_tasks: catalog
            .fail_unfinished_tasks("the appliance stopped while this task was running")?,
        ..Recovered::default()
    };
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
            "recovered: {} task(s) failed, {} unrecorded image(s) and {} bundle file(s) removed",
            r.failed_tasks,
            r.orphan_images.len(),
            r.orphan_bundles.len()
        );
    }
    Ok(r)
}
