//! Zip archives for the bundle tests: read every entry, write entries as given, and patch
//! the sizes an entry's headers declare (to make a zip bomb).

use std::io::{Cursor, Read, Write};

use zip::write::SimpleFileOptions;

/// Every entry of a zip, in order.
pub fn entries(zip_bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut a = zip::ZipArchive::new(Cursor::new(zip_bytes)).unwrap();
    (0..a.len())
        .map(|i| {
            let mut f = a.by_index(i).unwrap();
            let mut v = Vec::new();
            f.read_to_end(&mut v).unwrap();
            (f.name().to_string(), v)
        })
        .collect()
}

/// A zip of `files`, deflated, in order (names as given, unchecked).
pub fn make_zip(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (n, b) in files {
        w.start_file(n.as_str(), SimpleFileOptions::default())
            .unwrap();
        w.write_all(b).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// Sets the uncompressed size that the local and central headers of entry `name` declare.
pub fn patch_declared_size(zip: &mut [u8], name: &str, size: u32) {
    let mut patched = 0;
    for i in 0..zip.len().saturating_sub(46) {
        let sig = &zip[i..i + 4];
        let u16at = |z: &[u8], j: usize| u16::from_le_bytes([z[j], z[j + 1]]) as usize;
        if sig == b"PK\x03\x04" {
            let n = u16at(zip, i + 26);
            if zip.get(i + 30..i + 30 + n) == Some(name.as_bytes()) {
                zip[i + 22..i + 26].copy_from_slice(&size.to_le_bytes());
                patched += 1;
            }
        } else if sig == b"PK\x01\x02" {
            let n = u16at(zip, i + 28);
            if zip.get(i + 46..i + 46 + n) == Some(name.as_bytes()) {
                zip[i + 24..i + 28].copy_from_slice(&size.to_le_bytes());
                patched += 1;
            }
        }
    }
    assert_eq!(patched, 2, "patching {name}");
}

/// Renames entry `from` to `to` (same length) in both its headers.
pub fn rename_entry(zip: &mut [u8], from: &str, to: &str) {
    assert_eq!(from.len(), to.len());
    let (f, t) = (from.as_bytes(), to.as_bytes());
    let mut n = 0;
    for i in 0..zip.len().saturating_sub(f.len()) {
        if &zip[i..i + f.len()] == f {
            zip[i..i + f.len()].copy_from_slice(t);
            n += 1;
        }
    }
    assert_eq!(n, 2, "renaming {from}");
}
