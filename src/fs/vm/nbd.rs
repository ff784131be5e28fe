//! The NBD protocol (the network block device's fixed-newstyle handshake and simple
//! replies), as much of it as QEMU's NBD client needs to use a device strata serves: the
//! bytes only, no I/O. The server loop over a socket is `nbd_server.rs`.
//!
//! From the protocol's specification (NetworkBlockDevice/nbd, doc/proto.md): the server
//! greets with `NBDMAGIC`, `IHAVEOPT` and its handshake flags; the client answers with its
//! flags and sends options (`IHAVEOPT`, option, length, data), each answered with replies
//! (reply magic, option, type, length, data) until `NBD_OPT_GO` (or the old
//! `NBD_OPT_EXPORT_NAME`) enters transmission, where each request (request magic, command
//! flags, type, cookie, offset, length) gets a simple reply (reply magic, error, cookie)
//! followed by the data of a read.

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

pub const FLAG_FIXED_NEWSTYLE: u16 = 1;
pub const FLAG_NO_ZEROES: u16 = 2;
pub const CLIENT_FLAG_NO_ZEROES: u32 = 2;

pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;

pub const REP_ACK: u32 = 1;
pub const REP_INFO: u32 = 3;
pub const REP_ERR_UNSUP: u32 = 0x8000_0001;
pub const REP_ERR_INVALID: u32 = 0x8000_0003;
pub const REP_ERR_UNKNOWN: u32 = 0x8000_0006;

pub const INFO_EXPORT: u16 = 0;
pub const INFO_BLOCK_SIZE: u16 = 3;

pub const TFLAG_HAS_FLAGS: u16 = 1;
pub const TFLAG_READ_ONLY: u16 = 2;
pub const TFLAG_SEND_FLUSH: u16 = 4;
pub const TFLAG_SEND_TRIM: u16 = 0x20;
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 0x40;

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;

/// The largest read or write a request may ask for (QEMU asks for at most 32 MiB).
pub const MAX_PAYLOAD: u32 = 32 << 20;

/// The server's first 18 bytes.
pub fn greeting() -> [u8; 18] {
    let mut b = [0u8; 18];
    b[0..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    b[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    b[16..18].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    b
}

/// An option's 16-byte header: its code and the length of its data; `None` without the
/// `IHAVEOPT` magic.
pub fn parse_option_header(b: &[u8; 16]) -> Option<(u32, u32)> {
    if u64::from_be_bytes(b[0..8].try_into().ok()?) != IHAVEOPT {
        return None;
    }
    Some((
        u32::from_be_bytes(b[8..12].try_into().ok()?),
        u32::from_be_bytes(b[12..16].try_into().ok()?),
    ))
}

/// An option reply: header and data.
pub fn option_reply(option: u32, kind: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    b
}

/// The export name in `NBD_OPT_GO`/`NBD_OPT_INFO` data (a length-prefixed name, then the
/// information requests, which this server ignores: it always sends the export and block
/// size).
pub fn go_export_name(data: &[u8]) -> Option<&[u8]> {
    let n = u32::from_be_bytes(data.get(0..4)?.try_into().ok()?) as usize;
    data.get(4..4 + n)
}

pub fn transmission_flags(read_only: bool) -> u16 {
    let mut f = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES;
    if read_only {
        f |= TFLAG_READ_ONLY;
    }
    f
}

/// `NBD_REP_INFO` data describing the export: its size and flags.
pub fn info_export(size: u64, flags: u16) -> Vec<u8> {
    let mut b = Vec::with_capacity(12);
    b.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    b.extend_from_slice(&size.to_be_bytes());
    b.extend_from_slice(&flags.to_be_bytes());
    b
}

/// `NBD_REP_INFO` data with the block sizes: 512-byte granularity, 4 KiB preferred.
pub fn info_block_size() -> Vec<u8> {
    let mut b = Vec::with_capacity(14);
    b.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    b.extend_from_slice(&512u32.to_be_bytes());
    b.extend_from_slice(&4096u32.to_be_bytes());
    b.extend_from_slice(&MAX_PAYLOAD.to_be_bytes());
    b
}

/// The answer to `NBD_OPT_EXPORT_NAME` (no reply header; 124 zero bytes unless the client
/// said NO_ZEROES).
pub fn export_name_reply(size: u64, flags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut b = Vec::with_capacity(134);
    b.extend_from_slice(&size.to_be_bytes());
    b.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        b.extend_from_slice(&[0u8; 124]);
    }
    b
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub offset: u64,
    pub len: u32,
}

/// A transmission request's 28-byte header; `None` without the request magic.
pub fn parse_request(b: &[u8; 28]) -> Option<Request> {
    if u32::from_be_bytes(b[0..4].try_into().ok()?) != REQUEST_MAGIC {
        return None;
    }
    Some(Request {
        flags: u16::from_be_bytes(b[4..6].try_into().ok()?),
        kind: u16::from_be_bytes(b[6..8].try_into().ok()?),
        cookie: u64::from_be_bytes(b[8..16].try_into().ok()?),
        offset: u64::from_be_bytes(b[16..24].try_into().ok()?),
        len: u32::from_be_bytes(b[24..28].try_into().ok()?),
    })
}

/// A simple reply's 16-byte header (the data of a read follows it).
pub fn simple_reply(cookie: u64, errno: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&errno.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b
}

/// The NBD error code for a local errno (the protocol knows a few; EIO for the rest).
pub fn nbd_errno(errno: i32) -> u32 {
    match errno {
        libc::EPERM | libc::EROFS => 1,
        libc::ENOMEM => 12,
        libc::EINVAL => 22,
        libc::ENOSPC => 28,
        libc::EOVERFLOW => 75,
        libc::ENOTSUP => 95,
        _ => 5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_is_magic_then_fixed_newstyle() {
        let g = greeting();
        assert_eq!(&g[0..8], b"NBDMAGIC");
        assert_eq!(&g[8..16], b"IHAVEOPT");
        assert_eq!(&g[16..18], &[0, 3]);
    }

    #[test]
    fn options_and_replies_are_big_endian() {
        let mut h = [0u8; 16];
        h[0..8].copy_from_slice(b"IHAVEOPT");
        h[8..12].copy_from_slice(&[0, 0, 0, 7]);
        h[12..16].copy_from_slice(&[0, 0, 1, 2]);
        assert_eq!(parse_option_header(&h), Some((OPT_GO, 0x102)));
        h[0] = b'X';
        assert_eq!(parse_option_header(&h), None);
        let r = option_reply(OPT_GO, REP_ACK, &[]);
        assert_eq!(r.len(), 20);
        assert_eq!(&r[0..8], &[0, 3, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9]);
        assert_eq!(&r[8..20], &[0, 0, 0, 7, 0, 0, 0, 1, 0, 0, 0, 0]);
        let i = info_export(1 << 30, transmission_flags(true));
        assert_eq!(i, [0, 0, 0, 0, 0, 0, 0x40, 0, 0, 0, 0, 0x67]);
    }

    #[test]
    fn go_names_the_export_and_short_data_is_refused() {
        let d = [0, 0, 0, 2, b'd', b'1', 0, 1, 0, 3];
        assert_eq!(go_export_name(&d), Some(&b"d1"[..]));
        assert_eq!(go_export_name(&[0, 0, 0, 9, b'd']), None);
        assert_eq!(go_export_name(&[0, 0]), None);
        assert_eq!(export_name_reply(5, 1, true).len(), 10);
        assert_eq!(export_name_reply(5, 1, false).len(), 134);
    }

    #[test]
    fn requests_parse_and_replies_carry_the_cookie() {
        let mut b = [0u8; 28];
        b[0..4].copy_from_slice(&[0x25, 0x60, 0x95, 0x13]);
        b[6..8].copy_from_slice(&[0, 1]);
        b[8..16].copy_from_slice(&42u64.to_be_bytes());
        b[16..24].copy_from_slice(&4096u64.to_be_bytes());
        b[24..28].copy_from_slice(&512u32.to_be_bytes());
        assert_eq!(
            parse_request(&b),
            Some(Request {
                flags: 0,
                kind: CMD_WRITE,
                cookie: 42,
                offset: 4096,
                len: 512
            })
        );
        b[0] = 0;
        assert_eq!(parse_request(&b), None);
        let r = simple_reply(42, nbd_errno(libc::EROFS));
        assert_eq!(&r[0..4], &[0x67, 0x44, 0x66, 0x98]);
        assert_eq!(&r[4..8], &[0, 0, 0, 1]);
        assert_eq!(&r[8..16], &42u64.to_be_bytes());
    }
}
