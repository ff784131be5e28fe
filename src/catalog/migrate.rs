//! The SQLite catalog's schema as an ordered list of migrations, and applying them.
//!
//! `schema_version` holds one row: how many migrations the file has had. Opening a catalog
//! applies the ones it lacks, each in its own transaction with the version bump, so a crash
//! mid-migration leaves the previous version intact. A catalog written by a newer strata
//! (a version past the end of the list) is refused rather than guessed at. Migrations are
//! only ever appended: an entry, once released, never changes. `pg_migrate.rs` holds the
//! same list for PostgreSQL: a migration appended here is appended there too, with the
//! same meaning (a test checks that both lists are as long).

use rusqlite::{Connection, OptionalExtension};

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
    CREATE TABLE deployments (
        id TEXT PRIMARY KEY,
        os_volume_id TEXT NOT NULL REFERENCES os_volumes(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
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
        created INTEGER NOT NULL,
        expires INTEGER NOT NULL
    );
    CREATE TABLE tasks (
        id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        seq INTEGER NOT NULL,
        body TEXT NOT NULL
    );
    "#,
    // 2: iSCSI exports (until now REPO/exports.json), per node of a shared catalog, and a
    // counter every change of them moves (the running target polls it).
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
        value INTEGER NOT NULL
    );
    INSERT INTO counters (name, value) VALUES ('exports', 0);
    "#,
    // 3: artifact bundles and the backup bundle (their zips are files of the repository).
    r#"
    CREATE TABLE artifact_bundles (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        backup INTEGER NOT NULL DEFAULT 0,
        body TEXT NOT NULL
    );
    CREATE INDEX artifact_bundles_backup ON artifact_bundles(backup, name);
    "#,
    // 4: a task's node (the one whose process runs it), so that a node's restart fails
    // only its own unfinished tasks. Rows made before have none (NULL): which node ran
    // them is not known, and a restart sweeps them as its own (`tasks.rs`).
    r#"
    ALTER TABLE tasks ADD COLUMN node TEXT;
    "#,
];

/// The version this strata writes.
pub fn current() -> u32 {
    MIGRATIONS.len() as u32
}

/// The catalog's version (0 for a new, empty file).
pub fn version(conn: &Connection) -> Result<u32, rusqlite::Error> {
    let has_table: bool = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'",
            [],
            |_| Ok(true),
        )
        .optional()?
        .unwrap_or(false);
    if !has_table {
        return Ok(0);
    }
    let v: Option<i64> = conn
        .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
        .optional()?;
    Ok(v.map_or(0, |v| v.clamp(0, u32::MAX as i64) as u32))
}

/// Brings the catalog up to [`current`], or refuses one that is newer.
pub fn migrate(conn: &mut Connection, path: &std::path::Path) -> Result<u32, CatalogError> {
    migrate_with(conn, path, MIGRATIONS)
}

pub(crate) fn migrate_with(
    conn: &mut Connection,
    path: &std::path::Path,
    migrations: &[&str],
) -> Result<u32, CatalogError> {
    let sql = |source| CatalogError::Database {
        path: path.to_owned(),
        source,
    };
    let found = version(conn).map_err(sql)?;
    let supported = migrations.len() as u32;
    if found > supported {
        return Err(CatalogError::TooNew {
            path: path.to_owned(),
            found,
            supported,
        });
    }
    for (i, step) in migrations.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction().map_err(sql)?;
        tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);")
            .map_err(sql)?;
        tx.execute_batch(step).map_err(sql)?;
        tx.execute("DELETE FROM schema_version", []).map_err(sql)?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            [i as i64 + 1],
        )
        .map_err(sql)?;
        tx.commit().map_err(sql)?;
        tracing::info!(catalog = %path.display(), version = i + 1, "catalog migrated");
    }
    Ok(supported)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn tables(c: &Connection) -> Vec<String> {
        let mut st = c
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn a_new_catalog_gets_every_migration() {
        let mut c = Connection::open_in_memory().unwrap();
        assert_eq!(version(&c).unwrap(), 0);
        assert_eq!(migrate(&mut c, Path::new("mem")).unwrap(), current());
        assert_eq!(version(&c).unwrap(), current());
        let t = tables(&c);
        for want in [
            "plan_scripts",
            "build_plans",
            "deployment_plans",
            "golden_images",
            "os_volumes",
            "deployments",
            "users",
            "sessions",
            "tasks",
            "exports",
            "counters",
            "artifact_bundles",
        ] {
            assert!(t.iter().any(|n| n == want), "{want} missing from {t:?}");
        }
    }

    #[test]
    fn an_older_catalog_is_migrated_and_keeps_its_rows() {
        let mut c = Connection::open_in_memory().unwrap();
        let v1 = &MIGRATIONS[..1];
        migrate_with(&mut c, Path::new("mem"), v1).unwrap();
        c.execute(
            "INSERT INTO users (name, password_hash, created) VALUES ('a', 'h', 't')",
            [],
        )
        .unwrap();
        let v2 = [MIGRATIONS[0], "ALTER TABLE users ADD COLUMN note TEXT;"];
        assert_eq!(migrate_with(&mut c, Path::new("mem"), &v2).unwrap(), 2);
        assert_eq!(version(&c).unwrap(), 2);
        let (name, note): (String, Option<String>) = c
            .query_row("SELECT name, note FROM users", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((name.as_str(), note), ("a", None));
        // Again: nothing left to apply.
        assert_eq!(migrate_with(&mut c, Path::new("mem"), &v2).unwrap(), 2);
    }

    #[test]
    fn a_newer_catalog_is_refused_with_both_versions() {
        let mut c = Connection::open_in_memory().unwrap();
        let v2 = [MIGRATIONS[0], "CREATE TABLE later (x INTEGER);"];
        migrate_with(&mut c, Path::new("mem"), &v2).unwrap();
        let e = migrate_with(&mut c, Path::new("cat.db"), &MIGRATIONS[..1]).unwrap_err();
        assert!(
            matches!(
                e,
                CatalogError::TooNew {
                    found: 2,
                    supported: 1,
                    ..
                }
            ),
            "{e}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("cat.db") && msg.contains('2') && msg.contains('1'),
            "{msg}"
        );
    }

    #[test]
    fn a_failing_migration_leaves_the_previous_version() {
        let mut c = Connection::open_in_memory().unwrap();
        migrate_with(&mut c, Path::new("mem"), &MIGRATIONS[..1]).unwrap();
        let bad = [MIGRATIONS[0], "CREATE TABLE t2 (x); THIS IS NOT SQL;"];
        assert!(migrate_with(&mut c, Path::new("mem"), &bad).is_err());
        assert_eq!(version(&c).unwrap(), 1);
        assert!(!tables(&c).iter().any(|t| t == "t2"));
    }
}
