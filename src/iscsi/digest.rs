//! iSCSI header and data digests: CRC32C (Castagnoli), as RFC 7143 §13.1 specifies.
//!
//! Owns only the checksum and its wire byte order; which PDUs carry digests is negotiated
//! in `text.rs` and applied by `pdu.rs`. (The store's at-rest checksums use a different
//! polynomial, crc32fast; they must never be mixed up.)

/// Length of a digest on the wire.
pub const DIGEST_LEN: usize = 4;

/// CRC32C of `bytes`.
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// CRC32C continued over more bytes (for a data segment followed by its padding).
pub fn crc32c_append(crc: u32, bytes: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, bytes)
}

/// The digest as sent: the CRC's least significant byte first, as libiscsi and the Linux
/// initiator put it on the wire.
pub fn to_wire(crc: u32) -> [u8; DIGEST_LEN] {
    crc.to_le_bytes()
}

pub fn from_wire(b: [u8; DIGEST_LEN]) -> u32 {
    u32::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_rfc_3720_test_vectors() {
        // RFC 3720 B.4: 32 bytes of zeros, of 0xff, and an incrementing pattern.
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62a8_ab43);
        let inc: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c(&inc), 0x46dd_794e);
    }

    #[test]
    fn append_equals_whole() {
        let a = b"hello, ";
        let b = b"iscsi";
        let whole = [&a[..], &b[..]].concat();
        assert_eq!(crc32c_append(crc32c(a), b), crc32c(&whole));
    }

    #[test]
    fn wire_order_is_little_endian() {
        assert_eq!(to_wire(0x1122_3344), [0x44, 0x33, 0x22, 0x11]);
        assert_eq!(from_wire(to_wire(0xdead_beef)), 0xdead_beef);
    }
}
