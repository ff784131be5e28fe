//! Boot tests: real firmware and a real kernel boot from volumes `strata serve` exports.
//!
//! - BIOS: SeaBIOS + iPXE (`sanboot`) boots a hand-assembled MBR that prints a marker.
//! - UEFI: OVMF runs Debian's ipxe.efi from a local FAT disk; it `sanboot`s a GPT volume
//!   whose EFI system partition holds a standalone GRUB that prints a marker.
//! - UEFI without iPXE: OVMF's own iSCSI initiator (IScsiDxe), configured by variables
//!   written into a copy of OVMF's variable store (tests/ovmf_vars), boots the same volume.
//! - Linux: QEMU's libiscsi driver (`iscsi://`) is the root disk of a Debian kernel; a tiny
//!   initramfs loads virtio/ext4 modules and switches to the volume's ext4 root, whose /init
//!   prints a marker, writes a file and powers off; the file is then read from the volume.
//! - The whole chain (boot_chain/): a Debian image built from Debian packages boots through
//!   OVMF's IScsiDxe, GRUB on the volume, the iBFT and the initramfs's own iSCSI login, and
//!   runs from the volume; one-way and mutual CHAP, a wrong secret failing at the firmware,
//!   the OS's session surviving a restart of the server, and a volume made by `strata
//!   deploy` booting with its personalization.
//!
//! All guest traffic stays on loopback: QEMU user networking with `restrict=on` and a
//! `guestfwd` (socat) to strata's port. One QEMU at a time (a lock file serializes the tests).
//! Needs `tools/install-iscsi-deps` and `tools/install-boot-deps`; skipped (with a message)
//! only when qemu-system-x86_64 is missing. Fixtures are built here.

mod common;
mod ovmf_vars;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{ok, tail, tool, Console, ProcessLock, Repo};

const QEMU: &str = "qemu-system-x86_64";
const HINT: &str = "tools/install-boot-deps";
/// What firmware prints once it has given up on every boot device: stop waiting then.
const GAVE_UP: &[&str] = &["No bootable device", "No more network devices"];

/// Serializes the boot tests (2 shared cores: one TCG guest at a time), and checks QEMU.
fn boot_lock(test: &str) -> Option<ProcessLock> {
    if !common::have(QEMU) {
        eprintln!("skipping {test}: {QEMU} is missing (run tools/install-iscsi-deps)");
        return None;
    }
    Some(ProcessLock::acquire("strata-boot-tests.lock"))
}

/// QEMU with no default devices, its serial port on stdout and no monitor.
fn qemu_base() -> Command {
    let mut c = Command::new(QEMU);
    c.args([
        "-accel",
        "tcg",
        "-nographic",
        "-nodefaults",
        "-monitor",
        "none",
    ])
    .args(["-serial", "stdio"]);
    c
}

/// User networking that only reaches 10.0.2.100:3260, forwarded to strata's port, plus
/// TFTP of `tftp`/boot.ipxe (handed out by DHCP as the boot file).
fn netdev(tftp: &Path, port: u16) -> String {
    format!(
        "user,id=n0,restrict=on,tftp={},bootfile=boot.ipxe,\
         guestfwd=tcp:10.0.2.100:3260-cmd:socat STDIO TCP:127.0.0.1:{port}",
        tftp.display()
    )
}

/// CHAP credentials: the initiator's (user, secret) and, for mutual CHAP, the target's.
struct Chap {
    user: &'static str,
    secret: &'static str,
    mutual: Option<(&'static str, &'static str)>,
}

impl Chap {
    /// `strata export` options.
    fn export_args(&self) -> Vec<&'static str> {
        let mut a = vec!["--chap-user", self.user, "--chap-secret", self.secret];
        if let Some((u, s)) = self.mutual {
            a.extend(["--mutual-user", u, "--mutual-secret", s]);
        }
        a
    }

    /// iPXE settings.
    fn ipxe_settings(&self) -> String {
        let mut s = format!("set username {}\nset password {}\n", self.user, self.secret);
        if let Some((u, p)) = self.mutual {
            s.push_str(&format!(
                "set reverse-username {u}\nset reverse-password {p}\n"
            ));
        }
        s
    }
}

/// An iPXE script that logs in as `initiator` (with `chap`) and boots LUN 0 of `target`.
fn ipxe_script(dir: &Path, initiator: &str, chap: Option<&Chap>, target: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let chap = chap.map(Chap::ipxe_settings).unwrap_or_default();
    std::fs::write(
        dir.join("boot.ipxe"),
        format!(
            "#!ipxe\nset initiator-iqn {initiator}\n{chap}dhcp\n\
             sanboot iscsi:10.0.2.100::3260:0:{target}\n"
        ),
    )
    .unwrap();
}

/// Waits for `marker`; false on timeout or as soon as the firmware gives up.
fn wait_boot(vm: &mut Console, marker: &str, timeout: Duration) -> bool {
    let mut markers = vec![marker];
    markers.extend_from_slice(GAVE_UP);
    vm.wait_for_any(&markers, timeout) == Some(0)
}

fn failure(what: &str, console: &Console, server: &common::Server) -> String {
    format!(
        "{what}\n--- console (tail) ---\n{}\n--- strata serve log (tail) ---\n{}",
        tail(&console.text(), 4000),
        tail(&server.log(), 4000)
    )
}

/// A 16 MiB disk whose MBR prints `marker` on COM1 and halts. (iPXE's INT 13 emulation
/// guesses 255 heads x 63 sectors without a partition table, so a disk under ~8 MiB would
/// have zero cylinders and its CHS boot-sector read would fail.)
fn bios_disk(repo: &Repo, marker: &str) -> PathBuf {
    let asm = repo.path("mbr.asm");
    std::fs::write(
        &asm,
        format!(
            "bits 16\norg 0x7c00\n\
             start:\n  cli\n  xor ax, ax\n  mov ds, ax\n  mov si, msg\n  mov dx, 0x3f8\n\
             .next:\n  lodsb\n  test al, al\n  jz .done\n  out dx, al\n  jmp .next\n\
             .done:\n  hlt\n  jmp .done\n\
             msg: db '{marker}', 13, 10, 0\n\
             times 510-($-$$) db 0\n dw 0xaa55\n"
        ),
    )
    .unwrap();
    let bin = repo.path("mbr.bin");
    ok(Command::new(tool("nasm", HINT))
        .args(["-f", "bin", "-o"])
        .arg(&bin)
        .arg(&asm));
    let mbr = std::fs::read(&bin).unwrap();
    assert_eq!(mbr.len(), 512);
    let disk = repo.path("bios.img");
    std::fs::write(&disk, &mbr).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    f.set_len(16 << 20).unwrap();
    disk
}

/// iPXE (SeaBIOS) sanboots a volume whose MBR prints a marker on COM1.
fn bios_sanboot(test: &str, initiator: &str, chap: Option<&Chap>) {
    let Some(_lock) = boot_lock(test) else {
        return;
    };
    tool("socat", HINT);
    const MARKER: &str = "STRATA-BIOS-BOOT-OK";
    let repo = Repo::new();
    let disk = bios_disk(&repo, MARKER);
    let export = chap.map(Chap::export_args).unwrap_or_default();
    let target = repo.volume_from_file("bios", &disk, initiator, &export);
    let tftp = repo.path("tftp");
    ipxe_script(&tftp, initiator, chap, &target);
    let server = repo.serve(&[]);

    let start = Instant::now();
    let mut vm = Console::spawn(
        qemu_base()
            .args(["-m", "256", "-boot", "n"])
            .args(["-netdev", &netdev(&tftp, server.port())])
            .args(["-device", "e1000,netdev=n0"]),
    );
    let booted = wait_boot(&mut vm, MARKER, Duration::from_secs(240));
    let took = start.elapsed();
    vm.kill();
    assert!(booted, "{}", failure("no BIOS boot marker", &vm, &server));
    eprintln!("{test}: marker after {:.1} s", took.as_secs_f64());
    assert!(
        vm.text().contains("Booting from SAN device"),
        "the marker did not come from a SAN boot"
    );
    assert!(
        server.log().contains(initiator),
        "no session from iPXE in the log"
    );
    assert!(server.stop().success());
}

#[test]
fn ipxe_bios_sanboot_boots_the_volume_mbr() {
    bios_sanboot(
        "ipxe_bios_sanboot",
        "iqn.2026-11.org.strata.test:bios",
        None,
    );
}

#[test]
fn ipxe_bios_sanboot_with_mutual_chap() {
    let chap = Chap {
        user: "bios-user",
        secret: "bios-secret-0123",
        mutual: Some(("strata-target", "target-secret-456")),
    };
    bios_sanboot(
        "ipxe_bios_sanboot_mutual_chap",
        "iqn.2026-11.org.strata.test:bios-chap",
        Some(&chap),
    );
}

/// A FAT filesystem image of `kib` KiB holding `files` (path in the image, local file).
fn fat_image(repo: &Repo, name: &str, kib: u64, files: &[(&str, &Path)]) -> PathBuf {
    let img = repo.path(name);
    let _ = std::fs::remove_file(&img);
    ok(Command::new(tool("mkfs.vfat", HINT))
        .arg("-C")
        .arg(&img)
        .arg(kib.to_string()));
    let mut dirs: Vec<String> = Vec::new();
    for (dest, _) in files {
        let mut acc = String::new();
        let parts: Vec<&str> = dest.trim_start_matches('/').split('/').collect();
        for p in &parts[..parts.len() - 1] {
            acc = format!("{acc}/{p}");
            if !dirs.contains(&acc) {
                dirs.push(acc.clone());
            }
        }
    }
    for d in &dirs {
        ok(Command::new(tool("mmd", HINT))
            .arg("-i")
            .arg(&img)
            .arg(format!("::{d}")));
    }
    for (dest, src) in files {
        ok(Command::new(tool("mcopy", HINT))
            .arg("-i")
            .arg(&img)
            .arg(src)
            .arg(format!("::{dest}")));
    }
    img
}

/// A 64 MiB GPT disk with one EFI system partition (at 1 MiB) whose removable-media loader
/// is a standalone GRUB that prints `marker` on the serial port and powers off.
fn uefi_disk(repo: &Repo, marker: &str) -> PathBuf {
    let cfg = repo.path("grub.cfg");
    std::fs::write(
        &cfg,
        format!(
            "serial --unit=0 --speed=115200\nterminal_output serial console\n\
             echo {marker}\nhalt\n"
        ),
    )
    .unwrap();
    let efi = repo.path("grubx64.efi");
    ok(Command::new(tool("grub-mkstandalone", HINT))
        .args(["-O", "x86_64-efi", "-o"])
        .arg(&efi)
        .args([
            "--install-modules=normal echo halt serial terminal configfile",
            "--modules=",
            "--locales=",
            "--fonts=",
            "--themes=",
        ])
        .arg(format!("boot/grub/grub.cfg={}", cfg.display())));
    const ESP_SECTORS: u64 = 60 * 2048;
    let esp = fat_image(
        repo,
        "esp.fat",
        ESP_SECTORS / 2,
        &[("/EFI/BOOT/BOOTX64.EFI", efi.as_path())],
    );
    let disk = repo.path("uefi.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let mut sfdisk = Command::new(tool("sfdisk", HINT))
        .args(["-q"])
        .arg(&disk)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = sfdisk.stdin.take().unwrap();
        write!(
            stdin,
            "label: gpt\nstart=2048, size={ESP_SECTORS}, type=U\n"
        )
        .unwrap();
    }
    let o = sfdisk.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "sfdisk: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let fat = std::fs::read(&esp).unwrap();
    assert_eq!(fat.len() as u64, ESP_SECTORS * 512);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
        f.write_all_at(&fat, 1 << 20).unwrap();
    }
    disk
}

#[test]
fn ipxe_uefi_sanboot_boots_the_volume_esp() {
    let Some(_lock) = boot_lock("ipxe_uefi_sanboot") else {
        return;
    };
    tool("socat", HINT);
    const MARKER: &str = "STRATA-UEFI-BOOT-OK";
    const INITIATOR: &str = "iqn.2026-11.org.strata.test:uefi";
    const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
    const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
    const IPXE_EFI: &str = "/usr/lib/ipxe/ipxe.efi";
    for f in [OVMF_CODE, OVMF_VARS, IPXE_EFI] {
        assert!(Path::new(f).exists(), "{f} is missing: run {HINT}");
    }
    let repo = Repo::new();
    let disk = uefi_disk(&repo, MARKER);
    let target = repo.volume_from_file("uefi", &disk, INITIATOR, &[]);
    // Debian's ipxe.efi (2019) has no autoexec.ipxe: with no embedded script it runs DHCP
    // and chains the boot file QEMU's DHCP hands out (boot.ipxe over TFTP).
    let tftp = repo.path("tftp");
    ipxe_script(&tftp, INITIATOR, None, &target);
    let local = fat_image(
        &repo,
        "ipxe-disk.fat",
        4096,
        &[("/EFI/BOOT/BOOTX64.EFI", Path::new(IPXE_EFI))],
    );
    let vars = repo.path("OVMF_VARS.fd");
    std::fs::copy(OVMF_VARS, &vars).unwrap();
    let server = repo.serve(&[]);

    let start = Instant::now();
    let mut vm = Console::spawn(
        qemu_base()
            .args(["-machine", "q35", "-m", "256"])
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,file={}", vars.display()))
            .arg("-drive")
            .arg(format!("file={},format=raw,if=none,id=d0", local.display()))
            .args(["-device", "virtio-blk-pci,drive=d0,bootindex=0"])
            .args(["-netdev", &netdev(&tftp, server.port())])
            // No option ROM: OVMF must not PXE-boot by itself; ipxe.efi drives the NIC.
            .args(["-device", "e1000,netdev=n0,romfile="]),
    );
    let booted = wait_boot(&mut vm, MARKER, Duration::from_secs(300));
    let took = start.elapsed();
    vm.kill();
    assert!(booted, "{}", failure("no UEFI boot marker", &vm, &server));
    eprintln!(
        "iPXE UEFI sanboot: marker after {:.1} s",
        took.as_secs_f64()
    );
    assert!(
        vm.text().contains("Booting from SAN device"),
        "the marker did not come from a SAN boot"
    );
    assert!(server.stop().success());
}

/// OVMF's own UEFI iSCSI initiator (EDK2's IScsiDxe, part of Debian's OVMF), configured
/// through variables written into a copy of the variable store, logs in to strata as
/// `initiator` (with `chap`) at boot; OVMF then boots the volume's ESP like a local disk.
fn ovmf_iscsi_boot(test: &str, initiator: &str, chap: Option<&Chap>) {
    let Some(_lock) = boot_lock(test) else {
        return;
    };
    tool("socat", HINT);
    const MARKER: &str = "STRATA-OVMF-ISCSI-BOOT-OK";
    const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
    const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    for f in [OVMF_CODE, OVMF_VARS] {
        assert!(Path::new(f).exists(), "{f} is missing: run {HINT}");
    }
    let repo = Repo::new();
    let disk = uefi_disk(&repo, MARKER);
    let export = chap.map(Chap::export_args).unwrap_or_default();
    let target = repo.volume_from_file("ovmf", &disk, initiator, &export);
    let vars = repo.path("OVMF_VARS.fd");
    let mut store = ovmf_vars::VarStore::open(Path::new(OVMF_VARS));
    ovmf_vars::configure_iscsi_boot(
        &mut store,
        initiator,
        &ovmf_vars::Attempt {
            mac: MAC,
            target: &target,
            // Where `netdev` forwards to strata.
            target_ip: [10, 0, 2, 100],
            port: 3260,
            lun: 0,
            chap: chap.map(|c| (c.user, c.secret)),
            reverse_chap: chap.and_then(|c| c.mutual),
        },
    );
    store.save(&vars);
    // An empty TFTP directory: should OVMF fall back to PXE, it finds no boot file.
    let tftp = repo.path("tftp");
    std::fs::create_dir_all(&tftp).unwrap();
    let server = repo.serve(&[]);
    let mac = MAC.map(|b| format!("{b:02x}")).join(":");

    let start = Instant::now();
    let mut vm = Console::spawn(
        qemu_base()
            .args(["-machine", "q35", "-m", "256"])
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,file={}", vars.display()))
            .args(["-netdev", &netdev(&tftp, server.port())])
            // OVMF's own virtio-net driver (no iPXE option ROM), with the MAC the attempt
            // names. No disks: OVMF connects the NIC, IScsiDxe logs in during that connect,
            // and the boot manager finds the removable-media loader on the iSCSI disk.
            .arg("-device")
            .arg(format!("virtio-net-pci,netdev=n0,romfile=,mac={mac}")),
    );
    // OVMF lists boot options for disks before network ones: once it falls back to PXE,
    // the iSCSI disk did not boot (and PXE, then HTTP boot, would take minutes to give up).
    let mut stop = vec![MARKER, ">>Start PXE over IPv4"];
    stop.extend_from_slice(GAVE_UP);
    let booted = vm.wait_for_any(&stop, Duration::from_secs(150)) == Some(0);
    let took = start.elapsed();
    vm.kill();
    assert!(
        booted,
        "{}",
        failure("no OVMF iSCSI boot marker", &vm, &server)
    );
    eprintln!("{test}: marker after {:.1} s", took.as_secs_f64());
    // OVMF's boot manager names the option it starts by its device path, which ends in the
    // iSCSI node IScsiDxe built for the session.
    let text = vm.text();
    let started = text
        .lines()
        .find(|l| l.starts_with("BdsDxe: starting Boot"));
    assert!(
        started.is_some_and(|l| l.contains(&format!("/iSCSI({target},"))),
        "the marker did not come from the iSCSI disk:\n{}",
        tail(&text, 2000)
    );
    assert!(
        server.log().contains(&format!("initiator={initiator}")),
        "no session from IScsiDxe in the log"
    );
    assert!(server.stop().success());
}

#[test]
fn ovmf_iscsi_boots_the_volume_esp() {
    ovmf_iscsi_boot("ovmf_iscsi", "iqn.2026-11.org.strata.test:ovmf", None);
}

#[test]
fn ovmf_iscsi_boot_with_mutual_chap() {
    // EDK2 takes CHAP secrets of 12 to 16 characters only.
    let chap = Chap {
        user: "ovmf-user",
        secret: "ovmf-secret-0123",
        mutual: Some(("strata-target", "target-secret-45")),
    };
    ovmf_iscsi_boot(
        "ovmf_iscsi_mutual_chap",
        "iqn.2026-11.org.strata.test:ovmf-chap",
        Some(&chap),
    );
}

/// The newest kernel under /boot and its module directory.
fn debian_kernel() -> (PathBuf, PathBuf) {
    let mut kernels: Vec<PathBuf> = std::fs::read_dir("/boot")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    kernels.retain(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("vmlinuz-"))
    });
    kernels.sort();
    let kernel = kernels
        .pop()
        .unwrap_or_else(|| panic!("no /boot/vmlinuz-*: run {HINT}"));
    let version = kernel.file_name().unwrap().to_str().unwrap()["vmlinuz-".len()..].to_string();
    let modules = Path::new("/lib/modules").join(version);
    assert!(
        modules.join("modules.dep").exists(),
        "{} has no modules.dep: run {HINT}",
        modules.display()
    );
    (kernel, modules)
}

/// Module files (relative to `moddir`) for `wanted` and their dependencies, in load order.
fn modules_in_load_order(moddir: &Path, wanted: &[&str]) -> Vec<String> {
    let dep = std::fs::read_to_string(moddir.join("modules.dep")).unwrap();
    let mut by_name = std::collections::HashMap::new();
    for line in dep.lines() {
        let Some((path, deps)) = line.split_once(':') else {
            continue;
        };
        let name = Path::new(path)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .split('.')
            .next()
            .unwrap()
            .replace('-', "_");
        let deps: Vec<String> = deps.split_whitespace().map(str::to_string).collect();
        by_name.insert(name, (path.to_string(), deps));
    }
    let path_to_name = |p: &str| -> String {
        Path::new(p)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .split('.')
            .next()
            .unwrap()
            .replace('-', "_")
    };
    fn visit(
        name: &str,
        by_name: &std::collections::HashMap<String, (String, Vec<String>)>,
        to_name: &dyn Fn(&str) -> String,
        out: &mut Vec<String>,
    ) {
        let (path, deps) = by_name
            .get(name)
            .unwrap_or_else(|| panic!("module {name} not in modules.dep (built in?)"));
        if out.contains(path) {
            return;
        }
        // modules.dep lists dependencies so that loading them last-to-first works.
        for d in deps.iter().rev() {
            visit(&to_name(d), by_name, to_name, out);
        }
        out.push(path.clone());
    }
    let mut out = Vec::new();
    for w in wanted {
        visit(w, &by_name, &path_to_name, &mut out);
    }
    out
}

/// An initramfs (newc cpio) with a static busybox and the modules to mount an ext4 root on
/// /dev/vda (virtio-blk over PCI), whose /init switches to that root's /init.
fn initramfs(repo: &Repo, moddir: &Path) -> PathBuf {
    let dir = repo.path("initramfs");
    for d in ["bin", "dev", "proc", "sys", "newroot", "lib/modules"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    assert!(
        Path::new("/bin/busybox").exists(),
        "no /bin/busybox: run {HINT}"
    );
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).unwrap();
    let mods = modules_in_load_order(
        moddir,
        &["virtio_pci", "virtio_blk", "crc32c_generic", "ext4"],
    );
    let mut insmods = String::new();
    for m in &mods {
        assert!(
            m.ends_with(".ko"),
            "compressed module {m}: busybox insmod cannot load it"
        );
        let file = Path::new(m).file_name().unwrap().to_str().unwrap();
        std::fs::copy(moddir.join(m), dir.join("lib/modules").join(file)).unwrap();
        insmods.push_str(&format!("/bin/busybox insmod /lib/modules/{file}\n"));
    }
    let init = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox mount -t devtmpfs dev /dev\n\
         {insmods}\
         for i in $(/bin/busybox seq 50); do [ -b /dev/vda ] && break; /bin/busybox sleep 0.2; done\n\
         /bin/busybox mount -t ext4 /dev/vda /newroot || {{ echo STRATA-INITRAMFS-MOUNT-FAILED; /bin/busybox poweroff -f; }}\n\
         /bin/busybox mount --move /dev /newroot/dev\n\
         exec /bin/busybox switch_root /newroot /init\n"
    );
    write_exec(&dir.join("init"), &init);
    let cpio = repo.path("initramfs.cpio");
    ok(Command::new("sh").arg("-c").arg(format!(
        "cd '{}' && find . | {} -o -H newc --quiet > '{}'",
        dir.display(),
        tool("cpio", HINT),
        cpio.display()
    )));
    cpio
}

fn write_exec(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn linux_boots_with_its_root_on_an_iscsi_volume() {
    let Some(_lock) = boot_lock("linux_iscsi_root") else {
        return;
    };
    const MARKER: &str = "STRATA-LINUX-USERSPACE-OK";
    const INITIATOR: &str = "iqn.2026-11.org.strata.test:linux";
    const WRITTEN: &str = "written-by-the-guest-over-iscsi";
    let repo = Repo::new();
    let (kernel, moddir) = debian_kernel();
    let initrd = initramfs(&repo, &moddir);

    // The root filesystem: busybox and an /init that proves userspace runs and writes.
    let root = repo.path("rootfs");
    for d in ["bin", "dev", "proc", "sys"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    write_exec(
        &root.join("init"),
        &format!(
            "#!/bin/busybox sh\n\
             /bin/busybox mount -t proc proc /proc\n\
             echo {MARKER}\n\
             echo {WRITTEN} > /guest-file\n\
             /bin/busybox sync\n\
             /bin/busybox mount -o remount,ro /\n\
             /bin/busybox poweroff -f\n"
        ),
    );
    let img = repo.path("rootfs.img");
    ok(Command::new(tool("mkfs.ext4", HINT))
        .args(["-q", "-F", "-d"])
        .arg(&root)
        .arg(&img)
        .arg("32M"));
    let target = repo.volume_from_file("linux", &img, INITIATOR, &[]);
    let server = repo.serve(&[]);

    let start = Instant::now();
    let mut vm = Console::spawn(
        qemu_base()
            .args(["-m", "512", "-no-reboot"])
            .arg("-kernel")
            .arg(&kernel)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", "console=ttyS0 panic=-1 quiet"])
            .args(["-iscsi", &format!("initiator-name={INITIATOR}")])
            .arg("-drive")
            .arg(format!(
                "file=iscsi://127.0.0.1:{}/{target}/0,format=raw,if=virtio",
                server.port()
            )),
    );
    let exited = vm.wait_exit(Duration::from_secs(300));
    let took = start.elapsed();
    vm.kill();
    assert!(
        exited.is_some(),
        "{}",
        failure("guest did not power off", &vm, &server)
    );
    assert!(
        vm.text().contains(MARKER),
        "{}",
        failure("no userspace marker", &vm, &server)
    );
    eprintln!(
        "Linux on iscsi:// root: boot to power-off in {:.1} s",
        took.as_secs_f64()
    );
    assert!(server.stop().success());

    // What the guest wrote is in the volume.
    let out = repo.path("linux-out.raw");
    repo.ok(&["volume", "export", "linux", out.to_str().unwrap()]);
    let got = ok(Command::new(tool("debugfs", HINT))
        .args(["-R", "cat /guest-file"])
        .arg(&out));
    assert_eq!(got.trim(), WRITTEN);
    let fsck = Command::new("e2fsck")
        .args(["-fn"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck after the guest's poweroff: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

mod boot_chain;

#[test]
fn os_boots_from_the_volume_through_the_firmware_and_the_ibft_with_chap() {
    // EDK2 takes CHAP secrets of 12 to 16 characters only.
    let chap = Chap {
        user: "os-user",
        secret: "os-secret-01234",
        mutual: None,
    };
    boot_chain::boot_chain(
        "boot_chain_chap",
        "iqn.2026-11.org.strata.test:server-1",
        Some(&chap),
    );
}

#[test]
fn os_boots_from_the_volume_through_the_firmware_and_the_ibft_with_mutual_chap() {
    let chap = Chap {
        user: "os-user",
        secret: "os-secret-01234",
        mutual: Some(("strata-target", "target-secret-45")),
    };
    boot_chain::boot_chain(
        "boot_chain_mutual_chap",
        "iqn.2026-11.org.strata.test:server-2",
        Some(&chap),
    );
}

#[test]
fn a_wrong_chap_secret_fails_the_boot_at_the_firmware() {
    let Some(_lock) = boot_lock("boot_chain_wrong_chap") else {
        return;
    };
    tool("socat", HINT);
    const INITIATOR: &str = "iqn.2026-11.org.strata.test:server-3";
    let right = Chap {
        user: "os-user",
        secret: "os-secret-01234",
        mutual: None,
    };
    let wrong = Chap {
        user: "os-user",
        secret: "not-the-secret0",
        mutual: None,
    };
    let repo = Repo::new();
    let cfg = boot_chain::BootConfig {
        initiator: INITIATOR,
        export_chap: Some(&right),
        firmware_chap: Some(&wrong),
        timeout: Duration::from_secs(240),
    };
    let (boot, server, _target) = boot_chain::boot_once(&repo, &cfg);
    assert!(
        !boot.reached("loader"),
        "{}",
        boot_chain::explain(
            "the loader started with a wrong CHAP secret",
            &boot,
            &server
        )
    );
    assert_eq!(
        boot.failed_on,
        Some(">>Start PXE over IPv4"),
        "{}",
        boot_chain::explain(
            "the firmware did not give up on the iSCSI disk",
            &boot,
            &server
        )
    );
    let log = server.log();
    assert!(
        log.lines()
            .any(|l| l.contains("login refused") && l.contains(INITIATOR)),
        "strata's log does not show the firmware's login refused:\n{}",
        tail(&log, 4000)
    );
    assert!(
        boot_chain::sessions_of(&log, INITIATOR).is_empty(),
        "a session started with a wrong secret:\n{}",
        tail(&log, 4000)
    );
    assert!(server.stop().success());
}

#[test]
fn the_os_session_survives_a_restart_of_the_server() {
    let chap = Chap {
        user: "os-user",
        secret: "os-secret-01234",
        mutual: None,
    };
    boot_chain::boot_chain_survives_restart(
        "boot_chain_restart",
        "iqn.2026-11.org.strata.test:server-4",
        Some(&chap),
    );
}

#[test]
fn a_deployed_os_volume_boots_and_its_os_sees_the_personalization() {
    let chap = Chap {
        user: "os-user",
        secret: "os-secret-01234",
        mutual: None,
    };
    boot_chain::deploy_then_boot(
        "boot_chain_deploy",
        "iqn.2026-11.org.strata.test:server-7",
        &chap,
    );
}

#[test]
fn a_server_whose_firmware_names_another_servers_target_is_refused() {
    let Some(_lock) = boot_lock("boot_chain_other_target") else {
        return;
    };
    tool("socat", HINT);
    const OWNER: &str = "iqn.2026-11.org.strata.test:server-5";
    const OTHER: &str = "iqn.2026-11.org.strata.test:server-6";
    let repo = Repo::new();
    let disk = boot_chain::golden_image();
    // The volume is server 5's; server 6's firmware is configured with its target.
    let target = repo.volume_from_file("os", &disk, OWNER, &[]);
    let vars = boot_chain::ovmf_vars_for(&repo, "OVMF_VARS.fd", OTHER, &target, None);
    let server = repo.serve(&[]);
    let start = Instant::now();
    let mut vm = boot_chain::spawn_vm(&repo, &vars, server.port(), &[]);
    let boot = boot_chain::follow(&mut vm, start, Duration::from_secs(240));
    assert!(
        !boot.reached("loader"),
        "{}",
        boot_chain::explain(
            "another server's firmware booted the volume",
            &boot,
            &server
        )
    );
    assert_eq!(
        boot.failed_on,
        Some(">>Start PXE over IPv4"),
        "{}",
        boot_chain::explain(
            "the firmware did not give up on the iSCSI disk",
            &boot,
            &server
        )
    );
    let log = server.log();
    assert!(
        log.lines()
            .any(|l| l.contains("login refused") && l.contains(OTHER)),
        "strata's log does not show server 6's login refused:\n{}",
        tail(&log, 4000)
    );
    assert!(boot_chain::sessions_of(&log, OTHER).is_empty());
    assert!(boot_chain::sessions_of(&log, OWNER).is_empty());
    assert!(server.stop().success());
}
