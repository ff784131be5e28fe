//! strata: a golden-image streaming appliance. Layers, each calling only downward:
//! `store` (copy-on-write volumes over golden images, one block-device interface), `disk`
//! (partition tables, LVM), `fs` (filesystems inside a device, edited in a worker process),
//! and the exports `fuse` (and, later, iSCSI). See DESIGN.md in the project's shared notes
//! and README.md.

pub mod api;
pub mod appliance;
pub mod catalog;
pub mod disk;
pub mod fs;
pub mod fuse;
pub mod iscsi;
pub mod plan;
pub mod store;
