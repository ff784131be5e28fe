//! Data-Out collection for a connection's writes (RFC 7143 §10.7, §10.8): a write's
//! immediate data, its unsolicited Data-Out (up to FirstBurstLength unless InitialR2T), then
//! the R2T-solicited bursts, up to MaxOutstandingR2T of them outstanding. Data must come in
//! order (DataPDUInOrder and DataSequenceInOrder are Yes) with consecutive DataSNs; anything
//! else fails the task with DATA PHASE ERROR (ErrorRecoveryLevel 0 cannot recover it) and
//! later Data-Out for it is ignored.
//!
//! Pure state, no I/O: each step says which R2Ts to send and when a write's data is
//! complete; the connection (`connection.rs`) sends them and runs the command. Memory per
//! write grows with the data received (`WriteBuf`), not with the length announced.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use super::command::response_header;
use super::pdu::{self, op, Bhs, Pdu, RESERVED_TAG};
use super::scsi;
use super::text::SessionParams;
use super::wire::{OutPdu, Sn};
use crate::store::AlignedBuf;

/// A connection's target transfer tags (R2Ts, NOP-In pings, long text answers): one
/// sequence, never the reserved tag.
pub(super) struct TransferTags {
    next: u32,
}

impl TransferTags {
    pub(super) fn new() -> TransferTags {
        TransferTags { next: 1 }
    }

    pub(super) fn take(&mut self) -> u32 {
        let t = self.next;
        self.next = self.next.wrapping_add(1);
        if self.next == RESERVED_TAG {
            self.next = 1;
        }
        t
    }
}

/// What became of a write's command or of one of its Data-Out PDUs.
pub(super) enum Step {
    /// All the data is here: run the command with it.
    Ready(Bhs, Bytes),
    /// Still collecting: send these R2Ts (there may be none).
    Collecting(Vec<OutPdu>),
    /// The command announces more data than a write may carry: fail it (its data is
    /// ignored as it comes).
    TooBig(Bhs),
    /// The data phase broke: fail the command with DATA PHASE ERROR.
    Failed(Bhs, &'static str),
    /// Data-Out for no write collecting (an aborted or failed task): ignored.
    Ignored,
}

/// The writes of one connection still collecting their data, by initiator task tag.
pub(super) struct Writes {
    initial_r2t: bool,
    first_burst: usize,
    max_burst: usize,
    max_outstanding_r2t: usize,
    pending: HashMap<u32, PendingWrite>,
}

/// A write collecting its Data-Out.
struct PendingWrite {
    bhs: Bhs,
    buf: WriteBuf,
    edtl: usize,
    received: usize,
    /// End of the unsolicited (immediate + first burst) part.
    unsolicited_end: usize,
    unsolicited_done: bool,
    /// Next offset to solicit with an R2T.
    next_r2t: usize,
    r2t_sn: u32,
    /// Next offset and DataSN expected in the unsolicited sequence.
    unsol_next: usize,
    unsol_datasn: u32,
    r2ts: VecDeque<R2tState>,
}

/// An outstanding R2T and the Data-Out sequence answering it.
struct R2tState {
    ttt: u32,
    offset: usize,
    len: usize,
    received: usize,
    next_datasn: u32,
}

/// The most a write may announce: the largest transfer, twice over, plus a page.
const MAX_WRITE: usize = scsi::MAX_TRANSFER_BLOCKS as usize * scsi::BLOCK_SIZE as usize * 2 + 4096;

impl Writes {
    /// Collection under the session's negotiated `params`.
    pub(super) fn new(params: &SessionParams) -> Writes {
        Writes {
            initial_r2t: params.initial_r2t,
            first_burst: params.first_burst_length as usize,
            max_burst: params.max_burst_length as usize,
            max_outstanding_r2t: params.max_outstanding_r2t.max(1) as usize,
            pending: HashMap::new(),
        }
    }

    /// Whether the write `itt` is collecting its data.
    pub(super) fn contains(&self, itt: u32) -> bool {
        self.pending.contains_key(&itt)
    }

    /// A write command (Expected Data Transfer Length above zero) with its immediate data
    /// `imm`, which the caller has checked against the negotiated limits.
    pub(super) fn start(&mut self, bhs: Bhs, imm: &[u8], tags: &mut TransferTags) -> Step {
        let edtl = bhs.u32_at(20) as usize;
        if edtl > MAX_WRITE {
            return Step::TooBig(bhs);
        }
        let imm_len = imm.len();
        let unsolicited_end = if self.initial_r2t {
            imm_len
        } else {
            edtl.min(self.first_burst).max(imm_len)
        };
        let unsolicited_done = bhs.flags() & pdu::FLAG_FINAL != 0 || imm_len >= unsolicited_end;
        let mut buf = WriteBuf::new(edtl);
        buf.put(0, imm);
        let mut w = PendingWrite {
            bhs,
            buf,
            edtl,
            received: imm_len,
            unsolicited_end: if unsolicited_done {
                imm_len
            } else {
                unsolicited_end
            },
            unsolicited_done,
            next_r2t: if unsolicited_done {
                imm_len
            } else {
                unsolicited_end
            },
            r2t_sn: 0,
            unsol_next: imm_len,
            unsol_datasn: 0,
            r2ts: VecDeque::new(),
        };
        if w.received >= edtl {
            return Step::Ready(w.bhs, w.buf.into_bytes());
        }
        let r2ts = if w.unsolicited_done {
            self.r2ts(&mut w, tags)
        } else {
            Vec::new()
        };
        self.pending.insert(w.bhs.itt(), w);
        Step::Collecting(r2ts)
    }

    /// One Data-Out PDU.
    pub(super) fn data_out(&mut self, pdu: &Pdu, tags: &mut TransferTags) -> Step {
        let b = &pdu.bhs;
        let itt = b.itt();
        let Some(mut w) = self.pending.remove(&itt) else {
            return Step::Ignored;
        };
        let ttt = b.ttt();
        let datasn = b.u32_at(36);
        let off = b.u32_at(40) as usize;
        let len = pdu.data.len();
        let end = off.saturating_add(len);
        if end > w.edtl {
            return Step::Failed(w.bhs, "Data-Out beyond the expected length");
        }
        if ttt == RESERVED_TAG {
            if w.unsolicited_done
                || end > w.unsolicited_end
                || off != w.unsol_next
                || datasn != w.unsol_datasn
            {
                return Step::Failed(w.bhs, "unsolicited Data-Out out of order");
            }
            w.unsol_next = end;
            w.unsol_datasn += 1;
        } else {
            let Some(r) = w.r2ts.iter_mut().find(|r| r.ttt == ttt) else {
                return Step::Failed(w.bhs, "Data-Out with an unknown transfer tag");
            };
            if off != r.offset + r.received || end > r.offset + r.len || datasn != r.next_datasn {
                return Step::Failed(w.bhs, "solicited Data-Out out of order");
            }
            r.received += len;
            r.next_datasn += 1;
        }
        w.buf.put(off, &pdu.data);
        w.received += len;
        if ttt == RESERVED_TAG {
            if b.final_bit() || end >= w.unsolicited_end {
                w.unsolicited_done = true;
                w.next_r2t = w.next_r2t.max(end);
            }
        } else if let Some(pos) = w.r2ts.iter().position(|r| r.ttt == ttt) {
            let r = &w.r2ts[pos];
            if b.final_bit() || r.received >= r.len {
                w.r2ts.remove(pos);
            }
        }
        if w.received >= w.edtl && w.r2ts.is_empty() {
            return Step::Ready(w.bhs, w.buf.into_bytes());
        }
        let r2ts = if w.unsolicited_done {
            self.r2ts(&mut w, tags)
        } else {
            Vec::new()
        };
        self.pending.insert(itt, w);
        Step::Collecting(r2ts)
    }

    /// R2Ts for `w`'s next bursts, as many as may be outstanding.
    fn r2ts(&self, w: &mut PendingWrite, tags: &mut TransferTags) -> Vec<OutPdu> {
        let mut pdus = Vec::new();
        while w.r2ts.len() < self.max_outstanding_r2t && w.next_r2t < w.edtl {
            let len = (w.edtl - w.next_r2t).min(self.max_burst);
            let ttt = tags.take();
            let mut r = response_header(op::R2T, w.bhs.itt());
            r.set_lun(w.bhs.lun());
            r.set_u32(20, ttt);
            r.set_u32(36, w.r2t_sn);
            r.set_u32(40, w.next_r2t as u32);
            r.set_u32(44, len as u32);
            w.r2ts.push_back(R2tState {
                ttt,
                offset: w.next_r2t,
                len,
                received: 0,
                next_datasn: 0,
            });
            w.r2t_sn += 1;
            w.next_r2t += len;
            pdus.push(OutPdu {
                bhs: r,
                data: Bytes::new(),
                sn: Sn::Current,
            });
        }
        pdus
    }

    /// Forgets the writes whose (ITT, LUN, CmdSN) match `pred`; returns their commands.
    pub(super) fn abort(&mut self, pred: impl Fn(u32, u64, u32) -> bool) -> Vec<Bhs> {
        let victims: Vec<u32> = self
            .pending
            .iter()
            .filter(|(itt, w)| pred(**itt, w.bhs.lun(), w.bhs.cmd_sn()))
            .map(|(itt, _)| *itt)
            .collect();
        victims
            .into_iter()
            .filter_map(|itt| self.pending.remove(&itt).map(|w| w.bhs))
            .collect()
    }

    /// Forgets every write collecting data.
    pub(super) fn clear(&mut self) {
        self.pending.clear();
    }
}

/// A write's data as it arrives, page-aligned because the kernel copies out of an aligned
/// buffer several times faster (store/buf.rs). It grows with the data received, not with
/// the length the command announced, so a command that never sends its data costs little.
struct WriteBuf {
    buf: AlignedBuf,
    /// Bytes up to here hold data; the rest is zeros.
    filled: usize,
    cap: usize,
}

impl WriteBuf {
    /// Up to this much is allocated at once; beyond, the buffer doubles as data arrives.
    const FIRST: usize = 1 << 20;

    fn new(edtl: usize) -> WriteBuf {
        WriteBuf {
            buf: AlignedBuf::zeroed(edtl.min(Self::FIRST)),
            filled: 0,
            cap: edtl,
        }
    }

    /// Stores `data` at `off`; the caller has checked that it ends within the length.
    fn put(&mut self, off: usize, data: &[u8]) {
        if off >= self.cap || data.is_empty() {
            return;
        }
        let end = (off + data.len()).min(self.cap);
        if end > self.buf.len() {
            let mut bigger = AlignedBuf::zeroed((self.buf.len() * 2).max(end).min(self.cap));
            bigger[..self.filled].copy_from_slice(&self.buf[..self.filled]);
            self.buf = bigger;
        }
        self.buf[off..end].copy_from_slice(&data[..end - off]);
        self.filled = self.filled.max(end);
    }

    fn into_bytes(self) -> Bytes {
        let n = self.filled;
        Bytes::from_owner(self.buf).slice(..n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(
        initial_r2t: bool,
        first_burst: u32,
        max_burst: u32,
        outstanding: u32,
    ) -> SessionParams {
        SessionParams {
            initial_r2t,
            first_burst_length: first_burst,
            max_burst_length: max_burst,
            max_outstanding_r2t: outstanding,
            ..SessionParams::default()
        }
    }

    fn write_cmd(itt: u32, edtl: u32, final_bit: bool) -> Bhs {
        let mut b = Bhs::new(op::SCSI_CMD);
        b.set_flags(0x20 | if final_bit { pdu::FLAG_FINAL } else { 0 });
        b.set_itt(itt);
        b.set_u32(20, edtl);
        b
    }

    fn data(itt: u32, ttt: u32, datasn: u32, off: usize, bytes: &[u8], final_bit: bool) -> Pdu {
        let mut b = Bhs::new(op::DATA_OUT);
        b.set_flags(if final_bit { pdu::FLAG_FINAL } else { 0 });
        b.set_itt(itt);
        b.set_u32(20, ttt);
        b.set_u32(36, datasn);
        b.set_u32(40, off as u32);
        b.set_data_len(bytes.len());
        Pdu {
            bhs: b,
            ahs: Bytes::new(),
            data: Bytes::copy_from_slice(bytes),
        }
    }

    /// (TTT, offset, length) of each R2T.
    fn r2ts(step: Step) -> Vec<(u32, u32, u32)> {
        match step {
            Step::Collecting(p) => p
                .iter()
                .map(|r| {
                    assert_eq!(r.bhs.opcode(), op::R2T);
                    (r.bhs.ttt(), r.bhs.u32_at(40), r.bhs.u32_at(44))
                })
                .collect(),
            _ => panic!("not collecting"),
        }
    }

    #[test]
    fn immediate_data_that_is_all_of_it_is_ready_at_once() {
        let mut w = Writes::new(&params(true, 65536, 262144, 1));
        let mut tags = TransferTags::new();
        match w.start(write_cmd(7, 4, true), b"abcd", &mut tags) {
            Step::Ready(b, d) => {
                assert_eq!(b.itt(), 7);
                assert_eq!(&d[..], b"abcd");
            }
            _ => panic!("not ready"),
        }
        assert!(!w.contains(7));
    }

    #[test]
    fn r2ts_solicit_the_rest_in_bursts_with_as_many_outstanding_as_negotiated() {
        let mut w = Writes::new(&params(true, 65536, 1024, 2));
        let mut tags = TransferTags::new();
        // 4 KiB, 1 KiB immediate: three bursts to solicit, two outstanding at once.
        let first = r2ts(w.start(write_cmd(1, 4096, true), &[1; 1024], &mut tags));
        assert_eq!(first, vec![(1, 1024, 1024), (2, 2048, 1024)]);
        assert!(w.contains(1));
        // The first burst answered (in two PDUs): its slot goes to the last burst.
        assert!(r2ts(w.data_out(&data(1, 1, 0, 1024, &[2; 512], false), &mut tags)).is_empty());
        let next = r2ts(w.data_out(&data(1, 1, 1, 1536, &[2; 512], true), &mut tags));
        assert_eq!(next, vec![(3, 3072, 1024)]);
        assert!(r2ts(w.data_out(&data(1, 3, 0, 3072, &[4; 1024], true), &mut tags)).is_empty());
        match w.data_out(&data(1, 2, 0, 2048, &[3; 1024], true), &mut tags) {
            Step::Ready(_, d) => {
                assert_eq!(d.len(), 4096);
                assert!(d[..1024].iter().all(|&x| x == 1));
                assert!(d[1024..2048].iter().all(|&x| x == 2));
                assert!(d[2048..3072].iter().all(|&x| x == 3));
                assert!(d[3072..].iter().all(|&x| x == 4));
            }
            _ => panic!("not ready"),
        }
        assert!(!w.contains(1));
    }

    #[test]
    fn unsolicited_data_comes_first_then_r2ts_for_the_rest() {
        let mut w = Writes::new(&params(false, 2048, 4096, 1));
        let mut tags = TransferTags::new();
        // No F bit: the first burst (2 KiB) follows unsolicited; nothing solicited yet.
        assert!(r2ts(w.start(write_cmd(5, 8192, false), &[0; 512], &mut tags)).is_empty());
        let sol = r2ts(w.data_out(&data(5, RESERVED_TAG, 0, 512, &[0; 1536], true), &mut tags));
        assert_eq!(sol, vec![(1, 2048, 4096)]);
    }

    #[test]
    fn data_out_of_order_fails_the_write_and_later_data_is_ignored() {
        let mut w = Writes::new(&params(true, 65536, 1024, 1));
        let mut tags = TransferTags::new();
        let r = r2ts(w.start(write_cmd(9, 2048, true), &[], &mut tags));
        assert_eq!(r, vec![(1, 0, 1024)]);
        // Skips the burst's first half.
        match w.data_out(&data(9, 1, 0, 512, &[0; 512], true), &mut tags) {
            Step::Failed(b, why) => {
                assert_eq!(b.itt(), 9);
                assert!(why.contains("out of order"), "{why}");
            }
            _ => panic!("not failed"),
        }
        assert!(matches!(
            w.data_out(&data(9, 1, 0, 0, &[0; 512], false), &mut tags),
            Step::Ignored
        ));
        // An unknown tag and data beyond the length fail too.
        let _ = w.start(write_cmd(10, 1024, true), &[], &mut tags);
        assert!(matches!(
            w.data_out(&data(10, 99, 0, 0, &[0; 16], false), &mut tags),
            Step::Failed(..)
        ));
        let _ = w.start(write_cmd(11, 1024, true), &[], &mut tags);
        assert!(matches!(
            w.data_out(&data(11, 3, 0, 1000, &[0; 100], false), &mut tags),
            Step::Failed(..)
        ));
    }

    #[test]
    fn a_write_larger_than_a_transfer_may_be_is_refused_and_aborts_forget_writes() {
        let mut w = Writes::new(&params(true, 65536, 262144, 1));
        let mut tags = TransferTags::new();
        assert!(matches!(
            w.start(write_cmd(1, (MAX_WRITE + 1) as u32, true), &[], &mut tags),
            Step::TooBig(_)
        ));
        assert!(!w.contains(1));
        let _ = w.start(write_cmd(2, 4096, true), &[], &mut tags);
        let _ = w.start(write_cmd(3, 4096, true), &[], &mut tags);
        let gone = w.abort(|itt, _, _| itt == 2);
        assert_eq!(gone.len(), 1);
        assert!(!w.contains(2) && w.contains(3));
        w.clear();
        assert!(!w.contains(3));
    }

    #[test]
    fn transfer_tags_skip_the_reserved_tag() {
        let mut t = TransferTags {
            next: RESERVED_TAG - 1,
        };
        assert_eq!(t.take(), RESERVED_TAG - 1);
        assert_eq!(t.take(), 1);
    }
}
