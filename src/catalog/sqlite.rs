//! The embedded SQLite backend: one database file inside the repository directory, opened
//! in WAL mode with foreign keys on (the references are the database's own constraints,
//! checked again by hand only to name the users in the error). One connection writes,
//! behind a mutex; reads go to a few read-only connections beside it (WAL lets readers run
//! while the writer writes, and a read never waits for a write), so the API's gets, lists
//! and session checks neither serialise on the writer nor wait behind a long transaction.
//! A commit is seen by every read that starts after it, whatever connection it runs on.
//! Statements are prepared once per connection (rusqlite's statement cache).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::{Mutex, MutexGuard};
use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension};
use serde_json::Value;

use super::backend::{
    ArtifactRow, Backend, BundleRow, Links, OsVolumeRow, Record, Result, SessionRow, TaskRow,
    UsedBy, User,
};
use super::{migrate, CatalogError};
use crate::plan::artifacts::{ArtifactKind, BUILD_PLANS_URI, DEPLOYMENT_PLANS_URI};

/// An OS volume's row before its body is parsed: record, store volume, deployment plan,
/// golden image, body text.
type VolumeColumns = (Record, String, Option<String>, Option<String>, String);

pub struct Sqlite {
    /// Read-only connections for reads outside a write; empty when the database is not in
    /// WAL mode (an in-memory one, a file system without shared memory), and then reads
    /// take the writer. Declared before the writer so that they close first, and the
    /// writer, closing last, checkpoints the WAL into the database.
    readers: Vec<Mutex<Connection>>,
    /// The connection every write (and every read inside a write) goes through.
    conn: Mutex<Connection>,
    /// Where the next read starts looking for a free reader.
    next_reader: AtomicUsize,
    path: PathBuf,
}

/// How many read-only connections a file catalog opens: enough that the API's threads
/// (async workers and blocking ones) rarely find them all busy; each costs a file
/// descriptor and its page cache.
const READERS: usize = 4;

/// How many prepared statements each connection keeps (rusqlite's default is 16; the
/// hot reads and writes are about twenty).
const STATEMENT_CACHE: usize = 64;

fn table(kind: ArtifactKind) -> &'static str {
    match kind {
        ArtifactKind::PlanScript => "plan_scripts",
        ArtifactKind::BuildPlan => "build_plans",
        ArtifactKind::DeploymentPlan => "deployment_plans",
        ArtifactKind::GoldenImage => "golden_images",
    }
}

const OS_VOLUMES_URI: &str = "/rest/os-volumes/";

impl Sqlite {
    /// Opens (creating) the database at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Sqlite> {
        let db = |source| CatalogError::Database {
            path: path.to_owned(),
            source,
        };
        let mut conn = Connection::open(path).map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(db)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(db)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(db)?;
        migrate::migrate(&mut conn, path)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(db)?;
        let mut readers = Vec::new();
        if mode.eq_ignore_ascii_case("wal") {
            for _ in 0..READERS {
                let r = Connection::open_with_flags(
                    path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY
                        | OpenFlags::SQLITE_OPEN_NO_MUTEX
                        | OpenFlags::SQLITE_OPEN_URI,
                )
                .map_err(db)?;
                r.busy_timeout(std::time::Duration::from_secs(10))
                    .map_err(db)?;
                r.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
                readers.push(Mutex::new(r));
            }
        }
        Ok(Sqlite {
            conn: Mutex::new(conn),
            readers,
            next_reader: AtomicUsize::new(0),
            path: path.to_owned(),
        })
    }

    /// Whether reads have connections of their own (see [`Backend::reads_never_wait`]).
    pub fn has_readers(&self) -> bool {
        !self.readers.is_empty()
    }

    /// A connection for a read outside any write: a free reader (the writer when there
    /// are none).
    fn reader(&self) -> MutexGuard<'_, Connection> {
        let n = self.readers.len();
        if n == 0 {
            return self.conn.lock();
        }
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            if let Some(g) = self.readers[(start + i) % n].try_lock() {
                return g;
            }
        }
        // All busy: each read is short, wait for one.
        self.readers[start % n].lock()
    }

    /// An in-memory catalog (tests).
    pub fn memory() -> Result<Sqlite> {
        let path = PathBuf::from(":memory:");
        let db = |source| CatalogError::Database {
            path: path.clone(),
            source,
        };
        let mut conn = Connection::open_in_memory().map_err(db)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(db)?;
        migrate::migrate(&mut conn, &path)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(Sqlite {
            conn: Mutex::new(conn),
            readers: Vec::new(),
            next_reader: AtomicUsize::new(0),
            path,
        })
    }

    fn err(&self, source: rusqlite::Error) -> CatalogError {
        CatalogError::Database {
            path: self.path.clone(),
            source,
        }
    }

    /// A constraint failure on insert: a taken id or name.
    fn insert_err(&self, kind: &'static str, rec: &Record, e: rusqlite::Error) -> CatalogError {
        match &e {
            rusqlite::Error::SqliteFailure(f, msg) if f.code == ErrorCode::ConstraintViolation => {
                let m = msg.as_deref().unwrap_or("");
                if m.contains("FOREIGN KEY") {
                    CatalogError::Missing {
                        what: kind,
                        detail: "an artifact it refers to is not in the catalog".into(),
                    }
                } else if m.contains(".name") {
                    CatalogError::Conflict {
                        what: kind,
                        detail: format!("the name {:?} is taken", rec.name),
                    }
                } else {
                    CatalogError::Conflict {
                        what: kind,
                        detail: format!("the id {:?} is taken", rec.id),
                    }
                }
            }
            _ => self.err(e),
        }
    }

    /// Moves the exports' counter, inside the transaction that changes them.
    fn bump_exports(&self, tx: &rusqlite::Transaction<'_>) -> Result<()> {
        tx.execute(
            "UPDATE counters SET value = value + 1 WHERE name = 'exports'",
            [],
        )
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn body(&self, text: String) -> Result<Value> {
        serde_json::from_str(&text).map_err(|e| CatalogError::Corrupt {
            path: self.path.clone(),
            detail: e.to_string(),
        })
    }

    fn record(&self, (id, name, body): (String, String, String)) -> Result<Record> {
        Ok(Record {
            id,
            name,
            body: self.body(body)?,
        })
    }

    fn write_links(
        &self,
        tx: &rusqlite::Transaction<'_>,
        kind: ArtifactKind,
        id: &str,
        links: &Links,
    ) -> std::result::Result<(), rusqlite::Error> {
        match kind {
            ArtifactKind::BuildPlan => {
                tx.execute(
                    "DELETE FROM build_plan_steps WHERE build_plan_id = ?1",
                    [id],
                )?;
                for s in &links.plan_scripts {
                    tx.execute(
                        "INSERT OR IGNORE INTO build_plan_steps (build_plan_id, plan_script_id) \
                         VALUES (?1, ?2)",
                        [id, s],
                    )?;
                }
            }
            ArtifactKind::DeploymentPlan => {
                tx.execute(
                    "UPDATE deployment_plans SET build_plan_id = ?2, golden_image_id = ?3 \
                     WHERE id = ?1",
                    params![id, links.build_plan, links.golden_image],
                )?;
            }
            ArtifactKind::GoldenImage => {
                tx.execute(
                    "UPDATE golden_images SET store_image = ?2 WHERE id = ?1",
                    params![id, links.store_image],
                )?;
            }
            ArtifactKind::PlanScript => {}
        }
        Ok(())
    }

    fn users_in(&self, conn: &Connection, kind: ArtifactKind, id: &str) -> Result<Vec<UsedBy>> {
        let q = |sql: &str, what: &'static str, uri: &str| -> Result<Vec<UsedBy>> {
            let mut st = conn.prepare(sql).map_err(|e| self.err(e))?;
            let rows = st
                .query_map([id], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })
                .map_err(|e| self.err(e))?;
            let mut out = Vec::new();
            for r in rows {
                let (uid, name) = r.map_err(|e| self.err(e))?;
                out.push(UsedBy {
                    what,
                    uri: format!("{uri}{uid}"),
                    id: uid,
                    name,
                });
            }
            Ok(out)
        };
        let mut users = match kind {
            ArtifactKind::PlanScript => q(
                "SELECT b.id, b.name FROM build_plan_steps s JOIN build_plans b \
                 ON b.id = s.build_plan_id WHERE s.plan_script_id = ?1 ORDER BY b.name",
                "build plan",
                BUILD_PLANS_URI,
            )?,
            ArtifactKind::BuildPlan => q(
                "SELECT id, name FROM deployment_plans WHERE build_plan_id = ?1 ORDER BY name",
                "deployment plan",
                DEPLOYMENT_PLANS_URI,
            )?,
            ArtifactKind::DeploymentPlan => q(
                "SELECT id, name FROM os_volumes WHERE deployment_plan_id = ?1 ORDER BY name",
                "OS volume",
                OS_VOLUMES_URI,
            )?,
            ArtifactKind::GoldenImage => {
                let mut u = q(
                    "SELECT id, name FROM deployment_plans WHERE golden_image_id = ?1 \
                     ORDER BY name",
                    "deployment plan",
                    DEPLOYMENT_PLANS_URI,
                )?;
                u.extend(q(
                    "SELECT id, name FROM os_volumes WHERE golden_image_id = ?1 ORDER BY name",
                    "OS volume",
                    OS_VOLUMES_URI,
                )?);
                u
            }
        };
        users.dedup();
        Ok(users)
    }

    fn volume_row(&self, r: &rusqlite::Row<'_>) -> rusqlite::Result<VolumeColumns> {
        Ok((
            Record {
                id: r.get(0)?,
                name: r.get(1)?,
                body: Value::Null,
            },
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(2)?,
        ))
    }

    fn volumes(&self, sql: &str, p: &[&dyn rusqlite::ToSql]) -> Result<Vec<OsVolumeRow>> {
        let conn = self.reader();
        let mut st = conn.prepare_cached(sql).map_err(|e| self.err(e))?;
        let rows = st
            .query_map(p, |r| self.volume_row(r))
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for r in rows {
            let (mut record, store_volume, deployment_plan, golden_image, body) =
                r.map_err(|e| self.err(e))?;
            record.body = self.body(body)?;
            out.push(OsVolumeRow {
                record,
                store_volume,
                deployment_plan,
                golden_image,
            });
        }
        Ok(out)
    }
}

impl Backend for Sqlite {
    fn reads_never_wait(&self) -> bool {
        self.has_readers()
    }

    fn insert_artifact(&self, kind: ArtifactKind, rec: &Record, links: &Links) -> Result<()> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        tx.execute(
            &format!(
                "INSERT INTO {} (id, name, body) VALUES (?1, ?2, ?3)",
                table(kind)
            ),
            params![rec.id, rec.name, rec.body.to_string()],
        )
        .map_err(|e| self.insert_err(kind.what(), rec, e))?;
        self.write_links(&tx, kind, &rec.id, links)
            .map_err(|e| self.insert_err(kind.what(), rec, e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    fn update_artifact(&self, kind: ArtifactKind, rec: &Record, links: &Links) -> Result<()> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let n = tx
            .execute(
                &format!(
                    "UPDATE {} SET name = ?2, body = ?3 WHERE id = ?1",
                    table(kind)
                ),
                params![rec.id, rec.name, rec.body.to_string()],
            )
            .map_err(|e| self.insert_err(kind.what(), rec, e))?;
        if n == 0 {
            return Err(CatalogError::NotFound {
                what: kind.what(),
                key: rec.id.clone(),
            });
        }
        self.write_links(&tx, kind, &rec.id, links)
            .map_err(|e| self.insert_err(kind.what(), rec, e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    fn get_artifact(&self, kind: ArtifactKind, id: &str) -> Result<Option<Record>> {
        let conn = self.reader();
        let row = conn
            .prepare_cached(&format!(
                "SELECT id, name, body FROM {} WHERE id = ?1",
                table(kind)
            ))
            .and_then(|mut st| {
                st.query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()
            })
            .map_err(|e| self.err(e))?;
        drop(conn);
        row.map(|r| self.record(r)).transpose()
    }

    fn find_artifact(&self, kind: ArtifactKind, key: &str) -> Result<Option<Record>> {
        let conn = self.reader();
        let row = conn
            .prepare_cached(&format!(
                "SELECT id, name, body FROM {} WHERE id = ?1 OR name = ?1 \
                 ORDER BY id = ?1 DESC LIMIT 1",
                table(kind)
            ))
            .and_then(|mut st| {
                st.query_row([key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()
            })
            .map_err(|e| self.err(e))?;
        drop(conn);
        row.map(|r| self.record(r)).transpose()
    }

    fn find_artifact_text(&self, kind: ArtifactKind, key: &str) -> Result<Option<String>> {
        self.reader()
            .prepare_cached(&format!(
                "SELECT body FROM {} WHERE id = ?1 OR name = ?1 \
                 ORDER BY id = ?1 DESC LIMIT 1",
                table(kind)
            ))
            .and_then(|mut st| st.query_row([key], |r| r.get(0)).optional())
            .map_err(|e| self.err(e))
    }

    fn list_artifacts(&self, kind: ArtifactKind) -> Result<Vec<Record>> {
        let conn = self.reader();
        let mut st = conn
            .prepare_cached(&format!(
                "SELECT id, name, body FROM {} ORDER BY name",
                table(kind)
            ))
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(self.record(r.map_err(|e| self.err(e))?)?);
        }
        Ok(out)
    }

    fn delete_artifact(&self, kind: ArtifactKind, id: &str) -> Result<()> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let users = self.users_in(&tx, kind, id)?;
        if !users.is_empty() {
            return Err(CatalogError::InUse {
                what: kind.what(),
                id: id.into(),
                users,
            });
        }
        let n = tx
            .execute(&format!("DELETE FROM {} WHERE id = ?1", table(kind)), [id])
            .map_err(|e| self.err(e))?;
        if n == 0 {
            return Err(CatalogError::NotFound {
                what: kind.what(),
                key: id.into(),
            });
        }
        tx.commit().map_err(|e| self.err(e))
    }

    fn users_of(&self, kind: ArtifactKind, id: &str) -> Result<Vec<UsedBy>> {
        let conn = self.reader();
        self.users_in(&conn, kind, id)
    }

    fn links_of(&self, kind: ArtifactKind, id: &str) -> Result<Links> {
        let conn = self.reader();
        let mut l = Links::default();
        match kind {
            ArtifactKind::BuildPlan => {
                let mut st = conn
                    .prepare("SELECT plan_script_id FROM build_plan_steps WHERE build_plan_id = ?1")
                    .map_err(|e| self.err(e))?;
                let rows = st.query_map([id], |r| r.get(0)).map_err(|e| self.err(e))?;
                for r in rows {
                    l.plan_scripts.push(r.map_err(|e| self.err(e))?);
                }
            }
            ArtifactKind::DeploymentPlan => {
                if let Some((b, g)) = conn
                    .query_row(
                        "SELECT build_plan_id, golden_image_id FROM deployment_plans WHERE id = ?1",
                        [id],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()
                    .map_err(|e| self.err(e))?
                {
                    l.build_plan = b;
                    l.golden_image = g;
                }
            }
            ArtifactKind::GoldenImage => {
                l.store_image = conn
                    .query_row(
                        "SELECT store_image FROM golden_images WHERE id = ?1",
                        [id],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(|e| self.err(e))?
                    .flatten();
            }
            ArtifactKind::PlanScript => {}
        }
        Ok(l)
    }

    fn insert_os_volume(&self, v: &OsVolumeRow) -> Result<()> {
        self.conn
            .lock()
            .execute(
                "INSERT INTO os_volumes (id, name, body, store_volume, deployment_plan_id, \
                 golden_image_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    v.record.id,
                    v.record.name,
                    v.record.body.to_string(),
                    v.store_volume,
                    v.deployment_plan,
                    v.golden_image
                ],
            )
            .map_err(|e| self.insert_err("OS volume", &v.record, e))?;
        Ok(())
    }

    fn get_os_volume(&self, id: &str) -> Result<Option<OsVolumeRow>> {
        Ok(self
            .volumes(
                "SELECT id, name, body, store_volume, deployment_plan_id, golden_image_id \
                 FROM os_volumes WHERE id = ?1",
                &[&id],
            )?
            .pop())
    }

    fn list_os_volumes(&self) -> Result<Vec<OsVolumeRow>> {
        self.volumes(
            "SELECT id, name, body, store_volume, deployment_plan_id, golden_image_id \
             FROM os_volumes ORDER BY name",
            &[],
        )
    }

    fn delete_os_volume(&self, id: &str) -> Result<()> {
        let n = self
            .conn
            .lock()
            .execute("DELETE FROM os_volumes WHERE id = ?1", [id])
            .map_err(|e| self.err(e))?;
        if n == 0 {
            return Err(CatalogError::NotFound {
                what: "OS volume",
                key: id.into(),
            });
        }
        Ok(())
    }

    fn insert_deployment(&self, id: &str, os_volume: &str, record: &Value) -> Result<()> {
        let conn = self.conn.lock();
        conn.execute(
            "INSERT INTO deployments (id, os_volume_id, seq, record) VALUES (?1, ?2, \
             (SELECT COALESCE(MAX(seq), 0) + 1 FROM deployments), ?3)",
            params![id, os_volume, record.to_string()],
        )
        .map_err(|e| match &e {
            rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::ConstraintViolation => {
                CatalogError::Missing {
                    what: "deployment record",
                    detail: format!("no OS volume has the id {os_volume:?}"),
                }
            }
            _ => self.err(e),
        })?;
        Ok(())
    }

    fn deployments_of(&self, os_volume: &str) -> Result<Vec<Value>> {
        let conn = self.reader();
        let mut st = conn
            .prepare("SELECT record FROM deployments WHERE os_volume_id = ?1 ORDER BY seq")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([os_volume], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(self.body(r.map_err(|e| self.err(e))?)?);
        }
        Ok(out)
    }

    fn insert_user(&self, name: &str, password_hash: &str, created: &str) -> Result<()> {
        self.conn
            .lock()
            .execute(
                "INSERT INTO users (name, password_hash, created) VALUES (?1, ?2, ?3)",
                [name, password_hash, created],
            )
            .map_err(|e| match &e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == ErrorCode::ConstraintViolation =>
                {
                    CatalogError::Conflict {
                        what: "user",
                        detail: format!("a user named {name:?} exists"),
                    }
                }
                _ => self.err(e),
            })?;
        Ok(())
    }

    fn delete_user(&self, name: &str) -> Result<bool> {
        let n = self
            .conn
            .lock()
            .execute("DELETE FROM users WHERE name = ?1", [name])
            .map_err(|e| self.err(e))?;
        Ok(n > 0)
    }

    fn list_users(&self) -> Result<Vec<User>> {
        let conn = self.reader();
        let mut st = conn
            .prepare("SELECT name, created FROM users ORDER BY name")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| {
                Ok(User {
                    name: r.get(0)?,
                    created: r.get(1)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.map(|r| r.map_err(|e| self.err(e))).collect()
    }

    fn password_hash(&self, name: &str) -> Result<Option<String>> {
        self.reader()
            .query_row(
                "SELECT password_hash FROM users WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    fn insert_session(&self, s: &SessionRow) -> Result<()> {
        self.conn
            .lock()
            .execute(
                "INSERT INTO sessions (token_hash, user_name, created, expires) \
                 VALUES (?1, ?2, ?3, ?4)",
                params![s.token_hash, s.user, s.created, s.expires],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn touch_session(
        &self,
        token_hash: &str,
        now: i64,
        extend_to: Option<i64>,
    ) -> Result<Option<SessionRow>> {
        // A plain lookup reads; one that extends reads on the writer, after its update.
        let conn = match extend_to {
            None => self.reader(),
            Some(t) => {
                let c = self.conn.lock();
                c.prepare_cached(
                    "UPDATE sessions SET expires = MAX(expires, ?3) \
                     WHERE token_hash = ?1 AND expires > ?2",
                )
                .and_then(|mut st| st.execute(params![token_hash, now, t]))
                .map_err(|e| self.err(e))?;
                c
            }
        };
        conn.prepare_cached(
            "SELECT token_hash, user_name, created, expires FROM sessions \
             WHERE token_hash = ?1 AND expires > ?2",
        )
        .and_then(|mut st| {
            st.query_row(params![token_hash, now], |r| {
                Ok(SessionRow {
                    token_hash: r.get(0)?,
                    user: r.get(1)?,
                    created: r.get(2)?,
                    expires: r.get(3)?,
                })
            })
            .optional()
        })
        .map_err(|e| self.err(e))
    }

    fn delete_session(&self, token_hash: &str) -> Result<bool> {
        let n = self
            .conn
            .lock()
            .execute("DELETE FROM sessions WHERE token_hash = ?1", [token_hash])
            .map_err(|e| self.err(e))?;
        Ok(n > 0)
    }

    fn purge_sessions(&self, now: i64) -> Result<usize> {
        self.conn
            .lock()
            .execute("DELETE FROM sessions WHERE expires <= ?1", [now])
            .map_err(|e| self.err(e))
    }

    fn insert_task(&self, t: &TaskRow) -> Result<()> {
        self.conn
            .lock()
            .execute(
                "INSERT INTO tasks (id, state, seq, body, node) VALUES (?1, ?2, \
                 (SELECT COALESCE(MAX(seq), 0) + 1 FROM tasks), ?3, ?4)",
                params![t.id, t.state, t.body.to_string(), t.node],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn update_task(&self, t: &TaskRow) -> Result<()> {
        let n = self
            .conn
            .lock()
            .execute(
                "UPDATE tasks SET state = ?2, body = ?3 WHERE id = ?1",
                params![t.id, t.state, t.body.to_string()],
            )
            .map_err(|e| self.err(e))?;
        if n == 0 {
            return Err(CatalogError::NotFound {
                what: "task",
                key: t.id.clone(),
            });
        }
        Ok(())
    }

    fn get_task(&self, id: &str) -> Result<Option<TaskRow>> {
        let row: Option<(String, String, Option<String>, String)> = self
            .reader()
            .query_row(
                "SELECT id, state, node, body FROM tasks WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        row.map(|(id, state, node, body)| {
            Ok(TaskRow {
                id,
                state,
                node,
                body: self.body(body)?,
            })
        })
        .transpose()
    }

    fn list_tasks(&self) -> Result<Vec<TaskRow>> {
        let conn = self.reader();
        let mut st = conn
            .prepare("SELECT id, state, node, body FROM tasks ORDER BY seq")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for r in rows {
            let (id, state, node, body) = r.map_err(|e| self.err(e))?;
            out.push(TaskRow {
                id,
                state,
                node,
                body: self.body(body)?,
            });
        }
        Ok(out)
    }

    fn list_exports(&self, node: &str) -> Result<Vec<Value>> {
        let conn = self.reader();
        let mut st = conn
            .prepare("SELECT body FROM exports WHERE node = ?1 ORDER BY volume")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([node], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(self.body(r.map_err(|e| self.err(e))?)?);
        }
        Ok(out)
    }

    fn put_export(&self, node: &str, volume: &str, iqn: &str, body: &Value) -> Result<()> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let holder: Option<String> = tx
            .query_row(
                "SELECT volume FROM exports \
                 WHERE node = ?1 AND lower(iqn) = lower(?2) AND volume <> ?3",
                [node, iqn, volume],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        if let Some(other) = holder {
            return Err(CatalogError::Conflict {
                what: "export",
                detail: format!("target name {iqn} is already used by volume {other:?}"),
            });
        }
        tx.execute(
            "INSERT OR REPLACE INTO exports (node, volume, iqn, body) VALUES (?1, ?2, ?3, ?4)",
            params![node, volume, iqn, body.to_string()],
        )
        .map_err(|e| self.err(e))?;
        self.bump_exports(&tx)?;
        tx.commit().map_err(|e| self.err(e))
    }

    fn delete_export(&self, node: &str, volume: &str) -> Result<bool> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let n = tx
            .execute(
                "DELETE FROM exports WHERE node = ?1 AND volume = ?2",
                [node, volume],
            )
            .map_err(|e| self.err(e))?;
        self.bump_exports(&tx)?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(n > 0)
    }

    fn exports_stamp(&self) -> Result<u64> {
        let v: i64 = self
            .reader()
            .prepare_cached("SELECT value FROM counters WHERE name = 'exports'")
            .and_then(|mut st| st.query_row([], |r| r.get(0)))
            .map_err(|e| self.err(e))?;
        Ok(v as u64)
    }

    // ---- Artifact bundles, backups and restore ---------------------------------------

    fn insert_bundle(&self, b: &BundleRow) -> Result<()> {
        self.conn
            .lock()
            .execute(
                "INSERT INTO artifact_bundles (id, name, backup, body) VALUES (?1, ?2, ?3, ?4)",
                params![
                    b.record.id,
                    b.record.name,
                    b.backup,
                    b.record.body.to_string()
                ],
            )
            .map_err(|e| self.insert_err("artifact bundle", &b.record, e))?;
        Ok(())
    }

    fn update_bundle(&self, b: &BundleRow) -> Result<()> {
        let n = self
            .conn
            .lock()
            .execute(
                "UPDATE artifact_bundles SET name = ?2, body = ?3 WHERE id = ?1",
                params![b.record.id, b.record.name, b.record.body.to_string()],
            )
            .map_err(|e| self.err(e))?;
        if n == 0 {
            return Err(CatalogError::NotFound {
                what: "artifact bundle",
                key: b.record.id.clone(),
            });
        }
        Ok(())
    }

    fn get_bundle(&self, id: &str) -> Result<Option<BundleRow>> {
        let row: Option<(String, String, bool, String)> = self
            .reader()
            .query_row(
                "SELECT id, name, backup, body FROM artifact_bundles WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        row.map(|(id, name, backup, body)| {
            Ok(BundleRow {
                record: self.record((id, name, body))?,
                backup,
            })
        })
        .transpose()
    }

    fn list_bundles(&self, backups: bool) -> Result<Vec<BundleRow>> {
        let conn = self.reader();
        let mut st = conn
            .prepare(
                "SELECT id, name, body FROM artifact_bundles WHERE backup = ?1 ORDER BY name, id",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([backups], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(BundleRow {
                record: self.record(r.map_err(|e| self.err(e))?)?,
                backup: backups,
            });
        }
        Ok(out)
    }

    fn delete_bundle(&self, id: &str) -> Result<bool> {
        let n = self
            .conn
            .lock()
            .execute("DELETE FROM artifact_bundles WHERE id = ?1", [id])
            .map_err(|e| self.err(e))?;
        Ok(n > 0)
    }

    fn replace_backup(&self, b: &BundleRow) -> Result<Vec<String>> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let old: Vec<String> = {
            let mut st = tx
                .prepare("SELECT id FROM artifact_bundles WHERE backup = 1 AND id <> ?1")
                .map_err(|e| self.err(e))?;
            let rows = st
                .query_map([&b.record.id], |r| r.get(0))
                .map_err(|e| self.err(e))?;
            rows.collect::<rusqlite::Result<_>>()
                .map_err(|e| self.err(e))?
        };
        tx.execute("DELETE FROM artifact_bundles WHERE backup = 1", [])
            .map_err(|e| self.err(e))?;
        tx.execute(
            "INSERT INTO artifact_bundles (id, name, backup, body) VALUES (?1, ?2, 1, ?3)",
            params![b.record.id, b.record.name, b.record.body.to_string()],
        )
        .map_err(|e| self.insert_err("backup", &b.record, e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(old)
    }

    fn replace_artifacts(&self, rows: &[ArtifactRow]) -> Result<Vec<String>> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let db = |e| self.err(e);
        let ids_of = |kind: ArtifactKind| -> Result<Vec<String>> {
            let mut st = tx
                .prepare(&format!("SELECT id FROM {}", table(kind)))
                .map_err(db)?;
            let r = st
                .query_map([], |r| r.get(0))
                .map_err(db)?
                .collect::<rusqlite::Result<Vec<String>>>()
                .map_err(db)?;
            Ok(r)
        };
        let kept =
            |kind: ArtifactKind, id: &str| rows.iter().any(|r| r.kind == kind && r.record.id == id);
        // What goes, and whether an OS volume still needs it (checked before any change).
        let mut gone: Vec<(ArtifactKind, String)> = Vec::new();
        for kind in ArtifactKind::ALL {
            for id in ids_of(kind)? {
                if !kept(kind, &id) {
                    gone.push((kind, id));
                }
            }
        }
        for (kind, id) in &gone {
            let users: Vec<UsedBy> = self
                .users_in(&tx, *kind, id)?
                .into_iter()
                .filter(|u| u.what == "OS volume")
                .collect();
            if !users.is_empty() {
                return Err(CatalogError::InUse {
                    what: kind.what(),
                    id: id.clone(),
                    users,
                });
            }
        }
        let mut freed = Vec::new();
        tx.execute_batch(
            "DELETE FROM build_plan_steps; \
             UPDATE deployment_plans SET build_plan_id = NULL, golden_image_id = NULL;",
        )
        .map_err(db)?;
        for kind in [
            ArtifactKind::DeploymentPlan,
            ArtifactKind::BuildPlan,
            ArtifactKind::PlanScript,
            ArtifactKind::GoldenImage,
        ] {
            for (k, id) in gone.iter().filter(|(k, _)| *k == kind) {
                if *k == ArtifactKind::GoldenImage {
                    let s: Option<String> = tx
                        .query_row(
                            "SELECT store_image FROM golden_images WHERE id = ?1",
                            [id],
                            |r| r.get(0),
                        )
                        .map_err(db)?;
                    freed.extend(s);
                }
                tx.execute(&format!("DELETE FROM {} WHERE id = ?1", table(*k)), [id])
                    .map_err(db)?;
            }
            // Names of the rows that stay are freed for the moment, so that names may move
            // between them (a name is unique; an id never starts with U+0001).
            tx.execute(
                &format!("UPDATE {} SET name = char(1) || id", table(kind)),
                [],
            )
            .map_err(db)?;
        }
        for kind in [
            ArtifactKind::PlanScript,
            ArtifactKind::GoldenImage,
            ArtifactKind::BuildPlan,
            ArtifactKind::DeploymentPlan,
        ] {
            for r in rows.iter().filter(|r| r.kind == kind) {
                tx.execute(
                    &format!(
                        "INSERT INTO {} (id, name, body) VALUES (?1, ?2, ?3) \
                         ON CONFLICT(id) DO UPDATE SET name = excluded.name, body = excluded.body",
                        table(kind)
                    ),
                    params![r.record.id, r.record.name, r.record.body.to_string()],
                )
                .map_err(|e| self.insert_err(kind.what(), &r.record, e))?;
                self.write_links(&tx, kind, &r.record.id, &r.links)
                    .map_err(|e| self.insert_err(kind.what(), &r.record, e))?;
            }
        }
        tx.commit().map_err(db)?;
        // A store image still named by a row that stays is not freed.
        let still: Vec<&str> = rows
            .iter()
            .filter_map(|r| r.links.store_image.as_deref())
            .collect();
        freed.retain(|s| !still.contains(&s.as_str()));
        Ok(freed)
    }

    fn delete_deployment_plan_detaching(&self, id: &str) -> Result<Vec<UsedBy>> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let users = self.users_in(&tx, ArtifactKind::DeploymentPlan, id)?;
        tx.execute(
            "UPDATE os_volumes SET deployment_plan_id = NULL, \
             body = json_set(body, '$.deploymentPlanUri', json('null')) \
             WHERE deployment_plan_id = ?1",
            [id],
        )
        .map_err(|e| self.err(e))?;
        let n = tx
            .execute("DELETE FROM deployment_plans WHERE id = ?1", [id])
            .map_err(|e| self.err(e))?;
        if n == 0 {
            return Err(CatalogError::NotFound {
                what: ArtifactKind::DeploymentPlan.what(),
                key: id.into(),
            });
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(users)
    }
}
