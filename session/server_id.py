"""Server IDs: a counter at ``{metaRoot}/session/id``, advanced by compare-and-swap.

IDs are never reused, so a server ID names one session of one process for the life of the
cluster, and clients can tell a new active from the one they were talking to. An etcd that went back
in time (restored from an older snapshot, or wiped) has an older counter, or none: a registering
process passes the highest server ID it and its predecessors on its host held (``above``), and the
counter is moved past it, so a live member's ID is never handed out again.
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


async def allocate_server_id(etcd: Etcd, meta_root: str, *, above: int = 0, timeout: float | None = None,
                             max_rounds: int = 1000) -> int:
    """Hand out the next server ID, above ``above``; the first one is 1.

    Read ``v``, then txn ``If(Value == v) Then Put(max(v, above) + 1)``; a lost race reads again. A
    counter that holds anything but a decimal integer is never overwritten: it raises :class:`CorruptValue`.
    """
    key = server_id_key(meta_root)
    for _ in range(max_rounds):
        resp = await etcd.get(key, timeout=timeout)
        if not resp.kvs:
            first = above + 1
            created = await etcd.txn([cmp_version(key, 0)], [op_put(key, str(first).encode())], timeout=timeout)
            if created.succeeded:
                _tell_if_raised(key, 0, above)
                return first
            continue
        raw = bytes(resp.kvs[0].value)
        counter = parse_counter(key, raw)
        nxt = max(counter, above) + 1
        swapped = await etcd.txn([cmp_value(key, raw)], [op_put(key, str(nxt).encode())], timeout=timeout)
        if swapped.succeeded:
            _tell_if_raised(key, counter, above)
            return nxt
    raise RuntimeError(f"could not allocate a server ID at {key} after {max_rounds} contended rounds")


def _tell_if_raised(key: str, counter: int, above: int) -> None:
    if above > counter:
        log.warning("the server-ID counter was behind an ID held before (etcd lost it, or went back in "
                    "time): moved past it", key=key, counter=counter, heldBefore=above)
