"""Log layout: Milvus/zap text lines, JSON lines, level filtering, stdlib routing, flushing."""

from __future__ import annotations

import inspect
import io
import json
import logging
import os
import re
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
import structlog

from coordinators.logging_setup import configure_logging

PROJECT_ROOT = Path(__file__).resolve().parent.parent
log = structlog.get_logger(__name__)

TIME = r"\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2}\.\d{3} [+-]\d{2}:\d{2}"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Leave structlog and the root logger as found, so other tests' output is not captured here."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def capture(level: str = "info", fmt: str = "text") -> io.StringIO:
    stream = io.StringIO()
    configure_logging(level, fmt, stream)
    return stream


def next_line() -> int:
    """The line number of the caller's next line: where its log call is."""
    frame = inspect.currentframe()
    assert frame is not None and frame.f_back is not None
    return frame.f_back.f_lineno + 1


def test_text_layout_matches_milvus() -> None:
    stream = capture()
    line_no = next_line()
    log.info("register ACTIVE service successfully", ServerID=19)
    pattern = (
        rf"\[{TIME}\] \[INFO\] \[tests/test_logging\.py:{line_no}\] "
        r'\["register ACTIVE service successfully"\] \[ServerID=19\]\n'
    )
    assert re.fullmatch(pattern, stream.getvalue())


def test_fields_keep_order_and_quote_like_zap() -> None:
    stream = capture()
    log.info(
        "watch the ACTIVE key",
        DELETE='key:"by-dev/meta/session/rootcoord" mod_revision:167 ',
        role="rootcoord",
        address="10.0.0.1:53100",
        path="by-dev/meta/session/rootcoord-15",
        user="root@host",
        empty="",
        spaced="two words",
        ok=True,
        none=None,
        ids=[1, 2],
        path_obj=Path("/tmp/x"),
    )
    fields = stream.getvalue().split('["watch the ACTIVE key"] ', 1)[1].rstrip("\n")
    assert fields == (
        r'[DELETE="key:\"by-dev/meta/session/rootcoord\" mod_revision:167 "] [role=rootcoord]'
        " [address=10.0.0.1:53100] [path=by-dev/meta/session/rootcoord-15] [user=root@host]"
        ' [empty=""] [spaced="two words"] [ok=true] [none=null] [ids="[1,2]"] [path_obj=/tmp/x]'
    )


def test_message_is_json_quoted() -> None:
    stream = capture()
    log.info('say "hi"\tnow')
    assert '["say \\"hi\\"\\tnow"]' in stream.getvalue()


def test_bound_fields_come_first() -> None:
    stream = capture()
    log.bind(serverName="rootcoord").info("enter STANDBY mode", ServerID=3)
    assert stream.getvalue().endswith('["enter STANDBY mode"] [serverName=rootcoord] [ServerID=3]\n')


def test_warning_is_written_warn() -> None:
    stream = capture()
    log.warning("a")
    log.warn("b")
    assert re.findall(r"\] \[(\w+)\] \[", stream.getvalue()) == ["WARN", "WARN"]


def test_exception_field_and_traceback() -> None:
    stream = capture()
    try:
        raise ValueError("lease not found")
    except ValueError:
        line_no = next_line()
        log.exception("session lost", ServerID=7)
    first, *rest = stream.getvalue().rstrip("\n").split("\n")
    pattern = (
        rf"\[{TIME}\] \[ERROR\] \[tests/test_logging\.py:{line_no}\] "
        r'\["session lost"\] \[ServerID=7\] \[error="ValueError: lease not found"\]'
    )
    assert re.fullmatch(pattern, first)
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "ValueError: lease not found"


def test_json_layout() -> None:
    stream = capture(fmt="json")
    line_no = next_line()
    log.info("register ACTIVE service successfully", ServerID=19, DELETE='key:"k" ')
    record = json.loads(stream.getvalue())
    assert list(record) == ["time", "level", "caller", "msg", "ServerID", "DELETE"]
    assert re.fullmatch(TIME, record["time"])
    assert record["level"] == "INFO"
    assert record["caller"] == f"tests/test_logging.py:{line_no}"
    assert record["msg"] == "register ACTIVE service successfully"
    assert (record["ServerID"], record["DELETE"]) == (19, 'key:"k" ')


def test_json_exception() -> None:
    stream = capture(fmt="json")
    try:
        raise TimeoutError()
    except TimeoutError:
        log.exception("keep-alive failed")
    record = json.loads(stream.getvalue())
    assert record["error"] == "TimeoutError"
    assert record["traceback"].startswith("Traceback (most recent call last):")


@pytest.mark.parametrize(
    ("level", "expected"),
    [("debug", ["d", "i", "w", "e"]), ("info", ["i", "w", "e"]), ("warn", ["w", "e"]),
     ("warning", ["w", "e"]), ("error", ["e"])],
)
def test_level_filtering(level: str, expected: list[str]) -> None:
    stream = capture(level)
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    assert re.findall(r'\["(\w)"\]', stream.getvalue()) == expected


def test_unknown_level_or_format_rejected() -> None:
    with pytest.raises(ValueError, match="verbose"):
        configure_logging("verbose")
    with pytest.raises(ValueError, match="xml"):
        configure_logging(fmt="xml")


def test_reconfigure_replaces_output() -> None:
    first = capture()
    second = capture()
    log.info("only in second")
    logging.getLogger("grpclib.client").warning("also only in second")
    assert first.getvalue() == ""
    assert second.getvalue().count("\n") == 2


def test_stdlib_logging_routed_at_warning_and_above() -> None:
    stream = capture("debug")
    library = logging.getLogger("grpclib.client")
    library.info("chatty %s", "detail")
    line_no = next_line()
    library.warning("stream reset by %s", "peer")
    pattern = (
        rf"\[{TIME}\] \[WARN\] \[tests/test_logging\.py:{line_no}\] "
        r'\["stream reset by peer"\] \[logger=grpclib\.client\]\n'
    )
    assert re.fullmatch(pattern, stream.getvalue())


def test_stdlib_respects_higher_level() -> None:
    stream = capture("error")
    logging.getLogger("etcd3aio").warning("hidden")
    logging.getLogger("etcd3aio").error("shown")
    assert re.findall(r'\["(\w+)"\]', stream.getvalue()) == ["shown"]


CHILD = """
import sys
import structlog
from coordinators.logging_setup import configure_logging

configure_logging()
log = structlog.get_logger("child")
for n in range(3):
    log.info("line", n=n)
    sys.stdin.readline()  # block until the parent has seen the line
"""


def read_line(stream: IO[bytes], timeout: float) -> bytes:
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, "no log line arrived: output is not flushed"
    return stream.readline()


def test_child_process_lines_arrive_before_exit() -> None:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=PROJECT_ROOT
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        for n in range(3):
            line = read_line(child.stdout, timeout=20).decode()
            assert child.poll() is None, "the child exited before its line was read"
            assert line.rstrip("\n").endswith(f'["line"] [n={n}]')
            child.stdin.write(b"\n")
            child.stdin.flush()
        assert child.wait(timeout=20) == 0
    finally:
        child.kill()
        child.wait()
