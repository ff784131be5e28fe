//! The catalog: the repository's metadata — plan scripts, build plans, deployment plans,
//! golden images (their descriptions; the blocks stay in the store, linked by the store's
//! image name), OS volumes and their deployment records, users and sessions, tasks — and
//! the references between them, enforced (a used artifact cannot be deleted).
//!
//! Map of this directory:
//! - `backend.rs`   the storage trait a backend implements, and the rows it stores
//! - `sqlite.rs`    the embedded SQLite backend (`catalog.db` in the repository directory)
//! - `migrate.rs`   the SQLite schema as ordered migrations (`schema_version`)
//! - `postgres.rs`  the PostgreSQL backend, one catalog several strata nodes share
//! - `pg_migrate.rs` the PostgreSQL schema: the same migrations (versions, meaning)
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
//! Callers (the CLI, the REST API) hold a [`Catalog`] and never see the backend: where it
//! is is a [`Location`] (`--catalog URL` / `STRATA_CATALOG`, SQLite in the repository when
//! absent), opened by [`Catalog::open_at`]. The catalog's JSON shapes are Image
//! Streamer's (HPE's field names, `uri`, `eTag`, `created`, `modified`), so the API
//! returns them as they are.
//!
//! Several nodes on one PostgreSQL catalog share every row: artifacts, OS volumes, users
//! and sessions (a login on one node is valid on the others), tasks (each made by one
//! node, which alone fails it when it restarts with the task unfinished). The blocks do
//! not move: a golden image's disk stays in the store of the node it was uploaded to (its
//! row names the store's image, `gi-<id>`). Another node lists it, reads it, renames it and
//! may use it in a deployment plan, but deploying from it, downloading it or packing it
//! into a bundle there fails with an error saying its disk is on another node (do that on
//! the node holding it, or carry the image over in an artifact bundle). Deleting it from
//! another node deletes the row; the node holding the disk removes the disk, which no row
//! names any more, when it next starts (`appliance::recover`). OS volumes are likewise
//! served by the node that deployed them.

pub mod artifacts;
pub mod backend;
pub mod bundles;
pub mod exports;
pub mod migrate;
pub mod pg_migrate;
pub mod postgres;
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
pub use users::SessionPeek;

/// The catalog's file inside the repository directory.
pub const FILE_NAME: &str = "catalog.db";

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog {}: {source}", path.display())]
    Database {
        path: PathBuf,
        source: rusqlite::Error,
    },
    /// `url`: the server's URL without its password.
    #[error("catalog {url}: {source}")]
    Postgres {
        url: String,
        source: ::postgres::Error,
    },
    /// `path`: the catalog's file, or a PostgreSQL catalog's URL without its password
    /// (here and in `Corrupt`).
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

/// Where a catalog is: the SQLite file in a repository, or a PostgreSQL server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// `catalog.db` in the repository directory (the default).
    Repository,
    /// A `postgres://` or `postgresql://` URL.
    Postgres(String),
}

impl Location {
    /// `--catalog`'s value: absent or empty for the repository's own SQLite catalog, else
    /// a PostgreSQL URL.
    pub fn parse(s: Option<&str>) -> Result<Location, CatalogError> {
        match s.map(str::trim).filter(|s| !s.is_empty()) {
            None => Ok(Location::Repository),
            Some(u) if postgres::is_url(u) => Ok(Location::Postgres(u.to_owned())),
            Some(other) => Err(CatalogError::Invalid(format!(
                "--catalog {other:?}: expected a postgres:// or postgresql:// URL (leave it \
                 out for the SQLite catalog in the repository)"
            ))),
        }
    }
}

impl Catalog {
    /// Opens the catalog at `location`; `repo_dir` is the repository's directory, where
    /// the SQLite catalog lives.
    pub fn open_at(location: &Location, repo_dir: &Path) -> Result<Catalog, CatalogError> {
        match location {
            Location::Repository => Catalog::open(repo_dir),
            Location::Postgres(url) => {
                let c = Catalog::open_postgres(url)?.for_node(&exports::node_id(repo_dir)?);
                c.take_over_exports_file(repo_dir)?;
                Ok(c)
            }
        }
    }

    /// Connects to the PostgreSQL catalog at `url` (migrated when older).
    pub fn open_postgres(url: &str) -> Result<Catalog, CatalogError> {
        Ok(Catalog::with_backend(Arc::new(postgres::Postgres::open(
            url,
        )?)))
    }

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

    /// Whether reads return without waiting on other work ([`Backend::reads_never_wait`]):
    /// then a caller on an async thread may read at once rather than on a blocking thread.
    pub fn reads_never_wait(&self) -> bool {
        self.backend.reads_never_wait()
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
pub(crate) mod testing;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_location_is_the_repository_or_a_postgres_url() {
        assert_eq!(Location::parse(None).unwrap(), Location::Repository);
        assert_eq!(Location::parse(Some(" ")).unwrap(), Location::Repository);
        for u in ["postgres://s@h/db", "postgresql://s@h/db"] {
            assert_eq!(
                Location::parse(Some(u)).unwrap(),
                Location::Postgres(u.into())
            );
        }
        let e = Location::parse(Some("mysql://x")).unwrap_err();
        assert!(e.to_string().contains("postgres://"), "{e}");
    }

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
