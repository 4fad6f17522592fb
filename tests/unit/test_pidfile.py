"""Pid files another user could write decide nothing (issue "Hardening", *Pid files and the run directory*).

The attacks, as tried against the earlier code: a local user copied the server and lease IDs from a
root coordinator's world-readable pid file into a forged, unlocked /tmp/milvus/rootcoord-x.pid, and
root's next rootcoord revoked the live ACTIVE's session (its restart fast path scanned /tmp/milvus
too); a coordinator falling back to /tmp/milvus (pre-created 0777 by an attacker) opened its pid file
through the attacker's symbolic link and overwrote the victim's file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import coordinators.runtime.run_dir as run_dirs
from coordinators.runtime.pidfile import PidFile, RunDirError, StaleSession, stale_sessions
from coordinators.server.predecessors import find_dead_predecessors
from harness.etcd_server import EtcdCluster
from harness.session_helpers import connected, new_session

NOBODY = 65534
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: files of another user are made with chown")


def forged(directory: Path, name: str, server_id: int, lease_id: int, address: str) -> Path:
    """An unlocked pid file naming a session, as a dead process (or a forger) leaves one."""
    path = directory / name
    path.write_text(f"4242\nrole=rootcoord\nserver_id={server_id}\nlease_id={lease_id:x}\naddress={address}\n")
    return path


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """The two default run dirs, moved under tmp_path (this machine's own are left alone)."""
    system, fallback = tmp_path / "run-milvus", tmp_path / "tmp-milvus"
    system.mkdir(mode=0o755)
    fallback.mkdir(mode=0o777)
    fallback.chmod(0o777)  # pre-created by anyone, as /tmp/milvus can be
    monkeypatch.setattr(run_dirs, "SYSTEM_RUN_DIR", system)
    monkeypatch.setattr(run_dirs, "FALLBACK_RUN_DIR", fallback)
    monkeypatch.delenv("MILVUS_RUN_DIR", raising=False)
    return system, fallback


@ROOT_ONLY
def test_root_believes_no_pid_file_outside_its_own_run_dir(dirs: tuple[Path, Path]) -> None:
    system, fallback = dirs
    forged(fallback, "rootcoord-x.pid", 1, 0x1234, "localhost:53100")  # the attack: in /tmp/milvus
    assert stale_sessions("rootcoord", env={}) == []
    fallback.chmod(0o755)
    assert stale_sessions("rootcoord", env={}) == []  # even a tidy /tmp/milvus: root reads /run/milvus only
    own = forged(system, "rootcoord-y.pid", 2, 0x99, "localhost:53100")
    assert stale_sessions("rootcoord", env={}) == [StaleSession(own, 2, 0x99, "localhost:53100")]


@ROOT_ONLY
def test_a_pid_file_of_another_user_or_in_a_dir_others_can_write_decides_nothing(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    env = {"MILVUS_RUN_DIR": str(run)}
    theirs = forged(run, "rootcoord-a.pid", 1, 0x10, "h:1")
    os.chown(theirs, NOBODY, NOBODY)
    mine = forged(run, "rootcoord-b.pid", 2, 0x20, "h:2")
    assert stale_sessions("rootcoord", env=env) == [StaleSession(mine, 2, 0x20, "h:2")]
    run.chmod(0o775)  # a group may write there now: nothing in it is believed
    assert stale_sessions("rootcoord", env=env) == []
    with pytest.raises(RunDirError, match=r"writable by other users \(mode 775\).*chmod go-w"):
        PidFile.acquire("rootcoord", "c", env)
    run.chmod(0o755)
    os.chown(run, NOBODY, NOBODY)
    with pytest.raises(RunDirError, match=f"belongs to uid {NOBODY}, not to this user"):
        PidFile.acquire("rootcoord", "c", env)


def test_a_pid_file_is_never_opened_through_a_link_and_is_created_private(tmp_path: Path) -> None:
    run, victim = tmp_path / "run", tmp_path / "victim.conf"
    run.mkdir(mode=0o755)
    victim.write_text("precious\n")
    (run / "rootcoord-x.pid").symlink_to(victim)
    env = {"MILVUS_RUN_DIR": str(run)}
    with pytest.raises(RunDirError, match="is a symbolic link: not followed; remove it"):
        PidFile.acquire("rootcoord", "x", env)
    assert victim.read_text() == "precious\n"
    (run / "rootcoord-y.pid").write_text("1\n")
    (run / "rootcoord-y.pid").chmod(0o644)  # a stale file an earlier version left readable by anyone
    for alias in ("y", "z"):  # taken over, and created
        with PidFile.acquire("rootcoord", alias, env) as mine:
            mine.record(server_id=3, lease_id="ab", address="h:3")
            assert stat.S_IMODE(os.stat(mine.path).st_mode) == 0o600  # its lease ID is nobody else's business


def test_a_fallback_run_dir_another_user_could_write_is_refused_with_the_fix(dirs: tuple[Path, Path],
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _, fallback = dirs
    monkeypatch.setattr(run_dirs, "_usable", lambda path: False)  # /run/milvus not writable: a user's process
    monkeypatch.setattr(os, "geteuid", lambda: os.getuid() if os.getuid() else 1000)
    with pytest.raises(RunDirError) as refused:
        run_dirs.run_dir({})
    assert str(fallback) in str(refused.value) and "set $MILVUS_RUN_DIR" in str(refused.value)


async def test_a_pid_file_proves_a_death_only_where_etcd_agrees_on_the_address(etcd: EtcdCluster,
                                                                                etcd_prefix: str) -> None:
    async with connected(etcd.endpoints) as client, new_session(client, etcd_prefix, address="localhost:7001") as live:
        ids = (live.server_id, live.lease_id)
        for recorded, dead in (("localhost:7002", False), ("localhost:7001", True)):
            record = StaleSession(Path("/run/milvus/rootcoord-x.pid"), *ids, recorded)
            found = await find_dead_predecessors(client, f"{etcd_prefix}/meta", "rootcoord", hostname=live.hostname,
                                                 bound_address="localhost:9", stale={ids: record}, own_server_id=0)
            assert bool(found) == dead, (recorded, found)
