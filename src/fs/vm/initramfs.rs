//! The VM's initramfs: strata's own binary as `/init` (it runs the agent when started as
//! pid 1), the shared libraries it links, and the kernel modules the agent loads (virtio,
//! XFS, btrfs, ext4 and what they need). Built at run time from the host's Debian kernel and
//! cached, keyed by the kernel and the binary, so that a new build or a kernel upgrade makes
//! a new one.
//!
//! The archive format (newc cpio, what the kernel unpacks) is written here in `Cpio`, pure;
//! collecting the files is separate.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::fs::types::*;

/// The modules the agent loads, by group and name; their dependencies come from
/// `modules.dep`. `base` is loaded at boot, a filesystem's group at its first mount (btrfs
/// pulls in raid6_pq and xor, which time their algorithms when loaded: seconds under TCG).
/// `crc32c_generic` first: libcrc32c asks the crypto API for "crc32c", which would otherwise
/// need modprobe (there is none), and TCG's CPU has no SSE4.2 for crc32c-intel.
pub const MODULES: &[(&str, &[&str])] = &[
    ("base", &["virtio_pci", "virtio_blk", "virtio_console"]),
    ("xfs", &["crc32c_generic", "xfs"]),
    ("btrfs", &["crc32c_generic", "btrfs"]),
    // ext4 with a journal to replay (`fs::ext4::kernel_recovers`).
    ("ext4", &["crc32c_generic", "ext4"]),
];

/// A newc ("070701") cpio archive written into memory.
#[derive(Default)]
pub struct Cpio {
    out: Vec<u8>,
    next_ino: u32,
    dirs: BTreeSet<String>,
}

impl Cpio {
    pub fn new() -> Cpio {
        Cpio::default()
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.next_ino += 1;
        let name_len = name.len() + 1;
        let header = format!(
            "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            self.next_ino,
            mode,
            0,
            0,
            if mode & 0o040000 != 0 { 2 } else { 1 },
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name_len,
            0
        );
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.out.len() % 4 != 0 {
            self.out.push(0);
        }
    }

    /// A directory (and its parents, once each). `path` has no leading `/`.
    pub fn dir(&mut self, path: &str) {
        let mut at = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(part);
            if self.dirs.insert(at.clone()) {
                let a = at.clone();
                self.entry(&a, 0o040755, &[]);
            }
        }
    }

    /// A regular file, its parent directories made first.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.entry(path, 0o100000 | (mode & 0o7777), data);
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.out
    }
}

/// The kernel to boot: `STRATA_VM_KERNEL`, else the newest `/boot/vmlinuz-*`. With its
/// version (the modules directory's name).
pub fn kernel() -> FsResult<(PathBuf, String)> {
    if let Ok(k) = std::env::var("STRATA_VM_KERNEL") {
        let p = PathBuf::from(k);
        let v = version_of(&p).unwrap_or_default();
        return Ok((p, v));
    }
    let mut ks: Vec<PathBuf> = std::fs::read_dir("/boot")
        .map_err(|e| FsError::new(libc::ENOENT, format!("/boot: {e}")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| version_of(p).is_some())
        .collect();
    ks.sort();
    let k = ks.pop().ok_or_else(|| {
        FsError::new(
            libc::ENOENT,
            "no Linux kernel in /boot (vmlinuz-*) for the XFS/btrfs VM: install Debian's \
             linux-image-amd64 (tools/install-deps)",
        )
    })?;
    let v = version_of(&k).unwrap_or_default();
    Ok((k, v))
}

/// The kernel QEMU should load: `vmlinux` unpacked from the `vmlinuz` and cached, when the
/// kernel has a PVH entry (CONFIG_PVH, as Debian's has), so that QEMU enters it directly;
/// else the `vmlinuz` itself. Under TCG, the bzImage's own decompressor and the BIOS path
/// to it cost about ten seconds of every boot.
pub fn bootable(kernel: &Path, version: &str) -> PathBuf {
    let pvh = std::fs::read_to_string(format!("/boot/config-{version}"))
        .is_ok_and(|c| c.lines().any(|l| l == "CONFIG_PVH=y"));
    if !pvh {
        return kernel.to_path_buf();
    }
    let key = {
        use sha2::Digest;
        let d = sha2::Sha256::digest(stamp(kernel).as_bytes());
        d.iter()
            .take(12)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let dir = cache_dir();
    let out = dir.join(format!("vmlinux-{key}"));
    if out.exists() {
        return out;
    }
    match unpack_vmlinux(kernel, &dir, &out) {
        Ok(()) => out,
        Err(e) => {
            tracing::debug!("booting the compressed kernel: {e}");
            kernel.to_path_buf()
        }
    }
}

/// The ELF inside a bzImage: the xz stream after its decompressor, through `xz -dc` (which
/// complains about the bytes after the stream; the output is whole before them).
fn unpack_vmlinux(kernel: &Path, dir: &Path, out: &Path) -> Result<(), String> {
    let image = std::fs::read(kernel).map_err(|e| e.to_string())?;
    let at = image
        .windows(6)
        .position(|w| w == b"\xfd7zXZ\0")
        .ok_or("no xz stream in the kernel image")?;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let mut child = Command::new("xz")
        .arg("-dc")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("xz: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("xz has no stdin")?;
    let payload = image[at..].to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&payload);
    });
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    let _ = feeder.join();
    let elf = output.stdout;
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" {
        return Err("the kernel's payload is not an ELF image".into());
    }
    let tmp = dir.join(format!(".vmlinux.{}", std::process::id()));
    std::fs::write(&tmp, &elf).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, out).map_err(|e| e.to_string())
}

fn version_of(p: &Path) -> Option<String> {
    p.file_name()?
        .to_str()?
        .strip_prefix("vmlinuz-")
        .map(str::to_string)
}

/// The modules to load, dependencies first, as paths under `moddir` (from `modules.dep`,
/// whose lines are `kernel/fs/xfs/xfs.ko: kernel/lib/libcrc32c.ko`).
pub fn module_order(modules_dep: &str, wanted: &[&str]) -> Result<Vec<String>, String> {
    let mut deps = std::collections::HashMap::new();
    let mut by_name = std::collections::HashMap::new();
    for line in modules_dep.lines() {
        let Some((m, d)) = line.split_once(':') else {
            continue;
        };
        let name = module_name(m);
        by_name.insert(name, m.to_string());
        deps.insert(
            m.to_string(),
            d.split_whitespace().map(str::to_string).collect::<Vec<_>>(),
        );
    }
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    fn visit(
        m: &str,
        deps: &std::collections::HashMap<String, Vec<String>>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) {
        if !seen.insert(m.to_string()) {
            return;
        }
        // modules.dep lists every dependency, transitively, the deepest last.
        for d in deps.get(m).into_iter().flatten().rev() {
            visit(d, deps, seen, order);
        }
        order.push(m.to_string());
    }
    for w in wanted {
        let m = by_name
            .get(&w.replace('-', "_"))
            .ok_or_else(|| format!("module {w} is not in modules.dep (built in?)"))?;
        visit(m, &deps, &mut seen, &mut order);
    }
    Ok(order)
}

fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

/// The shared libraries `exe` needs (and the dynamic loader), from `ldd`.
fn libraries(exe: &Path) -> FsResult<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(exe)
        .output()
        .map_err(|e| FsError::new(libc::ENOENT, format!("ldd {}: {e}", exe.display())))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, r)) => r.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// `exe` without its debug information (a third of its size, and the guest unpacks every
/// byte under TCG), or as it is where `strip` is missing.
fn stripped(exe: &Path, dir: &Path) -> FsResult<Vec<u8>> {
    let out = dir.join(format!(".init-{}", std::process::id()));
    let ok = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&out)
        .arg(exe)
        .status()
        .is_ok_and(|s| s.success());
    let bin = if ok {
        std::fs::read(&out).map_err(io(out.display()))
    } else {
        std::fs::read(exe).map_err(io(exe.display()))
    };
    let _ = std::fs::remove_file(&out);
    bin
}

pub(super) fn stamp(p: &Path) -> String {
    match std::fs::metadata(p) {
        Ok(m) => {
            use std::os::unix::fs::MetadataExt;
            format!(
                "{}:{}:{}.{}",
                p.display(),
                m.len(),
                m.mtime(),
                m.mtime_nsec()
            )
        }
        Err(_) => format!("{}:-", p.display()),
    }
}

pub(super) fn cache_dir() -> PathBuf {
    if let Ok(d) = std::env::var("STRATA_VM_CACHE") {
        return PathBuf::from(d);
    }
    if let Ok(d) = std::env::var("XDG_CACHE_HOME") {
        return Path::new(&d).join("strata/vm");
    }
    if let Ok(d) = std::env::var("HOME") {
        return Path::new(&d).join(".cache/strata/vm");
    }
    std::env::temp_dir().join("strata-vm-cache")
}

fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> FsError {
    move |e| {
        FsError::new(
            e.raw_os_error().unwrap_or(libc::EIO),
            format!("{what}: {e}"),
        )
    }
}

/// The initramfs for `kernel` (version `version`) with `exe` as init: from the cache, or
/// built and cached.
pub fn build(kernel: &Path, version: &str, exe: &Path) -> FsResult<PathBuf> {
    let moddir = Path::new("/lib/modules").join(version);
    let key = {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for p in [kernel, exe, &moddir.join("modules.dep")] {
            h.update(stamp(p).as_bytes());
            h.update(b"\n");
        }
        h.update(format!("{MODULES:?}").as_bytes());
        let d = h.finalize();
        d.iter()
            .take(12)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let dir = cache_dir();
    let path = dir.join(format!("initramfs-{key}.cpio"));
    if path.exists() {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).map_err(io(dir.display()))?;
    let dep_path = moddir.join("modules.dep");
    let dep = std::fs::read_to_string(&dep_path).map_err(io(dep_path.display()))?;
    let mut c = Cpio::new();
    for d in ["dev", "proc", "sys", "mnt", "tmp"] {
        c.dir(d);
    }
    let bin = stripped(exe, &dir)?;
    c.file("init", 0o755, &bin);
    for lib in libraries(exe)? {
        let data = std::fs::read(&lib).map_err(io(lib.display()))?;
        let name = lib.to_string_lossy();
        c.file(name.trim_start_matches('/'), 0o755, &data);
    }
    // modules/order: "GROUP FILE" lines, each group complete (dependencies first, shared
    // ones repeated: the agent skips what is loaded already).
    let mut list = String::new();
    let mut stored = BTreeSet::new();
    for (group, wanted) in MODULES {
        let order = module_order(&dep, wanted).map_err(|e| FsError::new(libc::ENOENT, e))?;
        for m in order {
            let file = m.rsplit('/').next().unwrap_or(&m).to_string();
            if stored.insert(file.clone()) {
                let src = moddir.join(&m);
                let data = std::fs::read(&src).map_err(io(src.display()))?;
                c.file(&format!("modules/{file}"), 0o644, &data);
            }
            list.push_str(&format!("{group} {file}\n"));
        }
    }
    c.file("modules/order", 0o644, list.as_bytes());
    let tmp = dir.join(format!(".initramfs-{key}.{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(io(tmp.display()))?;
    f.write_all(&c.finish()).map_err(io(tmp.display()))?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(io(path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_entries_are_aligned_and_end_with_the_trailer() {
        let mut c = Cpio::new();
        c.file("a/b/init", 0o755, b"hello");
        let out = c.finish();
        assert_eq!(out.len() % 4, 0);
        assert_eq!(&out[..6], b"070701");
        // Directories a and a/b come before the file, then the trailer.
        let text = String::from_utf8_lossy(&out);
        let a = text.find("a\0").unwrap();
        let ab = text.find("a/b\0").unwrap();
        let f = text.find("a/b/init\0").unwrap();
        let t = text.find("TRAILER!!!\0").unwrap();
        assert!(a < ab && ab < f && f < t);
        // The file's header: mode 0100755, size 5.
        let h = &text[f - 110..f];
        assert_eq!(&h[14..22], "000081ED");
        assert_eq!(&h[54..62], "00000005");
        assert_eq!(&h[94..102], format!("{:08X}", "a/b/init".len() + 1));
        assert!(text[f..].starts_with("a/b/init\0"));
        assert!(text.contains("hello"));
    }

    #[test]
    fn modules_come_after_their_dependencies() {
        let dep = "kernel/fs/xfs/xfs.ko: kernel/lib/libcrc32c.ko\n\
                   kernel/lib/libcrc32c.ko:\n\
                   kernel/crypto/crc32c_generic.ko:\n\
                   kernel/drivers/virtio/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
                   kernel/drivers/virtio/virtio.ko:\n\
                   kernel/drivers/virtio/virtio_ring.ko:\n";
        let o = module_order(dep, &["crc32c_generic", "virtio_blk", "xfs"]).unwrap();
        assert_eq!(
            o,
            [
                "kernel/crypto/crc32c_generic.ko",
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/virtio/virtio_blk.ko",
                "kernel/lib/libcrc32c.ko",
                "kernel/fs/xfs/xfs.ko",
            ]
        );
        assert!(module_order(dep, &["nosuch"]).is_err());
    }
}
