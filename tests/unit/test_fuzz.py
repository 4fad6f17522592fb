"""Fuzz targets (issue 22): any bytes as the body of any gRPC method of any role, and any bytes as an
HTTP request head. Whatever comes, the server answers with a status it means (never UNKNOWN or
INTERNAL, never a traceback in the log) and keeps serving.

Run briefly in the suite; longer by hand: ``FUZZ_EXAMPLES=20000 pytest tests/unit/test_fuzz.py``.
Found and fixed here: an undecodable request, a compressed one and one ending inside its message each
got UNKNOWN with a grpclib traceback logged per call (now INVALID_ARGUMENT / UNIMPLEMENTED, no line).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

import grpclib.const
import h2.events
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinators.proto import common_pb2
from coordinators.registry import ROLES, spec
from coordinators.server.grpc_server import ComponentSnapshot, CoordinatorServer
from coordinators.server.http_server import HttpServer
from harness.h2_attacks import H2Client, request_headers

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
HOST = "127.0.0.1"
#: The statuses a garbage request may get: OK (it decoded), INVALID_ARGUMENT (it did not),
#: RESOURCE_EXHAUSTED (its prefix announced too much), UNIMPLEMENTED (compressed).
MEANT = {"0", "3", "8", "12"}


class DecodeOnly:
    """Every method of a role's service: decode the request, answer an empty reply (the decoding is the target)."""

    def __init__(self, role: str) -> None:
        base = spec(role).service_base()
        stubs = {name: (lambda _self, _stream: None) for name in getattr(base, "__abstractmethods__", ())}
        table = type("_Table", (base,), stubs)().__mapping__()
        self.paths = sorted(table)
        self._mapping = {path: grpclib.const.Handler(self._answer(h.reply_type), h.cardinality, h.request_type,
                                                     h.reply_type) for path, h in table.items()}

    @staticmethod
    def _answer(reply_type: Any) -> Any:
        async def answer(stream: Any) -> None:
            await stream.recv_message()
            await stream.send_message(reply_type())
        return answer

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return self._mapping


class Served:
    """One server per role on a loop of its own thread (hypothesis draws on the test's thread)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers: dict[str, CoordinatorServer] = {}
        self.paths: list[tuple[str, str]] = []
        for role in ROLES:
            service = DecodeOnly(role)
            server = CoordinatorServer(role, lambda r=role: ComponentSnapshot(r, 1, common_pb2.StandBy), [service])
            self.run(server.start(HOST, 0))
            self.servers[role] = server
            self.paths += [(role, path) for path in service.paths]

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def close(self) -> None:
        for server in self.servers.values():
            self.run(server.drain_and_close(1))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    s = Served()
    yield s
    s.close()


async def _send(port: int, path: str, body: bytes) -> str:
    """The grpc-status the server answered ``body`` with ("reset" for a bare RST_STREAM)."""
    conn = await H2Client.open(HOST, port)
    try:
        sid = conn.h2.get_next_available_stream_id()
        conn.h2.send_headers(sid, request_headers(HOST, port, path))
        conn.h2.send_data(sid, body, end_stream=True)
        await conn.flush()
        for _ in range(100):
            await conn.pump(0.05)
            for event in conn.events:
                if isinstance(event, h2.events.TrailersReceived | h2.events.ResponseReceived):
                    status = dict(event.headers).get("grpc-status")
                    if status is not None:
                        return str(status)
                if isinstance(event, h2.events.StreamReset):
                    return "reset"
            if conn.closed:
                return "closed"
        return "no answer"
    finally:
        conn.close()


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """Raw bytes, or a prefix (any flag, any length) before raw bytes, or a valid prefix around them."""
    raw = draw(st.binary(max_size=512))
    kind = draw(st.sampled_from(["raw", "prefixed", "framed"]))
    if kind == "raw":
        return raw
    if kind == "framed":
        return b"\x00" + len(raw).to_bytes(4, "big") + raw
    flag = draw(st.sampled_from([b"\x00", b"\x01", b"\xff"]))
    return flag + draw(st.integers(0, 2**32 - 1)).to_bytes(4, "big") + raw


def test_any_bytes_to_any_method_get_a_meant_status_and_no_traceback(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="grpclib")

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(target=st.sampled_from(served.paths), body=bodies())
    def one(target: tuple[str, str], body: bytes) -> None:
        role, path = target
        status = served.run(_send(served.servers[role].port, path, body))
        assert status in MEANT, (path, body[:40], status)

    one()
    assert not [r for r in caplog.records if r.name.startswith("grpclib")], caplog.text
    for role, server in served.servers.items():  # still serving
        assert served.run(_send(server.port, f"/milvus.coord.{spec(role).service_base().__name__.removesuffix('Base')}"
                                "/GetComponentStates", b"\x00\x00\x00\x00\x00")) == "0"


def _view() -> Any:
    from coordinators.server.metrics import ProcessView

    return ProcessView(role="rootcoord", state=common_pb2.StandBy, server_id=1, epoch=0, stopping=False,
                       session_lost=None, time_left=10.0, refusal="StandBy")


_HTTP = HttpServer("rootcoord", _view, lambda: b"# m\n")


@settings(max_examples=EXAMPLES * 5, deadline=None)
@given(head=st.one_of(
    st.binary(max_size=300),
    st.builds(lambda m, p, v, rest: m + b" " + p + b" " + v + b"\r\n" + rest,
              st.sampled_from([b"GET", b"HEAD", b"POST", b"", b"G\x00T"]),
              st.one_of(st.sampled_from([b"/healthz", b"/readyz", b"/metrics", b"/status", b"/", b"*"]),
                        st.binary(max_size=40)),
              st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2", b""]), st.binary(max_size=60)),
))
def test_any_request_head_gets_an_answer_the_parser_means(head: bytes) -> None:
    status, content_type, body, head_only = _HTTP._answer(head + b"\r\n\r\n")
    assert status in (200, 400, 404, 405, 503)
    assert content_type and isinstance(body, bytes) and isinstance(head_only, bool)


@settings(max_examples=max(20, EXAMPLES // 5), deadline=None)
@given(raw=st.binary(max_size=400))
def test_any_bytes_on_the_http_port_get_an_answer_or_a_close(raw: bytes) -> None:
    async def go() -> bytes:
        server = HttpServer("rootcoord", _view, lambda: b"# m\n")
        await server.start(HOST, 0)
        try:
            reader, writer = await asyncio.open_connection(HOST, server.port)
            writer.write(raw)
            writer.write_eof()
            answer = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            return answer
        finally:
            await server.close()

    answer = asyncio.run(go())
    assert answer == b"" or answer.startswith(b"HTTP/1.1 ")
