"""``milvus stop <role> [--alias NAME]``: SIGTERM the processes named by pid files, wait for their exit.

Which processes: with ``--alias NAME``, the one started with that alias (a number names the
automatic file ``<role>-N.pid`` of a process started without one); without it, every process of the
role on this host that was started without ``--alias``, under any of its automatic pid-file names
(``<role>.pid``, ``<role>-2.pid``...). They are signalled together, so a standby does not take over
from an active that is stopping anyway, and each is reported as it exits.

Why so careful before signalling: a pid in a file may be stale (the process was SIGKILLed) and
reused by an unrelated process. We signal only when the file's lock is held (a live ``milvus run``
holds it) *and* the pid's command line is ``milvus run <role>`` with the same alias. The process is
not our child, so its exit is seen by polling ``/proc`` (a zombie counts as gone, and a pid reused
by a new process is told apart by its start time).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from coordinators.runtime import pidfile
from coordinators.runtime.exit_codes import ExitCode

#: How often the target's exit is polled: the handover is measured in milliseconds.
_POLL_S = 0.01
#: How long a SIGKILLed process may take to disappear (it cannot refuse; only a D state delays it).
_KILL_WAIT_S = 5.0


@dataclass(frozen=True)
class ProcInfo:
    """What /proc says about a pid: its argv and its start time (in clock ticks after boot)."""

    pid: int
    argv: list[str]
    start_ticks: int

    @classmethod
    def read(cls, pid: int) -> ProcInfo | None:
        """None when the pid is gone or a zombie."""
        try:
            stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state is field 3
        if not fields or fields[0] in ("Z", "X"):
            return None
        return cls(pid, [a.decode(errors="replace") for a in raw.split(b"\0") if a], int(fields[19]))

    def alive(self) -> bool:
        """Still running, and still the same process (not a new one that reused the pid)."""
        now = ProcInfo.read(self.pid)
        return now is not None and now.start_ticks == self.start_ticks


def is_milvus_run(argv: Sequence[str], role: str, alias: str) -> bool:
    """Whether ``argv`` is ``[python] .../milvus run <role>`` (or ``-m coordinators.ops.cli``) with ``alias``."""
    for i in range(1, len(argv) - 1):
        if argv[i] == "run" and argv[i + 1] == role and any(_is_milvus(a) for a in argv[:i]):
            return _alias_in(argv[i + 2:]) == alias
    return False


def _is_milvus(arg: str) -> bool:
    return os.path.basename(arg) == "milvus" or arg == "coordinators.ops.cli" or arg.endswith("coordinators/ops/cli.py")


def _alias_in(args: Sequence[str]) -> str:
    """The value of ``--alias`` in ``args`` as argparse reads it (``--alias X``, ``--alias=X``, a prefix)."""
    alias = ""
    it = iter(args)
    for arg in it:
        name, eq, value = arg.partition("=")
        if len(name) >= 3 and "--alias".startswith(name):
            alias = value if eq else next(it, "")
    return alias


@dataclass(frozen=True)
class _Target:
    """A live ``milvus run`` to stop: its pid file and process."""

    path: Path
    name: str
    proc: ProcInfo


def stop(
    role: str,
    alias: str,
    *,
    timeout: float,
    kill: bool,
    env: Mapping[str, str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> ExitCode:
    """Stop ``role`` on this host: the process of ``alias``, or without one every process of the role
    started without ``--alias`` (``<role>.pid``, ``<role>-2.pid``...), all signalled at once.

    One line per process says what happened. Exit 0 when every one stopped, 9 when none was running,
    1 when one could not be stopped (or is not what its pid file says).
    """
    out = out or sys.stdout
    err = err or sys.stderr

    def say(stream: TextIO, message: str) -> None:
        print(message, file=stream, flush=True)

    paths = [pidfile.find(role, alias, env)] if alias else pidfile.automatic_files(role, env) or [pidfile.find(role, "", env)]
    targets: list[_Target] = []
    failed = False
    for path in paths:
        file_alias = _alias_of(path, role)
        started_as = "" if pidfile.is_automatic(file_alias) else file_alias
        name = pidfile.describe(role, started_as)
        try:
            state = pidfile.inspect(path)
        except pidfile.PidFileError as exc:
            say(err, f"milvus stop: {exc}")
            failed = True
            continue
        if state is None:
            say(err, f"milvus stop: no pid file for {name} at {path}: is it running on this host?")
            continue
        if not state.locked:
            why = "no pid in it" if state.pid is None else f"process {state.pid} is gone"
            if state.pid is not None and ProcInfo.read(state.pid) is not None:
                why = f"process {state.pid} no longer holds it"
            removed = "removed" if pidfile.remove_stale(path) else "could not remove it"
            say(err, f"milvus stop: stale pid file {path} ({why}); {removed}")
            continue
        if state.pid is None:
            say(err, f"milvus stop: pid file {path} is locked but holds no pid yet ({name} is starting?); try again")
            failed = True
            continue
        proc = ProcInfo.read(state.pid)
        if proc is None or not is_milvus_run(proc.argv, role, started_as):
            what = "gone" if proc is None else f"`{' '.join(proc.argv)}`"
            say(err, f"milvus stop: pid file {path} is locked but names process {state.pid} ({what}), not "
                     f"`milvus run {role}{' --alias ' + started_as if started_as else ''}`: not signalling it")
            failed = True
            continue
        targets.append(_Target(path, name, proc))
    if not targets:
        return ExitCode.FAILURE if failed else ExitCode.NOT_RUNNING

    t0 = time.monotonic()
    signalled = []
    for target in targets:
        try:
            os.kill(target.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass  # it exited on its own just now: it is stopped
        except PermissionError:
            say(err, f"milvus stop: not allowed to signal {target.name} (pid {target.proc.pid}); run as its user or root")
            failed = True
            continue
        signalled.append(target)
    # Each line as its process exits: the order says which one went first.
    for target in _wait_all_gone(signalled, t0 + timeout):
        pidfile.remove_stale(target.path)  # a clean exit removed it already; a crash while stopping did not
        say(out, f"{target.name} stopped (pid {target.proc.pid}) in {time.monotonic() - t0:.2f} s")
    left = [t for t in signalled if t.proc.alive()]
    for target in left:
        failed = True
        if not kill:
            say(err, f"milvus stop: {target.name} (pid {target.proc.pid}) is still running {timeout:g} s after SIGTERM; "
                     "not killed (use --kill to SIGKILL it)")
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(target.proc.pid, signal.SIGKILL)
        gone = _wait_gone(target.proc, time.monotonic() + _KILL_WAIT_S)
        pidfile.remove_stale(target.path)
        if not gone:
            say(err, f"milvus stop: {target.name} (pid {target.proc.pid}) survived SIGKILL for {_KILL_WAIT_S:g} s")
        else:
            say(err, f"milvus stop: {target.name} (pid {target.proc.pid}) was still running {timeout:g} s after SIGTERM: "
                     "killed with SIGKILL (its standby takes over when the session's TTL expires)")
    return ExitCode.FAILURE if failed else ExitCode.OK


def _alias_of(path: Path, role: str) -> str:
    """The alias part of a pid file's name (``rootcoord-b.pid`` -> ``b``; ``rootcoord.pid`` -> '')."""
    stem = path.name.removesuffix(".pid")
    return stem[len(role) + 1:] if stem.startswith(role + "-") else ""


def _wait_all_gone(targets: Sequence[_Target], deadline: float) -> Iterator[_Target]:
    """Yield each target as its process exits, until all have or the monotonic ``deadline`` passes."""
    waiting = list(targets)
    while waiting:
        for target in [t for t in waiting if not t.proc.alive()]:
            waiting.remove(target)
            yield target
        if not waiting or time.monotonic() >= deadline:
            return
        time.sleep(_POLL_S)


def _wait_gone(proc: ProcInfo, deadline: float) -> bool:
    """Poll until ``proc`` has exited or the monotonic ``deadline`` passes."""
    while proc.alive():
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)
    return True
