//! The checks of a whole value against a declaration's type and constraints
//! ([`check_scalar`], [`check_nic`], and `Declaration::check` / `check_nic` over them),
//! which return every rule broken as [`AttrError::Invalid`]. Pure functions; the syntax of
//! each kind of value is `syntax.rs`.

#[cfg(test)]
use std::cmp::Ordering;
use std::collections::BTreeMap;

use super::declaration::{Constraints, Declaration, Kind, NicMode};
use super::syntax::*;
use super::{AttrError, NIC_FIELDS};

impl Declaration {
    /// Checks a scalar value (every type but nic) against the type and the constraints, and
    /// returns every rule it breaks. Empty values pass unless a constraint forbids them
    /// (`options` without "", `regex` not matching "", `minlen`, `minimum`/`maximum`): HPE's
    /// own bundles ship many declared-empty attributes meant to be substituted as empty.
    pub fn check(&self, value: &str) -> Vec<AttrError> {
        check_scalar(
            &self.name,
            self.kind,
            self.constraints(),
            self.regex(),
            value,
        )
    }

    /// Checks a NIC attribute's sub-fields (`dhcp` and `ipv4disable` flags included) against
    /// the NIC rules and the constraints; returns every rule broken.
    pub fn check_nic(&self, fields: &BTreeMap<String, String>) -> Vec<AttrError> {
        check_nic(&self.name, self.constraints(), fields)
    }
}

fn invalid(name: &str, kind: Kind, rule: String, why: &str, value: &str) -> AttrError {
    let secret = kind.is_secret();
    AttrError::Invalid {
        name: name.to_string(),
        rule,
        why: if secret {
            format!("{why} (the value is a password and is not shown)")
        } else {
            why.to_string()
        },
        value: (!secret).then(|| value.to_string()),
    }
}

pub(super) fn check_scalar(
    name: &str,
    kind: Kind,
    c: &Constraints,
    regex: Option<&Result<regex::Regex, String>>,
    value: &str,
) -> Vec<AttrError> {
    let mut errs = Vec::new();
    let mut err = |rule: String, why: &str| errs.push(invalid(name, kind, rule, why, value));
    if kind == Kind::Nic {
        err(
            "type nic".into(),
            "a nic attribute takes sub-fields (NAME.mac=…, NAME.ipaddress=…), not one value",
        );
        return errs;
    }
    let applies_options = matches!(kind, Kind::String | Kind::Number | Kind::Option);
    if let (true, Some(opts)) = (applies_options, &c.options) {
        if !opts.iter().any(|o| o == value) {
            err(
                format!("options=[{}]", opts.join(", ")),
                "must be one of the listed options",
            );
        }
    } else if kind == Kind::Option {
        err(
            "options".into(),
            "an option attribute declares no options, so no value is allowed",
        );
    }
    if matches!(kind, Kind::String | Kind::Password) {
        let n = value.chars().count();
        if let Some(max) = c.maxlen {
            if n > max {
                err(
                    format!("maxlen={max}"),
                    &format!("must be at most {max} characters"),
                );
            }
        }
        if let Some(min) = c.minlen {
            if n < min {
                err(
                    format!("minlen={min}"),
                    &format!("must be at least {min} characters"),
                );
            }
        }
        match regex {
            Some(Ok(re)) if !re.is_match(value) => {
                err(
                    format!("regex={}", re.as_str()),
                    "must match the regular expression",
                );
            }
            Some(Err(e)) => err(
                format!("regex={}", c.regex.as_deref().unwrap_or("")),
                &format!("the regular expression cannot be compiled ({e}); fix the declaration"),
            ),
            _ => {}
        }
    }
    if kind == Kind::Number {
        let ranged = c.minimum.is_some() || c.maximum.is_some();
        if value.is_empty() && !ranged {
            return errs;
        }
        let Some(v) = Decimal::parse(value) else {
            let rule = match (&c.minimum, &c.maximum) {
                (Some(lo), Some(hi)) => format!("type number, minimum={lo}, maximum={hi}"),
                (Some(lo), None) => format!("type number, minimum={lo}"),
                (None, Some(hi)) => format!("type number, maximum={hi}"),
                (None, None) => "type number".into(),
            };
            err(
                rule,
                "must be an integer or decimal (digits, an optional '-' and '.')",
            );
            return errs;
        };
        let lo = c.minimum.as_deref().and_then(Decimal::parse);
        if let (Some(l), Some(s)) = (lo, &c.minimum) {
            if v < l {
                err(format!("minimum={s}"), &format!("must be at least {s}"));
            }
        }
        if let (Some(h), Some(s)) = (c.maximum.as_deref().and_then(Decimal::parse), &c.maximum) {
            if v > h {
                err(format!("maximum={s}"), &format!("must be at most {s}"));
            }
        }
        if let (Some(step), Some(s)) = (
            c.increment.as_deref().and_then(Decimal::parse),
            &c.increment,
        ) {
            let base = lo.unwrap_or(Decimal::ZERO);
            if !v.is_step_from(base, step) {
                let from = c.minimum.as_deref().unwrap_or("0");
                err(
                    format!("increment={s}"),
                    &format!("must be {from} plus a multiple of {s}"),
                );
            }
        }
        return errs;
    }
    if value.is_empty() {
        return errs;
    }
    match kind {
        Kind::Ipv4 if !ipv4(value) => err("type ipv4".into(), "must be a dotted-quad IPv4 address"),
        Kind::Hostname => {
            if let Err(why) = hostname(value) {
                err("type hostname".into(), why);
            }
        }
        Kind::Fqdn => {
            if let Err(why) = fqdn(value) {
                err("type fqdn".into(), why);
            }
        }
        _ => {}
    }
    errs
}

/// The NIC mode its flags give; errors for flags that are not booleans.
pub(super) fn nic_mode(
    name: &str,
    fields: &BTreeMap<String, String>,
) -> Result<NicMode, Vec<AttrError>> {
    let mut errs = Vec::new();
    let mut flag = |f: &str| match fields.get(f).map(|v| (v, boolean(v))) {
        None => false,
        Some((v, _)) if v.is_empty() => false,
        Some((_, Some(b))) => b,
        Some((v, None)) => {
            errs.push(AttrError::Invalid {
                name: format!("{name}.{f}"),
                rule: format!("{f} flag"),
                why: "must be true or false".into(),
                value: Some(v.clone()),
            });
            false
        }
    };
    let disabled = flag("ipv4disable");
    let dhcp = flag("dhcp");
    if !errs.is_empty() {
        return Err(errs);
    }
    Ok(if disabled {
        NicMode::Disabled
    } else if dhcp {
        NicMode::Dhcp
    } else {
        NicMode::Static
    })
}

pub(super) fn check_nic(
    name: &str,
    c: &Constraints,
    fields: &BTreeMap<String, String>,
) -> Vec<AttrError> {
    let mut errs = Vec::new();
    let sub = |f: &str| format!("{name}.{f}");
    let get = |f: &str| fields.get(f).map(String::as_str).unwrap_or("");
    for (f, v) in fields {
        if !NIC_FIELDS.contains(&f.as_str()) {
            errs.push(AttrError::Assignment {
                name: Some(sub(f)),
                reason: format!(
                    "{f} is not a NIC sub-field (known: {})",
                    NIC_FIELDS.join(", ")
                ),
            });
            continue;
        }
        let flag = f == "dhcp" || f == "ipv4disable";
        if !flag && !c.has_parameter(f) && !v.is_empty() {
            errs.push(AttrError::Invalid {
                name: sub(f),
                rule: format!(
                    "parameters=[{}]",
                    c.parameters.as_deref().unwrap_or(&[]).join(", ")
                ),
                why: "this NIC does not declare that sub-field".into(),
                value: Some(v.clone()),
            });
        }
    }
    let mode = match nic_mode(name, fields) {
        Ok(m) => m,
        Err(mut e) => {
            errs.append(&mut e);
            return errs;
        }
    };
    if !c.allows(mode) {
        errs.push(AttrError::Invalid {
            name: name.to_string(),
            rule: format!("{}={}", mode.constraint_key(), c.allows(mode)),
            why: format!(
                "this NIC may not be configured {}",
                match mode {
                    NicMode::Static => "with a static address (give dhcp=true)",
                    NicMode::Dhcp => "by DHCP",
                    NicMode::Disabled => "with IPv4 disabled",
                }
            ),
            value: None,
        });
    }
    let mut required = |f: &str, why: &str| {
        if c.lists_parameter(f) && get(f).is_empty() {
            errs.push(AttrError::Invalid {
                name: sub(f),
                rule: format!("parameters include {f}"),
                why: why.into(),
                value: None,
            });
        }
    };
    // HPE's descriptions: "The mac sub-attribute is a mandatory field in NIC type custom
    // attributes."
    required("mac", "the mac sub-field is mandatory for a NIC");
    required("mac1", "the mac1 sub-field is mandatory for a teamed NIC");
    if c.ipv4noteaming != Some(true) {
        required(
            "mac2",
            "a teamed NIC needs both ports (ipv4noteaming is not true)",
        );
    }
    match mode {
        NicMode::Static => {
            required(
                "ipaddress",
                "a static NIC needs an address (or give dhcp=true)",
            );
            required(
                "ipaddress1",
                "a static teamed NIC needs an address (or give dhcp=true)",
            );
            required("netmask", "a static NIC needs a netmask");
        }
        NicMode::Dhcp | NicMode::Disabled => {
            for f in [
                "ipaddress",
                "ipaddress1",
                "ipaddress2",
                "netmask",
                "gateway",
            ] {
                if !get(f).is_empty() {
                    errs.push(AttrError::Invalid {
                        name: sub(f),
                        rule: if mode == NicMode::Dhcp {
                            "dhcp=true".into()
                        } else {
                            "ipv4disable=true".into()
                        },
                        why: "an address is given for a NIC that is not static".into(),
                        value: Some(get(f).to_string()),
                    });
                }
            }
        }
    }
    for (f, v) in fields {
        if let Some(why) = nic_field_error(f, v) {
            errs.push(AttrError::Invalid {
                name: sub(f),
                rule: format!("nic {f}"),
                why: why.into(),
                value: Some(v.clone()),
            });
        }
    }
    errs
}

/// The format rule of one NIC sub-field (empty passes: required fields are checked apart).
pub(super) fn nic_field_error(field: &str, v: &str) -> Option<&'static str> {
    if v.is_empty() {
        return None;
    }
    match field {
        "ipaddress" | "ipaddress1" | "ipaddress2" | "gateway" | "dns1" | "dns2" if !ipv4(v) => {
            Some("must be a dotted-quad IPv4 address")
        }
        "netmask" if !netmask(v) => {
            Some("must be an IPv4 netmask (contiguous ones, as 255.255.255.0)")
        }
        "mac" | "mac1" | "mac2" if !mac(v) => {
            Some("must be a MAC address (six hex pairs, as 00:50:56:AB:CD:EF)")
        }
        "vlanid" if !vlanid(v) => Some("must be a VLAN id from 0 to 4094"),
        "domain" => domain(v).err(),
        "dhcp" | "ipv4disable" if boolean(v).is_none() => Some("must be true or false"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::parse(s).unwrap()
    }

    #[test]
    fn decimals_parse_compare_and_step_exactly() {
        assert!(d("1") < d("1.5"));
        assert_eq!(d("2.50"), d("2.50"));
        assert_eq!(d("2.5").cmp(&d("2.50")), Ordering::Equal);
        assert!(d("-3") < d("0"));
        assert!(
            d("0.3").is_step_from(d("0"), d("0.1")),
            "0.3 is 3 x 0.1 (floats say no)"
        );
        assert!(!d("0.35").is_step_from(d("0"), d("0.1")));
        assert!(d("7").is_step_from(d("1"), d("2")));
        assert!(!d("8").is_step_from(d("1"), d("2")));
        assert_eq!(d("1024").as_integer(), Some(1024));
        assert_eq!(d("1024.0").as_integer(), Some(1024));
        assert_eq!(d("1.5").as_integer(), None);
        for bad in [
            "",
            "-",
            "1.",
            ".5",
            "1e3",
            "+1",
            "1,5",
            " 1",
            "0x10",
            "1234567890123456789",
        ] {
            assert!(Decimal::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn address_rules() {
        assert!(ipv4("192.168.1.10"));
        assert!(!ipv4("192.168.1"));
        assert!(!ipv4("256.1.1.1"));
        assert!(!ipv4("01.2.3.4"));
        assert!(netmask("255.255.252.0"));
        assert!(netmask("0.0.0.0"));
        assert!(!netmask("255.0.255.0"));
        assert!(mac("00:50:56:AB:cd:01"));
        assert!(mac("00-50-56-AB-CD-01"));
        assert!(!mac("00:50:56:AB:CD"));
        assert!(!mac("00:50-56:AB:CD:01"));
        assert!(vlanid("0") && vlanid("4094"));
        assert!(!vlanid("4095") && !vlanid("-1") && !vlanid(""));
    }

    #[test]
    fn name_rules() {
        assert!(hostname("web-01").is_ok());
        assert!(hostname("web_01").is_ok());
        assert!(hostname("web.example.com").is_err());
        assert!(hostname("-web").is_err());
        assert!(hostname("_web").is_err());
        assert!(hostname("we b").is_err());
        assert!(fqdn("web.example.com").is_ok());
        assert!(fqdn("web").is_err());
        assert!(fqdn("web..com").is_err());
        assert!(fqdn(".web.com").is_err());
        assert!(fqdn("web.-x.com").is_err());
        assert!(domain("local").is_ok());
        assert!(hostname(&"a".repeat(255)).is_err());
    }
}
