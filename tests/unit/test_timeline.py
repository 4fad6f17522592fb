"""session.timeline: which answers show that etcd went back in time, told once."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from session.errors import EtcdUnavailable
from session.timeline import EtcdRewound, Rewind, RewindSign, Timeline, verify_history
from session.watch import Resync, watch

CLUSTER = 0x1234


def header(revision: int, cluster_id: int = CLUSTER) -> SimpleNamespace:
    return SimpleNamespace(revision=revision, cluster_id=cluster_id)


def test_a_call_in_flight_may_see_a_lower_revision_than_one_answered_meanwhile() -> None:
    timeline = Timeline()
    told: list[Rewind] = []
    timeline.subscribe(told.append)
    timeline.observe(header(10), timeline.mark(), "get a")
    slow, fast = timeline.mark(), timeline.mark()  # both sent at revision 10
    timeline.observe(header(15), fast, "txn")
    timeline.observe(header(12), slow, "get b")  # read before the txn applied: linearizable still
    assert timeline.revision == 15 and told == []


def test_an_answer_older_than_one_received_before_the_send_is_a_rewind_told_once() -> None:
    timeline = Timeline()
    told: list[Rewind] = []
    timeline.subscribe(told.append)
    timeline.observe(header(1520), timeline.mark(), "txn")
    straddling = timeline.mark()  # sent before the rewind is seen: its answer is from the new history
    with pytest.raises(EtcdRewound) as caught:
        timeline.observe(header(812), timeline.mark(), "get k")
    assert caught.value.rewind.sign is RewindSign.REVISION_BEHIND
    assert "revision 812" in str(caught.value) and "revision 1520" in str(caught.value)
    with pytest.raises(EtcdRewound):
        timeline.observe(header(813), straddling, "get j")  # refused, not told again
    timeline.observe(header(814), timeline.mark(), "get l")  # the new history goes on
    assert [r.noticed_by for r in told] == ["get k"] and timeline.rewinds == 1


def test_another_cluster_id_is_a_rewind() -> None:
    timeline = Timeline()
    timeline.observe(header(5), timeline.mark(), "get")
    with pytest.raises(EtcdRewound) as caught:
        timeline.observe(header(900, cluster_id=0x99), timeline.mark(), "get")
    assert caught.value.rewind.sign is RewindSign.CLUSTER_CHANGED
    assert timeline.cluster_id == 0x99  # followed from now on


def test_reported_signs_reach_every_subscriber_until_it_unsubscribes() -> None:
    timeline = Timeline()
    first: list[Rewind] = []
    second: list[Rewind] = []
    timeline.subscribe(first.append)
    unsubscribe = timeline.subscribe(second.append)
    rewind = Rewind(RewindSign.KEY_BEHIND, "revision 40", "no key", "by-dev/kv/tso/timestamp")
    timeline.report(rewind)
    unsubscribe()
    timeline.report(rewind)
    assert len(first) == 2 and len(second) == 1
    assert rewind.describe() == ("etcd went back in time (key_behind): by-dev/kv/tso/timestamp answered no key, "
                                 "after revision 40")


def test_the_witness_is_the_latest_put_seen_and_never_a_key_that_cannot_be_read_back() -> None:
    timeline = Timeline()
    timeline.saw(b"r/a", 10, b"1")
    timeline.saw(b"r/b", 8, b"2")  # older: not the latest
    timeline.saw(b"r/\xff\xfe", 12, b"3")  # a foreign key that is not UTF-8: could not be named again
    assert timeline.witness == (b"r/a", 10, b"1")


class _History:
    """A reader of one key history for verify_history: ``puts`` maps a revision to (key, value)."""

    timeout = 1.0

    def __init__(self, timeline: Timeline, puts: dict[int, tuple[bytes, bytes]]) -> None:
        self.timeline, self.puts = timeline, puts

    async def get(self, key: str, *, revision: int = 0, **_: object) -> object:
        put = self.puts.get(revision)
        kvs = [SimpleNamespace(key=put[0], mod_revision=revision, value=put[1])] if put and put[0] == key.encode() else []
        return SimpleNamespace(kvs=kvs, header=header(max(self.puts, default=1)))


async def test_after_contact_is_lost_the_witness_waits_for_the_history_to_be_verified() -> None:
    """etcd restored under a STANDBY: the new history climbs past the old revisions before its watch
    resumes, and a read shows a put there. Taken as the witness, it would vouch for the new history
    (found by the rewind fault test under load: a mirror served a collection etcd had lost)."""
    timeline = Timeline()
    timeline.saw(b"r/later", 10, b"lost")  # the old history's latest put
    timeline.lost_contact()  # etcd restarting: a call unanswered, streams broken
    timeline.saw(b"r/serving", 12, b"new term")  # the restored history, past revision 10 already
    assert timeline.witness == (b"r/later", 10, b"lost")
    restored = _History(timeline, {12: (b"r/serving", b"new term")})
    with pytest.raises(EtcdRewound) as rewound:
        await verify_history(restored)  # type: ignore[arg-type]
    assert rewound.value.rewind.sign == RewindSign.KEY_BEHIND
    # Verified in the same history: new puts are witnesses again.
    timeline.saw(b"r/a", 20, b"1")
    timeline.lost_contact()
    same = _History(timeline, {20: (b"r/a", b"1")})
    await verify_history(same)  # type: ignore[arg-type]
    timeline.saw(b"r/b", 21, b"2")
    assert timeline.witness == (b"r/b", 21, b"2")


class _FlakyEtcd:
    """Just enough of session.etcd.Etcd for watch(): its stream breaks once; then the history check
    finds a rewind, the re-read that must follow fails once, and succeeds."""

    timeout = 1.0

    def __init__(self) -> None:
        self.timeline = Timeline()
        self.answers: list[object] = [
            EtcdRewound(Rewind(RewindSign.REVISION_BEHIND, "revision 9", "revision 3", "get")),  # the check
            EtcdUnavailable("etcd get: no answer in time"),  # the re-read, once
            SimpleNamespace(kvs=[], header=SimpleNamespace(revision=4)),  # the re-read again
        ]

    def open_watch(self) -> object:
        raise EtcdUnavailable("etcd watch: connection lost")

    async def get(self, *args: object, **kwargs: object) -> object:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


async def test_a_watch_delivers_the_resync_a_rewind_calls_for_even_when_the_re_read_fails_once() -> None:
    etcd = _FlakyEtcd()
    stream = watch(etcd, "k", start_revision=10, max_backoff=0.01)  # type: ignore[arg-type]
    try:
        item = await asyncio.wait_for(anext(stream), 5)
    finally:
        await stream.aclose()
    assert isinstance(item, Resync) and item.rewind is not None and item.revision == 4  # not resumed at 10
