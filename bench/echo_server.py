"""A bare grpclib RootCoord service: the ceiling of the RPC stack, for the throughput bench.

    python bench/echo_server.py --port 0 --server-id 1 [--loop uvloop]

It answers ``AllocTimestamp`` and ``AllocID`` from an in-memory counter, with the same messages as
rootcoord and the same ``x-milvus-server-id`` reply header (so ``CoordinatorClient`` accepts it),
but nothing else: no gate, no metrics hooks, no fencing, no etcd. The difference between this and
a real rootcoord, called the same way, is what the product's server side costs per call.
Prints ``ready <port>`` once listening; SIGTERM / SIGINT stop it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from grpclib.const import Status
from grpclib.events import SendInitialMetadata, listen
from grpclib.exceptions import GRPCError
from grpclib.server import Server, Stream

from coordinators.proto import common_pb2
from coordinators.proto import rootcoord_pb2 as pb
from coordinators.proto.rootcoord_grpc import RootCoordBase

SERVER_ID_HEADER = "x-milvus-server-id"


class Echo(RootCoordBase):
    def __init__(self, server_id: int) -> None:
        self.server_id = server_id
        self.next = 1

    async def GetComponentStates(self, stream: Stream) -> None:  # type: ignore[override]
        await stream.recv_message()
        await stream.send_message(common_pb2.ComponentStates(
            state=common_pb2.ComponentInfo(nodeID=self.server_id, role="rootcoord", state_code=common_pb2.Healthy)))

    async def AllocTimestamp(self, stream: Stream) -> None:  # type: ignore[override]
        req = await stream.recv_message()
        ts, self.next = self.next, self.next + req.count
        await stream.send_message(pb.AllocTimestampResponse(timestamp=ts, count=req.count))

    async def AllocID(self, stream: Stream) -> None:  # type: ignore[override]
        req = await stream.recv_message()
        begin, self.next = self.next, self.next + req.count
        await stream.send_message(pb.AllocIDResponse(begin=begin, end=begin + req.count, count=req.count))

    async def _unimplemented(self, stream: Stream) -> None:
        raise GRPCError(Status.UNIMPLEMENTED, "echo server")

    CreateCollection = DropCollection = HasCollection = DescribeCollection = ShowCollections = _unimplemented  # type: ignore[assignment]


async def serve(port: int, server_id: int) -> None:
    server = Server([Echo(server_id)])

    async def tag(event: SendInitialMetadata) -> None:
        event.metadata[SERVER_ID_HEADER] = str(server_id)

    listen(server, SendInitialMetadata, tag)
    await server.start("127.0.0.1", port)
    bound = server._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"ready {bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    await server.wait_closed()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--server-id", type=int, default=1)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(serve(args.port, args.server_id))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
