//! The catalog's conformance suite runs on every backend: a test written once as
//! `fn name(cat: &dyn Fn() -> Catalog)` (each call an empty catalog) and listed in
//! [`conformance!`] runs as `sqlite::name` and `postgres::name`. The PostgreSQL ones share
//! one server per test process (started on first use, a database per catalog; the server
//! stops when the process ends) and are skipped, saying why, only where PostgreSQL's
//! programs are not installed.

use std::sync::OnceLock;

use super::Catalog;

#[path = "../../tests/common/pg_server.rs"]
pub(crate) mod pg_server;

/// An empty in-memory SQLite catalog.
pub(crate) fn sqlite() -> Catalog {
    Catalog::memory().expect("an in-memory catalog")
}

/// This process's PostgreSQL server, or why there is none (its programs are absent).
pub(crate) fn pg() -> Result<&'static pg_server::PgServer, String> {
    static SERVER: OnceLock<Result<pg_server::PgServer, String>> = OnceLock::new();
    SERVER
        .get_or_init(|| match pg_server::PgServer::binaries() {
            None => Err(
                "PostgreSQL's programs (initdb, postgres) are not installed: \
                         run tools/install-deps"
                    .into(),
            ),
            Some(_) => Ok(pg_server::PgServer::start_for_process()
                .unwrap_or_else(|e| panic!("starting PostgreSQL for the tests: {e}"))),
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// An empty catalog in a new database of this process's server.
pub(crate) fn postgres_on(server: &pg_server::PgServer) -> Catalog {
    let url = server.new_database().expect("a new database");
    Catalog::open_postgres(&url).unwrap_or_else(|e| panic!("opening {url}: {e}"))
}

/// A running task's id and JSON, as a row of it holds them (for rows written by hand,
/// as an older strata wrote them).
pub(crate) fn running_task_json() -> (String, String) {
    let t = sqlite()
        .create_task("Deploy", "admin", super::AssociatedResource::default())
        .unwrap();
    (t.id().to_owned(), serde_json::to_string(&t).unwrap())
}

/// Runs each listed test (taking `&dyn Fn() -> Catalog`) on SQLite and on PostgreSQL.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $name() {
                    super::$name(&$crate::catalog::testing::sqlite)
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                fn $name() {
                    match $crate::catalog::testing::pg() {
                        Ok(s) => super::$name(&|| $crate::catalog::testing::postgres_on(s)),
                        Err(why) => eprintln!("skipped: {why}"),
                    }
                }
            )*
        }
    };
}
pub(crate) use conformance;
