//! Filesystem signature detection (`fs::detect`, pure Rust, run in any process) on
//! arbitrary bytes: must never panic, and a detected type must be one of the names it
//! documents. Seeds: `fuzz/make-seeds` (the first sectors of real filesystems).
#![no_main]

#[path = "../common/image.rs"]
mod image;

use libfuzzer_sys::fuzz_target;
use strata::fs::detect::detect;
use strata::store::device::MemDevice;

const TYPES: &[&str] = &[
    "ext2",
    "ext3",
    "ext4",
    "vfat",
    "ntfs",
    "xfs",
    "btrfs",
    "swap",
    "iso9660",
    "LVM2_member",
    "jbd",
];

fuzz_target!(|data: &[u8]| {
    let dev = MemDevice::read_only(image::decode(data, 4 << 20));
    if let Ok(Some(d)) = detect(&dev) {
        assert!(
            TYPES.contains(&d.fs_type.as_str()),
            "unknown type {:?}",
            d.fs_type
        );
    }
});
