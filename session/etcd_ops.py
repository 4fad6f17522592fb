"""etcd's request messages as the session layer builds them: compares, operations, key ranges.

The types are etcd's own generated classes (untyped: the generated modules ship no stubs, so type
checkers see Any); the builders take ``str`` or ``bytes`` keys and values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

from session.etcd_rpc import rpc_pb

__all__ = [
    "EQUAL",
    "GREATER",
    "Compare",
    "RangeResponse",
    "RequestOp",
    "StatusResponse",
    "TxnResponse",
    "WatchCreateRequest",
    "WatchRequest",
    "cmp_create_revision",
    "cmp_lease",
    "cmp_mod_revision",
    "cmp_value",
    "cmp_version",
    "has_write",
    "op_delete",
    "op_get",
    "op_put",
    "op_txn",
    "prefix_range_end",
    "to_bytes",
]

# Message types the session layer builds and reads: etcd's own generated classes (untyped: the
# generated modules ship no stubs, so type checkers see Any).
if TYPE_CHECKING:
    Compare: TypeAlias = Any
    RequestOp: TypeAlias = Any
    TxnResponse: TypeAlias = Any
    RangeResponse: TypeAlias = Any
    StatusResponse: TypeAlias = Any
    WatchRequest: TypeAlias = Any
    WatchCreateRequest: TypeAlias = Any
else:
    Compare = rpc_pb.Compare
    RequestOp = rpc_pb.RequestOp
    TxnResponse = rpc_pb.TxnResponse
    RangeResponse = rpc_pb.RangeResponse
    StatusResponse = rpc_pb.StatusResponse
    WatchRequest = rpc_pb.WatchRequest
    WatchCreateRequest = rpc_pb.WatchCreateRequest
EQUAL: int = rpc_pb.Compare.EQUAL
GREATER: int = rpc_pb.Compare.GREATER


def to_bytes(data: str | bytes) -> bytes:
    return data.encode() if isinstance(data, str) else data


def prefix_range_end(prefix: str | bytes) -> bytes:
    """The exclusive end of the range of keys that start with ``prefix`` (``b"\\0"``: every key, when
    the prefix is all 0xff bytes)."""
    end = bytearray(to_bytes(prefix))
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


# Builders for txn compares and operations.


def cmp_version(key: str | bytes, version: int, *, result: int = EQUAL) -> Compare:
    """``Compare(VERSION(key) <result> version)``; version 0: the key does not exist."""
    return rpc_pb.Compare(result=result, target=rpc_pb.Compare.VERSION, key=to_bytes(key), version=version)


def cmp_create_revision(key: str | bytes, revision: int, *, result: int = EQUAL) -> Compare:
    """``Compare(CREATE(key) <result> revision)``: which creation of the key this is (0: absent)."""
    return rpc_pb.Compare(result=result, target=rpc_pb.Compare.CREATE, key=to_bytes(key), create_revision=revision)


def cmp_value(key: str | bytes, value: str | bytes, *, result: int = EQUAL) -> Compare:
    """``Compare(VALUE(key) <result> value)``."""
    return rpc_pb.Compare(result=result, target=rpc_pb.Compare.VALUE, key=to_bytes(key), value=to_bytes(value))


def cmp_lease(key: str, lease: int) -> Compare:
    """``Compare(LEASE(key) == lease)``: the key is still attached to that lease (etcd >= 3.3)."""
    return rpc_pb.Compare(result=EQUAL, target=rpc_pb.Compare.LEASE, key=key.encode(), lease=lease)


def cmp_mod_revision(key: str, revision: int) -> Compare:
    """``Compare(MOD(key) == revision)``: the key was not written since that revision (0: absent)."""
    return rpc_pb.Compare(result=EQUAL, target=rpc_pb.Compare.MOD, key=key.encode(), mod_revision=revision)


def op_put(key: str | bytes, value: str | bytes, *, lease: int = 0) -> RequestOp:
    """A put inside a txn."""
    return rpc_pb.RequestOp(request_put=rpc_pb.PutRequest(key=to_bytes(key), value=to_bytes(value), lease=lease))


def op_get(key: str | bytes, *, range_end: str | bytes | None = None, revision: int = 0) -> RequestOp:
    """A read inside a txn (one key, or ``[key, range_end)``)."""
    return rpc_pb.RequestOp(request_range=rpc_pb.RangeRequest(
        key=to_bytes(key), range_end=to_bytes(range_end) if range_end is not None else b"", revision=revision))


def op_delete(key: str | bytes, *, range_end: str | bytes | None = None) -> RequestOp:
    """A delete inside a txn (one key, or ``[key, range_end)``)."""
    return rpc_pb.RequestOp(request_delete_range=rpc_pb.DeleteRangeRequest(
        key=to_bytes(key), range_end=to_bytes(range_end) if range_end is not None else b""))


def op_txn(compare: Sequence[Compare], success: Sequence[RequestOp], failure: Sequence[RequestOp] = ()) -> RequestOp:
    """A nested txn, so a fenced writer can wrap a caller's own txn in its epoch compare."""
    return rpc_pb.RequestOp(request_txn=rpc_pb.TxnRequest(compare=list(compare), success=list(success), failure=list(failure)))


def has_write(ops: Sequence[RequestOp]) -> bool:
    """Whether ``ops`` hold a put or a delete (nested txns included, both of their branches)."""
    for op in ops:
        if op.HasField("request_put") or op.HasField("request_delete_range"):
            return True
        if op.HasField("request_txn") and (has_write(op.request_txn.success) or has_write(op.request_txn.failure)):
            return True
    return False


def executed_put(ops: Sequence[RequestOp], responses: Sequence[Any]) -> Any | None:
    """A put (etcd's PutRequest) of the txn branch that ran (``ops``, with its ``responses``), nested
    txns followed down the branch they ran; None when it put nothing. Its key's mod revision is the
    txn's revision."""
    for op, resp in zip(ops, responses, strict=False):
        if op.HasField("request_put"):
            return op.request_put
        if op.HasField("request_txn"):
            inner = resp.response_txn
            branch = op.request_txn.success if inner.succeeded else op.request_txn.failure
            if (put := executed_put(branch, inner.responses)) is not None:
                return put
    return None
