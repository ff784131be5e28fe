//! Runs one parsed script: each line's command against the guest (the filesystem worker),
//! `!` and `<!` lines and `| pipes` on the host (through `Host`, the sandbox), every output
//! to a `Sink` (the terminal, the deployment record). The first failure of a line without
//! a leading `-` ends the run, with the script, the line and the reason.
//!
//! One file per command family:
//! - `disks.rs`    devices, partitions, filesystems, LVM, mount and umount, inspection, df
//! - `files.rs`    file content: cat, head, tail, write, checksum, stat, tests (is-file …)
//! - `tree.rs`     names: ls, ll, find, du, mkdir, rm, cp, mv, ln, chmod, chown, touch
//! - `transfer.rs` between guest and host: upload, download, copy-in/out, tar, compress-out
//!
//! What a command prints is exactly what guestfish prints (see `format.rs`), because
//! scripts parse it with awk.

mod disks;
mod files;
mod transfer;
mod tree;

use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::fs::types::FsError;

use super::commands::{self, Kind, Spec};
use super::guest::Guest;
use super::script::{self, Action, Arg, Line};

/// Files a command reads whole into memory (cat, head, a heredoc target's old content) are
/// refused past this size.
pub const READ_LIMIT: u64 = 256 << 20;

/// The host side of a run: the shell that runs `!` lines, and the local files (the scratch
/// directory) that `upload`, `download`, `copy-in` … read and write.
pub trait Host {
    /// Runs `command` with bash, `stdin` on its standard input (or nothing).
    fn shell(&mut self, command: &str, stdin: Option<&[u8]>) -> Result<ShellOutput, String>;
    /// Where a local path of the script (`./x`, `x`, `/tmp/x`) is on this machine, refused
    /// if it leads outside the run's own files.
    fn local(&mut self, path: &str) -> Result<PathBuf, String>;
    /// Opens a local file for reading, never following a symlink out of the run's files.
    fn open_read(&mut self, path: &str) -> Result<std::fs::File, String> {
        let p = self.local(path)?;
        std::fs::File::open(&p).map_err(|e| format!("{path}: {e}"))
    }
    /// Creates (or empties) a local file, never through a symlink out of the run's files.
    fn create(&mut self, path: &str) -> Result<std::fs::File, String> {
        let p = self.local(path)?;
        std::fs::File::create(&p).map_err(|e| format!("{path}: {e}"))
    }
    /// Called after the interpreter created or changed local files, so that the next shell
    /// command may use them (ownership for the sandbox's user).
    fn made_local(&mut self, _path: &std::path::Path) {}
}

#[derive(Debug, Clone, Default)]
pub struct ShellOutput {
    /// The exit status; `None` if killed by a signal (or the time limit).
    pub status: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Why it did not finish, if it did not (the time limit).
    pub note: Option<String>,
}

/// Where a run's output goes.
pub trait Sink {
    /// A line is about to run (after attribute substitution).
    fn begin(&mut self, _script: &str, _line: &Line) {}
    /// What the command printed (guestfish's stdout).
    fn stdout(&mut self, bytes: &[u8]);
    /// Messages (guestfish's stderr): errors of `-` lines, shell stderr.
    fn stderr(&mut self, bytes: &[u8]);
    /// The line finished; `error` if it failed (a `-` line's failure included).
    fn end(&mut self, _line: &Line, _error: Option<&str>, _took: Duration) {}
}

/// Why a run stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{script}: line {line}: {text}: {message}")]
pub struct RunError {
    pub script: String,
    pub line: usize,
    /// The line as written (attributes substituted).
    pub text: String,
    pub message: String,
}

/// A command's failure, before it is placed on its line.
#[derive(Debug)]
pub struct CmdError(pub String);

impl From<FsError> for CmdError {
    fn from(e: FsError) -> CmdError {
        CmdError(e.to_string())
    }
}

impl From<String> for CmdError {
    fn from(e: String) -> CmdError {
        CmdError(e)
    }
}

impl From<&str> for CmdError {
    fn from(e: &str) -> CmdError {
        CmdError(e.to_string())
    }
}

impl From<io::Error> for CmdError {
    fn from(e: io::Error) -> CmdError {
        CmdError(e.to_string())
    }
}

pub type CmdResult<T = Vec<u8>> = Result<T, CmdError>;

/// How a run ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Every line ran.
    Done,
    /// `exit`/`quit`.
    Quit,
}

/// One run of one script.
pub struct Interp<'a> {
    pub guest: &'a mut Guest,
    pub host: &'a mut dyn Host,
    pub sink: &'a mut dyn Sink,
    /// The script's name, for messages.
    pub script: String,
    /// Whether the last `inspect-os` ran (guestfish refuses inspect-get-* before it).
    inspected: Option<Vec<crate::fs::inspect::OsInfo>>,
}

/// The parser's question, answered from the command table.
pub fn file_in(name: &str, index: usize) -> bool {
    commands::is_file_in(name, index)
}

/// Parses `text` (attributes already substituted) the way the interpreter will.
pub fn parse(text: &str) -> script::Parsed {
    script::parse(text, &file_in)
}

impl<'a> Interp<'a> {
    pub fn new(
        guest: &'a mut Guest,
        host: &'a mut dyn Host,
        sink: &'a mut dyn Sink,
        script: impl Into<String>,
    ) -> Interp<'a> {
        Interp {
            guest,
            host,
            sink,
            script: script.into(),
            inspected: None,
        }
    }

    /// Parses and runs a whole script. A syntax error anywhere fails the run before any
    /// line runs.
    pub fn run_text(&mut self, text: &str) -> Result<Ended, RunError> {
        let parsed = parse(text);
        if let Some(e) = parsed.errors.first() {
            let text = text
                .split('\n')
                .nth(e.line - 1)
                .unwrap_or_default()
                .to_string();
            return Err(RunError {
                script: self.script.clone(),
                line: e.line,
                text,
                message: e.message.clone(),
            });
        }
        self.run_lines(&parsed.lines)
    }

    pub fn run_lines(&mut self, lines: &[Line]) -> Result<Ended, RunError> {
        for line in lines {
            if self.run_line(line)? == Some(Ended::Quit) {
                return Ok(Ended::Quit);
            }
        }
        Ok(Ended::Done)
    }

    /// Runs one line; `Err` only when the run must stop.
    fn run_line(&mut self, line: &Line) -> Result<Option<Ended>, RunError> {
        self.sink.begin(&self.script, line);
        let started = Instant::now();
        let result = self.act(line);
        let took = started.elapsed();
        match result {
            Ok(ended) => {
                self.sink.end(line, None, took);
                Ok(ended)
            }
            Err(CmdError(message)) => {
                self.sink.end(line, Some(&message), took);
                if line.ignore_errors {
                    let mut m = message.clone().into_bytes();
                    m.push(b'\n');
                    self.sink.stderr(&m);
                    Ok(None)
                } else {
                    Err(RunError {
                        script: self.script.clone(),
                        line: line.number,
                        text: line.text.trim().to_string(),
                        message,
                    })
                }
            }
        }
    }

    fn act(&mut self, line: &Line) -> CmdResult<Option<Ended>> {
        match &line.action {
            Action::Shell(cmd) => {
                let out = self.host.shell(cmd, None)?;
                self.sink.stdout(&out.stdout);
                self.sink.stderr(&out.stderr);
                shell_status(&out)?;
                Ok(None)
            }
            Action::Inline(cmd) => {
                let out = self.host.shell(cmd, None)?;
                self.sink.stderr(&out.stderr);
                shell_status(&out)?;
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                for (i, l) in text.lines().enumerate() {
                    // Each output line is a command of its own; a heredoc cannot be read
                    // from the script here (guestfish would read it from its stdin).
                    let parsed = match script::parse_line(l, line.number, &file_in) {
                        Ok(Some(p)) => p,
                        Ok(None) => continue,
                        Err(e) => {
                            return Err(CmdError(format!(
                                "line {} of the output of <!{cmd}: {e}",
                                i + 1
                            )))
                        }
                    };
                    if let Action::Command(c) = &parsed.action {
                        if c.args.iter().any(|a| matches!(a, Arg::Heredoc { .. })) {
                            return Err(CmdError(format!(
                                "line {} of the output of <!{cmd}: a heredoc cannot come from a command's output",
                                i + 1
                            )));
                        }
                    }
                    let quit = self.run_line(&Line {
                        ignore_errors: parsed.ignore_errors || line.ignore_errors,
                        ..parsed
                    });
                    match quit {
                        Ok(Some(Ended::Quit)) => return Ok(Some(Ended::Quit)),
                        Ok(_) => {}
                        Err(e) => return Err(CmdError(e.message)),
                    }
                }
                Ok(None)
            }
            Action::Command(c) => {
                let Some(spec) = commands::find(&c.name) else {
                    return Err(CmdError(format!("{}: unknown command", c.name)));
                };
                if spec.name == "exit" {
                    return Ok(Some(Ended::Quit));
                }
                let output = self.command(spec, &c.args)?;
                match &c.pipe {
                    None => self.sink.stdout(&output),
                    Some(p) => {
                        // guestfish does not look at the pipe's exit status.
                        let out = self.host.shell(p, Some(&output))?;
                        self.sink.stdout(&out.stdout);
                        self.sink.stderr(&out.stderr);
                    }
                }
                Ok(None)
            }
        }
    }

    /// Checks a command's arguments and runs it; returns what it prints.
    fn command(&mut self, spec: &'static Spec, args: &[Arg]) -> CmdResult {
        // A heredoc's content is kept beside the words; a file-in argument given as a
        // local path is read by the command itself (upload creates its guest file first).
        // The words are checked and split as text; `Args::bytes` hands commands the bytes
        // as written, since `\xHH` escapes may make a word that is not UTF-8 (guestfish
        // passes C strings, so `write /f "\xd8"` writes the byte 0xd8).
        let mut inputs: Vec<Option<Vec<u8>>> = Vec::new();
        let mut raw = Vec::new();
        let mut words = Vec::new();
        for a in args {
            match a {
                Arg::Heredoc { content, .. } => {
                    inputs.push(Some(content.clone()));
                    raw.push(Vec::new());
                    words.push(String::new());
                }
                Arg::Word(w) => {
                    inputs.push(None);
                    raw.push(w.clone());
                    words.push(String::from_utf8_lossy(w).into_owned());
                }
            }
        }
        let (pos, opts) = spec.split(&words)?;
        let a = Args {
            spec,
            pos,
            opts,
            inputs,
            raw,
        };
        for (i, (_, kind)) in spec.args.iter().enumerate() {
            if *kind == Kind::Path && !a.pos[i].starts_with('/') {
                return Err(CmdError(format!(
                    "{}: {}: path must start with a / character",
                    spec.name.replace('-', "_"),
                    a.pos[i]
                )));
            }
        }
        let name = spec.name;
        if let Some(out) = disks::run(self, name, &a)? {
            return Ok(out);
        }
        if let Some(out) = files::run(self, name, &a)? {
            return Ok(out);
        }
        if let Some(out) = tree::run(self, name, &a)? {
            return Ok(out);
        }
        if let Some(out) = transfer::run(self, name, &a)? {
            return Ok(out);
        }
        match name {
            "echo" => {
                let mut s = Vec::new();
                for i in 0..a.pos.len() {
                    if i > 0 {
                        s.push(b' ');
                    }
                    s.extend_from_slice(a.bytes(i));
                }
                s.push(b'\n');
                Ok(s)
            }
            "help" => Ok(help(a.pos.first().copied())?.into_bytes()),
            "version" => Ok(super::format::version().into_bytes()),
            // The disk is open before the script starts, as on Image Streamer, whose scripts
            // never launch; a script written for plain guestfish starts with `run`.
            "sync" | "run" => Ok(Vec::new()),
            "glob" => self.glob(&a),
            _ => Err(CmdError(format!(
                "{name}: this command is listed but strata does not run it yet"
            ))),
        }
    }

    /// `glob CMD ARGS…`: each argument with wildcards becomes the guest paths it matches
    /// (a pattern matching nothing stays as written), and CMD runs once per combination.
    fn glob(&mut self, a: &Args) -> CmdResult {
        let mut choices: Vec<Vec<Vec<u8>>> = Vec::new();
        for k in 1..a.pos.len() {
            let w = a.bytes(k);
            if w.iter().any(|c| matches!(c, b'*' | b'?' | b'[')) && w.starts_with(b"/") {
                let found = if w.starts_with(b"/dev/") {
                    let mut names: Vec<Vec<u8>> = self
                        .guest
                        .devices()?
                        .into_iter()
                        .map(|d| d.name.into_bytes())
                        .filter(|n| crate::fs::ops::fnmatch(w, n))
                        .collect();
                    names.sort();
                    names
                } else {
                    self.guest.glob(w)?
                };
                choices.push(if found.is_empty() {
                    vec![w.to_vec()]
                } else {
                    found
                });
            } else {
                choices.push(vec![w.to_vec()]);
            }
        }
        let Some(spec) = commands::find(a.pos[0]) else {
            return Err(CmdError(format!("{}: unknown command", a.pos[0])));
        };
        // As guestfish's glob: every combination runs even when one fails, and the glob
        // fails afterwards if any did.
        let mut out = Vec::new();
        let mut failed = None;
        let mut idx = vec![0usize; choices.len()];
        loop {
            let args: Vec<Arg> = choices
                .iter()
                .zip(&idx)
                .map(|(c, &i)| Arg::Word(c[i].clone()))
                .collect();
            match self.command(spec, &args) {
                Ok(o) => out.extend(o),
                Err(CmdError(e)) => {
                    let mut m = e.clone().into_bytes();
                    m.push(b'\n');
                    self.sink.stderr(&m);
                    failed.get_or_insert(e);
                }
            }
            // The next combination, the last argument fastest.
            let mut k = idx.len();
            let more = loop {
                if k == 0 {
                    break false;
                }
                k -= 1;
                idx[k] += 1;
                if idx[k] < choices[k].len() {
                    break true;
                }
                idx[k] = 0;
            };
            if !more {
                break;
            }
        }
        match failed {
            None => Ok(out),
            Some(e) => {
                self.sink.stdout(&out);
                Err(CmdError(format!("glob: a command failed: {e}")))
            }
        }
    }
}

fn shell_status(out: &ShellOutput) -> CmdResult<()> {
    match (out.status, &out.note) {
        (Some(0), _) => Ok(()),
        (_, Some(n)) => Err(CmdError(n.clone())),
        (Some(s), None) => Err(CmdError(format!(
            "the shell command exited with status {s}"
        ))),
        (None, None) => Err(CmdError("the shell command was killed by a signal".into())),
    }
}

fn help(cmd: Option<&str>) -> CmdResult<String> {
    let Some(c) = cmd else {
        let mut s = String::new();
        for spec in commands::COMMANDS {
            s.push_str(&format!("{:<24} {}\n", spec.name, spec.help));
        }
        return Ok(s);
    };
    let spec = commands::find(c).ok_or_else(|| {
        CmdError(format!(
            "{c}: command not known: use -h to list all commands"
        ))
    })?;
    Ok(format!(
        "NAME\n    {} - {}\n\nSYNOPSIS\n     {}\n",
        spec.name,
        spec.help,
        spec.usage()
    ))
}

/// A command's checked arguments.
pub struct Args<'s> {
    pub spec: &'static Spec,
    pub pos: Vec<&'s str>,
    pub opts: Vec<(&'static str, &'s str)>,
    /// Heredoc contents, by argument index.
    inputs: Vec<Option<Vec<u8>>>,
    /// Every argument's bytes as written, by argument index.
    raw: Vec<Vec<u8>>,
}

impl Args<'_> {
    pub fn str(&self, i: usize) -> &str {
        self.pos[i]
    }

    /// Positional argument `i` as its bytes: not UTF-8 where an escape made it so.
    /// (`Spec::split` keeps the positional arguments first, in order, so the index is the
    /// argument's.)
    pub fn bytes(&self, i: usize) -> &[u8] {
        &self.raw[i]
    }

    /// A C-style integer argument.
    pub fn int(&self, i: usize) -> CmdResult<i64> {
        script::parse_int(self.pos[i]).ok_or_else(|| {
            CmdError(format!(
                "{}: {}: invalid integer parameter",
                self.spec.name, self.pos[i]
            ))
        })
    }

    pub fn opt(&self, name: &str) -> Option<&str> {
        self.opts.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }

    /// An optional boolean argument (false when not given); a word that is not a boolean
    /// is an error, as in guestfish.
    pub fn opt_bool(&self, name: &str) -> CmdResult<bool> {
        match self.opt(name) {
            None => Ok(false),
            Some(v) => script::parse_bool(v).ok_or_else(|| {
                CmdError(format!(
                    "'{v}': invalid boolean value, use 'true' or 'false'"
                ))
            }),
        }
    }

    /// The heredoc given for argument `i`, if it was one.
    pub fn heredoc(&self, i: usize) -> Option<&[u8]> {
        self.inputs.get(i).and_then(|x| x.as_deref())
    }
}

#[cfg(test)]
mod tests;
