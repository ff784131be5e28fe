//! Arbitrary CDBs and Data-Out against a real logical unit on a small volume: must never
//! panic, and must always answer with a valid status.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use strata::iscsi::scsi::{self, Identity, LogicalUnit, Nexus, Outcome, Request};
use strata::store::{RepoOptions, Repository};

struct Fixture {
    _dir: tempfile::TempDir,
    lu: LogicalUnit,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::open(dir.path().join("repo"), RepoOptions::default()).unwrap();
        repo.create_volume("fuzz", None, Some(1 << 20)).unwrap();
        let vol = repo.open_volume("fuzz", false).unwrap();
        let lu = LogicalUnit::new(
            Arc::clone(&vol),
            "iqn.2026-11.org.strata:fuzz",
            Identity::default(),
        );
        Fixture { _dir: dir, lu }
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 17 {
        return;
    }
    let f = fixture();
    let (head, out) = data.split_at(17);
    let nexus = Nexus {
        id: (head[16] % 3) as u64,
        initiator: "iqn.2026-01.fuzz:i".into(),
        isid: [0, 0, 0, 0, 0, head[16]],
    };
    f.lu.attach(&nexus);
    let req = Request {
        cdb: &head[..16],
        data_out: out,
        nexus: &nexus,
        wait: strata::store::Wait::Yes,
    };
    match f.lu.execute(&req) {
        Outcome::Done(r) => {
            assert!(matches!(r.status, 0x00 | 0x02 | 0x04 | 0x18));
            assert_eq!(r.sense.is_some(), r.status == 0x02);
        }
        Outcome::Read(plan) => {
            assert!(plan.offset + plan.len <= f.lu.volume.len());
        }
        Outcome::WouldBlock => panic!("a command allowed to wait refused to"),
    }
    let _ = scsi::execute_without_lun(&req);
});
