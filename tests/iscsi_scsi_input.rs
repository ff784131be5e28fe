//! Arbitrary CDBs, Data-Out and PDUs thrown at the iSCSI target's parsers and its SCSI
//! logical unit (the same properties the cargo-fuzz targets in fuzz/ check, in a short run
//! that is part of the ordinary test suite): no panic, a valid status, sense exactly with
//! CHECK CONDITION, reads planned inside the volume.

use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use strata::iscsi::pdu::{self, FrameLimits};
use strata::iscsi::scsi::{self, Identity, LogicalUnit, Nexus, Outcome, Request};
use strata::iscsi::text;
use strata::store::{RepoOptions, Repository};

/// Opcodes the LU knows (so most cases get past "invalid opcode"), plus anything.
fn opcode() -> impl Strategy<Value = u8> {
    prop_oneof![
        4 => prop::sample::select(vec![
            0x00u8, 0x03, 0x08, 0x0a, 0x12, 0x15, 0x16, 0x17, 0x1a, 0x1b, 0x1e, 0x25, 0x28,
            0x2a, 0x2e, 0x2f, 0x34, 0x35, 0x37, 0x41, 0x42, 0x55, 0x56, 0x57, 0x5a, 0x5e, 0x5f,
            0x88, 0x89, 0x8a, 0x8b, 0x8e, 0x8f, 0x90, 0x91, 0x93, 0x9e, 0xa0, 0xa3, 0xa8, 0xaa,
            0xae, 0xaf, 0xb7,
        ]),
        1 => any::<u8>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn any_cdb_gets_a_valid_answer(
        op in opcode(),
        rest in prop::collection::vec(any::<u8>(), 15),
        small in prop::collection::vec(0u8..4, 15),
        use_small in any::<bool>(),
        out in prop::collection::vec(any::<u8>(), 0..2048),
        who in 0u8..3,
    ) {
        let (_dir, lu) = unit();
        let mut cdb = vec![op];
        // Small field values reach deeper (lengths and LBAs inside the volume).
        cdb.extend(if use_small { &small } else { &rest });
        let nexus = Nexus { id: who as u64, initiator: "iqn.2026-01.test:p".into(), isid: [0, 0, 0, 0, 0, who] };
        lu.attach(&nexus);
        let req = Request { cdb: &cdb, data_out: &out, nexus: &nexus, wait: strata::store::Wait::Yes };
        for _ in 0..2 {
            match lu.execute(&req) {
                Outcome::Done(r) => {
                    prop_assert!(matches!(r.status, 0x00 | 0x02 | 0x04 | 0x18), "status {:#x}", r.status);
                    prop_assert_eq!(r.sense.is_some(), r.status == 0x02);
                }
                Outcome::Read(p) => prop_assert!(p.offset + p.len <= lu.volume.len()),
                Outcome::WouldBlock => prop_assert!(false, "a command allowed to wait refused to"),
            }
        }
        let _ = scsi::execute_without_lun(&req);
    }

    #[test]
    fn any_bytes_frame_or_fail_cleanly(data in prop::collection::vec(any::<u8>(), 0..600), sel in 0u8..8) {
        let lim = FrameLimits { header_digest: sel & 1 != 0, data_digest: sel & 2 != 0, max_data: if sel & 4 != 0 { 64 } else { 8192 } };
        let mut buf = &data[..];
        while let Ok(Some(n)) = pdu::check(buf, &lim) {
            if let Ok(p) = pdu::parse(Bytes::copy_from_slice(&buf[..n]), &lim) {
                let _ = text::parse_pairs(&p.data);
            }
            buf = &buf[n..];
        }
        if let Ok(pairs) = text::parse_pairs(&data) {
            let mut n = text::Negotiation::new(text::TargetLimits::default());
            for (k, v) in pairs { let _ = n.offer(&k, &v); }
            let p = n.params();
            prop_assert!(p.first_burst_length <= p.max_burst_length);
        }
    }
}

thread_local! {
    static UNIT: (Arc<tempfile::TempDir>, Arc<LogicalUnit>) = {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::open(dir.path().join("repo"), RepoOptions::default()).unwrap();
        repo.create_volume("p", None, Some(1 << 20)).unwrap();
        let vol = repo.open_volume("p", false).unwrap();
        (Arc::new(dir), Arc::new(LogicalUnit::new(vol, "iqn.2026-11.org.strata:p", Identity::default())))
    };
}

fn unit() -> (Arc<tempfile::TempDir>, Arc<LogicalUnit>) {
    UNIT.with(|(d, l)| (d.clone(), l.clone()))
}
