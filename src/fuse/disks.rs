//! The disks behind the mount's files: volumes and images opened lazily on first open(),
//! kept while any handle uses them, flushed and dropped when the last handle closes; and
//! each disk's partition table, read once and cached.
//!
//! Locks here guard only the tables of what is open; no data moves under them (reads and
//! writes go through the `Disk` a handle holds). The partition cache is keyed by name and
//! checked against the disk's creation time and size, so a disk removed and made again
//! under the same name is read afresh; writes through a whole-disk file mark its entry stale.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::tree::Kind;
use crate::disk::{self, Partition};
use crate::store::{Repository, SharedDevice, StoreError};

/// A volume or an image, as the mount's handles hold it.
pub(crate) type Disk = SharedDevice;

/// Identity of a disk's current incarnation: (creation time, size) from its metadata.
pub(crate) type Stamp = (u64, u64);

struct Open {
    disk: Disk,
    handles: usize,
}

struct Cached {
    stamp: Stamp,
    parts: Arc<Vec<Partition>>,
    stale: bool,
}

pub(crate) struct Disks {
    repo: Arc<Repository>,
    read_only: bool,
    open: Mutex<HashMap<(Kind, String), Open>>,
    tables: Mutex<HashMap<(Kind, String), Cached>>,
}

impl Disks {
    pub(crate) fn new(repo: Arc<Repository>, read_only: bool) -> Disks {
        Disks {
            repo,
            read_only,
            open: Mutex::new(HashMap::new()),
            tables: Mutex::new(HashMap::new()),
        }
    }

    fn open_disk(&self, kind: Kind, name: &str, read_only: bool) -> Result<Disk, StoreError> {
        Ok(match kind {
            Kind::Volume => self.repo.open_volume(name, read_only)? as Disk,
            Kind::Image => self.repo.open_image(name)? as Disk,
        })
    }

    /// Takes a handle on disk `name`, opening it if this is the first.
    pub(crate) fn acquire(&self, kind: Kind, name: &str) -> Result<Disk, StoreError> {
        let mut open = self.open.lock();
        if let Some(o) = open.get_mut(&(kind, name.to_string())) {
            o.handles += 1;
            return Ok(o.disk.clone());
        }
        let disk = self.open_disk(kind, name, self.read_only)?;
        open.insert(
            (kind, name.to_string()),
            Open {
                disk: disk.clone(),
                handles: 1,
            },
        );
        Ok(disk)
    }

    /// Gives a handle back; the last one flushes the disk and lets it close.
    pub(crate) fn release(&self, kind: Kind, name: &str) -> Result<(), StoreError> {
        let last = {
            let mut open = self.open.lock();
            let key = (kind, name.to_string());
            match open.get_mut(&key) {
                Some(o) if o.handles > 1 => {
                    o.handles -= 1;
                    None
                }
                Some(_) => open.remove(&key).map(|o| o.disk),
                None => None,
            }
        };
        match last {
            Some(disk) => disk.flush(),
            None => Ok(()),
        }
    }

    /// Flushes and closes every open disk (the mount is going away).
    pub(crate) fn close_all(&self) {
        let all: Vec<_> = self.open.lock().drain().collect();
        for ((_, name), o) in all {
            if let Err(e) = o.disk.flush() {
                tracing::error!(disk = %name, error = %e, "flush at unmount failed");
            }
        }
    }

    /// The partitions of disk `name` (empty if it has no table or it cannot be read now).
    pub(crate) fn partitions(&self, kind: Kind, name: &str, stamp: Stamp) -> Arc<Vec<Partition>> {
        let key = (kind, name.to_string());
        if let Some(c) = self.tables.lock().get(&key) {
            if c.stamp == stamp && !c.stale {
                return c.parts.clone();
            }
        }
        match self.scan(kind, name) {
            Ok(parts) => {
                let parts = Arc::new(parts);
                self.tables.lock().insert(
                    key,
                    Cached {
                        stamp,
                        parts: parts.clone(),
                        stale: false,
                    },
                );
                parts
            }
            Err(e) => {
                // Not cached: the disk may be free (or repaired) next time.
                tracing::debug!(disk = %name, error = %e, "partition table not read");
                Arc::new(Vec::new())
            }
        }
    }

    fn scan(&self, kind: Kind, name: &str) -> Result<Vec<Partition>, String> {
        // Under the open-table lock so that a concurrent open() never meets the read-only
        // instance this may create.
        let open = self.open.lock();
        let disk = match open.get(&(kind, name.to_string())) {
            Some(o) => o.disk.clone(),
            None => self
                .open_disk(kind, name, true)
                .map_err(|e| e.to_string())?,
        };
        match disk::read_partitions(disk.as_ref()) {
            Ok(p) => Ok(p),
            Err(e @ disk::DiskError::Reading { .. }) => Err(e.to_string()),
            Err(e) => {
                // A table that does not parse is a fact about the disk, not a passing state:
                // the whole disk is still served, with no partition files.
                tracing::warn!(disk = %name, error = %e, "partition table ignored");
                Ok(Vec::new())
            }
        }
    }

    /// A write through the whole-disk file may have changed its partition table.
    pub(crate) fn mark_stale(&self, kind: Kind, name: &str) {
        if let Some(c) = self.tables.lock().get_mut(&(kind, name.to_string())) {
            c.stale = true;
        }
    }

    /// Drops cached tables of disks that no longer exist.
    pub(crate) fn retain_tables(&self, kind: Kind, present: &dyn Fn(&str) -> bool) {
        self.tables
            .lock()
            .retain(|(k, name), _| *k != kind || present(name));
    }
}
