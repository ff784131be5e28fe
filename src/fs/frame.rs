//! Framing of the messages strata's processes exchange (the filesystem worker and its
//! parent, the VM's agent and the worker): a 4-byte little-endian length, then the message
//! in postcard. Pure encoding over any reader or writer.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

/// The largest frame either side accepts: a worker's request carries at most one chunk of
/// file data (the client sends big files in pieces), a reply one chunk or one listing.
pub const MAX_FRAME: usize = 64 << 20;

/// Writes one framed message.
pub fn write_frame<T: Serialize>(w: &mut impl Write, msg: &T) -> io::Result<()> {
    // Sized first, then serialised straight into the writer: a message carrying 8 MiB of
    // file data is not copied into a body buffer of its own first (a fresh allocation,
    // page-faulted in, for every request of a big `put` and every reply of a `get`).
    let len =
        postcard::serialize_with_flavor::<T, _, usize>(msg, postcard::ser_flavors::Size::default())
            .map_err(io::Error::other)?;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("message of {len} bytes is larger than the {MAX_FRAME}-byte frame limit"),
        ));
    }
    w.write_all(&(len as u32).to_le_bytes())?;
    postcard::to_io(msg, &mut *w).map_err(io::Error::other)?;
    w.flush()
}

/// Reads one framed message; `Ok(None)` at a clean end of stream (before a frame).
pub fn read_frame<T: for<'de> Deserialize<'de>>(r: &mut impl Read) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is larger than the {MAX_FRAME}-byte limit"),
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    postcard::from_bytes(&body).map(Some).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("undecodable message: {e}"),
        )
    })
}
