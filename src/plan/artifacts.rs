//! HPE Image Streamer's JSON artifacts (plan scripts, build plans, deployment plans, golden
//! images) as HPE writes them, the set of them a bundle or the catalog holds, the lookups a
//! deployment needs, and their validation in one place.
//!
//! Pure: no files (a bundle's I/O is `bundle.rs`). The catalog and the REST API load and
//! check artifacts only through this module, so what strata accepts is decided here.
//!
//! Field names and shapes are HPE's (`planType`, `buildStep[].serialNumber`,
//! `oeBuildPlanURI`, ...). Every field strata does not interpret is kept in `extra`, and a
//! field that may be absent or null is a [`Field`], so parse → serialize gives back the same
//! JSON value: a bundle strata exports carries everything HPE's bundle carried.
//! `customAttributes` stay raw JSON; `plan::attrs` interprets them.
//!
//! Inside a bundle a deployment plan names its build plan and golden image by *name*
//! (`oeBuildPlanURI`, `goldenImageURI`), while a build step names its script by
//! `/rest/plan-scripts/<id>` (with `planScriptName` beside it). The lookups accept a name, an
//! id or a `/rest/...` URI for all of them, so the catalog's URIs work too.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// URI prefixes of HPE's REST resources (`/rest/plan-scripts/<id>`, ...).
pub const PLAN_SCRIPTS_URI: &str = "/rest/plan-scripts/";
pub const BUILD_PLANS_URI: &str = "/rest/build-plans/";
pub const DEPLOYMENT_PLANS_URI: &str = "/rest/deployment-plans/";
pub const GOLDEN_IMAGES_URI: &str = "/rest/golden-images/";

/// The `type` values HPE writes.
pub const TYPE_PLAN_SCRIPT: &str = "PlanScript";
pub const TYPE_BUILD_PLAN: &str = "OeBuildPlan";
pub const TYPE_DEPLOYMENT_PLAN: &str = "OEDeploymentPlan";
pub const TYPE_GOLDEN_IMAGE: &str = "GoldenImage";

/// A JSON field that may be absent, `null`, or hold a value. Kept three-way so that a
/// re-serialized artifact has exactly the keys (and nulls) it was read with.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Field<T> {
    #[default]
    Absent,
    Null,
    Value(T),
}

impl<T> Field<T> {
    pub fn get(&self) -> Option<&T> {
        match self {
            Field::Value(v) => Some(v),
            _ => None,
        }
    }

    pub fn is_absent(&self) -> bool {
        matches!(self, Field::Absent)
    }
}

impl<T> From<Option<T>> for Field<T> {
    fn from(v: Option<T>) -> Self {
        v.map_or(Field::Null, Field::Value)
    }
}

impl<T: Serialize> Serialize for Field<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            // Absent fields are skipped by `skip_serializing_if`; null if one slips through.
            Field::Absent | Field::Null => s.serialize_none(),
            Field::Value(v) => v.serialize(s),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Only called when the key is present (`#[serde(default)]` gives Absent otherwise).
        Option::<T>::deserialize(d).map(Field::from)
    }
}

impl Field<String> {
    /// The string, or None when absent, null or empty (HPE writes all three for "none").
    pub fn non_empty(&self) -> Option<&str> {
        self.get().map(String::as_str).filter(|s| !s.is_empty())
    }
}

/// A plan script (`<id>_planscript.json`): guestfish-dialect `content` run against a volume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanScript {
    #[serde(rename = "type", default, skip_serializing_if = "Field::is_absent")]
    pub kind: Field<String>,
    pub id: String,
    pub name: String,
    /// `deploy`, `capture` or `general`.
    #[serde(rename = "planType")]
    pub plan_type: String,
    pub content: String,
    #[serde(default, skip_serializing_if = "Field::is_absent")]
    pub description: Field<String>,
    /// Raw attribute declarations (HPE writes null here); `plan::attrs` interprets them.
    #[serde(
        rename = "customAttributes",
        default,
        skip_serializing_if = "Field::is_absent"
    )]
    pub custom_attributes: Field<Vec<Value>>,
    /// Every other field, kept as read.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One step of a build plan: which script runs, in what order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildStep {
    /// A number as a string (`"1"`); kept raw so a bad one is a validation problem, not a
    /// parse failure. See [`BuildStep::serial`].
    #[serde(rename = "serialNumber", default)]
    pub serial_number: Value,
    /// `/rest/plan-scripts/<id>`.
    #[serde(
        rename = "planScriptUri",
        default,
        skip_serializing_if = "Field::is_absent"
    )]
    pub plan_script_uri: Field<String>,
    #[serde(
        rename = "planScriptName",
        default,
        skip_serializing_if = "Field::is_absent"
    )]
    pub plan_script_name: Field<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl BuildStep {
    /// The serial number: a JSON string of decimal digits (what HPE writes) or a number.
    pub fn serial(&self) -> Option<u64> {
        match &self.serial_number {
            Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                s.parse().ok()
            }
            Value::Number(n) => n.as_u64(),
            _ => None,
        }
    }

    /// The script id in `planScriptUri`, when it has the `/rest/plan-scripts/<id>` form.
    pub fn plan_script_id(&self) -> Option<&str> {
        self.plan_script_uri
            .non_empty()
            .and_then(|u| u.strip_prefix(PLAN_SCRIPTS_URI))
            .filter(|id| !id.is_empty() && !id.contains('/'))
    }
}

/// A build plan (`<id>_buildplan.json`): the ordered scripts of a deploy or a capture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OeBuildPlan {
    #[serde(rename = "type", default, skip_serializing_if = "Field::is_absent")]
    pub kind: Field<String>,
    /// HPE spells it `buildPlanid` (lower-case d); build plans have no `id` field.
    #[serde(rename = "buildPlanid")]
    pub id: String,
    pub name: String,
    /// `deploy` or `capture`.
    #[serde(rename = "oeBuildPlanType")]
    pub plan_type: String,
    #[serde(
        rename = "buildStep",
        default,
        skip_serializing_if = "Field::is_absent"
    )]
    pub build_step: Field<Vec<BuildStep>>,
    #[serde(default, skip_serializing_if = "Field::is_absent")]
    pub description: Field<String>,
    #[serde(
        rename = "customAttributes",
        default,
        skip_serializing_if = "Field::is_absent"
    )]
    pub custom_attributes: Field<Vec<Value>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl OeBuildPlan {
    /// The steps as written (an absent or null `buildStep` is no steps).
    pub fn steps(&self) -> &[BuildStep] {
        self.build_step.get().map_or(&[], Vec::as_slice)
    }
}

/// A deployment plan (`<id>_deploymentplan.json`): a build plan, a golden image (or none:
/// an empty volume of `VolumeSize`), and attribute values with `editable`/`visible`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OeDeploymentPlan {
    #[serde(rename = "type", default, skip_serializing_if = "Field::is_absent")]
    pub kind: Field<String>,
    pub id: String,
    pub name: String,
    /// In a bundle the build plan's name; in the catalog also an id or `/rest/build-plans/<id>`.
    #[serde(
        rename = "oeBuildPlanURI",
        default,
        skip_serializing_if = "Field::is_absent"
    )]
    pub build_plan_uri: Field<String>,
    /// The golden image's name (or id, URI); absent, null or empty: an empty volume.
    #[serde(
        rename = "goldenImageURI",
        default,
        skip_serializing_if = "Field::is_absent"
    )]
    pub golden_image_uri: Field<String>,
    #[serde(default, skip_serializing_if = "Field::is_absent")]
    pub description: Field<String>,
    #[serde(
        rename = "customAttributes",
        default,
        skip_serializing_if = "Field::is_absent"
    )]
    pub custom_attributes: Field<Vec<Value>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A golden image's description (`<id>_goldenimage.json`); its disk travels beside it as the
/// payload file named after `name` (see `bundle.rs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GoldenImage {
    #[serde(rename = "type", default, skip_serializing_if = "Field::is_absent")]
    pub kind: Field<String>,
    pub id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Field::is_absent")]
    pub description: Field<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One thing wrong (or doubtful) in a set of artifacts: which artifact, which field, what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// e.g. `build plan "HPE - ..." (id 41e1aa0a-...)`.
    pub artifact: String,
    /// e.g. `buildStep[2].serialNumber`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.artifact, self.field, self.message)
    }
}

/// All problems found by [`ArtifactSet::validate`]: errors refuse the set, warnings do not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        write!(
            f,
            "{n} problem{} in the artifacts:",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.errors {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArtifactError {
    #[error("{0}")]
    Invalid(Report),
    #[error("not a valid {what}: {detail}")]
    Parse { what: &'static str, detail: String },
    #[error("its \"type\" is {found:?}, but a {what} was expected ({expected:?})")]
    WrongType {
        what: &'static str,
        expected: &'static str,
        found: String,
    },
    #[error("no {kind} has the name, id or URI {key:?}")]
    NotFound { kind: &'static str, key: String },
    #[error("{artifact}: {field}: {detail}")]
    Unresolved {
        artifact: String,
        field: String,
        detail: String,
    },
}

/// The four kinds of artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArtifactKind {
    PlanScript,
    BuildPlan,
    DeploymentPlan,
    GoldenImage,
}

impl ArtifactKind {
    pub const ALL: [ArtifactKind; 4] = [
        ArtifactKind::PlanScript,
        ArtifactKind::BuildPlan,
        ArtifactKind::DeploymentPlan,
        ArtifactKind::GoldenImage,
    ];

    /// The `type` HPE writes in it.
    pub fn type_name(self) -> &'static str {
        match self {
            ArtifactKind::PlanScript => TYPE_PLAN_SCRIPT,
            ArtifactKind::BuildPlan => TYPE_BUILD_PLAN,
            ArtifactKind::DeploymentPlan => TYPE_DEPLOYMENT_PLAN,
            ArtifactKind::GoldenImage => TYPE_GOLDEN_IMAGE,
        }
    }

    /// How HPE names its file in a bundle: `<id><suffix>`.
    pub fn file_suffix(self) -> &'static str {
        match self {
            ArtifactKind::PlanScript => "_planscript.json",
            ArtifactKind::BuildPlan => "_buildplan.json",
            ArtifactKind::DeploymentPlan => "_deploymentplan.json",
            ArtifactKind::GoldenImage => "_goldenimage.json",
        }
    }

    /// In words, for messages.
    pub fn what(self) -> &'static str {
        match self {
            ArtifactKind::PlanScript => "plan script",
            ArtifactKind::BuildPlan => "build plan",
            ArtifactKind::DeploymentPlan => "deployment plan",
            ArtifactKind::GoldenImage => "golden image",
        }
    }

    /// The kind a bundle file's name says it holds.
    pub fn of_file_name(name: &str) -> Option<ArtifactKind> {
        Self::ALL
            .into_iter()
            .find(|k| name.ends_with(k.file_suffix()))
    }

    /// The kind a `type` value names.
    pub fn of_type(t: &str) -> Option<ArtifactKind> {
        Self::ALL.into_iter().find(|k| k.type_name() == t)
    }
}

/// The fields an artifact of each kind may carry: what HPE's bundles and HPE's SDKs write.
/// Anything else is refused by [`unknown_fields`] where strata takes artifacts from a client
/// (the REST API); bundles keep every field they carry.
const COMMON_FIELDS: &[&str] = &[
    "type",
    "uri",
    "category",
    "eTag",
    "etag",
    "created",
    "modified",
    "name",
    "description",
    "status",
    "state",
    "hpProvided",
    "customAttributes",
    "dependentArtifacts",
];

impl ArtifactKind {
    /// The fields (besides [`COMMON_FIELDS`]) this kind may carry.
    fn own_fields(self) -> &'static [&'static str] {
        match self {
            ArtifactKind::PlanScript => &["id", "planType", "content"],
            ArtifactKind::BuildPlan => &["buildPlanid", "oeBuildPlanType", "buildStep"],
            ArtifactKind::DeploymentPlan => &[
                "id",
                "oeBuildPlanURI",
                "oeBuildPlanName",
                "goldenImageURI",
                "importMetadata",
                "ostype",
            ],
            ArtifactKind::GoldenImage => &[
                "id",
                "artifactBundleCategory",
                "buildPlanCategory",
                "buildPlanName",
                "buildPlanUri",
                "bundleName",
                "bundleURI",
                "checkSum",
                "imageCapture",
                "importedFromBundle",
                "osVolumeCategory",
                "osVolumeName",
                "osVolumeURI",
                "readOnly",
                "size",
            ],
        }
    }

    /// The field that holds this kind's id (`buildPlanid` for build plans).
    pub fn id_field(self) -> &'static str {
        match self {
            ArtifactKind::BuildPlan => "buildPlanid",
            _ => "id",
        }
    }
}

/// The fields of a build step.
const STEP_FIELDS: &[&str] = &[
    "serialNumber",
    "planScriptUri",
    "planScriptName",
    "parameters",
];

/// Fields of `v` (an artifact of `kind` as JSON) that no artifact of that kind carries, with
/// their paths (`buildStep[1].foo`). A value that is not an object has none to report: its
/// parse says what is wrong.
pub fn unknown_fields(kind: ArtifactKind, v: &Value) -> Vec<String> {
    let known = |k: &str| COMMON_FIELDS.contains(&k) || kind.own_fields().contains(&k);
    let Some(m) = v.as_object() else {
        return Vec::new();
    };
    let mut out: Vec<String> = m.keys().filter(|k| !known(k)).cloned().collect();
    if kind == ArtifactKind::BuildPlan {
        if let Some(steps) = m.get("buildStep").and_then(Value::as_array) {
            for (i, s) in steps.iter().enumerate() {
                if let Some(s) = s.as_object() {
                    out.extend(
                        s.keys()
                            .filter(|k| !STEP_FIELDS.contains(&k.as_str()))
                            .map(|k| format!("buildStep[{i}].{k}")),
                    );
                }
            }
        }
    }
    out
}

/// One artifact of any kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Artifact {
    PlanScript(PlanScript),
    BuildPlan(OeBuildPlan),
    DeploymentPlan(OeDeploymentPlan),
    GoldenImage(GoldenImage),
}

impl Artifact {
    pub fn kind(&self) -> ArtifactKind {
        match self {
            Artifact::PlanScript(_) => ArtifactKind::PlanScript,
            Artifact::BuildPlan(_) => ArtifactKind::BuildPlan,
            Artifact::DeploymentPlan(_) => ArtifactKind::DeploymentPlan,
            Artifact::GoldenImage(_) => ArtifactKind::GoldenImage,
        }
    }

    /// Its id (`buildPlanid` for a build plan).
    pub fn id(&self) -> &str {
        match self {
            Artifact::PlanScript(a) => &a.id,
            Artifact::BuildPlan(a) => &a.id,
            Artifact::DeploymentPlan(a) => &a.id,
            Artifact::GoldenImage(a) => &a.id,
        }
    }

    /// Parses one artifact's JSON. With `expected` (a bundle file's name says what it holds)
    /// a different `type` is refused; without it, `type` decides. Every loader (bundle,
    /// catalog, REST API) parses through here.
    pub fn from_json(
        bytes: &[u8],
        expected: Option<ArtifactKind>,
    ) -> Result<Artifact, ArtifactError> {
        let what = expected.map_or("artifact", ArtifactKind::what);
        let parse = |detail: String| ArtifactError::Parse { what, detail };
        let v: Value = serde_json::from_slice(bytes).map_err(|e| parse(e.to_string()))?;
        let found = v.get("type").and_then(Value::as_str);
        let kind = match (expected, found) {
            (Some(k), Some(t)) if t != k.type_name() => {
                return Err(ArtifactError::WrongType {
                    what: k.what(),
                    expected: k.type_name(),
                    found: t.into(),
                })
            }
            (Some(k), _) => k,
            (None, Some(t)) => ArtifactKind::of_type(t).ok_or_else(|| {
                parse(format!(
                    "\"type\" is {t:?}; expected {TYPE_PLAN_SCRIPT}, {TYPE_BUILD_PLAN}, \
                     {TYPE_DEPLOYMENT_PLAN} or {TYPE_GOLDEN_IMAGE}"
                ))
            })?,
            (None, None) => return Err(parse("it has no \"type\" string".into())),
        };
        let typed = |e: serde_json::Error| ArtifactError::Parse {
            what: kind.what(),
            detail: e.to_string(),
        };
        Ok(match kind {
            ArtifactKind::PlanScript => {
                Artifact::PlanScript(serde_json::from_value(v).map_err(typed)?)
            }
            ArtifactKind::BuildPlan => {
                Artifact::BuildPlan(serde_json::from_value(v).map_err(typed)?)
            }
            ArtifactKind::DeploymentPlan => {
                Artifact::DeploymentPlan(serde_json::from_value(v).map_err(typed)?)
            }
            ArtifactKind::GoldenImage => {
                Artifact::GoldenImage(serde_json::from_value(v).map_err(typed)?)
            }
        })
    }

    /// The JSON as HPE writes it: compact, no trailing newline.
    pub fn to_json(&self) -> Vec<u8> {
        let r = match self {
            Artifact::PlanScript(a) => serde_json::to_vec(a),
            Artifact::BuildPlan(a) => serde_json::to_vec(a),
            Artifact::DeploymentPlan(a) => serde_json::to_vec(a),
            Artifact::GoldenImage(a) => serde_json::to_vec(a),
        };
        // Maps with string keys and plain values: serializing cannot fail.
        r.expect("artifacts serialize")
    }
}

/// A build plan with its scripts in run order.
#[derive(Debug, Clone)]
pub struct ResolvedBuildPlan<'a> {
    pub build_plan: &'a OeBuildPlan,
    /// (step, its script), sorted by serial number.
    pub steps: Vec<(&'a BuildStep, &'a PlanScript)>,
}

/// Everything a deployment plan needs, resolved.
#[derive(Debug, Clone)]
pub struct ResolvedDeployment<'a> {
    pub deployment_plan: &'a OeDeploymentPlan,
    pub build_plan: ResolvedBuildPlan<'a>,
    /// The golden image's description, when the set holds it.
    pub golden_image: Option<&'a GoldenImage>,
    /// The golden image the plan names: the description's name, or `goldenImageURI` as
    /// written when the set has no description of it (the store must hold it). None: the
    /// plan makes an empty volume (its `VolumeSize` attribute says how big).
    pub golden_image_name: Option<String>,
}

/// The artifacts of one bundle (or of the catalog), in the order they were added.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ArtifactSet {
    pub plan_scripts: Vec<PlanScript>,
    pub build_plans: Vec<OeBuildPlan>,
    pub deployment_plans: Vec<OeDeploymentPlan>,
    pub golden_images: Vec<GoldenImage>,
}

/// Finds by id, then by `prefix<id>` URI, then by name: ids are UUIDs, so an id never
/// collides with a human-written name in practice, and an exact id wins if it does.
fn find<'a, T>(
    items: &'a [T],
    key: &str,
    prefix: &str,
    id: impl Fn(&T) -> &str,
    name: impl Fn(&T) -> &str,
) -> Option<&'a T> {
    if key.is_empty() {
        return None;
    }
    let by_id = key.strip_prefix(prefix).unwrap_or(key);
    items
        .iter()
        .find(|t| id(t) == by_id)
        .or_else(|| items.iter().find(|t| name(t) == key))
}

pub fn describe_plan_script(s: &PlanScript) -> String {
    format!("plan script {:?} (id {})", s.name, s.id)
}
pub fn describe_build_plan(b: &OeBuildPlan) -> String {
    format!("build plan {:?} (id {})", b.name, b.id)
}
pub fn describe_deployment_plan(d: &OeDeploymentPlan) -> String {
    format!("deployment plan {:?} (id {})", d.name, d.id)
}
pub fn describe_golden_image(g: &GoldenImage) -> String {
    format!("golden image {:?} (id {})", g.name, g.id)
}

/// Ids become file names (`<id>_planscript.json`) when a bundle is written, so they must be
/// plain names. HPE's are UUIDs.
fn id_problem(id: &str) -> Option<String> {
    if id.is_empty() {
        return Some("must not be empty".into());
    }
    if id.len() > 200 {
        return Some(format!("is {} bytes long; at most 200", id.len()));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Some(format!(
            "{id:?} holds {c:?}; an id may hold only letters, digits, '-', '_' and '.'"
        ));
    }
    if id.starts_with('.') {
        return Some(format!("{id:?} must not start with '.'"));
    }
    None
}

impl ArtifactSet {
    pub fn is_empty(&self) -> bool {
        self.plan_scripts.is_empty()
            && self.build_plans.is_empty()
            && self.deployment_plans.is_empty()
            && self.golden_images.is_empty()
    }

    /// Adds an artifact (checked later, with the rest, by `validate`).
    pub fn insert(&mut self, a: Artifact) {
        match a {
            Artifact::PlanScript(a) => self.plan_scripts.push(a),
            Artifact::BuildPlan(a) => self.build_plans.push(a),
            Artifact::DeploymentPlan(a) => self.deployment_plans.push(a),
            Artifact::GoldenImage(a) => self.golden_images.push(a),
        }
    }

    /// Every artifact, in HPE's bundle order: plan scripts, golden images, build plans,
    /// deployment plans.
    pub fn artifacts(&self) -> Vec<Artifact> {
        let mut v: Vec<Artifact> = Vec::new();
        v.extend(self.plan_scripts.iter().cloned().map(Artifact::PlanScript));
        v.extend(
            self.golden_images
                .iter()
                .cloned()
                .map(Artifact::GoldenImage),
        );
        v.extend(self.build_plans.iter().cloned().map(Artifact::BuildPlan));
        v.extend(
            self.deployment_plans
                .iter()
                .cloned()
                .map(Artifact::DeploymentPlan),
        );
        v
    }

    /// A plan script by id, `/rest/plan-scripts/<id>` or name.
    pub fn plan_script(&self, key: &str) -> Option<&PlanScript> {
        find(
            &self.plan_scripts,
            key,
            PLAN_SCRIPTS_URI,
            |s| &s.id,
            |s| &s.name,
        )
    }

    /// A build plan by id, `/rest/build-plans/<id>` or name.
    pub fn build_plan(&self, key: &str) -> Option<&OeBuildPlan> {
        find(
            &self.build_plans,
            key,
            BUILD_PLANS_URI,
            |b| &b.id,
            |b| &b.name,
        )
    }

    /// A deployment plan by id, `/rest/deployment-plans/<id>` or name.
    pub fn deployment_plan(&self, key: &str) -> Option<&OeDeploymentPlan> {
        find(
            &self.deployment_plans,
            key,
            DEPLOYMENT_PLANS_URI,
            |d| &d.id,
            |d| &d.name,
        )
    }

    /// A golden image by id, `/rest/golden-images/<id>` or name.
    pub fn golden_image(&self, key: &str) -> Option<&GoldenImage> {
        find(
            &self.golden_images,
            key,
            GOLDEN_IMAGES_URI,
            |g| &g.id,
            |g| &g.name,
        )
    }

    /// The script a step runs: by the id in `planScriptUri`, else by `planScriptName`, else
    /// by `planScriptUri` read as a name or bare id.
    pub fn step_script(&self, step: &BuildStep) -> Option<&PlanScript> {
        step.plan_script_id()
            .and_then(|id| self.plan_scripts.iter().find(|s| s.id == id))
            .or_else(|| {
                step.plan_script_name
                    .non_empty()
                    .and_then(|n| self.plan_scripts.iter().find(|s| s.name == n))
            })
            // HPE's SDK examples write a script's name (or bare id) in planScriptUri.
            .or_else(|| {
                step.plan_script_uri
                    .non_empty()
                    .and_then(|k| self.plan_script(k))
            })
    }

    /// The build plan a deployment plan names.
    pub fn build_plan_of(&self, dp: &OeDeploymentPlan) -> Result<&OeBuildPlan, ArtifactError> {
        let unresolved = |detail: String| ArtifactError::Unresolved {
            artifact: describe_deployment_plan(dp),
            field: "oeBuildPlanURI".into(),
            detail,
        };
        let key = dp
            .build_plan_uri
            .non_empty()
            .ok_or_else(|| unresolved("names no build plan".into()))?;
        self.build_plan(key)
            .ok_or_else(|| unresolved(format!("no build plan has the name, id or URI {key:?}")))
    }

    /// The golden image a deployment plan names; None when it names none (an empty volume).
    pub fn golden_image_of(
        &self,
        dp: &OeDeploymentPlan,
    ) -> Result<Option<&GoldenImage>, ArtifactError> {
        let Some(key) = dp.golden_image_uri.non_empty() else {
            return Ok(None);
        };
        self.golden_image(key)
            .map(Some)
            .ok_or_else(|| ArtifactError::Unresolved {
                artifact: describe_deployment_plan(dp),
                field: "goldenImageURI".into(),
                detail: format!("no golden image has the name, id or URI {key:?}"),
            })
    }

    /// A build plan's scripts in `serialNumber` order.
    pub fn resolve_build_plan<'a>(
        &'a self,
        bp: &'a OeBuildPlan,
    ) -> Result<ResolvedBuildPlan<'a>, ArtifactError> {
        let mut steps = Vec::new();
        for (i, step) in bp.steps().iter().enumerate() {
            let unresolved = |field: &str, detail: String| ArtifactError::Unresolved {
                artifact: describe_build_plan(bp),
                field: format!("buildStep[{i}].{field}"),
                detail,
            };
            let serial = step.serial().ok_or_else(|| {
                unresolved(
                    "serialNumber",
                    format!("{} is not a number", step.serial_number),
                )
            })?;
            let script = self.step_script(step).ok_or_else(|| {
                unresolved(
                    "planScriptUri",
                    format!(
                        "no plan script matches {:?} (planScriptName {:?})",
                        step.plan_script_uri.get().map_or("", String::as_str),
                        step.plan_script_name.get().map_or("", String::as_str)
                    ),
                )
            })?;
            steps.push((serial, step, script));
        }
        steps.sort_by_key(|(serial, _, _)| *serial);
        Ok(ResolvedBuildPlan {
            build_plan: bp,
            steps: steps.into_iter().map(|(_, st, sc)| (st, sc)).collect(),
        })
    }

    /// A deployment plan (by name, id or URI) with its build plan, ordered scripts and golden
    /// image.
    pub fn resolve(&self, deployment_plan: &str) -> Result<ResolvedDeployment<'_>, ArtifactError> {
        let dp = self
            .deployment_plan(deployment_plan)
            .ok_or_else(|| ArtifactError::NotFound {
                kind: "deployment plan",
                key: deployment_plan.into(),
            })?;
        let bp = self.build_plan_of(dp)?;
        let golden_image = self.golden_image_of(dp).ok().flatten();
        let golden_image_name = golden_image
            .map(|g| g.name.clone())
            .or_else(|| dp.golden_image_uri.non_empty().map(str::to_string));
        Ok(ResolvedDeployment {
            deployment_plan: dp,
            build_plan: self.resolve_build_plan(bp)?,
            golden_image,
            golden_image_name,
        })
    }

    /// Checks the whole set and returns every problem at once.
    ///
    /// Errors: duplicate ids or names within a kind; an id unusable as a file name; a `type`
    /// other than HPE's for that kind; `planType` other than deploy/capture/general;
    /// `oeBuildPlanType` other than deploy/capture; a serial number that is not a number or
    /// is repeated; a step whose script is not in the set; a script of the other kind in a
    /// build plan (a capture script in a deploy plan, or a deploy script in a capture plan —
    /// none of HPE's bundles mixes them; `general` goes in either); a deployment plan naming
    /// no build plan, a missing one or a capture one.
    ///
    /// Warnings (HPE's own bundles are clean of these, but they are harmless): a step whose
    /// `planScriptUri` does not resolve while its `planScriptName` does, or whose
    /// `planScriptName` differs from the script's name.
    pub fn validate(&self) -> Report {
        let mut r = Report::default();
        let err = |r: &mut Report, artifact: &str, field: &str, message: String| {
            r.errors.push(Problem {
                artifact: artifact.into(),
                field: field.into(),
                message,
            })
        };

        // Uniqueness and well-formed ids, per kind.
        fn unique<T>(
            r: &mut Report,
            kind: &str,
            items: &[T],
            id: impl Fn(&T) -> &str,
            name: impl Fn(&T) -> &str,
            describe: impl Fn(&T) -> String,
            id_field: &str,
        ) {
            let mut ids: HashMap<&str, String> = HashMap::new();
            let mut names: HashMap<&str, String> = HashMap::new();
            for t in items {
                let d = describe(t);
                if let Some(p) = id_problem(id(t)) {
                    r.errors.push(Problem {
                        artifact: d.clone(),
                        field: id_field.into(),
                        message: p,
                    });
                }
                if name(t).trim().is_empty() {
                    r.errors.push(Problem {
                        artifact: d.clone(),
                        field: "name".into(),
                        message: "must not be empty".into(),
                    });
                }
                if let Some(first) = ids.get(id(t)) {
                    r.errors.push(Problem {
                        artifact: d.clone(),
                        field: id_field.into(),
                        message: format!("the same id as {first}: ids must be unique"),
                    });
                } else {
                    ids.insert(id(t), d.clone());
                }
                if let Some(first) = names.get(name(t)) {
                    r.errors.push(Problem {
                        artifact: d.clone(),
                        field: "name".into(),
                        message: format!("the same name as {first}: {kind} names must be unique"),
                    });
                } else {
                    names.insert(name(t), d);
                }
            }
        }
        unique(
            &mut r,
            "plan script",
            &self.plan_scripts,
            |s| &s.id,
            |s| &s.name,
            describe_plan_script,
            "id",
        );
        unique(
            &mut r,
            "build plan",
            &self.build_plans,
            |b| &b.id,
            |b| &b.name,
            describe_build_plan,
            "buildPlanid",
        );
        unique(
            &mut r,
            "deployment plan",
            &self.deployment_plans,
            |d| &d.id,
            |d| &d.name,
            describe_deployment_plan,
            "id",
        );
        unique(
            &mut r,
            "golden image",
            &self.golden_images,
            |g| &g.id,
            |g| &g.name,
            describe_golden_image,
            "id",
        );

        let check_type = |r: &mut Report, what: &str, kind: &Field<String>, want: &str| {
            if let Field::Value(k) = kind {
                if k != want {
                    err(r, what, "type", format!("is {k:?}; expected {want:?}"));
                }
            } else if matches!(kind, Field::Null) {
                err(r, what, "type", format!("is null; expected {want:?}"));
            }
        };

        for s in &self.plan_scripts {
            let d = describe_plan_script(s);
            check_type(&mut r, &d, &s.kind, TYPE_PLAN_SCRIPT);
            if !matches!(s.plan_type.as_str(), "deploy" | "capture" | "general") {
                err(
                    &mut r,
                    &d,
                    "planType",
                    format!("is {:?}; expected deploy, capture or general", s.plan_type),
                );
            }
        }

        for b in &self.build_plans {
            let d = describe_build_plan(b);
            check_type(&mut r, &d, &b.kind, TYPE_BUILD_PLAN);
            let kind_ok = matches!(b.plan_type.as_str(), "deploy" | "capture");
            if !kind_ok {
                err(
                    &mut r,
                    &d,
                    "oeBuildPlanType",
                    format!("is {:?}; expected deploy or capture", b.plan_type),
                );
            }
            if matches!(b.build_step, Field::Null) {
                r.warnings.push(Problem {
                    artifact: d.clone(),
                    field: "buildStep".into(),
                    message: "is null; read as no steps".into(),
                });
            }
            let mut serials: HashMap<u64, usize> = HashMap::new();
            for (i, step) in b.steps().iter().enumerate() {
                let f = |name: &str| format!("buildStep[{i}].{name}");
                match step.serial() {
                    None => err(
                        &mut r,
                        &d,
                        &f("serialNumber"),
                        format!(
                            "{} is not a number (HPE writes a string of digits, \"1\")",
                            step.serial_number
                        ),
                    ),
                    Some(n) => {
                        if let Some(first) = serials.get(&n) {
                            err(
                                &mut r,
                                &d,
                                &f("serialNumber"),
                                format!(
                                    "{n} repeats buildStep[{first}]'s; each step needs its own"
                                ),
                            );
                        } else {
                            serials.insert(n, i);
                        }
                    }
                }
                let by_uri = step
                    .plan_script_id()
                    .and_then(|id| self.plan_scripts.iter().find(|s| s.id == id));
                let Some(script) = self.step_script(step) else {
                    err(
                        &mut r,
                        &d,
                        &f("planScriptUri"),
                        format!(
                            "no plan script matches {:?} (nor planScriptName {:?}): missing from the set",
                            step.plan_script_uri.get().map_or("", String::as_str),
                            step.plan_script_name.get().map_or("", String::as_str)
                        ),
                    );
                    continue;
                };
                if by_uri.is_none() {
                    r.warnings.push(Problem {
                        artifact: d.clone(),
                        field: f("planScriptUri"),
                        message: format!(
                            "{:?} names no plan script of the set; found {} by planScriptName",
                            step.plan_script_uri.get().map_or("", String::as_str),
                            describe_plan_script(script)
                        ),
                    });
                } else if let Some(n) = step.plan_script_name.non_empty() {
                    if n != script.name {
                        r.warnings.push(Problem {
                            artifact: d.clone(),
                            field: f("planScriptName"),
                            message: format!(
                                "{n:?} differs from the name of {} (the URI wins)",
                                describe_plan_script(script)
                            ),
                        });
                    }
                }
                let clash = matches!(
                    (b.plan_type.as_str(), script.plan_type.as_str()),
                    ("capture", "deploy") | ("deploy", "capture")
                );
                if clash {
                    err(
                        &mut r,
                        &d,
                        &f("planScriptUri"),
                        format!(
                            "a {} build plan cannot run {}, a {} script (use {} or general scripts)",
                            b.plan_type,
                            describe_plan_script(script),
                            script.plan_type,
                            b.plan_type
                        ),
                    );
                }
            }
        }

        for dp in &self.deployment_plans {
            let d = describe_deployment_plan(dp);
            check_type(&mut r, &d, &dp.kind, TYPE_DEPLOYMENT_PLAN);
            match self.build_plan_of(dp) {
                Err(ArtifactError::Unresolved { detail, .. }) => {
                    err(&mut r, &d, "oeBuildPlanURI", detail)
                }
                Err(e) => err(&mut r, &d, "oeBuildPlanURI", e.to_string()),
                Ok(bp) if bp.plan_type == "capture" => err(
                    &mut r,
                    &d,
                    "oeBuildPlanURI",
                    format!(
                        "names {}, a capture build plan; a deployment plan needs a deploy one",
                        describe_build_plan(bp)
                    ),
                ),
                Ok(_) => {}
            }
            // A golden image outside the set is one the store must already hold (a plan
            // written for the images of this installation): said, not refused.
            if let Err(ArtifactError::Unresolved { detail, .. }) = self.golden_image_of(dp) {
                r.warnings.push(Problem {
                    artifact: d.clone(),
                    field: "goldenImageURI".into(),
                    message: format!("{detail} in this set; the store must hold it"),
                });
            }
        }

        for g in &self.golden_images {
            check_type(
                &mut r,
                &describe_golden_image(g),
                &g.kind,
                TYPE_GOLDEN_IMAGE,
            );
        }
        r
    }

    /// `validate`, as a Result: Err when it found errors (warnings are in the Ok report).
    pub fn check(&self) -> Result<Report, ArtifactError> {
        let r = self.validate();
        if r.is_ok() {
            Ok(r)
        } else {
            Err(ArtifactError::Invalid(r))
        }
    }

    /// Names of the golden images the deployment plans use.
    pub fn used_golden_images(&self) -> HashSet<&str> {
        self.deployment_plans
            .iter()
            .filter_map(|dp| self.golden_image_of(dp).ok().flatten())
            .map(|g| g.name.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_names_strays_and_passes_hpe_fields() {
        let ps = json!({"type": "PlanScript", "id": "a", "name": "n", "planType": "deploy",
                        "content": "", "hpProvided": "false", "colour": 1});
        assert_eq!(
            unknown_fields(ArtifactKind::PlanScript, &ps),
            vec!["colour"]
        );
        let bp = json!({"buildPlanid": "b", "name": "n", "oeBuildPlanType": "deploy",
                        "buildStep": [{"serialNumber": "1", "planScriptUri": "x", "bogus": 0}]});
        assert_eq!(
            unknown_fields(ArtifactKind::BuildPlan, &bp),
            vec!["buildStep[0].bogus"]
        );
        // A plan script's field is unknown on a build plan.
        let bp2 =
            json!({"buildPlanid": "b", "name": "n", "oeBuildPlanType": "deploy", "content": ""});
        assert_eq!(
            unknown_fields(ArtifactKind::BuildPlan, &bp2),
            vec!["content"]
        );
    }

    fn script(id: &str, name: &str, kind: &str) -> PlanScript {
        serde_json::from_value(json!({
            "type": "PlanScript", "id": id, "name": name, "planType": kind,
            "content": "echo hi", "customAttributes": null, "hpProvided": false
        }))
        .unwrap()
    }

    fn step(serial: Value, id: &str, name: &str) -> Value {
        json!({"serialNumber": serial, "planScriptUri": format!("/rest/plan-scripts/{id}"),
               "planScriptName": name, "parameters": null})
    }

    fn plan(id: &str, name: &str, kind: &str, steps: Vec<Value>) -> OeBuildPlan {
        serde_json::from_value(json!({
            "type": "OeBuildPlan", "buildPlanid": id, "name": name, "oeBuildPlanType": kind,
            "buildStep": steps, "customAttributes": [], "eTag": null
        }))
        .unwrap()
    }

    fn dplan(id: &str, name: &str, bp: Value, gi: Value) -> OeDeploymentPlan {
        serde_json::from_value(json!({
            "type": "OEDeploymentPlan", "id": id, "name": name,
            "oeBuildPlanURI": bp, "goldenImageURI": gi, "customAttributes": []
        }))
        .unwrap()
    }

    fn sample() -> ArtifactSet {
        ArtifactSet {
            plan_scripts: vec![
                script("s1", "mount", "general"),
                script("s2", "personalize", "deploy"),
                script("s3", "generalize", "capture"),
            ],
            build_plans: vec![
                plan(
                    "b1",
                    "deploy it",
                    "deploy",
                    vec![
                        step(json!("10"), "s2", "personalize"),
                        step(json!("2"), "s1", "mount"),
                    ],
                ),
                plan(
                    "b2",
                    "capture it",
                    "capture",
                    vec![step(json!("1"), "s3", "generalize")],
                ),
            ],
            deployment_plans: vec![dplan("d1", "dp", json!("deploy it"), json!("gi"))],
            golden_images: vec![serde_json::from_value(
                json!({"type": "GoldenImage", "id": "g1", "name": "gi", "size": 0}),
            )
            .unwrap()],
        }
    }

    #[test]
    fn parse_then_serialize_keeps_absent_null_and_unknown_fields() {
        let v = json!({"type": "PlanScript", "id": "a", "name": "n", "planType": "deploy",
                       "content": "x", "customAttributes": null, "state": null, "eTag": null,
                       "etag": null, "future": {"k": [1, 2]}});
        let s: PlanScript = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(s.custom_attributes, Field::Null);
        assert_eq!(s.description, Field::Absent);
        assert_eq!(serde_json::to_value(&s).unwrap(), v);
    }

    #[test]
    fn from_json_picks_the_kind_by_type_and_refuses_a_mismatch() {
        let ps = br#"{"type":"PlanScript","id":"a","name":"n","planType":"deploy","content":""}"#;
        let a = Artifact::from_json(ps, None).unwrap();
        assert_eq!(a.kind(), ArtifactKind::PlanScript);
        assert_eq!(a.id(), "a");
        assert_eq!(Artifact::from_json(&a.to_json(), None).unwrap(), a);
        let e = Artifact::from_json(ps, Some(ArtifactKind::BuildPlan)).unwrap_err();
        assert!(matches!(e, ArtifactError::WrongType { .. }), "{e}");
        let e = Artifact::from_json(br#"{"id":"a"}"#, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no \"type\""), "{e}");
        let e = Artifact::from_json(b"{", Some(ArtifactKind::GoldenImage))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a valid golden image"), "{e}");
        assert_eq!(
            ArtifactKind::of_file_name("x_buildplan.json"),
            Some(ArtifactKind::BuildPlan)
        );
        assert_eq!(ArtifactKind::of_file_name("x.json"), None);
    }

    #[test]
    fn missing_required_field_is_a_parse_error_naming_it() {
        let e = serde_json::from_value::<OeBuildPlan>(
            json!({"name": "x", "oeBuildPlanType": "deploy"}),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("buildPlanid"), "{e}");
    }

    #[test]
    fn sample_set_validates_clean_and_resolves_in_serial_order() {
        let set = sample();
        let r = set.validate();
        assert_eq!(r, Report::default(), "{r:?}");
        let res = set.resolve("dp").unwrap();
        let names: Vec<&str> = res
            .build_plan
            .steps
            .iter()
            .map(|(_, s)| s.name.as_str())
            .collect();
        // "2" before "10": numeric order, not string order.
        assert_eq!(names, ["mount", "personalize"]);
        assert_eq!(res.golden_image.unwrap().id, "g1");
        // Lookups by id and URI too.
        assert_eq!(set.deployment_plan("d1").unwrap().name, "dp");
        assert_eq!(
            set.deployment_plan("/rest/deployment-plans/d1")
                .unwrap()
                .name,
            "dp"
        );
        assert_eq!(
            set.build_plan("/rest/build-plans/b2").unwrap().name,
            "capture it"
        );
        assert_eq!(
            set.golden_image("/rest/golden-images/g1").unwrap().name,
            "gi"
        );
        assert!(set.build_plan("").is_none());
    }

    #[test]
    fn empty_or_null_golden_image_means_an_empty_volume() {
        let mut set = sample();
        for gi in [json!(null), json!("")] {
            set.deployment_plans = vec![dplan("d1", "dp", json!("b1"), gi)];
            assert!(set.resolve("dp").unwrap().golden_image.is_none());
        }
        let mut v = serde_json::to_value(&set.deployment_plans[0]).unwrap();
        v.as_object_mut().unwrap().remove("goldenImageURI");
        set.deployment_plans = vec![serde_json::from_value(v).unwrap()];
        assert!(set.resolve("d1").unwrap().golden_image.is_none());
        assert!(set.validate().is_ok());
    }

    #[test]
    fn step_falls_back_to_script_name_with_a_warning() {
        let mut set = sample();
        set.build_plans[0] = plan(
            "b1",
            "deploy it",
            "deploy",
            vec![step(json!("1"), "gone", "mount")],
        );
        let r = set.validate();
        assert!(r.is_ok(), "{r}");
        assert_eq!(r.warnings.len(), 1);
        assert!(
            r.warnings[0].field == "buildStep[0].planScriptUri",
            "{:?}",
            r.warnings
        );
        assert_eq!(set.resolve("dp").unwrap().build_plan.steps[0].1.id, "s1");
    }

    #[test]
    fn validation_reports_every_problem_with_artifact_and_field() {
        let mut set = sample();
        set.plan_scripts.push(script("s1", "mount", "weird"));
        set.build_plans.push(plan(
            "b3",
            "bad",
            "install",
            vec![
                step(json!("x"), "s1", "mount"),
                step(json!("1"), "s2", "personalize"),
                step(json!("1"), "nope", "nope"),
            ],
        ));
        set.build_plans.push(plan(
            "b4",
            "cap",
            "capture",
            vec![step(json!(1), "s2", "personalize")],
        ));
        set.deployment_plans.push(dplan(
            "d2",
            "dp2",
            json!("no such plan"),
            json!("no such image"),
        ));
        set.deployment_plans
            .push(dplan("d3", "dp3", json!(null), json!(null)));
        set.deployment_plans
            .push(dplan("d4", "dp4", json!("cap"), json!(null)));
        let r = set.validate();
        let all = r.to_string();
        let expect = [
            ("plan script \"mount\" (id s1)", "id", "same id"),
            ("plan script \"mount\" (id s1)", "name", "same name"),
            ("plan script \"mount\" (id s1)", "planType", "\"weird\""),
            (
                "build plan \"bad\" (id b3)",
                "oeBuildPlanType",
                "\"install\"",
            ),
            (
                "build plan \"bad\" (id b3)",
                "buildStep[0].serialNumber",
                "not a number",
            ),
            (
                "build plan \"bad\" (id b3)",
                "buildStep[2].serialNumber",
                "repeats",
            ),
            (
                "build plan \"bad\" (id b3)",
                "buildStep[2].planScriptUri",
                "missing",
            ),
            (
                "build plan \"cap\" (id b4)",
                "buildStep[0].planScriptUri",
                "a capture build plan cannot run",
            ),
            (
                "deployment plan \"dp2\" (id d2)",
                "oeBuildPlanURI",
                "no such plan",
            ),
            (
                "deployment plan \"dp3\" (id d3)",
                "oeBuildPlanURI",
                "names no build plan",
            ),
            (
                "deployment plan \"dp4\" (id d4)",
                "oeBuildPlanURI",
                "capture build plan",
            ),
        ];
        for (a, f, m) in expect {
            assert!(
                r.errors
                    .iter()
                    .any(|p| p.artifact == a && p.field == f && p.message.contains(m)),
                "missing {a} / {f} / {m} in\n{all}"
            );
        }
        assert_eq!(r.errors.len(), expect.len(), "{all}");
        // A golden image outside the set is the store's business: a warning.
        assert!(r
            .warnings
            .iter()
            .any(|p| p.field == "goldenImageURI" && p.message.contains("no such image")));
        assert!(matches!(set.check(), Err(ArtifactError::Invalid(_))));
        let e = set.resolve("dp2").unwrap_err().to_string();
        assert!(
            e.contains("oeBuildPlanURI") && e.contains("no such plan"),
            "{e}"
        );
        assert!(matches!(
            set.resolve("zz"),
            Err(ArtifactError::NotFound { .. })
        ));
    }

    #[test]
    fn ids_that_cannot_be_file_names_are_refused() {
        let mut set = sample();
        set.plan_scripts[0].id = "../x".into();
        set.golden_images[0].id = "".into();
        let r = set.validate();
        assert!(
            r.errors
                .iter()
                .any(|p| p.field == "id" && p.message.contains("'/'")),
            "{r}"
        );
        assert!(
            r.errors
                .iter()
                .any(|p| p.field == "id" && p.message.contains("empty")),
            "{r}"
        );
    }

    #[test]
    fn wrong_type_field_is_an_error() {
        let mut set = sample();
        set.golden_images[0].kind = Field::Value("PlanScript".into());
        let r = set.validate();
        assert!(r.errors.iter().any(|p| p.field == "type"), "{r}");
    }
}
