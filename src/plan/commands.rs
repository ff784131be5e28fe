//! The commands strata's guestfish dialect knows: each one's name and aliases, its
//! arguments and their kinds, its optional `name:value` arguments, and its help line.
//! Pure data, used by the parser (which arguments take heredocs), by `strata script lint`,
//! by `help`, and by the interpreter's argument checks; what each command does is in
//! `interp/`.
//!
//! As in guestfish, command names are matched without regard to case, and `_` and `-` are
//! the same (`mkdir_p` is `mkdir-p`).

/// What an argument is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A device name (`/dev/sda1`, `/dev/vg/lv`).
    Device,
    /// A path inside the guest's mounted filesystems (must start with `/`).
    Path,
    /// Any string.
    Str,
    /// A C-style integer (`0755` octal, `0x1ed` hex, `755` decimal).
    Int,
    /// A boolean (`true`, `yes`, `on`, `1`…).
    Bool,
    /// A local file to read (in the scratch directory), `-<<TAG` for a heredoc.
    FileIn,
    /// A local file to write (in the scratch directory).
    FileOut,
    /// A list of strings (optional arguments only: `excludes:"a b"`).
    List,
}

pub struct Spec {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    pub args: &'static [(&'static str, Kind)],
    /// Further arguments: `Some(min)` for commands that take a variable number (at least
    /// `min` in all, counting `args`).
    pub varargs: Option<usize>,
    pub optargs: &'static [(&'static str, Kind)],
    pub help: &'static str,
}

use Kind::*;

macro_rules! spec {
    ($name:literal [$($alias:literal),*] ($($an:literal: $ak:expr),*) $(, var $min:literal)? $(, opt ($($on:literal: $ok:expr),*))? ; $help:literal) => {
        Spec {
            name: $name,
            aliases: &[$($alias),*],
            args: &[$(($an, $ak)),*],
            varargs: { #[allow(unused_mut, unused_assignments)] let mut v = None; $(v = Some($min);)? v },
            optargs: &[$($(($on, $ok)),*)?],
            help: $help,
        }
    };
}

/// Every command, in the order `help` lists them.
pub static COMMANDS: &[Spec] = &[
    spec!("case-sensitive-path" [] ("path": Path); "return true path on case-insensitive filesystem"),
    spec!("cat" [] ("path": Path); "print a file"),
    spec!("checksum" [] ("csumtype": Str, "path": Path); "compute the MD5, SHAx or CRC checksum of a file"),
    spec!("chmod" [] ("mode": Int, "path": Path); "change file mode"),
    spec!("chown" [] ("owner": Int, "group": Int, "path": Path); "change file owner and group"),
    spec!("compress-out" [] ("ctype": Str, "file": Path, "zfile": FileOut), opt ("level": Int); "output compressed file"),
    spec!("copy-in" [] ("localpath": Str, "remotedir": Path), var 2; "copy local files or directories into an image"),
    spec!("copy-out" [] ("remote": Path, "localdir": Str), var 2; "copy remote files or directories out of an image"),
    spec!("cp" [] ("src": Path, "dest": Path); "copy a file"),
    spec!("cp-a" [] ("src": Path, "dest": Path); "copy a file or directory recursively"),
    spec!("cp-r" [] ("src": Path, "dest": Path); "copy a file or directory recursively"),
    spec!("df" [] (); "report file system disk space usage"),
    spec!("df-h" [] (); "report file system disk space usage (human readable)"),
    spec!("download" [] ("remotefilename": Path, "filename": FileOut); "download a file to the local machine"),
    spec!("du" [] ("path": Path); "estimate file space usage"),
    spec!("echo" [] (), var 0; "display a line of text"),
    spec!("exists" [] ("path": Path); "test if file or directory exists"),
    spec!("exit" ["quit", "q"] (); "quit guestfish"),
    spec!("find" [] ("directory": Path); "find all files and directories"),
    spec!("glob" [] ("command": Str), var 1; "expand wildcards in command"),
    spec!("head" [] ("path": Path); "return first 10 lines of a file"),
    spec!("head-n" [] ("nrlines": Int, "path": Path); "return first N lines of a file"),
    spec!("help" [] (), var 0; "display a list of commands or help on a command"),
    spec!("inspect-get-distro" [] ("root": Device); "get distro of inspected operating system"),
    spec!("inspect-get-hostname" [] ("root": Device); "get hostname of the operating system"),
    spec!("inspect-get-major-version" [] ("root": Device); "get major version of inspected operating system"),
    spec!("inspect-get-minor-version" [] ("root": Device); "get minor version of inspected operating system"),
    spec!("inspect-get-mountpoints" [] ("root": Device); "get mountpoints of inspected operating system"),
    spec!("inspect-get-osinfo" [] ("root": Device); "get a possible osinfo short ID corresponding to this operating system"),
    spec!("inspect-get-product-name" [] ("root": Device); "get product name of inspected operating system"),
    spec!("inspect-get-roots" [] (); "return list of operating systems found by last inspection"),
    spec!("inspect-get-type" [] ("root": Device); "get type of inspected operating system"),
    spec!("inspect-os" [] (); "inspect disk and return list of operating systems found"),
    spec!("is-dir" [] ("path": Path), opt ("followsymlinks": Bool); "test if a directory"),
    spec!("is-file" [] ("path": Path), opt ("followsymlinks": Bool); "test if a regular file"),
    spec!("is-symlink" [] ("path": Path); "test if symbolic link"),
    spec!("list-devices" [] (); "list the block devices"),
    spec!("list-filesystems" [] (); "list filesystems"),
    spec!("list-partitions" [] (); "list the partitions"),
    spec!("ll" [] ("directory": Path); "list the files in a directory (long format)"),
    spec!("ln" [] ("target": Str, "linkname": Path); "create a hard link"),
    spec!("ln-f" [] ("target": Str, "linkname": Path); "create a hard link"),
    spec!("ln-s" [] ("target": Str, "linkname": Path); "create a symbolic link"),
    spec!("ln-sf" [] ("target": Str, "linkname": Path); "create a symbolic link"),
    spec!("ls" [] ("directory": Path); "list the files in a directory"),
    spec!("lstat" [] ("path": Path); "get file information for a symbolic link"),
    spec!("lvs" [] (); "list the LVM logical volumes (LVs)"),
    spec!("mkdir" [] ("path": Path); "create a directory"),
    spec!("mkdir-mode" [] ("path": Path, "mode": Int); "create a directory with a particular mode"),
    spec!("mkdir-p" [] ("path": Path); "create a directory and parents"),
    spec!("mount" [] ("mountable": Device, "mountpoint": Str); "mount a guest disk at a position in the filesystem"),
    spec!("mount-options" [] ("options": Str, "mountable": Device, "mountpoint": Str); "mount a guest disk with mount options"),
    spec!("mount-ro" [] ("mountable": Device, "mountpoint": Str); "mount a guest disk, read-only"),
    spec!("mount-vfs" [] ("options": Str, "vfstype": Str, "mountable": Device, "mountpoint": Str); "mount a guest disk with mount options and vfstype"),
    spec!("mounts" [] (); "show mounted filesystems"),
    spec!("mv" [] ("src": Path, "dest": Path); "move a file"),
    spec!("pvs" [] (); "list the LVM physical volumes (PVs)"),
    spec!("readlink" [] ("path": Path); "read the target of a symbolic link"),
    spec!("rm" [] ("path": Path); "remove a file"),
    spec!("run" ["launch"] (); "launch the backend (already running: nothing to do)"),
    spec!("rm-f" [] ("path": Path); "remove a file ignoring errors"),
    spec!("rm-rf" [] ("path": Path); "remove a file or directory recursively"),
    spec!("rmdir" [] ("path": Path); "remove a directory"),
    spec!("stat" [] ("path": Path); "get file information"),
    spec!("statvfs" [] ("path": Path); "get file system statistics"),
    spec!("sync" [] (); "sync disks, writes are flushed through to the disk image"),
    spec!("tail" [] ("path": Path); "return last 10 lines of a file"),
    spec!("tail-n" [] ("nrlines": Int, "path": Path); "return last N lines of a file"),
    spec!("tar-in" [] ("tarfile": FileIn, "directory": Path), opt ("compress": Str, "xattrs": Bool, "selinux": Bool, "acls": Bool); "unpack tarfile to directory"),
    spec!("tar-out" [] ("directory": Str, "tarfile": FileOut), opt ("compress": Str, "numericowner": Bool, "excludes": List, "xattrs": Bool, "selinux": Bool, "acls": Bool); "pack directory into tarfile"),
    spec!("tgz-in" [] ("tarball": FileIn, "directory": Path); "unpack compressed tarball to directory"),
    spec!("tgz-out" [] ("directory": Path, "tarball": FileOut); "pack directory into compressed tarball"),
    spec!("touch" [] ("path": Path); "update file timestamps or create a new file"),
    spec!("truncate" [] ("path": Path); "truncate a file to zero size"),
    spec!("truncate-size" [] ("path": Path, "size": Int); "truncate a file to a particular size"),
    spec!("umount" ["unmount"] ("pathordevice": Str), opt ("force": Bool, "lazyunmount": Bool); "unmount a filesystem"),
    spec!("umount-all" ["unmount-all"] (); "unmount all filesystems"),
    spec!("upload" [] ("filename": FileIn, "remotefilename": Path); "upload a file from the local machine"),
    spec!("version" [] (); "get the library version number"),
    spec!("vgs" [] (); "list the LVM volume groups (VGs)"),
    spec!("write" [] ("path": Path, "content": Str); "create a new file"),
    spec!("write-append" [] ("path": Path, "content": Str); "append content to end of file"),
];

/// guestfish's spelling of a name: lower case, `-` for `_`.
pub fn normalize(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

/// The command called `name` (or one of its aliases), if strata knows it.
pub fn find(name: &str) -> Option<&'static Spec> {
    let n = normalize(name);
    COMMANDS
        .iter()
        .find(|s| s.name == n || s.aliases.contains(&n.as_str()))
}

/// Whether argument `index` of command `name` is a file-in argument (takes heredocs).
pub fn is_file_in(name: &str, index: usize) -> bool {
    find(name).is_some_and(|s| s.args.get(index).map(|a| a.1) == Some(FileIn))
}

impl Spec {
    /// The usage line `help CMD` prints.
    pub fn usage(&self) -> String {
        let mut u = self.name.to_string();
        for (n, _) in self.args {
            u.push(' ');
            u.push_str(n);
        }
        if self.varargs.is_some() {
            u.push_str(" ...");
        }
        for (n, _) in self.optargs {
            u.push_str(&format!(" [{n}:..]"));
        }
        u
    }

    /// Splits `args` into the positional ones and the `name:value` optional ones, checking
    /// their number. Errors read as guestfish's.
    pub fn split<'a>(
        &self,
        args: &'a [String],
    ) -> Result<(Vec<&'a str>, Vec<(&'static str, &'a str)>), String> {
        let mut pos = Vec::new();
        let mut opt = Vec::new();
        for a in args {
            let named = self
                .optargs
                .iter()
                .find(|(n, _)| a.strip_prefix(n).is_some_and(|rest| rest.starts_with(':')));
            match named {
                // Optional arguments come after the positional ones.
                Some((n, _)) if pos.len() >= self.args.len() => {
                    opt.push((*n, &a[n.len() + 1..]));
                }
                _ if !opt.is_empty() => {
                    return Err(format!("{}: unknown optional argument \"{a}\"", self.name))
                }
                _ => pos.push(a.as_str()),
            }
        }
        let want = self.args.len();
        let ok = match self.varargs {
            Some(min) => pos.len() >= min,
            None => pos.len() == want,
        };
        if !ok {
            return Err(format!(
                "error: incorrect number of arguments\nusage: {}\ntype 'help {}' for more help on {}",
                self.usage(),
                self.name,
                self.name
            ));
        }
        Ok((pos, opt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_without_case_and_with_underscores() {
        assert_eq!(find("mkdir_p").map(|s| s.name), Some("mkdir-p"));
        assert_eq!(find("MKDIR-P").map(|s| s.name), Some("mkdir-p"));
        assert_eq!(find("unmount").map(|s| s.name), Some("umount"));
        assert_eq!(find("unmount-all").map(|s| s.name), Some("umount-all"));
        assert!(find("Intentionally_Fail_OS_Deployment").is_none());
    }

    #[test]
    fn only_file_in_arguments_take_heredocs() {
        assert!(is_file_in("upload", 0));
        assert!(!is_file_in("upload", 1));
        assert!(is_file_in("tar-in", 0));
        assert!(!is_file_in("echo", 0));
        assert!(!is_file_in("nosuch", 0));
    }

    #[test]
    fn argument_counts_are_checked_with_guestfish_messages() {
        let s = find("mount").unwrap();
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(s.split(&a(&["/dev/sda1", "/"])).is_ok());
        let e = s.split(&a(&["/dev/sda1"])).unwrap_err();
        assert!(
            e.starts_with(
                "error: incorrect number of arguments\nusage: mount mountable mountpoint"
            ),
            "{e}"
        );
        let u = find("umount").unwrap();
        let args = a(&["/", "force:true"]);
        let (p, o) = u.split(&args).unwrap();
        assert_eq!(p, vec!["/"]);
        assert_eq!(o, vec![("force", "true")]);
        assert!(find("copy-in").unwrap().split(&a(&["x"])).is_err());
        assert!(find("copy-in")
            .unwrap()
            .split(&a(&["x", "y", "/d"]))
            .is_ok());
        assert!(find("echo").unwrap().split(&[]).is_ok());
    }

    #[test]
    fn the_table_has_no_duplicate_names() {
        let mut seen = std::collections::HashSet::new();
        for s in COMMANDS {
            assert!(seen.insert(s.name), "{}", s.name);
            for a in s.aliases {
                assert!(seen.insert(a), "{a}");
            }
        }
    }
}
