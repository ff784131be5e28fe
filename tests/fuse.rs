//! The FUSE export against real tools: sfdisk and mkfs.ext4 build the fixtures, the kernel's
//! loop driver mounts a partition file, e2fsck and debugfs check the result.
//!
//! Needs root, /dev/fuse and loop devices; each test prints why and passes vacuously when
//! they are missing. Debian packages: fuse3, fdisk, e2fsprogs, mount.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata::fuse::{spawn_mount, MountHandle, MountOptions};
use strata::store::{RepoOptions, Repository, SourceFormat};

const MIB: u64 = 1 << 20;
const DISK_LEN: u64 = 40 * MIB;
const PART_START: u64 = MIB;
const PART_LEN: u64 = 32 * MIB;

fn tool(name: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Why this machine cannot run the FUSE tests, if it cannot.
fn missing_prerequisite(need_loop: bool) -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing".into());
    }
    if need_loop && !Path::new("/dev/loop-control").exists() {
        return Some("no loop devices".into());
    }
    for t in [
        "sfdisk",
        "mkfs.ext4",
        "e2fsck",
        "debugfs",
        "cmp",
        "mount",
        "umount",
    ] {
        if !tool(t) {
            return Some(format!("{t} is not installed"));
        }
    }
    None
}

macro_rules! require {
    ($need_loop:expr) => {
        if let Some(why) = missing_prerequisite($need_loop) {
            eprintln!("skipping: {why}");
            return;
        }
    };
}

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A repository holding golden image `gold` (a GPT disk with one ext4 partition holding
/// /golden.txt) and its clones `vol1` and `vol2`; plus the raw disk it was imported from.
struct Fixture {
    dir: tempfile::TempDir,
    repo: Arc<Repository>,
    raw: PathBuf,
}

fn fixture_with(opts: RepoOptions) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    File::create(&raw).unwrap().set_len(DISK_LEN).unwrap();
    let mut sfdisk = Command::new("sfdisk")
        .arg("--quiet")
        .arg(&raw)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    sfdisk
        .stdin
        .take()
        .unwrap()
        .write_all(
            format!(
                "label: gpt\nstart={}, size={}, type=L, name=root\n",
                PART_START / 512,
                PART_LEN / 512
            )
            .as_bytes(),
        )
        .unwrap();
    assert!(sfdisk.wait().unwrap().success());
    let content = dir.path().join("content");
    fs::create_dir(&content).unwrap();
    fs::write(content.join("golden.txt"), "from the golden image\n").unwrap();
    let part = dir.path().join("part.raw");
    File::create(&part).unwrap().set_len(PART_LEN).unwrap();
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&content)
        .arg(&part));
    let bytes = fs::read(&part).unwrap();
    OpenOptions::new()
        .write(true)
        .open(&raw)
        .unwrap()
        .write_all_at(&bytes, PART_START)
        .unwrap();
    fs::remove_file(&part).unwrap();
    let repo = Repository::open(dir.path().join("repo"), opts).unwrap();
    repo.import_image("gold", &raw, SourceFormat::Auto, &|_, _| {})
        .unwrap();
    repo.create_volume("vol1", Some("gold"), None).unwrap();
    repo.create_volume("vol2", Some("gold"), None).unwrap();
    Fixture {
        dir,
        repo: Arc::new(repo),
        raw,
    }
}

fn fixture() -> Fixture {
    fixture_with(RepoOptions::default())
}

/// A FUSE mount (and loop mounts on top of it) that is taken down on drop, even when the
/// test fails halfway.
struct Mounted {
    handle: Option<MountHandle>,
    path: PathBuf,
    loop_mounts: Vec<PathBuf>,
}

impl Mounted {
    fn new(f: &Fixture, name: &str, opts: MountOptions) -> Mounted {
        let path = f.dir.path().join(name);
        fs::create_dir_all(&path).unwrap();
        let handle = spawn_mount(f.repo.clone(), &path, opts).expect("mount");
        // spawn_mount returns once the kernel has the mount; check it is really served.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !path.join("volumes").is_dir() {
            assert!(Instant::now() < deadline, "mount never appeared");
            std::thread::yield_now();
        }
        Mounted {
            handle: Some(handle),
            path,
            loop_mounts: Vec::new(),
        }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    fn loop_mount(&mut self, file: &str, at: &Path) {
        fs::create_dir_all(at).unwrap();
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(self.p(file))
            .arg(at));
        self.loop_mounts.push(at.to_path_buf());
    }

    fn loop_umount(&mut self, at: &Path) {
        run(Command::new("umount").arg(at));
        self.loop_mounts.retain(|p| p != at);
    }

    /// Unmounts, retrying for a bounded time while the kernel lets go of a loop device.
    fn unmount(&mut self) {
        for at in std::mem::take(&mut self.loop_mounts) {
            let _ = Command::new("umount").arg(&at).status();
        }
        let Some(mut h) = self.handle.take() else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match h.unmount() {
                Ok(()) => return,
                // A loop device lets go of its backing file asynchronously: retry, bounded.
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        for at in std::mem::take(&mut self.loop_mounts) {
            if !Command::new("umount")
                .arg(&at)
                .status()
                .is_ok_and(|s| s.success())
            {
                let _ = Command::new("umount").arg("-l").arg(&at).status();
            }
        }
        // MountHandle's own Drop unmounts (lazily if still busy).
        self.handle.take();
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn size(p: &Path) -> u64 {
    fs::metadata(p).unwrap().len()
}

fn debugfs_cat(file: &Path, inside: &str) -> String {
    let out = run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {inside}"))
        .arg(file));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn mount_lists_volumes_partitions_and_images_and_follows_the_repository() {
    require!(false);
    let f = fixture();
    f.repo.create_volume("blank", None, Some(4 * MIB)).unwrap();
    let mut m = Mounted::new(&f, "mnt", MountOptions::default());
    assert_eq!(names(&m.path), ["images", "volumes"]);
    assert_eq!(
        names(&m.p("volumes")),
        ["blank", "vol1", "vol1.p1", "vol2", "vol2.p1"]
    );
    assert_eq!(names(&m.p("images")), ["gold", "gold.p1"]);
    assert_eq!(size(&m.p("volumes/vol1")), DISK_LEN);
    assert_eq!(size(&m.p("volumes/vol1.p1")), PART_LEN);
    assert_eq!(size(&m.p("volumes/blank")), 4 * MIB);
    assert_eq!(size(&m.p("images/gold")), DISK_LEN);
    assert_eq!(size(&m.p("images/gold.p1")), PART_LEN);
    assert!(fs::metadata(m.p("volumes/vol1.p2")).is_err());

    // The partition file is the partition's bytes: the ext4 superblock magic at 1080.
    let mut magic = [0u8; 2];
    File::open(m.p("volumes/vol1.p1"))
        .unwrap()
        .read_exact_at(&mut magic, 1080)
        .unwrap();
    assert_eq!(magic, [0x53, 0xEF]);

    let ino = |p: PathBuf| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
    let before = ino(m.p("volumes/vol2"));

    f.repo.create_volume("vol3", Some("gold"), None).unwrap();
    assert!(names(&m.p("volumes")).contains(&"vol3.p1".to_string()));
    assert_eq!(size(&m.p("volumes/vol3")), DISK_LEN);
    f.repo.remove_volume("vol3").unwrap();
    let after = names(&m.p("volumes"));
    assert!(!after.iter().any(|n| n.starts_with("vol3")), "{after:?}");
    assert_eq!(ino(m.p("volumes/vol2")), before, "inode numbers are stable");
    m.unmount();
}

#[test]
fn loop_mounted_ext4_partition_of_a_clone_takes_writes_and_stays_clean() {
    require!(true);
    let f = fixture();
    let original = fs::read(&f.raw).unwrap();
    let mut m = Mounted::new(&f, "mnt", MountOptions::default());
    let lm = f.dir.path().join("ext4");
    m.loop_mount("volumes/vol1.p1", &lm);
    assert_eq!(
        fs::read_to_string(lm.join("golden.txt")).unwrap(),
        "from the golden image\n"
    );
    fs::write(lm.join("new.txt"), "written through the loop device\n").unwrap();
    let big: Vec<u8> = (0..3 * MIB as usize).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(lm.join("big.bin"), &big).unwrap();
    m.loop_umount(&lm);

    let part = m.p("volumes/vol1.p1");
    run(Command::new("e2fsck").arg("-fn").arg(&part));
    assert_eq!(
        debugfs_cat(&part, "/new.txt"),
        "written through the loop device\n"
    );
    // The other clone and the golden image did not see the write.
    assert_eq!(debugfs_cat(&m.p("volumes/vol2.p1"), "/new.txt"), "");
    run(Command::new("e2fsck")
        .arg("-fn")
        .arg(m.p("volumes/vol2.p1")));
    assert_eq!(fs::read(m.p("images/gold")).unwrap(), original);

    // After unmounting (which flushes), a new mount reads the files back.
    m.unmount();
    let mut m = Mounted::new(&f, "mnt2", MountOptions::default());
    let lm = f.dir.path().join("ext4-again");
    m.loop_mount("volumes/vol1.p1", &lm);
    assert_eq!(fs::read(lm.join("big.bin")).unwrap(), big);
    assert!(lm.join("golden.txt").exists());
    m.loop_umount(&lm);
    m.unmount();
}

#[test]
fn clones_never_see_each_others_writes_and_the_image_stays_identical() {
    require!(false);
    let f = fixture();
    let mut m = Mounted::new(&f, "mnt", MountOptions::default());
    let v1 = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.p("volumes/vol1"))
        .unwrap();
    let pattern = vec![0xA5u8; 1 << 20];
    // Unaligned, spanning the partition start, and at the very end.
    v1.write_all_at(&pattern, PART_START - 777).unwrap();
    v1.write_all_at(&[1, 2, 3], DISK_LEN - 3).unwrap();
    v1.sync_all().unwrap();
    // Writing past the end of a disk fails: it cannot grow.
    let e = v1.write_at(&[9], DISK_LEN).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    drop(v1);

    let mut got = vec![0u8; pattern.len()];
    File::open(m.p("volumes/vol1"))
        .unwrap()
        .read_exact_at(&mut got, PART_START - 777)
        .unwrap();
    assert_eq!(got, pattern);
    // The same bytes seen through the partition file, offset by its start.
    let mut head = vec![0u8; 1000];
    File::open(m.p("volumes/vol1.p1"))
        .unwrap()
        .read_exact_at(&mut head, 0)
        .unwrap();
    assert!(head.iter().all(|&b| b == 0xA5));

    let original = fs::read(&f.raw).unwrap();
    assert_eq!(fs::read(m.p("volumes/vol2")).unwrap(), original);
    run(Command::new("cmp").arg(&f.raw).arg(m.p("images/gold")));
    m.unmount();
}

#[test]
fn read_only_mount_and_images_refuse_writes_with_erofs() {
    require!(false);
    let f = fixture();
    let mut m = Mounted::new(
        &f,
        "mnt",
        MountOptions {
            read_only: true,
            threads: 2,
        },
    );
    let e = OpenOptions::new()
        .write(true)
        .open(m.p("volumes/vol1"))
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    let mut b = [0u8; 512];
    File::open(m.p("volumes/vol1"))
        .unwrap()
        .read_exact_at(&mut b, 0)
        .unwrap();
    m.unmount();

    let mut m = Mounted::new(&f, "mnt-rw", MountOptions::default());
    let e = OpenOptions::new()
        .write(true)
        .open(m.p("images/gold"))
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    let e = OpenOptions::new()
        .write(true)
        .open(m.p("images/gold.p1"))
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    m.unmount();
}

#[test]
fn damaged_image_reads_fail_with_eio_instead_of_returning_data() {
    require!(false);
    // No chunk cache: every read checks the stored bytes.
    let f = fixture_with(RepoOptions { cache_bytes: 0 });
    let data = f.dir.path().join("repo/images/gold/data");
    let len = fs::metadata(&data).unwrap().len();
    assert!(len > 0);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&data)
        .unwrap();
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, len / 2).unwrap();
    file.write_all_at(&[b[0] ^ 0x10], len / 2).unwrap();
    drop(file);

    let mut m = Mounted::new(&f, "mnt", MountOptions::default());
    let mut img = File::open(m.p("images/gold")).unwrap();
    let mut all = Vec::new();
    let e = img.read_to_end(&mut all).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    drop(img);
    // A clone reads the damaged chunk through the image too.
    let e = fs::read(m.p("volumes/vol1")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    m.unmount();
}

#[test]
fn unmounting_from_outside_ends_the_mount() {
    require!(false);
    let f = fixture();
    let mut m = Mounted::new(&f, "mnt", MountOptions::default());
    run(Command::new("umount").arg(&m.path));
    let h = m.handle.as_mut().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.is_serving() {
        assert!(Instant::now() < deadline, "serving thread did not end");
        std::thread::yield_now();
    }
    m.unmount();
    // The volume is closed again: another user may open it for writing.
    f.repo.open_volume("vol1", false).unwrap();
}
