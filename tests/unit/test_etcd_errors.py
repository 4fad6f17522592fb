"""How the etcd transport names etcd's failures: an outage (wait it out) or an answer about the request."""

from __future__ import annotations

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from session.errors import EtcdRequestFailed, EtcdUnavailable
from session.etcd_rpc import map_error


def test_etcd_failing_to_serve_in_time_is_an_outage_whatever_the_status_code() -> None:
    """etcd answers UNKNOWN "context deadline exceeded" when its own request deadline passes (no leader):
    an outage to wait out, as a timeout is, not a refusal of the request (seen crashing a client's
    tracker during a lost quorum)."""
    for detail in ("context deadline exceeded", "etcdserver: request timed out", "etcdserver: no leader",
                   "etcdserver: leader changed"):
        assert isinstance(map_error(GRPCError(Status.UNKNOWN, detail), "get"), EtcdUnavailable), detail
    refused = map_error(GRPCError(Status.INVALID_ARGUMENT, "etcdserver: key is not provided"), "get")
    assert isinstance(refused, EtcdRequestFailed) and not isinstance(refused, EtcdUnavailable)
