"""Server IDs: a counter at ``{metaRoot}/session/id``, advanced by compare-and-swap.

IDs are never reused, so a server ID names one session of one process for the life of the
cluster, and clients can tell a new active from the one they were talking to.
"""

from __future__ import annotations

import structlog

from session.errors import CorruptValue
from session.etcd import Etcd, cmp_value, cmp_version, op_put
from session.keys import server_id_key

log = structlog.get_logger(__name__)


def parse_counter(key: str, raw: bytes) -> int:
    """The server-ID counter's value; :class:`CorruptValue` for anything but what this library writes.

    ASCII digits only: int() would also take " 12", "+12", "1_2" and non-ASCII digits, none of which
    this library (or Milvus) ever writes there.
    """
    if not raw.isdigit() or not raw.isascii() or len(raw) > 19 or int(raw) >= 2**63 - 1:
        raise CorruptValue(key, raw, "the server-ID counter must be a decimal integer in 0..2^63-2")
    return int(raw)


async def allocate_server_id(etcd: Etcd, meta_root: str, *, timeout: float | None = None, max_rounds: int = 1000) -> int:
    """Hand out the next server ID; the first one is 1.

    Read ``v``, then txn ``If(Value == v) Then Put(v + 1)``; a lost race reads again. A counter
    that holds anything but a decimal integer is never overwritten: it raises :class:`CorruptValue`.
    """
    key = server_id_key(meta_root)
    for _ in range(max_rounds):
        resp = await etcd.get(key, timeout=timeout)
        if not resp.kvs:
            created = await etcd.txn([cmp_version(key, 0)], [op_put(key, b"1")], timeout=timeout)
            if created.succeeded:
                return 1
            continue
        raw = bytes(resp.kvs[0].value)
        nxt = parse_counter(key, raw) + 1
        swapped = await etcd.txn([cmp_value(key, raw)], [op_put(key, str(nxt).encode())], timeout=timeout)
        if swapped.succeeded:
            return nxt
    raise RuntimeError(f"could not allocate a server ID at {key} after {max_rounds} contended rounds")
