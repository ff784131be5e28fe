//! The custom attributes of HPE's five published bundles (tests/fixtures/hpe-artifacts):
//! every declaration reads and writes back unchanged, every type and constraint key is one
//! this module handles, every plan script expands given values for its attributes, and the
//! plans HPE meant to deploy as shipped do. The zips are compiled in (`include_bytes!`), so
//! the tests read no files.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Cursor, Read};

use serde_json::Value;

use super::*;

macro_rules! bundle {
    ($name:literal) => {
        (
            $name,
            include_bytes!(concat!(
                "../../../tests/fixtures/hpe-artifacts/",
                $name,
                ".zip"
            )) as &[u8],
        )
    };
}

const BUNDLES: [(&str, &[u8]); 5] = [
    bundle!("HPE-Foundation-Artifacts-2018-09-11-v4.0"),
    bundle!("HPE-ImageStreamer-Developer-2017-08-28-v4.1"),
    bundle!("HPE-RHEL8-EFI-2020-01-27-v6.40"),
    bundle!("HPE-Support-Artifacts-2017-03-24"),
    bundle!("HPE-Support-Artifacts-2017-11-29-v4.0"),
];

struct Bundle {
    name: &'static str,
    /// Plan scripts by id (the last part of `/rest/plan-scripts/<id>`): (name, content).
    scripts: BTreeMap<String, (String, String)>,
    build_plans: Vec<Value>,
    deployment_plans: Vec<Value>,
}

fn load(name: &'static str, bytes: &[u8]) -> Bundle {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).expect("fixture zip");
    let mut b = Bundle {
        name,
        scripts: BTreeMap::new(),
        build_plans: Vec::new(),
        deployment_plans: Vec::new(),
    };
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).expect("zip entry");
        let fname = f.name().to_string();
        if !fname.ends_with(".json") {
            continue;
        }
        let mut text = String::new();
        f.read_to_string(&mut text).expect("utf-8 json");
        let v: Value = serde_json::from_str(&text).expect("json");
        if let Some(id) = fname.strip_suffix("_planscript.json") {
            assert!(
                v["customAttributes"].is_null(),
                "{fname}: plan scripts declare no attributes"
            );
            let script_name = v["name"].as_str().unwrap_or_default().to_string();
            let content = v["content"].as_str().unwrap_or_default().to_string();
            b.scripts.insert(id.to_string(), (script_name, content));
        } else if fname.ends_with("_buildplan.json") {
            b.build_plans.push(v);
        } else if fname.ends_with("_deploymentplan.json") {
            b.deployment_plans.push(v);
        }
    }
    b
}

fn bundles() -> Vec<Bundle> {
    BUNDLES.iter().map(|(n, b)| load(n, b)).collect()
}

fn decls(plan: &Value) -> Vec<Declaration> {
    Declaration::list_from_json(&plan["customAttributes"])
        .unwrap_or_else(|e| panic!("{}: {e}", plan["name"]))
}

/// The scripts of a build plan, in step order.
fn steps<'a>(b: &'a Bundle, plan: &Value) -> Vec<Script<'a>> {
    let mut out = Vec::new();
    for step in plan["buildStep"].as_array().into_iter().flatten() {
        let uri = step["planScriptUri"].as_str().expect("planScriptUri");
        let id = uri.rsplit('/').next().unwrap_or_default();
        let (name, text) = b
            .scripts
            .get(id)
            .unwrap_or_else(|| panic!("{}: {uri} not in the bundle", b.name));
        out.push(Script { name, text });
    }
    out
}

fn all_declarations(bs: &[Bundle]) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for b in bs {
        for p in b.build_plans.iter().chain(&b.deployment_plans) {
            for d in p["customAttributes"].as_array().into_iter().flatten() {
                out.push((format!("{} / {}", b.name, p["name"]), d.clone()));
            }
        }
    }
    out
}

#[test]
fn every_declaration_in_the_bundles_round_trips_unchanged() {
    let all = all_declarations(&bundles());
    assert!(all.len() > 100, "only {} declarations found", all.len());
    for (where_, j) in all {
        let d = Declaration::from_json(&j).unwrap_or_else(|e| panic!("{where_}: {e}"));
        assert_eq!(d.to_json(), j, "{where_}");
    }
}

#[test]
fn the_bundles_use_every_type_and_only_known_constraint_keys() {
    let mut kinds = BTreeSet::new();
    let mut keys = BTreeSet::new();
    for (where_, j) in all_declarations(&bundles()) {
        let d = Declaration::from_json(&j).unwrap();
        assert!(
            d.constraints().unknown.is_empty(),
            "{where_}: {:?}",
            d.constraints().unknown
        );
        kinds.insert(d.kind.as_hpe());
        let c: Value = serde_json::from_str(j["constraints"].as_str().unwrap()).unwrap();
        keys.extend(c.as_object().unwrap().keys().cloned());
    }
    let all: BTreeSet<&str> = Kind::ALL.iter().map(|k| k.as_hpe()).collect();
    assert_eq!(kinds, all);
    let expected: BTreeSet<String> = [
        "helpText",
        "increment",
        "ipv4dhcp",
        "ipv4disable",
        "ipv4noteaming",
        "ipv4static",
        "maxlen",
        "maximum",
        "minimum",
        "options",
        "parameters",
        "regex",
        "unit",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(keys, expected, "the module doc's catalogue lists these");
}

/// A value that satisfies the declaration, as a deployment would give it.
fn sample(d: &Declaration, out: &mut DeploymentValues) {
    let c = d.constraints();
    let v = match d.kind {
        Kind::Nic => {
            let ps: Vec<String> = c
                .parameters
                .clone()
                .unwrap_or_else(|| NIC_FIELDS.iter().map(|s| s.to_string()).collect());
            for (i, p) in ps.iter().enumerate() {
                let v = match p.as_str() {
                    "mac" | "mac1" | "mac2" => format!("00:50:56:00:00:{i:02x}"),
                    "ipaddress" | "ipaddress1" | "ipaddress2" => format!("192.0.2.{}", 10 + i),
                    "netmask" => "255.255.255.0".into(),
                    "gateway" => "192.0.2.1".into(),
                    "dns1" | "dns2" => "192.0.2.53".into(),
                    "domain" => "example.com".into(),
                    "vlanid" => "42".into(),
                    _ => "false".into(),
                };
                out.set_value(&d.name, Some(p), &v).unwrap();
            }
            return;
        }
        _ if c.options.as_ref().is_some_and(|o| !o.is_empty()) => {
            c.options.as_ref().unwrap()[0].clone()
        }
        Kind::Number => c.minimum.clone().unwrap_or_else(|| "7".into()),
        Kind::Password => "pw-secret".into(),
        Kind::Ipv4 => "192.0.2.7".into(),
        Kind::Hostname => "host7".into(),
        Kind::Fqdn => "host7.example.com".into(),
        Kind::String | Kind::Option => "some text".into(),
    };
    out.set_value(&d.name, None, &v).unwrap();
}

fn assert_expanded(where_: &str, script: &Script<'_>, out: &str) {
    let left = references(out);
    assert!(
        left.is_empty(),
        "{where_} / {}: references left: {left:?}",
        script.name
    );
    // Every `@` that was not part of a reference survives exactly (`${array[@]}`).
    let refs = references(script.text);
    let in_refs: usize = refs
        .iter()
        .map(|r| script.text[r.span.clone()].matches('@').count())
        .sum();
    assert_eq!(
        script.text.matches('@').count() - in_refs,
        out.matches('@').count(),
        "{where_} / {}",
        script.name
    );
    if refs.is_empty() {
        assert_eq!(
            out, script.text,
            "{where_} / {}: no references, so unchanged",
            script.name
        );
    }
}

#[test]
fn every_plan_script_expands_given_values_for_its_declared_attributes() {
    let mut expanded = BTreeSet::new();
    for b in bundles() {
        for plan in &b.build_plans {
            let scripts = steps(&b, plan);
            let bp = decls(plan);
            // Deployed directly, and through each deployment plan made from this build plan.
            let mut dps: Vec<Vec<Declaration>> = vec![Vec::new()];
            for dp in &b.deployment_plans {
                if dp["oeBuildPlanURI"] == plan["name"] {
                    dps.push(decls(dp));
                }
            }
            for dp in dps {
                let mut given = DeploymentValues::new();
                let mut seen = BTreeSet::new();
                for d in dp.iter().chain(&bp) {
                    if seen.insert(d.name.clone()) {
                        sample(d, &mut given);
                    }
                }
                let builtins = Builtins::default();
                let layers = Layers {
                    scripts: &scripts,
                    build_plan: &bp,
                    deployment_plan: &dp,
                    deployment: &given,
                    builtins: &builtins,
                };
                let where_ = format!("{} / {}", b.name, plan["name"]);
                let values = resolve(&layers).unwrap_or_else(|e| panic!("{where_}: {e}"));
                for s in &scripts {
                    let out = values
                        .expand_script(Some(s.name), s.text)
                        .unwrap_or_else(|e| panic!("{where_}: {e}"));
                    assert_expanded(&where_, s, &out);
                    assert!(!values.mask(&out).contains("pw-secret"), "{where_}");
                    expanded.insert((b.name, s.name.to_string()));
                }
            }
        }
        // Scripts no build plan of the bundle uses: given a string for each name they use.
        for (name, text) in b.scripts.values() {
            if expanded.contains(&(b.name, name.clone())) {
                continue;
            }
            let scripts = [Script { name, text }];
            let mut given = DeploymentValues::new();
            for r in references(text) {
                given.set_value(&r.name, r.field.as_deref(), "v").unwrap();
            }
            let layers = Layers {
                scripts: &scripts,
                build_plan: &[],
                deployment_plan: &[],
                deployment: &given,
                builtins: &Builtins::default(),
            };
            let values = resolve(&layers).unwrap_or_else(|e| panic!("{} / {name}: {e}", b.name));
            let out = values.expand_script(Some(name), text).unwrap();
            assert_expanded(b.name, &scripts[0], &out);
            expanded.insert((b.name, name.clone()));
        }
    }
    let total: usize = bundles().iter().map(|b| b.scripts.len()).sum();
    assert_eq!(expanded.len(), total, "every plan script of every bundle");
}

fn bundle_named(bs: &[Bundle], prefix: &str) -> usize {
    bs.iter()
        .position(|b| b.name.starts_with(prefix))
        .expect("bundle")
}

fn deployment(
    b: &Bundle,
    dp_name: &str,
    given: &DeploymentValues,
) -> Result<(Values, Vec<(String, String)>), AttrErrors> {
    let dp = b
        .deployment_plans
        .iter()
        .find(|p| p["name"] == dp_name)
        .expect("deployment plan");
    let plan = b
        .build_plans
        .iter()
        .find(|p| p["name"] == dp["oeBuildPlanURI"])
        .expect("its build plan");
    let scripts = steps(b, plan);
    let (bpd, dpd) = (decls(plan), decls(dp));
    let layers = Layers {
        scripts: &scripts,
        build_plan: &bpd,
        deployment_plan: &dpd,
        deployment: given,
        builtins: &Builtins::default(),
    };
    let values = resolve(&layers)?;
    let mut outs = Vec::new();
    for s in &scripts {
        outs.push((
            s.name.to_string(),
            values.expand_script(Some(s.name), s.text)?,
        ));
    }
    Ok((values, outs))
}

#[test]
fn hpe_deployment_test_plans_deploy_as_shipped_with_empty_values_substituted_as_empty() {
    let bs = bundles();
    let dev = &bs[bundle_named(&bs, "HPE-ImageStreamer-Developer")];
    let none = DeploymentValues::new();
    let (_, outs) = deployment(
        dev,
        "HPE - Developer 1.0 - Deployment Test (UEFI) - 2017-03-24",
        &none,
    )
    .unwrap();
    let text = &outs[0].1;
    for line in [
        "    ExampleString1: \n",
        "    ExampleString3: Script Default\n",
        "    ExampleString4: Initial Script Default\n",
        "    ExampleNumber2: 9999\n",
        "    ExampleOption: Option1\n",
        "    ExampleIPv4Address: \n",
        "    ExamplePassword: \n",
    ] {
        assert!(text.contains(line), "{line:?} not in\n{text}");
    }
    // The "User" copy adds HPE's deliberate failure step: the attribute becomes a command
    // line that guestfish rejects.
    let (_, outs) = deployment(
        dev,
        "User - Developer 1.0 - Deployment Test (UEFI) - 2017-03-24",
        &none,
    )
    .unwrap();
    assert!(outs[1].1.ends_with("\nFail_OS_Deployment"), "{}", outs[1].1);

    for prefix in [
        "HPE-Support-Artifacts-2017-03-24",
        "HPE-Support-Artifacts-2017-11-29",
    ] {
        let b = &bs[bundle_named(&bs, prefix)];
        let dp = b
            .deployment_plans
            .iter()
            .find(|p| p["name"].as_str().unwrap().contains("simple"))
            .unwrap();
        let (_, outs) = deployment(b, dp["name"].as_str().unwrap(), &none).unwrap();
        assert!(
            outs[0].1.contains("ExampleString: Hello World!"),
            "{prefix}"
        );
    }
}

#[test]
fn network_test_plan_needs_its_nics_and_says_which_lines() {
    let bs = bundles();
    let b = &bs[bundle_named(&bs, "HPE-Support-Artifacts-2017-03-24")];
    let name = "HPE - Support 1.0 - network deployment test-2017-03-24";
    let err = deployment(b, name, &DeploymentValues::new()).unwrap_err();
    let missing: Vec<(String, usize)> = err
        .0
        .iter()
        .map(|e| match e {
            AttrError::Missing { name, line, .. } => (name.clone(), *line),
            other => panic!("{other}"),
        })
        .collect();
    assert_eq!(missing.len(), 10, "{missing:?}");
    assert_eq!(missing[0], ("NIC1.ipaddress".to_string(), 31));
    let given = DeploymentValues::from_json(&serde_json::json!({
        "NIC1": {"ipaddress": "10.0.0.5", "netmask": "255.255.255.0", "gateway": "10.0.0.1", "dns1": "10.0.0.2"},
        "NIC2": {"dhcp": true}
    }))
    .unwrap();
    let (values, outs) = deployment(b, name, &given).unwrap();
    let text = &outs[0].1;
    assert!(text.contains("    NIC1: 10.0.0.5\n    NIC1: 255.255.255.0\n    NIC1: 10.0.0.1\n    NIC1: 10.0.0.2\n    NIC1: \n"), "{text}");
    assert!(text.contains("    NIC2: \n    NIC2: \n"), "{text}");
    assert!(values
        .listing()
        .contains(&("NIC2.dhcp".into(), "true".into())));
}

#[test]
fn create_empty_volume_plan_needs_a_volume_size_within_its_range() {
    let bs = bundles();
    let b = &bs[bundle_named(&bs, "HPE-Foundation")];
    let name = "HPE - Foundation 1.0 - create empty OS Volume-2017-10-13";
    let err = deployment(b, name, &DeploymentValues::new()).unwrap_err();
    assert_eq!(err.0.len(), 1);
    let text = err.to_string();
    assert!(
        text.contains("VolumeSize") && text.contains("minimum=1"),
        "{text}"
    );
    for bad in ["0", "51201", "big"] {
        let mut g = DeploymentValues::new();
        g.set(&format!("VolumeSize={bad}")).unwrap();
        assert!(deployment(b, name, &g).is_err(), "{bad}");
    }
    let mut g = DeploymentValues::new();
    g.set("VolumeSize=20480").unwrap();
    let (values, outs) = deployment(b, name, &g).unwrap();
    assert!(outs[0]
        .1
        .contains("echo \"Create empty OS Volume of size 20480\" MiB"));
    assert_eq!(
        values.volume_plan(false).unwrap(),
        VolumePlan::Empty {
            bytes: 20480 * 1024 * 1024
        }
    );
}

#[test]
fn rhel_users_script_keeps_bash_array_syntax_and_its_passwords_are_masked() {
    let bs = bundles();
    let b = &bs[bundle_named(&bs, "HPE-RHEL8-EFI")];
    let plan = b
        .build_plans
        .iter()
        .find(|p| p["name"].as_str().unwrap().contains("NICs-LVM"))
        .unwrap();
    let scripts = steps(b, plan);
    let bp = decls(plan);
    let mut given = DeploymentValues::new();
    for a in [
        "NewRootPassword=R00t-pass",
        "NewUsersPassword=Us3r-pass",
        "NewUser=alice,bob",
        "HostName=rhel01",
        "DomainName=example.com",
        "ManagementNIC1.mac=00:50:56:00:00:01",
        "ManagementNIC1.dhcp=true",
    ] {
        given.set(a).unwrap();
    }
    let builtins = Builtins::default();
    let layers = Layers {
        scripts: &scripts,
        build_plan: &bp,
        deployment_plan: &[],
        deployment: &given,
        builtins: &builtins,
    };
    let err = resolve(&layers).unwrap_err();
    // NICs 2–4 have no value: each missing sub-field is named with its script line.
    assert!(
        err.0.iter().all(
            |e| matches!(e, AttrError::Missing { name, .. } if name.starts_with("ManagementNIC"))
        ),
        "{err}"
    );
    for n in 2..=4 {
        given
            .set(&format!("ManagementNIC{n}.mac=00:50:56:00:00:0{n}"))
            .unwrap();
        given
            .set(&format!("ManagementNIC{n}.ipv4disable=true"))
            .unwrap();
    }
    let layers = Layers {
        scripts: &scripts,
        build_plan: &bp,
        deployment_plan: &[],
        deployment: &given,
        builtins: &builtins,
    };
    let values = resolve(&layers).unwrap_or_else(|e| panic!("{e}"));
    let users = scripts
        .iter()
        .find(|s| s.name.contains("configure-users"))
        .unwrap();
    let out = values.expand_script(Some(users.name), users.text).unwrap();
    assert!(out.contains("for user in \"${array[@]}\""));
    assert!(
        out.contains("echo \"root:R00t-pass\" | chpasswd") && out.contains("password=Us3r-pass")
    );
    assert!(out.contains("users_string=\"alice,bob\""));
    let masked = values.mask(&out);
    assert!(!masked.contains("R00t-pass") && !masked.contains("Us3r-pass"));
    assert!(masked.contains("root:********"));
    let hostname = scripts
        .iter()
        .find(|s| s.name.contains("hostname"))
        .unwrap();
    let out = values
        .expand_script(Some(hostname.name), hostname.text)
        .unwrap();
    assert!(out.contains("fqdn=rhel01.example.com"), "{out}");
    let lvm = scripts.iter().find(|s| s.name.contains("LVM")).unwrap();
    let out = values.expand_script(Some(lvm.name), lvm.text).unwrap();
    assert!(
        out.contains("vgcreate new_vol_group /dev/sda1 /dev/sda2"),
        "{out}"
    );
    assert!(
        out.contains("FS=Disabled"),
        "the build plan's value beats the script default XFS"
    );
}
