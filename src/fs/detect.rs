//! Which filesystem a device holds, with its label and UUID, from the signatures blkid
//! reads. Pure Rust over a few sectors: safe to run in any process, on any bytes.
//!
//! The type names are the ones `guestfish list-filesystems` (`vfs-type`) prints: `ext2`,
//! `ext3`, `ext4`, `vfat`, `ntfs`, `xfs`, `btrfs`, `swap`, `iso9660`, and `LVM2_member`
//! for an LVM physical volume. UUIDs are formatted as blkid formats them.

use serde::{Deserialize, Serialize};

use crate::store::device::BlockDevice;
use crate::store::Result;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Detected {
    pub fs_type: String,
    /// Empty when the filesystem has none (or, for NTFS, when it lives in the MFT: the
    /// adapter reads that one).
    pub label: String,
    pub uuid: String,
}

// ext2/3/4 superblock (at byte 1024) fields and feature bits, from e2fsprogs' ext2_fs.h.
const EXT_SB: usize = 1024;
const EXT_MAGIC: u16 = 0xEF53;
const EXT3_FEATURE_COMPAT_HAS_JOURNAL: u32 = 0x0004;
const EXT3_FEATURE_INCOMPAT_JOURNAL_DEV: u32 = 0x0008;
/// Incompat features ext3 does not have: extents, 64bit, mmp, flex_bg, ea_inode, large
/// dirs, inline data, encryption, casefold, csum_seed (blkid calls such a filesystem ext4).
const EXT4_ONLY_INCOMPAT: u32 = 0x0040
    | 0x0080
    | 0x0100
    | 0x0200
    | 0x0400
    | 0x1000
    | 0x2000
    | 0x4000
    | 0x8000
    | 0x10000
    | 0x20000;
/// Ro-compat features ext3 does not have: huge_file, gdt_csum, dir_nlink, extra_isize,
/// quota, bigalloc, metadata_csum, ...
const EXT4_ONLY_RO_COMPAT: u32 = !(0x0001 | 0x0002 | 0x0004);

/// Reads what is at `offset`, or `None` past the device's end.
fn read(dev: &dyn BlockDevice, offset: u64, len: usize) -> Result<Option<Vec<u8>>> {
    if offset.checked_add(len as u64).is_none_or(|e| e > dev.len()) {
        return Ok(None);
    }
    let mut buf = vec![0u8; len];
    dev.read_at(&mut buf, offset)?;
    Ok(Some(buf))
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A fixed-size, NUL- or space-padded label field.
fn label_field(b: &[u8], trim_spaces: bool) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    let s = String::from_utf8_lossy(&b[..end]).into_owned();
    if trim_spaces {
        s.trim_end_matches(' ').to_string()
    } else {
        s
    }
}

/// The 8-4-4-4-12 form of a 16-byte UUID.
fn uuid_string(u: &[u8]) -> String {
    let h: Vec<String> = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    )
}

/// What `dev` holds, or `None` when no known signature is there.
pub fn detect(dev: &dyn BlockDevice) -> Result<Option<Detected>> {
    let Some(head) = read(dev, 0, 4096)? else {
        return Ok(None);
    };
    if let Some(d) = ext(&head) {
        return Ok(Some(d));
    }
    if &head[0..4] == b"XFSB" {
        return Ok(Some(Detected {
            fs_type: "xfs".into(),
            label: label_field(&head[108..120], false),
            uuid: uuid_string(&head[32..48]),
        }));
    }
    if &head[3..11] == b"NTFS    " && le16(&head, 510) == 0xAA55 {
        let serial = u64::from_le_bytes(head[0x48..0x50].try_into().unwrap_or_default());
        return Ok(Some(Detected {
            fs_type: "ntfs".into(),
            label: String::new(),
            uuid: format!("{serial:016X}"),
        }));
    }
    if let Some(d) = fat(&head) {
        return Ok(Some(d));
    }
    for sector in 0..4 {
        let s = &head[sector * 512..sector * 512 + 512];
        if &s[0..8] == b"LABELONE" && &s[24..32] == b"LVM2 001" {
            return Ok(Some(Detected {
                fs_type: "LVM2_member".into(),
                label: String::new(),
                uuid: lvm_uuid(&s[32..64]),
            }));
        }
    }
    if &head[4096 - 10..] == b"SWAPSPACE2" || &head[4096 - 10..] == b"SWAP-SPACE" {
        return Ok(Some(Detected {
            fs_type: "swap".into(),
            label: label_field(&head[1024 + 28..1024 + 44], false),
            uuid: uuid_string(&head[1024 + 12..1024 + 28]),
        }));
    }
    if let Some(b) = read(dev, 0x10000, 0x1000)? {
        if &b[0x40..0x48] == b"_BHRfS_M" {
            return Ok(Some(Detected {
                fs_type: "btrfs".into(),
                label: label_field(&b[0x12B..0x12B + 256], false),
                uuid: uuid_string(&b[0x20..0x30]),
            }));
        }
    }
    if let Some(b) = read(dev, 0x8000, 2048)? {
        if &b[1..6] == b"CD001" {
            return Ok(Some(Detected {
                fs_type: "iso9660".into(),
                label: label_field(&b[40..72], true),
                uuid: String::new(),
            }));
        }
    }
    Ok(None)
}

fn ext(head: &[u8]) -> Option<Detected> {
    let sb = &head[EXT_SB..EXT_SB + 1024];
    if le16(sb, 56) != EXT_MAGIC {
        return None;
    }
    let compat = le32(sb, 92);
    let incompat = le32(sb, 96);
    let ro_compat = le32(sb, 100);
    if incompat & EXT3_FEATURE_INCOMPAT_JOURNAL_DEV != 0 {
        return Some(Detected {
            fs_type: "jbd".into(),
            label: label_field(&sb[120..136], false),
            uuid: uuid_string(&sb[104..120]),
        });
    }
    let fs_type = if incompat & EXT4_ONLY_INCOMPAT != 0 || ro_compat & EXT4_ONLY_RO_COMPAT != 0 {
        "ext4"
    } else if compat & EXT3_FEATURE_COMPAT_HAS_JOURNAL != 0 {
        "ext3"
    } else {
        "ext2"
    };
    Some(Detected {
        fs_type: fs_type.into(),
        label: label_field(&sb[120..136], false),
        uuid: uuid_string(&sb[104..120]),
    })
}

fn fat(b: &[u8]) -> Option<Detected> {
    if le16(b, 510) != 0xAA55 {
        return None;
    }
    let bytes_per_sector = le16(b, 11);
    let sectors_per_cluster = b[13];
    let reserved = le16(b, 14);
    let fats = b[16];
    let plausible = matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096)
        && sectors_per_cluster.is_power_of_two()
        && reserved > 0
        && (1..=2).contains(&fats)
        && (b[0] == 0xEB || b[0] == 0xE9);
    if !plausible {
        return None;
    }
    // FAT32 has no root-directory entry count and no 16-bit FAT size.
    let fat32 = le16(b, 17) == 0 && le16(b, 22) == 0;
    let (label_at, serial_at, sig_at) = if fat32 { (71, 67, 66) } else { (43, 39, 38) };
    // The extended boot signature says whether the serial and label fields are there.
    let (label, uuid) = if matches!(b[sig_at], 0x28 | 0x29) {
        let serial = le32(b, serial_at);
        let mut label = label_field(&b[label_at..label_at + 11], true);
        if label == "NO NAME" {
            label.clear();
        }
        (
            label,
            format!("{:04X}-{:04X}", serial >> 16, serial & 0xFFFF),
        )
    } else {
        (String::new(), String::new())
    };
    Some(Detected {
        fs_type: "vfat".into(),
        label,
        uuid,
    })
}

/// LVM prints PV UUIDs as 32 characters in groups 6-4-4-4-4-4-6.
fn lvm_uuid(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    let s: Vec<char> = s.chars().collect();
    if s.len() != 32 {
        return s.iter().collect();
    }
    let mut out = String::new();
    let mut at = 0;
    for (i, n) in [6, 4, 4, 4, 4, 4, 6].iter().enumerate() {
        if i > 0 {
            out.push('-');
        }
        out.extend(&s[at..at + n]);
        at += n;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::device::FileDevice;
    use std::process::Command;

    fn have(tool: &str) -> bool {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Makes a filesystem with `mkfs` in a 64 MiB file and compares detect() with blkid.
    fn compare_with_blkid(mkfs: &[&str]) {
        if !have(mkfs[0]) || !have("blkid") {
            eprintln!("note: {} or blkid missing; skipped", mkfs[0]);
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fs.img");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let st = Command::new(mkfs[0])
            .args(&mkfs[1..])
            .arg(&path)
            .output()
            .unwrap();
        assert!(st.status.success(), "{mkfs:?}: {st:?}");
        let probe = |tag: &str| {
            let o = Command::new("blkid")
                .args(["-p", "-o", "value", "-s", tag])
                .arg(&path)
                .output()
                .unwrap();
            String::from_utf8(o.stdout).unwrap().trim().to_string()
        };
        let dev = FileDevice::open(&path, true).unwrap();
        let d = detect(&dev).unwrap().expect("detected");
        assert_eq!(d.fs_type, probe("TYPE"), "{mkfs:?}");
        assert_eq!(d.uuid, probe("UUID"), "{mkfs:?}");
        if d.fs_type != "ntfs" {
            assert_eq!(d.label, probe("LABEL"), "{mkfs:?}");
        }
    }

    #[test]
    fn ext_types_labels_and_uuids_match_blkid() {
        compare_with_blkid(&["mke2fs", "-q", "-F", "-t", "ext2", "-L", "boot"]);
        compare_with_blkid(&["mke2fs", "-q", "-F", "-t", "ext3", "-L", "r3"]);
        compare_with_blkid(&["mke2fs", "-q", "-F", "-t", "ext4", "-L", "root"]);
    }

    #[test]
    fn fat_types_labels_and_uuids_match_blkid() {
        compare_with_blkid(&["mkfs.vfat", "-F", "12", "-n", "SMALL"]);
        compare_with_blkid(&["mkfs.vfat", "-F", "16", "-n", "ESP16"]);
        compare_with_blkid(&["mkfs.vfat", "-F", "32", "-n", "ESP"]);
        compare_with_blkid(&["mkfs.vfat", "-F", "32"]);
    }

    #[test]
    fn ntfs_and_swap_match_blkid() {
        compare_with_blkid(&["mkntfs", "-q", "-F", "-f", "-L", "Windows"]);
        compare_with_blkid(&["mkswap", "-L", "sw"]);
    }

    #[test]
    fn garbage_and_tiny_devices_hold_nothing() {
        use crate::store::device::MemDevice;
        assert_eq!(detect(&MemDevice::new(vec![0u8; 100])).unwrap(), None);
        assert_eq!(detect(&MemDevice::new(vec![0u8; 1 << 20])).unwrap(), None);
        let mut junk = vec![0xFFu8; 1 << 20];
        junk[510] = 0x55;
        junk[511] = 0xAA;
        assert_eq!(detect(&MemDevice::new(junk)).unwrap(), None);
    }
}
