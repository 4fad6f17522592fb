"""Logging: structlog events rendered as Milvus/zap lines or as JSON lines.

Operators compare our output with Milvus's, line for line, so the text layout is zap's:
``[2022/09/21 11:58:33.855 +08:00] [INFO] [session/campaign.py:88] ["msg"] [ServerID=19]``.
Code logs events with fields (``log.info("register ACTIVE service successfully", ServerID=19)``);
both layouts are renderers over the same event dict. Every line is flushed as it is written,
because coordinators run under ``nohup ... > /tmp/rootcoord.log 2>&1 &`` and the log is watched live;
the writing happens on a thread of its own, so an output that blocks never stalls the event loop.

With ``log.file.rootPath`` set, the same lines go to ``<rootPath>/<role>.log`` instead of stdout,
rotated by size as Milvus's ``log.file.maxSize`` / ``maxBackups`` do (see ``RotatingLineWriter``).
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Protocol, TextIO

import structlog
from structlog.processors import CallsiteParameter, CallsiteParameterAdder
from structlog.typing import EventDict

from coordinators.config import LogFileConfig
from coordinators.errors import CoordinatorError
from coordinators.runtime.log_render import Renderer, add_time, format_time, render_json, render_text

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "warning": logging.WARNING,
           "error": logging.ERROR}



class LogSetupError(CoordinatorError):
    """The log file cannot be opened (directory not creatable, not writable...): the CLI prints it, exit 2."""

    def __init__(self, message: str, path: str) -> None:
        self.message = message
        self.path = path
        super().__init__(message)


def configure_logging(
    level: str = "info",
    fmt: str = "text",
    stream: TextIO | None = None,
    file: LogFileConfig | None = None,
    file_name: str = "milvus.log",
) -> None:
    """Send structlog events, and stdlib records at WARNING or above, to one output in one layout.

    The output is ``<file.root_path>/<file_name>`` (rotated at ``file.max_size_mb`` MB, keeping
    ``file.max_backups`` backups) when ``file`` has a non-empty root path, else ``stream``, else stdout.
    Everything that can fail is checked first: a bad level or format raises ValueError, a log file
    that cannot be opened (or a file name that is a path) raises LogSetupError, and either leaves the
    previous configuration in place, with nothing written.
    Safe to call again: the previous configuration, stdlib bridge and log file are replaced, not stacked.
    """
    global _current_sink
    threshold = _threshold(level)
    renderer = _renderer(fmt)
    if file is not None and file.root_path:
        output: _Output = RotatingLineWriter.open(
            Path(file.root_path) / _plain_file_name(file_name),
            max_bytes=_max_bytes(file.max_size_mb),
            backups=file.max_backups,
        )
    else:
        output = _StreamOutput(stream if stream is not None else sys.stdout)
    sink = _LineSink(output, lambda n: renderer(None, "warning", _dropped_event(n)))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            CallsiteParameterAdder([CallsiteParameter.PATHNAME, CallsiteParameter.LINENO]),
            add_time,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=lambda *_args: sink,
        cache_logger_on_first_use=False,  # reconfiguring (tests, the CLI) must reach existing loggers
    )
    _install_stdlib_bridge(_StdlibBridge(sink, renderer, max(threshold, logging.WARNING)))
    previous, _current_sink = _current_sink, sink
    if previous is not None:
        previous.close()
    global _atexit_registered
    if not _atexit_registered:
        atexit.register(_close_current)
        _atexit_registered = True


_atexit_registered = False


def _close_current() -> None:
    """At interpreter exit: the lines still queued reach the output (bounded wait)."""
    if _current_sink is not None:
        _current_sink.close()


def _dropped_event(count: int) -> EventDict:
    return {"event": "log lines dropped: the log output could not keep up (a full pipe or disk?)",
            "level": "warning", "pathname": __file__, "lineno": 0, "time": format_time(time.time()),
            "dropped": count, "droppedTotal": _dropped_total}


def _plain_file_name(file_name: str) -> str:
    """The file (named after the role and alias) must stay inside rootPath: a name, not a path."""
    if not file_name or file_name in (".", "..") or "/" in file_name or os.sep in file_name:
        raise LogSetupError(f"log file name {file_name!r} must be a plain file name, without '/'", file_name)
    return file_name


def _max_bytes(max_size_mb: float) -> int:
    """``log.file.maxSize`` is in megabytes, as Milvus's; fractions are allowed (tests use tiny sizes)."""
    max_bytes = int(max_size_mb * 1024 * 1024)
    if max_bytes < 1:
        raise ValueError(f"log.file.maxSize must be > 0 MB, got {max_size_mb!r}")
    return max_bytes


def _threshold(level: str) -> int:
    try:
        return _LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}: expected one of {', '.join(_LEVELS)}") from None


def _renderer(fmt: str) -> Renderer:
    renderers: dict[str, Renderer] = {"text": render_text, "json": render_json}
    try:
        return renderers[fmt.lower()]
    except KeyError:
        raise ValueError(f"unknown log format {fmt!r}: expected text or json") from None


class _Output(Protocol):
    """Where whole lines go: a stream or a rotating file. Called from the sink's writer thread only."""

    def write_line(self, line: str) -> None: ...

    def close(self) -> None: ...


class _StreamOutput:
    """stdout (or a test's stream), flushed per line; never closed: we do not own it."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write_line(self, line: str) -> None:
        self._stream.write(line)
        self._stream.flush()

    def close(self) -> None:
        pass


class RotatingLineWriter:
    """Appends whole lines to a file and rotates it by size, as lumberjack does for Milvus's zap.

    Why our own writer: the unit is a rendered entry (with its traceback), never split across files,
    and the file must be opened, and fail clearly, before any line is written. Names follow logging's
    RotatingFileHandler: ``rootcoord.log`` is current, ``rootcoord.log.1`` the newest backup and
    ``rootcoord.log.<backups>`` the oldest; older ones are deleted. A line that would take the file
    past ``max_bytes`` starts a new file; a line longer than ``max_bytes`` gets a file of its own.
    ``backups=0`` keeps no backup: the file starts over (lumberjack would keep them all instead).

    Each line is one unbuffered ``write`` to a local file, made by the sink's writer thread as soon
    as the line is logged; a rotation adds at most ``backups`` renames and one open.
    """

    def __init__(self, path: Path, max_bytes: int, backups: int, handle: BinaryIO) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._file = handle
        self._size = os.fstat(handle.fileno()).st_size  # appending to an existing file counts its size

    @classmethod
    def open(cls, path: Path, max_bytes: int, backups: int) -> RotatingLineWriter:
        """Create the directory and open the file for appending, or raise LogSetupError naming the path."""
        if max_bytes < 1 or backups < 0:
            raise ValueError(f"log rotation needs max_bytes >= 1 and backups >= 0, got {max_bytes} and {backups}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = _open_append(path)
        except OSError as exc:
            raise LogSetupError(
                f"cannot open log file {path} (log.file.rootPath {path.parent}): {exc}", str(path)
            ) from exc
        return cls(path, max_bytes, backups, handle)

    def write_line(self, line: str) -> None:
        """Write one complete line (or entry), rotating first if it would not fit in the current file."""
        data = line.encode("utf-8", "backslashreplace")
        if self._file.closed:  # a previous rotation could not reopen the file: try again
            self._reopen()
        if self._size > 0 and self._size + len(data) > self.max_bytes:
            self._rotate()
        view = memoryview(data)
        while view:  # a regular file takes it all at once, short of a full disk
            written = self._file.write(view) or 0
            view = view[written:]
        self._size += len(data)

    def _rotate(self) -> None:
        """Shift the backups up by one (the oldest falls off) and start an empty current file."""
        self._file.close()
        try:
            if self.backups == 0:
                self.path.unlink(missing_ok=True)
            else:
                for index in range(self.backups - 1, 0, -1):
                    if self._backup(index).exists():
                        os.replace(self._backup(index), self._backup(index + 1))
                os.replace(self.path, self._backup(1))
        finally:  # whatever failed, keep writing: to the old file if it could not be moved
            self._reopen()

    def _reopen(self) -> None:
        self._file = _open_append(self.path)
        self._size = os.fstat(self._file.fileno()).st_size

    def _backup(self, index: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{index}")

    def close(self) -> None:
        self._file.close()


def _open_append(path: Path) -> BinaryIO:
    """Unbuffered: every write reaches the file at once, nothing to flush, nothing lost on a crash."""
    return open(path, "ab", buffering=0)


#: Lines a sink holds for its writer thread before it drops new ones (a few MB at most).
MAX_PENDING_LINES = 10_000

_dropped_total = 0  # every line dropped by any sink of this process (see dropped_lines)


def flush_logs(timeout: float = 5.0) -> bool:
    """Wait until every line logged so far has reached the output (tests; orderly shutdowns)."""
    return _current_sink.flush(timeout) if _current_sink is not None else True


def dropped_lines() -> int:
    """How many log lines this process dropped because its output could not keep up (a metric)."""
    return _dropped_total


class _LineSink:
    """Hands each rendered line to a writer thread, which writes and flushes it at once.

    Why a thread: a write can block (``nohup ... > pipe`` with nobody reading, a stalled disk), and
    a blocked write on the event loop would stop the keep-alives too: the session would be lost for
    a log line. The loop only appends to a bounded queue; when the output cannot keep up and the
    queue is full, new lines are dropped and counted (:func:`dropped_lines`), and the output gets
    one line saying how many once it moves again. Lines keep their order; the writer wakes for
    each line, so a line reaches the output as it happens, and at exit (:meth:`close`) whatever is
    queued is written, within a bound.
    """

    def __init__(self, output: _Output, notice: Callable[[int], str], max_pending: int = MAX_PENDING_LINES) -> None:
        self._output = output
        self._notice = notice  # the "N lines dropped" line, in the configured layout
        self._max_pending = max_pending
        self._pending: collections.deque[str | int] = collections.deque()  # lines, or counts of dropped ones
        self._dropping = 0
        self._writing = False
        self._cond = threading.Condition()
        self._closed = False
        self._reported = False
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def msg(self, line: str) -> None:
        global _dropped_total
        with self._cond:
            if self._closed:  # after close (interpreter exit): nobody writes for us any more
                self._write(line + "\n")
                return
            if len(self._pending) >= self._max_pending:
                self._dropping += 1
                _dropped_total += 1
                self._cond.notify()
                return
            if self._dropping:
                self._pending.append(self._dropping)
                self._dropping = 0
            self._pending.append(line + "\n")
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._writing = False
                self._cond.notify_all()  # flush() waits for an idle writer
                while not self._pending and not self._dropping and not self._closed:
                    self._cond.wait()
                if self._pending:
                    item: str | int = self._pending.popleft()
                elif self._dropping:  # the queue drained after drops: say so now, not with the next line
                    item, self._dropping = self._dropping, 0
                else:
                    return
                self._writing = True
            self._write(item if isinstance(item, str) else self._notice(item) + "\n")

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every line logged so far is written; False if ``timeout`` passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and not self._dropping and not self._writing, timeout)

    def _write(self, text: str) -> None:
        try:
            self._output.write_line(text)
        except (OSError, ValueError) as exc:  # a closed pipe or a full disk must not take the coordinator down
            self._report_once(exc)

    def _report_once(self, exc: Exception) -> None:
        """Say once on stderr that lines are being lost, rather than lose them silently."""
        if self._reported:
            return
        self._reported = True
        try:
            sys.stderr.write(f"milvus: cannot write log lines: {exc}\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued (waiting at most ``timeout`` s for a blocked output), then close it."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            return  # the output is blocked: leave it to the daemon thread, do not hang the exit
        with self._cond, contextlib.suppress(OSError):
            self._output.close()

    debug = info = warning = warn = error = critical = exception = fatal = failure = err = log = msg


_current_sink: _LineSink | None = None


class _StdlibBridge(logging.Handler):
    """Renders stdlib records (grpclib, asyncio...) in our layout, with the record's own caller."""

    def __init__(self, sink: _LineSink, renderer: Renderer, level: int) -> None:
        super().__init__(level)
        self._sink = sink
        self._renderer = renderer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            event: EventDict = {
                "event": record.getMessage(),
                "level": record.levelname.lower(),
                "pathname": record.pathname,
                "lineno": record.lineno,
                "time": format_time(record.created),
                "logger": record.name,
                "exc_info": record.exc_info,
            }
            self._sink.msg(self._renderer(None, record.levelname.lower(), event))
        except Exception:  # noqa: BLE001 - logging's contract: a bad record is reported, never raised
            self.handleError(record)


def _install_stdlib_bridge(bridge: _StdlibBridge) -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StdlibBridge)]:
        root.removeHandler(handler)
    root.addHandler(bridge)
    root.setLevel(bridge.level)
