//! `strata fs …`: the filesystems inside a volume (read-write) or a golden image
//! (`--image`, read-only), from the shell. Each invocation is one atomic job in its own
//! worker process: it changes the volume entirely or not at all.
//!
//! Paths are `DEVICE:PATH` (`/dev/sda2:/etc/hostname`): the device's filesystem is mounted
//! at `/` for the job and PATH resolved inside it.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use strata::fs::worker::{Call, Reply, Request, Source, Worker, WorkerOptions};
use strata::fs::{FileKind, FsError, SetAttr, Stat};

use super::progress::Bar;
use super::size::human;
use super::{print_table, CliResult};

/// How much of a file moves per request.
const CHUNK: usize = 8 << 20;

/// Pieces of a `put` sent before the first of them is answered: two keep the worker busy
/// (the pipe holds the start of the next piece while it writes one); a third only adds
/// memory.
const PUT_WINDOW: usize = 2;

#[derive(Args)]
pub struct Target {
    /// The volume (or, with --image, the golden image).
    pub name: String,
    /// Work on a golden image, read-only.
    #[arg(long)]
    pub image: bool,
}

#[derive(Subcommand)]
pub enum FsCmd {
    /// Devices, partitions, logical volumes and their filesystems (type, label, UUID, size, use).
    List {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// The operating systems found on the disk, as guestfish's inspect-os reports them.
    Inspect {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// List a directory.
    Ls {
        #[command(flatten)]
        target: Target,
        /// DEVICE:PATH
        path: String,
        /// Long listing: mode, links, owner, size, time.
        #[arg(short, long)]
        long: bool,
    },
    /// Print a file.
    Cat {
        #[command(flatten)]
        target: Target,
        path: String,
    },
    /// Show what stat(2) says of a path (lstat with --no-follow).
    Stat {
        #[command(flatten)]
        target: Target,
        path: String,
        #[arg(long)]
        no_follow: bool,
        #[arg(long)]
        json: bool,
    },
    /// Space and inodes of a filesystem.
    Df {
        #[command(flatten)]
        target: Target,
        /// DEVICE (or DEVICE:PATH)
        device: String,
    },
    /// Make a directory.
    Mkdir {
        #[command(flatten)]
        target: Target,
        path: String,
        /// Make missing parents; no error if it exists.
        #[arg(short, long)]
        parents: bool,
        /// Mode, in octal.
        #[arg(long, default_value = "755", value_parser = octal)]
        mode: u32,
    },
    /// Remove a file (a directory with -r).
    Rm {
        #[command(flatten)]
        target: Target,
        path: String,
        #[arg(short, long)]
        recursive: bool,
        /// No error if it does not exist.
        #[arg(short, long)]
        force: bool,
    },
    /// Change a path's mode (octal, as chmod(1) takes it).
    Chmod {
        #[command(flatten)]
        target: Target,
        #[arg(value_parser = octal)]
        mode: u32,
        path: String,
    },
    /// Copy a local file into the guest (replacing what is there).
    Put {
        #[command(flatten)]
        target: Target,
        local: PathBuf,
        path: String,
        /// Mode of a new file, in octal.
        #[arg(long, default_value = "644", value_parser = octal)]
        mode: u32,
    },
    /// Copy a file out of the guest ("-" for standard output).
    Get {
        #[command(flatten)]
        target: Target,
        path: String,
        local: PathBuf,
    },
}

fn octal(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("{s:?} is not an octal mode (0 to 7777)"))
}

/// Splits `DEVICE:PATH`; the device part must name a device (`/dev/...`).
fn split(arg: &str) -> Result<(String, Vec<u8>), String> {
    match arg.split_once(':') {
        Some((dev, path)) if dev.starts_with("/dev/") && path.starts_with('/') => {
            Ok((dev.to_string(), path.as_bytes().to_vec()))
        }
        _ => Err(format!(
            "{arg:?}: expected DEVICE:PATH, such as /dev/sda2:/etc/hostname \
             (strata fs list NAME shows the devices)"
        )),
    }
}

fn source(repo: &Path, t: &Target) -> Source {
    if t.image {
        Source::Image {
            repo: repo.to_path_buf(),
            name: t.name.clone(),
        }
    } else {
        Source::Volume {
            repo: repo.to_path_buf(),
            name: t.name.clone(),
        }
    }
}

/// Opens the target in a worker, mounting `device` on / when given.
fn start(repo: &Path, t: &Target, writes: bool, device: Option<&str>) -> Result<Worker, FsError> {
    let read_only = t.image || !writes;
    let mut w = Worker::start(source(repo, t), read_only, &WorkerOptions::default())?;
    if let Some(dev) = device {
        w.call(Request::Mount {
            device: dev.to_string(),
            point: "/".into(),
            read_only,
        })?;
    }
    Ok(w)
}

fn call(w: &mut Worker, c: Call) -> Result<Reply, FsError> {
    w.call(Request::Call(c))
}

fn unexpected(r: Reply) -> FsError {
    FsError::new(libc::EIO, format!("the worker answered {r:?}"))
}

fn show(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

pub fn run(repo: &Path, cmd: FsCmd) -> CliResult {
    match cmd {
        FsCmd::List { target, json } => list(repo, &target, json),
        FsCmd::Inspect { target, json } => {
            let mut w = start(repo, &target, false, None)?;
            let Reply::Inspected(oses) = w.call(Request::Inspect)? else {
                return Err("unexpected reply".into());
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&oses)?);
            } else if oses.is_empty() {
                println!("no operating system found");
            }
            for os in oses.iter().filter(|_| !json) {
                println!("root: {}", os.root);
                println!(
                    "  type: {}\n  distro: {}\n  product: {}\n  version: {}.{}\n  osinfo: {}",
                    os.os_type,
                    os.distro,
                    os.product_name,
                    os.major_version,
                    os.minor_version,
                    os.osinfo
                );
                if !os.hostname.is_empty() {
                    println!("  hostname: {}", os.hostname);
                }
                for (mp, dev) in &os.mountpoints {
                    println!("  mountpoint: {mp} {dev}");
                }
            }
            Ok(())
        }
        FsCmd::Ls { target, path, long } => {
            let (dev, p) = split(&path)?;
            let mut w = start(repo, &target, false, Some(&dev))?;
            let Reply::Entries(mut entries) = call(&mut w, Call::Readdir { path: p.clone() })?
            else {
                return Err("unexpected reply".into());
            };
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            let mut out = std::io::stdout().lock();
            for e in entries {
                if long {
                    let mut child = p.clone();
                    if !child.ends_with(b"/") {
                        child.push(b'/');
                    }
                    child.extend_from_slice(&e.name);
                    let Reply::Stat(st) = call(
                        &mut w,
                        Call::Stat {
                            path: child.clone(),
                            follow: false,
                        },
                    )?
                    else {
                        return Err("unexpected reply".into());
                    };
                    let mut line = format!(
                        "{} {:>3} {:>5} {:>5} {:>10} {} {}",
                        mode_string(&st),
                        st.nlink,
                        st.uid,
                        st.gid,
                        st.size,
                        utc(st.mtime.sec),
                        show(&e.name)
                    );
                    if st.kind == FileKind::Symlink {
                        if let Reply::Bytes(t) = call(&mut w, Call::Readlink { path: child })? {
                            line.push_str(&format!(" -> {}", show(&t)));
                        }
                    }
                    writeln!(out, "{line}")?;
                } else {
                    writeln!(out, "{}", show(&e.name))?;
                }
            }
            Ok(())
        }
        FsCmd::Cat { target, path } => {
            let (dev, p) = split(&path)?;
            let mut w = start(repo, &target, false, Some(&dev))?;
            copy_out(&mut w, &p, &mut std::io::stdout().lock(), None)
        }
        FsCmd::Stat {
            target,
            path,
            no_follow,
            json,
        } => {
            let (dev, p) = split(&path)?;
            let mut w = start(repo, &target, false, Some(&dev))?;
            let Reply::Stat(st) = call(
                &mut w,
                Call::Stat {
                    path: p.clone(),
                    follow: !no_follow,
                },
            )?
            else {
                return Err("unexpected reply".into());
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                println!("  File: {}", show(&p));
                println!(
                    "  Size: {}  Blocks: {}  IO Block: {}  {:?}",
                    st.size, st.blocks, st.blksize, st.kind
                );
                println!(" Inode: {}  Links: {}", st.ino, st.nlink);
                println!(
                    "Access: ({:04o}/{})  Uid: {}  Gid: {}",
                    st.perm(),
                    mode_string(&st),
                    st.uid,
                    st.gid
                );
                println!(
                    "Access: {}.{:09}\nModify: {}.{:09}\nChange: {}.{:09}",
                    st.atime.sec,
                    st.atime.nsec,
                    st.mtime.sec,
                    st.mtime.nsec,
                    st.ctime.sec,
                    st.ctime.nsec
                );
            }
            Ok(())
        }
        FsCmd::Df { target, device } => {
            let (dev, p) = match split(&device) {
                Ok(x) => x,
                Err(_) => (device.clone(), b"/".to_vec()),
            };
            let mut w = start(repo, &target, false, Some(&dev))?;
            let Reply::StatVfs(v) = call(&mut w, Call::Statvfs { path: p })? else {
                return Err("unexpected reply".into());
            };
            let total = v.blocks * v.frsize;
            let free = v.bfree * v.frsize;
            print_table(
                &[
                    "FILESYSTEM",
                    "SIZE",
                    "USED",
                    "AVAIL",
                    "USE%",
                    "INODES",
                    "IFREE",
                ],
                &[vec![
                    dev,
                    human(total),
                    human(total - free),
                    human(v.bavail * v.frsize),
                    format!(
                        "{}%",
                        if total == 0 {
                            0
                        } else {
                            (total - free) * 100 / total
                        }
                    ),
                    v.files.to_string(),
                    v.ffree.to_string(),
                ]],
            );
            Ok(())
        }
        FsCmd::Mkdir {
            target,
            path,
            parents,
            mode,
        } => edit(repo, &target, &path, |w, p| {
            call(
                w,
                Call::Mkdir {
                    path: p,
                    mode,
                    parents,
                },
            )
            .map(|_| ())
        }),
        FsCmd::Rm {
            target,
            path,
            recursive,
            force,
        } => edit(repo, &target, &path, |w, p| {
            let c = if recursive {
                if !force {
                    // rm -r without -f still wants the path to be there.
                    if let Reply::Bool(false) = call(w, Call::Exists { path: p.clone() })? {
                        return Err(FsError::new(libc::ENOENT, show(&p)));
                    }
                }
                Call::RmRf { path: p }
            } else {
                Call::Rm { path: p, force }
            };
            call(w, c).map(|_| ())
        }),
        FsCmd::Chmod { target, mode, path } => edit(repo, &target, &path, |w, p| {
            call(
                w,
                Call::SetAttr {
                    path: p,
                    follow: true,
                    attr: SetAttr {
                        mode: Some(mode),
                        ..SetAttr::default()
                    },
                },
            )
            .map(|_| ())
        }),
        FsCmd::Put {
            target,
            local,
            path,
            mode,
        } => {
            let mut f =
                File::open(&local).map_err(|e| format!("opening {}: {e}", local.display()))?;
            let meta = f.metadata()?;
            if !meta.is_file() {
                return Err(format!("{} is not a regular file", local.display()).into());
            }
            edit(repo, &target, &path, |w, p| {
                call(
                    w,
                    Call::CreateOrTruncate {
                        path: p.clone(),
                        mode,
                    },
                )?;
                let bar = (meta.len() > 64 << 20).then(|| Bar::new("put"));
                // Pipelined: piece n+1 is read and sent while the worker writes piece n,
                // with at most PUT_WINDOW pieces unanswered. The first error stops the
                // loop and is the one reported; the answers still owed are read first.
                let sent = (|| {
                    let mut off = 0u64;
                    let mut spare: Option<Vec<u8>> = None;
                    loop {
                        // A request only borrows its buffer, so one buffer carries every
                        // piece: no fresh 8 MiB to fault in each time. A fresh one comes
                        // from calloc, whose pages a small file never touches (resizing
                        // an empty Vec would write all 8 MiB of zeros first).
                        let mut buf = match spare.take() {
                            Some(b) if b.len() == CHUNK => b,
                            _ => vec![0u8; CHUNK],
                        };
                        let n = match read_full(&mut f, &mut buf) {
                            Ok(n) => n,
                            Err(e) => {
                                // A piece sent before that failed failed first.
                                w.settle()?;
                                return Err(FsError::new(
                                    libc::EIO,
                                    format!("reading {}: {e}", local.display()),
                                ));
                            }
                        };
                        if n == 0 {
                            return Ok(());
                        }
                        buf.truncate(n);
                        while w.in_flight() >= PUT_WINDOW {
                            w.recv()?;
                        }
                        let req = Request::Call(Call::WriteAt {
                            path: p.clone(),
                            offset: off,
                            data: buf,
                        });
                        w.send(&req)?;
                        if let Request::Call(Call::WriteAt { data, .. }) = req {
                            spare = Some(data);
                        }
                        off += n as u64;
                        if let Some(b) = &bar {
                            b.update(off, meta.len());
                        }
                    }
                })();
                // Every answer is read whatever happened; an earlier error wins.
                let settled = w.settle();
                sent.and(settled)?;
                if let Some(b) = bar {
                    b.finish();
                }
                Ok(())
            })
        }
        FsCmd::Get {
            target,
            path,
            local,
        } => {
            let (dev, p) = split(&path)?;
            let mut w = start(repo, &target, false, Some(&dev))?;
            if local.as_os_str() == "-" {
                return copy_out(&mut w, &p, &mut std::io::stdout().lock(), None);
            }
            // Written beside the destination and renamed into place: a failed copy leaves
            // nothing half-written behind.
            let tmp = local.with_extension("strata-partial");
            let mut f =
                File::create(&tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
            let r = copy_out(&mut w, &p, &mut f, Some("get"));
            if r.is_err() {
                let _ = std::fs::remove_file(&tmp);
                return r;
            }
            f.sync_all()?;
            std::fs::rename(&tmp, &local)?;
            Ok(())
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// One change, as one atomic job: mount the device read-write, do it, commit.
fn edit(
    repo: &Path,
    t: &Target,
    path: &str,
    f: impl FnOnce(&mut Worker, Vec<u8>) -> Result<(), FsError>,
) -> CliResult {
    if t.image {
        return Err(format!(
            "image {:?} is a golden image and never changes; clone a volume from it \
             (strata volume create NAME --from {}) and edit that",
            t.name, t.name
        )
        .into());
    }
    let (dev, p) = split(path)?;
    let mut w = start(repo, t, true, Some(&dev))?;
    f(&mut w, p)?;
    w.commit()?;
    Ok(())
}

fn copy_out(w: &mut Worker, p: &[u8], out: &mut dyn Write, progress: Option<&str>) -> CliResult {
    let Reply::Stat(st) = call(
        w,
        Call::Stat {
            path: p.to_vec(),
            follow: true,
        },
    )?
    else {
        return Err("unexpected reply".into());
    };
    if st.is_dir() {
        return Err(FsError::new(libc::EISDIR, show(p)).into());
    }
    let bar = progress.filter(|_| st.size > 64 << 20).map(Bar::new);
    let mut off = 0u64;
    loop {
        let r = call(
            w,
            Call::Read {
                path: p.to_vec(),
                offset: off,
                len: CHUNK as u32,
            },
        )?;
        let Reply::Bytes(b) = r else {
            return Err(unexpected(r).into());
        };
        if b.is_empty() {
            break;
        }
        out.write_all(&b)?;
        off += b.len() as u64;
        if let Some(bar) = &bar {
            bar.update(off, st.size);
        }
    }
    if let Some(b) = bar {
        b.finish();
    }
    out.flush()?;
    Ok(())
}

fn list(repo: &Path, t: &Target, json: bool) -> CliResult {
    let mut w = start(repo, t, false, None)?;
    let Reply::Devices(devices) = w.call(Request::Devices)? else {
        return Err("unexpected reply".into());
    };
    let Reply::Filesystems(fss) = w.call(Request::Filesystems { usage: true })? else {
        return Err("unexpected reply".into());
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"devices": devices, "filesystems": fss})
            )?
        );
        return Ok(());
    }
    let rows: Vec<Vec<String>> = devices
        .iter()
        .map(|d| {
            let f = fss.iter().find(|f| f.device == d.name);
            let det = f.and_then(|f| f.detected.as_ref());
            let usage = f.and_then(|f| f.usage.as_ref()).map(|u| {
                let total = u.blocks * u.frsize;
                let used = total - u.bfree * u.frsize;
                format!(
                    "{} ({}%)",
                    human(used),
                    if total == 0 { 0 } else { used * 100 / total }
                )
            });
            vec![
                d.name.clone(),
                d.kind.clone(),
                human(d.size),
                det.map_or("-".into(), |x| x.fs_type.clone()),
                det.map_or(String::new(), |x| x.label.clone()),
                det.map_or(String::new(), |x| x.uuid.clone()),
                usage
                    .or_else(|| f.and_then(|f| f.error.clone()).map(|e| format!("({e})")))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    print_table(
        &["DEVICE", "KIND", "SIZE", "TYPE", "LABEL", "UUID", "USED"],
        &rows,
    );
    Ok(())
}

/// `drwxr-xr-x` for a stat.
fn mode_string(st: &Stat) -> String {
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
    let mut s = String::from(t);
    for (i, c) in "rwxrwxrwx".chars().enumerate() {
        s.push(if m & (0o400 >> i) != 0 { c } else { '-' });
    }
    s
}

/// `2026-12-01 21:35` (UTC) for seconds since the epoch.
fn utc(sec: i64) -> String {
    let days = sec.div_euclid(86_400);
    let secs = sec.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm), proleptic Gregorian.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates_are_civil_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00");
        assert_eq!(super::utc(1_796_166_474), "2026-12-01 23:07");
        assert_eq!(super::utc(951_782_400), "2000-02-29 00:00");
        assert_eq!(super::utc(-86_400), "1969-12-31 00:00");
    }
}
