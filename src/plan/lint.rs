//! `strata script lint`: what is wrong with a plan script, found without running it.
//! Syntax (quotes, escapes, heredocs left open), commands strata does not know, argument
//! counts, guest paths that are not absolute, and the custom attributes the script uses.
//!
//! A script is linted as written, before attributes are substituted: a reference in a
//! command's place (`@DeploymentTesting:Fail_OS_Deployment@`, which HPE's bundles use to
//! fail a deployment on purpose) is reported as a note, since its value decides.
//!
//! An unknown command is a warning, not an error: it fails the run when it is reached,
//! which is what HPE's intentional-failure scripts (`Intentionally_Fail_OS_Deployment`)
//! are for. `--strict` makes warnings fail the lint.

use super::attrs::{self, Reference};
use super::commands::{self, Kind};
use super::interp;
use super::script::{Action, Arg};

#[derive(Debug, Default)]
pub struct Lint {
    /// (line, message): the script would fail here.
    pub errors: Vec<(usize, String)>,
    /// (line, message): the run would fail here if it is reached; maybe on purpose.
    pub warnings: Vec<(usize, String)>,
    /// (line, message): worth a look, not an error.
    pub notes: Vec<(usize, String)>,
    pub attributes: Vec<Reference>,
}

pub fn lint(text: &str) -> Lint {
    let mut out = Lint {
        attributes: attrs::references(text),
        ..Lint::default()
    };
    let parsed = interp::parse(text);
    for e in parsed.errors {
        out.errors.push((e.line, e.message));
    }
    for l in parsed.lines {
        let Action::Command(c) = &l.action else {
            continue;
        };
        if c.name.contains('@') {
            out.notes.push((
                l.number,
                format!(
                    "the command is a custom attribute ({}): its value decides what runs",
                    c.name
                ),
            ));
            continue;
        }
        let Some(spec) = commands::find(&c.name) else {
            out.warnings.push((
                l.number,
                format!("{}: unknown command (the run fails here)", c.name),
            ));
            continue;
        };
        let words: Vec<String> = c.args.iter().map(Arg::text).collect();
        match spec.split(&words) {
            Err(e) => out
                .errors
                .push((l.number, e.lines().take(2).collect::<Vec<_>>().join(": "))),
            Ok((pos, _)) => {
                for (i, (name, kind)) in spec.args.iter().enumerate() {
                    let a = pos[i];
                    if *kind == Kind::Path && !a.starts_with('/') && !a.contains('@') {
                        out.errors.push((
                            l.number,
                            format!("{}: {name} {a:?} must start with a / character", spec.name),
                        ));
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lint_finds_unknown_commands_bad_counts_relative_paths_and_open_heredocs() {
        let l = lint(
            "mount /dev/sda1 /\nfrobnicate /x\nmount /dev/sda1\nmkdir-p etc\n@Fail:Fail_OS_Deployment@\nupload -<<EOF /x\nno end\n",
        );
        let lines: Vec<usize> = l.errors.iter().map(|e| e.0).collect();
        assert_eq!(lines, vec![6, 3, 4], "{:?}", l.errors);
        assert_eq!(l.warnings.len(), 1);
        assert_eq!(l.warnings[0].0, 2);
        assert_eq!(l.notes.len(), 1);
        assert_eq!(l.notes[0].0, 5);
        assert_eq!(l.attributes.len(), 1);
    }

    #[test]
    fn every_plan_script_in_hpe_bundles_lints_clean() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/hpe-artifacts");
        let mut seen = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_none_or(|x| x != "zip") {
                continue;
            }
            let b = crate::plan::bundle::Bundle::open(&p).unwrap();
            for s in &b.artifacts().plan_scripts {
                let l = lint(&s.content);
                assert!(
                    l.errors.is_empty(),
                    "{}: {}: {:?}",
                    p.display(),
                    s.name,
                    l.errors
                );
                seen += 1;
            }
        }
        assert!(seen >= 25, "only {seen} scripts");
    }
}
