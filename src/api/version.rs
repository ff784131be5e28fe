//! API versions: `GET /rest/version`, the `X-API-Version` header, and the resource `type`
//! names each version uses.
//!
//! Image Streamer's types gained a `V5` suffix at API 500 for build and deployment plans
//! (`OeBuildPlanV5`, `OEDeploymentPlanV5`); plan scripts and golden images kept theirs.
//! The catalog stores the unversioned names HPE's bundles carry; requests may send either,
//! and responses carry the one of the version asked for.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use crate::plan::artifacts::ArtifactKind;

/// The newest API version strata answers as (HPE OneView 6.60 / Image Streamer 6.x).
pub const CURRENT_VERSION: u32 = 4200;
/// The oldest it accepts (Image Streamer 3.00's).
pub const MINIMUM_VERSION: u32 = 300;

/// The version a request asked for (`X-API-Version`; absent: the minimum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiVersion(pub u32);

impl<S: Send + Sync> FromRequestParts<S> for ApiVersion {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<ApiVersion, ApiError> {
        let Some(h) = parts.headers.get("x-api-version") else {
            return Ok(ApiVersion(MINIMUM_VERSION));
        };
        let v = h
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .ok_or_else(|| {
                ApiError::bad_request(
                    "INVALID_API_VERSION",
                    format!("X-API-Version {h:?} is not a number"),
                )
            })?;
        if v < MINIMUM_VERSION {
            return Err(ApiError::bad_request(
                "UNSUPPORTED_API_VERSION",
                format!("X-API-Version {v} is older than the oldest supported, {MINIMUM_VERSION}"),
            ));
        }
        // A newer client talks to this appliance at the newest version it has.
        Ok(ApiVersion(v.min(CURRENT_VERSION)))
    }
}

impl ApiVersion {
    /// The `type` of an artifact of `kind` at this version.
    pub fn type_name(self, kind: ArtifactKind) -> &'static str {
        let v5 = self.0 >= 500;
        match kind {
            ArtifactKind::BuildPlan if v5 => "OeBuildPlanV5",
            ArtifactKind::DeploymentPlan if v5 => "OEDeploymentPlanV5",
            k => k.type_name(),
        }
    }

    /// The `type` of a list of `kind`.
    pub fn collection_type(self, kind: ArtifactKind) -> String {
        format!("{}Collection", self.type_name(kind))
    }
}

/// The stored (unversioned) name for any version's `type` of `kind`: what the catalog
/// and `plan::artifacts` check against.
pub fn stored_type(kind: ArtifactKind, sent: &str) -> Option<&'static str> {
    let base = kind.type_name();
    let all = [
        ApiVersion(MINIMUM_VERSION).type_name(kind),
        ApiVersion(CURRENT_VERSION).type_name(kind),
    ];
    (sent == base || all.contains(&sent)).then_some(base)
}

/// A request body's `type`, made the stored one when it is any version's name of `kind`
/// (anything else is left for validation to refuse with the reason).
pub fn normalize_type(kind: ArtifactKind, body: &mut Value) {
    if let Some(t) = body.get("type").and_then(Value::as_str) {
        if let Some(base) = stored_type(kind, t) {
            body["type"] = Value::String(base.into());
        }
    }
}

/// A stored artifact as this version shows it.
pub fn present(kind: ArtifactKind, v: ApiVersion, mut body: Value) -> Value {
    if body.is_object() {
        body["type"] = Value::String(v.type_name(kind).into());
    }
    body
}

/// [`present`] on an artifact's stored JSON text, as the bytes `Json(present(..))` would
/// send: only the top level is parsed (each member's value is kept as its text), `type`
/// replaced, and the object written again, keys in the same (sorted) order `Value` keeps.
/// None when the text is not a JSON object (the caller then goes the `Value` way, which
/// reports what is wrong).
pub fn present_text(kind: ArtifactKind, v: ApiVersion, text: &str) -> Option<Vec<u8>> {
    use serde_json::value::RawValue;
    let mut m: std::collections::BTreeMap<String, &RawValue> = serde_json::from_str(text).ok()?;
    let t = serde_json::to_string(v.type_name(kind)).ok()?;
    let t = RawValue::from_string(t).ok()?;
    m.insert("type".to_owned(), &t);
    serde_json::to_vec(&m).ok()
}

/// `GET /rest/version`.
pub async fn get_version() -> Json<Value> {
    Json(json!({
        "currentVersion": CURRENT_VERSION,
        "minimumVersion": MINIMUM_VERSION,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn present_text_writes_the_bytes_present_would() {
        let stored = json!({
            "type": "OeBuildPlan", "name": "b \"q\" \u{e9}\n", "zeta": [1, 2.5, -3e-7, null],
            "alpha": {"z": true, "a": {"deep": "x\\y"}}, "customAttributes": [],
            "big": 18446744073709551615u64, "uri": "/rest/build-plans/1",
        })
        .to_string();
        for v in [ApiVersion(300), ApiVersion(800)] {
            let want = serde_json::to_vec(&present(
                ArtifactKind::BuildPlan,
                v,
                serde_json::from_str(&stored).unwrap(),
            ))
            .unwrap();
            let got = present_text(ArtifactKind::BuildPlan, v, &stored).unwrap();
            assert_eq!(
                String::from_utf8(got).unwrap(),
                String::from_utf8(want).unwrap()
            );
        }
        // No type stored: present adds one, and so does present_text.
        let got = present_text(
            ArtifactKind::PlanScript,
            ApiVersion(800),
            r#"{"b":1,"a":2}"#,
        );
        assert_eq!(got.unwrap(), br#"{"a":2,"b":1,"type":"PlanScript"}"#);
        assert!(present_text(ArtifactKind::PlanScript, ApiVersion(800), "[1]").is_none());
        assert!(present_text(ArtifactKind::PlanScript, ApiVersion(800), "{").is_none());
    }

    #[test]
    fn type_names_follow_the_version() {
        let old = ApiVersion(300);
        let new = ApiVersion(800);
        assert_eq!(old.type_name(ArtifactKind::BuildPlan), "OeBuildPlan");
        assert_eq!(new.type_name(ArtifactKind::BuildPlan), "OeBuildPlanV5");
        assert_eq!(
            new.type_name(ArtifactKind::DeploymentPlan),
            "OEDeploymentPlanV5"
        );
        assert_eq!(new.type_name(ArtifactKind::PlanScript), "PlanScript");
        let mut b = json!({"type": "OEDeploymentPlanV5"});
        normalize_type(ArtifactKind::DeploymentPlan, &mut b);
        assert_eq!(b["type"], "OEDeploymentPlan");
        let mut b = json!({"type": "PlanScript"});
        normalize_type(ArtifactKind::BuildPlan, &mut b);
        assert_eq!(
            b["type"], "PlanScript",
            "a wrong type is left for validation"
        );
    }
}
