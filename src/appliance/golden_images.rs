//! Golden images in and out of the appliance, as Image Streamer's upload and download do
//! them.
//!
//! In: a raw disk is stored as it arrives (`Repository::import_raw_stream`); a zip (HPE's
//! form: one raw disk inside) or a qcow2 (or another format `qemu-img` converts) is first
//! spooled into the repository's `tmp/` (sparse), then imported by
//! `plan::bundle::import_payload` or the store's importer. The store's
//! image is named after the new catalog id (`gi-<id>`), so names never collide; the catalog
//! row is written last, and if it is refused the image goes again. Out: a zip of one raw
//! disk, written with the zip crate's streaming writer (so the output need not seek: an
//! HTTP body), zip64 when the disk is 4 GiB or more, unstored chunks fed as zeros without
//! reading them.

use std::io::{Read, Write};

use serde_json::{json, Value};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use super::error::{ApplianceError, Result};
use super::spool::{spool, Scratch};
use super::{percent, Progress};
use crate::catalog::{new_id, Catalog, CatalogError};
use crate::plan::artifacts::ArtifactKind;
use crate::plan::bundle;
use crate::store::{transfer, Repository, SourceFormat, StoreError};

/// Prefix of the store's image names of golden images made by the appliance.
pub const STORE_PREFIX: &str = "gi-";

/// The store's image name for the golden image with catalog id `id`.
pub fn store_name(id: &str) -> String {
    format!("{STORE_PREFIX}{id}")
}

/// Checks that golden image `key`'s disk, the store's image `store`, is in this node's
/// repository. With a catalog several nodes share, every node sees every golden image, but
/// its disk stays in the store of the node it was uploaded to: using it elsewhere fails
/// with [`ApplianceError::Elsewhere`], saying so.
pub fn disk_is_here(repo: &Repository, key: &str, store: &str) -> Result<()> {
    match repo.image_meta(store) {
        Ok(_) => Ok(()),
        Err(StoreError::NotFound { .. }) => Err(ApplianceError::Elsewhere(format!(
            "golden image {key:?} is in the catalog, but its disk (store image {store:?}) is \
             not in this node's repository {}: it is on another strata node sharing the \
             catalog. Deploy or download it on that node, or bring it here in an artifact \
             bundle",
            repo.root().display()
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Whether `magic` (a file's first bytes) starts a zip archive (a local header, or the
/// end record of an empty one).
pub fn is_zip(magic: &[u8]) -> bool {
    magic.starts_with(b"PK\x03\x04") || magic.starts_with(b"PK\x05\x06")
}

/// Reads up to `buf.len()` bytes (fewer only at the input's end).
fn read_head(input: &mut dyn Read, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ApplianceError::Upload(e)),
        }
    }
    Ok(n)
}

/// A reader that keeps its first error, so that a failed import can say whether the
/// upload broke off (the client's fault) or the store failed.
struct Watched<'a> {
    inner: &'a mut dyn Read,
    failed: Option<std::io::Error>,
}

impl Read for Watched<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf).inspect_err(|e| {
            if e.kind() != std::io::ErrorKind::Interrupted && self.failed.is_none() {
                self.failed = Some(std::io::Error::new(e.kind(), e.to_string()));
            }
        })
    }
}

/// Fails with a conflict when the catalog already has a golden image called `name`.
pub(crate) fn check_name_free(catalog: &Catalog, name: &str) -> Result<()> {
    let page = catalog.list_artifacts(
        ArtifactKind::GoldenImage,
        &crate::catalog::ListQuery::default(),
    )?;
    if page.members.iter().any(|m| m["name"] == name) {
        return Err(CatalogError::Conflict {
            what: "golden image",
            detail: format!("a golden image named {name:?} exists already; choose another name"),
        }
        .into());
    }
    Ok(())
}

/// Uploads a golden image called `name`: `input` is a zip holding one raw disk (HPE's
/// form) or a disk image (raw or qcow2). Returns the catalog's JSON of the new golden
/// image. Nothing is held whole in memory; on any failure nothing is left (no store image,
/// no row). Long: run it as a task.
pub fn upload_golden_image(
    catalog: &Catalog,
    repo: &Repository,
    name: &str,
    description: &str,
    mut input: impl Read,
    progress: Progress,
) -> Result<Value> {
    if name.trim().is_empty() {
        return Err(ApplianceError::Invalid(
            "a golden image needs a name".into(),
        ));
    }
    check_name_free(catalog, name)?;
    progress(0, "receiving the image");
    let mut head = [0u8; 8];
    let n = read_head(&mut input, &mut head)?;
    if n == 0 {
        return Err(ApplianceError::Invalid(
            "the upload is empty: expected a zip holding one raw disk, or a disk image".into(),
        ));
    }
    let mut input = (&head[..n]).chain(input);
    let id = new_id();
    let store_as = store_name(&id);
    let meta = if is_zip(&head[..n]) || transfer::foreign_format(&head[..n]).is_some() {
        // A zip's directory is at its end and qemu-img converts from a file: spooled.
        let scratch = Scratch::new(repo, "upload")?;
        let up = spool(&mut input, scratch.path(), "upload", &|n| {
            progress(0, &format!("received {} MiB", n >> 20))
        })?;
        let import_progress = |d: u64, t: u64| progress(percent(d, t, 5, 95), "importing the disk");
        if is_zip(&up.magic) {
            bundle::import_payload(repo, up.file, name, &store_as, &import_progress)?
        } else {
            drop(up.file);
            repo.import_image(&store_as, &up.path, SourceFormat::Auto, &import_progress)?
        }
    } else {
        // A raw disk is stored as it arrives (its size is known only at the end).
        let mut watched = Watched {
            inner: &mut input,
            failed: None,
        };
        let r = repo.import_raw_stream(&store_as, &mut watched, "the upload", &|n| {
            progress(0, &format!("received and stored {} MiB", n >> 20))
        });
        match (r, watched.failed) {
            (Ok(meta), _) => meta,
            (Err(_), Some(e)) => return Err(ApplianceError::Upload(e)),
            (Err(e), None) => return Err(e.into()),
        }
    };
    progress(96, "recording the golden image");
    let body = json!({
        "id": id,
        "name": name,
        "description": description,
        "size": meta.virtual_size,
        "imageCapture": false,
    });
    match catalog.create_golden_image(body, &store_as) {
        Ok(v) => {
            progress(100, "uploaded");
            Ok(v)
        }
        Err(e) => {
            if let Err(e2) = repo.remove_image(&store_as) {
                tracing::warn!("removing image {store_as:?} after a refused upload: {e2}");
            }
            Err(e.into())
        }
    }
}

/// Writes the golden image `key` (name, id or URI) to `out` as a zip holding its one raw
/// disk (named after the image's id), streamed: `out` need not seek. Returns the bytes of
/// the raw disk. Long for a large image, but it is the response body: the API streams it
/// from a blocking thread rather than making a task.
pub fn download_golden_image(
    catalog: &Catalog,
    repo: &Repository,
    key: &str,
    out: impl Write,
    progress: Progress,
) -> Result<u64> {
    let gi = catalog.get_artifact(ArtifactKind::GoldenImage, key)?;
    let id = gi["id"].as_str().unwrap_or_default().to_owned();
    let store = catalog.golden_image_store_name(key)?.ok_or_else(|| {
        ApplianceError::Invalid(format!(
            "golden image {key:?} has no disk in the store (its description only)"
        ))
    })?;
    disk_is_here(repo, key, &store)?;
    let img = repo.open_image(&store)?;
    let len = img.len();
    let cs = img.chunk_size() as u64;
    let dl = |e: &dyn std::fmt::Display| ApplianceError::Download(e.to_string());
    let mut zip = ZipWriter::new_stream(out);
    let opts = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .compression_level(Some(1))
        .large_file(len >= u32::MAX as u64);
    zip.start_file(id.as_str(), opts).map_err(|e| dl(&e))?;
    let reader = format!("download of golden image {key:?}");
    let mut buf = vec![0u8; cs as usize];
    let zeros = vec![0u8; cs as usize];
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(cs) as usize;
        if img.chunk_is_stored(off / cs) {
            img.read_at(&mut buf[..n], off, &reader)?;
            zip.write_all(&buf[..n]).map_err(|e| dl(&e))?;
        } else {
            zip.write_all(&zeros[..n]).map_err(|e| dl(&e))?;
        }
        off += n as u64;
        progress(percent(off, len, 0, 99), "sending the disk");
    }
    zip.finish().map_err(|e| dl(&e))?;
    progress(100, "sent");
    Ok(len)
}

/// What to capture, as Image Streamer's `POST /rest/golden-images` asks for it.
#[derive(Clone, Default)]
pub struct CaptureRequest {
    /// The new golden image's name.
    pub name: String,
    pub description: String,
    /// The OS volume: name, id or `/rest/os-volumes/<id>`.
    pub os_volume: String,
    /// The capture build plan: name, id or `/rest/build-plans/<id>`.
    pub build_plan: String,
    pub values: crate::plan::attrs::DeploymentValues,
    pub worker: crate::fs::worker::client::WorkerOptions,
    pub sandbox: crate::plan::sandbox::SandboxOptions,
}

/// Captures an OS volume as a new golden image through a capture build plan of the
/// catalog: the pipeline `strata capture` runs (`plan::capture::capture_with_plan`; the
/// volume is never written), the image stored as `gi-<id>` with the capture's record (its
/// log) beside it, the row written last. Returns the golden image's JSON. On failure
/// nothing is left. Long: run it as a task.
pub fn capture_golden_image(
    catalog: &Catalog,
    repo: &Repository,
    req: CaptureRequest,
    progress: Progress,
) -> Result<Value> {
    use crate::plan::attrs::Builtins;
    use crate::plan::deploy::{resolve_plan_attributes, RunOptions};
    use crate::plan::record::{Record, Recorder};

    let name = req.name.trim().to_owned();
    if name.is_empty() {
        return Err(ApplianceError::Invalid(
            "a golden image needs a name".into(),
        ));
    }
    check_name_free(catalog, &name)?;
    progress(0, "resolving the OS volume and the build plan");
    let vol = catalog.get_os_volume(&req.os_volume)?;
    let store_volume = catalog.os_volume_store_name(&req.os_volume)?;
    let bp = catalog.get_artifact(ArtifactKind::BuildPlan, &req.build_plan)?;
    let bp_id = bp["buildPlanid"].as_str().unwrap_or_default().to_owned();
    let set = catalog.artifact_set()?;
    let plan_art = set.build_plan(&bp_id).ok_or_else(|| {
        ApplianceError::Invalid(format!(
            "build plan {:?} is not in the catalog",
            req.build_plan
        ))
    })?;
    if plan_art.plan_type != "capture" {
        return Err(ApplianceError::Invalid(format!(
            "build plan {:?} is a {:?} build plan, not a capture one (oeBuildPlanType \
             \"capture\"): a golden image is captured through a capture build plan",
            plan_art.name, plan_art.plan_type
        )));
    }
    let plan = set
        .resolve_build_plan(plan_art)
        .map_err(|e| ApplianceError::Invalid(e.to_string()))?;
    let values = resolve_plan_attributes(&plan, None, &req.values, &Builtins::default())
        .map_err(|e| ApplianceError::Invalid(e.to_string()))?;
    let id = new_id();
    let store_as = store_name(&id);
    let mask_values = values.clone();
    let vol_name = vol["name"].as_str().unwrap_or_default().to_owned();
    let mut rec = Recorder::new(
        Record {
            kind: "capture".into(),
            volume: vol_name.clone(),
            build_plan: Some(plan_art.name.clone()),
            image: Some(name.clone()),
            attributes: values.listing(),
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            ..Record::default()
        },
        Box::new(move |s: &str| mask_values.mask(s)),
        false,
    );
    let run = RunOptions {
        worker: req.worker,
        sandbox: req.sandbox,
    };
    progress(5, "capturing the OS volume");
    let t0 = std::time::Instant::now();
    let store_progress = |d: u64, t: u64| progress(percent(d, t, 10, 95), "storing the image");
    let report = crate::plan::capture::capture_with_plan(
        repo,
        &store_volume,
        &store_as,
        &plan,
        &values,
        &run,
        &mut rec,
        &store_progress,
    )
    .map_err(|e| {
        ApplianceError::Invalid(format!(
            "capture of OS volume {vol_name:?} failed; no golden image was made and the \
             volume is unchanged: {}",
            values.mask(&e.to_string())
        ))
    })?;
    rec.record.timings_ms.total = t0.elapsed().as_millis() as u64;
    rec.record.result = "succeeded".into();
    let log = repo
        .root()
        .join("images")
        .join(&store_as)
        .join(crate::plan::capture::RECORD_FILE);
    if let Err(e) = rec.write_to(&log) {
        tracing::warn!(path = %log.display(), "could not write the capture record: {e}");
    }
    progress(96, "recording the golden image");
    let body = json!({
        "id": id,
        "name": name,
        "description": req.description,
        "size": report.image.virtual_size,
        "imageCapture": true,
        "osVolumeURI": vol["uri"],
        "osVolumeName": vol_name,
        "buildPlanUri": bp["uri"],
        "buildPlanName": plan_art.name,
    });
    match catalog.create_golden_image(body, &store_as) {
        Ok(v) => {
            progress(100, "captured");
            Ok(v)
        }
        Err(e) => {
            if let Err(e2) = repo.remove_image(&store_as) {
                tracing::warn!("removing image {store_as:?} after a refused capture: {e2}");
            }
            Err(e.into())
        }
    }
}

/// The log of the capture that made golden image `key` (its record, JSON), if it was
/// captured here.
pub fn capture_log(catalog: &Catalog, repo: &Repository, key: &str) -> Result<Vec<u8>> {
    let store = catalog.golden_image_store_name(key)?;
    let missing = || {
        ApplianceError::Invalid(format!(
            "golden image {key:?} was not captured on this appliance: it has no capture log"
        ))
    };
    let store = store.ok_or_else(missing)?;
    crate::store::names::validate(&store)?;
    let p = repo
        .root()
        .join("images")
        .join(&store)
        .join(crate::plan::capture::RECORD_FILE);
    std::fs::read(&p).map_err(|_| missing())
}

/// Deletes the golden image `key`: its row (refused while a deployment plan or an OS
/// volume uses it), then its store image. A crash in between leaves an image no row
/// names, which [`super::recover`] removes.
pub fn delete_golden_image(catalog: &Catalog, repo: &Repository, key: &str) -> Result<()> {
    let store = catalog.golden_image_store_name(key)?;
    catalog.delete_artifact(ArtifactKind::GoldenImage, key)?;
    if let Some(s) = store {
        if let Err(e) = repo.remove_image(&s) {
            tracing::warn!("golden image {key:?} deleted, but not its store image {s:?}: {e}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RepoOptions;

    fn repo() -> (tempfile::TempDir, Repository, Catalog) {
        let d = tempfile::tempdir().unwrap();
        let r = Repository::open(d.path().join("repo"), RepoOptions::default()).unwrap();
        let c = Catalog::open(r.root()).unwrap();
        (d, r, c)
    }

    fn disk() -> Vec<u8> {
        let mut v = vec![0u8; 4 << 20];
        for (i, b) in v[..70_000].iter_mut().enumerate() {
            *b = (i * 31 % 251) as u8;
        }
        v[(3 << 20) + 5] = 0xaa;
        v
    }

    fn unzip_one(z: &[u8]) -> Vec<u8> {
        let mut a = zip::ZipArchive::new(std::io::Cursor::new(z)).unwrap();
        assert_eq!(a.len(), 1);
        let mut v = Vec::new();
        a.by_index(0).unwrap().read_to_end(&mut v).unwrap();
        v
    }

    #[test]
    fn a_raw_upload_comes_back_zipped_byte_for_byte() {
        let (_d, r, c) = repo();
        let d = disk();
        let gi = upload_golden_image(&c, &r, "base", "a test", &d[..], &super::super::no_progress)
            .unwrap();
        assert_eq!(gi["name"], "base");
        assert_eq!(gi["size"], d.len() as u64);
        let mut out = Vec::new();
        let n =
            download_golden_image(&c, &r, "base", &mut out, &super::super::no_progress).unwrap();
        assert_eq!(n, d.len() as u64);
        assert_eq!(unzip_one(&out), d);
    }

    #[test]
    fn a_second_image_of_the_same_name_is_refused_and_leaves_nothing() {
        let (_d, r, c) = repo();
        let d = disk();
        upload_golden_image(&c, &r, "base", "", &d[..], &super::super::no_progress).unwrap();
        let e = upload_golden_image(&c, &r, "base", "", &d[..], &super::super::no_progress)
            .unwrap_err();
        assert!(e.to_string().contains("exists already"), "{e}");
        assert_eq!(r.list_images().unwrap().len(), 1);
    }

    #[test]
    fn a_zip_that_is_not_a_payload_is_refused_and_leaves_nothing() {
        let (_d, r, c) = repo();
        let mut z = ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for n in ["a", "b"] {
            z.start_file(n, SimpleFileOptions::default()).unwrap();
            z.write_all(&[1u8; 1024]).unwrap();
        }
        let z = z.finish().unwrap().into_inner();
        let e =
            upload_golden_image(&c, &r, "two", "", &z[..], &super::super::no_progress).unwrap_err();
        assert!(e.to_string().contains("one raw disk"), "{e}");
        assert!(r.list_images().unwrap().is_empty());
        assert_eq!(
            c.list_artifacts(ArtifactKind::GoldenImage, &Default::default())
                .unwrap()
                .members
                .len(),
            0
        );
        assert_eq!(std::fs::read_dir(r.root().join("tmp")).unwrap().count(), 0);
    }
}
