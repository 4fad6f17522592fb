"""A clock nemesis: the ACTIVE rootcoord's wall clock jumps by +-1 h (and more) between failovers.

The timestamp oracle follows the wall clock forward and never goes back; its saved bound carries a
jump forward over to the next term. Each member runs under libfaketime (Debian's ``faketime``), its
offset read from a file the test rewrites while it runs; only the wall clock is faked (monotonic and
boottime clocks stay true, as after an NTP step). The history checker judges every call: timestamps
strictly increasing, IDs never repeated, acknowledged collections surviving, terms not overlapping.
"""

from __future__ import annotations

import glob
import signal
import time
from pathlib import Path

import pytest
from etcd3aio import Etcd3Client

from coordinators.roles.rootcoord.tso import decompose
from harness.history import ClientLoad
from harness.procs import Launch, MilvusProcess, holder, wait_for_serving, wait_until
from session import Etcd

pytestmark = pytest.mark.process

LIBFAKETIME = next(iter(sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))), None)


def serving_epochs(proc: MilvusProcess) -> list[int]:
    """The epochs of the terms ``proc`` has served (its "is ACTIVE and serving" lines), in order."""
    return [int(ln.fields["epoch"]) for ln in proc.lines() if ln.msg == "rootcoord is ACTIVE and serving"]


def faked(offset_file: Path) -> dict[str, str]:
    """The environment that puts a process's wall clock at the offset written in ``offset_file``."""
    assert LIBFAKETIME is not None
    return {
        "LD_PRELOAD": LIBFAKETIME,
        "FAKETIME_TIMESTAMP_FILE": str(offset_file),
        "FAKETIME_NO_CACHE": "1",  # the file is read at every clock reading: a jump takes effect at once
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",  # CLOCK_MONOTONIC and CLOCK_BOOTTIME stay true
    }


@pytest.mark.skipif(LIBFAKETIME is None, reason="libfaketime is not installed (apt-get install faketime; .ci/run does)")
async def test_timestamps_strictly_increase_across_failovers_while_the_actives_wall_clock_jumps(
    launch: Launch, etcd_client: Etcd3Client, etcd_prefix: str, base_env: dict[str, str], tmp_path: Path
) -> None:
    offsets = {name: tmp_path / f"{name}.faketime" for name in ("a", "b")}
    for file in offsets.values():
        file.write_text("+0\n")

    def start(name: str) -> MilvusProcess:
        return launch("rootcoord", name, env=faked(offsets[name]))

    members = {"a": start("a")}
    await wait_for_serving(members["a"], "rootcoord")
    members["b"] = start("b")
    etcd = Etcd(base_env["ETCD_ENDPOINTS"].split(","), timeout=5.0)
    await etcd.connect()
    try:
        async with ClientLoad(etcd, f"{etcd_prefix}/meta", ("rootcoord",), call_timeout=3.0, seed=7, tag="clock") as load:
            await load.wait_progress(calls=20)
            for jump in ("+3600", "-3600", "+7200", "-1800", "+0"):
                # Waited for, not assumed: under load a loop stall may end a term (it resigns its key
                # and campaigns again), so the key can be briefly absent between two terms.
                kv = await wait_until(lambda: holder(etcd_client, etcd_prefix, "rootcoord"), timeout=15,
                                      what="an ACTIVE member")
                name = next(n for n, m in members.items() if m.address == kv.value["Address"])
                offsets[name].write_text(f"{jump}\n")  # the ACTIVE's wall clock jumps, while it serves
                await load.wait_progress("rootcoord", calls=20)
                other = next(m for n, m in members.items() if n != name)
                members[name].signal(signal.SIGTERM)  # a failover to the other member (its own clock)
                assert await members[name].wait(10) == 0

                async def other_serves(o: MilvusProcess = other) -> bool:
                    """The ACTIVE key is the other member's and it serves that term. Not "one more serving
                    line than before the stop": under load a loop stall may have handed it the key already."""
                    kv = await holder(etcd_client, etcd_prefix, "rootcoord")
                    return kv is not None and kv.value["Address"] == o.address and kv.create_revision in serving_epochs(o)

                await wait_until(other_serves, timeout=15, what="the other member serving a new term")
                await load.wait_progress("rootcoord", calls=20)
                members[name] = start(name)  # back as a STANDBY, its clock still off

                async def two() -> bool:
                    from harness.procs import sessions

                    return len(await sessions(etcd_client, etcd_prefix, "rootcoord")) == 2

                await wait_until(two, timeout=10, what="the restarted member's session")
            verdict = await load.verdict()
        print(load.history.summary())
        print(verdict.summary())
        verdict.assert_ok()
        assert len(set(load.history.epochs("rootcoord"))) >= 6
        ok = load.history.of("rootcoord", "AllocTimestamp", ok=True)
        assert len(ok) >= 100, len(ok)
        # The nemesis did bite: timestamps were handed out an hour ahead of the true time (the +1 h and
        # +2 h jumps), and those that followed stayed above them.
        physical = [decompose(int(c.reply.timestamp))[0] for c in ok]
        assert max(physical) - time.time() * 1000 > 3_000_000, "no timestamp from a clock an hour ahead"
    finally:
        await etcd.close()
