"""The directory pid files live in, and whether its files may be believed.

``$MILVUS_RUN_DIR`` when set (tests and scripts use it to stay apart), else ``/run/milvus`` when it
exists or can be created and is writable, else (not for root) ``/tmp/milvus``. A run dir is trusted
only when it belongs to this user and no other user can write to it: a file another user could write
there (a forged stale file naming a live member's session, a symbolic link to a victim's file) must
decide nothing. ``milvus run`` refuses an untrusted run dir with the fix in the message
(:func:`run_dir`); the readers (the restart fast path, ``milvus stop``) skip one (:func:`trusted_dirs`).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from coordinators.errors import CoordinatorError

__all__ = ["FALLBACK_RUN_DIR", "RUN_DIR_ENV", "SYSTEM_RUN_DIR", "PidFileError", "RunDirError", "default_dirs",
           "distrust", "run_dir", "trusted_dirs"]

RUN_DIR_ENV = "MILVUS_RUN_DIR"
SYSTEM_RUN_DIR = Path("/run/milvus")
FALLBACK_RUN_DIR = Path("/tmp/milvus")


class PidFileError(CoordinatorError):
    """A pid file could not be taken or read; the message says what to do."""


class RunDirError(PidFileError):
    """The pid file's directory cannot be created or written."""


def default_dirs() -> list[Path]:
    """The run dirs without ``$MILVUS_RUN_DIR``: root keeps its pid files in /run/milvus only."""
    return [SYSTEM_RUN_DIR] if os.geteuid() == 0 else [SYSTEM_RUN_DIR, FALLBACK_RUN_DIR]


def distrust(path: Path) -> str | None:
    """Why pid files in the directory ``path`` cannot be trusted, or None when they can: it must be a
    directory of this user that no other user can write to."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_uid != os.geteuid():
        return f"belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()})"
    if st.st_mode & 0o022:
        return f"is writable by other users (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def trusted_dirs(env: Mapping[str, str] | None = None) -> list[Path]:
    """The run dirs whose pid files may be read and believed (``$MILVUS_RUN_DIR``, else the defaults)."""
    env = os.environ if env is None else env
    override = env.get(RUN_DIR_ENV, "")
    return [base for base in ([Path(override)] if override else default_dirs()) if distrust(base) is None]


def run_dir(env: Mapping[str, str] | None = None) -> Path:
    """The directory ``milvus run`` puts its pid file in, created if needed; RunDirError if unusable."""
    env = os.environ if env is None else env
    override = env.get(RUN_DIR_ENV, "")
    if override:
        return _ensure_writable(Path(override), f"from ${RUN_DIR_ENV}")
    if _usable(SYSTEM_RUN_DIR) or os.geteuid() == 0:
        return _ensure_writable(SYSTEM_RUN_DIR, "the system's" if os.geteuid() else "root's only")
    return _ensure_writable(FALLBACK_RUN_DIR, f"{SYSTEM_RUN_DIR} is not writable")


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
    if (problem := distrust(path)) is not None:
        raise RunDirError(
            f"the pid file directory {path} ({why}) {problem}: another user could forge or redirect the pid files "
            f"there; fix: chown {os.geteuid()} {path} && chmod go-w {path}, or set ${RUN_DIR_ENV} to a directory "
            "of this user that only it can write to")
    return path
