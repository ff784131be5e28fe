//! FUSE export (placeholder until the FUSE branch lands).

use std::path::Path;
use std::sync::Arc;

use crate::store::Repository;

pub struct MountOptions {
    pub read_only: bool,
    pub threads: usize,
}

pub fn mount(
    _repo: Arc<Repository>,
    _mountpoint: &Path,
    _opts: MountOptions,
) -> Result<(), std::io::Error> {
    Err(std::io::Error::other("FUSE export not built yet"))
}
