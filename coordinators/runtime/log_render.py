"""How one log event is written: zap's console layout or a JSON line, over the same event dict.

zap's layout, as Milvus writes it: ``[2022/09/21 11:58:33.855 +08:00] [INFO] [session/campaign.py:88]
["msg"] [ServerID=19]``; values bare when they are simple tokens, JSON-quoted otherwise; an error
as ``[error=...]`` with its traceback on the following lines.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import traceback
from collections.abc import Callable
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

from structlog.typing import EventDict

__all__ = ["ExcInfo", "Renderer", "add_time", "format_time", "render_json", "render_text"]

_PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
_LEVEL_TEXT = {"warning": "WARN"}  # zap's spelling; every other level is just upper-cased
_BARE_VALUE = re.compile(r"[A-Za-z0-9._\-:/@]+")
_RESERVED = ("event", "level", "pathname", "lineno", "time", "exc_info")
_JSON_NATIVE = (bool, int, float, list, tuple, dict)  # written as JSON text; other objects via str()

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
Renderer = Callable[[Any, str, EventDict], str]


def add_time(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    event_dict["time"] = format_time(time.time())
    return event_dict


def format_time(timestamp: float) -> str:
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
        return value
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


def render_text(_logger: Any, _method: str, event_dict: EventDict) -> str:
    """zap's console layout: bracketed time, level, caller, quoted message, then ``[Key=value]`` fields."""
    line = _split(event_dict)
    parts = [f"[{line.time}]", f"[{line.level}]", f"[{line.caller}]", f"[{_json(line.message)}]"]
    parts += [f"[{key}={_text_value(value)}]" for key, value in line.fields.items()]
    if line.error is None:
        return " ".join(parts)
    parts.append(f"[error={_text_value(_error_text(line.error))}]")
    return " ".join(parts) + "\n" + _traceback_text(line.error)


def render_json(_logger: Any, _method: str, event_dict: EventDict) -> str:
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
