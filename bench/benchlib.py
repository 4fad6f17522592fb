"""What every bench script shares: paths, processes that never outlive the bench, log parsing,
/proc sampling, statistics, tables and the JSON result files.

Why one module: the three benches start the same things (an etcd from ``tests/harness/etcd_server.py``,
``milvus run`` processes with an isolated environment, ``etcdctl``) and must clean them all up the
same way, also on Ctrl-C: every child runs in its own session (process group), is registered here,
and is SIGKILLed as a group at exit; ``setpriv --pdeathsig KILL`` takes it down even if the bench
itself is SIGKILLed. All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import datetime as dt
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

from coordinators.registry import ROLE_SPECS
from harness import etcd_server
from harness.etcd_server import EtcdCluster, etcd_version, find_etcd_binary, find_etcdctl_binary, free_port
from harness.procs import LogLine, parse_line
from harness.session_helpers import wait_until
from session import Etcd

T = TypeVar("T")

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
TESTS = REPO / "tests"
RESULTS = BENCH / "results"




__all__ = [
    "BENCH",
    "REPO",
    "RESULTS",
    "Child",
    "EtcdCluster",
    "Fleet",
    "LogLine",
    "etcd_metrics",
    "find_etcd_binary",
    "find_etcdctl_binary",
    "free_port",
    "machine_info",
    "milvus_env",
    "parse_log",
    "summarize",
    "table",
    "wait_until",
    "write_result",
]

#: The product's console script (``milvus = coordinators.ops.cli:main``), beside this interpreter.
MILVUS = str(Path(sys.executable).parent / "milvus")

#: Environment variables that would reach a process's config (Milvus's rule: compare lower-cased,
#: ``_ . /`` removed): the outer environment must not leak into a bench's processes.
_CONFIG_PREFIXES = ("etcd", "rootcoord", "querycoord", "datacoord", "common", "log", "milvusconf")
ENV_SECTION = {name: s.env_prefix for name, s in ROLE_SPECS.items()}


# --------------------------------------------------------------------------- cleanup

_children: set[Child] = set()
_children_lock = threading.Lock()


def _kill_all_children() -> None:
    with _children_lock:
        children = list(_children)
    for child in children:
        with contextlib.suppress(Exception):
            child.kill()


atexit.register(_kill_all_children)


def install_signal_handlers() -> None:
    """SIGTERM and SIGHUP behave like Ctrl-C: unwind (finally blocks, atexit), killing every child."""

    def _raise(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise)
    # Ctrl-C raises KeyboardInterrupt even when started with SIGINT ignored (a background job of a script).
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _pdeathsig() -> list[str]:
    """``setpriv --pdeathsig KILL --``: the child dies with the thread that forked it (main thread only)."""
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


class Child:
    """A subprocess in its own session, output to a file or a pipe, killed (as a group) at exit."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        stdout_pipe: bool = False,
        name: str = "",
    ) -> None:
        self.args = list(args)
        self.name = name or Path(args[0]).name
        self.log_path = log_path
        self._log: IO[bytes] | None = open(log_path, "wb") if log_path is not None else None  # noqa: SIM115
        stdout: Any = subprocess.PIPE if stdout_pipe else (self._log or subprocess.DEVNULL)
        self.popen = subprocess.Popen(
            _pdeathsig() + self.args,
            env=dict(env) if env is not None else None,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT if (self._log or stdout_pipe) else subprocess.DEVNULL,
            start_new_session=True,
        )
        self.pid = self.popen.pid
        with _children_lock:
            _children.add(self)

    def __repr__(self) -> str:
        return f"Child({self.name}, pid={self.pid})"

    def running(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole process group and reap; idempotent."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=5)
        self._forget()

    async def wait(self, timeout: float) -> int | None:
        """Exit code, polled without blocking the loop; None if still running after ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.popen.poll() is None:
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.01)
        self._forget()
        return self.popen.returncode

    async def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL the group."""
        self.signal(signal.SIGTERM)
        code = await self.wait(timeout)
        if code is None:
            self.kill()
        return code

    def _forget(self) -> None:
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
        with _children_lock:
            _children.discard(self)

    def output(self) -> str:
        if self.log_path is None:
            return ""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def lines(self) -> list[LogLine]:
        return parse_log(self.output())

    # -- /proc --------------------------------------------------------------------------------

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def rss_mb(self) -> float:
        return rss_mb(self.pid)

    def pss_mb(self) -> float:
        return pss_mb(self.pid)


# --------------------------------------------------------------------------- milvus processes


def clean_env(overrides: Mapping[str, str]) -> dict[str, str]:
    """``os.environ`` without config-shaped variables, plus ``overrides``."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not re.sub(r"[_./]", "", name).lower().startswith(_CONFIG_PREFIXES)
    }
    env.pop("PYTHONUNBUFFERED", None)
    env.update(overrides)
    return env


def milvus_env(
    *,
    endpoints: str,
    root: str,
    ttl: int,
    run_dir: Path,
    role: str = "rootcoord",
    port: int,
    http_port: int = 0,
    active_standby: bool = True,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The isolated environment of one ``milvus run <role>``: its etcd root, ports, pid-file dir, TTL."""
    env = {
        "ETCD_ENDPOINTS": endpoints,
        "ETCD_ROOT_PATH": root,
        "COMMON_SESSION_TTL": str(ttl),
        "COMMON_SESSION_RETRY_TIMES": "5",
        "MILVUS_RUN_DIR": str(run_dir),
    }
    for section in ENV_SECTION.values():
        env[f"{section}_HTTP_PORT"] = "0"
    section = ENV_SECTION[role]
    env[f"{section}_PORT"] = str(port)
    env[f"{section}_HTTP_PORT"] = str(http_port)
    env[f"{section}_ENABLE_ACTIVE_STANDBY"] = "true" if active_standby else "false"
    env.update(extra or {})
    return clean_env(env)


@dataclass
class Coordinator:
    """One ``milvus run <role>`` started by a bench."""

    child: Child
    role: str
    alias: str
    port: int

    @property
    def address(self) -> str:
        return f"localhost:{self.port}"

    def lines(self) -> list[LogLine]:
        return self.child.lines()

    def first(self, msg: str, *, after: float = 0.0) -> LogLine | None:
        """The first log line with message ``msg`` at or after wall time ``after``."""
        text = self.child.output()
        if json.dumps(msg) not in text:  # cheap test first: many processes are polled at once
            return None
        for line in parse_log(text):
            if line.msg == msg and line.stamp >= after:
                return line
        return None

    def has(self, msg: str) -> bool:
        return any(line.msg == msg for line in self.lines())


class Fleet:
    """Starts ``milvus run`` processes of one cluster (one etcd root) and remembers them."""

    def __init__(
        self,
        *,
        endpoints: str,
        root: str,
        ttl: int,
        work_dir: Path,
        loop: str = "asyncio",
        extra_env: Mapping[str, str] | None = None,
        http: bool = False,
    ) -> None:
        self.endpoints = endpoints
        self.root = root
        self.ttl = ttl
        self.work_dir = work_dir
        self.run_dir = work_dir / "run"
        self.run_dir.mkdir(mode=0o755, parents=True, exist_ok=True)  # not writable by others: else refused
        self.loop = loop
        self.extra_env = dict(extra_env or {})
        self.http = http
        self.started: list[Coordinator] = []
        self._n = 0

    @property
    def meta_root(self) -> str:
        return f"{self.root}/meta"

    def active_key(self, role: str) -> str:
        return f"{self.meta_root}/session/{role}"

    def launch(self, role: str = "rootcoord", *, active_standby: bool = True,
               env: Mapping[str, str] | None = None, prefix: Sequence[str] = ()) -> Coordinator:
        """Start one ``milvus run role``; ``env``: more config variables for this one; ``prefix``: a
        command it runs under (``prlimit --nofile=1024:1024``)."""
        self._n += 1
        alias = f"b{self._n}"
        port = free_port()
        env = milvus_env(
            endpoints=self.endpoints, root=self.root, ttl=self.ttl, run_dir=self.run_dir, role=role, port=port,
            http_port=free_port() if self.http else 0, active_standby=active_standby,
            extra={**self.extra_env, **(env or {})},
        )
        argv = ["run", role, "--alias", alias]
        # Under another event loop: the same entry point, through bench/serve.py, which installs it.
        cmd = [MILVUS, *argv] if self.loop == "asyncio" else [sys.executable, str(BENCH / "serve.py"), "--loop", self.loop, *argv]
        child = Child([*prefix, *cmd], env=env, log_path=self.work_dir / f"{role}-{alias}.log", name=f"{role}-{alias}")
        coord = Coordinator(child, role, alias, port)
        self.started.append(coord)
        return coord

    async def stop_all(self, timeout: float = 10.0) -> None:
        """SIGTERM every live process at once, wait, SIGKILL the stragglers."""
        live = [c for c in self.started if c.child.running()]
        for c in live:
            c.child.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for c in live:
            if await c.child.wait(max(0.1, deadline - time.monotonic())) is None:
                c.child.kill()

    def kill_all(self) -> None:
        for c in self.started:
            c.child.kill()


async def wait_log(coord: Coordinator, msg: str, timeout: float, *, after: float = 0.0, interval: float = 0.02) -> LogLine:
    """Until ``coord`` logs ``msg`` (at or after wall time ``after``); RuntimeError with the log tail otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        line = coord.first(msg, after=after)
        if line is not None:
            return line
        if not coord.child.running():
            raise RuntimeError(f"{coord.child} exited ({coord.child.popen.returncode}) before logging {msg!r}:\n"
                               + "\n".join(coord.child.output().splitlines()[-25:]))
        if time.monotonic() > deadline:
            raise RuntimeError(f"{coord.child} did not log {msg!r} within {timeout}s:\n"
                               + "\n".join(coord.child.output().splitlines()[-25:]))
        await asyncio.sleep(interval)


async def settle_idle(children: Iterable[Child], *, window: float = 0.3, max_wait: float = 10.0,
                      threshold: float = 0.05) -> None:
    """Wait until the processes use less than ``threshold`` of a core over ``window`` (start-up done)."""
    children = [c for c in children if c.running()]
    deadline = time.monotonic() + max_wait
    while time.monotonic() < deadline:
        before = sum(_safe_cpu(c.pid) for c in children)
        await asyncio.sleep(window)
        used = sum(_safe_cpu(c.pid) for c in children) - before
        if used / window < threshold * max(1, len(children)):
            return


# --------------------------------------------------------------------------- log lines

def parse_log(text: str) -> list[LogLine]:
    """The text-format log lines of ``text``, parsed as the tests parse them (tests/harness/procs.py)."""
    return [line for raw in text.splitlines() if (line := parse_line(raw)) is not None]


# --------------------------------------------------------------------------- /proc

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (from /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def _safe_cpu(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except OSError:
        return 0.0


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def pss_mb(pid: int) -> float:
    """Proportional set size: the process's share of memory, shared libraries split among users."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


# --------------------------------------------------------------------------- etcd

def etcd_metrics(endpoint: str, timeout: float = 5.0) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """etcd's Prometheus metrics (its client URL serves /metrics): {(name, labels): value}."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{endpoint}/metrics", timeout=timeout) as resp:
        text = resp.read().decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)", line)
        if not m:
            continue
        labels = tuple(sorted(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m[3] or "")))
        with contextlib.suppress(ValueError):
            out[(m[1], labels)] = float(m[4])
    return out


def metric_sum(metrics: Mapping[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """Sum of ``name`` over the series whose labels include ``labels``."""
    total = 0.0
    for (n, lbls), value in metrics.items():
        if n != name:
            continue
        d = dict(lbls)
        if all(d.get(k) == v for k, v in labels.items()):
            total += value
    return total


async def clear_root(etcd: Etcd, root: str, *, timeout: float) -> None:
    """Delete a case's keys, then compact and defragment, so the next case meets a maintained etcd.

    Why: the bench's etcd runs without auto-compaction, and a delete of 200k keys leaves their
    tombstones and history behind: measured, lease revokes and small ranges then took 110 to 190 ms
    ("apply request took too long" in etcd's log) for minutes, and the next case's takeovers with
    them. A production etcd compacts on a schedule (Milvus's charts set auto-compaction).
    """
    with contextlib.suppress(Exception):
        await etcd.delete(root + "/", prefix=True, timeout=timeout)
        await etcd.compact(int((await etcd.get(root + "/", timeout=timeout)).header.revision), timeout=timeout)
        await etcd.defragment(timeout=timeout)


def start_etcd(work_dir: Path) -> EtcdCluster:
    """One etcd member on free loopback ports (tests/harness/etcd_server.py), data under ``work_dir``."""
    cluster = EtcdCluster(1, base_dir=work_dir / "etcd")
    cluster.start()
    return cluster


def etcdctl_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL_")}
    env["ETCDCTL_API"] = "3"
    return env


# --------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in 0..100."""
    if not values:
        return float("nan")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(values: Sequence[float]) -> dict[str, float]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return {"n": 0}
    return {
        "n": len(vals),
        "min": round(min(vals), 3),
        "p50": round(percentile(vals, 50), 3),
        "p95": round(percentile(vals, 95), 3),
        "max": round(max(vals), 3),
        "mean": round(sum(vals) / len(vals), 3),
    }


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], title: str = "") -> str:
    """A plain fixed-width table (also valid as a Markdown table)."""
    rows = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)]
    out = []
    if title:
        out.append(title)
    out.append("| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=False)) + " |")
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        out.append("| " + " | ".join(c.rjust(w) if _numeric(c) else c.ljust(w) for c, w in zip(r, widths, strict=False)) + " |")
    return "\n".join(out)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _numeric(s: str) -> bool:
    return bool(re.fullmatch(r"[-+]?[\d,]*\.?\d+%?x?", s))


# --------------------------------------------------------------------------- machine and results


def machine_info() -> dict[str, Any]:
    """What the page must state about the machine a result came from."""
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    etcd_ver = ""
    with contextlib.suppress(Exception):
        etcd_ver = ".".join(map(str, etcd_version(find_etcd_binary())))
    commit = ""
    with contextlib.suppress(Exception):
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, timeout=5).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "ram_gib": mem_gib,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "etcd": etcd_ver,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "commit": commit,
    }


def new_result(bench: str, args: Any) -> dict[str, Any]:
    return {
        "bench": bench,
        "quick": bool(getattr(args, "quick", False)),
        "command": " ".join(["python", *[_rel(a) for a in sys.argv]]),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine_info(),
    }


def _rel(arg: str) -> str:
    with contextlib.suppress(ValueError):
        return str(Path(arg).resolve().relative_to(REPO))
    return arg


def default_out(bench: str, quick: bool) -> Path:
    return RESULTS / (f"{bench}.quick.json" if quick else f"{bench}.json")


def write_result(result: dict[str, Any], out: Path, started: float) -> None:
    result["duration_s"] = round(time.monotonic() - started, 1)
    result["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, sort_keys=False) + "\n")
    tmp.replace(out)
    print(f"\nresult written to {_rel(str(out))} ({result['duration_s']} s)", flush=True)


def work_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"bench-{prefix}-"))


def remove_dir(path: Path, keep: bool) -> None:
    if keep:
        print(f"work files kept in {path}", flush=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def loop_factory(loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event-loop factory for ``asyncio.Runner``: None for asyncio's own, uvloop's when asked."""
    if loop == "asyncio":
        return None
    if loop == "uvloop":
        import uvloop  # optional: pip install -e '.[bench]'

        return uvloop.new_event_loop
    raise ValueError(f"unknown loop {loop!r}: asyncio or uvloop")


def uvloop_available() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def quiet_product_logs() -> None:
    """The product's modules (client, session) log with structlog: in a bench, warnings and up only."""
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def run_main(coro_fn: Callable[[], Awaitable[int]], loop: str = "asyncio") -> int:
    """Run the bench's async main; Ctrl-C / SIGTERM unwind through finally blocks, children are killed."""
    install_signal_handlers()
    quiet_product_logs()
    try:
        with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
            return runner.run(coro_fn())
    except KeyboardInterrupt:
        print("\ninterrupted: killing every process this bench started", file=sys.stderr, flush=True)
        return 130
    finally:
        _kill_all_children()
        etcd_server._kill_leftovers()
