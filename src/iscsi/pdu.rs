//! The iSCSI PDU codec: Basic Header Segment, Additional Header Segments and data segment,
//! with optional header and data digests (RFC 7143 §11). Pure bytes in, bytes out.
//!
//! `check` answers "is one whole PDU at the front of this buffer, and how long is it?"
//! cheaply and without copying; `None` (incomplete) is ordinary control flow. `parse` then
//! splits and verifies the frame. Nothing here touches sockets or sessions, and nothing here
//! may panic on any input: the fuzz target and the unit tests feed it arbitrary bytes.

use bytes::{Buf, Bytes};

use super::digest::{self, DIGEST_LEN};

/// Length of the Basic Header Segment.
pub const BHS_LEN: usize = 48;
/// TotalAHSLength is one byte counting 4-byte words.
pub const MAX_AHS_LEN: usize = 255 * 4;
/// The reserved "no task" tag (NOP-In pings, unsolicited PDUs).
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// Opcodes (the low six bits of byte 0).
pub mod op {
    pub const NOP_OUT: u8 = 0x00;
    pub const SCSI_CMD: u8 = 0x01;
    pub const TMF_REQ: u8 = 0x02;
    pub const LOGIN_REQ: u8 = 0x03;
    pub const TEXT_REQ: u8 = 0x04;
    pub const DATA_OUT: u8 = 0x05;
    pub const LOGOUT_REQ: u8 = 0x06;
    pub const SNACK: u8 = 0x10;
    pub const NOP_IN: u8 = 0x20;
    pub const SCSI_RESP: u8 = 0x21;
    pub const TMF_RESP: u8 = 0x22;
    pub const LOGIN_RESP: u8 = 0x23;
    pub const TEXT_RESP: u8 = 0x24;
    pub const DATA_IN: u8 = 0x25;
    pub const LOGOUT_RESP: u8 = 0x26;
    pub const R2T: u8 = 0x31;
    pub const ASYNC: u8 = 0x32;
    pub const REJECT: u8 = 0x3f;
}

/// Reject reasons (RFC 7143 §11.17.1).
pub mod reject {
    pub const DATA_DIGEST_ERROR: u8 = 0x02;
    pub const SNACK_REJECT: u8 = 0x03;
    pub const PROTOCOL_ERROR: u8 = 0x04;
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x05;
    pub const IMMEDIATE_COMMAND_REJECT: u8 = 0x06;
    pub const TASK_IN_PROGRESS: u8 = 0x07;
    pub const INVALID_DATA_ACK: u8 = 0x08;
    pub const INVALID_PDU_FIELD: u8 = 0x09;
    pub const OUT_OF_RESOURCES: u8 = 0x0a;
    pub const WAITING_FOR_LOGOUT: u8 = 0x0c;
}

/// Flag bits of byte 1 shared by several PDUs.
pub const FLAG_FINAL: u8 = 0x80;

/// The 48-byte Basic Header Segment, kept as bytes with typed accessors: every PDU kind
/// reads and writes its own fields at their RFC offsets.
#[derive(Clone, PartialEq, Eq)]
pub struct Bhs(pub [u8; BHS_LEN]);

impl std::fmt::Debug for Bhs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Bhs(op={:#04x} flags={:#04x} itt={:#x} dlen={})",
            self.opcode(),
            self.flags(),
            self.itt(),
            self.data_len()
        )
    }
}

impl Bhs {
    pub fn new(opcode: u8) -> Bhs {
        let mut b = [0u8; BHS_LEN];
        b[0] = opcode & 0x3f;
        Bhs(b)
    }

    pub fn from_slice(s: &[u8]) -> Option<Bhs> {
        let arr: [u8; BHS_LEN] = s.get(..BHS_LEN)?.try_into().ok()?;
        Some(Bhs(arr))
    }

    pub fn opcode(&self) -> u8 {
        self.0[0] & 0x3f
    }
    pub fn immediate(&self) -> bool {
        self.0[0] & 0x40 != 0
    }
    pub fn flags(&self) -> u8 {
        self.0[1]
    }
    pub fn set_flags(&mut self, f: u8) {
        self.0[1] = f;
    }
    pub fn final_bit(&self) -> bool {
        self.0[1] & FLAG_FINAL != 0
    }
    /// TotalAHSLength in bytes.
    pub fn ahs_len(&self) -> usize {
        self.0[4] as usize * 4
    }
    pub fn data_len(&self) -> usize {
        u32::from_be_bytes([0, self.0[5], self.0[6], self.0[7]]) as usize
    }
    /// Sets DataSegmentLength; the caller guarantees it fits in 24 bits.
    pub fn set_data_len(&mut self, len: usize) {
        let b = (len as u32).to_be_bytes();
        self.0[5..8].copy_from_slice(&b[1..4]);
    }
    pub fn lun(&self) -> u64 {
        self.u64_at(8)
    }
    pub fn set_lun(&mut self, lun: u64) {
        self.0[8..16].copy_from_slice(&lun.to_be_bytes());
    }
    pub fn itt(&self) -> u32 {
        self.u32_at(16)
    }
    pub fn set_itt(&mut self, v: u32) {
        self.set_u32(16, v);
    }
    pub fn u16_at(&self, off: usize) -> u16 {
        u16::from_be_bytes([self.0[off], self.0[off + 1]])
    }
    pub fn set_u16(&mut self, off: usize, v: u16) {
        self.0[off..off + 2].copy_from_slice(&v.to_be_bytes());
    }
    pub fn u32_at(&self, off: usize) -> u32 {
        u32::from_be_bytes([
            self.0[off],
            self.0[off + 1],
            self.0[off + 2],
            self.0[off + 3],
        ])
    }
    pub fn set_u32(&mut self, off: usize, v: u32) {
        self.0[off..off + 4].copy_from_slice(&v.to_be_bytes());
    }
    pub fn u64_at(&self, off: usize) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&self.0[off..off + 8]);
        u64::from_be_bytes(a)
    }

    // Fields at the same offset in most PDUs.
    /// Target Transfer Tag (offset 20) in NOP, Data-Out, R2T, Text, Data-In.
    pub fn ttt(&self) -> u32 {
        self.u32_at(20)
    }
    /// CmdSN of initiator PDUs (offset 24).
    pub fn cmd_sn(&self) -> u32 {
        self.u32_at(24)
    }
    /// ExpStatSN of initiator PDUs (offset 28).
    pub fn exp_stat_sn(&self) -> u32 {
        self.u32_at(28)
    }
}

/// What the receiver negotiated: whether digests are on, and how big a data segment it
/// accepts (its MaxRecvDataSegmentLength).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    pub header_digest: bool,
    pub data_digest: bool,
    pub max_data: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PduError {
    #[error("data segment of {len} bytes exceeds the negotiated maximum of {max}")]
    DataTooLong { len: usize, max: usize },
    #[error("header digest mismatch (got {got:#010x}, computed {want:#010x})")]
    HeaderDigest { got: u32, want: u32 },
    #[error("data digest mismatch (got {got:#010x}, computed {want:#010x})")]
    DataDigest { got: u32, want: u32 },
    #[error("truncated PDU: {have} of {need} bytes")]
    Truncated { have: usize, need: usize },
}

/// Bytes the data segment takes on the wire, with padding to a 4-byte boundary.
pub fn padded(len: usize) -> usize {
    (len + 3) & !3
}

/// Total wire length of a PDU whose BHS is `bhs`, under `lim`.
fn frame_len(bhs: &[u8], lim: &FrameLimits) -> Result<usize, PduError> {
    let ahs = bhs[4] as usize * 4;
    let dlen = u32::from_be_bytes([0, bhs[5], bhs[6], bhs[7]]) as usize;
    if dlen > lim.max_data {
        return Err(PduError::DataTooLong {
            len: dlen,
            max: lim.max_data,
        });
    }
    let mut n = BHS_LEN + ahs;
    if lim.header_digest {
        n += DIGEST_LEN;
    }
    if dlen > 0 {
        n += padded(dlen);
        if lim.data_digest {
            n += DIGEST_LEN;
        }
    }
    Ok(n)
}

/// Is a whole PDU at the front of `buf`? `Ok(Some(len))` when it is, `Ok(None)` when more
/// bytes are needed, `Err` when the header announces more data than was negotiated (the
/// connection cannot be resynchronised after that).
pub fn check(buf: &[u8], lim: &FrameLimits) -> Result<Option<usize>, PduError> {
    if buf.len() < BHS_LEN {
        return Ok(None);
    }
    let n = frame_len(&buf[..BHS_LEN], lim)?;
    Ok((buf.len() >= n).then_some(n))
}

/// A received PDU, split into its parts.
#[derive(Debug, Clone)]
pub struct Pdu {
    pub bhs: Bhs,
    pub ahs: Bytes,
    pub data: Bytes,
}

/// Splits one whole frame (as sized by `check`) and verifies its digests.
pub fn parse(mut frame: Bytes, lim: &FrameLimits) -> Result<Pdu, PduError> {
    let need = match frame.get(..BHS_LEN) {
        Some(h) => frame_len(h, lim)?,
        None => {
            return Err(PduError::Truncated {
                have: frame.len(),
                need: BHS_LEN,
            })
        }
    };
    if frame.len() < need {
        return Err(PduError::Truncated {
            have: frame.len(),
            need,
        });
    }
    let header_len = BHS_LEN + frame[4] as usize * 4;
    let dlen = u32::from_be_bytes([0, frame[5], frame[6], frame[7]]) as usize;
    let header = frame.split_to(header_len);
    if lim.header_digest {
        let got = digest::from_wire([frame[0], frame[1], frame[2], frame[3]]);
        let want = digest::crc32c(&header);
        if got != want {
            return Err(PduError::HeaderDigest { got, want });
        }
        frame.advance(DIGEST_LEN);
    }
    let mut data = Bytes::new();
    if dlen > 0 {
        let with_pad = frame.split_to(padded(dlen));
        if lim.data_digest {
            let got = digest::from_wire([frame[0], frame[1], frame[2], frame[3]]);
            let want = digest::crc32c(&with_pad);
            if got != want {
                return Err(PduError::DataDigest { got, want });
            }
        }
        data = with_pad.slice(..dlen);
    }
    let bhs = Bhs::from_slice(&header).ok_or(PduError::Truncated {
        have: header.len(),
        need: BHS_LEN,
    })?;
    Ok(Pdu {
        bhs,
        ahs: header.slice(BHS_LEN..),
        data,
    })
}

/// The parts of an outgoing PDU around its data: header (+ digest) and padding (+ digest),
/// so a writer can send `head`, the data itself, and `tail` without copying the data.
pub struct Framing {
    pub head: [u8; BHS_LEN + DIGEST_LEN],
    pub head_len: usize,
    pub tail: [u8; 3 + DIGEST_LEN],
    pub tail_len: usize,
}

impl Framing {
    pub fn head(&self) -> &[u8] {
        &self.head[..self.head_len]
    }
    pub fn tail(&self) -> &[u8] {
        &self.tail[..self.tail_len]
    }
}

/// Frames `bhs` (its DataSegmentLength set to `data.len()`) and `data` for sending, with
/// the digests `header_digest` and `data_digest` when on. Outgoing PDUs carry no AHS.
pub fn frame(bhs: &Bhs, data: &[u8], header_digest: bool, data_digest: bool) -> Framing {
    let mut b = bhs.clone();
    b.0[4] = 0;
    b.set_data_len(data.len());
    let mut head = [0u8; BHS_LEN + DIGEST_LEN];
    head[..BHS_LEN].copy_from_slice(&b.0);
    let mut head_len = BHS_LEN;
    if header_digest {
        head[BHS_LEN..].copy_from_slice(&digest::to_wire(digest::crc32c(&b.0)));
        head_len += DIGEST_LEN;
    }
    let mut tail = [0u8; 3 + DIGEST_LEN];
    let mut tail_len = 0;
    if !data.is_empty() {
        let pad = padded(data.len()) - data.len();
        tail_len = pad;
        if data_digest {
            let crc = digest::crc32c_append(digest::crc32c(data), &[0u8; 3][..pad]);
            tail[pad..pad + DIGEST_LEN].copy_from_slice(&digest::to_wire(crc));
            tail_len += DIGEST_LEN;
        }
    }
    Framing {
        head,
        head_len,
        tail,
        tail_len,
    }
}

/// A whole PDU as one buffer (logins, tests).
pub fn encode(bhs: &Bhs, data: &[u8], header_digest: bool, data_digest: bool) -> Vec<u8> {
    let f = frame(bhs, data, header_digest, data_digest);
    let mut out = Vec::with_capacity(f.head_len + data.len() + f.tail_len);
    out.extend_from_slice(f.head());
    out.extend_from_slice(data);
    out.extend_from_slice(f.tail());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: FrameLimits = FrameLimits {
        header_digest: false,
        data_digest: false,
        max_data: 8192,
    };
    const DIGESTS: FrameLimits = FrameLimits {
        header_digest: true,
        data_digest: true,
        max_data: 8192,
    };

    fn nop_out(data: &[u8]) -> Bhs {
        let mut b = Bhs::new(op::NOP_OUT);
        b.0[0] |= 0x40;
        b.set_flags(FLAG_FINAL);
        b.set_itt(7);
        b.set_u32(20, RESERVED_TAG);
        b.set_data_len(data.len());
        b
    }

    #[test]
    fn check_says_incomplete_until_whole_pdu_is_there() {
        let data = b"ping!";
        let wire = encode(&nop_out(data), data, false, false);
        assert_eq!(wire.len(), 48 + 8);
        for cut in 0..wire.len() {
            assert_eq!(check(&wire[..cut], &PLAIN), Ok(None), "cut at {cut}");
        }
        assert_eq!(check(&wire, &PLAIN), Ok(Some(wire.len())));
    }

    #[test]
    fn round_trip_with_digests_strips_padding() {
        let data = b"abcdefg";
        let wire = encode(&nop_out(data), data, true, true);
        assert_eq!(wire.len(), 48 + 4 + 8 + 4);
        let n = check(&wire, &DIGESTS).unwrap().unwrap();
        let pdu = parse(Bytes::copy_from_slice(&wire[..n]), &DIGESTS).unwrap();
        assert_eq!(pdu.bhs.opcode(), op::NOP_OUT);
        assert!(pdu.bhs.immediate());
        assert_eq!(pdu.bhs.itt(), 7);
        assert_eq!(&pdu.data[..], data);
    }

    #[test]
    fn corrupted_header_digest_is_detected() {
        let mut wire = encode(&nop_out(b""), b"", true, false);
        wire[20] ^= 1;
        let lim = FrameLimits {
            data_digest: false,
            ..DIGESTS
        };
        assert!(matches!(
            parse(Bytes::from(wire), &lim),
            Err(PduError::HeaderDigest { .. })
        ));
    }

    #[test]
    fn corrupted_data_digest_is_detected() {
        let mut wire = encode(&nop_out(b"data"), b"data", true, true);
        wire[52] ^= 0x80;
        assert!(matches!(
            parse(Bytes::from(wire), &DIGESTS),
            Err(PduError::DataDigest { .. })
        ));
    }

    #[test]
    fn data_segment_beyond_negotiated_length_is_refused_from_the_header() {
        let mut b = nop_out(b"");
        b.set_data_len(8193);
        assert_eq!(
            check(&b.0, &PLAIN),
            Err(PduError::DataTooLong {
                len: 8193,
                max: 8192
            })
        );
    }

    #[test]
    fn ahs_is_split_off() {
        let mut wire = nop_out(b"xy").0.to_vec();
        wire[4] = 1; // one word of AHS
        wire.extend_from_slice(&[1, 2, 3, 4]);
        wire.extend_from_slice(b"xy\0\0");
        let n = check(&wire, &PLAIN).unwrap().unwrap();
        assert_eq!(n, wire.len());
        let pdu = parse(Bytes::from(wire), &PLAIN).unwrap();
        assert_eq!(&pdu.ahs[..], &[1, 2, 3, 4]);
        assert_eq!(&pdu.data[..], b"xy");
    }

    #[test]
    fn parse_never_panics_on_short_or_garbage_frames() {
        for len in 0..120usize {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let _ = parse(Bytes::from(junk.clone()), &DIGESTS);
            let _ = check(&junk, &DIGESTS);
        }
    }
}
