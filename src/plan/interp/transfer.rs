//! Commands that move data between the guest and the host's scratch directory: upload,
//! download, copy-in, copy-out, tar-in, tar-out, tgz-in, tgz-out, compress-out.
//!
//! Local paths go through `Host::local`, which keeps them inside the run's own files.
//! Archives are read and written here with the `tar` and `flate2` crates; the guest side
//! is the worker's ordinary calls, so no archive is ever unpacked by a guest-side tool.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::fs::types::{FileKind, FsError, SetAttr, Timespec};

use super::super::guest::{show, Guest, PIECE};
use super::files::FILE_MODE;
use super::tree::join;
use super::{Args, CmdError, CmdResult, Interp};

pub(super) fn run(it: &mut Interp, name: &str, a: &Args) -> CmdResult<Option<Vec<u8>>> {
    let fname = name.replace('-', "_");
    let ctx = |e: FsError| CmdError(format!("{fname}: {e}"));
    match name {
        "upload" => {
            let remote = a.bytes(1);
            // guestfish opens (creates or empties) the guest file before it reads the
            // local one, so a missing local file still leaves an empty guest file.
            it.guest.create(remote, FILE_MODE).map_err(ctx)?;
            match a.heredoc(0) {
                Some(content) => {
                    let mut off = 0;
                    for piece in content.chunks(PIECE) {
                        it.guest.write_at(remote, off, piece).map_err(ctx)?;
                        off += piece.len() as u64;
                    }
                }
                None => {
                    let mut f = it
                        .host
                        .open_read(a.str(0))
                        .map_err(|e| CmdError(format!("open: {e}")))?;
                    upload_stream(it.guest, &mut f, remote).map_err(ctx)?;
                }
            }
        }
        "download" => {
            let local = it.host.local(a.str(1))?;
            let mut f = it.host.create(a.str(1)).map_err(CmdError)?;
            let mut werr = None;
            it.guest
                .read_to(a.bytes(0), &mut |piece| {
                    if let Err(e) = f.write_all(piece) {
                        werr = Some(e.to_string());
                        return Err(FsError::new(libc::EIO, "writing the local file"));
                    }
                    Ok(())
                })
                .map_err(|e| match werr.take() {
                    Some(w) => CmdError(format!("download: {}: {w}", a.str(1))),
                    None => ctx(e),
                })?;
            it.host.made_local(&local);
        }
        "copy-in" => {
            let (locals, dir) = a.pos.split_at(a.pos.len() - 1);
            let dir = dir[0].as_bytes();
            if it.guest.kind(dir, true).ok().flatten() != Some(FileKind::Directory) {
                return Err(CmdError(format!(
                    "copy-in: target '{}' is not a directory",
                    show(dir)
                )));
            }
            for l in locals {
                let local = it.host.local(l)?;
                let base = local
                    .file_name()
                    .map(|n| n.as_encoded_bytes().to_vec())
                    .unwrap_or_else(|| b"root".to_vec());
                copy_in(it.guest, &local, &join(dir, &base))
                    .map_err(|e| CmdError(format!("copy-in: {l}: {}", e.0)))?;
            }
        }
        "copy-out" => {
            let (remotes, dir) = a.pos.split_at(a.pos.len() - 1);
            let local_dir = it.host.local(dir[0])?;
            if !local_dir.is_dir() {
                return Err(CmdError(format!(
                    "copy-out: target '{}' is not a directory",
                    dir[0]
                )));
            }
            for r in remotes {
                let rb = r.as_bytes();
                let name = rb
                    .rsplit(|&c| c == b'/')
                    .find(|s| !s.is_empty())
                    .unwrap_or(b"root");
                let dest = local_dir.join(std::ffi::OsStr::from_bytes(name));
                copy_out(it.guest, rb, &dest)
                    .map_err(|e| CmdError(format!("copy-out: {r}: {}", e.0)))?;
                it.host.made_local(&dest);
            }
        }
        "tar-in" | "tgz-in" => {
            let compress = if name == "tgz-in" {
                Some("gzip")
            } else {
                a.opt("compress")
            };
            let dir = a.bytes(1);
            if it.guest.kind(dir, true).map_err(ctx)? != Some(FileKind::Directory) {
                return Err(CmdError(format!("{fname}: {}: Not a directory", show(dir))));
            }
            let input: Box<dyn Read> = match a.heredoc(0) {
                Some(c) => Box::new(std::io::Cursor::new(c.to_vec())),
                None => {
                    let p = it.host.local(a.str(0))?;
                    Box::new(
                        File::open(&p)
                            .map_err(|e| CmdError(format!("{fname}: {}: {e}", a.str(0))))?,
                    )
                }
            };
            let input = decompress(input, compress, &fname)?;
            tar_in(it.guest, input, dir).map_err(|e| CmdError(format!("{fname}: {}", e.0)))?;
        }
        "tar-out" | "tgz-out" => {
            let compress = if name == "tgz-out" {
                Some("gzip")
            } else {
                a.opt("compress")
            };
            let local = it.host.local(a.str(1))?;
            let f = File::create(&local)
                .map_err(|e| CmdError(format!("{fname}: {}: {e}", a.str(1))))?;
            let excludes: Vec<String> = a
                .opt("excludes")
                .map(|s| s.split_whitespace().map(String::from).collect())
                .unwrap_or_default();
            let numeric = a.opt_bool("numericowner")?;
            let out = compress_writer(f, compress, &fname)?;
            tar_out(it.guest, a.bytes(0), out, &excludes, numeric)
                .map_err(|e| CmdError(format!("{fname}: {}", e.0)))?;
            it.host.made_local(&local);
        }
        "compress-out" => {
            let ctype = a.str(0);
            let local = it.host.local(a.str(2))?;
            let f = File::create(&local)
                .map_err(|e| CmdError(format!("compress_out: {}: {e}", a.str(2))))?;
            let level = match a.opt("level") {
                Some(l) => Some(
                    crate::plan::script::parse_int(l)
                        .filter(|l| (0..=9).contains(l))
                        .ok_or_else(|| CmdError(format!("compress_out: {l}: invalid level")))?
                        as u32,
                ),
                None => None,
            };
            if ctype != "gzip" {
                return Err(CmdError(format!(
                    "compress_out: {ctype}: unsupported compression type (strata writes gzip)"
                )));
            }
            let mut w =
                flate2::write::GzEncoder::new(f, flate2::Compression::new(level.unwrap_or(6)));
            it.guest
                .read_to(a.bytes(1), &mut |p| {
                    w.write_all(p)
                        .map_err(|e| FsError::new(libc::EIO, format!("writing {}: {e}", a.str(2))))
                })
                .map_err(ctx)?;
            w.finish()
                .map_err(|e| CmdError(format!("compress_out: {}: {e}", a.str(2))))?;
            it.host.made_local(&local);
        }
        _ => return Ok(None),
    }
    Ok(Some(Vec::new()))
}

fn upload_stream(g: &mut Guest, r: &mut dyn Read, remote: &[u8]) -> Result<(), FsError> {
    let mut buf = vec![0u8; PIECE];
    let mut off = 0u64;
    loop {
        let n = read_full(r, &mut buf)
            .map_err(|e| FsError::new(libc::EIO, format!("reading the local file: {e}")))?;
        if n == 0 {
            return Ok(());
        }
        g.write_at(remote, off, &buf[..n])?;
        off += n as u64;
    }
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn decompress(r: Box<dyn Read>, compress: Option<&str>, fname: &str) -> CmdResult<Box<dyn Read>> {
    Ok(match compress {
        None | Some("") | Some("none") => r,
        Some("gzip") => Box::new(flate2::read::MultiGzDecoder::new(r)),
        Some(c) => {
            return Err(CmdError(format!(
                "{fname}: compress:{c} is not supported (strata reads gzip or plain tar)"
            )))
        }
    })
}

fn compress_writer(f: File, compress: Option<&str>, fname: &str) -> CmdResult<Box<dyn Write>> {
    Ok(match compress {
        None | Some("") | Some("none") => Box::new(f),
        Some("gzip") => Box::new(flate2::write::GzEncoder::new(
            f,
            flate2::Compression::default(),
        )),
        Some(c) => {
            return Err(CmdError(format!(
                "{fname}: compress:{c} is not supported (strata writes gzip or plain tar)"
            )))
        }
    })
}

fn mtime_of(m: &std::fs::Metadata) -> Timespec {
    use std::os::unix::fs::MetadataExt;
    Timespec {
        sec: m.mtime(),
        nsec: m.mtime_nsec().clamp(0, 999_999_999) as u32,
    }
}

/// One local file or tree into the guest. Owners become root's: guestfish packs the local
/// side with the host's tar as the host's user (root on Image Streamer) and unpacks as
/// root in the appliance.
fn copy_in(g: &mut Guest, local: &Path, remote: &[u8]) -> Result<(), CmdError> {
    use std::os::unix::fs::PermissionsExt;
    let m = std::fs::symlink_metadata(local)?;
    let perm = m.permissions().mode() & 0o7777;
    if m.file_type().is_symlink() {
        let t = std::fs::read_link(local)?;
        g.symlink(t.as_os_str().as_encoded_bytes(), remote)?;
        return Ok(());
    }
    if m.is_dir() {
        match g.mkdir(remote, perm, false) {
            Ok(()) => {}
            Err(e) if e.errno == libc::EEXIST => {}
            Err(e) => return Err(e.into()),
        }
        let mut names: Vec<_> = std::fs::read_dir(local)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        names.sort();
        for n in names {
            copy_in(g, &local.join(&n), &join(remote, n.as_encoded_bytes()))?;
        }
    } else if m.is_file() {
        g.create(remote, perm)?;
        let mut f = File::open(local)?;
        upload_stream(g, &mut f, remote)?;
    } else {
        return Err(CmdError(format!(
            "{}: not a regular file, directory or symlink",
            local.display()
        )));
    }
    let attr = SetAttr {
        mode: Some(perm),
        uid: Some(0),
        gid: Some(0),
        mtime: Some(mtime_of(&m)),
        atime: None,
    };
    match g.setattr(remote, false, attr) {
        Err(e) if e.errno == libc::EPERM => g.setattr(
            remote,
            false,
            SetAttr {
                mtime: Some(mtime_of(&m)),
                ..SetAttr::default()
            },
        )?,
        r => r?,
    }
    Ok(())
}

/// One guest file or tree out to `local`, modes and times kept.
fn copy_out(g: &mut Guest, remote: &[u8], local: &Path) -> Result<(), CmdError> {
    use std::os::unix::fs::PermissionsExt;
    let st = g.stat(remote, false)?;
    match st.kind {
        FileKind::Directory => {
            match std::fs::create_dir(local) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && local.is_dir() => {}
                Err(e) => return Err(e.into()),
            }
            for e in g.readdir(remote)? {
                let name = std::ffi::OsStr::from_bytes(&e.name);
                copy_out(g, &join(remote, &e.name), &local.join(name))?;
            }
        }
        FileKind::Symlink => {
            let t = g.readlink(remote)?;
            std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&t), local)?;
            return Ok(());
        }
        FileKind::Regular => {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                // A symlink the sandboxed code planted in the scratch directory is not
                // followed.
                .custom_flags(libc::O_NOFOLLOW)
                .open(local)?;
            let mut werr = None;
            g.read_to(remote, &mut |p| {
                f.write_all(p).map_err(|e| {
                    werr = Some(e);
                    FsError::new(libc::EIO, "writing the local file")
                })
            })
            .map_err(|e| match werr.take() {
                Some(w) => CmdError(w.to_string()),
                None => e.into(),
            })?;
        }
        _ => return Ok(()),
    }
    std::fs::set_permissions(local, std::fs::Permissions::from_mode(st.perm()))?;
    Ok(())
}

/// Unpacks a tar stream into guest directory `dir`. Member names are kept inside it: a
/// leading `/` is dropped and a name with a `..` component is refused, as GNU tar does.
fn tar_in(g: &mut Guest, input: Box<dyn Read>, dir: &[u8]) -> Result<(), CmdError> {
    let mut ar = tar::Archive::new(input);
    let entries = ar
        .entries()
        .map_err(|e| CmdError(format!("reading the archive: {e}")))?;
    for entry in entries {
        let mut e = entry.map_err(|e| CmdError(format!("reading the archive: {e}")))?;
        let raw = e.path_bytes().into_owned();
        let rel: Vec<&[u8]> = raw
            .split(|&c| c == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
            .collect();
        if rel.iter().any(|c| *c == b"..") {
            return Err(CmdError(format!(
                "member name {:?} contains '..'; refused",
                String::from_utf8_lossy(&raw)
            )));
        }
        if rel.is_empty() {
            continue;
        }
        let mut path = dir.to_vec();
        for c in &rel {
            path = join(&path, c);
        }
        let h = e.header().clone();
        let mode = h.mode().unwrap_or(0o644) & 0o7777;
        let kind = h.entry_type();
        use tar::EntryType as T;
        match kind {
            T::Directory => match g.mkdir(&path, mode, true) {
                Ok(()) => {}
                Err(e) if e.errno == libc::EEXIST => {}
                Err(e) => return Err(e.into()),
            },
            T::Symlink => {
                let t = e
                    .link_name_bytes()
                    .ok_or_else(|| CmdError("a symlink member without a target".into()))?
                    .into_owned();
                let _ = g.rm(&path, true);
                g.symlink(&t, &path)?;
                continue;
            }
            T::Link => {
                let t = e
                    .link_name_bytes()
                    .ok_or_else(|| CmdError("a hard link member without a target".into()))?
                    .into_owned();
                let mut target = dir.to_vec();
                for c in t
                    .split(|&c| c == b'/')
                    .filter(|c| !c.is_empty() && *c != b".")
                {
                    if c == b".." {
                        return Err(CmdError("a hard link target contains '..'; refused".into()));
                    }
                    target = join(&target, c);
                }
                let _ = g.rm(&path, true);
                g.link(&target, &path)?;
                continue;
            }
            T::Regular | T::Continuous => {
                g.create(&path, mode)?;
                let mut buf = vec![0u8; PIECE.min(1 << 20)];
                let mut off = 0u64;
                loop {
                    let n = read_full(&mut e, &mut buf)
                        .map_err(|x| CmdError(format!("reading the archive: {x}")))?;
                    if n == 0 {
                        break;
                    }
                    g.write_at(&path, off, &buf[..n])?;
                    off += n as u64;
                }
            }
            // Extended headers are read by the tar crate itself; device nodes and fifos
            // are skipped (no filesystem adapter makes them).
            _ => continue,
        }
        let attr = SetAttr {
            mode: Some(mode),
            uid: h.uid().ok().and_then(|u| u32::try_from(u).ok()),
            gid: h.gid().ok().and_then(|u| u32::try_from(u).ok()),
            mtime: h.mtime().ok().map(|s| Timespec {
                sec: s as i64,
                nsec: 0,
            }),
            atime: None,
        };
        match g.setattr(&path, false, attr) {
            Err(x) if x.errno == libc::EPERM => {}
            r => r?,
        }
    }
    Ok(())
}

/// Packs guest directory `dir` (its contents, as `tar -C dir -cf - .` names them).
fn tar_out(
    g: &mut Guest,
    dir: &[u8],
    out: Box<dyn Write>,
    excludes: &[String],
    _numeric: bool,
) -> Result<(), CmdError> {
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    let st = g.stat(dir, true)?;
    if !st.is_dir() {
        return Err(CmdError(format!("{}: Not a directory", show(dir))));
    }
    let mut h = header_for(&st);
    h.set_entry_type(tar::EntryType::Directory);
    h.set_size(0);
    b.append_data(&mut h, "./", std::io::empty())?;
    pack(g, dir, b"./", &mut b, excludes)?;
    b.into_inner()?.flush()?;
    Ok(())
}

fn header_for(st: &crate::fs::types::Stat) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_mode(st.perm());
    h.set_uid(st.uid as u64);
    h.set_gid(st.gid as u64);
    h.set_mtime(st.mtime.sec.max(0) as u64);
    h
}

fn pack(
    g: &mut Guest,
    dir: &[u8],
    rel: &[u8],
    b: &mut tar::Builder<Box<dyn Write>>,
    excludes: &[String],
) -> Result<(), CmdError> {
    let mut entries = g.readdir(&join(dir, rel.strip_prefix(b"./").unwrap_or(rel)))?;
    entries.sort_by(|x, y| x.name.cmp(&y.name));
    for e in entries {
        let r = join(rel, &e.name);
        if excludes.iter().any(|x| {
            crate::fs::ops::fnmatch(x.as_bytes(), &r)
                || crate::fs::ops::fnmatch(x.as_bytes(), &e.name)
        }) {
            continue;
        }
        let p = join(dir, r.strip_prefix(b"./").unwrap_or(&r));
        let st = g.stat(&p, false)?;
        let mut h = header_for(&st);
        let name = PathBuf::from(std::ffi::OsStr::from_bytes(&r));
        match st.kind {
            FileKind::Directory => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, &name, std::io::empty())?;
                pack(g, dir, &r, b, excludes)?;
            }
            FileKind::Symlink => {
                let t = g.readlink(&p)?;
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, &name, std::ffi::OsStr::from_bytes(&t))?;
            }
            FileKind::Regular => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(st.size);
                let reader = GuestReader {
                    g,
                    path: p,
                    off: 0,
                    buf: Vec::new(),
                    pos: 0,
                };
                b.append_data(&mut h, &name, reader)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// A guest file as a `Read`, piece by piece.
struct GuestReader<'a> {
    g: &'a mut Guest,
    path: Vec<u8>,
    off: u64,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for GuestReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.buf.len() {
            self.buf = self
                .g
                .read_at(&self.path, self.off, 1 << 20)
                .map_err(std::io::Error::other)?;
            self.off += self.buf.len() as u64;
            self.pos = 0;
            if self.buf.is_empty() {
                return Ok(0);
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
