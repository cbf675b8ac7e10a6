"""The deployment files in deploy/: structure, consistency with the code, and the alert rules.

Nothing here builds an image or talks to a cluster (there is no Docker engine here): the YAML is
parsed and checked for what the operators rely on (UID 1000, read-only root filesystem, WAL
volumes, probes, env names the services actually read), promtool checks and unit-tests the alert
rules, and one test scrapes a real acceptor to prove every metric the alerts use exists.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"
PROM = DEPLOY / "prometheus"
OPERATIONS_MD = REPO / "docs" / "operations.md"
IMAGE_USER = 1000

YAML_FILES = sorted([*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")])

# Environment variables a SignalDB container may carry besides the settings in
# signaldb.config.SETTINGS (checked against that table in the tests below).
EXTRA_ENV = {
    "SIGNALDB_CONFIG",
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_SESSION_TOKEN",
    "AWS_ALLOW_HTTP",
}


def load_docs(path: Path) -> list:
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def k8s_objects() -> list[dict]:
    return [doc for path in sorted(K8S.glob("*.yaml")) if path.name != "kustomization.yaml" for doc in load_docs(path)]


def workloads() -> list[dict]:
    return [o for o in k8s_objects() if o["kind"] in ("StatefulSet", "Deployment", "DaemonSet")]


def settings_by_env() -> dict:
    from signaldb.config import SETTINGS

    return {s.env: s for s in SETTINGS if s.env}


def toml_config() -> dict:
    cm = next(o for o in k8s_objects() if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "signaldb-config")
    return tomllib.loads(cm["data"]["signaldb.toml"])


def toml_value(doc: dict, dotted: str):
    node = doc
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def compose_default(value: str) -> str:
    """``${VAR:-default}`` -> ``default`` (what compose uses when VAR is unset)."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))


def check_env(env: dict[str, str], where: str) -> None:
    """Every variable is one the services read, and its value passes the service's own check."""
    known = settings_by_env()
    for name, value in env.items():
        assert name in known or name in EXTRA_ENV, f"{where}: {name} is not a SignalDB setting (typo?)"
        if name in known:
            try:
                known[name].parse(value)
            except ValueError as err:
                pytest.fail(f"{where}: {name}={value!r} would be refused at startup: {err}")


def github_anchors(markdown: str) -> set[str]:
    anchors = set()
    for line in markdown.splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*$", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors


# --- every YAML file ---------------------------------------------------------------------------


def test_deploy_has_the_expected_files():
    for rel in (
        "Dockerfile",
        "docker-compose.yml",
        "healthcheck.py",
        "prometheus/alerts.yml",
        "prometheus/prometheus.yml",
        "kubernetes/kustomization.yaml",
    ):
        assert (DEPLOY / rel).is_file(), f"deploy/{rel} is missing"
    assert (REPO / ".dockerignore").is_file()


@pytest.mark.parametrize("path", YAML_FILES, ids=[str(p.relative_to(DEPLOY)) for p in YAML_FILES])
def test_every_yaml_file_parses(path):
    docs = load_docs(path)
    assert docs, f"{path} holds no YAML document"
    assert all(isinstance(d, dict) for d in docs), f"{path}: every document must be a mapping"


# --- Kubernetes ----------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest():
    kust = load_docs(K8S / "kustomization.yaml")[0]
    listed = set(kust["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    on_disk -= {n for n in on_disk if ".example." in n}  # applied by hand, with real values
    on_disk -= OPTIONAL_MANIFESTS
    assert listed == on_disk
    for obj in k8s_objects():
        assert {"apiVersion", "kind", "metadata"} <= obj.keys(), obj
    if shutil.which("kubectl"):  # kustomize is built into kubectl and works offline
        out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        rendered = [d for d in yaml.safe_load_all(out.stdout) if d]
        expected = {(o["kind"], o["metadata"]["name"]) for path in listed for o in load_docs(K8S / path)}
        assert {(d["kind"], d["metadata"]["name"]) for d in rendered} == expected
        assert all(d["metadata"].get("namespace") == "signaldb" for d in rendered if d["kind"] != "Namespace")


# Applied by hand where their API exists (docs/operations.md, Kubernetes).
OPTIONAL_MANIFESTS = {"servicemonitor.yaml"}


def pyproject_version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def by_kind(kind: str) -> list[dict]:
    return [o for o in k8s_objects() if o["kind"] == kind]


def pod_labels(service: str) -> dict[str, str]:
    w = next(w for w in workloads() if service_of(w) == service)
    return w["spec"]["template"]["metadata"]["labels"]


def matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def test_networkpolicy_lets_only_acceptors_reach_the_writers_flight_port():
    (policy,) = by_kind("NetworkPolicy")
    spec = policy["spec"]
    assert matches(spec["podSelector"], pod_labels("writer")) and not matches(
        spec["podSelector"], pod_labels("acceptor")
    )
    assert spec["policyTypes"] == ["Ingress"]
    writer = container_of(next(w for w in workloads() if service_of(w) == "writer"))
    port_names = {p["name"]: p["containerPort"] for p in writer["ports"]}
    flight_rules = [r for r in spec["ingress"] if any(p["port"] == "flight" for p in r.get("ports", []))]
    assert len(flight_rules) == 1, "one rule opens Flight"
    (sources,) = [flight_rules[0]["from"]]
    assert len(sources) == 1 and set(sources[0]) == {"podSelector"}, "pods of this namespace, no ipBlock"
    assert matches(sources[0]["podSelector"], pod_labels("acceptor"))
    assert not matches(sources[0]["podSelector"], pod_labels("writer"))
    for rule in spec["ingress"]:
        for port in rule.get("ports", []):
            assert port["port"] in port_names, f"{port['port']} is not a port of the writer container"
        if rule is not flight_rules[0]:
            assert all(p["port"] != "flight" and p["port"] != port_names["flight"] for p in rule["ports"])
            assert rule.get("ports"), "a rule without ports would open every port"


def test_optional_servicemonitor_scrapes_both_services_under_the_alerts_job_names():
    sm = load_docs(K8S / "servicemonitor.yaml")[0]
    assert sm["kind"] == "ServiceMonitor" and sm["apiVersion"] == "monitoring.coreos.com/v1"
    spec = sm["spec"]
    ports = {e["port"] for e in spec["endpoints"]}
    scraped = [
        svc
        for svc in by_kind("Service")
        if matches(spec["selector"], svc["metadata"]["labels"]) and ports & {p["name"] for p in svc["spec"]["ports"]}
    ]
    jobs = {svc["metadata"]["labels"][spec["jobLabel"]] for svc in scraped}
    assert jobs == {"signaldb-acceptor", "signaldb-writer"}  # the jobs alerts.yml and prometheus.yml use
    for svc in scraped:
        metrics = next(p for p in svc["spec"]["ports"] if p["name"] in ports)
        assert metrics["targetPort"] == "health"


def test_acceptor_stops_being_ready_before_it_stops_accepting():
    acceptor = next(w for w in workloads() if service_of(w) == "acceptor")
    pod = acceptor["spec"]["template"]["spec"]
    pre_stop = container_of(acceptor)["lifecycle"]["preStop"]
    command = pre_stop["exec"]["command"]
    assert command[0] == "sleep"
    delay = int(command[1])
    assert 2 <= delay <= 15
    shutdown = toml_value(toml_config(), "acceptor.shutdown_timeout_secs") or 20
    assert pod["terminationGracePeriodSeconds"] > delay + shutdown


def test_images_are_pinned_by_version():
    version = pyproject_version()
    images = [c["image"] for w in workloads() for c in w["spec"]["template"]["spec"]["containers"]]
    images += [s["image"] for s in compose()["services"].values()]
    for image in images:
        image = compose_default(image)
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest" and re.search(r"\d", tag), f"{image}: pin a version"
        if name == "signaldb":
            assert tag == version, f"{image}: the project's version is {version}"
    kust = load_docs(K8S / "kustomization.yaml")[0]
    assert [i["newTag"] for i in kust["images"]] == [version]
    text = (DEPLOY / "Dockerfile").read_text()
    for arg in ("PYTHON_IMAGE", "RUST_IMAGE"):
        image = re.search(rf"ARG {arg}=(\S+)", text).group(1)
        assert re.fullmatch(r"[a-z]+:\d+\.\d+\.\d+-slim-bookworm", image), f"{arg}={image}: pin major.minor.patch"


def test_dockerfile_carries_oci_labels():
    labels: dict[str, str] = {}
    for instr, args in dockerfile_stages()[-1]:
        if instr == "LABEL":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                labels[key] = value
    for key in ("title", "description", "licenses", "version", "revision", "created", "source", "base.name"):
        assert labels.get(f"org.opencontainers.image.{key}"), f"missing OCI label {key}"
    text = (DEPLOY / "Dockerfile").read_text()
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert re.search(r"^ARG VERSION=(\S+)$", text, re.M).group(1) == pyproject_version()


def container_of(workload: dict) -> dict:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, "one SignalDB container per pod"
    return containers[0]


def service_of(workload: dict) -> str:
    command = " ".join(container_of(workload).get("command", []) + container_of(workload).get("args", []))
    if "signaldb-acceptor" in command:
        return "acceptor"
    if "signaldb-writer" in command:
        return "writer"
    pytest.fail(f"{workload['metadata']['name']}: runs neither signaldb-acceptor nor signaldb-writer")


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def test_k8s_workloads_are_stateful_locked_down_and_probed():
    found = {service_of(w): w for w in workloads()}
    assert set(found) == {"acceptor", "writer"}
    toml = toml_config()
    for service, w in found.items():
        name = w["metadata"]["name"]
        # A WAL must survive pod restarts and reschedules: its own volume per pod.
        assert w["kind"] == "StatefulSet", f"{name}: a {w['kind']} would lose or share its WAL"
        pod = w["spec"]["template"]["spec"]
        c = container_of(w)
        psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
        for key in ("runAsUser", "runAsGroup"):
            assert csc.get(key, psc.get(key)) == IMAGE_USER, f"{name}: {key}"
        assert psc.get("fsGroup") == IMAGE_USER, f"{name}: fsGroup makes the volumes writable for UID 1000"
        assert csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, name
        assert csc.get("readOnlyRootFilesystem") is True, name
        assert csc.get("allowPrivilegeEscalation") is False, name
        assert csc.get("capabilities", {}).get("drop") == ["ALL"], name
        assert pod.get("automountServiceAccountToken") is False, name

        env = env_of(c)
        secret_refs = {e["name"]: e["valueFrom"] for e in c.get("env", []) if "valueFrom" in e}
        check_env({k: v for k, v in env.items() if v is not None}, name)
        # Flight leaves loopback in a cluster: the token is required (issue 15), never optional.
        assert secret_refs.get("SIGNALDB_AUTH_TOKEN", {}).get("secretKeyRef", {}).get("name") == "signaldb-auth", name
        for ref in secret_refs.values():
            assert ref["secretKeyRef"].get("optional") is False, name

        # The WAL: a claim template mounted at /data/wal, the WAL directory inside it.
        wal_env = f"{service.upper()}_WAL_DIR"
        assert env.get(wal_env) == f"/data/wal/{service}", f"{name}: {wal_env}"
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert "/data/wal" in mounts, f"{name}: no volume at /data/wal"
        templates = {t["metadata"]["name"]: t for t in w["spec"].get("volumeClaimTemplates", [])}
        assert mounts["/data/wal"] in templates, f"{name}: /data/wal must come from a volumeClaimTemplate"
        assert templates[mounts["/data/wal"]]["spec"]["accessModes"] == ["ReadWriteOnce"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        assert "/tmp" in mounts and "emptyDir" in volumes[mounts["/tmp"]], f"{name}: /tmp must be an emptyDir"
        if service == "writer" and env["SIGNALDB_STORAGE_URL"].startswith("file://"):
            parquet_dir = env["SIGNALDB_STORAGE_URL"][len("file://") :]
            assert parquet_dir in mounts, f"{name}: Parquet directory {parquet_dir} is not a volume"
        assert env.get("SIGNALDB_CONFIG") and Path(env["SIGNALDB_CONFIG"]).parent.as_posix() in mounts

        # Probes on the health port the service really binds.
        health_port = int(env[f"{service.upper()}_HEALTH_ADDR"].rsplit(":", 1)[1])
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
            get = c[probe]["httpGet"]
            assert get["path"] == path, f"{name}: {probe}"
            assert ports.get(get["port"], get["port"]) == health_port, f"{name}: {probe} port"
        assert c["resources"]["requests"].get("cpu") and c["resources"]["requests"].get("memory"), name
        assert c["resources"]["limits"].get("memory"), name

        # SIGTERM must finish before the kubelet's SIGKILL.
        timeout = toml_value(toml, f"{service}.shutdown_timeout_secs")
        assert timeout, f"signaldb.toml should state {service}.shutdown_timeout_secs"
        assert pod["terminationGracePeriodSeconds"] >= timeout + 10, f"{name}: grace period vs shutdown timeout"


def test_k8s_services_pdbs_and_writer_endpoints():
    objs = k8s_objects()
    services = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Service"}
    by_service = {service_of(w): w for w in workloads()}

    def selected(svc: dict, w: dict) -> bool:
        labels = w["spec"]["template"]["metadata"]["labels"]
        return all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())

    def ports_for(w: dict) -> set[int]:
        return {s_port["port"] for svc in services.values() if selected(svc, w) for s_port in svc["spec"]["ports"]}

    acceptor, writer = by_service["acceptor"], by_service["writer"]
    assert {4317, 4318, 8080} <= ports_for(acceptor)
    assert {50061, 8081} <= ports_for(writer)
    for w in (acceptor, writer):
        governing = services[w["spec"]["serviceName"]]
        assert governing["spec"].get("clusterIP") == "None", "a StatefulSet's service must be headless"
        assert selected(governing, w)
        named = {p["name"] for p in container_of(w)["ports"]}
        for svc in services.values():
            if selected(svc, w):
                for p in svc["spec"]["ports"]:
                    assert p.get("targetPort") in named | {p["port"]}, f"{svc['metadata']['name']}: {p}"
    pdbs = [o for o in objs if o["kind"] == "PodDisruptionBudget"]
    for w in (acceptor, writer):
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert any(all(labels.get(k) == v for k, v in p["spec"]["selector"]["matchLabels"].items()) for p in pdbs), (
            f"no PodDisruptionBudget for {w['metadata']['name']}"
        )

    # The acceptors find every writer replica through the writers' headless Service (dns://, every
    # address of the name is a writer, resolved again every writer_dns_refresh_secs): scaling the
    # writers needs no acceptor restart.
    endpoints = toml_config()["acceptor"]["writer_endpoints"]
    flight_port = int(env_of(container_of(writer))["WRITER_FLIGHT_ADDR"].rsplit(":", 1)[1])
    namespace = load_docs(K8S / "kustomization.yaml")[0]["namespace"]
    governing = services[writer["spec"]["serviceName"]]
    assert endpoints == [f"dns://{governing['metadata']['name']}.{namespace}.svc.cluster.local:{flight_port}"]
    assert governing["spec"]["clusterIP"] == "None", "only a headless Service resolves to every writer pod"
    # A writer replaying its WAL stays in the acceptors' writer set: its entries wait for it (and fail
    # over after writer_failover_secs) instead of moving at every restart.
    assert governing["spec"].get("publishNotReadyAddresses") is True
    flight = {p["port"]: p["targetPort"] for p in governing["spec"]["ports"]}
    container_ports = {p["name"]: p["containerPort"] for p in container_of(writer)["ports"]}
    assert container_ports.get(flight.get(flight_port), flight.get(flight_port)) == flight_port
    from signaldb.config import SETTINGS

    parse = next(s for s in SETTINGS if s.key == "acceptor.writer_endpoints").parse
    assert parse(endpoints) == tuple(endpoints)


def test_configmap_toml_loads_and_agrees_with_the_env(tmp_path):
    from signaldb.config import load

    cm = next(o for o in k8s_objects() if o["kind"] == "ConfigMap")
    path = tmp_path / "signaldb.toml"
    path.write_text(cm["data"]["signaldb.toml"])
    from signaldb.config import ConfigError

    for command in ("acceptor", "writer"):
        # unknown keys, bad values raise; the token comes from the Secret
        load(None, command, environ={"SIGNALDB_CONFIG": str(path), "SIGNALDB_AUTH_TOKEN": "from-the-secret"})
        with pytest.raises(ConfigError, match=r"security\.auth_token"):  # without it: refused, not unauthenticated
            load(None, command, environ={"SIGNALDB_CONFIG": str(path)})
    toml = tomllib.loads(path.read_text())
    known = settings_by_env()
    # The environment beats the TOML: where a pod sets both, they must not disagree silently.
    for w in workloads():
        for name, value in env_of(container_of(w)).items():
            if name in known and value is not None:
                in_toml = toml_value(toml, known[name].key)
                if in_toml is not None:
                    assert known[name].parse(value) == known[name].parse(in_toml), (
                        f"{w['metadata']['name']}: {name}={value} but signaldb.toml {known[name].key}={in_toml}"
                    )
    for name, value in dockerfile_env().items():
        if name in known:
            in_toml = toml_value(toml, known[name].key)
            if in_toml is not None:
                assert known[name].parse(value) == known[name].parse(in_toml), f"image ENV {name} vs signaldb.toml"


# --- docker compose ----------------------------------------------------------------------------


def compose() -> dict:
    return load_docs(DEPLOY / "docker-compose.yml")[0]


def signaldb_services() -> dict[str, dict]:
    return {name: s for name, s in compose()["services"].items() if str(s.get("image", "")).startswith("signaldb")}


def test_compose_services_run_locked_down_with_their_own_wal_volumes():
    doc = compose()
    services = signaldb_services()
    assert set(services) == {"acceptor", "writer"}
    wal_volumes = []
    for name, s in services.items():
        assert s["read_only"] is True, name
        assert str(s["user"]) == f"{IMAGE_USER}:{IMAGE_USER}", name
        assert any(str(t).split(":")[0] == "/tmp" for t in s["tmpfs"]), f"{name}: /tmp tmpfs"
        assert s.get("cap_drop") == ["ALL"], name
        assert s["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (DEPLOY / s["build"]["context"] / s["build"]["dockerfile"]).is_file()
        assert s["command"] == [f"signaldb-{name}"]
        env = {k: compose_default(v) for k, v in s["environment"].items()}
        check_env(env, f"compose {name}")
        assert env[f"{name.upper()}_WAL_DIR"] == f"/data/wal/{name}"
        mounts = dict(reversed(v.split(":")[:2]) for v in s["volumes"])
        assert mounts["/data/wal"] in doc["volumes"], f"{name}: /data/wal must be a named volume"
        wal_volumes.append(mounts["/data/wal"])
        health = env[f"{name.upper()}_HEALTH_ADDR"]
        assert health.startswith("0.0.0.0:"), f"{name}: health must be reachable from other containers"
        assert "/livez" in " ".join(s["healthcheck"]["test"]) and health.rsplit(":", 1)[1] in " ".join(
            s["healthcheck"]["test"]
        ), f"{name}: healthcheck on its own /livez"
        grace = int(str(s["stop_grace_period"]).rstrip("s"))
        assert grace > float(env[f"{name.upper()}_SHUTDOWN_TIMEOUT_SECS"]), f"{name}: stop_grace_period"
    assert len(set(wal_volumes)) == 2, "each service needs its own WAL volume"

    acceptor, writer = services["acceptor"], services["writer"]
    assert {"4317:4317", "4318:4318"} <= set(acceptor["ports"])
    assert acceptor["environment"]["ACCEPTOR_WRITER_ENDPOINTS"] == "grpc://writer:50061"
    assert acceptor["environment"]["ACCEPTOR_GRPC_ADDR"] == "0.0.0.0:4317"
    assert acceptor["environment"]["ACCEPTOR_HTTP_ADDR"] == "0.0.0.0:4318"
    assert writer["environment"]["WRITER_FLIGHT_ADDR"] == "0.0.0.0:50061"
    assert compose_default(writer["environment"]["SIGNALDB_STORAGE_URL"]) == "file:///data/parquet"
    # Flight between the containers is not on loopback: a token is always set (a marked dev default).
    from signaldb.config import load

    for service in (writer, acceptor):
        env = {k: compose_default(v) for k, v in service["environment"].items()}
        assert env["SIGNALDB_AUTH_TOKEN"], "compose must set a token (the services refuse to start without)"
        load(None, "writer" if service is writer else "acceptor", environ=env)
    assert "/data/parquet" in {v.split(":")[1] for v in writer["volumes"]}


def test_compose_s3_profile_and_prometheus():
    doc = compose()
    services = doc["services"]
    s3 = {name: s for name, s in services.items() if "s3" in s.get("profiles", [])}
    weed = [s for s in s3.values() if s["image"].startswith("chrislusf/seaweedfs") and "server" in s["command"]]
    assert len(weed) == 1 and "-s3" in weed[0]["command"]
    writer_env = services["writer"]["environment"]
    assert compose_default(writer_env["AWS_ENDPOINT_URL"]).startswith("http://seaweedfs:")
    assert all(n not in s3 for n in ("acceptor", "writer")), "the pipeline runs without the profile"
    prom = services["prometheus"]
    mounted = {v.split(":")[1]: DEPLOY / v.split(":")[0] for v in prom["volumes"] if v.startswith("./")}
    assert mounted["/etc/prometheus/alerts.yml"].resolve() == (PROM / "alerts.yml").resolve()
    assert mounted["/etc/prometheus/prometheus.yml"].resolve() == (PROM / "prometheus.yml").resolve()
    for source in mounted.values():
        assert source.exists(), source
    for name, s in services.items():
        for vol in s.get("volumes", []):
            if not vol.startswith("./"):
                assert vol.split(":")[0] in doc["volumes"], f"{name}: volume {vol} is not declared"


# --- Prometheus --------------------------------------------------------------------------------


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: install the Debian package 'prometheus' (make system-deps)"
    return path


def run_promtool(*args: str) -> None:
    out = subprocess.run([promtool(), *args], cwd=PROM, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"promtool {' '.join(args)}:\n{out.stdout}\n{out.stderr}"


def test_promtool_check_rules():
    run_promtool("check", "rules", "alerts.yml")


def test_promtool_check_config():
    run_promtool("check", "config", "prometheus.yml")  # also checks the rule file it loads


def test_promtool_rule_unit_tests():
    run_promtool("test", "rules", "alerts_test.yml")


RUNBOOK_BASE = (
    "{{ with $externalLabels.runbook_base_url }}{{ . }}{{ else }}"
    "https://github.com/signaldb/signaldb/blob/main/docs/operations.md{{ end }}"
)


def alert_rules() -> list[dict]:
    return [r for g in load_docs(PROM / "alerts.yml")[0]["groups"] for r in g["rules"] if "alert" in r]


def test_alerts_have_for_severity_and_a_runbook_that_exists():
    rules = alert_rules()
    assert len(rules) >= 10
    anchors = github_anchors(OPERATIONS_MD.read_text())
    for r in rules:
        name = r["alert"]
        assert "for" in r, f"{name}: no for:"
        assert r["labels"]["severity"] in ("warning", "critical"), name
        ann = r["annotations"]
        assert ann.get("summary") and ann.get("description"), name
        # <base>#<anchor>: the base from the external label runbook_base_url, else the docs on GitHub.
        base, _, anchor = ann["runbook_url"].partition("#")
        assert base == RUNBOOK_BASE and anchor in anchors, f"{name}: runbook {ann['runbook_url']} not found"
    scraped = {job["job_name"] for job in load_docs(PROM / "prometheus.yml")[0]["scrape_configs"]}
    assert scraped == {"signaldb-acceptor", "signaldb-writer"}


def alert_metric_names() -> set[str]:
    return {m for r in alert_rules() for m in re.findall(r"\bsignaldb_[a-z_]+\b", r["expr"])}


def exported_names(text: str) -> set[str]:
    """Every name a scrape can be queried by: samples, and families with their type's suffixes."""
    from prometheus_client.parser import text_string_to_metric_families

    names = set()
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "gauge": ("",),
        "summary": ("_sum", "_count", ""),
    }
    for family in text_string_to_metric_families(text):
        names.update(s.name for s in family.samples)
        names.update(family.name + sfx for sfx in suffixes.get(family.type, ()))
    return names


def test_alert_metrics_exist_in_a_real_scrape(tmp_path):
    """Starts the real pipeline (writer + acceptor), sends OTLP through to Parquet and
    scrapes both /metrics: every metric an alert uses must exist in one of them."""
    from helpers.pipeline import Pipeline
    from test_acceptor_bad_input import post, trace_request

    pipeline = Pipeline(tmp_path).start()
    try:
        acceptor, writer = pipeline.acceptor, pipeline.writer
        status, _, _ = post(acceptor, "/v1/traces", trace_request(2, "deploy"))
        assert status == 200
        deadline = time.monotonic() + 30  # the forward and file metrics follow the writer's work
        while time.monotonic() < deadline and not (
            acceptor.metric("signaldb_forward_entries_total") >= 1
            and writer.metric("signaldb_writer_files_written_total") >= 1
        ):
            time.sleep(0.05)
        exported = exported_names(acceptor.metrics()) | exported_names(writer.metrics())
        used = alert_metric_names()
        assert any(m.startswith("signaldb_writer_") for m in used), "expected at least one writer alert"
        missing = sorted(m for m in used if m not in exported)
        assert not missing, f"alerts.yml uses metrics neither service exports: {missing}"
        used = dashboard_metric_names()
        assert {"process_resident_memory_bytes", "signaldb_receiver_refused_requests_total"} <= used
        missing = sorted(m for m in used if m not in exported | ONLY_IN_A_CONTAINER)
        assert not missing, f"the Grafana dashboard uses metrics neither service exports: {missing}"
        assert 'signaldb_build_info{component="acceptor"' in acceptor.metrics()
        assert 'signaldb_build_info{component="writer"' in writer.metrics()

        # The image's HEALTHCHECK script, against the real health ports.
        check = [sys.executable, str(DEPLOY / "healthcheck.py")]
        assert subprocess.run([*check, acceptor.health_url("/livez")], timeout=30).returncode == 0
        assert subprocess.run([*check, writer.health_url("/livez")], timeout=30).returncode == 0
    finally:
        pipeline.stop()


# --- Grafana ------------------------------------------------------------------------------------

GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "signaldb.json"
# Grafana's variables, replaced by what Grafana would put there, so the query parses as PromQL.
GRAFANA_VARS = {"$__rate_interval": "5m", "$__range": "1h", "$__interval": "1m", "$instance": ".*"}


# Exported only where there is a cgroup memory limit (a container), not on this machine.
ONLY_IN_A_CONTAINER = {"signaldb_memory_limit_bytes"}


def test_memory_limit_is_read_from_cgroup_v2_and_v1(tmp_path):
    from signaldb.service.metrics import memory_limit_bytes

    assert memory_limit_bytes(tmp_path) is None  # no cgroup files: no limit
    (tmp_path / "memory.max").write_text("max\n")
    assert memory_limit_bytes(tmp_path) is None
    (tmp_path / "memory.max").write_text("536870912\n")
    assert memory_limit_bytes(tmp_path) == 512 << 20
    (tmp_path / "memory.max").unlink()
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1 "unlimited"
    assert memory_limit_bytes(tmp_path) is None
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text("1073741824\n")
    assert memory_limit_bytes(tmp_path) == 1 << 30


def dashboard_exprs() -> list[str]:
    import json

    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        query = var.get("query")
        if isinstance(query, dict):  # label_values(metric, label): the metric is a selector
            exprs.append(re.fullmatch(r"label_values\((.+), *\w+\)", query["query"]).group(1))
    out = []
    for e in exprs:
        for var, value in GRAFANA_VARS.items():
            e = e.replace(var, value)
        assert "$" not in e, f"unknown Grafana variable in {e}"
        out.append(e)
    return out


def dashboard_metric_names() -> set[str]:
    return {m for e in dashboard_exprs() for m in re.findall(r"\b(?:signaldb|process|python)_[a-z_]+\b", e)}


def test_grafana_dashboard_expressions_parse(tmp_path):
    """Every query in the dashboard goes through Prometheus's own parser (promtool, as recording
    rules); the panels an operator needs are there."""
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    rules = {
        "groups": [
            {"name": "dashboard", "rules": [{"record": f"dashboard:query{i}", "expr": e} for i, e in enumerate(exprs)]}
        ]
    }
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump(rules))
    out = subprocess.run(
        [promtool(), "check", "rules", str(tmp_path / "dashboard.yml")], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    names = dashboard_metric_names()
    for needed in (
        "signaldb_receiver_accepted_spans_total",
        "signaldb_receiver_refused_requests_total",
        "signaldb_receiver_ack_duration_seconds_bucket",
        "signaldb_wal_unprocessed_bytes",
        "signaldb_wal_max_backlog_bytes",
        "signaldb_wal_oldest_unprocessed_age_seconds",
        "signaldb_wal_fsync_duration_seconds_bucket",
        "signaldb_forward_rows_total",
        "signaldb_writer_rows_written_total",
        "signaldb_writer_files_written_total",
    ):
        assert needed in names, f"dashboard has no panel on {needed}"


def test_compose_provisions_grafana_with_the_dashboard():
    grafana = compose()["services"]["grafana"]
    assert re.fullmatch(r"grafana/grafana:\d+\.\d+\.\d+", grafana["image"]), "pin Grafana by version"
    mounts = {v.split(":")[1]: (DEPLOY / v.split(":")[0]).resolve() for v in grafana["volumes"] if v.startswith("./")}
    provider = load_docs(mounts["/etc/grafana/provisioning/dashboards"] / "signaldb.yml")[0]
    dash_dir = provider["providers"][0]["options"]["path"]
    assert mounts[dash_dir] == DASHBOARD.parent.resolve()
    source = load_docs(mounts["/etc/grafana/provisioning/datasources"] / "prometheus.yml")[0]["datasources"][0]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"


def test_healthcheck_fails_when_nothing_listens():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connection refused
        out = subprocess.run(
            [sys.executable, str(DEPLOY / "healthcheck.py"), f"http://127.0.0.1:{port}/livez"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert out.returncode == 1 and "healthcheck" in out.stderr


# --- Dockerfile and .dockerignore ----------------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile as stages of (INSTRUCTION, arguments), continuation lines joined."""
    text = (DEPLOY / "Dockerfile").read_text()
    text = re.sub(r"\\\n(\s*#.*\n)*", " ", text)
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, args = line.partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instr, args.strip()))
    return stages


def dockerfile_env() -> dict[str, str]:
    env = {}
    for instr, args in dockerfile_stages()[-1]:
        if instr == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def test_dockerfile_is_multistage_non_root_and_read_only_ready():
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage build"
    froms = [s[0][1] for s in stages]
    builder = next(s for s in stages if s[0][1].lower().endswith(" as builder"))
    assert any(i == "RUN" and "maturin build" in a and "--release" in a for i, a in builder)
    assert any(i == "RUN" and "pip install" in a and "maturin" in a for i, a in builder)
    runtime = stages[-1]
    text = (DEPLOY / "Dockerfile").read_text()
    for instr, args in runtime:
        assert not (instr == "RUN" and re.search(r"\b(maturin|cargo|rustup|apt-get install)\b", args)), (
            f"build tools in the runtime stage: {args}"
        )
    image = froms[-1].split()[0]  # ${PYTHON_IMAGE} -> its ARG default
    image = re.sub(r"\$\{(\w+)\}", lambda m: re.search(rf"ARG {m.group(1)}=(\S+)", text).group(1), image)
    assert re.match(r"python:3\.11(\.\d+)?-slim", image), image  # 3.11, pinned to a patch release
    assert any(i == "RUN" and "pip install" in a and ".whl" in a for i, a in runtime), "installs the wheel"
    users = [a for i, a in runtime if i == "USER"]
    assert users and users[-1].split(":")[0] == str(IMAGE_USER), "the runtime stage must end as UID 1000"
    assert re.search(r"useradd[^\n]*--uid 1000[^\n]*signaldb", text) and "groupadd --gid 1000 signaldb" in text

    env = dockerfile_env()
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["ACCEPTOR_WAL_DIR"] == "/data/wal/acceptor"
    assert env["WRITER_WAL_DIR"] == "/data/wal/writer"
    assert env["SIGNALDB_STORAGE_URL"] == "file:///data/parquet"
    assert env["HOME"].startswith(("/tmp", "/data")), "HOME must be writable"
    for key in (
        "ACCEPTOR_GRPC_ADDR",
        "ACCEPTOR_HTTP_ADDR",
        "ACCEPTOR_HEALTH_ADDR",
        "WRITER_FLIGHT_ADDR",
        "WRITER_HEALTH_ADDR",
    ):
        assert env[key].startswith("0.0.0.0:"), f"{key}: loopback is useless inside a container"
    check_env(
        {k: v for k, v in env.items() if k.isupper() and not k.startswith(("PYTHON", "PIP_", "HOME"))}, "Dockerfile ENV"
    )

    exposed = {int(p) for i, a in runtime if i == "EXPOSE" for p in a.split()}
    assert exposed == {4317, 4318, 8080, 8081, 50061}
    health = [a for i, a in runtime if i == "HEALTHCHECK"]
    assert health and "/livez" in health[0] and "python" in health[0] and "curl" not in health[0]
    assert [a for i, a in runtime if i == "CMD"] == ['["signaldb", "run"]']
    assert any(i == "RUN" and "/data/wal" in a and "-o 1000" in a for i, a in runtime), (
        "/data/wal must exist and belong to UID 1000 (volumes copy its ownership)"
    )


def test_dockerignore_keeps_build_outputs_out_and_sources_in():
    patterns = [
        p.strip().rstrip("/")
        for p in (REPO / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    for required in ("target", ".venv", ".wal", ".data", ".bench-tmp", "fuzz/target"):
        assert required in patterns or f"**/{required}" in patterns, f".dockerignore should exclude {required}/"

    def ignored(rel: str) -> bool:
        parts = rel.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        return any(
            fnmatch.fnmatch(prefix, pat) or fnmatch.fnmatch(prefix, pat.removeprefix("**/"))
            for pat in patterns
            if not pat.startswith("!")
            for prefix in prefixes
        )

    copied = []
    for stage in dockerfile_stages():
        for instr, args in stage:
            if instr == "COPY" and "--from=" not in args:
                copied += shlex.split(args)[:-1]
    assert copied
    for src in copied:
        src = src.rstrip("/")
        assert (REPO / src).exists(), f"COPY {src}: no such path in the repository"
        assert not ignored(src), f"COPY {src}: excluded by .dockerignore"
    for path in ("rust/native/src/lib.rs", "python/signaldb/config.py", "deploy/healthcheck.py"):
        assert not ignored(path), path


# --- the container's constraints, without a container engine ------------------------------------


@pytest.fixture
def container_dirs():
    """/data and /tmp stand-ins owned by UID 1000, outside pytest's root-only tmp directory."""
    import os
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="signaldb-container-"))
    data, tmp = root / "data", root / "tmp"
    data.mkdir()
    tmp.mkdir(mode=0o1777)
    os.chmod(root, 0o755)
    os.chown(data, IMAGE_USER, IMAGE_USER)
    os.chmod(tmp, 0o1777)
    try:
        yield data, tmp
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_acceptor_runs_as_uid_1000_on_a_read_only_root(recorder, container_dirs, tmp_path):
    """What the image promises, emulated: the acceptor as UID 1000 with no capabilities, the whole
    filesystem read-only except a data directory and a temp directory (a private mount namespace),
    the image's environment. It must start, accept and forward a request, and stop cleanly."""
    import json
    import os
    import signal
    import urllib.request

    from test_acceptor_bad_input import trace_request

    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("setpriv")):
        pytest.skip("needs root, unshare and setpriv (util-linux) to emulate the container")
    data, tmp = container_dirs
    probe = subprocess.run(
        [
            "setpriv",
            f"--reuid={IMAGE_USER}",
            f"--regid={IMAGE_USER}",
            "--clear-groups",
            sys.executable,
            "-c",
            "import signaldb.acceptor.service",
        ],
        capture_output=True,
    )
    if probe.returncode != 0:
        pytest.skip(f"this venv's Python is not usable by UID {IMAGE_USER}: {probe.stderr.decode()[-300:]}")

    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "VIRTUAL_ENV")}
    env.update({k: v for k, v in dockerfile_env().items() if not k.startswith("PIP_")})
    env.update(
        {
            "HOME": str(tmp),
            "TMPDIR": str(tmp),
            "ACCEPTOR_WAL_DIR": str(data / "wal" / "acceptor"),
            # The image binds 0.0.0.0 on fixed ports; here port 0 avoids clashes with other tests.
            "ACCEPTOR_GRPC_ADDR": "0.0.0.0:0",
            "ACCEPTOR_HTTP_ADDR": "0.0.0.0:0",
            "ACCEPTOR_HEALTH_ADDR": "0.0.0.0:0",
            "ACCEPTOR_WRITER_ENDPOINTS": recorder.url,
            "ACCEPTOR_MAX_AGE_SECS": "0",  # trace_request carries fixed 2023 times
        }
    )
    script = (
        f"mount --bind {data} {data} && mount --bind {tmp} {tmp} && mount -o remount,bind,ro / && "
        f"exec setpriv --reuid={IMAGE_USER} --regid={IMAGE_USER} --clear-groups "
        f"--inh-caps=-all --bounding-set=-all {sys.executable} -m signaldb.acceptor.main"
    )
    log_path = tmp_path / "acceptor.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            cwd=data,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        ports = None
        deadline = time.monotonic() + 60
        while ports is None and time.monotonic() < deadline:
            assert proc.poll() is None, f"acceptor exited {proc.returncode}:\n{log_path.read_text()}"
            for line in log_path.read_text().splitlines():
                if '"listening"' in line:
                    ports = json.loads(line)
            time.sleep(0.05)
        assert ports, f"acceptor did not start:\n{log_path.read_text()}"
        req = urllib.request.Request(
            f"http://127.0.0.1:{ports['http_port']}/v1/traces",
            data=trace_request(1, "ro"),
            headers={"Content-Type": "application/x-protobuf"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert resp.status == 200
        recorder.wait_for(lambda: len(recorder.rows("traces")) == 1, timeout=30)
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['health_port']}/livez", timeout=10) as resp:
            assert resp.status == 200
        proc.send_signal(signal.SIGTERM)  # reaches the acceptor: sh exec'd setpriv, which exec'd Python
        assert proc.wait(30) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wal = data / "wal" / "acceptor"
    assert wal.is_dir() and wal.stat().st_uid == IMAGE_USER and (wal.stat().st_mode & 0o777) == 0o700
    assert "Read-only file system" not in log_path.read_text()
