//! The FAT adapter (`fs::fat`, the fatfs crate: pure Rust, so it runs in this process) on
//! a mutated FAT12/16/32 image: open, walk the whole tree through the mount table (stat,
//! read every file, readlink), make a few changes (create, write, append, mkdir -p,
//! truncate, rename, rm, rm -rf, setattr), unmount (which writes everything back), then
//! open what was written read-only and walk it again, and ask for the used blocks. Errors
//! are expected on a damaged image; a panic is a bug.
//!
//! Only `fat::open` is called, never `fs::open` or a `Session`: a mutation that makes the
//! image look like ext4 or NTFS must not get C code to run in the fuzzing process.
//! Seeds: `fuzz/make-seeds` (mkfs.vfat images populated with mtools).
#![no_main]

#[path = "../common/image.rs"]
mod image;

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use strata::fs::mounts::MountTable;
use strata::fs::{fat, FileKind, OpenOptions, SetAttr};
use strata::store::device::{MemDevice, SharedDevice};

const MAX_ENTRIES: usize = 400;
const MAX_DEPTH: usize = 6;

/// Walks from `/`; returns the regular files and directories found.
fn walk(t: &mut MountTable) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let (mut files, mut dirs) = (Vec::new(), Vec::new());
    let mut queue = vec![(b"/".to_vec(), 0usize)];
    let mut seen = 0;
    while let Some((dir, depth)) = queue.pop() {
        let Ok(entries) = t.readdir_path(&dir) else {
            continue;
        };
        for e in entries {
            seen += 1;
            if seen > MAX_ENTRIES {
                return (files, dirs);
            }
            let mut path = dir.clone();
            if path.len() > 1 {
                path.push(b'/');
            }
            path.extend_from_slice(&e.name);
            let kind = t.stat_path(&path, false).map(|s| s.kind).unwrap_or(e.kind);
            match kind {
                FileKind::Directory => {
                    if depth < MAX_DEPTH {
                        queue.push((path.clone(), depth + 1));
                    }
                    dirs.push(path);
                }
                FileKind::Regular => {
                    let _ = t.read_file(&path, 1 << 20);
                    files.push(path);
                }
                FileKind::Symlink => {
                    let _ = t.readlink(&path);
                }
                _ => {}
            }
        }
    }
    (files, dirs)
}

fn change(t: &mut MountTable, files: &[Vec<u8>], dirs: &[Vec<u8>]) {
    let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 + 3) as u8).collect();
    let new = b"/FUZZ-NEW.TXT";
    let _ = t.write_file(new, &data);
    let _ = t.append_file(new, &data[..1234]);
    let _ = t.read_file(new, 1 << 20);
    let _ = t.mkdir_p(b"/fuzz-dir/a/b", 0o755);
    let _ = t.statvfs_path(b"/");
    if let Some(f) = files.first() {
        let _ = t.write_path(f, 4096 + 7, &data[..3000]);
        let _ = t.setattr_path(
            f,
            false,
            &SetAttr {
                mode: Some(0o444),
                ..Default::default()
            },
        );
    }
    if let Some(f) = files.get(1) {
        let _ = t.truncate_path(f, 1);
    }
    if let Some(f) = files.get(2) {
        let _ = t.rename_path(f, b"/fuzz-dir/moved");
    }
    if let Some(f) = files.get(3) {
        let _ = t.rm(f);
    }
    if let Some(d) = dirs.last() {
        let _ = t.rm_rf(d);
    }
}

fn mount(dev: SharedDevice, read_only: bool) -> Option<MountTable> {
    let fs = fat::open(dev, OpenOptions { read_only }).ok()?;
    let mut t = MountTable::new();
    t.mount(fs, "/dev/sda", "/", read_only).ok()?;
    Some(t)
}

fuzz_target!(|data: &[u8]| {
    let img = image::decode(data, 40 << 20);
    let dev = Arc::new(MemDevice::new(img));
    let Some(mut t) = mount(dev.clone(), false) else {
        return;
    };
    let (files, dirs) = walk(&mut t);
    change(&mut t, &files, &dirs);
    if t.umount_all().is_err() {
        return;
    }
    let written: SharedDevice = Arc::new(MemDevice::read_only(dev.contents()));
    if let Ok(mut fs) = fat::open(written.clone(), OpenOptions { read_only: true }) {
        let _ = fs.used_blocks();
    }
    if let Some(mut t) = mount(written, true) {
        walk(&mut t);
    }
});
