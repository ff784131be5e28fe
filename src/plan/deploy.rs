//! A deployment: from a deployment plan in a bundle (or a folder of artifacts) to a
//! personalized OS volume, or to nothing at all.
//!
//! 1. The artifacts are loaded and checked; the plan is resolved to its build plan, its
//!    scripts in step order and its golden image (none: an empty volume of `VolumeSize`).
//! 2. Attributes are resolved and validated across the four layers, all errors at once.
//! 3. The golden image is imported from the bundle if the store lacks it (once; later
//!    deployments reuse it).
//! 4. The volume is made out of sight (`Repository::stage_volume`): a clone, no data copied.
//! 5. One filesystem worker opens it; each script runs in order, its host-side lines in one
//!    sandbox over one scratch directory that lives for the whole build plan.
//! 6. Only when every script has succeeded is the worker told to commit (one flush), the
//!    record written beside the volume, and the volume published under its name. Any
//!    failure before that, a `kill -9` included, leaves no volume (the staged one is removed
//!    by its drop, or by the next open of the repository).

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::fs::worker::client::{Worker, WorkerOptions};
use crate::fs::worker::protocol::Source;
use crate::store::transfer::Progress;
use crate::store::{Repository, VolumeMeta};

use super::artifacts::{ResolvedBuildPlan, ResolvedDeployment};
use super::attrs::{self, Builtins, Declaration, DeploymentValues, Layers, Values, VolumePlan};
use super::bundle::{self, Bundle};
use super::guest::Guest;
use super::interp::{Host, Interp, ShellOutput};
use super::record::{Record, Recorder};
use super::sandbox::{Sandbox, SandboxOptions, Scratch};

/// The record's file name, beside the volume's own files.
pub const RECORD_FILE: &str = "deployment.json";

pub struct DeployOptions {
    /// The new volume's name.
    pub volume: String,
    /// A bundle zip or a folder of artifacts.
    pub artifacts: PathBuf,
    /// The deployment plan (name or id).
    pub plan: String,
    pub values: DeploymentValues,
    pub builtins: Builtins,
    /// The server's initiator IQN (recorded; the CLI exports to it).
    pub initiator: Option<String>,
    pub worker: WorkerOptions,
    pub sandbox: SandboxOptions,
    /// Echo scripts' output to the terminal as they run.
    pub echo: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("{0}")]
    Artifacts(String),
    #[error("custom attributes:\n{0}")]
    Attributes(String),
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Failed(String),
}

pub struct Deployed {
    pub volume: VolumeMeta,
    pub record: Record,
}

/// A deployment that failed: why, and what it did up to then (for the caller to show).
pub struct DeployFailure {
    pub error: DeployError,
    pub record: Option<Record>,
}

impl<E: Into<DeployError>> From<E> for DeployFailure {
    fn from(e: E) -> DeployFailure {
        DeployFailure {
            error: e.into(),
            record: None,
        }
    }
}

/// The host side of a run: the sandbox over the run's scratch directory.
pub struct SandboxHost<'a> {
    pub scratch: &'a Scratch,
    pub sandbox: Sandbox<'a>,
}

impl Host for SandboxHost<'_> {
    fn shell(&mut self, command: &str, stdin: Option<&[u8]>) -> Result<ShellOutput, String> {
        let o = self
            .sandbox
            .run(command, stdin)
            .map_err(|e| e.to_string())?;
        let mut note = None;
        if o.timed_out {
            note = Some("the shell command ran past its time limit and was killed".to_string());
        }
        let status = match o.status {
            super::sandbox::ShellStatus::Exited(c) => Some(c),
            super::sandbox::ShellStatus::Signaled(_) => None,
        };
        Ok(ShellOutput {
            status,
            stdout: o.stdout,
            stderr: o.stderr,
            note,
        })
    }

    fn local(&mut self, path: &str) -> Result<PathBuf, String> {
        self.scratch.resolve(path).map_err(|e| e.to_string())
    }

    fn open_read(&mut self, path: &str) -> Result<std::fs::File, String> {
        self.scratch.open_read(path).map_err(|e| e.to_string())
    }

    fn create(&mut self, path: &str) -> Result<std::fs::File, String> {
        self.scratch.create(path).map_err(|e| e.to_string())
    }
}

/// Loads a bundle or a folder of artifacts, refusing one whose artifacts do not hold
/// together.
pub fn load(path: &Path) -> Result<Bundle, DeployError> {
    let b = Bundle::open(path).map_err(|e| DeployError::Artifacts(e.to_string()))?;
    // Each warning names the bundle or the artifact already.
    for w in b.warnings() {
        tracing::warn!("{w}");
    }
    let report = b.artifacts().validate();
    if !report.is_ok() {
        return Err(DeployError::Artifacts(format!(
            "the artifacts in {} do not hold together:\n{}",
            path.display(),
            report
        )));
    }
    Ok(b)
}

fn declarations(raw: Option<&Vec<serde_json::Value>>) -> Result<Vec<Declaration>, DeployError> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    Declaration::list_from_json(&serde_json::Value::Array(raw.clone()))
        .map_err(|e| DeployError::Attributes(e.to_string()))
}

/// Resolves and validates the attributes of a resolved deployment plan.
pub fn resolve_attributes(
    r: &ResolvedDeployment,
    values: &DeploymentValues,
    builtins: &Builtins,
) -> Result<Values, DeployError> {
    resolve_plan_attributes(&r.build_plan, Some(r.deployment_plan), values, builtins)
}

/// Resolves and validates the attributes of a build plan, run on its own (a capture) or
/// under a deployment plan.
pub fn resolve_plan_attributes(
    plan: &ResolvedBuildPlan,
    deployment_plan: Option<&super::artifacts::OeDeploymentPlan>,
    values: &DeploymentValues,
    builtins: &Builtins,
) -> Result<Values, DeployError> {
    let scripts: Vec<attrs::Script> = plan
        .steps
        .iter()
        .map(|(_, s)| attrs::Script {
            name: &s.name,
            text: &s.content,
        })
        .collect();
    let bp = declarations(plan.build_plan.custom_attributes.get())?;
    let dp = match deployment_plan {
        Some(d) => declarations(d.custom_attributes.get())?,
        None => Vec::new(),
    };
    attrs::resolve(&Layers {
        scripts: &scripts,
        build_plan: &bp,
        deployment_plan: &dp,
        deployment: values,
        builtins,
    })
    .map_err(|e| DeployError::Attributes(e.to_string()))
}

/// Runs a deployment. On failure nothing is left in the repository but, maybe, a golden
/// image imported from the bundle (kept for the next try). `progress` reports that
/// import, when there is one.
pub fn deploy(
    repo: &Repository,
    opts: DeployOptions,
    progress: Progress,
) -> Result<Deployed, DeployFailure> {
    let t0 = Instant::now();
    let b = load(&opts.artifacts)?;
    let image = |gi: &str, progress: Progress| ensure_image(repo, &b, gi, progress);
    deploy_set(repo, b.artifacts(), &image, opts, t0, progress)
}

/// The store's image of a golden image (by its name), made available on demand (imported
/// from a bundle, looked up in a catalog): what [`deploy_set`] asks for.
pub type ImageFor<'a> = &'a dyn Fn(&str, Progress) -> Result<String, DeployError>;

/// Runs a deployment of `opts.plan` from the artifacts `set` (`opts.artifacts` is not
/// read): `image_for` gives the store's image of the plan's golden image. Otherwise as
/// [`deploy`]; `t0` is when the deployment began (for the record's timings).
// The failure carries the record so far, as `deploy`'s does.
#[allow(clippy::result_large_err)]
pub fn deploy_set(
    repo: &Repository,
    set: &super::artifacts::ArtifactSet,
    image_for: ImageFor<'_>,
    opts: DeployOptions,
    t0: Instant,
    progress: Progress,
) -> Result<Deployed, DeployFailure> {
    let r = set
        .resolve(&opts.plan)
        .map_err(|e| DeployError::Artifacts(e.to_string()))?;
    let values = resolve_attributes(&r, &opts.values, &opts.builtins)?;
    let (from, size) = match values
        .volume_plan(r.golden_image_name.is_some())
        .map_err(|e| DeployError::Attributes(e.to_string()))?
    {
        VolumePlan::GoldenImage => {
            let gi = r.golden_image_name.as_deref().ok_or_else(|| {
                DeployError::Artifacts("the deployment plan names no golden image".into())
            })?;
            (Some(image_for(gi, progress)?), None)
        }
        VolumePlan::Empty { bytes } => (None, Some(bytes)),
    };
    let staged = repo.stage_volume(&opts.volume, from.as_deref(), size)?;

    let mask_values = values.clone();
    let mut rec = Recorder::new(
        Record {
            kind: "deployment".into(),
            volume: opts.volume.clone(),
            deployment_plan: Some(r.deployment_plan.name.clone()),
            build_plan: Some(r.build_plan.build_plan.name.clone()),
            golden_image: r.golden_image_name.clone(),
            image: from.clone(),
            initiator: opts.initiator.clone(),
            attributes: values.listing(),
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            ..Record::default()
        },
        Box::new(move |s: &str| mask_values.mask(s)),
        opts.echo,
    );
    rec.record.timings_ms.prepare = t0.elapsed().as_millis() as u64;

    let source = Source::Staged {
        repo: repo.root().to_path_buf(),
        dir: staged.dir().to_path_buf(),
        name: opts.volume.clone(),
    };
    let run = RunOptions {
        worker: opts.worker.clone(),
        sandbox: opts.sandbox.clone(),
    };
    let result = run_build_plan(source, &r.build_plan, &values, &run, &mut rec);
    let t_commit = Instant::now();
    let outcome = result.and_then(|guest| {
        guest
            .commit()
            .map_err(|e| DeployError::Failed(values.mask(&format!("writing the volume back: {e}"))))
    });
    rec.record.timings_ms.commit = t_commit.elapsed().as_millis() as u64;
    rec.record.timings_ms.total = t0.elapsed().as_millis() as u64;
    if let Err(e) = outcome {
        rec.record.result = "failed".into();
        rec.record.error = Some(values.mask(&e.to_string()));
        return Err(DeployFailure {
            error: e,
            record: Some(rec.record),
        });
    }
    rec.record.result = "succeeded".into();
    rec.write_to(&staged.dir().join(RECORD_FILE))
        .map_err(|e| DeployError::Failed(format!("writing the deployment record: {e}")))?;
    let volume = repo.publish_volume(staged)?;
    Ok(Deployed {
        volume,
        record: rec.record,
    })
}

/// The store's image for a bundle's golden image, imported from the bundle's payload the
/// first time.
pub fn ensure_image(
    repo: &Repository,
    b: &Bundle,
    golden_image: &str,
    progress: Progress,
) -> Result<String, DeployError> {
    let name = bundle::store_name_for(golden_image);
    if repo.image_meta(&name).is_ok() {
        return Ok(name);
    }
    if !b.has_payload(golden_image) {
        return Err(DeployError::Artifacts(format!(
            "the store has no image {name:?} for golden image {golden_image:?}, and {} does not carry its disk; import it with `strata image import {name} DISK`",
            b.path().display()
        )));
    }
    match b.import_golden_image(repo, golden_image, &name, progress) {
        Ok(_) => Ok(name),
        // Another deployment imported it meanwhile.
        Err(bundle::BundleError::ImageExists { .. }) => Ok(name),
        Err(e) => Err(DeployError::Artifacts(e.to_string())),
    }
}

/// How a build plan's scripts run: the worker's and the sandbox's limits.
#[derive(Clone)]
pub struct RunOptions {
    pub worker: WorkerOptions,
    pub sandbox: SandboxOptions,
}

/// Runs a resolved build plan's scripts, in step order, against the disk `source` names:
/// one worker for all of them, one sandbox over one scratch directory that lives for the
/// whole plan. Returns the guest, not yet committed: the caller commits it (one flush) when
/// the rest of its job has succeeded too, or abandons it. Deployments and captures both
/// run their plans through here.
pub fn run_build_plan(
    source: Source,
    plan: &ResolvedBuildPlan,
    values: &Values,
    opts: &RunOptions,
    rec: &mut Recorder,
) -> Result<Guest, DeployError> {
    let t = Instant::now();
    let worker = Worker::start(source, false, &opts.worker)
        .map_err(|e| DeployError::Failed(e.to_string()))?;
    let mut guest = Guest::new(worker);
    let scratch = Scratch::in_temp_dir()
        .map_err(|e| DeployError::Failed(format!("making the scratch directory: {e}")))?;
    let sandbox = Sandbox::new(&scratch, opts.sandbox.clone())
        .map_err(|e| DeployError::Failed(format!("preparing the sandbox: {e}")))?;
    let mut host = SandboxHost {
        scratch: &scratch,
        sandbox,
    };
    for (step, script) in &plan.steps {
        let text = values
            .expand_script(Some(&script.name), &script.content)
            .map_err(|e| DeployError::Attributes(e.to_string()))?;
        let serial = step.serial().unwrap_or(0) as u32;
        rec.begin_step(serial, &script.name, &text);
        let started = Instant::now();
        let run = Interp::new(&mut guest, &mut host, rec, script.name.clone()).run_text(&text);
        rec.end_step(started.elapsed());
        if let Err(e) = run {
            guest.abandon();
            return Err(DeployError::Failed(values.mask(&format!(
                "build plan step {serial}, plan script {:?}, line {}: {}: {}",
                e.script, e.line, e.text, e.message
            ))));
        }
    }
    rec.record.timings_ms.scripts = t.elapsed().as_millis() as u64;
    Ok(guest)
}
