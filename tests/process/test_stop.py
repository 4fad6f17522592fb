"""Pid files and ``milvus stop``: one process per role and alias on a host, stopped by name.

Why whole processes: the lock lives as long as the process holding it and dies with it however it
dies; ``milvus stop`` signals a process that is not its child and watches ``/proc`` for its exit.
Every test has its own ``MILVUS_RUN_DIR`` under ``tmp_path``, so it never sees a real cluster's pid
files nor another test's.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from etcd3aio import Etcd3Client

from harness.etcd_server import free_port
from harness.procs import (
    ENV_SECTION,
    MilvusProcess,
    active_key,
    all_keys,
    get_kv,
    holder,
    run_cli,
    sessions,
    wait_for_active,
    wait_for_log,
    wait_for_serving,
    wait_until,
)

pytestmark = pytest.mark.process

ALREADY_RUNNING = 8
NOT_RUNNING = 9

Start = Callable[..., MilvusProcess]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "run"


@pytest.fixture
def env(base_env: dict[str, str], run_dir: Path) -> dict[str, str]:
    """The test's etcd root and timings, and its own pid file directory."""
    return {**base_env, "MILVUS_RUN_DIR": str(run_dir)}


@pytest.fixture
def start(env: dict[str, str], tmp_path: Path) -> Iterator[Start]:
    """Factory: ``start("rootcoord", alias="")`` runs ``milvus run`` (active-standby on); all killed after."""
    started: list[MilvusProcess] = []

    def go(role: str = "rootcoord", alias: str = "") -> MilvusProcess:
        port = free_port()
        section = ENV_SECTION[role]
        proc_env = {**env, **own_ports(role, port), f"{section}_ENABLE_ACTIVE_STANDBY": "true"}
        args = ["run", role, *(["--alias", alias] if alias else [])]
        log = tmp_path / f"{role}-{alias or 'noalias'}-{len(started)}.log"
        proc = MilvusProcess(args, proc_env, log, port=port)
        started.append(proc)
        return proc

    yield go
    for proc in started:
        proc.kill()


def own_ports(role: str, port: int | None = None) -> dict[str, str]:
    """A gRPC port and an HTTP (health, metrics) port of its own for one process."""
    section = ENV_SECTION[role]
    return {f"{section}_PORT": str(port or free_port()), f"{section}_HTTP_PORT": str(free_port())}


def locked(path: Path) -> bool:
    """Whether some process holds the flock of ``path`` (we try to take it, and let go at once)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def pid_in(path: Path) -> int:
    """The pid on the file's first line (the facts the process recorded follow it)."""
    return int(path.read_text().split("\n", 1)[0])


def facts_in(path: Path) -> dict[str, str]:
    """The ``key=value`` lines after the pid (a line caught half-written is left out)."""
    return dict(line.split("=", 1) for line in path.read_text().splitlines()[1:] if "=" in line)


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


async def test_run_writes_its_pid_holds_the_lock_and_removes_it_at_exit(
    start: Start, etcd_client: Etcd3Client, etcd_prefix: str, run_dir: Path
) -> None:
    proc = start("rootcoord")
    await wait_for_active(etcd_client, etcd_prefix, "rootcoord", proc)
    path = run_dir / "rootcoord.pid"
    assert pid_in(path) == proc.pid
    assert locked(path), "milvus run must hold the lock of its pid file while it runs"
    await wait_for_log(proc, lambda ls: any(ln.msg == "pid file locked" and ln.fields.get("path") == str(path)
                                            for ln in ls), 10, "the pid file line")  # the log's thread writes it
    proc.signal(signal.SIGTERM)  # a clean exit, without `milvus stop`: the process removes its own file
    assert await proc.wait(10) == 0
    assert not path.exists()


async def test_second_run_without_alias_starts_under_an_automatic_pid_file_and_reuses_a_stale_one(
    start: Start, etcd_client: Etcd3Client, etcd_prefix: str, run_dir: Path
) -> None:
    """Milvus's procedure starts a second ``milvus run rootcoord`` as is: it must start, not exit 8."""
    first = start("rootcoord")
    await wait_for_serving(first, "rootcoord")
    second, third = start("rootcoord"), start("rootcoord")
    await wait_until(lambda: _count_sessions(etcd_client, etcd_prefix, 3), timeout=10, what="three rootcoord sessions")
    assert first.running() and second.running() and third.running()
    by_pid = {pid_in(run_dir / name): name for name in ("rootcoord.pid", "rootcoord-2.pid", "rootcoord-3.pid")}
    assert by_pid[first.pid] == "rootcoord.pid" and {by_pid[second.pid], by_pid[third.pid]} == {
        "rootcoord-2.pid", "rootcoord-3.pid"}
    for proc in (second, third):
        path = run_dir / by_pid[proc.pid]
        assert locked(path)
        line = next(ln for ln in proc.lines() if ln.msg == "pid file locked")
        assert line.fields["path"] == str(path) and line.fields["automatic"] == "true", line
        assert f"rootcoord.pid (pid {first.pid})" in line.fields["reason"], line
    # Each records what it is and, once registered, the session it holds (a restart reads it). The
    # record follows the registration in etcd: wait for it (bounded) rather than race it.
    own = await sessions(etcd_client, etcd_prefix, "rootcoord")
    expected: dict[Path, dict[str, str]] = {}
    for proc in (first, second, third):
        session = next(kv for kv in own.values() if kv.value["Address"] == proc.address)
        expected[run_dir / by_pid[proc.pid]] = {
            "role": "rootcoord", "alias": "", "server_id": str(session.value["ServerID"]),
            "lease_id": f"{session.lease:x}", "address": proc.address}
    await wait_until(lambda: all(facts_in(path) == facts for path, facts in expected.items()), timeout=10,
                     what="each process to record its session in its pid file")

    first.kill()  # SIGKILL: rootcoord.pid stays behind, unlocked
    fourth = start("rootcoord")
    await wait_until(lambda: _holds(run_dir / "rootcoord.pid", fourth.pid), timeout=10,
                     what="the fourth process to reuse the stale rootcoord.pid")
    assert not (run_dir / "rootcoord-4.pid").exists()


async def test_second_run_of_the_same_alias_is_refused_and_a_number_is_no_alias(
    start: Start, env: dict[str, str], etcd_client: Etcd3Client, etcd_prefix: str, run_dir: Path
) -> None:
    first = start("rootcoord", "a")
    await wait_for_serving(first, "rootcoord")
    active_before = await holder(etcd_client, etcd_prefix, "rootcoord")
    keys_before = await all_keys(etcd_client, etcd_prefix)
    path = run_dir / "rootcoord-a.pid"

    second_env = {**env, **own_ports("rootcoord"), "ROOT_COORD_ENABLE_ACTIVE_STANDBY": "true"}
    code, out, err, took = await run_cli(["run", "rootcoord", "--alias", "a"], second_env)

    assert code == ALREADY_RUNNING, out + err
    assert lines(err) == [
        f"milvus: rootcoord (alias a) is already running on this host (pid {first.pid}, pid file {path}); "
        "use --alias to run another"
    ], err
    assert out == "" and took < 5
    # The first is undisturbed: running, still ACTIVE in the same term, its pid file intact and held.
    assert first.running()
    assert await holder(etcd_client, etcd_prefix, "rootcoord") == active_before
    assert await all_keys(etcd_client, etcd_prefix) == keys_before  # the second never reached etcd
    assert pid_in(path) == first.pid and locked(path)

    code, out, err, _ = await run_cli(["run", "rootcoord", "--alias", "2"], second_env)
    assert code == 2 and lines(err) == [
        "milvus: invalid --alias '2': numbers name the automatic pid files of processes started without --alias "
        "(<role>-2.pid...); choose a name with a letter in it"], err
    assert await all_keys(etcd_client, etcd_prefix) == keys_before


async def test_alias_allows_a_second_process_and_is_locked_too(
    start: Start, env: dict[str, str], etcd_client: Etcd3Client, etcd_prefix: str, run_dir: Path
) -> None:
    active = start("rootcoord")
    await wait_for_active(etcd_client, etcd_prefix, "rootcoord", active)
    standby = start("rootcoord", "standby")
    await wait_until(lambda: _count_sessions(etcd_client, etcd_prefix, 2), timeout=10, what="two rootcoord sessions")
    assert active.running() and standby.running()
    assert pid_in(run_dir / "rootcoord.pid") == active.pid
    assert pid_in(run_dir / "rootcoord-standby.pid") == standby.pid
    assert locked(run_dir / "rootcoord-standby.pid")

    third_env = {**env, **own_ports("rootcoord"), "ROOT_COORD_ENABLE_ACTIVE_STANDBY": "true"}
    code, out, err, _ = await run_cli(["run", "rootcoord", "--alias", "standby"], third_env)
    assert code == ALREADY_RUNNING, out + err
    assert f"rootcoord (alias standby) is already running on this host (pid {standby.pid}, " in err
    assert standby.running() and len(await sessions(etcd_client, etcd_prefix, "rootcoord")) == 2


async def _count_sessions(client: Etcd3Client, root: str, n: int) -> bool:
    return len(await sessions(client, root, "rootcoord")) == n


async def test_stop_stops_gracefully_and_says_how_long_it_took(
    start: Start, env: dict[str, str], etcd_client: Etcd3Client, etcd_prefix: str, run_dir: Path
) -> None:
    proc = start("rootcoord")
    await wait_for_serving(proc, "rootcoord")
    assert len(await sessions(etcd_client, etcd_prefix, "rootcoord")) == 1

    code, out, err, _ = await run_cli(["stop", "rootcoord"], env)

    assert code == 0, out + err
    assert proc.popen.poll() == 0, "the command returned before the process had exited"
    match = re.fullmatch(rf"rootcoord stopped \(pid {proc.pid}\) in (\d+\.\d\d) s\n", out)
    assert match is not None, out
    assert float(match[1]) < 5.0 and err == ""
    # Checked at once, no waiting: the stop revoked the session before the command returned.
    assert await sessions(etcd_client, etcd_prefix, "rootcoord") == {}
    assert await get_kv(etcd_client, active_key(etcd_prefix, "rootcoord")) is None
    assert not (run_dir / "rootcoord.pid").exists()
    assert await proc.wait(5) == 0


async def test_stop_without_alias_stops_every_process_started_without_one_and_no_other(
    start: Start, env: dict[str, str], etcd_client: Etcd3Client, etcd_prefix: str, run_dir: Path
) -> None:
    first = start("rootcoord")
    await wait_for_serving(first, "rootcoord")
    second, named = start("rootcoord"), start("rootcoord", "x")
    await wait_until(lambda: _count_sessions(etcd_client, etcd_prefix, 3), timeout=10, what="three rootcoord sessions")
    assert (run_dir / "rootcoord-2.pid").exists()

    code, out, err, _ = await run_cli(["stop", "rootcoord"], env)

    assert code == 0, out + err
    stopped = re.findall(r"^rootcoord stopped \(pid (\d+)\) in (\d+\.\d\d) s$", out, re.MULTILINE)
    assert sorted(int(pid) for pid, _s in stopped) == sorted([first.pid, second.pid]) and len(lines(out)) == 2, out
    assert err == "" and all(float(s) < 5 for _p, s in stopped)
    assert first.popen.poll() == 0 and second.popen.poll() == 0
    assert not (run_dir / "rootcoord.pid").exists() and not (run_dir / "rootcoord-2.pid").exists()
    assert named.running() and locked(run_dir / "rootcoord-x.pid")  # started with an alias: not stopped
    await wait_for_active(etcd_client, etcd_prefix, "rootcoord", named)

    code, out, err, _ = await run_cli(["stop", "rootcoord"], env)
    assert code == NOT_RUNNING and out == "", out + err
    code, out, err, _ = await run_cli(["stop", "rootcoord", "--alias", "x"], env)
    assert code == 0 and re.fullmatch(rf"rootcoord \(alias x\) stopped \(pid {named.pid}\) in \d+\.\d\d s\n", out), out


async def test_stop_alias_number_stops_that_automatic_process_only(
    start: Start, env: dict[str, str], etcd_client: Etcd3Client, etcd_prefix: str, run_dir: Path
) -> None:
    first = start("querycoord")
    await wait_for_serving(first, "querycoord")
    second = start("querycoord")
    await wait_until(lambda: _holds(run_dir / "querycoord-2.pid", second.pid), timeout=10, what="querycoord-2.pid")

    code, out, err, _ = await run_cli(["stop", "querycoord", "--alias", "2"], env)

    assert code == 0, out + err
    assert re.fullmatch(rf"querycoord stopped \(pid {second.pid}\) in \d+\.\d\d s\n", out), out
    assert second.popen.poll() == 0 and first.running()


async def test_stop_of_a_role_not_running_is_a_clear_error(
    start: Start, env: dict[str, str], etcd_client: Etcd3Client, etcd_prefix: str, run_dir: Path
) -> None:
    other = start("rootcoord", "other")  # same role, another alias: must not be the one stopped
    await wait_for_active(etcd_client, etcd_prefix, "rootcoord", other)

    code, out, err, _ = await run_cli(["stop", "rootcoord"], env)
    assert code == NOT_RUNNING, out + err
    assert out == ""
    assert lines(err) == [
        f"milvus stop: no pid file for rootcoord at {run_dir / 'rootcoord.pid'}: is it running on this host?"
    ]

    code, out, err, _ = await run_cli(["stop", "querycoord", "--alias", "x"], env)
    assert code == NOT_RUNNING, out + err
    assert lines(err) == [
        f"milvus stop: no pid file for querycoord (alias x) at {run_dir / 'querycoord-x.pid'}: "
        "is it running on this host?"
    ]
    assert other.running() and locked(run_dir / "rootcoord-other.pid")

    code, out, err, _ = await run_cli(["stop", "indexcoord"], env)
    assert code == 2 and "unknown role 'indexcoord'" in err and "Traceback" not in err


async def test_stale_pid_file_is_reported_and_removed(env: dict[str, str], run_dir: Path) -> None:
    run_dir.mkdir()
    path = run_dir / "datacoord.pid"
    pid = dead_pid()
    path.write_text(f"{pid}\n")

    code, out, err, _ = await run_cli(["stop", "datacoord"], env)

    assert code == NOT_RUNNING, out + err
    assert out == ""
    assert lines(err) == [f"milvus stop: stale pid file {path} (process {pid} is gone); removed"]
    assert not path.exists()


async def test_pid_file_of_a_sigkilled_process_is_stale_and_does_not_block_a_restart(
    start: Start, env: dict[str, str], etcd_client: Etcd3Client, etcd_prefix: str, run_dir: Path
) -> None:
    proc = start("querycoord")
    await wait_for_active(etcd_client, etcd_prefix, "querycoord", proc)
    path = run_dir / "querycoord.pid"
    proc.kill()  # SIGKILL: no clean exit, the file stays; the kernel dropped the lock
    assert path.exists() and pid_in(path) == proc.pid and not locked(path)

    # A restart takes the stale file over: a crash never blocks the next `milvus run`.
    again = start("querycoord")
    await wait_until(lambda: _holds(path, again.pid), timeout=10, what="the restarted process to hold the pid file")
    again.kill()

    code, out, err, _ = await run_cli(["stop", "querycoord"], env)
    assert code == NOT_RUNNING, out + err
    assert lines(err) == [f"milvus stop: stale pid file {path} (process {again.pid} is gone); removed"]
    assert not path.exists()


async def _holds(path: Path, pid: int) -> bool:
    return path.exists() and pid_in(path) == pid and locked(path)


# --------------------------------------------------------------------------- a process that will not stop

# Holds the pid file like `milvus run` does, ignores SIGTERM; argv[1:] is what its command line shows.
_STUBBORN = textwrap.dedent(
    """
    import fcntl, os, signal, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    fd = os.open(os.environ["PIDFILE"], os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, f"{os.getpid()}\\n".encode())
    print("locked", flush=True)
    time.sleep(60)
    """
)


@pytest.fixture
def stubborn(run_dir: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Factory: a process locking ``<run dir>/<name>.pid`` and ignoring SIGTERM, shown as ``argv``."""
    procs: list[subprocess.Popen[str]] = []

    def go(name: str, *argv: str) -> subprocess.Popen[str]:
        run_dir.mkdir(exist_ok=True)
        proc = subprocess.Popen(
            [sys.executable, "-c", _STUBBORN, *argv],
            env={**os.environ, "PIDFILE": str(run_dir / f"{name}.pid")},
            stdout=subprocess.PIPE, text=True, start_new_session=True,
        )
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
        return proc

    yield go
    for proc in procs:
        proc.kill()
        proc.wait()


async def test_stop_times_out_without_killing_unless_told(
    stubborn: Callable[..., subprocess.Popen[str]], env: dict[str, str], run_dir: Path
) -> None:
    proc = stubborn("rootcoord-b", "/opt/x/bin/milvus", "run", "rootcoord", "--alias", "b")

    code, out, err, _took = await run_cli(["stop", "rootcoord", "--alias", "b", "--timeout", "0.5"], env)
    assert code == 1, out + err
    assert lines(err) == [
        f"milvus stop: rootcoord (alias b) (pid {proc.pid}) is still running 0.5 s after SIGTERM; "
        "not killed (use --kill to SIGKILL it)"
    ]
    assert proc.poll() is None and (run_dir / "rootcoord-b.pid").exists()

    code, out, err, _ = await run_cli(["stop", "rootcoord", "--alias", "b", "--timeout", "0.3", "--kill"], env)
    assert code == 1, out + err
    assert "killed with SIGKILL" in err
    assert proc.wait(5) == -signal.SIGKILL
    assert not (run_dir / "rootcoord-b.pid").exists()


async def test_stop_refuses_to_signal_a_process_that_is_not_the_role(
    stubborn: Callable[..., subprocess.Popen[str]], env: dict[str, str], run_dir: Path
) -> None:
    """A locked pid file naming something else (``milvus run querycoord``): never signalled."""
    proc = stubborn("rootcoord", "/opt/x/bin/milvus", "run", "querycoord")
    code, out, err, _ = await run_cli(["stop", "rootcoord", "--timeout", "0.5"], env)
    assert code == 1, out + err
    assert "not signalling it" in err and f"names process {proc.pid}" in err
    assert proc.poll() is None and (run_dir / "rootcoord.pid").exists()


async def test_unwritable_run_dir_is_a_clear_error(env: dict[str, str], tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, out, err, _ = await run_cli(["run", "rootcoord"], {**env, "MILVUS_RUN_DIR": str(blocker / "run")})
    assert code == 2, out + err
    assert lines(err) == [
        f"milvus: cannot create the pid file directory {blocker / 'run'} (from $MILVUS_RUN_DIR): Not a directory"
    ]


async def test_bad_alias_is_a_usage_error(env: dict[str, str]) -> None:
    for args in (["run", "rootcoord", "--alias", "../x"], ["stop", "rootcoord", "--alias", "a/b"]):
        code, out, err, _ = await run_cli(args, env)
        assert code == 2, (args, out, err)
        assert "invalid --alias" in err and "Traceback" not in out + err
