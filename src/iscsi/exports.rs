//! Exports: which volume is served as which iSCSI target, to which initiators, with which
//! CHAP secrets. Stored in the repository as `exports.json`, replaced atomically (write to a
//! temporary file, fsync, rename) under an flock so concurrent `strata export` calls do not
//! lose each other's changes. The server re-reads the file when its mtime or size changes,
//! so exports take effect without a restart.
//!
//! The file holds CHAP secrets and is created mode 0600.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

const FILE: &str = "exports.json";
const LOCK: &str = "exports.lock";

/// Prefix of the default target name; the volume name follows.
pub const DEFAULT_IQN_PREFIX: &str = "iqn.2026-11.org.strata:";

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("reading exports {path}: {source}")]
    Reading {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("exports file {path} is damaged: {detail}; fix or remove it")]
    Parsing { path: PathBuf, detail: String },
    #[error("writing exports {path}: {source}")]
    Writing {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("volume {0:?} is not exported")]
    NotExported(String),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Chap {
    pub user: String,
    pub secret: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Export {
    pub volume: String,
    pub iqn: String,
    /// Initiator names allowed to discover and log in (compared case-insensitively).
    pub initiators: Vec<String>,
    /// Secret the initiator must prove (one-way CHAP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chap: Option<Chap>,
    /// Secret the target proves to the initiator when asked (mutual CHAP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutual_chap: Option<Chap>,
}

impl Export {
    pub fn allows(&self, initiator: &str) -> bool {
        self.initiators
            .iter()
            .any(|i| i.eq_ignore_ascii_case(initiator))
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ExportsFile {
    exports: Vec<Export>,
}

/// The target name of a volume exported without `--iqn`. Volume names may hold '_', which
/// iSCSI names may not (RFC 3722; EDK2's IScsiNormalizeName refuses it): it becomes '-'.
pub fn default_iqn(volume: &str) -> String {
    format!(
        "{DEFAULT_IQN_PREFIX}{}",
        volume.to_ascii_lowercase().replace('_', "-")
    )
}

/// Checks an iSCSI name the way strict initiators do: `iqn.` names only, made of letters,
/// digits, '.', '-' and ':' (EDK2 lower-cases the rest and refuses anything else).
pub fn validate_iqn(name: &str) -> Result<(), ExportError> {
    let ok = name.len() <= 223
        && name.starts_with("iqn.")
        && name.len() > 4
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
    if ok {
        Ok(())
    } else {
        Err(ExportError::Invalid(format!(
            "{name:?} is not a valid iSCSI name: use iqn.YYYY-MM.reverse.domain[:identifier] \
             with letters, digits, '.', '-', ':'"
        )))
    }
}

fn lock_file(root: &Path) -> Result<File, ExportError> {
    let path = root.join(LOCK);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|source| ExportError::Writing {
            path: path.clone(),
            source,
        })?;
    // SAFETY: flock on an fd we own; blocking is fine (edits are short).
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(ExportError::Writing {
            path,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(f)
}

/// Reads the exports of the repository at `root` (none when the file does not exist).
pub fn load(root: &Path) -> Result<Vec<Export>, ExportError> {
    let path = root.join(FILE);
    match fs::read(&path) {
        Ok(b) => serde_json::from_slice::<ExportsFile>(&b)
            .map(|f| f.exports)
            .map_err(|e| ExportError::Parsing {
                path,
                detail: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(ExportError::Reading { path, source }),
    }
}

fn save(root: &Path, exports: &[Export]) -> Result<(), ExportError> {
    let path = root.join(FILE);
    let tmp = root.join(format!("{FILE}.tmp.{}", std::process::id()));
    let werr = |source| ExportError::Writing {
        path: path.clone(),
        source,
    };
    let mut bytes = serde_json::to_vec_pretty(&ExportsFile {
        exports: exports.to_vec(),
    })
    .map_err(|e| ExportError::Invalid(e.to_string()))?;
    bytes.push(b'\n');
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(werr)?;
    f.write_all(&bytes)
        .and_then(|_| f.sync_all())
        .map_err(werr)?;
    fs::rename(&tmp, &path).map_err(werr)?;
    File::open(root).and_then(|d| d.sync_all()).map_err(werr)?;
    Ok(())
}

/// Adds or replaces the export of `e.volume`. Target names must stay unique.
pub fn add(root: &Path, e: Export) -> Result<(), ExportError> {
    validate_iqn(&e.iqn)?;
    for i in &e.initiators {
        validate_iqn(i)?;
    }
    if e.initiators.is_empty() {
        return Err(ExportError::Invalid(
            "an export needs at least one --initiator".into(),
        ));
    }
    for c in [&e.chap, &e.mutual_chap].into_iter().flatten() {
        if c.secret.is_empty() {
            return Err(ExportError::Invalid(
                "an empty CHAP secret authenticates nobody: give a secret of 12 to 16 bytes".into(),
            ));
        }
    }
    if let (Some(a), Some(b)) = (&e.chap, &e.mutual_chap) {
        if a.secret == b.secret {
            return Err(ExportError::Invalid(
                "the mutual CHAP secret must differ from the initiator's secret (RFC 7143 §12.1.3)"
                    .into(),
            ));
        }
    }
    let _lock = lock_file(root)?;
    let mut all = load(root)?;
    if let Some(other) = all
        .iter()
        .find(|x| x.iqn.eq_ignore_ascii_case(&e.iqn) && x.volume != e.volume)
    {
        return Err(ExportError::Invalid(format!(
            "target name {} is already used by volume {:?}",
            e.iqn, other.volume
        )));
    }
    all.retain(|x| x.volume != e.volume);
    all.push(e);
    all.sort_by(|a, b| a.volume.cmp(&b.volume));
    save(root, &all)
}

/// Removes the export of `volume`.
pub fn remove(root: &Path, volume: &str) -> Result<(), ExportError> {
    let _lock = lock_file(root)?;
    let mut all = load(root)?;
    let before = all.len();
    all.retain(|x| x.volume != volume);
    if all.len() == before {
        return Err(ExportError::NotExported(volume.to_string()));
    }
    save(root, &all)
}

/// What identifies a version of the exports file: mtime (s, ns), size, inode.
type Stamp = Option<(i64, i64, u64, u64)>;

/// The exports as the server sees them: re-read when the file's mtime or size changed.
pub struct ExportTable {
    root: PathBuf,
    cached: Mutex<(Stamp, Arc<Vec<Export>>)>,
}

impl ExportTable {
    pub fn new(root: &Path) -> ExportTable {
        ExportTable {
            root: root.to_path_buf(),
            cached: Mutex::new((None, Arc::new(Vec::new()))),
        }
    }

    /// The current exports. A damaged file keeps the last good table (and is logged).
    pub fn current(&self) -> Arc<Vec<Export>> {
        self.load(false)
    }

    /// The exports read from the file now, whatever its stamp says (two edits within the
    /// file system's timestamp granularity can look alike). A new table only if it differs.
    pub fn reload(&self) -> Arc<Vec<Export>> {
        self.load(true)
    }

    fn load(&self, force: bool) -> Arc<Vec<Export>> {
        let stamp = fs::metadata(self.root.join(FILE))
            .ok()
            .map(|m| (m.mtime(), m.mtime_nsec(), m.size(), m.ino()));
        let mut c = self.cached.lock();
        if force {
            match load(&self.root) {
                Ok(v) if *c.1 == v => c.0 = stamp,
                Ok(v) => {
                    tracing::info!(exports = v.len(), "exports loaded");
                    *c = (stamp, Arc::new(v));
                }
                Err(e) => tracing::error!(error = %e, "keeping previous exports"),
            }
            return c.1.clone();
        }
        if c.0 != stamp || stamp.is_none() {
            match load(&self.root) {
                // Unchanged content keeps its table: `Arc::ptr_eq` tells a real change.
                Ok(v) if *c.1 == v => c.0 = stamp,
                Ok(v) => {
                    tracing::info!(exports = v.len(), "exports loaded");
                    *c = (stamp, Arc::new(v));
                }
                Err(e) => tracing::error!(error = %e, "keeping previous exports"),
            }
        }
        c.1.clone()
    }

    pub fn find_target(&self, iqn: &str) -> Option<Export> {
        self.current()
            .iter()
            .find(|e| e.iqn.eq_ignore_ascii_case(iqn))
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(vol: &str, ini: &str) -> Export {
        Export {
            volume: vol.into(),
            iqn: default_iqn(vol),
            initiators: vec![ini.into()],
            chap: None,
            mutual_chap: None,
        }
    }

    #[test]
    fn add_replace_remove_round_trip() {
        let d = tempfile::tempdir().unwrap();
        add(d.path(), ex("a", "iqn.2000-01.x:a")).unwrap();
        add(d.path(), ex("b", "iqn.2000-01.x:b")).unwrap();
        add(d.path(), ex("a", "iqn.2000-01.x:c")).unwrap();
        let all = load(d.path()).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].initiators, vec!["iqn.2000-01.x:c".to_string()]);
        remove(d.path(), "a").unwrap();
        assert_eq!(load(d.path()).unwrap().len(), 1);
        assert!(matches!(
            remove(d.path(), "a"),
            Err(ExportError::NotExported(_))
        ));
        let mode = fs::metadata(d.path().join(FILE)).unwrap().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn duplicate_target_names_and_bad_names_are_refused() {
        let d = tempfile::tempdir().unwrap();
        add(d.path(), ex("a", "iqn.2000-01.x:a")).unwrap();
        let mut b = ex("b", "iqn.2000-01.x:a");
        b.iqn = default_iqn("a");
        assert!(add(d.path(), b).is_err());
        assert!(add(d.path(), ex("c", "eui.0123456789abcdef")).is_err());
        let mut same = ex("d", "iqn.2000-01.x:a");
        same.chap = Some(Chap {
            user: "u".into(),
            secret: "s3cret-secret".into(),
        });
        same.mutual_chap = Some(Chap {
            user: "t".into(),
            secret: "s3cret-secret".into(),
        });
        assert!(add(d.path(), same).is_err());
    }

    #[test]
    fn table_sees_changes_without_restart() {
        let d = tempfile::tempdir().unwrap();
        let t = ExportTable::new(d.path());
        assert!(t.current().is_empty());
        add(d.path(), ex("a", "iqn.2000-01.x:a")).unwrap();
        assert!(t.find_target(&default_iqn("a")).is_some());
        assert!(t.find_target(&default_iqn("A").to_uppercase()).is_some());
        remove(d.path(), "a").unwrap();
        assert!(t.find_target(&default_iqn("a")).is_none());
    }

    #[test]
    fn target_names_are_ones_edk2_accepts() {
        assert_eq!(default_iqn("Web_01"), format!("{DEFAULT_IQN_PREFIX}web-01"));
        assert!(validate_iqn(&default_iqn("Web_01.a-b")).is_ok());
        assert!(validate_iqn("iqn.2000-01.x:under_score").is_err());
        assert!(validate_iqn("iqn.2000-01.x:sp ace").is_err());
    }

    #[test]
    fn acl_matches_case_insensitively() {
        assert!(ex("a", "iqn.2000-01.X:A").allows("iqn.2000-01.x:a"));
        assert!(!ex("a", "iqn.2000-01.x:a").allows("iqn.2000-01.x:b"));
    }
}
