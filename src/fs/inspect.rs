//! Inspection: which device holds an operating system's root, and what that OS is, told
//! the way guestfish's `inspect-os` and `inspect-get-*` tell it (libguestfs's names for
//! types, distros and osinfo short ids).
//!
//! Each candidate filesystem is opened read-only on its own and a few files are read:
//! `/etc/os-release` (or `/etc/redhat-release`, `/etc/SuSE-release`, `/etc/debian_version`),
//! `/etc/hostname`, `/etc/fstab` for the mountpoints; `\Windows\System32\cmd.exe`
//! and the `config` hives' presence for Windows; `boot.cfg` on a FAT bootbank for VMware
//! ESXi, which libguestfs does not recognise (strata reports it so that ESXi plans can find
//! their bootbanks; the plan engine keeps guestfish's silence where scripts expect it).
//!
//! btrfs as libguestfs sees it: each subvolume but the default is a candidate of its own
//! (`btrfsvol:/dev/sda2/@/home`, from `Session::filesystems`), the device itself standing
//! for the default subvolume. So a SLES root, whose default subvolume is snapper's
//! `@/.snapshots/1/snapshot`, is reported as `/dev/sda2`, not by its subvolume's name
//! (which never appears: the default is left out of the list), and its fstab's
//! `subvol=/@/home` entries map to `btrfsvol:/dev/sda2//@/home`, the option's value pasted
//! after a `/` as it is, leading slash and all (a double slash guestfish prints too, and
//! accepts back in `mount`). Other snapshots of the root (`@/.snapshots/2/snapshot`) are
//! roots too, and are dropped when they look like the device's own root (same type,
//! distro, product and version), as libguestfs does since 1.56 (RHEL-93109).

use serde::{Deserialize, Serialize};

use super::mounts::MountTable;
use super::session::Session;
use super::types::*;

/// Files larger than this are not configuration files.
const READ_LIMIT: u64 = 1 << 20;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsInfo {
    /// The root filesystem's device (`inspect-os` prints these).
    pub root: String,
    /// `linux`, `windows`, `esxi`.
    pub os_type: String,
    /// `debian`, `ubuntu`, `rhel`, `centos`, `fedora`, `sles`, `opensuse`, `rocky`,
    /// `almalinux`, `oraclelinux`, `windows`, `esxi`, or `unknown`.
    pub distro: String,
    pub product_name: String,
    pub major_version: u32,
    pub minor_version: u32,
    /// libosinfo's short id (`rhel8.4`, `debian12`, `ubuntu22.04`, `sles15sp3`), or
    /// `unknown`.
    pub osinfo: String,
    pub hostname: String,
    /// Mountpoints from the OS's fstab, mapped to this disk's devices, `/` first.
    pub mountpoints: Vec<(String, String)>,
}

impl Session {
    /// Every OS root on the disk, in device order.
    pub fn inspect(&mut self) -> FsResult<Vec<OsInfo>> {
        // Mounted filesystems are written back first so that the read-only look sees them.
        self.table.sync_all()?;
        let filesystems = self.filesystems(false);
        let mut found = Vec::new();
        for f in &filesystems {
            if f.detected.is_none() {
                continue;
            }
            // XFS and btrfs through the job's VM (booted for the first of them).
            let Ok((_, _, fs)) = self.open_mountable(&f.device, true, "", None) else {
                continue;
            };
            let mut t = MountTable::new();
            if t.mount(fs, &f.device, "/", true).is_err() {
                continue;
            }
            let os = look(&mut t, &f.device);
            let _ = t.umount_all();
            if let Some(mut os) = os {
                os.mountpoints = map_fstab(&os.mountpoints, &filesystems, &f.device);
                found.push(os);
            }
        }
        Ok(drop_snapshot_roots(found))
    }
}

/// Leaves out the roots on a btrfs subvolume that look like the root on the whole device
/// (its default subvolume): snapshots of it.
fn drop_snapshot_roots(found: Vec<OsInfo>) -> Vec<OsInfo> {
    let same = |a: &OsInfo, b: &OsInfo| {
        (
            &a.os_type,
            &a.distro,
            &a.product_name,
            a.major_version,
            a.minor_version,
        ) == (
            &b.os_type,
            &b.distro,
            &b.product_name,
            b.major_version,
            b.minor_version,
        )
    };
    found
        .iter()
        .filter(|os| {
            let Some(dev) = os.root.strip_prefix("btrfsvol:").and_then(|r| {
                found
                    .iter()
                    .find(|p| r.starts_with(&format!("{}/", p.root)))
            }) else {
                return true;
            };
            !same(os, dev)
        })
        .cloned()
        .collect()
}

fn read(t: &mut MountTable, path: &str) -> Option<String> {
    t.read_file(path.as_bytes(), READ_LIMIT)
        .ok()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn is_dir(t: &mut MountTable, path: &str) -> bool {
    matches!(
        t.kind_of(path.as_bytes(), true),
        Ok(Some(FileKind::Directory))
    )
}

/// Resolves `path` ignoring case, component by component, as libguestfs does for Windows
/// paths (`\WINDOWS\system32` and `\Windows\System32` are the same directory there).
fn case_insensitive(t: &mut MountTable, path: &str) -> Option<String> {
    let mut cur = String::new();
    for c in path.split('/').filter(|c| !c.is_empty()) {
        let dir = if cur.is_empty() {
            "/".to_string()
        } else {
            cur.clone()
        };
        let entries = t.readdir_path(dir.as_bytes()).ok()?;
        let hit = entries
            .iter()
            .find(|e| String::from_utf8_lossy(&e.name).eq_ignore_ascii_case(c))?;
        cur = format!("{cur}/{}", String::from_utf8_lossy(&hit.name));
    }
    Some(if cur.is_empty() { "/".into() } else { cur })
}

fn look(t: &mut MountTable, device: &str) -> Option<OsInfo> {
    if is_dir(t, "/etc") && (is_dir(t, "/usr") || is_dir(t, "/bin") || is_dir(t, "/sbin")) {
        return Some(linux(t, device));
    }
    // libguestfs's test for a Windows system root (daemon/inspect_fs_windows.ml
    // is_systemroot): `system32/` and `system32/config/` directories and a
    // `system32/cmd.exe` file, names in any case.
    for root in ["/Windows", "/WINNT", "/win32", "/win"] {
        let Some(sys) = case_insensitive(t, &format!("{root}/System32")) else {
            continue;
        };
        let cmd = case_insensitive(t, &format!("{sys}/cmd.exe"));
        let hives = case_insensitive(t, &format!("{sys}/config"));
        if cmd.is_some() && hives.as_deref().is_some_and(|h| is_dir(t, h)) && is_dir(t, &sys) {
            return Some(OsInfo {
                root: device.into(),
                os_type: "windows".into(),
                distro: "windows".into(),
                // Name and version live in the SOFTWARE hive, which strata does not
                // parse: libguestfs says `unknown` too when it cannot read them.
                product_name: "unknown".into(),
                osinfo: "unknown".into(),
                mountpoints: vec![("/".into(), device.into())],
                ..OsInfo::default()
            });
        }
    }
    if let Some(cfg) = read(t, "/boot.cfg") {
        if cfg.lines().any(|l| l.starts_with("kernel=")) {
            let build = key(&cfg, "build").unwrap_or_default();
            let mut v = build.split('.');
            let major = v.next().and_then(|x| x.parse().ok()).unwrap_or(0);
            let minor = v.next().and_then(|x| x.parse().ok()).unwrap_or(0);
            return Some(OsInfo {
                root: device.into(),
                os_type: "esxi".into(),
                distro: "esxi".into(),
                product_name: format!("VMware ESXi {build}").trim().to_string(),
                major_version: major,
                minor_version: minor,
                osinfo: "unknown".into(),
                ..OsInfo::default()
            });
        }
    }
    None
}

/// `KEY=value` (value unquoted) from a shell-style file.
fn key(text: &str, k: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (a, b) = l.trim().split_once('=')?;
        (a.trim() == k).then(|| b.trim().trim_matches('"').trim_matches('\'').to_string())
    })
}

fn version(v: &str) -> (u32, u32) {
    let mut it = v
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty());
    let major = it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
    let minor = it.next().and_then(|x| x.parse().ok()).unwrap_or(0);
    (major, minor)
}

fn linux(t: &mut MountTable, device: &str) -> OsInfo {
    let mut os = OsInfo {
        root: device.into(),
        os_type: "linux".into(),
        distro: "unknown".into(),
        osinfo: "unknown".into(),
        ..OsInfo::default()
    };
    if let Some(rel) = read(t, "/etc/os-release") {
        let id = key(&rel, "ID").unwrap_or_default();
        os.distro = match id.as_str() {
            "rhel" | "centos" | "fedora" | "debian" | "ubuntu" | "sles" | "rocky" | "almalinux"
            | "alpine" | "arch" | "mageia" | "kali" => id.clone(),
            "ol" => "oraclelinux".into(),
            "opensuse" | "opensuse-leap" | "opensuse-tumbleweed" => "opensuse".into(),
            "sled" => "sles".into(),
            _ => "unknown".into(),
        };
        os.product_name = key(&rel, "PRETTY_NAME").unwrap_or_default();
        let (ma, mi) = version(&key(&rel, "VERSION_ID").unwrap_or_default());
        os.major_version = ma;
        os.minor_version = mi;
    } else if let Some(rel) = read(t, "/etc/redhat-release") {
        let l = rel.lines().next().unwrap_or_default().to_string();
        os.distro = if l.starts_with("CentOS") {
            "centos".into()
        } else if l.starts_with("Fedora") {
            "fedora".into()
        } else {
            "rhel".into()
        };
        let (ma, mi) = version(l.split(" release ").nth(1).unwrap_or_default());
        os.major_version = ma;
        os.minor_version = mi;
        os.product_name = l;
    } else if let Some(rel) = read(t, "/etc/SuSE-release") {
        os.distro = "sles".into();
        os.product_name = rel.lines().next().unwrap_or_default().to_string();
        os.major_version = key(&rel, "VERSION")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        os.minor_version = key(&rel, "PATCHLEVEL")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
    }
    if os.distro == "debian" {
        // libguestfs takes Debian's minor version from /etc/debian_version (12.5).
        if let Some(dv) = read(t, "/etc/debian_version") {
            let (ma, mi) = version(dv.trim());
            if ma == os.major_version || os.major_version == 0 {
                os.major_version = ma;
                os.minor_version = mi;
                // ... and its product name too (guestfish prints `12.5`, not PRETTY_NAME).
                os.product_name = dv.trim().to_string();
            }
        }
    }
    os.osinfo = osinfo(&os);
    os.hostname = read(t, "/etc/hostname")
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| read(t, "/etc/sysconfig/network").and_then(|n| key(&n, "HOSTNAME")))
        .unwrap_or_default();
    // fstab entries, still in the OS's own names; mapped to devices by the caller.
    if let Some(fstab) = read(t, "/etc/fstab") {
        for l in fstab.lines() {
            let w: Vec<&str> = l.split_whitespace().collect();
            if w.len() < 3 || w[0].starts_with('#') {
                continue;
            }
            let (spec, point, kind) = (w[0], w[1], w[2]);
            // A btrfs subvolume is kept as `SPEC SUBVOL` (fstab fields hold no spaces)
            // until `map_fstab` names its device.
            let subvol = (kind == "btrfs")
                .then(|| w.get(3))
                .flatten()
                .and_then(|o| o.split(',').find_map(|o| o.strip_prefix("subvol=")));
            if !point.starts_with('/')
                || matches!(
                    kind,
                    "swap" | "proc" | "sysfs" | "tmpfs" | "devpts" | "none"
                )
            {
                continue;
            }
            let spec = match subvol {
                Some(v) => format!("{spec} {v}"),
                None => spec.to_string(),
            };
            os.mountpoints.push((point.to_string(), spec));
        }
    }
    os
}

/// libosinfo's short id, as libguestfs builds it.
fn osinfo(os: &OsInfo) -> String {
    let (ma, mi) = (os.major_version, os.minor_version);
    match os.distro.as_str() {
        "debian" | "fedora" => format!("{}{ma}", os.distro),
        "ubuntu" => format!("ubuntu{ma}.{mi:02}"),
        "rhel" | "centos" | "rocky" | "almalinux" | "oraclelinux"
            if ma >= 8 || os.distro != "centos" =>
        {
            let name = if os.distro == "oraclelinux" {
                "ol"
            } else {
                &os.distro
            };
            format!("{name}{ma}.{mi}")
        }
        "centos" => format!("centos{ma}.0"),
        "sles" if mi > 0 => format!("sles{ma}sp{mi}"),
        "sles" => format!("sles{ma}"),
        "opensuse" => format!("opensuse{ma}.{mi}"),
        _ => "unknown".into(),
    }
}

/// Maps fstab specs (`UUID=`, `LABEL=`, `/dev/...`) onto this disk's device names; the
/// root comes first, always as the inspected device.
fn map_fstab(
    entries: &[(String, String)],
    filesystems: &[super::session::FsInfo],
    root: &str,
) -> Vec<(String, String)> {
    let mut out = vec![("/".to_string(), root.to_string())];
    for (point, spec) in entries {
        if point == "/" {
            continue;
        }
        let (spec, subvol) = match spec.split_once(' ') {
            Some((s, v)) => (s, Some(v)),
            None => (spec.as_str(), None),
        };
        let by = |f: &&super::session::FsInfo, want: &dyn Fn(&Detected) -> bool| {
            f.detected.as_ref().is_some_and(want)
        };
        use super::detect::Detected;
        let dev = if let Some(u) = spec.strip_prefix("UUID=") {
            filesystems
                .iter()
                .find(|f| by(f, &|d: &Detected| d.uuid.eq_ignore_ascii_case(u)))
                .map(|f| f.device.clone())
        } else if let Some(l) = spec.strip_prefix("LABEL=") {
            filesystems
                .iter()
                .find(|f| by(f, &|d: &Detected| d.label == l))
                .map(|f| f.device.clone())
        } else if spec.starts_with("/dev/") {
            Some(crate::disk::layout::canonical_name(spec))
        } else {
            None
        };
        if let Some(dev) = dev {
            let dev = match subvol {
                Some(v) => format!("btrfsvol:{dev}/{v}"),
                None => dev,
            };
            out.push((point.clone(), dev));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::memfs::MemFs;
    use crate::fs::ops::DIR_MODE;

    fn guest(files: &[(&str, &str)]) -> MountTable {
        let mut t = MountTable::new();
        t.mount(Box::new(MemFs::new()), "/dev/sda2", "/", false)
            .unwrap();
        for (p, body) in files {
            let parent = &p[..p.rfind('/').unwrap()];
            if !parent.is_empty() {
                t.mkdir_p(parent.as_bytes(), DIR_MODE).unwrap();
            }
            t.write_file(p.as_bytes(), body.as_bytes()).unwrap();
        }
        t
    }

    #[test]
    fn rhel_and_debian_roots_read_as_libguestfs_reports_them() {
        let mut t = guest(&[
            ("/usr/bin/sh", ""),
            (
                "/etc/os-release",
                "NAME=\"Red Hat Enterprise Linux\"\nID=\"rhel\"\nVERSION_ID=\"8.4\"\nPRETTY_NAME=\"Red Hat Enterprise Linux 8.4 (Ootpa)\"\n",
            ),
            ("/etc/hostname", "gold\n"),
            ("/etc/fstab", "/dev/mapper/rhel-root / xfs defaults 0 0\nUUID=ABCD-1234 /boot/efi vfat umask=0077 0 2\n/dev/mapper/rhel-swap none swap defaults 0 0\n"),
        ]);
        let os = look(&mut t, "/dev/rhel/root").unwrap();
        assert_eq!(
            (
                os.os_type.as_str(),
                os.distro.as_str(),
                os.major_version,
                os.minor_version
            ),
            ("linux", "rhel", 8, 4)
        );
        assert_eq!(os.osinfo, "rhel8.4");
        assert_eq!(os.product_name, "Red Hat Enterprise Linux 8.4 (Ootpa)");
        assert_eq!(os.hostname, "gold");
        assert_eq!(os.mountpoints.len(), 2, "{:?}", os.mountpoints);

        let mut t = guest(&[
            ("/bin/sh", ""),
            (
                "/etc/os-release",
                "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n",
            ),
            ("/etc/debian_version", "12.5\n"),
        ]);
        let os = look(&mut t, "/dev/sda1").unwrap();
        assert_eq!(
            (os.distro.as_str(), os.major_version, os.minor_version),
            ("debian", 12, 5)
        );
        assert_eq!(os.osinfo, "debian12");
    }

    #[test]
    fn windows_is_found_whatever_the_case_of_its_directories() {
        let mut t = guest(&[
            ("/WINDOWS/system32/CMD.EXE", "MZ"),
            ("/WINDOWS/system32/config/SOFTWARE", "regf"),
        ]);
        let os = look(&mut t, "/dev/sda2").unwrap();
        assert_eq!(
            (os.os_type.as_str(), os.distro.as_str()),
            ("windows", "windows")
        );
        let mut t = guest(&[("/Windows/System32/cmd.exe", "MZ")]);
        assert!(
            look(&mut t, "/dev/sda2").is_none(),
            "no config directory: not a root"
        );
    }

    #[test]
    fn an_esxi_bootbank_is_reported_and_an_empty_filesystem_is_not() {
        let mut t = guest(&[(
            "/boot.cfg",
            "bootstate=0\ntitle=Loading VMware ESXi\nkernel=/b.b00\nbuild=7.0.3-0.50.20036589\n",
        )]);
        let os = look(&mut t, "/dev/sda5").unwrap();
        assert_eq!(
            (os.os_type.as_str(), os.major_version, os.minor_version),
            ("esxi", 7, 0)
        );
        let mut t = guest(&[("/readme", "x")]);
        assert!(look(&mut t, "/dev/sda1").is_none());
    }

    #[test]
    fn btrfs_fstab_subvolumes_map_to_btrfsvol_names_and_snapshot_roots_are_dropped() {
        let mut t = guest(&[
            ("/usr/bin/bash", ""),
            ("/etc/os-release", "ID=\"sles\"\nVERSION_ID=\"15.5\"\n"),
            (
                "/etc/fstab",
                "UUID=aaaa / btrfs defaults 0 0\nUUID=aaaa /home btrfs subvol=/@/home 0 0\n\
                 UUID=aaaa /var btrfs noatime,subvol=@/var 0 0\n/dev/sda3 /data xfs subvol=x 0 0\n",
            ),
        ]);
        let os = look(&mut t, "/dev/sda2").unwrap();
        let fss = vec![super::super::session::FsInfo {
            device: "/dev/sda2".into(),
            size: 1,
            detected: Some(super::super::detect::Detected {
                fs_type: "btrfs".into(),
                uuid: "AAAA".into(),
                label: String::new(),
            }),
            usage: None,
            error: None,
        }];
        assert_eq!(
            map_fstab(&os.mountpoints, &fss, "/dev/sda2"),
            [
                ("/", "/dev/sda2"),
                ("/home", "btrfsvol:/dev/sda2//@/home"),
                ("/var", "btrfsvol:/dev/sda2/@/var"),
                ("/data", "/dev/sda3"),
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
        let root = |r: &str, minor| OsInfo {
            root: r.into(),
            distro: "sles".into(),
            major_version: 15,
            minor_version: minor,
            ..OsInfo::default()
        };
        let kept = drop_snapshot_roots(vec![
            root("/dev/sda2", 5),
            root("btrfsvol:/dev/sda2/@/.snapshots/2/snapshot", 5),
            root("btrfsvol:/dev/sda2/@/.snapshots/3/snapshot", 4),
            root("btrfsvol:/dev/sda3/@", 5),
        ]);
        let names: Vec<&str> = kept.iter().map(|o| o.root.as_str()).collect();
        assert_eq!(
            names,
            [
                "/dev/sda2",
                "btrfsvol:/dev/sda2/@/.snapshots/3/snapshot",
                "btrfsvol:/dev/sda3/@"
            ]
        );
    }

    #[test]
    fn osinfo_ids_follow_libosinfo() {
        let os = |d: &str, ma, mi| OsInfo {
            distro: d.into(),
            major_version: ma,
            minor_version: mi,
            ..OsInfo::default()
        };
        assert_eq!(osinfo(&os("ubuntu", 22, 4)), "ubuntu22.04");
        assert_eq!(osinfo(&os("sles", 15, 3)), "sles15sp3");
        assert_eq!(osinfo(&os("sles", 12, 0)), "sles12");
        assert_eq!(osinfo(&os("centos", 7, 9)), "centos7.0");
        assert_eq!(osinfo(&os("centos", 8, 2)), "centos8.2");
        assert_eq!(osinfo(&os("oraclelinux", 8, 6)), "ol8.6");
        assert_eq!(osinfo(&os("fedora", 38, 0)), "fedora38");
    }
}
