"""The Kubernetes manifests of deploy/kubernetes/ against the settings they claim.

There is no cluster here, so the manifests are checked three ways: their YAML is parsed (PyYAML) and
every number that depends on another is recomputed from the Deployment's own arguments; the real server
is started with those arguments (on loopback ports) and its probes and metrics are asked for what the
manifests rely on; and ``ferricornctl doctor --kubernetes`` must find nothing in the shipped files and
the right finding in copies with one number changed.
"""

import copy
import json
import math
import os
import re
import shlex
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request

import pytest
import yaml

from conftest import free_port, rss, wait_for

pytestmark = pytest.mark.ferricorn_only

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K8S_DIR = os.path.join(REPO, "deploy", "kubernetes")
CTL_CMD = shlex.split(os.environ.get("FERRICORNCTL", "ferricornctl"))
UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9}


def quantity(v):
    s = str(v)
    for suffix, factor in UNITS.items():
        if s.endswith(suffix):
            return float(s[: -len(suffix)]) * factor
    return float(s)


def load_all():
    docs = {}
    for name in sorted(os.listdir(K8S_DIR)):
        with open(os.path.join(K8S_DIR, name)) as f:
            for d in yaml.safe_load_all(f):
                if d:
                    docs[d["kind"]] = d
    return docs


def container(docs):
    (c,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    return c


def flags(c):
    """The container's `--name=value` args as a dict, and the positional app."""
    out, app = {}, None
    for a in c["args"]:
        if a.startswith("--"):
            k, _, v = a[2:].partition("=")
            out[k] = v
        else:
            app = a
    return out, app


def port_named(c, name):
    return next(p["containerPort"] for p in c["ports"] if p["name"] == name)


def workers_from_cpu(c):
    env = {e["name"]: e for e in c.get("env", [])}
    ref = env["WEB_CONCURRENCY"]["valueFrom"]["resourceFieldRef"]
    assert ref["resource"] == "limits.cpu" and str(ref["divisor"]) == "1"
    return math.ceil(quantity(c["resources"]["limits"]["cpu"]))


def doctor(*args, timeout=60):
    """`ferricornctl doctor --json` on nothing but the manifests (no server, nginx or host state)."""
    empty = tempfile.mkdtemp(prefix="fcn-k8s-host-")
    # No running server: a socket that is not there, unless the settings come from --config.
    server = [] if "--config" in args else ["-s", os.path.join(empty, "none.ctl")]
    res = subprocess.run(
        CTL_CMD + ["doctor", "--json", *server, "--no-nginx", "--host-root", empty, *args],
        capture_output=True, text=True, timeout=timeout,
    )
    assert res.returncode in (0, 1), f"exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res.returncode, json.loads(res.stdout)


def k8s_findings(report):
    return [f for f in report["findings"] if f["id"].startswith("k8s-")]


def test_manifests_refer_to_each_other():
    docs = load_all()
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "ServiceMonitor"} <= set(docs)
    dep, svc, hpa, sm = (docs[k] for k in
                         ("Deployment", "Service", "HorizontalPodAutoscaler", "ServiceMonitor"))
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    c = container(docs)
    svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
    (ep,) = sm["spec"]["endpoints"]
    assert svc_ports[ep["port"]]["targetPort"] == "metrics" and ep["path"] == "/metrics"
    assert svc_ports["http"]["targetPort"] == "http"
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", dep["metadata"]["name"])
    with open(os.path.join(K8S_DIR, "kustomization.yaml")) as f:
        listed = set(yaml.safe_load(f)["resources"])
    assert listed == {n for n in os.listdir(K8S_DIR) if n != "kustomization.yaml"}
    assert c["name"] == c["env"][0]["valueFrom"]["resourceFieldRef"]["containerName"]


def test_aligned_numbers():
    docs = load_all()
    c = container(docs)
    f, _ = flags(c)
    spec = docs["Deployment"]["spec"]["template"]["spec"]
    prestop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    delay = int(f.get("shutdown-delay", 0))
    graceful, timeout = int(f["graceful-timeout"]), int(f["timeout"])
    assert graceful >= timeout
    assert spec["terminationGracePeriodSeconds"] >= prestop + delay + graceful + 5
    # Workers come from the CPU limit; nothing in args overrides them.
    assert not any(a.startswith(("-w", "--workers")) for a in c["args"])
    workers = workers_from_cpu(c)
    limit = quantity(c["resources"]["limits"]["memory"])
    assert limit >= (workers + 1) * int(f["max-worker-memory"]) * 2**20
    assert c["resources"]["requests"] == c["resources"]["limits"]
    # Probes on the metrics listener's port, on their own paths.
    metrics_port = int(f["metrics-bind"].rsplit(":", 1)[1])
    assert port_named(c, "metrics") == metrics_port
    assert port_named(c, "http") == int(f["bind"].rsplit(":", 1)[1])
    live, ready = c["livenessProbe"], c["readinessProbe"]
    assert (live["httpGet"]["path"], ready["httpGet"]["path"]) == ("/healthz", "/readyz")
    for p in (live, ready):
        assert port_named(c, p["httpGet"]["port"]) == metrics_port
    assert live["failureThreshold"] * live["periodSeconds"] >= 10
    # The HPA's target is below a pod's capacity.
    (m,) = docs["HorizontalPodAutoscaler"]["spec"]["metrics"]
    capacity = workers * int(f["threads"])
    assert quantity(m["pods"]["target"]["averageValue"]) < capacity


def _get(url, timeout=5):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _sample(base, name):
    return float(re.search(rf"^{name} ([0-9.e+]+)$", _get(base + "/metrics")[1], re.M).group(1))


def _start_as_deployed(start_server, c):
    """The Deployment's own args with the addresses moved to free loopback ports and the test app for
    the app, and the WEB_CONCURRENCY the downward API would give."""
    app_port, metrics_port = free_port(), free_port()
    args = []
    for a in c["args"]:
        if a.startswith("--bind="):
            a = f"--bind=127.0.0.1:{app_port}"
        elif a.startswith("--metrics-bind="):
            a = f"--metrics-bind=127.0.0.1:{metrics_port}"
        elif not a.startswith("-"):
            a = "testapp:application"
        args.append(a)
    srv = start_server(args, bind=False, port=app_port,
                       env={"WEB_CONCURRENCY": str(workers_from_cpu(c))})
    return srv, f"http://127.0.0.1:{metrics_port}"


def test_the_server_started_as_the_deployment_says(start_server):
    """The Deployment's own args (addresses moved to loopback, the test app for the app), with the
    WEB_CONCURRENCY the downward API would give: the probes' paths answer 200 on the metrics port,
    the HPA's metric is exported with the capacity the HPA target assumes, the workers start well
    below --max-worker-memory and the master fits in what the memory limit leaves, and a TERM ends
    the server long before the grace period."""
    docs = load_all()
    c = container(docs)
    f, _ = flags(c)
    workers = workers_from_cpu(c)
    srv, base = _start_as_deployed(start_server, c)
    app_port = srv.port
    for probe in (c["livenessProbe"], c["readinessProbe"]):
        path = probe["httpGet"]["path"]
        wait_for(lambda: _get(base + path)[0] == 200, 20, message=f"{path} answers 200")
    (m,) = docs["HorizontalPodAutoscaler"]["spec"]["metrics"]
    name = m["pods"]["metric"]["name"]
    status, text = _get(base + "/metrics")
    assert status == 200
    samples = dict(re.findall(r"^(ferricorn_[a-z_]+) ([0-9.e+]+)$", text, re.M))
    assert name in samples, text
    capacity = workers * int(f["threads"])
    assert float(samples["ferricorn_threads_total"]) == capacity
    assert float(samples["ferricorn_workers"]) == workers
    # The scraped series the ServiceMonitor gets, from the port it names.
    assert "# TYPE ferricorn_threads_busy gauge" in text
    # Memory: idle workers far below --max-worker-memory (else they would be recycled in a loop), and
    # the master within the part of the limit the workers' budget leaves.
    mwm = int(f["max-worker-memory"]) * 2**20
    limit = quantity(c["resources"]["limits"]["memory"])
    wait_for(lambda: len(srv.children()) == workers, 15, message="workers up")
    for pid in srv.children():
        assert rss(pid) < mwm / 2, (pid, rss(pid))
    assert rss(srv.pid) < limit - (workers + 1) * mwm
    # The app's port is the app's: its /healthz is not the server's.
    assert _get(f"http://127.0.0.1:{app_port}/healthz")[1] != _get(base + "/healthz")[1]
    # TERM with nothing in flight: gone in a fraction of the grace period.
    t0 = time.monotonic()
    assert srv.stop() == 0
    took = time.monotonic() - t0
    assert took < docs["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] / 3


def test_a_stop_with_a_request_in_flight_ends_within_the_grace_period(start_server):
    """TERM while a request runs that would outlast every limit: the server answers it and exits
    within what the grace period leaves after the preStop sleep, so the kubelet's KILL never comes."""
    docs = load_all()
    c = container(docs)
    srv, base = _start_as_deployed(start_server, c)
    wait_for(lambda: _get(base + "/readyz")[0] == 200, 20, message="ready")
    answer = {}

    def client():
        try:
            answer["status"] = _get(f"http://127.0.0.1:{srv.port}/sleep?s=300", timeout=120)[0]
        except OSError as e:
            answer["error"] = repr(e)

    t = threading.Thread(target=client, daemon=True)
    t.start()
    wait_for(lambda: _sample(base, "ferricorn_threads_busy") >= 1, 10, message="the request runs")
    t0 = time.monotonic()
    srv.signal(signal.SIGTERM)
    # Readiness turns false at once, while the request still runs.
    wait_for(lambda: _get(base + "/readyz")[0] == 503, 5, message="/readyz 503 on TERM")
    spec = docs["Deployment"]["spec"]["template"]["spec"]
    budget = spec["terminationGracePeriodSeconds"] - c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert srv.wait(budget + 5) is not None, "still running past the grace period"
    took = time.monotonic() - t0
    t.join(10)
    assert took <= budget, took
    assert answer.get("status") in (503, 504), answer


def test_doctor_passes_the_shipped_manifests():
    code, rep = doctor("--kubernetes", K8S_DIR)
    assert k8s_findings(rep) == [], json.dumps(rep["findings"], indent=1)
    assert code == 0, rep["findings"]
    k = rep["kubernetes"]
    assert k["objects"] == 4 and len(k["files"]) == 5
    (c,) = k["containers"]
    assert (c["workers"], c["capacity_per_worker"], c["graceful_timeout"]) == (2, 4, 35)
    assert c["termination_grace_period_seconds"] == 45 and c["prestop_sleep_seconds"] == 5
    assert c["metrics_bind"] == "0.0.0.0:9100"
    assert rep["sources"]["kubernetes"]["ok"]
    # The same files one by one give the same.
    files = [os.path.join(K8S_DIR, n) for n in ("deployment.yaml", "service.yaml", "hpa.yaml",
                                                "servicemonitor.yaml")]
    code, rep = doctor(*[a for f in files for a in ("--kubernetes", f)])
    assert code == 0 and k8s_findings(rep) == []


def _mutated(tmp_path, change):
    docs = load_all()
    docs = copy.deepcopy(docs)
    change(docs)
    out = tmp_path / "all.yaml"
    out.write_text(yaml.safe_dump_all(
        [docs[k] for k in ("Deployment", "Service", "HorizontalPodAutoscaler", "ServiceMonitor")]))
    return str(out)


def _c(d):
    return d["Deployment"]["spec"]["template"]["spec"]["containers"][0]


def _set_arg(d, flag, value):
    args = _c(d)["args"]
    i = next(i for i, a in enumerate(args) if a.startswith(f"--{flag}="))
    args[i] = f"--{flag}={value}"


def _pod(d):
    return d["Deployment"]["spec"]["template"]["spec"]


MUTATIONS = {
    "grace-short": (lambda d: _pod(d).update(terminationGracePeriodSeconds=30),
                    "k8s-grace-period-short", "critical", "terminationGracePeriodSeconds: 45"),
    "grace-no-margin": (lambda d: _pod(d).update(terminationGracePeriodSeconds=42),
                        "k8s-grace-period-short", "warning", "terminationGracePeriodSeconds: 45"),
    "graceful-longer": (lambda d: _set_arg(d, "graceful-timeout", 60),
                        "k8s-grace-period-short", "critical", "--graceful-timeout to 35"),
    "memory-small": (lambda d: _c(d)["resources"]["limits"].update(memory="500Mi"),
                     "k8s-memory-limit-low", "critical", "768Mi"),
    "memory-no-room": (lambda d: _c(d)["resources"]["limits"].update(memory="700Mi"),
                       "k8s-memory-limit-low", "warning", "--max-worker-memory=233"),
    "no-max-worker-memory": (lambda d: _c(d)["args"].remove("--max-worker-memory=256"),
                             "k8s-no-max-worker-memory", "warning", "--max-worker-memory=341"),
    "liveness-app-port": (lambda d: _c(d)["livenessProbe"]["httpGet"].update(port="http"),
                          "k8s-probe-app-port", "critical", "port: 9100"),
    "readiness-app-port": (lambda d: _c(d)["readinessProbe"]["httpGet"].update(port=8000),
                           "k8s-probe-app-port", "warning", "path: /readyz"),
    "probe-path": (lambda d: _c(d)["livenessProbe"]["httpGet"].update(path="/health"),
                   "k8s-probe-path", "critical", "/healthz"),
    "liveness-on-readyz": (lambda d: _c(d)["livenessProbe"]["httpGet"].update(path="/readyz"),
                           "k8s-probe-path", "warning", "/healthz"),
    "probe-port-unknown": (lambda d: _c(d)["readinessProbe"]["httpGet"].update(port=9200),
                           "k8s-probe-port-unknown", "critical", "port: 9100"),
    "no-metrics-listener": (lambda d: _c(d)["args"].remove("--metrics-bind=0.0.0.0:9100"),
                            "k8s-probe-port-unknown", "critical", "--metrics-bind=0.0.0.0:9100"),
    "metrics-loopback": (lambda d: _set_arg(d, "metrics-bind", "127.0.0.1:9100"),
                         "k8s-metrics-loopback", "critical", "--metrics-bind=0.0.0.0:9100"),
    "bind-loopback": (lambda d: _c(d)["args"].remove("--bind=0.0.0.0:8000"),
                      "k8s-bind-loopback", "critical", "--bind=0.0.0.0:8000"),
    "hair-trigger": (lambda d: _c(d)["livenessProbe"].update(failureThreshold=1, periodSeconds=5),
                     "k8s-liveness-hair-trigger", "warning", "failureThreshold: 3"),
    "no-drain": (lambda d: _c(d).pop("lifecycle"), "k8s-no-drain-delay", "warning", "preStop"),
    "divisor": (lambda d: _c(d)["env"][0]["valueFrom"]["resourceFieldRef"].update(divisor="1m"),
                "k8s-web-concurrency-divisor", "critical", 'divisor: "1"'),
    "no-cpu-limit": (lambda d: [_c(d)["resources"][k].pop("cpu") for k in ("limits", "requests")],
                     "k8s-web-concurrency-no-cpu-limit", "warning", "limits.cpu"),
    "workers-given": (lambda d: _c(d)["args"].insert(0, "--workers=3"),
                      "k8s-web-concurrency-ignored", "info", "Drop one"),
    "too-many-workers": (lambda d: _c(d)["args"].insert(0, "--workers=9"),
                         "k8s-workers-above-cpu", "warning", "at most 5"),
    "hpa-metric": (lambda d: d["HorizontalPodAutoscaler"]["spec"]["metrics"][0]["pods"]["metric"]
                   .update(name="ferricorn_busy_threads"),
                   "k8s-hpa-metric-unknown", "critical", "ferricorn_threads_busy"),
    "hpa-target": (lambda d: d["HorizontalPodAutoscaler"]["spec"]["metrics"][0]["pods"]["target"]
                   .update(averageValue="8"),
                   "k8s-hpa-target-unreachable", "critical", 'averageValue: "6"'),
    "hpa-cpu": (lambda d: d["HorizontalPodAutoscaler"]["spec"]["metrics"].append(
        {"type": "Resource", "resource": {"name": "cpu", "target": {
            "type": "Utilization", "averageUtilization": 70}}}),
                "k8s-hpa-cpu", "info", "busy threads"),
    "hpa-target-missing": (lambda d: d["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
                           .update(name="api"), "k8s-hpa-target-missing", "warning", "scaleTargetRef"),
    "servicemonitor-port": (lambda d: d["ServiceMonitor"]["spec"]["endpoints"][0].update(port="http"),
                            "k8s-servicemonitor-port", "critical", "9100"),
    "servicemonitor-name": (lambda d: d["ServiceMonitor"]["spec"]["endpoints"][0].update(port="prom"),
                            "k8s-servicemonitor-port", "critical", "Name the Service's metrics port"),
    "servicemonitor-path": (lambda d: d["ServiceMonitor"]["spec"]["endpoints"][0].update(path="/m"),
                            "k8s-servicemonitor-path", "critical", "path: /metrics"),
    "servicemonitor-labels": (lambda d: d["Service"]["metadata"].update(labels={"app": "x"}),
                              "k8s-servicemonitor-no-service", "warning", "labels"),
    "service-selector": (lambda d: d["Service"]["spec"].update(selector={"app": "x"}),
                         "k8s-service-selector", "warning", "selector"),
    "service-target": (lambda d: d["Service"]["spec"]["ports"][0].update(targetPort=8080),
                       "k8s-service-port", "critical", "targetPort"),
    "bad-flag": (lambda d: _set_arg(d, "timeout", "soon"),
                 "k8s-command-invalid", "critical", "args"),
}


@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_doctor_finds_each_misalignment(tmp_path, case):
    change, fid, severity, fix_says = MUTATIONS[case]
    code, rep = doctor("--kubernetes", _mutated(tmp_path, change))
    found = [f for f in rep["findings"] if f["id"] == fid]
    assert found, json.dumps(k8s_findings(rep), indent=1)
    assert found[0]["severity"] == severity, found
    assert fix_says in found[0]["fix"], found[0]
    assert code == (0 if severity == "info" else 1)
    if case == "bad-flag":
        assert "--timeout" in found[0]["evidence"][0] and "soon" in found[0]["evidence"][0]


def test_doctor_reads_shell_commands_and_the_config_file_given(tmp_path):
    """`sh -c 'exec ferricorn -c FILE'`: the file is the image's; doctor reads the local copy given
    with --config, and says so when there is none. `$(VAR)` is expanded from the container's env."""
    def change(d):
        c = _c(d)
        c["command"] = ["/bin/sh", "-c"]
        c["args"] = ["python manage.py check && exec ferricorn -c /app/ferricorn.conf.py "
                     "--bind=0.0.0.0:$(APP_PORT) app:application"]
        c["env"].append({"name": "APP_PORT", "value": "8000"})
    manifest = _mutated(tmp_path, change)
    conf = tmp_path / "ferricorn.conf.py"
    conf.write_text("metrics_bind = '0.0.0.0:9100'\nworker_class = 'gthread'\nthreads = 4\n"
                    "timeout = 30\ngraceful_timeout = 35\nmax_worker_memory = 256\n")
    code, rep = doctor("--kubernetes", manifest, "--config", str(conf))
    assert code == 0 and k8s_findings(rep) == [], k8s_findings(rep)
    (c,) = rep["kubernetes"]["containers"]
    assert c["argv"][:3] == ["ferricorn", "-c", "/app/ferricorn.conf.py"]
    assert c["binds"] == ["0.0.0.0:8000"]
    conf.write_text(conf.read_text().replace("graceful_timeout = 35", "graceful_timeout = 90"))
    code, rep = doctor("--kubernetes", manifest, "--config", str(conf))
    (f,) = [f for f in rep["findings"] if f["id"] == "k8s-grace-period-short"]
    assert f["severity"] == "critical" and "terminationGracePeriodSeconds: 100" in f["fix"]
    code, rep = doctor("--kubernetes", manifest)
    got = {f["id"] for f in k8s_findings(rep)}
    assert "k8s-config-file-unread" in got and "k8s-probe-port-unknown" in got, got


def test_doctor_on_files_it_cannot_use(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: Deployment\nspec: [unclosed\n")
    code, rep = doctor("--kubernetes", str(bad))
    assert code == 0 and not rep["sources"]["kubernetes"]["ok"]
    assert "bad.yaml" in rep["sources"]["kubernetes"]["detail"]
    code, rep = doctor("--kubernetes", str(tmp_path / "missing.yaml"))
    assert code == 0 and "not a readable file" in rep["sources"]["kubernetes"]["detail"]
    other = tmp_path / "nginx.yaml"
    other.write_text(yaml.safe_dump({"kind": "Deployment", "metadata": {"name": "x"}, "spec": {
        "template": {"spec": {"containers": [{"name": "n", "image": "nginx"}]}}}}))
    code, rep = doctor("--kubernetes", str(other))
    assert [f["id"] for f in k8s_findings(rep)] == ["k8s-no-ferricorn"] and code == 0
