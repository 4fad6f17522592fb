"""Pid files: at most one ``milvus run <role> [--alias NAME]`` per host, and a way to find it.

``milvus run`` creates ``<run dir>/<role>[-<alias>].pid``, takes an exclusive ``flock`` on it and
writes its pid; the lock is held for the life of the process and the file is removed at a clean
exit. Why a lock and not just the file: the kernel drops the lock when the process dies, however it
dies, so a SIGKILLed process leaves a *stale* file (unlocked: anyone can tell) rather than a stuck
one. ``milvus stop`` and the cluster scripts read the same files.

The run dir is ``$MILVUS_RUN_DIR`` when set (tests and scripts use it to stay apart), else
``/run/milvus`` when it exists or can be created and is writable, else ``/tmp/milvus``.

Run as ``python -m coordinators.pidfile dir`` it prints the run dir, and as
``python -m coordinators.pidfile holder <role> [alias]`` the pid holding that role's lock (exit 1 when
none does): the shell scripts ask here rather than repeat the rules.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

RUN_DIR_ENV = "MILVUS_RUN_DIR"
SYSTEM_RUN_DIR = Path("/run/milvus")
FALLBACK_RUN_DIR = Path("/tmp/milvus")

#: An alias becomes part of a file name: no path separators, no leading dot, a sane length.
_ALIAS = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: How often :meth:`PidFile.acquire` retries when the file is replaced between its open and its lock.
_LOCK_ATTEMPTS = 5


class PidFileError(Exception):
    """A pid file could not be taken or read; the message says what to do."""


class RunDirError(PidFileError):
    """The pid file's directory cannot be created or written."""


class AlreadyRunning(PidFileError):
    """Another live process holds the lock of this role and alias on this host."""

    def __init__(self, role: str, alias: str, pid: int | None, path: Path) -> None:
        self.role, self.alias, self.pid, self.path = role, alias, pid, path
        super().__init__(
            f"{describe(role, alias)} is already running on this host "
            f"(pid {pid if pid is not None else 'unknown'}, pid file {path}); use --alias to run another"
        )


def describe(role: str, alias: str) -> str:
    """``rootcoord`` or ``rootcoord (alias standby)``: how messages name a process."""
    return f"{role} (alias {alias})" if alias else role


def check_alias(alias: str) -> None:
    """An alias names a file: ValueError with the rule when it cannot."""
    if alias and not _ALIAS.fullmatch(alias):
        raise ValueError(
            f"invalid --alias {alias!r}: use up to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )


def file_name(role: str, alias: str) -> str:
    return f"{role}-{alias}.pid" if alias else f"{role}.pid"


def run_dir(env: Mapping[str, str] | None = None) -> Path:
    """The directory ``milvus run`` puts its pid file in, created if needed; RunDirError if unusable."""
    env = os.environ if env is None else env
    override = env.get(RUN_DIR_ENV, "")
    if override:
        return _ensure_writable(Path(override), f"from ${RUN_DIR_ENV}")
    if _usable(SYSTEM_RUN_DIR):
        return SYSTEM_RUN_DIR
    return _ensure_writable(FALLBACK_RUN_DIR, f"{SYSTEM_RUN_DIR} is not writable")


def find(role: str, alias: str, env: Mapping[str, str] | None = None) -> Path:
    """Where the pid file of ``role``/``alias`` is (or would be), creating nothing.

    Without ``$MILVUS_RUN_DIR`` both default dirs are looked at, so ``milvus stop`` finds a file
    whichever of them ``milvus run`` could write.
    """
    env = os.environ if env is None else env
    name = file_name(role, alias)
    override = env.get(RUN_DIR_ENV, "")
    if override:
        return Path(override) / name
    for base in (SYSTEM_RUN_DIR, FALLBACK_RUN_DIR):
        if (base / name).exists():
            return base / name
    writable = SYSTEM_RUN_DIR.is_dir() and os.access(SYSTEM_RUN_DIR, os.W_OK | os.X_OK)
    return (SYSTEM_RUN_DIR if writable else FALLBACK_RUN_DIR) / name


def _usable(path: Path) -> bool:
    try:
        path.mkdir(mode=0o755, exist_ok=True)
    except OSError:
        return False
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def _ensure_writable(path: Path, why: str) -> Path:
    try:
        path.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"cannot create the pid file directory {path} ({why}): {exc.strerror or exc}") from exc
    if not path.is_dir():
        raise RunDirError(f"the pid file directory {path} ({why}) is not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise RunDirError(f"the pid file directory {path} ({why}) is not writable; set ${RUN_DIR_ENV} to one that is")
    return path


# --------------------------------------------------------------------------- holding the file


class PidFile:
    """The locked pid file of this process: :meth:`acquire` at start, :meth:`release` at a clean exit."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, role: str, alias: str, env: Mapping[str, str] | None = None) -> PidFile:
        """Create, lock and fill the pid file; AlreadyRunning when locked, RunDirError when unwritable."""
        check_alias(alias)
        path = run_dir(env) / file_name(role, alias)
        for _ in range(_LOCK_ATTEMPTS):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise RunDirError(f"cannot create the pid file {path}: {exc.strerror or exc}") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(fd)
                os.close(fd)
                raise AlreadyRunning(role, alias, pid, path) from None
            except OSError as exc:
                os.close(fd)
                raise RunDirError(f"cannot lock the pid file {path}: {exc.strerror or exc}") from exc
            if _same_file(fd, path):
                break
            # The former holder removed the file between our open and our lock: we hold the lock of
            # an unlinked inode, which protects nothing. Open the new file.
            os.close(fd)
        else:
            raise PidFileError(f"the pid file {path} keeps being replaced; is something else managing it?")
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise RunDirError(f"cannot write the pid file {path}: {exc.strerror or exc}") from exc
        return cls(path, fd)

    def release(self) -> None:
        """Remove the file (if it is still ours) and drop the lock; idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if _same_file(fd, self.path):
                self.path.unlink(missing_ok=True)
        except OSError:
            pass  # a stale file is harmless: the lock is what counts, and it goes with the close
        finally:
            os.close(fd)

    def __enter__(self) -> PidFile:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


# --------------------------------------------------------------------------- reading someone else's


@dataclass(frozen=True)
class PidFileState:
    """What a pid file says: the pid written in it, and whether a live process holds its lock."""

    path: Path
    pid: int | None
    locked: bool


def inspect(path: Path) -> PidFileState | None:
    """The state of ``path``, or None when there is no such file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PidFileError(f"cannot read the pid file {path}: {exc.strerror or exc}") from exc
    try:
        return PidFileState(path, _read_pid(fd), not _try_lock(fd))
    finally:
        os.close(fd)  # also drops a lock _try_lock took


def remove_stale(path: Path) -> bool:
    """Delete ``path`` if no process holds its lock (checked under the lock, so no race with a new run)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        if not _try_lock(fd) or not _same_file(fd, path):
            return False
        path.unlink()
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def holder(role: str, alias: str, env: Mapping[str, str] | None = None) -> int | None:
    """The pid holding the lock of ``role``/``alias``, or None (no file, stale file, pid not written yet)."""
    state = inspect(find(role, alias, env))
    return state.pid if state is not None and state.locked else None


def _try_lock(fd: int) -> bool:
    """True when we got the lock (nobody holds it); it is released when ``fd`` is closed."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
            return False
        raise
    return True


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the inode ``fd`` has open."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _main(argv: Sequence[str]) -> int:
    """The scripts' entry point (see the module docstring)."""
    try:
        if list(argv) == ["dir"]:
            print(run_dir())
            return 0
        if len(argv) in (2, 3) and argv[0] == "holder":
            pid = holder(argv[1], argv[2] if len(argv) == 3 else "")
            if pid is None:
                return 1
            print(pid)
            return 0
    except PidFileError as exc:
        print(f"pidfile: {exc}", file=sys.stderr)
        return 2
    print("usage: python -m coordinators.pidfile dir | holder <role> [alias]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
