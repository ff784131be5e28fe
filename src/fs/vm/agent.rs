//! The agent: strata's own binary running as `/init` (pid 1) inside the VM. It mounts the
//! pseudo filesystems, loads the kernel modules the initramfs carries, opens the
//! virtio-serial port named `strata` and answers `AgentRequest`s with system calls on the
//! filesystems it mounts from the virtio disks, until it is told to power off or the port
//! closes. It never returns: pid 1 exiting panics the kernel, so every end is a power-off.
//!
//! Inodes are held as `O_PATH` file descriptors (one per inode the worker has looked up),
//! so that every operation is a `*at` call on the inode itself, whatever renames happened
//! in between; a descriptor is closed when its inode loses its last link, and all of a
//! mount's are closed before it is unmounted.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, FileExt, FileTypeExt};

use serde_bytes::ByteBuf;

use crate::fs::types::*;
use crate::fs::worker::protocol::{read_frame, write_frame};

use super::proto::*;

/// Inode numbers the agent hands out for inodes on another device than the mount's own.
const FOREIGN: u64 = 1 << 63;

/// Runs the agent; never returns.
pub fn run() -> ! {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("strata vm agent: internal error: {info}");
        power_off();
    }));
    if let Err(e) = setup() {
        eprintln!("strata vm agent: {e}");
        power_off();
    }
    let port = match find_port() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("strata vm agent: {e}");
            power_off();
        }
    };
    let mut agent = Agent {
        mounts: HashMap::new(),
        next_mount: 0,
        kmsg: File::options()
            .read(true)
            .custom_flags_nonblock()
            .open("/dev/kmsg")
            .ok(),
    };
    let mut input = std::io::BufReader::new(&port);
    let mut output = std::io::BufWriter::new(&port);
    if write_frame(&mut output, &AgentReply::Hello(HELLO.into())).is_err() {
        power_off();
    }
    loop {
        let req: AgentRequest = match read_frame(&mut input) {
            Ok(Some(r)) => r,
            _ => power_off(),
        };
        if req == AgentRequest::PowerOff {
            power_off();
        }
        let reply = agent.handle(req).unwrap_or_else(AgentReply::Error);
        if write_frame(&mut output, &reply).is_err() {
            power_off();
        }
    }
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlock for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NONBLOCK)
    }
}

fn power_off() -> ! {
    // SAFETY: plain system calls; pid 1 powering the machine off.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    std::process::exit(1)
}

fn cstr(b: &[u8]) -> FsResult<CString> {
    CString::new(b).map_err(|_| FsError::new(libc::EINVAL, "a name holds a NUL byte"))
}

fn last(what: impl std::fmt::Display) -> FsError {
    let e = std::io::Error::last_os_error();
    FsError::new(e.raw_os_error().unwrap_or(libc::EIO), what.to_string())
}

fn check(r: libc::c_int, what: impl std::fmt::Display) -> FsResult<libc::c_int> {
    if r < 0 {
        Err(last(what))
    } else {
        Ok(r)
    }
}

fn from_io(e: std::io::Error, what: impl std::fmt::Display) -> FsError {
    FsError::new(e.raw_os_error().unwrap_or(libc::EIO), what.to_string())
}

fn sys_mount(src: &str, dst: &str, fs: &str, flags: libc::c_ulong, data: &str) -> FsResult<()> {
    let (s, d, f, o) = (
        cstr(src.as_bytes())?,
        cstr(dst.as_bytes())?,
        cstr(fs.as_bytes())?,
        cstr(data.as_bytes())?,
    );
    // SAFETY: NUL-terminated strings that live across the call.
    let r = unsafe {
        libc::mount(
            s.as_ptr(),
            d.as_ptr(),
            f.as_ptr(),
            flags,
            o.as_ptr() as *const libc::c_void,
        )
    };
    check(r, format!("mount {src} on {dst}")).map(drop)
}

/// Pseudo filesystems, limits, and the base modules (virtio).
fn setup() -> FsResult<()> {
    sys_mount("dev", "/dev", "devtmpfs", 0, "")?;
    sys_mount("proc", "/proc", "proc", 0, "")?;
    sys_mount("sys", "/sys", "sysfs", 0, "")?;
    // SAFETY: plain system calls on this process.
    unsafe {
        libc::umask(0);
        let lim = libc::rlimit {
            rlim_cur: 1 << 20,
            rlim_max: 1 << 20,
        };
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    // No modprobe here: the kernel asking for one must not wait on a missing helper.
    let _ = std::fs::write("/proc/sys/kernel/modprobe", "\n");
    load_modules("base")?;
    // Booted to be saved (`snapshot.rs`): every filesystem's modules now, once, in the
    // saved state, rather than at each restored job's first mount.
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if cmdline.split_whitespace().any(|w| w == "strata.preload") {
        load_modules("xfs")?;
        load_modules("btrfs")?;
        load_modules("ext4")?;
    }
    Ok(())
}

/// Loads the modules of `group` from `/modules/order` ("GROUP FILE" lines), skipping those
/// loaded already.
fn load_modules(group: &str) -> FsResult<()> {
    let order =
        std::fs::read_to_string("/modules/order").map_err(|e| from_io(e, "/modules/order"))?;
    for m in order
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(g, _)| *g == group)
        .map(|(_, m)| m)
    {
        let name = m.split(".ko").next().unwrap_or(m).replace('-', "_");
        if std::path::Path::new("/sys/module").join(&name).exists() {
            // Loaded already: finit_module would read and check the whole file first.
            continue;
        }
        let path = format!("/modules/{m}");
        let f = File::open(&path).map_err(|e| from_io(e, &path))?;
        let empty = cstr(b"")?;
        // SAFETY: finit_module on an open module file with an empty parameter string.
        let r = unsafe {
            libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), empty.as_ptr(), 0) as libc::c_int
        };
        if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
            return Err(last(format!("loading module {m}")));
        }
    }
    Ok(())
}

/// Polls for a device the kernel is still probing: `find` is tried until it answers.
fn wait_for<T>(what: &str, mut find: impl FnMut() -> Option<T>) -> FsResult<T> {
    for _ in 0..3000 {
        if let Some(t) = find() {
            return Ok(t);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Err(FsError::new(libc::ENODEV, format!("{what} did not appear")))
}

/// The virtio-serial port named `strata`, opened for reading and writing.
fn find_port() -> FsResult<File> {
    let node = wait_for("the virtio-serial port \"strata\"", || {
        std::fs::read_dir("/sys/class/virtio-ports")
            .ok()?
            .filter_map(|e| e.ok())
            .find(|e| {
                std::fs::read_to_string(e.path().join("name")).is_ok_and(|n| n.trim() == "strata")
            })
            .map(|e| format!("/dev/{}", e.file_name().to_string_lossy()))
            .filter(|n| std::path::Path::new(n).exists())
    })?;
    File::options()
        .read(true)
        .write(true)
        .open(&node)
        .map_err(|e| from_io(e, &node))
}

/// The `/dev/vdX` whose virtio serial is `serial`.
fn find_disk(serial: &str) -> FsResult<String> {
    wait_for(&format!("the disk {serial}"), || {
        std::fs::read_dir("/sys/block")
            .ok()?
            .filter_map(|e| e.ok())
            .find(|e| {
                std::fs::read_to_string(e.path().join("serial")).is_ok_and(|s| s.trim() == serial)
            })
            .map(|e| format!("/dev/{}", e.file_name().to_string_lossy()))
            .filter(|n| std::path::Path::new(n).exists())
    })
}

/// The `/sys/block` entry (`vdX`) whose virtio serial is `serial`, if there is one now.
fn disk_entry(serial: &str) -> Option<String> {
    std::fs::read_dir("/sys/block")
        .ok()?
        .filter_map(|e| e.ok())
        .find(|e| {
            std::fs::read_to_string(e.path().join("serial")).is_ok_and(|s| s.trim() == serial)
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
}

fn disk_sectors(entry: &str) -> u64 {
    std::fs::read_to_string(format!("/sys/block/{entry}/size"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// After a restore: the host's clock and randomness, and each disk probed again. The
/// guest's virtio-blk driver read a placeholder's capacity (zero) at the save; the serial
/// it reads afresh from the device, so the job's disk is found by it and its virtio device
/// unbound and bound again, which reads its capacity and read-only flag anew.
fn resume(sec: i64, nsec: u32, seed: &[u8], serials: &[String]) -> FsResult<()> {
    let ts = libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec.into(),
    };
    // SAFETY: clock_settime with a filled timespec.
    check(
        unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) },
        "setting the clock",
    )?;
    // Mixed into the pool (not credited): restored guests no longer share their randomness.
    std::fs::write("/dev/urandom", seed).map_err(|e| from_io(e, "/dev/urandom"))?;
    let driver = "/sys/bus/virtio/drivers/virtio_blk";
    for serial in serials {
        let entry = wait_for(&format!("the disk {serial}"), || disk_entry(serial))?;
        if disk_sectors(&entry) != 0 {
            continue;
        }
        let dev = std::fs::canonicalize(format!("/sys/block/{entry}/device"))
            .map_err(|e| from_io(e, format!("{entry}'s virtio device")))?;
        let name = dev
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        std::fs::write(format!("{driver}/unbind"), &name)
            .map_err(|e| from_io(e, format!("unbinding {name}")))?;
        std::fs::write(format!("{driver}/bind"), &name)
            .map_err(|e| from_io(e, format!("binding {name}")))?;
        wait_for(&format!("the disk {serial}'s capacity"), || {
            disk_entry(serial).filter(|e| disk_sectors(e) != 0)
        })?;
    }
    Ok(())
}

struct Mount {
    point: String,
    /// The guest's block device (`/dev/vdX`) it was mounted from.
    device: String,
    dev: u64,
    root: Ino,
    fds: HashMap<Ino, OwnedFd>,
    foreign: HashMap<(u64, u64), Ino>,
}

struct Agent {
    mounts: HashMap<u32, Mount>,
    next_mount: u32,
    kmsg: Option<File>,
}

fn fstat(fd: RawFd) -> FsResult<libc::stat> {
    let empty = cstr(b"")?;
    // SAFETY: stat is plain data, filled by the kernel.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let r = unsafe {
        libc::fstatat(
            fd,
            empty.as_ptr(),
            &mut st,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    check(r, "stat")?;
    Ok(st)
}

fn kind_of(mode: u32) -> FileKind {
    FileKind::from_mode(mode).unwrap_or(FileKind::Regular)
}

fn proc_path(fd: RawFd) -> String {
    format!("/proc/self/fd/{fd}")
}

impl Mount {
    fn ino_of(&mut self, st: &libc::stat) -> Ino {
        if st.st_dev == self.dev {
            st.st_ino
        } else {
            let n = FOREIGN | (self.foreign.len() as u64 + 1);
            *self.foreign.entry((st.st_dev, st.st_ino)).or_insert(n)
        }
    }

    fn fd(&self, ino: Ino) -> FsResult<RawFd> {
        self.fds
            .get(&ino)
            .map(|f| f.as_raw_fd())
            .ok_or_else(|| FsError::new(libc::ESTALE, format!("inode {ino} was not looked up")))
    }

    /// Opens `name` in `dir` as an O_PATH descriptor and registers its inode.
    fn lookup(&mut self, dir: Ino, name: &[u8]) -> FsResult<Ino> {
        let d = self.fd(dir)?;
        let c = cstr(name)?;
        // SAFETY: openat with a NUL-terminated name; the result is owned below.
        let fd = unsafe {
            libc::openat(
                d,
                c.as_ptr(),
                libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        let fd = check(fd, String::from_utf8_lossy(name))?;
        // SAFETY: a descriptor this call just opened.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let st = fstat(fd.as_raw_fd())?;
        let ino = self.ino_of(&st);
        self.fds.entry(ino).or_insert(fd);
        Ok(ino)
    }

    fn stat(&mut self, ino: Ino) -> FsResult<Stat> {
        let st = fstat(self.fd(ino)?)?;
        let ts = |s: i64, n: i64| Timespec {
            sec: s,
            nsec: n as u32,
        };
        Ok(Stat {
            ino,
            kind: kind_of(st.st_mode),
            mode: st.st_mode,
            nlink: st.st_nlink as u32,
            uid: st.st_uid,
            gid: st.st_gid,
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
            atime: ts(st.st_atime, st.st_atime_nsec),
            mtime: ts(st.st_mtime, st.st_mtime_nsec),
            ctime: ts(st.st_ctime, st.st_ctime_nsec),
            rdev: st.st_rdev,
            blksize: st.st_blksize as u32,
        })
    }

    /// The inode number `name` in `dir` has now, if it is one the agent holds.
    fn held_at(&self, dir: Ino, name: &[u8]) -> Option<Ino> {
        let d = self.fd(dir).ok()?;
        let c = cstr(name).ok()?;
        // SAFETY: stat is plain data, filled by the kernel.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::fstatat(d, c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
        if r < 0 {
            return None;
        }
        let ino = if st.st_dev == self.dev {
            st.st_ino
        } else {
            *self.foreign.get(&(st.st_dev, st.st_ino))?
        };
        self.fds.contains_key(&ino).then_some(ino)
    }

    /// Closes the descriptor of `ino` if its inode has no links left, so that its space is
    /// freed now rather than at unmount.
    fn forget_if_gone(&mut self, ino: Option<Ino>) {
        if let Some(ino) = ino {
            if let Some(fd) = self.fds.get(&ino) {
                if fstat(fd.as_raw_fd()).map_or(true, |st| st.st_nlink == 0) {
                    self.fds.remove(&ino);
                }
            }
        }
    }

    fn open(&self, ino: Ino, flags: libc::c_int) -> FsResult<File> {
        let fd = self.fd(ino)?;
        File::options()
            .read(flags == libc::O_RDONLY)
            .write(flags == libc::O_WRONLY)
            .open(proc_path(fd))
            .map_err(|e| from_io(e, format!("opening inode {ino}")))
    }

    fn chown_at(&self, dir: RawFd, name: &CString, owner: Owner) -> FsResult<()> {
        // SAFETY: fchownat with a NUL-terminated name.
        let r = unsafe {
            libc::fchownat(
                dir,
                name.as_ptr(),
                owner.uid,
                owner.gid,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        check(r, "chown").map(drop)
    }

    fn create(
        &mut self,
        dir: Ino,
        name: &[u8],
        mode: u32,
        owner: Owner,
        is_dir: bool,
    ) -> FsResult<Ino> {
        let d = self.fd(dir)?;
        let c = cstr(name)?;
        let what = String::from_utf8_lossy(name).into_owned();
        // SAFETY: *at calls with a NUL-terminated name; the descriptor is closed below.
        unsafe {
            if is_dir {
                check(libc::mkdirat(d, c.as_ptr(), mode & 0o7777), &what)?;
            } else {
                let fd = libc::openat(
                    d,
                    c.as_ptr(),
                    libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_WRONLY
                        | libc::O_NOFOLLOW
                        | libc::O_CLOEXEC,
                    mode & 0o7777,
                );
                libc::close(check(fd, &what)?);
            }
            self.chown_at(d, &c, owner)?;
            // chown clears set-id bits and mkdir drops some: the mode asked for, exactly.
            check(libc::fchmodat(d, c.as_ptr(), mode & 0o7777, 0), &what)?;
        }
        self.lookup(dir, name)
    }

    fn readdir(&mut self, dir: Ino) -> FsResult<Vec<DirEntry>> {
        let fd = self.fd(dir)?;
        let rd = std::fs::read_dir(proc_path(fd)).map_err(|e| from_io(e, "readdir"))?;
        let mut out = Vec::new();
        for e in rd {
            let e = e.map_err(|e| from_io(e, "readdir"))?;
            let t = e.file_type().map_err(|e| from_io(e, "readdir"))?;
            let kind = if t.is_dir() {
                FileKind::Directory
            } else if t.is_symlink() {
                FileKind::Symlink
            } else if t.is_block_device() {
                FileKind::BlockDevice
            } else if t.is_char_device() {
                FileKind::CharDevice
            } else if t.is_fifo() {
                FileKind::Fifo
            } else if t.is_socket() {
                FileKind::Socket
            } else {
                FileKind::Regular
            };
            out.push(DirEntry {
                name: e.file_name().as_bytes().to_vec(),
                ino: e.ino(),
                kind,
            });
        }
        Ok(out)
    }

    fn setattr(&mut self, ino: Ino, a: &SetAttr) -> FsResult<()> {
        let fd = self.fd(ino)?;
        let st = fstat(fd)?;
        let symlink = kind_of(st.st_mode) == FileKind::Symlink;
        let path = cstr(proc_path(fd).as_bytes())?;
        let empty = cstr(b"")?;
        // SAFETY: system calls on descriptors and NUL-terminated paths this function holds.
        unsafe {
            if a.uid.is_some() || a.gid.is_some() {
                let r = libc::fchownat(
                    fd,
                    empty.as_ptr(),
                    a.uid.unwrap_or(u32::MAX),
                    a.gid.unwrap_or(u32::MAX),
                    libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
                );
                check(r, "chown")?;
            }
            if let Some(m) = a.mode {
                if !symlink {
                    check(libc::chmod(path.as_ptr(), m & 0o7777), "chmod")?;
                }
            }
            if a.atime.is_some() || a.mtime.is_some() {
                let t = |x: Option<Timespec>| match x {
                    Some(t) => libc::timespec {
                        tv_sec: t.sec,
                        tv_nsec: t.nsec as i64,
                    },
                    None => libc::timespec {
                        tv_sec: 0,
                        tv_nsec: libc::UTIME_OMIT,
                    },
                };
                let times = [t(a.atime), t(a.mtime)];
                let r = if symlink {
                    libc::utimensat(fd, empty.as_ptr(), times.as_ptr(), libc::AT_EMPTY_PATH)
                } else {
                    libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times.as_ptr(), 0)
                };
                check(r, "utimens")?;
            }
        }
        Ok(())
    }

    /// The root directory, opened (for ioctls and statfs).
    fn root_dir(&self) -> FsResult<File> {
        File::open(proc_path(self.fd(self.root)?)).map_err(|e| from_io(e, "opening the root"))
    }

    fn is_btrfs(&self) -> FsResult<bool> {
        let root = self.root_dir()?;
        // SAFETY: statfs is plain data, filled by the kernel.
        let mut s: libc::statfs = unsafe { std::mem::zeroed() };
        check(unsafe { libc::fstatfs(root.as_raw_fd(), &mut s) }, "statfs")?;
        Ok(s.f_type as i64 == super::btrfs::SUPER_MAGIC)
    }

    /// The device's used byte ranges: btrfs's from its trees (`btrfs.rs`), the others'
    /// from GETFSMAP.
    fn used_blocks(&mut self) -> FsResult<Option<Vec<(u64, u64)>>> {
        if !self.is_btrfs()? {
            return self.fsmap();
        }
        let root = self.root_dir()?;
        let mut dev = File::open(&self.device).map_err(|e| from_io(e, &self.device))?;
        let len = std::io::Seek::seek(&mut dev, std::io::SeekFrom::End(0))
            .map_err(|e| from_io(e, &self.device))?;
        super::btrfs::used_blocks(&root, &dev, len).map_err(|e| FsError::new(libc::EIO, e))
    }

    /// The device's used byte ranges from FS_IOC_GETFSMAP (XFS, ext4), or `None` where the
    /// filesystem does not answer it.
    fn fsmap(&mut self) -> FsResult<Option<Vec<(u64, u64)>>> {
        const RECS: usize = 1024;
        const REC: usize = 64;
        const HEAD: usize = 64 + 2 * REC;
        const FS_IOC_GETFSMAP: libc::c_ulong = 0xC0C0_583B;
        const OF_LAST: u32 = 0x8;
        const OF_SPECIAL: u32 = 0x10;
        const OWN_FREE: u64 = 1;
        let fd = self.fd(self.root)?;
        let dir = File::open(proc_path(fd)).map_err(|e| from_io(e, "opening the root"))?;
        let mut buf = vec![0u64; (HEAD + RECS * REC) / 8];
        let put32 = |b: &mut [u64], byte: usize, v: u32| {
            let w = &mut b[byte / 8];
            let shift = (byte % 8) * 8;
            *w = (*w & !(0xFFFF_FFFFu64 << shift)) | ((v as u64) << shift);
        };
        let get32 = |b: &[u64], byte: usize| (b[byte / 8] >> ((byte % 8) * 8)) as u32;
        // fmh_keys[1]: everything up to the end: device and flags, physical, owner and
        // offset all ones, as xfs_io sets them. Not the length, nor the reserved words:
        // the kernel answers EINVAL to a key whose reserved words are not zero, which the
        // caller took for "no GETFSMAP here" and kept the whole device.
        let hi = 64 / 8 + REC / 8;
        for w in &mut buf[hi..hi + 4] {
            *w = u64::MAX;
        }
        let mut out: Vec<(u64, u64)> = Vec::new();
        loop {
            put32(&mut buf, 8, RECS as u32);
            // SAFETY: the buffer is the fsmap_head and RECS records the count says.
            let r = unsafe { libc::ioctl(dir.as_raw_fd(), FS_IOC_GETFSMAP, buf.as_mut_ptr()) };
            if r < 0 {
                let e = std::io::Error::last_os_error().raw_os_error();
                if matches!(
                    e,
                    Some(libc::ENOTTY) | Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)
                ) {
                    return Ok(None);
                }
                return Err(last("GETFSMAP"));
            }
            let n = get32(&buf, 12) as usize;
            let mut done = n == 0;
            for i in 0..n {
                let at = HEAD / 8 + i * REC / 8;
                let flags = (buf[at] >> 32) as u32;
                let (phys, owner, len) = (buf[at + 1], buf[at + 2], buf[at + 4]);
                if !(flags & OF_SPECIAL != 0 && owner == OWN_FREE) && len > 0 {
                    match out.last_mut() {
                        Some(l) if l.0 + l.1 >= phys => l.1 = l.1.max(phys + len - l.0),
                        _ => out.push((phys, len)),
                    }
                }
                if flags & OF_LAST != 0 {
                    done = true;
                }
                if i == n - 1 {
                    // The next call starts after this record: it becomes fmh_keys[0].
                    let k = 64 / 8;
                    buf.copy_within(at..at + REC / 8, k);
                }
            }
            if done {
                return Ok(Some(out));
            }
        }
    }
}

impl Agent {
    fn mount(&mut self, id: u32) -> FsResult<&mut Mount> {
        self.mounts
            .get_mut(&id)
            .ok_or_else(|| FsError::new(libc::EINVAL, format!("mount {id} is not open")))
    }

    /// What the kernel logged since the last call (to explain a failed mount).
    fn kernel_log(&mut self) -> String {
        let mut lines = Vec::new();
        if let Some(k) = self.kmsg.as_mut() {
            let mut buf = vec![0u8; 8192];
            while let Ok(n) = k.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let rec = String::from_utf8_lossy(&buf[..n]);
                if let Some((_, msg)) = rec.split_once(';') {
                    lines.push(msg.lines().next().unwrap_or_default().to_string());
                }
            }
        }
        lines.join("; ")
    }

    fn handle(&mut self, req: AgentRequest) -> FsResult<AgentReply> {
        use AgentRequest as R;
        let rmdir = matches!(req, R::Rmdir { .. });
        Ok(match req {
            R::Mount {
                serial,
                fs_type,
                read_only,
                options,
            } => {
                if matches!(fs_type.as_str(), "xfs" | "btrfs" | "ext4") {
                    load_modules(&fs_type)?;
                }
                self.kernel_log();
                let dev = find_disk(&serial)?;
                let id = self.next_mount;
                self.next_mount += 1;
                let point = format!("/mnt/{id}");
                std::fs::create_dir_all(&point).map_err(|e| from_io(e, &point))?;
                let flags = if read_only { libc::MS_RDONLY } else { 0 };
                if let Err(mut e) = sys_mount(&dev, &point, &fs_type, flags, &options) {
                    let log = self.kernel_log();
                    if !log.is_empty() {
                        e.detail = format!("{} (the kernel said: {log})", e.detail);
                    }
                    return Err(e);
                }
                let root = File::open(&point).map_err(|e| from_io(e, &point))?;
                let c = cstr(point.as_bytes())?;
                // SAFETY: open with a NUL-terminated path; owned below.
                let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
                let fd = check(fd, &point)?;
                // SAFETY: a descriptor this call just opened.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                let st = fstat(root.as_raw_fd())?;
                let mut m = Mount {
                    point,
                    device: dev,
                    dev: st.st_dev,
                    root: st.st_ino,
                    fds: HashMap::new(),
                    foreign: HashMap::new(),
                };
                m.fds.insert(st.st_ino, fd);
                let root = m.root;
                self.mounts.insert(id, m);
                AgentReply::Mounted { mount: id, root }
            }
            R::Umount { mount } => {
                let mut m = self.mounts.remove(&mount).ok_or_else(|| {
                    FsError::new(libc::EINVAL, format!("mount {mount} is not open"))
                })?;
                m.fds.clear();
                let c = cstr(m.point.as_bytes())?;
                // SAFETY: umount2 with a NUL-terminated path.
                let r = unsafe { libc::umount2(c.as_ptr(), 0) };
                if r < 0 {
                    let mut e = last(format!("unmounting {}", m.point));
                    let log = self.kernel_log();
                    if !log.is_empty() {
                        e.detail = format!("{} (the kernel said: {log})", e.detail);
                    }
                    return Err(e);
                }
                AgentReply::Done
            }
            R::Lookup { mount, dir, name } => {
                AgentReply::Ino(self.mount(mount)?.lookup(dir, &name)?)
            }
            R::Stat { mount, ino } => AgentReply::Stat(self.mount(mount)?.stat(ino)?),
            R::Readdir { mount, dir } => AgentReply::Entries(self.mount(mount)?.readdir(dir)?),
            R::Read {
                mount,
                ino,
                offset,
                len,
            } => {
                let f = self.mount(mount)?.open(ino, libc::O_RDONLY)?;
                let mut buf = vec![0u8; len as usize];
                let mut got = 0;
                while got < buf.len() {
                    match f.read_at(&mut buf[got..], offset + got as u64) {
                        Ok(0) => break,
                        Ok(n) => got += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(from_io(e, "read")),
                    }
                }
                buf.truncate(got);
                AgentReply::Bytes(ByteBuf::from(buf))
            }
            R::Write {
                mount,
                ino,
                offset,
                data,
            } => {
                let f = self.mount(mount)?.open(ino, libc::O_WRONLY)?;
                f.write_all_at(&data, offset)
                    .map_err(|e| from_io(e, "write"))?;
                AgentReply::Done
            }
            R::Truncate { mount, ino, size } => {
                let f = self.mount(mount)?.open(ino, libc::O_WRONLY)?;
                f.set_len(size).map_err(|e| from_io(e, "truncate"))?;
                AgentReply::Done
            }
            R::Create {
                mount,
                dir,
                name,
                mode,
                owner,
            } => AgentReply::Ino(self.mount(mount)?.create(dir, &name, mode, owner, false)?),
            R::Mkdir {
                mount,
                dir,
                name,
                mode,
                owner,
            } => AgentReply::Ino(self.mount(mount)?.create(dir, &name, mode, owner, true)?),
            R::Symlink {
                mount,
                dir,
                name,
                target,
                owner,
            } => {
                let m = self.mount(mount)?;
                let d = m.fd(dir)?;
                let (c, t) = (cstr(&name)?, cstr(&target)?);
                // SAFETY: symlinkat with NUL-terminated strings.
                let r = unsafe { libc::symlinkat(t.as_ptr(), d, c.as_ptr()) };
                check(r, String::from_utf8_lossy(&name))?;
                m.chown_at(d, &c, owner)?;
                AgentReply::Ino(m.lookup(dir, &name)?)
            }
            R::Link {
                mount,
                ino,
                dir,
                name,
            } => {
                let m = self.mount(mount)?;
                let (f, d) = (m.fd(ino)?, m.fd(dir)?);
                let (c, empty) = (cstr(&name)?, cstr(b"")?);
                // SAFETY: linkat with NUL-terminated names (AT_EMPTY_PATH: the inode itself).
                let r =
                    unsafe { libc::linkat(f, empty.as_ptr(), d, c.as_ptr(), libc::AT_EMPTY_PATH) };
                check(r, String::from_utf8_lossy(&name))?;
                AgentReply::Done
            }
            R::Unlink { mount, dir, name } | R::Rmdir { mount, dir, name } => {
                let flag = if rmdir { libc::AT_REMOVEDIR } else { 0 };
                let m = self.mount(mount)?;
                let held = m.held_at(dir, &name);
                let d = m.fd(dir)?;
                let c = cstr(&name)?;
                // SAFETY: unlinkat with a NUL-terminated name.
                let r = unsafe { libc::unlinkat(d, c.as_ptr(), flag) };
                check(r, String::from_utf8_lossy(&name))?;
                m.forget_if_gone(held);
                AgentReply::Done
            }
            R::Rename {
                mount,
                from_dir,
                from,
                to_dir,
                to,
            } => {
                let m = self.mount(mount)?;
                let replaced = m.held_at(to_dir, &to);
                let (fd, td) = (m.fd(from_dir)?, m.fd(to_dir)?);
                let (f, t) = (cstr(&from)?, cstr(&to)?);
                // SAFETY: renameat with NUL-terminated names.
                let r = unsafe { libc::renameat(fd, f.as_ptr(), td, t.as_ptr()) };
                check(r, String::from_utf8_lossy(&from))?;
                m.forget_if_gone(replaced);
                AgentReply::Done
            }
            R::Readlink { mount, ino } => {
                let fd = self.mount(mount)?.fd(ino)?;
                let empty = cstr(b"")?;
                let mut buf = vec![0u8; 4096];
                // SAFETY: readlinkat into a buffer of the length given.
                let n = unsafe {
                    libc::readlinkat(
                        fd,
                        empty.as_ptr(),
                        buf.as_mut_ptr() as *mut libc::c_char,
                        buf.len(),
                    )
                };
                if n < 0 {
                    return Err(last("readlink"));
                }
                buf.truncate(n as usize);
                AgentReply::Bytes(ByteBuf::from(buf))
            }
            R::SetAttr { mount, ino, attr } => {
                self.mount(mount)?.setattr(ino, &attr)?;
                AgentReply::Done
            }
            R::Statvfs { mount } => {
                let m = self.mount(mount)?;
                let fd = m.fd(m.root)?;
                // SAFETY: statvfs is plain data, filled by the kernel.
                let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
                check(unsafe { libc::fstatvfs(fd, &mut s) }, "statvfs")?;
                AgentReply::StatVfs(StatVfs {
                    bsize: s.f_bsize,
                    frsize: s.f_frsize,
                    blocks: s.f_blocks,
                    bfree: s.f_bfree,
                    bavail: s.f_bavail,
                    files: s.f_files,
                    ffree: s.f_ffree,
                    favail: s.f_favail,
                    fsid: s.f_fsid,
                    flag: s.f_flag,
                    namemax: s.f_namemax,
                })
            }
            R::UsedBlocks { mount } => AgentReply::Ranges(self.mount(mount)?.used_blocks()?),
            R::Subvolumes { mount } => {
                let m = self.mount(mount)?;
                if !m.is_btrfs()? {
                    return Err(FsError::new(libc::EINVAL, "not a btrfs filesystem"));
                }
                let (default, list) = super::btrfs::subvolumes(&m.root_dir()?)
                    .map_err(|e| FsError::new(libc::EIO, e))?;
                AgentReply::Subvolumes(Subvolumes { default, list })
            }
            R::Sync { mount } => {
                let m = self.mount(mount)?;
                let root = File::open(proc_path(m.fd(m.root)?)).map_err(|e| from_io(e, "sync"))?;
                // SAFETY: syncfs on an open directory.
                check(unsafe { libc::syncfs(root.as_raw_fd()) }, "syncfs")?;
                AgentReply::Done
            }
            R::PowerOff => power_off(),
            R::Resume {
                sec,
                nsec,
                seed,
                serials,
            } => {
                resume(sec, nsec, &seed, &serials)?;
                AgentReply::Done
            }
        })
    }
}
