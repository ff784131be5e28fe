//! One disk being worked on: its devices (from `disk::Layout`), the filesystems on them,
//! and the mount table of what is mounted where. This is what a worker process holds for
//! the length of one job (a `strata fs` call, a whole plan script); the worker protocol is
//! a thin layer over it.
//!
//! A session opens filesystems with the C-library adapters, so it only ever lives inside a
//! worker process (tests excepted).
//!
//! Mountables are named as guestfish names them: a device, or a btrfs subvolume as
//! `btrfsvol:DEVICE/SUBVOLUME` (`btrfsvol:/dev/sda2/@/home`). As in libguestfs, a btrfs
//! device lists as itself (its default subvolume, what a mount without `subvol=` shows)
//! followed by each other subvolume as a `btrfsvol:` name, and the same btrfs device may
//! be mounted several times (`mount-options subvol=@/home /dev/sda2 /home`): the guest
//! kernel shares one filesystem between the mounts. Nothing it does reaches the disk's store durably: the
//! owner flushes the disk after `unmount_all` when the whole job has succeeded.

use serde::{Deserialize, Serialize};

use crate::disk::layout::{DeviceKind, Layout};
use crate::store::device::SharedDevice;

use super::detect::{detect, Detected};
use super::mounts::MountTable;
use super::types::*;

/// A device as `strata fs list` and guestfish's list-devices/list-partitions see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub name: String,
    /// `disk`, `partition` or `lv`.
    pub kind: String,
    pub size: u64,
    /// Where a partition starts on the disk.
    pub start: Option<u64>,
    /// A GPT partition's name.
    pub part_name: String,
    /// Why strata will not serve it (a thin or RAID logical volume), if it will not.
    pub refused: Option<String>,
}

/// A device's filesystem, as list-filesystems and `strata fs list` report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsInfo {
    pub device: String,
    pub size: u64,
    /// `None`: nothing recognised (guestfish prints `unknown`).
    pub detected: Option<Detected>,
    /// statvfs when the filesystem could be mounted read-only to ask.
    pub usage: Option<StatVfs>,
    /// Why it could not be (an adapter refusal, a damaged filesystem).
    pub error: Option<String>,
}

pub struct Session {
    disk: SharedDevice,
    layout: Layout,
    pub table: MountTable,
    /// The VM that mounts XFS and btrfs (`fs::vm`), booted the first time one is opened,
    /// and the virtio serial it gave each device (`open_adapter` keeps those devices there).
    vm: Option<(
        super::vm::SharedVm,
        std::collections::HashMap<String, String>,
    )>,
}

impl Session {
    pub fn new(disk: SharedDevice) -> FsResult<Session> {
        let layout =
            Layout::scan(disk.clone()).map_err(|e| FsError::new(libc::EIO, e.to_string()))?;
        Ok(Session {
            disk,
            layout,
            table: MountTable::new(),
            vm: None,
        })
    }

    pub fn disk(&self) -> &SharedDevice {
        &self.disk
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Every device, in guestfish's order (disk, partitions, logical volumes).
    pub fn devices(&self) -> Vec<DeviceInfo> {
        self.layout
            .devices()
            .map(|d| {
                let (kind, start, part_name) = match &d.kind {
                    DeviceKind::Disk => ("disk", None, String::new()),
                    DeviceKind::Partition(p) => ("partition", Some(p.start), p.name.clone()),
                    DeviceKind::LogicalVolume { .. } => ("lv", None, String::new()),
                };
                DeviceInfo {
                    name: d.name.clone(),
                    kind: kind.into(),
                    size: d.device.len(),
                    start,
                    part_name,
                    refused: None,
                }
            })
            .chain(self.layout.refused.iter().map(|r| DeviceInfo {
                name: r.name.clone(),
                kind: "lv".into(),
                size: 0,
                start: None,
                part_name: String::new(),
                refused: Some(r.reason.clone()),
            }))
            .collect()
    }

    /// The device `name` means, or why there is none (ENOENT) or it is refused (ENOTSUP).
    fn find(&self, name: &str) -> FsResult<crate::disk::layout::NamedDevice> {
        use crate::disk::DiskError;
        match self.layout.find(name) {
            Ok(d) => Ok(d.clone()),
            Err(e @ DiskError::RefusedVolume { .. }) => {
                Err(FsError::new(libc::ENOTSUP, e.to_string()))
            }
            Err(e) => Err(FsError::new(libc::ENOENT, e.to_string())),
        }
    }

    /// What each device holds. As guestfish does, a disk with partitions is not listed
    /// itself, and neither are LVM physical volumes or extended-partition containers.
    /// With `usage`, each filesystem not mounted now is mounted read-only to ask statvfs.
    pub fn filesystems(&mut self, usage: bool) -> Vec<FsInfo> {
        let mut out = Vec::new();
        let has_parts = !self.layout.partitions.is_empty();
        let devices: Vec<_> = self
            .layout
            .devices()
            .filter(|d| !(has_parts && matches!(d.kind, DeviceKind::Disk)))
            .cloned()
            .collect();
        for d in devices {
            let (detected, mut error) = match detect(d.device.as_ref()) {
                Ok(x) => (x, None),
                Err(e) => (None, Some(e.to_string())),
            };
            if detected
                .as_ref()
                .is_some_and(|x| x.fs_type == "LVM2_member")
            {
                continue;
            }
            let mut info = FsInfo {
                device: d.name.clone(),
                size: d.device.len(),
                detected,
                usage: None,
                error: None,
            };
            let btrfs = info.detected.as_ref().is_some_and(|x| x.fs_type == "btrfs");
            if let Some(x) = &info.detected {
                if usage || x.fs_type == "ntfs" {
                    let fs_type = x.fs_type.clone();
                    match self.open_adapter(&d, &fs_type, true, "") {
                        Ok(mut fs) => {
                            if usage {
                                info.usage = fs.statvfs().ok();
                            }
                            if let Some(l) = fs.label() {
                                if let Some(x) = info.detected.as_mut() {
                                    x.label = l;
                                }
                            }
                            let _ = fs.close();
                        }
                        Err(e) if e.errno == libc::ENODEV => {}
                        Err(e) => error = Some(e.to_string()),
                    }
                }
            }
            info.error = error;
            let subvolumes = if btrfs && info.error.is_none() {
                match self.btrfs_subvolumes(&d) {
                    Ok(s) => s,
                    Err(e) => {
                        info.error = Some(e.to_string());
                        Vec::new()
                    }
                }
            } else {
                Vec::new()
            };
            let vols: Vec<FsInfo> = subvolumes
                .into_iter()
                .map(|path| FsInfo {
                    device: format!("btrfsvol:{}/{path}", d.name),
                    ..info.clone()
                })
                .collect();
            out.push(info);
            out.extend(vols);
        }
        out
    }

    /// The subvolumes of the btrfs filesystem on `d` that guestfish lists as `btrfsvol:`
    /// names: every one but the default (the device itself stands for that), by id.
    fn btrfs_subvolumes(&mut self, d: &crate::disk::layout::NamedDevice) -> FsResult<Vec<String>> {
        let (vm, serials) = self.vm()?;
        let serial = serials.get(&d.name).ok_or_else(|| {
            FsError::new(libc::EIO, format!("{}: not attached to the VM", d.name))
        })?;
        let fs = super::vm::VmFs::mount(vm, serial, "btrfs", d.device.len(), true, "")?;
        let s = fs.subvolumes();
        drop(fs);
        let s = s?;
        Ok(s.list
            .into_iter()
            .filter(|(id, _)| *id != s.default)
            .map(|(_, p)| p)
            .collect())
    }

    /// The device a mountable names, and the btrfs subvolume if it is a `btrfsvol:` name.
    /// As libguestfs parses one, the device is the shortest prefix ending before a `/`
    /// that names a device (`btrfsvol:/dev/vg/lv/@/home`: `/dev/vg/lv`, then `@/home`).
    fn mountable(
        &self,
        name: &str,
    ) -> FsResult<(crate::disk::layout::NamedDevice, Option<String>)> {
        let Some(rest) = name.strip_prefix("btrfsvol:") else {
            return Ok((self.find(name)?, None));
        };
        let bad = || FsError::new(libc::EINVAL, format!("{name}: expecting a btrfs volume"));
        if !rest.starts_with("/dev/") {
            return Err(bad());
        }
        for (i, _) in rest.match_indices('/').filter(|(i, _)| *i >= "/dev/".len()) {
            if let Ok(d) = self.layout.find(&rest[..i]) {
                let vol = &rest[i + 1..];
                if vol.is_empty() {
                    return Err(bad());
                }
                return Ok((d.clone(), Some(vol.to_string())));
            }
        }
        Err(bad())
    }

    /// Opens the filesystem on `device` (found by `detect`) and mounts it on `point`.
    pub fn mount(&mut self, device: &str, point: &str, read_only: bool) -> FsResult<()> {
        self.mount_options("", None, device, point, read_only)
    }

    /// `mount` with mount options (guestfish's mount-options, mount-vfs): the VM's
    /// filesystems get them as they are (with `subvol=` first for a `btrfsvol:` name), the
    /// userspace adapters take none but `ro`. `vfs_type`, if given, must be what the device
    /// holds (the ext2/3/4 names stand for each other, as the kernel's ext4 driver mounts
    /// all three).
    pub fn mount_options(
        &mut self,
        options: &str,
        vfs_type: Option<&str>,
        mountable: &str,
        point: &str,
        read_only: bool,
    ) -> FsResult<()> {
        let (name, read_only, fs) = self.open_mountable(mountable, read_only, options, vfs_type)?;
        // The mount table names the device, as guestfish's `mounts` does for a subvolume.
        self.table
            .mount(fs, &name, point, read_only)
            .map_err(|e| e.context(format!("mount {mountable} {point}")))
    }

    /// `used_blocks` of the filesystem on `device`, as byte ranges of that device.
    pub fn used_blocks(&mut self, device: &str) -> FsResult<Vec<(u64, u64)>> {
        let (_, _, mut fs) = self.open_fs(device, true)?;
        let r = fs.used_blocks();
        let _ = fs.close();
        r
    }

    /// Opens the filesystem `detect` finds on `device` (read-only if asked or if the device
    /// is): its canonical name, whether it is read-only, and the adapter.
    fn open_fs(
        &mut self,
        device: &str,
        read_only: bool,
    ) -> FsResult<(String, bool, Box<dyn super::GuestFs>)> {
        self.open_mountable(device, read_only, "", None)
    }

    /// `open_fs` of a mountable (a device or a `btrfsvol:` name), with mount options.
    pub(super) fn open_mountable(
        &mut self,
        mountable: &str,
        read_only: bool,
        options: &str,
        vfs_type: Option<&str>,
    ) -> FsResult<(String, bool, Box<dyn super::GuestFs>)> {
        let (d, subvol) = self.mountable(mountable)?;
        let Some(x) = detect(d.device.as_ref())? else {
            return Err(FsError::new(
                libc::EINVAL,
                format!("{mountable}: no filesystem that strata recognises is on it"),
            ));
        };
        let ext = |t: &str| matches!(t, "ext2" | "ext3" | "ext4");
        if let Some(t) = vfs_type.filter(|t| !t.is_empty()) {
            if t != x.fs_type && !(ext(t) && ext(&x.fs_type)) {
                return Err(FsError::new(
                    libc::EINVAL,
                    format!("{mountable} holds {}, not {t}", x.fs_type),
                ));
            }
        }
        let mut opts: Vec<String> = Vec::new();
        if let Some(v) = subvol {
            if x.fs_type != "btrfs" {
                return Err(FsError::new(
                    libc::EINVAL,
                    format!("{mountable}: {} holds {}, not btrfs", d.name, x.fs_type),
                ));
            }
            opts.push(format!("subvol={v}"));
        }
        // `ro` and `rw` are the read-only flag, not data for the filesystem.
        opts.extend(
            options
                .split(',')
                .filter(|o| !o.is_empty() && *o != "ro" && *o != "rw")
                .map(String::from),
        );
        let read_only = read_only || d.device.is_read_only();
        let opts = opts.join(",");
        let fs = self
            .open_adapter(&d, &x.fs_type, read_only, &opts)
            .map_err(|e| match opts.is_empty() {
                true => e.context(mountable),
                false => e.context(format!("{mountable} (options {opts})")),
            })?;
        Ok((d.name, read_only, fs))
    }

    /// The adapter for `fs_type` on `d`: a userspace library's (which takes no `options`),
    /// or a mount in the job's VM for the filesystems only the kernel writes.
    pub(super) fn open_adapter(
        &mut self,
        d: &crate::disk::layout::NamedDevice,
        fs_type: &str,
        read_only: bool,
        options: &str,
    ) -> FsResult<Box<dyn super::GuestFs>> {
        let ext = matches!(fs_type, "ext2" | "ext3" | "ext4");
        let in_vm = super::vm::handles(fs_type)
            || (ext
                && self
                    .vm
                    .as_ref()
                    .is_some_and(|(_, s)| s.contains_key(&d.name)))
            || (ext && !read_only && Self::ext_for_the_kernel(d));
        if !in_vm {
            return super::open(fs_type, d.device.clone(), super::OpenOptions { read_only });
        }
        // The kernel's ext4 mounts ext2 and ext3 as well.
        let fs_type = if ext { "ext4" } else { fs_type };
        let (vm, serials) = self.vm()?;
        let serial = serials.get(&d.name).ok_or_else(|| {
            FsError::new(
                libc::EIO,
                format!(
                    "{}: not attached to the VM (its filesystem changed?)",
                    d.name
                ),
            )
        })?;
        Ok(Box::new(super::vm::VmFs::mount(
            vm,
            serial,
            fs_type,
            d.device.len(),
            read_only,
            options,
        )?))
    }

    /// Whether `d` holds an ext2/3/4 filesystem that the job's VM must write: one whose
    /// journal needs replaying or whose orphans need cleaning up (`ext4::kernel_recovers`).
    /// Once the VM has such a device, every later mount of it in the job goes there too
    /// (`open_adapter`), so that the guest's view and libext2fs's never mix.
    /// (A superblock that cannot be read is the userspace adapter's to report.)
    fn ext_for_the_kernel(d: &crate::disk::layout::NamedDevice) -> bool {
        !d.device.is_read_only() && super::ext4::kernel_recovers(d.device.as_ref()).unwrap_or(false)
    }

    /// The job's VM, booted with every device whose filesystem it handles (XFS, btrfs, and
    /// ext2/3/4 left for the kernel to recover).
    fn vm(
        &mut self,
    ) -> FsResult<(
        super::vm::SharedVm,
        std::collections::HashMap<String, String>,
    )> {
        if let Some((vm, s)) = &self.vm {
            return Ok((vm.clone(), s.clone()));
        }
        let mut disks = Vec::new();
        let mut serials = std::collections::HashMap::new();
        for d in self.layout.devices() {
            let Some(x) = detect(d.device.as_ref())? else {
                continue;
            };
            let ext = matches!(x.fs_type.as_str(), "ext2" | "ext3" | "ext4");
            if super::vm::handles(&x.fs_type) || (ext && Self::ext_for_the_kernel(&d)) {
                let serial = format!("d{}", disks.len());
                serials.insert(d.name.clone(), serial.clone());
                disks.push((serial, d.device.clone()));
            }
        }
        let vm = std::sync::Arc::new(std::sync::Mutex::new(super::vm::snapshot::start(disks)?));
        self.vm = Some((vm.clone(), serials.clone()));
        Ok((vm, serials))
    }
}
