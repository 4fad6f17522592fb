"""How a STANDBY proves the ACTIVE member dead: a stream that breaks, then a port that refuses.

The STANDBY keeps one long-lived server-streaming call open to the ACTIVE member (the standard gRPC
health service's ``Watch``). A process that dies, whatever killed it, has its connections closed by
its kernel: the stream breaks at once. The STANDBY then probes the member's advertised address, a
few times within a short bound, and the verdict is *dead* only when every probe says so:

- the connection is refused (nothing listens on that port of that host: the process is gone, and
  ours never share a port: no SO_REUSEPORT), or
- a live process answers there and reports another server ID (the port is someone else's now).

Anything else is no verdict and the lease decides, exactly as without the fast path: a timeout, an
unreachable host (host loss, a partition that drops packets), a process that accepts connections but
does not answer (SIGSTOP: its kernel still completes the handshake), something there that is not our
gRPC server, an address that cannot be probed safely (empty, garbage, or a loopback address
advertised by another host, which the probe would find on the prober's own host).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import structlog
from grpclib.client import Channel
from grpclib.config import Configuration
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest

from coordinators.proto import common_pb2
from coordinators.registry import spec
from session import SessionInfo

__all__ = ["GrpcDeathWatch", "ProbeBounds", "Verdict", "answers", "component_states", "probe_target"]

log = structlog.get_logger(__name__)

#: Seconds between HTTP/2 pings on the death watch's stream (see ``GrpcDeathWatch._stream_until_broken``).
PING_INTERVAL_S = 5.0

_ADDRESS = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(?P<port>\d{1,5})")


@dataclass(frozen=True)
class ProbeBounds:
    """``attempts`` probes, each within ``timeout`` s, ``interval`` s apart (``common.session.fastFailover``)."""

    attempts: int = 2
    timeout: float = 0.2
    interval: float = 0.02


def probe_target(info: SessionInfo, own_hostname: str) -> tuple[str, int] | str:
    """(host, port) to probe for the member ``info`` describes, or why it cannot be probed safely."""
    match = _ADDRESS.fullmatch(info.address.strip())
    if match is None or not 1 <= int(match["port"]) <= 65535:
        return f"its advertised address {info.address!r} is not host:port"
    host = match["host"].strip("[]")
    if _is_loopback(host) and info.hostname != own_hostname:
        return (f"it advertises the loopback address {info.address} from another host ({info.hostname}): "
                "a probe would reach this host instead")
    return host, int(match["port"])


async def component_states(
    role: str, host: str, port: int, *, ssl: ssl.SSLContext | None, timeout: float
) -> common_pb2.ComponentStates:
    """``GetComponentStates`` of the coordinator at ``host:port``, within ``timeout`` (TimeoutError)."""
    channel = Channel(host, port, ssl=ssl)
    try:
        stub = spec(role).stub()(channel)
        async with asyncio.timeout(timeout):
            reply: common_pb2.ComponentStates = await stub.GetComponentStates(common_pb2.GetComponentStatesRequest())
            return reply
    finally:
        channel.close()


async def answers(role: str, info: SessionInfo, *, own_hostname: str, ssl: ssl.SSLContext | None, timeout: float) -> str:
    """'' when the member ``info`` describes answers at its address with its server ID within
    ``timeout``, else why not (a frozen process accepts connections but does not answer)."""
    target = probe_target(info, own_hostname)
    if isinstance(target, str):
        return target
    try:
        reply = await component_states(role, *target, ssl=ssl, timeout=timeout)
    except TimeoutError:
        return f"no answer from {info.address} within {timeout:g}s"
    except Exception as exc:  # noqa: BLE001 - any failure: no proof that it is alive
        return f"{info.address}: {type(exc).__name__}: {exc}"
    if reply.state.nodeID != info.server_id:
        return f"{info.address} answers as ServerID={reply.state.nodeID}, not ServerID={info.server_id}"
    return ""


def _is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Verdict(StrEnum):
    """One probe round's outcome (``milvus_coord_fast_failover_verdicts{outcome}``)."""

    DEAD = "dead"  #: proven dead: its port refuses, or another server ID answers there (acted on)
    ALIVE = "alive"  #: it answers as itself
    TIMEOUT = "timeout"  #: no answer in time: no verdict, the lease decides
    UNREACHABLE = "unreachable"  #: the network says nothing usable: no verdict
    NOT_OURS = "not_ours"  #: something else answers there: no verdict
    UNPROBEABLE = "unprobeable"  #: its address cannot be probed from here: the lease decides


class GrpcDeathWatch:
    """:class:`session.fastpath.DeathWatch` over gRPC: the stream, then the probes (module docstring).

    :param on_verdict: told each probe round's :class:`Verdict`, for the metrics.
    """

    def __init__(
        self,
        role: str,
        *,
        hostname: str,
        bounds: ProbeBounds,
        ssl_context: ssl.SSLContext | None = None,
        on_verdict: Callable[[Verdict], None] = lambda _outcome: None,
    ) -> None:
        self.role = role
        self.hostname = hostname
        self.bounds = bounds
        self.ssl = ssl_context
        self.on_verdict = on_verdict

    async def dead(self, holder: SessionInfo) -> str:
        target = probe_target(holder, self.hostname)
        if isinstance(target, str):
            self.on_verdict(Verdict.UNPROBEABLE)
            log.warning("no fast failover for this ACTIVE member: the lease decides", ActiveServerID=holder.server_id,
                        reason=target)
            await asyncio.Event().wait()  # no verdict, ever: the campaign cancels this when the holder goes
            raise AssertionError("unreachable")
        host, port = target
        pause, rounds = self.bounds.interval, 0
        while True:
            def back(rounds: int = rounds) -> None:
                if rounds:  # after rounds with no verdict (a partition, a pause): the fast path is armed again
                    log.info("the ACTIVE member's stream is back: its crash would be a fast takeover again",
                             ActiveServerID=holder.server_id, address=holder.address)

            broke = await self._stream_until_broken(host, port, on_open=back)
            outcome, proof = await self._probe(host, port, holder)
            self.on_verdict(outcome)
            if outcome is Verdict.DEAD:
                log.warning("the ACTIVE member is dead", ActiveServerID=holder.server_id, address=holder.address,
                            stream=broke, proof=proof)
                return f"{proof} (its stream: {broke})"
            report = log.info if rounds == 0 else log.debug  # one line per holder, not one per retry
            report("the ACTIVE member's stream broke, but it is not provably dead: the lease decides",
                   ActiveServerID=holder.server_id, address=holder.address, stream=broke, probe=outcome, detail=proof)
            rounds += 1
            await asyncio.sleep(pause)  # a live member: watch it again, without hammering it
            pause = min(max(pause * 2, 0.1), 2.0)

    async def _stream_until_broken(self, host: str, port: int, on_open: Callable[[], None] = lambda: None) -> str:
        """Hold the health ``Watch`` stream open; return how it ended.

        The stream must give its first answer within a few probe timeouts: one that cannot even be
        opened (a host that drops packets, a member started behind a partition) counts as broken, so
        the probes run and say "no verdict" instead of the stream hanging in a TCP connect for minutes.
        """
        # HTTP/2 pings: a peer that falls silent (host loss, a pause) breaks the stream too, and the
        # probes then say "no verdict" instead of the stream waiting in silence; a host that rebooted
        # answers the ping with a reset, and its refused port is the proof. (A crashed process needs no
        # ping: its kernel closes the connection.) Every few seconds: this runs on every idle standby.
        keepalive = Configuration(
            _keepalive_time=PING_INTERVAL_S, _keepalive_timeout=max(1.0, 5 * self.bounds.timeout),
            _keepalive_permit_without_calls=True, _http2_max_pings_without_data=0,
            _http2_min_sent_ping_interval_without_data=PING_INTERVAL_S,
        )
        channel = Channel(host, port, ssl=self.ssl, config=keepalive)
        try:
            async with HealthStub(channel).Watch.open() as stream:
                try:
                    async with asyncio.timeout(max(1.0, 5 * self.bounds.timeout)):
                        await stream.send_message(HealthCheckRequest(service=""), end=True)
                        first = await stream.recv_message()
                except TimeoutError:
                    return "no first answer in time"
                if first is None:
                    return "ended"
                on_open()
                while await stream.recv_message() is not None:
                    pass
                return "ended"
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any way a stream ends is a reason to probe
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        finally:
            channel.close()

    async def _probe(self, host: str, port: int, holder: SessionInfo) -> tuple[Verdict, str]:
        """``attempts`` probes: (DEAD, proof) when every one proves it, else the first other outcome."""
        proofs = []
        for attempt in range(self.bounds.attempts):
            if attempt:
                await asyncio.sleep(self.bounds.interval)
            outcome, detail = await self._probe_once(host, port, holder)
            if outcome is not Verdict.DEAD:
                return outcome, detail
            proofs.append(detail)
        return Verdict.DEAD, proofs[-1]

    async def _probe_once(self, host: str, port: int, holder: SessionInfo) -> tuple[Verdict, str]:
        address = f"{host}:{port}"
        try:
            async with asyncio.timeout(self.bounds.timeout):
                _reader, writer = await asyncio.open_connection(host, port)
        except ConnectionRefusedError:
            return Verdict.DEAD, f"{address} refuses connections: no process listens there"
        except TimeoutError:
            return Verdict.TIMEOUT, f"no answer from {address} within {self.bounds.timeout:g}s"
        except (OSError, socket.gaierror) as exc:
            return Verdict.UNREACHABLE, f"{address}: {exc}"
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        # Something listens: ask who it is (a restarted process of ours, on the same address?).
        try:
            reply = await component_states(self.role, host, port, ssl=self.ssl, timeout=self.bounds.timeout)
        except TimeoutError:
            return Verdict.TIMEOUT, f"{address} accepts connections but does not answer within {self.bounds.timeout:g}s"
        except Exception as exc:  # noqa: BLE001 - whatever answers there is not our gRPC server
            return Verdict.NOT_OURS, f"{address} answers, but not as a coordinator: {type(exc).__name__}: {exc}"
        if reply.state.nodeID and reply.state.nodeID != holder.server_id:
            return Verdict.DEAD, f"{address} is served by ServerID={reply.state.nodeID}, not ServerID={holder.server_id}"
        if reply.state.nodeID == holder.server_id:
            return Verdict.ALIVE, f"ServerID={holder.server_id} answers at {address}"
        return Verdict.NOT_OURS, f"{address} answers as {reply.state.role or '?'} ServerID={reply.state.nodeID}"
