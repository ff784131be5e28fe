//! The interpreter against a FAT disk in memory (the pure-Rust adapter, in-process), a
//! plain host shell in a temporary directory, and a sink that keeps everything.

use std::path::PathBuf;
use std::sync::Arc;

use super::*;
use crate::store::device::{MemDevice, SharedDevice};

struct TestHost {
    dir: tempfile::TempDir,
}

impl Host for TestHost {
    fn shell(&mut self, command: &str, stdin: Option<&[u8]>) -> Result<ShellOutput, String> {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let mut c = Command::new("bash")
            .arg("-c")
            .arg(command)
            .current_dir(self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut i = c.stdin.take().unwrap();
        i.write_all(stdin.unwrap_or_default()).unwrap();
        drop(i);
        let o = c.wait_with_output().map_err(|e| e.to_string())?;
        Ok(ShellOutput {
            status: o.status.code(),
            stdout: o.stdout,
            stderr: o.stderr,
            note: None,
        })
    }

    fn local(&mut self, path: &str) -> Result<PathBuf, String> {
        Ok(self.dir.path().join(path))
    }
}

#[derive(Default)]
struct Kept {
    out: Vec<u8>,
    err: Vec<u8>,
}

impl Sink for Kept {
    fn stdout(&mut self, b: &[u8]) {
        self.out.extend_from_slice(b)
    }
    fn stderr(&mut self, b: &[u8]) {
        self.err.extend_from_slice(b)
    }
}

fn fat_disk() -> SharedDevice {
    let mut img = std::io::Cursor::new(vec![0u8; 8 << 20]);
    fatfs::format_volume(&mut img, fatfs::FormatVolumeOptions::new()).unwrap();
    Arc::new(MemDevice::new(img.into_inner()))
}

struct Fixture {
    guest: Guest,
    host: TestHost,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture {
            guest: Guest::in_process(fat_disk()).unwrap(),
            host: TestHost {
                dir: tempfile::tempdir().unwrap(),
            },
        }
    }

    fn run(&mut self, script: &str) -> (Result<Ended, RunError>, Kept) {
        let mut sink = Kept::default();
        let r = Interp::new(&mut self.guest, &mut self.host, &mut sink, "test.gf").run_text(script);
        (r, sink)
    }

    fn ok(&mut self, script: &str) -> String {
        let (r, k) = self.run(script);
        r.unwrap_or_else(|e| panic!("{e}\nstderr: {}", String::from_utf8_lossy(&k.err)));
        String::from_utf8(k.out).unwrap()
    }
}

#[test]
fn hpe_uefi_personalization_writes_the_heredoc_and_cat_prints_it_with_a_newline() {
    let mut f = Fixture::new();
    let out = f.ok(
        "!echo \"File Systems in Golden Image:\"\nlist-filesystems\nmount /dev/sda /\nmkdir-p /EFI/BOOT\n\
         upload -<<EOF /EFI/BOOT/message.txt\n\nhello @ there\n\nEOF\ncat /EFI/BOOT/message.txt\numount /\n",
    );
    assert_eq!(
        out,
        "File Systems in Golden Image:\n/dev/sda: vfat\n\nhello @ there\n\n\n"
    );
}

#[test]
fn shell_output_drives_commands_through_inline_and_pipes() {
    let mut f = Fixture::new();
    let out = f.ok(
        "list-filesystems | cat > ./list-fs\n<!awk -F: '/vfat/ {print \"mount\", $1, \"/\"}' ./list-fs\n\
         write /x.txt \"a\\tb\"\ncat /x.txt | tr a-z A-Z\n",
    );
    assert_eq!(out, "A\tB\n");
}

#[test]
fn an_unknown_command_stops_the_run_naming_script_line_and_command() {
    let mut f = Fixture::new();
    let (r, k) = f.run("echo one\n\n# c\nIntentionally_Fail_OS_Deployment\necho two\n");
    let e = r.unwrap_err();
    assert_eq!((e.script.as_str(), e.line), ("test.gf", 4));
    assert_eq!(
        e.message,
        "Intentionally_Fail_OS_Deployment: unknown command"
    );
    assert_eq!(k.out, b"one\n");
}

#[test]
fn a_dash_line_fails_without_ending_the_run() {
    let mut f = Fixture::new();
    let (r, k) = f.run("-mount /dev/sda9 /\n-!exit 3\necho after\n");
    assert_eq!(r.unwrap(), Ended::Done);
    assert_eq!(k.out, b"after\n");
    let err = String::from_utf8(k.err).unwrap();
    assert!(err.contains("/dev/sda9"), "{err}");
    assert!(err.contains("status 3"), "{err}");
}

#[test]
fn a_failing_shell_command_fails_the_run() {
    let mut f = Fixture::new();
    let e = f.run("!false\necho not reached\n").0.unwrap_err();
    assert_eq!(e.line, 1);
    assert!(e.message.contains("status 1"), "{}", e.message);
}

#[test]
fn a_syntax_error_anywhere_stops_the_run_before_anything_runs() {
    let mut f = Fixture::new();
    let (r, k) = f.run("echo first\necho \"open\n");
    assert_eq!(r.unwrap_err().line, 2);
    assert!(k.out.is_empty());
}

#[test]
fn paths_must_be_absolute_and_argument_counts_right() {
    let mut f = Fixture::new();
    let e = f.run("mount /dev/sda /\nmkdir-p etc\n").0.unwrap_err();
    assert_eq!(
        e.message,
        "mkdir_p: etc: path must start with a / character"
    );
    let e = f.run("mount /dev/sda\n").0.unwrap_err();
    assert!(
        e.message
            .starts_with("error: incorrect number of arguments"),
        "{}",
        e.message
    );
}

#[test]
fn listing_commands_print_guestfish_formats() {
    let mut f = Fixture::new();
    let out = f.ok(
        "mount /dev/sda /\nmkdir /b\nmkdir /a\nwrite /a/f \"x\"\ntouch /Z\nls /\nfind /\nexists /a/f\nis-dir /a\nis-file /nope\nlist-devices\nlist-partitions\n",
    );
    assert_eq!(out, "Z\na\nb\nZ\na\na/f\nb\ntrue\ntrue\nfalse\n/dev/sda\n");
}

#[test]
fn glob_runs_the_command_for_each_match_and_keeps_a_pattern_matching_nothing() {
    let mut f = Fixture::new();
    let out = f.ok(
        "mount /dev/sda /\nmkdir /d\ntouch /f1\ntouch /f2\nglob echo /f* /d*\nglob echo /zz*\n",
    );
    assert_eq!(out, "/f1 /d/\n/f2 /d/\n/zz*\n");
}

#[test]
fn glob_runs_every_combination_even_after_one_fails_then_fails() {
    let mut f = Fixture::new();
    f.ok("mount /dev/sda /\nmkdir /d\ntouch /f1\n");
    let (r, k) = f.run("glob cat /*\necho not reached\n");
    let e = r.unwrap_err();
    assert!(
        e.message.starts_with("glob: a command failed"),
        "{}",
        e.message
    );
    // cat of the file printed (an empty file: a newline), cat of the directory failed.
    assert_eq!(k.out, b"\n");
    assert!(!k.err.is_empty());
}

#[test]
fn upload_of_a_missing_local_file_still_empties_the_guest_file() {
    let mut f = Fixture::new();
    f.ok("mount /dev/sda /\nwrite /f \"old\"\n");
    let e = f.run("upload ./missing /f\n").0.unwrap_err();
    assert!(e.message.contains("missing"), "{}", e.message);
    assert_eq!(f.ok("cat /f\n"), "\n");
}

#[test]
fn download_then_source_on_the_host_sees_the_guest_file() {
    let mut f = Fixture::new();
    let out = f.ok(
        "mount /dev/sda /\nupload -<<END /s.bash\nGREETING=hi-from-guest\nEND\ndownload /s.bash ./s.bash\n!source ./s.bash && echo $GREETING\n",
    );
    assert_eq!(out, "hi-from-guest\n");
}

#[test]
fn tgz_and_copy_round_trip_trees_between_guest_and_host() {
    let mut f = Fixture::new();
    let out = f.ok(
        "mount /dev/sda /\nmkdir-p /src/sub\nwrite /src/a \"alpha\"\nwrite /src/sub/b \"beta\"\n\
         tgz-out /src ./t.tgz\nmkdir /dst\ntgz-in ./t.tgz /dst\ncat /dst/sub/b\n\
         copy-out /src .\n!cat ./src/a\nmkdir /again\ncopy-in ./src /again\ncat /again/src/sub/b\n",
    );
    // `write` adds no newline, so the host's `cat ./src/a` runs into the next output.
    assert_eq!(out, "beta\nalphabeta\n");
}

#[test]
fn checksum_head_tail_and_echo() {
    let mut f = Fixture::new();
    let out = f.ok(
        "mount /dev/sda /\nwrite /h \"1\\n2\\n3\\n\"\nchecksum md5 /h\nchecksum sha256 /h\nhead-n 2 /h\ntail-n 1 /h\necho\necho a  b\n",
    );
    assert_eq!(
        out,
        "8a1dbf8b9b2a5ff5f5b0bcb8e32c7e2a\n\
         d1ab1f5ee4f1b0a5cbb1e3ac7ae2a4ebc3a1b4f3a0e8c5b1d2c0b8f6a0d4e2c1\n1\n2\n3\n\na b\n"
            .replace("8a1dbf8b9b2a5ff5f5b0bcb8e32c7e2a", &md5_of(b"1\n2\n3\n"))
            .replace(
                "d1ab1f5ee4f1b0a5cbb1e3ac7ae2a4ebc3a1b4f3a0e8c5b1d2c0b8f6a0d4e2c1",
                &sha256_of(b"1\n2\n3\n")
            )
    );
}

fn md5_of(b: &[u8]) -> String {
    use md5::Digest;
    md5::Md5::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn sha256_of(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

#[test]
fn quit_ends_the_script_early() {
    let mut f = Fixture::new();
    let (r, k) = f.run("echo a\nquit\necho b\n");
    assert_eq!(r.unwrap(), Ended::Quit);
    assert_eq!(k.out, b"a\n");
}

#[test]
fn escapes_that_are_not_utf8_reach_the_file_and_echo_as_bytes() {
    // guestfish hands commands C strings: `\xd8` is the byte 0xd8, not U+FFFD.
    let mut f = Fixture::new();
    let (r, k) = f.run(
        "mount /dev/sda /\nwrite /f \"a\\xd8\\xff\"\nwrite-append /f \"\\xc3\"\necho \"\\xfe\" x\n",
    );
    r.unwrap_or_else(|e| panic!("{e}\nstderr: {}", String::from_utf8_lossy(&k.err)));
    assert_eq!(k.out, b"\xfe x\n");
    let data = f.guest.read_file(b"/f", 1 << 20).unwrap();
    assert_eq!(data, b"a\xd8\xff\xc3");
}
