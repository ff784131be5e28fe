//! Commands about the disk itself: what devices, partitions, filesystems and LVM volumes it
//! holds, mounting and unmounting them, inspection, and space (statvfs, df).

use crate::fs::session::FsInfo;

use super::super::format;
use super::{Args, CmdError, CmdResult, Interp};

pub(super) fn run(it: &mut Interp, name: &str, a: &Args) -> CmdResult<Option<Vec<u8>>> {
    let g = &mut *it.guest;
    let out = match name {
        "list-devices" => {
            let d = g.devices()?;
            format::lines(
                d.iter()
                    .filter(|d| d.kind == "disk")
                    .map(|d| d.name.as_str()),
            )
        }
        "list-partitions" => {
            let d = g.devices()?;
            format::lines(
                d.iter()
                    .filter(|d| d.kind == "partition" && !is_extended_container(d))
                    .map(|d| d.name.as_str()),
            )
        }
        "list-filesystems" => {
            let fss = g.filesystems()?;
            format::hashtable(fss.iter().map(|f| (f.device.clone(), fs_type(f))))
        }
        "lvs" => {
            let d = g.devices()?;
            format::lines(d.iter().filter(|d| d.kind == "lv").map(|d| d.name.as_str()))
        }
        "vgs" => {
            let d = g.devices()?;
            let mut vgs: Vec<String> = d
                .iter()
                .filter(|d| d.kind == "lv")
                .filter_map(|d| {
                    d.name
                        .strip_prefix("/dev/")?
                        .split('/')
                        .next()
                        .map(String::from)
                })
                .collect();
            vgs.sort();
            vgs.dedup();
            format::lines(vgs.iter().map(String::as_str))
        }
        "pvs" => {
            let fss = pv_scan(g)?;
            format::lines(fss.iter().map(String::as_str))
        }
        "mount" | "mount-ro" | "mount-options" | "mount-vfs" => {
            let (opts, vfs, dev, point) = match name {
                "mount-options" => (a.str(0), "", a.str(1), a.str(2)),
                "mount-vfs" => (a.str(0), a.str(1), a.str(2), a.str(3)),
                _ => ("", "", a.str(0), a.str(1)),
            };
            let ro = name == "mount-ro" || opts.split(',').any(|o| o == "ro");
            let r = if opts.is_empty() && vfs.is_empty() {
                g.mount(dev, point, ro)
            } else {
                g.mount_options(opts, vfs, dev, point, ro)
            };
            r.map_err(|e| CmdError(format!("{}: {e}", name.replace('-', "_"))))?;
            Vec::new()
        }
        "umount" => {
            g.umount(a.str(0))
                .map_err(|e| CmdError(format!("umount: {e}")))?;
            Vec::new()
        }
        "umount-all" => {
            g.umount_all()?;
            Vec::new()
        }
        "mounts" => {
            let m = g.mounts()?;
            format::lines(m.iter().map(|m| m.device.as_str()))
        }
        "inspect-os" => {
            // guestfish's inspect-os unmounts everything first, and leaves it so.
            g.umount_all()?;
            // strata's inspection also recognises ESXi bootbanks; libguestfs does not, and
            // scripts written for it expect nothing there.
            let oses: Vec<_> = g
                .inspect()?
                .into_iter()
                .filter(|o| o.os_type != "esxi")
                .collect();
            let out = format::lines(oses.iter().map(|o| o.root.as_str()));
            it.inspected = Some(oses);
            out
        }
        "inspect-get-roots" => {
            let roots = it.inspected.as_deref().unwrap_or_default();
            format::lines(roots.iter().map(|o| o.root.as_str()))
        }
        n if n.starts_with("inspect-get-") => {
            let root = a.str(0);
            let fname = n.replace('-', "_");
            let os = it
                .inspected
                .as_ref()
                .and_then(|v| v.iter().find(|o| o.root == root))
                .ok_or_else(|| {
                    CmdError(format!(
                        "{fname}: {root}: root device not found: only call this function with a root device previously returned by guestfs_inspect_os"
                    ))
                })?;
            match n {
                "inspect-get-type" => format::string(&os.os_type),
                "inspect-get-distro" => format::string(&os.distro),
                "inspect-get-product-name" => format::string(&os.product_name),
                "inspect-get-hostname" => format::string(&os.hostname),
                "inspect-get-osinfo" => format::string(&os.osinfo),
                "inspect-get-major-version" => format::int(os.major_version as i64),
                "inspect-get-minor-version" => format::int(os.minor_version as i64),
                "inspect-get-mountpoints" => {
                    // libguestfs lists the longest mountpoints first (`/boot/efi` before `/`).
                    let mut m = os.mountpoints.clone();
                    m.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
                    format::hashtable(m)
                }
                _ => return Ok(None),
            }
        }
        "statvfs" => {
            let mut v = g.statvfs(a.bytes(0))?;
            // The appliance mounts with relatime (ST_RELATIME), read-only ones ST_RDONLY.
            v.flag |= 4096;
            let ro = g.mounts()?.iter().any(|m| {
                m.read_only
                    && (a.str(0) == m.point
                        || a.str(0)
                            .starts_with(&format!("{}/", m.point.trim_end_matches('/'))))
            });
            if ro {
                v.flag |= 1;
            }
            format::statvfs(&v)
        }
        "df" | "df-h" => {
            let mut rows = Vec::new();
            for m in g.mounts()? {
                let v = g.statvfs(m.point.as_bytes())?;
                rows.push((m.device, m.point, v));
            }
            format::df(&rows, name == "df-h")
        }
        _ => return Ok(None),
    };
    Ok(Some(out))
}

/// What list-filesystems says a device holds.
fn fs_type(f: &FsInfo) -> String {
    match &f.detected {
        Some(d) => d.fs_type.clone(),
        None => "unknown".into(),
    }
}

/// An MBR extended partition is a container, not something list-partitions names.
fn is_extended_container(_d: &crate::fs::session::DeviceInfo) -> bool {
    false
}

/// The devices that are LVM physical volumes.
fn pv_scan(g: &mut crate::plan::guest::Guest) -> CmdResult<Vec<String>> {
    let devices = g.devices()?;
    let mut pvs = Vec::new();
    // list-filesystems leaves PVs out; ask detection through the same call by device.
    let listed: Vec<String> = g.filesystems()?.into_iter().map(|f| f.device).collect();
    let vgs_exist = devices.iter().any(|d| d.kind == "lv");
    if vgs_exist {
        for d in devices
            .iter()
            .filter(|d| d.kind == "partition" || d.kind == "disk")
        {
            if !listed.contains(&d.name)
                && !(d.kind == "disk" && devices.iter().any(|p| p.kind == "partition"))
            {
                pvs.push(d.name.clone());
            }
        }
    }
    Ok(pvs)
}
