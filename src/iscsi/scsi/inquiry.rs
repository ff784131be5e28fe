//! INQUIRY: standard data and the VPD pages 0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2.
//! Page 0x00 lists pages in ascending order (EDK2 checks), 0x83 carries an NAA designator
//! for the LU and relative-port / port-group / name designators for the target port.

use super::sense::{self};
use super::{
    cdb, truncate, CmdResult, LogicalUnit, Request, Response, MAX_COMPARE_AND_WRITE_BLOCKS,
    MAX_TRANSFER_BLOCKS, MAX_UNMAP_BLOCKS, MAX_UNMAP_DESCRIPTORS, MAX_WRITE_SAME_BLOCKS,
};

const PAGES: [u8; 6] = [0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2];

fn padded_ascii(s: &str, n: usize) -> Vec<u8> {
    let mut v: Vec<u8> = s
        .bytes()
        .map(|b| if (0x20..0x7f).contains(&b) { b } else { b' ' })
        .take(n)
        .collect();
    v.resize(n, b' ');
    v
}

pub fn inquiry(lu: &LogicalUnit, req: &Request) -> CmdResult {
    let c = req.cdb;
    let evpd = cdb::byte(c, 1) & 1 != 0;
    let page = cdb::byte(c, 2);
    let alloc = cdb::be16(c, 3) as u32;
    if cdb::byte(c, 1) & 0xfe != 0 {
        return Err(sense::invalid_cdb_field(1, None));
    }
    let data = if !evpd {
        if page != 0 {
            return Err(sense::invalid_cdb_field(2, None));
        }
        standard(lu)
    } else {
        match page {
            0x00 => vpd(0x00, PAGES.to_vec()),
            0x80 => vpd(0x80, lu.serial.as_bytes().to_vec()),
            0x83 => vpd(0x83, device_identification(lu)),
            0xb0 => vpd(0xb0, block_limits()),
            0xb1 => vpd(0xb1, characteristics()),
            0xb2 => vpd(0xb2, provisioning()),
            _ => return Err(sense::invalid_cdb_field(2, None)),
        }
    };
    Ok(Response::good(truncate(data, alloc)).into())
}

fn standard(lu: &LogicalUnit) -> Vec<u8> {
    let mut d = vec![0u8; 96];
    d[0] = 0x00; // connected direct-access block device
    d[2] = 0x06; // SPC-4
    d[3] = 0x12; // HISUP, response data format 2
    d[4] = (d.len() - 5) as u8;
    d[7] = 0x02; // CMDQUE
    d[8..16].copy_from_slice(&padded_ascii(&lu.identity.vendor, 8));
    d[16..32].copy_from_slice(&padded_ascii(&lu.identity.product, 16));
    d[32..36].copy_from_slice(&padded_ascii(&lu.identity.revision, 4));
    // Version descriptors: SAM-5, iSCSI, SPC-4, SBC-3.
    for (i, v) in [0x00a0u16, 0x0960, 0x0460, 0x04c0].iter().enumerate() {
        d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
    }
    d
}

fn vpd(page: u8, body: Vec<u8>) -> Vec<u8> {
    let mut d = vec![0u8, page];
    d.extend_from_slice(&(body.len() as u16).to_be_bytes());
    d.extend(body);
    d
}

/// One designation descriptor.
fn designator(proto_codeset: u8, piv_assoc_type: u8, id: &[u8]) -> Vec<u8> {
    let mut d = vec![proto_codeset, piv_assoc_type, 0, id.len() as u8];
    d.extend_from_slice(id);
    d
}

const ISCSI_PROTO: u8 = 0x50;

fn device_identification(lu: &LogicalUnit) -> Vec<u8> {
    let mut d = Vec::new();
    // LU: NAA (binary, type 3).
    d.extend(designator(0x01, 0x03, &lu.naa));
    // LU: T10 vendor ID (ASCII, type 1): vendor + serial.
    let mut t10 = padded_ascii(&lu.identity.vendor, 8);
    t10.extend_from_slice(lu.serial.as_bytes());
    d.extend(designator(0x02, 0x01, &t10));
    // Target port: relative target port 1 (type 4) and target port group 1 (type 5),
    // PIV set, protocol iSCSI, association target port (0x10).
    d.extend(designator(
        ISCSI_PROTO | 0x01,
        0x80 | 0x10 | 0x04,
        &[0, 0, 0, 1],
    ));
    d.extend(designator(
        ISCSI_PROTO | 0x01,
        0x80 | 0x10 | 0x05,
        &[0, 0, 0, 1],
    ));
    // Target port name (SCSI name string, UTF-8, type 8): "<iqn>,t,0x0001", NUL padded to 4.
    let mut port = format!("{},t,0x0001", lu.target_iqn).into_bytes();
    port.push(0);
    while port.len() % 4 != 0 {
        port.push(0);
    }
    d.extend(designator(ISCSI_PROTO | 0x03, 0x80 | 0x10 | 0x08, &port));
    // Target device name (association 0x20).
    let mut dev = lu.target_iqn.clone().into_bytes();
    dev.push(0);
    while dev.len() % 4 != 0 {
        dev.push(0);
    }
    d.extend(designator(ISCSI_PROTO | 0x03, 0x80 | 0x20 | 0x08, &dev));
    d
}

fn block_limits() -> Vec<u8> {
    let mut d = vec![0u8; 0x3c];
    // Offsets below are page offsets minus the 4-byte header.
    d[0] = 0x00; // WSNZ clear: WRITE SAME with zero blocks runs to the end
    d[1] = MAX_COMPARE_AND_WRITE_BLOCKS;
    d[2..4].copy_from_slice(&8u16.to_be_bytes()); // optimal granularity: 4 KiB
    d[4..8].copy_from_slice(&MAX_TRANSFER_BLOCKS.to_be_bytes());
    d[8..12].copy_from_slice(&2048u32.to_be_bytes()); // optimal transfer: 1 MiB
    d[12..16].copy_from_slice(&MAX_TRANSFER_BLOCKS.to_be_bytes()); // max prefetch
    d[16..20].copy_from_slice(&MAX_UNMAP_BLOCKS.to_be_bytes());
    d[20..24].copy_from_slice(&MAX_UNMAP_DESCRIPTORS.to_be_bytes());
    d[24..28].copy_from_slice(&8u32.to_be_bytes()); // optimal unmap granularity
    d[28..32].copy_from_slice(&0x8000_0000u32.to_be_bytes()); // UGAVALID, alignment 0
    d[32..40].copy_from_slice(&MAX_WRITE_SAME_BLOCKS.to_be_bytes());
    d
}

fn characteristics() -> Vec<u8> {
    let mut d = vec![0u8; 0x3c];
    d[0..2].copy_from_slice(&1u16.to_be_bytes()); // non-rotating medium
    d
}

fn provisioning() -> Vec<u8> {
    // Threshold exponent 0; LBPU, LBPWS, LBPWS10, LBPRZ; thin provisioned.
    vec![0x00, 0x80 | 0x40 | 0x20 | 0x04, 0x02, 0x00]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supported_pages_are_ascending() {
        assert!(PAGES.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn provisioning_page_reports_lbpu_lbpws_lbprz() {
        let p = vpd(0xb2, provisioning());
        assert_eq!(p[1], 0xb2);
        assert_eq!(p[5] & 0xe4, 0xe4);
    }

    #[test]
    fn ascii_fields_are_space_padded_and_cut() {
        assert_eq!(padded_ascii("AB", 4), b"AB  ");
        assert_eq!(padded_ascii("ABCDEFGHIJ", 8), b"ABCDEFGH");
        assert_eq!(padded_ascii("a\u{e9}", 4), b"a   ");
    }
}
