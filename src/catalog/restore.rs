//! A restore: every artifact of the catalog replaced by a backup's, in one transaction
//! (`Backend::replace_artifacts`). The backup's artifacts keep their ids (so URIs held by
//! clients, and OS volumes' references, still point at them) and `created`; `modified` and
//! `eTag` are new. The set is validated as a whole first, references are rewritten as the
//! catalog's URIs and stored as links, as `artifacts.rs` does for one artifact. Artifacts
//! the backup does not hold are deleted, unless an OS volume still uses one: then the
//! restore is refused naming the volumes, and nothing changes.

use std::collections::HashMap;

use serde_json::Value;

use super::artifacts::{canonical_references, links_in, uri_prefix};
use super::backend::{ArtifactRow, Links, Record};
use super::{new_id, now_timestamp, Catalog, CatalogError};
use crate::plan::artifacts::{Artifact, ArtifactKind, ArtifactSet};

type Result<T> = std::result::Result<T, CatalogError>;

/// What a restore did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Restored {
    /// Artifacts now in the catalog, per kind (plan scripts, build plans, deployment plans,
    /// golden images).
    pub artifacts: [usize; 4],
    /// Store images no golden image row names any more: the caller removes them.
    pub freed_images: Vec<String>,
}

impl Catalog {
    /// Replaces every artifact with those of `set`; `store_images` maps a golden image's
    /// id to the store image holding its disk (a golden image without one is restored as
    /// its description only).
    pub fn restore_artifacts(
        &self,
        set: &ArtifactSet,
        store_images: &HashMap<String, String>,
    ) -> Result<Restored> {
        set.check()
            .map_err(|e| CatalogError::Invalid(format!("the backup's artifacts: {e}")))?;
        let now = now_timestamp();
        let mut rows = Vec::new();
        let mut counts = [0usize; 4];
        for a in set.artifacts() {
            let kind = a.kind();
            let Ok(Value::Object(mut m)) = serde_json::from_slice::<Value>(&a.to_json()) else {
                return Err(CatalogError::Invalid(format!(
                    "the backup's {} {:?} is not a JSON object",
                    kind.what(),
                    a.id()
                )));
            };
            let id = a.id().to_owned();
            m.insert(kind.id_field().into(), Value::String(id.clone()));
            if m.get("type").is_none_or(Value::is_null) {
                m.insert("type".into(), Value::String(kind.type_name().into()));
            }
            m.insert(
                "uri".into(),
                Value::String(format!("{}{id}", uri_prefix(kind))),
            );
            if m.get("created").is_none_or(Value::is_null) {
                m.insert("created".into(), Value::String(now.clone()));
            }
            m.insert("modified".into(), Value::String(now.clone()));
            m.insert("eTag".into(), Value::String(new_id()));
            m.remove("etag");
            let body = canonical_references(Value::Object(m), &a, set);
            let mut links: Links = links_in(&a, set);
            if kind == ArtifactKind::GoldenImage {
                links.store_image = store_images.get(&id).cloned();
            }
            counts[ArtifactKind::ALL
                .iter()
                .position(|k| *k == kind)
                .unwrap_or_default()] += 1;
            rows.push(ArtifactRow {
                kind,
                record: Record {
                    id,
                    name: name_of(&a),
                    body,
                },
                links,
            });
        }
        let freed_images = self.backend().replace_artifacts(&rows)?;
        Ok(Restored {
            artifacts: counts,
            freed_images,
        })
    }
}

fn name_of(a: &Artifact) -> String {
    match a {
        Artifact::PlanScript(x) => x.name.clone(),
        Artifact::BuildPlan(x) => x.name.clone(),
        Artifact::DeploymentPlan(x) => x.name.clone(),
        Artifact::GoldenImage(x) => x.name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::volumes::NewOsVolume;
    use serde_json::json;

    fn script(name: &str) -> Value {
        json!({"type": "PlanScript", "name": name, "planType": "deploy",
               "content": format!("echo {name}\n"), "description": "", "hpProvided": "false"})
    }

    fn plan(name: &str, script: &str) -> Value {
        json!({"type": "OeBuildPlan", "name": name, "oeBuildPlanType": "deploy",
               "customAttributes": [],
               "buildStep": [{"serialNumber": "1", "planScriptUri": script, "parameters": null}]})
    }

    fn dplan(name: &str, bp: &str, gi: &Value) -> Value {
        json!({"type": "OEDeploymentPlan", "name": name, "oeBuildPlanURI": bp,
               "goldenImageURI": gi["uri"], "customAttributes": []})
    }

    /// An artifact's id, from its URI (a build plan's field is `buildPlanid`).
    fn id(v: &Value) -> &str {
        v["uri"].as_str().unwrap().rsplit('/').next().unwrap()
    }

    fn a_restore_replaces_every_artifact_keeping_ids(cat: &dyn Fn() -> Catalog) {
        let c = cat();
        let s1 = c
            .create_artifact(ArtifactKind::PlanScript, script("s1"))
            .unwrap();
        let b1 = c
            .create_artifact(ArtifactKind::BuildPlan, plan("bp", "s1"))
            .unwrap();
        let backup = c.artifact_set().unwrap();
        // After the backup: s1 renamed, a new script used by the plan, another script.
        let mut s1b = s1.clone();
        s1b["name"] = json!("renamed");
        c.update_artifact(ArtifactKind::PlanScript, "s1", s1b)
            .unwrap();
        c.create_artifact(ArtifactKind::PlanScript, script("s1"))
            .unwrap();
        let mut b1b = b1.clone();
        b1b["buildStep"][0]["planScriptUri"] = json!("s1");
        c.update_artifact(ArtifactKind::BuildPlan, "bp", b1b)
            .unwrap();
        c.create_artifact(ArtifactKind::PlanScript, script("later"))
            .unwrap();
        let r = c.restore_artifacts(&backup, &HashMap::new()).unwrap();
        assert_eq!(r.artifacts, [1, 1, 0, 0]);
        let back = c.get_artifact(ArtifactKind::PlanScript, "s1").unwrap();
        assert_eq!(back["id"], s1["id"]);
        assert_eq!(back["content"], s1["content"]);
        assert!(c.get_artifact(ArtifactKind::PlanScript, "later").is_err());
        assert!(c.get_artifact(ArtifactKind::PlanScript, "renamed").is_err());
        let bp = c.get_artifact(ArtifactKind::BuildPlan, "bp").unwrap();
        assert_eq!(bp["buildStep"][0]["planScriptUri"], s1["uri"]);
        // The links are the backup's: the script is in use again.
        assert!(c.delete_artifact(ArtifactKind::PlanScript, "s1").is_err());
    }

    /// Every kind at once: what the backup holds comes back with its ids, names (two
    /// swapped since), links and store images; everything made since is gone, its store
    /// images freed; an OS volume on a kept golden image keeps its reference.
    fn a_restore_of_every_kind_is_wholesale_and_keeps_references(cat: &dyn Fn() -> Catalog) {
        let c = cat();
        let sa = c
            .create_artifact(ArtifactKind::PlanScript, script("a"))
            .unwrap();
        let sb = c
            .create_artifact(ArtifactKind::PlanScript, script("b"))
            .unwrap();
        let mut p = plan("bp", "a");
        p["buildStep"]
            .as_array_mut()
            .unwrap()
            .push(json!({"serialNumber": "2", "planScriptUri": "b", "parameters": null}));
        let bp = c.create_artifact(ArtifactKind::BuildPlan, p).unwrap();
        let gi = c
            .create_golden_image(json!({"name": "gi", "description": "d"}), "store-gi")
            .unwrap();
        let dp = c
            .create_artifact(ArtifactKind::DeploymentPlan, dplan("dp", "bp", &gi))
            .unwrap();
        c.create_os_volume(NewOsVolume {
            name: "vol",
            store_volume: "vol",
            golden_image: Some("gi"),
            ..NewOsVolume::default()
        })
        .unwrap();
        let backup = c.artifact_set().unwrap();
        let stores = HashMap::from([(id(&gi).to_owned(), "store-gi".to_owned())]);

        // After the backup: the deployment plan deleted, the scripts' names swapped, a new
        // golden image and a new deployment plan on it, a new script.
        c.delete_artifact(ArtifactKind::DeploymentPlan, "dp")
            .unwrap();
        for (key, name) in [("a", "tmp"), ("b", "a"), ("tmp", "b")] {
            let mut v = c.get_artifact(ArtifactKind::PlanScript, key).unwrap();
            v["name"] = json!(name);
            c.update_artifact(ArtifactKind::PlanScript, key, v).unwrap();
        }
        let gi2 = c
            .create_golden_image(json!({"name": "gi2", "description": ""}), "store-gi2")
            .unwrap();
        c.create_artifact(ArtifactKind::DeploymentPlan, dplan("dp2", "bp", &gi2))
            .unwrap();
        c.create_artifact(ArtifactKind::PlanScript, script("later"))
            .unwrap();

        let r = c.restore_artifacts(&backup, &stores).unwrap();
        assert_eq!(r.artifacts, [2, 1, 1, 1]);
        assert_eq!(r.freed_images, vec!["store-gi2".to_string()]);
        let names = |kind| -> Vec<(String, String)> {
            let page = c.list_artifacts(kind, &crate::catalog::ListQuery::default());
            page.unwrap()
                .members
                .iter()
                .map(|m| (id(m).to_owned(), m["name"].as_str().unwrap().to_owned()))
                .collect()
        };
        let pair = |v: &Value, n: &str| (id(v).to_owned(), n.to_owned());
        assert_eq!(
            names(ArtifactKind::PlanScript),
            vec![pair(&sa, "a"), pair(&sb, "b")]
        );
        assert_eq!(names(ArtifactKind::BuildPlan), vec![pair(&bp, "bp")]);
        assert_eq!(names(ArtifactKind::DeploymentPlan), vec![pair(&dp, "dp")]);
        assert_eq!(names(ArtifactKind::GoldenImage), vec![pair(&gi, "gi")]);
        let dp_back = c
            .get_artifact(ArtifactKind::DeploymentPlan, id(&dp))
            .unwrap();
        assert_eq!(
            (&dp_back["oeBuildPlanURI"], &dp_back["goldenImageURI"]),
            (&bp["uri"], &gi["uri"])
        );
        assert_eq!(dp_back["created"], dp["created"]);
        assert_ne!(dp_back["eTag"], dp["eTag"]);
        let a_back = c.get_artifact(ArtifactKind::PlanScript, "a").unwrap();
        assert_eq!(a_back["content"], sa["content"]);
        assert_eq!(
            c.golden_image_store_name("gi").unwrap().as_deref(),
            Some("store-gi")
        );
        // The references are rows again, as the backup had them.
        let used = |kind, key| -> Vec<String> {
            let u = c.used_by(kind, key).unwrap();
            u.into_iter()
                .map(|u| format!("{} {}", u.what, u.name))
                .collect()
        };
        assert_eq!(used(ArtifactKind::PlanScript, "a"), vec!["build plan bp"]);
        assert_eq!(used(ArtifactKind::PlanScript, "b"), vec!["build plan bp"]);
        assert_eq!(
            used(ArtifactKind::BuildPlan, "bp"),
            vec!["deployment plan dp"]
        );
        assert_eq!(
            used(ArtifactKind::GoldenImage, "gi"),
            vec!["deployment plan dp", "OS volume vol"]
        );
        let e = c
            .delete_artifact(ArtifactKind::BuildPlan, "bp")
            .unwrap_err();
        assert!(e.to_string().contains("deployment plan \"dp\""), "{e}");
        assert_eq!(c.get_os_volume("vol").unwrap()["name"], "vol");
        // Restoring the same backup again changes nothing and frees nothing.
        let r = c.restore_artifacts(&backup, &stores).unwrap();
        assert_eq!((r.artifacts, r.freed_images.len()), ([2, 1, 1, 1], 0));
        assert_eq!(names(ArtifactKind::PlanScript).len(), 2);
    }

    fn a_restore_that_would_orphan_an_os_volume_changes_nothing(cat: &dyn Fn() -> Catalog) {
        let c = cat();
        let empty = c.artifact_set().unwrap();
        c.create_golden_image(json!({"name": "gi"}), "store-gi")
            .unwrap();
        c.create_artifact(ArtifactKind::PlanScript, script("s1"))
            .unwrap();
        c.create_os_volume(NewOsVolume {
            name: "vol",
            store_volume: "vol",
            golden_image: Some("gi"),
            ..NewOsVolume::default()
        })
        .unwrap();
        let e = c.restore_artifacts(&empty, &HashMap::new()).unwrap_err();
        assert!(e.to_string().contains("OS volume \"vol\""), "{e}");
        assert!(c.get_artifact(ArtifactKind::PlanScript, "s1").is_ok());
        assert_eq!(
            c.golden_image_store_name("gi").unwrap().as_deref(),
            Some("store-gi")
        );
        c.delete_os_volume("vol").unwrap();
        let r = c.restore_artifacts(&empty, &HashMap::new()).unwrap();
        assert_eq!(r.freed_images, vec!["store-gi".to_string()]);
        assert_eq!(r.artifacts, [0; 4]);
    }

    crate::catalog::testing::conformance!(
        a_restore_replaces_every_artifact_keeping_ids,
        a_restore_of_every_kind_is_wholesale_and_keeps_references,
        a_restore_that_would_orphan_an_os_volume_changes_nothing,
    );
}
