"""The deployment examples under deploy/ (docs/deployment.md) describe the topology the scale-out
tests run, with settings Hubbub really reads. Docker and Kubernetes cannot run here, so the files
are parsed and cross-checked: YAML structure, service and port wiring, probes, and every
environment variable against the names ``hubbub.config.load`` reads (and accepts)."""

from __future__ import annotations

import configparser
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hubbub import config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
# Not Hubbub's: uvicorn reads it (which proxies may set X-Forwarded-For).
FOREIGN_SETTINGS = {"FORWARDED_ALLOW_IPS"}


class Recording(dict[str, str]):
    """An environment that remembers every name looked up in it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        return super().__getitem__(key)


@pytest.fixture(scope="module")
def settings_names(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    env = Recording(HUBBUB_DATA_DIR=str(tmp_path_factory.mktemp("data")))
    config.load(env)
    assert {"DATABASE_URL", "REDIS_URL", "HUBBUB_SECRET_KEY"} <= env.asked
    return env.asked


def loads_with(env: dict[str, str], tmp_path: Path) -> config.Config:
    """config.load accepts these values (the data dir moved somewhere writable)."""
    values = {k: v for k, v in env.items() if k not in FOREIGN_SETTINGS}
    values["HUBBUB_DATA_DIR"] = str(tmp_path / "data")
    return config.load(values)


def check_names(env: dict[str, str], names: set[str], where: str) -> None:
    unknown = set(env) - names - FOREIGN_SETTINGS
    assert not unknown, f"{where}: not Hubbub settings: {sorted(unknown)}"


# -- compose ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    return loaded


def resolve(value: str) -> str:
    """Compose's ${VAR:-default} and ${VAR:?message}, with a stand-in for required values."""
    value = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)
    return re.sub(r"\$\{[A-Z_]+:\?[^}]*\}", "x" * 40, value)


def test_compose_runs_the_tested_topology(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "serve-1", "serve-2", "worker", "nginx"}
    upstreams = (DEPLOY / "compose" / "hubbub-upstreams.conf").read_text()
    listed = re.findall(r"(?m)^server\s+([\w.-]+):(\d+)", upstreams)
    serving = []
    for name in ("serve-1", "serve-2"):
        command = services[name]["command"]
        assert command[:2] == ["hubbub", "serve"] and command[command.index("--host") + 1] == "0.0.0.0"
        serving.append((name, command[command.index("--port") + 1]))
        assert "/readyz" in " ".join(services[name]["healthcheck"]["test"])
    assert sorted(listed) == sorted(serving), "nginx's upstreams are the serve services"
    assert services["worker"]["command"] == ["hubbub", "worker"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in services["nginx"]["volumes"]}
    assert mounts["/etc/nginx/conf.d/default.conf"] == "../nginx/hubbub.conf"
    assert mounts["/etc/nginx/hubbub-upstreams.conf"] == "./hubbub-upstreams.conf"
    for host_path in mounts.values():
        assert (DEPLOY / "compose" / host_path).is_file(), host_path
    assert "include hubbub-upstreams.conf;" in (DEPLOY / "nginx" / "hubbub.conf").read_text()
    build = services["serve-1"]["build"]
    assert (DEPLOY / "compose" / build["context"] / build["dockerfile"]).is_file()


def test_compose_settings_are_real_and_valid(
    compose: dict[str, Any], settings_names: set[str], tmp_path: Path,
) -> None:
    for name in ("serve-1", "serve-2", "worker"):
        env = {k: resolve(str(v)) for k, v in compose["services"][name]["environment"].items()}
        check_names(env, settings_names, f"compose {name}")
        cfg = loads_with(env, tmp_path)
        assert cfg.redis is not None and cfg.database_url is not None
        hosts = {urlhost(cfg.redis.urls[0]), urlhost(cfg.database_url)}
        assert hosts <= set(compose["services"]), f"{hosts} are not compose services"
        assert "hubbub-data:/data" in compose["services"][name]["volumes"]
        assert env["HUBBUB_DATA_DIR"] == "/data"


def urlhost(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).hostname or ""


# -- Kubernetes -------------------------------------------------------------------------------


def k8s_docs() -> Iterator[dict[str, Any]]:
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield doc


@pytest.fixture(scope="module")
def k8s() -> dict[tuple[str, str], dict[str, Any]]:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in k8s_docs()}
    for doc in docs.values():
        assert "apiVersion" in doc and "metadata" in doc
    return docs


def container(doc: dict[str, Any]) -> dict[str, Any]:
    (only,) = doc["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = only
    return result


def test_kubernetes_serve_and_worker_deployments(k8s: dict[tuple[str, str], dict[str, Any]]) -> None:
    serve = k8s[("Deployment", "hubbub-serve")]
    worker = k8s[("Deployment", "hubbub-worker")]
    for deployment in (serve, worker):
        spec = deployment["spec"]
        assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
        refs = {(k, v["name"]) for e in container(deployment)["envFrom"] for k, v in e.items()}
        assert refs == {("configMapRef", "hubbub-settings"), ("secretRef", "hubbub-secrets")}
        (volume,) = spec["template"]["spec"]["volumes"]
        assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in k8s
        assert container(deployment)["volumeMounts"][0]["mountPath"] == "/data"
    assert serve["spec"]["replicas"] >= 2
    c = container(serve)
    assert c["command"][:2] == ["hubbub", "serve"]
    port = int(c["command"][c["command"].index("--port") + 1])
    assert c["command"][c["command"].index("--host") + 1] == "0.0.0.0"
    (named,) = c["ports"]
    assert named["containerPort"] == port
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": named["name"]}
    assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": named["name"]}
    assert container(worker)["command"] == ["hubbub", "worker"]
    assert "readinessProbe" not in container(worker)  # no HTTP in a worker

    service = k8s[("Service", "hubbub")]
    assert service["spec"]["selector"] == serve["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == named["name"]
    ingress = k8s[("Ingress", "hubbub")]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == "hubbub" and backend["port"]["name"] == service["spec"]["ports"][0]["name"]
    timeout = int(ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"])
    assert timeout > 20, "longer than Hubbub's 20 s WebSocket ping"
    assert k8s[("PersistentVolumeClaim", "hubbub-data")]["spec"]["accessModes"] == ["ReadWriteMany"]


def test_kubernetes_settings_are_real_and_valid(
    k8s: dict[tuple[str, str], dict[str, Any]], settings_names: set[str], tmp_path: Path,
) -> None:
    env = {**k8s[("ConfigMap", "hubbub-settings")]["data"], **k8s[("Secret", "hubbub-secrets")]["stringData"]}
    assert all(isinstance(v, str) for v in env.values()), "ConfigMap values must be strings"
    check_names(env, settings_names, "Kubernetes")
    cfg = loads_with(env, tmp_path)
    assert cfg.redis is not None and cfg.database_url is not None


# -- systemd ----------------------------------------------------------------------------------


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((DEPLOY / "systemd" / name).read_text())
    return parser


def test_systemd_units_match_the_nginx_upstreams(settings_names: set[str], tmp_path: Path) -> None:
    serve = unit("hubbub@.service")["Service"]
    assert serve["ExecStart"].endswith("hubbub serve --host 127.0.0.1 --port %i")
    worker = unit("hubbub-worker@.service")["Service"]
    assert worker["ExecStart"].endswith("hubbub worker")
    assert serve["EnvironmentFile"] == worker["EnvironmentFile"] == "/etc/hubbub/hubbub.env"
    upstreams = (DEPLOY / "nginx" / "hubbub-upstreams.conf").read_text()
    assert re.findall(r"(?m)^server\s+127\.0\.0\.1:(\d+)", upstreams) == ["8001", "8002"]

    env_lines = (DEPLOY / "systemd" / "hubbub.env.example").read_text().splitlines()
    env = dict(line.split("=", 1) for line in env_lines if line and not line.startswith("#"))
    check_names(env, settings_names, "hubbub.env.example")
    assert env["HUBBUB_DATA_DIR"] == serve["WorkingDirectory"] == serve["ReadWritePaths"]
    loads_with(env, tmp_path)
