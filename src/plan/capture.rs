//! Capture: a volume becomes a golden image. A snapshot of the volume's committed state
//! (the volume is never written and may keep serving), a throwaway overlay on it for the
//! capture build plan's scripts (generalization), then an image that keeps only what the
//! disk needs: partition tables, every area that is not a filesystem strata recognises,
//! and of each FAT, ext2/3/4 and NTFS filesystem (on partitions, the whole disk, or LVM
//! logical volumes) only the blocks its allocation maps mark as used. Free space is never
//! read or stored; it reads back as zeros.
//!
//! This file owns the keep-map (which byte ranges of the disk to store) and the chain of
//! steps. Filesystems are parsed only in a worker process (`fs::worker`); this process
//! reads partition tables and LVM metadata (pure, bounds-checked Rust in `disk/`) to place
//! each filesystem's ranges on the disk.

use std::collections::HashMap;
use std::sync::Arc;

use crate::disk::layout::{DeviceKind, Layout, DISK_NAME};
use crate::disk::{lvm, DiskError};
use crate::fs::worker::{Reply, Request, Source, Worker, WorkerOptions};
use crate::fs::FsError;
use crate::store::device::SharedDevice;
use crate::store::overlay::{Overlay, OverlayDir};
use crate::store::ranges;
use crate::store::transfer::Progress;
use crate::store::{ImageMeta, Repository, StoreError};

/// Filesystem types whose used blocks strata can read (the adapters' `used_blocks`; XFS
/// through GETFSMAP and btrfs through its extent and chunk trees, in the VM, src/fs/vm).
pub const SHRINKABLE: &[&str] = &["ext2", "ext3", "ext4", "vfat", "ntfs", "xfs", "btrfs"];

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("capture: {0}")]
    Store(#[from] StoreError),
    #[error("capture: {0}")]
    Fs(#[from] FsError),
    #[error("capture: reading the disk layout: {0}")]
    Disk(#[from] DiskError),
    #[error("capture: generalizing the copy failed (the volume is unchanged): {0}")]
    Generalize(Box<dyn std::error::Error + Send + Sync>),
    #[error("capture: the filesystem worker gave an unexpected reply to {0}")]
    Protocol(&'static str),
}

/// What the keep-map did with one filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsKeep {
    pub device: String,
    pub fs_type: String,
    pub size: u64,
    /// Bytes its allocation marks as used (all of it when `error` is set).
    pub used: u64,
    /// Why its used blocks could not be read; it is then kept whole.
    pub error: Option<String>,
}

/// The byte ranges of a disk a capture stores, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeepMap {
    /// Sorted, merged `(offset, len)` on the disk.
    pub ranges: Vec<(u64, u64)>,
    pub filesystems: Vec<FsKeep>,
}

impl KeepMap {
    pub fn kept_bytes(&self) -> u64 {
        ranges::total(&self.ranges)
    }
}

/// Where a named device lies on the disk: `(offset in the device, offset on the disk, len)`.
type Placement = Vec<(u64, u64, u64)>;

/// Every device of `disk` by name, placed on the disk: the disk itself, its partitions,
/// and its LVM logical volumes (each a list of segments on the PVs, translated through
/// the partitions holding them).
fn placements(disk: &SharedDevice) -> Result<HashMap<String, Placement>, DiskError> {
    let layout = Layout::scan(disk.clone())?;
    let mut out: HashMap<String, Placement> = HashMap::new();
    out.insert(DISK_NAME.to_string(), vec![(0, 0, disk.len())]);
    for p in &layout.partitions {
        if let DeviceKind::Partition(part) = &p.kind {
            out.insert(p.name.clone(), vec![(0, part.start, part.len)]);
        }
    }
    // The same candidates `Layout` scans for PVs: partitions, or the disk without any.
    let candidates: Vec<(String, SharedDevice)> = if layout.partitions.is_empty() {
        vec![(DISK_NAME.to_string(), disk.clone())]
    } else {
        layout
            .partitions
            .iter()
            .map(|p| (p.name.clone(), p.device.clone()))
            .collect()
    };
    for lv in lvm::scan(&candidates).into_logical_volumes() {
        if !lv.public || lv.device.is_err() {
            continue;
        }
        let mut segs = Vec::with_capacity(lv.segments.len());
        for s in &lv.segments {
            let Some(pv_at) = out.get(&s.pv_device).and_then(|p| p.first()).map(|p| p.1) else {
                continue;
            };
            segs.push((s.lv_offset, pv_at + s.pv_offset, s.len));
        }
        out.insert(lv.path(), segs);
    }
    Ok(out)
}

/// `ranges` of a device, as ranges of the disk through its placement.
fn translate(ranges: &[(u64, u64)], place: &Placement) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(o, l) in ranges {
        let end = o.saturating_add(l);
        for &(d0, at, n) in place {
            let (s, e) = (o.max(d0), end.min(d0 + n));
            if s < e {
                out.push((at + (s - d0), e - s));
            }
        }
    }
    out
}

/// The keep-map of `disk`, asking `worker` (which has the same disk open) which
/// filesystems it holds and which of their blocks are used. A filesystem whose used blocks
/// cannot be read is kept whole (and said so in `filesystems`).
pub fn keep_map(disk: &SharedDevice, worker: &mut Worker) -> Result<KeepMap, CaptureError> {
    let len = disk.len();
    let place = placements(disk)?;
    let Reply::Filesystems(list) = worker.call(Request::Filesystems { usage: false })? else {
        return Err(CaptureError::Protocol("listing filesystems"));
    };
    let mut holes = Vec::new();
    let mut used_all = Vec::new();
    let mut filesystems = Vec::new();
    for fs in list {
        let Some(d) = &fs.detected else { continue };
        // A btrfs subvolume is part of its device's filesystem, which is mapped whole.
        if !SHRINKABLE.contains(&d.fs_type.as_str()) || fs.device.starts_with("btrfsvol:") {
            continue;
        }
        let Some(p) = place.get(&fs.device) else {
            tracing::warn!(device = %fs.device, "a filesystem on a device this process cannot place; kept whole");
            continue;
        };
        let mut info = FsKeep {
            device: fs.device.clone(),
            fs_type: d.fs_type.clone(),
            size: fs.size,
            used: fs.size,
            error: None,
        };
        match worker.call(Request::UsedBlocks {
            device: fs.device.clone(),
        }) {
            Ok(Reply::Ranges(r)) => {
                let r = ranges::normalize(&r, fs.size);
                info.used = ranges::total(&r);
                holes.extend(translate(&[(0, fs.size)], p));
                used_all.extend(translate(&r, p));
            }
            Ok(_) => return Err(CaptureError::Protocol("reading used blocks")),
            // A damaged filesystem is stored whole: nothing is lost, only space. A lost
            // worker is another matter: the capture fails.
            Err(e) if !e.detail.starts_with("the filesystem worker") => {
                tracing::warn!(device = %fs.device, error = %e, "used blocks unreadable; kept whole");
                info.error = Some(e.to_string());
            }
            Err(e) => return Err(e.into()),
        }
        filesystems.push(info);
    }
    let mut keep = ranges::complement(&holes, len);
    keep.extend(used_all);
    Ok(KeepMap {
        ranges: ranges::normalize(&keep, len),
        filesystems,
    })
}

/// What a capture did.
#[derive(Debug, Clone)]
pub struct CaptureReport {
    pub image: ImageMeta,
    pub keep: KeepMap,
    /// Bytes the generalization changed (in the overlay).
    pub changed_bytes: u64,
}

/// Captures volume `volume` as golden image `image`: snapshot, overlay, `generalize` (the
/// caller runs the capture build plan's scripts in a worker on the `Source` it is given,
/// and commits; `Ok` with nothing done is a capture without scripts), keep-map from a
/// worker on the result, and the image stored from the kept ranges. The volume is never
/// written; everything made on the way (pin, overlay) is gone when this returns, and a
/// failure leaves no image behind. Progress counts bytes stored.
pub fn capture<E>(
    repo: &Repository,
    volume: &str,
    image: &str,
    worker: &WorkerOptions,
    generalize: impl FnOnce(&Source) -> Result<(), E>,
    progress: Progress,
) -> Result<CaptureReport, CaptureError>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    crate::store::names::validate(image)?;
    if repo.image_meta(image).is_ok() {
        return Err(StoreError::Exists {
            kind: "image",
            name: image.into(),
        }
        .into());
    }
    let snap = Arc::new(repo.snapshot_volume(volume)?);
    let scratch = repo.scratch_dir("overlay")?;
    let ov = match OverlayDir::create(&scratch, snap.volume().len()) {
        Ok(d) => d,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&scratch);
            return Err(e.into());
        }
    };
    let source = Source::Snapshot {
        repo: repo.root().to_path_buf(),
        volume: volume.to_string(),
        snapshot: snap.id().to_string(),
        overlay: Some(ov.path().to_path_buf()),
    };
    generalize(&source).map_err(|e| CaptureError::Generalize(e.into()))?;
    let dev = Overlay::open(ov.path(), snap.clone() as SharedDevice, true)?;
    let changed_bytes = dev.changed_bytes();
    let dev: SharedDevice = Arc::new(dev);
    let mut w = Worker::start(source, true, worker)?;
    let keep = keep_map(&dev, &mut w)?;
    w.finish();
    let meta = repo.import_image_from_device(image, dev.as_ref(), &keep.ranges, progress)?;
    tracing::info!(
        volume,
        image,
        kept = keep.kept_bytes(),
        stored = meta.stored_bytes,
        "captured"
    );
    drop(dev);
    drop(ov);
    drop(snap);
    Ok(CaptureReport {
        image: meta,
        keep,
        changed_bytes,
    })
}

/// The capture's record, beside the new image's own files (`images/<image>/`).
pub const RECORD_FILE: &str = "capture.json";

/// Captures `volume` as image `image` generalized by the capture build plan `plan` (its
/// scripts run with `values` against the snapshot's overlay, in one worker, then committed),
/// the steps being logged into `rec`. What `strata capture` and the appliance's capture
/// (the REST API's) both run; the caller checks the plan's type and writes the record.
#[allow(clippy::too_many_arguments)]
pub fn capture_with_plan(
    repo: &Repository,
    volume: &str,
    image: &str,
    plan: &super::artifacts::ResolvedBuildPlan,
    values: &super::attrs::Values,
    run: &super::deploy::RunOptions,
    rec: &mut super::record::Recorder,
    progress: Progress,
) -> Result<CaptureReport, CaptureError> {
    let generalize = |source: &Source| {
        let guest = super::deploy::run_build_plan(source.clone(), plan, values, run, rec)?;
        let t = std::time::Instant::now();
        let r = guest.commit().map_err(|e| {
            super::deploy::DeployError::Failed(
                values.mask(&format!("saving the generalized copy: {e}")),
            )
        });
        rec.record.timings_ms.commit = t.elapsed().as_millis() as u64;
        r
    };
    capture(repo, volume, image, &run.worker, generalize, progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ranges_translate_through_segments_onto_the_disk() {
        // An LV of two segments: its bytes 0..100 at disk 1000, 100..150 at disk 500.
        let p = vec![(0, 1000, 100), (100, 500, 50)];
        assert_eq!(
            translate(&[(90, 20), (140, 100)], &p),
            vec![(1090, 10), (500, 10), (540, 10)]
        );
        assert_eq!(
            translate(&[(0, 10)], &vec![(0, 4096, 1 << 20)]),
            vec![(4096, 10)]
        );
    }
}
