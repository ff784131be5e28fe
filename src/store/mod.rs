//! The copy-on-write block store: golden images (immutable, checksummed, deduplicated of
//! zeros) and per-volume delta layers, behind one Volume API that everything above uses.
//!
//! The store calls nothing above it. Map of this directory:
//! - `format.rs`   byte layouts and the commit protocol (pure encode/decode)
//! - `backend.rs`  file operations of a delta, real or crash-simulating
//! - `delta.rs`    a volume's block map, slot allocation, atomic flush
//! - `image.rs`    reading (and writing) a golden image; `cache.rs` the shared chunk cache
//! - `volume.rs`   the Volume API: image + delta, byte-granular
//! - `device.rs`   the `BlockDevice` trait every layer above sees (Volume, Image, files, memory)
//! - `repo.rs`     the repository directory: names, metadata, create/remove/open
//! - `transfer.rs` import and export of whole disks; `names.rs` name validation
//! - `snapshot.rs` point-in-time views of a volume's committed map, pinned against reuse
//! - `pins.rs`     what a writer asks of those pins: which freed slots it must keep
//! - `overlay.rs`  a throwaway writable layer over any read-only device
//! - `ranges.rs`   byte-range sets, and storing only some ranges of a device as an image
//! - `trace.rs`    boot traces: record a first boot's image reads, prefetch them for clones
//! - `buf.rs`      page-aligned buffers (the kernel copies into them much faster)

pub mod backend;
pub mod buf;
pub mod cache;
pub mod delta;
pub mod device;
pub mod error;
pub mod format;
pub mod image;
pub mod names;
pub mod overlay;
pub mod pins;
pub mod ranges;
pub mod repo;
pub mod snapshot;
pub mod trace;
pub mod transfer;
pub mod volume;

pub use buf::{AlignedBuf, ReadBuf};
pub use delta::Wait;
pub use device::{BlockDevice, SharedDevice};
pub use error::{ErrorKind, Result, StoreError};
pub use overlay::{Overlay, OverlayDir};
pub use repo::{
    ImageInfo, ImageMeta, RepoOptions, Repository, StagedVolume, VolumeInfo, VolumeMeta,
};
pub use snapshot::Snapshot;
pub use transfer::SourceFormat;
pub use volume::Volume;
