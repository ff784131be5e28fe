//! The catalog: the repository's metadata — plan scripts, build plans, deployment plans,
//! golden images (their descriptions; the blocks stay in the store, linked by the store's
//! image name), OS volumes and their deployment records, users and sessions, tasks — and
//! the references between them, enforced (a used artifact cannot be deleted).
//!
//! Map of this directory:
//! - `backend.rs`   the storage trait a backend implements, and the rows it stores
//! - `sqlite.rs`    the embedded SQLite backend (`catalog.db` in the repository directory)
//! - `migrate.rs`   the SQLite schema as ordered migrations (`schema_version`)
//! - `artifacts.rs` artifacts: create, update, get, list, delete, used-by (validated by
//!   `plan::artifacts`, references resolved and stored as rows)
//! - `query.rs`     list queries: `start`, `count`, `filter`, `sort` (pure)
//! - `users.rs`     local users (argon2 password hashes) and login sessions
//! - `tasks.rs`     tasks: long work's state, progress and errors, as the API reports them
//! - `volumes.rs`   OS volumes and their deployment records
//! - `exports.rs`   iSCSI exports, each node's own (taken over from `exports.json`), and
//!   the [`crate::iscsi::exports::ExportSource`] the target reads them through
//! - `bundles.rs`   artifact bundles and the backup bundle (rows; the zips are files)
//! - `restore.rs`   a backup's artifacts replacing the catalog's, in one transaction
//!
//! Callers (the CLI, the REST API) hold a [`Catalog`] and never see the backend: a
//! PostgreSQL backend is one more implementation of [`backend::Backend`] and one more arm
//! in [`Catalog::open`]. The catalog's JSON shapes are Image Streamer's (HPE's field names,
//! `uri`, `eTag`, `created`, `modified`), so the API returns them as they are.

pub mod artifacts;
pub mod backend;
pub mod exports;
pub mod bundles;
pub mod migrate;
pub mod query;
pub mod restore;
pub mod sqlite;
pub mod tasks;
pub mod users;
pub mod volumes;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use backend::{Backend, UsedBy, User};
pub use query::{ListQuery, Page};
pub use tasks::{AssociatedResource, Task, TaskError, TaskState};

/// The catalog's file inside the repository directory.
pub const FILE_NAME: &str = "catalog.db";

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog {}: {source}", path.display())]
    Database {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "catalog {} has schema version {found}, newer than this strata knows ({supported}): \
         run a strata at least as new as the one that wrote it",
        path.display()
    )]
    TooNew {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("catalog {}: a stored row is not valid JSON ({detail})", path.display())]
    Corrupt { path: PathBuf, detail: String },
    #[error("no {what} has the name, id or URI {key:?}")]
    NotFound { what: &'static str, key: String },
    #[error("{what}: {detail}")]
    Conflict { what: &'static str, detail: String },
    #[error(
        "the {what} {id:?} is used by {}; remove {} first",
        list(users),
        them(users)
    )]
    InUse {
        what: &'static str,
        id: String,
        users: Vec<UsedBy>,
    },
    #[error("{what}: {detail}")]
    Missing { what: &'static str, detail: String },
    #[error("{0}")]
    Invalid(String),
    #[error("volume {0:?} is not exported")]
    NotExported(String),
    #[error("hashing a password: {0}")]
    Hash(String),
}

fn list(users: &[UsedBy]) -> String {
    users
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn them(users: &[UsedBy]) -> &'static str {
    if users.len() == 1 {
        "it"
    } else {
        "them"
    }
}

/// The catalog, whatever its backend. Cheap to clone (shared).
#[derive(Clone)]
pub struct Catalog {
    backend: Arc<dyn Backend>,
    /// The node this catalog is used from (its rows of node-local things, the exports).
    node: Arc<str>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Catalog")
    }
}

impl Catalog {
    /// Opens the embedded catalog of the repository at `repo_dir` (created on first use,
    /// migrated when older; an earlier strata's `exports.json` taken over).
    pub fn open(repo_dir: &Path) -> Result<Catalog, CatalogError> {
        let s = sqlite::Sqlite::open(&repo_dir.join(FILE_NAME))?;
        let c = Catalog::with_backend(Arc::new(s)).for_node(&exports::node_id(repo_dir)?);
        c.take_over_exports_file(repo_dir)?;
        Ok(c)
    }

    /// An empty in-memory catalog (tests).
    pub fn memory() -> Result<Catalog, CatalogError> {
        Ok(Catalog::with_backend(Arc::new(sqlite::Sqlite::memory()?)))
    }

    /// A catalog on `backend`, used from the node `local`.
    pub fn with_backend(backend: Arc<dyn Backend>) -> Catalog {
        Catalog {
            backend,
            node: Arc::from("local"),
        }
    }

    /// The same catalog used from the node `node`.
    pub fn for_node(&self, node: &str) -> Catalog {
        Catalog {
            backend: self.backend.clone(),
            node: Arc::from(node),
        }
    }

    /// The node this catalog is used from.
    pub fn node(&self) -> &str {
        &self.node
    }

    pub(crate) fn backend(&self) -> &dyn Backend {
        &*self.backend
    }
}

/// Now as Image Streamer writes its timestamps: `2026-12-02T04:13:52.123Z` (UTC).
pub fn now_timestamp() -> String {
    timestamp(time::OffsetDateTime::now_utc())
}

pub fn timestamp(t: time::OffsetDateTime) -> String {
    let f = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.to_offset(time::UtcOffset::UTC)
        .format(&f)
        .unwrap_or_default()
}

/// A new id: a random (v4) UUID, as Image Streamer's are.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_have_image_streamers_shape() {
        let t = time::macros::datetime!(2026-12-02 04:13:52.123456 UTC);
        assert_eq!(timestamp(t), "2026-12-02T04:13:52.123Z");
    }

    #[test]
    fn a_catalog_file_is_made_in_the_repository_and_reopens() {
        let d = tempfile::tempdir().unwrap();
        let c = Catalog::open(d.path()).unwrap();
        c.add_user("admin", "correct horse").unwrap();
        drop(c);
        assert!(d.path().join(FILE_NAME).is_file());
        let c = Catalog::open(d.path()).unwrap();
        assert_eq!(c.users().unwrap()[0].name, "admin");
    }

    #[test]
    fn a_catalog_from_a_newer_strata_is_refused() {
        let d = tempfile::tempdir().unwrap();
        drop(Catalog::open(d.path()).unwrap());
        let conn = rusqlite::Connection::open(d.path().join(FILE_NAME)).unwrap();
        conn.execute("UPDATE schema_version SET version = version + 5", [])
            .unwrap();
        drop(conn);
        let e = Catalog::open(d.path()).unwrap_err();
        assert!(matches!(e, CatalogError::TooNew { .. }), "{e}");
        assert!(e.to_string().contains("newer"), "{e}");
    }
}
