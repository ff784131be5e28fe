//! The REST API end to end: the real `strata serve --api` on 127.0.0.1, driven over HTTPS by
//! curl (accepting the self-signed certificate the server made in its repository), with
//! users added by `strata user add --password-stdin`. Login, logout, refresh and expiry;
//! every endpoint refused without a session; plan-script CRUD byte for byte; references
//! (409 naming the user); 400s with their reasons; list paging, filter and sort; version
//! type names; golden images, OS volumes and tasks from the catalog; plain HTTP refused;
//! SIGTERM stopping iSCSI and HTTPS together; two nodes sharing one PostgreSQL catalog.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Repo, BIN};
use serde_json::{json, Value};

const USER: &str = "admin";
const PASSWORD: &str = "pass word-with spaces&symbols!";

/// A running `strata serve --api`, killed on drop unless stopped.
struct Api {
    child: Child,
    api: SocketAddr,
    iscsi: SocketAddr,
    log: PathBuf,
    _repo: std::sync::Arc<Repo>,
    work: PathBuf,
}

/// One HTTP exchange's result.
struct Reply {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}), status {}: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    /// An error in Image Streamer's shape, with this status; returns its message.
    fn error(&self, status: u16) -> String {
        assert_eq!(
            self.status,
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        let v = self.json();
        for f in ["errorCode", "message", "details", "recommendedActions"] {
            assert!(v.get(f).is_some(), "{f} missing from {v}");
        }
        assert!(
            v["errorCode"].as_str().is_some_and(|c| !c.is_empty()),
            "{v}"
        );
        v["message"].as_str().unwrap().to_owned()
    }
}

fn repo_with_user() -> Repo {
    let repo = Repo::new();
    repo.add_user(USER, PASSWORD);
    repo
}

impl Api {
    fn start(repo: Repo, extra: &[&str]) -> Api {
        Api::start_shared(std::sync::Arc::new(repo), extra)
    }

    fn start_shared(repo: std::sync::Arc<Repo>, extra: &[&str]) -> Api {
        Api::start_with_env(repo, extra, &[])
    }

    fn start_with_env(repo: std::sync::Arc<Repo>, extra: &[&str], env: &[(&str, &str)]) -> Api {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = repo.path(&format!("serve-{n}.log"));
        let mut child = Command::new(BIN)
            .arg("--repo")
            .arg(&repo.root)
            .args(["serve", "--listen", "127.0.0.1:0", "--api", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "debug")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (mut api, mut iscsi) = (None, None);
        while api.is_none() || iscsi.is_none() {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| {
                    panic!(
                        "server did not announce both addresses: {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    )
                });
            let addr: Option<SocketAddr> = line.rsplit(' ').next().and_then(|a| a.parse().ok());
            if line.starts_with("serving HTTPS API on") {
                api = addr;
            } else if line.starts_with("serving iSCSI on") {
                iscsi = addr;
            }
        }
        let work = repo.work.clone();
        Api {
            child,
            api: api.unwrap(),
            iscsi: iscsi.unwrap(),
            log,
            _repo: repo,
            work,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.api)
    }

    /// One request through curl: method, path, headers, optional body.
    fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Reply {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let out = self.work.join(format!("reply-{n}.body"));
        let hdr = self.work.join(format!("reply-{n}.headers"));
        let mut c = Command::new("curl");
        c.args(["-sS", "-k", "--max-time", "60", "-X", method])
            .arg("-o")
            .arg(&out)
            .arg("-D")
            .arg(&hdr)
            .args(["-w", "%{http_code}"]);
        for (k, v) in headers {
            c.arg("-H").arg(format!("{k}: {v}"));
        }
        if let Some(b) = body {
            let f = self.work.join(format!("req-{n}.body"));
            std::fs::write(&f, b).unwrap();
            c.args(["-H", "Content-Type: application/json"])
                .arg("--data-binary")
                .arg(format!("@{}", f.display()));
        }
        let o = c.arg(self.url(path)).output().expect("curl runs");
        let code = String::from_utf8_lossy(&o.stdout).trim().to_owned();
        assert!(
            o.status.success(),
            "curl {method} {path}: {} (code {code})",
            String::from_utf8_lossy(&o.stderr)
        );
        Reply {
            status: code.parse().unwrap(),
            headers: std::fs::read_to_string(&hdr).unwrap_or_default(),
            body: std::fs::read(&out).unwrap_or_default(),
        }
    }

    fn login(&self, user: &str, password: &str) -> Reply {
        let b = json!({"userName": user, "password": password}).to_string();
        self.call("POST", "/rest/login-sessions", &[], Some(b.as_bytes()))
    }

    fn session(&self) -> String {
        let r = self.login(USER, PASSWORD);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()["sessionID"].as_str().unwrap().to_owned()
    }

    fn get(&self, s: &str, path: &str) -> Reply {
        self.call("GET", path, &[("auth", s), ("X-API-Version", "800")], None)
    }

    fn send(&self, s: &str, method: &str, path: &str, body: &Value) -> Reply {
        let b = body.to_string();
        self.call(
            method,
            path,
            &[("auth", s), ("X-API-Version", "800")],
            Some(b.as_bytes()),
        )
    }

    fn delete(&self, s: &str, path: &str) -> Reply {
        self.call("DELETE", path, &[("auth", s)], None)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9`, and the exit reaped.
    fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then a bounded wait for the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "server ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn script(name: &str, content: &str) -> Value {
    json!({"type": "PlanScript", "name": name, "description": "a test script",
           "hpProvided": false, "planType": "deploy", "content": content})
}

fn build_plan(name: &str, script_uri: &str) -> Value {
    json!({"type": "OeBuildPlanV5", "name": name, "description": "", "hpProvided": false,
           "oeBuildPlanType": "deploy", "customAttributes": [],
           "buildStep": [{"serialNumber": "1", "planScriptUri": script_uri, "parameters": ""}]})
}

#[test]
fn no_endpoint_but_version_and_login_answers_without_a_session() {
    let api = Api::start(repo_with_user(), &[]);
    let v = api.call("GET", "/rest/version", &[], None);
    assert_eq!(v.status, 200);
    let v = v.json();
    assert!(v["currentVersion"].as_u64().unwrap() >= v["minimumVersion"].as_u64().unwrap());

    let endpoints = [
        ("GET", "/rest/plan-scripts"),
        ("POST", "/rest/plan-scripts"),
        ("GET", "/rest/plan-scripts/x"),
        ("PUT", "/rest/plan-scripts/x"),
        ("DELETE", "/rest/plan-scripts/x"),
        ("GET", "/rest/plan-scripts/x/usedby/readonly"),
        ("GET", "/rest/build-plans"),
        ("POST", "/rest/build-plans"),
        ("PUT", "/rest/build-plans/x"),
        ("DELETE", "/rest/build-plans/x"),
        ("GET", "/rest/deployment-plans"),
        ("POST", "/rest/deployment-plans"),
        ("GET", "/rest/deployment-plans/x/usedby"),
        ("GET", "/rest/golden-images"),
        ("GET", "/rest/golden-images/x"),
        ("GET", "/rest/os-volumes"),
        ("GET", "/rest/os-volumes/x"),
        ("GET", "/rest/tasks/x"),
        ("PUT", "/rest/login-sessions"),
        ("DELETE", "/rest/login-sessions"),
        ("GET", "/rest/no-such-thing"),
        ("POST", "/rest/version"),
    ];
    let body = script("s", "echo").to_string();
    for (m, p) in endpoints {
        let b = (m == "POST" || m == "PUT").then_some(body.as_bytes());
        let none = api.call(m, p, &[], b);
        none.error(401);
        let bogus = api.call(m, p, &[("auth", "0123456789abcdef")], b);
        bogus.error(401);
    }
    // With a session the same paths answer (here: list, or not found).
    let s = api.session();
    assert_eq!(api.get(&s, "/rest/plan-scripts").status, 200);
    api.get(&s, "/rest/no-such-thing").error(404);
    api.get(&s, "/rest/tasks/nope").error(404);
}

#[test]
fn login_refresh_logout_and_wrong_passwords() {
    let api = Api::start(repo_with_user(), &[]);
    let bad = api.login(USER, "not the password");
    let msg = bad.error(401);
    assert!(
        !String::from_utf8_lossy(&bad.body).contains("not the password"),
        "{msg}"
    );
    api.login("nobody", PASSWORD).error(401);
    api.call(
        "POST",
        "/rest/login-sessions",
        &[],
        Some(b"{\"userName\": 1}"),
    )
    .error(400);

    let s = api.session();
    let s2 = api.session();
    assert_ne!(s, s2, "each login is its own session");
    assert_eq!(api.get(&s, "/rest/plan-scripts").status, 200);
    let r = api.call("PUT", "/rest/login-sessions", &[("auth", &s)], None);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["sessionID"], s.as_str());
    assert_eq!(api.delete(&s, "/rest/login-sessions").status, 204);
    api.get(&s, "/rest/plan-scripts").error(401);
    api.call("PUT", "/rest/login-sessions", &[("auth", &s)], None)
        .error(401);
    // The other session lives on.
    assert_eq!(api.get(&s2, "/rest/plan-scripts").status, 200);

    // Passwords never reach the log, even at debug level.
    let log = api.log();
    assert!(log.contains("login"), "{log}");
    assert!(
        !log.contains(PASSWORD) && !log.contains("not the password"),
        "{log}"
    );
    assert!(!log.contains(&s2), "session ids stay out of the log");
}

#[test]
fn sessions_expire_when_idle() {
    let api = Api::start(repo_with_user(), &["--session-timeout", "3"]);
    let s = api.session();
    assert_eq!(api.get(&s, "/rest/plan-scripts").status, 200);
    // Idle past the timeout: waiting is what is being tested, not a synchronisation.
    std::thread::sleep(Duration::from_millis(4000));
    api.get(&s, "/rest/plan-scripts").error(401);
    api.call("PUT", "/rest/login-sessions", &[("auth", &s)], None)
        .error(401);
}

#[test]
fn plan_script_crud_round_trips_the_content_byte_for_byte() {
    let api = Api::start(repo_with_user(), &[]);
    let s = api.session();
    let content = "# é ü — \"quoted\" 'single' \\back\\slash\r\nupload -<<END /x\n\t@HostName@\nEND\n\u{1F600}\0tail";
    let r = api.send(
        &s,
        "POST",
        "/rest/plan-scripts",
        &script("round-trip", content),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let made = r.json();
    let uri = made["uri"].as_str().unwrap().to_owned();
    assert_eq!(r.header("location").as_deref(), Some(uri.as_str()));
    let id = made["id"].as_str().unwrap();
    assert_eq!(uri, format!("/rest/plan-scripts/{id}"));
    assert_eq!(made["content"], content);
    for f in ["eTag", "created", "modified"] {
        assert!(made[f].is_string(), "{f}: {made}");
    }

    let got = api.get(&s, &uri);
    assert_eq!(got.status, 200);
    let got = got.json();
    assert_eq!(
        got["content"].as_str().unwrap().as_bytes(),
        content.as_bytes()
    );
    assert_eq!(got, made);

    let mut changed = got.clone();
    let content2 = "echo second version\n";
    changed["content"] = json!(content2);
    changed["name"] = json!("round-trip-renamed");
    let r = api.send(&s, "PUT", &uri, &changed);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let after = api.get(&s, &uri).json();
    assert_eq!(after["content"], content2);
    assert_eq!(after["name"], "round-trip-renamed");
    assert_eq!(
        (&after["id"], &after["created"]),
        (&made["id"], &made["created"])
    );
    assert_ne!(after["eTag"], made["eTag"]);

    assert_eq!(api.delete(&s, &uri).status, 204);
    api.get(&s, &uri).error(404);
    api.delete(&s, &uri).error(404);
    api.send(&s, "PUT", &uri, &changed).error(404);
}

#[test]
fn used_artifacts_cannot_be_deleted_and_types_follow_the_version() {
    let api = Api::start(repo_with_user(), &[]);
    let s = api.session();
    let ps = api
        .send(
            &s,
            "POST",
            "/rest/plan-scripts",
            &script("shared-script", "echo"),
        )
        .json();
    let ps_uri = ps["uri"].as_str().unwrap();
    let bp = api.send(
        &s,
        "POST",
        "/rest/build-plans",
        &build_plan("the-build-plan", ps_uri),
    );
    assert_eq!(bp.status, 201, "{}", String::from_utf8_lossy(&bp.body));
    let bp = bp.json();
    assert_eq!(bp["type"], "OeBuildPlanV5");
    let bp_uri = bp["uri"].as_str().unwrap();

    let msg = api.delete(&s, ps_uri).error(409);
    assert!(msg.contains("the-build-plan"), "{msg}");
    let used = api.get(&s, &format!("{ps_uri}/usedby/readonly"));
    assert_eq!(used.status, 200);
    let used = used.json();
    assert_eq!(used.as_array().unwrap().len(), 1, "{used}");
    assert_eq!(used[0]["name"], "the-build-plan");

    let dp = api.send(
        &s,
        "POST",
        "/rest/deployment-plans",
        &json!({"type": "OEDeploymentPlanV5", "name": "the-deployment-plan",
                "hpProvided": "false", "oeBuildPlanURI": bp_uri, "goldenImageURI": "",
                "customAttributes": []}),
    );
    assert_eq!(dp.status, 201, "{}", String::from_utf8_lossy(&dp.body));
    let dp = dp.json();
    assert_eq!(dp["type"], "OEDeploymentPlanV5");
    let dp_uri = dp["uri"].as_str().unwrap();
    let msg = api.delete(&s, bp_uri).error(409);
    assert!(msg.contains("the-deployment-plan"), "{msg}");
    let used = api.get(&s, &format!("{dp_uri}/usedby")).json();
    assert_eq!(used, json!([]));
    let osdp = api.get(&s, &format!("{dp_uri}/osdp"));
    assert_eq!(osdp.status, 200);
    assert_eq!(osdp.json()["name"], "the-deployment-plan");
    // The SDK's differences call: the new content as a JSON string.
    let ps_id = ps["id"].as_str().unwrap();
    let diff = api.send(
        &s,
        "POST",
        &format!("/rest/plan-scripts/differences/{ps_id}"),
        &json!("echo\nmore"),
    );
    assert_eq!(diff.status, 200, "{}", String::from_utf8_lossy(&diff.body));
    let diff = diff.json();
    assert_eq!(
        (&diff["currentContent"], &diff["identical"]),
        (&json!("echo"), &json!(false))
    );
    // get_by as the SDK sends it: the name in other case, the filter double-quoted.
    let by = api.get(
        &s,
        "/rest/build-plans?start=0&count=-1&filter=%22name%3D%27THE-BUILD-PLAN%27%22",
    );
    assert_eq!(by.json()["members"][0]["name"], "the-build-plan");

    // An older client sees the older type names.
    let old = api.call(
        "GET",
        bp_uri,
        &[("auth", &s), ("X-API-Version", "300")],
        None,
    );
    assert_eq!(old.json()["type"], "OeBuildPlan");
    let list = api.call(
        "GET",
        "/rest/deployment-plans",
        &[("auth", &s), ("X-API-Version", "300")],
        None,
    );
    assert_eq!(list.json()["members"][0]["type"], "OEDeploymentPlan");

    // Top down, each delete frees the next.
    assert_eq!(api.delete(&s, dp_uri).status, 204);
    assert_eq!(api.delete(&s, bp_uri).status, 204);
    assert_eq!(api.delete(&s, ps_uri).status, 204);
}

#[test]
fn bad_requests_are_400_with_the_reason() {
    let api = Api::start(repo_with_user(), &["--api-body-limit", "64K"]);
    let s = api.session();
    let post = |body: &[u8]| api.call("POST", "/rest/plan-scripts", &[("auth", &s)], Some(body));
    let msg = post(b"{\"name\": \"x\", ").error(400);
    assert!(msg.contains("JSON") && msg.contains("line 1"), "{msg}");
    let mut unknown = script("x", "echo");
    unknown["favouriteColour"] = json!("blue");
    let msg = post(unknown.to_string().as_bytes()).error(400);
    assert!(msg.contains("favouriteColour"), "{msg}");
    let msg = post(
        script("x", "echo")
            .to_string()
            .replace("deploy", "sideways")
            .as_bytes(),
    )
    .error(400);
    assert!(msg.contains("planType"), "{msg}");
    let msg = post(b"[1, 2]").error(400);
    assert!(msg.contains("object"), "{msg}");
    let big = script("big", &"x".repeat(100 * 1024)).to_string();
    let msg = post(big.as_bytes()).error(400);
    assert!(msg.contains("too large"), "{msg}");
    let msg = api
        .send(
            &s,
            "POST",
            "/rest/build-plans",
            &build_plan("bp", "/rest/plan-scripts/none"),
        )
        .error(400);
    assert!(msg.contains("/rest/plan-scripts/none"), "{msg}");
    let mut bad_attr = build_plan("bp", "x");
    bad_attr["buildStep"] = json!([]);
    bad_attr["customAttributes"] =
        json!([{"name": "N", "type": "number", "value": "1", "constraints": "{not json"}]);
    let msg = api
        .send(&s, "POST", "/rest/build-plans", &bad_attr)
        .error(400);
    assert!(msg.contains("customAttributes"), "{msg}");
    let msg = api
        .get(&s, "/rest/plan-scripts?filter=name%20%27x%27")
        .error(400);
    assert!(msg.contains("filter"), "{msg}");
    let msg = api
        .call(
            "GET",
            "/rest/plan-scripts",
            &[("auth", &s), ("X-API-Version", "many")],
            None,
        )
        .error(400);
    assert!(msg.contains("X-API-Version"), "{msg}");
    // A name taken is a conflict, not a server error.
    assert_eq!(
        api.send(&s, "POST", "/rest/plan-scripts", &script("dup", "a"))
            .status,
        201
    );
    api.send(&s, "POST", "/rest/plan-scripts", &script("dup", "b"))
        .error(409);
    // Nothing half-made: only the one script is listed.
    assert_eq!(api.get(&s, "/rest/plan-scripts").json()["total"], 1);
}

#[test]
fn lists_page_filter_and_sort() {
    let api = Api::start(repo_with_user(), &[]);
    let s = api.session();
    for i in 0..5 {
        let mut b = script(&format!("ps-{i}"), "echo");
        if i % 2 == 0 {
            b["planType"] = json!("general");
        }
        assert_eq!(api.send(&s, "POST", "/rest/plan-scripts", &b).status, 201);
    }
    let names = |v: &Value| -> Vec<String> {
        v["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = api.get(&s, "/rest/plan-scripts").json();
    assert_eq!(
        (all["total"].as_u64(), all["count"].as_u64()),
        (Some(5), Some(5))
    );
    assert_eq!(all["type"], "PlanScriptCollection");
    assert!(all["nextPageUri"].is_null() && all["prevPageUri"].is_null());

    let page = api
        .get(
            &s,
            "/rest/plan-scripts?start=1&count=2&sort=name:descending",
        )
        .json();
    assert_eq!(names(&page), ["ps-3", "ps-2"]);
    assert_eq!(
        (page["start"].as_u64(), page["total"].as_u64()),
        (Some(1), Some(5))
    );
    let next = page["nextPageUri"].as_str().unwrap().to_owned();
    assert!(page["prevPageUri"].as_str().unwrap().contains("start=0"));
    let page2 = api.get(&s, &next).json();
    assert_eq!(names(&page2), ["ps-1", "ps-0"]);
    assert!(page2["nextPageUri"].is_null(), "{page2}");
    let past = api.get(&s, "/rest/plan-scripts?start=9&count=2").json();
    assert_eq!(
        (past["count"].as_u64(), past["total"].as_u64()),
        (Some(0), Some(5))
    );

    // As HPE's SDK sends it: the filter in double quotes, URL-encoded.
    let one = api
        .get(&s, "/rest/plan-scripts?filter=%22name%3D%27ps-3%27%22")
        .json();
    assert_eq!(names(&one), ["ps-3"]);
    let general = api
        .get(
            &s,
            "/rest/plan-scripts?filter=planType%3D%27general%27&sort=name:ascending",
        )
        .json();
    assert_eq!(names(&general), ["ps-0", "ps-2", "ps-4"]);
    let both = api
        .get(
            &s,
            "/rest/plan-scripts?filter=planType%3D%27general%27&filter=name%20matches%20%27%25-4%27",
        )
        .json();
    assert_eq!(names(&both), ["ps-4"]);
}

#[test]
fn golden_images_os_volumes_and_tasks_come_from_the_catalog() {
    let repo = repo_with_user();
    // What later slices will make through the API, made here through the catalog itself.
    let (stale, done) = {
        let cat = strata::catalog::Catalog::open(&repo.root).unwrap();
        cat.create_golden_image(
            json!({"type": "GoldenImage", "name": "rhel-gold", "description": "RHEL 8"}),
            "rhel-gold",
        )
        .unwrap();
        cat.create_os_volume(strata::catalog::volumes::NewOsVolume {
            name: "server-1",
            store_volume: "server-1",
            golden_image: Some("rhel-gold"),
            size: Some(1 << 30),
            ..Default::default()
        })
        .unwrap();
        let res = strata::catalog::tasks::AssociatedResource {
            resource_name: "rhel-gold".into(),
            resource_uri: "/rest/golden-images/x".into(),
            resource_category: "golden-images".into(),
            association_type: "MANAGED_BY".into(),
        };
        let stale = cat.create_task("Upload", USER, res.clone()).unwrap();
        let done = cat.create_task("Upload", USER, res).unwrap();
        cat.finish_task(done.id(), Ok(())).unwrap();
        (stale, done)
    };
    let api = Api::start(repo, &[]);
    let s = api.session();
    let gi = api.get(&s, "/rest/golden-images").json();
    assert_eq!(gi["total"], 1);
    let g = &gi["members"][0];
    assert_eq!(
        (&g["name"], &g["type"]),
        (&json!("rhel-gold"), &json!("GoldenImage"))
    );
    let one = api.get(&s, g["uri"].as_str().unwrap());
    assert_eq!(one.json()["description"], "RHEL 8");
    // A JSON POST asks for a capture, and needs the volume and the plan; an image an OS
    // volume uses cannot be deleted.
    let msg = api
        .send(&s, "POST", "/rest/golden-images", &json!({"name": "x"}))
        .error(400);
    assert!(msg.contains("captur"), "{msg}");
    let msg = api.delete(&s, g["uri"].as_str().unwrap()).error(409);
    assert!(msg.contains("server-1"), "{msg}");

    let vols = api.get(&s, "/rest/os-volumes").json();
    assert_eq!(vols["total"], 1);
    assert_eq!(vols["members"][0]["name"], "server-1");
    assert_eq!(vols["members"][0]["goldenImageUri"], g["uri"]);
    let v = api.get(&s, vols["members"][0]["uri"].as_str().unwrap());
    assert_eq!(v.json()["name"], "server-1");

    // The task the last run left running is marked failed on start; the finished one is
    // as it was.
    let t = api.get(&s, &stale.uri).json();
    assert_eq!(t["taskState"], "Error", "{t}");
    assert!(t["taskErrors"][0]["message"].as_str().is_some(), "{t}");
    let t = api.get(&s, &done.uri).json();
    assert_eq!(
        (&t["taskState"], &t["percentComplete"]),
        (&json!("Completed"), &json!(100))
    );
    assert_eq!(t["associatedResource"]["resourceName"], "rhel-gold");
}

impl Api {
    /// A multipart upload of `file` (field `file`, as HPE's SDK sends it) through curl.
    fn upload(&self, s: &str, path: &str, file: &Path) -> Reply {
        let out = self.work.join("upload-reply.body");
        let o = Command::new("curl")
            .args(["-sS", "-k", "--max-time", "120", "-o"])
            .arg(&out)
            .args(["-w", "%{http_code}", "-H"])
            .arg(format!("auth: {s}"))
            .arg("-F")
            .arg(format!("file=@{}", file.display()))
            .arg(self.url(path))
            .output()
            .expect("curl runs");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        Reply {
            status: String::from_utf8_lossy(&o.stdout).trim().parse().unwrap(),
            headers: String::new(),
            body: std::fs::read(&out).unwrap_or_default(),
        }
    }

    /// Polls a task (as the SDKs do) until it has finished; returns it.
    fn wait_task(&self, s: &str, uri: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let t = self.get(s, uri).json();
            if t["taskState"] != "Running" && t["taskState"] != "New" {
                return t;
            }
            assert!(Instant::now() < deadline, "task never finished: {t}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The one member of a zip.
fn only_member(zip: &[u8]) -> Vec<u8> {
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(zip)).expect("a zip");
    assert_eq!(z.len(), 1, "one member");
    let mut out = Vec::new();
    z.by_index(0).unwrap().read_to_end(&mut out).unwrap();
    out
}

#[test]
fn golden_images_upload_and_download_byte_for_byte_through_curl() {
    let repo = repo_with_user();
    let disk: Vec<u8> = (0..(3u32 << 20) + 7 * 512)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let raw = repo.path("disk.raw");
    std::fs::write(&raw, &disk).unwrap();
    let api = Api::start(repo, &[]);
    let s = api.session();

    let r = api.upload(
        &s,
        "/rest/golden-images?name=gold%20one&description=d",
        &raw,
    );
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let t = api.wait_task(&s, r.json()["uri"].as_str().unwrap());
    assert_eq!(t["taskState"], "Completed", "{t}");
    let uri = t["associatedResource"]["resourceUri"]
        .as_str()
        .unwrap()
        .to_owned();
    let g = api.get(&s, &uri).json();
    assert_eq!(
        (&g["name"], &g["description"]),
        (&json!("gold one"), &json!("d"))
    );

    let id = uri.rsplit('/').next().unwrap();
    let down = api.get(&s, &format!("/rest/golden-images/download/{id}"));
    assert_eq!(down.status, 200);
    assert!(
        only_member(&down.body) == disk,
        "the downloaded disk differs"
    );

    // The same name again: the task fails, naming the clash; nothing new is listed.
    let r = api.upload(&s, "/rest/golden-images?name=gold%20one", &raw);
    assert_eq!(r.status, 202);
    let t = api.wait_task(&s, r.json()["uri"].as_str().unwrap());
    assert_eq!(t["taskState"], "Error", "{t}");
    assert!(
        t["taskErrors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("gold one"),
        "{t}"
    );
    assert_eq!(api.get(&s, "/rest/golden-images").json()["total"], 1);

    // Renamed, then deleted with its disk.
    let r = api.send(&s, "PUT", &uri, &json!({"name": "gold two"}));
    assert_eq!(r.json()["name"], "gold two");
    assert_eq!(api.delete(&s, &uri).status, 204);
    assert_eq!(api.get(&s, &uri).status, 404);
}

#[test]
fn an_hpe_bundle_uploads_extracts_and_deploys_through_the_api() {
    let bundle = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hpe-artifacts/HPE-Support-Artifacts-2017-11-29-v4.0.zip");
    let plan = "HPE - Support 1.0 - simple deployment test-2017-11-29";
    let api = Api::start(repo_with_user(), &[]);
    let s = api.session();

    let r = api.upload(&s, "/rest/artifact-bundles", &bundle);
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let t = api.wait_task(&s, r.json()["uri"].as_str().unwrap());
    assert_eq!(t["taskState"], "Completed", "{t}");
    let ab = t["associatedResource"]["resourceUri"]
        .as_str()
        .unwrap()
        .to_owned();
    // HPE's SDK extracts with text/plain and the body `null`.
    let r = api.call(
        "PUT",
        &format!("{ab}?extract=true&forceImport=true"),
        &[("auth", &s), ("Content-Type", "text/plain;charset=UTF-8")],
        None,
    );
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let t = api.wait_task(&s, r.json()["uri"].as_str().unwrap());
    assert_eq!(t["taskState"], "Completed", "{t}");
    let plans = api.get(&s, "/rest/deployment-plans").json();
    let dp = plans["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == plan)
        .unwrap_or_else(|| panic!("{plan} not extracted: {plans}"))["uri"]
        .as_str()
        .unwrap()
        .to_owned();

    let initiator = "iqn.2026-12.test:server-1";
    let body = json!({
        "deploymentPlanURI": dp, "name": "web-01", "initiatorIqn": initiator,
        "customAttributes": [{"name": "ExampleString", "value": "hello from the API"}],
    });
    let r = api.send(&s, "POST", "/rest/os-volumes", &body);
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let t = api.wait_task(&s, r.json()["uri"].as_str().unwrap());
    assert_eq!(t["taskState"], "Completed", "{t}\n{}", api.log());
    let vol = api.get(&s, t["associatedResource"]["resourceUri"].as_str().unwrap());
    assert_eq!(vol.json()["name"], "web-01");
    assert_eq!(vol.json()["deploymentPlanUri"], json!(dp));
    // The same name again fails as a task, naming it.
    let r = api.send(&s, "POST", "/rest/os-volumes", &body);
    let t = api.wait_task(&s, r.json()["uri"].as_str().unwrap());
    assert_eq!(t["taskState"], "Error", "{t}");
    assert!(
        t["taskErrors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("web-01"),
        "{t}"
    );
    assert_eq!(api.get(&s, "/rest/os-volumes").json()["total"], 1);
}

#[test]
fn plain_http_is_refused_and_sigterm_stops_both_servers() {
    let repo = std::sync::Arc::new(repo_with_user());
    let api = Api::start_shared(repo.clone(), &[]);
    // curl speaking plain HTTP to the HTTPS port gets no HTTP answer.
    let o = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg(format!("http://{}/rest/version", api.api))
        .output()
        .unwrap();
    let code = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    assert!(
        !o.status.success() && code == "000",
        "plain HTTP answered: {code}"
    );
    // The same over a raw socket: whatever comes back is not an HTTP response.
    let mut sock = std::net::TcpStream::connect(api.api).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    sock.write_all(b"GET /rest/version HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut back = Vec::new();
    let _ = sock.read_to_end(&mut back);
    assert!(
        !back.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&back)
    );
    // The certificate was made in the repository.
    assert!(repo.root.join("tls/cert.pem").is_file());
    assert_eq!(api.call("GET", "/rest/version", &[], None).status, 200);

    let (api_addr, iscsi_addr) = (api.api, api.iscsi);
    assert!(std::net::TcpStream::connect(iscsi_addr).is_ok());
    let log_path = api.log.clone();
    let st = api.stop();
    assert!(st.success(), "exit {st:?}");
    let log = std::fs::read_to_string(log_path).unwrap();
    assert!(log.contains("SIGTERM"), "{log}");
    assert!(std::net::TcpStream::connect(api_addr).is_err());
    assert!(std::net::TcpStream::connect(iscsi_addr).is_err());

    // A second start reuses the certificate.
    let cert = std::fs::read(repo.root.join("tls/cert.pem")).unwrap();
    let again = Api::start_shared(repo.clone(), &[]);
    assert_eq!(std::fs::read(repo.root.join("tls/cert.pem")).unwrap(), cert);
    assert_eq!(again.call("GET", "/rest/version", &[], None).status, 200);
}

#[test]
fn user_commands_list_and_remove_users_and_never_show_passwords() {
    let repo = repo_with_user();
    repo.add_user("operator", "another secret");
    let ls = repo.ok(&["user", "ls"]);
    assert!(ls.contains("admin") && ls.contains("operator"), "{ls}");
    assert!(!ls.contains(PASSWORD) && !ls.contains("argon2"), "{ls}");
    let o = repo.run(&["user", "add", "admin"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("--password-stdin"), "{e}");
    repo.ok(&["user", "rm", "operator"]);
    assert!(!repo.ok(&["user", "ls"]).contains("operator"));
    let e = repo.fails(&["user", "rm", "operator"]);
    assert!(e.contains("operator"), "{e}");
    // The removed user cannot log in; the other can.
    let api = Api::start(repo, &[]);
    api.login("operator", "another secret").error(401);
    api.session();
}

impl Api {
    /// Starts long work with `method path body`; waits for its task, which must complete;
    /// returns the task.
    fn task_ok(&self, s: &str, method: &str, path: &str, body: &Value) -> Value {
        let r = self.send(s, method, path, body);
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        assert!(r
            .header("location")
            .is_some_and(|l| l.starts_with("/rest/tasks/")));
        let t = self.wait_task(s, r.json()["uri"].as_str().unwrap());
        assert_eq!(t["taskState"], "Completed", "{t}\n{}", self.log());
        t
    }

    /// One of HPE's bundles uploaded and extracted (forceImport).
    fn extract_hpe(&self, s: &str, name: &str) {
        let bundle = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/hpe-artifacts")
            .join(name);
        let r = self.upload(s, "/rest/artifact-bundles", &bundle);
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        let t = self.wait_task(s, r.json()["uri"].as_str().unwrap());
        assert_eq!(t["taskState"], "Completed", "{t}");
        let ab = t["associatedResource"]["resourceUri"].as_str().unwrap();
        let r = self.call(
            "PUT",
            &format!("{ab}?extract=true&forceImport=true"),
            &[("auth", s), ("Content-Type", "text/plain;charset=UTF-8")],
            None,
        );
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        let t = self.wait_task(s, r.json()["uri"].as_str().unwrap());
        assert_eq!(t["taskState"], "Completed", "{t}");
    }

    fn member_named(&self, s: &str, collection: &str, name: &str) -> Value {
        let all = self.get(s, collection).json();
        all["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("no {name:?} in {collection}: {all}"))
            .clone()
    }
}

#[test]
fn a_backup_is_made_downloaded_uploaded_and_restored_through_curl() {
    let api = Api::start(repo_with_user(), &[]);
    let s = api.session();
    let group = json!({"deploymentGroupURI": "/rest/deployment-groups/local"});
    let ps = api
        .send(
            &s,
            "POST",
            "/rest/plan-scripts",
            &script("kept", "echo kept\r\n"),
        )
        .json();

    let t = api.task_ok(&s, "POST", "/rest/artifact-bundles/backups", &group);
    let uri = t["associatedResource"]["resourceUri"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(uri.starts_with("/rest/artifact-bundles/backups/"), "{t}");
    let list = api.get(&s, "/rest/artifact-bundles/backups").json();
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(list["members"][0]["uri"], json!(uri));
    assert_eq!(api.get(&s, &uri).json()["uri"], json!(uri));
    // Backups are not artifact bundles.
    assert_eq!(api.get(&s, "/rest/artifact-bundles").json()["total"], 0);
    let id = uri.rsplit('/').next().unwrap();
    let down = api.get(&s, &format!("/rest/artifact-bundles/backups/archive/{id}"));
    assert_eq!(down.status, 200);
    let zip = api.work.join("backup.zip");
    std::fs::write(&zip, &down.body).unwrap();
    let names: Vec<String> = zip::ZipArchive::new(std::io::Cursor::new(&down.body))
        .unwrap()
        .file_names()
        .map(str::to_owned)
        .collect();
    assert!(
        names.iter().any(|n| n.ends_with("_planscript.json")),
        "{names:?}"
    );

    // After the backup: the script gone, another made.
    assert_eq!(api.delete(&s, ps["uri"].as_str().unwrap()).status, 204);
    api.send(&s, "POST", "/rest/plan-scripts", &script("later", "echo"));
    // Another appliance's group is refused.
    let msg = api
        .send(
            &s,
            "POST",
            "/rest/artifact-bundles/backups",
            &json!({"deploymentGroupURI": "/rest/deployment-groups/elsewhere"}),
        )
        .error(404);
    assert!(msg.contains("elsewhere"), "{msg}");

    // The downloaded backup uploaded (it replaces the appliance's), then restored.
    let r = api.upload(
        &s,
        "/rest/artifact-bundles/backups/archive?deploymentGrpUri=/rest/deployment-groups/local",
        &zip,
    );
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let t = api.wait_task(&s, r.json()["uri"].as_str().unwrap());
    assert_eq!(t["taskState"], "Completed", "{t}");
    let up = t["associatedResource"]["resourceUri"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(up, uri);
    let list = api.get(&s, "/rest/artifact-bundles/backups").json();
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(api.get(&s, &uri).status, 404);
    api.task_ok(&s, "PUT", &up, &group);
    let back = api.get(&s, ps["uri"].as_str().unwrap());
    assert_eq!(back.status, 200, "{}", String::from_utf8_lossy(&back.body));
    assert_eq!(back.json()["content"], "echo kept\r\n");
    let all = api.get(&s, "/rest/plan-scripts").json();
    assert_eq!(
        all["total"], 1,
        "the restore kept a script made after the backup: {all}"
    );
}

#[test]
fn an_os_volume_is_captured_and_its_storage_log_and_forced_delete_answer() {
    let api = Api::start(repo_with_user(), &[]);
    let s = api.session();
    api.extract_hpe(&s, "HPE-Support-Artifacts-2017-11-29-v4.0.zip");
    api.extract_hpe(&s, "HPE-Foundation-Artifacts-2018-09-11-v4.0.zip");
    let dp = api.member_named(
        &s,
        "/rest/deployment-plans",
        "HPE - Support 1.0 - simple deployment test-2017-11-29",
    );
    let initiator = "iqn.2026-12.test:server-2";
    let t = api.task_ok(
        &s,
        "POST",
        "/rest/os-volumes",
        &json!({"deploymentPlanURI": dp["uri"], "name": "web-02", "initiatorIqn": initiator}),
    );
    let vol = t["associatedResource"]["resourceUri"]
        .as_str()
        .unwrap()
        .to_owned();

    let st = api.get(&s, &format!("{vol}/storage")).json();
    assert_eq!(st["storeVolume"], "web-02", "{st}");
    assert_eq!(st["present"], true, "{st}");
    assert_eq!(st["initiators"], json!([initiator]), "{st}");
    let log = api.get(&s, "/rest/os-volumes/archive/web-02");
    assert_eq!(log.status, 200);
    let log = log.json();
    assert_eq!(log["osVolume"]["uri"], json!(vol));
    assert_eq!(log["deployments"][0]["result"], "succeeded", "{log}");
    assert_eq!(api.get(&s, "/rest/os-volumes/archive/nope").status, 404);

    // Captured through Foundation's capture build plan, as HPE's SDK asks for it.
    let capture = api.member_named(
        &s,
        "/rest/build-plans",
        "HPE - Foundation 1.0 - capture OS Volume as is-2017-03-24",
    );
    let t = api.task_ok(
        &s,
        "POST",
        "/rest/golden-images",
        &json!({"type": "GoldenImage", "name": "captured", "description": "from web-02",
                "imageCapture": "true", "osVolumeURI": vol, "buildPlanURI": capture["uri"]}),
    );
    let gi_uri = t["associatedResource"]["resourceUri"]
        .as_str()
        .unwrap()
        .to_owned();
    let gi = api.get(&s, &gi_uri).json();
    assert_eq!(
        (&gi["name"], &gi["imageCapture"]),
        (&json!("captured"), &json!(true))
    );
    assert_eq!(gi["osVolumeURI"], json!(vol));
    assert_eq!(gi["size"], st["size"]);
    let id = gi_uri.rsplit('/').next().unwrap();
    let arch = api.get(&s, &format!("/rest/golden-images/archive/{id}"));
    assert_eq!(arch.status, 200);
    let rec = arch.json();
    assert_eq!(
        (&rec["kind"], &rec["result"]),
        (&json!("capture"), &json!("succeeded"))
    );
    let down = api.get(&s, &format!("/rest/golden-images/download/{id}"));
    assert_eq!(down.status, 200);
    assert_eq!(
        only_member(&down.body).len() as u64,
        st["size"].as_u64().unwrap()
    );
    // An uploaded image has no capture log; a deploy plan captures nothing.
    let other = api.member_named(
        &s,
        "/rest/golden-images",
        "HPE - Support 1.0 - UEFI Test Image - 2017-03-24",
    );
    let oid = other["uri"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(
        api.get(&s, &format!("/rest/golden-images/archive/{oid}"))
            .status,
        404
    );
    let deploy_plan = api.member_named(
        &s,
        "/rest/build-plans",
        "HPE - Foundation 1.0 - deploy Golden Image as is - 2017-07-19",
    );
    let r = api.send(
        &s,
        "POST",
        "/rest/golden-images",
        &json!({"name": "not a capture", "osVolumeURI": vol, "buildPlanURI": deploy_plan["uri"]}),
    );
    let t = api.wait_task(&s, r.json()["uri"].as_str().unwrap());
    assert_eq!(t["taskState"], "Error", "{t}");
    assert!(
        t["taskErrors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("capture"),
        "{t}"
    );
    let msg = api
        .send(&s, "POST", "/rest/golden-images", &json!({"name": "x"}))
        .error(400);
    assert!(msg.contains("osVolumeURI"), "{msg}");

    // The deployment plan web-02 came from: 409 naming it, then forced (as HPE's SDKs
    // send it): gone, and the volume no longer names it.
    let msg = api.delete(&s, dp["uri"].as_str().unwrap()).error(409);
    assert!(msg.contains("web-02"), "{msg}");
    let r = api.delete(&s, &format!("{}?force=True", dp["uri"].as_str().unwrap()));
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(api.get(&s, dp["uri"].as_str().unwrap()).status, 404);
    assert!(api.get(&s, &vol).json()["deploymentPlanUri"].is_null());
    // Its golden image stays in use by the volume, force or not.
    let gold = dp["goldenImageURI"].as_str().unwrap();
    let msg = api.delete(&s, &format!("{gold}?force=true")).error(409);
    assert!(msg.contains("web-02"), "{msg}");
}

/// Polls `cond` until it holds (two minutes at most): the test waits for a state the
/// server reaches, never for a length of time.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The names in `dir` (none when it does not exist).
fn names_in(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Every file under `dir`, recursively, with its size.
fn files_under(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else if let Ok(m) = p.metadata() {
            out.push((p, m.len()));
        }
    }
    out
}

/// The first id-shaped word (a UUID) of the log line holding `marker`.
fn id_in_log(log: &str, marker: &str) -> Option<String> {
    let line = log.lines().find(|l| l.contains(marker))?;
    let b = line.as_bytes();
    (0..b.len().saturating_sub(35)).find_map(|i| {
        let w = &b[i..i + 36];
        let shaped = w.iter().enumerate().all(|(j, c)| match j {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
        shaped.then(|| String::from_utf8_lossy(w).into_owned())
    })
}

impl Api {
    /// The number of members a collection lists.
    fn total(&self, s: &str, path: &str) -> u64 {
        let r = self.get(s, path);
        assert_eq!(
            r.status,
            200,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        r.json()["total"].as_u64().unwrap()
    }

    /// A task a crash interrupted, as the restarted server shows it: failed, with a reason.
    fn assert_interrupted(&self, s: &str, task: &str) {
        let t = self.get(s, task).json();
        assert_eq!(t["taskState"], "Error", "{t}");
        let msg = t["taskErrors"][0]["message"].as_str().unwrap_or_default();
        assert!(msg.contains("stopped"), "{t}");
    }
}

/// Nothing half-made in the repository: no staged file, no journal, and the store holds
/// exactly `images` images and `volumes` volumes.
fn assert_store(repo: &Repo, images: usize, volumes: usize) {
    assert!(
        repo.staging_is_empty(),
        "{:?}",
        names_in(&repo.root.join("tmp"))
    );
    assert_eq!(names_in(&repo.root.join("journal")), Vec::<String>::new());
    let imgs = names_in(&repo.root.join("images"));
    assert_eq!(imgs.len(), images, "store images: {imgs:?}");
    let vols = names_in(&repo.root.join("volumes"));
    assert_eq!(vols.len(), volumes, "store volumes: {vols:?}");
}

/// `kill -9` with the upload's body half sent (the spool file growing, the client still
/// sending): the restart fails the task, lists no image, and the store keeps nothing of it.
#[test]
fn kill_9_mid_upload_leaves_no_image_and_fails_its_task() {
    let repo = std::sync::Arc::new(repo_with_user());
    let api = Api::start_shared(repo.clone(), &[]);
    let s = api.session();
    let chunk: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8 | 1)
        .collect();
    // The multipart body written by hand into curl's stdin (`-T -` streams it, chunked),
    // so the test decides when the body stops.
    let mut curl = Command::new("curl")
        .args(["-sS", "-k", "--max-time", "120", "-X", "POST", "-T", "-"])
        .args(["-o", "/dev/null", "-H", "Expect:"])
        .arg("-H")
        .arg(format!("auth: {s}"))
        .args(["-H", "Content-Type: multipart/form-data; boundary=b0undary"])
        .arg(api.url("/rest/golden-images?name=crash"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut body = curl.stdin.take().unwrap();
    body.write_all(
        b"--b0undary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"d.raw\"\r\n\
          Content-Type: application/octet-stream\r\n\r\n",
    )
    .unwrap();
    for _ in 0..3 {
        body.write_all(&chunk).unwrap();
    }
    body.flush().unwrap();
    let tmp = repo.root.join("tmp");
    wait_until("the upload's spool file to fill", || {
        files_under(&tmp).iter().any(|(_, n)| *n >= 4 << 20)
    });
    let task = id_in_log(&api.log(), "upload started").expect("the upload's task in the log");
    api.kill9();
    drop(body);
    let _ = curl.kill();
    let _ = curl.wait();

    let api = Api::start_shared(repo.clone(), &[]);
    let s = api.session();
    api.assert_interrupted(&s, &format!("/rest/tasks/{task}"));
    assert_eq!(api.total(&s, "/rest/golden-images"), 0);
    assert_store(&repo, 0, 0);
    // The same upload again succeeds.
    let raw = repo.path("d.raw");
    std::fs::write(&raw, [&chunk[..], &chunk[..]].concat()).unwrap();
    let r = api.upload(&s, "/rest/golden-images?name=crash", &raw);
    let t = api.wait_task(&s, r.json()["uri"].as_str().unwrap());
    assert_eq!(t["taskState"], "Completed", "{t}");
    assert_eq!(api.total(&s, "/rest/golden-images"), 1);
    assert_store(&repo, 1, 0);
}

/// `kill -9` mid-extraction (the golden image's disk imported, the plan scripts' rows
/// written, the image's row not yet) and mid-deploy (the volume made, its row not yet):
/// each restart undoes the job whole and fails its task; the same request then succeeds.
#[test]
fn kill_9_mid_extraction_and_mid_deploy_leaves_nothing_half_made() {
    let bundle = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hpe-artifacts/HPE-Support-Artifacts-2017-11-29-v4.0.zip");
    let plan = "HPE - Support 1.0 - simple deployment test-2017-11-29";
    let repo = std::sync::Arc::new(repo_with_user());
    let pause = |at: &'static str| [("STRATA_PAUSE_AT", at)];
    let collections = [
        "/rest/plan-scripts",
        "/rest/build-plans",
        "/rest/deployment-plans",
        "/rest/golden-images",
    ];

    let api = Api::start_with_env(repo.clone(), &[], &pause("extract-rows"));
    let s = api.session();
    let r = api.upload(&s, "/rest/artifact-bundles", &bundle);
    let t = api.wait_task(&s, r.json()["uri"].as_str().unwrap());
    assert_eq!(t["taskState"], "Completed", "{t}");
    let ab = t["associatedResource"]["resourceUri"]
        .as_str()
        .unwrap()
        .to_owned();
    let extract = |api: &Api, s: &str| {
        let r = api.call(
            "PUT",
            &format!("{ab}?extract=true&forceImport=true"),
            &[("auth", s), ("Content-Type", "text/plain;charset=UTF-8")],
            None,
        );
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        r.json()["uri"].as_str().unwrap().to_owned()
    };
    let task = extract(&api, &s);
    let tmp = repo.root.join("tmp");
    let paused = |at: &str| {
        names_in(&tmp)
            .iter()
            .any(|n| n.ends_with(&format!("-paused-{at}")))
    };
    wait_until("the extraction to reach its golden image's row", || {
        paused("extract-rows")
    });
    assert_eq!(api.get(&s, &task).json()["taskState"], "Running");
    assert!(
        api.total(&s, "/rest/plan-scripts") > 0,
        "the kill must land with rows written"
    );
    api.kill9();

    let api = Api::start_shared(repo.clone(), &[]);
    let s = api.session();
    api.assert_interrupted(&s, &task);
    for c in collections {
        assert_eq!(api.total(&s, c), 0, "{c} after an interrupted extraction");
    }
    assert_store(&repo, 0, 0);
    let t = api.wait_task(&s, &extract(&api, &s));
    assert_eq!(t["taskState"], "Completed", "{t}");
    for c in collections {
        assert!(api.total(&s, c) > 0, "{c} after the extraction");
    }
    assert_store(&repo, 1, 0);
    let dp = api.get(&s, "/rest/deployment-plans").json()["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == plan)
        .expect("the plan extracted")["uri"]
        .as_str()
        .unwrap()
        .to_owned();
    drop(api);

    let api = Api::start_with_env(repo.clone(), &[], &pause("deploy-row"));
    let s = api.session();
    let body = json!({
        "deploymentPlanURI": dp, "name": "web-01",
        "initiatorIqn": "iqn.2026-12.test:server-1",
        "customAttributes": [{"name": "ExampleString", "value": "crash"}],
    });
    let r = api.send(&s, "POST", "/rest/os-volumes", &body);
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let task = r.json()["uri"].as_str().unwrap().to_owned();
    wait_until("the deploy to reach its row", || paused("deploy-row"));
    assert_eq!(api.get(&s, &task).json()["taskState"], "Running");
    assert_eq!(names_in(&repo.root.join("volumes")), vec!["web-01"]);
    api.kill9();

    let api = Api::start_shared(repo.clone(), &[]);
    let s = api.session();
    api.assert_interrupted(&s, &task);
    assert_eq!(api.total(&s, "/rest/os-volumes"), 0);
    assert_store(&repo, 1, 0);
    // The exports are the catalog's (`strata export ls` reads them there).
    let exports = repo.ok(&["export", "ls"]);
    assert!(!exports.contains("web-01"), "{exports}");
    let r = api.send(&s, "POST", "/rest/os-volumes", &body);
    let t = api.wait_task(&s, r.json()["uri"].as_str().unwrap());
    assert_eq!(t["taskState"], "Completed", "{t}\n{}", api.log());
    assert_eq!(api.total(&s, "/rest/os-volumes"), 1);
    assert_store(&repo, 1, 1);
    let exports = repo.ok(&["export", "ls"]);
    assert!(exports.contains("web-01"), "{exports}");
}

impl Api {
    /// curl uploading `file` as multipart with session `s`, `Expect: 100-continue` sent
    /// or not: its exit status, the HTTP status and the body it read.
    fn upload_expect(
        &self,
        s: &str,
        path: &str,
        file: &Path,
        expect: bool,
    ) -> (bool, u16, Vec<u8>) {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let out = self.work.join(format!("upload-expect-{n}.body"));
        let mut c = Command::new("curl");
        c.args(["-sS", "-k", "--max-time", "120", "-o"])
            .arg(&out)
            .args(["-w", "%{http_code}", "-H"])
            .arg(format!("auth: {s}"))
            .arg("-H")
            .arg(if expect {
                "Expect: 100-continue"
            } else {
                "Expect:"
            })
            .arg("-F")
            .arg(format!("file=@{}", file.display()))
            .arg(self.url(path));
        let o = c.output().expect("curl runs");
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse()
                .unwrap_or(0),
            std::fs::read(&out).unwrap_or_default(),
        )
    }
}

/// An upload on a session that is not valid (none, bogus, logged out) gets its 401 in
/// Image Streamer's shape, whether the client waits for `100 Continue` (curl) or sends the
/// whole body before reading the answer (HPE's SDKs): never a broken pipe. Nothing is kept.
#[test]
fn an_upload_refused_by_the_session_gate_gets_its_401() {
    let repo = repo_with_user();
    let big = repo.path("big.raw");
    let data: Vec<u8> = (0..48u32 << 20).map(|i| (i % 251) as u8 | 1).collect();
    std::fs::write(&big, &data).unwrap();
    let api = Api::start(repo, &[]);
    let ended = api.session();
    assert_eq!(api.delete(&ended, "/rest/login-sessions").status, 204);
    for (what, s) in [
        ("bogus", "0123456789abcdef"),
        ("logged out", ended.as_str()),
    ] {
        for expect in [false, true] {
            for path in ["/rest/golden-images?name=refused", "/rest/artifact-bundles"] {
                let (ok, code, body) = api.upload_expect(s, path, &big, expect);
                assert!(
                    ok && code == 401,
                    "{what} session, expect {expect}, {path}: curl ok {ok}, status {code}"
                );
                let v: Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(v["errorCode"], "AUTHORIZATION", "{v}");
            }
        }
    }
    // As HPE's SDKs send (Python's http.client): the whole body, then the answer read.
    let sdk = r#"
import http.client, ssl, sys
host, port = sys.argv[1].rsplit(":", 1)
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
c = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=120)
head = b'--XX\r\nContent-Disposition: form-data; name="file"; filename="d.raw"\r\n\r\n'
body = head + open(sys.argv[3], "rb").read() + b"\r\n--XX--\r\n"
h = {"Content-Type": "multipart/form-data; boundary=XX"}
if sys.argv[2]:
    h["auth"] = sys.argv[2]
c.request("POST", "/rest/golden-images?name=refused", body=body, headers=h)
r = c.getresponse()
print(r.status)
sys.stdout.write(r.read().decode())
"#;
    for (what, s) in [
        ("none", ""),
        ("bogus", "0123456789abcdef"),
        ("logged out", &ended),
    ] {
        let o = Command::new("python3")
            .arg("-c")
            .arg(sdk)
            .arg(api.api.to_string())
            .arg(s)
            .arg(&big)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success() && out.starts_with("401\n") && out.contains("AUTHORIZATION"),
            "{what} session, body sent whole: {out} {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // No auth header at all, the body sent whole.
    let o = Command::new("curl")
        .args([
            "-sS",
            "-k",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Expect:",
        ])
        .arg("-F")
        .arg(format!("file=@{}", big.display()))
        .arg(api.url("/rest/golden-images?name=refused"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "401");
    let s = api.session();
    assert_eq!(api.total(&s, "/rest/golden-images"), 0);
    assert_eq!(api.get(&s, "/rest/artifact-bundles").json()["total"], 0);
    assert!(api._repo.staging_is_empty());
}

/// A tampered bundle uploaded through the API is refused by its task, with the reason, and
/// leaves nothing: no bundle listed, no file kept, no artifact, nothing staged.
#[test]
fn tampered_bundles_are_refused_through_the_api_with_the_reason_and_leave_nothing() {
    use common::zips::{entries, make_zip, patch_declared_size, rename_entry};
    let fixture = |n: &str| {
        std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/hpe-artifacts")
                .join(format!("{n}.zip")),
        )
        .unwrap()
    };
    let base = entries(&fixture("HPE-Foundation-Artifacts-2018-09-11-v4.0"));
    let script = base
        .iter()
        .find(|(n, _)| n.ends_with("_planscript.json"))
        .unwrap()
        .0
        .clone();
    let mut cases: Vec<(&str, Vec<u8>, String)> = Vec::new();
    // A checksum that does not match: one byte of a plan script changed.
    let mut files = base.clone();
    let f = files.iter_mut().find(|(n, _)| *n == script).unwrap();
    let at = f.1.iter().position(|&b| b == b'"').unwrap();
    f.1.insert(at, b' ');
    cases.push(("checksum", make_zip(&files), "checksum mismatch".into()));
    // Zip slip: a member named with a path.
    for bad in ["../evil_planscript.json", "/etc/cron.d/evil"] {
        let mut files = base.clone();
        files.push((bad.into(), b"{}".to_vec()));
        cases.push(("zip slip", make_zip(&files), format!("{bad:?} refused")));
    }
    // The same name twice.
    let mut files = base.clone();
    files.push(("MANIFEST.MX".into(), b"Artifact Name:evil".to_vec()));
    let mut z = make_zip(&files);
    rename_entry(&mut z, "MANIFEST.MX", "MANIFEST.MF");
    cases.push((
        "duplicate",
        z,
        "\"MANIFEST.MF\" appears more than once".into(),
    ));
    // A member that unpacks to more than it declares (64 MiB of spaces declared as 1000
    // bytes), and the same declared honestly: over the limit for a JSON artifact.
    let mut files = base.clone();
    let f = files.iter_mut().find(|(n, _)| *n == script).unwrap();
    f.1.extend(std::iter::repeat_n(b' ', 64 << 20));
    let mut bomb = make_zip(&files);
    patch_declared_size(&mut bomb, &script, 1000);
    cases.push(("zip bomb", bomb, "zip bomb".into()));
    let mut large = make_zip(&files);
    patch_declared_size(&mut large, &script, (64 << 20) + 4000);
    cases.push(("too large", large, "bytes allowed".into()));

    let repo = repo_with_user();
    let api = Api::start(repo, &[]);
    let s = api.session();
    for (i, (what, zip, reason)) in cases.iter().enumerate() {
        let p = api.work.join(format!("tampered-{i}.zip"));
        std::fs::write(&p, zip).unwrap();
        let r = api.upload(&s, "/rest/artifact-bundles", &p);
        assert_eq!(
            r.status,
            202,
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let t = api.wait_task(&s, r.json()["uri"].as_str().unwrap());
        assert_eq!(t["taskState"], "Error", "{what}: {t}");
        let msg = t["taskErrors"][0]["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains(reason.as_str()),
            "{what}: {reason:?} not in {msg:?}"
        );
        assert_eq!(api.total(&s, "/rest/artifact-bundles"), 0, "{what}");
        assert_eq!(
            names_in(&api._repo.root.join("bundles")),
            Vec::<String>::new(),
            "{what}"
        );
        assert!(api._repo.staging_is_empty(), "{what}");
    }
    for c in [
        "/rest/plan-scripts",
        "/rest/build-plans",
        "/rest/deployment-plans",
        "/rest/golden-images",
    ] {
        assert_eq!(api.total(&s, c), 0, "{c}");
    }
    // The untampered bundle goes in.
    let p = api.work.join("good.zip");
    std::fs::write(&p, make_zip(&base)).unwrap();
    let r = api.upload(&s, "/rest/artifact-bundles", &p);
    let t = api.wait_task(&s, r.json()["uri"].as_str().unwrap());
    assert_eq!(t["taskState"], "Completed", "{t}");
}

/// Passwords appear in no response and no log line (debug level): not after a failed login,
/// a malformed login, nor `strata user add`; the catalog keeps only a hash.
#[test]
fn passwords_are_never_returned_or_logged() {
    let repo = Repo::new();
    let secret = "s3cret-Never-Shown";
    let mut c = Command::new(BIN)
        .arg("--repo")
        .arg(&repo.root)
        .args(["user", "add", "op", "--password-stdin"])
        .env("RUST_LOG", "debug")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(c.stdin.take().unwrap(), "{secret}").unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(o.status.success());
    let said = [o.stdout, o.stderr].concat();
    assert!(!String::from_utf8_lossy(&said).contains(secret));
    for f in files_under(&repo.root) {
        let b = std::fs::read(&f.0).unwrap();
        assert!(
            !b.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{} holds the password",
            f.0.display()
        );
    }
    let api = Api::start(repo, &[]);
    let mut replies = Vec::new();
    for body in [
        json!({"userName": "op", "password": format!("{secret}x")}),
        json!({"userName": "nobody", "password": secret}),
        json!({"userName": ["op"], "password": secret}),
        json!({"password": secret}),
        json!({"userName": "op", "password": secret, "authLoginDomain": 7, "loginMsgAck": "x"}),
    ] {
        let b = body.to_string();
        replies.push(api.call("POST", "/rest/login-sessions", &[], Some(b.as_bytes())));
    }
    let b = format!("{{\"userName\": \"op\", \"password\": \"{secret}\"");
    replies.push(api.call("POST", "/rest/login-sessions", &[], Some(b.as_bytes())));
    let ok = api.login("op", secret);
    assert_eq!(ok.status, 200);
    replies.push(ok);
    for r in &replies {
        let text = format!("{}{}", r.headers, String::from_utf8_lossy(&r.body));
        assert!(!text.contains(secret), "{text}");
    }
    let log = api.log();
    assert!(log.contains("login refused"), "{log}");
    assert!(!log.contains(secret), "{log}");
}

/// One user's session is theirs alone: another user can neither read it nor end it, by
/// any path or parameter, and logging out ends only the caller's own.
#[test]
fn a_user_cannot_read_or_end_another_users_session() {
    let repo = repo_with_user();
    repo.add_user("other", "other's password");
    let api = Api::start(repo, &[]);
    let mine = api.session();
    let theirs = {
        let r = api.login("other", "other's password");
        r.json()["sessionID"].as_str().unwrap().to_owned()
    };
    let with = |m: &str, p: &str, body: Option<&str>| {
        api.call(
            m,
            p,
            &[("auth", &theirs), ("X-API-Version", "800")],
            body.map(str::as_bytes),
        )
    };
    let named = format!("{{\"sessionID\": \"{mine}\"}}");
    // Paths naming the session are 404 (their message names the path, as it was sent);
    // nothing else shows it.
    for (m, p, body) in [
        ("GET", "/rest/login-sessions".to_owned(), None),
        ("GET", format!("/rest/login-sessions/{mine}"), None),
        ("GET", format!("/rest/sessions/{mine}"), None),
        ("DELETE", format!("/rest/login-sessions/{mine}"), None),
        (
            "PUT",
            format!("/rest/login-sessions?sessionID={mine}"),
            Some(named.as_str()),
        ),
        (
            "POST",
            "/rest/login-sessions".to_owned(),
            Some(named.as_str()),
        ),
    ] {
        let r = with(m, &p, body);
        let text = format!("{}{}", r.headers, String::from_utf8_lossy(&r.body));
        let shown = text.replace(p.split('?').next().unwrap(), "");
        assert!(!shown.contains(&mine), "{m} {p} showed the session: {text}");
        if p.split('?').next().unwrap().contains(&mine) {
            assert!(r.status == 404 || r.status == 405, "{m} {p}: {text}");
        }
        assert_eq!(
            api.get(&mine, "/rest/plan-scripts").status,
            200,
            "{m} {p} ended another user's session"
        );
    }
    // Refreshing with another session's id in the body refreshes the caller's own.
    let r = with("PUT", "/rest/login-sessions", Some(named.as_str()));
    assert_eq!(r.json()["sessionID"], theirs.as_str());
    // Logging out, another session's id in the query and the body, ends the caller's only.
    let r = with(
        "DELETE",
        &format!("/rest/login-sessions?sessionID={mine}"),
        Some(named.as_str()),
    );
    assert_eq!(r.status, 204);
    api.get(&theirs, "/rest/plan-scripts").error(401);
    assert_eq!(api.get(&mine, "/rest/plan-scripts").status, 200);
}

/// `strata user add` into the catalog at `catalog`.
fn add_user_in(repo: &Repo, catalog: &str, name: &str, password: &str) {
    let mut c = Command::new(BIN)
        .arg("--repo")
        .arg(&repo.root)
        .args([
            "--catalog",
            catalog,
            "user",
            "add",
            name,
            "--password-stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(c.stdin.take().unwrap(), "{password}").unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "user add: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn two_nodes_on_one_postgres_catalog_see_each_others_artifacts() {
    use common::pg_server::PgServer;
    let pg = match PgServer::start() {
        Ok(s) => s,
        Err(why) if PgServer::binaries().is_none() => {
            eprintln!("skipped: {why}");
            return;
        }
        Err(e) => panic!("starting PostgreSQL: {e}"),
    };
    let url = pg.new_database().unwrap();
    let (ra, rb) = (Repo::new(), Repo::new());
    let (root_a, root_b) = (ra.root.clone(), rb.root.clone());
    add_user_in(&ra, &url, USER, PASSWORD);
    let disk: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    let raw = ra.path("disk.raw");
    std::fs::write(&raw, &disk).unwrap();
    // One node told by --catalog, the other by STRATA_CATALOG.
    let a = Api::start(ra, &["--catalog", &url]);
    let b = Api::start_with_env(
        std::sync::Arc::new(rb),
        &[],
        &[("STRATA_CATALOG", url.as_str())],
    );
    // The user was added once, to the shared catalog; a session from one node is valid
    // on the other.
    let sa = a.session();
    let sb = b.session();
    assert_eq!(b.get(&sa, "/rest/plan-scripts").status, 200);

    // Made through A, listed and read through B.
    let r = a.send(
        &sa,
        "POST",
        "/rest/plan-scripts",
        &script("on-a", "echo a\n"),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let ps = r.json();
    let ps_uri = ps["uri"].as_str().unwrap();
    assert_eq!(b.get(&sb, ps_uri).json(), ps);
    let listed = b
        .get(&sb, "/rest/plan-scripts?filter=%22name%3D%27ON-A%27%22")
        .json();
    assert_eq!(listed["total"], 1, "{listed}");
    assert_eq!(listed["members"][0]["uri"], ps_uri);

    // B uses it; A may not delete it (409, naming B's build plan).
    let r = b.send(
        &sb,
        "POST",
        "/rest/build-plans",
        &build_plan("on-b", ps_uri),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let bp_uri = r.json()["uri"].as_str().unwrap().to_owned();
    let msg = a.delete(&sa, ps_uri).error(409);
    assert!(msg.contains("on-b"), "{msg}");
    assert_eq!(a.get(&sa, &bp_uri).status, 200);
    // Names are unique across the nodes.
    b.send(&sb, "POST", "/rest/plan-scripts", &script("on-a", "x"))
        .error(409);

    // A golden image uploaded to A: B lists it and reads its task, but its disk is in
    // A's store, so B's download is refused saying so, and A's works.
    let r = a.upload(&sa, "/rest/golden-images?name=gold&description=d", &raw);
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let task_uri = r.json()["uri"].as_str().unwrap().to_owned();
    let t = a.wait_task(&sa, &task_uri);
    assert_eq!(t["taskState"], "Completed", "{t}");
    assert_eq!(b.get(&sb, &task_uri).json()["taskState"], "Completed");
    let gi_uri = t["associatedResource"]["resourceUri"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(b.get(&sb, "/rest/golden-images").json()["total"], 1);
    assert_eq!(b.get(&sb, &gi_uri).json()["name"], "gold");
    let id = gi_uri.rsplit('/').next().unwrap();
    let msg = b
        .get(&sb, &format!("/rest/golden-images/download/{id}"))
        .error(409);
    assert!(msg.contains("another strata node"), "{msg}");
    let down = a.get(&sa, &format!("/rest/golden-images/download/{id}"));
    assert!(only_member(&down.body) == disk, "A's download differs");

    // Neither node made a catalog of its own; the CLI sees the shared one.
    for root in [&root_a, &root_b] {
        assert!(!root.join("catalog.db").exists(), "{}", root.display());
    }
    let o = Command::new(BIN)
        .arg("--repo")
        .arg(&root_b)
        .args(["user", "ls"])
        .env("STRATA_CATALOG", &url)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains(USER), "{o:?}");
    assert!(a.stop().success() && b.stop().success());
}
