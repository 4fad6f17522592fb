"""Fixtures of the fault tests where the network decides (:mod:`harness.net_members`)."""

from harness.net_members import bridged_etcd, client, hosts, members

__all__ = ["bridged_etcd", "client", "hosts", "members"]
