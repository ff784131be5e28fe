//! The PostgreSQL catalog's schema as ordered migrations, and applying them: the same
//! versions, with the same meaning, as the SQLite schema in `migrate.rs` (migration `i`
//! here makes what migration `i` there makes, in PostgreSQL's words), so a version number
//! says the same thing whatever the backend. A migration added there is added here too.
//!
//! Differences that are PostgreSQL's, not the schema's: `seq` columns are identity
//! columns (two nodes inserting at once get distinct, increasing numbers), and times are
//! BIGINT. Bodies stay TEXT, stored as given.
//!
//! Several strata nodes may open one catalog at the same moment: each migration runs in
//! its own transaction holding a transaction-level advisory lock, and reads the version
//! again under it, so exactly one node applies each step and the others see it done. A
//! catalog written by a newer strata is refused with both versions, as SQLite's is.

use postgres::GenericClient;

use super::CatalogError;

/// Migration `i` takes a catalog from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // 1: artifacts, their references, OS volumes, users, sessions, tasks.
    r#"
    CREATE TABLE plan_scripts (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        body TEXT NOT NULL
    );
    CREATE TABLE build_plans (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        body TEXT NOT NULL
    );
    CREATE TABLE build_plan_steps (
        build_plan_id TEXT NOT NULL REFERENCES build_plans(id) ON DELETE CASCADE,
        plan_script_id TEXT NOT NULL REFERENCES plan_scripts(id) ON DELETE RESTRICT,
        PRIMARY KEY (build_plan_id, plan_script_id)
    );
    CREATE INDEX build_plan_steps_script ON build_plan_steps(plan_script_id);
    CREATE TABLE golden_images (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        body TEXT NOT NULL,
        store_image TEXT
    );
    CREATE TABLE deployment_plans (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        body TEXT NOT NULL,
        build_plan_id TEXT REFERENCES build_plans(id) ON DELETE RESTRICT,
        golden_image_id TEXT REFERENCES golden_images(id) ON DELETE RESTRICT
    );
    CREATE INDEX deployment_plans_build_plan ON deployment_plans(build_plan_id);
    CREATE INDEX deployment_plans_golden_image ON deployment_plans(golden_image_id);
    CREATE TABLE os_volumes (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        body TEXT NOT NULL,
        store_volume TEXT NOT NULL UNIQUE,
        deployment_plan_id TEXT REFERENCES deployment_plans(id) ON DELETE RESTRICT,
        golden_image_id TEXT REFERENCES golden_images(id) ON DELETE RESTRICT
    );
    CREATE INDEX os_volumes_deployment_plan ON os_volumes(deployment_plan_id);
    CREATE INDEX os_volumes_golden_image ON os_volumes(golden_image_id);
    CREATE TABLE deployments (
        id TEXT PRIMARY KEY,
        os_volume_id TEXT NOT NULL REFERENCES os_volumes(id) ON DELETE CASCADE,
        seq BIGINT GENERATED ALWAYS AS IDENTITY,
        record TEXT NOT NULL
    );
    CREATE INDEX deployments_volume ON deployments(os_volume_id, seq);
    CREATE TABLE users (
        name TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        created TEXT NOT NULL
    );
    CREATE TABLE sessions (
        token_hash TEXT PRIMARY KEY,
        user_name TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
        created BIGINT NOT NULL,
        expires BIGINT NOT NULL
    );
    CREATE TABLE tasks (
        id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        seq BIGINT GENERATED ALWAYS AS IDENTITY,
        body TEXT NOT NULL
    );
    "#,
    // 2: iSCSI exports, per node, and the counter every change of them moves.
    r#"
    CREATE TABLE exports (
        node TEXT NOT NULL,
        volume TEXT NOT NULL,
        iqn TEXT NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (node, volume)
    );
    CREATE UNIQUE INDEX exports_target ON exports(node, lower(iqn));
    CREATE TABLE counters (
        name TEXT PRIMARY KEY,
        value BIGINT NOT NULL
    );
    INSERT INTO counters (name, value) VALUES ('exports', 0);
    "#,
    // 3: artifact bundles and the backup bundle.
    r#"
    CREATE TABLE artifact_bundles (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        backup BOOLEAN NOT NULL DEFAULT FALSE,
        body TEXT NOT NULL
    );
    CREATE INDEX artifact_bundles_backup ON artifact_bundles(backup, name);
    "#,
    // 4: a task's node; NULL for the rows made before.
    r#"
    ALTER TABLE tasks ADD COLUMN node TEXT;
    "#,
];

/// The advisory lock key migrations hold (`strata` in ASCII).
const LOCK_KEY: i64 = 0x7374_7261_7461;

/// The version this strata writes.
pub fn current() -> u32 {
    MIGRATIONS.len() as u32
}

/// The catalog's version (0 for a new, empty database).
pub fn version(c: &mut impl GenericClient) -> Result<u32, postgres::Error> {
    let has_table = c
        .query_opt(
            "SELECT 1 FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_name = 'schema_version'",
            &[],
        )?
        .is_some();
    if !has_table {
        return Ok(0);
    }
    let v: Option<i64> = c
        .query_opt("SELECT version::BIGINT FROM schema_version", &[])?
        .map(|r| r.get(0));
    Ok(v.map_or(0, |v| v.clamp(0, u32::MAX as i64) as u32))
}

/// Why a migration failed: the server's error, or a catalog too new.
pub enum MigrateError {
    Pg(postgres::Error),
    Catalog(CatalogError),
}

impl From<postgres::Error> for MigrateError {
    fn from(e: postgres::Error) -> Self {
        MigrateError::Pg(e)
    }
}

/// Brings the catalog up to [`current`], or refuses one that is newer. `location` names
/// the catalog in messages (its URL without a password).
pub fn migrate(c: &mut postgres::Client, location: &str) -> Result<u32, MigrateError> {
    migrate_with(c, location, MIGRATIONS)
}

pub(crate) fn migrate_with(
    c: &mut postgres::Client,
    location: &str,
    migrations: &[&str],
) -> Result<u32, MigrateError> {
    let supported = migrations.len() as u32;
    loop {
        let mut tx = c.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])?;
        let found = version(&mut tx)?;
        if found > supported {
            return Err(MigrateError::Catalog(CatalogError::TooNew {
                path: location.into(),
                found,
                supported,
            }));
        }
        if found == supported {
            tx.commit()?;
            return Ok(supported);
        }
        tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);")?;
        tx.batch_execute(migrations[found as usize])?;
        tx.execute("DELETE FROM schema_version", &[])?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&(found as i32 + 1)],
        )?;
        tx.commit()?;
        tracing::info!(catalog = location, version = found + 1, "catalog migrated");
    }
}
