//! The appliance's long work, between the catalog and its callers (the REST API, the CLI):
//! each job is a plain function over a [`Catalog`](crate::catalog::Catalog), a
//! [`Repository`](crate::store::Repository) and a [`Progress`] callback, doing the store's
//! part first and writing the catalog's rows last, so that a failure — or a `kill -9` —
//! leaves no half-made artifact: staged files live in the repository's `tmp/` (cleaned by
//! `Repository::open`), and [`recover`] removes store images no catalog row names and fails
//! the tasks a crash interrupted.
//!
//! Map of this directory:
//! - `error.rs`         [`ApplianceError`]: what went wrong, for the task's error message
//! - `spool.rs`         spooling an upload (a request body) into a scratch file, sparse
//! - `golden_images.rs` golden images in (a zip holding one raw disk, or a raw/qcow2 disk)
//!   and out (a zip of one raw disk, streamed)
//! - `deploy.rs`        an OS volume deployed from the catalog's deployment plan, recorded,
//!   and exported over iSCSI to its server
//! - `bundles.rs`       artifact bundles (rows and zips) taken in (spooled, verified) or
//!   made from selected artifacts, renamed, deleted, and extracted into the catalog and the
//!   store, all or nothing
//! - `backups.rs`       the one backup bundle: made from every artifact, uploaded,
//!   downloaded, restored in one catalog transaction
//! - `journal.rs`       undo journals: multi-step jobs all or nothing across a crash
//! - `recover.rs`       what a start does after a crash
//!
//! Layering: store, plan <- catalog <- appliance <- api <- cli; nothing below imports this.

pub mod backups;
pub mod bundles;
pub mod deploy;
pub mod error;
pub mod golden_images;
pub mod journal;
pub mod recover;
pub mod spool;

pub use error::ApplianceError;
pub use recover::recover;

/// Progress of a job: percent complete (0–100) and what it is doing now, as a task row
/// shows them (`catalog::tasks::task_progress`).
pub type Progress<'a> = &'a (dyn Fn(u8, &str) + Sync);

/// A progress callback that ignores everything.
pub fn no_progress(_: u8, _: &str) {}

/// The environment variable naming the [`pause_point`]s a job stops at (comma-separated).
pub const PAUSE_ENV: &str = "STRATA_PAUSE_AT";

/// A hook for the crash tests (`kill -9` mid-job, deterministically): when
/// `STRATA_PAUSE_AT` names `point`, the job makes the directory `tmp/<pid>-paused-<point>`
/// in the repository (named like a staging directory, so the next start removes it) and
/// waits there for good. Unset (always, outside tests), it does nothing.
pub(crate) fn pause_point(repo: &crate::store::Repository, point: &str) {
    let Ok(v) = std::env::var(PAUSE_ENV) else {
        return;
    };
    if v.split(',').any(|p| p.trim() == point) {
        let f = repo
            .root()
            .join("tmp")
            .join(format!("{}-paused-{point}", std::process::id()));
        tracing::warn!(point, "pausing the job here for good ({PAUSE_ENV})");
        if let Err(e) = std::fs::create_dir_all(&f) {
            tracing::warn!("{}: {e}", f.display());
        }
        loop {
            std::thread::park();
        }
    }
}

/// `done` of `total` as a percent within `[from, to]` (one phase of a job).
pub(crate) fn percent(done: u64, total: u64, from: u8, to: u8) -> u8 {
    if total == 0 {
        return to;
    }
    let span = (to - from) as u64;
    from + (done.min(total) as u128 * span as u128 / total as u128) as u8
}

#[cfg(test)]
mod tests {
    #[test]
    fn percent_maps_a_phase_onto_its_span() {
        assert_eq!(super::percent(0, 10, 20, 80), 20);
        assert_eq!(super::percent(5, 10, 20, 80), 50);
        assert_eq!(super::percent(10, 10, 20, 80), 80);
        assert_eq!(super::percent(99, 10, 20, 80), 80);
        assert_eq!(super::percent(0, 0, 20, 80), 80);
    }
}
