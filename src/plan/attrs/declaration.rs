//! One element of HPE's `customAttributes` arrays (build plans, deployment plans): reading it
//! from the JSON, writing it back in the same shape, and its type's constraints parsed out of
//! the JSON-encoded `constraints` string. Checking a value against them is here too
//! ([`Declaration::check`]); which declaration wins is the resolver's business.

use std::fmt;

use serde_json::{Map, Value};

use super::reference::is_name;
use super::syntax::{self, Decimal};
use super::{AttrError, BUILTINS, NIC_FIELDS};

/// The attribute types HPE's Image Streamer defines (`type` in the JSON).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `string`: any text; `regex`, `options`, `maxlen`, `minlen` constrain it.
    String,
    /// `password`: like string, but never shown: masked in logs, errors and the record.
    Password,
    /// `number`: an integer or decimal; `minimum`, `maximum`, `increment`, `options`, `unit`.
    Number,
    /// `option`: one of `options`.
    Option,
    /// `ipv4`: a dotted-quad address.
    Ipv4,
    /// `hostname`: one label, no period.
    Hostname,
    /// `fqdn`: dotted labels, at least one period.
    Fqdn,
    /// `nic`: sub-fields (`@Name.mac@`, …) filled per deployment.
    Nic,
}

impl Kind {
    /// The type names in HPE's JSON, in the order the docs list them.
    pub const ALL: [Kind; 8] = [
        Kind::String,
        Kind::Password,
        Kind::Number,
        Kind::Option,
        Kind::Ipv4,
        Kind::Hostname,
        Kind::Fqdn,
        Kind::Nic,
    ];

    /// The `type` string HPE writes.
    pub fn as_hpe(self) -> &'static str {
        match self {
            Kind::String => "string",
            Kind::Password => "password",
            Kind::Number => "number",
            Kind::Option => "option",
            Kind::Ipv4 => "ipv4",
            Kind::Hostname => "hostname",
            Kind::Fqdn => "fqdn",
            Kind::Nic => "nic",
        }
    }

    /// Reads a `type` string (exact, lower case, as HPE writes it).
    pub fn from_hpe(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_hpe() == s)
    }

    /// Whether values of this type are secrets (never logged, shown or recorded).
    pub fn is_secret(self) -> bool {
        self == Kind::Password
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_hpe())
    }
}

/// The constraint keys, parsed. Every key found in HPE's bundles has a field; anything else
/// is kept in the JSON (round trip) and named in [`Constraints::unknown`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Constraints {
    /// `regex`: the value must contain a match (HPE's docs: anchor with `^…$` to match the
    /// whole value). Empty means no check.
    pub regex: Option<String>,
    /// `options`: the allowed values (JSON nulls, as in `"options":[null]`, dropped).
    pub options: Option<Vec<String>>,
    /// `helpText`: for the UI only.
    pub help_text: Option<String>,
    /// `maxlen` (passwords, strings): at most this many characters.
    pub maxlen: Option<usize>,
    /// `minlen` (passwords, strings): at least this many characters.
    pub minlen: Option<usize>,
    /// `minimum` (numbers), as written.
    pub minimum: Option<String>,
    /// `maximum` (numbers), as written.
    pub maximum: Option<String>,
    /// `increment` (numbers): the value minus `minimum` (or 0) is a multiple of it.
    pub increment: Option<String>,
    /// `unit` (numbers): `MiB`, `GB`, … shown by the UI; `VolumeSize` must be `MiB`.
    pub unit: Option<String>,
    /// `ipv4static` (nic): a static address may be given.
    pub ipv4static: Option<bool>,
    /// `ipv4dhcp` (nic): DHCP may be chosen.
    pub ipv4dhcp: Option<bool>,
    /// `ipv4disable` (nic): IPv4 may be disabled.
    pub ipv4disable: Option<bool>,
    /// `ipv4noteaming` (nic, teamed): a teamed NIC may be given with one port only.
    pub ipv4noteaming: Option<bool>,
    /// `parameters` (nic): the sub-fields scripts may use and deployments may give.
    pub parameters: Option<Vec<String>>,
    /// Keys strata does not know; kept in the JSON, not enforced.
    pub unknown: Vec<String>,
}

fn bad(name: &str, reason: String) -> AttrError {
    AttrError::Declaration {
        name: Some(name.to_string()),
        reason,
    }
}

/// A constraint value that HPE writes as a string holding a number (`"maxlen":"10"`), or as
/// a JSON number; "" means not set.
fn numberish(v: &Value) -> Option<Option<String>> {
    match v {
        Value::String(s) if s.trim().is_empty() => Some(None),
        Value::String(s) => Some(Some(s.trim().to_string())),
        Value::Number(n) => Some(Some(n.to_string())),
        Value::Null => Some(None),
        _ => None,
    }
}

fn boolish(v: &Value) -> Option<Option<bool>> {
    match v {
        Value::Bool(b) => Some(Some(*b)),
        Value::String(s) => syntax::boolean(s).map(Some),
        Value::Null => Some(None),
        _ => None,
    }
}

impl Constraints {
    fn from_object(name: &str, obj: &Map<String, Value>) -> Result<Constraints, AttrError> {
        let mut c = Constraints::default();
        for (key, v) in obj {
            let wrong = |what: &str| bad(name, format!("constraint {key} must be {what}"));
            match key.as_str() {
                "regex" => match v {
                    Value::String(s) if s.is_empty() => {}
                    Value::String(s) => c.regex = Some(s.clone()),
                    Value::Null => {}
                    _ => return Err(wrong("a string")),
                },
                "helpText" => match v {
                    Value::String(s) => c.help_text = Some(s.clone()),
                    Value::Null => {}
                    _ => return Err(wrong("a string")),
                },
                "unit" => match v {
                    Value::String(s) if s.is_empty() => {}
                    Value::String(s) => c.unit = Some(s.clone()),
                    Value::Null => {}
                    _ => return Err(wrong("a string")),
                },
                "options" => match v {
                    Value::Array(items) => {
                        let mut opts = Vec::new();
                        for it in items {
                            match it {
                                Value::Null => {}
                                Value::String(s) => opts.push(s.clone()),
                                Value::Number(n) => opts.push(n.to_string()),
                                Value::Bool(b) => opts.push(b.to_string()),
                                _ => return Err(wrong("a list of strings")),
                            }
                        }
                        c.options = Some(opts);
                    }
                    Value::Null => {}
                    _ => return Err(wrong("a list of strings")),
                },
                "maxlen" | "minlen" => {
                    let n = match numberish(v) {
                        Some(None) => None,
                        Some(Some(s)) => match s.parse::<usize>() {
                            Ok(n) => Some(n),
                            Err(_) => return Err(wrong("a whole number (written \"10\" or 10)")),
                        },
                        None => return Err(wrong("a whole number (written \"10\" or 10)")),
                    };
                    if key == "maxlen" {
                        c.maxlen = n;
                    } else {
                        c.minlen = n;
                    }
                }
                "minimum" | "maximum" | "increment" => {
                    let s = match numberish(v) {
                        Some(s) => s,
                        None => return Err(wrong("a number (written \"1\" or 1)")),
                    };
                    if let Some(s) = &s {
                        match Decimal::parse(s) {
                            Some(d) if key == "increment" && d <= Decimal::ZERO => {
                                return Err(wrong("a number above 0"))
                            }
                            Some(_) => {}
                            None => {
                                return Err(wrong("an integer or decimal of at most 18 digits"))
                            }
                        }
                    }
                    match key.as_str() {
                        "minimum" => c.minimum = s,
                        "maximum" => c.maximum = s,
                        _ => c.increment = s,
                    }
                }
                "ipv4static" | "ipv4dhcp" | "ipv4disable" | "ipv4noteaming" => {
                    let b = boolish(v).ok_or_else(|| wrong("true or false"))?;
                    match key.as_str() {
                        "ipv4static" => c.ipv4static = b,
                        "ipv4dhcp" => c.ipv4dhcp = b,
                        "ipv4disable" => c.ipv4disable = b,
                        _ => c.ipv4noteaming = b,
                    }
                }
                "parameters" => match v {
                    Value::Array(items) => {
                        let mut ps = Vec::new();
                        for it in items {
                            let Value::String(p) = it else {
                                return Err(wrong("a list of NIC sub-field names"));
                            };
                            if !NIC_FIELDS.contains(&p.as_str()) {
                                return Err(bad(
                                    name,
                                    format!("constraint parameters names {p:?}, which is not a NIC sub-field (known: {})", NIC_FIELDS.join(", ")),
                                ));
                            }
                            ps.push(p.clone());
                        }
                        c.parameters = Some(ps);
                    }
                    Value::Null => {}
                    _ => return Err(wrong("a list of NIC sub-field names")),
                },
                _ => c.unknown.push(key.clone()),
            }
        }
        if let (Some(lo), Some(hi)) = (&c.minimum, &c.maximum) {
            if let (Some(l), Some(h)) = (Decimal::parse(lo), Decimal::parse(hi)) {
                if l > h {
                    return Err(bad(
                        name,
                        format!("constraint minimum {lo} is above maximum {hi}"),
                    ));
                }
            }
        }
        Ok(c)
    }

    /// Whether a NIC may be given in this mode (absent keys: static and DHCP allowed,
    /// disabling not).
    pub(super) fn allows(&self, mode: NicMode) -> bool {
        match mode {
            NicMode::Static => self.ipv4static != Some(false),
            NicMode::Dhcp => self.ipv4dhcp != Some(false),
            NicMode::Disabled => self.ipv4disable == Some(true),
        }
    }

    /// Whether `parameters` lists `field` (a NIC with no `parameters` takes every field).
    pub(super) fn has_parameter(&self, field: &str) -> bool {
        self.parameters
            .as_ref()
            .is_none_or(|p| p.iter().any(|q| q == field))
    }

    pub(super) fn lists_parameter(&self, field: &str) -> bool {
        self.parameters
            .as_ref()
            .is_some_and(|p| p.iter().any(|q| q == field))
    }
}

/// How a NIC attribute's IPv4 is configured, from its `dhcp` and `ipv4disable` flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NicMode {
    /// An address, netmask, gateway and DNS given per deployment (`ipv4static`).
    Static,
    /// `dhcp=true` (`ipv4dhcp`).
    Dhcp,
    /// `ipv4disable=true` (`ipv4disable`).
    Disabled,
}

impl NicMode {
    pub(super) fn constraint_key(self) -> &'static str {
        match self {
            NicMode::Static => "ipv4static",
            NicMode::Dhcp => "ipv4dhcp",
            NicMode::Disabled => "ipv4disable",
        }
    }
}

/// One custom attribute as HPE declares it in a build plan's or deployment plan's
/// `customAttributes`.
#[derive(Clone)]
pub struct Declaration {
    /// `name`: what scripts reference as `@name@`.
    pub name: String,
    /// `value`: `None` for JSON null (NIC attributes); `Some("")` is a declared empty value.
    pub value: Option<String>,
    /// `type` (absent in the JSON means string, HPE's default).
    pub kind: Kind,
    /// `description`.
    pub description: Option<String>,
    /// `editable` (deployment plans): whether a deployment may give its own value.
    pub editable: Option<bool>,
    /// `visible` (deployment plans): shown in the UI.
    pub visible: Option<bool>,
    /// `id` (deployment plans).
    pub id: Option<String>,
    constraints: Constraints,
    /// `constraints` exactly as the JSON had it (a string, normally), for the round trip.
    constraints_raw: Option<Value>,
    type_written: bool,
    /// Keys of the element strata does not use, kept for the round trip.
    extra: Map<String, Value>,
    regex: Option<Result<regex::Regex, String>>,
}

impl fmt::Debug for Declaration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = match (&self.value, self.kind.is_secret()) {
            (Some(_), true) => Some("********"),
            (v, _) => v.as_deref(),
        };
        f.debug_struct("Declaration")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("value", &value)
            .field("constraints", &self.constraints)
            .field("editable", &self.editable)
            .finish_non_exhaustive()
    }
}

fn opt_string(
    name: &str,
    obj: &Map<String, Value>,
    key: &str,
) -> Result<Option<String>, AttrError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad(name, format!("{key} must be a string"))),
    }
}

fn opt_bool(name: &str, obj: &Map<String, Value>, key: &str) -> Result<Option<bool>, AttrError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => boolish(v).ok_or_else(|| bad(name, format!("{key} must be true or false"))),
    }
}

impl Declaration {
    /// A declaration built in code (not read from JSON): constraints given as parsed keys.
    pub fn new(
        name: &str,
        kind: Kind,
        value: Option<&str>,
        constraints: Value,
    ) -> Result<Declaration, AttrError> {
        let text = constraints.to_string();
        let mut obj = Map::new();
        obj.insert("name".into(), Value::String(name.into()));
        obj.insert("type".into(), Value::String(kind.as_hpe().into()));
        obj.insert(
            "value".into(),
            value.map_or(Value::Null, |v| Value::String(v.into())),
        );
        obj.insert("constraints".into(), Value::String(text));
        obj.insert("description".into(), Value::String(String::new()));
        Declaration::from_json(&Value::Object(obj))
    }

    /// Reads one `customAttributes` element. Fails, naming the attribute and the key, on a
    /// missing or unusable name, an unknown type, or a constraint of the wrong shape.
    pub fn from_json(v: &Value) -> Result<Declaration, AttrError> {
        let Value::Object(obj) = v else {
            return Err(AttrError::Declaration {
                name: None,
                reason: "a customAttributes element must be a JSON object".into(),
            });
        };
        let name = match obj.get("name") {
            Some(Value::String(s)) => s.clone(),
            _ => {
                return Err(AttrError::Declaration {
                    name: None,
                    reason: "a customAttributes element has no string \"name\"".into(),
                })
            }
        };
        if !is_name(&name) {
            return Err(bad(
                &name,
                "the name cannot be referenced as @name@: use letters, digits and '_', starting with a letter or '_'".into(),
            ));
        }
        if BUILTINS.contains(&name.as_str()) {
            return Err(bad(&name, "this name is a built-in (the deployment's iSCSI boot settings) and cannot be declared".into()));
        }
        let (kind, type_written) = match obj.get("type") {
            None | Some(Value::Null) => (Kind::String, false),
            Some(Value::String(t)) => match Kind::from_hpe(t) {
                Some(k) => (k, true),
                None => {
                    let known: Vec<&str> = Kind::ALL.iter().map(|k| k.as_hpe()).collect();
                    return Err(bad(
                        &name,
                        format!("type {t:?} is not one of {}", known.join(", ")),
                    ));
                }
            },
            Some(_) => return Err(bad(&name, "type must be a string".into())),
        };
        let value = match obj.get("value") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(Value::Bool(b)) => Some(b.to_string()),
            Some(_) => return Err(bad(&name, "value must be a string or null".into())),
        };
        let constraints_raw = obj.get("constraints").cloned();
        let constraints = match &constraints_raw {
            None | Some(Value::Null) => Constraints::default(),
            Some(Value::String(s)) if s.trim().is_empty() => Constraints::default(),
            Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
                Ok(Value::Object(o)) => Constraints::from_object(&name, &o)?,
                Ok(_) => return Err(bad(&name, "constraints must encode a JSON object".into())),
                Err(e) => return Err(bad(&name, format!("constraints is not valid JSON: {e}"))),
            },
            Some(Value::Object(o)) => Constraints::from_object(&name, o)?,
            Some(_) => {
                return Err(bad(
                    &name,
                    "constraints must be a JSON-encoded object (a string)".into(),
                ))
            }
        };
        let regex = constraints
            .regex
            .as_ref()
            .map(|r| regex::Regex::new(r).map_err(|e| e.to_string()));
        let mut extra = obj.clone();
        for k in [
            "name",
            "type",
            "value",
            "constraints",
            "description",
            "editable",
            "visible",
            "id",
        ] {
            extra.remove(k);
        }
        Ok(Declaration {
            description: opt_string(&name, obj, "description")?,
            editable: opt_bool(&name, obj, "editable")?,
            visible: opt_bool(&name, obj, "visible")?,
            id: opt_string(&name, obj, "id")?,
            name,
            value,
            kind,
            constraints,
            constraints_raw,
            type_written,
            extra,
            regex,
        })
    }

    /// Reads a whole `customAttributes` array (JSON null reads as none), collecting every
    /// element's error.
    pub fn list_from_json(v: &Value) -> Result<Vec<Declaration>, super::AttrErrors> {
        let items = match v {
            Value::Null => return Ok(Vec::new()),
            Value::Array(a) => a,
            _ => {
                return Err(AttrError::Declaration {
                    name: None,
                    reason: "customAttributes must be an array".into(),
                }
                .into())
            }
        };
        let mut out = Vec::new();
        let mut errs = Vec::new();
        for it in items {
            match Declaration::from_json(it) {
                Ok(d) => out.push(d),
                Err(e) => errs.push(e),
            }
        }
        if errs.is_empty() {
            Ok(out)
        } else {
            Err(super::AttrErrors(errs))
        }
    }

    /// The element in HPE's shape: the keys it was read with, `constraints` as the same
    /// JSON-encoded string.
    pub fn to_json(&self) -> Value {
        let mut obj = self.extra.clone();
        obj.insert("name".into(), Value::String(self.name.clone()));
        // A kind changed in code is written even if the JSON read had no `type`.
        if self.type_written || self.kind != Kind::String {
            obj.insert("type".into(), Value::String(self.kind.as_hpe().into()));
        }
        obj.insert(
            "value".into(),
            self.value.clone().map_or(Value::Null, Value::String),
        );
        if let Some(c) = &self.constraints_raw {
            obj.insert("constraints".into(), c.clone());
        }
        if let Some(d) = &self.description {
            obj.insert("description".into(), Value::String(d.clone()));
        }
        if let Some(e) = self.editable {
            obj.insert("editable".into(), Value::Bool(e));
        }
        if let Some(v) = self.visible {
            obj.insert("visible".into(), Value::Bool(v));
        }
        if let Some(id) = &self.id {
            obj.insert("id".into(), Value::String(id.clone()));
        }
        Value::Object(obj)
    }

    /// The parsed constraints.
    pub fn constraints(&self) -> &Constraints {
        &self.constraints
    }

    /// The compiled `regex` constraint (or why it does not compile).
    pub(super) fn regex(&self) -> Option<&Result<regex::Regex, String>> {
        self.regex.as_ref()
    }
}
