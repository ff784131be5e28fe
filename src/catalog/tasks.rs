//! Tasks: the record of one piece of long work (an upload, a deploy, a bundle) that the API
//! answers with `202 Accepted` and `Location: /rest/tasks/{id}`, and that clients poll.
//!
//! The JSON is OneView's task resource (`taskState`, `percentComplete`, `taskErrors`,
//! `associatedResource`, ...), stored as it is served. A task is created `Running`, moves
//! through progress updates and ends `Completed` or `Error`; a restart marks the ones
//! left running as `Error` ([`Catalog::fail_unfinished_tasks`]), so none stays running
//! forever after a crash.
//!
//! A task belongs to the node that created it (its process does the work), and a node's
//! restart sweeps only its own: on a shared PostgreSQL catalog another node's running
//! task is alive. Tasks stored before tasks had a node (migration 4) have none; a
//! restart sweeps them too, as before, since leaving them running forever is what the
//! sweep is for (only a node still running an older strata could be running one).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::backend::TaskRow;
use super::{new_id, now_timestamp, Catalog, CatalogError};

type Result<T> = std::result::Result<T, CatalogError>;

pub const TASKS_URI: &str = "/rest/tasks/";

/// OneView's task states (those strata uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskState {
    New,
    Running,
    Completed,
    Error,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::New => "New",
            TaskState::Running => "Running",
            TaskState::Completed => "Completed",
            TaskState::Error => "Error",
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(self, TaskState::Completed | TaskState::Error)
    }
}

/// What a task works on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct AssociatedResource {
    pub resource_name: String,
    pub resource_uri: String,
    pub resource_category: String,
    pub association_type: String,
}

/// One error of a failed task, in Image Streamer's error shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskError {
    pub error_code: String,
    pub message: String,
    pub details: String,
    pub recommended_actions: Vec<String>,
    pub error_source: Option<String>,
}

/// A task, as `GET /rest/tasks/{id}` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Task {
    #[serde(rename = "type")]
    pub kind: String,
    pub uri: String,
    pub category: String,
    pub name: String,
    pub owner: String,
    pub task_state: TaskState,
    pub task_status: String,
    pub percent_complete: u8,
    pub task_errors: Vec<TaskError>,
    pub associated_resource: AssociatedResource,
    pub created: String,
    pub modified: String,
    pub e_tag: String,
}

impl Task {
    pub fn id(&self) -> &str {
        self.uri.strip_prefix(TASKS_URI).unwrap_or(&self.uri)
    }

    /// Its row, run by `node` (which an update leaves as it is).
    fn row(&self, node: Option<&str>) -> TaskRow {
        TaskRow {
            id: self.id().into(),
            state: self.task_state.as_str().into(),
            node: node.map(Into::into),
            body: serde_json::to_value(self).unwrap_or(Value::Null),
        }
    }
}

impl Catalog {
    /// Starts a task named `name` (`Create`, `Deploy`, ...) for `owner` on `resource`.
    pub fn create_task(
        &self,
        name: &str,
        owner: &str,
        resource: AssociatedResource,
    ) -> Result<Task> {
        let now = now_timestamp();
        let t = Task {
            kind: "TaskResourceV2".into(),
            uri: format!("{TASKS_URI}{}", new_id()),
            category: "tasks".into(),
            name: name.into(),
            owner: owner.into(),
            task_state: TaskState::Running,
            task_status: String::new(),
            percent_complete: 0,
            task_errors: Vec::new(),
            associated_resource: resource,
            created: now.clone(),
            modified: now,
            e_tag: new_id(),
        };
        self.backend().insert_task(&t.row(Some(self.node())))?;
        Ok(t)
    }

    pub fn get_task(&self, id: &str) -> Result<Task> {
        let id = id.strip_prefix(TASKS_URI).unwrap_or(id);
        let row = self
            .backend()
            .get_task(id)?
            .ok_or_else(|| CatalogError::NotFound {
                what: "task",
                key: id.into(),
            })?;
        serde_json::from_value(row.body).map_err(|e| CatalogError::Invalid(e.to_string()))
    }

    /// Progress of a running task: percent (capped at 99 until it completes) and a status
    /// line. A finished task is left as it is.
    pub fn task_progress(&self, id: &str, percent: u8, status: &str) -> Result<Task> {
        self.change_task(id, |t| {
            t.percent_complete = percent.min(99);
            t.task_status = status.into();
        })
    }

    /// Names the resource a task made, once it is known (an upload's new artifact): the
    /// SDKs read `associatedResource.resourceUri` of the finished task.
    pub fn set_task_resource(&self, id: &str, resource: AssociatedResource) -> Result<Task> {
        self.change_task(id, |t| t.associated_resource = resource)
    }

    /// Ends a task: `Completed` at 100% on Ok, `Error` with its errors on Err.
    pub fn finish_task(
        &self,
        id: &str,
        outcome: std::result::Result<(), Vec<TaskError>>,
    ) -> Result<Task> {
        self.change_task(id, |t| match outcome {
            Ok(()) => {
                t.task_state = TaskState::Completed;
                t.percent_complete = 100;
            }
            Err(errors) => {
                t.task_state = TaskState::Error;
                t.task_status = errors
                    .first()
                    .map(|e| e.message.clone())
                    .unwrap_or_default();
                t.task_errors = errors;
            }
        })
    }

    /// This node's tasks not finished (at startup, before they are failed: what they were
    /// doing). Another node's are not listed: that node runs them.
    pub fn unfinished_tasks(&self) -> Result<Vec<Task>> {
        let mut out = Vec::new();
        for row in self.own_unfinished_tasks()? {
            out.push(self.get_task(&row.id)?);
        }
        Ok(out)
    }

    /// Marks this node's tasks not finished as failed (at startup: their process is gone).
    pub fn fail_unfinished_tasks(&self, reason: &str) -> Result<usize> {
        let mut n = 0;
        for row in self.own_unfinished_tasks()? {
            self.finish_task(
                &row.id,
                Err(vec![TaskError {
                    error_code: "TASK_INTERRUPTED".into(),
                    message: reason.into(),
                    details: String::new(),
                    recommended_actions: vec!["Run the operation again.".into()],
                    error_source: None,
                }]),
            )?;
            n += 1;
        }
        Ok(n)
    }

    /// The rows of the unfinished tasks this node created, and of those with no node.
    fn own_unfinished_tasks(&self) -> Result<Vec<TaskRow>> {
        let mut rows = self.backend().list_tasks()?;
        rows.retain(|r| {
            (r.state == "Running" || r.state == "New")
                && r.node.as_deref().is_none_or(|n| n == self.node())
        });
        Ok(rows)
    }

    fn change_task(&self, id: &str, f: impl FnOnce(&mut Task)) -> Result<Task> {
        let mut t = self.get_task(id)?;
        if t.task_state.is_finished() {
            return Ok(t);
        }
        f(&mut t);
        t.modified = now_timestamp();
        t.e_tag = new_id();
        self.backend().update_task(&t.row(None))?;
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res() -> AssociatedResource {
        AssociatedResource {
            resource_name: "gi".into(),
            resource_uri: "/rest/golden-images/x".into(),
            resource_category: "golden-images".into(),
            association_type: "MANAGED_BY".into(),
        }
    }

    fn a_task_runs_reports_progress_and_completes(cat: &dyn Fn() -> Catalog) {
        let c = cat();
        let t = c.create_task("Upload", "admin", res()).unwrap();
        assert_eq!(t.task_state, TaskState::Running);
        let got = c.get_task(&t.uri).unwrap();
        assert_eq!(got, t);
        let p = c.task_progress(t.id(), 100, "copying").unwrap();
        assert_eq!(
            (p.percent_complete, p.task_status.as_str()),
            (99, "copying")
        );
        let done = c.finish_task(t.id(), Ok(())).unwrap();
        assert_eq!(
            (done.task_state, done.percent_complete),
            (TaskState::Completed, 100)
        );
        // Finished is final.
        let again = c.task_progress(t.id(), 5, "late").unwrap();
        assert_eq!(again.task_state, TaskState::Completed);
        let v = serde_json::to_value(c.get_task(t.id()).unwrap()).unwrap();
        for f in [
            "taskState",
            "percentComplete",
            "taskErrors",
            "associatedResource",
        ] {
            assert!(v.get(f).is_some(), "{f} missing: {v}");
        }
        assert_eq!(
            v["associatedResource"]["resourceUri"],
            "/rest/golden-images/x"
        );
    }

    fn a_restart_fails_the_tasks_left_running(cat: &dyn Fn() -> Catalog) {
        let c = cat();
        let a = c.create_task("Deploy", "admin", res()).unwrap();
        let b = c.create_task("Deploy", "admin", res()).unwrap();
        c.finish_task(b.id(), Ok(())).unwrap();
        assert_eq!(c.fail_unfinished_tasks("strata restarted").unwrap(), 1);
        let a = c.get_task(a.id()).unwrap();
        assert_eq!(a.task_state, TaskState::Error);
        assert_eq!(a.task_errors[0].message, "strata restarted");
        assert_eq!(c.get_task(b.id()).unwrap().task_state, TaskState::Completed);
        assert!(matches!(
            c.get_task("nope"),
            Err(CatalogError::NotFound { .. })
        ));
    }

    /// Two nodes on one catalog: a node's restart fails its own unfinished tasks, not the
    /// other's (which that node is still running).
    fn a_restart_fails_only_its_own_nodes_tasks(cat: &dyn Fn() -> Catalog) {
        let c = cat();
        let (a, b) = (c.for_node("node-a"), c.for_node("node-b"));
        let ta = a.create_task("Deploy", "admin", res()).unwrap();
        let tb = b.create_task("Deploy", "admin", res()).unwrap();
        let ids = |c: &Catalog| -> Vec<String> {
            let t = c.unfinished_tasks().unwrap();
            t.iter().map(|t| t.id().to_owned()).collect()
        };
        assert_eq!(ids(&b), vec![tb.id().to_owned()]);
        assert_eq!(b.fail_unfinished_tasks("b restarted").unwrap(), 1);
        assert_eq!(a.get_task(ta.id()).unwrap().task_state, TaskState::Running);
        assert_eq!(a.get_task(tb.id()).unwrap().task_state, TaskState::Error);
        // A's task goes on; A's own restart fails it.
        a.task_progress(ta.id(), 50, "half").unwrap();
        assert_eq!(ids(&a), vec![ta.id().to_owned()]);
        assert_eq!(a.fail_unfinished_tasks("a restarted").unwrap(), 1);
        let ta = b.get_task(ta.id()).unwrap();
        assert_eq!(ta.task_state, TaskState::Error);
        assert_eq!(ta.task_errors[0].message, "a restarted");
        assert_eq!(b.fail_unfinished_tasks("again").unwrap(), 0);
    }

    #[test]
    fn a_task_stored_before_tasks_had_a_node_is_failed_by_a_restart() {
        let d = tempfile::tempdir().unwrap();
        let mut conn =
            rusqlite::Connection::open(d.path().join(crate::catalog::FILE_NAME)).unwrap();
        let v3 = &crate::catalog::migrate::MIGRATIONS[..3];
        crate::catalog::migrate::migrate_with(&mut conn, std::path::Path::new("mem"), v3).unwrap();
        let (id, body) = crate::catalog::testing::running_task_json();
        conn.execute(
            "INSERT INTO tasks (id, state, seq, body) VALUES (?1, 'Running', 1, ?2)",
            [&id, &body],
        )
        .unwrap();
        drop(conn);
        let c = Catalog::open(d.path()).unwrap();
        assert_eq!(c.backend().get_task(&id).unwrap().unwrap().node, None);
        assert_eq!(c.unfinished_tasks().unwrap().len(), 1);
        assert_eq!(c.fail_unfinished_tasks("restarted").unwrap(), 1);
        assert_eq!(c.get_task(&id).unwrap().task_state, TaskState::Error);
        // A task made now is this node's.
        let t = c.create_task("Deploy", "admin", res()).unwrap();
        let row = c.backend().get_task(t.id()).unwrap().unwrap();
        assert_eq!(row.node.as_deref(), Some(c.node()));
    }

    crate::catalog::testing::conformance!(
        a_task_runs_reports_progress_and_completes,
        a_restart_fails_the_tasks_left_running,
        a_restart_fails_only_its_own_nodes_tasks,
    );
}
