//! Commands about names in the guest's tree: ls, ll, find, du, mkdir (-p, -mode), rm
//! (-f, -rf), rmdir, cp (-a, -r), mv, ln (-f, -s, -sf), chmod, chown, touch.
//!
//! guestfish runs coreutils inside its appliance for several of these (`ll` is `ls -la`,
//! `cp` is `cp`, `ln-sf` is `ln -sf`, `mv` is `mv`), so the semantics here are GNU's: a
//! destination that is a directory receives the source inside it, `ln -sf` into a name
//! that is a symlink to a directory creates the link inside that directory, `cp` without
//! `-a` gives a new file the source's mode (under umask 022) and keeps an existing one's.

use crate::fs::types::{FileKind, FsError, SetAttr, Stat, Timespec};

use super::super::format;
use super::super::guest::{show, Guest};
use super::{Args, CmdError, CmdResult, Interp};

const DIR_MODE: u32 = 0o755;

pub(super) fn run(it: &mut Interp, name: &str, a: &Args) -> CmdResult<Option<Vec<u8>>> {
    let fname = name.replace('-', "_");
    let ctx = |e: FsError| CmdError(format!("{fname}: {e}"));
    let g = &mut *it.guest;
    let out = match name {
        "ls" => {
            let mut names: Vec<Vec<u8>> = g
                .readdir(a.bytes(0))
                .map_err(ctx)?
                .into_iter()
                .map(|e| e.name)
                .collect();
            names.sort();
            format::byte_lines(&names)
        }
        "ll" => {
            let dir = a.bytes(0);
            let top = g.stat(dir, false).map_err(ctx)?;
            if !top.is_dir() {
                // `ls -la FILE` in the appliance names the file by its appliance path.
                let target = if top.kind == FileKind::Symlink {
                    g.readlink(dir).ok()
                } else {
                    None
                };
                let mut name = b"/sysroot".to_vec();
                name.extend_from_slice(dir);
                return Ok(Some(format::ll_one(
                    &(name, top, target),
                    Timespec::now().sec,
                )));
            }
            let mut rows = vec![
                (b".".to_vec(), g.stat(dir, true).map_err(ctx)?, None),
                (
                    b"..".to_vec(),
                    g.stat(&parent(dir), true).map_err(ctx)?,
                    None,
                ),
            ];
            for e in g.readdir(dir).map_err(ctx)? {
                let p = join(dir, &e.name);
                let st = g.stat(&p, false).map_err(ctx)?;
                let target = if st.kind == FileKind::Symlink {
                    g.readlink(&p).ok()
                } else {
                    None
                };
                rows.push((e.name, st, target));
            }
            rows.sort_by(|x, y| x.0.cmp(&y.0));
            format::ll(&rows, Timespec::now().sec)
        }
        "find" => {
            let dir = a.bytes(0);
            if g.kind(dir, true).map_err(ctx)? != Some(FileKind::Directory) {
                return Err(CmdError(format!("find0: {}: not a directory", a.str(0))));
            }
            let mut found = Vec::new();
            walk(g, dir, b"", &mut found).map_err(ctx)?;
            // The daemon strips "/sysroot" + DIR from each path: `find /etc` prints
            // `/hostname`, `find /` and `find /etc/` print `hostname`.
            if !dir.ends_with(b"/") {
                for f in found.iter_mut() {
                    f.insert(0, b'/');
                }
            }
            found.sort();
            format::byte_lines(&found)
        }
        "du" => {
            let mut seen = std::collections::HashSet::new();
            // GNU du adds up 512-byte blocks and rounds the sum up to KiB.
            let kib = du(g, a.bytes(0), &mut seen).map_err(ctx)?.div_ceil(2);
            format::int(kib as i64)
        }
        "mkdir" => {
            g.mkdir(a.bytes(0), DIR_MODE, false).map_err(ctx)?;
            Vec::new()
        }
        "mkdir-p" => {
            g.mkdir(a.bytes(0), DIR_MODE, true).map_err(ctx)?;
            Vec::new()
        }
        "mkdir-mode" => {
            let mode = mode_arg(a, 1)?;
            g.mkdir(a.bytes(0), mode, false).map_err(ctx)?;
            // mkdir(2) applies the umask; guestfish's mkdir-mode then sets the mode asked.
            g.setattr(a.bytes(0), false, mode_only(mode)).map_err(ctx)?;
            Vec::new()
        }
        "rm" => {
            g.rm(a.bytes(0), false).map_err(ctx)?;
            Vec::new()
        }
        "rm-f" => {
            g.rm(a.bytes(0), true).map_err(ctx)?;
            Vec::new()
        }
        "rm-rf" => {
            if a.bytes(0).iter().all(|&c| c == b'/') {
                return Err(CmdError("rm_rf: cannot remove root directory".into()));
            }
            g.rm_rf(a.bytes(0)).map_err(ctx)?;
            Vec::new()
        }
        "rmdir" => {
            g.rmdir(a.bytes(0)).map_err(ctx)?;
            Vec::new()
        }
        "chmod" => {
            let mode = mode_arg(a, 0)?;
            g.setattr(a.bytes(1), true, mode_only(mode)).map_err(ctx)?;
            Vec::new()
        }
        "chown" => {
            let (uid, gid) = (a.int(0)?, a.int(1)?);
            // -1 leaves that id as it is, as chown(2) does.
            let id = |v: i64| {
                if v == -1 {
                    Ok(None)
                } else {
                    u32::try_from(v).map(Some)
                }
            };
            let attr = SetAttr {
                uid: id(uid).map_err(|_| CmdError(format!("chown: {uid}: invalid owner")))?,
                gid: id(gid).map_err(|_| CmdError(format!("chown: {gid}: invalid group")))?,
                ..SetAttr::default()
            };
            g.setattr(a.bytes(2), true, attr).map_err(ctx)?;
            Vec::new()
        }
        "touch" => {
            if let Ok(Some(k)) = g.kind(a.bytes(0), true) {
                if k != FileKind::Regular {
                    return Err(CmdError(format!(
                        "touch: {}: touch can only be used on a regular files",
                        a.str(0)
                    )));
                }
            }
            g.touch(a.bytes(0)).map_err(ctx)?;
            Vec::new()
        }
        "cp" | "cp-a" | "cp-r" => {
            let (src, dst) = (a.bytes(0), a.bytes(1));
            let dst = into_dir(g, src, dst, true).map_err(ctx)?;
            let how = match name {
                "cp" => Copy::Plain,
                "cp-a" => Copy::Archive,
                _ => Copy::Recursive,
            };
            copy(g, src, &dst, how).map_err(ctx)?;
            Vec::new()
        }
        "mv" => {
            let (src, dst) = (a.bytes(0), a.bytes(1));
            let dst = into_dir(g, src, dst, true).map_err(ctx)?;
            match g.rename(src, &dst) {
                Ok(()) => {}
                Err(e) if e.errno == libc::EXDEV => {
                    // Across filesystems mv copies, keeping what it can, then removes.
                    copy(g, src, &dst, Copy::Archive).map_err(ctx)?;
                    g.rm_rf(src).map_err(ctx)?;
                }
                Err(e) => return Err(ctx(e)),
            }
            Vec::new()
        }
        "ln" | "ln-f" | "ln-s" | "ln-sf" => {
            let (target, linkname) = (a.bytes(0), a.bytes(1));
            let symbolic = name.starts_with("ln-s");
            let force = name.ends_with('f');
            let link = into_dir(g, target, linkname, true).map_err(ctx)?;
            if force {
                match g.kind(&link, false) {
                    Ok(Some(FileKind::Directory)) => {
                        return Err(CmdError(format!(
                            "{fname}: {}: cannot overwrite directory",
                            show(&link)
                        )))
                    }
                    Ok(Some(_)) => g.rm(&link, true).map_err(ctx)?,
                    _ => {}
                }
            }
            if symbolic {
                g.symlink(target, &link).map_err(ctx)?;
            } else {
                g.link(target, &link).map_err(ctx)?;
            }
            Vec::new()
        }
        _ => return Ok(None),
    };
    Ok(Some(out))
}

fn mode_arg(a: &Args, i: usize) -> CmdResult<u32> {
    let m = a.int(i)?;
    if !(0..=0o7777).contains(&m) {
        // chmod(2) would take the low bits; guestfish refuses a negative mode only. Bits
        // above 07777 cannot be permission bits, and are refused rather than dropped.
        return Err(CmdError(format!(
            "{}: {m}: mode must be between 0 and 07777",
            a.spec.name
        )));
    }
    Ok(m as u32)
}

fn mode_only(mode: u32) -> SetAttr {
    SetAttr {
        mode: Some(mode),
        ..SetAttr::default()
    }
}

pub(super) fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.ends_with(b"/") {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

fn parent(p: &[u8]) -> Vec<u8> {
    let t = p.strip_suffix(b"/").unwrap_or(p);
    match t.iter().rposition(|&c| c == b'/') {
        Some(0) | None => b"/".to_vec(),
        Some(i) => t[..i].to_vec(),
    }
}

fn base(p: &[u8]) -> &[u8] {
    let t = p.strip_suffix(b"/").unwrap_or(p);
    match t.iter().rposition(|&c| c == b'/') {
        Some(i) => &t[i + 1..],
        None => t,
    }
}

/// GNU's rule for a last argument that is a directory (following symlinks): the new name
/// is inside it, under the source's base name.
fn into_dir(g: &mut Guest, src: &[u8], dst: &[u8], follow: bool) -> Result<Vec<u8>, FsError> {
    match g.kind(dst, follow) {
        Ok(Some(FileKind::Directory)) => Ok(join(dst, base(src))),
        Ok(_) => Ok(dst.to_vec()),
        Err(e) if e.errno == libc::ENOENT => Ok(dst.to_vec()),
        Err(e) => Err(e),
    }
}

/// Everything below `dir`, as paths relative to it.
fn walk(g: &mut Guest, dir: &[u8], rel: &[u8], out: &mut Vec<Vec<u8>>) -> Result<(), FsError> {
    let here = if rel.is_empty() {
        dir.to_vec()
    } else {
        join(dir, rel)
    };
    for e in g.readdir(&here)? {
        let r = if rel.is_empty() {
            e.name.clone()
        } else {
            join(rel, &e.name)
        };
        out.push(r.clone());
        if e.kind == FileKind::Directory {
            walk(g, dir, &r, out)?;
        }
    }
    Ok(())
}

/// `du -s`: 512-byte blocks used below `p`, each inode counted once.
fn du(g: &mut Guest, p: &[u8], seen: &mut std::collections::HashSet<u64>) -> Result<u64, FsError> {
    let st = g.stat(p, false)?;
    let mut total = 0;
    if seen.insert(st.ino) {
        total += st.blocks;
    }
    if st.is_dir() {
        for e in g.readdir(p)? {
            total += du(g, &join(p, &e.name), seen)?;
        }
    }
    Ok(total)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Copy {
    /// `cp`: one file (a directory is refused), the new file's mode from the source.
    Plain,
    /// `cp -rP`: recursive, symlinks copied as symlinks, modes as `cp` gives them.
    Recursive,
    /// `cp -a`: recursive, keeping modes, owners, times and symlinks.
    Archive,
}

fn copy(g: &mut Guest, src: &[u8], dst: &[u8], how: Copy) -> Result<(), FsError> {
    let st = g.stat(src, how == Copy::Plain)?;
    match st.kind {
        FileKind::Directory => {
            if how == Copy::Plain {
                return Err(FsError::new(
                    libc::EISDIR,
                    format!("-r not specified; omitting directory '{}'", show(src)),
                ));
            }
            match g.mkdir(dst, st.perm(), false) {
                Ok(()) => {}
                Err(e) if e.errno == libc::EEXIST => {}
                Err(e) => return Err(e),
            }
            for e in g.readdir(src)? {
                copy(g, &join(src, &e.name), &join(dst, &e.name), how)?;
            }
        }
        FileKind::Symlink => {
            let t = g.readlink(src)?;
            g.symlink(&t, dst)?;
        }
        FileKind::Regular => {
            // A new file gets the source's mode under umask 022; an existing one keeps its
            // own (create_or_truncate leaves it).
            g.create(dst, st.perm() & !0o022)?;
            let mut off = 0u64;
            let mut failed = None;
            // Piece by piece: `read_to`'s sink cannot borrow the guest it reads from.
            loop {
                let piece = g.read_at(src, off, super::super::guest::PIECE)?;
                if piece.is_empty() {
                    break;
                }
                if let Err(e) = g.write_at(dst, off, &piece) {
                    failed = Some(e);
                    break;
                }
                off += piece.len() as u64;
            }
            if let Some(e) = failed {
                return Err(e);
            }
        }
        _ => {
            return Err(FsError::new(
                libc::ENOTSUP,
                format!(
                    "{}: copying device and fifo nodes is not supported",
                    show(src)
                ),
            ))
        }
    }
    if how == Copy::Archive {
        keep_attrs(g, dst, &st)?;
    }
    Ok(())
}

fn keep_attrs(g: &mut Guest, dst: &[u8], st: &Stat) -> Result<(), FsError> {
    let mut attr = SetAttr {
        uid: Some(st.uid),
        gid: Some(st.gid),
        mtime: Some(st.mtime),
        atime: Some(st.atime),
        ..SetAttr::default()
    };
    if st.kind != FileKind::Symlink {
        attr.mode = Some(st.perm());
    }
    match g.setattr(dst, false, attr) {
        // FAT cannot store owners: cp -a there keeps what it can, as on the kernel's vfat.
        Err(e) if e.errno == libc::EPERM => g
            .setattr(
                dst,
                false,
                SetAttr {
                    mtime: Some(st.mtime),
                    atime: Some(st.atime),
                    ..SetAttr::default()
                },
            )
            .or(Ok(())),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_and_base_names() {
        assert_eq!(parent(b"/etc/hostname"), b"/etc");
        assert_eq!(parent(b"/etc"), b"/");
        assert_eq!(parent(b"/"), b"/");
        assert_eq!(base(b"/etc/hostname"), b"hostname");
        assert_eq!(base(b"/etc/"), b"etc");
        assert_eq!(join(b"/", b"x"), b"/x");
        assert_eq!(join(b"/a", b"x"), b"/a/x");
    }
}
