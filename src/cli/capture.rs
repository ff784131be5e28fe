//! `strata capture`: a volume becomes a golden image through a capture build plan. This
//! file owns the command's arguments, its checks before any work (volume there, image name
//! free, the plan a capture plan), the progress bar, the summary and the record written
//! beside the new image; the work is `strata::plan::capture`.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use strata::fs::worker::client::WorkerOptions;
use strata::plan::attrs::Builtins;
use strata::plan::capture;
use strata::plan::deploy::{self, RunOptions};
use strata::plan::record::{Record, Recorder};
use strata::plan::sandbox::SandboxOptions;
use strata::store::{Repository, StoreError};

use super::plan::values;
use super::progress::Bar;
use super::size::human;
use super::CliResult;

/// The capture's record, beside the new image's own files.
pub use strata::plan::capture::RECORD_FILE;

#[derive(Args)]
pub struct CaptureArgs {
    /// The OS volume to capture (never changed; it may stay exported and in use).
    pub volume: String,
    /// An HPE artifact bundle (.zip) or a folder of its files.
    #[arg(long, value_name = "BUNDLE_OR_DIR")]
    pub artifacts: PathBuf,
    /// The capture build plan (oeBuildPlanType "capture"), by name or id.
    #[arg(long)]
    pub plan: String,
    /// The new golden image's name.
    #[arg(long, value_name = "IMAGE")]
    pub name: String,
    /// A custom attribute value: NAME=VALUE, or NIC.field=VALUE (repeatable).
    #[arg(long = "attr", value_name = "NAME=VALUE")]
    pub attrs: Vec<String>,
    /// Custom attribute values from a JSON object file ({"Name": "v", "Nic": {...}}).
    #[arg(long = "attrs", value_name = "FILE.json")]
    pub attrs_file: Option<PathBuf>,
    /// Time limit of one host-side (`!`) command, in seconds.
    #[arg(long, default_value_t = 600)]
    pub shell_timeout: u64,
    /// Do not echo the scripts' output.
    #[arg(long, short)]
    pub quiet: bool,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn run(repo: &Repository, a: CaptureArgs) -> CliResult {
    let t0 = Instant::now();
    // Everything that can be refused is refused before the snapshot is taken.
    let vol = match repo.volume_meta(&a.volume) {
        Ok(v) => v,
        Err(StoreError::NotFound { .. }) => {
            return Err(format!(
                "there is no volume {:?} to capture (`strata volume ls` lists them)",
                a.volume
            )
            .into())
        }
        Err(e) => return Err(e.into()),
    };
    strata::store::names::validate(&a.name)?;
    if repo.image_meta(&a.name).is_ok() {
        return Err(format!(
            "image {:?} already exists; give another --name, or remove it first with `strata image rm {}`",
            a.name, a.name
        )
        .into());
    }
    let given = values(&a.attrs, a.attrs_file.as_deref())?;
    let bundle = deploy::load(&a.artifacts)?;
    let set = bundle.artifacts();
    let Some(bp) = set.build_plan(&a.plan) else {
        let captures: Vec<String> = set
            .build_plans
            .iter()
            .filter(|b| b.plan_type == "capture")
            .map(|b| format!("  {}", b.name))
            .collect();
        let what = if set.deployment_plan(&a.plan).is_some() {
            "a deployment plan but no build plan"
        } else {
            "no build plan"
        };
        return Err(format!(
            "{} has {what} {:?}; {}",
            a.artifacts.display(),
            a.plan,
            if captures.is_empty() {
                "it has no capture build plans at all".to_string()
            } else {
                format!("its capture build plans are:\n{}", captures.join("\n"))
            }
        )
        .into());
    };
    if bp.plan_type != "capture" {
        return Err(format!(
            "build plan {:?} is a {:?} build plan, not a capture one (oeBuildPlanType \"capture\"); \
             `strata capture` runs capture build plans, `strata deploy` runs deployment plans",
            bp.name, bp.plan_type
        )
        .into());
    }
    let plan = set.resolve_build_plan(bp).map_err(|e| e.to_string())?;
    let values = deploy::resolve_plan_attributes(&plan, None, &given, &Builtins::default())?;

    let mask_values = values.clone();
    let mut rec = Recorder::new(
        Record {
            kind: "capture".into(),
            volume: a.volume.clone(),
            build_plan: Some(bp.name.clone()),
            image: Some(a.name.clone()),
            attributes: values.listing(),
            started: now_secs(),
            ..Record::default()
        },
        Box::new(move |s: &str| mask_values.mask(s)),
        !a.quiet,
    );
    rec.record.timings_ms.prepare = t0.elapsed().as_millis() as u64;
    let run = RunOptions {
        worker: WorkerOptions::default(),
        sandbox: SandboxOptions {
            timeout: std::time::Duration::from_secs(a.shell_timeout),
            ..SandboxOptions::default()
        },
    };
    let bar = Bar::new("storing the image");
    let progress = |d: u64, t: u64| bar.update(d, t);
    let result = capture::capture_with_plan(
        repo, &a.volume, &a.name, &plan, &values, &run, &mut rec, &progress,
    );
    bar.finish();
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            return Err(format!(
                "capture of volume {:?} failed; no image {:?} was made and the volume is unchanged:\n{}",
                a.volume,
                a.name,
                values.mask(&e.to_string())
            )
            .into())
        }
    };
    rec.record.timings_ms.total = t0.elapsed().as_millis() as u64;
    rec.record.result = "succeeded".into();
    let record_path = repo
        .root()
        .join("images")
        .join(&report.image.name)
        .join(RECORD_FILE);
    // The image is made; a record that cannot be written is worth a warning, not a failure.
    let record_note = match rec.write_to(&record_path) {
        Ok(()) => format!("record {}", record_path.display()),
        Err(e) => {
            tracing::warn!(path = %record_path.display(), error = %e, "could not write the capture record");
            "no record written".to_string()
        }
    };
    let unread: Vec<&str> = report
        .keep
        .filesystems
        .iter()
        .filter(|f| f.error.is_some())
        .map(|f| f.device.as_str())
        .collect();
    eprintln!(
        "captured volume {:?} as image {:?} in {} ms: kept {} of {} ({} stored), generalization changed {}; {}{}",
        a.volume,
        report.image.name,
        rec.record.timings_ms.total,
        human(report.keep.kept_bytes()),
        human(vol.size),
        human(report.image.stored_bytes),
        human(report.changed_bytes),
        record_note,
        if unread.is_empty() {
            String::new()
        } else {
            format!(
                "\nnote: the used blocks of {} could not be read; kept whole",
                unread.join(", ")
            )
        }
    );
    Ok(())
}
