//! PDU framing, digests and login/text key parsing on arbitrary bytes: must never panic.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use strata::iscsi::pdu::{self, FrameLimits};
use strata::iscsi::text;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let lim = FrameLimits {
        header_digest: sel & 1 != 0,
        data_digest: sel & 2 != 0,
        max_data: if sel & 4 != 0 { 8192 } else { 262_144 },
    };
    let mut buf = rest;
    // Split the stream the way the connection does: check, then parse, until incomplete.
    while let Ok(Some(n)) = pdu::check(buf, &lim) {
        if let Ok(p) = pdu::parse(Bytes::copy_from_slice(&buf[..n]), &lim) {
            let _ = text::parse_pairs(&p.data);
            // Re-encoding what parsed must frame to the same length.
            let again = pdu::encode(&p.bhs, &p.data, lim.header_digest, lim.data_digest);
            assert!(again.len() <= n);
        }
        buf = &buf[n..];
    }
    let _ = pdu::parse(Bytes::copy_from_slice(rest), &lim);
    let mut n = text::Negotiation::new(text::TargetLimits::default());
    if let Ok(pairs) = text::parse_pairs(rest) {
        for (k, v) in pairs {
            let _ = n.offer(&k, &v);
        }
        let p = n.params();
        assert!(p.first_burst_length <= p.max_burst_length);
    }
});
