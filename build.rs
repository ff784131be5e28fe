//! Builds the thin C shims between the filesystem adapters and their system libraries
//! (libext2fs from e2fsprogs, libntfs-3g), found with pkg-config. A shim that is not in the
//! tree yet is skipped, together with its library.

fn main() {
    let shims = [
        ("src/fs/ext4_shim.c", "ext2fs", "strata_ext4_shim"),
        ("src/fs/ntfs_shim.c", "libntfs-3g", "strata_ntfs_shim"),
    ];
    for (file, lib, out) in shims {
        println!("cargo:rerun-if-changed={file}");
        if !std::path::Path::new(file).exists() {
            continue;
        }
        let found = pkg_config::Config::new().probe(lib).unwrap_or_else(|e| {
            panic!(
                "{lib} not found ({e}); install Debian's libext2fs-dev, ntfs-3g-dev and \
                     pkg-config (tools/install-deps does)"
            )
        });
        let mut build = cc::Build::new();
        build.file(file).warnings(true).extra_warnings(true);
        for inc in &found.include_paths {
            build.include(inc);
        }
        build.compile(out);
    }
}
