//! What guestfish prints for each kind of result, byte for byte: plan scripts parse it
//! (`list-filesystems | cat > ./fs` then awk). Pure formatting. The rules, from libguestfs
//! 1.48's generated fish code (generator/fish.ml) and checked against real guestfish
//! (tests/fixtures/guestfish/):
//! - a string result is printed with a newline added, always (`cat` of "x\n" prints
//!   "x\n\n"; bytes after a NUL are lost, as with `%s`);
//! - a list prints one element per line; a table `key: value` per pair;
//! - a struct prints `field: value` per field, integers in decimal;
//! - booleans are `true`/`false`.

use crate::fs::types::{FileKind, Stat, StatVfs};

pub fn lines<'a>(items: impl IntoIterator<Item = &'a str>) -> Vec<u8> {
    let mut out = Vec::new();
    for i in items {
        out.extend_from_slice(i.as_bytes());
        out.push(b'\n');
    }
    out
}

pub fn byte_lines<T: AsRef<[u8]>>(items: &[T]) -> Vec<u8> {
    let mut out = Vec::new();
    for i in items {
        out.extend_from_slice(i.as_ref());
        out.push(b'\n');
    }
    out
}

pub fn hashtable<K: AsRef<str>, V: AsRef<str>>(pairs: impl IntoIterator<Item = (K, V)>) -> Vec<u8> {
    let mut out = String::new();
    for (k, v) in pairs {
        out.push_str(&format!("{}: {}\n", k.as_ref(), v.as_ref()));
    }
    out.into_bytes()
}

/// A string result (`RString`): `%s\n`.
pub fn string(s: &str) -> Vec<u8> {
    buffer_line(s.as_bytes())
}

/// A string result from bytes (`cat`, `readlink`): up to the first NUL, then the newline
/// guestfish adds.
pub fn buffer_line(b: &[u8]) -> Vec<u8> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    let mut out = b[..end].to_vec();
    out.push(b'\n');
    out
}

pub fn int(v: i64) -> Vec<u8> {
    format!("{v}\n").into_bytes()
}

pub fn boolean(b: bool) -> Vec<u8> {
    if b {
        b"true\n".to_vec()
    } else {
        b"false\n".to_vec()
    }
}

/// `version`: the libguestfs release strata's dialect follows.
pub fn version() -> String {
    "major: 1\nminor: 48\nrelease: 6\nextra: \n".into()
}

/// `stat`/`lstat`: guestfish's 13-field struct (the deprecated `stat` layout).
pub fn stat(st: &Stat, dev: u64) -> Vec<u8> {
    format!(
        "dev: {dev}\nino: {}\nmode: {}\nnlink: {}\nuid: {}\ngid: {}\nrdev: {}\nsize: {}\nblksize: {}\nblocks: {}\natime: {}\nmtime: {}\nctime: {}\n",
        st.ino, st.mode, st.nlink, st.uid, st.gid, st.rdev, st.size, st.blksize, st.blocks,
        st.atime.sec, st.mtime.sec, st.ctime.sec
    )
    .into_bytes()
}

pub fn statvfs(v: &StatVfs) -> Vec<u8> {
    format!(
        "bsize: {}\nfrsize: {}\nblocks: {}\nbfree: {}\nbavail: {}\nfiles: {}\nffree: {}\nfavail: {}\nfsid: {}\nflag: {}\nnamemax: {}\n",
        v.bsize, v.frsize, v.blocks, v.bfree, v.bavail, v.files, v.ffree, v.favail, v.fsid,
        v.flag, v.namemax
    )
    .into_bytes()
}

/// `df` / `df -h` lines for the guest's mounts, as the appliance's coreutils print them
/// (paths under `/sysroot`, where the appliance mounts the guest), and guestfish's newline.
pub fn df(rows: &[(String, String, StatVfs)], human: bool) -> Vec<u8> {
    let mut table: Vec<[String; 6]> = vec![[
        "Filesystem".into(),
        if human {
            "Size".into()
        } else {
            "1K-blocks".into()
        },
        "Used".into(),
        if human {
            "Avail".into()
        } else {
            "Available".into()
        },
        "Use%".into(),
        "Mounted on".into(),
    ]];
    for (dev, point, v) in rows {
        let k = |blocks: u64| blocks.saturating_mul(v.frsize) / 1024;
        let (size, free, avail) = (k(v.blocks), k(v.bfree), k(v.bavail));
        let used = size.saturating_sub(free);
        let pct = if used + avail == 0 {
            "-".to_string()
        } else {
            format!("{}%", (used * 100).div_ceil(used + avail))
        };
        let show = |kib: u64| {
            if human {
                human_size(kib)
            } else {
                kib.to_string()
            }
        };
        let mp = if point == "/" {
            "/sysroot".to_string()
        } else {
            format!("/sysroot{point}")
        };
        table.push([dev.clone(), show(size), show(used), show(avail), pct, mp]);
    }
    let w: Vec<usize> = (0..5)
        .map(|c| table.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &table {
        out.push_str(&format!(
            "{:<w0$} {:>w1$} {:>w2$} {:>w3$} {:>w4$} {}\n",
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            r[5],
            w0 = w[0].max(14),
            w1 = w[1],
            w2 = w[2],
            w3 = w[3],
            w4 = w[4]
        ));
    }
    out.push('\n');
    out.into_bytes()
}

fn human_size(kib: u64) -> String {
    let mut v = kib as f64 * 1024.0;
    for unit in ["", "K", "M", "G", "T", "P"] {
        if v < 1024.0 || unit == "P" {
            if unit.is_empty() {
                return format!("{}", v as u64);
            }
            return if v < 10.0 {
                format!("{:.1}{unit}", (v * 10.0).ceil() / 10.0)
            } else {
                format!("{}{unit}", v.ceil() as u64)
            };
        }
        v /= 1024.0;
    }
    unreachable!("the loop returns at P")
}

/// `ls -l`'s mode column.
pub fn mode_string(st: &Stat) -> String {
    let t = match st.kind {
        FileKind::Directory => 'd',
        FileKind::Symlink => 'l',
        FileKind::CharDevice => 'c',
        FileKind::BlockDevice => 'b',
        FileKind::Fifo => 'p',
        FileKind::Socket => 's',
        FileKind::Regular => '-',
    };
    let m = st.mode;
    let bit = |b: u32, c: char| if m & b != 0 { c } else { '-' };
    let special = |x: bool, s: u32, lower: char, upper: char| {
        if m & s != 0 {
            if x {
                lower
            } else {
                upper
            }
        } else if x {
            'x'
        } else {
            '-'
        }
    };
    let mut s = String::with_capacity(10);
    s.push(t);
    s.push(bit(0o400, 'r'));
    s.push(bit(0o200, 'w'));
    s.push(special(m & 0o100 != 0, 0o4000, 's', 'S'));
    s.push(bit(0o040, 'r'));
    s.push(bit(0o020, 'w'));
    s.push(special(m & 0o010 != 0, 0o2000, 's', 'S'));
    s.push(bit(0o004, 'r'));
    s.push(bit(0o002, 'w'));
    s.push(special(m & 0o001 != 0, 0o1000, 't', 'T'));
    s
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Civil date (UTC) of a Unix time: (year, month 1–12, day, hour, minute).
pub fn civil(sec: i64) -> (i64, u32, u32, u32, u32) {
    let days = sec.div_euclid(86_400);
    let rem = sec.rem_euclid(86_400);
    // Howard Hinnant's days-from-civil, inverted.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = if m <= 2 { y + 1 } else { y };
    (y, m, d, (rem / 3600) as u32, ((rem % 3600) / 60) as u32)
}

/// `ll`: the appliance's `ls -la` (C locale, UTC, owners as numbers since the appliance
/// has no passwd entries), then guestfish's added newline. `rows` are (name, lstat,
/// symlink target), already sorted; `now` decides between `HH:MM` and the year, as ls
/// does (within six months of now, not in the future).
pub fn ll(rows: &[(Vec<u8>, Stat, Option<Vec<u8>>)], now: i64) -> Vec<u8> {
    // GNU ls adds up 512-byte blocks, then rounds the sum up to KiB.
    let total: u64 = rows.iter().map(|r| r.1.blocks).sum::<u64>().div_ceil(2);
    let size_col = |st: &Stat| match st.kind {
        FileKind::CharDevice | FileKind::BlockDevice => {
            format!(
                "{}, {}",
                (st.rdev >> 8) & 0xfff,
                (st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00)
            )
        }
        _ => st.size.to_string(),
    };
    let wl = rows
        .iter()
        .map(|r| r.1.nlink.to_string().len())
        .max()
        .unwrap_or(1);
    let wu = rows
        .iter()
        .map(|r| r.1.uid.to_string().len())
        .max()
        .unwrap_or(1);
    let wg = rows
        .iter()
        .map(|r| r.1.gid.to_string().len())
        .max()
        .unwrap_or(1);
    let ws = rows.iter().map(|r| size_col(&r.1).len()).max().unwrap_or(1);
    let mut out = format!("total {total}\n").into_bytes();
    const SIX_MONTHS: i64 = 31_556_952 / 2;
    for (name, st, target) in rows {
        let t = st.mtime.sec;
        let (y, mo, d, h, mi) = civil(t);
        let when = if t <= now && now - t < SIX_MONTHS {
            format!("{} {:>2} {:02}:{:02}", MONTHS[mo as usize - 1], d, h, mi)
        } else {
            format!("{} {:>2}  {}", MONTHS[mo as usize - 1], d, y)
        };
        out.extend_from_slice(
            format!(
                "{} {:>wl$} {:>wu$} {:>wg$} {:>ws$} {} ",
                mode_string(st),
                st.nlink,
                st.uid,
                st.gid,
                size_col(st),
                when
            )
            .as_bytes(),
        );
        out.extend_from_slice(name);
        if let Some(t) = target {
            out.extend_from_slice(b" -> ");
            out.extend_from_slice(t);
        }
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

/// `ll FILE`: `ls -la` of one file, no `total` line, then guestfish's newline.
pub fn ll_one(row: &(Vec<u8>, Stat, Option<Vec<u8>>), now: i64) -> Vec<u8> {
    let out = ll(std::slice::from_ref(row), now);
    // Drop the `total` line `ll` starts with.
    let nl = out.iter().position(|&c| c == b'\n').map_or(0, |i| i + 1);
    out[nl..].to_vec()
}

/// `checksum`'s algorithms.
pub enum Checksum {
    Crc(CkSum),
    Hash(Box<dyn sha2::digest::DynDigest + Send>),
}

impl Checksum {
    /// The algorithm `name` names (any case), as guestfish's `checksum` takes them.
    pub fn new(name: &str) -> Option<Checksum> {
        use sha2::Digest;
        let h: Box<dyn sha2::digest::DynDigest + Send> = match name.to_ascii_lowercase().as_str() {
            "crc" => return Some(Checksum::Crc(CkSum::default())),
            "md5" => Box::new(md5::Md5::new()),
            "sha1" => Box::new(sha1::Sha1::new()),
            "sha224" => Box::new(sha2::Sha224::new()),
            "sha256" => Box::new(sha2::Sha256::new()),
            "sha384" => Box::new(sha2::Sha384::new()),
            "sha512" => Box::new(sha2::Sha512::new()),
            _ => return None,
        };
        Some(Checksum::Hash(h))
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Checksum::Crc(c) => c.update(data),
            Checksum::Hash(h) => h.update(data),
        }
    }

    /// The hex digest (`crc`: cksum's decimal CRC).
    pub fn finish(self) -> String {
        match self {
            Checksum::Crc(c) => c.finish().to_string(),
            Checksum::Hash(mut h) => {
                let mut out = vec![0u8; h.output_size()];
                // The buffer has the digest's own size: this cannot fail.
                let _ = h.finalize_into_reset(&mut out);
                out.iter().map(|x| format!("{x:02x}")).collect()
            }
        }
    }
}

/// POSIX `cksum`: CRC-32 (polynomial 0x04C11DB7, most significant bit first) over the
/// data and then its length, complemented.
#[derive(Default)]
pub struct CkSum {
    crc: u32,
    len: u64,
}

impl CkSum {
    fn step(crc: u32, byte: u8) -> u32 {
        let mut c = crc ^ ((byte as u32) << 24);
        for _ in 0..8 {
            c = if c & 0x8000_0000 != 0 {
                (c << 1) ^ 0x04C1_1DB7
            } else {
                c << 1
            };
        }
        c
    }

    pub fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.crc = Self::step(self.crc, b);
        }
        self.len += data.len() as u64;
    }

    pub fn finish(self) -> u32 {
        let mut crc = self.crc;
        let mut n = self.len;
        while n > 0 {
            crc = Self::step(crc, (n & 0xff) as u8);
            n >>= 8;
        }
        !crc
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::types::Timespec;

    fn st(kind: FileKind, mode: u32, size: u64, mtime: i64) -> Stat {
        Stat {
            ino: 1,
            kind,
            mode: kind.mode_bits() | mode,
            nlink: 1,
            uid: 0,
            gid: 0,
            size,
            blocks: size.div_ceil(512),
            atime: Timespec::default(),
            mtime: Timespec {
                sec: mtime,
                nsec: 0,
            },
            ctime: Timespec::default(),
            rdev: 0,
            blksize: 4096,
        }
    }

    #[test]
    fn cksum_matches_posix_cksum() {
        // `printf 'hello\n' | cksum` → 3015617425 6; empty input → 4294967295 0.
        let mut c = CkSum::default();
        c.update(b"hello\n");
        assert_eq!(c.finish(), 3015617425);
        assert_eq!(CkSum::default().finish(), 4294967295);
    }

    #[test]
    fn strings_always_get_a_newline_and_stop_at_nul() {
        assert_eq!(buffer_line(b"x\n"), b"x\n\n");
        assert_eq!(buffer_line(b"a\nb"), b"a\nb\n");
        assert_eq!(buffer_line(b"a\0b"), b"a\n");
    }

    #[test]
    fn mode_strings_show_special_bits_as_ls_does() {
        assert_eq!(
            mode_string(&st(FileKind::Regular, 0o644, 0, 0)),
            "-rw-r--r--"
        );
        assert_eq!(
            mode_string(&st(FileKind::Directory, 0o1777, 0, 0)),
            "drwxrwxrwt"
        );
        assert_eq!(
            mode_string(&st(FileKind::Regular, 0o1363, 0, 0)),
            "--wxrw--wt"
        );
        assert_eq!(
            mode_string(&st(FileKind::Regular, 0o1362, 0, 0)),
            "--wxrw--wT"
        );
        assert_eq!(
            mode_string(&st(FileKind::Regular, 0o4755, 0, 0)),
            "-rwsr-xr-x"
        );
        assert_eq!(
            mode_string(&st(FileKind::Regular, 0o2644, 0, 0)),
            "-rw-r-Sr--"
        );
    }

    #[test]
    fn ll_lays_out_columns_like_gnu_ls() {
        // 2021-03-04 is long before "now": the year is shown.
        let old = 1_614_816_000;
        let rows = vec![
            (
                b".".to_vec(),
                st(FileKind::Directory, 0o755, 1024, old),
                None,
            ),
            (b"nl".to_vec(), st(FileKind::Regular, 0o644, 2, old), None),
            (
                b"sym".to_vec(),
                st(FileKind::Symlink, 0o777, 2, old),
                Some(b"nl".to_vec()),
            ),
        ];
        let out = String::from_utf8(ll(&rows, old + 400 * 86_400)).unwrap();
        // Numeric owners are right-aligned, as GNU ls aligns numbers.
        assert_eq!(
            out,
            "total 2\n\
             drwxr-xr-x 1 0 0 1024 Mar  4  2021 .\n\
             -rw-r--r-- 1 0 0    2 Mar  4  2021 nl\n\
             lrwxrwxrwx 1 0 0    2 Mar  4  2021 sym -> nl\n\n"
        );
        let recent = String::from_utf8(ll(&rows[1..2], old + 60)).unwrap();
        assert!(recent.contains("Mar  4 00:00 nl"), "{recent}");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0));
        assert_eq!(civil(1_614_816_000 + 3723), (2021, 3, 4, 1, 2));
        assert_eq!(civil(951_782_400), (2000, 2, 29, 0, 0));
    }

    #[test]
    fn statvfs_prints_eleven_fields_in_order() {
        let s = String::from_utf8(statvfs(&StatVfs {
            bsize: 4096,
            ..Default::default()
        }))
        .unwrap();
        let names: Vec<&str> = s.lines().map(|l| l.split(':').next().unwrap()).collect();
        assert_eq!(
            names,
            [
                "bsize", "frsize", "blocks", "bfree", "bavail", "files", "ffree", "favail", "fsid",
                "flag", "namemax"
            ]
        );
    }
}
