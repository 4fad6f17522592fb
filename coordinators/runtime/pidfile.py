"""Pid files: one per ``milvus run`` process on a host, and a way to find them.

``milvus run <role> --alias NAME`` takes ``<run dir>/<role>-<NAME>.pid``; a second process of the
same role and alias refuses to start. Without ``--alias`` (Milvus's own procedure starts a second
``milvus run rootcoord`` as is) the name is chosen automatically: ``<role>.pid``, or when a live
process holds it ``<role>-2.pid``, then ``<role>-3.pid``..., the first one no live process holds
(a file whose process is gone is reused). A number is therefore not a valid alias.

The process takes an exclusive ``flock`` on its file and writes its pid on the first line; the lock
is held for the life of the process and the file is removed at a clean exit. Why a lock and not
just the file: the kernel drops the lock when the process dies, however it dies, so a SIGKILLed
process leaves a *stale* file (unlocked: anyone can tell) rather than a stuck one. After the pid,
``key=value`` lines record what the process is (its alias, and once registered its server ID, lease
ID and advertised address): a stale file still names the session its dead process held, which a
restart on the same host may then revoke at once (see :mod:`coordinators.server.process`).
``milvus stop`` and the cluster scripts read the same files.

The run dir and when it is trusted: :mod:`coordinators.runtime.run_dir`. A pid file is opened without
following links, created mode 0600 (its lease ID is nobody else's business), and believed only when
it is a regular file of this user.

Run as ``python -m coordinators.runtime.pidfile dir`` it prints the run dir, and as
``python -m coordinators.runtime.pidfile holder <role> [alias]`` the pid holding that role's lock (exit 1 when
none does): the shell scripts ask here rather than repeat the rules.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from coordinators.runtime.run_dir import (
    FALLBACK_RUN_DIR,
    RUN_DIR_ENV,
    SYSTEM_RUN_DIR,
    PidFileError,
    RunDirError,
    default_dirs,
    distrust,
    run_dir,
    trusted_dirs,
)

__all__ = [
    "FALLBACK_RUN_DIR", "RUN_DIR_ENV", "SYSTEM_RUN_DIR", "AlreadyRunning", "PidFile", "PidFileError", "PidFileState",
    "RunDirError", "StaleSession", "default_dirs", "distrust", "find", "holder", "inspect", "recorded_session",
    "remove_stale", "run_dir", "stale_sessions", "trusted_dirs",
]


#: An alias becomes part of a file name: no path separators, no leading dot, a sane length.
_ALIAS = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: How often :meth:`PidFile.acquire` retries when the file is replaced between its open and its lock.
_LOCK_ATTEMPTS = 5
#: Automatic names tried without ``--alias``: ``<role>.pid``, ``<role>-2.pid`` ... ``<role>-99.pid``.
MAX_AUTOMATIC = 99


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


def check_alias(alias: str, *, allow_number: bool = False) -> None:
    """An alias names a file: ValueError with the rule when it cannot.

    A number is refused for ``run`` (``rootcoord-2.pid`` is an automatic name); ``stop`` takes one
    (``allow_number``) to name that automatic file.
    """
    if alias and not _ALIAS.fullmatch(alias):
        raise ValueError(
            f"invalid --alias {alias!r}: use up to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    if alias.isdigit() and not allow_number:
        raise ValueError(
            f"invalid --alias {alias!r}: numbers name the automatic pid files of processes started without "
            "--alias (<role>-2.pid...); choose a name with a letter in it"
        )


def file_name(role: str, alias: str) -> str:
    return f"{role}-{alias}.pid" if alias else f"{role}.pid"


def automatic_name(role: str, index: int) -> str:
    """The ``index``-th automatic file name: ``rootcoord.pid``, ``rootcoord-2.pid``, ..."""
    return f"{role}.pid" if index == 1 else f"{role}-{index}.pid"


def is_automatic(alias: str) -> bool:
    """Whether a pid file's alias part is an automatic number (the process was started without --alias)."""
    return alias == "" or alias.isdigit()


def automatic_files(role: str, env: Mapping[str, str] | None = None) -> list[Path]:
    """Every existing pid file of ``role`` started without ``--alias`` (``<role>.pid``, ``<role>-N.pid``),
    in the run dir (both default dirs without ``$MILVUS_RUN_DIR``; trusted ones only), in index order."""
    bases = trusted_dirs(env)
    pattern = re.compile(rf"{re.escape(role)}(?:-(?P<n>[0-9]+))?\.pid")
    found: list[tuple[int, str, Path]] = []
    for base in bases:
        try:
            names = os.listdir(base)
        except OSError:
            continue
        for name in names:
            match = pattern.fullmatch(name)
            if match is not None:
                found.append((int(match["n"] or 1), str(base), base / name))
    return [path for _n, _base, path in sorted(found)]


@dataclass(frozen=True)
class StaleSession:
    """A session a dead process of this host recorded in its pid file (a trusted one)."""

    path: Path
    server_id: int
    lease_id: int
    address: str  #: the address it advertised ("" when it never recorded one)


def stale_sessions(role: str, env: Mapping[str, str] | None = None) -> list[StaleSession]:
    """The sessions recorded in every pid file of ``role`` (any alias) that no live process holds, in
    the trusted run dirs, each a regular file of this user: processes of this host certainly gone."""
    found = []
    for base in trusted_dirs(env):
        try:
            names = sorted(os.listdir(base))
        except OSError:
            continue
        for name in names:
            if not (name == f"{role}.pid" or (name.startswith(f"{role}-") and name.endswith(".pid"))):
                continue
            try:
                state = inspect(base / name, own=True)
            except PidFileError:
                continue
            if state is not None and not state.locked and (session := recorded_session(state.facts)) is not None:
                found.append(StaleSession(base / name, *session, state.facts.get("address", "")))
    return found


def recorded_session(facts: Mapping[str, str]) -> tuple[int, int] | None:
    """The ``(server ID, lease ID)`` a pid file's facts name, or None."""
    server_id, lease_id = facts.get("server_id", ""), facts.get("lease_id", "")
    try:
        return int(server_id), int(lease_id, 16)
    except ValueError:
        return None


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
    for base in trusted_dirs(env):
        if (base / name).exists():
            return base / name
    writable = SYSTEM_RUN_DIR.is_dir() and os.access(SYSTEM_RUN_DIR, os.W_OK | os.X_OK)
    return (SYSTEM_RUN_DIR if writable else FALLBACK_RUN_DIR) / name


# --------------------------------------------------------------------------- holding the file


class PidFile:
    """The locked pid file of this process: :meth:`acquire` at start, :meth:`release` at a clean exit."""

    def __init__(self, path: Path, fd: int, *, skipped: list[tuple[Path, int | None]] | None = None) -> None:
        self.path = path
        self._fd: int | None = fd
        #: Automatic names passed over because a live process held them: (path, its pid).
        self.skipped: list[tuple[Path, int | None]] = skipped or []
        self.facts: dict[str, str] = {}
        #: What the stale file said before this process took it over (its ``pid`` and facts), or {}.
        self.predecessor: dict[str, str] = {}

    @classmethod
    def acquire(cls, role: str, alias: str, env: Mapping[str, str] | None = None) -> PidFile:
        """Create, lock and fill the pid file; AlreadyRunning when locked, RunDirError when unwritable.

        Without ``alias`` the first automatic name no live process holds (see the module docstring);
        :attr:`skipped` lists the files that were held, with their pids.
        """
        check_alias(alias)
        directory = run_dir(env)
        if alias:
            return cls._take(directory / file_name(role, alias), role, alias, [])
        skipped: list[tuple[Path, int | None]] = []
        for index in range(1, MAX_AUTOMATIC + 1):
            try:
                return cls._take(directory / automatic_name(role, index), role, "", skipped)
            except AlreadyRunning as held:
                skipped.append((held.path, held.pid))
        raise PidFileError(
            f"{MAX_AUTOMATIC} processes of {role} already run on this host without --alias "
            f"(pid files {role}.pid to {role}-{MAX_AUTOMATIC}.pid in {directory})"
        )

    @classmethod
    def _take(cls, path: Path, role: str, alias: str, skipped: list[tuple[Path, int | None]]) -> PidFile:
        for _ in range(_LOCK_ATTEMPTS):
            fd = _open_own(path)
            if fd is None:
                continue  # removed between two opens: again
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
        pid_file = cls(path, fd, skipped=list(skipped))
        old_pid, old_facts = _read_content(fd)  # a stale file: what its dead process recorded
        if old_pid is not None and old_pid != os.getpid():
            pid_file.predecessor = {"pid": str(old_pid), **old_facts}
        try:
            pid_file.record(role=role, alias=alias)
        except OSError as exc:
            os.close(fd)
            raise RunDirError(f"cannot write the pid file {path}: {exc.strerror or exc}") from exc
        return pid_file

    def record(self, **facts: str | int) -> None:
        """Write the pid line and ``key=value`` facts (merged with those recorded before).

        The process records its session here (``server_id``, ``lease_id``, ``address``), so that once
        it is dead its file still says which session it held.
        """
        if self._fd is None:
            raise PidFileError(f"the pid file {self.path} is released")
        self.facts.update({key: str(value) for key, value in facts.items()})
        body = "".join(f"{key}={value}\n" for key, value in self.facts.items() if "\n" not in value)
        data = f"{os.getpid()}\n{body}".encode()
        os.pwrite(self._fd, data, 0)
        os.ftruncate(self._fd, len(data))

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


def _own_file(st: os.stat_result) -> bool:
    """Whether a pid file (its fstat) may be believed: a regular file of this user."""
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid()


def _open_own(path: Path) -> int | None:
    """Open (created exclusively, mode 0600, when absent) the pid file ``path`` for writing, never through a
    link, and only a regular file of this user; None when it vanished between two opens."""
    flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            fd = os.open(path, flags)  # a stale file to take over, or a live one (its lock says)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RunDirError(f"the pid file {path} is a symbolic link: not followed; remove it") from exc
        raise RunDirError(f"cannot create the pid file {path}: {exc.strerror or exc}") from exc
    st = os.fstat(fd)
    if not _own_file(st):
        os.close(fd)
        raise RunDirError(f"the pid file {path} is not a regular file of this user (uid {st.st_uid}): remove it")
    if stat.S_IMODE(st.st_mode) != 0o600:
        os.fchmod(fd, 0o600)  # a file an earlier version left 0644: its lease ID was readable by anyone
    return fd


# --------------------------------------------------------------------------- reading someone else's


@dataclass(frozen=True)
class PidFileState:
    """What a pid file says: the pid written in it, the facts recorded after it, and whether a live
    process holds its lock."""

    path: Path
    pid: int | None
    locked: bool
    facts: Mapping[str, str] = field(default_factory=dict)


def inspect(path: Path, *, own: bool = False) -> PidFileState | None:
    """The state of ``path``, or None when there is no such file; never through a link. ``own``: a file
    that is not a regular file of this user raises PidFileError (its facts decide nothing)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PidFileError(f"cannot read the pid file {path}: {exc.strerror or exc}") from exc
    if own and not _own_file(os.fstat(fd)):
        os.close(fd)
        raise PidFileError(f"the pid file {path} is not a regular file of this user")
    try:
        locked = not _try_lock(fd)
        pid, facts = _read_content(fd)
        return PidFileState(path, pid, locked, facts)
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
    return _read_content(fd)[0]


def _read_content(fd: int) -> tuple[int | None, dict[str, str]]:
    """The pid on the first line and the ``key=value`` lines after it (garbage is ignored)."""
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", errors="replace")
    except OSError:
        return None, {}
    first, _, rest = text.partition("\n")
    facts = {}
    for line in rest.splitlines():
        key, eq, value = line.partition("=")
        if eq and key.isidentifier():
            facts[key] = value
    first = first.strip()
    return (int(first) if first.isdigit() and first.isascii() else None), facts


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
    print("usage: python -m coordinators.runtime.pidfile dir | holder <role> [alias]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
