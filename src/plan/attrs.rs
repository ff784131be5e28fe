//! HPE Image Streamer custom attributes: the `@Name@` references in plan scripts, the
//! `customAttributes` declarations of build plans and deployment plans, resolving a
//! deployment's values through the layers, validating them by type, substituting them into
//! script text, and keeping passwords out of every log, error and record. Pure code: no
//! files, no processes; the interpreter, the CLI and the deployment record call it.
//!
//! # Reference grammar
//!
//! Substitution is textual over the whole script, before it is parsed, so heredoc bodies,
//! `!` and `<!` lines and comments are substituted alike. Scanning left to right:
//!
//! ```text
//! @@                           → a literal "@"
//! @ NAME [ "." FIELD ] [ ":" DEFAULT ] @
//! NAME, FIELD = [A-Za-z_][A-Za-z0-9_]*
//! DEFAULT     = any characters but "@", CR and LF (may be empty, may hold spaces, "/", ":")
//! ```
//!
//! An `@` that starts neither form (`$@`, `"${array[@]}"`, `user@host`, `a@b.com`, `=~ \@`)
//! is literal text, and scanning resumes at the next character, so `a@b c@D@` holds one
//! reference, `@D@`. A default never crosses a line break: `scp f root@host:/tmp` followed
//! later by an `@` on another line stays literal. Every script in HPE's published bundles
//! (the five in tests/fixtures/hpe-artifacts, and the ESXi and multi-distro bundles, where
//! `${array[@]}`, `\@` and `@_Initiator1.ip@` occur) substitutes as the appliance does under
//! this grammar; a literal `@NAME@` is written `@@NAME@@`, as HPE's docs require.
//!
//! # Declarations (what HPE's JSON holds)
//!
//! Elements of `customAttributes` (build plans, deployment plans; plan scripts have `null`):
//! `name`, `value` (a string, `""`, or `null` for NICs), `type`, `constraints` (a
//! JSON-*encoded string* whose numbers are strings), `description`, and in deployment plans
//! `editable`, `visible`, `id`. [`Declaration::to_json`] writes the element back unchanged
//! (the `constraints` string verbatim, unknown keys kept).
//!
//! Catalogue of the five fixture bundles, all handled:
//!
//! | type | constraint keys seen | rule strata enforces |
//! | --- | --- | --- |
//! | `string` | `{}`, `regex` (always `""` there), `helpText`, `options` | in `options`; matches `regex` (searched, so anchor it); `maxlen`/`minlen` if given |
//! | `password` | `maxlen` (`"10"`, `"20"`) | at most `maxlen` characters (also `minlen`, `regex` from HPE's docs); secret |
//! | `number` | `{}`, `minimum`, `maximum`, `increment`, `unit` (`MiB`, `GB`) | an integer or decimal, exact decimal compare and step; in `options` if given |
//! | `option` | `options` | one of `options` |
//! | `ipv4` | `helpText` | dotted quad |
//! | `hostname` | `helpText` | letters, digits, `-`, `_`; no period; not starting with `-`/`_`; ≤ 254 |
//! | `fqdn` | `helpText` | as hostname with at least one period, no empty label |
//! | `nic` | `ipv4static`, `ipv4dhcp`, `ipv4disable`, `ipv4noteaming`, `parameters`, `options: [null]` | see below |
//!
//! `helpText`, `unit` and `visible` are for the UI (except `VolumeSize`'s unit, which must
//! be MiB); `editable: false` refuses a deployment's own value;
//! `options: [null]` (a NIC in the 2017 support bundle) is read as no options. Keys not in
//! the table are kept and listed in [`Constraints::unknown`], not enforced.
//!
//! **Empty values.** HPE ships many declared-empty values (`ExampleString1`,
//! `ExampleIPv4Address`, `ExamplePassword`, all `""`) in plans meant to deploy as they are, so
//! a declared `""` is a value: it is substituted as empty, and format rules (ipv4, fqdn, …)
//! do not apply to it. It fails only where a constraint excludes it: `options` without `""`,
//! a `regex` that `""` does not match, `minlen`, or a number's `minimum`/`maximum`
//! (`VolumeSize` with `{"minimum":"1",…}` must be given).
//!
//! **NIC attributes.** A deployment gives sub-fields: `mac`, `ipaddress`, `netmask`,
//! `gateway`, `dns1`, `dns2`, `domain`, `vlanid`, teamed `mac1`, `mac2`, `ipaddress1`,
//! `ipaddress2`, and the flags `dhcp` and `ipv4disable` (OneView's names; `true`/`false`).
//! The flags give the mode: disabled, else DHCP, else static, and the mode must be allowed
//! (`ipv4static`/`ipv4dhcp` default to allowed, `ipv4disable` to not). Sub-fields must be in
//! `parameters` (when declared); a listed `mac`/`mac1` is mandatory (HPE's descriptions say
//! so), `mac2` too unless `ipv4noteaming` is true; a static NIC needs its listed
//! `ipaddress`/`ipaddress1` and `netmask`; a DHCP or disabled one may not have addresses.
//! `@Nic.dhcp@` and `@Nic.ipv4disable@` substitute `true`/`false`; an unset sub-field
//! substitutes its reference's default (`@ManagementNIC.vlanid:0@`) or `""`, which is what
//! HPE's scripts test for (`[[ "@NIC1.ipaddress@" =~ [0-9]*\.… ]]`).
//!
//! **Built-ins.** `@_Initiator1.ip@`, `.mac`, `.netmask`, `.gateway` and the same for
//! `_Initiator2` come from the deployment's iSCSI boot settings ([`Builtins`]); they cannot
//! be declared or given as values.
//!
//! # Resolution
//!
//! Precedence, lowest first: a script's `@Name:default@` < the build plan's declaration
//! value < the deployment plan's < the deployment's own ([`DeploymentValues`]: `NAME=VALUE`,
//! `NIC.field=VALUE`, or a JSON object `{"Name": "v", "Nic": {"ipaddress": "…"}}`). A JSON
//! `null` value is "no value at this layer"; `""` is a value. When only script defaults
//! apply, each reference substitutes its own default (HPE: "used if the attribute is not
//! found"), and a reference without one takes the first default seen in the plan. The type
//! and constraints are the deployment plan's declaration if it has one, else the build
//! plan's; an attribute only scripts name is a string (HPE's default type), or a NIC if it
//! is used with a sub-field. [`resolve`] collects every problem ([`AttrErrors`]): a value
//! breaking a rule (attribute, rule, value — never a password's), a reference with no value
//! anywhere (attribute, script, line), misuse (`@Nic@`, `@Str.x@`, a sub-field the NIC does
//! not declare), a deployment value nobody declares or uses (a typo), or one the deployment
//! plan marks `editable: false`.
//!
//! # Secrets
//!
//! Password values are secrets, and so are the script defaults a password falls back to in
//! the scripts given to [`resolve`]. [`Values::mask`] replaces each with `********` in any
//! text (every log line, error and the deployment record pass through it),
//! [`Values::listing`] shows passwords as `********`, and no `Debug` here (of [`Values`],
//! [`Declaration`], [`DeploymentValues`], [`AttrError`]) prints one. Masking finds a
//! password only as written: a script that encodes or hashes one produces text it cannot
//! recognise.
//!
//! # Interface
//!
//! ```text
//! references(text) -> Vec<Reference>                  // name, field, default, line, span
//! Declaration::from_json(&Value) -> Result<Declaration, AttrError>;  .to_json() -> Value
//! Declaration::list_from_json(&Value) -> Result<Vec<Declaration>, AttrErrors>
//! DeploymentValues::{new, set("N=V"), set_value(n, field, v), from_json, merge_json}
//! resolve(&Layers { scripts, build_plan, deployment_plan, deployment, builtins })
//!     -> Result<Values, AttrErrors>
//! expand(text, &values) -> Result<String, AttrErrors>; values.expand_script(Some(name), text)
//! values.mask(text) -> String; values.listing() -> Vec<(String, String)>
//! values.volume_plan(has_golden_image) -> Result<VolumePlan, AttrError>  // Empty { bytes }
//! ```

mod declaration;
mod given;
mod reference;
mod resolve;
mod syntax;
mod validate;

#[cfg(test)]
mod bundle_tests;
#[cfg(test)]
mod tests;

use std::fmt;

pub use declaration::{Constraints, Declaration, Kind, NicMode};
pub use given::{Builtins, DeploymentValues, Given, Initiator};
pub use reference::{references, Reference};
pub use resolve::{expand, resolve, Layers, Script, Source, Values, VolumePlan};

/// What a masked secret reads as.
pub const MASK: &str = "********";

/// The attribute a deployment with no golden image takes its empty volume's size from (MiB).
pub const VOLUME_SIZE: &str = "VolumeSize";

/// Every NIC sub-field a script may reference (when the declaration's `parameters` allow).
pub const NIC_FIELDS: [&str; 14] = [
    "mac",
    "ipaddress",
    "netmask",
    "gateway",
    "dns1",
    "dns2",
    "domain",
    "vlanid",
    "dhcp",
    "ipv4disable",
    "mac1",
    "mac2",
    "ipaddress1",
    "ipaddress2",
];

/// The undeclared built-in attributes.
pub const BUILTINS: [&str; 2] = ["_Initiator1", "_Initiator2"];

/// The fields of each built-in.
pub const INITIATOR_FIELDS: [&str; 4] = ["ip", "mac", "netmask", "gateway"];

/// One custom-attribute problem. None of them holds a password's value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttrError {
    /// A `customAttributes` element that cannot be used.
    Declaration {
        /// The attribute, when the element has a name.
        name: Option<String>,
        /// What is wrong and where.
        reason: String,
    },
    /// A deployment value (`NAME=VALUE`, JSON) of the wrong form. The input is never quoted.
    Assignment {
        /// The attribute, when it could be read.
        name: Option<String>,
        /// What is wrong.
        reason: String,
    },
    /// A deployment value for an attribute no declaration or script of the plan has.
    Unknown {
        /// The name given.
        name: String,
    },
    /// A deployment value for an attribute the deployment plan marks `editable: false`.
    NotEditable {
        /// The attribute.
        name: String,
    },
    /// A reference that misuses its attribute (`@Nic@`, `@Str.x@`, an undeclared sub-field).
    Usage {
        /// `Name` or `Name.field` as written.
        name: String,
        /// The script, when known.
        script: Option<String>,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A reference with no value in any layer and no default.
    Missing {
        /// `Name` or `Name.field`.
        name: String,
        /// The script, when known.
        script: Option<String>,
        /// 1-based line of the first use in that script.
        line: usize,
        /// A built-in (`_Initiator1.ip`): the deployment has no iSCSI boot settings.
        builtin: bool,
    },
    /// A value that breaks a rule of its type or constraints.
    Invalid {
        /// `Name` or `Name.field`.
        name: String,
        /// The rule, as the constraint reads (`maxlen=10`, `options=[A, B]`, `type ipv4`).
        rule: String,
        /// What the rule asks for.
        why: String,
        /// The offending value; `None` for passwords (and for absent values).
        value: Option<String>,
    },
}

fn at(script: &Option<String>, line: usize) -> String {
    match script {
        Some(s) => format!("script {s:?}, line {line}"),
        None => format!("line {line}"),
    }
}

impl fmt::Display for AttrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttrError::Declaration { name: Some(n), reason } => write!(f, "custom attribute {n}: {reason}"),
            AttrError::Declaration { name: None, reason } => write!(f, "customAttributes: {reason}"),
            AttrError::Assignment { name: Some(n), reason } => write!(f, "value for attribute {n}: {reason}"),
            AttrError::Assignment { name: None, reason } => write!(f, "attribute value: {reason}"),
            AttrError::Unknown { name } => write!(
                f,
                "attribute {name} is given a value, but no declaration or script of this plan uses it \
                 (names are case-sensitive; check the spelling)"
            ),
            AttrError::NotEditable { name } => write!(
                f,
                "attribute {name} is not editable in the deployment plan (editable: false), \
                 so a deployment cannot give it a value"
            ),
            AttrError::Usage { name, script, line, reason } => {
                write!(f, "@{name}@ ({}): {reason}", at(script, *line))
            }
            AttrError::Missing { name, script, line, builtin: true } => write!(
                f,
                "built-in @{name}@ ({}) needs the deployment's iSCSI boot settings (initiator IP, MAC, \
                 netmask), and this deployment has none",
                at(script, *line)
            ),
            AttrError::Missing { name, script, line, builtin: false } => write!(
                f,
                "attribute {name} ({}) has no value: give one (NAME=VALUE), declare it in the build plan, \
                 or write a default in the script (@{name}:default@)",
                at(script, *line)
            ),
            AttrError::Invalid { name, rule, why, value: Some(v) } => {
                write!(f, "attribute {name}: {v:?} breaks rule {rule}: {why}")
            }
            AttrError::Invalid { name, rule, why, value: None } => {
                write!(f, "attribute {name} breaks rule {rule}: {why}")
            }
        }
    }
}

impl std::error::Error for AttrError {}

/// Every problem found at once (resolution and substitution report all, not the first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttrErrors(pub Vec<AttrError>);

impl fmt::Display for AttrErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [one] => write!(f, "{one}"),
            many => {
                write!(f, "{} custom-attribute problems:", many.len())?;
                for e in many {
                    write!(f, "\n  - {e}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for AttrErrors {}

impl From<AttrError> for AttrErrors {
    fn from(e: AttrError) -> AttrErrors {
        AttrErrors(vec![e])
    }
}
