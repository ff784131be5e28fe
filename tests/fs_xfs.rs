//! XFS and btrfs through the VM adapter (src/fs/vm): a plan script run by the real binary
//! (`strata shell VOL -f SCRIPT --write`) edits filesystems made by mkfs.xfs (defaults:
//! v5, CRCs, reflink; and reflink=0) and mkfs.btrfs, inside Debian's kernel under QEMU; then
//! `xfs_repair -n` and `btrfs check --readonly` must find them clean, and the host kernel's
//! read-only loop mount (the oracle) must read back what the script wrote. An ext4 whose
//! journal needs replaying goes through the same VM.
//!
//! Needs root (loop mounts), xfsprogs, btrfs-progs, qemu-system-x86 and a Debian kernel in
//! /boot (tools/install-deps).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::disks::{
    self, btrfs_check_clean, gpt_disk, part_file, rhel_disk, sized, xfs_image, xfs_repair_clean,
    KernelMount,
};
use common::{ok, tool, Repo};

const HINT: &str = "tools/install-deps";

use disks::MIB;

fn btrfs_image(work: &Path) -> PathBuf {
    let root = work.join("btrfs-root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/issue"), "SLES-like\n").unwrap();
    let img = work.join("btrfs.img");
    sized(&img, 200);
    ok(Command::new(tool("mkfs.btrfs", HINT))
        .args(["-q", "-f", "-L", "sles", "--rootdir"])
        .arg(&root)
        .arg(&img));
    img
}

fn read(m: &KernelMount, p: &str) -> String {
    std::fs::read_to_string(m.path(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// One script, one VM: three filesystems mounted nested (XFS with reflink at /, XFS without
/// at /data, btrfs at /srv), edits on each, then the checkers and the kernel's view.
#[test]
fn a_script_edits_nested_xfs_and_btrfs_and_the_checkers_find_them_clean() {
    let r = Repo::new();
    let a = xfs_image(&r.work, "root", &[]);
    let b = xfs_image(&r.work, "data", &["-m", "reflink=0"]);
    let c = btrfs_image(&r.work);
    let (disk, parts) = gpt_disk(&r.work, &[(&a, 300), (&b, 300), (&c, 200)]);
    r.ok(&["image", "import", disk.to_str().unwrap(), "--name", "gold"]);
    r.ok(&["volume", "create", "web", "--from", "gold"]);
    let gold = r.path("gold-before.raw");
    r.ok(&["image", "export", "gold", gold.to_str().unwrap()]);

    let script = r.path("edit.fish");
    std::fs::write(
        &script,
        "list-filesystems\n\
         mount /dev/sda1 /\n\
         mkdir-p /data\n\
         mkdir-p /srv\n\
         mount /dev/sda2 /data\n\
         mount /dev/sda3 /srv\n\
         write /etc/hostname \"web-01\\n\"\n\
         mkdir-p /opt/app/conf\n\
         upload -<<EOF /opt/app/conf/app.conf\nkey=value\nEOF\n\
         chmod 0750 /opt/app\n\
         ln-s /etc/hostname /etc/hn-link\n\
         rm /etc/old\n\
         mv /etc/motd /etc/motd.orig\n\
         !seq 1 300000 > ./big\n\
         upload ./big /data/big\n\
         write /data/note \"no reflink here\\n\"\n\
         write /srv/note \"on btrfs\\n\"\n\
         mkdir-p /srv/a/b\n\
         touch /srv/a/b/c\n\
         cat /etc/hostname\n\
         umount-all\n",
    )
    .unwrap();
    let out = r.ok(&["shell", "web", "-f", script.to_str().unwrap(), "--write"]);
    assert!(out.contains("/dev/sda1: xfs"), "{out}");
    assert!(out.contains("/dev/sda3: btrfs"), "{out}");
    assert!(out.contains("web-01"), "{out}");

    let raw = r.path("web.raw");
    r.ok(&["volume", "export", "web", raw.to_str().unwrap()]);
    let pa = part_file(&raw, &parts[0], &r.path("p1.img"));
    let pb = part_file(&raw, &parts[1], &r.path("p2.img"));
    let pc = part_file(&raw, &parts[2], &r.path("p3.img"));
    xfs_repair_clean(&pa);
    xfs_repair_clean(&pb);
    btrfs_check_clean(&pc);

    let m = KernelMount::new(&raw, &parts[0], "xfs");
    assert_eq!(read(&m, "etc/hostname"), "web-01\n");
    assert_eq!(read(&m, "opt/app/conf/app.conf"), "key=value\n");
    assert_eq!(read(&m, "etc/motd.orig"), "welcome\n");
    assert!(!m.path("etc/old").exists() && !m.path("etc/motd").exists());
    assert_eq!(
        std::fs::read_link(m.path("etc/hn-link")).unwrap(),
        Path::new("/etc/hostname")
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(m.path("opt/app"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o750);
    drop(m);
    let m = KernelMount::new(&raw, &parts[1], "xfs");
    let seq = ok(Command::new("seq").args(["1", "300000"]));
    assert_eq!(read(&m, "big"), seq);
    assert_eq!(read(&m, "note"), "no reflink here\n");
    drop(m);
    let m = KernelMount::new(&raw, &parts[2], "btrfs");
    assert_eq!(read(&m, "note"), "on btrfs\n");
    assert_eq!(read(&m, "etc/issue"), "SLES-like\n");
    assert!(m.path("a/b/c").is_file());
    drop(m);

    let after = r.path("gold-after.raw");
    r.ok(&["image", "export", "gold", after.to_str().unwrap()]);
    assert_eq!(
        disks::sha256(&gold),
        disks::sha256(&after),
        "the golden image is unchanged"
    );
}

/// Damaged superblocks (the magic kept, so detection still names the filesystem): XFS's
/// geometry overwritten, btrfs's fields after its magic (its checksum then fails). The mount
/// fails with the kernel's reason, the script fails, and the volume is as it was.
#[test]
fn corrupt_xfs_and_btrfs_superblocks_fail_the_script_with_the_kernels_reason() {
    for (fs, at, word) in [("xfs", 4u64, "XFS"), ("btrfs", 0x10000 + 0x50, "BTRFS")] {
        let r = Repo::new();
        let img = if fs == "xfs" {
            xfs_image(&r.work, "root", &[])
        } else {
            btrfs_image(&r.work)
        };
        {
            use std::io::{Seek, SeekFrom, Write};
            let mut f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
            f.seek(SeekFrom::Start(at)).unwrap();
            f.write_all(&[0xA5; 100]).unwrap();
        }
        let mib = std::fs::metadata(&img).unwrap().len() / MIB;
        let (disk, _parts) = gpt_disk(&r.work, &[(&img, mib)]);
        r.ok(&["image", "import", disk.to_str().unwrap(), "--name", "gold"]);
        r.ok(&["volume", "create", "web", "--from", "gold"]);
        let before = r.path("before.raw");
        r.ok(&["volume", "export", "web", before.to_str().unwrap()]);
        let script = r.path("edit.fish");
        std::fs::write(&script, "mount /dev/sda1 /\nwrite /etc/hostname \"x\"\n").unwrap();
        let err = r.fails(&["shell", "web", "-f", script.to_str().unwrap(), "--write"]);
        assert!(err.contains("mount"), "{fs}: {err}");
        assert!(
            err.contains(word),
            "{fs}: the error carries the kernel's words: {err}"
        );
        let after = r.path("after.raw");
        r.ok(&["volume", "export", "web", after.to_str().unwrap()]);
        assert_eq!(disks::sha256(&before), disks::sha256(&after), "{fs}");
    }
}

/// A small seeded generator (xorshift64*): the same noise on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

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
    for (fs, seed) in [
        ("xfs", 1u64),
        ("xfs", 2),
        ("xfs", 3),
        ("btrfs", 1),
        ("btrfs", 2),
        ("btrfs", 3),
    ] {
        let r = Repo::new();
        let img = if fs == "xfs" {
            xfs_image(&r.work, "root", &[])
        } else {
            btrfs_image(&r.work)
        };
        let blocks = nonzero_blocks(&img);
        let mut rng = Rng(0x0bad_5eed ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
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
            assert!(
                err.contains("strata: error:"),
                "{fs} seed {seed}: unclear: {err}"
            );
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
        assert_eq!(
            disks::sha256(&gold),
            disks::sha256(&gold_after),
            "{fs} seed {seed}"
        );
    }
    eprintln!("{}", outcomes.join("\n"));
}

/// What HPE's RHEL scripts do: `mount /dev/rhel/root /` (and the /dev/mapper name), /boot
/// and the ESP nested below it, files written on all three; the checkers clean after.
#[test]
fn a_rhel_layout_on_xfs_in_lvm_is_personalized_by_a_script() {
    let r = Repo::new();
    let (disk, parts, root) = rhel_disk(&r.work);
    r.ok(&["image", "import", disk.to_str().unwrap(), "--name", "rhel9"]);
    r.ok(&["volume", "create", "web", "--from", "rhel9"]);
    let script = r.path("deploy.fish");
    std::fs::write(
        &script,
        "vgs\nlvs\n\
         inspect-os\n\
         inspect-get-osinfo /dev/rhel/root\n\
         mount /dev/rhel/root /\n\
         mount /dev/sda2 /boot\n\
         mkdir-p /boot/efi\n\
         mount /dev/sda1 /boot/efi\n\
         write /etc/hostname \"rhel-01\\n\"\n\
         upload -<<EOF /etc/sysconfig/network\nNETWORKING=yes\nHOSTNAME=rhel-01\nEOF\n\
         write /boot/strata-boot \"boot\\n\"\n\
         mkdir-p /boot/efi/EFI/redhat\n\
         write /boot/efi/EFI/redhat/user.cfg \"x\\n\"\n\
         umount-all\n\
         mount /dev/mapper/rhel-root /\n\
         cat /etc/hostname\n",
    )
    .unwrap();
    let out = r.ok(&["shell", "web", "-f", script.to_str().unwrap(), "--write"]);
    assert!(out.contains("rhel"), "vgs/lvs name the VG: {out}");
    assert!(
        out.contains("rhel9.4"),
        "inspection reads the XFS root: {out}"
    );
    assert!(
        out.contains("rhel-01"),
        "the /dev/mapper name reaches the same LV: {out}"
    );

    let raw = r.path("web.raw");
    r.ok(&["volume", "export", "web", raw.to_str().unwrap()]);
    xfs_repair_clean(&part_file(&raw, &parts[1], &r.path("boot.img")));
    xfs_repair_clean(&part_file(&raw, &root, &r.path("root.img")));
    let (clean, o) = disks::fsck_fat(&raw, &parts[0]);
    assert!(clean, "fsck.fat: {o}");
    let m = KernelMount::new(&raw, &root, "xfs");
    assert_eq!(read(&m, "etc/hostname"), "rhel-01\n");
    assert_eq!(
        read(&m, "etc/sysconfig/network"),
        "NETWORKING=yes\nHOSTNAME=rhel-01\n"
    );
    drop(m);
    let m = KernelMount::new(&raw, &parts[1], "xfs");
    assert_eq!(read(&m, "strata-boot"), "boot\n");
    drop(m);
    assert_eq!(
        disks::mtools_read(&raw, &parts[0], "/EFI/redhat/user.cfg"),
        b"x\n"
    );
}

/// The processes whose parent is `pid`.
fn children(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ..."; comm may hold spaces, so split after the last ')'.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head
            .split_once('(')
            .map(|x| x.1)
            .unwrap_or_default()
            .to_string();
        let ppid: u32 = rest
            .split_whitespace()
            .nth(1)
            .and_then(|x| x.parse().ok())
            .unwrap_or(0);
        if ppid == pid {
            out.push((p, comm));
        }
    }
    out
}

/// `kill -9` of QEMU part-way through a job: the next call fails, saying the VM is gone,
/// and the volume holds nothing of the job.
#[test]
fn killing_qemu_mid_job_leaves_the_volume_as_it_was() {
    use strata::fs::worker::{Call, Request, Source, Worker, WorkerOptions};
    let r = Repo::new();
    let a = xfs_image(&r.work, "root", &[]);
    let (disk, _) = gpt_disk(&r.work, &[(&a, 300)]);
    r.ok(&["image", "import", disk.to_str().unwrap(), "--name", "gold"]);
    r.ok(&["volume", "create", "web", "--from", "gold"]);
    let before = r.path("before.raw");
    r.ok(&["volume", "export", "web", before.to_str().unwrap()]);

    let opts = WorkerOptions {
        exe: common::BIN.into(),
        ..WorkerOptions::default()
    };
    let source = Source::Volume {
        repo: r.root.clone(),
        name: "web".into(),
    };
    let mut w = Worker::start(source, false, &opts).unwrap();
    w.call(Request::Mount {
        device: "/dev/sda1".into(),
        point: "/".into(),
        read_only: false,
    })
    .unwrap();
    w.call(Request::Call(Call::CreateOrTruncate {
        path: b"/etc/new".to_vec(),
        mode: 0o644,
    }))
    .unwrap();
    w.call(Request::Call(Call::WriteAt {
        path: b"/etc/new".to_vec(),
        offset: 0,
        data: vec![b'x'; 1 << 20],
    }))
    .unwrap();
    let qemu: Vec<u32> = children(std::process::id())
        .into_iter()
        .flat_map(|(p, _)| children(p))
        .filter(|(_, c)| c.starts_with("qemu-system"))
        .map(|(p, _)| p)
        .collect();
    assert_eq!(qemu.len(), 1, "one VM for the job: {qemu:?}");
    // SAFETY: kill(2) of a process this test started (a child of its worker).
    assert_eq!(unsafe { libc::kill(qemu[0] as i32, libc::SIGKILL) }, 0);
    let e = w
        .call(Request::Call(Call::Stat {
            path: b"/etc/new".to_vec(),
            follow: false,
        }))
        .unwrap_err();
    assert_eq!(e.errno, libc::EIO, "{e}");
    let e = w.call(Request::Commit).unwrap_err();
    assert!(e.detail.contains("VM"), "the commit fails too: {e}");
    drop(w);
    let after = r.path("after.raw");
    r.ok(&["volume", "export", "web", after.to_str().unwrap()]);
    assert_eq!(disks::sha256(&before), disks::sha256(&after));
}

fn du(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().blocks() * 512)
        .sum()
}

/// Capture of an XFS volume keeps what GETFSMAP (in the VM) reports as allocated: 45 MB of
/// noise written and deleted again stays out of the image, the kept file and the metadata
/// go in, and the image deploys back fsck-clean.
#[test]
fn a_captured_xfs_volume_stores_about_its_used_blocks_and_deploys_back_clean() {
    let r = Repo::new();
    let a = xfs_image(&r.work, "root", &[]);
    let (disk, parts) = gpt_disk(&r.work, &[(&a, 300)]);
    r.ok(&["image", "import", disk.to_str().unwrap(), "--name", "gold"]);
    r.ok(&["volume", "create", "src", "--from", "gold"]);
    let script = r.path("fill.fish");
    let junk = disks::write_noise_script(&script);
    r.ok(&["shell", "src", "-f", script.to_str().unwrap(), "--write"]);

    let dir = r.path("capture-plan");
    std::fs::create_dir_all(&dir).unwrap();
    let ps = serde_json::json!({
        "type": "PlanScript", "id": "11111111-1111-1111-1111-111111111111",
        "name": "generalize", "planType": "capture",
        "content": "mount /dev/sda1 /\nrm-f /etc/old\n",
        "customAttributes": null, "description": ""
    });
    let bp = serde_json::json!({
        "type": "OeBuildPlan", "buildPlanid": "22222222-2222-2222-2222-222222222222",
        "name": "capture plan", "oeBuildPlanType": "capture", "customAttributes": [],
        "buildStep": [{"serialNumber": "1", "planScriptName": "generalize",
                       "planScriptUri": "/rest/plan-scripts/11111111-1111-1111-1111-111111111111",
                       "parameters": null}]
    });
    std::fs::write(
        dir.join("11111111-1111-1111-1111-111111111111_planscript.json"),
        ps.to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.join("22222222-2222-2222-2222-222222222222_buildplan.json"),
        bp.to_string(),
    )
    .unwrap();
    let said = r.ok(&[
        "capture",
        "src",
        "--artifacts",
        dir.to_str().unwrap(),
        "--plan",
        "capture plan",
        "--name",
        "cap",
    ]);
    let stored = du(&r.root.join("images/cap"));
    let kept = ok(Command::new("seq").args(["1", "600000"]));
    // The image holds the kept file, the filesystem's metadata and the part of the XFS log
    // that has been written (how much of its 64 MiB varies from run to run, with how the
    // writes were batched), never a block of the deleted noise.
    assert!(stored >= kept.len() as u64, "stored {stored} bytes");
    let cap_raw = r.path("cap.raw");
    r.ok(&["image", "export", "cap", cap_raw.to_str().unwrap()]);
    let found = disks::noise_blocks_in(&cap_raw, &junk);
    assert_eq!(found, 0, "blocks of the deleted noise were kept ({said})");

    r.ok(&["volume", "create", "dst", "--from", "cap"]);
    let raw = r.path("dst.raw");
    r.ok(&["volume", "export", "dst", raw.to_str().unwrap()]);
    xfs_repair_clean(&part_file(&raw, &parts[0], &r.path("p1.img")));
    let m = KernelMount::new(&raw, &parts[0], "xfs");
    assert_eq!(read(&m, "kept"), kept);
    assert_eq!(read(&m, "etc/hostname"), "golden\n");
    assert!(!m.path("etc/old").exists() && !m.path("junk").exists());
}

/// The saved VM (src/fs/vm/snapshot.rs), in a cache of the test's own: the first job boots
/// the VM once to save its state and then restores it, the second restores the state saved,
/// and both edit their volumes correctly. A damaged state does not restore: it is removed,
/// and that job boots the VM instead and is just as correct.
#[test]
fn jobs_restore_the_saved_vm_and_a_damaged_state_falls_back_to_a_boot() {
    let r = Repo::new();
    let a = xfs_image(&r.work, "root", &[]);
    let (disk, parts) = gpt_disk(&r.work, &[(&a, 300)]);
    r.ok(&["image", "import", disk.to_str().unwrap(), "--name", "gold"]);
    let cache = r.path("vm-cache");
    let job = |name: &str| -> String {
        r.ok(&["volume", "create", name, "--from", "gold"]);
        let script = r.path(&format!("{name}.fish"));
        std::fs::write(
            &script,
            format!(
                "mount /dev/sda1 /\nwrite /etc/hostname \"{name}\\n\"\nrm /etc/old\n\
                 mkdir-p /etc/{name}.d\nupload -<<EOF /etc/{name}.d/conf\n{name} conf\nEOF\n\
                 umount /\n"
            ),
        )
        .unwrap();
        let o = Command::new(common::BIN)
            .arg("--repo")
            .arg(&r.root)
            .args(["shell", name, "-f", script.to_str().unwrap(), "--write"])
            .env("STRATA_VM_CACHE", &cache)
            .env("RUST_LOG", "strata::fs::vm=debug")
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "the {name} job: {log}");
        let raw = r.path(&format!("{name}.raw"));
        r.ok(&["volume", "export", name, raw.to_str().unwrap()]);
        xfs_repair_clean(&part_file(&raw, &parts[0], &r.path(&format!("{name}.img"))));
        let m = KernelMount::new(&raw, &parts[0], "xfs");
        assert_eq!(read(&m, "etc/hostname"), format!("{name}\n"));
        assert_eq!(
            read(&m, &format!("etc/{name}.d/conf")),
            format!("{name} conf\n")
        );
        assert!(!m.path("etc/old").exists(), "{name}: /etc/old removed");
        assert_eq!(read(&m, "etc/motd"), "welcome\n");
        log
    };
    let states = || -> Vec<PathBuf> {
        std::fs::read_dir(&cache)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .unwrap()
                            .to_string_lossy()
                            .starts_with("vmstate-")
                    })
                    .collect()
            })
            .unwrap_or_default()
    };

    let first = job("one");
    assert!(first.contains("saved the XFS/btrfs VM's state"), "{first}");
    assert!(first.contains("VM restored in"), "{first}");
    let saved = states();
    assert_eq!(saved.len(), 1, "one saved state: {saved:?}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&saved[0]).unwrap().permissions().mode();
    assert_eq!(mode & 0o022, 0, "only its owner writes the state: {mode:o}");

    let second = job("two");
    assert!(
        !second.contains("saved the XFS/btrfs VM's state"),
        "{second}"
    );
    assert!(second.contains("VM restored in"), "{second}");
    assert!(!second.contains("VM booted in"), "{second}");

    // Damaged: cut in half.
    let len = std::fs::metadata(&saved[0]).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&saved[0])
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let third = job("three");
    assert!(third.contains("boots instead of restoring"), "{third}");
    assert!(third.contains("VM booted in"), "{third}");
    assert!(states().is_empty(), "the damaged state is removed");
}

/// An ext4 copied while mounted read-write, as a crashed server or a volume taken live
/// leaves it: its superblock says the journal needs recovery, which libext2fs cannot
/// replay. A writing script mounts it in the VM, whose kernel replays the journal; what
/// the mount had committed is there, the script's edit lands, e2fsck finds it clean.
#[test]
fn an_ext4_whose_journal_needs_replay_is_written_through_the_vm() {
    let r = Repo::new();
    let img = r.path("ext4.img");
    sized(&img, 64);
    ok(Command::new(tool("mkfs.ext4", HINT))
        .args(["-q", "-F", "-L", "live"])
        .arg(&img));
    let whole = disks::Part {
        start: 0,
        len: 64 * MIB,
    };
    let crashed = r.path("crashed.img");
    {
        let lo = disks::Loop::new(&img, &whole, false);
        let dir = tempfile::tempdir().unwrap();
        ok(Command::new("mount").arg(&lo.0).arg(dir.path()));
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/before"), "committed\n").unwrap();
        ok(Command::new("sync")
            .arg("-f")
            .arg(dir.path().join("etc/before")));
        std::fs::copy(&img, &crashed).unwrap();
        ok(Command::new("umount").arg(dir.path()));
    }
    let features = ok(Command::new(tool("dumpe2fs", HINT)).arg("-h").arg(&crashed));
    assert!(
        features.contains("needs_recovery"),
        "the copy of a mounted ext4 needs recovery: {features}"
    );

    let (disk, parts) = gpt_disk(&r.work, &[(&crashed, 64)]);
    r.ok(&["image", "import", disk.to_str().unwrap(), "--name", "live"]);
    r.ok(&["volume", "create", "web", "--from", "live"]);
    let script = r.path("edit.fish");
    std::fs::write(
        &script,
        "mount /dev/sda1 /\n\
         cat /etc/before\n\
         write /etc/after \"edited\\n\"\n\
         umount-all\n\
         mount /dev/sda1 /\n\
         cat /etc/after\n",
    )
    .unwrap();
    let out = r.ok(&["shell", "web", "-f", script.to_str().unwrap(), "--write"]);
    // (guestfish's cat ends what it prints with a newline of its own.)
    assert_eq!(out, "committed\n\nedited\n\n");

    let raw = r.path("web.raw");
    r.ok(&["volume", "export", "web", raw.to_str().unwrap()]);
    let (clean, o) = disks::e2fsck(&raw, &parts[0]);
    assert!(clean, "e2fsck: {o}");
    let part = part_file(&raw, &parts[0], &r.path("web-p1.img"));
    let features = ok(Command::new(tool("dumpe2fs", HINT)).arg("-h").arg(&part));
    assert!(
        !features.contains("needs_recovery"),
        "the kernel replayed the journal and unmounted cleanly: {features}"
    );
    let m = KernelMount::new(&raw, &parts[0], "ext4");
    assert_eq!(read(&m, "etc/before"), "committed\n");
    assert_eq!(read(&m, "etc/after"), "edited\n");
    drop(m);

    // The golden image itself still needs its recovery: only the volume was written.
    let gold = r.path("live-after.raw");
    r.ok(&["image", "export", "live", gold.to_str().unwrap()]);
    let gold_part = part_file(&gold, &parts[0], &r.path("gold-p1.img"));
    let features = ok(Command::new(tool("dumpe2fs", HINT))
        .arg("-h")
        .arg(&gold_part));
    assert!(features.contains("needs_recovery"), "{features}");
}
