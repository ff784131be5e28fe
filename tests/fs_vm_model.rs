//! Model-based tests of the VM adapter (src/fs/vm): random edit sequences, in the guestfish
//! dialect, run by the real binary (`strata shell VOL -f SCRIPT --write`, one VM per job)
//! on XFS (mkfs.xfs defaults: v5, CRCs, reflink; and `-m reflink=0`), btrfs (mkfs.btrfs
//! defaults), and XFS and btrfs as logical volumes in LVM (RHEL's `rhel/root`, SLES's
//! `system/root`), and applied at the same
//! time to a small in-test model of the tree (paths, kinds, contents, symlink targets,
//! modes, owners, hard-link counts). Only commands whose outcome the model knows are
//! generated, so every script must succeed, and what it prints (`ls`, `checksum`,
//! `readlink`, `exists` probes) must be what the model says. After each job the volume is exported,
//! `xfs_repair -n` or `btrfs check --readonly` must find the filesystem clean, and the
//! host kernel's read-only loop mount (the oracle) must read back the model's tree. The
//! next sequence goes on on the same volume, so that the edits pile up.
//!
//! `STRATA_FS_VM_MODEL_SEQUENCES` sets the sequences (jobs) per flavor (default 4, 30 to
//! 50 commands each); a failure prints the flavor, the seed, the sequence and its script,
//! and `STRATA_FS_VM_MODEL_SEED` replays that seed (with as many sequences as it took).
//!
//! Needs root (loop mounts), xfsprogs, btrfs-progs, lvm2, qemu-system-x86 and a Debian
//! kernel in /boot (tools/install-deps).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::disks::{
    btrfs_check_clean, gpt_disk, part_file, rhel_disk, sized, xfs_image, xfs_repair_clean,
    KernelMount, Lvm, Part,
};
use common::{ok, tool, Repo};

const HINT: &str = "tools/install-deps";

// ---- The flavors and their golden images.

#[derive(Clone, Copy, PartialEq)]
enum Layout {
    /// One GPT partition holding XFS made with these extra mkfs.xfs options.
    Xfs(&'static [&'static str]),
    /// One GPT partition holding btrfs (mkfs.btrfs defaults).
    Btrfs,
    /// The RHEL-like disk of tests/fs_xfs.rs: the XFS root is LV `rhel/root`.
    LvmXfs,
    /// btrfs (mkfs.btrfs defaults) on LV `system/root`, as SLES installs it on LVM.
    LvmBtrfs,
}

#[derive(Clone, Copy)]
struct Flavor {
    name: &'static str,
    layout: Layout,
    /// Seed used unless `STRATA_FS_VM_MODEL_SEED` says otherwise.
    seed: u64,
}

impl Flavor {
    fn fs_type(&self) -> &'static str {
        match self.layout {
            Layout::Btrfs | Layout::LvmBtrfs => "btrfs",
            _ => "xfs",
        }
    }
}

/// A btrfs image (mkfs.btrfs defaults) made from a small tree: files, a symlink, modes.
fn btrfs_image(work: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let root = work.join("btrfs-root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("usr/share/doc")).unwrap();
    std::fs::write(root.join("etc/issue"), "SLES-like\n").unwrap();
    std::fs::write(root.join("etc/hostname"), "golden\n").unwrap();
    std::fs::write(
        root.join("usr/share/doc/big"),
        "0123456789abcdef".repeat(1000),
    )
    .unwrap();
    std::os::unix::fs::symlink("issue", root.join("etc/issue.net")).unwrap();
    std::fs::set_permissions(
        root.join("usr/share"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    std::fs::set_permissions(
        root.join("etc/hostname"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let img = work.join("btrfs.img");
    sized(&img, 300);
    ok(Command::new(tool("mkfs.btrfs", HINT))
        .args(["-q", "-f", "-L", "sles", "--rootdir"])
        .arg(&root)
        .arg(&img));
    img
}

/// The golden disk of `f`, and where its filesystem lies on it.
fn golden_disk(f: &Flavor, work: &Path) -> (PathBuf, Part) {
    match f.layout {
        Layout::Xfs(extra) => {
            let img = xfs_image(work, "root", extra);
            let (disk, mut parts) = gpt_disk(work, &[(&img, 300)]);
            (disk, parts.remove(0))
        }
        Layout::Btrfs => {
            let img = btrfs_image(work);
            let (disk, mut parts) = gpt_disk(work, &[(&img, 300)]);
            (disk, parts.remove(0))
        }
        Layout::LvmXfs => {
            let (disk, _, root) = rhel_disk(work);
            (disk, root)
        }
        Layout::LvmBtrfs => {
            let pv = work.join("pv.img");
            sized(&pv, 320);
            let (disk, parts) = gpt_disk(work, &[(&pv, 320)]);
            let lvm = Lvm::new(work, &disk, &parts[0]);
            lvm.create_vg("system");
            lvm.create_lv("system", "root", "300M");
            let root = lvm.at(&parts[0], "system", "root");
            drop(lvm);
            let img = btrfs_image(work);
            ok(Command::new("dd")
                .arg(format!("if={}", img.display()))
                .arg(format!("of={}", disk.display()))
                .arg(format!("seek={}", root.start))
                .args([
                    "bs=1M",
                    "oflag=seek_bytes",
                    "conv=notrunc,sparse",
                    "status=none",
                ]));
            (disk, root)
        }
    }
}

// ---- The seeded generator.

/// xorshift64*: deterministic, seedable, no dependency on an RNG crate's API.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

// ---- The model.

#[derive(Clone, Debug, PartialEq)]
enum Node {
    Dir {
        mode: u32,
        uid: u32,
        gid: u32,
    },
    /// A name of inode N (several names: hard links).
    File(u64),
    Symlink {
        target: String,
        uid: u32,
        gid: u32,
    },
}

#[derive(Clone, Debug)]
struct Inode {
    data: Vec<u8>,
    mode: u32,
    uid: u32,
    gid: u32,
    /// The link count the filesystem reported (read back only); the model counts names.
    nlink: Option<u64>,
}

/// Paths (absolute, `/` included) to what is there.
#[derive(Clone, Default)]
struct Model {
    nodes: BTreeMap<String, Node>,
    inodes: BTreeMap<u64, Inode>,
    next: u64,
}

/// What the tree holds, as compared: one line per path.
type Tree = BTreeMap<String, String>;

fn parent(p: &str) -> &str {
    match p.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &p[..i],
    }
}

fn base(p: &str) -> &str {
    &p[p.rfind('/').map_or(0, |i| i + 1)..]
}

fn join(d: &str, n: &str) -> String {
    if d == "/" {
        format!("/{n}")
    } else {
        format!("{d}/{n}")
    }
}

/// Whether `p` is `top` or below it.
fn under(p: &str, top: &str) -> bool {
    top == "/" || p == top || (p.starts_with(top) && p.as_bytes().get(top.len()) == Some(&b'/'))
}

/// `dst` moved to where `src` is when `top` becomes `to`.
fn moved(p: &str, top: &str, to: &str) -> String {
    format!("{to}{}", &p[top.len()..])
}

impl Model {
    fn new_inode(&mut self, data: Vec<u8>, mode: u32, uid: u32, gid: u32) -> u64 {
        self.next += 1;
        self.inodes.insert(
            self.next,
            Inode {
                data,
                mode,
                uid,
                gid,
                nlink: None,
            },
        );
        self.next
    }

    fn node(&self, p: &str) -> Option<&Node> {
        self.nodes.get(p)
    }

    fn is_dir(&self, p: &str) -> bool {
        matches!(self.node(p), Some(Node::Dir { .. }))
    }

    fn ino(&self, p: &str) -> Option<u64> {
        match self.node(p) {
            Some(Node::File(i)) => Some(*i),
            _ => None,
        }
    }

    fn inode_mut(&mut self, p: &str) -> &mut Inode {
        let i = self.ino(p).expect("a regular file");
        self.inodes.get_mut(&i).unwrap()
    }

    fn links(&self, ino: u64) -> usize {
        self.nodes
            .values()
            .filter(|n| **n == Node::File(ino))
            .count()
    }

    /// `p` and everything below it, parents first.
    fn subtree(&self, top: &str) -> Vec<String> {
        self.nodes
            .keys()
            .filter(|p| under(p, top))
            .cloned()
            .collect()
    }

    fn children(&self, dir: &str) -> Vec<String> {
        self.nodes
            .keys()
            .filter(|p| p.as_str() != "/" && parent(p) == dir)
            .cloned()
            .collect()
    }

    fn paths(&self, want: impl Fn(&Node) -> bool) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, n)| want(n))
            .map(|(p, _)| p.clone())
            .collect()
    }

    fn files(&self) -> Vec<String> {
        self.paths(|n| matches!(n, Node::File(_)))
    }

    fn dirs(&self) -> Vec<String> {
        self.paths(|n| matches!(n, Node::Dir { .. }))
    }

    fn symlinks(&self) -> Vec<String> {
        self.paths(|n| matches!(n, Node::Symlink { .. }))
    }

    /// Removes `top` and everything below it; inodes left without a name go.
    fn remove(&mut self, top: &str) {
        for p in self.subtree(top) {
            self.nodes.remove(&p);
        }
        self.gc();
    }

    fn gc(&mut self) {
        let named: std::collections::HashSet<u64> = self
            .nodes
            .values()
            .filter_map(|n| match n {
                Node::File(i) => Some(*i),
                _ => None,
            })
            .collect();
        self.inodes.retain(|i, _| named.contains(i));
    }

    /// Whether a file below `top` has other names (cp -a would keep those as hard links,
    /// strata's copy does not: the model leaves that case out).
    fn has_hard_links(&self, top: &str) -> bool {
        self.subtree(top)
            .iter()
            .any(|p| self.ino(p).is_some_and(|i| self.links(i) > 1))
    }

    fn tree(&self) -> Tree {
        let mut out = Tree::new();
        for (p, n) in &self.nodes {
            let d = match n {
                Node::Dir { mode, uid, gid } => format!("dir mode={mode:o} uid={uid} gid={gid}"),
                Node::File(i) => {
                    let f = &self.inodes[i];
                    let links = f.nlink.unwrap_or(self.links(*i) as u64);
                    format!(
                        "file mode={:o} uid={} gid={} links={links} size={} crc={:08x}",
                        f.mode,
                        f.uid,
                        f.gid,
                        f.data.len(),
                        crc32fast::hash(&f.data)
                    )
                }
                Node::Symlink { target, uid, gid } => {
                    format!("symlink -> {target:?} uid={uid} gid={gid}")
                }
            };
            out.insert(p.clone(), d);
        }
        out
    }

    /// The data of the file at `p`, if it is one.
    fn data(&self, p: &str) -> Option<&[u8]> {
        self.ino(p).map(|i| self.inodes[&i].data.as_slice())
    }
}

/// The tree under `root` as the host kernel shows it, in the model's form.
fn read_back(root: &Path) -> Model {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let mut m = Model::default();
    let mut by_ino: HashMap<u64, u64> = HashMap::new();
    let meta = std::fs::symlink_metadata(root).unwrap();
    m.nodes.insert(
        "/".into(),
        Node::Dir {
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
        },
    );
    let mut todo = vec![(root.to_path_buf(), "/".to_string())];
    while let Some((dir, shown)) = todo.pop() {
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{shown}: {e}")) {
            let e = e.unwrap();
            let name = String::from_utf8(e.file_name().as_bytes().to_vec())
                .unwrap_or_else(|_| panic!("{shown}: a name that is not UTF-8: {e:?}"));
            let p = join(&shown, &name);
            let full = e.path();
            let meta = std::fs::symlink_metadata(&full).unwrap();
            let ft = meta.file_type();
            let (mode, uid, gid) = (meta.mode() & 0o7777, meta.uid(), meta.gid());
            let node = if ft.is_dir() {
                todo.push((full.clone(), p.clone()));
                Node::Dir { mode, uid, gid }
            } else if ft.is_symlink() {
                let t = std::fs::read_link(&full).unwrap();
                Node::Symlink {
                    target: String::from_utf8(t.as_os_str().as_bytes().to_vec())
                        .unwrap_or_else(|_| panic!("{p}: a target that is not UTF-8")),
                    uid,
                    gid,
                }
            } else if ft.is_file() {
                let i = match by_ino.get(&meta.ino()) {
                    Some(i) => *i,
                    None => {
                        let data = std::fs::read(&full).unwrap_or_else(|e| panic!("{p}: {e}"));
                        let i = m.new_inode(data, mode, uid, gid);
                        m.inodes.get_mut(&i).unwrap().nlink = Some(meta.nlink());
                        by_ino.insert(meta.ino(), i);
                        i
                    }
                };
                Node::File(i)
            } else {
                panic!("{p}: unexpected file type {ft:?}");
            };
            m.nodes.insert(p, node);
        }
    }
    m
}

/// What differs between the model's tree and the one read back, one line each.
fn differences(want: &Model, got: &Model) -> String {
    let (w, g) = (want.tree(), got.tree());
    let mut out = Vec::new();
    for (p, d) in &w {
        match g.get(p) {
            None => out.push(format!("missing on disk: {p:?}: {d}")),
            Some(x) if x != d => {
                let mut line = format!("differs: {p:?}:\n    model: {d}\n    disk:  {x}");
                if let (Some(a), Some(b)) = (want.data(p), got.data(p)) {
                    if let Some(at) = a.iter().zip(b).position(|(x, y)| x != y) {
                        line += &format!(
                            "\n    first differing byte at {at}: model {:#04x}, disk {:#04x}",
                            a[at], b[at]
                        );
                    }
                }
                out.push(line);
            }
            _ => {}
        }
    }
    for (p, d) in &g {
        if !w.contains_key(p) {
            out.push(format!("not in the model: {p:?}: {d}"));
        }
    }
    out.join("\n")
}

// ---- Script generation: each command is rendered and applied to the model at once.

/// Names: short, case pairs, long (255 bytes), non-ASCII, with blanks and quotes.
fn names() -> Vec<String> {
    vec![
        "a".into(),
        "b".into(),
        "B".into(),
        "conf.d".into(),
        "données-é".into(),
        "中文名".into(),
        "with space".into(),
        "dot.txt".into(),
        "q'uote".into(),
        "d\"q".into(),
        "back\\slash".into(),
        "#hash".into(),
        "tab\tname".into(),
        "-dash".into(),
        "n".repeat(255),
        "x".repeat(100),
    ]
}

/// A double-quoted guestfish argument: C escapes for quotes, backslashes and control
/// characters, the rest (UTF-8 too) as it is.
fn q(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Content for `write`: (the quoted argument, the bytes it means). Text mostly, with
/// newlines, quotes, control characters and non-ASCII characters (raw, or as `\xHH` per
/// UTF-8 byte), and bytes that are not UTF-8 (a lone `\xd8`); from empty to past btrfs's
/// inline-extent limit.
fn content(r: &mut Rng) -> (String, Vec<u8>) {
    let len = match r.below(20) {
        0 => 0,
        1..=10 => 1 + r.below(64),
        11..=17 => 64 + r.below(600),
        _ => 1500 + r.below(2500),
    } as usize;
    const TEXT: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789 ";
    const WIDE: &[char] = &['é', 'ß', 'ä', '中', '文', '€', '😀', '\u{7f}', '\u{a0}'];
    let mut arg = String::from("\"");
    let mut data = Vec::new();
    for _ in 0..len {
        if r.below(40) == 0 {
            let b = 0x80 + r.below(0x80) as u8;
            data.push(b);
            arg.push_str(&format!("\\x{b:02x}"));
            continue;
        }
        let c = match r.below(20) {
            0..=13 => *r.pick(TEXT) as char,
            14 | 15 => '\n',
            16 => *r.pick(&['"', '\\', '\t', '\'', '#']),
            17 => (1 + r.below(31)) as u8 as char,
            _ => *r.pick(WIDE),
        };
        let mut buf = [0u8; 4];
        let bytes = c.encode_utf8(&mut buf).as_bytes();
        data.extend_from_slice(bytes);
        match c {
            '"' => arg.push_str("\\\""),
            '\\' => arg.push_str("\\\\"),
            '\n' => arg.push_str("\\n"),
            '\t' => arg.push_str("\\t"),
            ' '..='~' => arg.push(c),
            c if c.is_ascii() || r.chance(50) => {
                for b in bytes {
                    arg.push_str(&format!("\\x{b:02x}"));
                }
            }
            c => arg.push(c),
        }
    }
    arg.push('"');
    (arg, data)
}

const DIR_MODES: &[u32] = &[
    0o755, 0o700, 0o750, 0o777, 0o1777, 0o555, 0o711, 0o000, 0o4755,
];
const FILE_MODES: &[u32] = &[
    0o644, 0o600, 0o640, 0o755, 0o700, 0o444, 0o000, 0o777, 0o4755, 0o2755, 0o6755, 0o1644, 0o2644,
];
const IDS: &[u32] = &[0, 1, 1000, 65534, 4_000_000];

/// One sequence's script and what it must print.
struct Sequence {
    script: String,
    stdout: String,
}

struct Gen<'a> {
    r: &'a mut Rng,
    m: &'a mut Model,
    names: Vec<String>,
    device: &'static str,
    alt_device: &'static str,
    tag: String,
    blobs: u32,
    probes: u32,
    script: String,
    stdout: String,
}

impl Gen<'_> {
    fn line(&mut self, s: &str) {
        self.script.push_str(s);
        self.script.push('\n');
    }

    /// Directories new names may go in (not too deep or long, so that paths stay short
    /// of PATH_MAX whatever moves them).
    fn roomy_dirs(&self) -> Vec<String> {
        self.m
            .dirs()
            .into_iter()
            .filter(|d| d.matches('/').count() < 5 && d.len() < 700)
            .collect()
    }

    /// A name that does not exist, in a directory that does.
    fn fresh_in(&mut self, dirs: &[String]) -> Option<String> {
        if dirs.is_empty() {
            return None;
        }
        for _ in 0..10 {
            let d = self.r.pick(dirs).clone();
            let n = self.r.pick(&self.names).clone();
            let p = join(&d, &n);
            if self.m.node(&p).is_none() {
                return Some(p);
            }
        }
        None
    }

    fn fresh(&mut self) -> Option<String> {
        let dirs = self.roomy_dirs();
        self.fresh_in(&dirs)
    }

    fn pick(&mut self, v: Vec<String>) -> Option<String> {
        if v.is_empty() {
            None
        } else {
            Some(self.r.pick(&v).clone())
        }
    }

    /// A regular file that exists, or (`percent` of the time, or if there is none) a
    /// new name.
    fn file_or_fresh(&mut self, percent: u64) -> Option<String> {
        let files = self.m.files();
        if files.is_empty() || self.r.chance(percent) {
            self.fresh()
        } else {
            self.pick(files)
        }
    }

    /// Writes `data` as `write`/`upload` do: an existing file keeps its inode and mode.
    fn set_data(&mut self, p: &str, data: Vec<u8>) {
        if self.m.ino(p).is_some() {
            self.m.inode_mut(p).data = data;
        } else {
            let i = self.m.new_inode(data, 0o644, 0, 0);
            self.m.nodes.insert(p.to_string(), Node::File(i));
        }
    }

    fn probe(&mut self, cmd: String, out: String) {
        self.probes += 1;
        let n = self.probes;
        self.line(&format!("echo probe-{n}"));
        self.line(&cmd);
        self.stdout += &format!("probe-{n}\n{out}");
    }

    /// Copies the node at `src` (and what is below it) to `dst`, as `cp -a` (`archive`)
    /// or `cp -rP` do in strata.
    fn copy_tree(&mut self, src: &str, dst: &str, archive: bool) {
        for p in self.m.subtree(src) {
            let to = moved(&p, src, dst);
            let node = match self.m.node(&p).unwrap().clone() {
                Node::Dir { mode, uid, gid } => {
                    if archive {
                        Node::Dir { mode, uid, gid }
                    } else {
                        Node::Dir {
                            mode,
                            uid: 0,
                            gid: 0,
                        }
                    }
                }
                Node::Symlink { target, uid, gid } => {
                    if archive {
                        Node::Symlink { target, uid, gid }
                    } else {
                        Node::Symlink {
                            target,
                            uid: 0,
                            gid: 0,
                        }
                    }
                }
                Node::File(i) => {
                    let f = self.m.inodes[&i].clone();
                    let n = if archive {
                        self.m.new_inode(f.data, f.mode, f.uid, f.gid)
                    } else {
                        self.m.new_inode(f.data, f.mode & !0o022, 0, 0)
                    };
                    Node::File(n)
                }
            };
            self.m.nodes.insert(to, node);
        }
    }

    /// Where a new name for `src` may go: a new name in a directory not below `src`, or
    /// such a directory itself when it has no entry called like `src` (GNU's rule puts
    /// it inside). Returns (the argument, the resulting path).
    fn destination(&mut self, src: &str) -> Option<(String, String)> {
        let dirs: Vec<String> = self
            .roomy_dirs()
            .into_iter()
            .filter(|d| !under(d, src))
            .collect();
        if self.r.chance(70) {
            let p = self.fresh_in(&dirs)?;
            Some((p.clone(), p))
        } else {
            let into: Vec<String> = dirs
                .into_iter()
                .filter(|d| self.m.node(&join(d, base(src))).is_none())
                .collect();
            let d = self.pick(into)?;
            let p = join(&d, base(src));
            Some((d, p))
        }
    }

    /// One command (or a few lines making one step); false if none could be made.
    fn step(&mut self) -> bool {
        let k = self.r.below(100);
        match k {
            // write: a new file or an existing one.
            0..=11 => {
                let Some(p) = self.file_or_fresh(50) else {
                    return false;
                };
                let (arg, data) = content(self.r);
                self.line(&format!("write {} {arg}", q(&p)));
                self.set_data(&p, data);
            }
            12..=17 => {
                let Some(p) = self.file_or_fresh(25) else {
                    return false;
                };
                let (arg, data) = content(self.r);
                self.line(&format!("write-append {} {arg}", q(&p)));
                if self.m.ino(&p).is_some() {
                    self.m.inode_mut(&p).data.extend_from_slice(&data);
                } else {
                    self.set_data(&p, data);
                }
            }
            // upload of a bigger file the sandbox makes: seq's lines.
            18..=22 => {
                let Some(p) = self.file_or_fresh(50) else {
                    return false;
                };
                self.blobs += 1;
                let tok = format!("{}b{}-", self.tag, self.blobs);
                let from = 1 + self.r.below(1000);
                let to = from
                    + match self.r.below(16) {
                        0..=3 => self.r.below(100),
                        4..=10 => 100 + self.r.below(10_000),
                        11..=14 => 10_000 + self.r.below(60_000),
                        // Past the 8 MiB pieces files move in.
                        _ => 700_000 + self.r.below(200_000),
                    };
                let blob = format!("./blob{}", self.blobs);
                self.line(&format!("!seq -f '{tok}%.0f' {from} {to} > {blob}"));
                self.line(&format!("upload {blob} {}", q(&p)));
                let data: String = (from..=to).map(|i| format!("{tok}{i}\n")).collect();
                self.set_data(&p, data.into_bytes());
            }
            23..=26 => {
                let Some(p) = self.pick(self.m.files()) else {
                    return false;
                };
                let len = self.m.data(&p).unwrap().len() as u64;
                let size = match self.r.below(6) {
                    0 => 0,
                    1 | 2 => self.r.below(len + 1),
                    3 | 4 => len + self.r.below(200_000),
                    _ => 4_000_000 + self.r.below(1 << 20),
                };
                self.line(&format!("truncate-size {} {size}", q(&p)));
                self.m.inode_mut(&p).data.resize(size as usize, 0);
            }
            27..=29 => {
                let Some(p) = self.file_or_fresh(60) else {
                    return false;
                };
                self.line(&format!("touch {}", q(&p)));
                if self.m.node(&p).is_none() {
                    self.set_data(&p, Vec::new());
                }
            }
            30..=34 => {
                let Some(p) = self.fresh() else { return false };
                self.line(&format!("mkdir {}", q(&p)));
                self.m.nodes.insert(
                    p,
                    Node::Dir {
                        mode: 0o755,
                        uid: 0,
                        gid: 0,
                    },
                );
            }
            35..=38 => {
                let Some(mut p) = self.fresh() else {
                    return false;
                };
                let mut made = vec![p.clone()];
                for _ in 0..self.r.below(3) {
                    p = join(&p, self.r.pick(&self.names).clone().as_str());
                    made.push(p.clone());
                }
                self.line(&format!("mkdir-p {}", q(&p)));
                for d in made {
                    self.m.nodes.insert(
                        d,
                        Node::Dir {
                            mode: 0o755,
                            uid: 0,
                            gid: 0,
                        },
                    );
                }
            }
            39..=40 => {
                let Some(p) = self.fresh() else { return false };
                let mode = *self.r.pick(DIR_MODES);
                self.line(&format!("mkdir-mode {} 0{mode:o}", q(&p)));
                self.m.nodes.insert(
                    p,
                    Node::Dir {
                        mode,
                        uid: 0,
                        gid: 0,
                    },
                );
            }
            // rm and rm-f of a file or a symlink (rm-f also of nothing).
            41..=46 => {
                let mut v = self.m.files();
                v.extend(self.m.symlinks());
                let force = self.r.chance(30);
                let p = if force && self.r.chance(30) {
                    self.fresh()
                } else {
                    self.pick(v)
                };
                let Some(p) = p else { return false };
                let cmd = if force { "rm-f" } else { "rm" };
                self.line(&format!("{cmd} {}", q(&p)));
                self.m.remove(&p);
            }
            47..=49 => {
                let v: Vec<String> = self
                    .m
                    .nodes
                    .keys()
                    .filter(|p| p.as_str() != "/")
                    .cloned()
                    .collect();
                let p = if self.r.chance(15) {
                    self.fresh()
                } else {
                    self.pick(v)
                };
                let Some(p) = p else { return false };
                self.line(&format!("rm-rf {}", q(&p)));
                self.m.remove(&p);
            }
            50..=51 => {
                let empty: Vec<String> = self
                    .m
                    .dirs()
                    .into_iter()
                    .filter(|d| d != "/" && self.m.children(d).is_empty())
                    .collect();
                let Some(p) = self.pick(empty) else {
                    return false;
                };
                self.line(&format!("rmdir {}", q(&p)));
                self.m.remove(&p);
            }
            // mv: to a new name, into a directory, or over another regular file.
            52..=57 => {
                let v: Vec<String> = self
                    .m
                    .nodes
                    .keys()
                    .filter(|p| p.as_str() != "/")
                    .cloned()
                    .collect();
                let Some(src) = self.pick(v) else {
                    return false;
                };
                let over = !self.m.is_dir(&src) && self.r.chance(25);
                let (arg, dst) = if over {
                    let ino = self.m.ino(&src);
                    let others: Vec<String> = self
                        .m
                        .files()
                        .into_iter()
                        .filter(|f| *f != src && self.m.ino(f) != ino)
                        .collect();
                    let Some(d) = self.pick(others) else {
                        return false;
                    };
                    (d.clone(), d)
                } else {
                    let Some(x) = self.destination(&src) else {
                        return false;
                    };
                    x
                };
                self.line(&format!("mv {} {}", q(&src), q(&arg)));
                if self.m.node(&dst).is_some() {
                    self.m.nodes.remove(&dst);
                }
                for p in self.m.subtree(&src) {
                    let n = self.m.nodes.remove(&p).unwrap();
                    self.m.nodes.insert(moved(&p, &src, &dst), n);
                }
                self.m.gc();
            }
            // cp of a regular file: new (mode under umask 022, owner root) or over one.
            58..=61 => {
                let Some(src) = self.pick(self.m.files()) else {
                    return false;
                };
                let ino = self.m.ino(&src);
                let (arg, dst) = if self.r.chance(30) {
                    let others: Vec<String> = self
                        .m
                        .files()
                        .into_iter()
                        .filter(|f| self.m.ino(f) != ino)
                        .collect();
                    let Some(d) = self.pick(others) else {
                        return false;
                    };
                    (d.clone(), d)
                } else {
                    let Some(x) = self.destination(&src) else {
                        return false;
                    };
                    x
                };
                self.line(&format!("cp {} {}", q(&src), q(&arg)));
                let f = self.m.inodes[&ino.unwrap()].clone();
                if self.m.ino(&dst).is_some() {
                    self.m.inode_mut(&dst).data = f.data;
                } else {
                    let i = self.m.new_inode(f.data, f.mode & !0o022, 0, 0);
                    self.m.nodes.insert(dst, Node::File(i));
                }
            }
            // cp-a and cp-r of anything (a tree without hard links, not too big).
            62..=66 => {
                let v: Vec<String> = self
                    .m
                    .nodes
                    .keys()
                    .filter(|p| p.as_str() != "/")
                    .cloned()
                    .collect();
                let Some(src) = self.pick(v) else {
                    return false;
                };
                if self.m.is_dir(&src)
                    && (self.m.has_hard_links(&src) || self.m.subtree(&src).len() > 40)
                {
                    return false;
                }
                let Some((arg, dst)) = self.destination(&src) else {
                    return false;
                };
                let archive = self.r.chance(60);
                let cmd = if archive { "cp-a" } else { "cp-r" };
                self.line(&format!("{cmd} {} {}", q(&src), q(&arg)));
                self.copy_tree(&src, &dst, archive);
            }
            // symlinks: to what exists, to nothing, relative, long.
            67..=71 => {
                let target = match self.r.below(5) {
                    0 | 1 => {
                        let v: Vec<String> = self.m.nodes.keys().cloned().collect();
                        self.pick(v).unwrap()
                    }
                    2 => format!("../{}", self.r.pick(&self.names)),
                    3 => self.r.pick(&self.names).clone(),
                    _ => format!("/nowhere/{}", "ä".repeat(1 + self.r.below(150) as usize)),
                };
                let force = self.r.chance(25);
                let link = if force {
                    self.file_or_fresh(40)
                } else {
                    self.fresh()
                };
                let Some(link) = link else { return false };
                let cmd = if force { "ln-sf" } else { "ln-s" };
                self.line(&format!("{cmd} {} {}", q(&target), q(&link)));
                self.m.remove(&link);
                self.m.nodes.insert(
                    link,
                    Node::Symlink {
                        target,
                        uid: 0,
                        gid: 0,
                    },
                );
            }
            // hard links.
            72..=74 => {
                let Some(target) = self.pick(self.m.files()) else {
                    return false;
                };
                let Some(link) = self.fresh() else {
                    return false;
                };
                self.line(&format!("ln {} {}", q(&target), q(&link)));
                let i = self.m.ino(&target).unwrap();
                self.m.nodes.insert(link, Node::File(i));
            }
            75..=79 => {
                let v: Vec<String> = self
                    .m
                    .nodes
                    .iter()
                    .filter(|(_, n)| !matches!(n, Node::Symlink { .. }))
                    .map(|(p, _)| p.clone())
                    .collect();
                let Some(p) = self.pick(v) else {
                    return false;
                };
                if let Some(i) = self.m.ino(&p) {
                    let mode = *self.r.pick(FILE_MODES);
                    self.line(&format!("chmod 0{mode:o} {}", q(&p)));
                    self.m.inodes.get_mut(&i).unwrap().mode = mode;
                } else {
                    let mode = *self.r.pick(DIR_MODES);
                    self.line(&format!("chmod 0{mode:o} {}", q(&p)));
                    if let Some(Node::Dir { mode: m, .. }) = self.m.nodes.get_mut(&p) {
                        *m = mode;
                    }
                }
            }
            // chown: a regular file loses set-user-ID (and set-group-ID with g+x), as
            // chown(2) does even for root.
            80..=82 => {
                let v: Vec<String> = self
                    .m
                    .nodes
                    .iter()
                    .filter(|(_, n)| !matches!(n, Node::Symlink { .. }))
                    .map(|(p, _)| p.clone())
                    .collect();
                let Some(p) = self.pick(v) else {
                    return false;
                };
                let (u, g) = (*self.r.pick(IDS), *self.r.pick(IDS));
                self.line(&format!("chown {u} {g} {}", q(&p)));
                if let Some(i) = self.m.ino(&p) {
                    let f = self.m.inodes.get_mut(&i).unwrap();
                    f.uid = u;
                    f.gid = g;
                    f.mode &= !0o4000;
                    if f.mode & 0o010 != 0 {
                        f.mode &= !0o2000;
                    }
                } else if let Some(Node::Dir { uid, gid, .. }) = self.m.nodes.get_mut(&p) {
                    *uid = u;
                    *gid = g;
                }
            }
            // Probes: what the script prints must be what the model holds.
            83..=86 => {
                let Some(d) = self.pick(self.m.dirs()) else {
                    return false;
                };
                let out: String = self
                    .m
                    .children(&d)
                    .iter()
                    .map(|c| format!("{}\n", base(c)))
                    .collect();
                self.probe(format!("ls {}", q(&d)), out);
            }
            87..=90 => {
                let Some(p) = self.pick(self.m.files()) else {
                    return false;
                };
                use sha2::Digest;
                let h = sha2::Sha256::digest(self.m.data(&p).unwrap());
                let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
                self.probe(format!("checksum sha256 {}", q(&p)), format!("{hex}\n"));
            }
            91..=92 => {
                let Some(p) = self.pick(self.m.symlinks()) else {
                    return false;
                };
                let Some(Node::Symlink { target, .. }) = self.m.node(&p) else {
                    unreachable!()
                };
                let out = format!("{target}\n");
                self.probe(format!("readlink {}", q(&p)), out);
            }
            // Unmount and mount again mid-job (the agent's handles must not go stale).
            93..=95 => {
                let dev = if self.r.chance(50) {
                    self.device
                } else {
                    self.alt_device
                };
                self.line("umount-all");
                self.line(&format!("mount {dev} /"));
            }
            96..=97 => {
                let p = if self.r.chance(50) {
                    let v: Vec<String> = self.m.nodes.keys().cloned().collect();
                    self.pick(v)
                } else {
                    self.fresh()
                };
                let Some(p) = p else { return false };
                // guestfish's `exists` follows symlinks; ask lstat's question instead
                // when the path is a symlink (is-symlink).
                let out = if matches!(self.m.node(&p), Some(Node::Symlink { .. })) {
                    ("is-symlink", "true\n")
                } else if self.m.node(&p).is_some() {
                    ("exists", "true\n")
                } else {
                    ("exists", "false\n")
                };
                self.probe(format!("{} {}", out.0, q(&p)), out.1.into());
            }
            _ => self.line("sync"),
        }
        true
    }
}

fn sequence(r: &mut Rng, m: &mut Model, f: &Flavor, s: u64) -> Sequence {
    let (device, alt_device) = match f.layout {
        Layout::LvmXfs => ("/dev/rhel/root", "/dev/mapper/rhel-root"),
        Layout::LvmBtrfs => ("/dev/system/root", "/dev/mapper/system-root"),
        _ => ("/dev/sda1", "/dev/sda1"),
    };
    let mut g = Gen {
        r,
        m,
        names: names(),
        device,
        alt_device,
        tag: format!("s{s}"),
        blobs: 0,
        probes: 0,
        script: String::new(),
        stdout: String::new(),
    };
    g.line(&format!("mount {device} /"));
    let n = 30 + g.r.below(21);
    let mut done = 0;
    let mut tries = 0;
    while done < n && tries < 10 * n {
        tries += 1;
        if g.step() {
            done += 1;
        }
    }
    if g.r.chance(50) {
        g.line("umount-all");
    }
    Sequence {
        script: g.script,
        stdout: g.stdout,
    }
}

// ---- The test.

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| {
        let v = v.trim();
        match v.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16).ok(),
            None => v.parse().ok(),
        }
    })
}

fn model_test(f: Flavor) {
    let started = std::time::Instant::now();
    let sequences = env_u64("STRATA_FS_VM_MODEL_SEQUENCES").unwrap_or(4);
    let seed = env_u64("STRATA_FS_VM_MODEL_SEED").unwrap_or(f.seed);
    let r = Repo::new();
    let (disk, part) = golden_disk(&f, &r.work);
    r.ok(&["image", "import", disk.to_str().unwrap(), "--name", "gold"]);
    std::fs::remove_file(&disk).unwrap();
    r.ok(&["volume", "create", "vol", "--from", "gold"]);
    let raw = r.path("vol.raw");
    let fs_img = r.path("fs.img");
    let export = || {
        let _ = std::fs::remove_file(&raw);
        r.ok(&["volume", "export", "vol", raw.to_str().unwrap()]);
    };
    export();
    let mut model = {
        let m = KernelMount::new(&raw, &part, f.fs_type());
        read_back(m.dir.path())
    };
    // The model counts names itself.
    for i in model.inodes.values_mut() {
        i.nlink = None;
    }
    let mut rng = Rng(seed | 1);
    let mut commands = 0;
    let mut largest = 0;
    for s in 0..sequences {
        let seq = sequence(&mut rng, &mut model, &f, s);
        commands += seq.script.lines().count();
        let context = || {
            format!(
                "{}: seed {seed:#x}, sequence {s} of {sequences} (replay: \
                 STRATA_FS_VM_MODEL_SEED={seed:#x} STRATA_FS_VM_MODEL_SEQUENCES={})\nscript:\n{}",
                f.name,
                s + 1,
                seq.script
            )
        };
        let script = r.path(&format!("seq{s}.fish"));
        std::fs::write(&script, &seq.script).unwrap();
        let t = std::time::Instant::now();
        let o = r.run(&["shell", "vol", "-f", script.to_str().unwrap(), "--write"]);
        let job = t.elapsed();
        let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(
            o.status.success(),
            "the job failed: {stderr}\nstdout:\n{stdout}\n{}",
            context()
        );
        if stdout != seq.stdout {
            let (w, g): (Vec<&str>, Vec<&str>) =
                (seq.stdout.lines().collect(), stdout.lines().collect());
            let at = w
                .iter()
                .zip(&g)
                .position(|(a, b)| a != b)
                .unwrap_or(w.len().min(g.len()));
            panic!(
                "the script printed other than the model says, from line {at}:\n  model: {:?}\n  got:   {:?}\nwhole output:\n{stdout}\n{}",
                &w[at.saturating_sub(1)..(at + 2).min(w.len())],
                &g[at.saturating_sub(1)..(at + 2).min(g.len())],
                context()
            );
        }
        export();
        part_file(&raw, &part, &fs_img);
        let checked = std::panic::catch_unwind(|| match f.layout {
            Layout::Btrfs | Layout::LvmBtrfs => btrfs_check_clean(&fs_img),
            _ => xfs_repair_clean(&fs_img),
        });
        if let Err(e) = checked {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| "checker panicked".into());
            panic!(
                "the checker finds the filesystem unclean: {msg}\n{}",
                context()
            );
        }
        let _ = std::fs::remove_file(&fs_img);
        let got = {
            let m = KernelMount::new(&raw, &part, f.fs_type());
            read_back(m.dir.path())
        };
        let diff = differences(&model, &got);
        assert!(
            diff.is_empty(),
            "the tree read back differs from the model:\n{diff}\n{}",
            context()
        );
        largest = largest.max(model.nodes.len());
        eprintln!(
            "{}: sequence {s}: {} lines, job {:.1}s, {} paths",
            f.name,
            seq.script.lines().count(),
            job.as_secs_f64(),
            model.nodes.len()
        );
    }
    eprintln!(
        "{}: {sequences} sequences, {commands} script lines, up to {largest} paths, seed {seed:#x}, {:.0}s",
        f.name,
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn xfs_with_mkfs_defaults_matches_the_model() {
    model_test(Flavor {
        name: "xfs (mkfs.xfs defaults)",
        layout: Layout::Xfs(&[]),
        seed: 0x5eed_f5_01,
    });
}

#[test]
fn xfs_without_reflink_matches_the_model() {
    model_test(Flavor {
        name: "xfs (reflink=0)",
        layout: Layout::Xfs(&["-m", "reflink=0"]),
        seed: 0x5eed_f5_02,
    });
}

#[test]
fn btrfs_with_mkfs_defaults_matches_the_model() {
    model_test(Flavor {
        name: "btrfs (mkfs.btrfs defaults)",
        layout: Layout::Btrfs,
        seed: 0x5eed_f5_03,
    });
}

#[test]
fn xfs_in_lvm_matches_the_model() {
    model_test(Flavor {
        name: "xfs in LVM (rhel/root)",
        layout: Layout::LvmXfs,
        seed: 0x5eed_f5_04,
    });
}

#[test]
fn btrfs_in_lvm_matches_the_model() {
    model_test(Flavor {
        name: "btrfs in LVM (system/root)",
        layout: Layout::LvmBtrfs,
        seed: 0x5eed_f5_05,
    });
}
