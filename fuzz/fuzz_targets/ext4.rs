//! ext2/3/4 images, corrupted, through the real worker: libext2fs runs only in the
//! `strata fs-worker` child; this process checks that every call of the client comes back
//! within its timeout and that the worker is gone afterwards (see `common/worker.rs`).
//! Seeds: `fuzz/make-seeds` (mke2fs images with files, dirs, a symlink, an htree
//! directory, a many-extent file).
#![no_main]

#[path = "../common/image.rs"]
mod image;
#[path = "../common/worker.rs"]
mod worker;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    worker::run(data, 8 << 20);
});
