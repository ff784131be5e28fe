//! Golden images in and out of the appliance, as Image Streamer's upload and download do
//! them.
//!
//! In: the upload is spooled into the repository's `tmp/` (sparse); a zip (HPE's form: one
//! raw disk inside) is imported by `plan::bundle::import_payload`, anything else by the
//! store's importer (raw, or qcow2 and the other formats `qemu-img` converts). The store's
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
use crate::store::{Repository, SourceFormat};

/// Prefix of the store's image names of golden images made by the appliance.
pub const STORE_PREFIX: &str = "gi-";

/// The store's image name for the golden image with catalog id `id`.
pub fn store_name(id: &str) -> String {
    format!("{STORE_PREFIX}{id}")
}

/// Whether `magic` (a file's first bytes) starts a zip archive (a local header, or the
/// end record of an empty one).
pub fn is_zip(magic: &[u8]) -> bool {
    magic.starts_with(b"PK\x03\x04") || magic.starts_with(b"PK\x05\x06")
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
    let scratch = Scratch::new(repo, "upload")?;
    progress(0, "receiving the image");
    let up = spool(&mut input, scratch.path(), "upload", &|n| {
        progress(0, &format!("received {} MiB", n >> 20))
    })?;
    if up.len == 0 {
        return Err(ApplianceError::Invalid(
            "the upload is empty: expected a zip holding one raw disk, or a disk image".into(),
        ));
    }
    let id = new_id();
    let store_as = store_name(&id);
    let import_progress = |d: u64, t: u64| progress(percent(d, t, 5, 95), "importing the disk");
    let meta = if is_zip(&up.magic) {
        bundle::import_payload(repo, up.file, name, &store_as, &import_progress)?
    } else {
        drop(up.file);
        repo.import_image(&store_as, &up.path, SourceFormat::Auto, &import_progress)?
    };
    drop(scratch);
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
