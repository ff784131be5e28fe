//! The login phase (RFC 7143 §6.3, §11.12-13): security stage with CHAP (SHA-256 or MD5,
//! one-way and mutual), operational negotiation, the initiator ACL, and the final response.
//!
//! A `Login` consumes Login Request PDUs one at a time and produces the response for each;
//! it does no I/O. The connection sends the responses and, when `Step::done` is set, asks
//! the session table for a TSIH and patches it into the final response. Failures carry the
//! status class/detail the initiator sees; the connection closes after sending them.

use md5::{Digest, Md5};
use sha2::Sha256;

use super::exports::{Export, ExportTable};
use super::pdu::{op, Bhs, Pdu};
use super::text::{self, Negotiation, SessionParams, TargetLimits};

/// Status class and detail of Login Responses.
pub mod status {
    pub const SUCCESS: (u8, u8) = (0, 0);
    pub const INITIATOR_ERROR: (u8, u8) = (2, 0);
    pub const AUTH_FAILURE: (u8, u8) = (2, 1);
    pub const AUTHORIZATION_FAILURE: (u8, u8) = (2, 2);
    pub const NOT_FOUND: (u8, u8) = (2, 3);
    pub const UNSUPPORTED_VERSION: (u8, u8) = (2, 5);
    pub const TOO_MANY_CONNECTIONS: (u8, u8) = (2, 6);
    pub const MISSING_PARAMETER: (u8, u8) = (2, 7);
    pub const SESSION_TYPE_UNSUPPORTED: (u8, u8) = (2, 9);
    pub const SESSION_DOES_NOT_EXIST: (u8, u8) = (2, 10);
    pub const INVALID_DURING_LOGIN: (u8, u8) = (2, 11);
    pub const TARGET_ERROR: (u8, u8) = (3, 0);
    pub const OUT_OF_RESOURCES: (u8, u8) = (3, 2);
}

const SECURITY: u8 = 0;

const FULL_FEATURE: u8 = 3;

/// Longest login text we accumulate across Continue PDUs.
const MAX_LOGIN_TEXT: usize = 64 * 1024;
/// Longest CHAP challenge we answer (RFC 7143 §12.1.3 bounds it by the login text; EDK2
/// sends the digest size, libiscsi 16 bytes).
const MAX_CHAP_CHALLENGE: usize = 1024;

/// CHAP hash algorithms (CHAP_A values from the IANA PPP authentication algorithms
/// registry). EDK2's IScsiDxe offers `CHAP_A=7,5`, or only `7` when built without MD5, so
/// SHA-256 is needed to boot such firmware; libiscsi offers only 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChapAlgorithm {
    Md5,
    Sha256,
}

impl ChapAlgorithm {
    /// The CHAP_A number.
    pub fn code(self) -> u8 {
        match self {
            ChapAlgorithm::Md5 => 5,
            ChapAlgorithm::Sha256 => 7,
        }
    }

    fn from_code(v: &str) -> Option<ChapAlgorithm> {
        match text::number(v.trim(), 0, 255)? {
            5 => Some(ChapAlgorithm::Md5),
            7 => Some(ChapAlgorithm::Sha256),
            _ => None,
        }
    }

    /// The first algorithm of a CHAP_A list we support: the list is in the initiator's
    /// order of preference (RFC 7143 §12.1.3).
    pub fn choose(list: &str) -> Option<ChapAlgorithm> {
        list.split(',').find_map(ChapAlgorithm::from_code)
    }

    /// Digest length, which is also the length of the challenges we send.
    pub fn digest_len(self) -> usize {
        match self {
            ChapAlgorithm::Md5 => 16,
            ChapAlgorithm::Sha256 => 32,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionType {
    Normal,
    Discovery,
}

/// Why a login failed: the status sent, and a reason for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("login refused ({class}/{detail}): {reason}")]
pub struct LoginFailure {
    pub class: u8,
    pub detail: u8,
    pub reason: String,
}

fn fail(s: (u8, u8), reason: impl Into<String>) -> LoginFailure {
    LoginFailure {
        class: s.0,
        detail: s.1,
        reason: reason.into(),
    }
}

/// One response to send, and whether it ends the login successfully.
#[derive(Debug)]
pub struct Step {
    pub bhs: Bhs,
    pub data: Vec<u8>,
    pub done: bool,
}

/// What a successful login established.
#[derive(Debug, Clone)]
pub struct Established {
    pub initiator: String,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub cid: u16,
    pub session_type: SessionType,
    pub export: Option<Export>,
    pub params: SessionParams,
    /// CmdSN of the login: the first ExpCmdSN.
    pub cmd_sn: u32,
    /// StatSN the first full-feature response carries.
    pub stat_sn: u32,
    /// The final login response, sent once the session is admitted.
    pub final_response: Option<(Bhs, Vec<u8>)>,
}

#[derive(Debug, PartialEq, Eq)]
enum Chap {
    NotStarted,
    /// AuthMethod=CHAP agreed; waiting for CHAP_A.
    Chosen,
    /// Challenge sent; waiting for CHAP_N/CHAP_R.
    Challenged {
        alg: ChapAlgorithm,
        id: u8,
        challenge: Vec<u8>,
    },
    Done,
}

pub struct Login {
    limits: TargetLimits,
    negotiation: Negotiation,
    first: Option<FirstRequest>,
    initiator: Option<String>,
    session_type: SessionType,
    export: Option<Export>,
    auth_done: bool,
    chap: Chap,
    stage: u8,
    stat_sn: u32,
    /// Text of a request split over Continue PDUs.
    pending_text: Vec<u8>,
    portal_group_tag_sent: bool,
}

#[derive(Debug, Clone, Copy)]
struct FirstRequest {
    isid: [u8; 6],
    tsih: u16,
    cid: u16,
    itt: u32,
    cmd_sn: u32,
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        let h = if h.len() % 2 == 1 {
            format!("0{h}")
        } else {
            h.to_string()
        };
        (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok())
            .collect()
    } else if let Some(b) = s.strip_prefix("0b").or_else(|| s.strip_prefix("0B")) {
        base64_decode(b)
    } else {
        None
    }
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::new();
    for chunk in s.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c)? << (18 - 6 * i);
        }
        let n = match chunk.len() {
            4 => 3,
            3 => 2,
            2 => 1,
            _ => return None,
        };
        out.extend_from_slice(&acc.to_be_bytes()[1..1 + n]);
    }
    Some(out)
}

fn hex_encode(b: &[u8]) -> String {
    let mut s = String::from("0x");
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

/// CHAP response: H(id || secret || challenge) (RFC 1994 §4.1, with H the chosen hash).
pub fn chap_response(alg: ChapAlgorithm, id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
    fn hash<D: Digest>(id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
        let mut h = D::new();
        h.update([id]);
        h.update(secret);
        h.update(challenge);
        h.finalize().to_vec()
    }
    match alg {
        ChapAlgorithm::Md5 => hash::<Md5>(id, secret, challenge),
        ChapAlgorithm::Sha256 => hash::<Sha256>(id, secret, challenge),
    }
}

/// Constant-time comparison for authenticators.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Login {
    pub fn new(limits: TargetLimits) -> Login {
        Login {
            negotiation: Negotiation::new(limits.clone()),
            limits,
            first: None,
            initiator: None,
            session_type: SessionType::Normal,
            export: None,
            auth_done: false,
            chap: Chap::NotStarted,
            stage: SECURITY,
            stat_sn: 0,
            pending_text: Vec::new(),
            portal_group_tag_sent: false,
        }
    }

    /// The limit on a login PDU's data segment: the RFC default until negotiated.
    pub fn max_recv(&self) -> usize {
        8192
    }

    /// A response carrying only a failure status (no keys); send it and close.
    pub fn failure_response(&self, req: &Bhs, f: &LoginFailure) -> Bhs {
        let mut b = self.response_header(req, false, self.stage, self.stage);
        b.0[36] = f.class;
        b.0[37] = f.detail;
        b
    }

    fn response_header(&self, req: &Bhs, transit: bool, csg: u8, nsg: u8) -> Bhs {
        let mut b = Bhs::new(op::LOGIN_RESP);
        let mut flags = (csg & 3) << 2;
        if transit {
            flags |= 0x80 | (nsg & 3);
        }
        b.set_flags(flags);
        b.0[2] = 0; // version-max
        b.0[3] = 0; // version-active
        b.0[8..16].copy_from_slice(&req.0[8..16]); // ISID + TSIH echoed
        b.set_itt(req.itt());
        b.set_u32(24, self.stat_sn);
        let cmd_sn = req.cmd_sn();
        b.set_u32(28, cmd_sn);
        b.set_u32(32, cmd_sn);
        b
    }

    /// Handles one Login Request.
    pub fn step(&mut self, req: &Pdu, exports: &ExportTable) -> Result<Step, LoginFailure> {
        let b = &req.bhs;
        if b.opcode() != op::LOGIN_REQ {
            return Err(fail(
                status::INVALID_DURING_LOGIN,
                format!("opcode {:#x} during login", b.opcode()),
            ));
        }
        let transit = b.flags() & 0x80 != 0;
        let cont = b.flags() & 0x40 != 0;
        let csg = (b.flags() >> 2) & 3;
        let nsg = b.flags() & 3;
        if b.0[3] > 0 {
            return Err(fail(status::UNSUPPORTED_VERSION, "version-min above 0"));
        }
        let mut isid = [0u8; 6];
        isid.copy_from_slice(&b.0[8..14]);
        let tsih = b.u16_at(14);
        let cid = b.u16_at(20);
        match &self.first {
            None => {
                self.stat_sn = b.exp_stat_sn();
                self.first = Some(FirstRequest {
                    isid,
                    tsih,
                    cid,
                    itt: b.itt(),
                    cmd_sn: b.cmd_sn(),
                });
                self.stage = csg;
            }
            Some(f) => {
                if f.isid != isid || f.tsih != tsih || f.cid != cid {
                    return Err(fail(
                        status::INITIATOR_ERROR,
                        "ISID/TSIH/CID changed during login",
                    ));
                }
            }
        }
        if csg != self.stage || csg == 2 || csg == FULL_FEATURE {
            return Err(fail(status::INITIATOR_ERROR, format!("bad stage {csg}")));
        }
        if transit && cont {
            return Err(fail(status::INITIATOR_ERROR, "T and C both set"));
        }
        if transit && (nsg <= csg || nsg == 2) {
            return Err(fail(
                status::INITIATOR_ERROR,
                format!("bad transition {csg}->{nsg}"),
            ));
        }
        self.pending_text.extend_from_slice(&req.data);
        if self.pending_text.len() > MAX_LOGIN_TEXT {
            return Err(fail(status::INITIATOR_ERROR, "login text too long"));
        }
        if cont {
            // Acknowledge the piece; the keys are answered once the last piece is here.
            let h = self.response_header(b, false, csg, csg);
            self.stat_sn = self.stat_sn.wrapping_add(1);
            return Ok(Step {
                bhs: h,
                data: Vec::new(),
                done: false,
            });
        }
        let text = std::mem::take(&mut self.pending_text);
        let pairs = text::parse_pairs(&text)
            .map_err(|e| fail(status::INITIATOR_ERROR, format!("bad login text: {e}")))?;
        let mut answers: Vec<(String, String)> = Vec::new();
        self.login_keys(&pairs, exports)?;
        if !self.portal_group_tag_sent && self.session_type == SessionType::Normal {
            answers.push(("TargetPortalGroupTag".into(), "1".into()));
            self.portal_group_tag_sent = true;
        }
        for (k, v) in &pairs {
            match k.as_str() {
                "InitiatorName" | "TargetName" | "SessionType" | "InitiatorAlias" => {}
                "AuthMethod" => {
                    if csg != SECURITY {
                        return Err(fail(
                            status::INITIATOR_ERROR,
                            "AuthMethod outside security stage",
                        ));
                    }
                    answers.push((k.clone(), self.auth_method(v)?));
                }
                k2 if k2.starts_with("CHAP_") => {}
                _ => {
                    if let Some(a) = self.negotiation.offer(k, v) {
                        answers.push((k.clone(), a));
                    }
                }
            }
        }
        let may_transit = if csg == SECURITY {
            let ok = self.chap_step(&pairs, &mut answers)?;
            if transit && self.export_requires_chap() && self.chap == Chap::NotStarted {
                return Err(fail(status::AUTH_FAILURE, "CHAP required but not offered"));
            }
            ok
        } else {
            if !self.auth_done && self.export_requires_chap() {
                return Err(fail(
                    status::AUTH_FAILURE,
                    "CHAP required; security stage skipped",
                ));
            }
            answers.extend(self.negotiation.declarations());
            true
        };
        if transit && may_transit {
            self.auth_done = true;
        }
        let go = transit && may_transit;
        let next = if go { nsg } else { csg };
        let h = self.response_header(b, go, csg, nsg);
        let done = go && nsg == FULL_FEATURE;
        let mut h = h;
        if done {
            // TSIH is filled in by the caller when the session is admitted.
            h.set_u16(14, 0);
        }
        self.stage = next;
        self.stat_sn = self.stat_sn.wrapping_add(1);
        Ok(Step {
            bhs: h,
            data: text::encode_pairs(&answers),
            done,
        })
    }

    fn export_requires_chap(&self) -> bool {
        self.export.as_ref().is_some_and(|e| e.chap.is_some())
    }

    /// InitiatorName, SessionType, TargetName: who and what; the ACL is applied here.
    fn login_keys(
        &mut self,
        pairs: &[(String, String)],
        exports: &ExportTable,
    ) -> Result<(), LoginFailure> {
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(kk, _)| kk == k)
                .map(|(_, v)| v.as_str())
        };
        if self.initiator.is_none() {
            let Some(name) = get("InitiatorName") else {
                return Err(fail(status::MISSING_PARAMETER, "no InitiatorName"));
            };
            self.initiator = Some(name.to_string());
            self.session_type = match get("SessionType").unwrap_or("Normal") {
                "Normal" => SessionType::Normal,
                "Discovery" => SessionType::Discovery,
                other => {
                    return Err(fail(
                        status::SESSION_TYPE_UNSUPPORTED,
                        format!("SessionType {other}"),
                    ))
                }
            };
            let name = name.to_string();
            match self.session_type {
                SessionType::Normal => {
                    let Some(target) = get("TargetName") else {
                        return Err(fail(status::MISSING_PARAMETER, "no TargetName"));
                    };
                    let Some(e) = exports.find_target(target) else {
                        return Err(fail(status::NOT_FOUND, format!("no target {target}")));
                    };
                    if !e.allows(&name) {
                        return Err(fail(
                            status::AUTHORIZATION_FAILURE,
                            format!("{name} may not log in to {target}"),
                        ));
                    }
                    self.export = Some(e);
                }
                SessionType::Discovery => {
                    if !exports.current().iter().any(|e| e.allows(&name)) {
                        return Err(fail(
                            status::AUTHORIZATION_FAILURE,
                            format!("{name} is not allowed on any target"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn auth_method(&mut self, offered: &str) -> Result<String, LoginFailure> {
        let want_chap = self.export_requires_chap();
        let offers: Vec<&str> = offered.split(',').collect();
        if want_chap {
            if offers.contains(&"CHAP") {
                self.chap = Chap::Chosen;
                return Ok("CHAP".into());
            }
            return Err(fail(
                status::AUTH_FAILURE,
                "CHAP required, initiator does not offer it",
            ));
        }
        if offers.contains(&"None") {
            return Ok("None".into());
        }
        Err(fail(
            status::AUTH_FAILURE,
            format!("no acceptable AuthMethod in {offered}"),
        ))
    }

    /// Advances CHAP; returns whether the security stage may be left now.
    fn chap_step(
        &mut self,
        pairs: &[(String, String)],
        answers: &mut Vec<(String, String)>,
    ) -> Result<bool, LoginFailure> {
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(kk, _)| kk == k)
                .map(|(_, v)| v.as_str())
        };
        match std::mem::replace(&mut self.chap, Chap::NotStarted) {
            Chap::NotStarted => Ok(!self.export_requires_chap()),
            Chap::Chosen => {
                let Some(algs) = get("CHAP_A") else {
                    self.chap = Chap::Chosen;
                    return Ok(false);
                };
                let Some(alg) = ChapAlgorithm::choose(algs) else {
                    return Err(fail(
                        status::AUTH_FAILURE,
                        format!("no supported CHAP algorithm in CHAP_A={algs} (5 or 7)"),
                    ));
                };
                let id: u8 = rand::random();
                let challenge: Vec<u8> = (0..alg.digest_len())
                    .map(|_| rand::random::<u8>())
                    .collect();
                answers.push(("CHAP_A".into(), alg.code().to_string()));
                answers.push(("CHAP_I".into(), id.to_string()));
                answers.push(("CHAP_C".into(), hex_encode(&challenge)));
                self.chap = Chap::Challenged { alg, id, challenge };
                Ok(false)
            }
            Chap::Challenged { alg, id, challenge } => {
                let (Some(n), Some(r)) = (get("CHAP_N"), get("CHAP_R")) else {
                    return Err(fail(status::AUTH_FAILURE, "CHAP_N/CHAP_R missing"));
                };
                let Some(export) = &self.export else {
                    return Err(fail(status::AUTH_FAILURE, "CHAP without a target"));
                };
                let Some(cred) = &export.chap else {
                    return Err(fail(status::AUTH_FAILURE, "no CHAP secret"));
                };
                // An empty secret (a catalog row edited by hand) proves nothing: never matched.
                if cred.secret.is_empty() {
                    return Err(fail(
                        status::AUTH_FAILURE,
                        format!("the export of {} has an empty CHAP secret", export.iqn),
                    ));
                }
                let got = hex_decode(r).ok_or_else(|| fail(status::AUTH_FAILURE, "bad CHAP_R"))?;
                let want = chap_response(alg, id, cred.secret.as_bytes(), &challenge);
                if n != cred.user || !same(&got, &want) {
                    return Err(fail(
                        status::AUTH_FAILURE,
                        format!("CHAP failed for user {n:?}"),
                    ));
                }
                // Mutual: the initiator challenges us back.
                match (get("CHAP_I"), get("CHAP_C")) {
                    (Some(i), Some(c)) => {
                        let Some(m) = export.mutual_chap.as_ref().filter(|m| !m.secret.is_empty())
                        else {
                            return Err(fail(
                                status::AUTH_FAILURE,
                                "initiator asks for mutual CHAP, none configured",
                            ));
                        };
                        let i = text::number(i, 0, 255)
                            .ok_or_else(|| fail(status::AUTH_FAILURE, "bad CHAP_I"))?
                            as u8;
                        let c = hex_decode(c)
                            .filter(|c| !c.is_empty() && c.len() <= MAX_CHAP_CHALLENGE)
                            .ok_or_else(|| fail(status::AUTH_FAILURE, "bad CHAP_C"))?;
                        if c == challenge {
                            return Err(fail(status::AUTH_FAILURE, "reflected CHAP challenge"));
                        }
                        let resp = chap_response(alg, i, m.secret.as_bytes(), &c);
                        answers.push(("CHAP_N".into(), m.user.clone()));
                        answers.push(("CHAP_R".into(), hex_encode(&resp)));
                    }
                    (None, None) => {}
                    _ => return Err(fail(status::AUTH_FAILURE, "CHAP_I without CHAP_C")),
                }
                self.chap = Chap::Done;
                Ok(true)
            }
            Chap::Done => {
                self.chap = Chap::Done;
                Ok(true)
            }
        }
    }

    /// The outcome, once `step` returned `done`.
    pub fn established(&self, tsih: u16) -> Option<Established> {
        let f = self.first?;
        let _ = f.itt;
        Some(Established {
            initiator: self.initiator.clone()?,
            isid: f.isid,
            tsih,
            cid: f.cid,
            session_type: self.session_type,
            export: self.export.clone(),
            params: self.negotiation.params(),
            cmd_sn: f.cmd_sn,
            stat_sn: self.stat_sn,
            final_response: None,
        })
    }

    /// TSIH the initiator asked for (0 for a new session).
    pub fn requested_tsih(&self) -> u16 {
        self.first.map_or(0, |f| f.tsih)
    }

    pub fn initiator(&self) -> Option<&str> {
        self.initiator.as_deref()
    }

    pub fn limits(&self) -> &TargetLimits {
        &self.limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chap_algorithm_is_the_initiators_first_supported_choice() {
        // EDK2 IScsiDxe: "7,5" (or "7" when built without MD5); libiscsi: "5".
        assert_eq!(ChapAlgorithm::choose("7,5"), Some(ChapAlgorithm::Sha256));
        assert_eq!(ChapAlgorithm::choose("7"), Some(ChapAlgorithm::Sha256));
        assert_eq!(ChapAlgorithm::choose("5"), Some(ChapAlgorithm::Md5));
        assert_eq!(ChapAlgorithm::choose("6,5,7"), Some(ChapAlgorithm::Md5));
        assert_eq!(ChapAlgorithm::choose("0x7"), Some(ChapAlgorithm::Sha256));
        assert_eq!(ChapAlgorithm::choose("6,8,junk"), None);
        assert_eq!(ChapAlgorithm::choose(""), None);
    }

    #[test]
    fn chap_response_hashes_id_secret_and_challenge() {
        // Expected values computed independently (Python hashlib).
        let ch: Vec<u8> = (0..16).collect();
        let md5 = chap_response(ChapAlgorithm::Md5, 0x2a, b"edk2-secret-12", &ch);
        assert_eq!(hex_encode(&md5), "0xbe6b8d43827991d896a02cefe48b320a");
        let sha = chap_response(ChapAlgorithm::Sha256, 0x2a, b"edk2-secret-12", &ch);
        assert_eq!(
            hex_encode(&sha),
            "0xc607d3501d7befe7149bade83db1f4a8d2c5e5cd24c8244388dafac982acb5ad"
        );
    }

    #[test]
    fn chap_values_decode_from_hex_and_base64() {
        assert_eq!(hex_decode("0x0aFF"), Some(vec![0x0a, 0xff]));
        assert_eq!(hex_decode("0X1"), Some(vec![0x01]));
        assert_eq!(hex_decode("0b/w=="), Some(vec![0xff]));
        assert_eq!(hex_decode("0xzz"), None);
        assert_eq!(hex_decode("1234"), None);
    }
}
