//! Storage backends for a volume's delta layer: the few file operations the commit protocol
//! needs, behind a trait so that tests can swap the real filesystem for an in-memory backend
//! that "crashes" — drops or tears everything written since the last sync.
//!
//! This file owns no format and no policy; `delta.rs` decides what is written where and when
//! it is synced.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::sync::atomic::{AtomicI64, Ordering};

use parking_lot::Mutex;

/// One file of a delta layer.
#[allow(clippy::len_without_is_empty)] // a file's length, not a collection's
pub trait StoreFile: Send + Sync {
    /// Reads exactly `buf.len()` bytes; bytes past the end of the file read as zeros.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// `read_at`, but fails with `WouldBlock` rather than wait for the disk (see
    /// `read_nowait`). Backends in memory never wait.
    fn read_at_nowait(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every earlier write and length change durable.
    fn sync(&self) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Gives the space of a byte range back; the range then reads as zeros. Best effort.
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()>;
}

/// The directory holding a delta layer's files.
pub trait StoreDir: Send + Sync {
    /// Opens `name`, creating it empty if it does not exist (a read-only directory opens
    /// existing files for reading only and creates nothing).
    fn open(&self, name: &str) -> io::Result<Arc<dyn StoreFile>>;
    /// Where this directory is, for error messages.
    fn describe(&self) -> PathBuf;
    /// Whether nothing in it may be written (a volume opened read-only).
    fn is_read_only(&self) -> bool {
        false
    }
}

/// The real filesystem.
pub struct FsDir {
    path: PathBuf,
    read_only: bool,
}

impl FsDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FsDir {
            path: path.into(),
            read_only: false,
        }
    }

    /// Files opened through this are opened for reading only; nothing is created.
    pub fn read_only(path: impl Into<PathBuf>) -> Self {
        FsDir {
            path: path.into(),
            read_only: true,
        }
    }
}

impl StoreDir for FsDir {
    fn open(&self, name: &str) -> io::Result<Arc<dyn StoreFile>> {
        let path = self.path.join(name);
        Ok(Arc::new(if self.read_only {
            FsFile::open_read_only(&path)?
        } else {
            FsFile::open(&path)?
        }))
    }
    fn describe(&self) -> PathBuf {
        self.path.clone()
    }
    fn is_read_only(&self) -> bool {
        self.read_only
    }
}

pub struct FsFile {
    file: File,
}

impl FsFile {
    pub fn open(path: &Path) -> io::Result<FsFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        Ok(FsFile { file })
    }

    /// An existing file, for reading only.
    pub fn open_read_only(path: &Path) -> io::Result<FsFile> {
        Ok(FsFile {
            file: File::open(path)?,
        })
    }

    pub fn file(&self) -> &File {
        &self.file
    }
}

/// Reads from the page cache only: as many bytes as the file has at `offset` (fewer than
/// `buf.len()` only at its end), or `WouldBlock` as soon as a part would have to come from
/// the disk. What was read before that is left in `buf`. This lets a caller on an event
/// loop serve a hot read at once and hand a cold one to a thread that may wait.
pub fn read_nowait(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        let iov = libc::iovec {
            iov_base: rest.as_mut_ptr().cast(),
            iov_len: rest.len(),
        };
        // SAFETY: one iovec over memory we borrow mutably, on an fd we own.
        let n = unsafe {
            libc::preadv2(
                file.as_raw_fd(),
                &iov,
                1,
                (offset + done as u64) as libc::off_t,
                libc::RWF_NOWAIT,
            )
        };
        match n {
            0 => break,
            n if n > 0 => done += n as usize,
            _ => {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => {}
                    // Kernels or filesystems without RWF_NOWAIT: treat as "would wait".
                    Some(libc::EAGAIN) | Some(libc::EOPNOTSUPP) => {
                        return Err(io::ErrorKind::WouldBlock.into())
                    }
                    _ => return Err(e),
                }
            }
        }
    }
    Ok(done)
}

impl StoreFile for FsFile {
    fn read_at_nowait(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let n = read_nowait(&self.file, buf, offset)?;
        buf[n..].fill(0);
        Ok(())
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => {
                    buf[done..].fill(0);
                    return Ok(());
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }
    fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        // SAFETY: fallocate on an fd we own, with plain integer arguments.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// An in-memory directory whose files keep a durable image and the writes made since the
/// last sync. `crash` models a power cut: each unsynced write reaches the durable image
/// sector by sector, or not, as a seeded coin decides (so writes can tear).
#[derive(Default, Clone)]
pub struct MemDir {
    files: Arc<Mutex<HashMap<String, Arc<MemFile>>>>,
    /// Mutating operations left before the power goes (negative: unlimited).
    budget: Arc<AtomicI64>,
}

#[derive(Default)]
pub struct MemFile {
    inner: Mutex<MemInner>,
    budget: Arc<AtomicI64>,
}

#[derive(Default, Clone)]
struct MemInner {
    live: Vec<u8>,
    durable: Vec<u8>,
    /// Changes since the last sync, in order: (offset, bytes) or a length change.
    pending: Vec<Pending>,
    /// After a crash the file refuses all I/O, like a device that lost power.
    dead: bool,
}

#[derive(Clone)]
enum Pending {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

/// Sector size at which a crash may tear an unsynced write.
const TEAR_SECTOR: usize = 512;

impl MemDir {
    pub fn new() -> Self {
        let d = Self::default();
        d.budget.store(-1, Ordering::SeqCst);
        d
    }

    /// Lets `ops` more writes, syncs or length changes through, then fails every operation
    /// as if the power had gone (call `crash` afterwards to see what survived).
    pub fn cut_power_after(&self, ops: i64) {
        self.budget.store(ops, Ordering::SeqCst);
    }

    /// Cuts the power: returns a new directory holding what survived. `seed` decides, per
    /// unsynced sector, whether it reached the medium. The old directory's files stop working.
    pub fn crash(&self, seed: u64) -> MemDir {
        let mut rng = SplitMix(seed);
        let budget = Arc::new(AtomicI64::new(-1));
        let files = self.files.lock();
        let mut out = HashMap::new();
        for (name, f) in files.iter() {
            let mut g = f.inner.lock();
            g.dead = true;
            let mut disk = g.durable.clone();
            for p in &g.pending {
                match p {
                    Pending::SetLen(n) => {
                        if rng.coin() {
                            disk.resize(*n as usize, 0);
                        }
                    }
                    Pending::Write(off, data) => {
                        for (i, sector) in data.chunks(TEAR_SECTOR).enumerate() {
                            if rng.coin() {
                                let at = *off as usize + i * TEAR_SECTOR;
                                if disk.len() < at + sector.len() {
                                    disk.resize(at + sector.len(), 0);
                                }
                                disk[at..at + sector.len()].copy_from_slice(sector);
                            }
                        }
                    }
                }
            }
            let inner = MemInner {
                live: disk.clone(),
                durable: disk,
                pending: Vec::new(),
                dead: false,
            };
            out.insert(
                name.clone(),
                Arc::new(MemFile {
                    inner: Mutex::new(inner),
                    budget: budget.clone(),
                }),
            );
        }
        MemDir {
            files: Arc::new(Mutex::new(out)),
            budget,
        }
    }

    /// A file's current (live) content, for tests that damage or inspect it.
    pub fn file(&self, name: &str) -> Option<Arc<MemFile>> {
        self.files.lock().get(name).cloned()
    }
}

impl MemFile {
    /// Flips bits in both the live and the durable image (simulated media damage).
    pub fn corrupt(&self, offset: u64, xor: u8) {
        let mut g = self.inner.lock();
        let o = offset as usize;
        if o < g.live.len() {
            g.live[o] ^= xor;
        }
        if o < g.durable.len() {
            g.durable[o] ^= xor;
        }
    }
}

fn dead() -> io::Error {
    io::Error::other("simulated power loss")
}

impl MemFile {
    /// Takes one mutating operation from the power budget; false once the power is gone.
    fn spend(&self, g: &mut MemInner) -> bool {
        if g.dead {
            return false;
        }
        let left = self.budget.load(Ordering::SeqCst);
        if left == 0 {
            g.dead = true;
            return false;
        }
        if left > 0 {
            self.budget.fetch_sub(1, Ordering::SeqCst);
        }
        true
    }
}

impl StoreDir for MemDir {
    fn open(&self, name: &str) -> io::Result<Arc<dyn StoreFile>> {
        let mut files = self.files.lock();
        let budget = self.budget.clone();
        Ok(files
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(MemFile {
                    inner: Mutex::default(),
                    budget,
                })
            })
            .clone())
    }
    fn describe(&self) -> PathBuf {
        PathBuf::from("<memory>")
    }
}

impl StoreFile for MemFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let g = self.inner.lock();
        if g.dead {
            return Err(dead());
        }
        buf.fill(0);
        let o = offset as usize;
        if o < g.live.len() {
            let n = (g.live.len() - o).min(buf.len());
            buf[..n].copy_from_slice(&g.live[o..o + n]);
        }
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut g = self.inner.lock();
        if !self.spend(&mut g) {
            return Err(dead());
        }
        let o = offset as usize;
        if g.live.len() < o + buf.len() {
            g.live.resize(o + buf.len(), 0);
        }
        g.live[o..o + buf.len()].copy_from_slice(buf);
        g.pending.push(Pending::Write(offset, buf.to_vec()));
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        let mut g = self.inner.lock();
        if !self.spend(&mut g) {
            return Err(dead());
        }
        g.durable = g.live.clone();
        g.pending.clear();
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        let g = self.inner.lock();
        if g.dead {
            return Err(dead());
        }
        Ok(g.live.len() as u64)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut g = self.inner.lock();
        if !self.spend(&mut g) {
            return Err(dead());
        }
        g.live.resize(len as usize, 0);
        g.pending.push(Pending::SetLen(len));
        Ok(())
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut g = self.inner.lock();
        if !self.spend(&mut g) {
            return Err(dead());
        }
        let end = ((offset + len) as usize).min(g.live.len());
        let start = (offset as usize).min(end);
        g.live[start..end].fill(0);
        let zeros = vec![0u8; end - start];
        g.pending.push(Pending::Write(start as u64, zeros));
        Ok(())
    }
}

/// A tiny deterministic generator so crash outcomes are reproducible from a seed.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}
