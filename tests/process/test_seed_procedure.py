"""The Milvus page's *With Mac/Linux shell* procedure, with its commands unchanged, for each role.

The page: enable active-standby in ``milvus.yaml``, start the cluster, change only the role's
``port`` in that file, ``nohup milvus run rootcoord > /tmp/rootcoord2.log 2>&1 &``, check with
``ps aux`` that two processes run, watch the standby's ten-second line, kill the active one and
read the takeover in the second log. Here on a copy of ``config/milvus.yaml`` (``MILVUSCONF``) that
points at the test's etcd; the only other edit is a short TTL, so that ``kill -9`` is followed by a
takeover within seconds (the default 60 s TTL is the crash fast path's business). The standby log
interval keeps its default: the ten-second line is part of the page.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml
from etcd3aio import Etcd3Client

from harness.etcd_server import EtcdCluster, free_port
from harness.procs import (
    MILVUS,
    REPO,
    LogLine,
    active_key,
    clean_env,
    find_in_order,
    get_kv,
    parse_line,
    run_cli,
    sessions,
    wait_until,
)

pytestmark = pytest.mark.process

SECTIONS = {"rootcoord": "rootCoord", "querycoord": "queryCoord", "datacoord": "dataCoord"}


def shell(command: str, env: dict[str, str]) -> int:
    """Run one line as the page does, in a shell; the pid of the background job (``$!``)."""
    done = subprocess.run(["bash", "-c", f"{command} echo $!"], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=10, check=True)
    return int(done.stdout.split()[-1])


def ps_milvus_run(role: str, pids: Sequence[int]) -> list[str]:
    """``ps aux`` lines of ``milvus run <role>`` among the processes ``pids`` (the test's own: a cluster
    the user runs beside the suite, as the README's first command leaves, is not counted).

    Without ``COLUMNS`` (pytest's terminal sets it), as in a shell: ps would cut lines at that width.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    out = subprocess.run(["ps", "aux"], capture_output=True, text=True, timeout=10, check=True, env=env).stdout
    return [
        line for line in out.splitlines()
        if re.search(rf"milvus run {role}( |$)", line) and int(line.split()[1]) in pids
    ]


def log_lines(path: Path) -> list[LogLine]:
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    return [line for raw in text.splitlines() if (line := parse_line(raw)) is not None]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.parametrize("role", list(SECTIONS))
async def test_the_pages_shell_procedure_verbatim(
    role: str, etcd: EtcdCluster, etcd_prefix: str, etcd_client: Etcd3Client, tmp_path: Path
) -> None:
    section = SECTIONS[role]
    config = yaml.safe_load((REPO / "config" / "milvus.yaml").read_text())
    first_port, http_port = free_port(), free_port()
    config["etcd"]["endpoints"] = etcd.endpoints
    config["etcd"]["rootPath"] = etcd_prefix
    config["common"]["session"]["ttl"] = 3
    config[section]["port"] = first_port
    config[section]["httpPort"] = http_port
    config[section]["activeStandby"] = {"enabled": True}  # the page's (and Helm's) spelling
    conf = tmp_path / "milvus.yaml"
    conf.write_text(yaml.safe_dump(config, sort_keys=False))
    env = clean_env({"MILVUSCONF": str(conf), "MILVUS_RUN_DIR": str(tmp_path / "run"),
                     "PATH": f"{Path(MILVUS).parent}:{os.environ['PATH']}"})
    del env["ROOT_COORD_HTTP_PORT"], env["QUERY_COORD_HTTP_PORT"], env["DATA_COORD_HTTP_PORT"]  # the file decides
    first_log, second_log = tmp_path / f"{role}.log", tmp_path / f"{role}2.log"
    pids: list[int] = []
    try:
        pids.append(shell(f"nohup milvus run {role} > {first_log} 2>&1 &", env))
        key = active_key(etcd_prefix, role)

        async def first_active() -> bool:
            kv = await get_kv(etcd_client, key)
            return kv is not None and kv.value["Address"] == f"localhost:{first_port}"

        await wait_until(first_active, timeout=15, what=f"the first {role} to be ACTIVE")

        # Step 2: change only the role's port in milvus.yaml (53100 -> 53001 on the page).
        second_port = free_port()
        text = conf.read_text()
        edited = text.replace(f"port: {first_port}\n", f"port: {second_port}\n", 1)
        assert edited != text and edited.count(f"port: {second_port}") == 1
        conf.write_text(edited)

        # Step 3: start the standby coordinator, exactly as the page does.
        t_second = time.monotonic()
        pids.append(shell(f"nohup milvus run {role} > {second_log} 2>&1 &", env))

        async def two_sessions() -> bool:
            assert alive(pids[1]), second_log.read_text()
            return len(await sessions(etcd_client, etcd_prefix, role)) == 2

        await wait_until(two_sessions, timeout=15, what="two sessions")
        running = ps_milvus_run(role, pids)
        assert len(running) == 2 and {int(line.split()[1]) for line in running} == set(pids), running

        # The standby says so, and again every ten seconds.
        async def ten_second_line() -> list[LogLine] | None:
            lines = log_lines(second_log)
            return lines if any(ln.msg == f"serverName: {role} is in STANDBY ..." for ln in lines) else None

        lines = await wait_until(ten_second_line, timeout=25, interval=0.2, what="the ten-second STANDBY line")
        find_in_order(lines, [
            lambda ln: ln.msg == f"serverName: {role} enter STANDBY mode",
            lambda ln: ln.msg == f"ACTIVE {role} has already been registered",
            lambda ln: ln.msg == f"serverName: {role} is in STANDBY ...",
        ])
        waited = time.monotonic() - t_second
        assert waited >= 9.5, f"the STANDBY line came after {waited:.1f}s, not ten"
        assert any(ln.level == "WARN" and ln.msg.startswith("HTTP port is already in use") for ln in lines)
        assert next(ln for ln in lines if ln.msg == "pid file locked").fields["path"].endswith(f"/{role}-2.pid")

        # Step 4: kill the active one; the standby's log shows the page's takeover lines.
        os.kill(pids[0], signal.SIGKILL)

        async def took_over() -> list[LogLine] | None:
            found = log_lines(second_log)
            return found if any(ln.msg == f"{role} is ACTIVE and serving" for ln in found) else None

        lines = await wait_until(took_over, timeout=15, interval=0.1, what="the takeover")
        kill_index = len([ln for ln in lines if ln.msg == f"serverName: {role} is in STANDBY ..."])
        steps = find_in_order(lines, [
            lambda ln: ln.msg == "watch the ACTIVE key" and ln.fields.get("DELETE", "").startswith(f'key:"{key}" mod_revision:'),
            lambda ln: ln.msg == "stop watching ACTIVE key",
            lambda ln: ln.msg == "start retrying to register as ACTIVE service...",
            lambda ln: ln.msg == "register ACTIVE service successfully",
            lambda ln: ln.msg == "quit STANDBY mode, this node will become ACTIVE",
            lambda ln: ln.msg == f"{role} switch from standby to active, activating",
            lambda ln: ln.msg == f"{role} is ACTIVE and serving",
        ])
        assert kill_index >= 1 and steps[-1].fields["address"] == f"localhost:{second_port}"

        # milvus stop <role> stops the one left; nothing of the role remains.
        code, out, err, _ = await run_cli(["stop", role], env)
        assert code == 0, out + err
        assert re.fullmatch(rf"{role} stopped \(pid {pids[1]}\) in \d+\.\d\d s\n", out), out
        stale = tmp_path / "run" / f"{role}.pid"  # the SIGKILLed one's file, removed on the way
        assert err == f"milvus stop: stale pid file {stale} (process {pids[0]} is gone); removed\n", err
        assert not alive(pids[1]) and ps_milvus_run(role, pids) == []
        assert await sessions(etcd_client, etcd_prefix, role) == {} and await get_kv(etcd_client, key) is None
        assert list((tmp_path / "run").iterdir()) == []
        code, out, err, _ = await run_cli(["stop", role], env)
        assert code == 9 and "no pid file" in err, out + err
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
