"""The ``milvus`` command's failures an operator meets first: each a clear message and its own exit code.

Why through the console script: exit codes and "no traceback" are properties of the installed
command, not of ``main()``; a wrong code breaks supervisors (systemd, k8s restart policies)
and a traceback hides the one line that says what to fix.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from harness.etcd_server import EtcdCluster, free_port
from harness.procs import MILVUS, clean_env, run_cli
from harness.session_helpers import connected

pytestmark = pytest.mark.process


def _nonblank(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _unreachable_env() -> tuple[str, dict[str, str]]:
    """An etcd endpoint nobody listens on (a free port), two attempts only."""
    endpoint = f"127.0.0.1:{free_port()}"
    return endpoint, clean_env(
        {
            "ETCD_ENDPOINTS": endpoint,
            "COMMON_SESSION_RETRY_TIMES": "2",
            "ROOT_COORD_PORT": str(free_port()),
        }
    )


async def test_unknown_role_exits_2_with_one_line() -> None:
    code, out, err, _ = await run_cli(["run", "indexcoord"], clean_env({}))
    assert code == 2
    assert out == ""
    assert len(_nonblank(err)) == 1, err
    assert "indexcoord" in err and "rootcoord" in err  # names the typo and what is expected
    assert "Traceback" not in err


async def test_usage_errors_exit_2() -> None:
    for args in ([], ["run"], ["frobnicate"], ["status", "--bogus"]):
        code, out, err, _ = await run_cli(args, clean_env({}))
        assert code == 2, (args, out, err)
        assert "Traceback" not in out + err


async def test_broken_yaml_exits_2_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("etcd:\n  endpoints: [localhost:2379\n  rootPath: x\n", encoding="utf-8")
    code, out, err, _ = await run_cli(["run", "rootcoord", "--config", str(bad)], clean_env({}))
    assert code == 2, out + err
    assert str(bad) in err
    assert len(_nonblank(err)) == 1, err
    assert "Traceback" not in out + err


async def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    code, out, err, _ = await run_cli(["status", "--config", str(missing)], clean_env({}))
    assert code == 2 and str(missing) in err and "Traceback" not in out + err


async def test_ttl_too_small_exits_2_naming_the_key() -> None:
    code, out, err, _ = await run_cli(["run", "rootcoord"], clean_env({"COMMON_SESSION_TTL": "1"}))
    assert code == 2, out + err
    assert "common.session.ttl" in err and "COMMON_SESSION_TTL" in err, err
    assert len(_nonblank(err)) == 1, err
    assert "Traceback" not in out + err


async def test_unreachable_etcd_exits_3_naming_the_endpoint() -> None:
    endpoint, env = _unreachable_env()
    t0 = time.monotonic()
    code, out, err, elapsed = await run_cli(["run", "rootcoord"], env, timeout=30)
    output = out + err
    assert code == 3, output
    assert elapsed < 15, f"took {elapsed:.1f}s to give up"
    assert endpoint in output
    # One line per attempt, then the final error; the first says how long it keeps trying, and the setting.
    assert output.count("etcd not reachable") == 2, output
    assert output.count("[setting=\"common.session.retryTimes=2 (COMMON_SESSION_RETRYTIMES)\"]") == 1, output
    assert "[retryingFor=" in output, output
    assert "etcd is unreachable" in output
    assert "Traceback" not in output
    assert time.monotonic() - t0 < 20


async def test_role_command_with_unreachable_etcd_exits_3_at_once() -> None:
    """Before: it looked for an ACTIVE member for its whole --timeout, then said 'no ACTIVE rootcoord
    appeared in time; last error: none', exit 1. ``--timeout`` after the action is accepted too."""
    endpoint, env = _unreachable_env()
    code, out, err, elapsed = await run_cli(["rootcoord", "show-collections", "--timeout", "30"], env, timeout=40)
    assert code == 3, out + err
    assert out == "" and len(_nonblank(err)) == 1, err
    assert f"cannot reach etcd at {endpoint}" in err and "connection refused" in err, err
    assert elapsed < 10, f"took {elapsed:.1f}s to say etcd is unreachable"


async def test_a_closed_stdout_ends_the_command_quietly(etcd: EtcdCluster, etcd_prefix: str) -> None:
    """`milvus status --json | head -1` where head has gone: no BrokenPipeError traceback; the exit
    status of a Unix tool killed by SIGPIPE (128 + 13)."""
    env = clean_env({"ETCD_ENDPOINTS": etcd.endpoints_csv, "ETCD_ROOT_PATH": etcd_prefix})
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will read: the command's first write fails with EPIPE
    try:
        proc = await asyncio.create_subprocess_exec(
            MILVUS, "status", "--json", env=env, stdin=subprocess.DEVNULL, stdout=write_end, stderr=subprocess.PIPE,
        )
    finally:
        os.close(write_end)
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 128 + signal.SIGPIPE, err
    assert err == b"", err


async def test_garbage_at_the_server_id_counter_exits_7_at_once_naming_the_key(
    etcd: EtcdCluster, etcd_prefix: str
) -> None:
    """Before: retried 30 times (~90 s), then exit 7. A value that cannot be parsed is no transient error."""
    key = f"{etcd_prefix}/meta/session/id"
    async with connected(etcd.endpoints) as client:
        await client.put(key, b"not-a-number")
        env = clean_env({"ETCD_ENDPOINTS": etcd.endpoints_csv, "ETCD_ROOT_PATH": etcd_prefix,
                         "ROOT_COORD_PORT": str(free_port())})
        code, out, err, elapsed = await run_cli(["run", "rootcoord"], env, timeout=60)
        assert code == 7, out + err
        assert elapsed < 15, f"took {elapsed:.1f}s"
        assert key in out + err and "could not register the session" not in out + err, out + err
        assert (await client.get(key)).kvs[0].value == b"not-a-number"  # never overwritten


async def test_status_unreachable_etcd_exits_3() -> None:
    endpoint, env = _unreachable_env()
    code, out, err, elapsed = await run_cli(["status", "--json"], env, timeout=30)
    assert code == 3, out + err
    assert out == ""  # nothing a script could mistake for a (empty) listing
    assert "cannot read sessions from etcd" in err and endpoint in err, err
    assert elapsed < 15
    assert "Traceback" not in out + err


async def test_status_of_an_empty_cluster(etcd: EtcdCluster, etcd_prefix: str) -> None:
    env = clean_env({"ETCD_ENDPOINTS": etcd.endpoints_csv, "ETCD_ROOT_PATH": etcd_prefix})
    code, out, err, _ = await run_cli(["status", "--json"], env)
    assert code == 0, err
    assert json.loads(out) == []
    code, out, err, _ = await run_cli(["status"], env)
    assert code == 0 and "(no sessions)" in out, out + err


async def test_unwritable_log_directory_exits_2_before_anything_starts(tmp_path: Path) -> None:
    """``log.file.rootPath`` under a regular file (root ignores permission bits): one line, exit 2,
    no pid file taken, nothing registered (etcd is not even contacted)."""
    blocker = tmp_path / "afile"
    blocker.write_text("", encoding="utf-8")
    _endpoint, env = _unreachable_env()
    env.update({"LOG_FILE_ROOT_PATH": str(blocker / "logs"), "MILVUS_RUN_DIR": str(tmp_path / "run")})
    code, out, err, seconds = await run_cli(["run", "rootcoord"], env)
    assert code == 2, out + err
    assert len(_nonblank(err)) == 1 and str(blocker / "logs") in err, err
    assert "Traceback" not in out + err
    assert not list((tmp_path / "run").glob("*.pid")) if (tmp_path / "run").exists() else True
    assert seconds < 5  # it did not try the (unreachable) etcd first


def test_the_start_up_retries_last_about_80_seconds_by_default() -> None:
    """What README.md and the first 'etcd not reachable' line say of common.session.retryTimes=30."""
    from coordinators.config import load_config
    from coordinators.server.links import retry_delay, retry_span

    assert load_config(env={}).session.retry_times == 30
    assert retry_span(30) == 79.5
    assert [retry_delay(a) for a in (1, 2, 6, 29)] == [0.5, 1.0, 3.0, 3.0]
