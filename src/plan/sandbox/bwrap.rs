//! The bubblewrap command line that isolates one host-side command, and the check, once per
//! process, of whether this host lets it work.
//!
//! What the sandboxed command gets: new user, pid, network, ipc, uts (and, where the kernel
//! has them, cgroup) namespaces; no capabilities, no_new_privs, no further user namespaces;
//! a read-only root holding /usr (and the /bin, /lib… links or binds beside it), a handful of
//! /etc files tools need, a minimal /dev and its own /proc; the run's scratch directory
//! read-write at /scratch (cwd and HOME) and the run's tmp at /tmp (and /var/tmp). Nothing
//! else of the host: not the repository, not /work, /root, /home, /var, /run, other runs.
//! Building the argument list is pure so a unit test can read it.

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use super::scratch::SANDBOX_SCRATCH;

/// The host's top-level directories that programs expect beside /usr. On a merged-/usr host
/// they are symlinks into /usr and are recreated as such; otherwise they are bound read-only.
const TOP_DIRS: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// The /etc entries the usual tools read (users and groups for `id`/`ls -l`, the dynamic
/// linker's cache, the alternatives behind `awk`, time zone, XML catalogs for xmllint,
/// python's site config, magic for `file`). Nothing secret: no shadow, no ssl keys, no
/// resolv.conf (there is no network anyway).
const ETC_ENTRIES: &[&str] = &[
    "passwd",
    "group",
    "nsswitch.conf",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "localtime",
    "timezone",
    "xml",
    "sgml",
    "mime.types",
    "magic",
    "magic.mime",
    "os-release",
    "debian_version",
    "locale.alias",
    "bash.bashrc",
    "profile",
    "terminfo",
    "services",
    "protocols",
    "shells",
    "perl",
];

/// How the host's filesystem looks, for [`args`].
#[derive(Debug, Clone)]
pub(crate) struct HostLayout {
    /// (name, symlink target) for each top-level dir that is a symlink, or (name, None) for a
    /// real directory to bind.
    top: Vec<(String, Option<PathBuf>)>,
    /// The /etc entries that exist here.
    etc: Vec<String>,
}

impl HostLayout {
    pub(crate) fn probe() -> HostLayout {
        let mut top = Vec::new();
        for name in TOP_DIRS {
            let p = Path::new("/").join(name);
            match std::fs::symlink_metadata(&p) {
                Ok(md) if md.file_type().is_symlink() => {
                    if let Ok(t) = std::fs::read_link(&p) {
                        top.push((name.to_string(), Some(t)));
                    }
                }
                Ok(md) if md.is_dir() => top.push((name.to_string(), None)),
                _ => {}
            }
        }
        let mut etc: Vec<String> = ETC_ENTRIES
            .iter()
            .filter(|e| Path::new("/etc").join(e).exists())
            .map(|e| e.to_string())
            .collect();
        // Debian's python reads /etc/python3.N/sitecustomize.py.
        if let Ok(rd) = std::fs::read_dir("/etc") {
            for entry in rd.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with("python3") {
                    etc.push(name);
                }
            }
        }
        etc.sort();
        etc.dedup();
        HostLayout { top, etc }
    }
}

/// bwrap's arguments (without the program name) to run `bash -c command` in a sandbox over a
/// scratch directory whose areas are at `work` and `tmp` on the host. `env` is the whole
/// environment the command sees; `info_fd` receives bwrap's JSON with the namespace's init pid.
pub(crate) fn args(
    host: &HostLayout,
    work: &Path,
    tmp: &Path,
    env: &[(String, String)],
    info_fd: RawFd,
    command: &str,
) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
    push(&[
        "--unshare-user",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        // Closes the door through which code could gain capabilities again (a nested user
        // namespace, where it would be "root").
        "--disable-userns",
        "--die-with-parent",
        // A new session: no TIOCSTI into a terminal strata may have.
        "--new-session",
        "--uid",
        "65534",
        "--gid",
        "65534",
        "--hostname",
        "strata-sandbox",
        "--ro-bind",
        "/usr",
        "/usr",
    ]);
    for (name, target) in &host.top {
        let dest = format!("/{name}");
        match target {
            Some(t) => {
                a.push("--symlink".into());
                a.push(t.clone().into_os_string());
                a.push(dest.into());
            }
            None => {
                a.push("--ro-bind".into());
                a.push(dest.clone().into());
                a.push(dest.into());
            }
        }
    }
    a.push("--dir".into());
    a.push("/etc".into());
    for e in &host.etc {
        let p = format!("/etc/{e}");
        a.push("--ro-bind".into());
        a.push(p.clone().into());
        a.push(p.into());
    }
    let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
    push(&["--dev", "/dev", "--proc", "/proc"]);
    a.push("--bind".into());
    a.push(tmp.as_os_str().to_owned());
    a.push("/tmp".into());
    a.push("--bind".into());
    a.push(work.as_os_str().to_owned());
    a.push(SANDBOX_SCRATCH.into());
    let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
    push(&[
        "--dir",
        "/var",
        "--symlink",
        "../tmp",
        "/var/tmp",
        "--chdir",
        SANDBOX_SCRATCH,
        // Everything but /scratch, /tmp and /proc is read-only: the root (a tmpfs bwrap made)
        // and /dev. Device nodes stay usable on a read-only mount.
        "--remount-ro",
        "/",
        "--remount-ro",
        "/dev",
        "--clearenv",
    ]);
    for (k, v) in env {
        a.push("--setenv".into());
        a.push(k.into());
        a.push(v.into());
    }
    a.push("--info-fd".into());
    a.push(info_fd.to_string().into());
    a.push("--".into());
    a.push("/bin/bash".into());
    a.push("-c".into());
    a.push(command.into());
    a
}

/// Where bwrap is, if installed. Only the system's own directories are searched: a PATH entry
/// under someone's home must not decide what isolates untrusted code.
pub(crate) fn find() -> Option<PathBuf> {
    ["/usr/bin/bwrap", "/bin/bwrap", "/usr/local/bin/bwrap"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<String> {
        let host = HostLayout {
            top: vec![("bin".into(), Some("usr/bin".into())), ("lib".into(), None)],
            etc: vec!["passwd".into()],
        };
        args(
            &host,
            Path::new("/repo/tmp/run/work"),
            Path::new("/repo/tmp/run/tmp"),
            &[("PATH".into(), "/usr/bin".into())],
            7,
            "echo hi",
        )
        .into_iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect()
    }

    #[test]
    fn every_namespace_is_new_and_user_namespaces_are_closed() {
        let a = sample();
        for flag in [
            "--unshare-user",
            "--unshare-pid",
            "--unshare-net",
            "--unshare-ipc",
            "--unshare-uts",
            "--disable-userns",
            "--die-with-parent",
            "--new-session",
            "--clearenv",
        ] {
            assert!(a.iter().any(|x| x == flag), "{flag} missing from {a:?}");
        }
    }

    #[test]
    fn only_the_scratch_areas_are_bound_writable() {
        let a = sample();
        let binds: Vec<(&str, &str)> = a
            .windows(3)
            .filter(|w| w[0] == "--bind")
            .map(|w| (w[1].as_str(), w[2].as_str()))
            .collect();
        assert_eq!(
            binds,
            vec![
                ("/repo/tmp/run/tmp", "/tmp"),
                ("/repo/tmp/run/work", "/scratch")
            ]
        );
        assert!(a.windows(2).any(|w| w[0] == "--remount-ro" && w[1] == "/"));
    }

    #[test]
    fn the_command_is_one_bash_argument_after_the_options() {
        let a = sample();
        assert_eq!(&a[a.len() - 4..], ["--", "/bin/bash", "-c", "echo hi"]);
        assert!(a.windows(2).any(|w| w[0] == "--info-fd" && w[1] == "7"));
    }
}
