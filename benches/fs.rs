//! Criterion benchmarks of the filesystem layer's inner loops: guest path resolution through
//! the mount table (on the in-memory reference filesystem, so only the table's own walk is
//! measured: components, `..`, a symlink, a mountpoint), and the ext4 adapter creating and
//! writing small files on a FileDevice image made by mke2fs. Small and quick: a few seconds
//! per case. The end-to-end figures (worker, CLI, guestfish, the kernel) are tools/bench-fs.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use strata::fs::memfs::MemFs;
use strata::fs::mounts::MountTable;
use strata::fs::OpenOptions;
use strata::store::device::FileDevice;

/// A MemFs on / shaped like a small distribution (400 package doc directories), a second
/// one on /boot/efi, and /lib -> usr/lib as in a merged-/usr system.
fn memfs_table() -> MountTable {
    let mut t = MountTable::new();
    t.mount(Box::new(MemFs::new()), "/dev/sda2", "/", false)
        .unwrap();
    for d in ["/usr/lib/x86_64-linux-gnu", "/etc/default", "/boot/efi"] {
        t.mkdir_p(d.as_bytes(), 0o755).unwrap();
    }
    for i in 0..400 {
        let dir = format!("/usr/share/doc/pkg{i:03}");
        t.mkdir_p(dir.as_bytes(), 0o755).unwrap();
        t.write_file(format!("{dir}/copyright").as_bytes(), b"GPL\n")
            .unwrap();
    }
    t.symlink(b"usr/lib", b"/lib").unwrap();
    t.mount(Box::new(MemFs::new()), "/dev/sda1", "/boot/efi", false)
        .unwrap();
    t.mkdir_p(b"/boot/efi/EFI/debian", 0o755).unwrap();
    t.write_file(b"/boot/efi/EFI/debian/grubx64.efi", b"MZ")
        .unwrap();
    t
}

fn resolution(c: &mut Criterion) {
    let mut t = memfs_table();
    let mut g = c.benchmark_group("resolve_memfs");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    let cases: [(&str, &[u8]); 3] = [
        ("deep_6", b"/usr/share/doc/pkg123/copyright"),
        (
            "dotdot_symlink",
            b"/lib/x86_64-linux-gnu/../../share/doc/pkg123/copyright",
        ),
        ("across_mount", b"/boot/efi/EFI/debian/grubx64.efi"),
    ];
    for (name, path) in cases {
        assert!(t.exists(path).unwrap(), "{name}: {path:?} must resolve");
        g.bench_function(name, |b| b.iter(|| t.stat_path(path, true).unwrap()));
    }
    g.finish();
}

/// A 128 MiB ext4 image (mke2fs defaults, room for 32768 inodes) made once per bench run;
/// each batch of files is written into a fresh sparse copy of it.
struct Ext4Template {
    dir: tempfile::TempDir,
}

impl Ext4Template {
    fn new() -> Ext4Template {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("template.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(128 << 20)
            .unwrap();
        let st = Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-N", "32768"])
            .arg(&img)
            .status()
            .expect("mke2fs (e2fsprogs) must be installed");
        assert!(st.success(), "mke2fs failed");
        Ext4Template { dir }
    }

    fn fresh(&self) -> MountTable {
        let work = self.dir.path().join("work.img");
        let st = Command::new("cp")
            .arg("--sparse=always")
            .arg(self.dir.path().join("template.img"))
            .arg(&work)
            .status()
            .unwrap();
        assert!(st.success());
        mount_ext4(&work)
    }
}

fn mount_ext4(img: &Path) -> MountTable {
    let dev = Arc::new(FileDevice::open(img, false).unwrap());
    let fs = strata::fs::open("ext4", dev, OpenOptions { read_only: false }).unwrap();
    let mut t = MountTable::new();
    t.mount(fs, "/dev/sda2", "/", false).unwrap();
    t.mkdir(b"/d", 0o755).unwrap();
    t
}

/// The most files one fresh image takes in a batch (well within its inodes and blocks).
const PER_IMAGE: u64 = 8000;

fn ext4_small_files(c: &mut Criterion) {
    let tpl = Ext4Template::new();
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 13) as u8).collect();
    let mut g = c.benchmark_group("ext4_filedevice");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    g.throughput(Throughput::Elements(1));
    g.bench_function("create_write_4k", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                // A fresh image per batch, outside the timing: the directory and the
                // bitmaps stay the size a real edit sees.
                let mut t = tpl.fresh();
                let n = (iters - done).min(PER_IMAGE);
                let t0 = Instant::now();
                for i in 0..n {
                    t.write_file(format!("/d/f{i}").as_bytes(), &data).unwrap();
                }
                spent += t0.elapsed();
                done += n;
            }
            spent
        })
    });
    // What the commit of a small edit costs in the adapter: 16 new files, then the write
    // back of everything dirty (inodes, directory, bitmaps, group descriptors, superblock).
    g.throughput(Throughput::Elements(16));
    g.bench_function("16_files_then_sync", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let mut t = tpl.fresh();
                let n = (iters - done).min(PER_IMAGE / 16);
                let t0 = Instant::now();
                for i in 0..n {
                    for j in 0..16 {
                        t.write_file(format!("/d/f{i}-{j}").as_bytes(), &data)
                            .unwrap();
                    }
                    t.sync_all().unwrap();
                }
                spent += t0.elapsed();
                done += n;
            }
            spent
        })
    });
    g.finish();
}

criterion_group!(benches, resolution, ext4_small_files);
criterion_main!(benches);
