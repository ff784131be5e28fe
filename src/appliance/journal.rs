//! Undo journals, for jobs that change several catalog rows and store images (a bundle's
//! extraction): before each change the job appends how to undo it to a file in the
//! repository's `journal/`, synced; when the job ends (done, or undone in process) the file
//! goes. A journal left behind is a job a crash interrupted: [`replay_all`] (run by
//! `recover`) undoes its steps, newest first, so the job is all or nothing across a
//! `kill -9` too. Undoing a step whose change never happened (the crash came between the
//! journal line and the change) is not an error.
//!
//! Format: one JSON object per line (`{"op": "delete", "kind": "plan script", "id": ...}`);
//! a torn last line (the crash came mid-append) is ignored, as its change never started.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::{io_err, Result};
use crate::catalog::{Catalog, CatalogError};
use crate::plan::artifacts::ArtifactKind;
use crate::store::{Repository, StoreError};

pub const JOURNAL_DIR: &str = "journal";

/// How to undo one change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Undo {
    /// A row created: delete it.
    Delete { kind: String, id: String },
    /// A row replaced: put its old body back.
    Restore {
        kind: String,
        id: String,
        body: Value,
    },
    /// A store image imported: remove it.
    RemoveImage { name: String },
}

impl Undo {
    pub fn delete(kind: ArtifactKind, id: &str) -> Undo {
        Undo::Delete {
            kind: kind.what().into(),
            id: id.into(),
        }
    }

    pub fn restore(kind: ArtifactKind, id: &str, body: Value) -> Undo {
        Undo::Restore {
            kind: kind.what().into(),
            id: id.into(),
            body,
        }
    }

    /// Undoes the change; one that never happened is fine.
    pub fn apply(&self, catalog: &Catalog, repo: &Repository) -> Result<()> {
        let kind = |k: &str| {
            ArtifactKind::ALL
                .into_iter()
                .find(|a| a.what() == k)
                .ok_or_else(|| CatalogError::Invalid(format!("a journal names kind {k:?}")))
        };
        let r = match self {
            Undo::Delete { kind: k, id } => catalog.delete_artifact(kind(k)?, id),
            Undo::Restore { kind: k, id, body } => catalog
                .update_artifact(kind(k)?, id, body.clone())
                .map(|_| ()),
            Undo::RemoveImage { name } => {
                return match repo.remove_image(name) {
                    Ok(()) | Err(StoreError::NotFound { .. }) => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
        };
        match r {
            Ok(()) | Err(CatalogError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// An open journal; [`Journal::close`] removes it.
pub struct Journal {
    path: PathBuf,
    file: File,
    steps: Vec<Undo>,
}

impl Journal {
    /// A new journal for job `what` (a word for its file name).
    pub fn create(repo: &Repository, what: &str) -> Result<Journal> {
        let dir = repo.root().join(JOURNAL_DIR);
        fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        let path = dir.join(format!("{what}-{}.jsonl", crate::catalog::new_id()));
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io_err("creating", &path))?;
        sync_dir(&dir)?;
        Ok(Journal {
            path,
            file,
            steps: Vec::new(),
        })
    }

    /// Records `u` durably; call it before making the change it undoes.
    pub fn push(&mut self, u: Undo) -> Result<()> {
        let mut line = serde_json::to_vec(&u).unwrap_or_default();
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|()| self.file.sync_data())
            .map_err(io_err("writing", &self.path))?;
        self.steps.push(u);
        Ok(())
    }

    /// Undoes every step, newest first (in process, after a failure), then removes the file.
    pub fn undo(self, catalog: &Catalog, repo: &Repository) {
        for u in self.steps.iter().rev() {
            if let Err(e) = u.apply(catalog, repo) {
                tracing::warn!("undoing a failed job's step {u:?}: {e}");
            }
        }
        self.close();
    }

    /// The job is over: the journal goes.
    pub fn close(self) {
        if let Err(e) = fs::remove_file(&self.path) {
            tracing::warn!("removing journal {}: {e}", self.path.display());
        }
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing", dir))
}

/// The steps of a journal file (a torn last line left out).
pub fn read(path: &Path) -> Result<Vec<Undo>> {
    let text = fs::read_to_string(path).map_err(io_err("reading", path))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// Undoes every journal a crash left, newest step first; returns how many.
pub fn replay_all(catalog: &Catalog, repo: &Repository) -> Result<usize> {
    let dir = repo.root().join(JOURNAL_DIR);
    let Ok(rd) = fs::read_dir(&dir) else {
        return Ok(0);
    };
    let mut n = 0;
    for e in rd.flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "jsonl") {
            continue;
        }
        for u in read(&p)?.iter().rev() {
            u.apply(catalog, repo)?;
        }
        fs::remove_file(&p).map_err(io_err("removing", &p))?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RepoOptions;
    use serde_json::json;

    #[test]
    fn a_left_journal_is_undone_newest_first_and_removed() {
        let d = tempfile::tempdir().unwrap();
        let r = Repository::open(d.path().join("repo"), RepoOptions::default()).unwrap();
        let c = Catalog::open(r.root()).unwrap();
        let kind = ArtifactKind::PlanScript;
        let s = c
            .create_artifact(
                kind,
                json!({"type": "PlanScript", "name": "s", "planType": "deploy", "content": "echo"}),
            )
            .unwrap();
        let id = s["id"].as_str().unwrap().to_owned();
        let mut j = Journal::create(&r, "test").unwrap();
        j.push(Undo::delete(kind, &id)).unwrap();
        // A step whose change never happened, and a torn line.
        j.push(Undo::delete(kind, "never-made")).unwrap();
        j.push(Undo::RemoveImage {
            name: "gi-never".into(),
        })
        .unwrap();
        let path = j.path.clone();
        std::mem::forget(j);
        fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"op\": \"del")
            .unwrap();
        assert_eq!(read(&path).unwrap().len(), 3);
        assert_eq!(replay_all(&c, &r).unwrap(), 1);
        assert!(c.get_artifact(kind, &id).is_err());
        assert!(!path.exists());
        assert_eq!(replay_all(&c, &r).unwrap(), 0);
    }
}
