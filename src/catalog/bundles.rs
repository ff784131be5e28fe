//! Artifact bundles and the backup bundle in the catalog: one row each, holding the JSON the
//! API serves (`uri`, `name`, `description`, the artifacts it holds, `size`, `created`,
//! `modified`, `eTag`). The zip itself is a file of the repository that
//! `appliance::bundles` keeps; its row is written after the file is in place (the row is
//! what makes a bundle exist) and deleted before the file goes.
//!
//! Backups are bundle rows marked `backup`: Image Streamer keeps one backup at a time, so
//! storing a backup replaces the previous one in the same transaction
//! ([`Catalog::replace_backup`]).

use serde_json::Value;

use super::backend::{BundleRow, Record};
use super::query::{ListQuery, Page};
use super::{new_id, now_timestamp, Catalog, CatalogError};

type Result<T> = std::result::Result<T, CatalogError>;

pub const ARTIFACT_BUNDLES_URI: &str = "/rest/artifact-bundles/";
pub const BACKUPS_URI: &str = "/rest/artifact-bundles/backups/";

fn what(backup: bool) -> &'static str {
    if backup {
        "backup"
    } else {
        "artifact bundle"
    }
}

fn row(body: Value, backup: bool) -> Result<BundleRow> {
    let id = body["id"].as_str().unwrap_or_default().to_owned();
    let name = body["name"].as_str().unwrap_or_default().to_owned();
    if id.is_empty() || name.trim().is_empty() {
        return Err(CatalogError::Invalid(format!(
            "a {} needs an id and a name",
            what(backup)
        )));
    }
    Ok(BundleRow {
        record: Record { id, name, body },
        backup,
    })
}

impl Catalog {
    /// Records an artifact bundle (`body` with `id` and `name`, in the API's shape).
    pub fn add_bundle(&self, body: Value) -> Result<Value> {
        let r = row(body, false)?;
        self.backend().insert_bundle(&r)?;
        Ok(r.record.body)
    }

    /// Records `body` as the one backup; returns the ids of the backups it replaced.
    pub fn replace_backup(&self, body: Value) -> Result<Vec<String>> {
        self.backend().replace_backup(&row(body, true)?)
    }

    /// An artifact bundle (`backup` false) or a backup by id, URI or name.
    pub fn get_bundle(&self, key: &str, backup: bool) -> Result<Value> {
        Ok(self.bundle_row(key, backup)?.record.body)
    }

    pub fn list_bundles(&self, backup: bool, q: &ListQuery) -> Result<Page> {
        let all = self.backend().list_bundles(backup)?;
        Ok(q.apply(all.into_iter().map(|b| b.record.body).collect()))
    }

    /// Every bundle row's id, backups included.
    pub fn bundle_ids(&self) -> Result<Vec<String>> {
        let mut v = Vec::new();
        for backup in [false, true] {
            v.extend(
                self.backend()
                    .list_bundles(backup)?
                    .into_iter()
                    .map(|b| b.record.id),
            );
        }
        Ok(v)
    }

    /// Changes an artifact bundle's `name` and `description` (what it holds is fixed).
    pub fn update_bundle(&self, key: &str, changes: &Value) -> Result<Value> {
        let mut r = self.bundle_row(key, false)?;
        for f in ["name", "description"] {
            match changes.get(f) {
                None | Some(Value::Null) => {}
                Some(Value::String(v)) if f == "name" && v.trim().is_empty() => {
                    return Err(CatalogError::Invalid(
                        "an artifact bundle's name cannot be empty".into(),
                    ))
                }
                Some(Value::String(v)) => r.record.body[f] = Value::String(v.clone()),
                Some(other) => {
                    return Err(CatalogError::Invalid(format!(
                        "{f} must be a string, not {other}"
                    )))
                }
            }
        }
        r.record.name = r.record.body["name"].as_str().unwrap_or_default().into();
        r.record.body["modified"] = Value::String(now_timestamp());
        r.record.body["eTag"] = Value::String(new_id());
        self.backend().update_bundle(&r)?;
        Ok(r.record.body)
    }

    /// Deletes the row of a bundle or backup by id, URI or name; returns its id.
    pub fn delete_bundle(&self, key: &str, backup: bool) -> Result<String> {
        let r = self.bundle_row(key, backup)?;
        if !self.backend().delete_bundle(&r.record.id)? {
            return Err(CatalogError::NotFound {
                what: what(backup),
                key: key.into(),
            });
        }
        Ok(r.record.id)
    }

    fn bundle_row(&self, key: &str, backup: bool) -> Result<BundleRow> {
        let prefix = if backup {
            BACKUPS_URI
        } else {
            ARTIFACT_BUNDLES_URI
        };
        let k = key.strip_prefix(prefix).unwrap_or(key);
        if let Some(b) = self.backend().get_bundle(k)? {
            if b.backup == backup {
                return Ok(b);
            }
        }
        self.backend()
            .list_bundles(backup)?
            .into_iter()
            .find(|b| b.record.name == k)
            .ok_or_else(|| CatalogError::NotFound {
                what: what(backup),
                key: key.into(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names(c: &Catalog, backup: bool) -> Vec<(String, String)> {
        let page = c.list_bundles(backup, &ListQuery::default()).unwrap();
        assert_eq!(page.total, page.members.len());
        page.members
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap().into(),
                    m["id"].as_str().unwrap().into(),
                )
            })
            .collect()
    }

    fn bundles_are_found_by_id_uri_and_name_and_renamed(cat: &dyn Fn() -> Catalog) {
        let c = cat();
        let b = c
            .add_bundle(json!({"id": "b1", "name": "one", "uri": "/rest/artifact-bundles/b1"}))
            .unwrap();
        assert_eq!(c.get_bundle("b1", false).unwrap(), b);
        assert_eq!(c.get_bundle("/rest/artifact-bundles/b1", false).unwrap(), b);
        assert_eq!(c.get_bundle("one", false).unwrap(), b);
        // A bundle is not a backup.
        assert!(c.get_bundle("b1", true).is_err());
        let r = c
            .update_bundle("one", &json!({"name": "two", "description": "d"}))
            .unwrap();
        assert_eq!(
            (r["name"].as_str(), r["description"].as_str()),
            (Some("two"), Some("d"))
        );
        assert!(c.update_bundle("two", &json!({"name": " "})).is_err());
        assert!(c.update_bundle("two", &json!({"name": 3})).is_err());
        assert_eq!(
            c.list_bundles(false, &ListQuery::default()).unwrap().total,
            1
        );
        assert_eq!(c.delete_bundle("two", false).unwrap(), "b1");
        assert!(matches!(
            c.get_bundle("b1", false).unwrap_err(),
            CatalogError::NotFound { .. }
        ));
    }

    /// What is stored comes back as it was: the whole JSON, the backup mark, the order of a
    /// list (by name, then id, in byte order), and each error kind.
    fn bundle_rows_round_trip(cat: &dyn Fn() -> Catalog) {
        let c = cat();
        let body = json!({
            "id": "b-2", "name": "Zürich ☃", "uri": "/rest/artifact-bundles/b-2",
            "description": "quotes \" and \\ and\nnewline", "size": 12345678901_u64,
            "planScripts": [{"resourceUri": "/rest/plan-scripts/s", "readOnly": false}],
            "buildPlans": [], "deploymentPlans": null, "goldenImages": [{"nested": {"x": 1.5}}],
            "created": "2026-12-02T04:13:52.123Z", "eTag": "e1"
        });
        assert_eq!(c.add_bundle(body.clone()).unwrap(), body);
        assert_eq!(c.get_bundle("b-2", false).unwrap(), body);
        let row = c.backend().get_bundle("b-2").unwrap().unwrap();
        assert_eq!(
            (row.record.name.as_str(), row.backup, &row.record.body),
            ("Zürich ☃", false, &body)
        );
        for (id, name) in [("b-3", "a"), ("b-1", "a"), ("b-0", "Z"), ("b-4", "_")] {
            c.add_bundle(json!({"id": id, "name": name})).unwrap();
        }
        let want = [
            ("Z", "b-0"),
            ("Zürich ☃", "b-2"),
            ("_", "b-4"),
            ("a", "b-1"),
            ("a", "b-3"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(n, i)| (n.to_string(), i.to_string()))
            .collect();
        assert_eq!(names(&c, false), want);
        // Ids are unique, names are not.
        let e = c
            .add_bundle(json!({"id": "b-1", "name": "other"}))
            .unwrap_err();
        assert!(matches!(e, CatalogError::Conflict { .. }), "{e}");
        assert!(e.to_string().contains("b-1"), "{e}");
        assert!(c.add_bundle(json!({"name": "no id"})).is_err());
        assert!(c.add_bundle(json!({"id": "x", "name": " "})).is_err());
        // An update changes name and description only, and moves eTag and modified.
        let u = c
            .update_bundle("b-2", &json!({"name": "renamed", "size": 1}))
            .unwrap();
        assert_eq!(
            (u["name"].as_str(), &u["size"]),
            (Some("renamed"), &body["size"])
        );
        assert_ne!(u["eTag"], body["eTag"]);
        assert_eq!(u["planScripts"], body["planScripts"]);
        assert_eq!(c.get_bundle("renamed", false).unwrap(), u);
        assert_eq!(
            c.backend().get_bundle("b-2").unwrap().unwrap().record.name,
            "renamed"
        );
        let ghost = super::row(json!({"id": "ghost", "name": "g"}), false).unwrap();
        let e = c.backend().update_bundle(&ghost).unwrap_err();
        assert!(matches!(e, CatalogError::NotFound { .. }), "{e}");
        // Bundles and backups are apart: neither lists, finds or deletes the other.
        c.replace_backup(json!({"id": "k1", "name": "a"})).unwrap();
        assert_eq!(names(&c, true), vec![("a".to_string(), "k1".to_string())]);
        assert_eq!(names(&c, false).len(), 5);
        assert!(c.get_bundle("k1", false).is_err());
        assert!(c.delete_bundle("k1", false).is_err());
        assert!(c.update_bundle("k1", &json!({"name": "b"})).is_err());
        assert_eq!(c.get_bundle("a", true).unwrap()["id"], "k1");
        // A delete by name takes the first of that name; a second delete finds nothing.
        assert_eq!(c.delete_bundle("a", false).unwrap(), "b-1");
        assert!(!c.backend().delete_bundle("b-1").unwrap());
        assert!(matches!(
            c.delete_bundle("b-1", false).unwrap_err(),
            CatalogError::NotFound { .. }
        ));
        assert_eq!(c.delete_bundle("k1", true).unwrap(), "k1");
        let mut ids = c.bundle_ids().unwrap();
        ids.sort();
        assert_eq!(ids, vec!["b-0", "b-2", "b-3", "b-4"]);
    }

    fn there_is_one_backup_at_a_time(cat: &dyn Fn() -> Catalog) {
        let c = cat();
        assert!(c
            .replace_backup(json!({"id": "k1", "name": "b"}))
            .unwrap()
            .is_empty());
        assert_eq!(
            c.replace_backup(json!({"id": "k2", "name": "b"})).unwrap(),
            vec!["k1".to_string()]
        );
        let page = c.list_bundles(true, &ListQuery::default()).unwrap();
        assert_eq!(page.total, 1);
        assert_eq!(page.members[0]["id"], "k2");
        assert_eq!(
            c.list_bundles(false, &ListQuery::default()).unwrap().total,
            0
        );
        assert_eq!(c.bundle_ids().unwrap(), vec!["k2".to_string()]);
        // The same backup again replaces itself and nothing else.
        let again = json!({"id": "k2", "name": "b", "description": "again"});
        assert!(c.replace_backup(again.clone()).unwrap().is_empty());
        assert_eq!(c.get_bundle("k2", true).unwrap(), again);
    }

    /// A backup whose id an artifact bundle has is refused, and the previous backup stays
    /// (the delete of the old and the insert of the new are one transaction).
    fn a_refused_backup_leaves_the_previous_one(cat: &dyn Fn() -> Catalog) {
        let c = cat();
        c.add_bundle(json!({"id": "b1", "name": "bundle"})).unwrap();
        c.replace_backup(json!({"id": "k1", "name": "backup"}))
            .unwrap();
        let e = c
            .replace_backup(json!({"id": "b1", "name": "backup"}))
            .unwrap_err();
        assert!(matches!(e, CatalogError::Conflict { .. }), "{e}");
        assert_eq!(
            names(&c, true),
            vec![("backup".to_string(), "k1".to_string())]
        );
        assert_eq!(
            names(&c, false),
            vec![("bundle".to_string(), "b1".to_string())]
        );
        assert!(!c.backend().get_bundle("b1").unwrap().unwrap().backup);
        assert!(c.backend().get_bundle("k1").unwrap().unwrap().backup);
    }

    crate::catalog::testing::conformance!(
        bundles_are_found_by_id_uri_and_name_and_renamed,
        bundle_rows_round_trip,
        there_is_one_backup_at_a_time,
        a_refused_backup_leaves_the_previous_one,
    );
}
