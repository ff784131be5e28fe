//! iSCSI exports in the catalog: which volume is served as which target, to which
//! initiators, with which CHAP secrets (the type and its checks are `iscsi::exports`'s).
//!
//! Each row belongs to a node (the repository it was made on, `REPO/node-id`), since
//! several nodes may share one catalog while each serves only its own store's volumes.
//! Every change moves a counter in the same transaction; the running target polls it
//! through [`Catalog::export_source`] and re-reads the rows only when it moved.
//!
//! Earlier strata kept the exports in `REPO/exports.json`: the first open of the
//! repository's catalog takes them over ([`Catalog::take_over_exports_file`]) and renames
//! the file `exports.json.migrated` (kept, mode 0600, for the admin's reference; it holds
//! secrets). Taking over is idempotent, so a crash between the rows and the rename only
//! repeats it.

use std::path::Path;
use std::sync::Arc;

use crate::iscsi::exports::{self, Export, ExportError, ExportSource};

use super::{Catalog, CatalogError};

type Result<T> = std::result::Result<T, CatalogError>;

/// The file a node's identity is kept in, inside its repository.
pub const NODE_ID_FILE: &str = "node-id";

/// What the legacy file is renamed to once its exports are in the catalog.
pub const MIGRATED_SUFFIX: &str = ".migrated";

fn invalid(e: ExportError) -> CatalogError {
    CatalogError::Invalid(e.to_string())
}

/// The identity of the node whose repository is `repo_dir`: a UUID made on first use.
pub fn node_id(repo_dir: &Path) -> Result<String> {
    let path = repo_dir.join(NODE_ID_FILE);
    let io = |e: std::io::Error| {
        CatalogError::Invalid(format!("the node identity {}: {e}", path.display()))
    };
    match std::fs::read_to_string(&path) {
        Ok(s) if uuid::Uuid::parse_str(s.trim()).is_ok() => return Ok(s.trim().to_owned()),
        Ok(s) => {
            return Err(CatalogError::Invalid(format!(
                "the node identity {} holds {:?}, not a UUID: fix or remove it",
                path.display(),
                s.trim()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    // Made under a temporary name and linked into place: two first opens at once agree.
    let id = super::new_id();
    let tmp = repo_dir.join(format!("{NODE_ID_FILE}.tmp.{}", std::process::id()));
    std::fs::write(&tmp, format!("{id}\n")).map_err(io)?;
    let linked = std::fs::hard_link(&tmp, &path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(id),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => node_id(repo_dir),
        Err(e) => Err(io(e)),
    }
}

impl Catalog {
    /// This node's exports, by volume name.
    pub fn exports(&self) -> Result<Vec<Export>> {
        self.backend()
            .list_exports(self.node())?
            .into_iter()
            .map(|v| {
                serde_json::from_value(v).map_err(|e| CatalogError::Corrupt {
                    path: "exports".into(),
                    detail: e.to_string(),
                })
            })
            .collect()
    }

    /// Adds or replaces the export of `e.volume` (checked first; target names stay unique).
    pub fn add_export(&self, e: &Export) -> Result<()> {
        exports::check(e).map_err(invalid)?;
        let body = serde_json::to_value(e).map_err(|e| CatalogError::Invalid(e.to_string()))?;
        self.backend()
            .put_export(self.node(), &e.volume, &e.iqn, &body)
    }

    /// Removes the export of `volume`.
    pub fn remove_export(&self, volume: &str) -> Result<()> {
        if self.backend().delete_export(self.node(), volume)? {
            Ok(())
        } else {
            Err(CatalogError::NotExported(volume.to_owned()))
        }
    }

    /// This node's exports as the iSCSI target reads them.
    pub fn export_source(&self) -> Arc<dyn ExportSource> {
        Arc::new(CatalogExports(self.clone()))
    }

    /// Takes the exports of an earlier strata's `repo_dir/exports.json` into the catalog and
    /// renames the file (nothing when there is none). A damaged file stops the open, named.
    pub fn take_over_exports_file(&self, repo_dir: &Path) -> Result<usize> {
        let path = repo_dir.join(exports::LEGACY_FILE);
        if !path.exists() {
            return Ok(0);
        }
        let found = exports::read_legacy_file(repo_dir).map_err(invalid)?;
        for e in &found {
            // As the file had them: a hand-edited row that no longer passes the checks is
            // kept (the target refuses what it cannot honour, e.g. an empty secret).
            let body = serde_json::to_value(e).map_err(|e| CatalogError::Invalid(e.to_string()))?;
            self.backend()
                .put_export(self.node(), &e.volume, &e.iqn, &body)?;
        }
        let to = repo_dir.join(format!("{}{MIGRATED_SUFFIX}", exports::LEGACY_FILE));
        match std::fs::rename(&path, &to) {
            Ok(()) => {}
            // Another process took it over at the same time.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(CatalogError::Invalid(format!(
                    "the exports of {} are in the catalog now, but renaming the file failed: {e}",
                    path.display()
                )))
            }
        }
        let _ = std::fs::remove_file(repo_dir.join("exports.lock"));
        tracing::info!(
            exports = found.len(),
            file = %to.display(),
            "exports.json taken into the catalog"
        );
        Ok(found.len())
    }
}

struct CatalogExports(Catalog);

impl ExportSource for CatalogExports {
    fn stamp(&self) -> std::result::Result<u64, ExportError> {
        self.0
            .backend()
            .exports_stamp()
            .map_err(|e| ExportError::Source(e.to_string()))
    }

    fn load(&self) -> std::result::Result<Vec<Export>, ExportError> {
        self.0
            .exports()
            .map_err(|e| ExportError::Source(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iscsi::exports::{default_iqn, Chap, ExportTable};

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
        let c = Catalog::memory().unwrap();
        c.add_export(&ex("a", "iqn.2000-01.x:a")).unwrap();
        c.add_export(&ex("b", "iqn.2000-01.x:b")).unwrap();
        c.add_export(&ex("a", "iqn.2000-01.x:c")).unwrap();
        let all = c.exports().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].initiators, vec!["iqn.2000-01.x:c".to_string()]);
        c.remove_export("a").unwrap();
        assert_eq!(c.exports().unwrap().len(), 1);
        let e = c.remove_export("a").unwrap_err();
        assert!(matches!(e, CatalogError::NotExported(_)), "{e}");
    }

    #[test]
    fn duplicate_target_names_and_bad_exports_are_refused() {
        let c = Catalog::memory().unwrap();
        c.add_export(&ex("a", "iqn.2000-01.x:a")).unwrap();
        let mut b = ex("b", "iqn.2000-01.x:a");
        b.iqn = default_iqn("a").to_uppercase().replace("IQN.", "iqn.");
        let e = c.add_export(&b).unwrap_err();
        assert!(
            e.to_string().contains("already used by volume \"a\""),
            "{e}"
        );
        let mut same = ex("d", "iqn.2000-01.x:a");
        same.chap = Some(Chap {
            user: "u".into(),
            secret: "s3cret-secret".into(),
        });
        same.mutual_chap = same.chap.clone();
        assert!(c.add_export(&same).is_err());
        assert_eq!(c.exports().unwrap().len(), 1);
    }

    #[test]
    fn nodes_sharing_a_catalog_see_only_their_own_exports() {
        let a = Catalog::memory().unwrap();
        let b = a.for_node("node-b");
        a.add_export(&ex("v", "iqn.2000-01.x:a")).unwrap();
        // The same volume name and target name on another node is another export.
        b.add_export(&ex("v", "iqn.2000-01.x:b")).unwrap();
        assert_eq!(a.exports().unwrap()[0].initiators[0], "iqn.2000-01.x:a");
        assert_eq!(b.exports().unwrap()[0].initiators[0], "iqn.2000-01.x:b");
        b.remove_export("v").unwrap();
        assert_eq!(a.exports().unwrap().len(), 1);
    }

    #[test]
    fn the_target_sees_a_change_through_the_stamp() {
        let c = Catalog::memory().unwrap();
        let t = ExportTable::new(c.export_source());
        assert!(t.refresh(false).is_empty());
        c.add_export(&ex("a", "iqn.2000-01.x:a")).unwrap();
        assert!(t.refresh(false).iter().any(|e| e.volume == "a"));
        c.remove_export("a").unwrap();
        assert!(t.refresh(false).is_empty());
    }

    #[test]
    fn an_exports_file_is_taken_over_once_and_kept_aside() {
        let d = tempfile::tempdir().unwrap();
        let f = serde_json::json!({ "exports": [ex("a", "iqn.2000-01.x:a"), ex("b", "iqn.2000-01.x:b")] });
        std::fs::write(d.path().join("exports.json"), f.to_string()).unwrap();
        let c = Catalog::open(d.path()).unwrap();
        assert_eq!(c.exports().unwrap().len(), 2);
        assert!(!d.path().join("exports.json").exists());
        assert!(d.path().join("exports.json.migrated").exists());
        drop(c);
        // Reopened: nothing to take over, the rows are there.
        let c = Catalog::open(d.path()).unwrap();
        assert_eq!(c.exports().unwrap().len(), 2);
        assert_eq!(node_id(d.path()).unwrap(), c.node());
    }

    #[test]
    fn a_damaged_exports_file_stops_the_open_and_is_left_alone() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("exports.json"), "{\"exports\": [").unwrap();
        let e = Catalog::open(d.path()).unwrap_err();
        assert!(e.to_string().contains("exports.json"), "{e}");
        assert!(d.path().join("exports.json").exists());
    }
}
