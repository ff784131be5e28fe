//! Partition tables (GPT, MBR with logical partitions) and LVM2 metadata on arbitrary
//! bytes: `disk::layout::Layout::scan`, then every device is found by name and read at its
//! first and last sector. Must never panic, and every device must lie inside what holds it.
//!
//! Each input is scanned twice: as it is, and with its GPT and LVM checksums recomputed
//! (`common/fixup.rs`) so that mutations get past the checksum checks. The input is also
//! parsed as LVM metadata text. Seeds: `fuzz/make-seeds` (sfdisk and LVM images).
#![no_main]

#[path = "../common/fixup.rs"]
mod fixup;
#[path = "../common/image.rs"]
mod image;

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use strata::disk::layout::Layout;
use strata::disk::{lvm_text, read_partitions};
use strata::store::device::{MemDevice, SharedDevice};

fn scan(img: Vec<u8>) {
    let len = img.len() as u64;
    let disk: SharedDevice = Arc::new(MemDevice::read_only(img));
    let Ok(layout) = Layout::scan(disk) else {
        return;
    };
    let names: Vec<String> = layout.devices().map(|d| d.name.clone()).collect();
    for name in names.iter().map(String::as_str).chain([
        "/dev/vda1",
        "/dev/sda9",
        "/dev/mapper/vg-lv",
        "/dev/fzseed/root",
    ]) {
        let Ok(d) = layout.find(name) else { continue };
        let dl = d.device.len();
        if !matches!(
            d.kind,
            strata::disk::layout::DeviceKind::LogicalVolume { .. }
        ) {
            assert!(dl <= len, "{name} is {dl} bytes on a {len}-byte disk");
        }
        let mut sector = [0u8; 512];
        let n = (dl as usize).min(512);
        if n > 0 {
            d.device
                .read_at(&mut sector[..n], 0)
                .unwrap_or_else(|e| panic!("{name}: reading its first bytes: {e}"));
            d.device
                .read_at(&mut sector[..n], dl - n as u64)
                .unwrap_or_else(|e| panic!("{name}: reading its last bytes: {e}"));
        }
        assert!(
            d.device.read_at(&mut sector[..1], dl).is_err(),
            "{name}: read past its end"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let img = image::decode(data, 16 << 20);
    scan(img.clone());
    let mut fixed = img;
    fixup::gpt(&mut fixed);
    let starts: Vec<usize> = read_partitions(&MemDevice::read_only(fixed.clone()))
        .map(|ps| ps.iter().map(|p| p.start as usize).collect())
        .unwrap_or_default();
    for s in std::iter::once(0).chain(starts) {
        fixup::lvm(&mut fixed, s);
    }
    scan(fixed);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = lvm_text::parse(text);
    }
});
