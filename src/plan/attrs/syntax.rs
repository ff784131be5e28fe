//! The syntax of attribute values, as HPE's Image Streamer documents them: IPv4 addresses,
//! netmasks, hostnames, FQDNs, MAC addresses, VLAN ids, booleans, and exact decimal numbers
//! for the number type's `minimum`, `maximum` and `increment` (the JSON gives them as
//! strings, and floating point would get `increment` wrong for decimals). Pure functions,
//! below both the declarations (which parse constraints with them) and the checks.

use std::cmp::Ordering;
use std::net::Ipv4Addr;

/// HPE's documented length limit for hostname and FQDN values.
pub(super) const MAX_NAME_LEN: usize = 254;

/// An exact decimal: `units / 10^scale`. At most 18 significant digits, so aligning two of
/// them never overflows an i128.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Decimal {
    units: i128,
    scale: u32,
}

impl Decimal {
    /// Zero.
    pub(super) const ZERO: Decimal = Decimal { units: 0, scale: 0 };

    /// Parses `-?[0-9]+(\.[0-9]+)?` (what HPE calls "an integer or decimal").
    pub(super) fn parse(s: &str) -> Option<Decimal> {
        let (neg, body) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (int, frac) = match body.split_once('.') {
            Some((i, f)) => (i, f),
            None => (body, ""),
        };
        if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if body.contains('.') && (frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit())) {
            return None;
        }
        // At most 18 significant digits (leading zeros of the integer part do not count).
        if int.trim_start_matches('0').len() + frac.len() > 18 {
            return None;
        }
        let mut units: i128 = 0;
        for b in int.bytes().chain(frac.bytes()) {
            units = units * 10 + i128::from(b - b'0');
        }
        if neg {
            units = -units;
        }
        Some(Decimal {
            units,
            scale: frac.len() as u32,
        })
    }

    fn aligned(self, other: Decimal) -> (i128, i128) {
        let scale = self.scale.max(other.scale);
        (
            self.units * 10i128.pow(scale - self.scale),
            other.units * 10i128.pow(scale - other.scale),
        )
    }

    /// Whether `self - base` is a whole multiple of `step` (a zero step allows anything).
    pub(super) fn is_step_from(self, base: Decimal, step: Decimal) -> bool {
        let (v, b) = self.aligned(base);
        let scale = self.scale.max(base.scale);
        let diff = Decimal {
            units: v - b,
            scale,
        };
        let (d, s) = diff.aligned(step);
        s == 0 || d % s == 0
    }

    /// The value as a whole number, if it is one.
    pub(super) fn as_integer(self) -> Option<i128> {
        let p = 10i128.pow(self.scale);
        (self.units % p == 0).then(|| self.units / p)
    }
}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Decimal {
    fn cmp(&self, other: &Self) -> Ordering {
        let (a, b) = self.aligned(*other);
        a.cmp(&b)
    }
}

/// A dotted-quad IPv4 address (std's parser: four decimal octets, no leading zeros).
pub(super) fn ipv4(s: &str) -> bool {
    s.parse::<Ipv4Addr>().is_ok()
}

/// An IPv4 netmask: a valid address whose one bits are contiguous from the top.
pub(super) fn netmask(s: &str) -> bool {
    match s.parse::<Ipv4Addr>() {
        Ok(a) => {
            let m = u32::from(a);
            m.leading_ones() + m.trailing_zeros() == 32
        }
        Err(_) => false,
    }
}

fn label_ok(l: &str) -> bool {
    let b = l.as_bytes();
    !b.is_empty()
        && b[0] != b'-'
        && b[0] != b'_'
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

/// HPE's hostname rule: letters, digits, `-` and `_`, no period, not starting with `-` or
/// `_`, at most 254 characters.
pub(super) fn hostname(s: &str) -> Result<(), &'static str> {
    if s.len() > MAX_NAME_LEN {
        return Err("at most 254 characters");
    }
    if s.contains('.') {
        return Err("a hostname has no period (use an fqdn attribute for a dotted name)");
    }
    if !label_ok(s) {
        return Err("letters, digits, '-' and '_' only, not starting with '-' or '_'");
    }
    Ok(())
}

/// HPE's FQDN rule: as a hostname, but with at least one period; strata also refuses empty
/// labels (`a..b`, a leading or trailing dot) and labels starting with `-` or `_`.
pub(super) fn fqdn(s: &str) -> Result<(), &'static str> {
    if s.len() > MAX_NAME_LEN {
        return Err("at most 254 characters");
    }
    if !s.contains('.') {
        return Err("an FQDN has at least one period");
    }
    domain(s)
}

/// A DNS domain (the NIC `domain` sub-field): one or more labels as in [`fqdn`].
pub(super) fn domain(s: &str) -> Result<(), &'static str> {
    if s.len() > MAX_NAME_LEN {
        return Err("at most 254 characters");
    }
    if s.split('.').all(label_ok) {
        Ok(())
    } else {
        Err("dot-separated labels of letters, digits, '-' and '_', none empty or starting with '-' or '_'")
    }
}

/// A MAC address: six pairs of hex digits separated by `:` (OneView's form) or `-`.
pub(super) fn mac(s: &str) -> bool {
    let sep = if s.contains('-') { '-' } else { ':' };
    let parts: Vec<&str> = s.split(sep).collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A VLAN id: 0 (untagged) to 4094.
pub(super) fn vlanid(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 4
        && s.bytes().all(|b| b.is_ascii_digit())
        && s.parse::<u32>().is_ok_and(|v| v <= 4094)
}

/// `true` or `false`, any case (OneView writes NIC flags as JSON booleans or strings).
pub(super) fn boolean(s: &str) -> Option<bool> {
    if s.eq_ignore_ascii_case("true") {
        Some(true)
    } else if s.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}
