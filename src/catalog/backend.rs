//! What a catalog backend stores: the records and the one trait each backend (SQLite,
//! PostgreSQL) implements. The trait holds storage only — single statements and the
//! transactions that must be atomic (a delete that checks its users first) — while
//! validation, ids, timestamps and the JSON shapes live in the backend-neutral code of
//! `artifacts.rs`, `users.rs`, `tasks.rs` and `volumes.rs`, so a new backend only stores.

use serde_json::Value;

use super::CatalogError;
use crate::plan::artifacts::ArtifactKind;

pub type Result<T> = std::result::Result<T, CatalogError>;

/// One stored artifact: its JSON as the API returns it (`uri`, `eTag`, `created`,
/// `modified` filled in) and the columns it is found by.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub id: String,
    pub name: String,
    pub body: Value,
}

/// What an artifact refers to, kept as rows the database enforces: a referenced artifact
/// cannot be deleted while a row names it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Links {
    /// A build plan's scripts (ids).
    pub plan_scripts: Vec<String>,
    /// A deployment plan's build plan (id).
    pub build_plan: Option<String>,
    /// A deployment plan's golden image (id), when the catalog holds it.
    pub golden_image: Option<String>,
    /// A golden image's blocks: the store's image name.
    pub store_image: Option<String>,
}

/// One artifact (or OS volume) that uses another.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct UsedBy {
    /// `build plan`, `deployment plan`, `OS volume`.
    pub what: &'static str,
    pub id: String,
    pub name: String,
    pub uri: String,
}

impl std::fmt::Display for UsedBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?} ({})", self.what, self.name, self.uri)
    }
}

/// A local user as listed (never its password hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub created: String,
}

/// A login session, found by the hash of its token (the token itself is never stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub token_hash: String,
    pub user: String,
    /// Unix milliseconds.
    pub created: i64,
    pub expires: i64,
}

/// An OS volume and the deployment that made it.
#[derive(Debug, Clone, PartialEq)]
pub struct OsVolumeRow {
    pub record: Record,
    /// The store's volume name.
    pub store_volume: String,
    pub deployment_plan: Option<String>,
    pub golden_image: Option<String>,
}

/// A task as stored: its JSON (the API's shape), its state and its node, for the restart
/// sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRow {
    pub id: String,
    pub state: String,
    /// The node whose process runs the task; None for tasks stored before tasks had one
    /// (migration 4). Written by `insert_task` only: an update keeps it.
    pub node: Option<String>,
    pub body: Value,
}

/// An artifact bundle (or the backup bundle) as stored: its JSON (the API's shape); the
/// zip is a file of the repository (`appliance::bundles`).
#[derive(Debug, Clone, PartialEq)]
pub struct BundleRow {
    pub record: Record,
    /// The appliance's backup bundle rather than an artifact bundle.
    pub backup: bool,
}

/// One artifact as a restore writes it: kind, record and links.
#[derive(Debug, Clone, PartialEq)]
pub struct ArtifactRow {
    pub kind: ArtifactKind,
    pub record: Record,
    pub links: Links,
}

/// Storage of one catalog backend. Every method is one atomic operation.
pub trait Backend: Send + Sync {
    /// Whether a read (a `get_`, `find_`, `list_` or `links_of`/`users_of` call, a
    /// `touch_session` that does not extend) returns without waiting for other work: no
    /// network round trip, no lock a write holds. The API then runs such reads on its async
    /// threads instead of handing each to a blocking thread (SQLite in WAL mode with its
    /// own read connections). False unless a backend says so.
    fn reads_never_wait(&self) -> bool {
        false
    }

    /// Adds an artifact; `Conflict` when its id or name is taken, `Missing` when a link
    /// names nothing.
    fn insert_artifact(&self, kind: ArtifactKind, rec: &Record, links: &Links) -> Result<()>;
    /// Replaces an artifact (same id) and its links; `NotFound` when absent.
    fn update_artifact(&self, kind: ArtifactKind, rec: &Record, links: &Links) -> Result<()>;
    fn get_artifact(&self, kind: ArtifactKind, id: &str) -> Result<Option<Record>>;
    /// By id or by name.
    fn find_artifact(&self, kind: ArtifactKind, key: &str) -> Result<Option<Record>>;
    /// The JSON text of [`Backend::find_artifact`]'s body (a backend that stores the text
    /// answers it as stored, without parsing it).
    fn find_artifact_text(&self, kind: ArtifactKind, key: &str) -> Result<Option<String>> {
        Ok(self.find_artifact(kind, key)?.map(|r| r.body.to_string()))
    }
    /// All of one kind, by name.
    fn list_artifacts(&self, kind: ArtifactKind) -> Result<Vec<Record>>;
    /// Deletes one unless something uses it (`InUse` naming the users); `NotFound`.
    fn delete_artifact(&self, kind: ArtifactKind, id: &str) -> Result<()>;
    /// What uses this artifact.
    fn users_of(&self, kind: ArtifactKind, id: &str) -> Result<Vec<UsedBy>>;
    /// The links stored for an artifact.
    fn links_of(&self, kind: ArtifactKind, id: &str) -> Result<Links>;

    fn insert_os_volume(&self, v: &OsVolumeRow) -> Result<()>;
    fn get_os_volume(&self, id: &str) -> Result<Option<OsVolumeRow>>;
    fn list_os_volumes(&self) -> Result<Vec<OsVolumeRow>>;
    fn delete_os_volume(&self, id: &str) -> Result<()>;
    /// Appends a deployment record (JSON) to an OS volume.
    fn insert_deployment(&self, id: &str, os_volume: &str, record: &Value) -> Result<()>;
    fn deployments_of(&self, os_volume: &str) -> Result<Vec<Value>>;

    /// `Conflict` when the name is taken.
    fn insert_user(&self, name: &str, password_hash: &str, created: &str) -> Result<()>;
    /// Removes the user and its sessions; false when there was none.
    fn delete_user(&self, name: &str) -> Result<bool>;
    fn list_users(&self) -> Result<Vec<User>>;
    fn password_hash(&self, name: &str) -> Result<Option<String>>;

    fn insert_session(&self, s: &SessionRow) -> Result<()>;
    /// The session if it exists and has not expired at `now`; its expiry moves to
    /// `extend_to` when given (in the same statement, so a session cannot be revived).
    fn touch_session(
        &self,
        token_hash: &str,
        now: i64,
        extend_to: Option<i64>,
    ) -> Result<Option<SessionRow>>;
    fn delete_session(&self, token_hash: &str) -> Result<bool>;
    /// Forgets sessions expired before `now`.
    fn purge_sessions(&self, now: i64) -> Result<usize>;

    fn insert_task(&self, t: &TaskRow) -> Result<()>;
    /// Replaces a task's state and JSON (its node stays); `NotFound` when absent.
    fn update_task(&self, t: &TaskRow) -> Result<()>;
    fn get_task(&self, id: &str) -> Result<Option<TaskRow>>;
    fn list_tasks(&self) -> Result<Vec<TaskRow>>;

    // iSCSI exports, each node's own (several nodes may share one catalog). `body` is the
    // export's JSON; the target name is unique within a node, compared ignoring case.
    fn list_exports(&self, node: &str) -> Result<Vec<Value>>;
    /// Adds or replaces the export of `volume`; `Conflict` naming the volume whose export
    /// already has the target name `iqn`.
    fn put_export(&self, node: &str, volume: &str, iqn: &str, body: &Value) -> Result<()>;
    /// False when `volume` was not exported.
    fn delete_export(&self, node: &str, volume: &str) -> Result<bool>;
    /// A counter every change of any node's exports moves.
    fn exports_stamp(&self) -> Result<u64>;
    // ---- Artifact bundles, backups and restore (bundles.rs, backup.rs) ----------------
    // A block of its own so that another backend adds these together.

    /// Adds a bundle row; `Conflict` when its id is taken.
    fn insert_bundle(&self, b: &BundleRow) -> Result<()>;
    /// Replaces a bundle's JSON (same id); `NotFound` when absent.
    fn update_bundle(&self, b: &BundleRow) -> Result<()>;
    fn get_bundle(&self, id: &str) -> Result<Option<BundleRow>>;
    /// The artifact bundles (`backups` false) or the backups (true), by name.
    fn list_bundles(&self, backups: bool) -> Result<Vec<BundleRow>>;
    /// False when there was none.
    fn delete_bundle(&self, id: &str) -> Result<bool>;
    /// Stores `b` as the one backup: inserted, and every other backup row deleted, in one
    /// transaction. Returns the ids of the rows it replaced (their files go next).
    fn replace_backup(&self, b: &BundleRow) -> Result<Vec<String>>;
    /// Replaces every artifact of the catalog with `rows`, in one transaction: artifacts
    /// not in `rows` are deleted (`InUse` naming the OS volumes that still use one, and
    /// then nothing changes), the others inserted or replaced with their links. Returns
    /// the store images of the golden-image rows it deleted.
    fn replace_artifacts(&self, rows: &[ArtifactRow]) -> Result<Vec<String>>;
    /// Deletes deployment plan `id` and clears the reference of every OS volume deployed
    /// from it (column and `deploymentPlanUri`), in one transaction; returns those volumes.
    /// `NotFound` when absent.
    fn delete_deployment_plan_detaching(&self, id: &str) -> Result<Vec<UsedBy>>;
}
