//! One TCP connection: the login phase, then the full-feature loop.
//!
//! Shape: this task reads PDUs (`wire.rs`) and dispatches them; a writer task owns the
//! socket's write half, StatSN and the ExpCmdSN/MaxCmdSN fields of everything sent
//! (`wire.rs`, `window.rs`). Commands that need not wait (hot reads, page-cache writes,
//! state queries; see `command::inline_candidate`) run right here between reads of the
//! socket; the others run in batches on the blocking pool, so commands of a connection
//! execute concurrently and complete in any order (`command.rs` runs one). Writes collect
//! their data first (`data_out.rs`: immediate, unsolicited, then R2T-solicited) and are
//! dispatched once it is all here. Memory per connection is bounded by the negotiated
//! lengths, the CmdSN window and the largest transfer.
//!
//! Bad input never panics: a malformed PDU gets a Reject, a PDU that breaks framing or a
//! header digest error drops the connection.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use super::command::{
    build_response, inline_candidate, response_header, run_command, DataIn, Sink, TaskState,
};
use super::context::ServerCtx;
use super::data_out::{Step, TransferTags, Writes};
use super::latency::Histogram;
use super::login::{Established, Login, SessionType};
use super::pdu::{self, op, reject, Bhs, FrameLimits, Pdu, RESERVED_TAG};
use super::prelogin::PreLoginGuard;
use super::scsi::opcode::{READ_10, READ_12, READ_16, READ_6};
use super::scsi::sense;
use super::scsi::{LogicalUnit, Nexus, Response};
use super::session::{sn_gt, sn_lt, SessionKey, Stop};
use super::text;
use super::tmf;
use super::window::Window;
use super::wire::{writer, Frame, Out, OutPdu, PduReader, Sn};
use crate::store::Wait;

fn set_keepalive(sock: &TcpStream, user_timeout: Duration) {
    let fd = sock.as_raw_fd();
    let set = |level: i32, name: i32, val: i32| {
        // SAFETY: setsockopt on a socket we own with a valid int option.
        unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                &val as *const i32 as *const libc::c_void,
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        }
    };
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 15);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 5);
    set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 4);
    // Data the initiator does not acknowledge for this long fails the socket: a peer that
    // stopped reading cannot keep a command (and its volume) in flight forever.
    let ms = user_timeout.as_millis().min(i32::MAX as u128) as i32;
    set(libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, ms);
    let _ = sock.set_nodelay(true);
}

/// Serves one accepted connection to its end. `place` is its pre-login place: given up
/// when the login ends; if it is evicted first, the connection closes.
pub async fn run(ctx: Arc<ServerCtx>, sock: TcpStream, peer: SocketAddr, place: PreLoginGuard) {
    set_keepalive(&sock, ctx.opts.nop_interval + ctx.opts.nop_timeout);
    let local = sock.local_addr().ok();
    let (rd, mut wr) = sock.into_split();
    let mut reader = PduReader::new(
        rd,
        FrameLimits {
            header_digest: false,
            data_digest: false,
            max_data: 8192,
        },
    );
    let mut login = Login::new(ctx.opts.limits.clone());
    let deadline = Instant::now() + ctx.opts.login_timeout;
    // ---- login phase ----
    let evicted = place.evicted.clone();
    let est: Established = loop {
        let next = tokio::select! {
            r = tokio::time::timeout_at(deadline, reader.next()) => r,
            _ = evicted.notified() => {
                tracing::debug!(%peer, "login: closed to make room for newer connections");
                return;
            }
        };
        let frame = match next {
            Ok(Ok(Some(Frame::Pdu(p)))) => {
                place.touch();
                p
            }
            Ok(Ok(None)) => return,
            Ok(Ok(Some(Frame::BadData(_)))) => return,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "login: connection dropped");
                return;
            }
            Err(_) => {
                tracing::info!(%peer, "login timed out");
                return;
            }
        };
        match login.step(&frame, &ctx.exports) {
            Ok(step) if !step.done => {
                let bytes = pdu::encode(&step.bhs, &step.data, false, false);
                if wr.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Ok(step) => {
                // Admit the session (reinstating an old one if needed), then answer.
                break match finish_login(&ctx, &login, step, &frame.bhs, &mut wr).await {
                    Some(e) => e,
                    None => return,
                };
            }
            Err(f) => {
                tracing::info!(%peer, initiator = ?login.initiator(), reason = %f.reason, "login refused");
                let b = login.failure_response(&frame.bhs, &f);
                let _ = wr.write_all(&pdu::encode(&b, &[], false, false)).await;
                let _ = wr.shutdown().await;
                return;
            }
        }
    };
    // Logged in (or about to be admitted): no longer a pre-login connection.
    drop(place);
    full_feature(ctx, reader, wr, est, peer, local).await;
}

/// Final login step: session admission, the LU, and the final response. Returns None when
/// the login failed (a failure response has been sent).
async fn finish_login<W: AsyncWrite + Unpin>(
    ctx: &Arc<ServerCtx>,
    login: &Login,
    step: super::login::Step,
    req: &Bhs,
    wr: &mut W,
) -> Option<Established> {
    let est = login.established(0)?;
    // Discovery sessions are not tracked (no reinstatement semantics matter for them).
    let tsih = if est.session_type == SessionType::Normal {
        // Pre-check the volume opens, so a failure is a login failure, not a dead session.
        if let Some(e) = &est.export {
            let c2 = ctx.clone();
            let e2 = e.clone();
            match tokio::task::spawn_blocking(move || c2.logical_unit(&e2)).await {
                Ok(Ok(_)) => {}
                Ok(Err(err)) => {
                    tracing::error!(volume = %e.volume, error = %err, "cannot open volume");
                    let f = super::login::LoginFailure {
                        class: 3,
                        detail: 1,
                        reason: err.to_string(),
                    };
                    let b = login.failure_response(req, &f);
                    let _ = wr.write_all(&pdu::encode(&b, &[], false, false)).await;
                    return None;
                }
                Err(_) => return None,
            }
        }
        login.requested_tsih()
    } else {
        0
    };
    let mut bhs = step.bhs;
    let mut est = est;
    est.tsih = tsih;
    bhs.set_u16(14, tsih);
    est.stat_sn = bhs.u32_at(24).wrapping_add(1);
    // Sent by `full_feature` once the session is admitted and its TSIH known.
    est.final_response = Some((bhs, step.data));
    Some(est)
}

async fn full_feature<R, W>(
    ctx: Arc<ServerCtx>,
    mut reader: PduReader<R>,
    mut wr: W,
    mut est: Established,
    peer: SocketAddr,
    local: Option<SocketAddr>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let Some((mut final_bhs, final_data)) = est.final_response.take() else {
        return;
    };
    // Admit (and reinstate) the session, then send the final login response. The exports
    // are brought up to date first, so a login is judged against the file as it is now.
    ctx.apply_exports(false).await;
    let admitted = match &est.export {
        Some(e) if est.session_type == SessionType::Normal => ctx
            .sessions
            .admit(
                SessionKey::new(&est.initiator, est.isid, &e.iqn),
                est.tsih,
                est.cid,
                e,
                peer,
            )
            .await
            .map(|g| (Some(g), None)),
        _ => ctx
            .sessions
            .admit_discovery(&est.initiator)
            .map(|d| (None, Some(d))),
    };
    let (guard, _discovery) = match admitted {
        Ok(g) => g,
        Err(f) => {
            final_bhs.set_flags(final_bhs.flags() & !0x83);
            final_bhs.0[36] = f.class;
            final_bhs.0[37] = f.detail;
            let _ = wr
                .write_all(&pdu::encode(&final_bhs, &[], false, false))
                .await;
            tracing::info!(%peer, initiator = %est.initiator, reason = %f.reason, "login refused");
            return;
        }
    };
    let tsih = guard.as_ref().map_or(1, |g| g.tsih);
    final_bhs.set_u16(14, tsih);
    // The final response opens the whole window, as everything sent later does. Linux's
    // iscsid, logging in again for a session its kernel keeps, does not wait for a wider
    // window than this response gives: with a window of one, its second queued command
    // could arrive before the first one's response widened it, and was ignored until the
    // kernel timed it out (an I/O error in the OS).
    let window = Arc::new(Window::new(est.cmd_sn, ctx.opts.queue_depth));
    final_bhs.set_u32(28, window.exp_cmd_sn());
    final_bhs.set_u32(32, window.stamp_max_cmd_sn());
    if wr
        .write_all(&pdu::encode(&final_bhs, &final_data, false, false))
        .await
        .is_err()
    {
        return;
    }
    let lu = match (&est.export, est.session_type) {
        (Some(e), SessionType::Normal) => match ctx.logical_unit(e) {
            Ok(lu) => Some(lu),
            Err(_) => return,
        },
        _ => None,
    };
    let p = est.params.clone();
    tracing::info!(
        %peer, initiator = %est.initiator,
        target = est.export.as_ref().map_or("(discovery)", |e| e.iqn.as_str()),
        tsih, header_digest = p.header_digest, data_digest = p.data_digest,
        max_send = p.max_send_data, "session started"
    );
    reader.lim = FrameLimits {
        header_digest: p.header_digest,
        data_digest: p.data_digest,
        max_data: p.max_recv_data as usize,
    };
    let (tx, rx) = mpsc::channel::<Out>(64);
    let (cut_tx, cut_rx) = tokio::sync::watch::channel(None);
    let w_task = tokio::spawn(writer(
        wr,
        rx,
        window.clone(),
        est.stat_sn,
        p.header_digest,
        p.data_digest,
        cut_rx,
    ));
    let nexus = Nexus {
        id: ctx.nexus_id(),
        initiator: est.initiator.clone(),
        isid: est.isid,
    };
    if let Some(lu) = &lu {
        lu.attach(&nexus);
    }
    let writes = Writes::new(&p);
    let mut conn = Conn {
        ctx: ctx.clone(),
        tx,
        window,
        params: p,
        lu: lu.clone(),
        nexus: nexus.clone(),
        session_type: est.session_type,
        initiator: est.initiator.clone(),
        target: est.export.as_ref().map(|e| e.iqn.clone()),
        local,
        tasks: Arc::new(Mutex::new(HashMap::new())),
        inflight: Arc::new((AtomicUsize::new(0), Notify::new())),
        writes,
        tags: TransferTags::new(),
        text_pending: None,
        batch: Vec::new(),
        out_pending: Vec::new(),
        batches: Arc::new((AtomicUsize::new(0), Notify::new())),
        io: SessionIo::default(),
    };
    let mut stop = guard.as_ref().map(|g| g.stop.clone());
    let mut shutdown = ctx.shutdown.clone();
    let mut last_rx = Instant::now();
    let mut ping: Option<(u32, Instant)> = None;
    let nop_interval = ctx.opts.nop_interval;
    let nop_timeout = ctx.opts.nop_timeout;
    // Set once the server is shutting down and has asked the initiator to log out.
    let mut logout_by: Option<Instant> = None;
    let mut revoked = false;
    let mut reinstated = false;
    let batch_done = conn.batches.clone();
    let batch_done = &batch_done.1;
    let reason: &str = loop {
        let next_tick = match ping {
            Some((_, sent)) => sent + nop_timeout,
            None => last_rx + nop_interval,
        };
        tokio::select! {
            f = reader.next() => {
                last_rx = Instant::now();
                // Handle this PDU and every other one already buffered, then run the
                // commands they carried as one batch (one hand-off to the I/O pool).
                let mut f = f;
                let stop_reason = loop {
                    match f {
                        Ok(Some(Frame::Pdu(pdu))) => {
                            if pdu.bhs.opcode() == op::NOP_OUT && pdu.bhs.itt() == RESERVED_TAG {
                                if let Some((ttt, _)) = ping {
                                    if pdu.bhs.ttt() == ttt {
                                        ping = None;
                                    }
                                }
                            }
                            match conn.handle(pdu).await {
                                Ok(Flow::Continue) => {}
                                Ok(Flow::Close(why)) => break Some(why),
                                Err(()) => break Some("writer gone"),
                            }
                        }
                        Ok(Some(Frame::BadData(bhs))) => {
                            tracing::warn!(%peer, "data digest error");
                            conn.flush_batch();
                            conn.reject(&bhs, reject::DATA_DIGEST_ERROR).await;
                        }
                        Ok(None) => break Some("closed by initiator"),
                        Err(e) => {
                            tracing::warn!(%peer, error = %e, "dropping connection");
                            break Some("protocol error");
                        }
                    }
                    f = match reader.try_next() {
                        Ok(None) => break None,
                        other => other,
                    };
                };
                if let Some(why) = stop_reason {
                    conn.flush_batch();
                    break why;
                }
                conn.maybe_flush_batch();
                if conn.send_pending().await.is_err() {
                    break "writer gone";
                }
            }
            _ = batch_done.notified() => conn.maybe_flush_batch(),
            _ = tokio::time::sleep_until(next_tick) => {
                match ping {
                    // Anything received since the ping shows the initiator alive (firmware
                    // such as iPXE never answers pings but keeps sending commands), and so
                    // does a command still running (its data may be what the initiator is
                    // busy reading; TCP_USER_TIMEOUT ends a peer that stopped reading).
                    Some((_, sent)) if last_rx > sent || conn.busy() => {
                        ping = None;
                        last_rx = last_rx.max(sent);
                    }
                    Some(_) => {
                        let n = ctx.nop_timeouts.fetch_add(1, Ordering::Relaxed) + 1;
                        tracing::warn!(
                            %peer, initiator = %est.initiator, nop_timeouts = n,
                            timeout_s = nop_timeout.as_secs(),
                            "no answer to a NOP-In ping: closing the connection"
                        );
                        break "initiator stopped answering NOP-In";
                    }
                    None => {
                        let ttt = conn.next_ttt();
                        let mut b = Bhs::new(op::NOP_IN);
                        b.set_flags(pdu::FLAG_FINAL);
                        b.set_itt(RESERVED_TAG);
                        b.set_u32(20, ttt);
                        if conn.tx.send(Out::one(b, Bytes::new(), Sn::Current)).await.is_err() {
                            break "writer gone";
                        }
                        ping = Some((ttt, Instant::now()));
                    }
                }
            }
            why = async { match stop.as_mut() { Some(s) => { let _ = s.changed().await; *s.borrow() } None => std::future::pending().await } } => {
                if why == Stop::Revoked {
                    revoked = true;
                    break "access revoked (export removed or changed)";
                }
                reinstated = true;
                break "session reinstated";
            }
            _ = shutdown.changed(), if logout_by.is_none() => {
                if est.session_type != SessionType::Normal {
                    break "server shutting down";
                }
                // Ask for a Logout (RFC 7143 §11.9.1, AsyncEvent 1) and serve on until it
                // comes, the initiator goes away, or the time given runs out.
                if conn.tx.send(logout_request(SHUTDOWN_LOGOUT_WAIT)).await.is_err() {
                    break "writer gone";
                }
                tracing::info!(%peer, initiator = %est.initiator, "shutting down: asked the initiator to log out");
                logout_by = Some(Instant::now() + SHUTDOWN_LOGOUT_WAIT);
            }
            _ = async { match logout_by { Some(t) => tokio::time::sleep_until(t).await, None => std::future::pending().await } } => {
                break "server shutting down: no logout in time";
            }
        }
    };
    // What the session carried (the boot tests check that the OS's session, not the
    // firmware's, carries the I/O once the OS has taken over).
    tracing::info!(
        %peer, initiator = %est.initiator, tsih, commands = conn.io.commands,
        read_bytes = conn.io.read_bytes, written_bytes = conn.io.written_bytes, reason,
        "session ending"
    );
    if logout_by.is_some() {
        let counter = if reason == "logout" {
            &ctx.shutdown_logouts
        } else {
            &ctx.shutdown_drops
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
    if revoked {
        // The initiator's access ends now: the writer sends the request to log out instead
        // of anything still queued and closes the socket; commands not yet answered are
        // aborted (what they still produce goes nowhere), gathered ones never run.
        let _ = cut_tx.send(Some(logout_request(Duration::ZERO).pdus.remove(0)));
        conn.abort_everything();
    } else if reinstated {
        // A new login took the session over: its old tasks end without a word (RFC 7143
        // §6.3.4, §6.3.5; the initiator issues them again on the new connection) and
        // nothing more is written to the old one. The initiator may have stopped reading
        // it without closing it; waiting to deliver the old responses there held the new
        // login (which waits for this session to end) until the socket timed out, longer
        // than the initiator's own login timeout.
        let _ = cut_tx.send(None);
        conn.abort_everything();
    }
    // In-flight commands finish and their responses go out before the socket closes.
    conn.drain().await;
    if let Some(lu) = &lu {
        lu.detach(&nexus);
    }
    drop(conn);
    let _ = w_task.await;
    drop(cut_tx);
    // The volume is released before the session counts as ended, so whoever waits for the
    // end (an unexport) finds it closed.
    drop(lu);
    drop(guard);
    ctx.release_unused_units().await;
}

/// How long a shutting-down server waits for an initiator to log out when asked.
const SHUTDOWN_LOGOUT_WAIT: Duration = Duration::from_secs(5);

/// Asynchronous Message, AsyncEvent 1: "target requests Logout" within `within` (whole
/// seconds, Parameter3). It carries status: it takes the next StatSN.
fn logout_request(within: Duration) -> Out {
    let mut b = Bhs::new(op::ASYNC);
    b.set_flags(pdu::FLAG_FINAL);
    b.set_itt(RESERVED_TAG);
    b.0[36] = 1; // AsyncEvent: logout requested
    b.set_u16(42, within.as_secs().min(u16::MAX as u64) as u16);
    Out::one(b, Bytes::new(), Sn::Advance)
}

pub enum Flow {
    Continue,
    Close(&'static str),
}

/// A session's I/O, counted as commands are dispatched: SCSI commands, the Data-In its
/// reads asked for (expected transfer lengths) and the Data-Out its writes delivered.
#[derive(Default)]
struct SessionIo {
    commands: u64,
    read_bytes: u64,
    written_bytes: u64,
}

struct TaskInfo {
    lun: u64,
    cmd_sn: u32,
    /// Set by task management: the task runs on, but sends nothing more.
    aborted: Arc<TaskState>,
}

pub struct Conn {
    ctx: Arc<ServerCtx>,
    pub tx: mpsc::Sender<Out>,
    window: Arc<Window>,
    params: text::SessionParams,
    lu: Option<Arc<LogicalUnit>>,
    nexus: Nexus,
    session_type: SessionType,
    initiator: String,
    target: Option<String>,
    local: Option<SocketAddr>,
    tasks: Arc<Mutex<HashMap<u32, TaskInfo>>>,
    inflight: Arc<(AtomicUsize, Notify)>,
    /// Writes collecting their Data-Out (`data_out.rs`).
    writes: Writes,
    tags: TransferTags,
    /// SendTargets text that did not fit in one response: (TTT, remaining bytes).
    text_pending: Option<(u32, Vec<u8>)>,
    /// Small commands gathered from the PDUs of one socket read, run as one job.
    batch: Vec<Job>,
    /// Responses of commands run on this task, sent before the next PDU is read.
    out_pending: Vec<OutPdu>,
    /// Batches running, and the signal that one finished.
    batches: Arc<(AtomicUsize, Notify)>,
    io: SessionIo,
}

/// A command ready to run: its PDU header, Data-Out, abort flag, and when it arrived.
struct Job {
    bhs: Bhs,
    data: Bytes,
    aborted: Arc<TaskState>,
    since: std::time::Instant,
}

/// Commands moving at most this many bytes are batched; larger ones run on their own.
const BATCH_MAX_BYTES: usize = 256 * 1024;
/// Batches of one connection running at once. While they run, new commands gather into
/// the next batch: under load batches grow and hand-offs per command shrink, while a lone
/// command (firmware's queue depth of one) still starts at once.
const MAX_BATCHES: usize = 3;

/// MAX_BATCHES, or STRATA_ISCSI_MAX_BATCHES (for measurements).
fn max_batches() -> usize {
    static V: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *V.get_or_init(|| {
        std::env::var("STRATA_ISCSI_MAX_BATCHES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(MAX_BATCHES)
    })
}

/// Whether small commands may run on the connection's task (see `inline_candidate`); on unless
/// STRATA_ISCSI_INLINE=0 (for measurements).
fn inline_enabled() -> bool {
    static V: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *V.get_or_init(|| std::env::var("STRATA_ISCSI_INLINE").map_or(true, |v| v != "0"))
}

impl Conn {
    fn next_ttt(&mut self) -> u32 {
        self.tags.take()
    }

    async fn send(&self, out: Out) -> Result<(), ()> {
        self.tx.send(out).await.map_err(|_| ())
    }

    pub async fn reject(&self, bhs: &Bhs, reason: u8) {
        let mut b = response_header(op::REJECT, RESERVED_TAG);
        b.0[2] = reason;
        let _ = self
            .send(Out::one(b, Bytes::copy_from_slice(&bhs.0), Sn::Advance))
            .await;
    }

    /// Applies CmdSN windowing to a non-immediate PDU; false when it must be ignored.
    fn accept_cmd_sn(&self, bhs: &Bhs) -> bool {
        if bhs.immediate() {
            return true;
        }
        let sn = bhs.cmd_sn();
        let exp = self.window.exp_cmd_sn();
        let max = self.window.advertised_max_cmd_sn();
        if sn_lt(sn, exp) || sn_gt(sn, max) {
            // Silently ignored (RFC 7143 §3.2.2.1), so the initiator waits for it until its
            // own timeout: say so in the log.
            tracing::warn!(initiator = %self.initiator, sn, exp, max, "CmdSN outside window: ignored");
            return false;
        }
        // One connection per session: commands arrive in order; a gap cannot be filled
        // later, so the window moves past it.
        let mut n = sn.wrapping_sub(exp);
        while n > 0 {
            self.window.arrive();
            self.window.complete();
            n -= 1;
        }
        self.window.arrive();
        true
    }

    fn data_in(&self) -> DataIn {
        DataIn {
            pdu: self.params.max_send_data as usize,
            burst: self.params.max_burst_length as usize,
        }
    }

    fn complete_non_scsi(&self, bhs: &Bhs) {
        if !bhs.immediate() {
            self.window.complete();
        }
    }

    pub async fn handle(&mut self, pdu: Pdu) -> Result<Flow, ()> {
        let b = &pdu.bhs;
        if !matches!(b.opcode(), op::SCSI_CMD | op::DATA_OUT) {
            // Task management, logout and the rest see every earlier command dispatched.
            self.flush_batch();
            self.send_pending().await?;
        }
        match b.opcode() {
            op::SCSI_CMD => {
                if self.session_type != SessionType::Normal {
                    self.reject(b, reject::PROTOCOL_ERROR).await;
                    return Ok(Flow::Continue);
                }
                if !self.accept_cmd_sn(b) {
                    return Ok(Flow::Continue);
                }
                self.scsi_command(pdu).await?;
            }
            op::DATA_OUT => return self.data_out(pdu).await,
            op::NOP_OUT => {
                if b.itt() != RESERVED_TAG {
                    if !self.accept_cmd_sn(b) {
                        return Ok(Flow::Continue);
                    }
                    let mut r = response_header(op::NOP_IN, b.itt());
                    r.set_lun(b.lun());
                    r.set_u32(20, RESERVED_TAG);
                    self.complete_non_scsi(b);
                    let data = pdu
                        .data
                        .slice(..pdu.data.len().min(self.params.max_send_data as usize));
                    self.send(Out::one(r, data, Sn::Advance)).await?;
                }
            }
            op::TEXT_REQ => {
                if !self.accept_cmd_sn(b) {
                    return Ok(Flow::Continue);
                }
                self.text(pdu).await?;
            }
            op::TMF_REQ => {
                if !self.accept_cmd_sn(b) {
                    return Ok(Flow::Continue);
                }
                let resp = tmf::execute(self, b).await;
                // Task management means the initiator gave up waiting on something: worth
                // a line when a boot goes wrong.
                tracing::info!(
                    initiator = %self.initiator, function = b.flags() & 0x7f,
                    referenced_itt = b.u32_at(20), response = resp.code, "task management"
                );
                self.complete_non_scsi(b);
                let mut r = response_header(op::TMF_RESP, b.itt());
                r.0[2] = resp.code;
                self.send(Out::one(r, Bytes::new(), Sn::Advance)).await?;
                if resp.close {
                    return Ok(Flow::Close("target cold reset"));
                }
            }
            op::LOGOUT_REQ => {
                if !self.accept_cmd_sn(b) {
                    return Ok(Flow::Continue);
                }
                let reason = b.flags() & 0x7f;
                self.drain().await;
                self.complete_non_scsi(b);
                let mut r = response_header(op::LOGOUT_RESP, b.itt());
                // Reason 2 (remove connection for recovery) is meaningless at ERL 0.
                r.0[2] = if reason == 2 { 2 } else { 0 };
                r.set_u16(40, self.params.default_time2wait as u16);
                r.set_u16(42, self.params.default_time2retain as u16);
                self.send(Out::one(r, Bytes::new(), Sn::Advance)).await?;
                return Ok(Flow::Close("logout"));
            }
            op::SNACK => self.reject(b, reject::COMMAND_NOT_SUPPORTED).await,
            op::LOGIN_REQ => {
                self.reject(b, reject::PROTOCOL_ERROR).await;
                return Ok(Flow::Close("login PDU in full feature phase"));
            }
            _ => self.reject(b, reject::COMMAND_NOT_SUPPORTED).await,
        }
        Ok(Flow::Continue)
    }

    async fn scsi_command(&mut self, pdu: Pdu) -> Result<(), ()> {
        let b = pdu.bhs.clone();
        let flags = b.flags();
        let write = flags & 0x20 != 0;
        let edtl = b.u32_at(20) as usize;
        let itt = b.itt();
        if self.tasks.lock().contains_key(&itt) || self.writes.contains(itt) {
            self.reject(&b, reject::TASK_IN_PROGRESS).await;
            return Ok(());
        }
        let imm = pdu.data.len();
        if imm > 0
            && (!self.params.immediate_data
                || !write
                || imm > edtl
                || imm > self.params.first_burst_length as usize)
        {
            self.reject(&b, reject::PROTOCOL_ERROR).await;
            if !b.immediate() {
                self.window.complete();
            }
            return Ok(());
        }
        if write && edtl > 0 {
            let step = self.writes.start(b, &pdu.data, &mut self.tags);
            return self.collected(step).await;
        }
        self.dispatch(b, pdu.data);
        Ok(())
    }

    /// One Data-Out PDU (`data_out.rs` checks and collects it).
    async fn data_out(&mut self, pdu: Pdu) -> Result<Flow, ()> {
        let step = self.writes.data_out(&pdu, &mut self.tags);
        self.collected(step).await?;
        Ok(Flow::Continue)
    }

    /// Acts on a step of a write's data collection.
    async fn collected(&mut self, step: Step) -> Result<(), ()> {
        match step {
            Step::Ready(bhs, data) => self.dispatch(bhs, data),
            Step::Collecting(r2ts) => {
                if !r2ts.is_empty() {
                    self.send(Out { pdus: r2ts }).await?;
                }
            }
            Step::TooBig(b) => {
                // Too big to buffer: fail it (the data that follows is ignored).
                let resp = Response::check(sense::invalid_cdb_field(0, None));
                self.finish_response(&b, resp, 0).await?;
                if !b.immediate() {
                    self.window.complete();
                }
            }
            Step::Failed(b, why) => self.fail_data_phase(&b, why).await?,
            Step::Ignored => tracing::debug!("Data-Out for no pending write"),
        }
        Ok(())
    }

    async fn fail_data_phase(&mut self, cmd: &Bhs, why: &str) -> Result<(), ()> {
        tracing::warn!(itt = cmd.itt(), why, "failing write");
        let resp = Response::check(sense::DATA_PHASE_ERROR);
        self.send(build_response(cmd, resp, self.data_in())).await?;
        if !cmd.immediate() {
            self.window.complete();
        }
        Ok(())
    }

    /// Runs a command (its data collected) on its own task.
    fn dispatch(&mut self, bhs: Bhs, data_out: Bytes) {
        self.io.commands += 1;
        if bhs.flags() & 0x40 != 0 {
            self.io.read_bytes += bhs.u32_at(20) as u64;
        }
        self.io.written_bytes += data_out.len() as u64;
        let aborted = Arc::new(TaskState::default());
        self.inflight.0.fetch_add(1, Ordering::AcqRel);
        self.tasks.lock().insert(
            bhs.itt(),
            TaskInfo {
                lun: bhs.lun(),
                cmd_sn: bhs.cmd_sn(),
                aborted: aborted.clone(),
            },
        );
        let big = bhs.u32_at(20) as usize > BATCH_MAX_BYTES;
        let job = Job {
            bhs,
            data: data_out,
            aborted,
            since: std::time::Instant::now(),
        };
        if big {
            self.flush_batch();
            self.spawn_jobs(vec![job], false);
        } else {
            self.batch.push(job);
        }
    }

    /// Runs the gathered small commands now: on this task those that cannot wait for long,
    /// the rest as one batch on the blocking pool.
    pub fn flush_batch(&mut self) {
        self.run_inline();
        if !self.batch.is_empty() {
            let jobs = std::mem::take(&mut self.batch);
            self.batches.0.fetch_add(1, Ordering::AcqRel);
            self.spawn_jobs(jobs, true);
        }
    }

    /// Runs the gathered small commands unless enough batches are running already (the
    /// end of one calls this again).
    pub fn maybe_flush_batch(&mut self) {
        self.run_inline();
        if self.batches.0.load(Ordering::Acquire) < max_batches() {
            self.flush_batch();
        }
    }

    /// Runs the gathered commands that can run on this task without waiting (see
    /// `inline_candidate`), leaving the others
    /// in the batch. Their responses wait in `out_pending` for `send_pending`.
    fn run_inline(&mut self) {
        if !inline_enabled() || self.batch.is_empty() {
            return;
        }
        let jobs = std::mem::take(&mut self.batch);
        let max_send = self.data_in();
        let collect = RefCell::new(std::mem::take(&mut self.out_pending));
        let mut done = Vec::new();
        for j in jobs {
            let sink = Sink {
                tx: &self.tx,
                aborted: &j.aborted,
                collect: Some(&collect),
            };
            let ran = inline_candidate(self.lu.as_deref(), &j.bhs)
                && run_command(
                    self.lu.clone(),
                    &self.nexus,
                    &j.bhs,
                    &j.data,
                    &sink,
                    max_send,
                    Wait::No,
                );
            if ran {
                done.push(j);
            } else {
                self.batch.push(j);
            }
        }
        self.out_pending = collect.into_inner();
        record_reads(&done, &self.ctx.read_latency);
        finish_jobs(&done, &self.tasks, &self.window, &self.inflight);
    }

    /// Queues the responses of the commands run on this task. Awaited before the next PDU
    /// is read, so a slow initiator holds back its own commands, not the server's memory.
    async fn send_pending(&mut self) -> Result<(), ()> {
        if self.out_pending.is_empty() {
            return Ok(());
        }
        let pdus = std::mem::take(&mut self.out_pending);
        self.send(Out { pdus }).await
    }

    /// One hand-off to the blocking pool for `jobs`: each runs from CDB to response; the
    /// responses of a batch go to the writer together. A single large read streams.
    fn spawn_jobs(&self, jobs: Vec<Job>, counted: bool) {
        let batches = self.batches.clone();
        let lu = self.lu.clone();
        let nexus = self.nexus.clone();
        let tx = self.tx.clone();
        let window = self.window.clone();
        let max_send = self.data_in();
        let tasks = self.tasks.clone();
        let inflight = self.inflight.clone();
        let ctx = self.ctx.clone();
        tokio::task::spawn_blocking(move || {
            let collect = (jobs.len() > 1).then(|| RefCell::new(Vec::new()));
            for j in &jobs {
                let sink = Sink {
                    tx: &tx,
                    aborted: &j.aborted,
                    collect: collect.as_ref(),
                };
                let ran = run_command(
                    lu.clone(),
                    &nexus,
                    &j.bhs,
                    &j.data,
                    &sink,
                    max_send,
                    Wait::Yes,
                );
                debug_assert!(ran, "a command that may wait always answers");
            }
            if let Some(c) = collect {
                let pdus = c.into_inner();
                if !pdus.is_empty() {
                    let _ = tx.blocking_send(Out { pdus });
                }
            }
            record_reads(&jobs, &ctx.read_latency);
            finish_jobs(&jobs, &tasks, &window, &inflight);
            if counted {
                batches.0.fetch_sub(1, Ordering::AcqRel);
                batches.1.notify_one();
            }
        });
    }

    async fn finish_response(&self, b: &Bhs, resp: Response, _unused: usize) -> Result<(), ()> {
        let out = build_response(b, resp, self.data_in());
        self.send(out).await
    }

    /// Waits until no command of this connection is in flight.
    pub async fn drain(&mut self) {
        self.flush_batch();
        let _ = self.send_pending().await;
        self.writes.clear();
        loop {
            let n = self.inflight.1.notified();
            if self.inflight.0.load(Ordering::Acquire) == 0 {
                return;
            }
            n.await;
        }
    }

    /// Aborts tasks matching `pred` and waits until they are gone; returns how many.
    /// Aborted tasks send no response (RFC 7143 §4.2.3.3) and count as completed for the
    /// CmdSN window.
    pub async fn abort_tasks(&mut self, pred: impl Fn(u32, u64, u32) -> bool) -> usize {
        let mut n = 0;
        for b in self.writes.abort(&pred) {
            if !b.immediate() {
                self.window.complete();
            }
            n += 1;
        }
        let running: Vec<u32> = {
            let tasks = self.tasks.lock();
            tasks
                .iter()
                .filter(|(itt, t)| pred(**itt, t.lun, t.cmd_sn))
                // A task that has begun to answer is not aborted: its response goes out.
                .filter(|(_, t)| t.aborted.abort())
                .map(|(itt, _)| *itt)
                .collect()
        };
        n += running.len();
        loop {
            let notified = self.inflight.1.notified();
            if !running.iter().any(|i| self.tasks.lock().contains_key(i)) {
                break;
            }
            notified.await;
        }
        n
    }

    /// Whether a command of this connection is running.
    fn busy(&self) -> bool {
        self.inflight.0.load(Ordering::Acquire) > 0
    }

    /// Revocation: gathered commands are dropped unrun, writes collecting data forgotten,
    /// and running ones marked aborted (even those that began to answer: nothing more of
    /// them reaches the writer, which is closing anyway). `drain` then waits for them.
    fn abort_everything(&mut self) {
        let dropped = std::mem::take(&mut self.batch);
        finish_jobs(&dropped, &self.tasks, &self.window, &self.inflight);
        self.out_pending.clear();
        self.writes.clear();
        for t in self.tasks.lock().values() {
            t.aborted.abort();
        }
    }

    pub fn has_task(&self, itt: u32) -> bool {
        self.tasks.lock().contains_key(&itt) || self.writes.contains(itt)
    }

    pub fn lu(&self) -> Option<&Arc<LogicalUnit>> {
        self.lu.as_ref()
    }

    pub fn nexus_id(&self) -> u64 {
        self.nexus.id
    }

    pub fn exp_cmd_sn(&self) -> u32 {
        self.window.exp_cmd_sn()
    }

    async fn text(&mut self, pdu: Pdu) -> Result<(), ()> {
        let b = &pdu.bhs;
        let max = self.params.max_send_data as usize;
        let body: Vec<u8> = if b.ttt() != RESERVED_TAG {
            // Continuation of a long SendTargets answer.
            match self.text_pending.take() {
                Some((t, rest)) if t == b.ttt() => rest,
                _ => {
                    self.complete_non_scsi(b);
                    self.reject(b, reject::INVALID_PDU_FIELD).await;
                    return Ok(());
                }
            }
        } else {
            self.text_pending = None;
            let pairs = match text::parse_pairs(&pdu.data) {
                Ok(p) => p,
                Err(_) => {
                    self.complete_non_scsi(b);
                    self.reject(b, reject::PROTOCOL_ERROR).await;
                    return Ok(());
                }
            };
            let mut out: Vec<(String, String)> = Vec::new();
            for (k, v) in pairs {
                if k == "SendTargets" {
                    out.extend(self.send_targets(&v));
                } else {
                    out.push((k, "NotUnderstood".into()));
                }
            }
            text::encode_pairs(&out)
        };
        let mut r = response_header(op::TEXT_RESP, b.itt());
        let data = if body.len() > max {
            let ttt = self.next_ttt();
            self.text_pending = Some((ttt, body[max..].to_vec()));
            r.set_flags(0x40); // C, not F
            r.set_u32(20, ttt);
            Bytes::copy_from_slice(&body[..max])
        } else {
            r.set_u32(20, RESERVED_TAG);
            Bytes::from(body)
        };
        self.complete_non_scsi(b);
        self.send(Out::one(r, data, Sn::Advance)).await
    }

    fn send_targets(&self, which: &str) -> Vec<(String, String)> {
        let addr = match self.local {
            Some(SocketAddr::V4(a)) => format!("{}:{},1", a.ip(), a.port()),
            Some(SocketAddr::V6(a)) => format!("[{}]:{},1", a.ip(), a.port()),
            None => String::new(),
        };
        let exports = self.ctx.exports.current();
        let mut out = Vec::new();
        for e in exports.iter() {
            let wanted = match (which, self.session_type) {
                ("All", SessionType::Discovery) => true,
                ("", SessionType::Normal) => self
                    .target
                    .as_deref()
                    .is_some_and(|t| t.eq_ignore_ascii_case(&e.iqn)),
                (name, _) => name.eq_ignore_ascii_case(&e.iqn),
            };
            if wanted && e.allows(&self.initiator) {
                out.push(("TargetName".to_string(), e.iqn.clone()));
                if !addr.is_empty() {
                    out.push(("TargetAddress".to_string(), addr.clone()));
                }
            }
        }
        out
    }
}

/// Notes the service time of the reads among `jobs`, which have just been answered.
fn record_reads(jobs: &[Job], h: &Histogram) {
    for j in jobs {
        if matches!(j.bhs.0[32], READ_6 | READ_10 | READ_12 | READ_16) {
            h.record(j.since.elapsed());
        }
    }
}

/// The bookkeeping after commands have answered: their CmdSN slots open the window again,
/// and task management and `drain` stop waiting for them.
fn finish_jobs(
    jobs: &[Job],
    tasks: &Mutex<HashMap<u32, TaskInfo>>,
    window: &Window,
    inflight: &(AtomicUsize, Notify),
) {
    if jobs.is_empty() {
        return;
    }
    let mut t = tasks.lock();
    for j in jobs {
        if !j.bhs.immediate() {
            window.complete();
        }
        t.remove(&j.bhs.itt());
    }
    drop(t);
    inflight.0.fetch_sub(jobs.len(), Ordering::AcqRel);
    // Wakes `drain` and task-management waits.
    inflight.1.notify_waiters();
}

impl tmf::Tasks for Conn {
    fn has_task(&self, itt: u32) -> bool {
        Conn::has_task(self, itt)
    }

    fn lu(&self) -> Option<&Arc<LogicalUnit>> {
        Conn::lu(self)
    }

    fn exp_cmd_sn(&self) -> u32 {
        Conn::exp_cmd_sn(self)
    }

    fn abort_tasks(
        &mut self,
        pred: impl Fn(u32, u64, u32) -> bool + Send,
    ) -> impl std::future::Future<Output = usize> + Send {
        Conn::abort_tasks(self, pred)
    }
}
