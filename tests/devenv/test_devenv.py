"""dev-env/ parsed and checked against the CLI and the node: variables are settings that load,
ports and probes match, peers name members as they advertise themselves, the dashboard
asks only for metrics a real node exposes. The image is built and its healthcheck run only
where a container engine answers."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from esdb_node.config import NodeConfig, env_var, parse_hostport
from esdb_node.server.http import HttpServer
from tests.harness import NodeProc, wait_for
from tests.http.support import base_url, http_node, request

REPO = Path(__file__).resolve().parents[2]
DEV = REPO / "dev-env"
SETTING_VARS = {env_var(f.name) for f in fields(NodeConfig)}
ROUTES = {path for _, path in HttpServer.route_table()}
FAKE_IP = "172.30.0.7"


def load_yaml_docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for line in (DEV / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        current += " " + stripped.removesuffix("\\").strip() if current else stripped
        if stripped.endswith("\\"):
            continue
        word, _, rest = current.partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    assert not current, "a continuation line runs off the end of the Dockerfile"
    return out


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in dockerfile():
        if word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def node_config(env: dict[str, str]) -> NodeConfig:
    """What a container with these variables runs with (the entrypoint's `auto`)."""
    settings = {k: v for k, v in env.items() if k.startswith("ESDB_")}
    assert set(settings) <= SETTING_VARS, f"not settings: {set(settings) - SETTING_VARS}"
    if settings.get("ESDB_ADVERTISE") == "auto":
        settings["ESDB_ADVERTISE"] = FAKE_IP
    return NodeConfig.load({}, env=settings)


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` references to earlier variables of the container."""
    return re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], value)


def port_of(address: str | None) -> int:
    assert address is not None
    return parse_hostport(address)[1]


# --- the image ----------------------------------------------------------------------------------


def test_dockerfile_runs_the_node_as_non_root_with_a_volume_ports_and_healthcheck() -> None:
    instructions = dockerfile()
    words = [w for w, _ in instructions]
    assert words[0] == "FROM"
    cfg = node_config(image_env())
    users = [rest for w, rest in instructions if w == "USER"]
    assert users and users[-1] not in ("root", "0"), "the node must not run as root"
    volumes = [json.loads(rest) for w, rest in instructions if w == "VOLUME"]
    assert [str(cfg.data_dir)] in volumes
    exposed = {int(p) for w, rest in instructions if w == "EXPOSE" for p in rest.split()}
    assert exposed == {port_of(cfg.listen), port_of(cfg.raft), port_of(cfg.http)}
    health = next(rest for w, rest in instructions if w == "HEALTHCHECK")
    match = re.search(r"http://127\.0\.0\.1:(\d+)(/[\w/]+)", health)
    assert match is not None, health
    assert int(match.group(1)) == port_of(cfg.http) and match.group(2) == "/health/ready"
    assert match.group(2) in ROUTES
    assert cfg.log_format == "json"
    for w, rest in instructions:
        if w == "COPY":
            for source in shlex.split(rest)[:-1]:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"
    ignore = (DEV / "Dockerfile.dockerignore").read_text().splitlines()
    for w, rest in instructions:
        if w == "COPY":
            for source in shlex.split(rest)[:-1]:
                assert f"!{source}" in ignore, f"{source} is not sent in the build context"
    entry = json.loads(next(rest for w, rest in instructions if w == "ENTRYPOINT"))
    assert entry == ["docker-entrypoint.sh"]
    script = (DEV / "docker-entrypoint.sh").read_text()
    assert 'exec esdb node start "$@"' in script
    assert (DEV / "docker-entrypoint.sh").stat().st_mode & 0o111


def test_entrypoint_advertises_the_container_ip_when_auto(tmp_path: Path) -> None:
    """Run the entrypoint with a stand-in `esdb` and `hostname` on PATH: it execs
    `esdb node start` with the arguments and the first address as ESDB_ADVERTISE."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "hostname").write_text("#!/bin/sh\necho '10.1.2.3 fd00::5'\n")
    (bin_dir / "esdb").write_text('#!/bin/sh\necho "$ESDB_ADVERTISE $*"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "ESDB_ADVERTISE": "auto"}
    out = subprocess.run(
        ["sh", str(DEV / "docker-entrypoint.sh"), "--durability", "os"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert out.strip() == "10.1.2.3 node start --durability os"
    env["ESDB_ADVERTISE"] = "esdb1"
    out = subprocess.run(
        ["sh", str(DEV / "docker-entrypoint.sh")], env=env, capture_output=True, text=True,
        check=True,
    ).stdout  # fmt: skip
    assert out.strip() == "esdb1 node start"


# --- compose ------------------------------------------------------------------------------------


def compose_nodes(name: str) -> dict[str, tuple[dict[str, Any], NodeConfig]]:
    doc = yaml.safe_load((DEV / name).read_text())
    base = image_env()
    out = {}
    for service, spec in doc["services"].items():
        if spec.get("image") != "esdb:dev":
            continue
        assert spec["build"]["dockerfile"] == "dev-env/Dockerfile"
        assert (DEV / spec["build"]["context"] / "dev-env" / "Dockerfile").exists()
        env = {**base, **{k: str(v) for k, v in spec["environment"].items()}}
        env["ESDB_SECRET"] = "compose-test-secret"  # ${ESDB_SECRET:?...} in the file
        out[service] = (spec, node_config(env))
    return out


def test_compose_core_has_three_nodes_whose_static_peers_name_each_member() -> None:
    nodes = compose_nodes("compose.yaml")
    assert len(nodes) == 3
    adverts = set()
    for service, (spec, cfg) in nodes.items():
        assert spec["hostname"] == service == cfg.node_id == cfg.advertise
        adverts.add(f"{cfg.advertise}:{port_of(cfg.raft)}")
        assert "/data" in [v.split(":")[1] for v in spec["volumes"]]
    for _, cfg in nodes.values():
        assert set(cfg.peers) == adverts, "peers must list every member as it advertises"
    published = nodes["esdb1"][0]["ports"]
    targets = {int(p.rsplit(":", 1)[1]) for p in published}
    cfg = nodes["esdb1"][1]
    assert targets == {port_of(cfg.listen), port_of(cfg.http)}
    assert all(p.startswith("127.0.0.1:") for p in published), "publish on loopback only"
    doc = yaml.safe_load((DEV / "compose.yaml").read_text())
    assert "${ESDB_SECRET:?" in (DEV / "compose.yaml").read_text()
    prom = doc["services"]["prometheus"]
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prom["volumes"]


def test_compose_tier_forms_five_nodes_by_dns_discovery() -> None:
    nodes = compose_nodes("compose.tier5.yaml")
    assert len(nodes) == 5
    for spec, cfg in nodes.values():
        assert cfg.bootstrap_expect == 5 and cfg.advertise == FAKE_IP
        assert cfg.join is not None and cfg.join.startswith("dns:")
        name, _, port = cfg.join.removeprefix("dns:").partition(":")
        aliases = spec["networks"]["tier"]["aliases"]
        assert name in aliases and int(port) == port_of(cfg.raft)


# --- kubernetes ---------------------------------------------------------------------------------


def test_kubernetes_statefulset_services_pdb_and_probes() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in load_yaml_docs(DEV / "k8s/esdb.yaml")}
    sts = docs[("StatefulSet", "esdb")]
    headless = docs[("Service", sts["spec"]["serviceName"])]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    pod = sts["spec"]["template"]
    labels = pod["metadata"]["labels"]
    for doc in docs.values():
        selector = doc["spec"].get("selector", {})
        selector = selector.get("matchLabels", selector)
        assert selector.items() <= labels.items(), doc["metadata"]["name"]
    pdb = docs[("PodDisruptionBudget", "esdb")]
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    replicas = sts["spec"]["replicas"]
    for ordinal in range(replicas):
        pod_name = f"{sts['metadata']['name']}-{ordinal}"
        env: dict[str, str] = {}
        for item in container["env"]:
            if "value" in item:
                env[item["name"]] = expand(str(item["value"]), env)
            elif item["name"] == "POD_NAME":
                env["POD_NAME"] = pod_name
            else:
                env[item["name"]] = "from-a-secret"  # secretKeyRef
        cfg = node_config({**image_env(), **env})
        assert cfg.node_id == pod_name
        assert cfg.advertise == f"{pod_name}.{headless['metadata']['name']}"
        assert f"{cfg.advertise}:{port_of(cfg.raft)}" in cfg.peers
        assert len(cfg.peers) == replicas
        assert ports == {
            "client": port_of(cfg.listen), "raft": port_of(cfg.raft), "http": port_of(cfg.http)
        }  # fmt: skip
    for probe, path in (
        ("livenessProbe", "/health/live"),
        ("readinessProbe", "/health/ready"),
        ("startupProbe", "/health/live"),
    ):
        get = container[probe]["httpGet"]
        assert get["path"] == path and path in ROUTES and get["port"] == "http"
    annotations = pod["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == ports["http"]
    assert annotations["prometheus.io/path"] in ROUTES
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]] == "/data"


# --- prometheus and grafana ---------------------------------------------------------------------


def test_prometheus_scrapes_the_http_port_and_the_metrics_route() -> None:
    doc = yaml.safe_load((DEV / "prometheus/prometheus.yml").read_text())
    http_port = port_of(node_config(image_env()).http)
    core = set(compose_nodes("compose.yaml"))
    jobs = {j["job_name"]: j for j in doc["scrape_configs"]}
    assert jobs["esdb"]["metrics_path"] in ROUTES
    targets = jobs["esdb"]["static_configs"][0]["targets"]
    assert {t.split(":")[0] for t in targets} == core
    assert {int(t.split(":")[1]) for t in targets} == {http_port}
    assert jobs["tier"]["dns_sd_configs"][0]["port"] == http_port
    for path in (DEV / "grafana/provisioning").rglob("*.yaml"):
        assert yaml.safe_load(path.read_text())["apiVersion"] == 1


@pytest.fixture(scope="module")
def exposed_metrics(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Every sample name a real node exposes."""
    node: NodeProc = http_node(tmp_path_factory.mktemp("metrics") / "n")
    try:
        text = request(base_url(node) + "/metrics").body.decode()
    finally:
        node.stop()
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split()
            names.add(family)
            if kind == "histogram":
                names |= {family + s for s in ("_bucket", "_sum", "_count")}
            if kind == "counter":
                names.add(family.removesuffix("_total") + "_total")
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_every_dashboard_query_uses_metrics_the_node_exposes(exposed_metrics: set[str]) -> None:
    dash = json.loads((DEV / "grafana/dashboards/esdb.json").read_text())
    used = set()
    for panel in dash["panels"]:
        for target in panel["targets"]:
            used |= set(re.findall(r"\besdb_[a-z_]+", target["expr"]))
    assert used, "the dashboard queries nothing"
    assert used <= exposed_metrics, f"not exposed by a node: {sorted(used - exposed_metrics)}"
    families = {n.removesuffix(s) for n in used for s in ("_bucket", "_sum", "_count", "_total")}
    for wanted in (
        "esdb_raft_term",
        "esdb_batch_flush_seconds",
        "esdb_fsync_seconds",
        "esdb_subscription_lag_events",
        "esdb_connections",
        "esdb_disk_bytes",
    ):
        assert wanted in families, wanted


# --- the README's commands ----------------------------------------------------------------------


def test_readme_esdb_commands_exist_in_the_cli() -> None:
    from typer.main import get_command

    from esdb_cli.main import app

    root = get_command(app)
    text = (DEV / "README.md").read_text()
    commands = re.findall(r"(?:^|-- |exec \S+ )esdb ((?:--\S+ \S+ )*[a-z][a-z ]*)", text, re.M)
    assert commands
    for found in commands:
        group: Any = root
        words = found.split()
        while words and words[0].startswith("--"):
            words = words[2:]  # a global option and its value
        for word in words:
            sub = getattr(group, "commands", {}).get(word)
            if sub is None:
                break
            group = sub
        assert group is not root, f"`esdb {found}` names no command"


# --- building and running the image (needs a container engine) -----------------------------------


def _engine() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return None
    ok = subprocess.run([docker, "info"], capture_output=True, timeout=30).returncode == 0
    return docker if ok else None


def test_the_image_builds_and_its_healthcheck_passes() -> None:
    docker = _engine()
    if docker is None:
        pytest.skip("no container engine answers `docker info` here: the image is checked by "
                    "parsing only (the other tests in this file)")  # fmt: skip
    tag = f"esdb-test:{time.time_ns()}"
    subprocess.run(
        [docker, "build", "-f", str(DEV / "Dockerfile"), "-t", tag, str(REPO)],
        check=True, timeout=1200,
    )  # fmt: skip
    name = f"esdb-test-{time.time_ns()}"
    try:
        subprocess.run([docker, "run", "-d", "--name", name, tag], check=True, timeout=60)

        def health() -> bool:
            out = subprocess.run(
                [docker, "inspect", "-f", "{{.State.Health.Status}}", name],
                capture_output=True, text=True, timeout=30,
            ).stdout.strip()  # fmt: skip
            assert out != "unhealthy", subprocess.run(
                [docker, "logs", name], capture_output=True, text=True
            ).stderr
            return out == "healthy"

        wait_for(health, timeout=120, what="the container's healthcheck to pass", interval=1)
        user = subprocess.run(
            [docker, "exec", name, "id", "-u"], capture_output=True, text=True, check=True
        ).stdout.strip()
        assert user != "0"
    finally:
        subprocess.run([docker, "rm", "-f", name], capture_output=True, timeout=60)
        subprocess.run([docker, "rmi", "-f", tag], capture_output=True, timeout=120)
