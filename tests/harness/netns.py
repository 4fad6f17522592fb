"""Test hosts on one machine: network namespaces on a bridge, each with an address of its own.

Why: telling a dead process (its host answers with a RST) from a lost host (silence) or a partition
(silence on some paths only) needs real network behaviour, which loopback alone cannot give. Each
:class:`NetHost` is a network namespace with a veth on a private bridge (``10.213.N.0/24``); a
process run in it (``ip netns exec``) is a host with its own address, reaching etcd (which listens on
the bridge's address too) and the other hosts over the bridge. :meth:`NetHost.drop_all` drops every
packet to and from it (host loss), :meth:`NetHost.partition_from` only those to and from one other
host, with nftables inside the namespace. Needs root, ``ip`` (iproute2) and ``nft`` (nftables);
:func:`net_hosts_or_skip` says why not otherwise.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import pytest

__all__ = ["NetHost", "NetHosts", "net_hosts_or_skip"]

_TABLE = "milvustest"


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=check)


class NetHost:
    """One network namespace with one address on the bridge."""

    def __init__(self, name: str, address: str, veth: str) -> None:
        self.name = name
        self.address = address
        self.veth = veth  # the interface inside the namespace

    def __repr__(self) -> str:
        return f"NetHost({self.name}, {self.address})"

    @property
    def prefix(self) -> list[str]:
        """Run a command in this host: ``[*host.prefix, cmd...]``."""
        return ["ip", "netns", "exec", self.name]

    def nft(self, script: str) -> None:
        done = subprocess.run([*self.prefix, "nft", "-f", "-"], input=script, capture_output=True, text=True, timeout=10)
        if done.returncode != 0:
            raise RuntimeError(f"nft in {self.name} failed: {done.stderr.strip()}")

    def drop_all(self) -> None:
        """Host loss: nothing in or out of this host on the bridge (its loopback still works)."""
        self._rules(f'iifname "{self.veth}" drop', f'oifname "{self.veth}" drop')

    def partition_from(self, other: NetHost) -> None:
        """A partition between this host and ``other`` only: both still reach everything else."""
        self._rules(f"ip saddr {other.address} drop", f"ip daddr {other.address} drop")

    def rules(self, incoming: str = "", outgoing: str = "") -> None:
        """nftables rules for this host's own traffic (replacing any earlier ones): ``incoming`` and
        ``outgoing`` are rule statements, several joined with ``;``."""
        self._rules(incoming, outgoing)

    def heal(self) -> None:
        _run(*self.prefix, "nft", "delete", "table", "inet", _TABLE, check=False)

    def _rules(self, incoming: str, outgoing: str) -> None:
        self.heal()
        self.nft(
            f"table inet {_TABLE} {{\n"
            f"  chain input {{ type filter hook input priority 0; policy accept; {incoming}; }}\n"
            f"  chain output {{ type filter hook output priority 0; policy accept; {outgoing}; }}\n"
            "}\n"
        )


class NetHosts:
    """A bridge in the root namespace (``gateway`` is its address) and ``count`` hosts on it."""

    def __init__(self, count: int) -> None:
        tag = uuid.uuid4().hex[:6]
        self.subnet = random.randrange(0, 256)
        self.gateway = f"10.213.{self.subnet}.1"
        self.bridge = f"mb{tag}"
        self.tag = tag
        self.hosts: list[NetHost] = []
        self._count = count

    def create(self) -> NetHosts:
        try:
            _run("ip", "link", "add", self.bridge, "type", "bridge")
            _run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _run("ip", "link", "set", self.bridge, "up")
            for n in range(self._count):
                name, outer, inner = f"mh{self.tag}{n}", f"mo{self.tag}{n}", f"mi{self.tag}{n}"
                address = f"10.213.{self.subnet}.{n + 2}"
                _run("ip", "netns", "add", name)
                self.hosts.append(NetHost(name, address, inner))
                _run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
                _run("ip", "link", "set", outer, "master", self.bridge, "up")
                _run("ip", "link", "set", inner, "netns", name)
                _run("ip", "netns", "exec", name, "ip", "addr", "add", f"{address}/24", "dev", inner)
                _run("ip", "netns", "exec", name, "ip", "link", "set", inner, "up")
                _run("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
        except BaseException:
            self.destroy()
            raise
        return self

    def destroy(self) -> None:
        for host in self.hosts:
            _run("ip", "netns", "del", host.name, check=False)  # its veth goes with it
        _run("ip", "link", "del", self.bridge, check=False)
        self.hosts = []


def net_hosts_or_skip(count: int) -> NetHosts:
    """:class:`NetHosts` created, or the test skipped with the reason this machine cannot have them."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    missing = [tool for tool in ("ip", "nft") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"missing {', '.join(missing)} (apt-get install iproute2 nftables; .ci/run does)")
    try:
        return NetHosts(count).create()
    except (subprocess.CalledProcessError, OSError) as exc:
        detail = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) and exc.stderr else str(exc)
        pytest.skip(f"cannot create network namespaces here: {detail}")


@contextmanager
def net_hosts(count: int) -> Iterator[NetHosts]:
    hosts = net_hosts_or_skip(count)
    try:
        yield hosts
    finally:
        hosts.destroy()


def listen_also_on(extra_args: list[str], port: int, address: str) -> None:
    """etcd flags so that a member listens on ``address`` too (the bridge), on the same client port."""
    extra_args.append(f"--listen-client-urls=http://127.0.0.1:{port},http://{address}:{port}")


def host_env(base: Mapping[str, str], section: str, host: NetHost) -> dict[str, str]:
    """A member's environment in ``host``: it advertises the host's address."""
    return {**base, f"{section}_ADDRESS": host.address}

