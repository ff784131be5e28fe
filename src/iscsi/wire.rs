//! Bytes in and out of one connection's socket: `PduReader` cuts the incoming stream into
//! PDUs (checking digests and lengths), and the writer task sends what the connection and
//! its commands queue (`Out`), filling in StatSN, ExpCmdSN and MaxCmdSN as each PDU leaves,
//! with vectored writes straight from the PDUs' own buffers.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::pdu::{self, Bhs, FrameLimits, Pdu, PduError};
use super::window::Window;

const READ_BUF_INITIAL: usize = 16 * 1024;
const READ_BUF_IDLE_MAX: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad PDU: {0}")]
    Pdu(#[from] PduError),
    #[error("connection closed mid-PDU")]
    Truncated,
    #[error("login timed out")]
    LoginTimeout,
}

/// Reads whole PDUs from a byte stream.
pub struct PduReader<R> {
    rd: R,
    buf: BytesMut,
    pub lim: FrameLimits,
}

pub enum Frame {
    Pdu(Pdu),
    /// A PDU whose data digest failed: its header, to be rejected.
    BadData(Bhs),
}

impl<R: AsyncRead + Unpin> PduReader<R> {
    pub fn new(rd: R, lim: FrameLimits) -> Self {
        PduReader {
            rd,
            buf: BytesMut::with_capacity(READ_BUF_INITIAL),
            lim,
        }
    }

    /// A PDU already in the buffer, without reading the socket.
    pub fn try_next(&mut self) -> Result<Option<Frame>, ConnError> {
        if pdu::check(&self.buf, &self.lim)?.is_none() {
            return Ok(None);
        }
        self.take()
    }

    /// The next PDU, or `None` at a clean end of stream.
    pub async fn next(&mut self) -> Result<Option<Frame>, ConnError> {
        loop {
            if pdu::check(&self.buf, &self.lim)?.is_some() {
                return self.take();
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(64 * 1024);
            }
            if self.rd.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ConnError::Truncated)
                };
            }
        }
    }

    fn take(&mut self) -> Result<Option<Frame>, ConnError> {
        let Some(n) = pdu::check(&self.buf, &self.lim)? else {
            return Ok(None);
        };
        let frame = self.buf.split_to(n).freeze();
        if self.buf.is_empty() && self.buf.capacity() > READ_BUF_IDLE_MAX {
            self.buf = BytesMut::with_capacity(READ_BUF_INITIAL);
        }
        match pdu::parse(frame.clone(), &self.lim) {
            Ok(p) => Ok(Some(Frame::Pdu(p))),
            Err(PduError::DataDigest { .. }) => Ok(Some(Frame::BadData(
                Bhs::from_slice(&frame).ok_or(ConnError::Truncated)?,
            ))),
            Err(e) => Err(e.into()),
        }
    }
}

/// How the writer fills StatSN into an outgoing PDU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sn {
    /// Carries status: gets the next StatSN, which then advances.
    Advance,
    /// Carries the current StatSN without advancing (R2T, NOP-In pings).
    Current,
    /// StatSN is reserved (Data-In without status).
    Reserved,
}

#[derive(Clone)]
pub struct OutPdu {
    pub bhs: Bhs,
    /// The data segment (usually a slice of a larger read buffer).
    pub data: Bytes,
    pub sn: Sn,
}

/// One message to the writer: PDUs to send in order, possibly of several commands.
pub struct Out {
    pub pdus: Vec<OutPdu>,
}

impl Out {
    pub fn one(bhs: Bhs, data: Bytes, sn: Sn) -> Out {
        Out {
            pdus: vec![OutPdu { bhs, data, sn }],
        }
    }
}

/// What the writer is told when a session's access is revoked: send this PDU (the
/// Asynchronous Message asking for logout) instead of anything still queued, then close.
pub(super) type Cut = tokio::sync::watch::Receiver<Option<OutPdu>>;

/// How long a write already under way when the session is revoked may take to finish (a
/// PDU cannot be cut in half) before the socket is closed without the logout request.
const CUT_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

pub(super) async fn writer<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::Receiver<Out>,
    window: Arc<Window>,
    mut stat_sn: u32,
    hd: bool,
    dd: bool,
    mut cut: Cut,
) -> std::io::Result<()> {
    let mut frames: Vec<(pdu::Framing, Bytes)> = Vec::new();
    let mut cut_open = true;
    let stamp = |p: OutPdu, stat_sn: &mut u32, frames: &mut Vec<(pdu::Framing, Bytes)>| {
        let mut bhs = p.bhs;
        match p.sn {
            Sn::Advance => {
                bhs.set_u32(24, *stat_sn);
                *stat_sn = stat_sn.wrapping_add(1);
            }
            Sn::Current => bhs.set_u32(24, *stat_sn),
            Sn::Reserved => {}
        }
        bhs.set_u32(28, window.exp_cmd_sn());
        bhs.set_u32(32, window.stamp_max_cmd_sn());
        frames.push((pdu::frame(&bhs, &p.data, hd, dd), p.data));
    };
    let last = loop {
        let mut msg = tokio::select! {
            biased;
            r = cut.changed(), if cut_open => match r {
                Ok(()) => break cut.borrow_and_update().clone(),
                Err(_) => { cut_open = false; continue; }
            },
            m = rx.recv() => match m {
                Some(m) => m,
                None => return wr.shutdown().await,
            },
        };
        loop {
            for p in msg.pdus.drain(..) {
                stamp(p, &mut stat_sn, &mut frames);
            }
            if frames.len() >= WRITE_FRAMES {
                break;
            }
            match rx.try_recv() {
                Ok(m) => msg = m,
                Err(_) => break,
            }
        }
        let (cut_now, framed) = {
            let w = write_frames(&mut wr, &frames);
            tokio::pin!(w);
            tokio::select! {
                r = &mut w => { r?; (None, true) }
                r = cut.changed(), if cut_open => {
                    // A PDU cannot be cut in half: the write under way may finish (briefly)
                    // so the logout request that follows is read as a PDU.
                    let framed = matches!(tokio::time::timeout(CUT_GRACE, &mut w).await, Ok(Ok(())));
                    (Some(r), framed)
                }
            }
        };
        frames.clear();
        match cut_now {
            Some(Ok(())) => {
                let last = cut.borrow_and_update().clone();
                break if framed { last } else { None };
            }
            Some(Err(_)) => break None,
            None => {}
        }
    };
    // Revoked: nothing still queued goes out (commands in flight are aborted), only the
    // request to log out, then the socket closes.
    drop(rx);
    if let Some(p) = last {
        stamp(p, &mut stat_sn, &mut frames);
        let _ = tokio::time::timeout(CUT_GRACE, write_frames(&mut wr, &frames)).await;
    }
    let _ = tokio::time::timeout(CUT_GRACE, wr.shutdown()).await;
    Ok(())
}

/// PDUs gathered into one write at most.
const WRITE_FRAMES: usize = 128;

/// Writes PDUs with vectored writes straight from their buffers: Data-In leaves from the
/// buffer it was read into, without another copy on its way to the socket.
async fn write_frames<W: AsyncWrite + Unpin>(
    wr: &mut W,
    frames: &[(pdu::Framing, Bytes)],
) -> std::io::Result<()> {
    let mut slices = Vec::with_capacity(frames.len() * 3);
    for (f, data) in frames {
        slices.push(std::io::IoSlice::new(f.head()));
        if !data.is_empty() {
            slices.push(std::io::IoSlice::new(data));
        }
        if !f.tail().is_empty() {
            slices.push(std::io::IoSlice::new(f.tail()));
        }
    }
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        // Well under IOV_MAX (1024).
        let n = rest.len().min(512);
        let written = wr.write_vectored(&rest[..n]).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        std::io::IoSlice::advance_slices(&mut rest, written);
    }
    Ok(())
}
