//! What a disk holds, named as guestfish (and the Linux kernel in its appliance) names it:
//! the whole disk `/dev/sda`, its partitions `/dev/sdaN` (N as the kernel numbers them:
//! GPT entry index + 1, MBR slots 1-4, logical partitions from 5), and LVM logical volumes
//! `/dev/VG/LV` (also reachable as `/dev/mapper/VG-LV`).
//!
//! Scanning reads partition tables and LVM metadata only (pure Rust, bounds-checked); it
//! never looks inside a filesystem. Names given by users are normalised the way libguestfs
//! translates device names: `/dev/hda1` and `/dev/vda1` mean `/dev/sda1`.

use crate::store::device::SharedDevice;

use super::window::Window;
use super::{lvm, read_partitions, DiskError, Partition};

/// The name of the first (and, in strata, only) disk of a volume.
pub const DISK_NAME: &str = "/dev/sda";

#[derive(Clone)]
pub enum DeviceKind {
    Disk,
    Partition(Partition),
    LogicalVolume { vg: String, lv: String },
}

/// A device reachable by name.
#[derive(Clone)]
pub struct NamedDevice {
    pub name: String,
    pub kind: DeviceKind,
    pub device: SharedDevice,
}

/// A logical volume strata will not serve, and why (a thin or RAID segment, a missing PV).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedVolume {
    pub name: String,
    pub reason: String,
}

pub struct Layout {
    pub disk: NamedDevice,
    pub partitions: Vec<NamedDevice>,
    pub logical_volumes: Vec<NamedDevice>,
    pub refused: Vec<RefusedVolume>,
    /// Volume groups by name, and the devices holding their physical volumes.
    pub volume_groups: Vec<String>,
    pub physical_volumes: Vec<String>,
    /// Why the partition table was ignored, if it was (the whole disk is still there).
    pub table_error: Option<String>,
}

impl Layout {
    /// Reads the partition table and LVM metadata of `disk`. A damaged partition table is
    /// not fatal (the disk is still listed, and the reason kept in `table_error`); a read
    /// error is.
    pub fn scan(disk: SharedDevice) -> Result<Layout, DiskError> {
        let (parts, table_error) = match read_partitions(disk.as_ref()) {
            Ok(p) => (p, None),
            Err(e @ DiskError::Reading { .. }) => return Err(e),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        let label = disk.describe();
        let partitions = parts
            .into_iter()
            .map(|p| {
                let w = Window::range(
                    disk.clone(),
                    p.start,
                    p.len,
                    format!("{label} partition {}", p.number),
                )
                .map_err(|e| DiskError::InvalidPartition {
                    number: p.number,
                    detail: e.to_string(),
                })?;
                Ok(NamedDevice {
                    name: format!("{DISK_NAME}{}", p.number),
                    kind: DeviceKind::Partition(p),
                    device: w.into(),
                })
            })
            .collect::<Result<Vec<_>, DiskError>>()?;
        let whole = NamedDevice {
            name: DISK_NAME.to_string(),
            kind: DeviceKind::Disk,
            device: disk,
        };
        // Physical volumes live on partitions, or on the whole disk when it has none.
        let candidates: Vec<&NamedDevice> = if partitions.is_empty() {
            vec![&whole]
        } else {
            partitions.iter().collect()
        };
        let lvm = scan_lvm(&candidates)?;
        Ok(Layout {
            disk: whole.clone(),
            partitions,
            logical_volumes: lvm.logical_volumes,
            refused: lvm.refused,
            volume_groups: lvm.volume_groups,
            physical_volumes: lvm.physical_volumes,
            table_error,
        })
    }

    /// Every device by name, in guestfish's order: the disk, partitions, logical volumes.
    pub fn devices(&self) -> impl Iterator<Item = &NamedDevice> {
        std::iter::once(&self.disk)
            .chain(&self.partitions)
            .chain(&self.logical_volumes)
    }

    /// The device a user's name means, after name translation; a refused logical volume
    /// or an unknown name is an error that says what there is.
    pub fn find(&self, name: &str) -> Result<&NamedDevice, DiskError> {
        let canonical = canonical_name(name);
        if let Some(d) = self.devices().find(|d| d.name == canonical) {
            return Ok(d);
        }
        if let Some(r) = self.refused.iter().find(|r| r.name == canonical) {
            return Err(DiskError::RefusedVolume {
                name: name.to_string(),
                reason: r.reason.clone(),
            });
        }
        let known: Vec<&str> = self.devices().map(|d| d.name.as_str()).collect();
        Err(DiskError::OpeningDevice {
            name: name.to_string(),
            detail: format!("no such device; this disk has {}", known.join(", ")),
        })
    }
}

/// What LVM metadata on the candidate devices describes.
#[derive(Default)]
struct LvmScan {
    logical_volumes: Vec<NamedDevice>,
    refused: Vec<RefusedVolume>,
    volume_groups: Vec<String>,
    physical_volumes: Vec<String>,
}

fn scan_lvm(candidates: &[&NamedDevice]) -> Result<LvmScan, DiskError> {
    let devices: Vec<(String, SharedDevice)> = candidates
        .iter()
        .map(|d| (d.name.clone(), d.device.clone()))
        .collect();
    let scan = lvm::scan(&devices);
    let mut out = LvmScan {
        volume_groups: scan.vg_names(),
        physical_volumes: scan.pv_names(),
        ..LvmScan::default()
    };
    for lv in scan.into_logical_volumes().into_iter().filter(|l| l.public) {
        let name = lv.path();
        match lv.device {
            Ok(device) => out.logical_volumes.push(NamedDevice {
                name,
                kind: DeviceKind::LogicalVolume {
                    vg: lv.vg,
                    lv: lv.lv,
                },
                device,
            }),
            Err(reason) => out.refused.push(RefusedVolume { name, reason }),
        }
    }
    Ok(out)
}

/// `/dev/hda1`, `/dev/vda1`, `/dev/xvda1` -> `/dev/sda1` (libguestfs accepts all of them
/// for the first disk); `/dev/mapper/VG-LV` -> `/dev/VG/LV` (device-mapper doubles a `-`
/// inside a VG or LV name: `my--vg-root` is VG `my-vg`, LV `root`).
pub fn canonical_name(name: &str) -> String {
    for prefix in ["/dev/hd", "/dev/vd", "/dev/xvd"] {
        if let Some(rest) = name.strip_prefix(prefix) {
            if rest.starts_with('a') {
                return format!("/dev/sd{rest}");
            }
        }
    }
    if let Some(dm) = name.strip_prefix("/dev/mapper/") {
        let b = dm.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'-' {
                if b.get(i + 1) == Some(&b'-') {
                    i += 2;
                    continue;
                }
                let vg = dm[..i].replace("--", "-");
                let lv = dm[i + 1..].replace("--", "-");
                return format!("/dev/{vg}/{lv}");
            }
            i += 1;
        }
    }
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_translate_as_libguestfs_does() {
        assert_eq!(canonical_name("/dev/sda1"), "/dev/sda1");
        assert_eq!(canonical_name("/dev/vda2"), "/dev/sda2");
        assert_eq!(canonical_name("/dev/hda"), "/dev/sda");
        assert_eq!(canonical_name("/dev/xvda3"), "/dev/sda3");
        assert_eq!(canonical_name("/dev/vdb1"), "/dev/vdb1");
        assert_eq!(canonical_name("/dev/mapper/rhel-root"), "/dev/rhel/root");
        assert_eq!(
            canonical_name("/dev/mapper/my--vg-lv--1"),
            "/dev/my-vg/lv-1"
        );
        assert_eq!(canonical_name("/dev/rhel/root"), "/dev/rhel/root");
        assert_eq!(canonical_name("/dev/mapper/nodash"), "/dev/mapper/nodash");
    }

    #[test]
    fn an_unpartitioned_disk_is_one_device_and_unknown_names_list_what_there_is() {
        use crate::store::device::MemDevice;
        use std::sync::Arc;
        let l = Layout::scan(Arc::new(MemDevice::new(vec![0u8; 1 << 20]))).unwrap();
        let names: Vec<&str> = l.devices().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["/dev/sda"]);
        assert!(l.find("/dev/vda").is_ok());
        let e = l.find("/dev/sda1").err().unwrap().to_string();
        assert!(
            e.contains("/dev/sda1") && e.contains("this disk has /dev/sda"),
            "{e}"
        );
    }
}
