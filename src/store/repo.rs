//! The repository directory: where images and volumes live, their names and metadata, and
//! the rules between them (an image is not removed while volumes use it; a volume is opened
//! for writing by one process at a time). Layout and version: see `format.rs`.
//!
//! Names appear and disappear atomically: new images and volumes are built in `tmp/` and
//! renamed into place under the repository lock; removals rename out before deleting.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, MutexGuard};
use serde::{Deserialize, Serialize};

use super::backend::{FsDir, FsFile};
use super::cache::ChunkCache;
use super::delta::{self, Delta};
use super::device::BlockDevice;
use super::error::{Result, StoreError};
use super::format::{CHUNK, FORMAT_VERSION};
use super::image::{Image, ImageWriter};
use super::names;
use super::ranges;
use super::snapshot::{PinDir, Snapshot, PINS_DIR};
use super::transfer::{self, Progress, SourceFormat};
use super::volume::{CloseGuard, Closing, Volume};

const DESCRIPTOR: &str = "strata-repo.json";
const FORMAT_NAME: &str = "strata-repo";
const IMAGE_META: &str = "image.json";
const VOLUME_META: &str = "volume.json";

/// Default size of the shared image-chunk cache.
pub const DEFAULT_CACHE_BYTES: u64 = 256 << 20;

#[derive(Debug, Clone)]
pub struct RepoOptions {
    /// Bytes of golden-image chunks cached in memory, shared by all volumes. 0 disables.
    pub cache_bytes: u64,
}

impl Default for RepoOptions {
    fn default() -> Self {
        RepoOptions {
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Descriptor {
    format: String,
    version: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageMeta {
    pub name: String,
    pub virtual_size: u64,
    pub stored_bytes: u64,
    pub chunk_size: u64,
    pub created: u64,
    pub source: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeMeta {
    pub name: String,
    pub size: u64,
    pub image: Option<String>,
    pub created: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImageInfo {
    #[serde(flatten)]
    pub meta: ImageMeta,
    pub volumes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VolumeInfo {
    #[serde(flatten)]
    pub meta: VolumeMeta,
    /// Bytes the volume's own delta takes on disk.
    pub delta_bytes: u64,
}

pub struct Repository {
    root: PathBuf,
    cache: Arc<ChunkCache>,
    images: Mutex<HashMap<String, Weak<Image>>>,
    volumes: Mutex<HashMap<String, OpenVolume>>,
}

/// A volume instance this process opened: reachable while any caller holds it, then
/// closing (its last user flushes it and closes its files) until `closing` is done.
struct OpenVolume {
    volume: Weak<Volume>,
    closing: Arc<Closing>,
}

static STAGE_SEQ: AtomicU64 = AtomicU64::new(0);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).expect("metadata serializes");
    bytes.push(b'\n');
    let mut f = File::create(path).map_err(|e| StoreError::io("creating", path, e))?;
    f.write_all(&bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| StoreError::io("writing", path, e))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let bytes = fs::read(path).map_err(|e| StoreError::io("reading", path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
        path: path.to_path_buf(),
        detail: format!("unreadable metadata: {e}"),
    })
}

fn sync_dir(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io("syncing directory", path, e))
}

/// flock(2) without blocking; false when another holder conflicts.
fn try_flock(f: &File, exclusive: bool) -> std::io::Result<bool> {
    let op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    } | libc::LOCK_NB;
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
        Ok(true)
    } else {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(false)
        } else {
            Err(e)
        }
    }
}

/// Who holds a flock on `f`, from /proc/locks: "strata process 1234 (strata serve ...)".
/// Falls back to a general description where /proc says nothing (another namespace).
fn lock_holders(f: &File) -> String {
    use std::os::unix::fs::MetadataExt;
    let general = || "another strata process (a mount, a server or a filesystem worker)".into();
    let (Ok(meta), Ok(locks)) = (f.metadata(), fs::read_to_string("/proc/locks")) else {
        return general();
    };
    // /proc/locks: "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"; the device is
    // MAJOR:MINOR in hex, the inode in decimal.
    let dev = meta.dev();
    let want = format!(
        "{:02x}:{:02x}:{}",
        libc::major(dev),
        libc::minor(dev),
        meta.ino()
    );
    let me = std::process::id();
    let mut who: Vec<String> = locks
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let (kind, pid, id) = (*w.get(1)?, *w.get(4)?, *w.get(5)?);
            (kind == "FLOCK" && id == want).then_some(pid.parse::<u32>().ok()?)
        })
        .filter(|&pid| pid != me)
        .map(|pid| {
            let cmd = fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    let words: Vec<String> = c
                        .split(|&b| b == 0)
                        .filter(|w| !w.is_empty())
                        .take(4)
                        .map(|w| String::from_utf8_lossy(w).into_owned())
                        .collect();
                    words.join(" ")
                })
                .unwrap_or_default();
            format!("process {pid} ({cmd})")
        })
        .collect();
    who.sort();
    who.dedup();
    if who.is_empty() {
        general()
    } else {
        who.join(", ")
    }
}

/// A volume made but not yet named (see `Repository::stage_volume`).
pub struct StagedVolume {
    stage: Stage,
    meta: VolumeMeta,
}

impl StagedVolume {
    /// Where it lives until it is published.
    pub fn dir(&self) -> &Path {
        &self.stage.path
    }

    pub fn meta(&self) -> &VolumeMeta {
        &self.meta
    }
}

/// A directory in `tmp/` that is removed unless `keep` is called.
struct Stage {
    path: PathBuf,
    keep: bool,
}

impl Drop for Stage {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

impl Repository {
    /// Opens the repository at `root`, creating it if the directory is missing or empty.
    pub fn open(root: impl Into<PathBuf>, opts: RepoOptions) -> Result<Repository> {
        let root: PathBuf = root.into();
        let desc_path = root.join(DESCRIPTOR);
        if desc_path.exists() {
            let d: Descriptor = read_json(&desc_path)?;
            if d.format != FORMAT_NAME {
                return Err(StoreError::Corrupt {
                    path: desc_path,
                    detail: format!("not a strata repository (format {:?})", d.format),
                });
            }
            if d.version > FORMAT_VERSION {
                return Err(StoreError::NewerFormat {
                    path: desc_path,
                    found: d.version,
                    supported: FORMAT_VERSION,
                });
            }
        } else {
            fs::create_dir_all(&root).map_err(|e| StoreError::io("creating", &root, e))?;
            let non_empty = fs::read_dir(&root)
                .map_err(|e| StoreError::io("reading", &root, e))?
                .next()
                .is_some();
            if non_empty {
                return Err(StoreError::InvalidInput(format!(
                    "{} is not a strata repository (no {DESCRIPTOR}) and is not empty; use an empty or new directory",
                    root.display()
                )));
            }
            fs::create_dir_all(root.join("tmp"))
                .map_err(|e| StoreError::io("creating", root.join("tmp"), e))?;
            let tmp = root.join(format!("tmp/{DESCRIPTOR}"));
            write_json(
                &tmp,
                &Descriptor {
                    format: FORMAT_NAME.into(),
                    version: FORMAT_VERSION,
                },
            )?;
            fs::rename(&tmp, &desc_path).map_err(|e| StoreError::io("creating", &desc_path, e))?;
            sync_dir(&root)?;
        }
        // Recreate what may be missing (a repository copied without its empty directories).
        for sub in ["images", "volumes", "tmp"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(|e| StoreError::io("creating", &p, e))?;
        }
        let repo = Repository {
            cache: Arc::new(ChunkCache::new(opts.cache_bytes, CHUNK)),
            root,
            images: Mutex::new(HashMap::new()),
            volumes: Mutex::new(HashMap::new()),
        };
        repo.clean_stale_staging();
        Ok(repo)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The shared image-chunk cache (for stats).
    pub fn cache(&self) -> &Arc<ChunkCache> {
        &self.cache
    }

    fn image_dir(&self, name: &str) -> PathBuf {
        self.root.join("images").join(name)
    }

    fn volume_dir(&self, name: &str) -> PathBuf {
        self.root.join("volumes").join(name)
    }

    /// Staging directories are named `<pid>-<seq>-<what>`; those of dead processes are junk.
    fn clean_stale_staging(&self) {
        let Ok(rd) = fs::read_dir(self.root.join("tmp")) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid: Option<i32> = name.split('-').next().and_then(|p| p.parse().ok());
            // SAFETY: kill with signal 0 only checks for existence.
            let alive = pid.is_some_and(
                |p| unsafe { libc::kill(p, 0) } == 0 || p == std::process::id() as i32,
            );
            if pid.is_some() && !alive {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }

    fn stage(&self, what: &str) -> Result<Stage> {
        let path = self.root.join("tmp").join(format!(
            "{}-{}-{what}",
            std::process::id(),
            STAGE_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&path).map_err(|e| StoreError::io("creating", &path, e))?;
        Ok(Stage { path, keep: false })
    }

    /// Holds the repository lock: names are added and removed one at a time.
    fn lock_names(&self) -> Result<File> {
        let p = self.root.join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| StoreError::io("opening", &p, e))?;
        // SAFETY: flock on an fd we own; blocks until the lock is ours.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(StoreError::io(
                "locking",
                &p,
                std::io::Error::last_os_error(),
            ));
        }
        Ok(f)
    }

    fn list_names(&self, sub: &str) -> Result<Vec<String>> {
        let dir = self.root.join(sub);
        let mut names: Vec<String> = fs::read_dir(&dir)
            .map_err(|e| StoreError::io("listing", &dir, e))?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| names::validate(n).is_ok())
            .collect();
        names.sort();
        Ok(names)
    }

    // ---- images ----

    pub fn list_images(&self) -> Result<Vec<ImageMeta>> {
        self.list_names("images")?
            .iter()
            .map(|n| self.image_meta(n))
            .collect()
    }

    pub fn image_meta(&self, name: &str) -> Result<ImageMeta> {
        names::validate(name)?;
        let dir = self.image_dir(name);
        if !dir.is_dir() {
            return Err(StoreError::NotFound {
                kind: "image",
                name: name.into(),
            });
        }
        read_json(&dir.join(IMAGE_META))
    }

    /// Volumes made from image `name`.
    pub fn image_users(&self, name: &str) -> Result<Vec<String>> {
        Ok(self
            .list_volumes()?
            .into_iter()
            .filter(|v| v.image.as_deref() == Some(name))
            .map(|v| v.name)
            .collect())
    }

    pub fn image_info(&self, name: &str) -> Result<ImageInfo> {
        Ok(ImageInfo {
            meta: self.image_meta(name)?,
            volumes: self.image_users(name)?,
        })
    }

    /// Opens image `name`, sharing one instance per process.
    pub fn open_image(&self, name: &str) -> Result<Arc<Image>> {
        names::validate(name)?;
        let mut images = self.images.lock();
        if let Some(img) = images.get(name).and_then(Weak::upgrade) {
            return Ok(img);
        }
        let dir = self.image_dir(name);
        if !dir.is_dir() {
            return Err(StoreError::NotFound {
                kind: "image",
                name: name.into(),
            });
        }
        let img = Arc::new(Image::open(&dir, name, self.cache.clone())?);
        images.insert(name.to_string(), Arc::downgrade(&img));
        Ok(img)
    }

    /// Imports the disk image at `src` as golden image `name` (references to other files
    /// refused: see `import_image_with`).
    pub fn import_image(
        &self,
        name: &str,
        src: &Path,
        format: SourceFormat,
        progress: Progress,
    ) -> Result<ImageMeta> {
        let opts = transfer::ImportOptions {
            format,
            allow_backing: false,
        };
        self.import_image_with(name, src, &opts, progress)
    }

    /// Imports the disk image at `src` as golden image `name`. The source is checked (and
    /// converted) by `transfer::prepare_source`; a failure leaves nothing behind.
    pub fn import_image_with(
        &self,
        name: &str,
        src: &Path,
        opts: &transfer::ImportOptions,
        progress: Progress,
    ) -> Result<ImageMeta> {
        self.check_new_image(name)?;
        let stage = self.stage("image")?;
        let transfer::Prepared { raw, len } = transfer::prepare_source(src, opts, &stage.path)?;
        let mut w = ImageWriter::create(&stage.path, len, CHUNK)?;
        transfer::copy_raw_into(&raw, len, &mut w, CHUNK, progress)?;
        let stored_bytes = w.finish()?;
        if raw != src {
            let _ = fs::remove_file(&raw);
        }
        self.add_staged_image(stage, name, len, stored_bytes, src.display().to_string())
    }

    /// Imports the raw disk read from `input` to its end as golden image `name`, stored as
    /// it arrives: for an upload, whose length is known only at its end and which is never
    /// spooled. `source` names the input in errors and in the image's record;
    /// `progress(bytes so far)`. Staged like any import: a failure (the input's too) leaves
    /// nothing behind.
    pub fn import_raw_stream(
        &self,
        name: &str,
        input: &mut dyn std::io::Read,
        source: &str,
        progress: &dyn Fn(u64),
    ) -> Result<ImageMeta> {
        self.check_new_image(name)?;
        let stage = self.stage("image")?;
        let mut w = ImageWriter::create(&stage.path, 0, CHUNK)?;
        let len = transfer::copy_stream_into(input, source, &mut w, CHUNK, progress)?;
        let stored_bytes = w.finish()?;
        self.add_staged_image(stage, name, len, stored_bytes, source.to_string())
    }

    /// Refuses `name` for a new image: not a valid name, or an image of that name exists.
    /// (`add_staged_image` checks again under the lock.)
    fn check_new_image(&self, name: &str) -> Result<()> {
        names::validate(name)?;
        if self.image_dir(name).exists() {
            return Err(StoreError::Exists {
                kind: "image",
                name: name.into(),
            });
        }
        Ok(())
    }

    /// Writes the record of the image staged in `stage` (`virtual_size` bytes, of which
    /// `stored_bytes` stored, read from `source`) and renames it into place as `name` under
    /// the repository lock: the image appears whole or not at all.
    fn add_staged_image(
        &self,
        mut stage: Stage,
        name: &str,
        virtual_size: u64,
        stored_bytes: u64,
        source: String,
    ) -> Result<ImageMeta> {
        let meta = ImageMeta {
            name: name.into(),
            virtual_size,
            stored_bytes,
            chunk_size: CHUNK as u64,
            created: now(),
            source,
        };
        let name = meta.name.clone();
        write_json(&stage.path.join(IMAGE_META), &meta)?;
        let _lock = self.lock_names()?;
        let dest = self.image_dir(&name);
        if dest.exists() {
            return Err(StoreError::Exists {
                kind: "image",
                name,
            });
        }
        fs::rename(&stage.path, &dest).map_err(|e| StoreError::io("adding", &dest, e))?;
        stage.keep = true;
        sync_dir(&self.root.join("images"))?;
        Ok(meta)
    }

    /// Stores the bytes of `device` in `keep` (byte ranges; merged and widened to whole
    /// chunks here) as new golden image `name`; everything else reads as zeros in the
    /// image. Staged and renamed into place like any import: a failure leaves nothing.
    /// This is how a capture stores only the blocks the filesystems use.
    pub fn import_image_from_device(
        &self,
        name: &str,
        device: &dyn BlockDevice,
        keep: &[(u64, u64)],
        progress: Progress,
    ) -> Result<ImageMeta> {
        self.check_new_image(name)?;
        let len = device.len();
        transfer::check_disk_size(len, &device.describe())?;
        let stage = self.stage("image")?;
        let mut w = ImageWriter::create(&stage.path, len, CHUNK)?;
        ranges::copy_ranges_into(device, keep, &mut w, CHUNK, progress)?;
        let stored_bytes = w.finish()?;
        self.add_staged_image(stage, name, len, stored_bytes, device.describe())
    }

    /// A fresh directory in the repository's `tmp/` for scratch files (an overlay): the
    /// caller removes it; if the process dies first, the next `Repository::open` does.
    pub fn scratch_dir(&self, what: &str) -> Result<PathBuf> {
        let mut stage = self.stage(what)?;
        stage.keep = true;
        Ok(stage.path.clone())
    }

    /// Removes image `name`; refused while any volume depends on it.
    pub fn remove_image(&self, name: &str) -> Result<()> {
        self.image_meta(name)?;
        let _lock = self.lock_names()?;
        let users = self.image_users(name)?;
        if !users.is_empty() {
            return Err(StoreError::InUse {
                what: format!("image {name:?}"),
                users: format!("volume(s) {}", users.join(", ")),
                hint: "remove those volumes first",
            });
        }
        self.images.lock().remove(name);
        self.remove_dir_atomically(&self.image_dir(name), "rm-image")
    }

    fn remove_dir_atomically(&self, dir: &Path, what: &str) -> Result<()> {
        let grave = self.root.join("tmp").join(format!(
            "{}-{}-{what}",
            std::process::id(),
            STAGE_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        fs::rename(dir, &grave).map_err(|e| StoreError::io("removing", dir, e))?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        fs::remove_dir_all(&grave).map_err(|e| StoreError::io("removing", &grave, e))
    }

    pub fn export_image(&self, name: &str, dest: &Path, progress: Progress) -> Result<()> {
        let img = self.open_image(name)?;
        let reader = format!("export of image {name:?}");
        let cs = img.chunk_size() as u64;
        transfer::export_raw(
            dest,
            img.len(),
            &|buf, off| img.read_at(buf, off, &reader),
            &|off, len| (off / cs..(off + len).div_ceil(cs)).any(|c| img.chunk_is_stored(c)),
            progress,
        )
    }

    // ---- volumes ----

    pub fn list_volumes(&self) -> Result<Vec<VolumeMeta>> {
        let mut out = Vec::new();
        for n in self.list_names("volumes")? {
            match self.volume_meta(&n) {
                Ok(m) => out.push(m),
                // Removed between listing and reading: not an error for a listing.
                Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    pub fn volume_meta(&self, name: &str) -> Result<VolumeMeta> {
        names::validate(name)?;
        let dir = self.volume_dir(name);
        if !dir.is_dir() {
            return Err(StoreError::NotFound {
                kind: "volume",
                name: name.into(),
            });
        }
        read_json(&dir.join(VOLUME_META))
    }

    pub fn volume_info(&self, name: &str) -> Result<VolumeInfo> {
        let meta = self.volume_meta(name)?;
        let data = self.volume_dir(name).join(delta::DATA_FILE);
        let delta_bytes = fs::metadata(&data)
            .map(|m| m.blocks() * 512)
            .map_err(|e| StoreError::io("reading", &data, e))?;
        Ok(VolumeInfo { meta, delta_bytes })
    }

    /// Creates volume `name`: a clone of `from` (no data copied) or an empty volume.
    /// `size` defaults to the image's; a clone may grow, never shrink.
    pub fn create_volume(
        &self,
        name: &str,
        from: Option<&str>,
        size: Option<u64>,
    ) -> Result<VolumeMeta> {
        let staged = self.stage_volume(name, from, size)?;
        self.publish_volume(staged)
    }

    /// Makes volume `name` as `create_volume` does, but out of sight: it lives in the
    /// repository's `tmp/` until `publish_volume` gives it its name, and is removed if the
    /// `StagedVolume` is dropped or the process dies first (the next `open` of the
    /// repository clears it). A deployment builds its volume this way, so that no
    /// half-made volume is ever visible.
    pub fn stage_volume(
        &self,
        name: &str,
        from: Option<&str>,
        size: Option<u64>,
    ) -> Result<StagedVolume> {
        names::validate(name)?;
        let image_size = match from {
            Some(img) => Some(self.image_meta(img)?.virtual_size),
            None => None,
        };
        let size = match (size, image_size) {
            (Some(s), Some(i)) if s < i => {
                return Err(StoreError::InvalidInput(format!(
                    "size {s} is smaller than image {:?} ({i} bytes); a clone can grow, not shrink",
                    from.unwrap_or_default()
                )))
            }
            (Some(s), _) => s,
            (None, Some(i)) => i,
            (None, None) => {
                return Err(StoreError::InvalidInput(
                    "an empty volume needs --size".into(),
                ))
            }
        };
        if size == 0 || size % 512 != 0 {
            return Err(StoreError::InvalidInput(format!(
                "size {size} is not a positive multiple of 512 bytes"
            )));
        }
        transfer::check_disk_size(size, &format!("volume {name:?}"))?;
        if self.volume_dir(name).exists() {
            return Err(StoreError::Exists {
                kind: "volume",
                name: name.into(),
            });
        }
        let stage = self.stage("volume")?;
        let meta = VolumeMeta {
            name: name.into(),
            size,
            image: from.map(str::to_string),
            created: now(),
        };
        write_json(&stage.path.join(VOLUME_META), &meta)?;
        Delta::create(
            Arc::new(FsDir::new(&stage.path)),
            format!("volume {name:?}"),
        )?;
        Ok(StagedVolume { stage, meta })
    }

    /// Gives a staged volume its name, atomically; `Exists` if the name was taken
    /// meanwhile (the staged volume is then removed).
    pub fn publish_volume(&self, mut staged: StagedVolume) -> Result<VolumeMeta> {
        let name = staged.meta.name.clone();
        let _lock = self.lock_names()?;
        if let Some(img) = &staged.meta.image {
            // The image might have been removed while we staged.
            self.image_meta(img)?;
        }
        let dest = self.volume_dir(&name);
        if dest.exists() {
            return Err(StoreError::Exists {
                kind: "volume",
                name,
            });
        }
        fs::rename(&staged.stage.path, &dest).map_err(|e| StoreError::io("adding", &dest, e))?;
        staged.stage.keep = true;
        sync_dir(&self.root.join("volumes"))?;
        Ok(staged.meta.clone())
    }

    /// Opens a staged volume for writing (in the process that will edit it: a worker).
    pub fn open_staged_volume(&self, dir: &Path, name: &str) -> Result<Arc<Volume>> {
        let meta: VolumeMeta = read_json(&dir.join(VOLUME_META))?;
        transfer::check_disk_size(meta.size, &format!("volume {name:?} (volume.json)"))?;
        let data_path = dir.join(delta::DATA_FILE);
        let data =
            FsFile::open(&data_path).map_err(|e| StoreError::io("opening", &data_path, e))?;
        if !try_flock(data.file(), true).map_err(|e| StoreError::io("locking", &data_path, e))? {
            return Err(StoreError::InUse {
                what: format!("volume {name:?} (being made)"),
                users: lock_holders(data.file()),
                hint: "wait for it",
            });
        }
        let base = match &meta.image {
            Some(img) => Some(self.open_image(img)?),
            None => None,
        };
        let delta = Delta::open_with_data(
            Arc::new(FsDir::new(dir)),
            Arc::new(data),
            format!("volume {name:?}"),
        )?;
        Ok(Arc::new(Volume::new(name, meta.size, base, delta, false)))
    }

    /// Opens volume `name`. One process at a time may open a volume for writing (or several
    /// read-only); within a process, all callers share one instance.
    pub fn open_volume(&self, name: &str, read_only: bool) -> Result<Arc<Volume>> {
        let meta = self.volume_meta(name)?;
        // volume.json is a file anyone with access can edit: its size is checked as
        // `create_volume` checks it, so no layer is handed a disk it cannot address.
        transfer::check_disk_size(meta.size, &format!("volume {name:?} (volume.json)"))?;
        if meta.size % 512 != 0 {
            return Err(StoreError::Corrupt {
                path: self.volume_dir(name).join("volume.json"),
                detail: format!("size {} is not a multiple of 512", meta.size),
            });
        }
        let (mut volumes, live) = self.live_volume(name);
        if let Some(v) = live {
            if v.is_read_only() && !read_only {
                return Err(StoreError::InUse {
                    what: format!("volume {name:?}"),
                    users: "a read-only user in this process".into(),
                    hint: "close it first",
                });
            }
            return Ok(v);
        }
        let dir = self.volume_dir(name);
        let data_path = dir.join(delta::DATA_FILE);
        // One descriptor per open volume: its data file, which also carries the lock that
        // keeps other processes out (flock: one writer, or readers only).
        // A read-only open writes nothing: files are opened for reading, none is created.
        let data = if read_only {
            FsFile::open_read_only(&data_path)
        } else {
            FsFile::open(&data_path)
        }
        .map_err(|e| StoreError::io("opening", &data_path, e))?;
        if !try_flock(data.file(), !read_only)
            .map_err(|e| StoreError::io("locking", &data_path, e))?
        {
            return Err(StoreError::InUse {
                what: format!("volume {name:?}"),
                users: lock_holders(data.file()),
                hint: "stop it first, or work through it",
            });
        }
        let base = match &meta.image {
            Some(img) => Some(self.open_image(img)?),
            None => None,
        };
        let store_dir = if read_only {
            FsDir::read_only(&dir)
        } else {
            FsDir::new(&dir)
        };
        let mut delta = Delta::open_with_data(
            Arc::new(store_dir),
            Arc::new(data),
            format!("volume {name:?}"),
        )?;
        if !read_only {
            // Snapshots taken now or later pin slots this writer must not reuse.
            delta.set_pins(Arc::new(PinDir::new(dir.join(PINS_DIR))))?;
        }
        let closing = Arc::new(Closing::default());
        let v = Arc::new(
            Volume::new(name, meta.size, base, delta, read_only)
                .signal_close(CloseGuard(closing.clone())),
        );
        volumes.insert(
            name.to_string(),
            OpenVolume {
                volume: Arc::downgrade(&v),
                closing,
            },
        );
        Ok(v)
    }

    /// The instance of volume `name` open in this process, if any, with the table locked.
    /// An instance whose last user has let go but which is still flushing and closing its
    /// files (it still holds the volume's lock) is waited for, so that closing a volume and
    /// opening it again at once, from any two threads, never finds it busy.
    fn live_volume(
        &self,
        name: &str,
    ) -> (
        MutexGuard<'_, HashMap<String, OpenVolume>>,
        Option<Arc<Volume>>,
    ) {
        loop {
            let volumes = self.volumes.lock();
            let closing = match volumes.get(name) {
                None => return (volumes, None),
                Some(o) => match o.volume.upgrade() {
                    Some(v) => return (volumes, Some(v)),
                    None if o.closing.is_done() => return (volumes, None),
                    None => o.closing.clone(),
                },
            };
            drop(volumes);
            closing.wait();
        }
    }

    /// A point-in-time, read-only view of volume `name`'s last committed state, taken
    /// without copying data and without any lock on the volume: it may be open for writing
    /// in this or another process, which goes on writing and flushing (see `snapshot.rs`).
    /// The view lasts until the `Snapshot` is dropped.
    pub fn snapshot_volume(&self, name: &str) -> Result<Snapshot> {
        let meta = self.volume_meta(name)?;
        transfer::check_disk_size(meta.size, &format!("volume {name:?} (volume.json)"))?;
        let base = match &meta.image {
            Some(img) => Some(self.open_image(img)?),
            None => None,
        };
        Snapshot::take(&self.volume_dir(name), name, meta.size, base)
    }

    /// Opens snapshot `id` of volume `name`, taken (and still held) by another process.
    pub fn open_snapshot(&self, name: &str, id: &str) -> Result<Snapshot> {
        names::validate(name)?;
        let dir = self.volume_dir(name);
        if !dir.is_dir() {
            return Err(StoreError::NotFound {
                kind: "volume",
                name: name.into(),
            });
        }
        Snapshot::open(&dir, name, id, |img| self.open_image(img))
    }

    /// Removes volume `name`; refused while it is open here or in another process.
    pub fn remove_volume(&self, name: &str) -> Result<()> {
        self.volume_meta(name)?;
        let _lock = self.lock_names()?;
        let in_use = || StoreError::InUse {
            what: format!("volume {name:?}"),
            users: "an open mount, server or export".into(),
            hint: "stop it first",
        };
        if self.live_volume(name).1.is_some() {
            return Err(in_use());
        }
        let dir = self.volume_dir(name);
        let data = dir.join(delta::DATA_FILE);
        let f = File::open(&data).map_err(|e| StoreError::io("opening", &data, e))?;
        if !try_flock(&f, true).map_err(|e| StoreError::io("locking", &data, e))? {
            return Err(StoreError::InUse {
                what: format!("volume {name:?}"),
                users: lock_holders(&f),
                hint: "stop it first",
            });
        }
        self.remove_dir_atomically(&dir, "rm-volume")
    }

    pub fn export_volume(&self, name: &str, dest: &Path, progress: Progress) -> Result<()> {
        let v = self.open_volume(name, true)?;
        transfer::export_raw(
            dest,
            v.len(),
            &|buf, off| v.read_at(buf, off),
            &|_, _| true,
            progress,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, Write};
    use std::process::{Command, Stdio};

    fn repo_with_volume() -> (tempfile::TempDir, Repository) {
        let tmp = tempfile::tempdir().unwrap();
        let repo = Repository::open(tmp.path().join("repo"), RepoOptions::default()).unwrap();
        repo.create_volume("v", None, Some(1 << 20)).unwrap();
        (tmp, repo)
    }

    /// Every file of the volume's directory with its bytes.
    fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut all: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                let b = fs::read(&p).unwrap();
                (p, b)
            })
            .collect();
        all.sort();
        all
    }

    #[test]
    fn a_volume_closed_by_one_thread_opens_at_once_in_another() {
        // Each round, one thread lets go of the last handle (its drop flushes a dirty
        // delta, with syncs) while the other opens the volume: the opener must wait for
        // the closing instance to release the volume's lock, not report it busy.
        let (_tmp, repo) = repo_with_volume();
        let repo = Arc::new(repo);
        let workers: Vec<_> = (0..2u8)
            .map(|t| {
                let repo = repo.clone();
                std::thread::spawn(move || {
                    for round in 0..200u32 {
                        let v = repo.open_volume("v", false).unwrap_or_else(|e| {
                            panic!("thread {t}, round {round}: {e}");
                        });
                        let block = [t.wrapping_add(round as u8); 4096];
                        v.write_at(&block, u64::from(t) * 4096).unwrap();
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        let v = repo.open_volume("v", true).unwrap();
        let mut last = vec![0u8; 8192];
        v.read_at(&mut last, 0).unwrap();
        assert_eq!(last[..4096], [199u8; 4096]);
        assert_eq!(last[4096..], [200u8; 4096]);
    }

    #[test]
    fn a_read_only_open_writes_nothing_not_even_a_torn_map_tail() {
        let (_tmp, repo) = repo_with_volume();
        {
            let v = repo.open_volume("v", false).unwrap();
            v.write_at(&[7u8; 4096], 8192).unwrap();
            v.flush().unwrap();
        }
        let dir = repo.volume_dir("v");
        // A torn append at the end of both map files, as a crash mid-commit leaves it.
        for m in MAP_FILES_FOR_TEST {
            let mut f = OpenOptions::new().append(true).open(dir.join(m)).unwrap();
            f.write_all(&[0xAB; 37]).unwrap();
        }
        let before = snapshot(&dir);
        {
            let v = repo.open_volume("v", true).unwrap();
            let mut b = [0u8; 4096];
            v.read_at(&mut b, 8192).unwrap();
            assert_eq!(b, [7u8; 4096]);
        }
        assert_eq!(snapshot(&dir), before, "read-only open changed a file");
        // The next writer cuts the tail as before.
        drop(repo.open_volume("v", false).unwrap());
        assert_ne!(snapshot(&dir), before);
    }

    const MAP_FILES_FOR_TEST: [&str; 2] = ["map.0", "map.1"];

    #[test]
    fn a_volume_held_by_another_process_names_that_process() {
        if Command::new("flock").arg("--version").output().is_err() {
            eprintln!("note: flock(1) missing (util-linux); skipped");
            return;
        }
        let (_tmp, repo) = repo_with_volume();
        let data = repo.volume_dir("v").join(delta::DATA_FILE);
        // flock(1) holds the lock until its stdin closes; it says when it has it.
        let mut holder = Command::new("flock")
            .arg("-x")
            .arg(&data)
            .args(["-c", "echo locked; read _"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(holder.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "locked");
        let e = repo.open_volume("v", false).err().unwrap().to_string();
        let e2 = repo.remove_volume("v").unwrap_err().to_string();
        drop(holder.stdin.take());
        holder.wait().unwrap();
        // flock(1) forks its command; the lock's holder is one of the two processes.
        for e in [e, e2] {
            assert!(
                e.contains("in use by process ") && e.contains("flock"),
                "{e}"
            );
        }
        assert!(repo.open_volume("v", false).is_ok());
    }
}

#[cfg(test)]
mod volume_json_tests {
    use super::*;

    #[test]
    fn a_hand_edited_volume_size_beyond_the_cap_is_refused_at_open() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = Repository::open(tmp.path().join("repo"), RepoOptions::default()).unwrap();
        repo.create_volume("v", None, Some(1 << 20)).unwrap();
        let path = repo.volume_dir("v").join(VOLUME_META);
        let text = fs::read_to_string(&path).unwrap();
        let edited = text.replace("1048576", "9223372036854775808");
        assert_ne!(text, edited, "{text}");
        fs::write(&path, edited).unwrap();
        let e = repo.open_volume("v", true).err().unwrap().to_string();
        assert!(e.contains("16 TiB - 1 MiB"), "{e}");
    }
}
