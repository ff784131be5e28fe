//! OS volumes in the catalog and the records of the deployments that made them. The blocks
//! are the store's volume (`store_volume`); the catalog holds the volume's description and
//! its references: the deployment plan and the golden image it came from, which cannot be
//! deleted while it exists.

use serde_json::{json, Value};

use super::backend::{OsVolumeRow, Record};
use super::query::{ListQuery, Page};
use super::{new_id, now_timestamp, Catalog, CatalogError};
use crate::plan::artifacts::ArtifactKind;

type Result<T> = std::result::Result<T, CatalogError>;

pub const OS_VOLUMES_URI: &str = "/rest/os-volumes/";
pub const TYPE_OS_VOLUME: &str = "OSVolume";

/// What a new OS volume is made of.
#[derive(Debug, Clone, Default)]
pub struct NewOsVolume<'a> {
    pub name: &'a str,
    /// The store's volume name.
    pub store_volume: &'a str,
    /// Name, id or URI of the deployment plan it was deployed from.
    pub deployment_plan: Option<&'a str>,
    /// Name, id or URI of its golden image (in the catalog).
    pub golden_image: Option<&'a str>,
    pub size: Option<u64>,
    pub description: Option<&'a str>,
}

impl Catalog {
    /// Records an OS volume; returns its JSON.
    pub fn create_os_volume(&self, v: NewOsVolume<'_>) -> Result<Value> {
        let resolve = |kind: ArtifactKind, key: Option<&str>| -> Result<Option<(String, String)>> {
            match key {
                None => Ok(None),
                Some(k) => {
                    let a = self.get_artifact(kind, k)?;
                    Ok(Some((
                        a["id"].as_str().unwrap_or_default().to_owned(),
                        a["uri"].as_str().unwrap_or_default().to_owned(),
                    )))
                }
            }
        };
        let dp = resolve(ArtifactKind::DeploymentPlan, v.deployment_plan)?;
        let gi = resolve(ArtifactKind::GoldenImage, v.golden_image)?;
        let id = new_id();
        let now = now_timestamp();
        let body = json!({
            "type": TYPE_OS_VOLUME,
            "id": id,
            "name": v.name,
            "uri": format!("{OS_VOLUMES_URI}{id}"),
            "category": "os-volumes",
            "description": v.description,
            "status": "OK",
            "state": "Deployed",
            "size": v.size,
            "deploymentPlanUri": dp.as_ref().map(|d| d.1.clone()),
            "goldenImageUri": gi.as_ref().map(|g| g.1.clone()),
            "created": now,
            "modified": now,
            "eTag": new_id(),
        });
        self.backend().insert_os_volume(&OsVolumeRow {
            record: Record {
                id,
                name: v.name.into(),
                body: body.clone(),
            },
            store_volume: v.store_volume.into(),
            deployment_plan: dp.map(|d| d.0),
            golden_image: gi.map(|g| g.0),
        })?;
        Ok(body)
    }

    pub fn list_os_volumes(&self, q: &ListQuery) -> Result<Page> {
        let all = self.backend().list_os_volumes()?;
        Ok(q.apply(all.into_iter().map(|v| v.record.body).collect()))
    }

    /// One OS volume by id, URI or name.
    pub fn get_os_volume(&self, key: &str) -> Result<Value> {
        Ok(self.os_volume_row(key)?.record.body)
    }

    /// The store's volume name of an OS volume.
    pub fn os_volume_store_name(&self, key: &str) -> Result<String> {
        Ok(self.os_volume_row(key)?.store_volume)
    }

    pub fn delete_os_volume(&self, key: &str) -> Result<()> {
        let r = self.os_volume_row(key)?;
        self.backend().delete_os_volume(&r.record.id)
    }

    /// Appends a deployment's record (JSON) to an OS volume's history.
    pub fn add_deployment_record(&self, volume: &str, record: &Value) -> Result<()> {
        let r = self.os_volume_row(volume)?;
        self.backend()
            .insert_deployment(&new_id(), &r.record.id, record)
    }

    /// An OS volume's deployment records, oldest first.
    pub fn deployment_records(&self, volume: &str) -> Result<Vec<Value>> {
        let r = self.os_volume_row(volume)?;
        self.backend().deployments_of(&r.record.id)
    }

    fn os_volume_row(&self, key: &str) -> Result<OsVolumeRow> {
        let k = key.strip_prefix(OS_VOLUMES_URI).unwrap_or(key);
        if let Some(v) = self.backend().get_os_volume(k)? {
            return Ok(v);
        }
        self.backend()
            .list_os_volumes()?
            .into_iter()
            .find(|v| v.record.name == k)
            .ok_or_else(|| CatalogError::NotFound {
                what: "OS volume",
                key: key.into(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a_volume_keeps_its_image_and_records(cat: &dyn Fn() -> Catalog) {
        let c = cat();
        c.create_golden_image(json!({"name": "gi"}), "store-gi")
            .unwrap();
        let v = c
            .create_os_volume(NewOsVolume {
                name: "vol1",
                store_volume: "vol1",
                golden_image: Some("gi"),
                size: Some(1 << 30),
                ..NewOsVolume::default()
            })
            .unwrap();
        assert_eq!(c.get_os_volume("vol1").unwrap(), v);
        assert_eq!(c.get_os_volume(v["uri"].as_str().unwrap()).unwrap(), v);
        assert_eq!(c.os_volume_store_name("vol1").unwrap(), "vol1");
        let e = c
            .delete_artifact(ArtifactKind::GoldenImage, "gi")
            .unwrap_err();
        assert!(e.to_string().contains("OS volume \"vol1\""), "{e}");
        c.add_deployment_record("vol1", &json!({"step": 1}))
            .unwrap();
        c.add_deployment_record("vol1", &json!({"step": 2}))
            .unwrap();
        assert_eq!(
            c.deployment_records("vol1").unwrap(),
            vec![json!({"step": 1}), json!({"step": 2})]
        );
        let page = c.list_os_volumes(&ListQuery::default()).unwrap();
        assert_eq!(page.total, 1);
        c.delete_os_volume("vol1").unwrap();
        c.delete_artifact(ArtifactKind::GoldenImage, "gi").unwrap();
        assert!(c
            .create_os_volume(NewOsVolume {
                name: "v2",
                store_volume: "v2",
                golden_image: Some("gone"),
                ..NewOsVolume::default()
            })
            .is_err());
    }

    crate::catalog::testing::conformance!(a_volume_keeps_its_image_and_records,);
}
