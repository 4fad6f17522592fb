"""``milvus stop <role> [--alias NAME]``: SIGTERM the process named by the pid file, wait for its exit.

Why so careful before signalling: a pid in a file may be stale (the process was SIGKILLed) and
reused by an unrelated process. We signal only when the file's lock is held (a live ``milvus run``
holds it) *and* the pid's command line is ``milvus run <role>`` with the same alias. The process is
not our child, so its exit is seen by polling ``/proc`` (a zombie counts as gone, and a pid reused
by a new process is told apart by its start time).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from coordinators import pidfile
from coordinators.exit_codes import ExitCode

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
    """Whether ``argv`` is ``[python] .../milvus run <role>`` (or ``-m coordinators.cli``) with ``alias``."""
    for i in range(1, len(argv) - 1):
        if argv[i] == "run" and argv[i + 1] == role and any(_is_milvus(a) for a in argv[:i]):
            return _alias_in(argv[i + 2:]) == alias
    return False


def _is_milvus(arg: str) -> bool:
    return os.path.basename(arg) == "milvus" or arg == "coordinators.cli" or arg.endswith("coordinators/cli.py")


def _alias_in(args: Sequence[str]) -> str:
    """The value of ``--alias`` in ``args`` as argparse reads it (``--alias X``, ``--alias=X``, a prefix)."""
    alias = ""
    it = iter(args)
    for arg in it:
        name, eq, value = arg.partition("=")
        if len(name) >= 3 and "--alias".startswith(name):
            alias = value if eq else next(it, "")
    return alias


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
    """Stop ``role``/``alias`` on this host; one line says what happened."""
    out = out or sys.stdout
    err = err or sys.stderr
    name = pidfile.describe(role, alias)

    def fail(code: ExitCode, message: str) -> ExitCode:
        print(f"milvus stop: {message}", file=err, flush=True)
        return code

    path = pidfile.find(role, alias, env)
    try:
        state = pidfile.inspect(path)
    except pidfile.PidFileError as exc:
        return fail(ExitCode.FAILURE, str(exc))
    if state is None:
        return fail(ExitCode.NOT_RUNNING, f"no pid file for {name} at {path}: is it running on this host?")
    if not state.locked:
        why = "no pid in it" if state.pid is None else f"process {state.pid} is gone"
        if state.pid is not None and ProcInfo.read(state.pid) is not None:
            why = f"process {state.pid} no longer holds it"
        removed = "removed" if pidfile.remove_stale(path) else "could not remove it"
        return fail(ExitCode.NOT_RUNNING, f"stale pid file {path} ({why}); {removed}")
    if state.pid is None:
        return fail(ExitCode.FAILURE, f"pid file {path} is locked but holds no pid yet ({name} is starting?); try again")
    proc = ProcInfo.read(state.pid)
    if proc is None or not is_milvus_run(proc.argv, role, alias):
        what = "gone" if proc is None else f"`{' '.join(proc.argv)}`"
        return fail(
            ExitCode.FAILURE,
            f"pid file {path} is locked but names process {state.pid} ({what}), not `milvus run {role}"
            f"{' --alias ' + alias if alias else ''}`: not signalling it",
        )

    t0 = time.monotonic()
    try:
        os.kill(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass  # it exited on its own just now: it is stopped
    except PermissionError:
        return fail(ExitCode.FAILURE, f"not allowed to signal {name} (pid {proc.pid}); run as its user or root")
    if _wait_gone(proc, t0 + timeout):
        pidfile.remove_stale(path)  # a clean exit removed it already; a crash while stopping did not
        print(f"{name} stopped (pid {proc.pid}) in {time.monotonic() - t0:.2f} s", file=out, flush=True)
        return ExitCode.OK
    if not kill:
        return fail(
            ExitCode.FAILURE,
            f"{name} (pid {proc.pid}) is still running {timeout:g} s after SIGTERM; not killed (use --kill to SIGKILL it)",
        )
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    gone = _wait_gone(proc, time.monotonic() + _KILL_WAIT_S)
    pidfile.remove_stale(path)
    if not gone:
        return fail(ExitCode.FAILURE, f"{name} (pid {proc.pid}) survived SIGKILL for {_KILL_WAIT_S:g} s")
    return fail(
        ExitCode.FAILURE,
        f"{name} (pid {proc.pid}) was still running {timeout:g} s after SIGTERM: killed with SIGKILL "
        f"(its standby takes over when the session's TTL expires)",
    )


def _wait_gone(proc: ProcInfo, deadline: float) -> bool:
    """Poll until ``proc`` has exited or the monotonic ``deadline`` passes."""
    while proc.alive():
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)
    return True
