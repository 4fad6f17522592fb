"""A history checker: clients record every call, and the whole history is judged afterwards.

Why a history and not assertions inline: under faults, what matters is what the *clients* were told
(acknowledged answers) and in which real-time order, whatever the coordinators believed. Jepsen,
etcd's robustness tests and PD's chaos tests work the same way. Every call made through
:class:`History` is recorded with its start and end on the monotonic clock, its reply or error, and
who answered (server ID and term epoch, from the reply's ``x-milvus-server-id`` and
``x-milvus-epoch`` initial metadata). :meth:`History.check` then asserts:

1. **Timestamps** (AllocTimestamp, and each collection's created timestamp) strictly increase in
   real-time order: a call that started after another one ended got larger timestamps; and no
   timestamp was handed out twice, even to overlapping calls.
2. **IDs** are never handed out twice: AllocID ranges, collection IDs and segment IDs all come
   from rootcoord's one allocator, so all of them are pairwise disjoint; and no row range of a
   segment is assigned twice.
   No non-idempotent call is retried blindly (a create answered ALREADY_EXISTS for a name only it
   used, a drop answered NOT_FOUND for a collection only it dropped).
3. **Acknowledged state survives**, read back at the end (:class:`FinalState`): every acknowledged
   collection is there with its ID (unless an acknowledged drop followed), every acknowledged
   segment assignment is inside its segment's persisted rows, every acknowledged flush left its
   segments Flushed, every acknowledged load is there with its replica number (unless released).
4. **Terms never overlap** in anything answered, per role, reads included: when a call answered
   under epoch E ended before a call answered under epoch E' started, E <= E' (an older term never
   answers after a newer one has). Calls whose intervals overlap may be seen in either order (in
   flight across a takeover); nothing else may. Each epoch belongs to one server ID.
5. **No stale read** (:mod:`harness.staleness`): a read never misses a write acknowledged before the
   read was sent.

A call that failed in any way (timeout, UNAVAILABLE, no ACTIVE member) may or may not have been
applied: it is never counted as acknowledged, and it makes the final state of what it touched
unknown. :class:`ClientLoad` is the load the fault tests and the soak run: sequential workers per
role, each with its own :class:`~coordinators.client.CoordinatorClient`.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from grpclib.client import Channel
from grpclib.exceptions import GRPCError, StreamTerminatedError

from coordinators.client import CoordinatorClient, NoActiveMember, OutcomeUnknown
from coordinators.proto import datacoord_pb2, querycoord_pb2, rootcoord_pb2
from coordinators.registry import spec
from coordinators.rpc import EPOCH_HEADER, SERVER_ID_HEADER
from harness.staleness import check_stale_reads
from session import Etcd

__all__ = ["WRITES", "Call", "ClientLoad", "FinalState", "History", "Verdict", "call_member"]

#: The calls that change a role's state (or hand out something unique): the ones fencing guards.
WRITES: dict[str, frozenset[str]] = {
    "rootcoord": frozenset({"AllocTimestamp", "AllocID", "CreateCollection", "DropCollection"}),
    "datacoord": frozenset({"AssignSegmentID", "Flush"}),
    "querycoord": frozenset({"LoadCollection", "ReleaseCollection"}),
}

FLUSHED = datacoord_pb2.SegmentState.Value("Flushed")


@dataclass
class Call:
    """One call as a client saw it. ``ok``: acknowledged; otherwise ``error`` says why not."""

    role: str
    method: str
    request: Any
    start: float
    end: float = 0.0
    reply: Any = None
    error: str = ""
    status: str = ""  # the gRPC status name of a failed call, or NoActiveMember / OutcomeUnknown / Timeout
    server_id: int = 0
    epoch: int = 0
    via: str = "client"  # "client" (follows the ACTIVE key) or "direct" (one member, no failover)

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def write(self) -> bool:
        return self.method in WRITES.get(self.role, frozenset())

    def __str__(self) -> str:
        outcome = f"ok ServerID={self.server_id} epoch={self.epoch}" if self.ok else f"{self.status}: {self.error[:120]}"
        return f"{self.role}.{self.method} [{self.start:.3f}, {self.end:.3f}] ({self.via}) {outcome}"


@dataclass
class FinalState:
    """What the coordinators hold at the end, read back through the clients (None: not read)."""

    collections: dict[str, int] | None = None  # rootcoord: name -> ID
    segments: dict[int, datacoord_pb2.SegmentInfo] | None = None  # datacoord: ID -> info
    loads: dict[str, int] | None = None  # querycoord: collection name -> replica number


@dataclass
class Verdict:
    """The checker's findings: no violations means the history is correct."""

    violations: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        head = "OK" if self else f"{len(self.violations)} VIOLATION(S)"
        lines = [f"history check: {head}; " + ", ".join(f"{k}={v}" for k, v in self.stats.items())]
        lines += [f"  - {v}" for v in self.violations[:30]]
        if len(self.violations) > 30:
            lines.append(f"  ... and {len(self.violations) - 30} more")
        return "\n".join(lines)

    def assert_ok(self) -> None:
        assert self, self.summary()


async def call_member(
    role: str, channel: Channel, method: str, request: Any, *, timeout: float
) -> tuple[Any, int, int]:
    """One call to one member (no failover): ``(reply, server_id, epoch)`` from its initial metadata."""
    rpc = getattr(spec(role).stub()(channel), method)
    async with asyncio.timeout(timeout):
        async with rpc.open(timeout=timeout) as stream:
            await stream.send_message(request, end=True)
            reply = await stream.recv_message()
            server_id = int(stream.initial_metadata.get(SERVER_ID_HEADER, "0") or 0)
            epoch = int(stream.initial_metadata.get(EPOCH_HEADER, "0") or 0)
            await stream.recv_trailing_metadata()
    return reply, server_id, epoch


class History:
    """Every call of every client, in the order they were issued; :meth:`check` judges it."""

    def __init__(self) -> None:
        self.calls: list[Call] = []

    # -- recording -------------------------------------------------------------------------------

    async def call(self, client: CoordinatorClient, method: str, request: Any, *, idempotent: bool = True) -> Any:
        """Call through ``client`` (it follows failovers); the reply, or None when the call failed."""
        rec = Call(client.role, method, request, time.monotonic())
        self.calls.append(rec)
        try:
            reply = await client.call(method, request, idempotent=idempotent)
        except GRPCError as exc:
            rec.error, rec.status = exc.message or exc.status.name, exc.status.name
        except (NoActiveMember, OutcomeUnknown) as exc:
            rec.error, rec.status = str(exc) or type(exc).__name__, type(exc).__name__
        else:
            # Read at once: no other task runs between the client setting these and this line.
            rec.reply, rec.server_id, rec.epoch = reply, client.last_server_id, client.last_epoch
        rec.end = time.monotonic()
        return rec.reply

    async def direct(self, role: str, channel: Channel, method: str, request: Any, *, timeout: float) -> Call:
        """Call one member over ``channel`` (no failover, no retry) and record it; the record."""
        rec = Call(role, method, request, time.monotonic(), via="direct")
        self.calls.append(rec)
        try:
            rec.reply, rec.server_id, rec.epoch = await call_member(role, channel, method, request, timeout=timeout)
        except GRPCError as exc:
            rec.error, rec.status = exc.message or exc.status.name, exc.status.name
        except (TimeoutError, StreamTerminatedError, ConnectionError, OSError) as exc:
            rec.error, rec.status = repr(exc), "Timeout" if isinstance(exc, TimeoutError) else "Connection"
        rec.end = time.monotonic()
        return rec

    # -- views -----------------------------------------------------------------------------------

    def of(self, role: str | None = None, method: str | None = None, *, ok: bool | None = None) -> list[Call]:
        return [
            c for c in self.calls
            if c.end and (role is None or c.role == role) and (method is None or c.method == method)
            and (ok is None or c.ok == ok)
        ]

    def epochs(self, role: str) -> list[int]:
        """The epochs that answered ``role``'s acknowledged calls, in order of first appearance."""
        return list(dict.fromkeys(c.epoch for c in self.of(role, ok=True) if c.epoch))

    # -- the checker -----------------------------------------------------------------------------

    def check(self, final: FinalState | None = None) -> Verdict:
        """Judge the whole history (see the module docstring); ``final`` enables the survival checks."""
        verdict = Verdict()
        done = [c for c in self.calls if c.end]
        verdict.stats = {
            "calls": len(done),
            "acknowledged": sum(c.ok for c in done),
            "failed": sum(not c.ok for c in done),
            "epochs": {role: len(self.epochs(role)) for role in WRITES if self.of(role)},
        }
        self._check_timestamps(done, verdict)
        self._check_ids(done, verdict)
        self._check_terms(done, verdict)
        self._check_retries(done, verdict)
        verdict.stats["reads judged for staleness"] = check_stale_reads(done, verdict.violations)
        if final is not None:
            self._check_survival(done, final, verdict)
        return verdict

    @staticmethod
    def _check_timestamps(done: Sequence[Call], verdict: Verdict) -> None:
        spans: list[tuple[float, float, int, int, Call]] = []  # (start, end, first, last, call)
        for c in done:
            if not c.ok or c.role != "rootcoord":
                continue
            if c.method == "AllocTimestamp":
                spans.append((c.start, c.end, int(c.reply.timestamp), int(c.reply.timestamp) + int(c.reply.count) - 1, c))
            elif c.method == "CreateCollection":
                ts = int(c.reply.created_timestamp)
                spans.append((c.start, c.end, ts, ts, c))
        verdict.stats["timestamps"] = len(spans)
        # Real-time order: the largest timestamp of every call that ended before this one started.
        by_end = sorted(spans, key=lambda s: s[1])
        ends = [s[1] for s in by_end]
        prefix_max = list(itertools.accumulate((s[3] for s in by_end), max))
        for start, _end, first, _last, call in spans:
            i = bisect.bisect_left(ends, start)  # calls with end < start
            if i and prefix_max[i - 1] >= first:
                earlier = next(s for s in by_end[:i] if s[3] == prefix_max[i - 1])
                verdict.violations.append(
                    f"timestamp went back in real time: {earlier[3]} from {earlier[4]} ended before {first} from {call}"
                )
        # Uniqueness, overlapping calls included.
        ordered = sorted(spans, key=lambda s: s[2])
        for a, b in itertools.pairwise(ordered):
            if b[2] <= a[3]:
                verdict.violations.append(f"timestamp {b[2]} handed out twice: {a[4]} and {b[4]}")

    @staticmethod
    def _check_ids(done: Sequence[Call], verdict: Verdict) -> None:
        ranges: list[tuple[int, int, str]] = []  # [begin, end) from rootcoord's allocator
        segments: dict[int, str] = {}
        rows: dict[int, list[tuple[int, int, Call]]] = defaultdict(list)
        for c in done:
            if not c.ok:
                continue
            if c.method == "AllocID":
                ranges.append((int(c.reply.begin), int(c.reply.end), f"AllocID {c}"))
            elif c.method == "CreateCollection":
                cid = int(c.reply.collection_id)
                ranges.append((cid, cid + 1, f"collection {c.request.collection_name} {c}"))
            elif c.method == "AssignSegmentID":
                for a in c.reply.assignments:
                    segments.setdefault(int(a.segment_id), f"segment of {c}")
                    rows[int(a.segment_id)].append((int(a.start_row), int(a.start_row) + int(a.count), c))
        ranges += [(sid, sid + 1, what) for sid, what in segments.items()]
        verdict.stats["ids"] = sum(end - begin for begin, end, _ in ranges)
        ranges.sort()
        for (b1, e1, w1), (b2, e2, w2) in itertools.pairwise(ranges):
            if b2 < e1:
                verdict.violations.append(f"ID {b2} handed out twice: [{b1}, {e1}) to {w1} and [{b2}, {e2}) to {w2}")
        for sid, spans in rows.items():
            spans.sort(key=lambda s: s[0])
            for (_s1, e1, c1), (s2, e2, c2) in itertools.pairwise(spans):
                if s2 < e1:
                    verdict.violations.append(f"rows [{s2}, {e2}) of segment {sid} assigned twice: {c1} and {c2}")

    @staticmethod
    def _check_terms(done: Sequence[Call], verdict: Verdict) -> None:
        owners: dict[tuple[str, int], set[int]] = defaultdict(set)
        for c in done:
            if c.ok and c.epoch:
                owners[(c.role, c.epoch)].add(c.server_id)
        for (role, epoch), servers in owners.items():
            if len(servers) > 1:
                verdict.violations.append(f"{role} epoch {epoch} answered by several servers: {sorted(servers)}")
        # A reply without an epoch comes from a member that had already dropped its term when it
        # answered: the call belongs to the last term that server was seen serving before it ended.
        seen: dict[int, list[tuple[float, int]]] = defaultdict(list)
        for c in done:
            if c.ok and c.epoch:
                seen[c.server_id].append((c.end, c.epoch))
        for terms in seen.values():
            terms.sort()
        unattributed = 0
        overlapping = 0
        for role in WRITES:
            answered = []
            for c in done:
                if not (c.role == role and c.ok):
                    continue
                if not c.epoch:
                    before = [epoch for end, epoch in seen.get(c.server_id, []) if end <= c.end]
                    if not before:
                        unattributed += 1
                        continue
                    c = replace(c, epoch=max(before))
                answered.append(c)
            by_end = sorted(answered, key=lambda c: c.end)
            ends = [c.end for c in by_end]
            prefix_max = list(itertools.accumulate((c.epoch for c in by_end), max))
            for c in answered:
                i = bisect.bisect_left(ends, c.start)
                if i and prefix_max[i - 1] > c.epoch:
                    newer = next(w for w in by_end[:i] if w.epoch == prefix_max[i - 1])
                    verdict.violations.append(
                        f"{role} terms overlap: a call answered under epoch {newer.epoch} ({newer}) ended before "
                        f"a call answered under the older epoch {c.epoch} ({c}) started"
                    )
            # Completion order going down is allowed only for overlapping calls; count them.
            for a, b in itertools.pairwise(by_end):
                if b.epoch < a.epoch:
                    overlapping += 1
        verdict.stats["epochs seen out of completion order (in flight)"] = overlapping
        if unattributed:
            verdict.stats["acknowledged calls without an epoch"] = unattributed

    @staticmethod
    def _check_retries(done: Sequence[Call], verdict: Verdict) -> None:
        """A non-idempotent call is never retried blindly: with names used once (as :class:`ClientLoad`
        does), ALREADY_EXISTS for a create, or NOT_FOUND for a drop of an acknowledged collection, can
        only come from the client re-sending a call whose first attempt was applied."""
        per_name: dict[tuple[str, str], list[Call]] = defaultdict(list)
        for c in done:
            if c.role == "rootcoord" and c.method in ("CreateCollection", "DropCollection"):
                per_name[(c.method, c.request.collection_name)].append(c)
        for (method, name), calls in per_name.items():
            if len(calls) != 1 or calls[0].ok:
                continue
            c = calls[0]
            if method == "CreateCollection" and c.status == "ALREADY_EXISTS":
                verdict.violations.append(f"create of the new name {name} answered ALREADY_EXISTS (a blind retry): {c}")
            if method == "DropCollection" and c.status == "NOT_FOUND":
                created = per_name.get(("CreateCollection", name), [])
                if len(created) == 1 and created[0].ok and created[0].end < c.start:
                    verdict.violations.append(f"drop of {name} answered NOT_FOUND (a blind retry): {c}")

    @staticmethod
    def _check_survival(done: Sequence[Call], final: FinalState, verdict: Verdict) -> None:
        ordered = sorted(done, key=lambda c: c.start)
        if final.collections is not None:
            # Names are never reused by ClientLoad: the last call on a name decides.
            last: dict[str, Call] = {}
            for c in ordered:
                if c.role == "rootcoord" and c.method in ("CreateCollection", "DropCollection"):
                    last[c.request.collection_name] = c
            created = {c.request.collection_name: int(c.reply.collection_id)
                       for c in ordered if c.ok and c.method == "CreateCollection"}
            checked = 0
            for name, cid in created.items():
                final_call = last[name]
                if not final_call.ok:
                    continue  # a failed drop (or create retry) may or may not have been applied
                checked += 1
                if final_call.method == "CreateCollection":
                    if final.collections.get(name) != cid:
                        verdict.violations.append(
                            f"acknowledged collection {name} (ID {cid}) lost or changed: found {final.collections.get(name)}"
                        )
                elif name in final.collections:
                    verdict.violations.append(f"collection {name} was dropped (acknowledged) but is back: {final_call}")
            verdict.stats["collections checked"] = checked
        if final.segments is not None:
            flushed: set[int] = set()
            for c in ordered:
                if c.ok and c.method == "Flush":
                    flushed.update(int(s) for s in c.reply.flushed_segment_ids)
                    flushed.update(int(s) for s in c.reply.already_flushed_segment_ids)
            checked = 0
            for c in ordered:
                if not (c.ok and c.method == "AssignSegmentID"):
                    continue
                for a in c.reply.assignments:
                    checked += 1
                    info = final.segments.get(int(a.segment_id))
                    if info is None:
                        verdict.violations.append(f"segment {a.segment_id} of an acknowledged assignment is gone: {c}")
                    elif (info.collection_id, info.partition_id, info.channel_name) != (
                        a.collection_id, a.partition_id, a.channel_name
                    ) or info.num_rows < a.start_row + a.count:
                        verdict.violations.append(
                            f"acknowledged rows [{a.start_row}, {a.start_row + a.count}) of segment {a.segment_id} "
                            f"not persisted: segment now {info.num_rows} rows of {info.collection_id}/"
                            f"{info.partition_id}/{info.channel_name}"
                        )
            for sid in flushed:
                info = final.segments.get(sid)
                if info is None or info.state != FLUSHED:
                    verdict.violations.append(f"segment {sid} was flushed (acknowledged) but is now {info and info.state}")
            verdict.stats["assignments checked"] = checked
        if final.loads is not None:
            last_q: dict[str, Call] = {}
            for c in ordered:
                if c.role == "querycoord" and c.method in ("LoadCollection", "ReleaseCollection"):
                    last_q[c.request.collection_name] = c
            checked = 0
            for name, c in last_q.items():
                if not c.ok:
                    continue
                checked += 1
                if c.method == "LoadCollection":
                    want = c.request.replica_number or 1
                    if final.loads.get(name) != want:
                        verdict.violations.append(
                            f"acknowledged load of {name} ({want} replicas) lost or changed: found {final.loads.get(name)}"
                        )
                elif name in final.loads:
                    verdict.violations.append(f"{name} was released (acknowledged) but is loaded again: {c}")
            verdict.stats["loads checked"] = checked

    # -- reading the final state back --------------------------------------------------------------

    async def final_state(self, clients: dict[str, CoordinatorClient]) -> FinalState:
        """Read back what each role holds now, through ``clients`` (roles without one are skipped)."""
        final = FinalState()
        if "rootcoord" in clients:
            shown = await clients["rootcoord"].call("ShowCollections", rootcoord_pb2.RootShowCollectionsRequest())
            final.collections = dict(zip(shown.collection_names, shown.collection_ids, strict=True))
        if "datacoord" in clients:
            final.segments = {}
            collections = {int(a.collection_id) for c in self.of("datacoord", "AssignSegmentID", ok=True)
                           for a in c.reply.assignments}
            collections |= {int(c.request.collection_id) for c in self.of("datacoord", "Flush", ok=True)}
            for cid in sorted(collections):
                reply = await clients["datacoord"].call("ShowSegments", datacoord_pb2.ShowSegmentsRequest(collection_id=cid))
                final.segments.update({int(s.id): s for s in reply.infos})
        if "querycoord" in clients:
            shown_q = await clients["querycoord"].call("ShowCollections", querycoord_pb2.ShowCollectionsRequest())
            final.loads = {c.collection_name: int(c.replica_number) for c in shown_q.collections}
        return final

    def summary(self) -> str:
        """Calls per role and method, acknowledged / failed, and the failure statuses."""
        counts: Counter[tuple[str, str, bool]] = Counter((c.role, c.method, c.ok) for c in self.calls if c.end)
        statuses: Counter[str] = Counter(c.status for c in self.calls if c.end and not c.ok)
        keys = sorted({(r, m) for r, m, _ in counts})
        parts = [f"{r}.{m} {counts[(r, m, True)]}/{counts[(r, m, True)] + counts[(r, m, False)]}" for r, m in keys]
        return "calls acknowledged/total: " + ", ".join(parts) + (f"; failures: {dict(statuses)}" if statuses else "")


def _schema(name: str) -> rootcoord_pb2.CreateCollectionRequest:
    return rootcoord_pb2.CreateCollectionRequest(
        collection_name=name,
        fields=[
            rootcoord_pb2.FieldSchema(name="id", data_type=rootcoord_pb2.Int64, is_primary_key=True),
            rootcoord_pb2.FieldSchema(name="vector", data_type=rootcoord_pb2.FloatVector, dim=8),
        ],
    )


class ClientLoad:
    """Client load on the roles in ``roles`` while faults happen, every call recorded in ``history``.

    Workers are sequential (each call starts after the previous one ended) and each has its own
    client, so the real-time order between one worker's calls is the order it made them:

    - rootcoord (``root_workers`` of them): AllocTimestamp, AllocID, now and then CreateCollection
      of a new name and DropCollection of one of its own;
    - datacoord: AssignSegmentID on the setup collections' channels (set ``dataCoord.segment.maxRows``
      low so segments seal and new IDs come from rootcoord often), now and then Flush;
    - querycoord: load and release of its own collections, each with a fixed replica number.

    datacoord needs rootcoord (collections, segment IDs), querycoord needs both. Use as
    ``async with ClientLoad(...) as load:`` (setup, then workers run until the block ends), then
    :meth:`verdict` for the final read-back and the check.
    """

    def __init__(
        self,
        etcd: Etcd,
        meta_root: str,
        roles: Iterable[str] = ("rootcoord", "datacoord", "querycoord"),
        *,
        history: History | None = None,
        call_timeout: float = 2.0,
        failover_budget: float = 15.0,
        root_workers: int = 2,
        pace: float = 0.01,
        seed: int | None = None,
        tag: str = "h",
    ) -> None:
        self.roles = tuple(roles)
        if "datacoord" in self.roles or "querycoord" in self.roles:
            assert "rootcoord" in self.roles, "datacoord and querycoord need rootcoord"
        self.history = history or History()
        self.etcd = etcd
        self.meta_root = meta_root
        self.call_timeout = call_timeout
        self.failover_budget = failover_budget
        self.root_workers = root_workers
        self.pace = pace
        self.random = random.Random(seed)
        self.tag = tag
        self.stop_event = asyncio.Event()
        self.shared: list[int] = []  # collections datacoord assigns segments of
        self.query_names: list[str] = []
        self._clients: list[CoordinatorClient] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.final_clients: dict[str, CoordinatorClient] = {}

    def client(self) -> dict[str, CoordinatorClient]:
        """A fresh set of clients, one per role (closed by :meth:`stop`)."""
        made = {
            role: CoordinatorClient(
                self.etcd, self.meta_root, role, call_timeout=self.call_timeout, failover_budget=self.failover_budget
            )
            for role in self.roles
        }
        self._clients += made.values()
        return made

    async def __aenter__(self) -> ClientLoad:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Create the setup collections (retrying: the cluster may still be settling), start the workers."""
        self.final_clients = self.client()
        if "rootcoord" in self.roles and ("datacoord" in self.roles or "querycoord" in self.roles):
            root = self.final_clients["rootcoord"]
            names = [f"{self.tag}_shared{i}" for i in range(2)]
            if "querycoord" in self.roles:
                self.query_names = [f"{self.tag}_q{i}" for i in range(3)]
            for name in names + self.query_names:
                reply = await self.history.call(root, "CreateCollection", _schema(name), idempotent=False)
                if reply is None:
                    raise AssertionError(f"setup: could not create {name}: {self.history.calls[-1]}")
                if name in names:
                    self.shared.append(int(reply.collection_id))
        workers = []
        if "rootcoord" in self.roles:
            workers += [self._root_worker(i) for i in range(self.root_workers)]
        if "datacoord" in self.roles:
            workers.append(self._data_worker())
        if "querycoord" in self.roles:
            workers.append(self._query_worker())
        self._tasks = [asyncio.create_task(w, name=f"load-{i}") for i, w in enumerate(workers)]

    async def stop(self, timeout: float | None = None) -> None:
        """Stop the workers after their current call (bounded by the failover budget)."""
        self.stop_event.set()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=timeout or self.failover_budget + self.call_timeout + 5)
            for task in pending:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            for task in self._tasks:
                if not task.cancelled() and task.exception() is not None:
                    raise AssertionError(f"a load worker crashed: {task.exception()!r}") from task.exception()
            self._tasks = []

    async def close(self) -> None:
        await self.stop()
        for client in self._clients:
            await client.close()
        self._clients = []

    async def verdict(self) -> Verdict:
        """Stop the load, read the final state back (through fresh clients), judge the history."""
        await self.stop()
        final = await self.history.final_state(self.client())
        return self.history.check(final)

    def acknowledged(self, role: str | None = None, since: float = 0.0) -> int:
        """How many calls (of ``role``) were acknowledged after ``since`` (monotonic)."""
        return sum(1 for c in self.history.of(role, ok=True) if c.end > since)

    async def wait_progress(self, role: str | None = None, *, calls: int = 3, timeout: float = 10.0) -> float:
        """Until ``calls`` more calls (of ``role``) are acknowledged; seconds it took."""
        t0 = time.monotonic()
        while self.acknowledged(role, t0) < calls:
            if time.monotonic() - t0 > timeout:
                raise AssertionError(
                    f"the client load made no progress on {role or 'any role'} for {timeout}s; "
                    f"last calls: {[str(c) for c in self.history.calls[-5:]]}"
                )
            await asyncio.sleep(0.02)
        return time.monotonic() - t0

    def write_request(self, role: str) -> tuple[str, Any]:
        """A write of ``role`` that probes may send straight to one member: ``(method, request)``."""
        if role == "rootcoord":
            return "AllocTimestamp", rootcoord_pb2.AllocTimestampRequest(count=1)
        if role == "datacoord":
            req = datacoord_pb2.SegmentIDRequest(collection_id=self.shared[0], channel_name="probe", count=1)
            return "AssignSegmentID", datacoord_pb2.AssignSegmentIDRequest(segment_requests=[req])
        name = self.query_names[0]
        return "LoadCollection", querycoord_pb2.LoadCollectionRequest(collection_name=name, replica_number=1)

    def read_request(self, role: str) -> tuple[str, Any] | None:
        """A read of ``role`` the stale-read check judges (:mod:`harness.staleness`), of something the
        workers wrote; None while there is nothing to read back."""
        if role == "rootcoord":
            created = [c.request.collection_name for c in self.history.of("rootcoord", "CreateCollection", ok=True)]
            if not created:
                return None
            name = self.random.choice(created[-20:])
            return "HasCollection", rootcoord_pb2.HasCollectionRequest(collection_name=name)
        if role == "querycoord" and self.query_names:
            name = self.random.choice(self.query_names)
            return "GetLoadState", querycoord_pb2.GetLoadStateRequest(collection_name=name)
        if role == "datacoord" and (segments := self._segments()):
            return "GetSegmentInfo", datacoord_pb2.GetSegmentInfoRequest(segment_ids=[self.random.choice(segments[-50:])])
        return None

    def _segments(self) -> list[int]:
        """The segment IDs acknowledged assignments handed out, in the order they were."""
        return list(dict.fromkeys(int(a.segment_id) for c in self.history.of("datacoord", "AssignSegmentID", ok=True)
                                  for a in c.reply.assignments))

    async def _pause(self) -> None:
        if self.pace:
            await asyncio.sleep(self.pace)

    async def _root_worker(self, n: int) -> None:
        clients = self.client()
        root = clients["rootcoord"]
        mine: list[str] = []
        for i in itertools.count():
            if self.stop_event.is_set():
                return
            await self.history.call(root, "AllocTimestamp", rootcoord_pb2.AllocTimestampRequest(count=self.random.randint(1, 4)))
            await self.history.call(root, "AllocID", rootcoord_pb2.AllocIDRequest(count=self.random.randint(1, 8)))
            if i % 3 == 0:
                name = f"{self.tag}_w{n}_c{i}"
                if await self.history.call(root, "CreateCollection", _schema(name), idempotent=False) is not None:
                    mine.append(name)
            if i % 3 == 1 and mine:  # a read the stale-read check judges (harness.staleness)
                name = self.random.choice(mine)
                await self.history.call(root, "HasCollection", rootcoord_pb2.HasCollectionRequest(collection_name=name))
            if i % 7 == 6 and mine:
                name = mine.pop(self.random.randrange(len(mine)))
                await self.history.call(
                    root, "DropCollection", rootcoord_pb2.DropCollectionRequest(collection_name=name), idempotent=False
                )
            await self._pause()

    async def _data_worker(self) -> None:
        data = self.client()["datacoord"]
        for i in itertools.count():
            if self.stop_event.is_set():
                return
            requests = [
                datacoord_pb2.SegmentIDRequest(
                    collection_id=self.random.choice(self.shared),
                    partition_id=self.random.randint(0, 1),
                    channel_name=f"ch{self.random.randint(0, 1)}",
                    count=self.random.randint(1, 40),
                )
                for _ in range(self.random.randint(1, 2))
            ]
            await self.history.call(
                data, "AssignSegmentID", datacoord_pb2.AssignSegmentIDRequest(segment_requests=requests), idempotent=False
            )
            if i % 10 == 9:
                await self.history.call(data, "Flush", datacoord_pb2.FlushRequest(collection_id=self.random.choice(self.shared)))
            if i % 3 == 2 and (read := self.read_request("datacoord")) is not None:  # judged by harness.staleness
                await self.history.call(data, *read)
            await self._pause()

    async def _query_worker(self) -> None:
        query = self.client()["querycoord"]
        for i in itertools.count():
            if self.stop_event.is_set():
                return
            k = i % len(self.query_names)
            name = self.query_names[k]
            if (i // len(self.query_names)) % 2 == 0:
                request = querycoord_pb2.LoadCollectionRequest(collection_name=name, replica_number=1 + k)
                await self.history.call(query, "LoadCollection", request, idempotent=False)
            else:
                request_r = querycoord_pb2.ReleaseCollectionRequest(collection_name=name)
                await self.history.call(query, "ReleaseCollection", request_r, idempotent=False)
            await self.history.call(query, "GetLoadState", querycoord_pb2.GetLoadStateRequest(collection_name=name))
            await self._pause()
            await self._pause()
