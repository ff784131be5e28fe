//! Behaviour of the whole custom-attribute pipeline: declarations, layers, validation,
//! substitution and masking, on small hand-written plans. The published bundles are
//! exercised in `bundle_tests`.

use serde_json::json;

use super::*;

fn decl(j: serde_json::Value) -> Declaration {
    Declaration::from_json(&j).expect("declaration")
}

/// A build-plan declaration the way HPE writes it: constraints as a JSON-encoded string.
fn bp(name: &str, kind: &str, value: Option<&str>, constraints: serde_json::Value) -> Declaration {
    decl(json!({
        "name": name, "type": kind, "value": value,
        "constraints": constraints.to_string(), "description": ""
    }))
}

fn given(list: &[&str]) -> DeploymentValues {
    let mut d = DeploymentValues::new();
    for a in list {
        d.set(a).expect("assignment");
    }
    d
}

struct Plan<'a> {
    scripts: Vec<Script<'a>>,
    bp: Vec<Declaration>,
    dp: Vec<Declaration>,
    given: DeploymentValues,
    builtins: Builtins,
}

impl<'a> Plan<'a> {
    fn new(scripts: &[(&'a str, &'a str)]) -> Plan<'a> {
        Plan {
            scripts: scripts
                .iter()
                .map(|&(name, text)| Script { name, text })
                .collect(),
            bp: Vec::new(),
            dp: Vec::new(),
            given: DeploymentValues::new(),
            builtins: Builtins::default(),
        }
    }
    fn bp(mut self, d: Declaration) -> Self {
        self.bp.push(d);
        self
    }
    fn dp(mut self, d: Declaration) -> Self {
        self.dp.push(d);
        self
    }
    fn give(mut self, list: &[&str]) -> Self {
        for a in list {
            self.given.set(a).expect("assignment");
        }
        self
    }
    fn resolve(&self) -> Result<Values, AttrErrors> {
        resolve(&Layers {
            scripts: &self.scripts,
            build_plan: &self.bp,
            deployment_plan: &self.dp,
            deployment: &self.given,
            builtins: &self.builtins,
        })
    }
    /// Resolves and expands the first script.
    fn expand(&self) -> String {
        let v = self.resolve().unwrap_or_else(|e| panic!("resolve: {e}"));
        v.expand_script(Some(self.scripts[0].name), self.scripts[0].text)
            .unwrap_or_else(|e| panic!("expand: {e}"))
    }
    fn errors(&self) -> Vec<AttrError> {
        match self.resolve() {
            Ok(_) => panic!("resolve should fail"),
            Err(AttrErrors(e)) => e,
        }
    }
}

fn one_invalid(errs: &[AttrError]) -> (&str, &str, Option<&str>) {
    assert_eq!(errs.len(), 1, "{errs:?}");
    match &errs[0] {
        AttrError::Invalid {
            name, rule, value, ..
        } => (name, rule, value.as_deref()),
        other => panic!("not Invalid: {other:?}"),
    }
}

#[test]
fn substitutes_inside_heredoc_bodies_and_bang_lines() {
    let script = "upload -<<EOF /etc/motd\nHost @Host@ ready\nEOF\n!echo \"@Host@\" > ./h\n<!echo echo @Host@\n# note @Host@\n";
    let out = Plan::new(&[("s", script)]).give(&["Host=web01"]).expand();
    assert_eq!(out, "upload -<<EOF /etc/motd\nHost web01 ready\nEOF\n!echo \"web01\" > ./h\n<!echo echo web01\n# note web01\n");
}

#[test]
fn default_with_spaces_slashes_and_colons_is_used_when_no_layer_gives_a_value() {
    let script = "!esxcli set @FireWallServices:syslog ntpClient httpClient@\nfdisk @Disk:/dev/sda@ @Url:http://h:80/x@\n";
    let out = Plan::new(&[("s", script)]).expand();
    assert_eq!(
        out,
        "!esxcli set syslog ntpClient httpClient\nfdisk /dev/sda http://h:80/x\n"
    );
}

#[test]
fn double_at_is_a_literal_at_and_bash_at_signs_stay_as_written() {
    let script = "!sed -i 's@@a@@b@@g' f\n!for u in \"${array[@]}\"; do echo \"$@\" root@host; done\n!mail admin@@example.com\n";
    let out = Plan::new(&[("s", script)]).expand();
    assert_eq!(out, "!sed -i 's@a@b@g' f\n!for u in \"${array[@]}\"; do echo \"$@\" root@host; done\n!mail admin@example.com\n");
}

#[test]
fn nic_subfields_substitute_and_the_dhcp_flag_reads_true_or_false() {
    let nic = bp(
        "Mgmt",
        "nic",
        None,
        json!({"ipv4static": true, "ipv4dhcp": true, "ipv4disable": false,
               "parameters": ["dhcp", "dns1", "dns2", "domain", "gateway", "ipaddress", "mac", "netmask", "vlanid"]}),
    );
    let script = "!cfg @Mgmt.mac@ @Mgmt.ipaddress@/@Mgmt.netmask@ gw=@Mgmt.gateway@ dns=@Mgmt.dns1@,@Mgmt.dns2@ dom=@Mgmt.domain@ vlan=@Mgmt.vlanid:0@ dhcp=@Mgmt.dhcp@\n";
    let out = Plan::new(&[("s", script)])
        .bp(nic.clone())
        .give(&[
            "Mgmt.mac=00:50:56:AB:CD:01",
            "Mgmt.ipaddress=10.0.0.5",
            "Mgmt.netmask=255.255.255.0",
            "Mgmt.gateway=10.0.0.1",
            "Mgmt.dns1=10.0.0.2",
            "Mgmt.dns2=10.0.0.3",
            "Mgmt.domain=example.com",
        ])
        .expand();
    assert_eq!(
        out,
        "!cfg 00:50:56:AB:CD:01 10.0.0.5/255.255.255.0 gw=10.0.0.1 dns=10.0.0.2,10.0.0.3 dom=example.com vlan=0 dhcp=false\n"
    );
    // DHCP: the address fields substitute as empty, which HPE's scripts test for.
    let out = Plan::new(&[(
        "s",
        "[[ \"@Mgmt.ipaddress@\" =~ x ]] @Mgmt.mac@ @Mgmt.dhcp@\n",
    )])
    .bp(nic)
    .give(&["Mgmt.mac=00:50:56:AB:CD:01", "Mgmt.dhcp=true"])
    .expand();
    assert_eq!(out, "[[ \"\" =~ x ]] 00:50:56:AB:CD:01 true\n");
}

#[test]
fn teamed_nic_subfields_substitute() {
    let nic = bp(
        "Team",
        "nic",
        None,
        json!({"ipv4static": true, "ipv4dhcp": true, "ipv4disable": false, "ipv4noteaming": false,
               "parameters": ["dhcp", "dns1", "dns2", "gateway", "ipaddress1", "ipaddress2", "mac1", "mac2", "netmask"]}),
    );
    let out = Plan::new(&[(
        "s",
        "@Team.mac1@ @Team.mac2@ @Team.ipaddress1@ @Team.ipaddress2@ @Team.netmask@",
    )])
    .bp(nic)
    .give(&[
        "Team.mac1=00:00:00:00:00:01",
        "Team.mac2=00:00:00:00:00:02",
        "Team.ipaddress1=10.1.0.1",
        "Team.ipaddress2=10.1.0.2",
        "Team.netmask=255.255.0.0",
    ])
    .expand();
    assert_eq!(
        out,
        "00:00:00:00:00:01 00:00:00:00:00:02 10.1.0.1 10.1.0.2 255.255.0.0"
    );
}

#[test]
fn builtin_initiators_come_from_the_iscsi_boot_settings() {
    let mut plan = Plan::new(&[(
        "iscsi",
        "!esxcfg-vmknic -a -i @_Initiator1.ip@ -n @_Initiator1.netmask@ gw @_Initiator1.gateway:none@\n!grep -i @_Initiator2.mac@\n",
    )]);
    plan.builtins.initiator1 = Some(Initiator {
        ip: "192.168.10.5".into(),
        mac: "00:11:22:33:44:55".into(),
        netmask: "255.255.255.0".into(),
        gateway: String::new(),
    });
    plan.builtins.initiator2 = Some(Initiator {
        ip: "192.168.11.5".into(),
        mac: "00:11:22:33:44:66".into(),
        netmask: "255.255.255.0".into(),
        gateway: "192.168.11.1".into(),
    });
    assert_eq!(
        plan.expand(),
        "!esxcfg-vmknic -a -i 192.168.10.5 -n 255.255.255.0 gw none\n!grep -i 00:11:22:33:44:66\n"
    );
    let listing = plan.resolve().unwrap().listing();
    assert!(
        listing.contains(&("_Initiator1.ip".into(), "192.168.10.5".into())),
        "{listing:?}"
    );
}

#[test]
fn builtin_without_iscsi_settings_is_missing_with_script_and_line() {
    let errs = Plan::new(&[("iscsi", "echo\n!x @_Initiator1.ip@ @_Initiator1.ip@\n")]).errors();
    assert_eq!(
        errs,
        vec![AttrError::Missing {
            name: "_Initiator1.ip".into(),
            script: Some("iscsi".into()),
            line: 2,
            builtin: true
        }]
    );
    assert!(errs[0].to_string().contains("iSCSI boot settings"));
}

#[test]
fn precedence_is_script_default_then_build_plan_then_deployment_plan_then_deployment() {
    let script = "@A:script@ @B:script@ @C:script@ @D:script@";
    let plan = Plan::new(&[("s", script)])
        .bp(bp("B", "string", Some("build"), json!({})))
        .bp(bp("C", "string", Some("build"), json!({})))
        .bp(bp("D", "string", Some("build"), json!({})))
        .dp(bp("C", "string", Some("dplan"), json!({})))
        .dp(bp("D", "string", Some("dplan"), json!({})))
        .give(&["D=mine"]);
    assert_eq!(plan.expand(), "script build dplan mine");
    let v = plan.resolve().unwrap();
    assert_eq!(v.source("A"), Some(Source::ScriptDefault));
    assert_eq!(v.source("B"), Some(Source::BuildPlan));
    assert_eq!(v.source("C"), Some(Source::DeploymentPlan));
    assert_eq!(v.source("D"), Some(Source::Deployment));
}

#[test]
fn each_reference_uses_its_own_default_and_a_bare_one_the_first_seen() {
    let out = Plan::new(&[("s", "@X:one@ @X:two@ @X@")]).expand();
    assert_eq!(out, "one two one");
}

#[test]
fn declared_empty_string_substitutes_as_empty_and_beats_a_script_default() {
    let out = Plan::new(&[("s", "[@S@] [@T:dflt@] [@N@] [@I@]")])
        .bp(bp("S", "string", Some(""), json!({})))
        .bp(bp(
            "T",
            "string",
            Some(""),
            json!({"regex": "", "helpText": ""}),
        ))
        .bp(bp("N", "number", Some(""), json!({})))
        .bp(bp("I", "ipv4", Some(""), json!({"helpText": ""})))
        .expand();
    assert_eq!(out, "[] [] [] []");
}

#[test]
fn declared_empty_value_fails_where_its_constraints_exclude_it() {
    let errs = Plan::new(&[("s", "@O@ @R@ @V@")])
        .bp(bp("O", "option", Some(""), json!({"options": ["A", "B"]})))
        .bp(bp("R", "string", Some(""), json!({"regex": "^[a-z]+$"})))
        .bp(bp(
            "V",
            "number",
            Some(""),
            json!({"minimum": "1", "maximum": "51200", "unit": "MiB"}),
        ))
        .errors();
    let names: Vec<String> = errs
        .iter()
        .map(|e| match e {
            AttrError::Invalid { name, rule, .. } => format!("{name} {rule}"),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        names,
        vec![
            "O options=[A, B]",
            "R regex=^[a-z]+$",
            "V type number, minimum=1, maximum=51200"
        ]
    );
}

#[test]
fn missing_value_names_attribute_script_and_first_line() {
    let errs = Plan::new(&[
        ("first", "ok\n@Nope@\n@Nope@\n"),
        ("second", "@Nope@ @Nic.mac@"),
    ])
    .bp(bp("Nic", "nic", None, json!({"parameters": ["mac"]})))
    .errors();
    assert_eq!(
        errs,
        vec![
            AttrError::Missing {
                name: "Nope".into(),
                script: Some("first".into()),
                line: 2,
                builtin: false
            },
            AttrError::Missing {
                name: "Nope".into(),
                script: Some("second".into()),
                line: 1,
                builtin: false
            },
            AttrError::Missing {
                name: "Nic.mac".into(),
                script: Some("second".into()),
                line: 1,
                builtin: false
            },
        ]
    );
    let text = errs[0].to_string();
    assert!(
        text.contains("Nope") && text.contains("\"first\"") && text.contains("line 2"),
        "{text}"
    );
}

/// One attribute, one bad value: the error names the attribute, the rule and the value.
fn rejected(
    kind: &str,
    constraints: serde_json::Value,
    value: &str,
) -> (String, String, Option<String>) {
    let errs = Plan::new(&[("s", "@X@")])
        .bp(bp("X", kind, Some("placeholder"), constraints))
        .give(&[&format!("X={value}")]);
    // The placeholder itself may be invalid; only the deployment's value is substituted.
    let errs = errs.errors();
    let (n, r, v) = one_invalid(&errs);
    (n.to_string(), r.to_string(), v.map(str::to_string))
}

#[test]
fn each_scalar_rule_failure_names_attribute_rule_and_value() {
    let cases: &[(&str, serde_json::Value, &str, &str)] = &[
        (
            "string",
            json!({"regex": "^[a-z]+$"}),
            "ABC",
            "regex=^[a-z]+$",
        ),
        (
            "string",
            json!({"options": ["new_vol"]}),
            "other",
            "options=[new_vol]",
        ),
        ("string", json!({"maxlen": "3"}), "abcd", "maxlen=3"),
        ("number", json!({}), "12a", "type number"),
        (
            "number",
            json!({"minimum": "1", "maximum": "4", "increment": "1"}),
            "0",
            "minimum=1",
        ),
        (
            "number",
            json!({"minimum": "1", "maximum": "4"}),
            "5",
            "maximum=4",
        ),
        (
            "number",
            json!({"minimum": "1", "increment": "2"}),
            "4",
            "increment=2",
        ),
        (
            "number",
            json!({"increment": "0.5"}),
            "1.25",
            "increment=0.5",
        ),
        (
            "number",
            json!({"options": ["8", "16"]}),
            "12",
            "options=[8, 16]",
        ),
        (
            "option",
            json!({"options": ["Enable", "Disable"]}),
            "Maybe",
            "options=[Enable, Disable]",
        ),
        ("ipv4", json!({"helpText": ""}), "10.0.0.256", "type ipv4"),
        (
            "hostname",
            json!({"helpText": ""}),
            "web.example.com",
            "type hostname",
        ),
        ("hostname", json!({}), "-web", "type hostname"),
        ("fqdn", json!({"helpText": ""}), "web", "type fqdn"),
        ("fqdn", json!({}), "web..example.com", "type fqdn"),
    ];
    for (kind, c, value, rule) in cases {
        let (n, r, v) = rejected(kind, c.clone(), value);
        assert_eq!(
            (n.as_str(), r.as_str(), v.as_deref()),
            ("X", *rule, Some(*value)),
            "{kind} {c} {value}"
        );
    }
    // And the good values pass.
    for (kind, c, value) in [
        (
            "number",
            json!({"minimum": "1", "maximum": "4", "increment": "1"}),
            "4",
        ),
        ("number", json!({"increment": "0.1"}), "0.3"),
        ("number", json!({"minimum": "-2.5"}), "-2.5"),
        ("hostname", json!({}), "web_01"),
        ("fqdn", json!({}), "web-01.example.com"),
        ("string", json!({"regex": "^/dev/"}), "/dev/sdb"),
    ] {
        let plan = Plan::new(&[("s", "@X@")]).bp(bp("X", kind, Some(value), c));
        assert_eq!(plan.expand(), value);
    }
}

#[test]
fn each_nic_rule_failure_names_the_subfield_and_rule() {
    let all = json!({"ipv4static": true, "ipv4dhcp": true, "ipv4disable": false,
                     "parameters": ["dns1", "dns2", "domain", "gateway", "ipaddress", "mac", "netmask", "vlanid"]});
    let mac = "N.mac=00:50:56:AB:CD:01";
    let static_ok = [mac, "N.ipaddress=10.0.0.5", "N.netmask=255.255.255.0"];
    let cases: Vec<(serde_json::Value, Vec<&str>, &str, &str)> = vec![
        (
            all.clone(),
            vec!["N.mac=00:50:56", "N.dhcp=true"],
            "N.mac",
            "nic mac",
        ),
        (
            all.clone(),
            vec!["N.dhcp=true"],
            "N.mac",
            "parameters include mac",
        ),
        (
            all.clone(),
            vec![mac],
            "N.ipaddress",
            "parameters include ipaddress",
        ),
        (
            all.clone(),
            vec![mac, "N.ipaddress=10.0.0.5"],
            "N.netmask",
            "parameters include netmask",
        ),
        (
            all.clone(),
            [&static_ok[..], &["N.netmask=255.0.255.0"]].concat(),
            "N.netmask",
            "nic netmask",
        ),
        (
            all.clone(),
            [&static_ok[..], &["N.vlanid=5000"]].concat(),
            "N.vlanid",
            "nic vlanid",
        ),
        (
            all.clone(),
            [&static_ok[..], &["N.gateway=gw"]].concat(),
            "N.gateway",
            "nic gateway",
        ),
        (
            all.clone(),
            [&static_ok[..], &["N.domain=a..b"]].concat(),
            "N.domain",
            "nic domain",
        ),
        (
            all.clone(),
            vec![mac, "N.ipv4disable=true"],
            "N",
            "ipv4disable=false",
        ),
        (
            all.clone(),
            vec![mac, "N.dhcp=true", "N.ipaddress=10.0.0.5"],
            "N.ipaddress",
            "dhcp=true",
        ),
        (all.clone(), vec![mac, "N.dhcp=yes"], "N.dhcp", "dhcp flag"),
        (
            json!({"ipv4dhcp": false, "parameters": ["mac"]}),
            vec![mac, "N.dhcp=true"],
            "N",
            "ipv4dhcp=false",
        ),
        (
            json!({"ipv4static": false, "parameters": ["mac"]}),
            vec![mac],
            "N",
            "ipv4static=false",
        ),
        (
            json!({"parameters": ["mac", "vlanid"]}),
            vec![mac, "N.ipaddress=10.0.0.5"],
            "N.ipaddress",
            "parameters=[mac, vlanid]",
        ),
        (
            json!({"ipv4noteaming": false, "parameters": ["mac1", "mac2"]}),
            vec!["N.mac1=00:50:56:AB:CD:01", "N.dhcp=true"],
            "N.mac2",
            "parameters include mac2",
        ),
    ];
    for (c, values, name, rule) in cases {
        let errs = Plan::new(&[("s", "@N.mac@ @N.mac1@")])
            .bp(bp("N", "nic", None, c.clone()))
            .give(&values)
            .errors();
        let found = errs.iter().any(
            |e| matches!(e, AttrError::Invalid { name: n, rule: r, .. } if n == name && r == rule),
        );
        assert!(
            found,
            "{c} {values:?}: expected {name} {rule}, got {errs:?}"
        );
    }
    // Teaming with one port is fine when ipv4noteaming allows it.
    let plan = Plan::new(&[("s", "@N.mac1@")])
        .bp(bp(
            "N",
            "nic",
            None,
            json!({"ipv4noteaming": true, "parameters": ["mac1", "mac2"]}),
        ))
        .give(&["N.mac1=00:50:56:AB:CD:01"]);
    assert_eq!(plan.expand(), "00:50:56:AB:CD:01");
}

#[test]
fn every_problem_is_collected_not_just_the_first() {
    let errs = Plan::new(&[("s", "@A@ @B@ @C@ @Missing@ @N@")])
        .bp(bp("A", "ipv4", Some("nope"), json!({})))
        .bp(bp("B", "option", Some("x"), json!({"options": ["y"]})))
        .bp(bp("C", "number", Some("x"), json!({})))
        .bp(bp("N", "nic", None, json!({})))
        .give(&["Typo=1"])
        .errors();
    assert_eq!(errs.len(), 6, "{errs:#?}");
    let text = AttrErrors(errs).to_string();
    for part in [
        "6 custom-attribute problems",
        "attribute A",
        "attribute B",
        "attribute C",
        "Missing",
        "@N@",
        "Typo",
    ] {
        assert!(text.contains(part), "{part} not in {text}");
    }
}

#[test]
fn password_never_appears_in_errors_logs_listing_or_debug() {
    const PW: &str = "Sup3r-s3cret-Passw0rd";
    let pw_decl = bp("RootPw", "password", Some(""), json!({"maxlen": "10"}));
    let script = "!echo \"root:@RootPw@\" | chpasswd\nupload -<<END /etc/x\npw=@RootPw@\nEND\n";

    // Too long: the error names the attribute and rule, never the value (Display or Debug).
    let plan = Plan::new(&[("users", script)])
        .bp(pw_decl.clone())
        .give(&[&format!("RootPw={PW}")]);
    let err = plan.resolve().expect_err("maxlen");
    let (name, rule, value) = one_invalid(&err.0);
    assert_eq!((name, rule, value), ("RootPw", "maxlen=10", None));
    for shown in [err.to_string(), format!("{err:?}"), format!("{err:#?}")] {
        assert!(!shown.contains(PW) && !shown.contains("Sup3r"), "{shown}");
    }
    assert!(err.to_string().contains("password"), "{err}");

    // Accepted: the script gets it; masking removes it from anything logged or recorded.
    let plan = Plan::new(&[("users", script)])
        .bp(bp("RootPw", "password", Some(""), json!({"maxlen": "30"})))
        .bp(bp("User", "string", Some("admin"), json!({})))
        .give(&[&format!("RootPw={PW}")]);
    let v = plan.resolve().unwrap();
    let out = v.expand_script(Some("users"), script).unwrap();
    assert!(out.contains(&format!("root:{PW}")) && out.contains(&format!("pw={PW}")));
    let logged = v.mask(&format!("running: {out}\nerror: chpasswd failed for {PW}"));
    assert!(!logged.contains(PW), "{logged}");
    assert!(logged.contains("root:********"), "{logged}");
    let listing = v.listing();
    assert_eq!(
        listing,
        vec![
            ("RootPw".to_string(), MASK.to_string()),
            ("User".to_string(), "admin".to_string())
        ]
    );
    for shown in [
        format!("{v:?}"),
        format!("{:?}", plan.given),
        format!("{:?}", plan.bp[0]),
    ] {
        assert!(!shown.contains(PW), "{shown}");
    }
    assert!(
        v.value("RootPw").is_none(),
        "value() never hands out a password"
    );

    // A declared password value (build plan) is hidden by Declaration's Debug as well.
    let d = bp("P", "password", Some(PW), json!({}));
    assert!(!format!("{d:?}").contains(PW));

    // A malformed assignment never echoes its input (it may be a mistyped password).
    let e = DeploymentValues::new()
        .set(&format!("RootPw {PW}"))
        .unwrap_err();
    assert!(!format!("{e} {e:?}").contains(PW));
    let e = DeploymentValues::new()
        .set(&format!("Root-Pw={PW}"))
        .unwrap_err();
    assert!(!format!("{e} {e:?}").contains(PW));
}

#[test]
fn password_falling_back_to_a_script_default_is_masked_too() {
    let plan = Plan::new(&[("s", "echo @Pw:ChangeMe123!@")]).bp(decl(json!({
        "name": "Pw", "type": "password", "value": null, "constraints": "{}"
    })));
    let v = plan.resolve().unwrap();
    assert_eq!(
        v.expand_script(None, "echo @Pw:ChangeMe123!@").unwrap(),
        "echo ChangeMe123!"
    );
    assert_eq!(v.mask("log: ChangeMe123!"), "log: ********");
}

#[test]
fn deployment_value_for_an_unknown_name_is_reported_as_a_typo() {
    let errs = Plan::new(&[("s", "@HostName@")])
        .give(&["HostName=a", "Hostname=b"])
        .errors();
    assert_eq!(
        errs,
        vec![AttrError::Unknown {
            name: "Hostname".into()
        }]
    );
}

#[test]
fn deployment_cannot_override_an_attribute_its_plan_marks_not_editable() {
    let mut d = bp("Locked", "string", Some("fixed"), json!({}));
    d.editable = Some(false);
    let errs = Plan::new(&[("s", "@Locked@")])
        .dp(d)
        .give(&["Locked=mine"])
        .errors();
    assert_eq!(
        errs,
        vec![AttrError::NotEditable {
            name: "Locked".into()
        }]
    );
}

#[test]
fn misused_references_are_errors_naming_script_and_line() {
    let errs = Plan::new(&[(
        "s",
        "@Nic@\n@Str.mac@\n@Nic.vlanid@\n@Nic.color@\n@_Initiator1@\n",
    )])
    .bp(bp("Nic", "nic", None, json!({"parameters": ["mac"]})))
    .bp(bp("Str", "string", Some("x"), json!({})))
    .give(&["Nic.mac=00:50:56:AB:CD:01", "Nic.dhcp=true"])
    .errors();
    let got: Vec<(String, usize)> = errs
        .iter()
        .map(|e| match e {
            AttrError::Usage { name, line, .. } => (name.clone(), *line),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("Nic".into(), 1),
            ("Str.mac".into(), 2),
            ("Nic.vlanid".into(), 3),
            ("Nic.color".into(), 4),
            ("_Initiator1".into(), 5)
        ]
    );
}

#[test]
fn values_of_the_wrong_shape_are_errors() {
    let errs = Plan::new(&[("s", "@Nic.mac@ @S@")])
        .bp(bp("Nic", "nic", None, json!({})))
        .bp(bp("S", "string", Some(""), json!({})))
        .give(&["Nic=00:50:56:AB:CD:01", "S.mac=x", "_Initiator1.ip=1.2.3.4"])
        .errors();
    let names: Vec<Option<String>> = errs
        .iter()
        .filter_map(|e| match e {
            AttrError::Assignment { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        names,
        vec![
            Some("_Initiator1".into()),
            Some("Nic".into()),
            Some("S".into())
        ],
        "{errs:?}"
    );
}

#[test]
fn deployment_values_parse_from_assignments_and_json() {
    let mut d = DeploymentValues::new();
    d.set("Cmd=a=b c").unwrap();
    d.set("Empty=").unwrap();
    d.merge_json(&json!({
        "Number": 50, "Flag": true, "Skip": null,
        "Nic": {"mac": "00:50:56:AB:CD:01", "dhcp": true, "vlanid": 7, "dns1": null}
    }))
    .unwrap();
    d.set("Nic.vlanid=8").unwrap();
    let out = Plan {
        given: d,
        ..Plan::new(&[("s", "@Cmd@|@Empty@|@Number@|@Flag@|@Nic.mac@|@Nic.dhcp@|@Nic.vlanid@|@Nic.dns1:192.0.2.53@|@Skip:d@")])
    }
    .expand();
    assert_eq!(out, "a=b c||50|true|00:50:56:AB:CD:01|true|8|192.0.2.53|d");

    assert!(DeploymentValues::new().set("NoEquals").is_err());
    assert!(DeploymentValues::new().set("1x=v").is_err());
    assert!(DeploymentValues::new().set("a.b.c=v").is_err());
    assert!(DeploymentValues::from_json(&json!(["x"])).is_err());
    let e = DeploymentValues::from_json(&json!({"A": [1], "B": {"mac": [2]}})).unwrap_err();
    assert_eq!(e.0.len(), 2);
    let mut d = given(&["N=x"]);
    assert!(d.set("N.mac=y").is_err(), "scalar then field");
}

#[test]
fn volume_size_makes_an_empty_volume_only_without_a_golden_image() {
    let vs = |unit: Option<&str>| {
        let mut c = json!({"minimum": "1", "maximum": "51200"});
        if let Some(u) = unit {
            c["unit"] = json!(u);
        }
        bp(VOLUME_SIZE, "number", Some(""), c)
    };
    let script = [(
        "s",
        "echo \"Create empty OS Volume of size @VolumeSize@\" MiB",
    )];
    let v = Plan::new(&script)
        .bp(vs(Some("MiB")))
        .give(&["VolumeSize=2048"])
        .resolve()
        .unwrap();
    assert_eq!(
        v.volume_plan(false).unwrap(),
        VolumePlan::Empty { bytes: 2048 << 20 }
    );
    assert_eq!(v.volume_plan(true).unwrap(), VolumePlan::GoldenImage);

    // Not given at all: the plan does not resolve (minimum), and without the range the
    // volume rule says what is missing.
    let errs = Plan::new(&script).bp(vs(Some("MiB"))).errors();
    assert_eq!(one_invalid(&errs).0, VOLUME_SIZE);
    let v = Plan::new(&script)
        .bp(bp(VOLUME_SIZE, "number", Some(""), json!({})))
        .resolve()
        .unwrap();
    let e = v.volume_plan(false).unwrap_err();
    assert!(e.to_string().contains("no golden image"), "{e}");
    assert_eq!(v.volume_plan(true).unwrap(), VolumePlan::GoldenImage);

    for (value, rule) in [
        ("0", "minimum=1"),
        ("51201", "maximum=51200"),
        ("ten", "type number, minimum=1, maximum=51200"),
    ] {
        let errs = Plan::new(&script)
            .bp(vs(None))
            .give(&[&format!("VolumeSize={value}")])
            .errors();
        assert_eq!(one_invalid(&errs).1, rule);
    }
    let v = Plan::new(&script)
        .bp(vs(None))
        .give(&["VolumeSize=1.5"])
        .resolve()
        .unwrap();
    assert!(v.volume_plan(false).is_err(), "MiB are whole");
    let v = Plan::new(&script)
        .bp(vs(Some("GB")))
        .give(&["VolumeSize=10"])
        .resolve()
        .unwrap();
    let e = v.volume_plan(false).unwrap_err();
    assert!(e.to_string().contains("unit=GB"), "{e}");
}

#[test]
fn unusable_declarations_are_refused_naming_attribute_and_key() {
    let cases = [
        (
            json!({"name": "A", "type": "colour", "value": ""}),
            "type \"colour\"",
        ),
        (
            json!({"name": "A", "type": "string", "constraints": "{not json"}),
            "not valid JSON",
        ),
        (
            json!({"name": "A", "type": "password", "constraints": "{\"maxlen\":\"ten\"}"}),
            "maxlen",
        ),
        (
            json!({"name": "A", "type": "number", "constraints": "{\"minimum\":\"5\",\"maximum\":\"1\"}"}),
            "above maximum",
        ),
        (
            json!({"name": "A", "type": "number", "constraints": "{\"increment\":\"0\"}"}),
            "increment",
        ),
        (
            json!({"name": "A", "type": "nic", "constraints": "{\"parameters\":[\"colour\"]}"}),
            "colour",
        ),
        (
            json!({"name": "My-Attr", "type": "string"}),
            "cannot be referenced",
        ),
        (json!({"name": "_Initiator1", "type": "string"}), "built-in"),
        (json!({"type": "string"}), "no string \"name\""),
        (json!({"name": "A", "value": [1]}), "value"),
    ];
    for (j, part) in cases {
        let e = Declaration::from_json(&j).unwrap_err();
        assert!(e.to_string().contains(part), "{j}: {e}");
    }
    let e = Declaration::list_from_json(
        &json!([{"name": "A", "type": "x"}, {"name": "B", "type": "y"}]),
    )
    .unwrap_err();
    assert_eq!(e.0.len(), 2);
    assert!(Declaration::list_from_json(&json!(null))
        .unwrap()
        .is_empty());
}

#[test]
fn declarations_round_trip_and_keep_unknown_keys() {
    let j = json!({
        "name": "A", "type": "string", "value": "v", "description": "d",
        "constraints": "{\"regex\":\"\",\"futureKey\":\"x\"}", "editable": true, "visible": false,
        "id": "1234", "someFutureField": [1, 2]
    });
    let d = decl(j.clone());
    assert_eq!(d.to_json(), j);
    assert_eq!(d.constraints().unknown, vec!["futureKey".to_string()]);
    let built = Declaration::new("B", Kind::Number, Some("3"), json!({"minimum": "1"})).unwrap();
    assert_eq!(built.constraints().minimum.as_deref(), Some("1"));
    assert_eq!(
        Declaration::from_json(&built.to_json()).unwrap().to_json(),
        built.to_json()
    );
    // No type: HPE's default, string, and none written back.
    let d = decl(json!({"name": "C", "value": "x"}));
    assert_eq!(d.kind, Kind::String);
    assert_eq!(d.to_json(), json!({"name": "C", "value": "x"}));
}

#[test]
fn a_regex_that_does_not_compile_is_reported_when_checked() {
    // Look-ahead is JavaScript, not Rust's regex: the bundle imports, the value check says why.
    let errs = Plan::new(&[("s", "@P@")])
        .bp(bp("P", "string", Some("x"), json!({"regex": "^(?=a)"})))
        .errors();
    let (n, r, _) = one_invalid(&errs);
    assert_eq!((n, r), ("P", "regex=^(?=a)"));
}

#[test]
fn expand_without_resolve_reports_unknown_references() {
    let v = Plan::new(&[("s", "")]).resolve().unwrap();
    assert_eq!(expand("a @@ b", &v).unwrap(), "a @ b");
    assert_eq!(expand("@X:d@", &v).unwrap(), "d");
    let e = expand("@X@ @Y@", &v).unwrap_err();
    assert_eq!(e.0.len(), 2);
}

mod props {
    use proptest::prelude::*;

    use super::super::*;

    fn empty_values() -> Values {
        resolve(&Layers {
            scripts: &[],
            build_plan: &[],
            deployment_plan: &[],
            deployment: &DeploymentValues::new(),
            builtins: &Builtins::default(),
        })
        .expect("empty plan")
    }

    proptest! {
        #[test]
        fn expand_never_panics_and_spans_are_sound(text in "[@a-zA-Z0-9_.: \n\r${}\\[\\]é-]{0,200}") {
            let v = empty_values();
            let _ = expand(&text, &v);
            for r in references(&text) {
                prop_assert!(text.is_char_boundary(r.span.start) && text.is_char_boundary(r.span.end));
                let s = &text[r.span.clone()];
                prop_assert!(s.starts_with('@') && s.ends_with('@') && s.len() >= 3);
            }
        }

        #[test]
        fn expand_never_panics_on_any_string(text in any::<String>()) {
            let _ = expand(&text, &empty_values());
            let _ = references(&text);
        }

        #[test]
        fn text_without_at_is_unchanged(text in "[^@]{0,300}") {
            prop_assert_eq!(expand(&text, &empty_values()).unwrap(), text);
        }

        #[test]
        fn defaults_only_text_expands_to_its_defaults(name in "[A-Za-z_][A-Za-z0-9_]{0,8}", d in "[^@\r\n]{0,20}") {
            let text = format!("x@{name}:{d}@y");
            prop_assert_eq!(expand(&text, &empty_values()).unwrap(), format!("x{d}y"));
        }
    }
}
