//! Partition tables: a disk (any `BlockDevice`) seen as numbered partitions, each a byte
//! range of the disk.
//!
//! This module owns the I/O side: which sectors to read, in what order, and the choice
//! between GPT and MBR. The byte layouts live in `gpt.rs` and `mbr.rs` (pure parsing, no
//! I/O). A partition table is untrusted input: every field is bounds-checked, the number of
//! entries and logical partitions is capped, and nothing here allocates more than
//! `gpt::MAX_ENTRY_ARRAY_BYTES` or panics on any bytes. Sectors are 512 bytes.
//! It does not know about filesystems inside the partitions (that is `fs/`).
//! LVM2 physical volumes and the logical volumes on them are `lvm.rs` (I/O) and
//! `lvm_text.rs` (the metadata text); `window.rs` is a device made of runs of other
//! devices (a partition, an LV); `layout.rs` puts it together as guestfish names it
//! (`/dev/sda`, `/dev/sdaN`, `/dev/VG/LV`).

pub mod gpt;
pub mod layout;
pub mod lvm;
pub mod lvm_text;
pub mod mbr;
pub mod window;

use std::io;

use crate::store::device::BlockDevice;
use crate::store::StoreError;

/// Logical sector size of every disk strata serves.
pub const SECTOR: u64 = 512;

/// One partition, numbered as Linux numbers them (GPT: entry index + 1; MBR: primary slot
/// 1–4, logical partitions 5 and up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub number: u32,
    /// Offset of the first byte on the disk.
    pub start: u64,
    /// Length in bytes (never zero; `start + len` never exceeds the disk).
    pub len: u64,
    /// The GPT partition name, or empty (MBR has none).
    pub name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("reading {what} at byte offset {offset}: {source}")]
    Reading {
        what: &'static str,
        offset: u64,
        #[source]
        source: StoreError,
    },
    #[error("parsing the GPT header at LBA {lba}: {detail}")]
    ParsingGptHeader { lba: u64, detail: String },
    #[error("checking the GPT partition entries (array at LBA {lba}): {detail}")]
    CheckingGptEntries { lba: u64, detail: String },
    #[error("following the MBR extended partition chain: {detail}")]
    FollowingExtendedChain { detail: String },
    #[error(
        "placing partition {number}: bytes {start}..{end} are beyond the end of the disk \
         ({disk_len} bytes); the partition table does not match this disk"
    )]
    PlacingPartition {
        number: u32,
        start: u64,
        end: u64,
        disk_len: u64,
    },
    #[error("placing partition {number}: {detail}")]
    InvalidPartition { number: u32, detail: String },
    #[error("opening device {name}: {detail}")]
    OpeningDevice { name: String, detail: String },
    #[error("opening device {name}: strata does not serve this logical volume: {reason}")]
    RefusedVolume { name: String, reason: String },
    #[error("reading the LVM physical volume label in sector {sector}: {detail}")]
    ReadingLvmLabel { sector: u64, detail: String },
    #[error("reading the LVM metadata area header at byte offset {offset}: {detail}")]
    ReadingLvmMetadataArea { offset: u64, detail: String },
    #[error("reading the LVM metadata text of the area at byte offset {area}: {detail}")]
    ReadingLvmMetadata { area: u64, detail: String },
    #[error("parsing the LVM metadata text (line {line}): {detail}")]
    ParsingLvmMetadata { line: usize, detail: String },
}

/// Reads the partition table of `dev`. GPT is recognized by its protective MBR (type 0xEE);
/// otherwise an MBR with the 0x55AA signature; no table gives an empty list.
/// Partitions come back sorted by number.
pub fn read_partitions(dev: &dyn BlockDevice) -> Result<Vec<Partition>, DiskError> {
    let disk_len = dev.len();
    let disk = Disk { dev, len: disk_len };
    if disk_len < SECTOR {
        return Ok(Vec::new());
    }
    let mut sector0 = [0u8; SECTOR as usize];
    disk.read(&mut sector0, 0, "the MBR")?;
    let Some(table) = mbr::parse(&sector0) else {
        return Ok(Vec::new());
    };
    let mut parts = if table.is_protective() {
        read_gpt(&disk)?
    } else {
        read_mbr(&disk, &table)?
    };
    parts.sort_by_key(|p| p.number);
    Ok(parts)
}

struct Disk<'a> {
    dev: &'a dyn BlockDevice,
    len: u64,
}

impl Disk<'_> {
    fn read(&self, buf: &mut [u8], offset: u64, what: &'static str) -> Result<(), DiskError> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|e| e > self.len) {
            return Err(DiskError::Reading {
                what,
                offset,
                source: StoreError::io(
                    "reading",
                    self.dev.describe(),
                    io::Error::new(io::ErrorKind::UnexpectedEof, "beyond the end of the disk"),
                ),
            });
        }
        self.dev
            .read_at(buf, offset)
            .map_err(|source| DiskError::Reading {
                what,
                offset,
                source,
            })
    }

    fn sectors(&self) -> u64 {
        self.len / SECTOR
    }

    /// Turns a sector range into a checked byte-range partition.
    fn place(
        &self,
        number: u32,
        first_lba: u64,
        sectors: u64,
        name: String,
    ) -> Result<Partition, DiskError> {
        let start = first_lba.checked_mul(SECTOR);
        let len = sectors.checked_mul(SECTOR);
        let (Some(start), Some(len)) = (start, len) else {
            return Err(DiskError::InvalidPartition {
                number,
                detail: format!("sector range {first_lba}+{sectors} overflows"),
            });
        };
        let end = start.saturating_add(len);
        if end > self.len {
            return Err(DiskError::PlacingPartition {
                number,
                start,
                end,
                disk_len: self.len,
            });
        }
        Ok(Partition {
            number,
            start,
            len,
            name,
        })
    }
}

fn read_gpt(disk: &Disk<'_>) -> Result<Vec<Partition>, DiskError> {
    // The primary header is at LBA 1; if it is damaged, the backup at the last LBA is used,
    // as Linux and sfdisk do.
    let primary = read_gpt_at(disk, 1);
    match primary {
        Ok(parts) => Ok(parts),
        Err(e @ DiskError::Reading { .. }) => Err(e),
        Err(e) => {
            let last = disk.sectors().saturating_sub(1);
            if last <= 1 {
                return Err(e);
            }
            match read_gpt_at(disk, last) {
                Ok(parts) => {
                    tracing::warn!(error = %e, "primary GPT is damaged; using the backup GPT");
                    Ok(parts)
                }
                Err(_) => Err(e),
            }
        }
    }
}

fn read_gpt_at(disk: &Disk<'_>, lba: u64) -> Result<Vec<Partition>, DiskError> {
    let mut sector = [0u8; SECTOR as usize];
    disk.read(&mut sector, lba * SECTOR, "the GPT header")?;
    let header = gpt::Header::parse(&sector, lba, disk.sectors())
        .map_err(|detail| DiskError::ParsingGptHeader { lba, detail })?;
    let array_len = header.entry_array_len();
    let mut array = vec![0u8; array_len];
    disk.read(
        &mut array,
        header.entries_lba * SECTOR,
        "the GPT partition entries",
    )?;
    let entries = header
        .parse_entries(&array)
        .map_err(|detail| DiskError::CheckingGptEntries {
            lba: header.entries_lba,
            detail,
        })?;
    entries
        .into_iter()
        .map(|e| {
            if e.last_lba < e.first_lba {
                return Err(DiskError::InvalidPartition {
                    number: e.number,
                    detail: format!(
                        "ends (LBA {}) before it starts (LBA {})",
                        e.last_lba, e.first_lba
                    ),
                });
            }
            disk.place(e.number, e.first_lba, e.last_lba - e.first_lba + 1, e.name)
        })
        .collect()
}

fn read_mbr(disk: &Disk<'_>, table: &mbr::Table) -> Result<Vec<Partition>, DiskError> {
    let mut parts = Vec::new();
    let mut extended = None;
    for (slot, e) in table.entries.iter().enumerate() {
        let number = slot as u32 + 1;
        let Some(e) = e else { continue };
        if e.is_extended() {
            // Linux shows the container as a tiny stub device; it holds no data of its own,
            // so it is not listed. Only the first extended partition is followed.
            if extended.is_none() {
                extended = Some(disk.place(number, e.start_lba, e.sectors, String::new())?);
            }
            continue;
        }
        parts.push(disk.place(number, e.start_lba, e.sectors, String::new())?);
    }
    if let Some(ext) = extended {
        read_logical(disk, &ext, &mut parts)?;
    }
    Ok(parts)
}

/// Follows the chain of extended boot records; logical partitions are numbered from 5.
fn read_logical(
    disk: &Disk<'_>,
    ext: &Partition,
    parts: &mut Vec<Partition>,
) -> Result<(), DiskError> {
    let ext_lba = ext.start / SECTOR;
    let ext_end_lba = (ext.start + ext.len) / SECTOR;
    let mut ebr_lba = ext_lba;
    let mut number = 5;
    for _ in 0..mbr::MAX_LOGICAL {
        let mut sector = [0u8; SECTOR as usize];
        disk.read(&mut sector, ebr_lba * SECTOR, "an extended boot record")?;
        let Some(ebr) = mbr::parse_ebr(&sector) else {
            // No signature: the chain ends here (an empty extended partition looks like this).
            return Ok(());
        };
        if let Some(l) = ebr.logical {
            let start = ebr_lba.checked_add(l.start_lba).ok_or_else(|| {
                DiskError::FollowingExtendedChain {
                    detail: format!("logical partition {number} start overflows"),
                }
            })?;
            let p = disk.place(number, start, l.sectors, String::new())?;
            if p.start + p.len > ext_end_lba * SECTOR {
                return Err(DiskError::FollowingExtendedChain {
                    detail: format!(
                        "logical partition {number} extends past its extended partition"
                    ),
                });
            }
            parts.push(p);
            number += 1;
        }
        let Some(next) = ebr.next else { return Ok(()) };
        let next_lba = ext_lba.saturating_add(next.start_lba);
        // Each EBR must lie further on than the previous one: this also rules out loops.
        if next_lba <= ebr_lba || next_lba >= ext_end_lba {
            return Err(DiskError::FollowingExtendedChain {
                detail: format!(
                    "the next extended boot record (LBA {next_lba}) is not after LBA {ebr_lba} inside the extended partition"
                ),
            });
        }
        ebr_lba = next_lba;
    }
    Err(DiskError::FollowingExtendedChain {
        detail: format!("more than {} logical partitions", mbr::MAX_LOGICAL),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::device::MemDevice;
    use std::process::Command;

    fn parts_of(disk: &[u8]) -> Result<Vec<Partition>, DiskError> {
        read_partitions(&MemDevice::read_only(disk.to_vec()))
    }

    const SECTORS: u64 = 8192;

    /// A 4 MiB disk with a GPT (primary and backup) describing `parts`.
    fn gpt_disk(parts: &[(u64, u64, &str)]) -> Vec<u8> {
        let mut d = vec![0u8; (SECTORS * SECTOR) as usize];
        mbr::tests::put_entry(
            &mut d[..512],
            0,
            mbr::TYPE_GPT_PROTECTIVE,
            1,
            SECTORS as u32 - 1,
        );
        let a = gpt::tests::entries(128, parts);
        d[512..1024].copy_from_slice(&gpt::tests::header(1, SECTORS, 2, &a));
        d[1024..1024 + a.len()].copy_from_slice(&a);
        let backup_array = (SECTORS - 33) * SECTOR;
        d[backup_array as usize..backup_array as usize + a.len()].copy_from_slice(&a);
        let last = ((SECTORS - 1) * SECTOR) as usize;
        d[last..last + 512].copy_from_slice(&gpt::tests::header(
            SECTORS - 1,
            SECTORS,
            SECTORS - 33,
            &a,
        ));
        d
    }

    #[test]
    fn blank_disk_has_no_partitions() {
        assert_eq!(parts_of(&vec![0u8; 1 << 20]).unwrap(), vec![]);
        assert_eq!(parts_of(&[0u8; 100]).unwrap(), vec![]);
    }

    #[test]
    fn gpt_partitions_come_back_in_bytes_with_names() {
        let d = gpt_disk(&[(2048, 4095, "EFI system"), (4096, 8000, "root")]);
        let p = parts_of(&d).unwrap();
        assert_eq!(
            p,
            vec![
                Partition {
                    number: 1,
                    start: 1 << 20,
                    len: 1 << 20,
                    name: "EFI system".into()
                },
                Partition {
                    number: 2,
                    start: 2 << 20,
                    len: (8000 - 4096 + 1) * 512,
                    name: "root".into()
                },
            ]
        );
    }

    #[test]
    fn damaged_primary_gpt_falls_back_to_the_backup() {
        let mut d = gpt_disk(&[(2048, 4095, "a")]);
        d[512 + 40] ^= 0xFF;
        let p = parts_of(&d).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].start, 1 << 20);
    }

    #[test]
    fn gpt_with_both_headers_damaged_is_an_error_naming_the_check() {
        let mut d = gpt_disk(&[(2048, 4095, "a")]);
        d[512 + 40] ^= 0xFF;
        let last = ((SECTORS - 1) * SECTOR) as usize;
        d[last + 40] ^= 0xFF;
        let e = parts_of(&d).unwrap_err().to_string();
        assert!(
            e.contains("GPT header at LBA 1") && e.contains("checksum"),
            "{e}"
        );
    }

    #[test]
    fn gpt_entry_with_end_before_start_is_refused() {
        let d = gpt_disk(&[(4000, 3000, "a")]);
        assert!(matches!(
            parts_of(&d),
            Err(DiskError::InvalidPartition { number: 1, .. })
        ));
    }

    #[test]
    fn gpt_on_a_truncated_disk_is_refused_not_clipped() {
        // The table was made for 8192 sectors; the disk is shorter than its partition.
        let d = gpt_disk(&[(2048, 8100, "a")]);
        let short = &d[..(6000 * SECTOR) as usize];
        assert!(parts_of(short).is_err());
    }

    #[test]
    fn mbr_primaries_keep_their_slot_numbers() {
        let mut d = vec![0u8; (SECTORS * SECTOR) as usize];
        mbr::tests::put_entry(&mut d[..512], 0, 0x83, 2048, 2048);
        mbr::tests::put_entry(&mut d[..512], 2, 0x07, 4096, 1000);
        let p = parts_of(&d).unwrap();
        let got: Vec<_> = p.iter().map(|p| (p.number, p.start, p.len)).collect();
        assert_eq!(got, vec![(1, 1 << 20, 1 << 20), (3, 2 << 20, 1000 * 512)]);
    }

    #[test]
    fn mbr_partition_beyond_the_disk_is_refused() {
        let mut d = vec![0u8; (SECTORS * SECTOR) as usize];
        mbr::tests::put_entry(&mut d[..512], 0, 0x83, 2048, u32::MAX);
        let e = parts_of(&d).unwrap_err();
        assert!(
            matches!(e, DiskError::PlacingPartition { number: 1, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("beyond the end of the disk"));
    }

    #[test]
    fn mbr_logical_partitions_are_numbered_from_five() {
        let mut d = vec![0u8; (SECTORS * SECTOR) as usize];
        mbr::tests::put_entry(&mut d[..512], 0, 0x83, 2048, 1024);
        mbr::tests::put_entry(&mut d[..512], 1, 0x05, 4096, 4096);
        // EBR 1 at 4096: logical at +63, link to EBR 2 at extended+2048.
        let ebr1 = 4096 * 512;
        mbr::tests::put_entry(&mut d[ebr1..ebr1 + 512], 0, 0x83, 63, 1000);
        mbr::tests::put_entry(&mut d[ebr1..ebr1 + 512], 1, 0x05, 2048, 2048);
        let ebr2 = (4096 + 2048) * 512;
        mbr::tests::put_entry(&mut d[ebr2..ebr2 + 512], 0, 0x83, 63, 1500);
        let p = parts_of(&d).unwrap();
        let got: Vec<_> = p
            .iter()
            .map(|p| (p.number, p.start / 512, p.len / 512))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, 2048, 1024),
                (5, 4096 + 63, 1000),
                (6, 4096 + 2048 + 63, 1500)
            ]
        );
    }

    #[test]
    fn mbr_extended_chain_that_loops_is_refused() {
        let mut d = vec![0u8; (SECTORS * SECTOR) as usize];
        mbr::tests::put_entry(&mut d[..512], 0, 0x05, 4096, 4096);
        let ebr1 = 4096 * 512;
        mbr::tests::put_entry(&mut d[ebr1..ebr1 + 512], 0, 0x83, 63, 100);
        mbr::tests::put_entry(&mut d[ebr1..ebr1 + 512], 1, 0x05, 0, 2048);
        let e = parts_of(&d).unwrap_err();
        assert!(matches!(e, DiskError::FollowingExtendedChain { .. }), "{e}");
    }

    #[test]
    fn read_errors_name_what_was_being_read() {
        struct Gone;
        impl BlockDevice for Gone {
            fn len(&self) -> u64 {
                1 << 20
            }
            fn read_at(&self, _: &mut [u8], _: u64) -> crate::store::Result<()> {
                Err(StoreError::Failed("device gone".into()))
            }
            fn write_at(&self, _: &[u8], _: u64) -> crate::store::Result<()> {
                unreachable!()
            }
            fn discard(&self, _: u64, _: u64) -> crate::store::Result<()> {
                unreachable!()
            }
            fn flush(&self) -> crate::store::Result<()> {
                Ok(())
            }
            fn is_read_only(&self) -> bool {
                true
            }
            fn describe(&self) -> String {
                "gone".into()
            }
        }
        let e = read_partitions(&Gone).unwrap_err().to_string();
        assert!(
            e.contains("reading the MBR") && e.contains("device gone"),
            "{e}"
        );
    }

    // ---- against sfdisk, the reference implementation ----

    fn sfdisk_available() -> bool {
        let ok = Command::new("sfdisk").arg("--version").output().is_ok();
        if !ok {
            eprintln!(
                "note: sfdisk not found (Debian package fdisk); skipping the sfdisk comparison"
            );
        }
        ok
    }

    /// Partitions a sparse 64 MiB file with `script` and compares our parse with
    /// `sfdisk --json`.
    fn compare_with_sfdisk(script: &str) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(64 << 20).unwrap();
        drop(f);
        let mut child = Command::new("sfdisk")
            .arg("--quiet")
            .arg(&path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), script.as_bytes()).unwrap();
        assert!(
            child.wait().unwrap().success(),
            "sfdisk failed on {script:?}"
        );
        let out = Command::new("sfdisk")
            .arg("--json")
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success());
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let table = &json["partitiontable"];
        assert_eq!(table["sectorsize"].as_u64().unwrap_or(512), 512);
        let mut expected: Vec<(u32, u64, u64, String)> = table["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| !matches!(p["type"].as_str(), Some("5" | "f" | "85")))
            .map(|p| {
                let node = p["node"].as_str().unwrap();
                let digits: String = node
                    .chars()
                    .rev()
                    .take_while(|c| c.is_ascii_digit())
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                (
                    digits.parse().unwrap(),
                    p["start"].as_u64().unwrap() * 512,
                    p["size"].as_u64().unwrap() * 512,
                    p["name"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        expected.sort();
        let disk = std::fs::read(&path).unwrap();
        let got: Vec<_> = parts_of(&disk)
            .unwrap()
            .into_iter()
            .map(|p| (p.number, p.start, p.len, p.name))
            .collect();
        assert!(!expected.is_empty());
        assert_eq!(got, expected, "script {script:?}");
    }

    #[test]
    fn gpt_parse_matches_sfdisk() {
        if sfdisk_available() {
            compare_with_sfdisk(
                "label: gpt\nstart=2048, size=16384, name=\"EFI system\", type=U\n\
                 size=32768, name=root, type=L\nsize=4096, type=S\n",
            );
        }
    }

    #[test]
    fn mbr_parse_matches_sfdisk_including_logical_partitions() {
        if sfdisk_available() {
            compare_with_sfdisk(
                "label: dos\nstart=2048, size=16384, type=83\nsize=16384, type=7\n\
                 size=65536, type=5\nsize=8192, type=83\nsize=8192, type=82\n",
            );
        }
    }
}
