//! strata's guestfish dialect against real guestfish: each golden image of
//! tests/common/golden_images.rs is rebuilt, the script guestfish ran on it
//! (tests/fixtures/guestfish/<image>/script.gf) runs through strata's interpreter and
//! filesystem worker, and every command's output must equal what guestfish 1.48 printed,
//! byte for byte. The few outputs that describe guestfish's appliance rather than the image
//! are masked, as the fixtures' README lists them.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use strata::fs::worker::client::{Worker, WorkerOptions};
use strata::fs::worker::protocol::Source;
use strata::plan::guest::Guest;
use strata::plan::interp::{self, Host, Interp, ShellOutput, Sink};
use strata::plan::script::{Action, Line};

use common::golden_images;

fn fixtures(image: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/guestfish")
        .join(image)
}

/// A host that runs nothing: the fixture scripts have no `!` lines of their own.
struct NoShell(PathBuf);

impl Host for NoShell {
    fn shell(&mut self, _: &str, _: Option<&[u8]>) -> Result<ShellOutput, String> {
        Err("no shell here".into())
    }
    fn local(&mut self, path: &str) -> Result<PathBuf, String> {
        Ok(self.0.join(path))
    }
}

/// Each command's stdout and stderr, by command number (1-based, in script order).
#[derive(Default)]
struct PerCommand {
    n: usize,
    out: BTreeMap<usize, Vec<u8>>,
    err: BTreeMap<usize, Vec<u8>>,
}

impl Sink for PerCommand {
    fn begin(&mut self, _: &str, _: &Line) {
        self.n += 1;
    }
    fn stdout(&mut self, b: &[u8]) {
        self.out.entry(self.n).or_default().extend_from_slice(b);
    }
    fn stderr(&mut self, b: &[u8]) {
        self.err.entry(self.n).or_default().extend_from_slice(b);
    }
    fn end(&mut self, _: &Line, _: Option<&str>, _: Duration) {}
}

/// The recorded stdout of each command, by number, and the command's name.
fn recorded(image: &str) -> BTreeMap<usize, (String, Vec<u8>)> {
    let mut m = BTreeMap::new();
    for e in std::fs::read_dir(fixtures(image)).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".out") else {
            continue;
        };
        let Some((num, cmd)) = stem.split_once('-') else {
            continue;
        };
        let Ok(n) = num.parse::<usize>() else {
            continue;
        };
        let data = std::fs::read(fixtures(image).join(&name)).unwrap();
        m.insert(n, (cmd.to_string(), data));
    }
    m
}

/// Masks what describes guestfish's appliance or the moment of the run, not the image.
fn mask(cmd: &str, text: &str, line: &str) -> String {
    let mut out = Vec::new();
    for l in text.split_inclusive('\n') {
        let key = l.split(':').next().unwrap_or("");
        let masked = match cmd {
            // st_dev is the appliance's device number; FAT and NTFS inode numbers are
            // whatever the kernel's vfat or ntfs-3g hand out.
            "stat" | "lstat" if key == "dev" || key == "ino" => format!("{key}: *\n"),
            "statvfs" if key == "fsid" => format!("{key}: *\n"),
            // `ll /`'s `..` is the appliance's root, and `total` counts it.
            "ll" if line.trim_end() == "ll /"
                && (l.ends_with(" ..\n") || l.starts_with("total ")) =>
            {
                continue
            }
            // ... and the width of `ll /`'s link-count column, set by that `..` line.
            "ll" if line.trim_end() == "ll /" => l
                .split(' ')
                .filter(|w| !w.is_empty())
                .collect::<Vec<_>>()
                .join(" "),
            _ => l.to_string(),
        };
        out.push(masked);
    }
    out.concat()
}

/// Commands whose output cannot match (README: the appliance's df, the library version,
/// `ll` of what the run itself created at its own time).
fn unmatchable(image: &str, cmd: &str, line: &str) -> bool {
    matches!(cmd, "df" | "version" | "run")
        || (cmd == "ll"
            && matches!(
                (image, line.trim()),
                ("debian-gpt", "ll /tmp")
                    | ("fat16-mbr", "ll /new")
                    | ("windows-ntfs", "ll /Windows/Setup/Scripts")
            ))
}

fn compare(image: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let g = golden_images::build(image, dir.path());
    let script = std::fs::read_to_string(fixtures(image).join("script.gf")).unwrap();
    let opts = WorkerOptions {
        exe: env!("CARGO_BIN_EXE_strata").into(),
        ..WorkerOptions::default()
    };
    let worker = Worker::start(
        Source::File {
            path: g.path.clone(),
        },
        false,
        &opts,
    )
    .unwrap();
    let mut guest = Guest::new(worker);
    let mut host = NoShell(dir.path().to_path_buf());
    let mut sink = PerCommand::default();
    let parsed = interp::parse(&script);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    let lines: Vec<Line> = parsed.lines.clone();
    let r = Interp::new(&mut guest, &mut host, &mut sink, image).run_lines(&lines);
    let mut problems = Vec::new();
    if let Err(e) = r {
        problems.push(format!("{image}: the run stopped: {e}"));
    }
    guest.abandon();
    for (n, (cmd, want)) in recorded(image) {
        let line = lines.get(n - 1).map(|l| l.text.clone()).unwrap_or_default();
        if let Some(l) = lines.get(n - 1) {
            if matches!(l.action, Action::Command(_)) && unmatchable(image, &cmd, &l.text) {
                continue;
            }
        }
        let got = sink.out.get(&n).cloned().unwrap_or_default();
        let want = mask(&cmd, &String::from_utf8_lossy(&want), &line);
        let got = mask(&cmd, &String::from_utf8_lossy(&got), &line);
        if want != got {
            problems.push(format!(
                "{image} #{n} `{}`:\n--- guestfish\n{want}--- strata\n{got}---",
                line.trim()
            ));
        }
    }
    problems
}

#[test]
fn strata_prints_what_guestfish_printed_on_the_same_images() {
    let mut all = Vec::new();
    for image in golden_images::NAMES {
        all.extend(compare(image));
    }
    assert!(
        all.is_empty(),
        "{} differences:\n{}",
        all.len(),
        all.join("\n")
    );
}
