"""Container deployment files agree with what ``milvus run`` accepts (the Helm chart: test_helm.py).

Why: docker-compose.yml and the Dockerfile are read by tools we cannot run here (no
Docker engine), so a typo in a variable name would be silently ignored (Milvus's rule ignores
variables that match no key) and a member would run without active-standby. These tests hold each
file against the real CLI parser and the real config loader instead.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from etcd3aio import Etcd3Client

from coordinators.config import DEFAULTS, load_config
from coordinators.config_tree import Tree, leaves, normalize
from coordinators.ops.cli import build_parser
from coordinators.registry import ROLES
from harness.etcd_server import free_port
from harness.procs import Launch, MilvusProcess, clean_env, holder, sessions, wait_until

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "deployments" / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"

#: The seed's variables for parts this suite does not have: accepted and ignored.
IGNORED = {"MINIO_ADDRESS", "PULSAR_ADDRESS"}
SECTION = {"rootcoord": "rootCoord", "querycoord": "queryCoord", "datacoord": "dataCoord"}
PREFIX = {"rootcoord": "ROOT_COORD", "querycoord": "QUERY_COORD", "datacoord": "DATA_COORD"}
SERVICE = re.compile(r"(?P<role>[a-z]+)(?:-(?P<index>\d+))?")
HEALTH_URL = re.compile(r"http://127\.0\.0\.1:(?P<port>\d+)/healthz")


# ------------------------------------------------------------------ helpers

def config_variables() -> set[str]:
    """Normalised names of every key a variable can set, by the config module's own matching."""
    return {normalize(".".join(path)) for path, _ in leaves(Tree.from_defaults().values)}


def check_variables(env: Mapping[str, Any], where: str) -> None:
    known = config_variables()
    for name, value in env.items():
        assert isinstance(value, str), f"{where}: {name} must be a quoted string, got {value!r}"
        assert normalize(name) in known or name in IGNORED, f"{where}: {name} matches no config key"


def coordinator_services(compose: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: spec for name, spec in compose["services"].items() if name != "etcd"}


def parse_run(argv: list[str]) -> str:
    """The role of a ``run <role> ...`` argument list, parsed by the real CLI parser."""
    args = build_parser().parse_args(argv)
    assert args.command == "run"
    assert args.role in ROLES
    return str(args.role)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


class HealthServer:
    """A stand-in for a coordinator's HTTP port: /healthz answers ``status``; anything else 404."""

    def __init__(self) -> None:
        self.status = 200
        self.paths: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.paths.append(self.path)
                self.send_response(outer.status if self.path == "/healthz" else 404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def health_server() -> Iterator[HealthServer]:
    server = HealthServer()
    yield server
    server.close()


def run_check(argv: list[str], env: Mapping[str, str] | None = None) -> int:
    """Run a health check command as the container would (exit code 0 = healthy), outer config kept out."""
    return subprocess.run(argv, env=clean_env(env or {}), cwd=REPO, capture_output=True, timeout=30).returncode


# ------------------------------------------------------------------ docker-compose.yml

def test_compose_has_one_etcd_and_an_active_standby_pair_per_role(compose: dict[str, Any]) -> None:
    services = coordinator_services(compose)
    assert set(compose["services"]) == {"etcd", *services}
    assert sorted(services) == sorted([*ROLES, *(f"{role}-1" for role in ROLES)])
    names = [spec.get("container_name") for spec in compose["services"].values()]
    assert len(set(names)) == len(names), "container names must be unique"


def test_compose_etcd_as_in_milvus(compose: dict[str, Any]) -> None:
    etcd = compose["services"]["etcd"]
    assert re.fullmatch(r"quay\.io/coreos/etcd:v3\.5\.\d+", etcd["image"])
    command = etcd["command"]
    assert "-listen-client-urls http://0.0.0.0:2379" in command and "--data-dir /etcd" in command
    assert etcd["environment"] == {
        "ETCD_AUTO_COMPACTION_MODE": "revision",
        "ETCD_AUTO_COMPACTION_RETENTION": "1000",
        "ETCD_QUOTA_BACKEND_BYTES": "4294967296",
        "ETCD_SNAPSHOT_COUNT": "50000",
    }
    assert etcd["healthcheck"]["test"] == ["CMD", "etcdctl", "endpoint", "health"]


@pytest.mark.parametrize("name", sorted([*ROLES, *(f"{role}-1" for role in ROLES)]))
def test_compose_member_runs_with_what_milvus_run_accepts(compose: dict[str, Any], name: str) -> None:
    spec = compose["services"][name]
    role = SERVICE.fullmatch(name)["role"]  # type: ignore[index]
    # The container runs entrypoint + command; the entrypoint is reset so the command reads as Milvus's.
    argv = [*spec["entrypoint"], *spec["command"]]
    assert argv[0] == "milvus"
    assert parse_run(argv[1:]) == role

    env = spec["environment"]
    check_variables(env, name)
    config = load_config(env=env)
    member = config.role(role)
    assert config.etcd.endpoints == ("etcd:2379",)
    assert (member.address, member.port) == (name, DEFAULTS[SECTION[role]]["port"])  # its own service name
    assert member.enable_active_standby is True
    assert member.http_port == int(env[f"{PREFIX[role]}_HTTP_PORT"]) == DEFAULTS[SECTION[role]]["httpPort"]

    health = spec["healthcheck"]["test"]
    assert health[:3] == ["CMD", "python", "-c"]
    urls = HEALTH_URL.findall(health[3])
    assert urls == [str(member.http_port)], f"{name}: the health check must hit /healthz on its HTTP port"
    depends_on = spec["depends_on"]
    assert "etcd" in depends_on
    if isinstance(depends_on, dict):
        assert depends_on["etcd"]["condition"] == "service_healthy"


def test_compose_pairs_are_two_distinct_active_standby_members(compose: dict[str, Any]) -> None:
    for role in ROLES:
        members = [spec for name, spec in coordinator_services(compose).items()
                   if SERVICE.fullmatch(name)["role"] == role]  # type: ignore[index]
        assert len(members) == 2
        configs = [load_config(env=spec["environment"]).role(role) for spec in members]
        assert all(c.enable_active_standby for c in configs)
        assert len({c.advertised_address for c in configs}) == 2


@pytest.mark.parametrize("status", [200, 503])
def test_compose_health_check_command_follows_healthz(
    compose: dict[str, Any], health_server: HealthServer, status: int
) -> None:
    """The check's own code: healthy exactly when /healthz answers 200 (here on a stand-in port)."""
    health_server.status = status
    commands = {json.dumps(spec["healthcheck"]["test"]) for spec in coordinator_services(compose).values()}
    assert len(commands) == 3  # one per role: the two members of a pair share theirs
    for command in map(json.loads, commands):
        code = re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{health_server.port}", command[3])
        returncode = run_check([sys.executable, "-c", code])
        assert (returncode == 0) == (status == 200)
    assert set(health_server.paths) == {"/healthz"}


def compose_binary() -> list[str] | None:
    """``docker compose`` or ``docker-compose``, whichever works here (a plugin may be missing)."""
    candidates = [["docker", "compose"], ["docker-compose"]]
    for candidate in candidates:
        if shutil.which(candidate[0]) is None:
            continue
        try:
            probe = subprocess.run([*candidate, "version"], capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return candidate
    return None


def test_docker_compose_config_accepts_the_file() -> None:
    binary = compose_binary()
    if binary is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed and working here")
    result = subprocess.run([*binary, "-f", str(COMPOSE), "config"], capture_output=True, text=True, timeout=60,
                            cwd=COMPOSE.parent)
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)
    assert set(rendered["services"]) == set(yaml.safe_load(COMPOSE.read_text())["services"])


@pytest.mark.process
async def test_compose_members_run_as_active_standby_pairs_and_pass_their_health_checks(
    compose: dict[str, Any], launch: Launch, etcd_client: Etcd3Client, etcd_prefix: str, tmp_path: Path
) -> None:
    """Each service's own environment, as real processes: one ACTIVE + one STANDBY per role, all healthy.

    Only what cannot work outside Docker is changed: etcd's endpoint, and each member's host and
    ports (six processes share this host). Active-standby comes from the compose file alone.
    """
    procs: dict[str, tuple[MilvusProcess, list[str]]] = {}
    for name, spec in coordinator_services(compose).items():
        role = parse_run(spec["command"][1:])
        env = dict(spec["environment"])
        env.pop("ETCD_ENDPOINTS")  # the test's etcd (launch's environment), not the etcd service
        port, http_port = free_port(), free_port()
        env[f"{PREFIX[role]}_ADDRESS"] = f"localhost:{port}"
        env[f"{PREFIX[role]}_HTTP_PORT"] = str(http_port)
        env["MILVUS_RUN_DIR"] = str(tmp_path / "run")  # pid files: not the host's /run/milvus
        check = [sys.executable, "-c", re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{http_port}", spec["healthcheck"]["test"][3])]
        procs[name] = (launch(role, name, active_standby=False, port=port, env=env), check)

    async def settled(role: str) -> bool:
        for proc, _ in procs.values():
            assert proc.running(), f"{proc} exited with {proc.popen.returncode}; log:\n{proc.output()}"
        kv = await holder(etcd_client, etcd_prefix, role)
        return kv is not None and len(await sessions(etcd_client, etcd_prefix, role)) == 2

    for role in ROLES:
        await wait_until(functools.partial(settled, role), timeout=15, what=f"{role}: one ACTIVE, two sessions")

    async def healthy(check: list[str]) -> bool:
        return await asyncio.to_thread(run_check, check) == 0

    for name, (_, check) in procs.items():
        await wait_until(functools.partial(healthy, check), timeout=10, what=f"{name} healthy")
    # The image's own HEALTHCHECK finds querycoord's HTTP port from its command line and environment.
    (healthcheck,) = instruction("HEALTHCHECK")
    code = json.loads(healthcheck.split(" CMD ", 1)[1])[2]
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("\0".join(["python", "milvus", "run", "querycoord", ""]))
    querycoord_http = re.search(r"127\.0\.0\.1:(\d+)", procs["querycoord"][1][2])[1]  # type: ignore[index]
    image_check = [sys.executable, "-c", code.replace("/proc/1/cmdline", str(cmdline))]
    assert await asyncio.to_thread(run_check, image_check, {"QUERY_COORD_HTTP_PORT": querycoord_http}) == 0

    # `docker compose stop rootcoord` (SIGTERM): the other member of the pair takes over.
    active = await holder(etcd_client, etcd_prefix, "rootcoord")
    assert active is not None
    (stopped,) = [proc for proc, _ in procs.values() if proc.address == active.value["Address"]]
    stopped.signal(signal.SIGTERM)
    assert await stopped.wait(timeout=10) == 0

    async def other_active() -> bool:
        kv = await holder(etcd_client, etcd_prefix, "rootcoord")
        return kv is not None and kv.value["Address"] != stopped.address

    await wait_until(other_active, timeout=5, what="the other rootcoord to take over")


# ------------------------------------------------------------------ Dockerfile

def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, arguments = line.partition(" ")
            result.append((instruction.upper(), arguments.strip()))
    return result


def instruction(name: str) -> list[str]:
    return [arguments for inst, arguments in dockerfile_instructions() if inst == name]


def test_dockerfile_entrypoint_and_cmd_run_a_role() -> None:
    assert instruction("FROM") == ["python:3.11-slim"]
    (entrypoint,), (cmd,) = instruction("ENTRYPOINT"), instruction("CMD")
    assert json.loads(entrypoint) == ["milvus"]
    assert parse_run(json.loads(cmd)) == "rootcoord"


def test_dockerfile_runs_as_non_root_and_exposes_the_ports() -> None:
    steps = dockerfile_instructions()
    users = [arguments for inst, arguments in steps if inst == "USER"]
    assert users and users[-1] not in ("root", "0")
    last_user = max(i for i, (inst, _) in enumerate(steps) if inst == "USER")
    assert any(inst == "RUN" and "pip install ." in args for inst, args in steps[:last_user])
    exposed = {int(port) for line in instruction("EXPOSE") for port in line.split()}
    expected = {DEFAULTS[section][key] for section in SECTION.values() for key in ("port", "httpPort")}
    assert exposed == expected


def test_dockerfile_copies_what_the_package_build_needs() -> None:
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    sources = [source for line in instruction("COPY") for source in line.split()[:-1]]
    pyproject = (REPO / "pyproject.toml").read_text()
    needed = {"pyproject.toml", "README.md", "session", "coordinators", "config/milvus.yaml"}
    assert needed <= set(sources)
    assert 'readme = "README.md"' in pyproject
    for source in sources:
        assert (REPO / source).exists(), source
        assert source.split("/")[0] not in ignored, f"{source} is excluded by .dockerignore"


@pytest.mark.parametrize("status", [200, 503])
def test_dockerfile_health_check_follows_healthz_of_the_running_role(
    tmp_path: Path, health_server: HealthServer, status: int
) -> None:
    """The HEALTHCHECK's own code, with PID 1's command line from a file: querycoord's HTTP port."""
    (healthcheck,) = instruction("HEALTHCHECK")
    argv = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert argv[:2] == ["python", "-c"] and "/healthz" in argv[2]
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("\0".join(["/usr/local/bin/python", "/usr/local/bin/milvus", "run", "querycoord", ""]))
    code = argv[2].replace("/proc/1/cmdline", str(cmdline))
    assert code != argv[2]
    health_server.status = status
    env = {"QUERY_COORD_HTTP_PORT": str(health_server.port), "ROOT_COORD_HTTP_PORT": "1"}
    assert (run_check([sys.executable, "-c", code], env) == 0) == (status == 200)
    assert health_server.paths == ["/healthz"]
