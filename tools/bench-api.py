#!/usr/bin/env python3
"""The REST API client tools/bench-api drives (standard library only: http.client, ssl).

Subcommands (the server's address and session come from BENCH_API and BENCH_AUTH):
  login USER PASSWORD                 prints a session id
  artifacts N                         makes N plan scripts; prints the paths wrk rotates over
  deploy-setup IMAGE_URI SCRIPT_FILE  a plan script, build plan and deployment plan (HostName
                                      attribute) on the golden image; prints the plan's URI
  deploys PLAN_URI N PREFIX THREADS   submits N deploys at once (THREADS clients), follows every
                                      task to its end; prints one JSON line of figures
  wait-task TASK_URI                  polls a task to its end; prints its JSON
"""

import json
import os
import ssl
import sys
import threading
import time
import http.client

CTX = ssl.create_default_context()
CTX.check_hostname = False
CTX.verify_mode = ssl.CERT_NONE


def conn():
    host, port = os.environ["BENCH_API"].rsplit(":", 1)
    return http.client.HTTPSConnection(host, int(port), context=CTX, timeout=600)


def call(c, method, path, body=None, auth=True):
    h = {"X-API-Version": "800"}
    if auth:
        h["auth"] = os.environ["BENCH_AUTH"]
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        h["Content-Type"] = "application/json"
    c.request(method, path, body=data, headers=h)
    r = c.getresponse()
    raw = r.read()
    try:
        v = json.loads(raw) if raw else None
    except ValueError:
        v = raw.decode(errors="replace")
    return r.status, v


def ok(status, v, *want):
    if status not in want:
        sys.exit(f"bench-api.py: HTTP {status}: {v}")
    return v


def wait_task(c, uri, timeout=3600):
    end = time.time() + timeout
    while True:
        t = ok(*call(c, "GET", uri), 200)
        if t["taskState"] not in ("Running", "New"):
            return t
        if time.time() > end:
            sys.exit(f"bench-api.py: task {uri} still running: {t}")
        time.sleep(0.05)


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    c = conn()
    if cmd == "login":
        v = ok(*call(c, "POST", "/rest/login-sessions",
                     {"userName": args[0], "password": args[1]}, auth=False), 200)
        print(v["sessionID"])
    elif cmd == "artifacts":
        paths = ["/rest/plan-scripts", "/rest/golden-images", "/rest/deployment-plans",
                 "/rest/build-plans"]
        for i in range(int(args[0])):
            v = ok(*call(c, "POST", "/rest/plan-scripts", {
                "type": "PlanScript", "name": f"bench-script-{i}", "description": "bench",
                "hpProvided": False, "planType": "deploy",
                "content": f"# bench script {i}\n" + "echo x\n" * 40}), 201)
            paths.append(v["uri"])
        print("\n".join(paths))
    elif cmd == "deploy-setup":
        image_uri, script = args[0], open(args[1]).read()
        ps = ok(*call(c, "POST", "/rest/plan-scripts", {
            "type": "PlanScript", "name": "bench deploy script", "description": "",
            "hpProvided": False, "planType": "deploy", "content": script}), 201)
        bp = ok(*call(c, "POST", "/rest/build-plans", {
            "type": "OeBuildPlanV5", "name": "bench build plan", "description": "",
            "hpProvided": False, "oeBuildPlanType": "deploy",
            "customAttributes": [{"name": "HostName", "type": "hostname", "value": "",
                                  "constraints": "{}", "description": ""}],
            "buildStep": [{"serialNumber": "1", "planScriptUri": ps["uri"],
                           "parameters": ""}]}), 201)
        dp = ok(*call(c, "POST", "/rest/deployment-plans", {
            "type": "OEDeploymentPlanV5", "name": "bench plan", "hpProvided": "false",
            "oeBuildPlanURI": bp["uri"], "goldenImageURI": image_uri,
            "customAttributes": []}), 201)
        print(dp["uri"])
    elif cmd == "deploys":
        plan, n, prefix, threads = args[0], int(args[1]), args[2], int(args[3])
        tasks, refused, lock = {}, [], threading.Lock()
        t0 = time.time()

        def submit(k):
            cc = conn()
            for i in range(k, n, threads):
                name = f"{prefix}-{i}"
                s, v = call(cc, "POST", "/rest/os-volumes", {
                    "deploymentPlanURI": plan, "name": name,
                    "customAttributes": [{"name": "HostName", "value": name}]})
                with lock:
                    if s == 202:
                        tasks[name] = v["uri"]
                    else:
                        refused.append((name, s, v))

        ts = [threading.Thread(target=submit, args=(k,)) for k in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        submitted = time.time() - t0
        states, errors, pending = {}, [], dict(tasks)
        while pending:
            for name, uri in list(pending.items()):
                t = ok(*call(c, "GET", uri), 200)
                if t["taskState"] in ("Running", "New"):
                    continue
                del pending[name]
                states[t["taskState"]] = states.get(t["taskState"], 0) + 1
                if t["taskState"] != "Completed":
                    errors.append((name, t["taskErrors"]))
            if pending:
                time.sleep(0.2)
        total = time.time() - t0
        vols = ok(*call(c, "GET", "/rest/os-volumes?count=1"), 200)["total"]
        print(json.dumps({"n": n, "accepted": len(tasks), "refused": len(refused),
                          "states": states, "listed": vols, "submit_s": round(submitted, 3),
                          "total_s": round(total, 3), "per_s": round(n / total, 2),
                          "first_errors": (errors + refused)[:3]}))
    elif cmd == "wait-task":
        print(json.dumps(wait_task(c, args[0])))
    else:
        sys.exit(f"bench-api.py: unknown command {cmd}")


if __name__ == "__main__":
    main()
