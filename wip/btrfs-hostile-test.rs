
/// The 4 KiB blocks of `img` that hold anything: in a filesystem of a few small files,
/// its metadata (superblocks, AG headers, B+tree nodes, inodes, the log) and little else.
fn nonzero_blocks(img: &Path) -> Vec<u64> {
    use std::io::Read;
    let mut f = std::fs::File::open(img).unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 4096];
    let mut at = 0;
    while f.read_exact(&mut buf).is_ok() {
        if buf.iter().any(|&b| b != 0) {
            out.push(at);
        }
        at += 1;
    }
    out
}

/// Hostile images beyond a damaged superblock: a few metadata blocks of a small XFS or
/// btrfs image overwritten with noise (seeded), then a script that reads, writes and
/// removes. Each job ends, within the VM's timeout, either in a clear error (the script
/// fails, the volume as it was) or in a committed result; the golden image never changes.
#[test]
fn fuzzed_xfs_and_btrfs_metadata_ends_in_a_clear_error_or_a_commit() {
    let script_text = "mount /dev/sda1 /\nfind /\nmkdir-p /new/dir\nwrite /new/dir/f \"x\\n\"\n\
                       ls /etc\nrm-rf /etc\numount-all\n";
    let mut outcomes = Vec::new();
    for (fs, seed) in [("xfs", 1u64), ("xfs", 2), ("xfs", 3), ("btrfs", 1), ("btrfs", 2), ("btrfs", 3)] {
        let r = Repo::new();
        let img = if fs == "xfs" {
            xfs_image(&r.work, "root", &[])
        } else {
            btrfs_image(&r.work)
        };
        let blocks = nonzero_blocks(&img);
        let mut rng = common::model::Rng(0x0bad_5eed ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        {
            use std::io::{Seek, SeekFrom, Write};
            let mut f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
            // Not the primary superblock (the other test's case): four other blocks.
            for _ in 0..4 {
                let b = blocks[1 + rng.below(blocks.len() as u64 - 1) as usize];
                let off = rng.below(4096 - 64);
                let noise: Vec<u8> = (0..64).map(|_| rng.next() as u8).collect();
                f.seek(SeekFrom::Start(b * 4096 + off)).unwrap();
                f.write_all(&noise).unwrap();
            }
        }
        let mib = std::fs::metadata(&img).unwrap().len() / MIB;
        let (disk, _) = gpt_disk(&r.work, &[(&img, mib)]);
        r.ok(&["image", "import", disk.to_str().unwrap(), "--name", "gold"]);
        r.ok(&["volume", "create", "web", "--from", "gold"]);
        let gold = r.path("gold-before.raw");
        r.ok(&["image", "export", "gold", gold.to_str().unwrap()]);
        let before = r.path("before.raw");
        r.ok(&["volume", "export", "web", before.to_str().unwrap()]);
        let script = r.path("edit.fish");
        std::fs::write(&script, script_text).unwrap();
        let o = r.run(&["shell", "web", "-f", script.to_str().unwrap(), "--write"]);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!err.contains("panicked"), "{fs} seed {seed}: {err}");
        let after = r.path("after.raw");
        r.ok(&["volume", "export", "web", after.to_str().unwrap()]);
        if o.status.success() {
            outcomes.push(format!("{fs} {seed}: committed"));
        } else {
            assert!(err.contains("strata: error:"), "{fs} seed {seed}: unclear: {err}");
            assert_eq!(
                disks::sha256(&before),
                disks::sha256(&after),
                "{fs} seed {seed}: a failed job leaves the volume as it was"
            );
            outcomes.push(format!(
                "{fs} {seed}: {}",
                err.lines().next().unwrap_or_default()
            ));
        }
        let gold_after = r.path("gold-after.raw");
        r.ok(&["image", "export", "gold", gold_after.to_str().unwrap()]);
        assert_eq!(disks::sha256(&gold), disks::sha256(&gold_after), "{fs} seed {seed}");
    }
    eprintln!("{}", outcomes.join("\n"));
}
