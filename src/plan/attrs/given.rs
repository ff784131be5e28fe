//! The inputs resolution takes besides the plans: the deployment's own values
//! ([`DeploymentValues`], from `NAME=VALUE` strings and JSON objects) and the built-ins'
//! source ([`Builtins`], the deployment's iSCSI boot settings). Their `Debug` never shows a
//! value: any of them may be a password.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

use super::reference::is_name;
use super::{AttrError, AttrErrors};

/// One iSCSI initiator of the deployment's boot settings: what `@_Initiator1.ip@`,
/// `.mac`, `.netmask` and `.gateway` become.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Initiator {
    /// The initiator's IPv4 address.
    pub ip: String,
    /// The boot NIC's MAC address.
    pub mac: String,
    /// The initiator's netmask.
    pub netmask: String,
    /// The initiator's gateway (may be empty).
    pub gateway: String,
}

impl Initiator {
    pub(super) fn field(&self, f: &str) -> Option<&str> {
        match f {
            "ip" => Some(&self.ip),
            "mac" => Some(&self.mac),
            "netmask" => Some(&self.netmask),
            "gateway" => Some(&self.gateway),
            _ => None,
        }
    }
}

/// The undeclared built-ins, filled by the caller from the deployment's iSCSI boot settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Builtins {
    /// `@_Initiator1.…@`.
    pub initiator1: Option<Initiator>,
    /// `@_Initiator2.…@`.
    pub initiator2: Option<Initiator>,
}

impl Builtins {
    pub(super) fn get(&self, name: &str) -> Option<&Initiator> {
        match name {
            "_Initiator1" => self.initiator1.as_ref(),
            "_Initiator2" => self.initiator2.as_ref(),
            _ => None,
        }
    }
}

/// One value the deployment gives: `NAME=VALUE`, or the sub-fields of a NIC.
#[derive(Clone, PartialEq, Eq)]
pub enum Given {
    /// `NAME=VALUE`.
    Scalar(String),
    /// `NIC.field=VALUE`, one entry per field.
    Fields(BTreeMap<String, String>),
}

// Values may be passwords: Debug shows shapes, never text.
impl fmt::Debug for Given {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Given::Scalar(_) => f.write_str("Scalar(..)"),
            Given::Fields(m) => f.debug_set().entries(m.keys()).finish(),
        }
    }
}

/// The deployment's own values (the top layer), from `NAME=VALUE` / `NIC.field=VALUE`
/// strings and JSON objects (`{"Name": "v", "Nic": {"ipaddress": "…"}}`). A later value for
/// the same name (or NIC field) replaces an earlier one.
#[derive(Clone, Default)]
pub struct DeploymentValues {
    given: BTreeMap<String, Given>,
}

impl fmt::Debug for DeploymentValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.given.iter()).finish()
    }
}

const ASSIGNMENT_FORM: &str =
    "expected NAME=VALUE or NIC.field=VALUE, NAME being letters, digits and '_' (starting with a letter or '_')";

impl DeploymentValues {
    /// No values.
    pub fn new() -> DeploymentValues {
        DeploymentValues::default()
    }

    /// Takes one `NAME=VALUE` or `NIC.field=VALUE` (the value may hold `=` and spaces). The
    /// error never repeats the input: it may be a mistyped password.
    pub fn set(&mut self, assignment: &str) -> Result<(), AttrError> {
        let Some((key, value)) = assignment.split_once('=') else {
            return Err(AttrError::Assignment {
                name: None,
                reason: ASSIGNMENT_FORM.into(),
            });
        };
        let (name, field) = match key.split_once('.') {
            Some((n, f)) => (n, Some(f)),
            None => (key, None),
        };
        if !is_name(name) || field.is_some_and(|f| !is_name(f)) {
            return Err(AttrError::Assignment {
                name: None,
                reason: ASSIGNMENT_FORM.into(),
            });
        }
        self.set_value(name, field, value)
    }

    /// Gives `name` (or its NIC sub-field `field`) the value `value`.
    pub fn set_value(
        &mut self,
        name: &str,
        field: Option<&str>,
        value: &str,
    ) -> Result<(), AttrError> {
        if !is_name(name) || field.is_some_and(|f| !is_name(f)) {
            return Err(AttrError::Assignment {
                name: None,
                reason: ASSIGNMENT_FORM.into(),
            });
        }
        match field {
            None => {
                if let Some(Given::Fields(_)) = self.given.get(name) {
                    return Err(AttrError::Assignment {
                        name: Some(name.into()),
                        reason: "given both as NAME=VALUE and as NAME.field=VALUE".into(),
                    });
                }
                self.given.insert(name.into(), Given::Scalar(value.into()));
            }
            Some(f) => match self
                .given
                .entry(name.into())
                .or_insert_with(|| Given::Fields(BTreeMap::new()))
            {
                Given::Fields(m) => {
                    m.insert(f.into(), value.into());
                }
                Given::Scalar(_) => {
                    return Err(AttrError::Assignment {
                        name: Some(format!("{name}.{f}")),
                        reason: "given both as NAME=VALUE and as NAME.field=VALUE".into(),
                    })
                }
            },
        }
        Ok(())
    }

    /// Values from a JSON object: strings, numbers and booleans are values, null is "no
    /// value", an object holds a NIC's sub-fields.
    pub fn from_json(v: &Value) -> Result<DeploymentValues, AttrErrors> {
        let mut d = DeploymentValues::new();
        d.merge_json(v)?;
        Ok(d)
    }

    /// Adds the values of a JSON object (see [`DeploymentValues::from_json`]) over these.
    pub fn merge_json(&mut self, v: &Value) -> Result<(), AttrErrors> {
        let Value::Object(obj) = v else {
            return Err(AttrError::Assignment {
                name: None,
                reason: "attribute values must be a JSON object of NAME: VALUE".into(),
            }
            .into());
        };
        fn scalar(v: &Value) -> Option<Option<String>> {
            match v {
                Value::Null => Some(None),
                Value::String(s) => Some(Some(s.clone())),
                Value::Number(n) => Some(Some(n.to_string())),
                Value::Bool(b) => Some(Some(b.to_string())),
                _ => None,
            }
        }
        let mut errs = Vec::new();
        for (name, v) in obj {
            if let Value::Object(fields) = v {
                for (f, fv) in fields {
                    match scalar(fv) {
                        Some(Some(s)) => {
                            if let Err(e) = self.set_value(name, Some(f), &s) {
                                errs.push(e);
                            }
                        }
                        Some(None) => {}
                        None => errs.push(AttrError::Assignment {
                            name: Some(format!("{name}.{f}")),
                            reason: "a NIC sub-field's value must be a string, number or boolean"
                                .into(),
                        }),
                    }
                }
                continue;
            }
            match scalar(v) {
                Some(Some(s)) => {
                    if let Err(e) = self.set_value(name, None, &s) {
                        errs.push(e);
                    }
                }
                Some(None) => {}
                None => errs.push(AttrError::Assignment {
                    name: Some(name.clone()),
                    reason:
                        "a value must be a string, number, boolean, or an object of NIC sub-fields"
                            .into(),
                }),
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(AttrErrors(errs))
        }
    }

    /// Whether no value is given.
    pub fn is_empty(&self) -> bool {
        self.given.is_empty()
    }

    pub(super) fn get(&self, name: &str) -> Option<&Given> {
        self.given.get(name)
    }

    pub(super) fn names(&self) -> impl Iterator<Item = &String> {
        self.given.keys()
    }
}
