"""Helpers for tests that run whole ``milvus`` processes: start, signal, read logs, poll etcd.

Why a separate module: ``test_process.py`` and ``test_cli.py`` both start the console script with a
controlled environment, and both must never leave a process behind. Everything that waits has a
deadline; etcd is polled directly (a ``milvus status`` call costs a Python start-up).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from etcd3aio import Etcd3Client

from coordinators.registry import ROLE_SPECS
from harness.session_helpers import wait_until

T = TypeVar("T")

#: Timings every process test uses: failovers and log lines come quickly.
TTL = 3
STANDBY_LOG_INTERVAL = 0.5

REPO = Path(__file__).resolve().parents[2]
MILVUS = str(Path(sys.executable).parent / "milvus")

#: Environment-variable prefix of each role's section (Milvus's rule: rootCoord.port <- ROOT_COORD_PORT).
ENV_SECTION = {name: s.env_prefix for name, s in ROLE_SPECS.items()}

# Variables that would reach the config (Milvus's matching rule compares names lower-cased with
# `_`, `.`, `/` removed): the outer environment must not leak into a test's processes.
_CONFIG_PREFIXES = ("etcd", "rootcoord", "querycoord", "datacoord", "common", "log", "milvusconf")


#: One pid-file directory per pytest run (a test may still name its own).
_RUN_DIR = tempfile.mkdtemp(prefix="milvus-run-")


def clean_env(overrides: Mapping[str, str]) -> dict[str, str]:
    """``os.environ`` without config-shaped variables or PYTHONUNBUFFERED, plus ``overrides``."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not re.sub(r"[_./]", "", name).lower().startswith(_CONFIG_PREFIXES)
    }
    env.pop("PYTHONUNBUFFERED", None)  # log lines must be flushed by the product, not by Python
    # Never share pid files or default HTTP ports with a real cluster or another test run.
    env["MILVUS_RUN_DIR"] = _RUN_DIR
    env.update({f"{section}_HTTP_PORT": "0" for section in ENV_SECTION.values()})
    # MILVUS_TEST_EVENT_LOOP=uvloop runs every process test's members under uvloop (common.eventLoop).
    env["COMMON_EVENTLOOP"] = os.environ.get("MILVUS_TEST_EVENT_LOOP", "asyncio")
    env.update(overrides)
    return env


# --------------------------------------------------------------------------- processes


class MilvusProcess:
    """One ``milvus`` subprocess in its own session, output (stdout + stderr) to ``log_path``."""

    def __init__(
        self, args: list[str], env: Mapping[str, str], log_path: Path, *, port: int = 0,
        host: str = "localhost", prefix: Sequence[str] = (),
    ) -> None:
        """:param host: the host it advertises; :param prefix: runs ``prefix + milvus args`` (``ip netns exec ns``)."""
        self.args = args
        self.log_path = log_path
        self.port = port
        self.host = host
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in kill()/wait()
        self.popen = subprocess.Popen(
            [*prefix, MILVUS, *args],
            env=dict(env),
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # signals we send reach only this process
        )
        self.pid = self.popen.pid

    def __repr__(self) -> str:
        return f"MilvusProcess({' '.join(self.args)}, port={self.port}, pid={self.pid})"

    @property
    def address(self) -> str:
        """The address it advertises in its session (``localhost:<port>`` with the config's default host)."""
        return f"{self.host}:{self.port}"

    def running(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        self.popen.send_signal(sig)

    async def wait(self, timeout: float) -> int:
        """Exit code, polling without blocking the event loop; AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.popen.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self} still running after {timeout}s; log:\n{self.output()}")
            await asyncio.sleep(0.02)
        self._log.close()
        return self.popen.returncode

    def kill(self) -> None:
        """SIGKILL its whole process group (it is the group leader) and reap it; idempotent."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=5)
        self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def lines(self) -> list[LogLine]:
        """The text-format log lines parsed so far (other lines skipped)."""
        return [line for raw in self.output().splitlines() if (line := parse_line(raw)) is not None]

    def messages(self) -> list[str]:
        return [line.msg for line in self.lines()]


# --------------------------------------------------------------------------- log lines

_LINE = re.compile(
    r"^\[(?P<time>[^\]]+)\] \[(?P<level>[A-Z]+)\] \[(?P<caller>[^\]]+)\] \[(?P<msg>\"(?:[^\"\\]|\\.)*\")\](?P<rest>.*)$"
)
_FIELD = re.compile(r"\[(?P<key>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>\"(?:[^\"\\]|\\.)*\"|[^\]]*)\]")


@dataclass(frozen=True)
class LogLine:
    """One zap-style text line: ``[time] [LEVEL] [caller] ["msg"] [Key=value]...``."""

    time: datetime
    level: str
    caller: str
    msg: str
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def stamp(self) -> float:
        """The wall time as epoch seconds (ms resolution): what the benches subtract."""
        return self.time.timestamp()


def parse_line(raw: str) -> LogLine | None:
    """One text-format line, parsed (None for anything else: a traceback, a truncated line)."""
    match = _LINE.match(raw)
    if match is None:
        return None
    try:
        fields = {
            f["key"]: (json.loads(f["value"]) if f["value"].startswith('"') else f["value"])
            for f in _FIELD.finditer(match["rest"])
        }
        when = datetime.strptime(match["time"], "%Y/%m/%d %H:%M:%S.%f %z")
        return LogLine(when, match["level"], match["caller"], json.loads(match["msg"]), fields)
    except ValueError:
        return None


def find_in_order(lines: list[LogLine], steps: list[Callable[[LogLine], bool]]) -> list[LogLine]:
    """The first lines matching each step in turn (a subsequence); AssertionError naming the missing step."""
    found: list[LogLine] = []
    i = 0
    for n, step in enumerate(steps):
        while i < len(lines) and not step(lines[i]):
            i += 1
        if i == len(lines):
            seen = "\n".join(f"  {line.msg} {line.fields}" for line in lines)
            raise AssertionError(f"step {n} of the expected sequence not found after {[f.msg for f in found]}; log:\n{seen}")
        found.append(lines[i])
        i += 1
    return found


# --------------------------------------------------------------------------- waiting


# ``wait_until`` (imported above from session_helpers, and exported from here too): the one bounded wait.


# --------------------------------------------------------------------------- etcd


def active_key(root: str, role: str) -> str:
    return f"{root}/meta/session/{role}"


def own_key(root: str, role: str, server_id: int) -> str:
    return f"{root}/meta/session/{role}-{server_id}"


@dataclass(frozen=True)
class Kv:
    value: dict[str, Any]
    create_revision: int
    mod_revision: int
    lease: int


async def get_kv(client: Etcd3Client, key: str) -> Kv | None:
    resp = await client.kv.get(key, timeout=5)
    if not resp.kvs:
        return None
    kv = resp.kvs[0]
    return Kv(json.loads(kv.value), int(kv.create_revision), int(kv.mod_revision), int(kv.lease))


async def sessions(client: Etcd3Client, root: str, role: str) -> dict[int, Kv]:
    """The own session keys ``{role}-{id}`` under ``root``, by server ID."""
    prefix = f"{root}/meta/session/{role}-"
    resp = await client.kv.get(prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1), timeout=5)
    found: dict[int, Kv] = {}
    for kv in resp.kvs:
        suffix = kv.key.decode()[len(prefix):]
        if suffix.isdigit():
            found[int(suffix)] = Kv(json.loads(kv.value), int(kv.create_revision), int(kv.mod_revision), int(kv.lease))
    return found


async def all_keys(client: Etcd3Client, root: str) -> list[str]:
    prefix = f"{root}/"
    resp = await client.kv.get(prefix, prefix[:-1] + chr(ord("/") + 1), keys_only=True, timeout=5)
    return [kv.key.decode() for kv in resp.kvs]


async def run_cli(args: list[str], env: Mapping[str, str], timeout: float = 20.0) -> tuple[int, str, str, float]:
    """Run ``milvus args`` to completion: (exit code, stdout, stderr, seconds)."""
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        MILVUS, *args, env=dict(env), cwd=REPO, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"milvus {' '.join(args)} did not finish within {timeout}s") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"), time.monotonic() - t0


Launch = Callable[..., MilvusProcess]


# --------------------------------------------------------------------------- ACTIVE / STANDBY


async def holder(client: Etcd3Client, root: str, role: str) -> Kv | None:
    return await get_kv(client, active_key(root, role))


async def wait_for_active(
    client: Etcd3Client, root: str, role: str, proc: MilvusProcess, timeout: float = 10.0
) -> Kv:
    """Poll until ``proc`` holds the ACTIVE key; its value."""

    async def probe() -> Kv | None:
        if not proc.running():
            raise AssertionError(f"{proc} exited with {proc.popen.returncode}; log:\n{proc.output()}")
        kv = await holder(client, root, role)
        return kv if kv is not None and kv.value["Address"] == proc.address else None

    return await wait_until(probe, timeout=timeout, what=f"{proc} to hold the ACTIVE key")


async def wait_for_serving(proc: MilvusProcess, role: str, timeout: float = 10.0) -> list[LogLine]:
    """Until ``proc`` logs that it serves (the ACTIVE key alone does not mean activation is over)."""
    return await wait_for_log(
        proc, lambda ls: any(ln.msg == f"{role} is ACTIVE and serving" for ln in ls), timeout, f"{role} to serve"
    )


async def wait_for_log(proc: MilvusProcess, pred: Callable[[list[LogLine]], bool], timeout: float, what: str) -> list[LogLine]:
    async def probe() -> list[LogLine] | None:
        lines = proc.lines()
        return lines if pred(lines) else None

    try:
        return await wait_until(probe, timeout=timeout, interval=0.05, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; log of {proc}:\n{proc.output()}") from None


async def pair(
    client: Etcd3Client, root: str, role: str, launch: Launch, *, env: Mapping[str, str] | None = None
) -> tuple[MilvusProcess, MilvusProcess, Kv, dict[int, Kv]]:
    """Start two processes of ``role`` at once; (active, standby, ACTIVE key, own keys) once both registered."""
    a, b = launch(role, "a", env=dict(env or {})), launch(role, "b", env=dict(env or {}))

    async def settled() -> tuple[Kv, dict[int, Kv]] | None:
        for proc in (a, b):
            if not proc.running():
                raise AssertionError(f"{proc} exited with {proc.popen.returncode}; log:\n{proc.output()}")
        kv, own = await holder(client, root, role), await sessions(client, root, role)
        return (kv, own) if kv is not None and len(own) == 2 else None

    kv, own = await wait_until(settled, timeout=10, what=f"two {role} sessions and an ACTIVE key")
    active, standby = (a, b) if kv.value["Address"] == a.address else (b, a)
    assert kv.value["Address"] == active.address
    return active, standby, kv, own


async def during_flood(module: str, args: Sequence[str], step: Callable[[], Awaitable[object]],
                       pause: float) -> tuple[Any, int]:
    """Run ``python -m harness.<module> args`` (a flood from its own process, so this loop stays free to
    time the victim), calling ``step`` every ``pause`` s until it exits; (its JSON report, steps taken)."""
    flood = await asyncio.create_subprocess_exec(sys.executable, "-m", f"harness.{module}", *args,
                                                 cwd=REPO / "tests", stdout=asyncio.subprocess.PIPE)
    steps = 0
    try:
        while flood.returncode is None:
            await step()
            steps += 1
            await asyncio.sleep(pause)
        out, _ = await flood.communicate()
    finally:
        if flood.returncode is None:
            flood.kill()
            await flood.wait()
    return json.loads(out), steps
