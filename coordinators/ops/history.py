"""``milvus history <role> [--json] [--limit N]``: every ACTIVE term of a role (:mod:`session.history`),
oldest first: epoch, server ID, address, start, end, how long it was held, what freed the key it took
(``initial``, ``graceful``, ``switchover``, ``fast_path``, ``serving_lease``, ``restart``, ``ttl``) and
why it ended (``stopped``, ``switched_over``, ``proven_dead``, ``serving_lease_lapsed``,
``process_restarted``, ``lease_expired``, ``vacated``). The term holding the ACTIVE key now is marked
ACTIVE; an earlier term not ended yet (its successor has not settled it) shows ``-``.

Read-only. An unreadable record is named on stderr (exit 7); the others are listed all the same.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import TextIO

from coordinators.runtime.exit_codes import ExitCode
from session import Etcd, SessionError, active_key
from session.history import read_history

__all__ = ["HistoryRow", "run_history"]


@dataclass(frozen=True)
class HistoryRow:
    """One term as ``milvus history`` shows it (times in Unix ms; ``end_ms`` 0: not ended, or not said)."""

    epoch: int
    server_id: int
    address: str
    start_ms: int
    end_ms: int
    cause: str
    ended: str
    active: bool  #: it holds the ACTIVE key now


def _when(ms: int) -> str:
    if not ms:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) + f".{ms % 1000:03d}"


def _held(row: HistoryRow, now_ms: int) -> str:
    end = row.end_ms or (now_ms if row.active else 0)
    if not end or not row.start_ms:
        return "-"
    seconds = max(end - row.start_ms, 0) / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def render(rows: list[HistoryRow], now_ms: int) -> str:
    header = ("EPOCH", "SERVER_ID", "ADDRESS", "START", "END", "HELD", "CAUSE", "ENDED")
    lines = [header] + [
        (str(r.epoch), str(r.server_id), r.address, _when(r.start_ms), "ACTIVE" if r.active else _when(r.end_ms),
         _held(r, now_ms), r.cause or "-", r.ended or "-") for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip() for line in lines)
    return text if rows else text + "\n(no terms recorded)"


async def run_history(etcd: Etcd, meta_root: str, role: str, *, as_json: bool, limit: int, out: TextIO,
                      err: TextIO) -> ExitCode:
    """Print the last ``limit`` terms of ``role`` (0: all that are kept)."""
    try:
        entries = await read_history(etcd, meta_root, role)
        held = await etcd.get(active_key(meta_root, role))
    except SessionError as exc:
        print(f"milvus history: cannot read {role}'s history from etcd: {exc}", file=err, flush=True)
        return ExitCode.ETCD
    epoch = int(held.kvs[0].create_revision) if held.kvs else 0
    rows = [HistoryRow(e.epoch, e.record.server_id, e.record.address, e.record.start_ms, e.record.end_ms,
                       e.record.cause, e.record.ended, e.epoch == epoch)
            for e in entries if e.record is not None]
    rows = rows[-limit:] if limit else rows
    text = json.dumps([asdict(r) for r in rows], indent=2) if as_json else render(rows, time.time_ns() // 1_000_000)
    print(text, file=out, flush=True)
    unreadable = [e for e in entries if e.record is None]
    for entry in unreadable:
        print(f"milvus history: left out, unreadable: the record of the term of epoch {entry.epoch} ({entry.key})",
              file=err)
    return ExitCode.CORRUPT_METADATA if unreadable else ExitCode.OK
