//! The sandbox of plan scripts' host-side commands (`!cmd`, `<!cmd`, `| cmd`), driven through
//! the library: what comes back from a command, what persists in the scratch directory, and
//! what the command cannot do (reach the network, see or write the repository, other runs or
//! the host's /tmp, write anywhere but its scratch areas, keep processes alive past its time
//! limit, be root). Also the interpreter's side: local paths through `Scratch` never lead out.
//!
//! Every test asserts that bubblewrap isolation holds (tools/install-deps installs it).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use strata::plan::sandbox::{
    Isolation, Sandbox, SandboxError, SandboxOptions, Scratch, ShellOutput, ShellStatus,
    SANDBOX_UID,
};

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

fn scratch() -> Scratch {
    Scratch::in_temp_dir().expect("creating a scratch directory in the system temp dir")
}

fn sandbox_with(scratch: &Scratch, opts: SandboxOptions) -> Sandbox<'_> {
    let sb = Sandbox::new(scratch, opts).expect("creating a sandbox");
    assert_eq!(
        sb.isolation(),
        Isolation::Namespaces,
        "bubblewrap isolation must work on this host (run tools/install-deps; see the log)"
    );
    sb
}

fn sandbox(scratch: &Scratch) -> Sandbox<'_> {
    sandbox_with(
        scratch,
        SandboxOptions {
            timeout: Duration::from_secs(60),
            ..SandboxOptions::default()
        },
    )
}

fn run(sb: &Sandbox<'_>, cmd: &str) -> ShellOutput {
    sb.run(cmd, None)
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// Runs `cmd`, asserting success; returns stdout.
fn ok(sb: &Sandbox<'_>, cmd: &str) -> String {
    let o = run(sb, cmd);
    assert!(
        o.success(),
        "{cmd:?} failed ({}, timed out: {}): stdout {:?} stderr {:?}",
        o.status,
        o.timed_out,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs `cmd`, asserting it fails (in time); returns the output.
fn fails(sb: &Sandbox<'_>, cmd: &str) -> ShellOutput {
    let o = run(sb, cmd);
    assert!(
        !o.success() && !o.timed_out,
        "{cmd:?} should have failed: stdout {:?} stderr {:?}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("strata-sandbox-{tag}-{}-{nanos}", std::process::id())
}

/// A directory of the test's own under target/, standing for something of the host's.
fn host_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(tag)
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("creating a test directory under target/")
}

#[test]
fn output_and_exit_status_come_back() {
    let s = scratch();
    let sb = sandbox(&s);
    let o = run(&sb, "echo out; echo err >&2; exit 3");
    assert_eq!(o.stdout, b"out\n");
    assert_eq!(o.stderr, b"err\n");
    assert_eq!(o.status, ShellStatus::Exited(3));
    assert!(!o.success() && !o.timed_out);

    let o = sb.run("tr a-z A-Z", Some(b"hello\n")).unwrap();
    assert!(o.success());
    assert_eq!(o.stdout, b"HELLO\n");
    // No stdin given: the command reads /dev/null, not strata's stdin.
    assert_eq!(ok(&sb, "cat; echo end"), "end\n");
}

#[test]
fn a_command_exiting_non_zero_is_a_failure_with_its_status() {
    let s = scratch();
    let sb = sandbox(&s);
    assert_eq!(fails(&sb, "false").status, ShellStatus::Exited(1));
    assert_eq!(
        fails(&sb, "grep -q nothing /dev/null").status,
        ShellStatus::Exited(1)
    );
    assert_eq!(fails(&sb, "exit 42").status, ShellStatus::Exited(42));
    assert!(ok(&sb, "true").is_empty());
}

#[test]
fn a_file_one_run_writes_is_sourced_by_the_next() {
    let s = scratch();
    let sb = sandbox(&s);
    ok(
        &sb,
        "printf 'export V=42\\nf() { echo \"f:$1\"; }\\n' > ./it",
    );
    assert_eq!(ok(&sb, "source ./it; echo $V; f x"), "42\nf:x\n");

    // What the interpreter downloads into the scratch directory, the next command sources
    // and may change, as if it had written it itself.
    let mut f = s.create("./dl.sh").unwrap();
    f.write_all(b"echo from-download\n").unwrap();
    drop(f);
    assert_eq!(
        ok(
            &sb,
            "source ./dl.sh; echo 'echo more' >> ./dl.sh; source ./dl.sh"
        ),
        "from-download\nfrom-download\nmore\n"
    );
    if is_root() {
        assert_eq!(s.symlink_metadata("dl.sh").unwrap().uid(), SANDBOX_UID);
    }
    // And what the command writes, the interpreter reads back.
    ok(&sb, "mkdir -p out && echo result > out/r");
    let mut got = String::new();
    s.open_read("./out/r")
        .unwrap()
        .read_to_string(&mut got)
        .unwrap();
    assert_eq!(got, "result\n");
}

/// The command lines of host processes that hold `marker`.
fn processes_with(marker: &str) -> Vec<Vec<u8>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if entry.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmdline).contains(marker) {
                found.push(cmdline);
            }
        }
    }
    found
}

#[test]
fn the_time_limit_kills_the_command_and_every_process_it_started() {
    let s = scratch();
    let sb = sandbox_with(
        &s,
        SandboxOptions {
            timeout: Duration::from_secs(3),
            ..SandboxOptions::default()
        },
    );
    // A sleep length no other process on the host has: its processes are found by it.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let marker = format!("1000.{}{nanos:09}", std::process::id());
    // Five sleeps: in the background, in a new session, under nohup, in a child shell, and
    // in the foreground.
    let cmd = format!(
        "sleep {m} & (setsid sleep {m} &); nohup sleep {m} >/dev/null 2>&1 & \
         bash -c 'sleep {m}' </dev/null >/dev/null 2>&1 & sleep {m}",
        m = marker
    );
    let sleeping = |m: &str| {
        processes_with(m)
            .iter()
            .filter(|c| c.as_slice() == format!("sleep\0{m}\0").as_bytes())
            .count()
    };
    let t0 = Instant::now();
    let (o, seen_running) = std::thread::scope(|scope| {
        let h = scope.spawn(|| sb.run(&cmd, None));
        // While it runs, its processes are visible from the host (so the check after it is
        // not vacuous).
        let mut seen = 0;
        while seen < 5 && !h.is_finished() {
            seen = sleeping(&marker);
            std::thread::sleep(Duration::from_millis(20));
        }
        (h.join().unwrap().unwrap(), seen)
    });
    let elapsed = t0.elapsed();
    assert_eq!(
        seen_running, 5,
        "the command's sleeps were not all seen running"
    );
    assert!(o.timed_out, "not reported as timed out: {o:?}");
    assert!(!o.success());
    assert!(elapsed < Duration::from_secs(30), "took {elapsed:?}");
    let left = processes_with(&marker);
    assert!(
        left.is_empty(),
        "processes survived the time limit: {left:?}"
    );
}

#[test]
fn background_processes_do_not_outlive_their_command() {
    let s = scratch();
    let sb = sandbox(&s);
    let marker = format!("1001.{}", std::process::id());
    ok(
        &sb,
        &format!("(setsid sleep {marker} &); nohup sleep {marker} >/dev/null 2>&1 & echo started"),
    );
    let left = processes_with(&marker);
    assert!(left.is_empty(), "background processes survived: {left:?}");
}

#[test]
fn it_cannot_reach_the_network() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Control: from the host the listener is reachable.
    let control = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (_accepted, _) = listener.accept().unwrap();
    drop(control);

    let s = scratch();
    let sb = sandbox(&s);
    fails(&sb, &format!("exec 3<>/dev/tcp/127.0.0.1/{port}"));
    let py = format!(
        "python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), timeout=5)'"
    );
    fails(&sb, &py);
    // Only a loopback of its own; no interface of the host's.
    let devs = ok(&sb, "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '");
    assert_eq!(devs.trim(), "lo", "interfaces seen: {devs:?}");
    listener.set_nonblocking(true).unwrap();
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the sandbox reached the host's listener"
    );
}

#[test]
fn it_cannot_see_or_write_the_repository_nor_other_runs() {
    let repo = host_dir("repo");
    std::fs::write(repo.path().join("volume.json"), b"{}").unwrap();
    std::fs::set_permissions(repo.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let r = repo.path().display().to_string();

    let other = scratch();
    std::fs::write(other.path().join("secret"), b"other run").unwrap();
    let o = other.path().display().to_string();

    let s = scratch();
    let sb = sandbox(&s);
    fails(&sb, &format!("cat {r}/volume.json"));
    fails(&sb, &format!("ls {r}"));
    fails(&sb, &format!("touch {r}/planted"));
    fails(&sb, &format!("cat {o}/secret"));
    fails(&sb, &format!("touch {o}/planted"));
    assert!(!repo.path().join("planted").exists());
    assert!(!other.path().join("planted").exists());
    // The host's trees are not there at all.
    ok(&sb, "for d in /work /root /home /var/lib /run /srv /opt /mnt /media /boot /sys; do test ! -e $d || { echo $d; exit 1; }; done");
    ok(
        &sb,
        "test ! -e /etc/shadow && test ! -e /etc/ssh && test ! -e /etc/resolv.conf",
    );
}

#[test]
fn writes_outside_the_scratch_directory_and_tmp_fail() {
    let s = scratch();
    let sb = sandbox(&s);
    let name = unique("w");
    for dir in [
        "", "/etc", "/usr", "/usr/bin", "/dev", "/var", "/proc", "/bin",
    ] {
        fails(&sb, &format!("echo x > {dir}/{name}"));
        fails(&sb, &format!("mkdir {dir}/{name}.d"));
    }
    for dir in ["/", "/etc", "/usr", "/usr/bin", "/var"] {
        assert!(
            !Path::new(dir).join(&name).exists(),
            "{dir}/{name} appeared on the host"
        );
    }
    // The scratch directory and /tmp take writes.
    ok(
        &sb,
        "echo x > ./a && echo y > /tmp/b && echo z > /var/tmp/c && echo w > $HOME/d",
    );
}

#[test]
fn tmp_is_private_to_the_run() {
    let probe = std::env::temp_dir().join(unique("hosttmp"));
    std::fs::write(&probe, b"host").unwrap();
    let s = scratch();
    let sb = sandbox(&s);
    let o = run(&sb, &format!("test -e {}", probe.display()));
    std::fs::remove_file(&probe).unwrap();
    assert_eq!(
        o.status,
        ShellStatus::Exited(1),
        "the host's /tmp file was visible"
    );

    let name = unique("mine");
    ok(&sb, &format!("echo t > /tmp/{name}"));
    assert!(
        !Path::new("/tmp").join(&name).exists(),
        "the write reached the host's /tmp"
    );
    let resolved = s.resolve(format!("/tmp/{name}")).unwrap();
    assert_eq!(resolved, s.tmp_path().join(&name));
    assert_eq!(std::fs::read(&resolved).unwrap(), b"t\n");
    // Another run's /tmp does not have it.
    let s2 = scratch();
    let sb2 = sandbox(&s2);
    fails(&sb2, &format!("test -e /tmp/{name}"));
}

#[test]
fn it_does_not_run_as_root_and_cannot_gain_capabilities() {
    let s = scratch();
    let sb = sandbox(&s);
    assert_ne!(ok(&sb, "id -u").trim(), "0");
    let status = ok(
        &sb,
        "grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs):' /proc/self/status",
    );
    for line in status.lines() {
        let (k, v) = line.split_once(':').unwrap();
        let v = v.trim();
        if k == "NoNewPrivs" {
            assert_eq!(v, "1", "{status}");
        } else {
            assert_eq!(v, "0000000000000000", "{k} in {status}");
        }
    }
    assert_eq!(status.lines().count(), 6, "{status}");
    // No way back to capabilities through a user namespace of its own.
    fails(&sb, "unshare -Ur true");
    fails(&sb, "unshare -n true");
    if is_root() {
        ok(&sb, "echo x > ./owned");
        let md = std::fs::metadata(s.path().join("owned")).unwrap();
        assert_eq!(
            md.uid(),
            SANDBOX_UID,
            "files it writes belong to the sandbox user on the host"
        );
    }
}

#[test]
fn the_environment_is_fixed_and_the_cwd_is_the_scratch_directory() {
    // SAFETY (edition 2021: set_var is safe): a variable standing for a secret of strata's.
    std::env::set_var("STRATA_TEST_SECRET", "hunter2");
    let s = scratch();
    let sb = sandbox_with(
        &s,
        SandboxOptions {
            timeout: Duration::from_secs(60),
            env: vec![("DEPLOY_ID".into(), "d1".into())],
            ..SandboxOptions::default()
        },
    );
    let env = ok(&sb, "env");
    assert!(!env.contains("hunter2"), "{env}");
    for want in [
        "HOME=/scratch",
        "LANG=C.UTF-8",
        "TERM=dumb",
        "TMPDIR=/tmp",
        "DEPLOY_ID=d1",
    ] {
        assert!(env.lines().any(|l| l == want), "{want} missing from {env}");
    }
    assert!(
        env.lines().any(|l| l.starts_with("PATH=/usr/local/sbin:")),
        "{env}"
    );
    assert_eq!(ok(&sb, "pwd"), "/scratch\n");
    assert!(Sandbox::new(
        &s,
        SandboxOptions {
            env: vec![("A=B".into(), "x".into())],
            ..SandboxOptions::default()
        }
    )
    .is_err());
}

#[test]
fn output_is_bounded() {
    let s = scratch();
    let sb = sandbox_with(
        &s,
        SandboxOptions {
            timeout: Duration::from_secs(60),
            output_limit: 1000,
            ..SandboxOptions::default()
        },
    );
    let o = run(&sb, "head -c 5000000 /dev/zero; head -c 10 /dev/zero >&2");
    assert!(o.success(), "{o:?}");
    assert_eq!(o.stdout.len(), 1000);
    assert!(o.stdout_truncated);
    assert_eq!(o.stderr.len(), 10);
    assert!(!o.stderr_truncated);
}

#[test]
fn scratch_paths_that_lead_outside_are_refused() {
    let s = scratch();
    let sb = sandbox(&s);
    let escape = |r: Result<PathBuf, SandboxError>| matches!(r, Err(SandboxError::Escape { .. }));
    assert!(escape(s.resolve("../x")));
    assert!(escape(s.resolve("a/../../x")));
    assert!(escape(s.resolve("/etc/passwd")));
    let msg = s.resolve("/etc/passwd").unwrap_err().to_string();
    assert!(msg.contains("/etc/passwd") && msg.contains("/tmp"), "{msg}");

    let outside = host_dir("outside");
    let target = outside.path().join("victim");
    std::fs::write(&target, b"keep").unwrap();
    std::fs::set_permissions(outside.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    // The sandboxed code plants links to the host (it cannot see the targets, but the
    // interpreter, running as root, could follow them).
    ok(
        &sb,
        &format!(
            "ln -s /etc evil; ln -s ../../.. up; ln -s {t} victim; ln -s {d} outdir; \
             mkdir sub; echo hi > sub/f; ln -s sub inside; mkfifo fifo; ln -s /tmp/x abs",
            t = target.display(),
            d = outside.path().display()
        ),
    );
    for p in ["evil/passwd", "up/x", "victim", "outdir/victim", "abs"] {
        assert!(escape(s.resolve(p)), "resolve({p}) was accepted");
        assert!(
            matches!(s.open_read(p), Err(SandboxError::Escape { .. })),
            "open_read({p})"
        );
        assert!(
            matches!(s.create(p), Err(SandboxError::Escape { .. })),
            "create({p})"
        );
    }
    assert!(matches!(
        s.create_dir_all("up/newdir"),
        Err(SandboxError::Escape { .. })
    ));
    assert!(matches!(
        s.create_dir_all("outdir/newdir"),
        Err(SandboxError::Escape { .. })
    ));
    assert!(matches!(
        s.read_dir("outdir"),
        Err(SandboxError::Escape { .. })
    ));
    assert!(matches!(
        s.create("evil/strata-x"),
        Err(SandboxError::Escape { .. })
    ));
    assert_eq!(
        std::fs::read(&target).unwrap(),
        b"keep",
        "the victim was truncated"
    );
    assert!(!outside.path().join("newdir").exists());
    assert!(!Path::new("/etc/strata-x").exists());

    // Links that stay inside work; a FIFO is refused at once instead of hanging the caller.
    assert_eq!(s.resolve("inside/f").unwrap(), s.path().join("inside/f"));
    let mut got = String::new();
    s.open_read("./inside/f")
        .unwrap()
        .read_to_string(&mut got)
        .unwrap();
    assert_eq!(got, "hi\n");
    assert!(matches!(
        s.open_read("fifo"),
        Err(SandboxError::BadPath { .. })
    ));
    assert!(s.create("fifo").is_err());
    assert!(s.symlink_metadata("evil").unwrap().file_type().is_symlink());
    s.create_dir_all("a/b/c").unwrap();
    s.create("a/b/c/file").unwrap();
    let mut names: Vec<String> = s
        .read_dir("a/b/c")
        .unwrap()
        .into_iter()
        .map(|e| e.name.to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["file"]);
    assert_eq!(
        ok(
            &sb,
            "ls a/b/c && echo >> a/b/c/file && mkdir a/b/c/d && echo ok"
        ),
        "file\nok\n"
    );
}

#[test]
fn dropping_the_scratch_removes_everything_it_holds_and_nothing_else() {
    let outside = host_dir("keep");
    let keep = outside.path().join("keep");
    std::fs::write(&keep, b"keep").unwrap();
    let root;
    {
        let s = scratch();
        root = s.path().parent().unwrap().to_path_buf();
        let sb = sandbox(&s);
        ok(
            &sb,
            &format!(
                "mkdir -p a/b/c && echo x > a/b/c/f && chmod 000 a/b && \
                 mkdir ro && touch ro/f && chmod 000 ro/f && chmod 500 ro && \
                 mkdir /tmp/t && touch /tmp/t/f && chmod 000 /tmp/t && \
                 ln -s {k} link && ln -s {d} dirlink && chmod 000 . ",
                k = keep.display(),
                d = outside.path().display()
            ),
        );
        assert!(root.exists());
    }
    assert!(!root.exists(), "{} is still there", root.display());
    assert_eq!(std::fs::read(&keep).unwrap(), b"keep");
}

#[test]
fn a_scratch_parent_the_sandbox_user_cannot_pass_is_refused() {
    if !is_root() {
        eprintln!("note: not root, scratch directories stay the caller's; nothing to check");
        return;
    }
    let closed = host_dir("closed");
    std::fs::set_permissions(closed.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let err = Scratch::new(closed.path()).unwrap_err();
    assert!(matches!(err, SandboxError::Unreachable { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&closed.path().display().to_string()),
        "{err}"
    );
    // A repository's own tmp area that others may pass works.
    std::fs::set_permissions(closed.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let s = Scratch::new(closed.path()).unwrap();
    let sb = sandbox(&s);
    assert_eq!(ok(&sb, "echo hi > x && cat x"), "hi\n");
}

#[test]
fn the_usual_tools_are_there() {
    let s = scratch();
    let sb = sandbox(&s);
    let script = r#"set -euo pipefail
bash --version | sed -n 1p | cut -d' ' -f1-3
echo 'a:b:c' | gawk -F: '{print $2}'
echo 'a:b:c' | awk -F: '{print $3}'
echo hello | sed 's/l/L/g'
printf 'x\ny\n' | grep -c y
echo 'k=v' | cut -d= -f2
seq 3 | tr '\n' ' '; echo
mkdir -p d/e && touch d/e/f && find d -type f
date -u -d @0 +%Y
tar -czf t.tgz d && rm -rf d && tar -xzf t.tgz && test -f d/e/f && echo tar-ok
gzip -c t.tgz | gunzip -c | cmp - t.tgz && echo gzip-ok
echo '<a><b>v</b></a>' | xmllint --xpath 'string(/a/b)' -
printf 'l1\n' > u.txt && unix2dos -q u.txt && od -An -c u.txt | tr -s ' '
python3 -c 'import json, sys; print(json.dumps({"p": sys.version_info[0]}))'
sort -r <<< $'a\nb' | sed -n 1p
echo abc | wc -c
basename /x/y.z .z; dirname /x/y.z
printf abc | sha256sum | cut -c1-8
mktemp -p /tmp >/dev/null && echo mktemp-ok
echo done | xargs echo got
"#;
    let out = ok(&sb, script);
    let want = [
        "GNU bash, version",
        "b",
        "c",
        "heLLo",
        "1",
        "v",
        "1 2 3 ",
        "d/e/f",
        "1970",
        "tar-ok",
        "gzip-ok",
        "v",
        " l 1 \\r \\n",
        "{\"p\": 3}",
        "b",
        "4",
        "y",
        "/x",
        "ba7816bf",
        "mktemp-ok",
        "got done",
    ];
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), want.len(), "{out}");
    for (got, want) in lines.iter().zip(want) {
        assert!(got.starts_with(want), "{got:?} is not {want:?} in\n{out}");
    }
}
