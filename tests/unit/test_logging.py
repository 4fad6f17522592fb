"""Log layout: Milvus/zap text lines, JSON lines, level filtering, stdlib routing, flushing, log files."""

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
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
import structlog

from coordinators.config import LogFileConfig
from coordinators.runtime.logging_setup import LogSetupError, RotatingLineWriter, configure_logging, flush_logs

PROJECT_ROOT = Path(__file__).resolve().parents[2]
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


class Captured(io.StringIO):
    """A stream for the logs whose value is read once every line logged so far was written
    (lines are written by the sink's writer thread)."""

    def getvalue(self) -> str:
        assert flush_logs(), "the log writer did not catch up"
        return super().getvalue()


def capture(level: str = "info", fmt: str = "text") -> io.StringIO:
    stream = Captured()
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
        rf"\[{TIME}\] \[INFO\] \[tests/unit/test_logging\.py:{line_no}\] "
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
        rf"\[{TIME}\] \[ERROR\] \[tests/unit/test_logging\.py:{line_no}\] "
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
    assert record["caller"] == f"tests/unit/test_logging.py:{line_no}"
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
        rf"\[{TIME}\] \[WARN\] \[tests/unit/test_logging\.py:{line_no}\] "
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
from coordinators.config import LogFileConfig
from coordinators.runtime.logging_setup import LogSetupError, RotatingLineWriter, configure_logging, flush_logs

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



# ---------------------------------------------------------------- log files (log.file.*)

def files_of(path: Path) -> list[Path]:
    """The current file and its backups, oldest first."""
    backups = sorted(path.parent.glob(path.name + ".*"), key=lambda p: -int(p.suffix[1:]))
    return [*backups, path]


def numbered(count: int, width: int = 9) -> list[str]:
    """Lines ``line-0001xxx\n`` of exactly ``width + 1`` bytes, so sizes are easy to reason about."""
    return [f"line-{n:04d}".ljust(width, "x") + "\n" for n in range(count)]


def test_writer_rotates_at_size_and_keeps_max_backups(tmp_path: Path) -> None:
    path = tmp_path / "rootcoord.log"
    writer = RotatingLineWriter.open(path, max_bytes=35, backups=2)  # 3 lines of 10 bytes per file
    lines = numbered(20)
    try:
        for line in lines:
            writer.write_line(line)
    finally:
        writer.close()
    names = [p.name for p in files_of(path)]
    assert names == ["rootcoord.log.2", "rootcoord.log.1", "rootcoord.log"]  # .3 and older deleted
    contents = [p.read_text() for p in files_of(path)]
    # 20 lines, 3 per file: 6 full files then 2 lines; the last 3 files hold lines 12..19, in order.
    assert contents == ["".join(lines[12:15]), "".join(lines[15:18]), "".join(lines[18:20])]
    assert all(p.stat().st_size <= 35 for p in files_of(path))


def test_writer_never_splits_a_line(tmp_path: Path) -> None:
    path = tmp_path / "querycoord.log"
    writer = RotatingLineWriter.open(path, max_bytes=64, backups=10)
    written = [f"entry {n} " + "é" * (n % 7) * 3 + "\n" + ("  traceback line\n" if n % 5 == 0 else "")
               for n in range(40)]
    written.append("a line longer than the limit: " + "z" * 100 + "\n")
    written.append("after the long one\n")
    try:
        for entry in written:
            writer.write_line(entry)
    finally:
        writer.close()
    files = files_of(path)
    assert len(files) == 11
    for file in files:
        text = file.read_text(encoding="utf-8")
        assert text.endswith("\n")
        size = file.stat().st_size
        assert size <= 64 or text.count("\n") == 1, f"{file.name}: {size} bytes over the limit, not one long line"
    joined = "".join(file.read_text(encoding="utf-8") for file in files)
    assert written[-1] == files[-1].read_text()  # the long line got a file of its own, the next line a new one
    assert files[-2].read_text()[-101:] == "z" * 100 + "\n"
    assert joined == "".join(written)[-len(joined):]  # whole entries, in order, none split or lost within


def test_writer_zero_backups_starts_over(tmp_path: Path) -> None:
    path = tmp_path / "datacoord.log"
    writer = RotatingLineWriter.open(path, max_bytes=25, backups=0)
    try:
        for line in numbered(5):
            writer.write_line(line)
    finally:
        writer.close()
    assert files_of(path) == [path]
    assert path.read_text() == "".join(numbered(5)[4:])


def test_writer_appends_and_counts_existing_file(tmp_path: Path) -> None:
    """A restarted process continues its file and rotates at the same size, not later."""
    path = tmp_path / "rootcoord.log"
    path.write_text("old-0001x\nold-0002x\n")
    writer = RotatingLineWriter.open(path, max_bytes=35, backups=1)
    try:
        for line in numbered(2):
            writer.write_line(line)
    finally:
        writer.close()
    assert (tmp_path / "rootcoord.log.1").read_text() == "old-0001x\nold-0002x\n" + numbered(1)[0]
    assert path.read_text() == numbered(2)[1]


def file_config(root: Path, max_size_mb: float = 300, max_backups: int = 20) -> LogFileConfig:
    # max_size_mb is an int in the config; a float here gives a size of a few bytes (maxSize is in MB).
    return LogFileConfig(root_path=str(root), max_size_mb=max_size_mb, max_backups=max_backups)  # type: ignore[arg-type]


def masked(text: str) -> str:
    return re.sub(TIME, "TIME", text)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_file_gets_the_stdout_layout_and_stdout_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    def emit() -> None:
        log.info("register ACTIVE service successfully", ServerID=19)
        logging.getLogger("grpclib.client").warning("stream reset by %s", "peer")
        try:
            raise ValueError("lease not found")
        except ValueError:
            log.exception("session lost", ServerID=7)

    configure_logging("info", fmt)  # stdout, the default
    emit()
    assert flush_logs()
    on_stdout = capsys.readouterr().out
    configure_logging("info", fmt, file=file_config(tmp_path / "logs"), file_name="rootcoord-standby.log")
    emit()
    assert flush_logs()
    assert capsys.readouterr().out == ""
    in_file = (tmp_path / "logs" / "rootcoord-standby.log").read_text()
    assert on_stdout.count("\n") >= 3
    # Same lines but for the time and the line numbers of the two emit() calls, which are the same calls.
    assert masked(in_file) == masked(on_stdout)


def test_configure_logging_rotates_by_max_size_in_mb(tmp_path: Path) -> None:
    size_mb = 400 / (1024 * 1024)  # 400 bytes
    configure_logging(file=file_config(tmp_path, max_size_mb=size_mb, max_backups=3), file_name="datacoord.log")
    for n in range(60):
        log.info("serverName: datacoord is in STANDBY ...", n=n)
    assert flush_logs()
    files = files_of(tmp_path / "datacoord.log")
    assert [f.name for f in files] == ["datacoord.log.3", "datacoord.log.2", "datacoord.log.1", "datacoord.log"]
    numbers = []
    for file in files:
        assert file.stat().st_size <= 400
        for line in file.read_text().splitlines():
            match = re.fullmatch(rf'\[{TIME}\] \[INFO\] \[tests/unit/test_logging\.py:\d+\] '
                                 r'\["serverName: datacoord is in STANDBY \.\.\."\] \[n=(\d+)\]', line)
            assert match, f"not a whole line: {line!r}"
            numbers.append(int(match[1]))
    assert numbers == list(range(60 - len(numbers), 60))  # the newest lines, consecutive, oldest files deleted


def test_empty_root_path_keeps_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(file=LogFileConfig(root_path="", max_size_mb=300, max_backups=20), file_name="x.log")
    log.info("to stdout")
    assert flush_logs()
    assert '["to stdout"]' in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_reconfigure_closes_the_previous_file(tmp_path: Path) -> None:
    def open_fds() -> set[str]:
        return {os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
                if os.path.exists(f"/proc/self/fd/{fd}")}

    configure_logging(file=file_config(tmp_path / "a"), file_name="rootcoord.log")
    log.info("first")
    held = log.bind(role="rootcoord")  # a logger kept by some object keeps the old sink alive: no GC close
    assert str(tmp_path / "a" / "rootcoord.log") in open_fds()
    configure_logging(file=file_config(tmp_path / "b"), file_name="rootcoord.log")
    log.info("second")
    assert flush_logs()
    assert str(tmp_path / "a" / "rootcoord.log") not in open_fds()
    assert "first" in (tmp_path / "a" / "rootcoord.log").read_text()
    assert "second" in (tmp_path / "b" / "rootcoord.log").read_text()
    capture()  # back to a stream: the file in b/ is closed too
    assert str(tmp_path / "b" / "rootcoord.log") not in open_fds()
    assert held is not None


@pytest.mark.parametrize("layout", ["under_a_file", "is_a_file", "is_a_directory"])
def test_unusable_log_path_is_a_clear_error(tmp_path: Path, layout: str) -> None:
    (tmp_path / "afile").write_text("not a directory\n")
    if layout == "under_a_file":  # root ignores permission bits: a path under a regular file can't be made
        root, name = tmp_path / "afile" / "logs", "rootcoord.log"
    elif layout == "is_a_file":
        root, name = tmp_path / "afile", "rootcoord.log"
    else:  # the log file's own name is taken by a directory
        root, name = tmp_path / "logs", "rootcoord.log"
        (root / name).mkdir(parents=True)
    before = capture()
    with pytest.raises(LogSetupError) as caught:
        configure_logging(file=file_config(root), file_name=name)
    message = str(caught.value)
    assert str(root / name) in message and caught.value.path == str(root / name)
    assert re.search(r"Not a directory|File exists|Is a directory", message), message
    log.info("still here")  # the previous configuration is intact, nothing went elsewhere
    assert '["still here"]' in before.getvalue()
    assert (tmp_path / "afile").read_text() == "not a directory\n"


def test_file_name_must_not_be_a_path(tmp_path: Path) -> None:
    with pytest.raises(LogSetupError, match="plain file name"):
        configure_logging(file=file_config(tmp_path), file_name="../rootcoord.log")
    assert list(tmp_path.iterdir()) == []


FILE_CHILD = """
import sys
import structlog
from coordinators.config import LogFileConfig
from coordinators.runtime.logging_setup import configure_logging

configure_logging(file=LogFileConfig(root_path=sys.argv[1], max_size_mb=300, max_backups=20), file_name="rootcoord.log")
log = structlog.get_logger("child")
for n in range(3):
    log.info("line", n=n)
    sys.stdin.readline()  # block until the parent has seen the line in the file
"""


def test_child_process_file_lines_arrive_before_exit(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    child = subprocess.Popen(
        [sys.executable, "-c", FILE_CHILD, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        env=env, cwd=PROJECT_ROOT,
    )
    assert child.stdin is not None and child.stdout is not None
    path = tmp_path / "rootcoord.log"
    try:
        for n in range(3):
            deadline = time.monotonic() + 20
            while not (path.exists() and path.read_text().count("\n") > n):
                assert child.poll() is None, "the child exited early"
                assert time.monotonic() < deadline, "no log line arrived in the file: not flushed"
                time.sleep(0.01)
            assert path.read_text().splitlines()[n].endswith(f'["line"] [n={n}]')
            child.stdin.write(b"\n")
            child.stdin.flush()
        assert child.wait(timeout=20) == 0
        assert child.stdout.read() == b""  # nothing on stdout
    finally:
        child.kill()
        child.wait()


class _BlockingOutput:
    """An output whose writes wait for :attr:`go`, as a pipe nobody reads does."""

    def __init__(self) -> None:
        import threading

        self.go = threading.Event()
        self.lines: list[str] = []

    def write_line(self, line: str) -> None:
        self.go.wait(10)
        self.lines.append(line)

    def close(self) -> None:
        pass


def test_a_blocked_output_never_blocks_the_caller_drops_past_the_bound_and_says_how_many() -> None:
    from coordinators.runtime import logging_setup

    output = _BlockingOutput()
    sink = logging_setup._LineSink(output, lambda n: f"{n} lines dropped", max_pending=5)
    before = logging_setup.dropped_lines()
    t0 = time.monotonic()
    for n in range(20):
        sink.msg(f"line {n}")
    assert time.monotonic() - t0 < 0.5  # the caller (the event loop) never waited for the output
    output.go.set()
    assert sink.flush(5)
    sink.msg("line 20")
    assert sink.flush(5)
    # Five lines waited in the queue (a sixth, if the writer had taken line 0 before it blocked);
    # the rest were dropped, and the output says how many as soon as it moves again.
    dropped = logging_setup.dropped_lines() - before
    kept = [f"line {n}\n" for n in range(20 - dropped)]
    assert output.lines == [*kept, f"{dropped} lines dropped\n", "line 20\n"], output.lines
    assert dropped in (14, 15)
    sink.close()


def test_a_project_files_caller_is_named_from_the_project_root_whatever_the_working_directory(tmp_path: Path) -> None:
    """``[session/campaign.py:88]`` as Milvus names its files, also for a process started elsewhere
    (``nohup milvus run`` from any directory); a file outside the project by its path from cwd."""
    from coordinators.runtime import log_render

    assert log_render._relative_path(str(PROJECT_ROOT / "session" / "campaign.py"), str(tmp_path)) == "session/campaign.py"
    assert log_render._relative_path(str(tmp_path / "x" / "y.py"), str(tmp_path)) == "x/y.py"
