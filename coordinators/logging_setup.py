"""Logging: structlog events rendered as Milvus/zap lines or as JSON lines.

Operators compare our output with Milvus's, line for line, so the text layout is zap's:
``[2022/09/21 11:58:33.855 +08:00] [INFO] [session/campaign.py:88] ["msg"] [ServerID=19]``.
Code logs events with fields (``log.info("register ACTIVE service successfully", ServerID=19)``);
both layouts are renderers over the same event dict. Every line is flushed as it is written,
because coordinators run under ``nohup ... > /tmp/rootcoord.log 2>&1 &`` and the log is watched live.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, TextIO

import structlog
from structlog.processors import CallsiteParameter, CallsiteParameterAdder
from structlog.typing import EventDict

_PROJECT_ROOT = Path(__file__).resolve().parent.parent
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "warning": logging.WARNING,
           "error": logging.ERROR}
_LEVEL_TEXT = {"warning": "WARN"}  # zap's spelling; every other level is just upper-cased
_BARE_VALUE = re.compile(r"[A-Za-z0-9._\-:/@]+")
_RESERVED = ("event", "level", "pathname", "lineno", "time", "exc_info")
_JSON_NATIVE = (bool, int, float, list, tuple, dict)  # written as JSON text; other objects via str()

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
Renderer = Callable[[Any, str, EventDict], str]


def configure_logging(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Send structlog events, and stdlib records at WARNING or above, to ``stream`` in one layout.

    Safe to call again: the previous configuration and stdlib bridge are replaced, not stacked.
    """
    threshold = _threshold(level)
    renderer = _renderer(fmt)
    sink = _LineSink(stream if stream is not None else sys.stdout)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            CallsiteParameterAdder([CallsiteParameter.PATHNAME, CallsiteParameter.LINENO]),
            _add_time,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=lambda *_args: sink,
        cache_logger_on_first_use=False,  # reconfiguring (tests, the CLI) must reach existing loggers
    )
    _install_stdlib_bridge(_StdlibBridge(sink, renderer, max(threshold, logging.WARNING)))


def _threshold(level: str) -> int:
    try:
        return _LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}: expected one of {', '.join(_LEVELS)}") from None


def _renderer(fmt: str) -> Renderer:
    renderers: dict[str, Renderer] = {"text": _render_text, "json": _render_json}
    try:
        return renderers[fmt.lower()]
    except KeyError:
        raise ValueError(f"unknown log format {fmt!r}: expected text or json") from None


class _LineSink:
    """Writes one rendered line and flushes it; one lock so structlog and stdlib lines never interleave."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def msg(self, line: str) -> None:
        with self._lock:
            try:
                self._stream.write(line + "\n")
                self._stream.flush()
            except (OSError, ValueError):  # a closed pipe or file must not take the coordinator down
                pass

    debug = info = warning = warn = error = critical = exception = fatal = failure = err = log = msg


class _StdlibBridge(logging.Handler):
    """Renders stdlib records (grpclib, etcd3aio...) in our layout, with the record's own caller."""

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
                "time": _format_time(record.created),
                "logger": record.name,
                "exc_info": record.exc_info,
            }
            self._sink.msg(self._renderer(None, record.levelname.lower(), event))
        except Exception:  # logging's contract: a bad record is reported, never raised
            self.handleError(record)


def _install_stdlib_bridge(bridge: _StdlibBridge) -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StdlibBridge)]:
        root.removeHandler(handler)
    root.addHandler(bridge)
    root.setLevel(bridge.level)


def _add_time(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    event_dict["time"] = _format_time(time.time())
    return event_dict


def _format_time(timestamp: float) -> str:
    """Local time with milliseconds and a ``+08:00`` offset, as zap writes it."""
    moment = datetime.fromtimestamp(timestamp).astimezone()
    offset = moment.strftime("%z")
    return f"{moment:%Y/%m/%d %H:%M:%S}.{moment.microsecond // 1000:03d} {offset[:3]}:{offset[3:]}"


class _Line(NamedTuple):
    """An event split into the parts both layouts share."""

    time: str
    level: str
    caller: str
    message: str
    fields: dict[str, Any]
    error: ExcInfo | None


def _split(event_dict: EventDict) -> _Line:
    fields = {key: value for key, value in event_dict.items() if key not in _RESERVED}
    level = str(event_dict.get("level", "info"))
    return _Line(
        time=str(event_dict.get("time", "")),
        level=_LEVEL_TEXT.get(level, level.upper()),
        caller=f"{_short_path(str(event_dict.get('pathname', '?')))}:{event_dict.get('lineno', 0)}",
        message=str(event_dict.get("event", "")),
        fields=fields,
        error=_exc_info(event_dict.get("exc_info")),
    )


def _exc_info(value: Any) -> ExcInfo | None:
    """Normalise structlog's and logging's ways of passing an exception (True, instance, tuple)."""
    if value is True:
        value = sys.exc_info()
    if isinstance(value, BaseException):
        return type(value), value, value.__traceback__
    if isinstance(value, tuple) and len(value) == 3 and value[1] is not None:
        return value  # type: ignore[return-value]
    return None


def _short_path(pathname: str) -> str:
    return _relative_path(pathname, os.getcwd())


@lru_cache(maxsize=1024)
def _relative_path(pathname: str, cwd: str) -> str:
    """Project files as ``session/campaign.py``; others relative to cwd, else by basename."""
    path = Path(os.path.realpath(os.path.join(cwd, pathname)))
    for base in (_PROJECT_ROOT, Path(cwd)):
        if path.is_relative_to(base):
            return path.relative_to(base).as_posix()
    return path.name


def _error_text(error: ExcInfo) -> str:
    message = str(error[1])
    return f"{error[0].__name__}: {message}" if message else error[0].__name__


def _traceback_text(error: ExcInfo) -> str:
    return "".join(traceback.format_exception(*error)).rstrip("\n")


def _render_text(_logger: Any, _method: str, event_dict: EventDict) -> str:
    """zap's console layout: bracketed time, level, caller, quoted message, then ``[Key=value]`` fields."""
    line = _split(event_dict)
    parts = [f"[{line.time}]", f"[{line.level}]", f"[{line.caller}]", f"[{_json(line.message)}]"]
    parts += [f"[{key}={_text_value(value)}]" for key, value in line.fields.items()]
    if line.error is None:
        return " ".join(parts)
    parts.append(f"[error={_text_value(_error_text(line.error))}]")
    return " ".join(parts) + "\n" + _traceback_text(line.error)


def _render_json(_logger: Any, _method: str, event_dict: EventDict) -> str:
    """One JSON object per line, same parts as the text layout, for log shippers."""
    line = _split(event_dict)
    record: dict[str, Any] = {"time": line.time, "level": line.level, "caller": line.caller, "msg": line.message}
    record.update(line.fields)
    if line.error is not None:
        record["error"] = _error_text(line.error)
        record["traceback"] = _traceback_text(line.error)
    return _json(record)


def _text_value(value: Any) -> str:
    """A simple token bare, anything else JSON-quoted, as zap writes field values."""
    text = _json(value) if value is None or isinstance(value, _JSON_NATIVE) else str(value)
    return text if _BARE_VALUE.fullmatch(text) else _json(text)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
