//! The appliance's errors: each says what was wrong in words a task's error message can
//! carry as they are.

use std::path::PathBuf;

use crate::catalog::CatalogError;
use crate::iscsi::exports::ExportError;
use crate::plan::bundle::BundleError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApplianceError {
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the upload: {0}")]
    Upload(#[source] std::io::Error),
    #[error("writing the download: {0}")]
    Download(String),
    #[error("{0}")]
    Invalid(String),
    /// A golden image whose disk is in another node's store (a shared catalog).
    #[error("{0}")]
    Elsewhere(String),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("deployment failed: {0}")]
    Deploy(String),
    #[error("exporting the volume over iSCSI: {0}")]
    Export(#[from] ExportError),
}

pub type Result<T, E = ApplianceError> = std::result::Result<T, E>;

pub(crate) fn io_err(
    action: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> ApplianceError {
    let path = path.into();
    move |source| ApplianceError::Io {
        action,
        path,
        source,
    }
}
