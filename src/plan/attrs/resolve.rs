//! Resolution: the four layers (script defaults < build plan < deployment plan < the
//! deployment's own values) plus the built-ins, merged into [`Values`], validated, with every
//! problem collected. Then substitution ([`expand`]), masking of secrets, the listing for the
//! deployment record, and the `VolumeSize` rule for deployments without a golden image.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::declaration::{Constraints, Declaration, Kind, NicMode};
use super::given::{Builtins, DeploymentValues, Given};
use super::reference::{scan, Piece, Reference};
use super::syntax::{self, Decimal};
use super::validate::{check_nic, check_scalar, nic_field_error, nic_mode};
use super::{AttrError, AttrErrors, BUILTINS, INITIATOR_FIELDS, MASK, NIC_FIELDS, VOLUME_SIZE};

/// A plan script's text and the name errors call it by.
#[derive(Clone, Copy, Debug)]
pub struct Script<'a> {
    /// The plan script's name (errors say "script NAME, line N").
    pub name: &'a str,
    /// Its `content`.
    pub text: &'a str,
}

/// Everything resolution reads. The declarations are one plan's `customAttributes`.
#[derive(Clone, Copy, Debug)]
pub struct Layers<'a> {
    /// The build plan's scripts, in step order: their references are checked and their
    /// `@Name:default@` defaults are the lowest layer.
    pub scripts: &'a [Script<'a>],
    /// The build plan's `customAttributes`.
    pub build_plan: &'a [Declaration],
    /// The deployment plan's `customAttributes` (empty when deploying a build plan directly).
    pub deployment_plan: &'a [Declaration],
    /// The deployment's own values.
    pub deployment: &'a DeploymentValues,
    /// `_Initiator1` / `_Initiator2`.
    pub builtins: &'a Builtins,
}

/// Where a resolved value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A script's `@Name:default@`.
    ScriptDefault,
    /// The build plan's declaration.
    BuildPlan,
    /// The deployment plan's declaration.
    DeploymentPlan,
    /// The deployment's own values.
    Deployment,
}

#[derive(Clone)]
enum Val {
    None,
    Scalar(String),
    Nic(BTreeMap<String, String>),
}

#[derive(Clone)]
struct Attr {
    kind: Kind,
    constraints: Constraints,
    source: Option<Source>,
    val: Val,
}

/// The resolved, validated attribute values of one deployment. Substitute with [`expand`];
/// pass every log line, error and record through [`Values::mask`]. Its `Debug` masks
/// passwords.
#[derive(Clone)]
pub struct Values {
    attrs: BTreeMap<String, Attr>,
    builtins: Builtins,
    /// First default seen per `Name` / `Name.field`, for references that have none.
    defaults: BTreeMap<String, String>,
    /// Secret texts, longest first.
    secrets: Vec<String>,
}

enum Lookup<'a> {
    Found(Cow<'a, str>),
    Missing { builtin: bool },
    Misuse(String),
}

/// What a deployment's OS volume starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VolumePlan {
    /// A copy-on-write clone of the deployment plan's golden image (`VolumeSize` unused).
    GoldenImage,
    /// No golden image: an empty volume of `bytes` (`VolumeSize` MiB).
    Empty {
        /// The size in bytes.
        bytes: u64,
    },
}

fn declared<'a>(
    layer: &'a [Declaration],
    what: &str,
    errs: &mut Vec<AttrError>,
) -> BTreeMap<&'a str, &'a Declaration> {
    let mut m = BTreeMap::new();
    for d in layer {
        if m.insert(d.name.as_str(), d).is_some() {
            errs.push(AttrError::Declaration {
                name: Some(d.name.clone()),
                reason: format!("declared twice in the {what}'s customAttributes"),
            });
        }
    }
    m
}

/// Merges the layers into validated [`Values`]. Every problem is collected: values that
/// break their type's rules (naming attribute, rule and value, passwords' values never),
/// references with no value anywhere (naming script and line), references that misuse an
/// attribute (`@Nic@` without a field, `@Str.x@`), deployment values for attributes nobody
/// declares or uses, or that the deployment plan does not let a deployment edit.
pub fn resolve(layers: &Layers<'_>) -> Result<Values, AttrErrors> {
    let mut errs = Vec::new();
    let bp = declared(layers.build_plan, "build plan", &mut errs);
    let dp = declared(layers.deployment_plan, "deployment plan", &mut errs);

    let mut refs: Vec<(&str, Reference)> = Vec::new();
    for s in layers.scripts {
        for p in scan(s.text) {
            if let Piece::Ref(r) = p {
                refs.push((s.name, r));
            }
        }
    }
    let mut defaults = BTreeMap::new();
    for (_, r) in &refs {
        if let Some(d) = &r.default {
            defaults.entry(r.key()).or_insert_with(|| d.clone());
        }
    }

    let mut names: BTreeSet<&str> = BTreeSet::new();
    names.extend(bp.keys());
    names.extend(dp.keys());
    names.extend(
        refs.iter()
            .map(|(_, r)| r.name.as_str())
            .filter(|n| !BUILTINS.contains(n)),
    );
    for name in layers.deployment.names() {
        if BUILTINS.contains(&name.as_str()) {
            errs.push(AttrError::Assignment {
                name: Some(name.clone()),
                reason: "a built-in comes from the deployment's iSCSI boot settings, not from attribute values".into(),
            });
        } else if !names.contains(name.as_str()) {
            errs.push(AttrError::Unknown { name: name.clone() });
        }
    }

    let mut attrs = BTreeMap::new();
    for &name in &names {
        let decl = dp.get(name).or_else(|| bp.get(name)).copied();
        let uses: Vec<&Reference> = refs
            .iter()
            .filter(|(_, r)| r.name == name)
            .map(|(_, r)| r)
            .collect();
        let kind = match decl {
            Some(d) => d.kind,
            // HPE: an attribute only a script names is a string; one used with a sub-field
            // can only be a NIC.
            None if uses.iter().any(|r| r.field.is_some()) => Kind::Nic,
            None => Kind::String,
        };
        let constraints = decl.map(|d| d.constraints().clone()).unwrap_or_default();
        let given = layers.deployment.get(name);
        if given.is_some() && decl.is_some_and(|d| d.editable == Some(false)) {
            errs.push(AttrError::NotEditable { name: name.into() });
        }
        let layer_value =
            |l: &BTreeMap<&str, &Declaration>| l.get(name).and_then(|d| d.value.clone());
        let (source, val) = if kind == Kind::Nic {
            for (what, l) in [("deployment plan", &dp), ("build plan", &bp)] {
                if layer_value(l).is_some_and(|v| !v.is_empty()) {
                    errs.push(AttrError::Declaration {
                        name: Some(name.into()),
                        reason: format!("the {what} gives this nic attribute a value; a NIC's sub-fields come from the deployment (NAME.mac=…)"),
                    });
                }
            }
            match given {
                Some(Given::Fields(m)) => (Some(Source::Deployment), Val::Nic(m.clone())),
                Some(Given::Scalar(_)) => {
                    errs.push(AttrError::Assignment {
                        name: Some(name.into()),
                        reason: "a nic attribute takes sub-fields: NAME.mac=…, NAME.ipaddress=…, or a JSON object".into(),
                    });
                    (None, Val::None)
                }
                None => (None, Val::None),
            }
        } else {
            match given {
                Some(Given::Scalar(v)) => (Some(Source::Deployment), Val::Scalar(v.clone())),
                Some(Given::Fields(_)) => {
                    errs.push(AttrError::Assignment {
                        name: Some(name.into()),
                        reason: format!(
                            "a {kind} attribute takes one value (NAME=VALUE), not sub-fields"
                        ),
                    });
                    (None, Val::None)
                }
                None => match (layer_value(&dp), layer_value(&bp), defaults.get(name)) {
                    (Some(v), _, _) => (Some(Source::DeploymentPlan), Val::Scalar(v)),
                    (None, Some(v), _) => (Some(Source::BuildPlan), Val::Scalar(v)),
                    (None, None, Some(v)) => (Some(Source::ScriptDefault), Val::Scalar(v.clone())),
                    (None, None, None) => (None, Val::None),
                },
            }
        };

        // Validation of what will be substituted.
        let regex = decl.and_then(Declaration::regex);
        let mut checked: BTreeSet<String> = BTreeSet::new();
        let mut check = |v: &str, errs: &mut Vec<AttrError>| {
            if checked.insert(v.to_string()) {
                errs.extend(check_scalar(name, kind, &constraints, regex, v));
            }
        };
        match &val {
            Val::Scalar(v) if source == Some(Source::ScriptDefault) => {
                // Each reference substitutes its own default: check each one used.
                for r in &uses {
                    check(r.default.as_deref().unwrap_or(v), &mut errs);
                }
            }
            Val::Scalar(v) => check(v, &mut errs),
            Val::Nic(m) => {
                errs.extend(check_nic(name, &constraints, m));
                for r in &uses {
                    if let (Some(f), Some(d)) = (&r.field, &r.default) {
                        if m.get(f).is_none_or(|x| x.is_empty()) {
                            nic_default_error(name, f, d, &mut errs);
                        }
                    }
                }
            }
            Val::None => {
                for r in &uses {
                    if let (Some(f), Some(d)) = (&r.field, &r.default) {
                        nic_default_error(name, f, d, &mut errs);
                    }
                }
            }
        }
        attrs.insert(
            name.to_string(),
            Attr {
                kind,
                constraints,
                source,
                val,
            },
        );
    }

    for (which, ini) in [
        ("_Initiator1", &layers.builtins.initiator1),
        ("_Initiator2", &layers.builtins.initiator2),
    ] {
        let Some(i) = ini else { continue };
        let mut bad = |f: &str, v: &str, ok: bool, why: &str| {
            if !ok {
                errs.push(AttrError::Invalid {
                    name: format!("{which}.{f}"),
                    rule: format!("built-in {f}"),
                    why: why.into(),
                    value: Some(v.into()),
                });
            }
        };
        bad(
            "ip",
            &i.ip,
            syntax::ipv4(&i.ip),
            "must be a dotted-quad IPv4 address",
        );
        bad("mac", &i.mac, syntax::mac(&i.mac), "must be a MAC address");
        bad(
            "netmask",
            &i.netmask,
            syntax::netmask(&i.netmask),
            "must be an IPv4 netmask",
        );
        bad(
            "gateway",
            &i.gateway,
            i.gateway.is_empty() || syntax::ipv4(&i.gateway),
            "must be empty or an IPv4 address",
        );
    }

    let mut values = Values {
        attrs,
        builtins: layers.builtins.clone(),
        defaults,
        secrets: Vec::new(),
    };

    let mut reported: BTreeSet<(String, String)> = BTreeSet::new();
    for (script, r) in &refs {
        let problem = match values.lookup(r) {
            Lookup::Found(_) => continue,
            Lookup::Missing { builtin } => AttrError::Missing {
                name: r.key(),
                script: Some(script.to_string()),
                line: r.line,
                builtin,
            },
            Lookup::Misuse(reason) => AttrError::Usage {
                name: r.key(),
                script: Some(script.to_string()),
                line: r.line,
                reason,
            },
        };
        // One report per attribute and script, at its first line.
        if reported.insert((script.to_string(), r.key())) {
            errs.push(problem);
        }
    }

    let mut secrets = BTreeSet::new();
    for (name, a) in &values.attrs {
        if !a.kind.is_secret() {
            continue;
        }
        if let Val::Scalar(v) = &a.val {
            secrets.insert(v.clone());
        }
        if a.source == Some(Source::ScriptDefault) {
            for (_, r) in refs.iter().filter(|(_, r)| &r.name == name) {
                if let Some(d) = &r.default {
                    secrets.insert(d.clone());
                }
            }
        }
    }
    let mut secrets: Vec<String> = secrets.into_iter().filter(|s| !s.is_empty()).collect();
    secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    values.secrets = secrets;

    if errs.is_empty() {
        Ok(values)
    } else {
        // An error could quote a password given to the wrong attribute: mask what we know.
        Err(AttrErrors(
            errs.into_iter().map(|e| values.mask_error(e)).collect(),
        ))
    }
}

fn nic_default_error(name: &str, field: &str, default: &str, errs: &mut Vec<AttrError>) {
    if let Some(why) = nic_field_error(field, default) {
        let e = AttrError::Invalid {
            name: format!("{name}.{field}"),
            rule: format!("nic {field} (script default)"),
            why: why.into(),
            value: Some(default.into()),
        };
        if !errs.contains(&e) {
            errs.push(e);
        }
    }
}

impl Values {
    fn lookup<'a>(&'a self, r: &'a Reference) -> Lookup<'a> {
        let default = || r.default.as_deref().map(Cow::Borrowed);
        if BUILTINS.contains(&r.name.as_str()) {
            let Some(f) = r.field.as_deref().filter(|f| INITIATOR_FIELDS.contains(f)) else {
                return Lookup::Misuse(format!(
                    "a built-in is used with one of its fields: @{}.ip@, .mac, .netmask or .gateway",
                    r.name
                ));
            };
            return match self.builtins.get(&r.name) {
                Some(i) => {
                    let v = i.field(f).unwrap_or("");
                    match default() {
                        Some(d) if v.is_empty() => Lookup::Found(d),
                        _ => Lookup::Found(Cow::Borrowed(v)),
                    }
                }
                None => default().map_or(Lookup::Missing { builtin: true }, Lookup::Found),
            };
        }
        let Some(a) = self.attrs.get(&r.name) else {
            return default().map_or(Lookup::Missing { builtin: false }, Lookup::Found);
        };
        if a.kind == Kind::Nic {
            let Some(f) = r.field.as_deref() else {
                return Lookup::Misuse(format!(
                    "a nic attribute is used with a sub-field, as @{}.ipaddress@",
                    r.name
                ));
            };
            let flag = f == "dhcp" || f == "ipv4disable";
            if !NIC_FIELDS.contains(&f) {
                return Lookup::Misuse(format!(
                    "{f} is not a NIC sub-field (known: {})",
                    NIC_FIELDS.join(", ")
                ));
            }
            if !flag && !a.constraints.has_parameter(f) {
                return Lookup::Misuse(format!(
                    "the nic attribute {} does not declare the sub-field {f} (parameters: {})",
                    r.name,
                    a.constraints
                        .parameters
                        .as_deref()
                        .unwrap_or(&[])
                        .join(", ")
                ));
            }
            let script_default = || {
                default().or_else(|| {
                    self.defaults
                        .get(&r.key())
                        .map(|d| Cow::Borrowed(d.as_str()))
                })
            };
            return match &a.val {
                Val::Nic(m) if flag => {
                    let mode = nic_mode(&r.name, m).unwrap_or(NicMode::Static);
                    let on = if f == "dhcp" {
                        mode == NicMode::Dhcp
                    } else {
                        mode == NicMode::Disabled
                    };
                    Lookup::Found(Cow::Borrowed(if on { "true" } else { "false" }))
                }
                Val::Nic(m) => match m.get(f).filter(|v| !v.is_empty()) {
                    Some(v) => Lookup::Found(Cow::Borrowed(v)),
                    None => Lookup::Found(script_default().unwrap_or(Cow::Borrowed(""))),
                },
                _ => script_default().map_or(Lookup::Missing { builtin: false }, Lookup::Found),
            };
        }
        if let Some(f) = &r.field {
            return Lookup::Misuse(format!(
                "{} is a {} attribute; it has no sub-field {f}",
                r.name, a.kind
            ));
        }
        match &a.val {
            Val::Scalar(v) => match (a.source, default()) {
                (Some(Source::ScriptDefault), Some(d)) => Lookup::Found(d),
                _ => Lookup::Found(Cow::Borrowed(v)),
            },
            _ => default().map_or(Lookup::Missing { builtin: false }, Lookup::Found),
        }
    }

    /// Substitutes every reference in `text` (and `@@` by `@`); `script` names the text in
    /// errors. Collects every reference that has no value or misuses its attribute.
    pub fn expand_script(&self, script: Option<&str>, text: &str) -> Result<String, AttrErrors> {
        let mut out = String::with_capacity(text.len());
        let mut errs = Vec::new();
        for p in scan(text) {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::At => out.push('@'),
                Piece::Ref(r) => match self.lookup(&r) {
                    Lookup::Found(v) => out.push_str(&v),
                    Lookup::Missing { builtin } => errs.push(AttrError::Missing {
                        name: r.key(),
                        script: script.map(str::to_string),
                        line: r.line,
                        builtin,
                    }),
                    Lookup::Misuse(reason) => errs.push(AttrError::Usage {
                        name: r.key(),
                        script: script.map(str::to_string),
                        line: r.line,
                        reason,
                    }),
                },
            }
        }
        if errs.is_empty() {
            Ok(out)
        } else {
            Err(AttrErrors(errs))
        }
    }

    /// Replaces every password value (non-empty) by `********` in `text`. Every log line,
    /// error message and the deployment record go through this before they are written.
    pub fn mask(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), MASK);
            }
        }
        out
    }

    fn mask_error(&self, e: AttrError) -> AttrError {
        match e {
            AttrError::Invalid {
                name,
                rule,
                why,
                value,
            } => AttrError::Invalid {
                name,
                rule,
                why,
                value: value.map(|v| self.mask(&v)),
            },
            other => other,
        }
    }

    /// `(name, shown value)` for the deployment record, in name order: scalars as `Name`,
    /// NIC sub-fields as `Name.field` (with the `dhcp` and `ipv4disable` flags), the
    /// built-ins as `_Initiator1.ip` …; passwords show `********` whatever their value.
    /// Attributes with no value are left out.
    pub fn listing(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (name, a) in &self.attrs {
            match &a.val {
                Val::None => {}
                Val::Scalar(_) if a.kind.is_secret() => out.push((name.clone(), MASK.to_string())),
                Val::Scalar(v) => out.push((name.clone(), self.mask(v))),
                Val::Nic(m) => {
                    let mode = nic_mode(name, m).unwrap_or(NicMode::Static);
                    for f in NIC_FIELDS {
                        let v = match f {
                            "dhcp" => (mode == NicMode::Dhcp).to_string(),
                            "ipv4disable" => (mode == NicMode::Disabled).to_string(),
                            _ => match m.get(f).filter(|v| !v.is_empty()) {
                                Some(v) => self.mask(v),
                                None => continue,
                            },
                        };
                        out.push((format!("{name}.{f}"), v));
                    }
                }
            }
        }
        for b in BUILTINS {
            if let Some(i) = self.builtins.get(b) {
                for f in INITIATOR_FIELDS {
                    let v = i.field(f).unwrap_or("");
                    if !v.is_empty() {
                        out.push((format!("{b}.{f}"), v.to_string()));
                    }
                }
            }
        }
        out
    }

    /// Where `name`'s value came from (`None`: no value, or not an attribute of this plan).
    pub fn source(&self, name: &str) -> Option<Source> {
        self.attrs.get(name).and_then(|a| a.source)
    }

    /// A non-secret scalar attribute's value (`None` for passwords, NICs, and names with no
    /// value). For decisions the engine takes itself, never for printing secrets.
    pub fn value(&self, name: &str) -> Option<&str> {
        match self.attrs.get(name) {
            Some(Attr {
                kind,
                val: Val::Scalar(v),
                ..
            }) if !kind.is_secret() => Some(v),
            _ => None,
        }
    }

    /// Whether the deployment makes an empty volume, and how big. With a golden image the
    /// volume is its clone and `VolumeSize` is not used. Without one, `VolumeSize` must be a
    /// whole number of MiB above 0 (its declared `unit`, if any, must be `MiB`).
    pub fn volume_plan(&self, has_golden_image: bool) -> Result<VolumePlan, AttrError> {
        if has_golden_image {
            return Ok(VolumePlan::GoldenImage);
        }
        let invalid = |rule: &str, why: &str, value: Option<&str>| AttrError::Invalid {
            name: VOLUME_SIZE.into(),
            rule: rule.into(),
            why: why.into(),
            value: value.map(str::to_string),
        };
        let a = self.attrs.get(VOLUME_SIZE);
        let v = match a.map(|a| &a.val) {
            Some(Val::Scalar(v)) if !v.trim().is_empty() => v.trim(),
            _ => {
                return Err(invalid(
                    "no golden image",
                    "a deployment with no golden image creates an empty volume and needs its size: give VolumeSize=MiB",
                    None,
                ))
            }
        };
        if let Some(unit) = a.and_then(|a| a.constraints.unit.as_deref()) {
            if !unit.eq_ignore_ascii_case("MiB") {
                return Err(invalid(
                    &format!("unit={unit}"),
                    "VolumeSize is counted in MiB; declare unit MiB",
                    Some(v),
                ));
            }
        }
        let mib = Decimal::parse(v)
            .and_then(Decimal::as_integer)
            .filter(|&n| n > 0);
        let bytes = mib
            .and_then(|n| u64::try_from(n).ok())
            .and_then(|n| n.checked_mul(1 << 20));
        match bytes {
            Some(bytes) => Ok(VolumePlan::Empty { bytes }),
            None => Err(invalid(
                "VolumeSize MiB",
                "must be a whole number of MiB above 0 (and below 16 EiB)",
                Some(v),
            )),
        }
    }
}

/// Substitutes every reference in `text` with its value from `values`, and `@@` with `@`.
/// Text that is no reference is kept byte for byte. See [`Values::expand_script`] to have
/// errors name the script.
pub fn expand(text: &str, values: &Values) -> Result<String, AttrErrors> {
    values.expand_script(None, text)
}

impl fmt::Debug for Values {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Values")
            .field("values", &self.listing())
            .field("secrets", &self.secrets.len())
            .finish_non_exhaustive()
    }
}
