//! FUSE export.
