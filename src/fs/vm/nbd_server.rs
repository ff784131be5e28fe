//! Serves the worker's devices (partitions, logical volumes: windows onto the staged volume)
//! to QEMU over NBD on a unix socket, one thread per connection. The guest's writes become
//! `write_at` on the device, so they land in the volume's delta inside this process; the
//! guest's flushes are acknowledged and do nothing more, since the store is flushed by the
//! worker alone, once the whole job has succeeded.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;

use crate::store::device::SharedDevice;

use super::nbd::*;

pub type Exports = Arc<HashMap<String, SharedDevice>>;

/// Accepts connections on `listener` for as long as this process lives.
pub fn spawn(listener: UnixListener, exports: Exports) -> io::Result<()> {
    std::thread::Builder::new()
        .name("nbd-accept".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let exports = exports.clone();
                let _ = std::thread::Builder::new()
                    .name("nbd-conn".into())
                    .spawn(move || {
                        if let Err(e) = serve(conn, &exports) {
                            tracing::debug!("nbd connection ended: {e}");
                        }
                    });
            }
        })
        .map(drop)
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// One connection: the handshake, then requests until the client disconnects.
pub fn serve(conn: UnixStream, exports: &HashMap<String, SharedDevice>) -> io::Result<()> {
    let mut r = io::BufReader::new(&conn);
    let mut w = io::BufWriter::new(&conn);
    w.write_all(&greeting())?;
    w.flush()?;
    let mut cflags = [0u8; 4];
    r.read_exact(&mut cflags)?;
    let no_zeroes = u32::from_be_bytes(cflags) & CLIENT_FLAG_NO_ZEROES != 0;
    let dev = loop {
        let mut h = [0u8; 16];
        r.read_exact(&mut h)?;
        let (opt, len) = parse_option_header(&h).ok_or_else(|| bad("option without IHAVEOPT"))?;
        if len > 65536 {
            return Err(bad("option data too long"));
        }
        let mut data = vec![0u8; len as usize];
        r.read_exact(&mut data)?;
        match opt {
            OPT_EXPORT_NAME => {
                let Some(dev) = exports.get(&*String::from_utf8_lossy(&data)) else {
                    return Err(bad("unknown export"));
                };
                w.write_all(&export_name_reply(
                    dev.len(),
                    transmission_flags(dev.is_read_only()),
                    no_zeroes,
                ))?;
                w.flush()?;
                break dev.clone();
            }
            OPT_GO | OPT_INFO => {
                let Some(name) = go_export_name(&data) else {
                    w.write_all(&option_reply(opt, REP_ERR_INVALID, &[]))?;
                    w.flush()?;
                    continue;
                };
                let Some(dev) = exports.get(&*String::from_utf8_lossy(name)) else {
                    w.write_all(&option_reply(opt, REP_ERR_UNKNOWN, &[]))?;
                    w.flush()?;
                    continue;
                };
                let flags = transmission_flags(dev.is_read_only());
                w.write_all(&option_reply(opt, REP_INFO, &info_export(dev.len(), flags)))?;
                w.write_all(&option_reply(opt, REP_INFO, &info_block_size()))?;
                w.write_all(&option_reply(opt, REP_ACK, &[]))?;
                w.flush()?;
                if opt == OPT_GO {
                    break dev.clone();
                }
            }
            OPT_ABORT => {
                w.write_all(&option_reply(opt, REP_ACK, &[]))?;
                w.flush()?;
                return Ok(());
            }
            _ => {
                w.write_all(&option_reply(opt, REP_ERR_UNSUP, &[]))?;
                w.flush()?;
            }
        }
    };
    transmit(&mut r, &mut w, &dev)
}

fn transmit(r: &mut impl Read, w: &mut impl Write, dev: &SharedDevice) -> io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let mut h = [0u8; 28];
        r.read_exact(&mut h)?;
        let req = parse_request(&h).ok_or_else(|| bad("request without its magic"))?;
        if req.len > MAX_PAYLOAD {
            return Err(bad("request too long"));
        }
        let in_range = req
            .offset
            .checked_add(req.len as u64)
            .is_some_and(|e| e <= dev.len());
        let errno = |e: crate::store::StoreError| nbd_errno(crate::fs::FsError::from(e).errno);
        match req.kind {
            CMD_READ => {
                buf.resize(req.len as usize, 0);
                let e = if !in_range {
                    nbd_errno(libc::EINVAL)
                } else {
                    dev.read_at(&mut buf, req.offset).err().map_or(0, errno)
                };
                w.write_all(&simple_reply(req.cookie, e))?;
                if e == 0 {
                    w.write_all(&buf)?;
                }
            }
            CMD_WRITE => {
                buf.resize(req.len as usize, 0);
                r.read_exact(&mut buf)?;
                let e = if dev.is_read_only() {
                    nbd_errno(libc::EROFS)
                } else if !in_range {
                    nbd_errno(libc::ENOSPC)
                } else {
                    dev.write_at(&buf, req.offset).err().map_or(0, errno)
                };
                w.write_all(&simple_reply(req.cookie, e))?;
            }
            CMD_WRITE_ZEROES | CMD_TRIM => {
                let e = if dev.is_read_only() {
                    nbd_errno(libc::EROFS)
                } else if !in_range {
                    nbd_errno(libc::ENOSPC)
                } else {
                    // The store's discard reads back as zeros: both are one call.
                    dev.discard(req.offset, req.len as u64)
                        .err()
                        .map_or(0, errno)
                };
                w.write_all(&simple_reply(req.cookie, e))?;
            }
            // What the guest wrote is in this process's device already; only the worker's
            // commit makes it durable.
            CMD_FLUSH => w.write_all(&simple_reply(req.cookie, 0))?,
            CMD_DISC => return Ok(()),
            _ => w.write_all(&simple_reply(req.cookie, nbd_errno(libc::EINVAL)))?,
        }
        w.flush()?;
    }
}
