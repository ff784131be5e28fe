//! `strata deploy`, `strata capture`, `strata shell` and `strata script lint`: arguments,
//! progress and messages; the work is in `strata::plan`.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use strata::fs::worker::client::{Worker, WorkerOptions};
use strata::fs::worker::protocol::Source;
use strata::plan::attrs::{Builtins, Declaration, DeploymentValues, Initiator, Kind, Layers};
use strata::plan::deploy::{self, DeployOptions, SandboxHost};
use strata::plan::guest::Guest;
use strata::plan::interp::{self, Interp};
use strata::plan::record::{Record, Recorder};
use strata::plan::sandbox::{Sandbox, SandboxOptions, Scratch};
use strata::plan::script::{self, Action, Arg};
use strata::store::{OverlayDir, Repository};

use super::progress::Bar;
use super::CliResult;

#[derive(Args)]
pub struct DeployArgs {
    /// The new OS volume's name.
    pub volume: String,
    /// An HPE artifact bundle (.zip) or a folder of its files.
    #[arg(long, value_name = "BUNDLE_OR_DIR")]
    pub artifacts: PathBuf,
    /// The deployment plan, by name or id.
    #[arg(long)]
    pub plan: String,
    /// A custom attribute value: NAME=VALUE, or NIC.field=VALUE (repeatable).
    #[arg(long = "attr", value_name = "NAME=VALUE")]
    pub attrs: Vec<String>,
    /// Custom attribute values from a JSON object file ({"Name": "v", "Nic": {...}}).
    #[arg(long = "attrs", value_name = "FILE.json")]
    pub attrs_file: Option<PathBuf>,
    /// The server's iSCSI initiator name (recorded; with --export, the only one allowed).
    #[arg(long, value_name = "IQN")]
    pub initiator: Option<String>,
    /// The server's iSCSI boot NIC address: @_Initiator1.ip@.
    #[arg(long, value_name = "IPV4")]
    pub initiator_ip: Option<String>,
    /// Its netmask: @_Initiator1.netmask@.
    #[arg(long, value_name = "IPV4")]
    pub initiator_netmask: Option<String>,
    /// Its gateway: @_Initiator1.gateway@.
    #[arg(long, value_name = "IPV4")]
    pub initiator_gateway: Option<String>,
    /// Its MAC address: @_Initiator1.mac@.
    #[arg(long, value_name = "MAC")]
    pub initiator_mac: Option<String>,
    /// Export the volume to --initiator when it is deployed.
    #[arg(long, requires = "initiator")]
    pub export: bool,
    /// Time limit of one host-side (`!`) command, in seconds.
    #[arg(long, default_value_t = 600)]
    pub shell_timeout: u64,
    /// Do not echo the scripts' output.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct ShellArgs {
    /// The volume (or, with --image, golden image) to work on.
    pub name: String,
    /// NAME is a golden image.
    #[arg(long)]
    pub image: bool,
    /// Run this script instead of reading commands.
    #[arg(short = 'f', long = "file", value_name = "SCRIPT")]
    pub file: Option<PathBuf>,
    /// A custom attribute value for the script (NAME=VALUE; repeatable).
    #[arg(long = "attr", value_name = "NAME=VALUE")]
    pub attrs: Vec<String>,
    /// Apply the changes to the volume itself (default: a throwaway copy, discarded).
    #[arg(long)]
    pub write: bool,
}

#[derive(Subcommand)]
pub enum ScriptCmd {
    /// Check plan scripts without running them: syntax, unknown commands, heredocs left
    /// open, and the custom attributes they use. FILE is a script, a plan-script JSON, or
    /// a bundle (.zip or folder), whose every plan script is checked.
    Lint {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Warnings (unknown commands, which fail the run when reached) fail the lint too.
        #[arg(long)]
        strict: bool,
    },
}

pub(super) fn values(attrs: &[String], file: Option<&Path>) -> Result<DeploymentValues, String> {
    let mut v = DeploymentValues::new();
    if let Some(f) = file {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", f.display()))?;
        v.merge_json(&json)
            .map_err(|e| format!("{}: {e}", f.display()))?;
    }
    for a in attrs {
        v.set(a).map_err(|e| format!("--attr: {e}"))?;
    }
    Ok(v)
}

pub fn deploy(repo: &Repository, a: DeployArgs) -> CliResult {
    let given = values(&a.attrs, a.attrs_file.as_deref())?;
    let builtins = Builtins {
        initiator1: a.initiator_ip.as_ref().map(|ip| Initiator {
            ip: ip.clone(),
            mac: a.initiator_mac.clone().unwrap_or_default(),
            netmask: a.initiator_netmask.clone().unwrap_or_default(),
            gateway: a.initiator_gateway.clone().unwrap_or_default(),
        }),
        initiator2: None,
    };
    let bar = Bar::new("importing the golden image");
    let progress = |d: u64, t: u64| bar.update(d, t);
    let opts = DeployOptions {
        volume: a.volume.clone(),
        artifacts: a.artifacts.clone(),
        plan: a.plan.clone(),
        values: given,
        builtins,
        initiator: a.initiator.clone(),
        worker: WorkerOptions::default(),
        sandbox: SandboxOptions {
            timeout: std::time::Duration::from_secs(a.shell_timeout),
            ..SandboxOptions::default()
        },
        echo: !a.quiet,
    };
    match deploy::deploy(repo, opts, &progress) {
        Ok(d) => {
            bar.finish();
            let t = &d.record.timings_ms;
            eprintln!(
                "deployed volume {:?} ({} MiB{}) in {} ms: {} step(s), record {}",
                d.volume.name,
                d.volume.size >> 20,
                d.volume
                    .image
                    .as_ref()
                    .map(|i| format!(", from image {i:?}"))
                    .unwrap_or_default(),
                t.total,
                d.record.steps.len(),
                repo.root()
                    .join("volumes")
                    .join(&d.volume.name)
                    .join(deploy::RECORD_FILE)
                    .display()
            );
            if a.export {
                let iqn = a.initiator.clone().unwrap_or_default();
                super::iscsi::export(
                    repo,
                    super::iscsi::ExportArgs {
                        cmd: None,
                        add: super::iscsi::ExportAdd {
                            volume: Some(d.volume.name.clone()),
                            initiators: vec![iqn],
                            iqn: None,
                            chap_user: None,
                            chap_secret: None,
                            mutual_user: None,
                            mutual_secret: None,
                            weak_secret: false,
                            wait: 15,
                        },
                    },
                )?;
            }
            Ok(())
        }
        Err(f) => {
            bar.finish();
            Err(format!(
                "deployment of {:?} failed; no volume was made:\n{}",
                a.volume, f.error
            )
            .into())
        }
    }
}

pub fn lint(cmd: ScriptCmd) -> CliResult {
    let ScriptCmd::Lint { files, strict } = cmd;
    let mut bad = 0;
    let mut report = |name: &str, text: &str| {
        let l = strata::plan::lint::lint(text);
        for (line, e) in &l.errors {
            println!("{name}:{line}: error: {e}");
        }
        for (line, w) in &l.warnings {
            println!("{name}:{line}: warning: {w}");
        }
        for (line, n) in &l.notes {
            println!("{name}:{line}: note: {n}");
        }
        let mut names: Vec<String> = l.attributes.iter().map(|r| r.key()).collect();
        names.sort();
        names.dedup();
        if l.errors.is_empty() && !(strict && !l.warnings.is_empty()) {
            println!(
                "{name}: ok{}",
                if names.is_empty() {
                    String::new()
                } else {
                    format!("; attributes: {}", names.join(", "))
                }
            );
        } else {
            bad += 1;
        }
    };
    for f in &files {
        let is_bundle = f.is_dir() || f.extension().is_some_and(|e| e == "zip");
        if is_bundle {
            let b = strata::plan::bundle::Bundle::open(f)?;
            for s in &b.artifacts().plan_scripts {
                report(&format!("{}: {}", f.display(), s.name), &s.content);
            }
            continue;
        }
        let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        // A plan script's JSON carries the script in `content`.
        let content = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("content").and_then(|c| c.as_str()).map(String::from));
        report(
            &f.display().to_string(),
            content.as_deref().unwrap_or(&text),
        );
    }
    if bad > 0 {
        return Err(format!("{bad} script(s) have errors").into());
    }
    Ok(())
}

/// What a shell session works on, and how its changes end.
enum Target {
    /// A staged clone, never published: dropped at the end.
    Throwaway(strata::store::StagedVolume),
    /// The volume itself: committed at the end.
    Volume,
    /// A snapshot of a volume and the overlay over it: both dropped at the end (the
    /// overlay's directory removed, the snapshot's pin released).
    Copy(Box<strata::store::Snapshot>, OverlayDir),
}

pub fn shell(repo: &Repository, a: ShellArgs) -> CliResult {
    let (source, target) = if a.image {
        let staged = repo.stage_volume(
            &format!("shell-{}", std::process::id()),
            Some(&a.name),
            None,
        )?;
        let src = Source::Staged {
            repo: repo.root().to_path_buf(),
            dir: staged.dir().to_path_buf(),
            name: format!("throwaway clone of image {}", a.name),
        };
        (src, Target::Throwaway(staged))
    } else if a.write {
        let src = Source::Volume {
            repo: repo.root().to_path_buf(),
            name: a.name.clone(),
        };
        (src, Target::Volume)
    } else {
        // A snapshot of the volume's committed state with a private overlay on it: the
        // volume is never written (it may stay exported and busy), and the copy costs
        // only what the session writes.
        let snap = repo.snapshot_volume(&a.name)?;
        let scratch = repo.scratch_dir("shell")?;
        let overlay = match OverlayDir::create(&scratch, snap.volume().len()) {
            Ok(d) => d,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&scratch);
                return Err(e.into());
            }
        };
        let src = Source::Snapshot {
            repo: repo.root().to_path_buf(),
            volume: a.name.clone(),
            snapshot: snap.id().to_string(),
            overlay: Some(overlay.path().to_path_buf()),
        };
        (src, Target::Copy(Box::new(snap), overlay))
    };
    let worker = Worker::start(source, false, &WorkerOptions::default())?;
    let mut guest = Guest::new(worker);
    let scratch = Scratch::in_temp_dir()?;
    let sandbox = Sandbox::new(&scratch, SandboxOptions::default())?;
    let mut host = SandboxHost {
        scratch: &scratch,
        sandbox,
    };
    // Values given here are plain strings, declared as a build plan would declare them;
    // a script's own `@Name:default@` fills the rest.
    let mut decls = Vec::new();
    for a in &a.attrs {
        let (n, v) = a
            .split_once('=')
            .ok_or_else(|| format!("--attr {a:?}: expected NAME=VALUE"))?;
        decls.push(
            Declaration::new(n, Kind::String, Some(v), serde_json::json!({}))
                .map_err(|e| format!("--attr {n}: {e}"))?,
        );
    }
    let none = DeploymentValues::new();
    let builtins = Builtins::default();
    let mut rec = Recorder::new(Record::default(), Box::new(|s: &str| s.to_string()), true);
    let expand = |text: &str| -> Result<String, String> {
        let scripts = [strata::plan::attrs::Script {
            name: "shell",
            text,
        }];
        let values = strata::plan::attrs::resolve(&Layers {
            scripts: &scripts,
            build_plan: &decls,
            deployment_plan: &[],
            deployment: &none,
            builtins: &builtins,
        })
        .map_err(|e| e.to_string())?;
        values.expand_script(None, text).map_err(|e| e.to_string())
    };
    let result = match &a.file {
        Some(f) => {
            let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
            let text = expand(&text)?;
            let name = f.display().to_string();
            Interp::new(&mut guest, &mut host, &mut rec, name)
                .run_text(&text)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        None => {
            interactive(&mut guest, &mut host, &mut rec, &expand);
            Ok(())
        }
    };
    match (result, target) {
        (Err(e), _) => {
            guest.abandon();
            Err(format!("{e}\nnothing was changed").into())
        }
        (Ok(()), Target::Volume) => {
            guest.commit()?;
            eprintln!("changes written to volume {:?}", a.name);
            Ok(())
        }
        (Ok(()), Target::Throwaway(staged)) => {
            guest.abandon();
            drop(staged);
            eprintln!("the throwaway copy is gone; nothing was changed");
            Ok(())
        }
        (Ok(()), Target::Copy(snap, overlay)) => {
            // The worker lets go of the overlay before its directory is removed.
            guest.abandon();
            drop(overlay);
            drop(snap);
            eprintln!("the throwaway copy is gone; nothing was changed");
            Ok(())
        }
    }
}

/// Where an interactive session's lines come from: a terminal (line editing, and a history
/// kept in `~/.strata_shell_history`) or a pipe.
enum Lines {
    Terminal(Box<rustyline::DefaultEditor>, Option<PathBuf>),
    Piped(std::io::Lines<std::io::StdinLock<'static>>),
}

impl Lines {
    fn open() -> Lines {
        if std::io::stdin().is_terminal() {
            if let Ok(mut ed) = rustyline::DefaultEditor::new() {
                let history = std::env::var_os("HOME")
                    .map(|h| PathBuf::from(h).join(".strata_shell_history"));
                if let Some(h) = &history {
                    let _ = ed.load_history(h);
                }
                return Lines::Terminal(Box::new(ed), history);
            }
        }
        Lines::Piped(std::io::stdin().lock().lines())
    }

    fn next(&mut self, prompt: &str) -> Option<String> {
        match self {
            Lines::Terminal(ed, _) => match ed.readline(prompt) {
                Ok(l) => {
                    if !l.trim().is_empty() {
                        let _ = ed.add_history_entry(l.as_str());
                    }
                    Some(l)
                }
                Err(_) => None,
            },
            Lines::Piped(l) => l.next().and_then(Result::ok),
        }
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        if let Lines::Terminal(ed, Some(h)) = self {
            let _ = ed.save_history(h);
        }
    }
}

/// Reads commands from the terminal (or stdin) and runs each; a failure is shown and the
/// session goes on, as interactive guestfish does.
fn interactive(
    guest: &mut Guest,
    host: &mut SandboxHost,
    rec: &mut Recorder,
    expand: &dyn Fn(&str) -> Result<String, String>,
) {
    let mut lines = Lines::open();
    if matches!(lines, Lines::Terminal(..)) {
        eprintln!("strata shell: guestfish commands; `help` lists them, `quit` ends (changes kept only with --write)");
    }
    let mut number = 0;
    loop {
        let Some(raw) = lines.next("><strata> ") else {
            break;
        };
        number += 1;
        let text = match expand(&raw) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{e}");
                continue;
            }
        };
        let parsed = match script::parse_line(&text, number, &interp::file_in) {
            Ok(Some(l)) => l,
            Ok(None) => continue,
            Err(e) => {
                eprintln!("guestfish: {e}");
                continue;
            }
        };
        // A heredoc's body comes from the next lines (attributes substituted, as in a
        // script).
        let mut l = parsed;
        if let Action::Command(c) = &mut l.action {
            for arg in c.args.iter_mut() {
                if let Arg::Heredoc { tag, content } = arg {
                    while let Some(body) = lines.next("") {
                        number += 1;
                        if body == *tag {
                            break;
                        }
                        let body = expand(&body).unwrap_or(body);
                        content.extend_from_slice(body.as_bytes());
                        content.push(b'\n');
                    }
                }
            }
        }
        let mut one = Interp::new(guest, host, rec, "shell");
        match one.run_lines(std::slice::from_ref(&l)) {
            Ok(interp::Ended::Quit) => break,
            Ok(interp::Ended::Done) => {}
            Err(e) => eprintln!("libguestfs: error: {}", e.message),
        }
    }
}
