"""The etcd client's members (session/etcd_rpc.py): which member a call goes to, and which calls may be
sent to another one.

The safety rule under test: a call etcd may have received is never sent again to another member (a
txn could be applied twice); a call that could not reach a member at all is sent to the next one at
once. Both against a real etcd, with a fake member (a grpclib server that receives the request and
then breaks the connection, or never answers) or a port nothing listens on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from grpclib.const import Cardinality, Handler
from grpclib.server import Server, Stream

from harness.etcd_server import EtcdCluster, free_port
from harness.session_helpers import connected, wait_until
from harness.tcp_proxy import TcpProxy
from session.errors import EtcdUnavailable
from session.etcd import cmp_version, op_put
from session.etcd_rpc import TXN, rpc_pb
from session.watch import KeyEvent, watch

TcpProxyFactory = Callable[[str], Awaitable[TcpProxy]]


class FakeMember:
    """A grpclib server that takes etcd's Txn: records each request, then does what ``then`` says."""

    def __init__(self, then: str) -> None:
        self.then = then
        self.received: list[Any] = []
        self.port = free_port()
        self._server = Server([self])

    def __mapping__(self) -> dict[str, Handler]:
        return {TXN.path: Handler(self._txn, Cardinality.UNARY_UNARY, TXN.request, TXN.reply)}

    async def _txn(self, stream: Stream[Any, Any]) -> None:
        self.received.append(await stream.recv_message())
        if self.then == "break":  # the request arrived; the connection dies before any answer
            stream._stream._transport.abort()  # grpclib has no public way to do this
        await asyncio.Event().wait()  # "silent": no answer, ever (the server cancels this at exit)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def __aenter__(self) -> FakeMember:
        await self._server.start("127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)


def claim(key: str) -> Callable[[Any], Any]:
    """A txn that creates ``key`` only if it does not exist: applied twice, the second one fails."""
    return lambda etcd: etcd.txn([cmp_version(key, 0)], [op_put(key, b"once")])


async def test_a_member_that_refuses_connections_is_passed_over_within_the_same_call(
    etcd: EtcdCluster, etcd_prefix: str
) -> None:
    key = f"{etcd_prefix}/refused"
    closed = f"127.0.0.1:{free_port()}"  # nothing listens there: the connection is refused
    async with connected([closed, etcd.endpoint]) as client:
        resp = await claim(key)(client)  # the first call already lands on the second member
        assert resp.succeeded
        assert client._live().current == etcd.endpoint
        assert [kv.value for kv in (await client.get(key)).kvs] == [b"once"]


@pytest.mark.parametrize("then", ["break", "silent"])
async def test_a_call_the_member_received_is_never_sent_to_another(etcd: EtcdCluster, etcd_prefix: str, then: str) -> None:
    """The fake member receives the txn, then breaks the connection (or never answers): the call fails
    as EtcdUnavailable and the real member never sees it; the next call goes to the real member."""
    key = f"{etcd_prefix}/once-{then}"
    async with FakeMember(then) as fake, connected([fake.endpoint, etcd.endpoint], timeout=1.0) as client:
        with pytest.raises(EtcdUnavailable):
            await claim(key)(client)
        assert len(fake.received) == 1 and isinstance(fake.received[0], rpc_pb.TxnRequest)
        assert len((await client.get(key)).kvs) == 0, "the txn was sent again to the other member"
        assert client._live().current == etcd.endpoint  # and from now on calls go there
        assert (await claim(key)(client)).succeeded
        assert len(fake.received) == 1


async def test_a_keep_alive_left_unanswered_moves_the_next_one_to_another_member(
    etcd: EtcdCluster, tcp_proxy: TcpProxyFactory
) -> None:
    """The lease keep-alive is a stream: a member that stops answering (a partition: the connection stays
    open) must not keep it until the session's deadline. The renewal that timed out sends the next
    stream to the next member, even when no other call noticed anything."""
    proxy = await tcp_proxy(etcd.endpoint)
    async with connected([proxy.endpoint, etcd.endpoint], timeout=0.5) as client:
        lease, _ttl = await client.grant(30)
        assert await client.keepalive_once(lease) > 0  # through the proxy: its stream is open
        proxy.blackhole()
        with pytest.raises(EtcdUnavailable):
            await client.keepalive_once(lease)
        assert await client.keepalive_once(lease) > 0  # on the other member, within one call's timeout
        await client.revoke(lease)


async def test_a_watch_on_a_member_without_a_leader_is_ended_not_left_silent(etcd3: EtcdCluster, etcd_prefix: str) -> None:
    """A member cut from its quorum keeps serving its open watches, silently: no event can reach it.
    Ours ask for a leader (etcd's "hasleader", as its Go client does), so that member ends them after a
    few election timeouts and the watch opens again elsewhere. Here the other two members are paused:
    the one the client uses has no leader. The watch must restart (not wait, silent), then deliver the
    next event once the cluster has a leader again."""
    alone, *others = etcd3.members
    key = f"{etcd_prefix}/watched"
    restarts: list[str] = []
    async with connected([alone.endpoint], timeout=1.0) as client, connected([m.endpoint for m in others]) as writer:
        start = await writer.put(key, b"0")
        events = watch(client, key, start_revision=start + 1, on_restart=lambda _key, reason: restarts.append(reason))
        async with contextlib.aclosing(events):
            nxt = asyncio.ensure_future(anext(events))
            await writer.put(key, b"1")
            first = await asyncio.wait_for(nxt, 5)
            assert isinstance(first, KeyEvent) and first.kv.value == b"1"  # the stream is open on `alone`
            nxt = asyncio.ensure_future(anext(events))  # keeps the watch running while we wait
            try:
                for member in others:
                    member.pause()
                try:
                    await wait_until(lambda: "reconnect" in restarts, timeout=15, what="the leaderless member to end the watch")
                finally:
                    for member in others:
                        member.resume()
                await wait_until(_written(writer, key, b"2"), timeout=15, what="a write once the cluster has a leader again")
                item = await asyncio.wait_for(asyncio.shield(nxt), 15)
                assert isinstance(item, KeyEvent) and item.kv.value == b"2"
            finally:
                nxt.cancel()  # the generator must not be running when it is closed
                await asyncio.gather(nxt, return_exceptions=True)


def _written(client: Any, key: str, value: bytes) -> Callable[[], Awaitable[bool]]:
    async def attempt() -> bool:
        try:
            await client.put(key, value)
        except EtcdUnavailable:
            return False
        return True

    return attempt
