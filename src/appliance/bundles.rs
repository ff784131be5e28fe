//! Artifact bundles. (work in progress)

use super::error::Result;
use crate::catalog::Catalog;
use crate::store::Repository;

pub(crate) fn remove_orphan_files(_catalog: &Catalog, _repo: &Repository) -> Result<Vec<String>> {
    Ok(Vec::new())
}
