//! Text key=value negotiation (RFC 7143 §6 and §13): parsing and encoding the NUL-separated
//! pairs of Login and Text PDUs, and the target's side of operational parameter negotiation.
//!
//! Pure: no I/O and no session state beyond the values agreed so far. Login-only keys
//! (names, SessionType, AuthMethod, CHAP_*) belong to `login.rs`; SendTargets to
//! `connection.rs`. The answer rules follow what strict initiators (EDK2) demand: every
//! negotiated key offered is answered in the response to the PDU that offered it, and the
//! target volunteers nothing but MaxRecvDataSegmentLength (and, in login, the portal group tag).

/// Longest key the RFC allows, and longest value we accept.
const MAX_KEY: usize = 63;
const MAX_VALUE: usize = 8192;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TextError {
    #[error("text pair {0:?} has no '='")]
    MissingEquals(String),
    #[error("text data is not UTF-8")]
    NotUtf8,
    #[error("key or value too long")]
    TooLong,
    #[error("key {0:?} appears twice in one PDU")]
    Duplicate(String),
}

/// Parses NUL-terminated `key=value` pairs. Empty entries (trailing NULs) are skipped.
pub fn parse_pairs(data: &[u8]) -> Result<Vec<(String, String)>, TextError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for raw in data.split(|&b| b == 0) {
        if raw.is_empty() {
            continue;
        }
        let s = std::str::from_utf8(raw).map_err(|_| TextError::NotUtf8)?;
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| TextError::MissingEquals(s.chars().take(64).collect()))?;
        if k.is_empty() || k.len() > MAX_KEY || v.len() > MAX_VALUE {
            return Err(TextError::TooLong);
        }
        if out.iter().any(|(ok, _)| ok == k) {
            return Err(TextError::Duplicate(k.to_string()));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// Encodes pairs as `key=value\0...`.
pub fn encode_pairs<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref().as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_ref().as_bytes());
        out.push(0);
    }
    out
}

/// What this target is willing to do; the negotiation never agrees to more.
#[derive(Debug, Clone)]
pub struct TargetLimits {
    /// Largest data segment we accept (declared to the initiator).
    pub max_recv_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub max_outstanding_r2t: u32,
    /// Whether CRC32C digests may be chosen (always true in the server; tests switch it).
    pub digests: bool,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
}

impl Default for TargetLimits {
    fn default() -> Self {
        TargetLimits {
            max_recv_data_segment_length: 262_144,
            max_burst_length: 1 << 20,
            first_burst_length: 262_144,
            max_outstanding_r2t: 8,
            digests: true,
            default_time2wait: 2,
            default_time2retain: 20,
        }
    }
}

/// The operational parameters in force for a session (RFC defaults until negotiated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionParams {
    pub header_digest: bool,
    pub data_digest: bool,
    /// The initiator's MaxRecvDataSegmentLength: the largest data segment we may send.
    pub max_send_data: u32,
    /// Ours: the largest data segment the initiator may send us.
    pub max_recv_data: u32,
    pub initial_r2t: bool,
    pub immediate_data: bool,
    pub first_burst_length: u32,
    pub max_burst_length: u32,
    pub max_outstanding_r2t: u32,
    pub default_time2wait: u32,
    pub default_time2retain: u32,
    pub error_recovery_level: u32,
    pub max_connections: u32,
}

impl Default for SessionParams {
    fn default() -> Self {
        SessionParams {
            header_digest: false,
            data_digest: false,
            max_send_data: 8192,
            max_recv_data: 8192,
            initial_r2t: true,
            immediate_data: true,
            first_burst_length: 65_536,
            max_burst_length: 262_144,
            max_outstanding_r2t: 1,
            default_time2wait: 2,
            default_time2retain: 20,
            error_recovery_level: 0,
            max_connections: 1,
        }
    }
}

/// The target side of one login's (or one Text exchange's) operational negotiation.
#[derive(Debug, Clone)]
pub struct Negotiation {
    limits: TargetLimits,
    params: SessionParams,
    declared_mrdsl: bool,
}

fn yes_no(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

fn yn(b: bool) -> String {
    if b { "Yes" } else { "No" }.to_string()
}

/// A numeric value (decimal or 0x-hex, RFC 7143 §6.1) within `min..=max`.
pub(crate) fn number(v: &str, min: u32, max: u32) -> Option<u32> {
    let n: u64 = if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()?
    } else {
        v.parse().ok()?
    };
    (n >= min as u64 && n <= max as u64).then_some(n as u32)
}

const MAX_24: u32 = (1 << 24) - 1;

impl Negotiation {
    pub fn new(limits: TargetLimits) -> Negotiation {
        Negotiation {
            limits,
            params: SessionParams::default(),
            declared_mrdsl: false,
        }
    }

    /// The parameters agreed so far. FirstBurstLength never exceeds MaxBurstLength, and our
    /// receive limit applies only once it has been declared.
    pub fn params(&self) -> SessionParams {
        let mut p = self.params.clone();
        p.first_burst_length = p.first_burst_length.min(p.max_burst_length);
        if self.declared_mrdsl {
            p.max_recv_data = self.limits.max_recv_data_segment_length;
        }
        p
    }

    /// Keys the target volunteers in the operational stage: only MaxRecvDataSegmentLength,
    /// and only once.
    pub fn declarations(&mut self) -> Vec<(String, String)> {
        if self.declared_mrdsl {
            return Vec::new();
        }
        self.declared_mrdsl = true;
        vec![(
            "MaxRecvDataSegmentLength".to_string(),
            self.limits.max_recv_data_segment_length.to_string(),
        )]
    }

    /// Answers one operational key offered by the initiator. `None` means no answer is sent
    /// (declarative keys); otherwise the value to send back, which may be `Reject`,
    /// `Irrelevant` or `NotUnderstood`.
    pub fn offer(&mut self, key: &str, value: &str) -> Option<String> {
        let p = &mut self.params;
        let l = &self.limits;
        let reject = || Some("Reject".to_string());
        match key {
            "HeaderDigest" | "DataDigest" => {
                let pick = value.split(',').find_map(|v| match v {
                    "None" => Some(false),
                    "CRC32C" if l.digests => Some(true),
                    _ => None,
                });
                let Some(on) = pick else { return reject() };
                if key == "HeaderDigest" {
                    p.header_digest = on;
                } else {
                    p.data_digest = on;
                }
                Some(if on { "CRC32C" } else { "None" }.to_string())
            }
            "MaxRecvDataSegmentLength" => match number(value, 512, MAX_24) {
                Some(n) => {
                    p.max_send_data = n;
                    None
                }
                None => reject(),
            },
            "MaxBurstLength" => match number(value, 512, MAX_24) {
                Some(n) => {
                    p.max_burst_length = n.min(l.max_burst_length);
                    Some(p.max_burst_length.to_string())
                }
                None => reject(),
            },
            "FirstBurstLength" => match number(value, 512, MAX_24) {
                Some(n) => {
                    p.first_burst_length = n.min(l.first_burst_length);
                    Some(p.first_burst_length.to_string())
                }
                None => reject(),
            },
            "MaxOutstandingR2T" => match number(value, 1, 65535) {
                Some(n) => {
                    p.max_outstanding_r2t = n.min(l.max_outstanding_r2t);
                    Some(p.max_outstanding_r2t.to_string())
                }
                None => reject(),
            },
            "MaxConnections" => match number(value, 1, 65535) {
                Some(_) => {
                    p.max_connections = 1;
                    Some("1".into())
                }
                None => reject(),
            },
            "DefaultTime2Wait" => match number(value, 0, 3600) {
                Some(n) => {
                    p.default_time2wait = n.max(l.default_time2wait);
                    Some(p.default_time2wait.to_string())
                }
                None => reject(),
            },
            "DefaultTime2Retain" => match number(value, 0, 3600) {
                Some(n) => {
                    p.default_time2retain = n.min(l.default_time2retain);
                    Some(p.default_time2retain.to_string())
                }
                None => reject(),
            },
            "ErrorRecoveryLevel" => match number(value, 0, 2) {
                Some(_) => {
                    p.error_recovery_level = 0;
                    Some("0".into())
                }
                None => reject(),
            },
            // OR: Yes if either side wants it. We would take unsolicited data.
            "InitialR2T" => match yes_no(value) {
                Some(v) => {
                    p.initial_r2t = v;
                    Some(yn(v))
                }
                None => reject(),
            },
            // AND: Yes only if both sides agree. We take immediate data.
            "ImmediateData" => match yes_no(value) {
                Some(v) => {
                    p.immediate_data = v;
                    Some(yn(v))
                }
                None => reject(),
            },
            // OR with our Yes: always Yes (we send and expect data in order).
            "DataPDUInOrder" | "DataSequenceInOrder" => match yes_no(value) {
                Some(_) => Some("Yes".into()),
                None => reject(),
            },
            // Markers were removed by RFC 7143; AND with our No.
            "OFMarker" | "IFMarker" => match yes_no(value) {
                Some(_) => Some("No".into()),
                None => reject(),
            },
            "OFMarkInt" | "IFMarkInt" => Some("Irrelevant".into()),
            // Keys only a target may send.
            "TargetAlias" | "TargetAddress" | "TargetPortalGroupTag" => reject(),
            _ => Some("NotUnderstood".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(offers: &[(&str, &str)]) -> (Vec<(String, String)>, SessionParams) {
        let mut n = Negotiation::new(TargetLimits::default());
        let mut out = Vec::new();
        for (k, v) in offers {
            if let Some(a) = n.offer(k, v) {
                out.push((k.to_string(), a));
            }
        }
        out.extend(n.declarations());
        (out, n.params())
    }

    fn get<'a>(a: &'a [(String, String)], k: &str) -> Option<&'a str> {
        a.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn parse_and_encode_round_trip_and_skip_padding_nuls() {
        let raw = b"InitiatorName=iqn.x\0SessionType=Normal\0\0\0";
        let p = parse_pairs(raw).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[1], ("SessionType".into(), "Normal".into()));
        assert_eq!(encode_pairs(&p), raw[..raw.len() - 2].to_vec());
    }

    #[test]
    fn malformed_text_is_an_error_not_a_panic() {
        assert!(matches!(
            parse_pairs(b"NoEquals\0"),
            Err(TextError::MissingEquals(_))
        ));
        assert_eq!(
            parse_pairs(b"a=1\0a=2\0"),
            Err(TextError::Duplicate("a".into()))
        );
        assert_eq!(parse_pairs(b"\xff=1\0"), Err(TextError::NotUtf8));
        assert_eq!(parse_pairs(b"=1\0"), Err(TextError::TooLong));
    }

    #[test]
    fn edk2_offer_gets_every_key_answered_and_nothing_extra() {
        let offer = [
            ("HeaderDigest", "None"),
            ("DataDigest", "None"),
            ("ErrorRecoveryLevel", "0"),
            ("InitialR2T", "No"),
            ("ImmediateData", "Yes"),
            ("MaxBurstLength", "262144"),
            ("FirstBurstLength", "262144"),
            ("MaxConnections", "1"),
            ("DefaultTime2Wait", "2"),
            ("DefaultTime2Retain", "20"),
            ("MaxOutstandingR2T", "1"),
            ("MaxRecvDataSegmentLength", "65536"),
        ];
        let (a, p) = answers(&offer);
        for (k, _) in offer
            .iter()
            .filter(|(k, _)| *k != "MaxRecvDataSegmentLength")
        {
            assert!(get(&a, k).is_some(), "{k} not answered");
        }
        let allowed_extra = ["MaxRecvDataSegmentLength"];
        for (k, _) in &a {
            assert!(
                offer.iter().any(|(o, _)| o == k) || allowed_extra.contains(&k.as_str()),
                "volunteered {k}"
            );
        }
        assert_eq!(get(&a, "InitialR2T"), Some("No"));
        assert_eq!(get(&a, "ImmediateData"), Some("Yes"));
        assert_eq!(p.max_send_data, 65536);
        assert_eq!(p.max_outstanding_r2t, 1);
        assert_eq!(p.max_recv_data, 262_144);
    }

    #[test]
    fn ipxe_offer_keeps_initial_r2t_and_no_immediate_data() {
        let (a, p) = answers(&[
            ("InitialR2T", "Yes"),
            ("ImmediateData", "No"),
            ("MaxRecvDataSegmentLength", "8192"),
            ("FirstBurstLength", "65536"),
        ]);
        assert_eq!(get(&a, "InitialR2T"), Some("Yes"));
        assert_eq!(get(&a, "ImmediateData"), Some("No"));
        assert!(p.initial_r2t && !p.immediate_data);
        assert_eq!(p.max_send_data, 8192);
        assert_eq!(p.first_burst_length, 65536);
    }

    #[test]
    fn libiscsi_offer_prefers_first_listed_digest() {
        let (a, p) = answers(&[
            ("HeaderDigest", "None,CRC32C"),
            ("DataDigest", "CRC32C,None"),
            ("MaxBurstLength", "262144"),
            ("FirstBurstLength", "262144"),
            ("MaxRecvDataSegmentLength", "262144"),
        ]);
        assert_eq!(get(&a, "HeaderDigest"), Some("None"));
        assert_eq!(get(&a, "DataDigest"), Some("CRC32C"));
        assert!(!p.header_digest && p.data_digest);
    }

    #[test]
    fn open_iscsi_offer_is_clamped_to_target_limits() {
        let (a, p) = answers(&[
            ("MaxBurstLength", "16776192"),
            ("FirstBurstLength", "262144"),
            ("MaxOutstandingR2T", "1"),
            ("MaxConnections", "8"),
            ("ErrorRecoveryLevel", "2"),
            ("DefaultTime2Retain", "0"),
            ("DefaultTime2Wait", "0"),
            ("IFMarker", "No"),
            ("OFMarker", "No"),
        ]);
        assert_eq!(get(&a, "MaxBurstLength"), Some("1048576"));
        assert_eq!(get(&a, "MaxConnections"), Some("1"));
        assert_eq!(get(&a, "ErrorRecoveryLevel"), Some("0"));
        assert_eq!(get(&a, "DefaultTime2Retain"), Some("0"));
        assert_eq!(get(&a, "DefaultTime2Wait"), Some("2"));
        assert_eq!(p.max_burst_length, 1 << 20);
    }

    #[test]
    fn unknown_keys_are_not_understood_and_bad_values_rejected() {
        let (a, _) = answers(&[
            ("X-com.example.Frobnicate", "1"),
            ("MaxBurstLength", "12"),
            ("InitialR2T", "Maybe"),
            ("HeaderDigest", "MD5"),
        ]);
        assert_eq!(get(&a, "X-com.example.Frobnicate"), Some("NotUnderstood"));
        assert_eq!(get(&a, "MaxBurstLength"), Some("Reject"));
        assert_eq!(get(&a, "InitialR2T"), Some("Reject"));
        assert_eq!(get(&a, "HeaderDigest"), Some("Reject"));
    }

    #[test]
    fn first_burst_never_exceeds_max_burst() {
        let (_, p) = answers(&[("MaxBurstLength", "4096"), ("FirstBurstLength", "65536")]);
        assert_eq!(p.max_burst_length, 4096);
        assert_eq!(p.first_burst_length, 4096);
    }

    #[test]
    fn receive_limit_applies_only_once_declared() {
        let mut n = Negotiation::new(TargetLimits::default());
        assert_eq!(n.params().max_recv_data, 8192);
        assert_eq!(n.declarations().len(), 1);
        assert!(n.declarations().is_empty());
        assert_eq!(n.params().max_recv_data, 262_144);
    }
}
