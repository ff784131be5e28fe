//! Exports: which volume is served as which iSCSI target, to which initiators, with which
//! CHAP secrets — the type, its checks, and the server's cached table of them.
//!
//! The exports are stored by the layer above (the catalog, which owns the repository's
//! metadata): the target only reads them, through an [`ExportSource`], and keeps the last
//! table it read in an [`ExportTable`] so a login never waits on storage. The server
//! refreshes the table when the source's stamp changes (polled every second, and at once
//! when `strata export` asks over the control socket).
//!
//! Earlier strata kept them in `REPO/exports.json`; [`read_legacy_file`] reads that file so
//! the catalog can take its rows over on first start.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// The file earlier strata kept the exports in (read once, to migrate it).
pub const LEGACY_FILE: &str = "exports.json";

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
    #[error("reading the exports: {0}")]
    Source(String),
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

/// Checks an export before it is stored: valid names, at least one initiator, CHAP secrets
/// that can authenticate someone.
pub fn check(e: &Export) -> Result<(), ExportError> {
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
    Ok(())
}

/// Reads the exports an earlier strata kept in `root/exports.json` (none when there is no
/// such file).
pub fn read_legacy_file(root: &Path) -> Result<Vec<Export>, ExportError> {
    let path = root.join(LEGACY_FILE);
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

/// Where the server reads the exports from.
pub trait ExportSource: Send + Sync {
    /// A number that changes whenever the exports change (cheap: polled every second).
    fn stamp(&self) -> Result<u64, ExportError>;
    /// All exports, by volume name.
    fn load(&self) -> Result<Vec<Export>, ExportError>;
}

/// Exports held in memory (tests, and servers that are handed a fixed set).
#[derive(Default)]
pub struct MemoryExports {
    inner: Mutex<(u64, Vec<Export>)>,
}

impl MemoryExports {
    pub fn new(exports: Vec<Export>) -> MemoryExports {
        MemoryExports {
            inner: Mutex::new((0, exports)),
        }
    }

    /// Replaces the set (checked as a stored export would be).
    pub fn set(&self, exports: Vec<Export>) -> Result<(), ExportError> {
        for e in &exports {
            check(e)?;
        }
        let mut g = self.inner.lock();
        g.0 += 1;
        g.1 = exports;
        Ok(())
    }
}

impl ExportSource for MemoryExports {
    fn stamp(&self) -> Result<u64, ExportError> {
        Ok(self.inner.lock().0)
    }

    fn load(&self) -> Result<Vec<Export>, ExportError> {
        Ok(self.inner.lock().1.clone())
    }
}

/// The exports as the server sees them: the last table read from the source. Reading it
/// never touches storage; [`ExportTable::refresh`] does.
pub struct ExportTable {
    source: Arc<dyn ExportSource>,
    cached: Mutex<(Option<u64>, Arc<Vec<Export>>)>,
}

impl ExportTable {
    pub fn new(source: Arc<dyn ExportSource>) -> ExportTable {
        ExportTable {
            source,
            cached: Mutex::new((None, Arc::new(Vec::new()))),
        }
    }

    /// The exports as last read.
    pub fn current(&self) -> Arc<Vec<Export>> {
        self.cached.lock().1.clone()
    }

    /// Reads the source again if its stamp changed (or always, when `force`). An unchanged
    /// content keeps its table (`Arc::ptr_eq` tells a real change); a source that cannot
    /// be read keeps the last good table (and is logged).
    pub fn refresh(&self, force: bool) -> Arc<Vec<Export>> {
        let stamp = match self.source.stamp() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "keeping previous exports");
                return self.current();
            }
        };
        if !force && self.cached.lock().0 == Some(stamp) {
            return self.current();
        }
        let loaded = self.source.load();
        let mut c = self.cached.lock();
        match loaded {
            Ok(v) if *c.1 == v => c.0 = Some(stamp),
            Ok(v) => {
                tracing::info!(exports = v.len(), "exports loaded");
                *c = (Some(stamp), Arc::new(v));
            }
            Err(e) => tracing::error!(error = %e, "keeping previous exports"),
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
    fn bad_names_and_secrets_are_refused() {
        assert!(check(&ex("a", "iqn.2000-01.x:a")).is_ok());
        assert!(check(&ex("c", "eui.0123456789abcdef")).is_err());
        let mut none = ex("n", "iqn.2000-01.x:a");
        none.initiators.clear();
        assert!(check(&none).is_err());
        let mut empty = ex("e", "iqn.2000-01.x:a");
        empty.chap = Some(Chap {
            user: "u".into(),
            secret: String::new(),
        });
        assert!(check(&empty).is_err());
        let mut same = ex("d", "iqn.2000-01.x:a");
        same.chap = Some(Chap {
            user: "u".into(),
            secret: "s3cret-secret".into(),
        });
        same.mutual_chap = Some(Chap {
            user: "t".into(),
            secret: "s3cret-secret".into(),
        });
        assert!(check(&same).is_err());
    }

    #[test]
    fn the_table_sees_a_change_when_the_stamp_moves() {
        let src = Arc::new(MemoryExports::default());
        let t = ExportTable::new(src.clone());
        assert!(t.refresh(false).is_empty());
        src.set(vec![ex("a", "iqn.2000-01.x:a")]).unwrap();
        // Not read yet: a login never waits on storage.
        assert!(t.find_target(&default_iqn("a")).is_none());
        let first = t.refresh(false);
        assert!(t.find_target(&default_iqn("a")).is_some());
        assert!(t.find_target(&default_iqn("A").to_uppercase()).is_some());
        // The same content under a new stamp keeps the table.
        src.set(vec![ex("a", "iqn.2000-01.x:a")]).unwrap();
        assert!(Arc::ptr_eq(&first, &t.refresh(false)));
        src.set(Vec::new()).unwrap();
        t.refresh(false);
        assert!(t.find_target(&default_iqn("a")).is_none());
    }

    #[test]
    fn a_legacy_file_is_read_and_a_damaged_one_named() {
        let d = tempfile::tempdir().unwrap();
        assert!(read_legacy_file(d.path()).unwrap().is_empty());
        let f = serde_json::json!({ "exports": [ex("a", "iqn.2000-01.x:a")] });
        fs::write(d.path().join(LEGACY_FILE), f.to_string()).unwrap();
        assert_eq!(
            read_legacy_file(d.path()).unwrap(),
            vec![ex("a", "iqn.2000-01.x:a")]
        );
        fs::write(d.path().join(LEGACY_FILE), "{").unwrap();
        let e = read_legacy_file(d.path()).unwrap_err();
        assert!(e.to_string().contains("exports.json"), "{e}");
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
