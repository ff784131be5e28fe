//! End-to-end tests of the iSCSI target: the real `strata serve` binary on 127.0.0.1 with a
//! free port, driven by real initiators (libiscsi's iscsi-* tools, QEMU's iscsi:// driver)
//! and by a small raw initiator in this file for what no tool can send (bad digests,
//! oversized PDUs, half-open connections, CmdSN games).
//!
//! Needs the packages `tools/install-iscsi-deps` installs. Fixtures are built here.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use strata::iscsi::pdu::{self, op, Bhs, FrameLimits};
use strata::iscsi::text;

mod common;

use common::{ok, Repo, Server};

const CLIENT: &str = "iqn.2026-01.test.strata:client";
const OTHER: &str = "iqn.2026-01.test.strata:other";
const LIBISCSI_TEST_1: &str = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test";
const LIBISCSI_TEST_2: &str = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test-2";

/// `name`, asserting it is installed.
fn tool(name: &str) -> &str {
    common::tool(name, "tools/install-iscsi-deps")
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

/// Deterministic pseudo-random bytes.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Real initiators

#[test]
fn libiscsi_tools_see_the_volume_and_only_permitted_targets() {
    let repo = Repo::new();
    let mine = repo.exported_volume("mine", 64, &[CLIENT]);
    let theirs = repo.exported_volume("theirs", 32, &[OTHER]);
    let srv = repo.serve(&["--vendor", "ACME", "--product", "BootDisk"]);

    let inq = ok(Command::new(tool("iscsi-inq")).args(["-i", CLIENT, &srv.url(&mine)]));
    assert!(inq.contains("Vendor:ACME"), "{inq}");
    assert!(inq.contains("Product:BootDisk"), "{inq}");
    let cap = ok(Command::new(tool("iscsi-readcapacity16")).args(["-i", CLIENT, &srv.url(&mine)]));
    assert!(cap.contains("Total size:67108864"), "{cap}");
    assert!(cap.contains("LBPME:1 LBPRZ:1"), "{cap}");

    let portal = format!("iscsi://{}", srv.addr);
    let ls = ok(Command::new(tool("iscsi-ls")).args(["-i", CLIENT, &portal]));
    assert!(ls.contains(&mine), "{ls}");
    assert!(
        !ls.contains(&theirs),
        "discovery leaked another server's target: {ls}"
    );
    let ls = ok(Command::new("iscsi-ls").args(["-i", OTHER, &portal]));
    assert!(ls.contains(&theirs) && !ls.contains(&mine), "{ls}");

    // Not on the list: no discovery, no login.
    let o = run(Command::new("iscsi-ls").args(["-i", "iqn.2026-01.test.strata:stranger", &portal]));
    assert!(!o.status.success());
    let o = run(Command::new("iscsi-inq").args(["-i", OTHER, &srv.url(&mine)]));
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("Authorization failure"));
}

#[test]
fn qemu_img_convert_reads_the_volume_byte_identical() {
    let repo = Repo::new();
    // A golden image with data spread over it, cloned, the clone written here and there.
    let img = repo.path("gold.raw");
    let mut data = vec![0u8; 48 << 20];
    for (i, chunk) in data.chunks_mut(1 << 20).enumerate() {
        if i % 3 != 1 {
            chunk.copy_from_slice(&pattern(1 << 20, i as u64));
        }
    }
    std::fs::write(&img, &data).unwrap();
    repo.ok(&["image", "import", "--name", "gold", img.to_str().unwrap()]);
    repo.ok(&["volume", "create", "vm1", "--from", "gold"]);
    repo.ok(&["export", "vm1", "--initiator", CLIENT]);
    let iqn = "iqn.2026-11.org.strata:vm1";
    let srv = repo.serve(&[]);
    let out = repo.path("out.raw");
    ok(Command::new(tool("qemu-img")).args([
        "convert",
        "-O",
        "raw",
        "--image-opts",
        &srv.qemu_opts(iqn, CLIENT),
        out.to_str().unwrap(),
    ]));
    let got = std::fs::read(&out).unwrap();
    assert_eq!(got.len(), data.len());
    assert!(
        got == data,
        "qemu-img convert output differs from the image"
    );
}

#[test]
fn qemu_io_writes_land_in_the_volume_and_survive_a_restart() {
    let repo = Repo::new();
    let iqn = repo.exported_volume("vm", 16, &["iqn.2008-11.org.linux-kvm"]);
    let srv = repo.serve(&[]);
    // The plain iscsi:// URL, with QEMU's default initiator name.
    ok(Command::new(tool("qemu-io")).args([
        "-f",
        "raw",
        "-c",
        "write -P 0x5a 0 1M",
        "-c",
        "write -P 0xa5 5M 64k",
        "-c",
        "flush",
        &srv.url(&iqn),
    ]));
    let st = srv.stop();
    assert!(st.success(), "server exit after SIGTERM: {st:?}");
    let srv = repo.serve(&[]);
    let out = repo.path("after.raw");
    ok(Command::new("qemu-img").args([
        "convert",
        "-O",
        "raw",
        &srv.url(&iqn),
        out.to_str().unwrap(),
    ]));
    let got = std::fs::read(&out).unwrap();
    assert!(got[..1 << 20].iter().all(|&b| b == 0x5a));
    assert!(got[1 << 20..5 << 20].iter().all(|&b| b == 0));
    assert!(got[5 << 20..(5 << 20) + 65536].iter().all(|&b| b == 0xa5));
    drop(srv);
    // And through the store directly, with no server at all.
    let direct = repo.path("direct.raw");
    repo.ok(&["volume", "export", "vm", direct.to_str().unwrap()]);
    assert!(std::fs::read(&direct).unwrap() == got);
}

#[test]
fn chap_one_way_and_mutual() {
    let repo = Repo::new();
    repo.ok(&["volume", "create", "sec", "--size", "8M"]);
    repo.ok(&[
        "export",
        "sec",
        "--initiator",
        CLIENT,
        "--chap-user",
        "alice",
        "--chap-secret",
        "alice-secret-12",
        "--mutual-user",
        "target",
        "--mutual-secret",
        "target-secret-34",
    ]);
    let srv = repo.serve(&[]);
    let base = format!("{}/iqn.2026-11.org.strata:sec/0", srv.addr);
    let inq = |url: String| run(Command::new(tool("iscsi-inq")).args(["-i", CLIENT, &url]));

    assert!(inq(format!("iscsi://alice%alice-secret-12@{base}"))
        .status
        .success());
    let o = inq(format!("iscsi://alice%wrong-secret-00@{base}"));
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("Authentication failure"));
    let o = inq(format!("iscsi://{base}"));
    assert!(!o.status.success(), "login without CHAP must fail");
    let o = inq(format!("iscsi://bob%alice-secret-12@{base}"));
    assert!(!o.status.success(), "wrong user must fail");
    // Mutual: the target proves it knows its secret; a wrong expectation fails the login.
    let good = format!(
        "iscsi://alice%alice-secret-12@{base}?target_user=target&target_password=target-secret-34"
    );
    assert!(inq(good).status.success());
    let bad = format!(
        "iscsi://alice%alice-secret-12@{base}?target_user=target&target_password=not-the-secret"
    );
    assert!(!inq(bad).status.success());
}

#[test]
fn exports_change_without_restart_and_sigterm_stops_cleanly() {
    let repo = Repo::new();
    let a = repo.exported_volume("a", 8, &[CLIENT]);
    let srv = repo.serve(&[]);
    assert!(
        run(Command::new(tool("iscsi-inq")).args(["-i", CLIENT, &srv.url(&a)]))
            .status
            .success()
    );
    repo.ok(&["volume", "create", "b", "--size", "8M"]);
    repo.ok(&[
        "export",
        "b",
        "--initiator",
        CLIENT,
        "--iqn",
        "iqn.2026-11.org.example:bee",
    ]);
    let b = "iqn.2026-11.org.example:bee";
    assert!(
        run(Command::new("iscsi-inq").args(["-i", CLIENT, &srv.url(b)]))
            .status
            .success()
    );
    let ls = repo.ok(&["export", "ls"]);
    assert!(ls.contains(b) && ls.contains(&a), "{ls}");
    repo.ok(&["unexport", "a"]);
    assert!(
        !run(Command::new("iscsi-inq").args(["-i", CLIENT, &srv.url(&a)]))
            .status
            .success()
    );
    let st = srv.stop();
    assert!(st.success());
}

#[test]
fn iscsi_test_cu_conformance_has_no_failures() {
    let repo = Repo::new();
    let iqn = repo.exported_volume("cu", 128, &[LIBISCSI_TEST_1, LIBISCSI_TEST_2]);
    let srv = repo.serve(&[]);
    let url = srv.url(&iqn);
    let mut child = Command::new(tool("iscsi-test-cu"))
        .args(["-d", "-v", "--test=ALL", &url, &url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = String::new();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
    });
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("iscsi-test-cu did not finish in 30 minutes");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    out.push_str(&reader.join().unwrap());
    std::fs::write(repo.path("iscsi-test-cu.txt"), &out).unwrap();
    let results = classify_cu(&out);
    assert!(
        results.len() >= 200,
        "too few tests ran ({}):\n{out}",
        results.len()
    );
    let count = |r: &str| results.iter().filter(|(_, x)| x == r).count();
    let failed: Vec<&String> = results
        .iter()
        .filter(|(_, r)| r == "FAIL")
        .map(|(t, _)| t)
        .collect();
    assert!(failed.is_empty(), "iscsi-test-cu failures: {failed:?}");
    // Every skip is listed, with its reason, in tests/iscsi-test-cu-skips.txt.
    let listed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/iscsi-test-cu-skips.txt"
    ))
    .unwrap();
    for (t, r) in &results {
        if r == "SKIP" {
            assert!(
                listed
                    .lines()
                    .any(|l| l.split_whitespace().next() == Some(t.as_str())),
                "unlisted skip {t}"
            );
        }
    }
    // Debian's tgt 1.0.85: 162 pass, 9 fail, 59 skip (tools/iscsi-conformance measures both).
    assert!(count("PASS") > 162, "only {} passed", count("PASS"));
    let mut srv = srv;
    assert!(srv.alive());
}

/// Per-test results of verbose iscsi-test-cu output: FAIL when CUnit says so, SKIP when the
/// test printed "[SKIPPED]" (libiscsi reports those to CUnit as passed), PASS otherwise.
fn classify_cu(out: &str) -> Vec<(String, String)> {
    let mut res = Vec::new();
    let mut suite = String::new();
    let mut cur: Option<(String, bool, bool)> = None;
    let flush = |cur: &mut Option<(String, bool, bool)>, res: &mut Vec<(String, String)>| {
        if let Some((t, failed, skipped)) = cur.take() {
            let r = if failed {
                "FAIL"
            } else if skipped {
                "SKIP"
            } else {
                "PASS"
            };
            res.push((t, r.to_string()));
        }
    };
    for line in out.lines() {
        if let Some(s) = line.strip_prefix("Suite: ") {
            suite = s.trim().to_string();
        } else if let Some(t) = line.strip_prefix("  Test: ") {
            flush(&mut cur, &mut res);
            let name = t.split_whitespace().next().unwrap_or("").to_string();
            cur = Some((format!("{suite}.{name}"), false, false));
        }
        if let Some(c) = cur.as_mut() {
            if line.contains("[SKIPPED]") {
                c.2 = true;
            }
            if line.trim_end().ends_with("FAILED") && !line.contains("[FAILED]") {
                c.1 = true;
            }
        }
    }
    flush(&mut cur, &mut res);
    res
}

// ---------------------------------------------------------------------------------------
// A raw initiator for what the tools cannot send.

struct Raw {
    s: TcpStream,
    lim: FrameLimits,
    hd: bool,
    dd: bool,
    cmd_sn: u32,
    stat_sn: u32,
    itt: u32,
    buf: Vec<u8>,
    /// ExpCmdSN and MaxCmdSN of the final login response.
    login_window: (u32, u32),
}

#[derive(Debug)]
struct Reply {
    bhs: Bhs,
    data: Vec<u8>,
}

struct LoginOpts<'a> {
    initiator: &'a str,
    target: &'a str,
    isid: [u8; 6],
    digests: bool,
    extra: Vec<(&'a str, &'a str)>,
}

/// A fresh ISID per login, so sessions of one test do not reinstate each other.
fn next_isid() -> [u8; 6] {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let n = N
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        .to_be_bytes();
    [0x80, 0, n[0], n[1], n[2], n[3]]
}

impl<'a> LoginOpts<'a> {
    fn new(initiator: &'a str, target: &'a str) -> Self {
        LoginOpts {
            initiator,
            target,
            isid: next_isid(),
            digests: false,
            extra: Vec::new(),
        }
    }
}

impl Raw {
    fn connect(addr: SocketAddr) -> Raw {
        Raw::connect_stream(TcpStream::connect(addr).unwrap())
    }

    fn connect_stream(s: TcpStream) -> Raw {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.set_nodelay(true).unwrap();
        Raw {
            s,
            lim: FrameLimits {
                header_digest: false,
                data_digest: false,
                max_data: 1 << 24,
            },
            hd: false,
            dd: false,
            cmd_sn: 1,
            stat_sn: 0,
            itt: 1,
            buf: Vec::new(),
            login_window: (0, 0),
        }
    }

    /// One-PDU login straight to full feature. Err carries the status class and detail.
    fn login(addr: SocketAddr, o: &LoginOpts) -> Result<Raw, (u8, u8)> {
        let mut r = Raw::connect(addr);
        r.login_on(o)?;
        Ok(r)
    }

    /// The one-PDU login on this connection.
    fn login_on(&mut self, o: &LoginOpts) -> Result<(), (u8, u8)> {
        let r = self;
        let dig = if o.digests { "CRC32C" } else { "None" };
        let mut keys = vec![
            ("InitiatorName", o.initiator),
            ("TargetName", o.target),
            ("SessionType", "Normal"),
            ("HeaderDigest", dig),
            ("DataDigest", dig),
            ("MaxRecvDataSegmentLength", "65536"),
            ("InitialR2T", "No"),
            ("ImmediateData", "Yes"),
            ("MaxBurstLength", "262144"),
            ("FirstBurstLength", "65536"),
            ("MaxOutstandingR2T", "1"),
            ("ErrorRecoveryLevel", "0"),
        ];
        keys.extend(o.extra.iter().cloned());
        let mut b = Bhs::new(op::LOGIN_REQ);
        b.0[0] |= 0x40;
        b.set_flags(0x80 | (1 << 2) | 3);
        b.0[8..14].copy_from_slice(&o.isid);
        b.set_itt(0);
        b.set_u32(24, r.cmd_sn);
        b.set_u32(28, 0);
        let data = text::encode_pairs(&keys);
        r.s.write_all(&pdu::encode(&b, &data, false, false))
            .unwrap();
        let rep = r.recv().expect("login response");
        assert_eq!(rep.bhs.opcode(), op::LOGIN_RESP);
        let (class, detail) = (rep.bhs.0[36], rep.bhs.0[37]);
        if class != 0 {
            return Err((class, detail));
        }
        assert!(rep.bhs.flags() & 0x80 != 0, "no transit to full feature");
        assert_eq!(&rep.bhs.0[8..14], &o.isid, "ISID not echoed");
        assert_ne!(rep.bhs.u16_at(14), 0, "no TSIH");
        r.stat_sn = rep.bhs.u32_at(24).wrapping_add(1);
        r.login_window = (rep.bhs.u32_at(28), rep.bhs.u32_at(32));
        let answers = text::parse_pairs(&rep.data).unwrap();
        let get = |k: &str| answers.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
        r.hd = get("HeaderDigest").as_deref() == Some("CRC32C");
        r.dd = get("DataDigest").as_deref() == Some("CRC32C");
        assert_eq!(r.hd, o.digests);
        r.lim.header_digest = r.hd;
        r.lim.data_digest = r.dd;
        Ok(())
    }

    fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.s.write_all(bytes)
    }

    fn send(&mut self, b: &Bhs, data: &[u8]) {
        let bytes = pdu::encode(b, data, self.hd, self.dd);
        self.send_raw(&bytes).unwrap();
    }

    /// The next PDU, or None when the target closed the connection.
    fn recv(&mut self) -> Option<Reply> {
        loop {
            if let Ok(Some(n)) = pdu::check(&self.buf, &self.lim) {
                let frame: Vec<u8> = self.buf.drain(..n).collect();
                let p = pdu::parse(Bytes::from(frame), &self.lim).expect("target sent a bad PDU");
                return Some(Reply {
                    bhs: p.bhs,
                    data: p.data.to_vec(),
                });
            }
            let mut tmp = [0u8; 65536];
            match self.s.read(&mut tmp) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
            }
        }
    }

    fn next_itt(&mut self) -> u32 {
        self.itt += 1;
        self.itt
    }

    fn scsi_bhs(&mut self, cdb: &[u8], edtl: u32, read: bool, write: bool) -> Bhs {
        let mut b = Bhs::new(op::SCSI_CMD);
        let mut f = 0x80 | 0x01; // F, simple task
        if read {
            f |= 0x40;
        }
        if write {
            f |= 0x20;
        }
        b.set_flags(f);
        let itt = self.next_itt();
        b.set_itt(itt);
        b.set_u32(20, edtl);
        b.set_u32(24, self.cmd_sn);
        b.set_u32(28, self.stat_sn);
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        b.0[32..32 + cdb.len()].copy_from_slice(cdb);
        b
    }

    /// Runs a command with all its data as immediate data; returns (status, data-in, sense).
    fn command(&mut self, cdb: &[u8], read_len: u32, out: &[u8]) -> (u8, Vec<u8>, Vec<u8>) {
        let b = self.scsi_bhs(
            cdb,
            read_len.max(out.len() as u32),
            read_len > 0,
            !out.is_empty(),
        );
        self.send(&b, out);
        let mut data = Vec::new();
        loop {
            let r = self.recv().expect("connection closed during a command");
            match r.bhs.opcode() {
                op::DATA_IN => {
                    let off = r.bhs.u32_at(40) as usize;
                    if data.len() < off + r.data.len() {
                        data.resize(off + r.data.len(), 0);
                    }
                    data[off..off + r.data.len()].copy_from_slice(&r.data);
                    if r.bhs.flags() & 0x01 != 0 {
                        return (r.bhs.0[3], data, Vec::new());
                    }
                }
                op::SCSI_RESP => {
                    let sense = if r.data.len() > 2 {
                        r.data[2..].to_vec()
                    } else {
                        Vec::new()
                    };
                    return (r.bhs.0[3], data, sense);
                }
                op::NOP_IN => {}
                other => panic!("unexpected PDU {other:#x}"),
            }
        }
    }
}

fn read10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = 0x28;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn write10(lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = read10(lba, blocks);
    c[0] = 0x2a;
    c
}

const TUR: [u8; 6] = [0; 6];

/// Clears the power-on unit attention.
fn settle(r: &mut Raw) {
    for _ in 0..3 {
        if r.command(&TUR, 0, &[]).0 == 0 {
            return;
        }
    }
    panic!("TEST UNIT READY never became good");
}

fn wait_closed(r: &mut Raw, within: Duration) -> bool {
    r.s.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 4096];
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        match r.s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
    false
}

fn raw_setup() -> (Repo, Server, String) {
    let repo = Repo::new();
    let iqn = repo.exported_volume("raw", 16, &[CLIENT]);
    let srv = repo.serve(&[
        "--login-timeout",
        "2",
        "--nop-interval",
        "1",
        "--nop-timeout",
        "3",
    ]);
    (repo, srv, iqn)
}

#[test]
fn digests_both_ways_protect_reads_and_writes() {
    let (_repo, srv, iqn) = raw_setup();
    let mut o = LoginOpts::new(CLIENT, &iqn);
    o.digests = true;
    let mut r = Raw::login(srv.addr, &o).unwrap();
    settle(&mut r);
    let data = pattern(8192, 7);
    let (st, _, _) = r.command(&write10(100, 16), 0, &data);
    assert_eq!(st, 0);
    let (st, back, _) = r.command(&read10(100, 16), 8192, &[]);
    assert_eq!(st, 0);
    assert!(back == data);

    // A corrupted data digest: the PDU is rejected, the session goes on.
    let b = r.scsi_bhs(&write10(0, 1), 512, false, true);
    let mut bytes = pdu::encode(&b, &[0x42; 512], true, true);
    let n = bytes.len();
    bytes[n - 1] ^= 0xff;
    r.send_raw(&bytes).unwrap();
    let rej = r.recv().expect("reject");
    assert_eq!(rej.bhs.opcode(), op::REJECT);
    assert_eq!(rej.bhs.0[2], pdu::reject::DATA_DIGEST_ERROR);
    r.cmd_sn = r.cmd_sn.wrapping_sub(1); // the rejected command never entered the window
    assert_eq!(r.command(&TUR, 0, &[]).0, 0);

    // A corrupted header digest: the connection is dropped; the server lives on.
    let b = r.scsi_bhs(&TUR, 0, false, false);
    let mut bytes = pdu::encode(&b, &[], true, true);
    bytes[48] ^= 0x01;
    r.send_raw(&bytes).unwrap();
    assert!(wait_closed(&mut r, Duration::from_secs(10)));
    let mut r2 = Raw::login(srv.addr, &LoginOpts::new(CLIENT, &iqn)).unwrap();
    settle(&mut r2);
}

#[test]
fn bad_input_is_refused_and_the_server_stays_up() {
    let (_repo, mut srv, iqn) = raw_setup();
    // Unlisted initiator, unknown target.
    assert_eq!(
        Raw::login(srv.addr, &LoginOpts::new(OTHER, &iqn)).err(),
        Some((2, 2))
    );
    assert_eq!(
        Raw::login(
            srv.addr,
            &LoginOpts::new(CLIENT, "iqn.2026-11.org.strata:nope")
        )
        .err(),
        Some((2, 3))
    );

    // A healthy session that must be unaffected by everything below.
    let mut good = Raw::login(srv.addr, &LoginOpts::new(CLIENT, &iqn)).unwrap();
    settle(&mut good);

    // Login flood and half-open connections: many sockets that never finish a login.
    let mut idle: Vec<TcpStream> = (0..200)
        .map(|i| {
            let mut s = TcpStream::connect(srv.addr).unwrap();
            if i % 2 == 0 {
                let _ = s.write_all(&[0x43, 0x87, 0, 0, 0, 0, 1]); // a third of a BHS
            }
            s
        })
        .collect();
    assert_eq!(good.command(&TUR, 0, &[]).0, 0);

    // Data segment beyond the negotiated length: dropped at the header.
    let mut r = Raw::login(srv.addr, &LoginOpts::new(CLIENT, &iqn)).unwrap();
    let mut b = r.scsi_bhs(&write10(0, 1), 512, false, true);
    b.set_data_len((1 << 24) - 1);
    r.send_raw(&b.0).unwrap();
    assert!(wait_closed(&mut r, Duration::from_secs(10)));

    // Truncated PDU then close.
    let mut r = Raw::login(srv.addr, &LoginOpts::new(CLIENT, &iqn)).unwrap();
    let b = r.scsi_bhs(&TUR, 0, false, false);
    r.send_raw(&b.0[..30]).unwrap();
    drop(r);

    // Garbage instead of a login.
    let mut s = TcpStream::connect(srv.addr).unwrap();
    let _ = s.write_all(&pattern(4096, 3));
    drop(s);

    // LBA beyond the end: LBA OUT OF RANGE, session fine.
    let blocks = (16u32 << 20) / 512;
    let (st, _, sense) = good.command(&read10(blocks - 1, 2), 1024, &[]);
    assert_eq!(st, 2);
    assert_eq!((sense[2] & 0x0f, sense[12], sense[13]), (0x05, 0x21, 0x00));
    let (st, _, sense) = good.command(&write10(blocks, 1), 0, &[0u8; 512]);
    assert_eq!(st, 2);
    assert_eq!(sense[12], 0x21);
    // Unknown opcode: INVALID COMMAND OPERATION CODE.
    let (st, _, sense) = good.command(&[0xd7, 0, 0, 0, 0, 0], 0, &[]);
    assert_eq!((st, sense[12]), (2, 0x20));

    // The half-open connections are dropped after the login timeout (2 s here).
    for s in &mut idle {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 64];
        let r = s.read(&mut b);
        let timed_out = matches!(&r, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut));
        assert!(!timed_out, "half-open connection was not dropped");
    }
    assert!(srv.alive());
    assert_eq!(good.command(&TUR, 0, &[]).0, 0);
    assert!(!srv.log().contains("panicked"));
}

#[test]
fn session_reinstatement_replaces_the_old_connection() {
    let (_repo, srv, iqn) = raw_setup();
    let o = LoginOpts::new(CLIENT, &iqn);
    let mut first = Raw::login(srv.addr, &o).unwrap();
    // Another session of the same initiator (another ISID) is not affected.
    let mut bystander = Raw::login(srv.addr, &LoginOpts::new(CLIENT, &iqn)).unwrap();
    settle(&mut first);
    // Firmware hand-over: same initiator and ISID, TSIH 0, no logout on the old one.
    let mut second = Raw::login(srv.addr, &o).unwrap();
    assert!(
        wait_closed(&mut first, Duration::from_secs(10)),
        "old session still open"
    );
    settle(&mut second);
    let (st, _, _) = second.command(&write10(8, 1), 0, &[7u8; 512]);
    assert_eq!(st, 0);
    settle(&mut bystander);
}

/// An initiator that takes its session over from a connection it has stopped reading (the
/// OS's iscsid replacing the initramfs's connection) is not held up by it: the old
/// connection's unread answers are dropped with its tasks, not waited for, and it closes.
#[test]
fn a_reinstating_login_does_not_wait_for_answers_the_old_connection_never_reads() {
    let repo = Repo::new();
    let iqn = repo.exported_volume("stuck", 64, &[CLIENT]);
    // Default pings and socket timeouts (35 s): longer than the login's read timeout.
    let srv = repo.serve(&[]);
    let o = LoginOpts::new(CLIENT, &iqn);
    let mut old = Raw::login(srv.addr, &o).unwrap();
    settle(&mut old);
    // 48 MiB of reads that are never read: far more than the sockets buffer.
    for i in 0..48u32 {
        let b = old.scsi_bhs(&read10(i * 2048, 2048), 1 << 20, true, false);
        old.send(&b, &[]);
    }
    let mut new = Raw::login(srv.addr, &o).expect("the reinstating login was refused");
    settle(&mut new);
    let (st, _, _) = new.command(&write10(8, 1), 0, &[7u8; 512]);
    assert_eq!(st, 0);
    assert!(
        wait_closed(&mut old, Duration::from_secs(20)),
        "the old connection is still open"
    );
    assert!(srv.log().contains("session reinstated"), "{}", srv.log());
}

#[test]
fn cmdsn_window_and_nop_pings() {
    let (_repo, srv, iqn) = raw_setup();
    let mut r = Raw::login(srv.addr, &LoginOpts::new(CLIENT, &iqn)).unwrap();
    settle(&mut r);
    // A command far outside the window is ignored (no response); the next good one works.
    let mut b = r.scsi_bhs(&TUR, 0, false, false);
    b.set_u32(24, r.cmd_sn.wrapping_add(100_000));
    r.cmd_sn = r.cmd_sn.wrapping_sub(1);
    r.send(&b, &[]);
    let (st, _, _) = r.command(&TUR, 0, &[]);
    assert_eq!(st, 0);

    // NOP-Out ping: echoed.
    let mut n = Bhs::new(op::NOP_OUT);
    n.0[0] |= 0x40;
    n.set_flags(0x80);
    let itt = r.next_itt();
    n.set_itt(itt);
    n.set_u32(20, pdu::RESERVED_TAG);
    n.set_u32(24, r.cmd_sn);
    r.send(&n, b"hello");
    let rep = r.recv().unwrap();
    assert_eq!(rep.bhs.opcode(), op::NOP_IN);
    assert_eq!(rep.bhs.itt(), itt);
    assert_eq!(rep.data, b"hello");

    // The target pings an idle initiator (interval 1 s here); answering keeps it alive.
    let ping = loop {
        let p = r.recv().expect("no NOP-In ping");
        if p.bhs.opcode() == op::NOP_IN && p.bhs.itt() == pdu::RESERVED_TAG {
            break p;
        }
    };
    let mut a = Bhs::new(op::NOP_OUT);
    a.0[0] |= 0x40;
    a.set_flags(0x80);
    a.set_itt(pdu::RESERVED_TAG);
    a.set_u32(20, ping.bhs.ttt());
    a.set_u32(24, r.cmd_sn);
    r.send(&a, &[]);
    assert_eq!(r.command(&TUR, 0, &[]).0, 0);
    // Stop answering: the target drops the connection (timeout 3 s here).
    assert!(
        wait_closed(&mut r, Duration::from_secs(15)),
        "dead initiator not detected"
    );
}

/// The final login response opens the whole CmdSN window (--queue-depth), and commands
/// sent at once right after the login, as iscsid does when it logs in again for a session
/// its kernel keeps, are all answered: none arrives beyond the MaxCmdSN last advertised.
#[test]
fn the_login_opens_the_whole_window_and_commands_sent_at_once_are_all_answered() {
    let repo = Repo::new();
    let iqn = repo.exported_volume("window", 16, &[CLIENT]);
    let srv = repo.serve(&["--queue-depth", "8"]);
    let mut r = Raw::connect(srv.addr);
    // A relogin goes on with the session's CmdSN, not 1.
    r.cmd_sn = 410;
    r.login_on(&LoginOpts::new(CLIENT, &iqn)).unwrap();
    assert_eq!(r.login_window, (410, 417), "ExpCmdSN, MaxCmdSN");
    let mut burst = Vec::new();
    let mut itts = Vec::new();
    for i in 0..8 {
        let b = r.scsi_bhs(&read10(i * 8, 8), 4096, true, false);
        itts.push(b.itt());
        burst.extend_from_slice(&pdu::encode(&b, &[], false, false));
    }
    r.send_raw(&burst).unwrap();
    let mut answered = Vec::new();
    while answered.len() < itts.len() {
        // The first command sees the power-on unit attention; any status answers it.
        let Some(p) = r.recv() else {
            panic!(
                "answered {answered:?} of {itts:?} before the read timed out:\n{}",
                srv.log()
            );
        };
        if p.bhs.opcode() == op::SCSI_RESP
            || (p.bhs.opcode() == op::DATA_IN && p.bhs.flags() & 0x01 != 0)
        {
            answered.push(p.bhs.itt());
        }
    }
    answered.sort();
    assert_eq!(answered, itts);
    assert!(!srv.log().contains("CmdSN outside window"), "{}", srv.log());
}

#[test]
fn writes_with_r2t_and_several_outstanding() {
    let (_repo, srv, iqn) = raw_setup();
    // Firmware-like limits (iPXE): R2T for everything, small PDUs, several bursts.
    let mut r = Raw::connect(srv.addr);
    let keys = [
        ("InitiatorName", CLIENT),
        ("TargetName", iqn.as_str()),
        ("InitialR2T", "Yes"),
        ("ImmediateData", "No"),
        ("MaxOutstandingR2T", "4"),
        ("MaxBurstLength", "16384"),
        ("FirstBurstLength", "8192"),
        ("MaxRecvDataSegmentLength", "8192"),
    ];
    let mut b = Bhs::new(op::LOGIN_REQ);
    b.0[0] |= 0x40;
    b.set_flags(0x80 | (1 << 2) | 3);
    b.0[8..14].copy_from_slice(&[0x80, 0, 0, 0, 0, 9]);
    b.set_u32(24, 1);
    r.send_raw(&pdu::encode(&b, &text::encode_pairs(&keys), false, false))
        .unwrap();
    let rep = r.recv().unwrap();
    assert_eq!(rep.bhs.0[36], 0);
    let answers = text::parse_pairs(&rep.data).unwrap();
    assert!(answers.contains(&("MaxOutstandingR2T".into(), "4".into())));
    r.stat_sn = rep.bhs.u32_at(24) + 1;
    settle(&mut r);
    // 64 KiB write: four 16 KiB bursts, all four R2Ts outstanding at once.
    let data = pattern(65536, 11);
    let cmd = r.scsi_bhs(&write10(64, 128), 65536, false, true);
    r.send(&cmd, &[]);
    let mut r2ts = Vec::new();
    while r2ts.len() < 4 {
        let p = r.recv().unwrap();
        assert_eq!(p.bhs.opcode(), op::R2T);
        r2ts.push((p.bhs.ttt(), p.bhs.u32_at(40), p.bhs.u32_at(44)));
    }
    for (ttt, off, len) in r2ts {
        assert_eq!(len, 16384);
        let (off, len) = (off as usize, len as usize);
        for (sn, piece) in (off..off + len).step_by(8192).enumerate() {
            let mut d = Bhs::new(op::DATA_OUT);
            let last = piece + 8192 >= off + len;
            d.set_flags(if last { 0x80 } else { 0 });
            d.set_itt(cmd.itt());
            d.set_u32(20, ttt);
            d.set_u32(36, sn as u32);
            d.set_u32(40, piece as u32);
            r.send(&d, &data[piece..piece + 8192]);
        }
    }
    let resp = r.recv().unwrap();
    assert_eq!(resp.bhs.opcode(), op::SCSI_RESP);
    assert_eq!(resp.bhs.0[3], 0);
    let (st, back, _) = r.command(&read10(64, 128), 65536, &[]);
    assert_eq!(st, 0);
    assert!(back == data);
}

fn write16_fua(lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = 0x8a;
    c[1] = 0x08; // FUA
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

#[test]
fn kill_9_keeps_every_write_acknowledged_with_fua_or_before_sync_cache() {
    let repo = Repo::new();
    let iqn = repo.exported_volume("crash", 32, &[CLIENT]);
    let mut srv = repo.serve(&[]);
    let mut r = Raw::login(srv.addr, &LoginOpts::new(CLIENT, &iqn)).unwrap();
    settle(&mut r);
    // Phase 1: plain writes, then SYNCHRONIZE CACHE: all durable.
    for i in 0..64u32 {
        let (st, _, _) = r.command(&write10(i * 16, 8), 0, &pattern(4096, i as u64));
        assert_eq!(st, 0);
    }
    let (st, _, _) = r.command(&[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0, &[]);
    assert_eq!(st, 0);
    // Phase 2: FUA writes, each durable once acknowledged; the server dies mid-stream.
    let mut acked = Vec::new();
    for i in 0..200u64 {
        let lba = 4096 + i * 8;
        let (st, _, _) = r.command(&write16_fua(lba, 8), 0, &pattern(4096, 1000 + i));
        assert_eq!(st, 0);
        acked.push((lba, 1000 + i));
        if i == 150 {
            srv.kill9();
            break;
        }
    }
    drop(r);
    drop(srv);
    // Everything acknowledged is there, read back through the store with no server.
    let out = repo.path("after-crash.raw");
    repo.ok(&["volume", "export", "crash", out.to_str().unwrap()]);
    let disk = std::fs::read(&out).unwrap();
    for i in 0..64u64 {
        let off = (i * 16 * 512) as usize;
        assert!(
            disk[off..off + 4096] == pattern(4096, i)[..],
            "synced write {i} lost"
        );
    }
    for (lba, seed) in acked {
        let off = (lba * 512) as usize;
        assert!(
            disk[off..off + 4096] == pattern(4096, seed)[..],
            "FUA write at {lba} lost"
        );
    }
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn a_thousand_exports_and_256_idle_sessions() {
    let repo = Repo::new();
    let store = strata::store::Repository::open(&repo.root, Default::default()).unwrap();
    let mut exports = Vec::new();
    for i in 0..1000 {
        let name = format!("vol{i:04}");
        store.create_volume(&name, None, Some(4 << 20)).unwrap();
        exports.push(serde_json::json!({
            "volume": name,
            "iqn": format!("iqn.2026-11.org.strata:{name}"),
            "initiators": [CLIENT],
        }));
    }
    drop(store);
    std::fs::write(
        repo.root.join("exports.json"),
        serde_json::to_vec(&serde_json::json!({ "exports": exports })).unwrap(),
    )
    .unwrap();
    // One initiator on 257 targets: far beyond the default share of one initiator.
    let mut srv = repo.serve(&[
        "--nop-interval",
        "3600",
        "--max-sessions-per-initiator",
        "300",
    ]);
    // Written as an earlier strata kept them: the server took the file into its catalog.
    assert!(!repo.root.join("exports.json").exists());
    assert!(repo.root.join("exports.json.migrated").exists());
    let ls = repo.ok(&["export", "ls"]);
    assert_eq!(ls.lines().count(), 1001);
    // Discovery sees all thousand (the answer spans several Text responses).
    let portal = format!("iscsi://{}", srv.addr);
    let found = ok(Command::new(tool("iscsi-ls")).args(["-i", CLIENT, &portal]));
    assert_eq!(
        found.lines().filter(|l| l.contains("Target:")).count(),
        1000
    );
    // One warm-up session, then 256 sessions on 256 targets, each doing one command.
    let mut warm = Raw::login(
        srv.addr,
        &LoginOpts::new(CLIENT, "iqn.2026-11.org.strata:vol0999"),
    )
    .unwrap();
    settle(&mut warm);
    let before = rss_kib(srv.pid());
    let mut sessions = Vec::new();
    for i in 0..256 {
        let iqn = format!("iqn.2026-11.org.strata:vol{i:04}");
        let mut r = Raw::login(srv.addr, &LoginOpts::new(CLIENT, &iqn)).unwrap();
        settle(&mut r);
        let (st, data, _) = r.command(&read10(0, 8), 4096, &[]);
        assert_eq!(st, 0);
        assert_eq!(data.len(), 4096);
        sessions.push(r);
    }
    let after = rss_kib(srv.pid());
    let per_session = (after.saturating_sub(before)) / 256;
    eprintln!("resident memory per idle session (open volume included): {per_session} KiB");
    assert!(per_session < 256, "{per_session} KiB per idle session");
    for r in &mut sessions {
        assert_eq!(r.command(&TUR, 0, &[]).0, 0);
    }
    assert!(srv.alive());
}
// Boot tests (iPXE BIOS and UEFI sanboot, a Linux guest on an iscsi:// root) are in tests/boot.rs.

// ---------------------------------------------------------------------------------------
// EDK2 IScsiDxe (OVMF's UEFI iSCSI initiator), played PDU by PDU. Each request below is
// built the way NetworkPkg/IScsiDxe builds it (IScsiPrepareLoginReq, IScsiCHAPToSendReq,
// IScsiFillOpParams, IScsiNewScsiCmdPdu), and each response goes through the checks that
// IScsiProcessLoginRsp, IScsiCHAPOnRspReceived, IScsiCheckOpParams, IScsiOnDataInRcvd and
// IScsiOnScsiRspRcvd make: a check failing here is a firmware that does not boot.

const EDK2_INITIATOR: &str = "iqn.2026-01.test.strata:ovmf";
/// The operational keys IScsiFillOpParams sends, in its order, with its default values.
const EDK2_OP_KEYS: [(&str, &str); 14] = [
    ("HeaderDigest", "None"),
    ("DataDigest", "None"),
    ("ErrorRecoveryLevel", "0"),
    ("InitialR2T", "No"),
    ("ImmediateData", "Yes"),
    ("MaxRecvDataSegmentLength", "65536"),
    ("MaxBurstLength", "262144"),
    ("FirstBurstLength", "65536"),
    ("MaxConnections", "1"),
    ("DataPDUInOrder", "Yes"),
    ("DataSequenceInOrder", "Yes"),
    ("DefaultTime2Wait", "2"),
    ("DefaultTime2Retain", "20"),
    ("MaxOutstandingR2T", "1"),
];

/// IScsiBuildKeyValueList: every pair has '=' and ends in NUL; a malformed list is an error.
fn edk2_key_values(data: &[u8]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let eq = rest
            .iter()
            .position(|&b| b == b'=')
            .ok_or("pair without '='")?;
        let key = String::from_utf8_lossy(&rest[..eq]).into_owned();
        rest = &rest[eq + 1..];
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or("value not NUL-terminated")?;
        out.push((key, String::from_utf8_lossy(&rest[..nul]).into_owned()));
        rest = &rest[nul + 1..];
    }
    Ok(out)
}

/// IScsiGetValueByKeyFromList: takes the first pair with this key out of the list.
fn edk2_take(list: &mut Vec<(String, String)>, key: &str) -> Option<String> {
    let i = list.iter().position(|(k, _)| k == key)?;
    Some(list.remove(i).1)
}

/// IScsiNetNtoi: decimal, or hex after "0x".
fn edk2_ntoi(v: &str) -> Option<u64> {
    match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

/// IScsiHexToBin: optional "0x", an even, non-zero number of hex digits (no base64).
fn edk2_hex(v: &str) -> Result<Vec<u8>, String> {
    let h = v
        .strip_prefix("0x")
        .or_else(|| v.strip_prefix("0X"))
        .unwrap_or(v);
    if h.is_empty() || h.len() % 2 != 0 {
        return Err(format!("{v:?} is not an even number of hex digits"));
    }
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).map_err(|_| format!("{v:?} is not hex")))
        .collect()
}

/// IScsiCheckOpParams, for the values IScsiFillOpParams offered: every key it needs is
/// answered with a value it accepts, and nothing is left over but the declarations it
/// tolerates.
fn edk2_check_op_params(data: &[u8]) -> Result<(), String> {
    let mut l = edk2_key_values(data)?;
    fn need(l: &mut Vec<(String, String)>, k: &str) -> Result<String, String> {
        edk2_take(l, k).ok_or(format!("{k} not answered"))
    }
    for k in ["HeaderDigest", "DataDigest"] {
        let v = need(&mut l, k)?;
        // "CRC32" only if the initiator asked for digests, which IScsiDxe never does.
        if v != "None" {
            return Err(format!("{k}={v}"));
        }
    }
    let erl = edk2_ntoi(&need(&mut l, "ErrorRecoveryLevel")?).ok_or("ErrorRecoveryLevel")?;
    if erl > 2 {
        return Err(format!("ErrorRecoveryLevel={erl}"));
    }
    let initial_r2t = need(&mut l, "InitialR2T")? == "Yes";
    let immediate = need(&mut l, "ImmediateData")? == "Yes";
    if let Some(v) = edk2_take(&mut l, "MaxRecvDataSegmentLength") {
        edk2_ntoi(&v).ok_or("MaxRecvDataSegmentLength")?;
    }
    edk2_ntoi(&need(&mut l, "MaxBurstLength")?).ok_or("MaxBurstLength")?;
    // Needed unless InitialR2T=Yes and ImmediateData=No.
    if !initial_r2t || immediate {
        edk2_ntoi(&need(&mut l, "FirstBurstLength")?).ok_or("FirstBurstLength")?;
    }
    let n = edk2_ntoi(&need(&mut l, "MaxConnections")?).ok_or("MaxConnections")?;
    if n == 0 || n > 65535 {
        return Err(format!("MaxConnections={n}"));
    }
    for k in ["DefaultTime2Wait", "DefaultTime2Retain"] {
        let n = edk2_ntoi(&need(&mut l, k)?).ok_or(k)?;
        if n > 3600 {
            return Err(format!("{k}={n}"));
        }
    }
    let n = edk2_ntoi(&need(&mut l, "MaxOutstandingR2T")?).ok_or("MaxOutstandingR2T")?;
    if n == 0 || n > 65535 {
        return Err(format!("MaxOutstandingR2T={n}"));
    }
    for k in [
        "SessionType",
        "TargetAlias",
        "TargetPortalGroupTag",
        "InitialR2T",
        "DataPDUInOrder",
        "DataSequenceInOrder",
    ] {
        edk2_take(&mut l, k);
    }
    if initial_r2t && !immediate {
        edk2_take(&mut l, "FirstBurstLength");
    }
    if l.is_empty() {
        Ok(())
    } else {
        Err(format!("keys IScsiDxe does not expect: {l:?}"))
    }
}

/// The secrets an IScsiDxe attempt is configured with (12 to 16 characters each).
struct Edk2Chap<'a> {
    user: &'a str,
    secret: &'a str,
    /// Mutual CHAP: the target's expected secret (the target's name is not checked).
    reverse_secret: Option<&'a str>,
    /// CHAP_A as the firmware sends it: "7,5" by default, "7" when built without MD5.
    algorithms: &'a str,
}

/// One IScsiDxe session: its connection state (ExpStatSN, CmdSN, ITT) over a raw socket.
struct Edk2 {
    raw: Raw,
    isid: [u8; 6],
    itt: u32,
    cmd_sn: u32,
    exp_stat_sn: u32,
    csg: u8,
    nsg: u8,
    /// Keys of every login response, in order, for the test's own assertions.
    login_keys: Vec<Vec<(String, String)>>,
    tpgt: Option<u64>,
    chap_alg: Option<u64>,
}

impl Edk2 {
    /// IScsiSessionLogin + IScsiConnLogin: the login, stage by stage.
    fn login(addr: SocketAddr, target: &str, chap: Option<&Edk2Chap>) -> Result<Edk2, String> {
        let mut e = Edk2 {
            raw: Raw::connect(addr),
            // IScsiDxe derives the ISID from the NIC's MAC; the top byte says "random".
            isid: [0x40, 0x52, 0x54, 0x00, 0x12, 0x34],
            itt: 1,
            cmd_sn: 1,
            exp_stat_sn: 0,
            csg: 0,
            nsg: 1,
            login_keys: Vec::new(),
            tpgt: None,
            chap_alg: None,
        };
        let mut keys = vec![
            ("InitiatorName", EDK2_INITIATOR.to_string()),
            ("SessionType", "Normal".to_string()),
            ("TargetName", target.to_string()),
        ];
        let Some(c) = chap else {
            keys.push(("AuthMethod", "None".into()));
            let l = e.login_step(&keys, true)?;
            e.check_initial(&l, "None")?;
            return e.operational();
        };
        keys.push(("AuthMethod", "CHAP".into()));
        let l = e.login_step(&keys, false)?;
        e.check_initial(&l, "CHAP")?;
        // CHAP step one: the algorithm list.
        let mut l = e.login_step(&[("CHAP_A", c.algorithms.to_string())], false)?;
        let a = edk2_ntoi(&edk2_take(&mut l, "CHAP_A").ok_or("no CHAP_A")?).ok_or("CHAP_A")?;
        if ![5, 7].contains(&a) || !c.algorithms.split(',').any(|x| x == a.to_string()) {
            return Err(format!("target chose CHAP_A={a}, not one offered"));
        }
        e.chap_alg = Some(a);
        let id = edk2_ntoi(&edk2_take(&mut l, "CHAP_I").ok_or("no CHAP_I")?).ok_or("CHAP_I")?;
        if id > 0xff {
            return Err(format!("CHAP_I={id}"));
        }
        let challenge = edk2_hex(&edk2_take(&mut l, "CHAP_C").ok_or("no CHAP_C")?)?;
        if challenge.len() > 1024 {
            return Err("CHAP_C longer than IScsiDxe's 1024-byte buffer".into());
        }
        let response = edk2_chap_hash(a, id as u8, c.secret, &challenge);
        // Step three: name and response (and our challenge when mutual), with the T bit.
        let mut keys = vec![
            ("CHAP_N", c.user.to_string()),
            ("CHAP_R", format!("0x{}", hex(&response))),
        ];
        let out_id = 0x5a_u8;
        let digest_len = if a == 7 { 32 } else { 16 };
        let out_challenge = pattern(digest_len, 7);
        if c.reverse_secret.is_some() {
            keys.push(("CHAP_I", out_id.to_string()));
            keys.push(("CHAP_C", format!("0x{}", hex(&out_challenge))));
        }
        let mut l = e.login_step(&keys, true)?;
        if e.csg != 1 {
            return Err("target did not move to the operational stage after CHAP".into());
        }
        if let Some(rs) = c.reverse_secret {
            edk2_take(&mut l, "CHAP_N").ok_or("mutual CHAP: no CHAP_N")?;
            let r = edk2_hex(&edk2_take(&mut l, "CHAP_R").ok_or("mutual CHAP: no CHAP_R")?)?;
            if r.len() != digest_len {
                return Err(format!("CHAP_R of {} bytes", r.len()));
            }
            if r != edk2_chap_hash(a, out_id, rs, &out_challenge) {
                return Err("target's CHAP_R is wrong".into());
            }
        }
        e.operational()
    }

    /// The first response (IScsiCHAPOnRspReceived, ISCSI_AUTH_INITIAL): the portal group
    /// tag and the AuthMethod the initiator asked for.
    fn check_initial(&mut self, l: &[(String, String)], method: &str) -> Result<(), String> {
        let mut l = l.to_vec();
        let t = edk2_take(&mut l, "TargetPortalGroupTag").ok_or("no TargetPortalGroupTag")?;
        let t = edk2_ntoi(&t)
            .filter(|&t| t <= 0xffff)
            .ok_or("TargetPortalGroupTag")?;
        self.tpgt = Some(t);
        let m = edk2_take(&mut l, "AuthMethod").ok_or("no AuthMethod")?;
        if m != method {
            return Err(format!("AuthMethod={m}, asked for {method}"));
        }
        Ok(())
    }

    fn operational(mut self) -> Result<Edk2, String> {
        if self.csg != 1 || self.nsg != 3 {
            return Err(format!("stage {}->{} after security", self.csg, self.nsg));
        }
        let keys: Vec<(&str, String)> = EDK2_OP_KEYS
            .iter()
            .map(|(k, v)| (*k, v.to_string()))
            .collect();
        self.login_step(&keys, true)?;
        let last = self.login_keys.last().cloned().unwrap_or_default();
        edk2_check_op_params(&text::encode_pairs(&last))?;
        if self.csg != 3 {
            return Err("no transit to full feature".into());
        }
        Ok(self)
    }

    /// IScsiSendLoginReq + IScsiReceiveLoginRsp + IScsiProcessLoginRsp.
    fn login_step(
        &mut self,
        keys: &[(&str, String)],
        transit: bool,
    ) -> Result<Vec<(String, String)>, String> {
        let mut b = Bhs::new(op::LOGIN_REQ);
        b.0[0] |= 0x40; // immediate
        b.set_flags(((transit as u8) << 7) | (self.csg << 2) | self.nsg);
        b.0[2] = 0; // version-max
        b.0[3] = 0; // version-min
        b.0[8..14].copy_from_slice(&self.isid);
        b.set_u16(14, 0);
        b.set_itt(self.itt);
        b.set_u16(20, 1); // CID
        b.set_u32(24, self.cmd_sn);
        b.set_u32(28, self.exp_stat_sn);
        let data = text::encode_pairs(keys);
        self.raw.send(&b, &data);
        let r = self.raw.recv().ok_or("connection closed during login")?;
        let h = &r.bhs;
        if h.opcode() != op::LOGIN_RESP {
            return Err(format!("opcode {:#x} during login", h.opcode()));
        }
        if h.0[36] != 0 {
            return Err(format!("login status {}/{}", h.0[36], h.0[37]));
        }
        let t = h.flags() & 0x80 != 0;
        let c = h.flags() & 0x40 != 0;
        let csg = (h.flags() >> 2) & 3;
        let nsg = h.flags() & 3;
        if t && c {
            return Err("T and C both set".into());
        }
        if csg != self.csg {
            return Err(format!("CSG {csg}, expected {}", self.csg));
        }
        if t && !transit {
            return Err("T set though the request did not ask to transit".into());
        }
        if t && nsg != self.nsg {
            return Err(format!("NSG {nsg}, expected {}", self.nsg));
        }
        if h.0[8..14] != self.isid {
            return Err("ISID not echoed".into());
        }
        if h.itt() != self.itt {
            return Err("ITT not echoed".into());
        }
        if c {
            return Err("partial (C) responses are not part of this exchange".into());
        }
        let stat_sn = h.u32_at(24);
        if self.login_keys.is_empty() {
            // The leading login: ExpCmdSN must be the CmdSN sent.
            if h.u32_at(28) != self.cmd_sn {
                return Err(format!(
                    "ExpCmdSN {} != CmdSN {}",
                    h.u32_at(28),
                    self.cmd_sn
                ));
            }
            self.exp_stat_sn = stat_sn.wrapping_add(1);
        } else if stat_sn != self.exp_stat_sn {
            return Err(format!("StatSN {stat_sn}, expected {}", self.exp_stat_sn));
        } else {
            self.exp_stat_sn = stat_sn.wrapping_add(1);
        }
        let keys = edk2_key_values(&r.data)?;
        self.login_keys.push(keys.clone());
        if t {
            self.csg = self.nsg;
            if self.csg == 1 {
                self.nsg = 3;
            } else if h.u16_at(14) == 0 {
                return Err("final login response without a TSIH".into());
            }
        }
        Ok(keys)
    }

    /// IScsiExecuteScsiCommand for a command without Data-Out: returns status, the data
    /// (InTransferLength after residuals), the sense, and how many Data-In PDUs came.
    fn command(&mut self, cdb: &[u8], read_len: u32) -> Result<Edk2Result, String> {
        let itt = self.itt;
        let mut b = Bhs::new(op::SCSI_CMD);
        let mut f = 0x80 | 0x01; // F (no unsolicited data follows), simple task
        if read_len > 0 {
            f |= 0x40;
        }
        b.set_flags(f);
        b.set_itt(itt);
        b.set_u32(20, read_len);
        b.set_u32(24, self.cmd_sn);
        b.set_u32(28, self.exp_stat_sn);
        b.0[32..32 + cdb.len()].copy_from_slice(cdb);
        self.itt += 1;
        self.cmd_sn += 1;
        self.raw.send(&b, &[]);
        let mut data = vec![0u8; read_len as usize];
        let mut in_len = read_len as u64;
        let mut exp_data_sn = 0u32;
        let mut received = 0usize;
        let mut pdus = 0usize;
        loop {
            let r = self
                .raw
                .recv()
                .ok_or("connection closed during a command")?;
            let h = &r.bhs;
            match h.opcode() {
                op::DATA_IN => {
                    let off = h.u32_at(40) as usize;
                    if off + r.data.len() > read_len as usize {
                        return Err(format!("Data-In beyond the buffer at {off}"));
                    }
                    if h.u32_at(36) != exp_data_sn {
                        return Err(format!("DataSN {}, expected {exp_data_sn}", h.u32_at(36)));
                    }
                    exp_data_sn += 1;
                    if h.itt() != itt {
                        return Err("Data-In for another task".into());
                    }
                    // DataPDUInOrder=Yes: what IScsiDxe assumes of the offsets.
                    if off != received {
                        return Err(format!("Data-In at offset {off}, expected {received}"));
                    }
                    data[off..off + r.data.len()].copy_from_slice(&r.data);
                    received += r.data.len();
                    pdus += 1;
                    if h.flags() & 0x01 != 0 {
                        if h.flags() & 0x80 == 0 {
                            return Err("S bit without F bit".into());
                        }
                        if h.flags() & 0x06 == 0x06 {
                            return Err("both overflow and underflow".into());
                        }
                        self.check_stat_sn(h.u32_at(24))?;
                        let status = h.0[3];
                        if h.flags() & 0x04 != 0 {
                            return Err("overflow (EFI_BAD_BUFFER_SIZE)".into());
                        }
                        if h.flags() & 0x02 != 0 {
                            in_len -= h.u32_at(44) as u64;
                        }
                        data.truncate(in_len as usize);
                        return Ok(Edk2Result {
                            status,
                            data,
                            sense: Vec::new(),
                            pdus,
                        });
                    }
                }
                op::SCSI_RESP => {
                    if h.itt() != itt {
                        return Err("SCSI Response for another task".into());
                    }
                    self.check_stat_sn(h.u32_at(24))?;
                    if h.0[2] != 0 {
                        return Err(format!("iSCSI response {:#x}", h.0[2]));
                    }
                    if h.flags() & 0x18 == 0x18 || h.flags() & 0x06 == 0x06 {
                        return Err("both overflow and underflow".into());
                    }
                    if h.flags() & 0x04 != 0 {
                        return Err("overflow (EFI_BAD_BUFFER_SIZE)".into());
                    }
                    if h.flags() & 0x02 != 0 {
                        in_len -= h.u32_at(44) as u64;
                    }
                    let sense = if r.data.len() >= 2 {
                        let n = u16::from_be_bytes([r.data[0], r.data[1]]) as usize;
                        r.data[2..2 + n.min(r.data.len() - 2)].to_vec()
                    } else {
                        Vec::new()
                    };
                    data.truncate(in_len.min(received as u64) as usize);
                    return Ok(Edk2Result {
                        status: h.0[3],
                        data,
                        sense,
                        pdus,
                    });
                }
                op::NOP_IN => {
                    // IScsiOnNopInRcvd: a target ping carries the current StatSN.
                    if h.itt() == 0xffff_ffff {
                        if h.u32_at(24) != self.exp_stat_sn {
                            return Err("NOP-In ping with a stale StatSN".into());
                        }
                    } else {
                        self.check_stat_sn(h.u32_at(24))?;
                    }
                }
                other => return Err(format!("opcode {other:#x} during a command")),
            }
        }
    }

    /// IScsiCheckSN on StatSN: exactly the next one.
    fn check_stat_sn(&mut self, sn: u32) -> Result<(), String> {
        if sn != self.exp_stat_sn {
            return Err(format!("StatSN {sn}, expected {}", self.exp_stat_sn));
        }
        self.exp_stat_sn = sn.wrapping_add(1);
        Ok(())
    }
}

struct Edk2Result {
    status: u8,
    data: Vec<u8>,
    sense: Vec<u8>,
    pdus: usize,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// IScsiCHAPCalculateResponse: H(id || secret || challenge), SHA-256 (7) or MD5 (5).
fn edk2_chap_hash(alg: u64, id: u8, secret: &str, challenge: &[u8]) -> Vec<u8> {
    use md5::Digest;
    fn h<D: Digest>(id: u8, secret: &str, challenge: &[u8]) -> Vec<u8> {
        let mut d = D::new();
        d.update([id]);
        d.update(secret.as_bytes());
        d.update(challenge);
        d.finalize().to_vec()
    }
    match alg {
        7 => h::<sha2::Sha256>(id, secret, challenge),
        _ => h::<md5::Md5>(id, secret, challenge),
    }
}

/// What OVMF sends once logged in (ScsiBusDxe and ScsiDiskDxe over IScsiDxe), then GRUB's
/// 10 MB READ(10); checks each answer the way ScsiDiskDxe uses it.
fn edk2_boot_commands(e: &mut Edk2, image: &[u8]) {
    let inquiry = |evpd: u8, page: u8, len: u16| {
        let mut c = [0u8; 6];
        c[0] = 0x12;
        c[1] = evpd;
        c[2] = page;
        c[3..5].copy_from_slice(&len.to_be_bytes());
        c
    };
    for _ in 0..2 {
        let r = e.command(&inquiry(0, 0, 96), 96).unwrap();
        assert_eq!(r.status, 0);
        assert_eq!(r.data[0] & 0x1f, 0, "not a direct-access device");
        assert!(r.data.len() >= 36, "INQUIRY data of {} bytes", r.data.len());
    }
    let r = e.command(&inquiry(1, 0x00, 260), 260).unwrap();
    assert_eq!(r.status, 0);
    let n = u16::from_be_bytes([r.data[2], r.data[3]]) as usize;
    let pages = &r.data[4..4 + n];
    assert_eq!(
        pages.first(),
        Some(&0x00),
        "VPD 0x00 must list itself first"
    );
    assert!(
        pages.windows(2).all(|w| w[0] < w[1]),
        "VPD 0x00 not ascending: {pages:x?}"
    );
    assert!(pages.contains(&0xb0));
    let r = e.command(&inquiry(1, 0xb0, 64), 64).unwrap();
    assert_eq!((r.status, r.data[1]), (0, 0xb0));
    // TEST UNIT READY: the power-on unit attention once, then ready.
    let r = e.command(&TUR, 0).unwrap();
    assert_eq!(r.status, 2, "first TUR must report the unit attention");
    assert_eq!(r.sense[2] & 0x0f, 6, "sense key UNIT ATTENTION");
    let r = e.command(&TUR, 0).unwrap();
    assert_eq!(r.status, 0);
    let r = e.command(&[0x03, 0, 0, 0, 18, 0], 18).unwrap();
    assert_eq!(r.status, 0);
    assert_eq!(r.data[2] & 0x0f, 0, "REQUEST SENSE: nothing pending");
    let r = e.command(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8).unwrap();
    assert_eq!(r.status, 0);
    let last = u32::from_be_bytes(r.data[0..4].try_into().unwrap()) as usize;
    let bs = u32::from_be_bytes(r.data[4..8].try_into().unwrap()) as usize;
    assert_eq!(((last + 1) * bs, bs), (image.len(), 512));
    // The GPT, then GRUB's core: one READ(10) of 10 MB.
    let r = e.command(&read10(0, 34), 34 * 512).unwrap();
    assert_eq!((r.status, &r.data[..]), (0, &image[..34 * 512]));
    let blocks = 20480u16;
    let lba = 2048u32;
    let len = blocks as usize * 512;
    let r = e.command(&read10(lba, blocks), len as u32).unwrap();
    assert_eq!(r.status, 0);
    assert_eq!(
        r.pdus,
        len.div_ceil(65536),
        "Data-In PDUs of MaxRecvDataSegmentLength"
    );
    assert!(
        r.data == image[lba as usize * 512..lba as usize * 512 + len],
        "the 10 MB read does not return the volume's bytes"
    );
}

#[test]
fn edk2_iscsidxe_login_and_boot_reads_without_chap_and_with_mutual_chap() {
    let repo = Repo::new();
    let image = pattern(32 << 20, 11);
    let file = repo.path("gold.raw");
    std::fs::write(&file, &image).unwrap();
    repo.ok(&["image", "import", file.to_str().unwrap(), "--name", "gold"]);
    repo.ok(&["volume", "create", "open", "--from", "gold"]);
    repo.ok(&["volume", "create", "guarded", "--from", "gold"]);
    repo.ok(&["export", "open", "--initiator", EDK2_INITIATOR]);
    repo.ok(&[
        "export",
        "guarded",
        "--initiator",
        EDK2_INITIATOR,
        "--chap-user",
        "ovmf",
        "--chap-secret",
        "ovmf-secret-12",
        "--mutual-user",
        "strata",
        "--mutual-secret",
        "strata-secret-3",
    ]);
    let srv = repo.serve(&[]);

    let mut e = Edk2::login(srv.addr, "iqn.2026-11.org.strata:open", None)
        .unwrap_or_else(|why| panic!("IScsiDxe would fail this login: {why}"));
    // Everything the operational request proposed is answered, declarative keys aside.
    let op = e.login_keys.last().unwrap();
    for (k, _) in EDK2_OP_KEYS {
        if k != "MaxRecvDataSegmentLength" {
            assert!(op.iter().any(|(a, _)| a == k), "{k} not answered");
        }
    }
    let allowed = ["TargetPortalGroupTag", "TargetAlias", "SessionType"];
    for (k, _) in op {
        assert!(
            EDK2_OP_KEYS.iter().any(|(o, _)| o == k) || allowed.contains(&k.as_str()),
            "target volunteered {k}"
        );
    }
    assert!(e.tpgt.is_some());
    edk2_boot_commands(&mut e, &image);
    drop(e);

    // Mutual CHAP with the firmware's default list (SHA-256 preferred), then as built
    // without MD5, then one-way MD5 only.
    for (algorithms, mutual, want) in [("7,5", true, 7), ("7", true, 7), ("5", false, 5)] {
        let c = Edk2Chap {
            user: "ovmf",
            secret: "ovmf-secret-12",
            reverse_secret: mutual.then_some("strata-secret-3"),
            algorithms,
        };
        let mut e = Edk2::login(srv.addr, "iqn.2026-11.org.strata:guarded", Some(&c))
            .unwrap_or_else(|why| panic!("CHAP_A={algorithms}: IScsiDxe would fail: {why}"));
        assert_eq!(e.chap_alg, Some(want));
        if algorithms == "7,5" {
            edk2_boot_commands(&mut e, &image);
        }
    }
    // A wrong reverse secret is caught by the firmware's check of the target's CHAP_R.
    let c = Edk2Chap {
        user: "ovmf",
        secret: "ovmf-secret-12",
        reverse_secret: Some("not-the-secret"),
        algorithms: "7,5",
    };
    let why = Edk2::login(srv.addr, "iqn.2026-11.org.strata:guarded", Some(&c))
        .err()
        .expect("a wrong reverse secret must fail");
    assert!(why.contains("CHAP_R is wrong"), "{why}");
    // And a wrong initiator secret is refused by the target.
    let c = Edk2Chap {
        user: "ovmf",
        secret: "wrong-secret-1",
        reverse_secret: None,
        algorithms: "7,5",
    };
    let why = Edk2::login(srv.addr, "iqn.2026-11.org.strata:guarded", Some(&c))
        .err()
        .expect("a wrong secret must fail");
    assert!(why.contains("login status 2/1"), "{why}");
}

// ---------------------------------------------------------------------------------------
// Logical block provisioning: GET LBA STATUS tells written from never-written and discarded

fn get_lba_status(r: &mut Raw, lba: u64, alloc: u32) -> (u8, Vec<(u64, u32, u8)>, Vec<u8>) {
    let mut c = [0u8; 16];
    c[0] = 0x9e;
    c[1] = 0x12;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&alloc.to_be_bytes());
    let (st, d, sense) = r.command(&c, alloc, &[]);
    if st != 0 || d.len() < 8 {
        return (st, Vec::new(), sense);
    }
    let len = u32::from_be_bytes(d[0..4].try_into().unwrap()) as usize;
    assert_eq!((len - 4) % 16, 0, "parameter data length {len}");
    let descs = d[8..]
        .chunks_exact(16)
        .map(|e| {
            (
                u64::from_be_bytes(e[0..8].try_into().unwrap()),
                u32::from_be_bytes(e[8..12].try_into().unwrap()),
                e[12] & 0x0f,
            )
        })
        .collect::<Vec<_>>();
    assert!(descs.len() <= (len - 4) / 16);
    (st, descs, sense)
}

#[test]
fn get_lba_status_reports_written_image_data_never_written_and_discarded_blocks() {
    const M: u8 = 0; // mapped
    const D: u8 = 1; // deallocated
    let repo = Repo::new();
    // An 8 MiB golden image with data in its second MiB only; the volume grows to 16 MiB.
    let mut img = vec![0u8; 8 << 20];
    img[1 << 20..2 << 20].copy_from_slice(&pattern(1 << 20, 3));
    let file = repo.path("gold.raw");
    std::fs::write(&file, &img).unwrap();
    repo.ok(&["image", "import", file.to_str().unwrap(), "--name", "gold"]);
    repo.ok(&[
        "volume", "create", "lbas", "--from", "gold", "--size", "16M",
    ]);
    repo.ok(&["export", "lbas", "--initiator", CLIENT]);
    let srv = repo.serve(&[]);
    let iqn = "iqn.2026-11.org.strata:lbas";
    let mut r = Raw::login(srv.addr, &LoginOpts::new(CLIENT, iqn)).unwrap();
    settle(&mut r);
    let all = 8 + 16 * 32;
    let (st, d, _) = get_lba_status(&mut r, 0, all);
    assert_eq!(st, 0);
    assert_eq!(d, vec![(0, 2048, D), (2048, 2048, M), (4096, 28672, D)]);

    // Write 8 KiB over a hole; UNMAP one 4 KiB block of image data; WRITE SAME with UNMAP
    // over 32 KiB of it; a discard smaller than a 4 KiB block leaves it mapped (zeros).
    assert_eq!(r.command(&write10(96, 16), 0, &pattern(16 * 512, 4)).0, 0);
    let unmap = |lba: u64, n: u32| {
        let mut p = vec![0u8; 24];
        p[0..2].copy_from_slice(&22u16.to_be_bytes());
        p[2..4].copy_from_slice(&16u16.to_be_bytes());
        p[8..16].copy_from_slice(&lba.to_be_bytes());
        p[16..20].copy_from_slice(&n.to_be_bytes());
        p
    };
    let mut c = [0u8; 10];
    c[0] = 0x42;
    c[7..9].copy_from_slice(&24u16.to_be_bytes());
    assert_eq!(r.command(&c, 0, &unmap(2056, 8)).0, 0);
    assert_eq!(r.command(&c, 0, &unmap(3000, 4)).0, 0);
    let mut ws = [0u8; 16];
    ws[0] = 0x93;
    ws[1] = 0x08; // UNMAP
    ws[2..10].copy_from_slice(&3072u64.to_be_bytes());
    ws[10..14].copy_from_slice(&64u32.to_be_bytes());
    assert_eq!(r.command(&ws, 0, &[0u8; 512]).0, 0);
    let want = vec![
        (0, 96, D),
        (96, 16, M),
        (112, 1936, D),
        (2048, 8, M),
        (2056, 8, D),
        (2064, 1008, M),
        (3072, 64, D),
        (3136, 960, M),
        (4096, 28672, D),
    ];
    let (st, d, _) = get_lba_status(&mut r, 0, all);
    assert_eq!((st, &d), (0, &want));
    // From inside a run (and inside a 4 KiB block): the first descriptor starts there.
    let (_, d, _) = get_lba_status(&mut r, 100, all);
    assert_eq!(d[0], (100, 12, M));
    assert_eq!(d[1..], want[2..]);
    // The allocation length bounds the descriptors: one, or two.
    let (_, d, _) = get_lba_status(&mut r, 0, 24);
    assert_eq!(d, want[..1]);
    let (_, d, _) = get_lba_status(&mut r, 0, 40);
    assert_eq!(d, want[..2]);
    let (_, d, _) = get_lba_status(&mut r, 32767, all);
    assert_eq!(d, vec![(32767, 1, D)]);
    // Beyond the end: LBA OUT OF RANGE.
    let (st, _, sense) = get_lba_status(&mut r, 32768, all);
    assert_eq!((st, sense[2] & 0x0f, sense[12]), (2, 5, 0x21));
    // What GET LBA STATUS calls deallocated reads as zeros (LBPRZ), and VPD 0xB2 and READ
    // CAPACITY(16) say so.
    let (_, d, _) = r.command(&read10(2056, 8), 4096, &[]);
    assert!(d.iter().all(|&b| b == 0));
    let (_, d, _) = r.command(&read10(3072, 64), 64 * 512, &[]);
    assert!(d.iter().all(|&b| b == 0));
    let (_, vpd, _) = r.command(&[0x12, 1, 0xb2, 0, 64, 0], 64, &[]);
    assert_eq!(vpd[5] & 0xe4, 0xe4, "LBPU, LBPWS, LBPWS10, LBPRZ");
    let mut rc = [0u8; 16];
    rc[0] = 0x9e;
    rc[1] = 0x10;
    rc[13] = 32;
    let (_, cap, _) = r.command(&rc, 32, &[]);
    assert_eq!(cap[14] & 0xc0, 0xc0, "LBPME, LBPRZ");
    // The statuses survive a restart.
    drop(r);
    assert!(srv.stop().success());
    let srv = repo.serve(&[]);
    let mut r = Raw::login(srv.addr, &LoginOpts::new(CLIENT, iqn)).unwrap();
    settle(&mut r);
    let (_, d, _) = get_lba_status(&mut r, 0, all);
    assert_eq!(d, want);
}

// ---------------------------------------------------------------------------------------
// Shutdown: sessions are asked to log out, in-flight commands finish

#[test]
fn sigterm_asks_sessions_to_log_out_and_finishes_in_flight_commands() {
    let repo = Repo::new();
    let iqn = repo.exported_volume("bye", 16, &[CLIENT]);
    let srv = repo.serve(&[]);
    let mut polite = Raw::login(srv.addr, &LoginOpts::new(CLIENT, &iqn)).unwrap();
    settle(&mut polite);
    let mut deaf = Raw::login(srv.addr, &LoginOpts::new(CLIENT, &iqn)).unwrap();
    settle(&mut deaf);
    // A write in flight when the signal arrives: sent, not yet answered.
    let data = pattern(64 * 1024, 9);
    let b = polite.scsi_bhs(&write10(64, 128), data.len() as u32, false, true);
    polite.send(&b, &data);
    srv.terminate();
    // The write's response and the logout request come in either order, StatSNs in sequence.
    let mut sns = Vec::new();
    let mut async_msg = None;
    while sns.len() < 2 {
        let r = polite.recv().expect("closed before asking for a logout");
        match r.bhs.opcode() {
            op::SCSI_RESP => {
                assert_eq!(
                    (r.bhs.itt(), r.bhs.0[3]),
                    (b.itt(), 0),
                    "the write completes"
                );
                sns.push(r.bhs.u32_at(24));
            }
            op::ASYNC => {
                sns.push(r.bhs.u32_at(24));
                async_msg = Some(r);
            }
            op::NOP_IN => {}
            other => panic!("unexpected PDU {other:#x}"),
        }
    }
    assert_eq!(sns[1], sns[0].wrapping_add(1), "StatSN in sequence");
    polite.stat_sn = sns[1].wrapping_add(1);
    let async_msg = async_msg.expect("an Asynchronous Message");
    assert_eq!(
        async_msg.bhs.0[36], 1,
        "AsyncEvent 1: target requests logout"
    );
    assert!(async_msg.bhs.u16_at(42) > 0, "Parameter3: time to log out");
    // The session still serves commands until the initiator logs out.
    let (st, got, _) = polite.command(&read10(64, 128), data.len() as u32, &[]);
    assert_eq!((st, got == data), (0, true));
    let mut lo = Bhs::new(op::LOGOUT_REQ);
    lo.0[0] |= 0x40;
    lo.set_flags(0x80); // close the session
    let itt = polite.next_itt();
    lo.set_itt(itt);
    lo.set_u32(24, polite.cmd_sn);
    lo.set_u32(28, polite.stat_sn);
    polite.send(&lo, &[]);
    let r = polite.recv().expect("logout response");
    assert_eq!((r.bhs.opcode(), r.bhs.0[2]), (op::LOGOUT_RESP, 0));
    assert!(
        polite.recv().is_none(),
        "connection closed after the logout"
    );
    // The other session never answers: it is closed once its time is up.
    let r = deaf.recv().expect("logout request");
    assert_eq!((r.bhs.opcode(), r.bhs.0[36]), (op::ASYNC, 1));
    // (A NOP-In ping may come first; the connection then closes.)
    while let Some(r) = deaf.recv() {
        assert_eq!(r.bhs.opcode(), op::NOP_IN, "only pings until the close");
    }
    let log_path = repo.path("serve.log");
    assert!(srv.stop().success());
    let log = std::fs::read_to_string(log_path).unwrap();
    assert!(
        log.contains("all connections closed logged_out=1 not_logged_out=1"),
        "shutdown summary missing:\n{log}"
    );
    // The acknowledged write is there after a restart.
    let srv = repo.serve(&[]);
    let mut r = Raw::login(srv.addr, &LoginOpts::new(CLIENT, &iqn)).unwrap();
    settle(&mut r);
    let (st, got, _) = r.command(&read10(64, 128), data.len() as u32, &[]);
    assert_eq!((st, got == data), (0, true));
}

#[test]
fn sigterm_under_libiscsi_load_ends_with_clean_logouts() {
    let repo = Repo::new();
    let iqn = repo.exported_volume("perf", 64, &[CLIENT]);
    let srv = repo.serve(&[]);
    // iscsi-perf keeps 32 reads in flight until stopped.
    let mut perf = Command::new(tool("iscsi-perf"))
        .args(["-i", CLIENT, &srv.url(&iqn)])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Its progress updates (ending in '\r', not '\n') say reads are flowing.
    let mut out = perf.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("iops current") {
        match out.read(&mut buf) {
            Ok(0) | Err(_) => panic!(
                "iscsi-perf never got going: {}",
                String::from_utf8_lossy(&seen)
            ),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    let log_path = repo.path("serve.log");
    let st = srv.stop();
    let _ = perf.kill();
    let _ = perf.wait();
    assert!(st.success());
    let log = std::fs::read_to_string(log_path).unwrap();
    let summary = log
        .lines()
        .find(|l| l.contains("all connections closed"))
        .unwrap_or_else(|| panic!("no shutdown summary:\n{log}"));
    assert!(summary.contains("not_logged_out=0"), "{summary}");
    assert!(!summary.contains(" logged_out=0"), "{summary}");
}

/// Drops a file's clean pages from the page cache, so reading it has to go to the disk.
fn evict(path: &std::path::Path) {
    use std::os::unix::io::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    f.sync_all().unwrap();
    // SAFETY: fadvise on an fd we own.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "fadvise {}", path.display());
}

/// Small reads run on the connection's task only when their data is in memory; cold ones
/// (image chunks and delta blocks out of the page cache) go to the blocking pool. Both
/// must give the volume's bytes.
#[test]
fn small_reads_of_cold_and_hot_data_return_the_volume_bytes() {
    let repo = Repo::new();
    let img = repo.path("gold.raw");
    let mut data = pattern(4 << 20, 5);
    data[1 << 20..2 << 20].fill(0); // a hole in the image
    std::fs::write(&img, &data).unwrap();
    let iqn = repo.volume_from_file("cold", &img, CLIENT, &[]);
    let srv = repo.serve(&[]);
    let mut r = Raw::login(srv.addr, &LoginOpts::new(CLIENT, &iqn)).unwrap();
    settle(&mut r);
    // Some blocks live in the clone's delta.
    let mine = pattern(64 << 10, 6);
    for lba in [0u32, 4096, 6000] {
        let (st, _, _) = r.command(&write10(lba, 128), 0, &mine);
        assert_eq!(st, 0);
        let at = lba as usize * 512;
        data[at..at + mine.len()].copy_from_slice(&mine);
    }
    assert_eq!(r.command(&[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0, &[]).0, 0);
    for pass in ["cold", "hot"] {
        if pass == "cold" {
            evict(&repo.root.join("images/cold-gold/data"));
            evict(&repo.root.join("volumes/cold/data"));
        }
        // 4 KiB and 64 KiB reads over the whole volume.
        for (step, blocks) in [(8u32, 8u16), (128, 128)] {
            let mut got = Vec::with_capacity(data.len());
            for lba in (0..(data.len() / 512) as u32).step_by(step as usize) {
                let (st, d, sense) = r.command(&read10(lba, blocks), blocks as u32 * 512, &[]);
                assert_eq!(st, 0, "{pass} read at {lba}: sense {sense:?}");
                got.extend_from_slice(&d);
            }
            assert!(
                got == data,
                "{pass} {blocks}-block reads differ from the volume"
            );
            if pass == "cold" {
                evict(&repo.root.join("images/cold-gold/data"));
                evict(&repo.root.join("volumes/cold/data"));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Hardening (issue 10): access that outlives its grant, floods, one initiator hoarding.

const THIRD: &str = "iqn.2026-01.test.strata:third";

/// A READ(10) sent without waiting for its answer; returns its ITT.
#[allow(dead_code)]
fn send_read(r: &mut Raw, lba: u32, blocks: u16) -> u32 {
    let b = r.scsi_bhs(&read10(lba, blocks), blocks as u32 * 512, true, false);
    r.send(&b, &[]);
    b.itt()
}

/// What a session saw after its access was revoked.
#[derive(Debug, Default)]
struct Revoked {
    /// READs that completed with data, and how many of them were sent after the
    /// revocation was acknowledged (must be none).
    reads_done: usize,
    reads_after_ack: usize,
    logout_requested: bool,
    /// PDUs (Data-In, responses) that arrived after the request to log out.
    pdus_after_logout_request: usize,
    closed: bool,
}

/// Keeps `depth` READs in flight on `r` until the connection ends (or `limit` passes),
/// noting for each good answer whether it was sent after `acked` was set.
fn read_until_closed(
    mut r: Raw,
    acked: &std::sync::atomic::AtomicBool,
    done: &std::sync::atomic::AtomicUsize,
    depth: usize,
    limit: Duration,
) -> Revoked {
    use std::sync::atomic::Ordering::SeqCst;
    let mut out = Revoked::default();
    let mut sent_after: std::collections::HashMap<u32, bool> = Default::default();
    let deadline = Instant::now() + limit;
    r.s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut lba = 0u32;
    let mut refill = |r: &mut Raw, sent_after: &mut std::collections::HashMap<u32, bool>| {
        while sent_after.len() < depth {
            let after = acked.load(SeqCst);
            // A send may fail once the target has closed: the end shows on the read side.
            let b = r.scsi_bhs(&read10(lba % 4096, 8), 4096, true, false);
            if r.send_raw(&pdu::encode(&b, &[], r.hd, r.dd)).is_err() {
                return;
            }
            sent_after.insert(b.itt(), after);
            lba += 8;
        }
    };
    refill(&mut r, &mut sent_after);
    while Instant::now() < deadline {
        let Some(p) = r.recv() else {
            out.closed = true;
            break;
        };
        if out.logout_requested {
            out.pdus_after_logout_request += 1;
        }
        match p.bhs.opcode() {
            op::DATA_IN if p.bhs.flags() & 0x01 != 0 => {
                if let Some(after) = sent_after.remove(&p.bhs.itt()) {
                    out.reads_done += 1;
                    done.fetch_add(1, SeqCst);
                    if after {
                        out.reads_after_ack += 1;
                    }
                }
                refill(&mut r, &mut sent_after);
            }
            op::SCSI_RESP => {
                sent_after.remove(&p.bhs.itt());
                refill(&mut r, &mut sent_after);
            }
            op::ASYNC => {
                assert_eq!(p.bhs.0[36], 1, "AsyncEvent should ask for a logout");
                out.logout_requested = true;
            }
            _ => {}
        }
    }
    out
}

#[test]
fn unexport_ends_sessions_at_once_and_no_read_after_its_acknowledgement_returns_data() {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    let repo = Repo::new();
    let iqn = repo.exported_volume("vb", 16, &[CLIENT, OTHER]);
    let srv = repo.serve(&[]);
    let mut b = Raw::login(srv.addr, &LoginOpts::new(CLIENT, &iqn)).unwrap();
    settle(&mut b);
    // B keeps 8 READs in flight while the volume is unexported.
    let acked = std::sync::Arc::new(AtomicBool::new(false));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reader = {
        let (acked, done) = (acked.clone(), done.clone());
        std::thread::spawn(move || read_until_closed(b, &acked, &done, 8, Duration::from_secs(30)))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while done.load(SeqCst) < 64 && Instant::now() < deadline {
        std::thread::yield_now(); // until READs are flowing
    }
    let out = repo.ok(&["unexport", "vb"]);
    acked.store(true, SeqCst);
    let seen = reader.join().unwrap();
    assert!(
        seen.reads_done >= 64,
        "READs did not flow before the unexport: {seen:?}"
    );
    assert_eq!(
        seen.reads_after_ack, 0,
        "READs answered after the unexport returned: {seen:?}"
    );
    assert!(seen.closed, "the session outlived its export: {seen:?}");
    assert!(
        seen.logout_requested,
        "no Async Message asking for logout: {seen:?}"
    );
    assert_eq!(seen.pdus_after_logout_request, 0, "{seen:?}");
    assert!(out.contains("ended 1 session"), "{out}");
    // No new login either, and the volume is free at once (issue 10, item 6).
    assert_eq!(
        Raw::login(srv.addr, &LoginOpts::new(CLIENT, &iqn)).err(),
        Some((2, 3))
    );
    repo.ok(&["volume", "rm", "vb"]);
    assert!(srv.log().contains("access revoked"), "{}", srv.log());
}

#[test]
fn changing_an_exports_initiators_or_secrets_ends_the_sessions_it_no_longer_admits() {
    let repo = Repo::new();
    let iqn = repo.exported_volume("shared", 16, &[CLIENT, OTHER]);
    let srv = repo.serve(&[]);
    let mut a = Raw::login(srv.addr, &LoginOpts::new(CLIENT, &iqn)).unwrap();
    let mut b = Raw::login(srv.addr, &LoginOpts::new(OTHER, &iqn)).unwrap();
    settle(&mut a);
    settle(&mut b);
    // Re-exported to CLIENT only: OTHER's session ends before `export` returns.
    let out = repo.ok(&["export", "shared", "--initiator", CLIENT]);
    // The old code answered this READ; now the connection is already gone.
    let cmd = b.scsi_bhs(&read10(0, 8), 4096, true, false);
    let _ = b.send_raw(&pdu::encode(&cmd, &[], false, false));
    loop {
        match b.recv() {
            None => break,
            Some(p) if p.bhs.opcode() == op::ASYNC => continue,
            Some(p) => panic!(
                "OTHER still gets answers after losing access: {:#x}",
                p.bhs.opcode()
            ),
        }
    }
    assert!(out.contains("ended 1 session"), "{out}");
    assert_eq!(
        a.command(&read10(0, 8), 4096, &[]).0,
        0,
        "CLIENT lost its session"
    );
    assert_eq!(
        Raw::login(srv.addr, &LoginOpts::new(OTHER, &iqn)).err(),
        Some((2, 2))
    );
    // `export ls` shows the live session that is left, and only it.
    let ls = repo.ok(&["export", "ls"]);
    assert!(ls.contains(&format!("1 ({CLIENT}@127.0.0.1:")), "{ls}");
    let json: serde_json::Value =
        serde_json::from_str(&repo.ok(&["export", "ls", "--json"])).unwrap();
    assert_eq!(json[0]["sessions"][0]["initiator"], CLIENT);
    assert_eq!(json[0]["sessions"].as_array().map(Vec::len), Some(1));
    // A CHAP secret now: the session that logged in without one ends too.
    let with_chap = |secret: &str| {
        repo.ok(&[
            "export",
            "shared",
            "--initiator",
            CLIENT,
            "--initiator",
            EDK2_INITIATOR,
            "--chap-user",
            "u",
            "--chap-secret",
            secret,
        ])
    };
    with_chap("a-good-secret");
    assert!(
        wait_closed(&mut a, Duration::from_secs(5)),
        "session outlived the new secret"
    );
    let c = Edk2Chap {
        user: "u",
        secret: "a-good-secret",
        reverse_secret: None,
        algorithms: "5",
    };
    let mut e = Edk2::login(srv.addr, &iqn, Some(&c)).unwrap();
    // The same export again ends nothing; another secret ends the CHAP session.
    let out = with_chap("a-good-secret");
    assert!(!out.contains("ended"), "{out}");
    assert!(
        e.command(&TUR, 0).is_ok(),
        "an unchanged export ended a session"
    );
    let out = with_chap("another-secret");
    assert!(out.contains("ended 1 session"), "{out}");
    assert!(wait_closed(&mut e.raw, Duration::from_secs(5)));
}

#[test]
fn a_volume_is_released_when_its_export_goes_after_its_last_session_ended() {
    let repo = Repo::new();
    let iqn = repo.exported_volume("done", 16, &[CLIENT]);
    let srv = repo.serve(&[]);
    let mut r = Raw::login(srv.addr, &LoginOpts::new(CLIENT, &iqn)).unwrap();
    settle(&mut r);
    // Logout, then unexport: nothing else happens on the server, and rm must work at once.
    let mut l = Bhs::new(op::LOGOUT_REQ);
    l.0[0] |= 0x40;
    l.set_flags(0x80);
    let itt = r.next_itt();
    l.set_itt(itt);
    l.set_u32(24, r.cmd_sn);
    l.set_u32(28, r.stat_sn);
    r.send(&l, &[]);
    assert_eq!(r.recv().map(|p| p.bhs.opcode()), Some(op::LOGOUT_RESP));
    assert!(wait_closed(&mut r, Duration::from_secs(5)));
    repo.ok(&["unexport", "done"]);
    repo.ok(&["volume", "rm", "done"]);
    assert!(repo.ok(&["volume", "ls"]).lines().count() <= 1);
}

#[test]
fn unanswered_nop_in_closes_the_connection_and_releases_the_volume() {
    let repo = Repo::new();
    let iqn = repo.exported_volume("quiet", 16, &[CLIENT]);
    let srv = repo.serve(&["--nop-interval", "1", "--nop-timeout", "2"]);
    // Logs in, does one command, then never sends another byte (never answers a ping).
    let mut r = Raw::login(srv.addr, &LoginOpts::new(CLIENT, &iqn)).unwrap();
    settle(&mut r);
    assert!(
        wait_closed(&mut r, Duration::from_secs(20)),
        "a connection that never answers NOP-In stays open"
    );
    let log = srv.log();
    assert!(
        log.contains("no answer to a NOP-In ping") && log.contains("nop_timeouts=1"),
        "{log}"
    );
    // Its volume is not held for it: unexport and rm go through.
    repo.ok(&["unexport", "quiet"]);
    repo.ok(&["volume", "rm", "quiet"]);
}

#[test]
fn one_initiator_cannot_take_every_session() {
    let repo = Repo::new();
    let t1 = repo.exported_volume("t1", 8, &[CLIENT, OTHER, THIRD]);
    let t2 = repo.exported_volume("t2", 8, &[CLIENT, OTHER, THIRD]);
    let srv = repo.serve(&[
        "--max-sessions-per-initiator",
        "3",
        "--max-sessions-per-target",
        "4",
    ]);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(Raw::login(srv.addr, &LoginOpts::new(CLIENT, &t1)).unwrap());
    }
    // CLIENT's share is taken: on any target, and discovery too.
    assert_eq!(
        Raw::login(srv.addr, &LoginOpts::new(CLIENT, &t2)).err(),
        Some((3, 2))
    );
    let portal = format!("iscsi://{}", srv.addr);
    assert!(
        !run(Command::new(tool("iscsi-ls")).args(["-i", CLIENT, &portal]))
            .status
            .success()
    );
    // Others still get in; t1's limit then stops a fifth session on it.
    held.push(Raw::login(srv.addr, &LoginOpts::new(OTHER, &t1)).unwrap());
    assert_eq!(
        Raw::login(srv.addr, &LoginOpts::new(THIRD, &t1)).err(),
        Some((3, 2))
    );
    let mut third = Raw::login(srv.addr, &LoginOpts::new(THIRD, &t2)).unwrap();
    settle(&mut third);
    assert!(ok(Command::new("iscsi-ls").args(["-i", OTHER, &portal])).contains(&t2));
    // A session ending gives its place back.
    drop(held.remove(0));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut again = None;
    while again.is_none() && Instant::now() < deadline {
        again = Raw::login(srv.addr, &LoginOpts::new(CLIENT, &t2)).ok();
        if again.is_none() {
            std::thread::sleep(Duration::from_millis(50)); // the close is asynchronous
        }
    }
    assert!(again.is_some(), "a freed place was not given back");
    assert!(srv.log().contains("--max-sessions-per-initiator"));
}

#[test]
fn chap_secrets_must_be_long_enough_and_an_empty_one_never_authenticates() {
    let repo = Repo::new();
    repo.ok(&["volume", "create", "sec", "--size", "8M"]);
    let chap = |secret: &str, extra: &[&str]| {
        let mut a = vec![
            "export",
            "sec",
            "--initiator",
            EDK2_INITIATOR,
            "--chap-user",
            "ovmf",
            "--chap-secret",
            secret,
        ];
        a.extend_from_slice(extra);
        repo.run(&a)
    };
    let o = chap("", &[]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("empty"));
    let o = chap("", &["--weak-secret"]);
    assert!(!o.status.success(), "an empty secret with --weak-secret");
    let o = chap("short", &[]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--weak-secret"));
    assert!(
        repo.ok(&["export", "ls"]).lines().count() == 1,
        "nothing exported"
    );
    let o = chap("short", &["--weak-secret"]);
    assert!(o.status.success());
    // The EDK2 note for secrets longer than 16 bytes stays.
    let o = chap("a-secret-longer-than-16", &[]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("EDK2"));

    // A catalog row edited by hand with an empty secret: CHAP with it fails.
    let db = rusqlite::Connection::open(repo.root.join("catalog.db")).unwrap();
    let body: String = db
        .query_row("SELECT body FROM exports WHERE volume = 'sec'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let mut f: serde_json::Value = serde_json::from_str(&body).unwrap();
    f["chap"]["secret"] = "".into();
    db.execute(
        "UPDATE exports SET body = ?1 WHERE volume = 'sec'",
        [f.to_string()],
    )
    .unwrap();
    drop(db);
    let srv = repo.serve(&[]);
    let c = Edk2Chap {
        user: "ovmf",
        secret: "",
        reverse_secret: None,
        algorithms: "5",
    };
    let why = Edk2::login(srv.addr, "iqn.2026-11.org.strata:sec", Some(&c))
        .err()
        .expect("a login with an empty CHAP secret succeeded");
    assert!(why.contains("login status 2/1"), "{why}");
}

/// A connection to `dst` from the local address `src` (another loopback address: the
/// well-behaved initiator is not the flooding one).
fn connect_from(src: std::net::Ipv4Addr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(dst) = dst else {
        panic!("IPv4 only")
    };
    let sin = |a: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(a).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: plain socket calls on a descriptor we own; it goes to TcpStream at once.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let s = TcpStream::from_raw_fd(fd);
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let a = sin(src, 0);
        if libc::bind(fd, &a as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let d = sin(*dst.ip(), dst.port());
        if libc::connect(fd, &d as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(s)
    }
}

/// A flood from 127.0.0.1: `hold` connections kept open, replaced as they are closed and
/// reopened in turn, half of them idle and half stopped a third of the way into a login PDU.
/// Runs until `stop`; returns how many connections it opened.
fn flood(
    addr: SocketAddr,
    hold: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    opened: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> std::thread::JoinHandle<()> {
    use std::sync::atomic::Ordering::Relaxed;
    std::thread::spawn(move || {
        let mut held: std::collections::VecDeque<TcpStream> = Default::default();
        let mut i = 0usize;
        while !stop.load(Relaxed) {
            let Ok(mut s) = TcpStream::connect(addr) else {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            };
            if i % 2 == 0 {
                let _ = s.write_all(&[0x43, 0x87, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            }
            i += 1;
            opened.fetch_add(1, Relaxed);
            held.push_back(s);
            if held.len() > hold {
                held.pop_front();
            }
        }
    })
}

/// p50 and p99 of `v` (µs).
fn percentiles(v: &mut [u64]) -> (u64, u64) {
    v.sort_unstable();
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    (at(0.50), at(0.99))
}

/// Logs in from 127.0.0.2 and runs `n` 4 KiB READs at queue depth 1, checking the data;
/// returns (login time, READ latencies), in µs.
fn well_behaved(addr: SocketAddr, iqn: &str, n: usize, expect: &[u8]) -> (u64, Vec<u64>) {
    let t = Instant::now();
    let s = connect_from("127.0.0.2".parse().unwrap(), addr).expect("connect from 127.0.0.2");
    let mut r = Raw::connect_stream(s);
    r.login_on(&LoginOpts::new(CLIENT, iqn))
        .expect("login refused under the flood");
    let login = t.elapsed().as_micros() as u64;
    settle(&mut r);
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let lba = ((i * 8) % 2048) as u32;
        let t = Instant::now();
        let (st, data, _) = r.command(&read10(lba, 8), 4096, &[]);
        lat.push(t.elapsed().as_micros() as u64);
        assert_eq!(st, 0);
        let off = lba as usize * 512;
        assert!(
            data == expect[off..off + 4096],
            "wrong data under the flood"
        );
    }
    (login, lat)
}

fn flood_setup() -> (Repo, Server, String, Vec<u8>) {
    let repo = Repo::new();
    let image = pattern(1 << 20, 77);
    let file = repo.path("flood.raw");
    std::fs::write(&file, &image).unwrap();
    let iqn = repo.volume_from_file("flood", &file, CLIENT, &[]);
    let srv = repo.serve(&[]);
    (repo, srv, iqn, image)
}

#[test]
fn logins_succeed_and_io_goes_on_while_one_address_floods_idle_and_half_open_connections() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
    let (_repo, srv, iqn, image) = flood_setup();
    let (_, quiet) = well_behaved(srv.addr, &iqn, 200, &image);
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let opened = std::sync::Arc::new(AtomicUsize::new(0));
    // 2,100 held at once, as in the issue (beyond the old 2,048-connection limit).
    let f = flood(srv.addr, 2100, stop.clone(), opened.clone());
    while opened.load(Relaxed) < 3000 {
        std::thread::sleep(Duration::from_millis(10)); // the flood is under way
    }
    let mut logins = Vec::new();
    let mut loaded = Vec::new();
    let start = opened.load(Relaxed);
    for _ in 0..5 {
        let before = opened.load(Relaxed);
        let (login, lat) = well_behaved(srv.addr, &iqn, 200, &image);
        logins.push(login);
        loaded.extend(lat);
        eprintln!("opened {} during the login", opened.load(Relaxed) - before);
    }
    // The flood went on while the logins and reads did. Checked over the five rounds
    // together: on a loaded 2-core machine the flooding thread may get no time slice
    // within one short round.
    assert!(
        opened.load(Relaxed) > start,
        "the flood stopped during the logins"
    );
    stop.store(true, Relaxed);
    f.join().unwrap();
    let mut quiet = quiet;
    let (q50, q99) = percentiles(&mut quiet);
    let (l50, l99) = percentiles(&mut loaded);
    logins.sort_unstable();
    eprintln!(
        "flood of {} connections: logins {:?} µs; 4 KiB READ p50/p99 {q50}/{q99} µs quiet, \
         {l50}/{l99} µs under the flood",
        opened.load(Relaxed),
        logins
    );
    assert!(srv.log().contains("pre-login budget full"));
}

/// Figures for the note (not a CI gate): READ latency at queue depth 1 of a
/// well-behaved initiator with and without a flood, more samples than the CI test.
/// `cargo nextest run --release --run-ignored only -E 'test(/flood_latency_figures/)'
/// --no-capture`
#[test]
#[ignore]
fn flood_latency_figures() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
    let (_repo, srv, iqn, image) = flood_setup();
    let _ = well_behaved(srv.addr, &iqn, 500, &image);
    let (ql, mut quiet) = well_behaved(srv.addr, &iqn, 5000, &image);
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let opened = std::sync::Arc::new(AtomicUsize::new(0));
    let f = flood(srv.addr, 2100, stop.clone(), opened.clone());
    while opened.load(Relaxed) < 3000 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let t = Instant::now();
    let (fl, mut loaded) = well_behaved(srv.addr, &iqn, 5000, &image);
    let secs = t.elapsed().as_secs_f64();
    let n = opened.load(Relaxed);
    stop.store(true, Relaxed);
    f.join().unwrap();
    let (q50, q99) = percentiles(&mut quiet);
    let (l50, l99) = percentiles(&mut loaded);
    println!("quiet: login {ql} µs, 4 KiB READ QD1 p50 {q50} µs p99 {q99} µs");
    println!(
        "flood ({n} connections opened, about {:.0}/s): login {fl} µs, p50 {l50} µs p99 {l99} µs",
        n as f64 / secs.max(0.001)
    );
}
