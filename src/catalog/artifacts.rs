//! Artifacts in the catalog: plan scripts, build plans, deployment plans and golden images
//! created, replaced, read, listed and deleted, in HPE's JSON shapes.
//!
//! What is accepted is decided by `plan::artifacts` (field names, parse, `validate` over the
//! artifact and the ones it refers to) and `plan::attrs` (custom attribute declarations);
//! this file only fills in what the catalog owns — the id when none is given, `type`,
//! `uri`, `eTag`, `created`, `modified` — resolves references to catalog rows (a name, an
//! id or a `/rest/...` URI, as the bundles and the SDKs write them), and stores them as
//! links the backend enforces. Content is stored as given: a script comes back byte for
//! byte.

use serde_json::Value;

use super::backend::{Links, Record, UsedBy};
use super::query::{ListQuery, Page};
use super::{new_id, now_timestamp, Catalog, CatalogError};
use crate::plan::artifacts::{
    unknown_fields, Artifact, ArtifactKind, ArtifactSet, BUILD_PLANS_URI, DEPLOYMENT_PLANS_URI,
    GOLDEN_IMAGES_URI, PLAN_SCRIPTS_URI,
};
use crate::plan::attrs::Declaration;

type Result<T> = std::result::Result<T, CatalogError>;

/// `/rest/plan-scripts/` and the like: where an artifact of `kind` lives.
pub fn uri_prefix(kind: ArtifactKind) -> &'static str {
    match kind {
        ArtifactKind::PlanScript => PLAN_SCRIPTS_URI,
        ArtifactKind::BuildPlan => BUILD_PLANS_URI,
        ArtifactKind::DeploymentPlan => DEPLOYMENT_PLANS_URI,
        ArtifactKind::GoldenImage => GOLDEN_IMAGES_URI,
    }
}

/// A name, an id or a URI as a lookup key: the URI's last part for a URI.
fn key_of(kind: ArtifactKind, key: &str) -> &str {
    key.strip_prefix(uri_prefix(kind)).unwrap_or(key)
}

impl Catalog {
    /// Adds an artifact given as HPE's JSON; returns it as stored.
    pub fn create_artifact(&self, kind: ArtifactKind, body: Value) -> Result<Value> {
        let (rec, artifact) = self.prepare(kind, body, None)?;
        let links = self.links_for(&artifact, None)?;
        self.backend().insert_artifact(kind, &rec, &links)?;
        Ok(rec.body)
    }

    /// Adds a golden image's description, linked to the store's image `store_image`.
    pub fn create_golden_image(&self, body: Value, store_image: &str) -> Result<Value> {
        let (rec, _) = self.prepare(ArtifactKind::GoldenImage, body, None)?;
        let links = Links {
            store_image: Some(store_image.into()),
            ..Links::default()
        };
        self.backend()
            .insert_artifact(ArtifactKind::GoldenImage, &rec, &links)?;
        Ok(rec.body)
    }

    /// Replaces the artifact `key` (name, id or URI) with `body`; its id and `created`
    /// stay. Refused when the change would break an artifact that uses it.
    pub fn update_artifact(&self, kind: ArtifactKind, key: &str, body: Value) -> Result<Value> {
        let old = self.record(kind, key)?;
        let (rec, artifact) = self.prepare(kind, body, Some(&old))?;
        let keep = self.backend().links_of(kind, &old.id)?;
        let links = self.links_for(&artifact, Some(keep))?;
        self.check_users(&artifact)?;
        self.backend().update_artifact(kind, &rec, &links)?;
        Ok(rec.body)
    }

    /// One artifact by name, id or URI.
    pub fn get_artifact(&self, kind: ArtifactKind, key: &str) -> Result<Value> {
        Ok(self.record(kind, key)?.body)
    }

    /// [`Catalog::get_artifact`]'s JSON as the catalog holds it (text, not parsed: an API
    /// get shapes it without building the whole value). `NotFound` as `get_artifact`.
    pub fn get_artifact_text(&self, kind: ArtifactKind, key: &str) -> Result<String> {
        self.backend()
            .find_artifact_text(kind, key_of(kind, key))?
            .ok_or_else(|| CatalogError::NotFound {
                what: kind.what(),
                key: key.into(),
            })
    }

    /// The store's image name a golden image's blocks are in.
    pub fn golden_image_store_name(&self, key: &str) -> Result<Option<String>> {
        let r = self.record(ArtifactKind::GoldenImage, key)?;
        Ok(self
            .backend()
            .links_of(ArtifactKind::GoldenImage, &r.id)?
            .store_image)
    }

    pub fn list_artifacts(&self, kind: ArtifactKind, q: &ListQuery) -> Result<Page> {
        let all = self.backend().list_artifacts(kind)?;
        Ok(q.apply(all.into_iter().map(|r| r.body).collect()))
    }

    /// Deletes an artifact nothing uses (`InUse` names the users otherwise).
    pub fn delete_artifact(&self, kind: ArtifactKind, key: &str) -> Result<()> {
        let r = self.record(kind, key)?;
        self.backend().delete_artifact(kind, &r.id)
    }

    /// Deletes an artifact; with `force`, a deployment plan is deleted although OS volumes
    /// were deployed from it (their reference to it is cleared; returns them). Anything else
    /// in use is refused as [`Catalog::delete_artifact`] refuses it.
    pub fn delete_artifact_forced(
        &self,
        kind: ArtifactKind,
        key: &str,
        force: bool,
    ) -> Result<Vec<UsedBy>> {
        if !force || kind != ArtifactKind::DeploymentPlan {
            self.delete_artifact(kind, key)?;
            return Ok(Vec::new());
        }
        let r = self.record(kind, key)?;
        self.backend().delete_deployment_plan_detaching(&r.id)
    }

    /// What uses the artifact `key`.
    pub fn used_by(&self, kind: ArtifactKind, key: &str) -> Result<Vec<UsedBy>> {
        let r = self.record(kind, key)?;
        self.backend().users_of(kind, &r.id)
    }

    /// Every artifact, as the deploy pipeline takes them.
    pub fn artifact_set(&self) -> Result<ArtifactSet> {
        let mut set = ArtifactSet::default();
        for kind in ArtifactKind::ALL {
            for r in self.backend().list_artifacts(kind)? {
                set.insert(parse(kind, &r.body)?);
            }
        }
        Ok(set)
    }

    fn record(&self, kind: ArtifactKind, key: &str) -> Result<Record> {
        self.backend()
            .find_artifact(kind, key_of(kind, key))?
            .ok_or_else(|| CatalogError::NotFound {
                what: kind.what(),
                key: key.into(),
            })
    }

    fn find(&self, kind: ArtifactKind, key: &str) -> Result<Option<Artifact>> {
        match self.backend().find_artifact(kind, key_of(kind, key))? {
            Some(r) => Ok(Some(parse(kind, &r.body)?)),
            None => Ok(None),
        }
    }

    /// Checks `body` and fills in the catalog's fields: the stored record and the artifact.
    fn prepare(
        &self,
        kind: ArtifactKind,
        body: Value,
        old: Option<&Record>,
    ) -> Result<(Record, Artifact)> {
        let what = kind.what();
        let Value::Object(mut m) = body else {
            return Err(CatalogError::Invalid(format!(
                "a {what} must be a JSON object"
            )));
        };
        let unknown = unknown_fields(kind, &Value::Object(m.clone()));
        if !unknown.is_empty() {
            return Err(CatalogError::Invalid(format!(
                "unknown field{} {}: a {what} has no such field",
                if unknown.len() == 1 { "" } else { "s" },
                unknown
                    .iter()
                    .map(|f| format!("{f:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let id_field = kind.id_field();
        let given = m
            .get(id_field)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        let id = match (old, given) {
            (Some(o), Some(g)) if g != o.id => {
                return Err(CatalogError::Invalid(format!(
                    "{id_field} {g:?} differs from the {what}'s id {:?}: an id cannot change",
                    o.id
                )))
            }
            (Some(o), _) => o.id.clone(),
            (None, Some(g)) => g,
            (None, None) => new_id(),
        };
        let now = now_timestamp();
        let created = old
            .and_then(|o| o.body.get("created").cloned())
            .filter(|c| !c.is_null())
            .unwrap_or_else(|| Value::String(now.clone()));
        m.insert(id_field.into(), Value::String(id.clone()));
        if m.get("type").is_none_or(Value::is_null) {
            m.insert("type".into(), Value::String(kind.type_name().into()));
        }
        m.insert(
            "uri".into(),
            Value::String(format!("{}{id}", uri_prefix(kind))),
        );
        m.insert("created".into(), created);
        m.insert("modified".into(), Value::String(now));
        m.insert("eTag".into(), Value::String(new_id()));
        // Build plans written by HPE carry both spellings; the catalog keeps one.
        m.remove("etag");
        let body = Value::Object(m);
        let artifact = parse(kind, &body)?;
        check_attributes(&body)?;
        let name = match &artifact {
            Artifact::PlanScript(a) => a.name.clone(),
            Artifact::BuildPlan(a) => a.name.clone(),
            Artifact::DeploymentPlan(a) => a.name.clone(),
            Artifact::GoldenImage(a) => a.name.clone(),
        };
        let set = self.context(&artifact, None)?;
        set.check()
            .map_err(|e| CatalogError::Invalid(e.to_string()))?;
        let body = canonical_references(body, &artifact, &set);
        let artifact = parse(kind, &body)?;
        Ok((Record { id, name, body }, artifact))
    }

    /// `artifact` with the catalog's artifacts it refers to (`replace` standing in for its
    /// stored version): the set `validate` checks.
    fn context(&self, artifact: &Artifact, replace: Option<&Artifact>) -> Result<ArtifactSet> {
        let mut set = ArtifactSet::default();
        let add = |set: &mut ArtifactSet, a: Artifact| {
            let a = match replace {
                Some(r) if r.kind() == a.kind() && r.id() == a.id() => r.clone(),
                _ => a,
            };
            let dup = set
                .artifacts()
                .iter()
                .any(|b| b.kind() == a.kind() && b.id() == a.id());
            if !dup {
                set.insert(a);
            }
        };
        match artifact {
            Artifact::BuildPlan(bp) => {
                for s in self.step_scripts(bp)? {
                    add(&mut set, s);
                }
            }
            Artifact::DeploymentPlan(dp) => {
                if let Some(key) = dp.build_plan_uri.non_empty() {
                    if let Some(Artifact::BuildPlan(bp)) =
                        self.find(ArtifactKind::BuildPlan, key)?
                    {
                        for s in self.step_scripts(&bp)? {
                            add(&mut set, s);
                        }
                        add(&mut set, Artifact::BuildPlan(bp));
                    }
                }
                if let Some(key) = dp.golden_image_uri.non_empty() {
                    if let Some(g) = self.find(ArtifactKind::GoldenImage, key)? {
                        add(&mut set, g);
                    }
                }
            }
            Artifact::PlanScript(_) | Artifact::GoldenImage(_) => {}
        }
        add(&mut set, artifact.clone());
        Ok(set)
    }

    /// The catalog's plan scripts a build plan's steps name (by URI, id or name).
    fn step_scripts(&self, bp: &crate::plan::artifacts::OeBuildPlan) -> Result<Vec<Artifact>> {
        let mut out = Vec::new();
        for step in bp.steps() {
            let keys = [
                step.plan_script_id(),
                step.plan_script_uri.non_empty(),
                step.plan_script_name.non_empty(),
            ];
            for key in keys.into_iter().flatten() {
                if let Some(s) = self.find(ArtifactKind::PlanScript, key)? {
                    out.push(s);
                }
            }
        }
        Ok(out)
    }

    /// The rows that record what `artifact` refers to (after `prepare` validated it, every
    /// reference resolves but a golden image only the store holds).
    fn links_for(&self, artifact: &Artifact, keep: Option<Links>) -> Result<Links> {
        let keep = keep.unwrap_or_default();
        let set = self.context(artifact, None)?;
        let mut l = Links {
            store_image: keep.store_image,
            ..Links::default()
        };
        match artifact {
            Artifact::BuildPlan(bp) => {
                for step in bp.steps() {
                    if let Some(s) = set.step_script(step) {
                        l.plan_scripts.push(s.id.clone());
                    }
                }
            }
            Artifact::DeploymentPlan(dp) => {
                l.build_plan = set.build_plan_of(dp).ok().map(|b| b.id.clone());
                l.golden_image = set.golden_image_of(dp).ok().flatten().map(|g| g.id.clone());
            }
            Artifact::PlanScript(_) | Artifact::GoldenImage(_) => {}
        }
        Ok(l)
    }

    /// Refuses a replacement that would make an artifact using it invalid (a deploy build
    /// plan running a script now of type capture; a deployment plan on a build plan now
    /// for capture).
    fn check_users(&self, new: &Artifact) -> Result<()> {
        let kind = new.kind();
        for u in self.backend().users_of(kind, new.id())? {
            let user_kind = match u.what {
                "build plan" => ArtifactKind::BuildPlan,
                "deployment plan" => ArtifactKind::DeploymentPlan,
                _ => continue,
            };
            let Some(r) = self.backend().get_artifact(user_kind, &u.id)? else {
                continue;
            };
            let user = parse(user_kind, &r.body)?;
            let set = self.context(&user, Some(new))?;
            if let Err(e) = set.check() {
                return Err(CatalogError::Invalid(format!(
                    "the change would break {u}, which uses this {}: {e}",
                    kind.what()
                )));
            }
        }
        Ok(())
    }
}

/// The links of `artifact` whose references resolve in `set` (a restore's whole set).
pub(super) fn links_in(artifact: &Artifact, set: &ArtifactSet) -> Links {
    let mut l = Links::default();
    match artifact {
        Artifact::BuildPlan(bp) => {
            for step in bp.steps() {
                if let Some(s) = set.step_script(step) {
                    if !l.plan_scripts.contains(&s.id) {
                        l.plan_scripts.push(s.id.clone());
                    }
                }
            }
        }
        Artifact::DeploymentPlan(dp) => {
            l.build_plan = set.build_plan_of(dp).ok().map(|b| b.id.clone());
            l.golden_image = set.golden_image_of(dp).ok().flatten().map(|g| g.id.clone());
        }
        Artifact::PlanScript(_) | Artifact::GoldenImage(_) => {}
    }
    l
}

/// References rewritten as the catalog's URIs (`/rest/plan-scripts/<id>`, ...), so that
/// a renamed artifact stays referenced; a step's `planScriptName` is set to its script's
/// name. A golden image the catalog does not hold (only the store) keeps its name.
pub(super) fn canonical_references(
    mut body: Value,
    artifact: &Artifact,
    set: &ArtifactSet,
) -> Value {
    match artifact {
        Artifact::BuildPlan(bp) => {
            for (i, step) in bp.steps().iter().enumerate() {
                if let Some(script) = set.step_script(step) {
                    let b = &mut body["buildStep"][i];
                    b["planScriptUri"] = Value::String(format!("{PLAN_SCRIPTS_URI}{}", script.id));
                    b["planScriptName"] = Value::String(script.name.clone());
                }
            }
        }
        Artifact::DeploymentPlan(dp) => {
            if let Ok(bp) = set.build_plan_of(dp) {
                body["oeBuildPlanURI"] = Value::String(format!("{BUILD_PLANS_URI}{}", bp.id));
            }
            if let Ok(Some(g)) = set.golden_image_of(dp) {
                body["goldenImageURI"] = Value::String(format!("{GOLDEN_IMAGES_URI}{}", g.id));
            }
        }
        Artifact::PlanScript(_) | Artifact::GoldenImage(_) => {}
    }
    body
}

fn parse(kind: ArtifactKind, body: &Value) -> Result<Artifact> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    Artifact::from_json(&bytes, Some(kind)).map_err(|e| CatalogError::Invalid(e.to_string()))
}

/// `customAttributes` of a build or deployment plan must be declarations `plan::attrs`
/// reads (names, types, constraints).
fn check_attributes(body: &Value) -> Result<()> {
    let Some(v) = body.get("customAttributes") else {
        return Ok(());
    };
    Declaration::list_from_json(v)
        .map(|_| ())
        .map_err(|e| CatalogError::Invalid(format!("customAttributes: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn script(name: &str, kind: &str) -> Value {
        json!({"type": "PlanScript", "name": name, "planType": kind,
               "content": "echo \"hi\"\r\n\ttab é\n", "description": "d", "hpProvided": "false"})
    }

    fn plan(name: &str, scripts: &[&str]) -> Value {
        let steps: Vec<Value> = scripts
            .iter()
            .enumerate()
            .map(|(i, s)| {
                json!({"serialNumber": (i + 1).to_string(), "planScriptUri": s,
                                 "parameters": null})
            })
            .collect();
        json!({"type": "OeBuildPlan", "name": name, "oeBuildPlanType": "deploy",
               "buildStep": steps, "customAttributes": []})
    }

    fn dplan(name: &str, bp: &str) -> Value {
        json!({"type": "OEDeploymentPlan", "name": name, "oeBuildPlanURI": bp,
               "goldenImageURI": "", "customAttributes": []})
    }

    fn create_fills_in_the_catalogs_fields_and_keeps_the_content(cat: &dyn Fn() -> Catalog) {
        let c = cat();
        let s = c
            .create_artifact(ArtifactKind::PlanScript, script("s1", "deploy"))
            .unwrap();
        let id = s["id"].as_str().unwrap();
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
        assert_eq!(s["uri"], format!("/rest/plan-scripts/{id}"));
        assert_eq!(s["content"], "echo \"hi\"\r\n\ttab é\n");
        for f in ["eTag", "created", "modified"] {
            assert!(s[f].is_string(), "{f}: {s}");
        }
        assert_eq!(c.get_artifact(ArtifactKind::PlanScript, id).unwrap(), s);
        assert_eq!(c.get_artifact(ArtifactKind::PlanScript, "s1").unwrap(), s);
        assert_eq!(
            c.get_artifact(ArtifactKind::PlanScript, s["uri"].as_str().unwrap())
                .unwrap(),
            s
        );
    }

    fn bad_artifacts_are_refused_with_the_reason(cat: &dyn Fn() -> Catalog) {
        let c = cat();
        let mut s = script("s1", "deploy");
        s["colour"] = json!("red");
        let e = c.create_artifact(ArtifactKind::PlanScript, s).unwrap_err();
        assert!(e.to_string().contains("\"colour\""), "{e}");
        let e = c
            .create_artifact(ArtifactKind::PlanScript, script("s1", "sideways"))
            .unwrap_err();
        assert!(e.to_string().contains("planType"), "{e}");
        let e = c
            .create_artifact(ArtifactKind::PlanScript, json!({"name": "x"}))
            .unwrap_err();
        assert!(matches!(e, CatalogError::Invalid(_)), "{e}");
        let e = c
            .create_artifact(ArtifactKind::PlanScript, json!([1]))
            .unwrap_err();
        assert!(e.to_string().contains("object"), "{e}");
        let e = c
            .create_artifact(ArtifactKind::BuildPlan, plan("b", &["no-such-script"]))
            .unwrap_err();
        assert!(e.to_string().contains("no-such-script"), "{e}");
        let mut bad_attr = plan("b", &[]);
        bad_attr["customAttributes"] = json!([{"name": "X", "type": "number",
            "constraints": "{\"options\": oops}", "value": "1"}]);
        let e = c
            .create_artifact(ArtifactKind::BuildPlan, bad_attr)
            .unwrap_err();
        assert!(e.to_string().contains("customAttributes"), "{e}");
        assert!(c
            .list_artifacts(ArtifactKind::PlanScript, &ListQuery::default())
            .unwrap()
            .members
            .is_empty());
    }

    fn names_and_ids_are_unique(cat: &dyn Fn() -> Catalog) {
        let c = cat();
        c.create_artifact(ArtifactKind::PlanScript, script("s1", "deploy"))
            .unwrap();
        let e = c
            .create_artifact(ArtifactKind::PlanScript, script("s1", "deploy"))
            .unwrap_err();
        assert!(matches!(e, CatalogError::Conflict { .. }), "{e}");
        let mut s = script("s2", "deploy");
        s["id"] = json!("fixed-id");
        c.create_artifact(ArtifactKind::PlanScript, s.clone())
            .unwrap();
        s["name"] = json!("s3");
        let e = c.create_artifact(ArtifactKind::PlanScript, s).unwrap_err();
        assert!(e.to_string().contains("fixed-id"), "{e}");
    }

    fn a_used_artifact_cannot_be_deleted_and_the_error_names_its_users(cat: &dyn Fn() -> Catalog) {
        let c = cat();
        let s = c
            .create_artifact(ArtifactKind::PlanScript, script("s1", "deploy"))
            .unwrap();
        let sid = s["id"].as_str().unwrap().to_owned();
        // By URI, as HPE's bundles write it, and by name, as the SDK's examples do.
        let b1 = c
            .create_artifact(
                ArtifactKind::BuildPlan,
                plan("bp-one", &[&format!("/rest/plan-scripts/{sid}")]),
            )
            .unwrap();
        let b2 = c
            .create_artifact(ArtifactKind::BuildPlan, plan("bp-two", &["s1"]))
            .unwrap();
        // Stored by URI, so that renaming the script keeps it referenced.
        assert_eq!(
            b2["buildStep"][0]["planScriptUri"],
            format!("/rest/plan-scripts/{sid}")
        );
        assert_eq!(b2["buildStep"][0]["planScriptName"], "s1");
        let e = c
            .delete_artifact(ArtifactKind::PlanScript, &sid)
            .unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, CatalogError::InUse { .. }), "{e}");
        assert!(msg.contains("bp-one") && msg.contains("bp-two"), "{msg}");
        let users = c.used_by(ArtifactKind::PlanScript, "s1").unwrap();
        assert_eq!(users.len(), 2);

        let d = c
            .create_artifact(ArtifactKind::DeploymentPlan, dplan("dp", "bp-one"))
            .unwrap();
        let e = c
            .delete_artifact(ArtifactKind::BuildPlan, "bp-one")
            .unwrap_err();
        assert!(e.to_string().contains("\"dp\""), "{e}");
        // Top down, each delete frees the next.
        c.delete_artifact(ArtifactKind::DeploymentPlan, d["uri"].as_str().unwrap())
            .unwrap();
        c.delete_artifact(ArtifactKind::BuildPlan, b1["buildPlanid"].as_str().unwrap())
            .unwrap();
        c.delete_artifact(ArtifactKind::BuildPlan, "bp-two")
            .unwrap();
        c.delete_artifact(ArtifactKind::PlanScript, &sid).unwrap();
        let e = c
            .delete_artifact(ArtifactKind::PlanScript, &sid)
            .unwrap_err();
        assert!(matches!(e, CatalogError::NotFound { .. }), "{e}");
    }

    fn a_golden_image_used_by_a_deployment_plan_cannot_be_deleted(cat: &dyn Fn() -> Catalog) {
        let c = cat();
        let g = c
            .create_golden_image(
                json!({"type": "GoldenImage", "name": "gi", "description": "x"}),
                "store-gi",
            )
            .unwrap();
        assert_eq!(
            c.golden_image_store_name("gi").unwrap().as_deref(),
            Some("store-gi")
        );
        c.create_artifact(ArtifactKind::PlanScript, script("s1", "deploy"))
            .unwrap();
        c.create_artifact(ArtifactKind::BuildPlan, plan("bp", &["s1"]))
            .unwrap();
        let mut d = dplan("dp", "bp");
        d["goldenImageURI"] = g["uri"].clone();
        c.create_artifact(ArtifactKind::DeploymentPlan, d).unwrap();
        let e = c
            .delete_artifact(ArtifactKind::GoldenImage, "gi")
            .unwrap_err();
        assert!(e.to_string().contains("deployment plan \"dp\""), "{e}");
    }

    fn a_forced_delete_of_a_deployment_plan_detaches_its_os_volumes_only(
        cat: &dyn Fn() -> Catalog,
    ) {
        let c = cat();
        c.create_artifact(ArtifactKind::PlanScript, script("s1", "deploy"))
            .unwrap();
        c.create_artifact(ArtifactKind::BuildPlan, plan("bp", &["s1"]))
            .unwrap();
        c.create_artifact(ArtifactKind::DeploymentPlan, dplan("dp", "bp"))
            .unwrap();
        c.create_os_volume(crate::catalog::volumes::NewOsVolume {
            name: "vol",
            store_volume: "vol",
            deployment_plan: Some("dp"),
            ..Default::default()
        })
        .unwrap();
        let e = c
            .delete_artifact_forced(ArtifactKind::DeploymentPlan, "dp", false)
            .unwrap_err();
        assert!(e.to_string().contains("OS volume \"vol\""), "{e}");
        // Force does not break a build plan's script.
        assert!(c
            .delete_artifact_forced(ArtifactKind::PlanScript, "s1", true)
            .is_err());
        let gone = c
            .delete_artifact_forced(ArtifactKind::DeploymentPlan, "dp", true)
            .unwrap();
        assert_eq!(gone.len(), 1);
        assert!(c.get_artifact(ArtifactKind::DeploymentPlan, "dp").is_err());
        let v = c.get_os_volume("vol").unwrap();
        assert!(v["deploymentPlanUri"].is_null(), "{v}");
        // Nothing names the build plan now.
        c.delete_artifact(ArtifactKind::BuildPlan, "bp").unwrap();
    }

    fn update_keeps_id_and_created_and_refuses_breaking_a_user(cat: &dyn Fn() -> Catalog) {
        let c = cat();
        let s = c
            .create_artifact(ArtifactKind::PlanScript, script("s1", "deploy"))
            .unwrap();
        c.create_artifact(ArtifactKind::BuildPlan, plan("bp", &["s1"]))
            .unwrap();
        let mut s2 = s.clone();
        s2["content"] = json!("echo changed\n");
        s2["name"] = json!("s1-renamed");
        let u = c
            .update_artifact(ArtifactKind::PlanScript, s["id"].as_str().unwrap(), s2)
            .unwrap();
        assert_eq!((&u["id"], &u["created"]), (&s["id"], &s["created"]));
        assert_ne!(u["eTag"], s["eTag"]);
        assert_eq!(u["content"], "echo changed\n");
        // A deploy build plan cannot run a capture script.
        let mut s3 = u.clone();
        s3["planType"] = json!("capture");
        let e = c
            .update_artifact(ArtifactKind::PlanScript, "s1-renamed", s3)
            .unwrap_err();
        assert!(e.to_string().contains("build plan \"bp\""), "{e}");
        // The id cannot change.
        let mut s4 = u.clone();
        s4["id"] = json!("other");
        assert!(c
            .update_artifact(ArtifactKind::PlanScript, "s1-renamed", s4)
            .is_err());
        let e = c
            .update_artifact(ArtifactKind::PlanScript, "nope", u)
            .unwrap_err();
        assert!(matches!(e, CatalogError::NotFound { .. }), "{e}");
    }

    fn every_hpe_bundle_loads_into_the_catalog_and_lists_back(cat: &dyn Fn() -> Catalog) {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/hpe-artifacts");
        let mut seen = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_none_or(|x| x != "zip") {
                continue;
            }
            let c = cat();
            let set = crate::plan::bundle::Bundle::open(&p)
                .unwrap()
                .into_artifacts();
            let n = |v: &dyn Fn(&ArtifactSet) -> usize| v(&set);
            // Referenced artifacts first, as an import does.
            for g in &set.golden_images {
                let v = serde_json::to_value(g).unwrap();
                c.create_golden_image(v, &g.name).unwrap();
            }
            for s in &set.plan_scripts {
                let v = serde_json::to_value(s).unwrap();
                let got = c.create_artifact(ArtifactKind::PlanScript, v).unwrap();
                assert_eq!(got["content"], s.content.as_str());
                assert_eq!(got["id"], s.id.as_str());
            }
            for b in &set.build_plans {
                c.create_artifact(ArtifactKind::BuildPlan, serde_json::to_value(b).unwrap())
                    .unwrap_or_else(|e| panic!("{}: {}: {e}", p.display(), b.name));
            }
            for d in &set.deployment_plans {
                c.create_artifact(
                    ArtifactKind::DeploymentPlan,
                    serde_json::to_value(d).unwrap(),
                )
                .unwrap_or_else(|e| panic!("{}: {}: {e}", p.display(), d.name));
            }
            let back = c.artifact_set().unwrap();
            assert_eq!(back.plan_scripts.len(), n(&|s| s.plan_scripts.len()));
            assert_eq!(back.build_plans.len(), n(&|s| s.build_plans.len()));
            assert_eq!(
                back.deployment_plans.len(),
                n(&|s| s.deployment_plans.len())
            );
            back.check().unwrap();
            seen += set.plan_scripts.len();
        }
        assert!(seen >= 25, "only {seen} scripts");
    }

    crate::catalog::testing::conformance!(
        create_fills_in_the_catalogs_fields_and_keeps_the_content,
        bad_artifacts_are_refused_with_the_reason,
        names_and_ids_are_unique,
        a_used_artifact_cannot_be_deleted_and_the_error_names_its_users,
        a_golden_image_used_by_a_deployment_plan_cannot_be_deleted,
        update_keeps_id_and_created_and_refuses_breaking_a_user,
        every_hpe_bundle_loads_into_the_catalog_and_lists_back,
        a_forced_delete_of_a_deployment_plan_detaches_its_os_volumes_only,
    );
}
