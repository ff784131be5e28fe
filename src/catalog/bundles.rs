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

    #[test]
    fn bundles_are_found_by_id_uri_and_name_and_renamed() {
        let c = Catalog::memory().unwrap();
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

    #[test]
    fn there_is_one_backup_at_a_time() {
        let c = Catalog::memory().unwrap();
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
    }
}
