"""An asyncio TCP proxy that tests control, to cut a client off from etcd.

Why: killing or pausing etcd affects every client at once; a proxy in front of
one client's connection lets a test partition just that client (its gRPC
keep-alives and lease keep-alives stop being answered) while etcd and everyone
else carry on, then heal the partition.

Modes (plain methods, switch any time while started):

- ``forward()``: bytes flow both ways (the default).
- ``blackhole()``: open connections stay open but no byte moves in either
  direction; new connections are accepted and held, not forwarded. The client
  sees silence, as in a network partition. Bytes read before the switch are held
  and delivered on ``forward()``, like TCP retransmission after a healed link.
- ``reset()``: every connection is aborted (RST) and new ones are reset as soon
  as they are accepted, as a peer that refuses connections.
- ``deaf()``: requests flow to the target, its answers are held: a link that drops
  one direction only (the client's writes are applied, it never hears of them).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import struct

__all__ = ["ProxyMode", "TcpProxy"]

_CHUNK = 65536
_UPSTREAM_CONNECT_TIMEOUT = 5.0


class ProxyMode(enum.Enum):
    FORWARD = "forward"
    BLACKHOLE = "blackhole"
    RESET = "reset"
    DEAF = "deaf"


def _split_target(target: str) -> tuple[str, int]:
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"target must be host:port, got {target!r}")
    return host.strip("[]"), int(port)


def _abort(writer: asyncio.StreamWriter | None) -> None:
    """Close with RST (SO_LINGER 0), so the peer sees a reset, not a clean FIN."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Connection:
    """One accepted client and, once forwarding allows it, its upstream socket."""

    def __init__(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.client_reader = client_reader
        self.client_writer = client_writer
        self.upstream_writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None

    def abort(self) -> None:
        """RST both sockets and end the task that serves them."""
        _abort(self.client_writer)
        _abort(self.upstream_writer)
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()


class TcpProxy:
    """Listens on 127.0.0.1:<free port> and forwards each connection to *target*."""

    def __init__(self, target: str, *, listen_host: str = "127.0.0.1", listen_port: int = 0) -> None:
        self.target = target
        self.target_host, self.target_port = _split_target(target)
        self.listen_host = listen_host
        self.listen_port = listen_port
        self._server: asyncio.Server | None = None
        self._mode = ProxyMode.FORWARD
        self._forwarding = asyncio.Event()
        self._forwarding.set()
        self._answers = asyncio.Event()  # bytes back from the target: held while deaf
        self._answers.set()
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.total_connections = 0
        self.bytes_forwarded = 0

    def __repr__(self) -> str:
        return f"TcpProxy({self.endpoint} -> {self.target}, {self._mode.value})"

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:<port>`` to hand to the client instead of the target."""
        if self._server is None and self.listen_port == 0:
            raise RuntimeError("TcpProxy not started")
        return f"{self.listen_host}:{self.listen_port}"

    @property
    def port(self) -> int:
        return self.listen_port

    @property
    def mode(self) -> ProxyMode:
        return self._mode

    @property
    def active_connections(self) -> int:
        return len(self._connections)

    async def start(self) -> TcpProxy:
        """Bind and listen; returns self so ``proxy = await TcpProxy(t).start()`` works."""
        if self._server is not None:
            raise RuntimeError("TcpProxy already started")
        self._server = await asyncio.start_server(
            self._on_accept, self.listen_host, self.listen_port, reuse_address=True
        )
        self.listen_port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        """Stop listening, abort every connection, cancel and await every task."""
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.abort()
        self._connections.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        self._tasks.clear()
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), timeout=5.0)
            self._server = None

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ modes

    def forward(self) -> None:
        """Normal operation: bytes flow; held bytes and held connections proceed."""
        self._mode = ProxyMode.FORWARD
        self._forwarding.set()
        self._answers.set()

    def blackhole(self) -> None:
        """Partition: connections stay open but nothing moves in either direction."""
        self._mode = ProxyMode.BLACKHOLE
        self._forwarding.clear()

    def deaf(self) -> None:
        """One direction dropped: bytes to the target flow, bytes back are held until forward()."""
        self._mode = ProxyMode.DEAF
        self._forwarding.set()
        self._answers.clear()

    def reset(self) -> None:
        """Abort every connection now and reset every new one until forward()."""
        self._mode = ProxyMode.RESET
        self._forwarding.clear()
        for conn in list(self._connections):
            conn.abort()
        self._connections.clear()

    # ------------------------------------------------------------------ plumbing

    def _spawn(self, coro: object, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro, name=name)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _on_accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Accept callback: hand the connection to a task this proxy owns."""
        self.total_connections += 1
        if self._mode is ProxyMode.RESET or self._server is None:
            _abort(writer)
            return
        conn = _Connection(reader, writer)
        self._connections.add(conn)
        conn.task = self._spawn(self._serve(conn), name=f"tcp-proxy-{self.listen_port}-conn")

    async def _serve(self, conn: _Connection) -> None:
        pipes: list[asyncio.Task[None]] = []
        try:
            # Held, not forwarded, while blackholed: connect upstream only when allowed.
            await self._forwarding.wait()
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection(self.target_host, self.target_port),
                    timeout=_UPSTREAM_CONNECT_TIMEOUT,
                )
            except (TimeoutError, OSError):
                return  # finally aborts the client: it sees the target as down
            conn.upstream_writer = up_writer
            pipes = [
                self._spawn(self._pipe(conn.client_reader, up_writer), name="tcp-proxy-c2s"),
                self._spawn(self._pipe(up_reader, conn.client_writer, self._answers), name="tcp-proxy-s2c"),
            ]
            # When either side ends, the connection is over.
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in pipes:
                t.cancel()
            conn.abort()
            self._connections.discard(conn)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, also: asyncio.Event | None = None
    ) -> None:
        """Copy bytes, pausing (without dropping) whenever forwarding (or ``also``) is off."""
        with contextlib.suppress(OSError, ConnectionError):
            while True:
                await self._forwarding.wait()
                data = await reader.read(_CHUNK)
                if not data:
                    return
                # The mode may have changed while we were blocked in read().
                await self._forwarding.wait()
                if also is not None:
                    await also.wait()
                writer.write(data)
                await writer.drain()
                self.bytes_forwarded += len(data)
