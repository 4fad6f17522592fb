"""``scripts/start_cluster.sh --standby`` and ``scripts/stop_cluster.sh``, end to end (issue 4's "done").

Why through the scripts: they are what an operator runs first, and what they promise is about
processes: an ACTIVE and a STANDBY per role, a handover in under a second on ``milvus stop``,
nothing left behind. The cluster is isolated from any other on this machine: its own etcd (free
client and peer ports, data under ``tmp_path``), free gRPC and HTTP ports for all six processes, its
own ``MILVUS_RUN_DIR``, log dir and ``etcd.rootPath``. Every process it starts carries that run dir
in its environment; that is how the test finds (and, on failure, kills) its processes and no other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
import pytest_asyncio
from etcd3aio import Etcd3Client

from coordinators.registry import ROLES
from harness.etcd_server import free_port
from harness.procs import ENV_SECTION, REPO, TTL, clean_env, holder, parse_line, run_cli, wait_until

pytestmark = pytest.mark.process

START_TIMEOUT_S = 90.0  # the script's own waits are 20 s each; a cold venv check adds a little


@dataclass(frozen=True)
class Cluster:
    env: dict[str, str]
    run_dir: Path
    log_dir: Path
    etcd_endpoint: str
    root: str
    ports: dict[str, int]  # role -> gRPC port of the primary
    standby_ports: dict[str, int]

    def address(self, role: str, *, standby: bool = False) -> str:
        return f"localhost:{(self.standby_ports if standby else self.ports)[role]}"

    def logs(self) -> str:
        parts = []
        for log in sorted(self.log_dir.glob("*.log")):
            parts.append(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-20:]))
        return "\n".join(parts)


async def run_script(name: str, args: list[str], env: Mapping[str, str], timeout: float) -> tuple[int, str]:
    """Run ``scripts/<name>``: (exit code, stdout + stderr)."""
    proc = await asyncio.create_subprocess_exec(
        str(REPO / "scripts" / name), *args, env=dict(env), cwd=REPO,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"{name} {' '.join(args)} did not finish within {timeout}s") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


def our_pids(run_dir: Path) -> list[int]:
    """Live processes whose environment names this test's run dir: everything the scripts started."""
    marker = f"MILVUS_RUN_DIR={run_dir}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in environ.split(b"\0") and state != "Z":
            found.append(int(entry))
    return found


def pid_files(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.glob("*.pid"))


@pytest_asyncio.fixture
async def scripts(tmp_path: Path, etcd_prefix: str) -> AsyncIterator[Cluster]:
    """The environment of an isolated cluster; whatever the scripts left running is killed after."""
    run_dir, log_dir = tmp_path / "run", tmp_path / "log"
    etcd_endpoint = f"127.0.0.1:{free_port()}"
    ports = {role: free_port() for role in ROLES}
    standby_ports = {role: free_port() for role in ROLES}
    env = {
        "ETCD_ENDPOINTS": etcd_endpoint,
        "ETCD_PEER_PORT": str(free_port()),
        "ETCD_DATA_DIR": str(tmp_path / "etcd"),
        "CLUSTER_LOG_DIR": str(log_dir),
        "MILVUS_RUN_DIR": str(run_dir),
        "ETCD_ROOT_PATH": etcd_prefix,
        "COMMON_SESSION_TTL": str(TTL),
        "START_TIMEOUT": "20",
        "STOP_TIMEOUT": "10",
    }
    for role in ROLES:
        section = ENV_SECTION[role]
        env[f"{section}_PORT"] = str(ports[role])
        env[f"STANDBY_{section}_PORT"] = str(standby_ports[role])
        # The HTTP ports (health, metrics) too, once the processes have them: never 9101... here.
        env[f"{section}_HTTP_PORT"] = str(free_port())
        env[f"STANDBY_{section}_HTTP_PORT"] = str(free_port())
    made = Cluster(clean_env(env), run_dir, log_dir, etcd_endpoint, etcd_prefix, ports, standby_ports)
    try:
        yield made
    finally:
        for pid in our_pids(run_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def status(scripts: Cluster) -> list[dict[str, object]]:
    code, out, err, _ = await run_cli(["status", "--json"], scripts.env)
    assert code == 0, out + err
    rows: list[dict[str, object]] = json.loads(out)
    return rows


def states(rows: list[dict[str, object]]) -> dict[str, list[tuple[str, object]]]:
    """role -> sorted (state, address) of its sessions."""
    found: dict[str, list[tuple[str, object]]] = {role: [] for role in ROLES}
    for row in rows:
        found[str(row["role"])].append((str(row["state"]), row["address"]))
    return {role: sorted(rows_) for role, rows_ in found.items()}


async def test_start_standby_stop_rootcoord_hands_over_and_stop_cluster_leaves_nothing(scripts: Cluster) -> None:
    # ---- start: etcd, then an ACTIVE and a STANDBY per role
    code, out = await run_script("start_cluster.sh", ["--standby"], scripts.env, START_TIMEOUT_S)
    assert code == 0, f"{out}\n{scripts.logs()}"
    assert "started etcd (pid " in out
    expected = {
        role: [("ACTIVE", scripts.address(role)), ("STANDBY", scripts.address(role, standby=True))] for role in ROLES
    }
    assert states(await status(scripts)) == expected
    names = sorted([f"{role}.pid" for role in ROLES] + [f"{role}-standby.pid" for role in ROLES] + ["etcd.pid"])
    assert pid_files(scripts.run_dir) == names
    pids = {name: int((scripts.run_dir / name).read_text().split()[0]) for name in names}
    assert sorted(our_pids(scripts.run_dir)) == sorted(pids.values()), "exactly etcd and six coordinators run"

    # ---- start again: harmless, and says so
    code, again = await run_script("start_cluster.sh", ["--standby"], scripts.env, START_TIMEOUT_S)
    assert code == 0, again
    assert "etcd already answers" in again
    for name in names:
        if name != "etcd.pid":
            stem = name.removesuffix(".pid")
            assert re.search(rf"{stem} already running \(pid {pids[name]}, ", again), again
    assert "nothing started" in again and "started " not in again.replace("nothing started", "")
    assert {name: int((scripts.run_dir / name).read_text().split()[0]) for name in names} == pids
    assert sorted(our_pids(scripts.run_dir)) == sorted(pids.values())
    assert states(await status(scripts)) == expected

    # ---- milvus stop rootcoord: the standby holds the ACTIVE key within a second of the command
    async with Etcd3Client([scripts.etcd_endpoint]) as client:
        kv = await holder(client, scripts.root, "rootcoord")
        assert kv is not None and kv.value["Address"] == scripts.address("rootcoord")
        t0 = time.monotonic()
        stop = asyncio.create_task(run_cli(["stop", "rootcoord"], scripts.env))

        async def standby_active() -> float | None:
            kv = await holder(client, scripts.root, "rootcoord")
            if kv is not None and kv.value["Address"] == scripts.address("rootcoord", standby=True):
                return time.monotonic() - t0
            return None

        took = await wait_until(standby_active, timeout=10, interval=0.01, what="the standby to hold the ACTIVE key")
        code, stop_out, stop_err, _ = await stop
    assert code == 0, stop_out + stop_err
    assert re.fullmatch(rf"rootcoord stopped \(pid {pids['rootcoord.pid']}\) in \d+\.\d\d s\n", stop_out), stop_out
    assert took < 1.0, f"handover took {took:.3f} s from `milvus stop rootcoord`"
    print(f"handover after `milvus stop rootcoord`: {took:.3f} s")
    assert not (scripts.run_dir / "rootcoord.pid").exists()
    after = states(await status(scripts))
    assert after["rootcoord"] == [("ACTIVE", scripts.address("rootcoord", standby=True))]

    # ---- stop_cluster: no process of ours, no pid file, and the etcd it started is gone
    code, stopped = await run_script("stop_cluster.sh", [], scripts.env, 60)
    assert code == 0, stopped
    for role in ("querycoord", "datacoord"):  # standbys first: no pointless takeover on the way out
        standby_done = _log_time(scripts.log_dir / f"{role}-standby.log", "coordinator stopped")
        active_asked = _log_time(scripts.log_dir / f"{role}.log", "stop requested")
        assert standby_done < active_asked, f"{role}: the active was stopped before its standby had exited"
    assert "stopping etcd (pid" in stopped
    assert our_pids(scripts.run_dir) == [], [Path(f"/proc/{p}/cmdline").read_bytes() for p in our_pids(scripts.run_dir)]
    assert pid_files(scripts.run_dir) == []
    assert not Path(f"/proc/{pids['etcd.pid']}").exists() or _is_zombie(pids["etcd.pid"])


def _log_time(path: Path, msg: str) -> datetime:
    """When ``msg`` was logged (the last time) in the log file ``path``."""
    times = [line.time for raw in path.read_text().splitlines() if (line := parse_line(raw)) and line.msg == msg]
    assert times, f"no {msg!r} in {path}:\n{path.read_text()}"
    return times[-1]


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


async def test_start_again_names_a_changed_setting_and_the_etcd_data_is_kept_or_wiped(scripts: Cluster) -> None:
    """The README's traps: a cluster already running with active-standby off while the file now says on
    (before: 'already running', nothing else); etcd's data dir surviving stop and start (before: not
    said, and no way to start from nothing but deleting a directory by hand)."""
    data_dir = Path(scripts.env["ETCD_DATA_DIR"])
    code, out = await run_script("start_cluster.sh", [], scripts.env, START_TIMEOUT_S)
    assert code == 0 and "started etcd (pid " in out and "earlier run's data" not in out, f"{out}\n{scripts.logs()}"

    on = {**scripts.env, "ROOT_COORD_ENABLE_ACTIVE_STANDBY": "true"}
    code, again = await run_script("start_cluster.sh", [], on, START_TIMEOUT_S)
    assert code == 0 and "nothing started" in again, again
    [line] = [ln for ln in again.splitlines() if "runs with active-standby" in ln]
    assert line.startswith("start_cluster: rootcoord ServerID=") and "runs with active-standby off" in line, line
    assert "now says on" in line and "scripts/stop_cluster.sh, then scripts/start_cluster.sh" in line, line

    code, out, err, _ = await run_cli(["rootcoord", "create-collection", "kept"], scripts.env)
    assert code == 0, out + err

    async def collections() -> list[str]:
        code, out, err, _ = await run_cli(["rootcoord", "show-collections"], scripts.env)
        assert code == 0, out + err
        return [c["collection_name"] for c in json.loads(out)["collections"]]

    # Stop and start: the data comes back, and the script says so.
    code, stopped = await run_script("stop_cluster.sh", [], scripts.env, 60)
    assert code == 0 and data_dir.is_dir(), stopped
    code, out = await run_script("start_cluster.sh", [], scripts.env, START_TIMEOUT_S)
    assert code == 0 and f"{data_dir} holds an earlier run's data" in out and "--wipe" in out, out
    assert await collections() == ["kept"]

    # --wipe: the next start begins from nothing.
    code, out = await run_script("stop_cluster.sh", ["--wipe", "--keep-etcd"], scripts.env, 60)
    assert code == 2 and data_dir.is_dir(), out
    code, stopped = await run_script("stop_cluster.sh", ["--wipe"], scripts.env, 60)
    assert code == 0 and f"wiped the etcd data dir {data_dir}" in stopped and not data_dir.exists(), stopped
    code, out = await run_script("start_cluster.sh", [], scripts.env, START_TIMEOUT_S)
    assert code == 0 and "earlier run's data" not in out, out
    assert await collections() == []
    code, stopped = await run_script("stop_cluster.sh", [], scripts.env, 60)
    assert code == 0 and our_pids(scripts.run_dir) == [], stopped
