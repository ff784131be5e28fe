//! Commands about one file's content and attributes: cat, head, tail, write, write-append,
//! truncate, checksum, stat, lstat, readlink, exists, is-file, is-dir, is-symlink.
//!
//! New files get mode 0644 and new directories 0755: what guestfish's daemon gets from
//! 0666/0777 under its umask of 022.

use crate::fs::types::FileKind;

use super::super::format;
use super::{Args, CmdError, CmdResult, Interp, READ_LIMIT};

/// The mode of a file a command creates.
pub(super) const FILE_MODE: u32 = 0o644;

pub(super) fn run(it: &mut Interp, name: &str, a: &Args) -> CmdResult<Option<Vec<u8>>> {
    let fname = name.replace('-', "_");
    let ctx = |e: crate::fs::types::FsError| CmdError(format!("{fname}: {e}"));
    let g = &mut *it.guest;
    let out = match name {
        "cat" => {
            let data = g.read_file(a.bytes(0), READ_LIMIT).map_err(ctx)?;
            format::buffer_line(&data)
        }
        "head" | "head-n" | "tail" | "tail-n" => {
            let (n, p) = if name.ends_with("-n") {
                (a.int(0)?, 1)
            } else {
                (10, 0)
            };
            let data = g.read_file(a.bytes(p), READ_LIMIT).map_err(ctx)?;
            let lines = split_lines(&data);
            let pick: Vec<&[u8]> = pick_lines(&lines, n, name.starts_with("head"));
            format::byte_lines(&pick)
        }
        "write" => {
            g.write_file(a.bytes(0), FILE_MODE, a.bytes(1))
                .map_err(ctx)?;
            Vec::new()
        }
        "write-append" => {
            if !g.exists(a.bytes(0)).map_err(ctx)? {
                g.create(a.bytes(0), FILE_MODE).map_err(ctx)?;
            }
            g.append(a.bytes(0), a.bytes(1)).map_err(ctx)?;
            Vec::new()
        }
        "truncate" | "truncate-size" => {
            let size = if name == "truncate" { 0 } else { a.int(1)? };
            let size =
                u64::try_from(size).map_err(|_| CmdError(format!("{fname}: size must be >= 0")))?;
            g.request(crate::fs::worker::protocol::Request::Call(
                crate::fs::worker::protocol::Call::Truncate {
                    path: a.bytes(0).to_vec(),
                    size,
                },
            ))
            .map_err(ctx)?;
            Vec::new()
        }
        "checksum" => {
            let kind = a.str(0);
            let mut sum = format::Checksum::new(kind)
                .ok_or_else(|| CmdError(format!("checksum: unknown checksum type, expecting crc|md5|sha1|sha224|sha256|sha384|sha512: {kind}")))?;
            if g.stat(a.bytes(1), true).map_err(ctx)?.is_dir() {
                return Err(CmdError(format!("checksum: {}: Is a directory", a.str(1))));
            }
            g.read_to(a.bytes(1), &mut |piece| {
                sum.update(piece);
                Ok(())
            })
            .map_err(ctx)?;
            format::string(&sum.finish())
        }
        "stat" | "lstat" => {
            let st = g.stat(a.bytes(0), name == "stat").map_err(ctx)?;
            let mounts = g.mounts()?;
            format::stat(&st, device_number(&mounts, a.str(0)))
        }
        "readlink" => {
            let t = g.readlink(a.bytes(0)).map_err(ctx)?;
            format::buffer_line(&t)
        }
        // lstat, not stat: a dangling symlink exists (guestfish says true).
        "exists" => format::boolean(match g.kind(a.bytes(0), false) {
            Ok(k) => k.is_some(),
            Err(e) if e.errno == libc::ENOENT || e.errno == libc::ENOTDIR => false,
            Err(e) => return Err(ctx(e)),
        }),
        "case-sensitive-path" => {
            let p = case_sensitive_path(g, a.str(0)).map_err(ctx)?;
            format::string(&p)
        }
        "is-file" | "is-dir" | "is-symlink" => {
            let follow = name != "is-symlink" && a.opt_bool("followsymlinks")?;
            let want = match name {
                "is-file" => FileKind::Regular,
                "is-dir" => FileKind::Directory,
                _ => FileKind::Symlink,
            };
            // guestfish answers false for a path that does not exist.
            let kind = match g.kind(a.bytes(0), follow) {
                Ok(k) => k,
                Err(e) if e.errno == libc::ENOENT || e.errno == libc::ENOTDIR => None,
                Err(e) => return Err(ctx(e)),
            };
            format::boolean(kind == Some(want))
        }
        _ => return Ok(None),
    };
    Ok(Some(out))
}

/// The path as the guest stores it, matching each component without regard to case (exact
/// matches first); components that do not exist are kept as given, as libguestfs does so
/// that a script can name a file it is about to create.
fn case_sensitive_path(
    g: &mut crate::plan::guest::Guest,
    path: &str,
) -> Result<String, crate::fs::types::FsError> {
    let mut cur = String::new();
    let mut missing = false;
    for c in path.split('/').filter(|c| !c.is_empty()) {
        if !missing {
            let dir = if cur.is_empty() {
                "/".to_string()
            } else {
                cur.clone()
            };
            let entries = g.readdir(dir.as_bytes()).unwrap_or_default();
            let exact = entries.iter().find(|e| e.name == c.as_bytes());
            let any = exact.or_else(|| {
                entries
                    .iter()
                    .find(|e| String::from_utf8_lossy(&e.name).eq_ignore_ascii_case(c))
            });
            match any {
                Some(e) => {
                    cur = format!("{cur}/{}", String::from_utf8_lossy(&e.name));
                    continue;
                }
                None => missing = true,
            }
        }
        cur = format!("{cur}/{c}");
    }
    Ok(if cur.is_empty() { "/".into() } else { cur })
}

/// Lines of a file without their newlines; a final line without one counts.
pub(super) fn split_lines(data: &[u8]) -> Vec<&[u8]> {
    let mut lines: Vec<&[u8]> = data.split(|&c| c == b'\n').collect();
    if data.ends_with(b"\n") || data.is_empty() {
        lines.pop();
    }
    lines
}

/// head/tail's choice: `n` lines from the start (head) or end (tail); a negative `n`
/// means all but the last (head) or from line `-n` on (tail), as `head -n -N` / `tail -n
/// +N`.
fn pick_lines<'a>(lines: &[&'a [u8]], n: i64, head: bool) -> Vec<&'a [u8]> {
    let len = lines.len() as i64;
    let (from, to) = match (head, n >= 0) {
        (true, true) => (0, n.min(len)),
        (true, false) => (0, (len + n).max(0)),
        (false, true) => ((len - n).max(0), len),
        (false, false) => ((-n - 1).clamp(0, len), len),
    };
    lines[from as usize..to as usize].to_vec()
}

/// The device number (`st_dev`) the appliance's kernel would give the filesystem holding
/// `path`: 8:N for /dev/sdaN (sd's major), 253:K for the K-th logical volume.
fn device_number(mounts: &[crate::fs::worker::protocol::MountEntry], path: &str) -> u64 {
    let m = mounts
        .iter()
        .filter(|m| {
            let p = m.point.trim_end_matches('/');
            path == m.point || path.starts_with(&format!("{p}/")) || m.point == "/"
        })
        .max_by_key(|m| m.point.len());
    let Some(m) = m else { return 0 };
    let dev = m.device.as_str();
    if let Some(rest) = dev.strip_prefix("/dev/sda") {
        let minor: u64 = rest.parse().unwrap_or(0);
        return (8 << 8) | minor;
    }
    let lv_index = mounts.iter().position(|x| x.device == dev).unwrap_or(0) as u64;
    (253 << 8) | lv_index
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_and_tail_pick_lines_as_coreutils_do() {
        let l: Vec<&[u8]> = vec![b"1", b"2", b"3", b"4"];
        assert_eq!(pick_lines(&l, 2, true), vec![b"1", b"2"]);
        assert_eq!(pick_lines(&l, 2, false), vec![b"3", b"4"]);
        assert_eq!(pick_lines(&l, 10, true).len(), 4);
        assert_eq!(pick_lines(&l, -1, true), vec![b"1", b"2", b"3"]);
        assert_eq!(pick_lines(&l, -3, false), vec![b"3", b"4"]);
    }

    #[test]
    fn a_final_line_without_newline_is_a_line() {
        assert_eq!(split_lines(b"a\nb"), vec![b"a", b"b"]);
        assert_eq!(split_lines(b"a\nb\n"), vec![b"a", b"b"]);
        assert!(split_lines(b"").is_empty());
    }
}
