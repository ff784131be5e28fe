#!/usr/bin/env python3
"""Drives strata's REST API with HPE's own Python SDK, unchanged, and checks every result.

Run it with the interpreter of a venv that tools/sdk-venv made:

    target/sdk-venv/bin/python  tests/sdk/drive_sdk.py --sdk 6 --host 127.0.0.1:PORT \\
        --user admin --password-env STRATA_PASSWORD --image disk.raw [--ca cert.pem]
    target/sdk5-venv/bin/python tests/sdk/drive_sdk.py --sdk 5 ...

`--sdk 6` is hpeOneView 6.6.0, `--sdk 5` is hpOneView 5.x. Each case is independent (it makes
the artifacts it needs and removes them after), prints `PASS name` or `FAIL name: reason` on
stdout, and the script exits 1 if any case failed (2 on bad usage). Tracebacks go to stderr.
`--list` prints the case names; `--case NAME` (repeatable) runs only those.

What the SDK sends and expects is written down in the project notes (sdk.md); this file only
uses the SDK's public calls, the way HPE's examples do, plus Python's zipfile to look inside
what comes back.
"""

import argparse
import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import signal
import sys
import tempfile
import traceback
import uuid
import zipfile

CASES = []


def case(fn):
    """Registers a case; its name is the function's without the `case_` prefix."""
    CASES.append((fn.__name__[len("case_"):], fn))
    return fn


class Failure(Exception):
    """A check that did not hold; the message is the reason printed after FAIL."""


class Timeout(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Failure(msg)


def one_line(text, limit=400):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_zip_member(zf, name):
    h = hashlib.sha256()
    with zf.open(name) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def last_segment(uri):
    return uri.rstrip("/").rsplit("/", 1)[-1]


def members_of(value):
    """A list answer, whether the server sent a JSON array or a {members: [...]} page."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict) and isinstance(value.get("members"), list):
        return value["members"]
    return None


class Env:
    """What every case shares: the SDK's modules, the login settings, a scratch directory,
    unique names, and the clean-up list of the case that runs."""

    def __init__(self, args, password):
        self.args = args
        self.password = password
        pkg = "hpeOneView" if args.sdk == "6" else "hpOneView"
        if importlib.util.find_spec(pkg) is None:
            raise SystemExit("drive_sdk.py: %s is not installed in %s (see tools/sdk-venv)"
                             % (pkg, sys.executable))
        self.pkg = pkg
        self.oneview_client = importlib.import_module(pkg + ".oneview_client")
        self.connection_mod = importlib.import_module(pkg + ".connection")
        exceptions = importlib.import_module(pkg + ".exceptions")
        base = "HPEOneViewException" if args.sdk == "6" else "HPOneViewException"
        self.SdkError = getattr(exceptions, base)
        self.workdir = args.workdir or tempfile.mkdtemp(prefix="strata-sdk-")
        os.makedirs(self.workdir, exist_ok=True)
        self.run_id = uuid.uuid4().hex[:8]
        self.serial = 0
        self.cleanups = []
        self.step_name = "start"

    # -- the SDK's own entry points ----------------------------------------------------

    def config(self, password=None, session_id=None):
        cred = {"userName": self.args.user, "authLoginDomain": "",
                "password": self.password if password is None else password}
        if session_id:
            cred["sessionID"] = session_id
        cfg = {"ip": self.args.host,
               "image_streamer_ip": self.args.streamer or self.args.host,
               "credentials": cred,
               "timeout": self.args.socket_timeout}
        if self.args.ca:
            cfg["ssl_certificate"] = self.args.ca
        if self.args.api_version:
            cfg["api_version"] = int(self.args.api_version)
        return cfg

    def client(self, **kw):
        """A fresh OneViewClient: the SDK probes /rest/version and logs in."""
        self.step("OneViewClient(config) login")
        return self.oneview_client.OneViewClient(self.config(**kw))

    def i3s(self):
        """A fresh login and its Image Streamer client, as HPE's examples make them."""
        ov = self.client()
        self.step("create_image_streamer_client")
        return ov.create_image_streamer_client()

    # -- bookkeeping ---------------------------------------------------------------------

    def step(self, name):
        """Names the SDK call in progress, so a failure says which call broke."""
        self.step_name = name

    def name(self, kind):
        self.serial += 1
        return "strata-sdk-%s-%s-%d" % (kind, self.run_id, self.serial)

    def path(self, name):
        return os.path.join(self.workdir, name)

    def on_cleanup(self, fn):
        self.cleanups.append(fn)

    def run_cleanups(self):
        while self.cleanups:
            fn = self.cleanups.pop()
            try:
                fn()
            except Exception:  # best effort: the resource may be gone already
                pass

    def expect_sdk_error(self, what, fn):
        """Runs fn and requires the SDK to raise its own exception (an HTTP error)."""
        try:
            fn()
        except self.SdkError:
            return
        raise Failure("%s did not fail" % what)

    # -- artifacts the cases build on ------------------------------------------------------

    def make_plan_script(self, i3s, content=None, name=None):
        name = name or self.name("ps")
        body = {"name": name, "description": "plan script made by drive_sdk.py",
                "hpProvided": False, "planType": "deploy",
                "content": content if content is not None else
                "# made by drive_sdk.py\necho %s\n" % name}
        self.step("plan_scripts.create")
        ps = i3s.plan_scripts.create(body)
        check(isinstance(ps, dict) and str(ps.get("uri", "")).startswith("/rest/plan-scripts/"),
              "plan_scripts.create returned no plan script with a /rest/plan-scripts/ uri: %r"
              % (ps,))
        uri = ps["uri"]
        self.on_cleanup(lambda: i3s.plan_scripts.delete(uri))
        return ps

    def make_build_plan(self, i3s, ps, name=None):
        name = name or self.name("bp")
        body = {"name": name, "description": "build plan made by drive_sdk.py",
                "oeBuildPlanType": "deploy", "hpProvided": False, "customAttributes": [],
                "buildStep": [{"serialNumber": "1", "planScriptUri": ps["uri"],
                               "parameters": ""}]}
        self.step("build_plans.create")
        bp = i3s.build_plans.create(body)
        check(isinstance(bp, dict) and str(bp.get("uri", "")).startswith("/rest/build-plans/"),
              "build_plans.create returned no build plan with a /rest/build-plans/ uri: %r"
              % (bp,))
        uri = bp["uri"]
        self.on_cleanup(lambda: i3s.build_plans.delete(uri))
        return bp

    def make_deployment_plan(self, i3s, bp, name=None, extra=None):
        name = name or self.name("dp")
        # The shape of HPE's example: hpProvided as the string "false".
        body = {"name": name, "description": "deployment plan made by drive_sdk.py",
                "hpProvided": "false", "oeBuildPlanURI": bp["uri"]}
        body.update(extra or {})
        self.step("deployment_plans.create")
        dp = i3s.deployment_plans.create(body)
        data = getattr(dp, "data", None)
        check(isinstance(data, dict)
              and str(data.get("uri", "")).startswith("/rest/deployment-plans/"),
              "deployment_plans.create returned no plan with a /rest/deployment-plans/ uri: %r"
              % (data,))
        self.on_cleanup(lambda: dp.delete())
        return dp

    def image_zip(self, name):
        """The golden image given on the command line, zipped (one raw member), as HPE's
        examples upload it."""
        z = self.path(name + ".zip")
        with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.write(self.args.image, os.path.basename(self.args.image))
        return z

    def check_image_download(self, path):
        """The downloaded golden image holds the given image byte for byte: either as the
        raw file or as a zip of exactly one member."""
        want = sha256_file(self.args.image)
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                files = [i for i in zf.infolist() if not i.is_dir()]
                check(len(files) == 1, "downloaded image zip holds %d files, want 1: %s"
                      % (len(files), [i.filename for i in files]))
                got = sha256_zip_member(zf, files[0].filename)
                size = files[0].file_size
        else:
            got = sha256_file(path)
            size = os.path.getsize(path)
        check(got == want, "downloaded image differs from the uploaded one (%d bytes, "
              "want %d)" % (size, os.path.getsize(self.args.image)))


def in_list(items, uri):
    return any(isinstance(m, dict) and m.get("uri") == uri for m in items)


# ---- login and sessions ---------------------------------------------------------------------

@case
def case_login(env):
    ov = env.client()
    token = ov.connection.get_session_id()
    check(isinstance(token, str) and token, "no sessionID after login: %r" % (token,))
    env.step("GET /rest/version")
    version = ov.connection.get("/rest/version")
    check(isinstance(version, dict) and isinstance(version.get("currentVersion"), int),
          "/rest/version has no integer currentVersion: %r" % (version,))
    if env.args.api_version:
        want = int(env.args.api_version)
    elif env.args.sdk == "5":
        want = 800  # hpOneView 5.x's default
    else:
        want = version["currentVersion"]  # hpeOneView 6.x takes the appliance's
    check(ov.api_version == want, "client uses X-API-Version %r, want %r"
          % (ov.api_version, want))
    env.step("create_image_streamer_client")
    i3s = ov.create_image_streamer_client()
    check(i3s.connection.get_session_id() == token,
          "the streamer client does not carry the login's session")
    env.step("plan_scripts.get_all with the login's session")
    check(isinstance(i3s.plan_scripts.get_all(), list), "plan_scripts.get_all gave no list")


@case
def case_login_wrong_password(env):
    env.expect_sdk_error("login with a wrong password",
                         lambda: env.client(password=env.password + "-wrong"))


@case
def case_login_session_reuse(env):
    first = env.client()
    token = first.connection.get_session_id()
    # credentials.sessionID: the SDK PUTs /rest/login-sessions with that token.
    env.step("OneViewClient(sessionID) login")
    again = env.oneview_client.OneViewClient(env.config(session_id=token))
    check(again.connection.get_session_id(), "no sessionID after reusing a session")
    env.step("plan_scripts.get_all on the reused session")
    check(isinstance(again.create_image_streamer_client().plan_scripts.get_all(), list),
          "plan_scripts.get_all gave no list")


@case
def case_logout(env):
    ov = env.client()
    i3s = ov.create_image_streamer_client()
    env.step("plan_scripts.get_all before logout")
    i3s.plan_scripts.get_all()
    env.step("connection.logout")
    ov.connection.logout()
    env.step("plan_scripts.get_all after logout")
    env.expect_sdk_error("a request with a logged-out session",
                         lambda: i3s.plan_scripts.get_all())


@case
def case_no_session_refused(env):
    env.step("connection without a session")
    con = env.connection_mod.connection(env.args.streamer or env.args.host,
                                        int(env.args.api_version or 800),
                                        env.args.ca or False, env.args.socket_timeout)
    env.expect_sdk_error("GET /rest/plan-scripts without a session",
                         lambda: con.get("/rest/plan-scripts"))


# ---- plan scripts --------------------------------------------------------------------------

@case
def case_plan_scripts_crud(env):
    i3s = env.i3s()
    content = "# made by drive_sdk.py\necho 'first version'\n"
    ps = env.make_plan_script(i3s, content=content)
    uri, name = ps["uri"], ps["name"]
    check(ps.get("content") == content, "created plan script's content differs: %r"
          % (ps.get("content"),))
    check(ps.get("planType") == "deploy", "planType %r, want deploy" % (ps.get("planType"),))

    env.step("plan_scripts.get(uri)")
    got = i3s.plan_scripts.get(uri)
    check(got.get("name") == name and got.get("content") == content,
          "get(uri) gives another plan script: %r" % (got,))
    env.step("plan_scripts.get(id)")
    check(i3s.plan_scripts.get(last_segment(uri)).get("uri") == uri, "get(id) differs")

    env.step("plan_scripts.get_all")
    check(in_list(i3s.plan_scripts.get_all(), uri), "get_all does not list the new script")
    env.step("plan_scripts.get_by(name)")
    by = i3s.plan_scripts.get_by("name", name)
    check([m.get("uri") for m in by] == [uri], "get_by(name) found %r" % (by,))

    env.step("plan_scripts.update")
    changed = dict(got)
    changed["description"] = "changed by drive_sdk.py"
    changed["content"] = content + "echo 'second version'\n"
    upd = i3s.plan_scripts.update(changed)
    check(isinstance(upd, dict) and upd.get("content") == changed["content"],
          "update did not return the new content: %r" % (upd,))
    env.step("plan_scripts.get after update")
    again = i3s.plan_scripts.get(uri)
    check(again.get("content") == changed["content"]
          and again.get("description") == changed["description"],
          "the update is not stored: %r" % (again,))

    env.step("plan_scripts.delete")
    check(i3s.plan_scripts.delete(again) is True, "delete did not report success")
    env.step("plan_scripts.get after delete")
    env.expect_sdk_error("get of a deleted plan script", lambda: i3s.plan_scripts.get(uri))
    env.step("plan_scripts.get_by after delete")
    check(i3s.plan_scripts.get_by("name", name) == [], "the deleted script is still listed")


@case
def case_get_by_ignores_case(env):
    i3s = env.i3s()
    ps = env.make_plan_script(i3s, name=env.name("MixedCase-PS"))
    env.step("plan_scripts.get_by(name in upper case)")
    by = i3s.plan_scripts.get_by("name", ps["name"].upper())
    check([m.get("uri") for m in by] == [ps["uri"]],
          "get_by is documented case-insensitive; found %r" % (by,))


@case
def case_list_sort_and_count(env):
    i3s = env.i3s()
    base = env.name("sort")
    names = [base + "-c", base + "-b", base + "-a"]  # made in descending order
    for n in names:
        env.make_plan_script(i3s, name=n)
    env.step("plan_scripts.get_all(sort=name:ascending)")
    asc = [m["name"] for m in i3s.plan_scripts.get_all(sort="name:ascending")
           if m.get("name") in names]
    check(asc == sorted(names), "sort=name:ascending gave %r" % (asc,))
    env.step("plan_scripts.get_all(sort=name:descending)")
    desc = [m["name"] for m in i3s.plan_scripts.get_all(sort="name:descending")
            if m.get("name") in names]
    check(desc == sorted(names, reverse=True), "sort=name:descending gave %r" % (desc,))
    env.step("plan_scripts.get_all(count=2)")
    two = i3s.plan_scripts.get_all(count=2)
    check(len(two) == 2, "count=2 gave %d items" % len(two))
    env.step("plan_scripts.get_all(start=1, count=1)")
    everything = i3s.plan_scripts.get_all(sort="name:ascending")
    one = i3s.plan_scripts.get_all(start=1, count=1, sort="name:ascending")
    check([m.get("uri") for m in one] == [everything[1].get("uri")],
          "start=1&count=1 gave %r, want the second of the sorted list"
          % ([m.get("name") for m in one],))


@case
def case_plan_scripts_differences(env):
    i3s = env.i3s()
    ps = env.make_plan_script(i3s)
    env.step("plan_scripts.retrieve_differences")
    diff = i3s.plan_scripts.retrieve_differences(ps["uri"], "echo other content\n")
    # An empty answer makes the SDK hand back its own request string.
    check(isinstance(diff, (dict, list)), "differences gave no JSON answer: %r" % (diff,))


@case
def case_references_enforced(env):
    i3s = env.i3s()
    ps = env.make_plan_script(i3s)
    bp = env.make_build_plan(i3s, ps)
    dp = env.make_deployment_plan(i3s, bp)
    env.step("plan_scripts.get_usedby_and_readonly")
    used = members_of(i3s.plan_scripts.get_usedby_and_readonly(last_segment(ps["uri"])))
    check(used is not None and any(isinstance(m, dict) and m.get("name") == bp["name"]
                                   for m in used),
          "usedby/readonly does not list the build plan %r: %r" % (bp["name"], used))
    env.step("plan_scripts.delete of a used script")
    env.expect_sdk_error("deleting a plan script a build plan uses",
                         lambda: i3s.plan_scripts.delete(ps))
    check(i3s.plan_scripts.get(ps["uri"]).get("uri") == ps["uri"],
          "the refused delete removed the plan script")
    env.step("build_plans.delete of a used build plan")
    env.expect_sdk_error("deleting a build plan a deployment plan uses",
                         lambda: i3s.build_plans.delete(bp))
    env.step("delete in order: deployment plan, build plan, plan script")
    check(dp.delete() is True, "deployment plan delete did not report success")
    check(i3s.build_plans.delete(bp) is True, "build plan delete did not report success")
    check(i3s.plan_scripts.delete(ps) is True, "plan script delete did not report success")


# ---- build plans and deployment plans ----------------------------------------------------------

@case
def case_build_plans_crud(env):
    i3s = env.i3s()
    ps = env.make_plan_script(i3s)
    bp = env.make_build_plan(i3s, ps)
    uri, name = bp["uri"], bp["name"]
    steps = bp.get("buildStep") or []
    check(bp.get("oeBuildPlanType") == "deploy", "oeBuildPlanType %r"
          % (bp.get("oeBuildPlanType"),))
    check(len(steps) == 1 and steps[0].get("planScriptUri") == ps["uri"],
          "buildStep does not name the plan script: %r" % (steps,))

    env.step("build_plans.get")
    got = i3s.build_plans.get(uri)
    check(got.get("name") == name, "get(uri) gives %r" % (got.get("name"),))
    env.step("build_plans.get_all")
    check(in_list(i3s.build_plans.get_all(), uri), "get_all does not list the build plan")
    env.step("build_plans.get_by(name)")
    check([m.get("uri") for m in i3s.build_plans.get_by("name", name)] == [uri],
          "get_by(name) does not find exactly the build plan")
    env.step("build_plans.get_all(filter=oeBuildPlanType=deploy)")
    check(in_list(i3s.build_plans.get_all(filter="oeBuildPlanType=deploy"), uri),
          "the oeBuildPlanType=deploy filter leaves the build plan out")

    env.step("build_plans.update")
    changed = dict(got)
    changed["name"] = name + "-renamed"
    upd = i3s.build_plans.update(changed)
    check(isinstance(upd, dict) and upd.get("name") == changed["name"],
          "update did not return the new name: %r" % (upd,))
    check(i3s.build_plans.get(uri).get("name") == changed["name"], "the rename is not stored")

    env.step("build_plans.delete")
    check(i3s.build_plans.delete(uri) is True, "delete did not report success")
    env.expect_sdk_error("get of a deleted build plan", lambda: i3s.build_plans.get(uri))


@case
def case_deployment_plans_crud(env):
    i3s = env.i3s()
    ps = env.make_plan_script(i3s)
    bp = env.make_build_plan(i3s, ps)
    dp = env.make_deployment_plan(i3s, bp)
    uri, name = dp.data["uri"], dp.data["name"]
    check(dp.data.get("oeBuildPlanURI") == bp["uri"], "oeBuildPlanURI %r, want %r"
          % (dp.data.get("oeBuildPlanURI"), bp["uri"]))
    check(dp.data.get("hpProvided") in (False, "false"),
          "hpProvided %r, want false" % (dp.data.get("hpProvided"),))

    env.step("deployment_plans.get_by_uri")
    check(i3s.deployment_plans.get_by_uri(uri).data.get("name") == name, "get_by_uri differs")
    env.step("deployment_plans.get_by_name")
    found = i3s.deployment_plans.get_by_name(name)
    check(found is not None and found.data.get("uri") == uri, "get_by_name does not find it")
    env.step("deployment_plans.get_all")
    check(in_list(i3s.deployment_plans.get_all(), uri), "get_all does not list the plan")

    env.step("deployment_plan.update")
    dp.update({"description": "changed by drive_sdk.py"})
    check(dp.data.get("description") == "changed by drive_sdk.py",
          "update did not return the new description: %r" % (dp.data,))
    check(i3s.deployment_plans.get_by_uri(uri).data.get("description")
          == "changed by drive_sdk.py", "the update is not stored")

    env.step("deployment_plan.delete")
    check(dp.delete() is True, "delete did not report success")
    check(i3s.deployment_plans.get_by_name(name) is None, "the deleted plan is still listed")


@case
def case_deployment_plan_usedby_osdp(env):
    # OneView's server profiles would be listed; strata has none, so any JSON answer.
    i3s = env.i3s()
    ps = env.make_plan_script(i3s)
    dp = env.make_deployment_plan(i3s, env.make_build_plan(i3s, ps))
    env.step("deployment_plan.get_usedby")
    check(not isinstance(dp.get_usedby(), str), "usedby gave no JSON answer")
    env.step("deployment_plan.get_osdp")
    check(not isinstance(dp.get_osdp(), str), "osdp gave no JSON answer")


@case
def case_deployment_plans_v5_type(env):
    # HPE's example sets the V5 type itself from API version 500 on.
    i3s = env.i3s()
    ps = env.make_plan_script(i3s)
    bp = env.make_build_plan(i3s, ps)
    dp = env.make_deployment_plan(i3s, bp, extra={"type": "OEDeploymentPlanV5"})
    check(i3s.deployment_plans.get_by_uri(dp.data["uri"]).data.get("name") == dp.data["name"],
          "the V5-typed plan cannot be read back")


# ---- golden images -------------------------------------------------------------------------

def golden_image_round_trip(env, upload_path):
    i3s = env.i3s()
    name = env.name("gi")
    env.step("golden_images.upload")
    gi = i3s.golden_images.upload(upload_path, {"name": name,
                                                "description": "image made by drive_sdk.py"})
    check(isinstance(gi, dict) and str(gi.get("uri", "")).startswith("/rest/golden-images/"),
          "upload returned no golden image with a /rest/golden-images/ uri: %r" % (gi,))
    uri = gi["uri"]
    env.on_cleanup(lambda: i3s.golden_images.delete(uri))
    check(gi.get("name") == name, "uploaded image is named %r, want %r" % (gi.get("name"), name))

    env.step("golden_images.get_by(name)")
    check([m.get("uri") for m in i3s.golden_images.get_by("name", name)] == [uri],
          "get_by(name) does not find exactly the image")
    env.step("golden_images.get_all")
    check(in_list(i3s.golden_images.get_all(), uri), "get_all does not list the image")

    env.step("golden_images.download")
    out = env.path(name + "-download")
    check(i3s.golden_images.download(uri, out) is True, "download did not report success")
    env.check_image_download(out)

    env.step("golden_images.update")
    got = i3s.golden_images.get(uri)
    got["description"] = "changed by drive_sdk.py"
    upd = i3s.golden_images.update(got)
    check(isinstance(upd, dict) and upd.get("description") == "changed by drive_sdk.py",
          "update did not return the new description: %r" % (upd,))

    env.step("golden_images.delete")
    check(i3s.golden_images.delete(uri) is True, "delete did not report success")
    env.expect_sdk_error("get of a deleted golden image", lambda: i3s.golden_images.get(uri))


@case
def case_golden_image_zip_round_trip(env):
    golden_image_round_trip(env, env.image_zip(env.name("upload")))


@case
def case_golden_image_raw_round_trip(env):
    raw = env.path(env.name("upload") + ".raw")
    shutil.copyfile(env.args.image, raw)  # the SDK writes a scratch copy beside the file
    golden_image_round_trip(env, raw)


# ---- artifact bundles ----------------------------------------------------------------------

def make_bundle(env, i3s):
    """A plan script, a build plan on it, a deployment plan on that, and a bundle of the
    three (body in the shape of HPE's example, readOnly as the string "false")."""
    ps = env.make_plan_script(i3s)
    bp = env.make_build_plan(i3s, ps)
    dp = env.make_deployment_plan(i3s, bp)
    name = env.name("ab")
    body = {"name": name, "description": "bundle made by drive_sdk.py",
            "planScripts": [{"resourceUri": ps["uri"], "readOnly": "false"}],
            "buildPlans": [{"resourceUri": bp["uri"], "readOnly": "false"}],
            "deploymentPlans": [{"resourceUri": dp.data["uri"], "readOnly": "false"}]}
    env.step("artifact_bundles.create")
    ab = i3s.artifact_bundles.create(body)
    data = getattr(ab, "data", None)
    check(isinstance(data, dict)
          and str(data.get("uri", "")).startswith("/rest/artifact-bundles/"),
          "create returned no bundle with a /rest/artifact-bundles/ uri: %r" % (data,))
    env.on_cleanup(lambda: ab.delete())
    return ps, bp, dp, ab


def bundle_json_members(zf):
    """{suffix: [parsed json, ...]} for the bundle's <id>_<kind>.json members."""
    found = {}
    for n in zf.namelist():
        for kind in ("planscript", "buildplan", "deploymentplan", "goldenimage"):
            if n.endswith("_%s.json" % kind) and "/" not in n:
                found.setdefault(kind, []).append(json.loads(zf.read(n)))
    return found


def check_bundle_zip(path, ps, bp, dp):
    check(zipfile.is_zipfile(path), "the downloaded bundle is not a zip")
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        check("MANIFEST.MF" in names, "no MANIFEST.MF in the bundle: %r" % (names,))
        sums = [n for n in names if n.startswith("SHA256SUM")]
        check(sums, "no SHA256SUM file in the bundle: %r" % (names,))
        for line in zf.read(sums[0]).decode("utf-8").splitlines():
            if not line.strip():
                continue
            # HPE's layout: <member>TAB<sha256>; names may hold spaces.
            member, _, digest = line.rstrip("\r").rpartition("\t")
            check(member, "SHA256SUM line without a tab: %r" % (line,))
            check(member in names, "SHA256SUM names %r, not in the bundle" % (member,))
            check(sha256_zip_member(zf, member) == digest.lower(),
                  "SHA256SUM of %r does not match its content" % (member,))
        got = bundle_json_members(zf)
        scripts = [j for j in got.get("planscript", []) if j.get("name") == ps["name"]]
        check(len(scripts) == 1 and scripts[0].get("content") == ps["content"],
              "the bundle does not hold the plan script with its content")
        check(any(j.get("name") == bp["name"] for j in got.get("buildplan", [])),
              "the bundle does not hold the build plan")
        check(any(j.get("name") == dp.data["name"] for j in got.get("deploymentplan", [])),
              "the bundle does not hold the deployment plan")


@case
def case_artifact_bundle_create_get(env):
    i3s = env.i3s()
    ps, bp, dp, ab = make_bundle(env, i3s)
    uri, name = ab.data["uri"], ab.data["name"]
    check(name == ab.data.get("name"), "bundle name differs")
    env.step("artifact_bundles.get_by_uri")
    check(i3s.artifact_bundles.get_by_uri(uri).data.get("name") == name, "get_by_uri differs")
    env.step("artifact_bundles.get_by_name")
    found = i3s.artifact_bundles.get_by_name(name)
    check(found is not None and found.data.get("uri") == uri, "get_by_name does not find it")
    env.step("artifact_bundles.get_all")
    check(in_list(i3s.artifact_bundles.get_all(), uri), "get_all does not list the bundle")
    env.step("artifact_bundle.update(name)")
    ab.update({"name": name + "-renamed"})
    check(i3s.artifact_bundles.get_by_uri(uri).data.get("name") == name + "-renamed",
          "the rename is not stored")
    env.step("artifact_bundle.delete")
    check(ab.delete() is True, "delete did not report success")
    check(i3s.artifact_bundles.get_by_name(name + "-renamed") is None,
          "the deleted bundle is still listed")


@case
def case_artifact_bundle_download(env):
    i3s = env.i3s()
    ps, bp, dp, ab = make_bundle(env, i3s)
    out = env.path(ab.data["name"] + ".zip")
    env.step("artifact_bundle.download")
    check(ab.download(out) is True, "download did not report success")
    check_bundle_zip(out, ps, bp, dp)


@case
def case_artifact_bundle_upload_extract(env):
    i3s = env.i3s()
    ps, bp, dp, ab = make_bundle(env, i3s)
    out = env.path(ab.data["name"] + ".zip")
    env.step("artifact_bundle.download")
    check(ab.download(out) is True, "download did not report success")
    env.step("delete the bundle and its artifacts")
    check(ab.delete() is True, "bundle delete did not report success")
    check(dp.delete() is True, "deployment plan delete did not report success")
    check(i3s.build_plans.delete(bp) is True, "build plan delete did not report success")
    check(i3s.plan_scripts.delete(ps) is True, "plan script delete did not report success")
    check(i3s.plan_scripts.get_by("name", ps["name"]) == [], "plan script still there")

    env.step("artifact_bundles.upload_bundle_from_file")
    up = i3s.artifact_bundles.upload_bundle_from_file(out)
    check(isinstance(up, dict) and str(up.get("uri", "")).startswith("/rest/artifact-bundles/"),
          "upload returned no bundle with a /rest/artifact-bundles/ uri: %r" % (up,))
    bundle = i3s.artifact_bundles.get_by_uri(up["uri"])
    env.on_cleanup(lambda: bundle.delete())
    env.step("artifact_bundle.extract")
    bundle.extract()

    env.step("the extracted artifacts")
    scripts = i3s.plan_scripts.get_by("name", ps["name"])
    check(len(scripts) == 1 and scripts[0].get("content") == ps["content"],
          "extract did not bring the plan script back with its content: %r" % (scripts,))
    env.on_cleanup(lambda: i3s.plan_scripts.delete(scripts[0]["uri"]))
    plans = i3s.build_plans.get_by("name", bp["name"])
    check(len(plans) == 1, "extract did not bring the build plan back")
    env.on_cleanup(lambda: i3s.build_plans.delete(plans[0]["uri"]))
    steps = plans[0].get("buildStep") or []
    check(len(steps) == 1 and steps[0].get("planScriptUri") == scripts[0]["uri"],
          "the extracted build plan does not point at the extracted script: %r" % (steps,))
    dplan = i3s.deployment_plans.get_by_name(dp.data["name"])
    check(dplan is not None, "extract did not bring the deployment plan back")
    env.on_cleanup(lambda: dplan.delete())
    check(dplan.data.get("oeBuildPlanURI") == plans[0]["uri"],
          "the extracted deployment plan does not point at the extracted build plan")


@case
def case_artifact_bundle_with_golden_image(env):
    """A bundle holding a golden image carries it as HPE's layout has it (a member named
    after the image, itself a zip of one raw disk), and brings it back byte for byte."""
    i3s = env.i3s()
    raw = env.path(env.name("upload") + ".raw")
    shutil.copyfile(env.args.image, raw)  # the SDK writes a scratch copy beside the file
    gname = env.name("gi")
    env.step("golden_images.upload")
    gi = i3s.golden_images.upload(raw, {"name": gname, "description": "bundled image"})
    check(isinstance(gi, dict) and gi.get("uri"), "upload returned %r" % (gi,))
    env.on_cleanup(lambda: i3s.golden_images.delete(gi["uri"]))
    ps = env.make_plan_script(i3s)
    bp = env.make_build_plan(i3s, ps)
    dp = env.make_deployment_plan(i3s, bp, extra={"goldenImageURI": gi["uri"]})
    name = env.name("ab")
    env.step("artifact_bundles.create (with the golden image)")
    ab = i3s.artifact_bundles.create({
        "name": name, "description": "bundle with an image, made by drive_sdk.py",
        "planScripts": [{"resourceUri": ps["uri"], "readOnly": "false"}],
        "buildPlans": [{"resourceUri": bp["uri"], "readOnly": "false"}],
        "deploymentPlans": [{"resourceUri": dp.data["uri"], "readOnly": "false"}],
        "goldenImages": [{"resourceUri": gi["uri"], "readOnly": "false"}]})
    check(str(getattr(ab, "data", {}).get("uri", "")).startswith("/rest/artifact-bundles/"),
          "create returned no bundle: %r" % (getattr(ab, "data", None),))
    env.on_cleanup(lambda: ab.delete())
    out = env.path(name + ".zip")
    env.step("artifact_bundle.download")
    check(ab.download(out) is True, "download did not report success")
    check_bundle_zip(out, ps, bp, dp)
    with zipfile.ZipFile(out) as zf:
        images = bundle_json_members(zf).get("goldenimage", [])
        check(any(j.get("name") == gname for j in images),
              "the bundle has no _goldenimage.json for %r" % (gname,))
        check(gname in zf.namelist(), "no payload member named %r in the bundle: %r"
              % (gname, zf.namelist()))
        payload = env.path(name + "-payload")
        with zf.open(gname) as src, open(payload, "wb") as dst:
            shutil.copyfileobj(src, dst)
    env.check_image_download(payload)

    env.step("delete everything, upload the bundle, extract it")
    check(ab.delete() is True, "bundle delete did not report success")
    check(dp.delete() is True, "deployment plan delete did not report success")
    check(i3s.build_plans.delete(bp) is True, "build plan delete did not report success")
    check(i3s.plan_scripts.delete(ps) is True, "plan script delete did not report success")
    check(i3s.golden_images.delete(gi["uri"]) is True, "image delete did not report success")
    up = i3s.artifact_bundles.upload_bundle_from_file(out)
    check(isinstance(up, dict) and up.get("uri"), "upload returned %r" % (up,))
    bundle = i3s.artifact_bundles.get_by_uri(up["uri"])
    env.on_cleanup(lambda: bundle.delete())
    bundle.extract()
    env.step("the extracted golden image")
    back = i3s.golden_images.get_by("name", gname)
    check(len(back) == 1, "extract did not bring the golden image back: %r" % (back,))
    env.on_cleanup(lambda: i3s.golden_images.delete(back[0]["uri"]))
    scripts = i3s.plan_scripts.get_by("name", ps["name"])
    plans = i3s.build_plans.get_by("name", bp["name"])
    dplan = i3s.deployment_plans.get_by_name(dp.data["name"])
    for m in scripts:
        env.on_cleanup(lambda u=m["uri"]: i3s.plan_scripts.delete(u))
    for m in plans:
        env.on_cleanup(lambda u=m["uri"]: i3s.build_plans.delete(u))
    if dplan is not None:
        env.on_cleanup(lambda: dplan.delete())
    check(dplan is not None and dplan.data.get("goldenImageURI") == back[0]["uri"],
          "the extracted deployment plan does not point at the extracted image")
    again = env.path(name + "-again")
    env.step("golden_images.download of the extracted image")
    check(i3s.golden_images.download(back[0]["uri"], again) is True,
          "download did not report success")
    env.check_image_download(again)


@case
def case_artifact_bundle_hpe(env):
    """Every HPE bundle given with --hpe-bundle uploads and extracts; its plan scripts are
    then there with their content."""
    check(env.args.hpe_bundle, "no --hpe-bundle given")
    i3s = env.i3s()
    for path in env.args.hpe_bundle:
        base = os.path.basename(path)
        with zipfile.ZipFile(path) as zf:
            scripts = bundle_json_members(zf).get("planscript", [])
        copy = env.path(base)
        shutil.copyfile(path, copy)  # the SDK writes a scratch copy beside the file
        env.step("artifact_bundles.upload_bundle_from_file(%s)" % base)
        up = i3s.artifact_bundles.upload_bundle_from_file(copy)
        check(isinstance(up, dict) and up.get("uri"), "upload of %s returned %r" % (base, up))
        bundle = i3s.artifact_bundles.get_by_uri(up["uri"])
        env.on_cleanup(lambda b=bundle: b.delete())
        env.step("artifact_bundle.extract(%s)" % base)
        bundle.extract()
        for s in scripts:
            got = i3s.plan_scripts.get_by("name", s["name"])
            check(len(got) == 1 and got[0].get("content") == s["content"],
                  "%s: plan script %r not extracted with its content" % (base, s["name"]))


@case
def case_deployment_groups(env):
    i3s = env.i3s()
    env.step("deployment_groups.get_all")
    groups = i3s.deployment_groups.get_all()
    check(isinstance(groups, list) and groups, "no deployment group listed: %r" % (groups,))
    g = groups[0]
    env.step("deployment_groups.get")
    check(i3s.deployment_groups.get(g["uri"]).get("uri") == g["uri"], "get(uri) differs")
    env.step("deployment_groups.get_by_name")
    found = i3s.deployment_groups.get_by_name(g["name"])
    check(found is not None and found.get("uri") == g["uri"], "get_by_name does not find it")


@case
def case_artifact_bundle_backup_restore(env):
    i3s = env.i3s()
    env.step("deployment_groups.get_all")
    groups = i3s.deployment_groups.get_all()
    check(groups, "no deployment group to back up")
    dg = {"deploymentGroupURI": groups[0]["uri"]}
    ps = env.make_plan_script(i3s)
    env.step("artifact_bundles.create_backup")
    i3s.artifact_bundles.create_backup(dg)
    env.step("artifact_bundles.get_all_backups")
    backups = i3s.artifact_bundles.get_all_backups()
    check(isinstance(backups, list) and backups, "no backup listed: %r" % (backups,))
    env.step("artifact_bundles.get_backup")
    backup = i3s.artifact_bundles.get_backup(backups[0]["uri"])
    check(backup.data.get("uri") == backups[0]["uri"], "get_backup differs")
    out = env.path(env.name("backup") + ".zip")
    env.step("backup.download_archive")
    check(backup.download_archive(out) is True, "download_archive did not report success")
    check(zipfile.is_zipfile(out), "the backup archive is not a zip")

    env.step("delete the plan script, then restore the backup")
    check(i3s.plan_scripts.delete(ps) is True, "plan script delete did not report success")
    env.step("artifact_bundles.upload_backup_bundle_from_file")
    i3s.artifact_bundles.upload_backup_bundle_from_file(out, dg["deploymentGroupURI"])
    env.step("backup.extract_backup")
    backups = i3s.artifact_bundles.get_all_backups()
    check(backups, "no backup listed after the upload")
    i3s.artifact_bundles.get_backup(backups[0]["uri"]).extract_backup(dg)
    env.step("the restored plan script")
    back = i3s.plan_scripts.get_by("name", ps["name"])
    check(len(back) == 1 and back[0].get("content") == ps["content"],
          "the restore did not bring the plan script back: %r" % (back,))


# ---- OS volumes ------------------------------------------------------------------------------

@case
def case_os_volumes(env):
    i3s = env.i3s()
    env.step("os_volumes.get_all")
    vols = i3s.os_volumes.get_all()
    check(isinstance(vols, list), "get_all gave no list: %r" % (vols,))
    check(all(isinstance(v, dict) and v.get("uri", "").startswith("/rest/os-volumes/")
              and v.get("name") for v in vols), "an OS volume without uri or name: %r" % (vols,))
    want = env.args.os_volume
    if want:
        match = [v for v in vols if v.get("name") == want]
        check(len(match) == 1, "OS volume %r not listed" % (want,))
        uri = match[0]["uri"]
        env.step("os_volumes.get")
        check(i3s.os_volumes.get(uri).get("name") == want, "get(uri) differs")
        env.step("os_volumes.get_by_name")
        found = i3s.os_volumes.get_by_name(want)
        check(found is not None and found.get("uri") == uri, "get_by_name does not find it")
        env.step("os_volumes.get_storage")
        check(isinstance(i3s.os_volumes.get_storage(uri), dict), "storage gave no JSON object")
        env.step("os_volumes.download_archive")
        out = env.path(env.name("osvol-archive"))
        check(i3s.os_volumes.download_archive(want, out) is True,
              "download_archive did not report success")
        check(os.path.getsize(out) > 0, "the deployment log archive is empty")


# ---- running ---------------------------------------------------------------------------------

def run(env, names, case_timeout):
    def on_alarm(signum, frame):
        raise Timeout()

    signal.signal(signal.SIGALRM, on_alarm)
    failed = 0
    for name, fn in CASES:
        if names and name not in names:
            continue
        env.step_name = "start"
        try:
            signal.alarm(case_timeout)
            try:
                fn(env)
            finally:
                signal.alarm(0)
            print("PASS %s" % name, flush=True)
        except Failure as e:
            failed += 1
            print("FAIL %s: %s" % (name, one_line(e)), flush=True)
        except Timeout:
            failed += 1
            print("FAIL %s: %s: no answer within %d s" % (name, env.step_name, case_timeout),
                  flush=True)
        except Exception as e:  # the SDK raised: report which call and what it said
            failed += 1
            traceback.print_exc(file=sys.stderr)
            print("FAIL %s: %s: %s: %s" % (name, env.step_name, type(e).__name__,
                                           one_line(e)), flush=True)
        finally:
            signal.alarm(case_timeout)
            try:
                env.run_cleanups()
            except Timeout:
                pass
            finally:
                signal.alarm(0)
    return failed


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sdk", choices=["6", "5"],
                   help="6: hpeOneView 6.x; 5: hpOneView 5.x (default: the one installed)")
    p.add_argument("--host", help="API address HOST:PORT (the SDK's ip: OneView login)")
    p.add_argument("--streamer", help="Image Streamer address if not --host")
    p.add_argument("--user", default="admin")
    p.add_argument("--password-env", default="STRATA_PASSWORD",
                   help="environment variable holding the password (default STRATA_PASSWORD)")
    p.add_argument("--password-file", help="file holding the password (first line)")
    p.add_argument("--ca", help="PEM certificate to trust (else the SDK checks none)")
    p.add_argument("--api-version", help="X-API-Version to configure (default: the SDK's own)")
    p.add_argument("--image", help="a small raw disk image to upload as a golden image")
    p.add_argument("--hpe-bundle", action="append", default=[],
                   help="an HPE artifact bundle for the artifact_bundle_hpe case (repeatable)")
    p.add_argument("--os-volume", help="name of an existing OS volume for the os_volumes case")
    p.add_argument("--workdir", help="scratch directory (default: a new temporary one)")
    p.add_argument("--case", action="append", default=[], help="run only this case")
    p.add_argument("--case-timeout", type=int, default=300, help="seconds per case")
    p.add_argument("--socket-timeout", type=int, default=120, help="the SDK's socket timeout")
    p.add_argument("--list", action="store_true", help="print the case names and exit")
    args = p.parse_args()

    if args.list:
        for name, _ in CASES:
            print(name)
        return 0
    unknown = [c for c in args.case if c not in dict(CASES)]
    if unknown:
        p.error("unknown case(s): %s" % ", ".join(unknown))
    if args.sdk is None:
        args.sdk = "6" if importlib.util.find_spec("hpeOneView") else "5"
    if not args.host:
        p.error("--host is required")
    needs_image = {"golden_image_zip_round_trip", "golden_image_raw_round_trip",
                   "artifact_bundle_with_golden_image"}
    if not args.image and (not args.case or needs_image & set(args.case)):
        p.error("--image is required for the golden image cases")
    if args.password_file:
        with open(args.password_file) as f:
            password = f.readline().rstrip("\r\n")
    else:
        password = os.environ.get(args.password_env)
        if password is None:
            p.error("no password: set %s or give --password-file" % args.password_env)

    env = Env(args, password)
    names = set(args.case)
    if not args.hpe_bundle and not names:
        names = {n for n, _ in CASES if n != "artifact_bundle_hpe"}
    failed = run(env, names, args.case_timeout)
    if not args.workdir:
        shutil.rmtree(env.workdir, ignore_errors=True)
    total = len(names) if names else len(CASES)
    print("%d passed, %d failed" % (total - failed, failed), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
