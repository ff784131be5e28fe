//! Plan scripts and deployments: the guestfish-dialect interpreter, custom attributes, HPE's
//! artifacts (plan scripts, build plans, deployment plans, golden images, bundles), and the
//! deploy and capture pipelines that stand on them.
//!
//! Map of this directory:
//! - `script.rs`    the guestfish dialect: lines, quoting, heredocs, `-`, `!`, `<!`, `|` (pure)
//! - `commands.rs`  the command table: names, aliases, arguments, help text (pure)
//! - `format.rs`    guestfish's output formats (`ls`, `ll`, `statvfs`, `list-filesystems`…) (pure)
//! - `attrs.rs`     custom attributes: `@Name@`, `@Name:default@`, types, validation, masking (pure)
//! - `artifacts.rs` HPE's JSON artifacts, loaded and validated in one place
//! - `bundle.rs`    artifact bundles (zip or folder): checksums, manifest, golden-image payload
//! - `sandbox/`     host-side `!` commands: a scratch directory and an unprivileged sandbox
//! - `guest.rs`     the filesystem worker as the interpreter sees it
//! - `interp.rs`    runs one script against a guest, a sandbox and attribute values
//! - `lint.rs`      `strata script lint`: a script's problems, found without running it
//! - `record.rs`    the deployment record written beside a volume
//! - `deploy.rs`    clone or create a volume, run a build plan, keep the volume only on success
//! - `capture.rs`   snapshot a volume, generalize the copy, store the used blocks as an image
//!
//! Layers: everything here calls `fs` (through its worker), `disk` and `store`; nothing
//! below calls up into it.

pub mod artifacts;
pub mod attrs;
pub mod bundle;
pub mod capture;
pub mod commands;
pub mod deploy;
pub mod format;
pub mod guest;
pub mod interp;
pub mod lint;
pub mod record;
pub mod sandbox;
pub mod script;
