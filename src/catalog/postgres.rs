//! The PostgreSQL backend: one catalog that several strata nodes share
//! (`--catalog postgres://USER@HOST:PORT/DB`, or `postgresql://`; the password from the
//! URL or `PGPASSWORD`; TCP, or a unix socket's directory as
//! `postgresql://USER@/DB?host=/path`; no TLS, so keep the server on a trusted network or
//! the same host).
//!
//! Same semantics as `sqlite.rs`: the references are the database's foreign keys (a delete
//! that loses a race with another node's new reference fails on the key and is reported
//! as `InUse`, naming the users then found), names and ids are unique by constraints (a
//! clash on either is `Conflict`), a change and its links are one transaction, a session
//! is checked and extended in one statement, and lists sort by byte order (`COLLATE "C"`,
//! SQLite's order) whatever the database's locale. Sequence numbers (tasks, deployment
//! records) are identity columns, so two nodes never draw the same one. The two writes
//! that read a whole table first, a restore and storing the backup, lock their tables so
//! that nodes take turns, as SQLite's one writer does.
//!
//! The `postgres` crate's client drives its connection with a runtime of its own and so
//! cannot be used from a thread that runs async tasks (the API's, iSCSI's). Each
//! connection therefore lives on a worker thread of its own; a call hands the worker a
//! job and waits for its answer, like any blocking call, from any thread. Connections are
//! opened when first needed and opened again after the server dropped them.

use std::sync::{mpsc, Arc};

use parking_lot::Mutex;
use postgres::error::SqlState;
use postgres::{Client, GenericClient, NoTls};
use serde_json::Value;

use super::backend::{
    ArtifactRow, Backend, BundleRow, Links, OsVolumeRow, Record, Result, SessionRow, TaskRow,
    UsedBy, User,
};
use super::pg_migrate::{self, MigrateError};
use super::CatalogError;
use crate::plan::artifacts::{ArtifactKind, BUILD_PLANS_URI, DEPLOYMENT_PLANS_URI};

/// How many connections (worker threads) one node keeps at most.
const WORKERS: usize = 4;

const OS_VOLUMES_URI: &str = "/rest/os-volumes/";

fn table(kind: ArtifactKind) -> &'static str {
    match kind {
        ArtifactKind::PlanScript => "plan_scripts",
        ArtifactKind::BuildPlan => "build_plans",
        ArtifactKind::DeploymentPlan => "deployment_plans",
        ArtifactKind::GoldenImage => "golden_images",
    }
}

/// Whether `s` is a PostgreSQL catalog's location (`postgres://` or `postgresql://`).
pub fn is_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

/// A failure inside a job: the server's error (given the catalog's name by [`Pool::run`])
/// or a catalog error as it is.
enum Fail {
    Pg(postgres::Error),
    Catalog(CatalogError),
}

impl From<postgres::Error> for Fail {
    fn from(e: postgres::Error) -> Self {
        Fail::Pg(e)
    }
}

impl From<CatalogError> for Fail {
    fn from(e: CatalogError) -> Self {
        Fail::Catalog(e)
    }
}

/// A job for a worker, given its connection or why there is none; true asks for it to be
/// run again on a new connection (the first one was lost under it).
type Job = Box<dyn FnMut(std::result::Result<&mut Client, postgres::Error>) -> bool + Send>;

/// Worker threads, each with at most one connection, taking jobs from one queue.
struct Pool {
    jobs: mpsc::Sender<Job>,
    location: Arc<str>,
}

impl Pool {
    fn start(config: postgres::Config, location: Arc<str>) -> Result<Pool> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..WORKERS {
            let rx = rx.clone();
            let config = config.clone();
            std::thread::Builder::new()
                .name(format!("catalog-pg-{i}"))
                .spawn(move || worker(&config, &rx))
                .map_err(|e| {
                    CatalogError::Invalid(format!("starting the catalog's worker threads: {e}"))
                })?;
        }
        Ok(Pool { jobs: tx, location })
    }

    fn err(&self, e: postgres::Error) -> CatalogError {
        CatalogError::Postgres {
            url: self.location.to_string(),
            source: e,
        }
    }

    /// Runs `f` on a worker's connection and waits for its answer. When the connection
    /// turns out to be lost (the server restarted, or ended it), `f` runs once more on a
    /// new one: a transaction cut off that way was rolled back by the server.
    fn run<T: Send + 'static>(
        &self,
        f: impl Fn(&mut Client) -> std::result::Result<T, Fail> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = mpsc::sync_channel(1);
        let mut tries = 0;
        let job: Job = Box::new(move |conn| {
            tries += 1;
            let r = match conn {
                Ok(c) => {
                    let r = f(c);
                    if r.is_err() && c.is_closed() && tries == 1 {
                        return true;
                    }
                    r
                }
                Err(e) => Err(Fail::Pg(e)),
            };
            let _ = tx.send(r);
            false
        });
        let gone = || {
            CatalogError::Invalid(format!(
                "catalog {}: its worker threads stopped",
                self.location
            ))
        };
        self.jobs.send(job).map_err(|_| gone())?;
        match rx.recv().map_err(|_| gone())? {
            Ok(v) => Ok(v),
            Err(Fail::Pg(e)) => Err(self.err(e)),
            Err(Fail::Catalog(e)) => Err(e),
        }
    }
}

/// One worker: takes jobs until the pool is dropped, (re)connecting first when it has no
/// connection or the server closed it; a failed connect is that job's answer.
fn worker(config: &postgres::Config, rx: &Mutex<mpsc::Receiver<Job>>) {
    let mut conn: Option<Client> = None;
    loop {
        let Ok(mut job) = rx.lock().recv() else {
            return;
        };
        loop {
            if conn.as_ref().is_some_and(Client::is_closed) {
                conn = None;
            }
            if conn.is_none() {
                match config.connect(NoTls) {
                    Ok(c) => conn = Some(c),
                    Err(e) => {
                        job(Err(e));
                        break;
                    }
                }
            }
            let Some(c) = conn.as_mut() else { break };
            if !job(Ok(c)) {
                break;
            }
            conn = None;
        }
    }
}

/// The PostgreSQL catalog.
pub struct Postgres {
    pool: Pool,
}

/// `postgres://user@host:port/db`: the catalog's name in messages (never its password).
pub fn describe(config: &postgres::Config) -> String {
    let user = config.get_user().unwrap_or("");
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or(user);
    format!("postgres://{user}@{host}:{port}/{db}")
}

/// Parses a catalog URL: `postgres://` or `postgresql://`, the password from the URL or
/// else from `PGPASSWORD`.
pub fn parse_url(url: &str, pgpassword: Option<&str>) -> Result<postgres::Config> {
    if !is_url(url) {
        return Err(CatalogError::Invalid(format!(
            "catalog {:?}: a PostgreSQL catalog is a postgres:// or postgresql:// URL",
            redact(url)
        )));
    }
    let mut config: postgres::Config = url.parse().map_err(|e| {
        CatalogError::Invalid(format!(
            "catalog {:?} is not a PostgreSQL URL strata can use: {e} \
             (expected postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE)",
            redact(url)
        ))
    })?;
    if config.get_password().is_none() {
        if let Some(p) = pgpassword.filter(|p| !p.is_empty()) {
            config.password(p);
        }
    }
    if config.get_user().is_none() {
        return Err(CatalogError::Invalid(format!(
            "catalog {:?} names no user: write postgres://USER@HOST/DATABASE",
            redact(url)
        )));
    }
    config.application_name("strata");
    Ok(config)
}

/// `url` with the password (if any) replaced by `***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.into();
    };
    let (auth, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match auth.rsplit_once('@') {
        Some((cred, host)) => match cred.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.into(),
        },
        None => url.into(),
    }
}

/// A unique violation: `Conflict` naming the name or the id, by the constraint.
fn unique_or(e: postgres::Error, what: &'static str, rec: &Record) -> Fail {
    match e.as_db_error() {
        Some(db) if *db.code() == SqlState::UNIQUE_VIOLATION => {
            let detail = if db.constraint().is_some_and(|c| c.ends_with("_name_key")) {
                format!("the name {:?} is taken", rec.name)
            } else {
                format!("the id {:?} is taken", rec.id)
            };
            Fail::Catalog(CatalogError::Conflict { what, detail })
        }
        Some(db) if *db.code() == SqlState::FOREIGN_KEY_VIOLATION => {
            Fail::Catalog(CatalogError::Missing {
                what,
                detail: "an artifact it refers to is not in the catalog".into(),
            })
        }
        _ => Fail::Pg(e),
    }
}

fn is_code(e: &postgres::Error, code: &SqlState) -> bool {
    e.code() == Some(code)
}

fn body(location: &str, text: &str) -> std::result::Result<Value, Fail> {
    serde_json::from_str(text).map_err(|e| {
        Fail::Catalog(CatalogError::Corrupt {
            path: location.into(),
            detail: e.to_string(),
        })
    })
}

fn write_links(
    tx: &mut impl GenericClient,
    kind: ArtifactKind,
    id: &str,
    links: &Links,
) -> std::result::Result<(), postgres::Error> {
    match kind {
        ArtifactKind::BuildPlan => {
            tx.execute(
                "DELETE FROM build_plan_steps WHERE build_plan_id = $1",
                &[&id],
            )?;
            for s in &links.plan_scripts {
                tx.execute(
                    "INSERT INTO build_plan_steps (build_plan_id, plan_script_id) \
                     VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&id, s],
                )?;
            }
        }
        ArtifactKind::DeploymentPlan => {
            tx.execute(
                "UPDATE deployment_plans SET build_plan_id = $2, golden_image_id = $3 \
                 WHERE id = $1",
                &[&id, &links.build_plan, &links.golden_image],
            )?;
        }
        ArtifactKind::GoldenImage => {
            tx.execute(
                "UPDATE golden_images SET store_image = $2 WHERE id = $1",
                &[&id, &links.store_image],
            )?;
        }
        ArtifactKind::PlanScript => {}
    }
    Ok(())
}

fn users_in(
    c: &mut impl GenericClient,
    kind: ArtifactKind,
    id: &str,
) -> std::result::Result<Vec<UsedBy>, postgres::Error> {
    let mut q = |sql: &str, what: &'static str, uri: &str| -> std::result::Result<_, _> {
        Ok::<_, postgres::Error>(
            c.query(sql, &[&id])?
                .into_iter()
                .map(|r| {
                    let uid: String = r.get(0);
                    UsedBy {
                        what,
                        uri: format!("{uri}{uid}"),
                        id: uid,
                        name: r.get(1),
                    }
                })
                .collect::<Vec<_>>(),
        )
    };
    let mut users = match kind {
        ArtifactKind::PlanScript => q(
            "SELECT b.id, b.name FROM build_plan_steps s JOIN build_plans b \
             ON b.id = s.build_plan_id WHERE s.plan_script_id = $1 ORDER BY b.name COLLATE \"C\"",
            "build plan",
            BUILD_PLANS_URI,
        )?,
        ArtifactKind::BuildPlan => q(
            "SELECT id, name FROM deployment_plans WHERE build_plan_id = $1 \
             ORDER BY name COLLATE \"C\"",
            "deployment plan",
            DEPLOYMENT_PLANS_URI,
        )?,
        ArtifactKind::DeploymentPlan => q(
            "SELECT id, name FROM os_volumes WHERE deployment_plan_id = $1 \
             ORDER BY name COLLATE \"C\"",
            "OS volume",
            OS_VOLUMES_URI,
        )?,
        ArtifactKind::GoldenImage => {
            let mut u = q(
                "SELECT id, name FROM deployment_plans WHERE golden_image_id = $1 \
                 ORDER BY name COLLATE \"C\"",
                "deployment plan",
                DEPLOYMENT_PLANS_URI,
            )?;
            u.extend(q(
                "SELECT id, name FROM os_volumes WHERE golden_image_id = $1 \
                 ORDER BY name COLLATE \"C\"",
                "OS volume",
                OS_VOLUMES_URI,
            )?);
            u
        }
    };
    users.dedup();
    Ok(users)
}

const VOLUME_COLUMNS: &str =
    "SELECT id, name, body, store_volume, deployment_plan_id, golden_image_id FROM os_volumes";

fn volume_row(location: &str, r: &postgres::Row) -> std::result::Result<OsVolumeRow, Fail> {
    Ok(OsVolumeRow {
        record: Record {
            id: r.get(0),
            name: r.get(1),
            body: body(location, r.get(2))?,
        },
        store_volume: r.get(3),
        deployment_plan: r.get(4),
        golden_image: r.get(5),
    })
}

fn bundle_row(location: &str, r: &postgres::Row) -> std::result::Result<BundleRow, Fail> {
    Ok(BundleRow {
        record: Record {
            id: r.get(0),
            name: r.get(1),
            body: body(location, r.get(2))?,
        },
        backup: r.get(3),
    })
}

/// Moves the exports' counter, in the transaction that changed them.
fn bump_exports(tx: &mut impl GenericClient) -> std::result::Result<(), postgres::Error> {
    tx.execute(
        "UPDATE counters SET value = value + 1 WHERE name = 'exports'",
        &[],
    )?;
    Ok(())
}

fn task_row(location: &str, r: &postgres::Row) -> std::result::Result<TaskRow, Fail> {
    Ok(TaskRow {
        id: r.get(0),
        state: r.get(1),
        node: r.get(2),
        body: body(location, r.get(3))?,
    })
}

impl Postgres {
    /// Connects to the catalog at `url` and migrates it (`PGPASSWORD` is read when the
    /// URL has no password).
    pub fn open(url: &str) -> Result<Postgres> {
        let pw = std::env::var("PGPASSWORD").ok();
        let config = parse_url(url, pw.as_deref())?;
        let location: Arc<str> = describe(&config).into();
        let pool = Pool::start(config, location.clone())?;
        let loc = location.clone();
        pool.run(move |c| {
            pg_migrate::migrate(c, &loc).map_err(|e| match e {
                MigrateError::Pg(e) => Fail::Pg(e),
                MigrateError::Catalog(e) => Fail::Catalog(e),
            })
        })?;
        Ok(Postgres { pool })
    }

    /// The catalog's name in messages: its URL without a password.
    pub fn location(&self) -> &str {
        &self.pool.location
    }

    fn loc(&self) -> Arc<str> {
        self.pool.location.clone()
    }
}

impl Backend for Postgres {
    fn insert_artifact(&self, kind: ArtifactKind, rec: &Record, links: &Links) -> Result<()> {
        let (rec, links) = (rec.clone(), links.clone());
        self.pool.run(move |c| {
            let what = kind.what();
            let mut tx = c.transaction()?;
            tx.execute(
                &*format!(
                    "INSERT INTO {} (id, name, body) VALUES ($1, $2, $3)",
                    table(kind)
                ),
                &[&rec.id, &rec.name, &rec.body.to_string()],
            )
            .map_err(|e| unique_or(e, what, &rec))?;
            write_links(&mut tx, kind, &rec.id, &links).map_err(|e| unique_or(e, what, &rec))?;
            tx.commit()?;
            Ok(())
        })
    }

    fn update_artifact(&self, kind: ArtifactKind, rec: &Record, links: &Links) -> Result<()> {
        let (rec, links) = (rec.clone(), links.clone());
        self.pool.run(move |c| {
            let what = kind.what();
            let mut tx = c.transaction()?;
            let n = tx
                .execute(
                    &*format!(
                        "UPDATE {} SET name = $2, body = $3 WHERE id = $1",
                        table(kind)
                    ),
                    &[&rec.id, &rec.name, &rec.body.to_string()],
                )
                .map_err(|e| unique_or(e, what, &rec))?;
            if n == 0 {
                return Err(Fail::Catalog(CatalogError::NotFound {
                    what,
                    key: rec.id.clone(),
                }));
            }
            write_links(&mut tx, kind, &rec.id, &links).map_err(|e| unique_or(e, what, &rec))?;
            tx.commit()?;
            Ok(())
        })
    }

    fn get_artifact(&self, kind: ArtifactKind, id: &str) -> Result<Option<Record>> {
        let (id, loc) = (id.to_owned(), self.loc());
        self.pool.run(move |c| {
            c.query_opt(
                &*format!("SELECT id, name, body FROM {} WHERE id = $1", table(kind)),
                &[&id],
            )?
            .map(|r| {
                Ok(Record {
                    id: r.get(0),
                    name: r.get(1),
                    body: body(&loc, r.get(2))?,
                })
            })
            .transpose()
        })
    }

    fn find_artifact(&self, kind: ArtifactKind, key: &str) -> Result<Option<Record>> {
        let (key, loc) = (key.to_owned(), self.loc());
        self.pool.run(move |c| {
            c.query_opt(
                &*format!(
                    "SELECT id, name, body FROM {} WHERE id = $1 OR name = $1 \
                     ORDER BY (id = $1) DESC LIMIT 1",
                    table(kind)
                ),
                &[&key],
            )?
            .map(|r| {
                Ok(Record {
                    id: r.get(0),
                    name: r.get(1),
                    body: body(&loc, r.get(2))?,
                })
            })
            .transpose()
        })
    }

    fn list_artifacts(&self, kind: ArtifactKind) -> Result<Vec<Record>> {
        let loc = self.loc();
        self.pool.run(move |c| {
            c.query(
                &*format!(
                    "SELECT id, name, body FROM {} ORDER BY name COLLATE \"C\"",
                    table(kind)
                ),
                &[],
            )?
            .iter()
            .map(|r| {
                Ok(Record {
                    id: r.get(0),
                    name: r.get(1),
                    body: body(&loc, r.get(2))?,
                })
            })
            .collect()
        })
    }

    fn delete_artifact(&self, kind: ArtifactKind, id: &str) -> Result<()> {
        let id = id.to_owned();
        self.pool.run(move |c| {
            let what = kind.what();
            let in_use = |users| {
                Fail::Catalog(CatalogError::InUse {
                    what,
                    id: id.clone(),
                    users,
                })
            };
            let mut tx = c.transaction()?;
            let users = users_in(&mut tx, kind, &id)?;
            if !users.is_empty() {
                return Err(in_use(users));
            }
            let n = match tx.execute(
                &*format!("DELETE FROM {} WHERE id = $1", table(kind)),
                &[&id],
            ) {
                Ok(n) => n,
                // Another node added a reference since: name it.
                Err(e) if is_code(&e, &SqlState::FOREIGN_KEY_VIOLATION) => {
                    drop(tx);
                    let users = users_in(c, kind, &id)?;
                    return Err(if users.is_empty() {
                        Fail::Pg(e)
                    } else {
                        in_use(users)
                    });
                }
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                return Err(Fail::Catalog(CatalogError::NotFound {
                    what,
                    key: id.clone(),
                }));
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn users_of(&self, kind: ArtifactKind, id: &str) -> Result<Vec<UsedBy>> {
        let id = id.to_owned();
        self.pool.run(move |c| Ok(users_in(c, kind, &id)?))
    }

    fn links_of(&self, kind: ArtifactKind, id: &str) -> Result<Links> {
        let id = id.to_owned();
        self.pool.run(move |c| {
            let mut l = Links::default();
            match kind {
                ArtifactKind::BuildPlan => {
                    l.plan_scripts = c
                        .query(
                            "SELECT plan_script_id FROM build_plan_steps WHERE build_plan_id = $1",
                            &[&id],
                        )?
                        .iter()
                        .map(|r| r.get(0))
                        .collect();
                }
                ArtifactKind::DeploymentPlan => {
                    if let Some(r) = c.query_opt(
                        "SELECT build_plan_id, golden_image_id FROM deployment_plans WHERE id = $1",
                        &[&id],
                    )? {
                        l.build_plan = r.get(0);
                        l.golden_image = r.get(1);
                    }
                }
                ArtifactKind::GoldenImage => {
                    l.store_image = c
                        .query_opt(
                            "SELECT store_image FROM golden_images WHERE id = $1",
                            &[&id],
                        )?
                        .and_then(|r| r.get(0));
                }
                ArtifactKind::PlanScript => {}
            }
            Ok(l)
        })
    }

    fn insert_os_volume(&self, v: &OsVolumeRow) -> Result<()> {
        let v = v.clone();
        self.pool.run(move |c| {
            c.execute(
                "INSERT INTO os_volumes (id, name, body, store_volume, deployment_plan_id, \
                 golden_image_id) VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &v.record.id,
                    &v.record.name,
                    &v.record.body.to_string(),
                    &v.store_volume,
                    &v.deployment_plan,
                    &v.golden_image,
                ],
            )
            .map_err(|e| unique_or(e, "OS volume", &v.record))?;
            Ok(())
        })
    }

    fn get_os_volume(&self, id: &str) -> Result<Option<OsVolumeRow>> {
        let (id, loc) = (id.to_owned(), self.loc());
        self.pool.run(move |c| {
            c.query_opt(&*format!("{VOLUME_COLUMNS} WHERE id = $1"), &[&id])?
                .map(|r| volume_row(&loc, &r))
                .transpose()
        })
    }

    fn list_os_volumes(&self) -> Result<Vec<OsVolumeRow>> {
        let loc = self.loc();
        self.pool.run(move |c| {
            c.query(
                &*format!("{VOLUME_COLUMNS} ORDER BY name COLLATE \"C\""),
                &[],
            )?
            .iter()
            .map(|r| volume_row(&loc, r))
            .collect()
        })
    }

    fn delete_os_volume(&self, id: &str) -> Result<()> {
        let id = id.to_owned();
        self.pool.run(move |c| {
            let n = c.execute("DELETE FROM os_volumes WHERE id = $1", &[&id])?;
            if n == 0 {
                return Err(Fail::Catalog(CatalogError::NotFound {
                    what: "OS volume",
                    key: id.clone(),
                }));
            }
            Ok(())
        })
    }

    fn insert_deployment(&self, id: &str, os_volume: &str, record: &Value) -> Result<()> {
        let (id, os_volume, record) = (id.to_owned(), os_volume.to_owned(), record.to_string());
        self.pool.run(move |c| {
            match c.execute(
                "INSERT INTO deployments (id, os_volume_id, record) VALUES ($1, $2, $3)",
                &[&id, &os_volume, &record],
            ) {
                Ok(_) => Ok(()),
                Err(e)
                    if is_code(&e, &SqlState::FOREIGN_KEY_VIOLATION)
                        || is_code(&e, &SqlState::UNIQUE_VIOLATION) =>
                {
                    Err(Fail::Catalog(CatalogError::Missing {
                        what: "deployment record",
                        detail: format!("no OS volume has the id {os_volume:?}"),
                    }))
                }
                Err(e) => Err(e.into()),
            }
        })
    }

    fn deployments_of(&self, os_volume: &str) -> Result<Vec<Value>> {
        let (os_volume, loc) = (os_volume.to_owned(), self.loc());
        self.pool.run(move |c| {
            c.query(
                "SELECT record FROM deployments WHERE os_volume_id = $1 ORDER BY seq",
                &[&os_volume],
            )?
            .iter()
            .map(|r| body(&loc, r.get(0)))
            .collect()
        })
    }

    fn insert_user(&self, name: &str, password_hash: &str, created: &str) -> Result<()> {
        let (name, hash, created) = (
            name.to_owned(),
            password_hash.to_owned(),
            created.to_owned(),
        );
        self.pool.run(move |c| {
            match c.execute(
                "INSERT INTO users (name, password_hash, created) VALUES ($1, $2, $3)",
                &[&name, &hash, &created],
            ) {
                Ok(_) => Ok(()),
                Err(e) if is_code(&e, &SqlState::UNIQUE_VIOLATION) => {
                    Err(Fail::Catalog(CatalogError::Conflict {
                        what: "user",
                        detail: format!("a user named {name:?} exists"),
                    }))
                }
                Err(e) => Err(e.into()),
            }
        })
    }

    fn delete_user(&self, name: &str) -> Result<bool> {
        let name = name.to_owned();
        self.pool
            .run(move |c| Ok(c.execute("DELETE FROM users WHERE name = $1", &[&name])? > 0))
    }

    fn list_users(&self) -> Result<Vec<User>> {
        self.pool.run(move |c| {
            Ok(c.query(
                "SELECT name, created FROM users ORDER BY name COLLATE \"C\"",
                &[],
            )?
            .iter()
            .map(|r| User {
                name: r.get(0),
                created: r.get(1),
            })
            .collect())
        })
    }

    fn password_hash(&self, name: &str) -> Result<Option<String>> {
        let name = name.to_owned();
        self.pool.run(move |c| {
            Ok(
                c.query_opt("SELECT password_hash FROM users WHERE name = $1", &[&name])?
                    .map(|r| r.get(0)),
            )
        })
    }

    fn insert_session(&self, s: &SessionRow) -> Result<()> {
        let s = s.clone();
        self.pool.run(move |c| {
            c.execute(
                "INSERT INTO sessions (token_hash, user_name, created, expires) \
                 VALUES ($1, $2, $3, $4)",
                &[&s.token_hash, &s.user, &s.created, &s.expires],
            )?;
            Ok(())
        })
    }

    fn touch_session(
        &self,
        token_hash: &str,
        now: i64,
        extend_to: Option<i64>,
    ) -> Result<Option<SessionRow>> {
        let token_hash = token_hash.to_owned();
        self.pool.run(move |c| {
            let row = match extend_to {
                // One statement: an expired session is neither extended nor returned.
                Some(t) => c.query_opt(
                    "UPDATE sessions SET expires = GREATEST(expires, $3) \
                     WHERE token_hash = $1 AND expires > $2 \
                     RETURNING token_hash, user_name, created, expires",
                    &[&token_hash, &now, &t],
                )?,
                None => c.query_opt(
                    "SELECT token_hash, user_name, created, expires FROM sessions \
                     WHERE token_hash = $1 AND expires > $2",
                    &[&token_hash, &now],
                )?,
            };
            Ok(row.map(|r| SessionRow {
                token_hash: r.get(0),
                user: r.get(1),
                created: r.get(2),
                expires: r.get(3),
            }))
        })
    }

    fn delete_session(&self, token_hash: &str) -> Result<bool> {
        let token_hash = token_hash.to_owned();
        self.pool.run(move |c| {
            Ok(c.execute("DELETE FROM sessions WHERE token_hash = $1", &[&token_hash])? > 0)
        })
    }

    fn purge_sessions(&self, now: i64) -> Result<usize> {
        self.pool.run(move |c| {
            Ok(c.execute("DELETE FROM sessions WHERE expires <= $1", &[&now])? as usize)
        })
    }

    fn insert_task(&self, t: &TaskRow) -> Result<()> {
        let t = t.clone();
        self.pool.run(move |c| {
            c.execute(
                "INSERT INTO tasks (id, state, body, node) VALUES ($1, $2, $3, $4)",
                &[&t.id, &t.state, &t.body.to_string(), &t.node],
            )?;
            Ok(())
        })
    }

    fn update_task(&self, t: &TaskRow) -> Result<()> {
        let t = t.clone();
        self.pool.run(move |c| {
            let n = c.execute(
                "UPDATE tasks SET state = $2, body = $3 WHERE id = $1",
                &[&t.id, &t.state, &t.body.to_string()],
            )?;
            if n == 0 {
                return Err(Fail::Catalog(CatalogError::NotFound {
                    what: "task",
                    key: t.id.clone(),
                }));
            }
            Ok(())
        })
    }

    fn get_task(&self, id: &str) -> Result<Option<TaskRow>> {
        let (id, loc) = (id.to_owned(), self.loc());
        self.pool.run(move |c| {
            c.query_opt(
                "SELECT id, state, node, body FROM tasks WHERE id = $1",
                &[&id],
            )?
            .map(|r| task_row(&loc, &r))
            .transpose()
        })
    }

    fn list_tasks(&self) -> Result<Vec<TaskRow>> {
        let loc = self.loc();
        self.pool.run(move |c| {
            c.query("SELECT id, state, node, body FROM tasks ORDER BY seq", &[])?
                .iter()
                .map(|r| task_row(&loc, r))
                .collect()
        })
    }

    // ---- iSCSI exports ------------------------------------------------------------------

    fn list_exports(&self, node: &str) -> Result<Vec<Value>> {
        let (node, loc) = (node.to_owned(), self.loc());
        self.pool.run(move |c| {
            c.query(
                "SELECT body FROM exports WHERE node = $1 ORDER BY volume COLLATE \"C\"",
                &[&node],
            )?
            .iter()
            .map(|r| body(&loc, r.get(0)))
            .collect()
        })
    }

    fn put_export(&self, node: &str, volume: &str, iqn: &str, body: &Value) -> Result<()> {
        let (node, volume, iqn, body) = (
            node.to_owned(),
            volume.to_owned(),
            iqn.to_owned(),
            body.to_string(),
        );
        self.pool.run(move |c| {
            let mut tx = c.transaction()?;
            let holder = tx.query_opt(
                "SELECT volume FROM exports \
                 WHERE node = $1 AND lower(iqn) = lower($2) AND volume <> $3",
                &[&node, &iqn, &volume],
            )?;
            if let Some(r) = holder {
                let other: String = r.get(0);
                return Err(Fail::Catalog(CatalogError::Conflict {
                    what: "export",
                    detail: format!("target name {iqn} is already used by volume {other:?}"),
                }));
            }
            tx.execute(
                "INSERT INTO exports (node, volume, iqn, body) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (node, volume) DO UPDATE SET iqn = EXCLUDED.iqn, body = EXCLUDED.body",
                &[&node, &volume, &iqn, &body],
            )?;
            bump_exports(&mut tx)?;
            tx.commit()?;
            Ok(())
        })
    }

    fn delete_export(&self, node: &str, volume: &str) -> Result<bool> {
        let (node, volume) = (node.to_owned(), volume.to_owned());
        self.pool.run(move |c| {
            let mut tx = c.transaction()?;
            let n = tx.execute(
                "DELETE FROM exports WHERE node = $1 AND volume = $2",
                &[&node, &volume],
            )?;
            bump_exports(&mut tx)?;
            tx.commit()?;
            Ok(n > 0)
        })
    }

    fn exports_stamp(&self) -> Result<u64> {
        self.pool.run(move |c| {
            let v: i64 = c
                .query_one("SELECT value FROM counters WHERE name = 'exports'", &[])?
                .get(0);
            Ok(v as u64)
        })
    }

    // ---- Artifact bundles, backups and restore ---------------------------------------

    fn insert_bundle(&self, b: &BundleRow) -> Result<()> {
        let b = b.clone();
        self.pool.run(move |c| {
            c.execute(
                "INSERT INTO artifact_bundles (id, name, backup, body) VALUES ($1, $2, $3, $4)",
                &[
                    &b.record.id,
                    &b.record.name,
                    &b.backup,
                    &b.record.body.to_string(),
                ],
            )
            .map_err(|e| unique_or(e, "artifact bundle", &b.record))?;
            Ok(())
        })
    }

    fn update_bundle(&self, b: &BundleRow) -> Result<()> {
        let b = b.clone();
        self.pool.run(move |c| {
            let n = c.execute(
                "UPDATE artifact_bundles SET name = $2, body = $3 WHERE id = $1",
                &[&b.record.id, &b.record.name, &b.record.body.to_string()],
            )?;
            if n == 0 {
                return Err(Fail::Catalog(CatalogError::NotFound {
                    what: "artifact bundle",
                    key: b.record.id.clone(),
                }));
            }
            Ok(())
        })
    }

    fn get_bundle(&self, id: &str) -> Result<Option<BundleRow>> {
        let (id, loc) = (id.to_owned(), self.loc());
        self.pool.run(move |c| {
            c.query_opt(
                "SELECT id, name, body, backup FROM artifact_bundles WHERE id = $1",
                &[&id],
            )?
            .map(|r| bundle_row(&loc, &r))
            .transpose()
        })
    }

    fn list_bundles(&self, backups: bool) -> Result<Vec<BundleRow>> {
        let loc = self.loc();
        self.pool.run(move |c| {
            c.query(
                "SELECT id, name, body, backup FROM artifact_bundles WHERE backup = $1 \
                 ORDER BY name COLLATE \"C\", id COLLATE \"C\"",
                &[&backups],
            )?
            .iter()
            .map(|r| bundle_row(&loc, r))
            .collect()
        })
    }

    fn delete_bundle(&self, id: &str) -> Result<bool> {
        let id = id.to_owned();
        self.pool
            .run(move |c| Ok(c.execute("DELETE FROM artifact_bundles WHERE id = $1", &[&id])? > 0))
    }

    fn replace_backup(&self, b: &BundleRow) -> Result<Vec<String>> {
        let b = b.clone();
        self.pool.run(move |c| {
            let mut tx = c.transaction()?;
            // Two nodes storing a backup at once take turns: otherwise neither sees the
            // other's uncommitted row, neither deletes it, and two backups remain.
            tx.batch_execute("LOCK TABLE artifact_bundles IN SHARE ROW EXCLUSIVE MODE")?;
            let old: Vec<String> = tx
                .query(
                    "SELECT id FROM artifact_bundles WHERE backup AND id <> $1",
                    &[&b.record.id],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect();
            tx.execute("DELETE FROM artifact_bundles WHERE backup", &[])?;
            tx.execute(
                "INSERT INTO artifact_bundles (id, name, backup, body) VALUES ($1, $2, TRUE, $3)",
                &[&b.record.id, &b.record.name, &b.record.body.to_string()],
            )
            .map_err(|e| unique_or(e, "backup", &b.record))?;
            tx.commit()?;
            Ok(old)
        })
    }

    fn replace_artifacts(&self, rows: &[ArtifactRow]) -> Result<Vec<String>> {
        let rows = rows.to_vec();
        self.pool.run(move |c| {
            let mut tx = c.transaction()?;
            // Other nodes' writes to the artifacts wait for the restore (reads do not), and
            // the restore starts after the ones already under way: an artifact committed
            // while it ran would be missing from what goes, yet get the placeholder name
            // below for good. Referencing tables come first, the order writers lock them.
            tx.batch_execute(
                "LOCK TABLE deployment_plans, build_plans, build_plan_steps, plan_scripts, \
                 golden_images IN EXCLUSIVE MODE",
            )?;
            let kept = |kind: ArtifactKind, id: &str| {
                rows.iter().any(|r| r.kind == kind && r.record.id == id)
            };
            // What goes, and whether an OS volume still needs it (checked before any change).
            let mut gone: Vec<(ArtifactKind, String)> = Vec::new();
            for kind in ArtifactKind::ALL {
                for r in tx.query(&*format!("SELECT id FROM {}", table(kind)), &[])? {
                    let id: String = r.get(0);
                    if !kept(kind, &id) {
                        gone.push((kind, id));
                    }
                }
            }
            for (kind, id) in &gone {
                let users: Vec<UsedBy> = users_in(&mut tx, *kind, id)?
                    .into_iter()
                    .filter(|u| u.what == "OS volume")
                    .collect();
                if !users.is_empty() {
                    return Err(Fail::Catalog(CatalogError::InUse {
                        what: kind.what(),
                        id: id.clone(),
                        users,
                    }));
                }
            }
            let mut freed = Vec::new();
            tx.batch_execute(
                "DELETE FROM build_plan_steps; \
                 UPDATE deployment_plans SET build_plan_id = NULL, golden_image_id = NULL;",
            )?;
            for kind in [
                ArtifactKind::DeploymentPlan,
                ArtifactKind::BuildPlan,
                ArtifactKind::PlanScript,
                ArtifactKind::GoldenImage,
            ] {
                for (k, id) in gone.iter().filter(|(k, _)| *k == kind) {
                    if *k == ArtifactKind::GoldenImage {
                        if let Some(r) = tx.query_opt(
                            "SELECT store_image FROM golden_images WHERE id = $1",
                            &[id],
                        )? {
                            freed.extend(r.get::<_, Option<String>>(0));
                        }
                    }
                    tx.execute(&*format!("DELETE FROM {} WHERE id = $1", table(*k)), &[id])?;
                }
                // The names of the rows that stay are freed for the moment, so that names
                // may move between them (a name is unique; an id never starts with U+0001).
                tx.execute(
                    &*format!("UPDATE {} SET name = chr(1) || id", table(kind)),
                    &[],
                )?;
            }
            for kind in [
                ArtifactKind::PlanScript,
                ArtifactKind::GoldenImage,
                ArtifactKind::BuildPlan,
                ArtifactKind::DeploymentPlan,
            ] {
                for r in rows.iter().filter(|r| r.kind == kind) {
                    tx.execute(
                        &*format!(
                            "INSERT INTO {} (id, name, body) VALUES ($1, $2, $3) \
                             ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, \
                             body = EXCLUDED.body",
                            table(kind)
                        ),
                        &[&r.record.id, &r.record.name, &r.record.body.to_string()],
                    )
                    .map_err(|e| unique_or(e, kind.what(), &r.record))?;
                    write_links(&mut tx, kind, &r.record.id, &r.links)
                        .map_err(|e| unique_or(e, kind.what(), &r.record))?;
                }
            }
            tx.commit()?;
            // A store image still named by a row that stays is not freed.
            let still: Vec<&str> = rows
                .iter()
                .filter_map(|r| r.links.store_image.as_deref())
                .collect();
            freed.retain(|s| !still.contains(&s.as_str()));
            Ok(freed)
        })
    }

    fn delete_deployment_plan_detaching(&self, id: &str) -> Result<Vec<UsedBy>> {
        let (id, loc) = (id.to_owned(), self.loc());
        self.pool.run(move |c| {
            let mut tx = c.transaction()?;
            let users = users_in(&mut tx, ArtifactKind::DeploymentPlan, &id)?;
            // The body's reference is cleared here rather than in SQL, so that the body
            // keeps its text as stored apart from that one field.
            let vols = tx.query(
                "SELECT id, body FROM os_volumes WHERE deployment_plan_id = $1 FOR UPDATE",
                &[&id],
            )?;
            for r in vols {
                let vid: String = r.get(0);
                let mut b = body(&loc, r.get(1))?;
                if let Some(o) = b.as_object_mut() {
                    o.insert("deploymentPlanUri".into(), Value::Null);
                }
                tx.execute(
                    "UPDATE os_volumes SET deployment_plan_id = NULL, body = $2 WHERE id = $1",
                    &[&vid, &b.to_string()],
                )?;
            }
            let n = tx.execute("DELETE FROM deployment_plans WHERE id = $1", &[&id])?;
            if n == 0 {
                return Err(Fail::Catalog(CatalogError::NotFound {
                    what: ArtifactKind::DeploymentPlan.what(),
                    key: id.clone(),
                }));
            }
            tx.commit()?;
            Ok(users)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::testing::{pg, pg_server::PgServer};
    use crate::catalog::{migrate, Catalog};
    use serde_json::json;

    /// This process's server, or None (printing why) when PostgreSQL is not installed.
    fn server() -> Option<&'static PgServer> {
        match pg() {
            Ok(s) => Some(s),
            Err(why) => {
                eprintln!("skipped: {why}");
                None
            }
        }
    }

    fn script(name: &str) -> Value {
        json!({"type": "PlanScript", "name": name, "planType": "deploy", "content": "echo\n",
               "description": "", "hpProvided": "false"})
    }

    fn plan(name: &str, script: &str) -> Value {
        json!({"type": "OeBuildPlan", "name": name, "oeBuildPlanType": "deploy",
               "buildStep": [{"serialNumber": "1", "planScriptUri": script}],
               "customAttributes": []})
    }

    #[test]
    fn both_backends_have_the_same_schema_versions() {
        assert_eq!(pg_migrate::current(), migrate::current());
    }

    #[test]
    fn urls_take_both_schemes_and_a_password_from_pgpassword() {
        for u in ["postgres://u@h:5433/db", "postgresql://u@h:5433/db"] {
            let c = parse_url(u, None).unwrap();
            assert_eq!(describe(&c), "postgres://u@h:5433/db");
            assert_eq!(c.get_password(), None);
        }
        let c = parse_url("postgres://u@h/db", Some("from-env")).unwrap();
        assert_eq!(c.get_password(), Some(&b"from-env"[..]));
        let c = parse_url("postgres://u:in-url@h/db", Some("from-env")).unwrap();
        assert_eq!(c.get_password(), Some(&b"in-url"[..]));
        assert!(!describe(&c).contains("in-url"));
        let c = parse_url("postgresql://u@/db?host=/run/pg&port=7", None).unwrap();
        assert_eq!(describe(&c), "postgres://u@/run/pg:7/db");
        let e = parse_url("postgres://u:secret@h:notaport/db", None).unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        assert!(e.to_string().contains("u:***@h"), "{e}");
        let e = parse_url("postgres://h/db", None).unwrap_err();
        assert!(e.to_string().contains("no user"), "{e}");
        assert!(parse_url("sqlite:x", None).is_err());
    }

    #[test]
    fn a_newer_catalog_is_refused_with_both_versions() {
        let Some(s) = server() else { return };
        let url = s.new_database().unwrap();
        drop(Catalog::open_postgres(&url).unwrap());
        let mut c = Client::connect(&url, NoTls).unwrap();
        c.batch_execute("UPDATE schema_version SET version = version + 5")
            .unwrap();
        let e = Catalog::open_postgres(&url).unwrap_err();
        let (found, supported) = (pg_migrate::current() + 5, pg_migrate::current());
        assert!(
            matches!(e, CatalogError::TooNew { found: f, supported: s, .. }
                     if f == found && s == supported),
            "{e}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains(&found.to_string())
                && msg.contains(&*format!("({supported})"))
                && msg.contains(&*format!("127.0.0.1:{}", s.port())),
            "{msg}"
        );
    }

    #[test]
    fn an_older_catalog_is_migrated_and_keeps_its_rows() {
        let Some(s) = server() else { return };
        let url = s.new_database().unwrap();
        let mut c = Client::connect(&url, NoTls).unwrap();
        let v1 = &pg_migrate::MIGRATIONS[..1];
        assert!(pg_migrate::migrate_with(&mut c, "t", v1).is_ok());
        c.batch_execute("INSERT INTO users (name, password_hash, created) VALUES ('a', 'h', 't')")
            .unwrap();
        let v2 = [v1[0], "ALTER TABLE users ADD COLUMN note TEXT;"];
        assert!(matches!(pg_migrate::migrate_with(&mut c, "t", &v2), Ok(2)));
        assert_eq!(pg_migrate::version(&mut c).unwrap(), 2);
        let r = c.query_one("SELECT name, note FROM users", &[]).unwrap();
        assert_eq!(
            (r.get::<_, String>(0), r.get::<_, Option<String>>(1)),
            ("a".into(), None)
        );
        // Again: nothing left to apply; a failing step leaves the version as it was.
        assert!(matches!(pg_migrate::migrate_with(&mut c, "t", &v2), Ok(2)));
        let bad = [v1[0], v2[1], "CREATE TABLE t3 (x INT); THIS IS NOT SQL;"];
        assert!(pg_migrate::migrate_with(&mut c, "t", &bad).is_err());
        assert_eq!(pg_migrate::version(&mut c).unwrap(), 2);
        assert!(c.query("SELECT 1 FROM t3", &[]).is_err());
    }

    #[test]
    fn nodes_opening_a_new_catalog_at_once_migrate_it_once() {
        let Some(s) = server() else { return };
        let url = s.new_database().unwrap();
        let opened: Vec<_> = (0..4)
            .map(|_| {
                let url = url.clone();
                std::thread::spawn(move || Catalog::open_postgres(&url).map(drop))
            })
            .collect();
        for t in opened {
            t.join().unwrap().unwrap();
        }
        let mut c = Client::connect(&url, NoTls).unwrap();
        assert_eq!(pg_migrate::version(&mut c).unwrap(), pg_migrate::current());
        let rows = c.query("SELECT version FROM schema_version", &[]).unwrap();
        assert_eq!(rows.len(), 1);
    }

    #[test]
    fn two_nodes_see_each_others_rows_and_references() {
        let Some(s) = server() else { return };
        let url = s.new_database().unwrap();
        let a = Catalog::open_postgres(&url).unwrap();
        let b = Catalog::open_postgres(&s.socket_url(url.rsplit('/').next().unwrap())).unwrap();
        let sc = a
            .create_artifact(ArtifactKind::PlanScript, script("s1"))
            .unwrap();
        assert_eq!(b.get_artifact(ArtifactKind::PlanScript, "s1").unwrap(), sc);
        b.create_artifact(ArtifactKind::BuildPlan, plan("bp", "s1"))
            .unwrap();
        let e = a
            .delete_artifact(ArtifactKind::PlanScript, "s1")
            .unwrap_err();
        assert!(e.to_string().contains("build plan \"bp\""), "{e}");
        let e = b
            .create_artifact(ArtifactKind::PlanScript, script("s1"))
            .unwrap_err();
        assert!(matches!(e, CatalogError::Conflict { .. }), "{e}");
        // A login on one node is a session on the other.
        a.add_user("u", "pw").unwrap();
        let hour = std::time::Duration::from_secs(3600);
        let t = b.login("u", "pw", hour).unwrap().unwrap();
        assert_eq!(a.session(&t, hour).unwrap().unwrap().user, "u");
        // Tasks from both, in the order they were made.
        let res = crate::catalog::AssociatedResource::default();
        let t1 = a.create_task("One", "u", res.clone()).unwrap();
        let t2 = b.create_task("Two", "u", res).unwrap();
        let all: Vec<String> = a
            .backend()
            .list_tasks()
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(all, vec![t1.id().to_owned(), t2.id().to_owned()]);
    }

    #[test]
    fn a_nodes_restart_fails_its_own_tasks_and_not_another_live_nodes() {
        let Some(s) = server() else { return };
        let url = s.new_database().unwrap();
        let res = crate::catalog::AssociatedResource::default();
        let a = Catalog::open_postgres(&url).unwrap().for_node("node-a");
        let running = a.create_task("Deploy", "u", res.clone()).unwrap();
        // Node B starts (its own connections) while A runs its task.
        let b = Catalog::open_postgres(&url).unwrap().for_node("node-b");
        assert!(b.unfinished_tasks().unwrap().is_empty());
        assert_eq!(b.fail_unfinished_tasks("b restarted").unwrap(), 0);
        let t = b.get_task(running.id()).unwrap();
        assert_eq!(t.task_state, crate::catalog::TaskState::Running);
        a.task_progress(running.id(), 40, "going").unwrap();
        // A dies and starts again: its task is failed.
        drop(a);
        let a = Catalog::open_postgres(&url).unwrap().for_node("node-a");
        assert_eq!(a.unfinished_tasks().unwrap().len(), 1);
        assert_eq!(a.fail_unfinished_tasks("a restarted").unwrap(), 1);
        let t = b.get_task(running.id()).unwrap();
        assert_eq!(t.task_state, crate::catalog::TaskState::Error);
        assert_eq!(t.task_errors[0].message, "a restarted");
    }

    #[test]
    fn a_task_stored_before_tasks_had_a_node_is_failed_by_a_restart() {
        let Some(s) = server() else { return };
        let url = s.new_database().unwrap();
        let mut c = Client::connect(&url, NoTls).unwrap();
        assert!(pg_migrate::migrate_with(&mut c, "t", &pg_migrate::MIGRATIONS[..3]).is_ok());
        let (id, body) = crate::catalog::testing::running_task_json();
        c.execute(
            "INSERT INTO tasks (id, state, body) VALUES ($1, 'Running', $2)",
            &[&id, &body],
        )
        .unwrap();
        let cat = Catalog::open_postgres(&url).unwrap().for_node("node-a");
        assert_eq!(cat.backend().get_task(&id).unwrap().unwrap().node, None);
        assert_eq!(cat.fail_unfinished_tasks("restarted").unwrap(), 1);
        let t = cat.get_task(&id).unwrap();
        assert_eq!(t.task_state, crate::catalog::TaskState::Error);
        let t = cat
            .create_task("Deploy", "u", crate::catalog::AssociatedResource::default())
            .unwrap();
        let row = cat.backend().get_task(t.id()).unwrap().unwrap();
        assert_eq!(row.node.as_deref(), Some("node-a"));
    }

    /// Waits until a session of database `db` waits on a lock, or `done()`.
    fn until_one_waits_on_a_lock(db: &str, url: &str, done: impl Fn() -> bool) {
        let mut watch = Client::connect(url, NoTls).unwrap();
        while !done() {
            let waiting = watch
                .query(
                    "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                     AND datname = $1",
                    &[&db],
                )
                .unwrap();
            if !waiting.is_empty() {
                return;
            }
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_restore_replaces_the_artifacts_another_node_commits_while_it_runs() {
        let Some(s) = server() else { return };
        let url = s.new_database().unwrap();
        let db = url.rsplit('/').next().unwrap().to_owned();
        let cat = Catalog::open_postgres(&url).unwrap();
        cat.create_artifact(ArtifactKind::PlanScript, script("kept"))
            .unwrap();
        let backup = cat.artifact_set().unwrap();
        cat.create_artifact(ArtifactKind::PlanScript, script("gone"))
            .unwrap();
        // Another node, mid-transaction: it edits a script the restore deletes, and adds
        // one the restore has not seen.
        let mut other = Client::connect(&url, NoTls).unwrap();
        let mut tx = other.transaction().unwrap();
        tx.batch_execute(
            "UPDATE plan_scripts SET body = body WHERE name = 'gone'; \
             INSERT INTO plan_scripts (id, name, body) VALUES ('late-id', 'late', '{}')",
        )
        .unwrap();
        let restoring = {
            let cat = cat.clone();
            std::thread::spawn(move || {
                cat.restore_artifacts(&backup, &std::collections::HashMap::new())
            })
        };
        until_one_waits_on_a_lock(&db, &url, || restoring.is_finished());
        tx.commit().unwrap();
        let r = restoring.join().unwrap().unwrap();
        assert_eq!(r.artifacts, [1, 0, 0, 0]);
        let names: Vec<String> = cat
            .backend()
            .list_artifacts(ArtifactKind::PlanScript)
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(names, vec!["kept".to_string()]);
    }

    #[test]
    fn two_nodes_storing_a_backup_at_once_leave_one() {
        let Some(s) = server() else { return };
        let url = s.new_database().unwrap();
        let db = url.rsplit('/').next().unwrap().to_owned();
        let cat = Catalog::open_postgres(&url).unwrap();
        // Another node's backup, stored but not yet committed.
        let mut other = Client::connect(&url, NoTls).unwrap();
        let mut tx = other.transaction().unwrap();
        tx.batch_execute(
            "DELETE FROM artifact_bundles WHERE backup; \
             INSERT INTO artifact_bundles (id, name, backup, body) \
             VALUES ('k1', 'one', TRUE, '{\"id\": \"k1\", \"name\": \"one\"}')",
        )
        .unwrap();
        let storing = {
            let cat = cat.clone();
            std::thread::spawn(move || cat.replace_backup(json!({"id": "k2", "name": "two"})))
        };
        until_one_waits_on_a_lock(&db, &url, || storing.is_finished());
        tx.commit().unwrap();
        assert_eq!(storing.join().unwrap().unwrap(), vec!["k1".to_string()]);
        let ids: Vec<String> = cat
            .backend()
            .list_bundles(true)
            .unwrap()
            .into_iter()
            .map(|b| b.record.id)
            .collect();
        assert_eq!(ids, vec!["k2".to_string()]);
    }

    #[test]
    fn a_delete_that_races_a_new_reference_is_refused_naming_it() {
        let Some(s) = server() else { return };
        let url = s.new_database().unwrap();
        let cat = Catalog::open_postgres(&url).unwrap();
        let sc = cat
            .create_artifact(ArtifactKind::PlanScript, script("s1"))
            .unwrap();
        let sid = sc["id"].as_str().unwrap().to_owned();
        // Another node's build plan, not yet committed, when the delete starts: the delete
        // finds no user, then waits on the new row's key lock, then fails on the key.
        let mut other = Client::connect(&url, NoTls).unwrap();
        let mut tx = other.transaction().unwrap();
        tx.execute(
            "INSERT INTO build_plans (id, name, body) VALUES ('bp-id', 'late plan', '{}')",
            &[],
        )
        .unwrap();
        tx.execute(
            "INSERT INTO build_plan_steps (build_plan_id, plan_script_id) VALUES ('bp-id', $1)",
            &[&sid],
        )
        .unwrap();
        let deleting = {
            let cat = cat.clone();
            std::thread::spawn(move || cat.delete_artifact(ArtifactKind::PlanScript, "s1"))
        };
        let mut watch = Client::connect(&url, NoTls).unwrap();
        loop {
            let waiting = watch
                .query(
                    "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                     AND query LIKE 'DELETE FROM plan_scripts%'",
                    &[],
                )
                .unwrap();
            if !waiting.is_empty() {
                break;
            }
            assert!(
                !deleting.is_finished(),
                "the delete did not wait for the new row"
            );
            std::thread::yield_now();
        }
        tx.commit().unwrap();
        let e = deleting.join().unwrap().unwrap_err();
        assert!(matches!(e, CatalogError::InUse { .. }), "{e}");
        assert!(e.to_string().contains("late plan"), "{e}");
        assert!(cat.get_artifact(ArtifactKind::PlanScript, "s1").is_ok());
    }

    #[test]
    fn the_catalog_works_from_async_tasks_and_after_the_server_drops_it() {
        let Some(s) = server() else { return };
        let url = s.new_database().unwrap();
        let cat = Catalog::open_postgres(&url).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let c2 = cat.clone();
        rt.block_on(async move {
            // Called on a runtime thread, as the API's startup does.
            c2.add_user("async", "pw").unwrap();
            tokio::spawn(async move { c2.users().unwrap() })
                .await
                .unwrap()
        });
        // The server ends every connection: the next calls connect again.
        let mut c = Client::connect(&url, NoTls).unwrap();
        let db = url.rsplit('/').next().unwrap().to_owned();
        c.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&db],
        )
        .unwrap();
        for _ in 0..(2 * WORKERS) {
            assert_eq!(cat.users().unwrap()[0].name, "async");
        }
    }
}
