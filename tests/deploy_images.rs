//! HPE's plan scripts, unchanged, against golden images: `strata script lint` passes every
//! plan script of the five bundles in tests/fixtures/hpe-artifacts and lists the attributes
//! they use; their deployments run against the Support bundle's UEFI golden image and
//! against the four images tests/common/golden_images.rs builds (GPT with a FAT32 ESP and an
//! ext4 root; MBR with FAT16; an ESP and ext4 on LVM; MBR with NTFS). After each deployment
//! the volume is exported, every filesystem the plan touched is checked by its own checker
//! (fsck.fat, e2fsck, ntfsfix), and the files the scripts wrote are read back by other
//! readers than strata (mtools for FAT, as this host kernel has no vfat; the kernel's ext4
//! through a read-only loop mount, also for an LV at its offset inside the PV; ntfs-3g
//! read-only on a loop device) and compared with what the scripts say, attributes
//! substituted. A password given to a deployment reaches the guest file the script asks for
//! and nowhere else: not the output, not the deployment record.
//!
//! The deployments run from folders of artifacts the tests write: HPE's plan-script JSON
//! files copied from the bundles byte for byte, plus a build plan (HPE's attribute
//! declarations copied) and a deployment plan naming those scripts and the imported image,
//! with a golden-image artifact of that name and no payload. Where a real golden image
//! would carry a directory the scripts write into (`/EFI/BOOT`,
//! `/EFI/HPE/isdeploy/{scripts,tmp}`) a small preparation step of the test's own makes it.
//! HPE's scripts in these bundles only touch the ESP, so the tests add steps of their own
//! in HPE's styles: a RHEL 7-style root step (root found in `list-filesystems`, ESP mounted
//! under it, host-side edits), a Windows-style first-boot step (no Windows bundle is in the
//! fixtures), and a bulk step per filesystem (a large file, many entries, removals). What
//! HPE's scripts upload is checked byte for byte against their heredocs, substituted by the
//! test's own reading of the reference grammar; what HPE's mount step lists (`vgs`, `lvs`,
//! `list-filesystems`, `list-devices`) against real guestfish's recorded output on the same
//! images (tests/fixtures/guestfish).
//!
//! Needs root (loop devices, kernel mounts, ntfs-3g) and the tools of tools/install-deps.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::disks::{self, KernelMount, Loop, Part};
use common::golden_images::{self, Golden};
use common::*;

const SUPPORT: &str = "HPE-Support-Artifacts-2017-11-29-v4.0.zip";
const SUPPORT_2017_03: &str = "HPE-Support-Artifacts-2017-03-24.zip";
const DEVELOPER: &str = "HPE-ImageStreamer-Developer-2017-08-28-v4.1.zip";
const FOUNDATION: &str = "HPE-Foundation-Artifacts-2018-09-11-v4.0.zip";
const RHEL8: &str = "HPE-RHEL8-EFI-2020-01-27-v6.40.zip";

/// The store's name for the Support bundle's golden image (bundle::store_name_for).
const SUPPORT_IMAGE: &str = "HPE_-_Support_1.0_-_UEFI_Test_Image_-_2017-03-24";

const RHEL8_NICS: &str = "HPE-RHEL8-EFI-personalize-and-configure-NICs-LVM-2019-06-11";
const RHEL8_TEAMS: &str = "HPE-RHEL8-EFI-personalize-and-configure-NIC-teamings-LVM-2020-01-27";

fn bundle_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hpe-artifacts")
        .join(name)
}

fn need_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("note: not root; loop devices and kernel mounts need root (CI runs as root)");
    }
    root
}

// ---------------------------------------------------------------------------------------
// HPE's bundles, read with the zip crate.

/// The JSON files of a bundle zip: file name, bytes as stored, parsed.
struct BundleFiles {
    files: Vec<(String, Vec<u8>, serde_json::Value)>,
}

impl BundleFiles {
    fn open(name: &str) -> BundleFiles {
        let f = std::fs::File::open(bundle_path(name)).unwrap();
        let mut z = zip::ZipArchive::new(f).unwrap();
        let mut files = Vec::new();
        for i in 0..z.len() {
            let mut e = z.by_index(i).unwrap();
            let fname = e.name().to_string();
            if !fname.ends_with(".json") {
                continue;
            }
            let mut bytes = Vec::new();
            e.read_to_end(&mut bytes).unwrap();
            let v = serde_json::from_slice(&bytes).unwrap();
            files.push((fname, bytes, v));
        }
        BundleFiles { files }
    }

    fn of_kind<'a>(
        &'a self,
        suffix: &'a str,
    ) -> impl Iterator<Item = &'a (String, Vec<u8>, serde_json::Value)> + 'a {
        self.files
            .iter()
            .filter(move |(f, _, _)| f.ends_with(suffix))
    }

    fn plan_scripts(&self) -> impl Iterator<Item = &(String, Vec<u8>, serde_json::Value)> {
        self.of_kind("_planscript.json")
    }

    fn plan_script(&self, name: &str) -> &(String, Vec<u8>, serde_json::Value) {
        self.plan_scripts()
            .find(|(_, _, v)| v["name"] == name)
            .unwrap_or_else(|| panic!("no plan script {name:?} in the bundle"))
    }

    fn build_plan(&self, name: &str) -> &serde_json::Value {
        self.of_kind("_buildplan.json")
            .map(|(_, _, v)| v)
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no build plan {name:?} in the bundle"))
    }

    /// The names of the scripts a build plan runs, in step order.
    fn steps_of(&self, build_plan: &str) -> Vec<String> {
        let bp = self.build_plan(build_plan);
        let mut steps: Vec<(u32, String)> = bp["buildStep"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let id = s["planScriptUri"]
                    .as_str()
                    .unwrap()
                    .rsplit('/')
                    .next()
                    .unwrap()
                    .to_string();
                let script = self
                    .plan_scripts()
                    .find(|(_, _, v)| v["id"] == id.as_str())
                    .unwrap();
                (
                    s["serialNumber"].as_str().unwrap().parse().unwrap(),
                    script.2["name"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        steps.sort();
        steps.into_iter().map(|(_, n)| n).collect()
    }

    fn declarations_of(&self, build_plan: &str) -> Vec<serde_json::Value> {
        self.build_plan(build_plan)["customAttributes"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------------------
// Custom-attribute references, read independently of strata (the grammar of
// src/plan/attrs.rs's module doc, which is the appliance's).

/// One `@NAME[.FIELD][:DEFAULT]@` reference at byte `at` of length `len`.
struct Ref {
    at: usize,
    len: usize,
    key: String,
    default: Option<String>,
}

fn ident(s: &[u8], i: usize) -> usize {
    let mut j = i;
    while j < s.len()
        && (s[j] == b'_' || s[j].is_ascii_alphabetic() || (j > i && s[j].is_ascii_digit()))
    {
        j += 1;
    }
    j
}

/// The references in `text`, and the `@@` escapes (as references with an empty key).
fn refs(text: &str) -> Vec<Ref> {
    let s = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        if s[i] != b'@' {
            i += 1;
            continue;
        }
        if s.get(i + 1) == Some(&b'@') {
            out.push(Ref {
                at: i,
                len: 2,
                key: String::new(),
                default: None,
            });
            i += 2;
            continue;
        }
        let parsed = (|| {
            let n = ident(s, i + 1);
            if n == i + 1 {
                return None;
            }
            let mut j = n;
            if s.get(j) == Some(&b'.') {
                let f = ident(s, j + 1);
                if f == j + 1 {
                    return None;
                }
                j = f;
            }
            let key = text[i + 1..j].to_string();
            let mut default = None;
            if s.get(j) == Some(&b':') {
                let d = j + 1;
                let mut k = d;
                while k < s.len() && !matches!(s[k], b'@' | b'\r' | b'\n') {
                    k += 1;
                }
                default = Some(text[d..k].to_string());
                j = k;
            }
            (s.get(j) == Some(&b'@')).then(|| Ref {
                at: i,
                len: j + 1 - i,
                key,
                default,
            })
        })();
        match parsed {
            Some(r) => {
                i = r.at + r.len;
                out.push(r);
            }
            None => i += 1,
        }
    }
    out
}

/// The attributes (`Name`, `Nic.field`) a script uses.
fn attributes_used(text: &str) -> BTreeSet<String> {
    refs(text)
        .into_iter()
        .filter(|r| !r.key.is_empty())
        .map(|r| r.key)
        .collect()
}

/// `text` with every reference replaced by its value in `values` (a reference to an
/// attribute the test gave no value is a mistake in the test: every declared attribute gets
/// one).
fn substitute(text: &str, values: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut last = 0;
    for r in refs(text) {
        out.push_str(&text[last..r.at]);
        if r.key.is_empty() {
            out.push('@');
        } else {
            let v = values.get(&r.key).unwrap_or_else(|| {
                panic!(
                    "the test gives no value for @{}@ (default {:?})",
                    r.key, r.default
                )
            });
            out.push_str(v);
        }
        last = r.at + r.len;
    }
    out.push_str(&text[last..]);
    out
}

/// The files a script's `upload -<<TAG PATH` heredocs write: (guest path, content), the
/// content as guestfish takes it (each body line with its newline).
fn heredoc_uploads(script: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = script.split('\n').collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let words: Vec<&str> = lines[i].split_whitespace().collect();
        if words.len() == 3 && words[0] == "upload" && words[1].starts_with("-<<") {
            let tag = &words[1][3..];
            let mut body = String::new();
            i += 1;
            while lines[i] != tag {
                body.push_str(lines[i]);
                body.push('\n');
                i += 1;
            }
            out.push((words[2].to_string(), body));
        }
        i += 1;
    }
    out
}

// ---------------------------------------------------------------------------------------
// A folder of artifacts, written by a test.

const PLAN: &str = "test deployment plan";

/// A fixed UUID-shaped id.
fn uuid(n: u32) -> String {
    format!("{n:08x}-5eed-4000-8000-{n:012x}")
}

/// Plan scripts (HPE's, copied verbatim, and the test's own), the build plan that runs them
/// in order with its attribute declarations, and a deployment plan on a store image.
struct Folder {
    dir: PathBuf,
    /// (plan-script id, name) of each step, in order.
    steps: Vec<(String, String)>,
    declarations: Vec<serde_json::Value>,
    /// (script name, content, whether HPE's) of each step, for the checks.
    scripts: Vec<(String, String, bool)>,
    /// The next id for a script of the test's own.
    next: u32,
}

impl Folder {
    fn new(repo: &Repo, name: &str) -> Folder {
        let dir = repo.path(name);
        std::fs::create_dir_all(&dir).unwrap();
        Folder {
            dir,
            steps: Vec::new(),
            declarations: Vec::new(),
            scripts: Vec::new(),
            next: 1,
        }
    }

    /// A step running HPE's plan script `name` from bundle `b`, its JSON file copied as is.
    fn hpe(&mut self, b: &BundleFiles, name: &str) -> &mut Folder {
        let (file, bytes, v) = b.plan_script(name);
        std::fs::write(self.dir.join(file), bytes).unwrap();
        self.steps
            .push((v["id"].as_str().unwrap().to_string(), name.to_string()));
        self.scripts.push((
            name.to_string(),
            v["content"].as_str().unwrap().to_string(),
            true,
        ));
        self
    }

    /// Steps running every script of HPE's build plan `bp` in `b`, with its declarations.
    fn hpe_build_plan(&mut self, b: &BundleFiles, bp: &str) -> &mut Folder {
        for s in b.steps_of(bp) {
            self.hpe(b, &s);
        }
        self.declare(b.declarations_of(bp))
    }

    /// A step running a plan script of the test's own.
    fn own(&mut self, name: &str, content: &str) -> &mut Folder {
        let id = uuid(self.next);
        self.next += 1;
        let ps = serde_json::json!({
            "type": "PlanScript", "id": id, "name": name, "planType": "deploy",
            "description": "written by tests/deploy_images.rs", "content": content,
            "customAttributes": null, "hpProvided": false
        });
        std::fs::write(
            self.dir.join(format!("{id}_planscript.json")),
            serde_json::to_vec_pretty(&ps).unwrap(),
        )
        .unwrap();
        self.steps.push((id, name.to_string()));
        self.scripts
            .push((name.to_string(), content.to_string(), false));
        self
    }

    /// Adds attribute declarations to the build plan (the first of a name wins).
    fn declare(&mut self, decls: Vec<serde_json::Value>) -> &mut Folder {
        for d in decls {
            if !self.declarations.iter().any(|e| e["name"] == d["name"]) {
                self.declarations.push(d);
            }
        }
        self
    }

    /// Writes the build plan and the deployment plan [`PLAN`] on store image `image`, with a
    /// golden-image artifact of that name and no payload (as a bundle exported without its
    /// disk: strata takes the store's image of that name); returns the folder.
    fn plan(&self, image: &str) -> String {
        let gi_id = uuid(0x91);
        let gi = serde_json::json!({
            "type": "GoldenImage", "id": gi_id, "name": image,
            "description": "built by tests/common/golden_images.rs, imported with strata image import",
            "checkSum": null, "importedFromBundle": false, "readOnly": false, "size": 0,
            "osVolumeName": null, "buildPlanName": null, "imageCapture": false
        });
        std::fs::write(
            self.dir.join(format!("{gi_id}_goldenimage.json")),
            serde_json::to_vec_pretty(&gi).unwrap(),
        )
        .unwrap();
        self.plan_without_golden_image(image)
    }

    /// Writes the build plan and the deployment plan [`PLAN`], naming `image` in
    /// goldenImageURI only; returns the folder.
    fn plan_without_golden_image(&self, image: &str) -> String {
        let steps: Vec<_> = self
            .steps
            .iter()
            .enumerate()
            .map(|(i, (id, name))| {
                serde_json::json!({
                    "serialNumber": (i + 1).to_string(), "planScriptName": name,
                    "planScriptUri": format!("/rest/plan-scripts/{id}"), "parameters": null
                })
            })
            .collect();
        let bp_id = uuid(0xb0);
        let bp = serde_json::json!({
            "type": "OeBuildPlan", "buildPlanid": bp_id, "name": "test build plan",
            "description": "", "oeBuildPlanType": "deploy", "hpProvided": false,
            "customAttributes": self.declarations, "buildStep": steps
        });
        let dp_id = uuid(0xd0);
        let dp = serde_json::json!({
            "type": "OEDeploymentPlan", "id": dp_id, "name": PLAN, "description": "",
            "oeBuildPlanURI": "test build plan", "goldenImageURI": image,
            "hpProvided": false, "customAttributes": []
        });
        for (f, v) in [
            (format!("{bp_id}_buildplan.json"), bp),
            (format!("{dp_id}_deploymentplan.json"), dp),
        ] {
            std::fs::write(self.dir.join(f), serde_json::to_vec_pretty(&v).unwrap()).unwrap();
        }
        self.dir.display().to_string()
    }

    /// The files HPE's scripts upload by heredoc, attributes substituted: (path, content).
    /// A later upload to the same path replaces an earlier one.
    fn hpe_uploads(&self, values: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (_, content, hpe) in &self.scripts {
            for (path, body) in heredoc_uploads(&substitute(content, values)) {
                if *hpe {
                    out.insert(path, body);
                } else {
                    out.remove(&path);
                }
            }
        }
        out
    }
}

/// An attribute declaration in HPE's format (constraints a JSON-encoded string).
fn decl(name: &str, kind: &str, constraints: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "name": name, "type": kind, "value": if kind == "nic" { serde_json::Value::Null } else { "".into() },
        "description": "", "constraints": constraints.to_string()
    })
}

// ---------------------------------------------------------------------------------------
// The test's own steps.

/// Makes a directory on the FAT partition 1 that a real golden image would carry.
fn prep_dirs(dirs: &[&str]) -> String {
    let mut s = String::from(
        "# What the golden image would already hold: the directories the next scripts fill.\n\
         mount /dev/sda1 /\n",
    );
    for d in dirs {
        s.push_str(&format!("mkdir-p {d}\n"));
    }
    s.push_str("umount /\n");
    s
}

/// Personalizes the root filesystem the way HPE's RHEL 7 plan scripts do: find it in
/// list-filesystems' output (an ext4 partition, or an LV), mount the ESP under it, edit a
/// file on the host side, and write through both mounts.
const ROOT_STEP: &str = r##"# Personalize the root filesystem (RHEL 7 style): the root from list-filesystems,
# the ESP mounted under it.
vgs
lvs
list-filesystems | cat > ./list-fs
<!awk -F: '/ ext4$/ {print "mount", $1, "/"}' ./list-fs
mount /dev/sda1 /boot/efi
upload -<<END /etc/hostname
@HostName@
END
download /etc/fstab ./fstab
!echo "# personalized for @HostName@.@DomainName@" >> ./fstab
upload ./fstab /etc/fstab
mkdir-p /root/.ssh
chmod 0700 /root/.ssh
upload -<<END /root/.ssh/authorized_keys
ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHN0cmF0YQ root@@@HostName@
END
chmod 0600 /root/.ssh/authorized_keys
upload -<<END /boot/efi/EFI/deployed.txt
deployed @HostName@.@DomainName@
END
umount-all
"##;

/// Many files (half of them then removed and replaced by others) and a large one (6.9 MB) on
/// partition `dev`, under `dir`, the commands generated on the host side (`<!`, as HPE's
/// scripts generate theirs); a large file overwritten by a small
/// one (its clusters or blocks freed), and the `remove`d paths of the golden image (`rm-rf`,
/// `rm-f`). [`check_bulk`] checks the result.
fn bulk_step(dev: &str, dir: &str, remove: &[&str]) -> String {
    let mut s = format!(
        "# Many files and a large one.\n\
         mount {dev} /\n\
         mkdir-p {dir}/many\n\
         !seq 1 {BLOB_LINES} > ./blob\n\
         !printf 'small file\\n' > ./small\n\
         upload ./blob {dir}/blob.txt\n\
         upload ./blob {dir}/shrunk.txt\n\
         upload ./small {dir}/shrunk.txt\n\
         <!for i in $(seq 1 {MANY}); do echo \"upload ./small '{dir}/many/Entry number $i.txt'\"; done\n\
         <!for i in $(seq 1 2 {MANY}); do echo \"rm '{dir}/many/Entry number $i.txt'\"; done\n\
         <!for i in $(seq 1 2 {MANY}); do echo \"upload ./small '{dir}/many/Again $i.txt'\"; done\n"
    );
    // A trailing `/` names a directory, removed with everything in it.
    for r in remove {
        match r.strip_suffix('/') {
            Some(d) => s.push_str(&format!("rm-rf \"{d}\"\n")),
            None => s.push_str(&format!("rm-f \"{r}\"\n")),
        }
    }
    s.push_str("umount /\n");
    s
}

const BLOB_LINES: u32 = 1_000_000;
const MANY: usize = 150;

/// What [`bulk_step`] wrote, as found in `root` (a host directory: a kernel or ntfs-3g
/// mount, or a FAT copied out by mtools), and `removed` gone.
fn check_bulk(root: &Path, dir: &str, removed: &[&str]) {
    let p = |rel: &str| root.join(rel.trim_start_matches('/'));
    let blob: String = (1..=BLOB_LINES).map(|i| format!("{i}\n")).collect();
    let got = std::fs::read_to_string(p(&format!("{dir}/blob.txt"))).unwrap();
    assert!(
        got == blob,
        "{dir}/blob.txt: {} bytes, not the {} of seq",
        got.len(),
        blob.len()
    );
    assert_eq!(
        std::fs::read_to_string(p(&format!("{dir}/shrunk.txt"))).unwrap(),
        "small file\n"
    );
    let mut names: Vec<String> = std::fs::read_dir(p(&format!("{dir}/many")))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    // Odd entries were removed, their slots then taken by other names.
    let mut want: Vec<String> = (1..=MANY)
        .map(|i| {
            if i % 2 == 1 {
                format!("Again {i}.txt")
            } else {
                format!("Entry number {i}.txt")
            }
        })
        .collect();
    want.sort();
    assert_eq!(names, want);
    for n in &names {
        assert_eq!(
            std::fs::read_to_string(p(&format!("{dir}/many/{n}"))).unwrap(),
            "small file\n",
            "{n}"
        );
    }
    for r in removed {
        let r = r.trim_end_matches('/');
        assert!(
            !p(r).exists() && p(r).symlink_metadata().is_err(),
            "{r} is still there"
        );
    }
}

/// The whole FAT at `part`, copied out by mtools into a new directory.
fn fat_copy_out(disk: &Path, part: &Part, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    ok(Command::new("mcopy")
        .args(["-s", "-n", "-m", "-i"])
        .arg(format!("{}@@{}", disk.display(), part.start))
        .arg("::/*")
        .arg(to)
        .env("MTOOLS_SKIP_CHECK", "1"));
}

// ---------------------------------------------------------------------------------------
// Reading the results back.

/// The repository's view of a deployed volume: its exported disk, record and output.
struct Deployed {
    disk: PathBuf,
    record: String,
    output: String,
}

/// `strata deploy VOLUME --artifacts DIR --plan PLAN --attr …`, which must succeed; then
/// the volume is exported.
fn deploy(
    repo: &Repo,
    volume: &str,
    artifacts: &str,
    plan: &str,
    values: &BTreeMap<String, String>,
) -> Deployed {
    let mut args = vec![
        "deploy".to_string(),
        volume.to_string(),
        "--artifacts".into(),
        artifacts.into(),
        "--plan".into(),
        plan.into(),
    ];
    for (k, v) in values {
        args.push("--attr".into());
        args.push(format!("{k}={v}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = repo.run(&args);
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.status.success(),
        "strata deploy {volume} --artifacts {artifacts} --plan {plan:?} failed:\n{output}"
    );
    let disk = repo.path(&format!("{volume}.raw"));
    repo.ok(&["volume", "export", volume, disk.to_str().unwrap()]);
    let record = std::fs::read_to_string(
        repo.root
            .join("volumes")
            .join(volume)
            .join("deployment.json"),
    )
    .unwrap();
    Deployed {
        disk,
        record,
        output,
    }
}

impl Deployed {
    /// The record says success, lists every password as masked, and no password value
    /// given appears in it or in the deployment's output.
    fn check_secrets(&self, values: &BTreeMap<String, String>, passwords: &[&str]) {
        let r: serde_json::Value = serde_json::from_str(&self.record).unwrap();
        assert_eq!(r["result"], "succeeded", "{}", self.record);
        for p in passwords {
            let secret = &values[*p];
            assert!(!self.record.contains(secret.as_str()), "{p} in the record");
            assert!(!self.output.contains(secret.as_str()), "{p} in the output");
            let listed = r["attributes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a[0] == *p)
                .unwrap_or_else(|| panic!("{p} not in the record's attributes"));
            assert_eq!(listed[1], "********", "{p}");
        }
    }

    /// What `command` printed when step `script` ran it, from the record.
    fn output_of(&self, script: &str, command: &str) -> String {
        let r: serde_json::Value = serde_json::from_str(&self.record).unwrap();
        let step = r["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["script"] == script)
            .unwrap_or_else(|| panic!("no step {script:?} in the record"));
        let line = step["lines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["text"] == command)
            .unwrap_or_else(|| panic!("{script:?} ran no {command:?}: {step}"));
        line["output"].as_str().unwrap_or("").to_string()
    }

    /// What HPE's RHEL8 mount step printed (`vgs`, `lvs`, `list-filesystems`,
    /// `list-devices`) is what real guestfish printed on the same image
    /// (tests/fixtures/guestfish/IMAGE/NN-COMMAND.out).
    fn listings_match_guestfish(&self, script: &str, image: &str, commands: &[&str]) {
        for c in commands {
            let want = guestfish_output(image, c);
            assert_eq!(self.output_of(script, c), want, "{c} on {image}");
        }
    }
}

/// The output real guestfish gave for the first `command` of its recorded run on `image`.
fn guestfish_output(image: &str, command: &str) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/guestfish")
        .join(image);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| {
            f.split_once('-').is_some_and(|(n, rest)| {
                n.parse::<u32>().is_ok() && rest == format!("{command}.out")
            })
        })
        .collect();
    files.sort_by_key(|f| f.split_once('-').unwrap().0.parse::<u32>().unwrap());
    let f = files
        .first()
        .unwrap_or_else(|| panic!("no recorded {command} for {image}"));
    std::fs::read_to_string(dir.join(f)).unwrap()
}

const MOUNT_STEP: &str = "HPE-RHEL8-EFI-mount-2019-03-21";
const LISTINGS: [&str; 4] = ["vgs", "lvs", "list-filesystems", "list-devices"];

fn sfdisk_parts(disk: &Path) -> Vec<Part> {
    let o = ok(Command::new("sfdisk").arg("--json").arg(disk));
    let v: serde_json::Value = serde_json::from_str(&o).unwrap();
    v["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| Part {
            start: p["start"].as_u64().unwrap() * 512,
            len: p["size"].as_u64().unwrap() * 512,
        })
        .collect()
}

/// A file read from the FAT at `part` with mtools, as text.
fn fat_text(disk: &Path, part: &Part, path: &str) -> String {
    String::from_utf8(disks::mtools_read(disk, part, path)).unwrap()
}

/// What `fsck.fat -n` finds wrong in the FAT at `part`: its complaints, without the
/// version, summary and "unchanged" lines.
fn fat_complaints(disk: &Path, part: &Part) -> Vec<String> {
    let (_, text) = disks::fsck_fat(disk, part);
    text.lines()
        .filter(|l| {
            !(l.starts_with("fsck.fat ")
                || l.starts_with("Leaving filesystem unchanged")
                || l.trim().is_empty()
                || l.contains(" files, "))
        })
        .map(String::from)
        .collect()
}

/// The FAT at `part` is clean to fsck.fat.
fn fat_clean(disk: &Path, part: &Part) {
    let (clean, text) = disks::fsck_fat(disk, part);
    assert!(clean, "fsck.fat -n {}: {text}", disk.display());
}

/// Every file HPE's scripts uploaded to the FAT at `part` holds what the script says.
fn fat_has(disk: &Path, part: &Part, files: &BTreeMap<String, String>) {
    assert!(!files.is_empty());
    for (path, want) in files {
        assert_eq!(&fat_text(disk, part, path), want, "{path}");
    }
}

/// The ext4 at `part` is clean to `e2fsck -fn`.
fn ext4_clean(disk: &Path, part: &Part) {
    let (clean, text) = disks::e2fsck(disk, part);
    assert!(
        clean,
        "e2fsck -fn {} @{}: {text}",
        disk.display(),
        part.start
    );
}

/// A read-only ntfs-3g mount of a loop device over `part`; unmounted on drop.
struct NtfsMount {
    dir: tempfile::TempDir,
    _lo: Loop,
}

impl NtfsMount {
    fn new(disk: &Path, part: &Part) -> NtfsMount {
        let lo = Loop::new(disk, part, true);
        let dir = tempfile::tempdir().unwrap();
        // ntfs-3g returns once the volume is mounted (it daemonizes after).
        ok(Command::new("ntfs-3g")
            .args(["-o", "ro"])
            .arg(&lo.0)
            .arg(dir.path()));
        NtfsMount { dir, _lo: lo }
    }

    fn read(&self, rel: &str) -> String {
        let p = self.dir.path().join(rel.trim_start_matches('/'));
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }
}

impl Drop for NtfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Sub-field values for NIC attribute `nic`.
fn nic(v: &mut BTreeMap<String, String>, nic: &str, fields: &[(&str, &str)]) {
    for (f, x) in fields {
        v.insert(format!("{nic}.{f}"), x.to_string());
    }
}

/// The eight sub-fields of the RHEL8 bundle's management NICs, for NIC number `n`.
fn management_nic(v: &mut BTreeMap<String, String>, name: &str, n: u8) {
    let mac = format!("02:00:00:00:01:{n:02x}");
    let ip = format!("10.1.{n}.11");
    let gw = format!("10.1.{n}.1");
    let vlan = if n == 1 {
        "0".to_string()
    } else {
        format!("{}", 100 + n)
    };
    nic(
        v,
        name,
        &[
            ("mac", &mac),
            ("ipaddress", &ip),
            ("netmask", "255.255.255.0"),
            ("gateway", &gw),
            ("dns1", "10.1.0.53"),
            ("dns2", "10.1.0.54"),
            ("domain", "example.com"),
            ("vlanid", &vlan),
        ],
    );
}

/// Values for every attribute the RHEL8 bundle's build plan `bp` declares.
fn rhel8_values(bp: &str, host: &str) -> BTreeMap<String, String> {
    let mut v = values(&[
        ("HostName", host),
        ("DomainName", "lab.example.com"),
        ("NewUser", "alice,bob"),
        ("NewRootPassword", "Root-Pw-3k9Q"),
        ("NewUsersPassword", "Users-Pw-7q2W"),
        ("SSH", "Enable"),
        ("DiskName", "/dev/sdb"),
        ("FirstPartitionSize", "12"),
        ("SecondPartitionSize", "8"),
        ("LvmVolumeSize", "6"),
        ("FileSystem", "EXT4"),
    ]);
    if bp == RHEL8_NICS {
        v.insert("TotalMgmtNICs".into(), "2".into());
        v.insert("LvmVolumeGroupName".into(), "data_vg".into());
        v.insert("LvmVolumeName".into(), "data_lv".into());
        for n in 1..=4 {
            management_nic(&mut v, &format!("ManagementNIC{n}"), n);
        }
    } else {
        v.insert("TotalNICTeamings".into(), "2".into());
        // The only values their declared options allow.
        v.insert("LvmVolumeGroupName".into(), "new_vol_group".into());
        v.insert("LvmVolumeName".into(), "new_vol".into());
        v.insert("NICTeam0Name".into(), "team0".into());
        v.insert("NICTeam1Name".into(), "bond-b".into());
        management_nic(&mut v, "Team0NIC1", 1);
        management_nic(&mut v, "Team1NIC1", 3);
        nic(
            &mut v,
            "Team0NIC2",
            &[("mac", "02:00:00:00:02:02"), ("vlanid", "0")],
        );
        nic(
            &mut v,
            "Team1NIC2",
            &[("mac", "02:00:00:00:02:04"), ("vlanid", "104")],
        );
    }
    v
}

const RHEL8_PASSWORDS: [&str; 2] = ["NewRootPassword", "NewUsersPassword"];

/// The directories HPE's RHEL8 UEFI scripts upload into, which an RHEL8 golden image's ESP
/// carries.
const RHEL8_DIRS: [&str; 2] = ["/EFI/HPE/isdeploy/scripts", "/EFI/HPE/isdeploy/tmp"];

/// Values for the Support bundle's (2017-11-29) network example: every type, both NICs.
fn support_network_values(s: &str) -> BTreeMap<String, String> {
    let mut v = values(&[
        ("ExampleString", s),
        ("ExampleNumber", "42"),
        ("ExampleOption", "Option1"),
        ("ExamplePassword", "Ex-Pw-19z"),
        ("ExampleIPv4Address", "192.0.2.10"),
        ("ExampleFQDN", "node.example.org"),
    ]);
    nic(
        &mut v,
        "ExampleUnteamedNIC",
        &[
            ("mac", "02:00:00:00:0a:01"),
            ("ipaddress", "192.0.2.21"),
            ("netmask", "255.255.255.0"),
            ("gateway", "192.0.2.1"),
            ("dns1", "192.0.2.53"),
            ("dns2", "192.0.2.54"),
            ("dhcp", "false"),
        ],
    );
    nic(
        &mut v,
        "ExampleTeamedNIC",
        &[
            ("mac1", "02:00:00:00:0b:01"),
            ("mac2", "02:00:00:00:0b:02"),
            ("ipaddress1", "198.51.100.21"),
            ("ipaddress2", "198.51.100.22"),
            ("netmask", "255.255.255.128"),
            ("gateway", "198.51.100.1"),
            ("dns1", "198.51.100.53"),
            ("dns2", "198.51.100.54"),
            ("dhcp", "false"),
        ],
    );
    v
}

/// Values for the 2017-03-24 Support bundle's network example (NIC1, NIC2 without macs).
fn support_2017_network_values() -> BTreeMap<String, String> {
    let mut v = values(&[
        ("ExampleString", "fat16 bootbank"),
        ("ExampleNumber", "16"),
        ("ExampleOption", "Option1"),
    ]);
    for (n, net) in [("NIC1", "203.0.113"), ("NIC2", "198.18.0")] {
        nic(
            &mut v,
            n,
            &[
                ("ipaddress", &format!("{net}.7")),
                ("netmask", "255.255.255.0"),
                ("gateway", &format!("{net}.1")),
                ("dns1", &format!("{net}.53")),
                ("dns2", &format!("{net}.54")),
            ],
        );
    }
    v
}

/// Values for the Developer bundle's UEFI personalization script (every plain type).
fn developer_values() -> BTreeMap<String, String> {
    values(&[
        ("ExampleString1", "lvm one"),
        ("ExampleString2", "lvm two"),
        ("ExampleString3", "lvm three"),
        ("ExampleString4", "lvm four"),
        ("ExampleNumber1", "7"),
        ("ExampleNumber2", "8"),
        ("ExampleOption", "Option1"),
        ("ExampleIPv4Address", "10.9.8.7"),
        ("ExampleFQDN", "lvm.example.net"),
        ("ExamplePassword", "Dv-Pw-55x"),
    ])
}

/// The checks of the root step ([`ROOT_STEP`]) on the ext4 at `root` (through the kernel)
/// and the ESP at `esp` (through mtools): files in place on the right filesystem, modes,
/// the host-side edit, the golden image's files untouched.
fn check_root_step(
    disk: &Path,
    root: &Part,
    esp: &Part,
    golden: &Path,
    v: &BTreeMap<String, String>,
) {
    ext4_clean(disk, root);
    let before = KernelMount::new(golden, root, "ext4");
    let m = KernelMount::new(disk, root, "ext4");
    let read = |m: &KernelMount, p: &str| std::fs::read_to_string(m.path(p)).unwrap();
    let host = &v["HostName"];
    let domain = &v["DomainName"];
    assert_eq!(read(&m, "/etc/hostname"), format!("{host}\n"));
    assert_eq!(
        read(&m, "/etc/fstab"),
        format!(
            "{}# personalized for {host}.{domain}\n",
            read(&before, "/etc/fstab")
        )
    );
    assert_eq!(
        read(&m, "/root/.ssh/authorized_keys"),
        format!("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHN0cmF0YQ root@{host}\n")
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| std::fs::metadata(m.path(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("/root/.ssh"), 0o700);
    assert_eq!(mode("/root/.ssh/authorized_keys"), 0o600);
    // The ESP was mounted over /boot/efi: what went there is on the FAT, not the ext4.
    assert_eq!(
        std::fs::read_dir(m.path("/boot/efi")).unwrap().count(),
        0,
        "the root's /boot/efi stays an empty mount point"
    );
    assert_eq!(
        fat_text(disk, esp, "/EFI/deployed.txt"),
        format!("deployed {host}.{domain}\n")
    );
    for p in ["/etc/os-release", "/usr/bin/true"] {
        assert_eq!(read(&m, p), read(&before, p), "{p}");
    }
}

// ---------------------------------------------------------------------------------------
// 1. Lint.

/// `strata script lint BUNDLE` exits 0 and reports each of the bundle's plan scripts, with
/// exactly the attributes its text uses.
fn lint_bundle(name: &str) -> String {
    let repo = Repo::new();
    let path = bundle_path(name).display().to_string();
    let o = repo.run(&["script", "lint", &path]);
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!out.contains("panicked"), "{out}");
    assert!(
        o.status.success(),
        "strata script lint {path} exited {:?}:\n{out}",
        o.status.code()
    );
    let b = BundleFiles::open(name);
    let mut n = 0;
    for (_, _, v) in b.plan_scripts() {
        n += 1;
        let script = v["name"].as_str().unwrap();
        let prefix = format!("{path}: {script}: ");
        let line = out
            .lines()
            .find(|l| l.starts_with(&prefix) && !l[prefix.len()..].contains(": "))
            .or_else(|| out.lines().find(|l| l.starts_with(&prefix)))
            .unwrap_or_else(|| panic!("lint says nothing of {script:?}:\n{out}"));
        let verdict = &line[prefix.len()..];
        let listed: BTreeSet<String> = verdict
            .split_once("attributes: ")
            .map(|(_, a)| a.split(", ").map(String::from).collect())
            .unwrap_or_default();
        let used = attributes_used(v["content"].as_str().unwrap());
        assert_eq!(listed, used, "{script}: {line}");
    }
    assert!(n > 0);
    out
}

#[test]
fn lint_passes_the_support_bundle_and_lists_its_attributes() {
    let out = lint_bundle(SUPPORT);
    assert!(out.contains("ExampleTeamedNIC.ipaddress2"), "{out}");
}

#[test]
fn lint_passes_the_2017_03_support_bundle_and_lists_its_attributes() {
    let out = lint_bundle(SUPPORT_2017_03);
    assert!(out.contains("NIC2.dns2"), "{out}");
}

#[test]
fn lint_passes_the_developer_bundle_and_lists_its_attributes() {
    let out = lint_bundle(DEVELOPER);
    assert!(out.contains("DeploymentTesting"), "{out}");
}

#[test]
fn lint_passes_the_rhel8_uefi_bundle_and_lists_its_attributes() {
    let out = lint_bundle(RHEL8);
    assert!(out.contains("Team1NIC2.vlanid"), "{out}");
}

/// The Foundation bundle's "fail OS deployment" script calls a command that does not
/// exist, on purpose (it tests failing deployments); lint passes it and still says so.
#[test]

fn lint_passes_the_foundation_bundle_and_still_names_its_deliberate_failure() {
    let out = lint_bundle(FOUNDATION);
    assert!(out.contains("VolumeSize"), "{out}");
    assert!(out.contains("Intentionally_Fail_OS_Deployment"), "{out}");
}

/// The test's own steps pass lint too (a folder of artifacts is a bundle to lint).
#[test]
fn lint_passes_the_tests_own_steps() {
    let repo = Repo::new();
    let mut f = Folder::new(&repo, "own");
    f.own("root step", ROOT_STEP)
        .own("windows step", WINDOWS_STEP)
        .own("prep", &prep_dirs(&RHEL8_DIRS));
    let dir = f.plan("x");
    let out = repo.ok(&["script", "lint", &dir]);
    assert!(
        out.contains("root step: ok; attributes: DomainName, HostName"),
        "{out}"
    );
    assert!(out.contains("prep: ok"), "{out}");
}

// ---------------------------------------------------------------------------------------
// 2. The Support bundle's own UEFI golden image.

/// The Support bundles' deployment plans, run from the bundles as they are, with a value
/// for every attribute, personalize the real 100 MiB image's ESP as the scripts say, with
/// no fsck.fat complaint the golden image did not have.
#[test]
fn the_support_bundles_network_plans_personalize_their_own_uefi_image() {
    if !need_root() {
        return;
    }
    let repo = Repo::new();
    let b = BundleFiles::open(SUPPORT);
    // Characters a substitution could mangle: quotes, `$`, a backslash, `@` (a value is not
    // itself scanned for references), `%`, non-ASCII.
    let v = support_network_values(r#"web-07 "net" 'x' $HOME \n ops@lab @ExampleNumber@ 100% ü"#);
    let plan = "HPE - Support 1.0 - network deployment test-2017-11-29";
    let d = deploy(
        &repo,
        "net-07",
        &bundle_path(SUPPORT).display().to_string(),
        plan,
        &v,
    );
    d.check_secrets(&v, &["ExamplePassword"]);
    let gold = repo.path("support-gold.raw");
    repo.ok(&["image", "export", SUPPORT_IMAGE, gold.to_str().unwrap()]);
    let parts = sfdisk_parts(&d.disk);
    let script = b.plan_script(
        "HPE - Support 1.0 - network example UEFI personalization script - 2017-08-28",
    );
    let want: BTreeMap<_, _> =
        heredoc_uploads(&substitute(script.2["content"].as_str().unwrap(), &v))
            .into_iter()
            .collect();
    fat_has(&d.disk, &parts[0], &want);
    let msg = fat_text(&d.disk, &parts[0], "/EFI/BOOT/message.txt");
    assert!(
        msg.contains("ExampleTeamedNIC.ipaddress2: 198.51.100.22"),
        "{msg}"
    );
    assert!(msg.contains("ExamplePassword: Ex-Pw-19z"), "{msg}");
    let before = fat_complaints(&gold, &parts[0]);
    for c in fat_complaints(&d.disk, &parts[0]) {
        assert!(before.contains(&c), "new fsck.fat complaint: {c}");
    }

    // The older bundle (SHA1SUM) carries the same image: it is reused, not imported again.
    let old = support_2017_network_values();
    let d = deploy(
        &repo,
        "net-old",
        &bundle_path(SUPPORT_2017_03).display().to_string(),
        "HPE - Support 1.0 - network deployment test-2017-03-24",
        &old,
    );
    let msg = fat_text(&d.disk, &parts[0], "/EFI/BOOT/message.txt");
    assert!(msg.contains("NIC2: 198.18.0.54"), "{msg}");
    assert!(msg.contains("ExampleNumber: 16"), "{msg}");
    assert_eq!(repo.ok(&["image", "ls"]).lines().count(), 2, "one image");
    for c in fat_complaints(&d.disk, &parts[0]) {
        assert!(before.contains(&c), "new fsck.fat complaint: {c}");
    }
}

/// The RHEL8 "UEFI paradigm" build plan (NIC teaming) drops its first-boot scripts on the
/// Support image's ESP, attributes substituted, passwords in the guest files only.
#[test]
fn the_rhel8_uefi_scripts_deploy_onto_the_support_image() {
    if !need_root() {
        return;
    }
    let repo = Repo::new();
    repo.ok(&[
        "deploy",
        "seed",
        "-q",
        "--artifacts",
        &bundle_path(SUPPORT).display().to_string(),
        "--plan",
        "HPE - Support 1.0 - simple deployment test-2017-11-29",
    ]);
    let rhel = BundleFiles::open(RHEL8);
    let mut f = Folder::new(&repo, "rhel8-on-support");
    f.own("prepare the RHEL8 ESP", &prep_dirs(&RHEL8_DIRS))
        .hpe_build_plan(&rhel, RHEL8_TEAMS);
    let dir = f.plan(SUPPORT_IMAGE);
    let v = rhel8_values(RHEL8_TEAMS, "esp-01");
    let d = deploy(&repo, "rhel-01", &dir, PLAN, &v);
    d.check_secrets(&v, &RHEL8_PASSWORDS);
    let parts = sfdisk_parts(&d.disk);
    let files = f.hpe_uploads(&v);
    assert_eq!(files.len(), 8, "{:?}", files.keys());
    fat_has(&d.disk, &parts[0], &files);
    let users = &files["/EFI/HPE/isdeploy/scripts/05configure-users.bash"];
    assert!(
        users.contains("echo \"root:Root-Pw-3k9Q\" | chpasswd"),
        "{users}"
    );
    let gold = repo.path("support-gold.raw");
    repo.ok(&["image", "export", SUPPORT_IMAGE, gold.to_str().unwrap()]);
    let before = fat_complaints(&gold, &parts[0]);
    for c in fat_complaints(&d.disk, &parts[0]) {
        assert!(before.contains(&c), "new fsck.fat complaint: {c}");
    }
    // The golden image's own file is still there.
    assert!(fat_text(&d.disk, &parts[0], "/EFI/BOOT/message.txt").contains("UEFI"));
}

// ---------------------------------------------------------------------------------------
// 3. Golden images the tests build.

/// Builds golden image `name` in the repository's work directory and imports it.
fn golden(repo: &Repo, name: &str) -> Golden {
    let g = golden_images::build(name, &repo.work);
    repo.ok(&["image", "import", g.path.to_str().unwrap(), "--name", name]);
    g
}

/// debian-gpt (GPT, FAT32 ESP, ext4 root): the Support network personalization script
/// (ESP), a root step (ext4, with the ESP mounted under it) and the RHEL8 NICs build plan
/// (ESP).
#[test]
fn hpe_scripts_personalize_a_gpt_image_with_a_fat_esp_and_an_ext4_root() {
    if !need_root() {
        return;
    }
    let repo = Repo::new();
    let g = golden(&repo, "debian-gpt");
    let support = BundleFiles::open(SUPPORT);
    let rhel = BundleFiles::open(RHEL8);
    let mut f = Folder::new(&repo, "debian-artifacts");
    f.hpe(
        &support,
        "HPE - Support 1.0 - network example UEFI personalization script - 2017-08-28",
    )
    .declare(
        support.declarations_of("HPE - Support 1.0 - network test deployment (UEFI) - 2017-11-29"),
    )
    .own("personalize the root", ROOT_STEP)
    .own(
        "bulk on the ESP",
        &bulk_step("/dev/sda1", "/EFI/bulk", DEB_ESP_GONE),
    )
    .own(
        "bulk on the root",
        &bulk_step("/dev/sda2", "/srv/bulk", DEB_ROOT_GONE),
    )
    .own("prepare the RHEL8 ESP", &prep_dirs(&RHEL8_DIRS))
    .hpe_build_plan(&rhel, RHEL8_NICS);
    let dir = f.plan("debian-gpt");
    let mut v = rhel8_values(RHEL8_NICS, "deb-01");
    v.extend(support_network_values("debian on gpt"));
    let d = deploy(&repo, "deb-01", &dir, PLAN, &v);
    d.check_secrets(
        &v,
        &["ExamplePassword", "NewRootPassword", "NewUsersPassword"],
    );
    d.listings_match_guestfish(MOUNT_STEP, "debian-gpt", &LISTINGS);

    let (esp, root) = (&g.parts[0], &g.parts[1]);
    fat_clean(&d.disk, esp);
    let files = f.hpe_uploads(&v);
    assert_eq!(files.len(), 8, "{:?}", files.keys());
    fat_has(&d.disk, esp, &files);
    let nics = &files["/EFI/HPE/isdeploy/scripts/04Mgmt-configuration.bash"];
    assert!(nics.contains("NICs_count=2"), "{nics}");
    assert!(
        nics.contains("02:00:00:00:01:02 102 10.1.2.11 10.1.2.1"),
        "{nics}"
    );
    assert_eq!(
        fat_text(&d.disk, esp, "/EFI/debian/grub.cfg"),
        "search.fs_uuid 0b9d6f8e root\n"
    );
    check_root_step(&d.disk, root, esp, &g.path, &v);
    let out = repo.path("deb-esp");
    fat_copy_out(&d.disk, esp, &out);
    check_bulk(&out, "/EFI/bulk", DEB_ESP_GONE);
    let m = KernelMount::new(&d.disk, root, "ext4");
    check_bulk(m.dir.path(), "/srv/bulk", DEB_ROOT_GONE);
}

const DEB_ESP_GONE: &[&str] = &["/EFI/debian/grubx64.efi"];
const DEB_ROOT_GONE: &[&str] = &["/var/", "/etc/lines", "/etc/dangling"];

/// fat16-mbr (MBR, one FAT16 partition): a preparation step makes /EFI/BOOT, then the
/// 2017-03 Support network script and the RHEL8 NICs build plan write onto it.
#[test]
fn hpe_uefi_scripts_personalize_an_mbr_fat16_image() {
    if !need_root() {
        return;
    }
    let repo = Repo::new();
    let g = golden(&repo, "fat16-mbr");
    let support = BundleFiles::open(SUPPORT_2017_03);
    let rhel = BundleFiles::open(RHEL8);
    let mut f = Folder::new(&repo, "fat16-artifacts");
    f.own("make /EFI/BOOT", &prep_dirs(&["/EFI/BOOT"]))
        .own("bulk", &bulk_step("/dev/sda1", "/bulk", FAT16_GONE))
        .hpe(
            &support,
            "HPE - Support 1.0 - network example UEFI personalization script - 2017-03-24",
        )
        .declare(
            support
                .declarations_of("HPE - Support 1.0 - network test deployment (UEFI) - 2017-03-24"),
        )
        .own("prepare the RHEL8 ESP", &prep_dirs(&RHEL8_DIRS))
        .hpe_build_plan(&rhel, RHEL8_NICS);
    let dir = f.plan("fat16-mbr");
    let mut v = rhel8_values(RHEL8_NICS, "bootbank");
    v.extend(support_2017_network_values());
    let d = deploy(&repo, "fat16", &dir, PLAN, &v);
    d.check_secrets(&v, &RHEL8_PASSWORDS);
    d.listings_match_guestfish(MOUNT_STEP, "fat16-mbr", &LISTINGS);
    let part = &g.parts[0];
    fat_clean(&d.disk, part);
    let files = f.hpe_uploads(&v);
    assert_eq!(files.len(), 8, "{:?}", files.keys());
    fat_has(&d.disk, part, &files);
    let msg = &files["/EFI/BOOT/message.txt"];
    assert!(msg.contains("NIC1: 203.0.113.7"), "{msg}");
    // The image's own files, long names included, are untouched.
    assert_eq!(
        fat_text(&d.disk, part, "/Long File Name.txt"),
        "long names need VFAT entries\n"
    );
    assert!(fat_text(&d.disk, part, "/boot.cfg").contains("build=7.0.3"));
    let out = repo.path("fat16-out");
    fat_copy_out(&d.disk, part, &out);
    check_bulk(&out, "/bulk", FAT16_GONE);
}

const FAT16_GONE: &[&str] = &["/dir/", "/README.TXT", "/empty/"];

/// lvm-gpt (GPT, FAT32 ESP, ext4 on an LV): the Developer bundle's personalization script
/// (ESP), the root step (finds /dev/vg0/root in list-filesystems, mounts the ESP under it)
/// and the RHEL8 NIC-teaming build plan (ESP). The LV is read where lvm2 says it lies.
#[test]
fn hpe_scripts_personalize_a_gpt_image_with_its_root_on_lvm() {
    if !need_root() {
        return;
    }
    let repo = Repo::new();
    let g = golden(&repo, "lvm-gpt");
    let dev = BundleFiles::open(DEVELOPER);
    let rhel = BundleFiles::open(RHEL8);
    let mut f = Folder::new(&repo, "lvm-artifacts");
    f.hpe(
        &dev,
        "HPE - Developer 1.0 - example UEFI personalization script - 2017-03-24",
    )
    .declare(dev.declarations_of("HPE - Developer 1.0 - example UEFI deploy - 2017-03-24"))
    .own("personalize the root", ROOT_STEP)
    .own(
        "bulk on the LV",
        &bulk_step("/dev/vg0/root", "/srv/bulk", LVM_ROOT_GONE),
    )
    .own("prepare the RHEL8 ESP", &prep_dirs(&RHEL8_DIRS))
    .hpe_build_plan(&rhel, RHEL8_TEAMS);
    let dir = f.plan("lvm-gpt");
    let mut v = rhel8_values(RHEL8_TEAMS, "rhel-lvm");
    v.extend(developer_values());
    let d = deploy(&repo, "lvm-01", &dir, PLAN, &v);
    d.check_secrets(
        &v,
        &["ExamplePassword", "NewRootPassword", "NewUsersPassword"],
    );
    d.listings_match_guestfish(MOUNT_STEP, "lvm-gpt", &LISTINGS);
    d.listings_match_guestfish("personalize the root", "lvm-gpt", &["vgs", "lvs"]);

    let esp = &g.parts[0];
    fat_clean(&d.disk, esp);
    let files = f.hpe_uploads(&v);
    assert_eq!(files.len(), 9, "{:?}", files.keys());
    fat_has(&d.disk, esp, &files);
    let msg = &files["/EFI/BOOT/message.txt"];
    assert!(msg.contains("ExamplePassword: Dv-Pw-55x"), "{msg}");
    let bonding = &files["/EFI/HPE/isdeploy/scripts/04Mgmt-bonding-configuration.bash"];
    assert!(bonding.contains("team1=bond-b"), "{bonding}");
    assert_eq!(
        fat_text(&d.disk, esp, "/EFI/redhat/grub.cfg"),
        "set root=lvm/vg0-root\n"
    );
    let lv = golden_images::lvm_lv(&repo.work, &d.disk, &g.parts, "root");
    let lv_gold = golden_images::lvm_lv(&repo.work, &g.path, &g.parts, "root");
    assert_eq!((lv.start, lv.len), (lv_gold.start, lv_gold.len));
    check_root_step(&d.disk, &lv, esp, &g.path, &v);
    {
        let m = KernelMount::new(&d.disk, &lv, "ext4");
        check_bulk(m.dir.path(), "/srv/bulk", LVM_ROOT_GONE);
    }
    // The swap LV beside it is untouched.
    let swap = golden_images::lvm_lv(&repo.work, &d.disk, &g.parts, "swap");
    let blkid = ok(Command::new("blkid")
        .args(["-p", "-o", "value", "-s", "UUID", "-O"])
        .arg(swap.start.to_string())
        .arg(&d.disk));
    assert_eq!(blkid.trim(), "5f4e3d2c-1b0a-4998-8776-655443322110");
}

const LVM_ROOT_GONE: &[&str] = &["/var/", "/etc/sysconfig/network"];

/// A first-boot step in the style of HPE's Windows bundles: a SetupComplete.cmd written by
/// heredoc with attributes, and unattend.xml edited on the host side.
const WINDOWS_STEP: &str = r##"# Windows first boot (HPE Windows style): SetupComplete.cmd and unattend.xml.
list-filesystems
mount /dev/sda1 /
mkdir-p /Windows/Setup/Scripts
upload -<<END /Windows/Setup/Scripts/SetupComplete.cmd
@echo off
rem Written by HPE Image Streamer
net user Administrator @AdminPassword@
netsh interface ip set address name="Ethernet" static @MgmtNIC.ipaddress@ @MgmtNIC.netmask@ @MgmtNIC.gateway@
netsh interface ip set dns name="Ethernet" static @MgmtNIC.dns1@
END
download /unattend.xml ./unattend.xml
!sed -i 's|<unattend/>|<unattend><ComputerName>@ComputerName@</ComputerName></unattend>|' ./unattend.xml
upload ./unattend.xml /unattend.xml
umount /
"##;

/// windows-ntfs (MBR, NTFS): the Windows-style step writes and edits files on NTFS;
/// ntfsfix finds nothing wrong and ntfs-3g reads them back.
#[test]
fn a_windows_style_step_personalizes_an_mbr_ntfs_image() {
    if !need_root() {
        return;
    }
    let repo = Repo::new();
    let g = golden(&repo, "windows-ntfs");
    let mut f = Folder::new(&repo, "windows-artifacts");
    f.own("Windows first boot", WINDOWS_STEP)
        .own("bulk", &bulk_step("/dev/sda1", "/bulk", NTFS_GONE))
        .declare(vec![
            decl(
                "ComputerName",
                "hostname",
                serde_json::json!({"helpText": ""}),
            ),
            decl(
                "AdminPassword",
                "password",
                serde_json::json!({"maxlen": "20"}),
            ),
            decl(
                "MgmtNIC",
                "nic",
                serde_json::json!({"ipv4static": true, "ipv4dhcp": true, "ipv4disable": false,
                "parameters": ["dns1", "gateway", "ipaddress", "mac", "netmask"]}),
            ),
        ]);
    let dir = f.plan("windows-ntfs");
    let mut v = values(&[("ComputerName", "WIN-07"), ("AdminPassword", "Adm1n-Pw-x8")]);
    nic(
        &mut v,
        "MgmtNIC",
        &[
            ("mac", "02:00:00:00:0c:01"),
            ("ipaddress", "172.16.5.20"),
            ("netmask", "255.255.0.0"),
            ("gateway", "172.16.0.1"),
            ("dns1", "172.16.0.53"),
        ],
    );
    let d = deploy(&repo, "win-07", &dir, PLAN, &v);
    d.check_secrets(&v, &["AdminPassword"]);
    d.listings_match_guestfish("Windows first boot", "windows-ntfs", &["list-filesystems"]);
    let part = &g.parts[0];
    let lo = Loop::new(&d.disk, part, true);
    let fix = Command::new("ntfsfix")
        .arg("-n")
        .arg(&lo.0)
        .output()
        .unwrap();
    assert!(
        fix.status.success(),
        "ntfsfix -n: {}{}",
        String::from_utf8_lossy(&fix.stdout),
        String::from_utf8_lossy(&fix.stderr)
    );
    drop(lo);
    let m = NtfsMount::new(&d.disk, part);
    assert_eq!(
        m.read("/Windows/Setup/Scripts/SetupComplete.cmd"),
        "@echo off\nrem Written by HPE Image Streamer\nnet user Administrator Adm1n-Pw-x8\n\
         netsh interface ip set address name=\"Ethernet\" static 172.16.5.20 255.255.0.0 172.16.0.1\n\
         netsh interface ip set dns name=\"Ethernet\" static 172.16.0.53\n"
    );
    assert_eq!(
        m.read("/unattend.xml"),
        "<?xml version=\"1.0\"?>\n<unattend><ComputerName>WIN-07</ComputerName></unattend>\n"
    );
    assert_eq!(
        m.read("/Users/Public/Desktop/ReadMe.txt"),
        "Hello from the golden image"
    );
    assert_eq!(
        m.read("/Windows/System32/drivers/etc/hosts"),
        "127.0.0.1       localhost\r\n"
    );
    check_bulk(m.dir.path(), "/bulk", NTFS_GONE);
}

const NTFS_GONE: &[&str] = &["/PerfLogs/", "/pagefile.sys", "/Program Files/"];

/// A deployment plan in a folder may name an image that is in the store but not in the
/// folder (the tests' own golden images have no bundle): strata uses the store's image.
#[test]

fn a_folder_plan_deploys_an_image_only_the_store_holds() {
    let repo = Repo::new();
    let disk = repo.path("tiny.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    repo.ok(&["image", "import", disk.to_str().unwrap(), "--name", "tiny"]);
    let mut f = Folder::new(&repo, "tiny-artifacts");
    f.own("say hello", "echo \"hello from a store image\"\n");
    let dir = f.plan_without_golden_image("tiny");
    let d = deploy(&repo, "tiny-01", &dir, PLAN, &BTreeMap::new());
    assert!(
        d.output.contains("hello from a store image"),
        "{}",
        d.output
    );
    let r: serde_json::Value = serde_json::from_str(&d.record).unwrap();
    assert_eq!(r["image"], "tiny", "{}", d.record);
}
