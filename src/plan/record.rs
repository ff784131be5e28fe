//! The deployment record: what a deployment (or a capture, or a shell run) did, kept as
//! `deployment.json` beside the volume. The plan, the image, the attribute values (passwords
//! masked), each step's script as it ran (attributes substituted, passwords masked), each
//! line's output and error, the `ImageStreamerLog:` lines picked out, the result and the
//! timings.
//!
//! Everything that enters a record passes through its mask first, so a password can reach
//! neither the file nor the terminal echo through here.

use std::io::Write;
use std::time::Duration;

use serde::Serialize;

use super::interp::Sink;
use super::script::Line;

/// The marker HPE's scripts put in front of a line meant for the deployment's log.
pub const LOG_MARKER: &str = "ImageStreamerLog:";

pub type Mask = Box<dyn Fn(&str) -> String + Send>;

#[derive(Debug, Default, Serialize)]
pub struct Record {
    pub kind: String,
    pub volume: String,
    pub deployment_plan: Option<String>,
    pub build_plan: Option<String>,
    pub golden_image: Option<String>,
    /// The store's name for the golden image.
    pub image: Option<String>,
    pub initiator: Option<String>,
    /// Attribute values as substituted (passwords masked).
    pub attributes: Vec<(String, String)>,
    /// Seconds since the Unix epoch.
    pub started: u64,
    pub result: String,
    pub error: Option<String>,
    pub steps: Vec<Step>,
    /// Lines the scripts printed after `ImageStreamerLog:`.
    pub log: Vec<String>,
    pub timings_ms: Timings,
}

#[derive(Debug, Default, Serialize)]
pub struct Timings {
    pub prepare: u64,
    pub scripts: u64,
    pub commit: u64,
    pub total: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct Step {
    pub serial: u32,
    pub script: String,
    /// The script as it ran (attributes substituted, passwords masked).
    pub content: String,
    pub lines: Vec<LineRecord>,
    pub took_ms: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct LineRecord {
    pub line: usize,
    pub text: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub output: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub messages: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub took_ms: u64,
}

/// A `Sink` that fills a record's current step and echoes to the terminal.
pub struct Recorder {
    pub record: Record,
    mask: Mask,
    /// Echo command output to stdout and messages to stderr (the CLI), or stay silent.
    echo: bool,
    current: Option<LineRecord>,
}

impl Recorder {
    pub fn new(record: Record, mask: Mask, echo: bool) -> Recorder {
        Recorder {
            record,
            mask,
            echo,
            current: None,
        }
    }

    pub fn mask(&self, s: &str) -> String {
        (self.mask)(s)
    }

    /// Starts the record of a script about to run.
    pub fn begin_step(&mut self, serial: u32, script: &str, content: &str) {
        let content = self.mask(content);
        self.record.steps.push(Step {
            serial,
            script: script.to_string(),
            content,
            ..Step::default()
        });
    }

    pub fn end_step(&mut self, took: Duration) {
        self.flush_line();
        if let Some(s) = self.record.steps.last_mut() {
            s.took_ms = took.as_millis() as u64;
        }
    }

    fn flush_line(&mut self) {
        if let Some(l) = self.current.take() {
            for line in l.output.lines().chain(l.messages.lines()) {
                if let Some(i) = line.find(LOG_MARKER) {
                    self.record
                        .log
                        .push(line[i + LOG_MARKER.len()..].trim().to_string());
                }
            }
            match self.record.steps.last_mut() {
                Some(s) => s.lines.push(l),
                None => {}
            }
        }
    }

    /// Writes the record as JSON.
    pub fn write_to(&self, path: &std::path::Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(&self.record).map_err(std::io::Error::other)?;
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&json)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    }
}

impl Sink for Recorder {
    fn begin(&mut self, _script: &str, line: &Line) {
        // A `<!` line's commands nest inside it: each gets its own entry.
        self.flush_line();
        self.current = Some(LineRecord {
            line: line.number,
            text: self.mask(line.text.trim()),
            ..LineRecord::default()
        });
    }

    fn stdout(&mut self, bytes: &[u8]) {
        let text = self.mask(&String::from_utf8_lossy(bytes));
        if self.echo {
            let mut o = std::io::stdout().lock();
            let _ = o.write_all(text.as_bytes());
            let _ = o.flush();
        }
        if let Some(l) = self.current.as_mut() {
            l.output.push_str(&text);
        }
    }

    fn stderr(&mut self, bytes: &[u8]) {
        let text = self.mask(&String::from_utf8_lossy(bytes));
        if self.echo {
            let _ = std::io::stderr().write_all(text.as_bytes());
        }
        if let Some(l) = self.current.as_mut() {
            l.messages.push_str(&text);
        }
    }

    fn end(&mut self, line: &Line, error: Option<&str>, took: Duration) {
        let error = error.map(|e| self.mask(e));
        if let Some(l) = self.current.as_mut() {
            if l.line == line.number {
                l.error = error;
                l.took_ms = took.as_millis() as u64;
            }
        }
        self.flush_line();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::script::{Action, Line};

    fn line(n: usize, text: &str) -> Line {
        Line {
            number: n,
            text: text.into(),
            ignore_errors: false,
            action: Action::Shell(String::new()),
        }
    }

    #[test]
    fn the_mask_covers_scripts_outputs_and_errors_and_log_lines_are_picked_out() {
        let mask: Mask = Box::new(|s: &str| s.replace("s3cret", "********"));
        let mut r = Recorder::new(Record::default(), mask, false);
        r.begin_step(1, "users", "echo root:s3cret | chpasswd");
        let l = line(1, "echo s3cret");
        r.begin("users", &l);
        r.stdout(b"ImageStreamerLog: set password s3cret\n");
        r.end(&l, Some("failed with s3cret"), Duration::from_millis(3));
        r.end_step(Duration::from_millis(5));
        let json = serde_json::to_string(&r.record).unwrap();
        assert!(!json.contains("s3cret"), "{json}");
        assert_eq!(r.record.log, vec!["set password ********"]);
        assert_eq!(
            r.record.steps[0].lines[0].error.as_deref(),
            Some("failed with ********")
        );
    }
}
