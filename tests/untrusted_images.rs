//! Imports and sizes from a hostile user (issue 10, "Images that lie"): truncated qcow2,
//! qcow2 that name host files (backing file, `json:` backing, external data file), a FIFO
//! given as the source, and sizes beyond what every layer addresses. Each import that is
//! refused must say why and leave nothing behind. Fixtures are made here with qemu-img.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::Repo;

fn qemu_img(args: &[&str]) {
    let st = Command::new(common::tool("qemu-img", "tools/install-deps"))
        .args(args)
        .status()
        .unwrap();
    assert!(st.success(), "qemu-img {args:?}");
}

/// Pseudo-random bytes (incompressible, so qcow2 stores every cluster).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A host file that must never show up in an image: a recognisable first sector.
fn host_secret(r: &Repo) -> std::path::PathBuf {
    let p = r.path("hostsecret.txt");
    let mut b = b"TOP SECRET host file: must not leak into an image\n".to_vec();
    b.resize(1 << 20, 0);
    std::fs::write(&p, b).unwrap();
    p
}

/// Asserts nothing of a refused import is left: no image, an empty staging directory.
fn nothing_left(r: &Repo, name: &str) {
    assert!(
        r.staging_is_empty(),
        "staging not empty after refusing {name}"
    );
    assert!(!r.root.join("images").join(name).exists());
    let ls = r.ok(&["image", "ls", "--json"]);
    assert!(!ls.contains(&format!("\"{name}\"")), "{ls}");
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn truncated_qcow2_is_refused_with_the_reason_not_imported_as_zeros() {
    let r = Repo::new();
    let raw = r.path("big.raw");
    std::fs::write(&raw, noise(16 << 20, 5)).unwrap();
    let q = r.path("big.qcow2");
    qemu_img(&["convert", "-q", "-f", "raw", "-O", "qcow2", s(&raw), s(&q)]);
    let whole = std::fs::read(&q).unwrap();
    // Cut inside the metadata (the issue's `head -c 200000`) and inside the data.
    for (i, cut) in [200_000, whole.len() / 2].into_iter().enumerate() {
        let t = r.path(&format!("t{i}.qcow2"));
        std::fs::write(&t, &whole[..cut]).unwrap();
        let name = format!("t{i}");
        let e = r.fails(&["image", "import", s(&t), "--name", &name]);
        assert!(
            e.contains("qemu-img check") && e.contains("truncated"),
            "{e}"
        );
        nothing_left(&r, &name);
    }
    // The whole image still imports, byte for byte.
    r.ok(&["image", "import", s(&q), "--name", "whole"]);
    let out = r.path("whole.raw");
    r.ok(&["image", "export", "whole", s(&out)]);
    assert!(std::fs::read(&out).unwrap() == std::fs::read(&raw).unwrap());
}

#[test]
fn qcow2_naming_host_files_is_refused_unless_allowed() {
    let r = Repo::new();
    let secret = host_secret(&r);
    let backed = r.path("backed.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "raw",
        "-b",
        s(&secret),
        s(&backed),
        "1M",
    ]);
    let json_backing = format!(r#"json:{{"driver":"file","filename":"{}"}}"#, s(&secret));
    let json = r.path("json.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-F",
        "raw",
        "-b",
        &json_backing,
        s(&json),
        "1M",
    ]);
    let data_file = r.path("datafile.raw");
    std::fs::write(&data_file, b"").unwrap();
    let external = r.path("external.qcow2");
    let opt = format!("data_file={},data_file_raw=on", s(&data_file));
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &opt,
        s(&external),
        "1M",
    ]);
    // The data file now holds the host secret (as if pointed at a host file).
    std::fs::copy(&secret, &data_file).unwrap();

    for (file, name, what) in [
        (&backed, "backed", "backing file"),
        (&json, "json", "backing file"),
        (&external, "external", "external data file"),
    ] {
        let e = r.fails(&["image", "import", s(file), "--name", name]);
        assert!(
            e.contains(what) && e.contains("--allow-backing"),
            "{name}: {e}"
        );
        nothing_left(&r, name);
        // Saying `--format qcow2` changes nothing.
        let e = r.fails(&[
            "image",
            "import",
            s(file),
            "--name",
            name,
            "--format",
            "qcow2",
        ]);
        assert!(e.contains(what), "{name}: {e}");
    }
    // Explicitly allowed: the backing file is read (the user asked for it).
    r.ok(&[
        "image",
        "import",
        s(&backed),
        "--name",
        "backed",
        "--allow-backing",
    ]);
    let out = r.path("backed.raw");
    r.ok(&["image", "export", "backed", s(&out)]);
    assert!(std::fs::read(&out).unwrap().starts_with(b"TOP SECRET"));
}

#[test]
fn vmdk_is_refused_without_allow_backing() {
    let r = Repo::new();
    let raw = r.path("d.raw");
    std::fs::write(&raw, noise(1 << 20, 9)).unwrap();
    let v = r.path("d.vmdk");
    qemu_img(&["convert", "-q", "-f", "raw", "-O", "vmdk", s(&raw), s(&v)]);
    let e = r.fails(&["image", "import", s(&v), "--name", "v"]);
    assert!(e.contains("vmdk") && e.contains("--allow-backing"), "{e}");
    nothing_left(&r, "v");
    r.ok(&["image", "import", s(&v), "--name", "v", "--allow-backing"]);
}

#[test]
fn importing_a_fifo_is_refused_without_hanging() {
    let r = Repo::new();
    let fifo = r.path("pipe");
    let c = std::ffi::CString::new(s(&fifo)).unwrap();
    // SAFETY: mkfifo on a path in the test's own directory.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    for format in ["auto", "raw", "qcow2"] {
        let mut child = Command::new(common::BIN)
            .arg("--repo")
            .arg(&r.root)
            .args([
                "image",
                "import",
                s(&fifo),
                "--name",
                "p",
                "--format",
                format,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Bounded wait: a hang (the defect) is a failure, not a stuck test.
        let deadline = Instant::now() + Duration::from_secs(30);
        let st = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("import of a FIFO ({format}) hangs");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut e = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut e).unwrap();
        assert!(!st.success());
        assert!(e.contains("FIFO") && e.contains("regular files"), "{e}");
    }
    nothing_left(&r, "p");
}

#[test]
fn sizes_beyond_every_layer_and_ambiguous_units_are_refused() {
    let r = Repo::new();
    let run = |size: &str| r.run(&["volume", "create", "x", "--size", size]);
    for size in ["9223372036854775808", "16T", "8E", "18446744073709551615"] {
        let o = run(size);
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{size} accepted");
        assert!(
            e.contains("16 TiB - 1 MiB") || e.contains("unknown size suffix"),
            "{size}: {e}"
        );
    }
    for size in ["1MB", "1 MB", "64kb", "2GB"] {
        let o = run(size);
        assert!(!o.status.success(), "{size} accepted");
        assert!(String::from_utf8_lossy(&o.stderr).contains("ambiguous"));
    }
    assert!(r.ok(&["volume", "ls"]).lines().count() <= 1);
    // What is accepted: binary suffixes, a space before them, the cap itself.
    r.ok(&["volume", "create", "a", "--size", "1 M"]);
    r.ok(&["volume", "create", "b", "--size", "2MiB"]);
    let max = strata::store::transfer::MAX_DISK_SIZE.to_string();
    r.ok(&["volume", "create", "c", "--size", &max]);
    let info: serde_json::Value =
        serde_json::from_str(&r.ok(&["volume", "info", "a", "--json"])).unwrap();
    assert_eq!(info["size"], 1 << 20);
    // The library refuses too (the coming REST API calls it, not the CLI).
    let store = strata::store::Repository::open(&r.root, Default::default()).unwrap();
    let e = store
        .create_volume("huge", None, Some(1 << 63))
        .unwrap_err();
    assert!(e.to_string().contains("16 TiB - 1 MiB"), "{e}");
    // A sparse raw source beyond the cap is refused before anything is read (one sector
    // more than the cap still fits ext4's 16 TiB - 4 KiB file limit).
    let big = r.path("huge.raw");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(strata::store::transfer::MAX_DISK_SIZE + 512)
        .unwrap();
    let e = r.fails(&["image", "import", s(&big), "--name", "huge"]);
    assert!(e.contains("16 TiB - 1 MiB"), "{e}");
    nothing_left(&r, "huge");
}
