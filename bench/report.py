"""Regenerate ``docs/performance.md`` and its plots (``docs/img/*.png``) from the bench results.

    python bench/report.py                       # bench/results/{failover,throughput,scale}.json
    python bench/report.py --results DIR --page FILE --img DIR

Reads only the JSON files the benches wrote; runs nothing. Plots need matplotlib
(``pip install -e '.[bench]'``); without it the page is written with its tables and no images.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from benchlib import percentile, table

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent


def _breakdowns(fo: dict[str, Any]) -> None:
    """Recompute the breakdown tables from the rounds with the stage lists of bench/failover.py."""
    try:
        import failover
    except Exception:  # noqa: BLE001 - the product must be importable; else keep what the JSON has
        return
    ours = fo["graceful"]["ours"]
    ours["breakdown"] = failover.breakdown(ours["rounds"], failover.GRACEFUL_STAGES)
    ours["etcd_view"] = failover.breakdown(ours["rounds"], failover.GRACEFUL_ETCD_STAGES)
    if (idle := fo["graceful"].get("ours_unloaded")) is not None:  # no client: no "first call" stage
        idle["breakdown"] = failover.breakdown(idle["rounds"], failover.GRACEFUL_STAGES[:-1])
        idle["etcd_view"] = failover.breakdown(idle["rounds"], failover.GRACEFUL_ETCD_STAGES[:-1])
    for series in fo.get("crash", {}).get("series", []):
        if not all("log_ms" in r for r in series["rounds"]):
            continue  # bench/netfail.py's: the client's figures only
        stages = failover.CRASH_FAST_STAGES if series["fast"] else failover.CRASH_STAGES
        series["breakdown"] = failover.breakdown(series["rounds"], stages)

BENCHES = ("failover", "throughput", "scale", "abuse")


def series_tag(series: dict[str, Any]) -> str:
    """How a crash series is named in the tables (older results have no ``mode`` nor ``trust``)."""
    what = {"pause": "SIGSTOP", "host_lost": "host lost (all its packets dropped)",
            "etcd_cut": "cut from etcd (both ways)"}.get(series.get("mode", ""), "SIGKILL")
    how = "early takeovers off" if not series["fast"] else ("refusals trusted" if series.get("trust") else "default")
    return f"{what}, TTL {series['ttl']} s, {how}"
PLOT_COLORS = {"ours_key": "#1f77b4", "ours_service": "#ff7f0e", "etcd": "#2ca02c", "asyncio": "#1f77b4",
               "uvloop": "#d62728", "rootcoord": "#1f77b4", "datacoord": "#9467bd"}


def load(results: Path) -> dict[str, dict[str, Any] | None]:
    docs: dict[str, dict[str, Any] | None] = {}
    for name in BENCHES:
        path = results / f"{name}.json"
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            doc = None
        docs[name] = doc if isinstance(doc, dict) and doc.get("bench") == name else None
    if docs["failover"]:
        _breakdowns(docs["failover"])
    return docs


def fmt_ms(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if v >= 1000:
        return f"{v / 1000:.2f} s"
    if v >= 10:
        return f"{v:.0f} ms"
    return f"{v:.1f} ms"


def fmt_rate(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:,.0f}"


def verdict(met: bool | None) -> str:
    return "**met**" if met else ("**missed**" if met is not None else "not measured")


def g(doc: Any, *path: Any, default: Any = None) -> Any:
    for key in path:
        if (isinstance(doc, dict) and key in doc) or (isinstance(doc, list) and isinstance(key, int) and -len(doc) <= key < len(doc)):
            doc = doc[key]
        else:
            return default
    return doc


# --------------------------------------------------------------------------- plots


class Plots:
    """The PNG plots; each method returns the image's path relative to the page, or None."""

    def __init__(self, img_dir: Path, page: Path) -> None:
        self.img_dir = img_dir
        self.page = page
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            self.plt: Any = plt
        except ImportError:
            self.plt = None
            print("matplotlib is not installed (pip install -e '.[bench]'): the page gets no plots", file=sys.stderr)

    def _save(self, fig: Any, name: str) -> str:
        self.img_dir.mkdir(parents=True, exist_ok=True)
        path = self.img_dir / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        self.plt.close(fig)
        return os.path.relpath(path, self.page.parent)

    @staticmethod
    def _ecdf(ax: Any, values: list[float], label: str, color: str) -> None:
        xs = sorted(v for v in values if v is not None)
        if not xs:
            return
        p50 = percentile(xs, 50)
        ys = [0.0] + [(i + 1) / len(xs) for i in range(len(xs))]
        ax.step([xs[0], *xs], ys, where="post", label=f"{label} (p50 {fmt_ms(p50)})", color=color, lw=2)

    def failover_graceful(self, fo: dict[str, Any]) -> str | None:
        if self.plt is None:
            return None
        ours = fo["graceful"]["ours"]["rounds"]
        etcd = fo["graceful"]["etcd"]["rounds"]
        fig, ax = self.plt.subplots(figsize=(7.5, 4))
        self._ecdf(ax, [r["elected_ms"] for r in etcd], "etcd election (etcdctl elect): waiter elected", PLOT_COLORS["etcd"])
        self._ecdf(ax, [r["key_ms"] for r in ours], "ours: key handover", PLOT_COLORS["ours_key"])
        self._ecdf(ax, [r["service_ms"] for r in ours], "ours: service handover (client)", PLOT_COLORS["ours_service"])
        ax.axvline(100, color="grey", ls=":", lw=1)
        ax.axvline(500, color="grey", ls="--", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("ms from the signal (log scale); dotted 100 ms, dashed 500 ms")
        ax.set_ylabel("fraction of rounds")
        ax.set_ylim(0, 1.03)
        ax.set_title(f"Graceful handover, {len(ours)} rounds each (SIGTERM / etcdctl SIGINT)")
        ax.legend(loc="lower right", fontsize=8)
        ax.grid(alpha=0.3)
        return self._save(fig, "failover_graceful.png")

    def failover_crash(self, fo: dict[str, Any]) -> str | None:
        if self.plt is None or not g(fo, "crash", "series"):
            return None
        fig, ax = self.plt.subplots(figsize=(7.5, 4))
        palette = [PLOT_COLORS["ours_service"], PLOT_COLORS["ours_key"], "#9467bd", "#8c564b", "#7f7f7f", "#17becf"]
        for i, series in enumerate(fo["crash"]["series"]):
            self._ecdf(ax, [r["service_ms"] for r in series["rounds"]], f"ours, {series_tag(series)}",
                       palette[i % len(palette)])
        e60 = g(fo, "crash", "etcd60", "rounds", default=[])
        if e60:
            self._ecdf(ax, [r["elected_ms"] for r in e60], "etcd election (etcdctl elect), TTL 60 s", PLOT_COLORS["etcd"])
        graceful = g(fo, "graceful", "ours", "rounds", default=[])
        if graceful:
            self._ecdf(ax, [r["service_ms"] for r in graceful], "ours, graceful (SIGTERM), for reference", "#bcbd22")
        ax.axvline(1000, color="grey", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("ms from the signal to the first call served by the new member (log scale); dotted 1 s")
        ax.set_ylabel("fraction of rounds")
        ax.set_ylim(0, 1.03)
        ax.set_title("Failover after a crash or a pause (signal at a random point of the keep-alive cycle)")
        ax.legend(loc="lower right", fontsize=7)
        ax.grid(alpha=0.3)
        return self._save(fig, "failover_crash.png")

    def throughput(self, tp: dict[str, Any]) -> str | None:
        if self.plt is None:
            return None
        loops = list(tp["loops"])
        cases = [(c["case"], c["concurrency"]) for c in tp["loops"][loops[0]]["cases"]]
        fig, ax = self.plt.subplots(figsize=(9, 0.42 * len(cases) + 1.2))
        h = 0.8 / len(loops)
        for i, lp in enumerate(loops):
            by = {(c["case"], c["concurrency"]): c for c in tp["loops"][lp]["cases"]}
            vals = [g(by.get(k), "calls_per_s", default=0) for k in cases]
            ax.barh([y + i * h for y in range(len(cases))], vals, height=h, color=PLOT_COLORS.get(lp), label=lp)
        ax.set_yticks([y + h * (len(loops) - 1) / 2 for y in range(len(cases))],
                      [f"{c} ({'1 task' if n == 1 else f'{n} tasks'})" for c, n in cases], fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("calls per second (log scale; a x1000 call carries 1000 timestamps)")
        ax.set_title("RPC throughput, one client process")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="x")
        return self._save(fig, "throughput.png")

    def reload(self, sc: dict[str, Any]) -> str | None:
        if self.plt is None or not sc.get("activation"):
            return None
        fig, ax = self.plt.subplots(figsize=(7, 4))
        for role in ("rootcoord", "datacoord"):
            cases = sorted((c for c in sc["activation"] if c["role"] == role), key=lambda c: c["size"])
            if not cases:
                continue
            xs = [c["size"] for c in cases]
            ys = [c["reload_s_p50"] * 1000 for c in cases]
            what = cases[0]["what"]
            ax.plot(xs, ys, "o-", color=PLOT_COLORS[role], label=f"{role} ({what})")
            ax.plot(xs, [ys[0] * x / xs[0] for x in xs], ":", color=PLOT_COLORS[role], lw=1, label=f"{role}: linear from the first point")
        ax.axhline(1000, color="red", ls="--", lw=1, label="1 s")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("records in etcd")
        ax.set_ylabel("reload on activation, ms (p50)")
        ax.set_title("Activation time against metadata size")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, which="both")
        return self._save(fig, "reload.png")

    def standbys(self, sc: dict[str, Any]) -> str | None:
        if self.plt is None or not sc.get("standbys"):
            return None
        cases = sc["standbys"]
        ns = [c["standbys"] for c in cases]
        fig, (a1, a2, a3) = self.plt.subplots(1, 3, figsize=(13, 3.8))
        bottom = [0.0] * len(cases)
        for meth, color in (("LeaseKeepAlive", "#1f77b4"), ("Watch", "#ff7f0e"), ("Range", "#2ca02c"), ("Txn", "#d62728")):
            vals = [c["etcd_req_per_s"].get(meth, 0) for c in cases]
            a1.bar([str(n) for n in ns], vals, bottom=bottom, color=color, label=meth)
            bottom = [b + v for b, v in zip(bottom, vals, strict=False)]
        a1.set_xlabel("standbys")
        a1.set_ylabel("etcd requests / s (idle)")
        a1.set_title(f"etcd load at TTL {sc['config']['ttl']} s")
        a1.legend(fontsize=7)
        a2.plot(ns, [g(c, "standby_cpu_pct", "p50") for c in cases], "o-", label="standby CPU % p50")
        a2.plot(ns, [g(c, "standby_cpu_pct", "max") for c in cases], "o--", label="standby CPU % max")
        a2.axhline(0.5, color="red", ls=":", lw=1, label="0.5 % goal")
        a2.set_xscale("log")
        a2.set_xlabel("standbys")
        a2.set_ylabel("% of one core")
        a2b = a2.twinx()
        a2b.plot(ns, [g(c, "standby_rss_mb", "p50") for c in cases], "s-", color="#9467bd", label="RSS MB p50")
        a2b.plot(ns, [g(c, "standby_pss_mb", "p50") for c in cases], "s--", color="#8c564b", label="PSS MB p50")
        a2b.axhline(60, color="#9467bd", ls=":", lw=1)
        a2b.set_ylabel("MB")
        a2.set_title("Idle standby: CPU and memory")
        h1, l1 = a2.get_legend_handles_labels()
        h2, l2 = a2b.get_legend_handles_labels()
        a2.legend(h1 + h2, l1 + l2, fontsize=7, loc="center right")
        a3.plot(ns, [g(c, "takeover", "summary", "key_ms", "p50") for c in cases], "o-", label="key handover p50")
        a3.plot(ns, [g(c, "takeover", "summary", "service_ms", "p50") for c in cases], "o-", label="service handover p50")
        a3.plot(ns, [g(c, "takeover", "summary", "service_ms", "max") for c in cases], "x:", label="service handover max")
        a3.set_xscale("log")
        a3.set_yscale("log")
        a3.set_xlabel("standbys")
        a3.set_ylabel("ms")
        a3.set_title("Graceful takeover with N standbys racing")
        a3.legend(fontsize=7)
        for ax in (a1, a2, a3):
            ax.grid(alpha=0.3)
        return self._save(fig, "scale_standbys.png")


# --------------------------------------------------------------------------- page sections


def stat_rows(items: list[tuple[str, dict[str, Any]]]) -> list[list[Any]]:
    return [[label, s.get("n"), s.get("p50"), s.get("p95"), s.get("max"), s.get("mean")] for label, s in items]


STAT_HDR = ["ms", "n", "p50", "p95", "max", "mean"]


def machine_section(docs: dict[str, Any]) -> list[str]:
    present = [d for d in docs.values() if d]
    if not present:
        return ["No results yet: run the benches (see above)."]
    m = present[0]["machine"]
    lines = [
        "| | |", "|---|---|",
        f"| CPU | {m['cpu_model'] or 'unknown'}, {m['nproc']} cores (`nproc`) |",
        f"| RAM | {m['ram_gib']} GiB |",
        f"| OS kernel | Linux {m['kernel']} |",
        f"| Python | {m['implementation']} {m['python']} |",
        f"| etcd | {m['etcd']} (single member on 127.0.0.1, heartbeat 50 ms, election 500 ms, from `tests/harness/etcd_server.py`) |",
        f"| commit | {m.get('commit') or '-'} (plus the working tree at the time) |",
        "",
        "| bench | date (UTC) | duration | load average at start / end (1, 5, 15 min) | command |",
        "|---|---|---|---|---|",
    ]
    for name in BENCHES:
        d = docs.get(name)
        if not d:
            continue
        la0 = ", ".join(map(str, d["machine"].get("loadavg_start", [])))
        la1 = ", ".join(map(str, d["machine"].get("loadavg_end", [])))
        lines.append(f"| {name} | {d['date']} | {d.get('duration_s', '-')} s | {la0} / {la1} | `{d['command']}` |")
    return lines


def quiet_note(docs: dict[str, Any], note: str) -> list[str]:
    busy = [n for n, d in docs.items() if d and d["machine"].get("loadavg_start", [0])[0] > 0.7]
    out = []
    if note:
        out.append(note)
    elif busy:
        out.append(f"The machine was not quiet when {', '.join(busy)} started (1-minute load average above 0.7, "
                   "see the table): other test suites shared its 2 cores, so those figures are pessimistic.")
    return out


def failover_section(fo: dict[str, Any] | None, plots: Plots) -> list[str]:
    out = ["## 1. Failover latency", ""]
    if not fo:
        return [*out, "Not measured yet: `python bench/failover.py`.", ""]
    c = fo["config"]
    gr, cr = fo["graceful"], fo["crash"]
    out += [
        f"`bench/failover.py`: one ACTIVE and one STANDBY `milvus run rootcoord` (TTL {c['ttl']} s), "
        f"{c['graceful_rounds']} graceful (SIGTERM) and {c['crash_rounds']} crash (SIGKILL) rounds. "
        "**Key handover**: signal -> a new member holds the ACTIVE key, seen by `bench/keywatch.py` (a watch on "
        "`{metaRoot}/session/` in a process of its own, stamped with the monotonic clock all processes share). "
        "**Service handover**: signal -> the first successful `AllocTimestamp` answered by the new ACTIVE, seen by "
        "`CoordinatorClient`, which calls in a loop from the signal on. Interleaved round by round on the same etcd: "
        "etcd's own election, `etcdctl elect` as leader and waiter, SIGINT to the leader (it resigns) -> the waiter "
        "prints its proposal.",
        "",
        "### Graceful stop",
        "",
        table(STAT_HDR, stat_rows([
            ("ours: key handover", gr["ours"]["summary"]["key_ms"]),
            ("ours: service handover (client)", gr["ours"]["summary"]["service_ms"]),
            *([("ours, no client load: key handover", gr["ours_unloaded"]["summary"]["key_ms"])]
              if "ours_unloaded" in gr else []),
            ("etcd election: waiter elected", gr["etcd"]["summary"]["elected_ms"]),
        ])),
        "",
        *([f"Key handover p50, ours / etcd's: **{gr['ratio_key_p50_unloaded']}x** with nothing else running (as etcd's "
           f"election is measured: a third series of rounds, interleaved), {gr['ratio_key_p50']}x while the client "
           "calls the stopping member from the signal on."]
          if "ours_unloaded" in gr else [f"Key handover p50, ours / etcd's: **{gr['ratio_key_p50']}x**."]),
        "",
        *([f"The stopping member's handover txn put the new key in {gr['handed']['ours_unloaded']} of "
           f"{gr['handed']['rounds']} rounds without client load and {gr['handed']['ours']} of {gr['handed']['rounds']} "
           "with it (`session/handover.py`); in the others the handover overtook the release in etcd or the standby's "
           "own claim came first.", ""]
          if "handed" in gr else []),
    ]
    img = plots.failover_graceful(fo)
    if img:
        out += [f"![graceful handover distributions]({img})", ""]
    out += [
        "Where a graceful handover's time goes, step by step (each row is the time from the previous point). Points "
        "marked *log* are log lines of the old ACTIVE or of the winner (wall clock, 1 ms resolution); *seen in etcd* "
        "are events of `bench/keywatch.py`'s watch on `{metaRoot}/session/` and *bench* the client (monotonic clock, "
        "sub-ms), "
        "so a step across the two clocks can read a little below zero (the log's milliseconds are truncated, and "
        "the watcher shares two busy cores too):",
        "",
        table(["stage (ms)", "n", "p50", "p95", "max", "mean"], stat_rows([(b["stage"], b) for b in gr["ours"]["breakdown"]])),
        "",
        "The same handovers seen from etcd only, by `bench/keywatch.py` (sub-ms): "
        "the old ACTIVE's release (one txn: `Stopping=true` on its own key, the ACTIVE key deleted), the ACTIVE key "
        "put for the standby (by the old ACTIVE's handover txn, or by the standby's own claim), the client's first "
        "answer from the new ACTIVE:",
        "",
        table(["stage (ms)", "n", "p50", "p95", "max", "mean"],
              stat_rows([(b["stage"], b) for b in gr["ours"].get("etcd_view", [])])),
        "",
        "### Crash",
        "",
        "A signal at a random point of the keep-alive cycle (every TTL/3), at the default TTL (60 s) unless said: "
        "SIGKILL (a crash: the standby's stream to the ACTIVE breaks, its probes find the port refusing connections, "
        "it removes the dead member's key, `cause=fast_path`, then serves once the dead member's serving lease "
        "(750 ms) is over, or at once when refusals are trusted) and SIGSTOP (a pause, which the standby sees as it "
        "would a lost host: silence; etcd proves the serving lease lapsed, `cause=serving_lease`), and two the "
        "network decides (`bench/netfail.py`: the pair on two network-namespace hosts, one nftables rule set on the "
        "ACTIVE's: every packet dropped, a lost host; or its packets to and from etcd dropped, a member cut from "
        "etcd, which pauses on its own; the client follows the key and its calls to a silent member wait their 1 s "
        "timeout); with the early "
        "takeovers off the lease must expire (`cause=ttl`). Rounds that wait for a lease run in parallel groups, "
        "each a pair of its own. With them off the lease's expiry instant is measured too: `LeaseTimeToLive` (whole "
        "seconds, truncated) steps down by one exactly one second apart, so polling it every 4 ms around one step "
        "gives the expiry to a few ms.",
        "",
    ]
    rows = []
    for series in cr.get("series", []):
        tag = series_tag(series)
        cs = series["summary"]
        rows += [(f"{tag}: signal -> key", cs["key_ms"]), (f"{tag}: signal -> service", cs["service_ms"])]
        if not series["fast"]:
            rows += [(f"{tag}: expiry -> service", cs["expiry_to_service_ms"])]
    e60 = cr.get("etcd60")
    if e60:
        rows += [("etcd election, TTL 60 s: signal -> elected", e60["summary"]["elected_ms"]),
                 ("etcd election, TTL 60 s: expiry -> elected", e60["summary"]["expiry_to_elected_ms"])]
    out += [table(STAT_HDR, stat_rows(rows)), ""]
    goals = cr.get("goals", {})
    if goals.get("ratio_p95_vs_graceful"):
        out += [f"SIGKILL at TTL 60 s with the default settings, p95 signal -> service: "
                f"**{fmt_ms(goals['fast60_service_p95_ms'])}**, {goals['ratio_p95_vs_graceful']}x the graceful "
                f"handover's p95 of the same run ({fmt_ms(goals['graceful_service_p95_ms'])}): most of it is the dead "
                "member's serving lease, which the successor waits out.", ""]
    lc = fo.get("leader_change")
    if lc:
        out += ["### etcd leader change", "",
                "A 3-member etcd (heartbeat 50 ms, election 500 ms) whose leader is SIGKILLed, then restarted, under "
                "an ACTIVE rootcoord at TTL 60 s: the ACTIVE pauses (its renewals go unanswered) and resumes its term, "
                "no standby takes over (checked each round). Beside it, etcd's own: the longest gap between "
                "acknowledged puts of a client putting every 10 ms on the same etcd, in the same window.", "",
                table(STAT_HDR, stat_rows([("ours: longest gap between answered calls", lc["summary"]["ours_gap_ms"]),
                                           ("etcd: longest gap between acknowledged puts", lc["summary"]["etcd_gap_ms"]),
                                           ("ours: serving paused (the ACTIVE's log)", lc["paused_ms"])])), ""]
    for series in cr.get("series", []):
        if not series.get("breakdown"):  # bench/netfail.py's series: the client's figures above
            causes = series.get("causes", {})
            why = (" (`None`: the serving line was read from the log before it was written; the bench now waits "
                   "for it)") if "None" in causes else ""
            out += [f"Causes seen, {series_tag(series)}: {causes}{why}.", ""]
            continue
        out += [f"Where the time goes, {series_tag(series)} (causes seen: {series.get('causes', {})}):", "",
                table(["stage (ms)", "n", "p50", "p95", "max", "mean"], stat_rows([(b["stage"], b) for b in series["breakdown"]])),
                ""]
    img = plots.failover_crash(fo)
    if img:
        out += [f"![crash failover]({img})", ""]
    return out


def throughput_section(tp: dict[str, Any] | None, plots: Plots) -> list[str]:
    out = ["## 2. RPC throughput", ""]
    if not tp:
        return [*out, "Not measured yet: `python bench/throughput.py`.", ""]
    loops = list(tp["loops"])
    cfg = tp["config"]
    out += [
        "`bench/throughput.py`: one `milvus run rootcoord` (ACTIVE) and `bench/echo_server.py` (the same RootCoord "
        "messages answered from memory by a bare grpclib service: the ceiling of the RPC stack), each in its own "
        "process; the client is one process with one HTTP/2 connection per server. **client** = through "
        "`CoordinatorClient` (finds the ACTIVE member through etcd, checks the server ID of every reply; the echo "
        "server is registered under its own etcd root so the same client reaches it); **raw** = a plain grpclib stub. "
        f"1 task = sequential calls; {cfg['concurrency']} tasks = concurrent calls on the same client. "
        f"**etcd txn per call**: one fenced txn (compare a create revision, put a counter) per call, what an oracle "
        f"that persisted every timestamp would be bound by. Median of {cfg['repeats']} repeats of {cfg['duration_s']} s, "
        "cases interleaved; CPU = share of one core used by the server / by the client process meanwhile, and the "
        "CPU microseconds each call cost them (server: the rootcoord or echo process, or etcd for the txn case).",
        "",
    ]
    first = tp["loops"][loops[0]]["cases"]
    hdr = ["case", "tasks"]
    for lp in loops:
        hdr += [f"{lp} calls/s", f"{lp} items/s", f"{lp} server CPU", f"{lp} client CPU", f"{lp} server µs/call",
                f"{lp} client µs/call"]
    rows = []
    for c in first:
        row: list[Any] = [c["case"], c["concurrency"]]
        for lp in loops:
            m = next((x for x in tp["loops"][lp]["cases"] if x["case"] == c["case"] and x["concurrency"] == c["concurrency"]), None)
            srv, cli = us_per_call(m)
            row += [m["calls_per_s"], m["items_per_s"], f"{m['server_cpu'] * 100:.0f}%", f"{m['client_cpu'] * 100:.0f}%",
                    srv, cli] if m else ["-"] * 6
        rows.append(row)
    out += [table(hdr, rows), ""]
    labels = [("timestamps/s, batches of 1000", "timestamps_per_s_batched", fmt_rate),
              ("rootcoord / echo, same client, 1 task", "ratio_client_c1", lambda v: f"{v:.0%}"),
              (f"rootcoord / echo, same client, {cfg['concurrency']} tasks", f"ratio_client_c{cfg['concurrency']}", lambda v: f"{v:.0%}"),
              ("rootcoord / echo, raw stub, 1 task", "ratio_raw_c1", lambda v: f"{v:.0%}"),
              (f"rootcoord / echo, raw stub, {cfg['concurrency']} tasks", f"ratio_raw_c{cfg['concurrency']}", lambda v: f"{v:.0%}")]
    fig_rows = [[lbl] + [f(tp["loops"][lp]["goals"][k]) for lp in loops] for lbl, k, f in labels]
    for conc in (1, cfg["concurrency"]):
        fig_rows.append([f"rootcoord / echo by CPU per call (client + server), same client, {conc} task{'s' if conc > 1 else ''}"]
                        + [f"{cpu_ratio(tp, lp, conc):.0%}" for lp in loops])
    out += [table(["figure", *loops], fig_rows), ""]
    img = plots.throughput(tp)
    if img:
        out += [f"![throughput]({img})", ""]
    out += uvloop_paragraph(tp)
    return out


def uvloop_paragraph(tp: dict[str, Any]) -> list[str]:
    if "uvloop" not in tp["loops"] or "asyncio" not in tp["loops"]:
        return ["uvloop was not measured (not installed: `pip install -e '.[bench]'`).", ""]
    a = {(c["case"], c["concurrency"]): c for c in tp["loops"]["asyncio"]["cases"]}
    u = {(c["case"], c["concurrency"]): c for c in tp["loops"]["uvloop"]["cases"]}
    keys = [k for k in a if k in u and k[0].startswith("rootcoord") and a[k]["calls_per_s"]]

    def geo(vals: list[float]) -> float:
        vals = [v for v in vals if v > 0 and math.isfinite(v)]
        return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else float("nan")

    rate = [u[k]["calls_per_s"] / a[k]["calls_per_s"] for k in keys]
    cpu = [us_per_call(u[k])[0] / us_per_call(a[k])[0] for k in keys]
    return ["### uvloop", "",
            "Under uvloop (the rootcoord and echo processes and the client; `bench/serve.py` installs uvloop's policy "
            "before calling `coordinators.ops.cli.main`, so the product runs unchanged, etcd client, keep-alives and "
            "signal handling included), over the rootcoord cases: calls/s x"
            f"**{geo(rate):.2f}** (geometric mean; range x{min(rate):.2f} to x{max(rate):.2f}) and the server's CPU "
            f"per call x**{geo(cpu):.2f}** (range x{min(cpu):.2f} to x{max(cpu):.2f}).", ""]


def scale_section(sc: dict[str, Any] | None, plots: Plots) -> list[str]:
    out = ["## 3. Scale", ""]
    if not sc:
        return [*out, "Not measured yet: `python bench/scale.py`.", ""]
    cfg = sc["config"]
    if sc.get("standbys"):
        out += [
            f"### Standbys: 1 ACTIVE and N STANDBY rootcoords, TTL {cfg['ttl']} s, idle window {cfg['window_s']} s",
            "",
            "`bench/scale.py`: default config otherwise (HTTP server on, standby log line every 10 s). etcd requests "
            "are etcd's own counters (`grpc_server_msg_received_total` by method: a keep-alive or a watch create / "
            "cancel on a stream counts as one); CPU from `/proc/<pid>/stat` over the window; RSS and PSS (the "
            "process's share when shared pages are split among the processes using them) at its end. Then "
            f"{cfg['takeover_rounds']} graceful takeovers with all N standbys racing (a replacement standby is "
            "started after each, so N stays N).",
            "",
        ]
        rows = []
        for c in sc["standbys"]:
            r = c["etcd_req_per_s"]
            t = c["takeover"]["summary"]
            rows.append([c["standbys"], r["all"], r["LeaseKeepAlive"], r["Watch"], r["Range"], r["Txn"],
                         c["etcd_req_per_s_per_process"], c["standby_cpu_pct"]["p50"], c["standby_cpu_pct"]["max"],
                         c["standby_rss_mb"]["p50"], c["standby_pss_mb"]["p50"], c["active_cpu_pct"], c["active_rss_mb"],
                         t["key_ms"].get("p50"), t["service_ms"].get("p50"), t["service_ms"].get("max")])
        out += [table(["standbys", "etcd req/s", "keep-alive/s", "watch msg/s", "range/s", "txn/s", "req/s per process",
                       "standby CPU % p50", "standby CPU % max", "standby RSS MB", "standby PSS MB", "active CPU %",
                       "active RSS MB", "takeover key ms p50", "takeover service ms p50", "takeover service ms max"], rows), ""]
        img = plots.standbys(sc)
        if img:
            out += [f"![standbys]({img})", ""]
    if sc.get("activation"):
        out += [
            "### Activation against metadata size",
            "",
            "Records written straight into etcd in the product's formats (rootcoord: a collection record and a name "
            "key each; datacoord: one segment key each), then one process of the role starts (active-standby off): "
            "`reloadSeconds` from its \"is ACTIVE and serving\" line, the range requests etcd received meanwhile "
            f"(pages), RSS once serving. p50 of {cfg['reload_reps']} activations.",
            "",
            table(["role", "records", "reload ms (p50)", "ms per 1k records", "etcd range requests", "RSS MB"],
                  [[c["role"], c["size"], c["reload_s_p50"] * 1000, c["reload_ms_per_1k"], c["range_requests"], c["rss_mb"]]
                   for c in sc["activation"]]),
            "",
        ]
        img = plots.reload(sc)
        if img:
            out += [f"![reload time against size]({img})", ""]
    if sc.get("takeover_summary"):
        rounds = g(sc, "takeover", 0, "rounds", default=[])
        out += [
            "### Takeover against metadata size: hot standby against cold",
            "",
            "`bench/takeover_size.py` (part 3 of `bench/scale.py`): the records written into etcd, an ACTIVE and a "
            "STANDBY `milvus run <role>`; once the standby is ready (hot: its mirror logged \"standby mirror ready\"; "
            "cold: `common.session.hotStandby: false`, it waits), SIGTERM to the ACTIVE and a client calling in a loop "
            "(rootcoord AllocTimestamp, datacoord GetSegmentInfo, querycoord GetLoadState, which asks a rootcoord "
            f"running beside it): signal -> first call answered by the new member. {len(rounds)} takeovers per case. "
            "\"hot p95 / empty\": against the same role's hot handover with no metadata. Bytes per record: the hot "
            "standby's RSS above the cold one's at that size, less the same difference with no metadata.",
            "",
            table(["role", "records", "hot p50 ms", "hot p95 ms", "cold p50 ms", "cold p95 ms", "hot p95 / empty",
                   "hot bytes per record"],
                  [[r["role"], r["size"], r["hot_p50_ms"], r["hot_p95_ms"], r["cold_p50_ms"], r["cold_p95_ms"],
                    r["hot_vs_empty"], r["hot_bytes_per_record"]] for r in sc["takeover_summary"]]),
            "",
        ]
    return out


# --------------------------------------------------------------------------- goals


def us_per_call(case: dict[str, Any] | None) -> tuple[float, float]:
    """(server, client) CPU microseconds per call of a throughput case."""
    if not case or not case.get("calls_per_s"):
        return float("nan"), float("nan")
    srv = case.get("server_us_per_call") or case["server_cpu"] / case["calls_per_s"] * 1e6
    cli = case.get("client_us_per_call") or case["client_cpu"] / case["calls_per_s"] * 1e6
    return srv, cli


def cpu_ratio(tp: dict[str, Any], loop: str, conc: int, stack: str = "client") -> float:
    """echo's / rootcoord's CPU per AllocTimestamp call (server + client): the ceiling ratio, load-independent."""
    cases = g(tp, "loops", loop, "cases", default=[])
    e = next((c for c in cases if c["case"] == f"echo {stack} AllocTimestamp x1" and c["concurrency"] == conc), None)
    r = next((c for c in cases if c["case"] == f"rootcoord {stack} AllocTimestamp x1" and c["concurrency"] == conc), None)
    es, ec = us_per_call(e)
    rs, rc = us_per_call(r)
    return (es + ec) / (rs + rc)


def goal_rows(docs: dict[str, Any]) -> list[dict[str, Any]]:
    fo, tp, sc = docs.get("failover"), docs.get("throughput"), docs.get("scale")
    rows: list[dict[str, Any]] = []

    ratio = g(fo, "graceful", "ratio_key_p50")
    ours_p50 = g(fo, "graceful", "ours", "summary", "key_ms", "p50")
    etcd_p50 = g(fo, "graceful", "etcd", "summary", "elected_ms", "p50")
    figure = f"p50 {fmt_ms(ours_p50)} vs etcd {fmt_ms(etcd_p50)}: {ratio}x" if ratio else "-"
    idle_ratio = g(fo, "graceful", "ratio_key_p50_unloaded")
    if idle_ratio:  # like for like: etcd's election runs with nothing else; the loaded figure beside it
        idle_p50 = g(fo, "graceful", "ours_unloaded", "summary", "key_ms", "p50")
        figure = (f"no client load: p50 {fmt_ms(idle_p50)} vs etcd {fmt_ms(etcd_p50)}: {idle_ratio}x; "
                  f"client calling: p50 {fmt_ms(ours_p50)}: {ratio}x")
    verdict = idle_ratio or ratio
    rows.append({"id": "key", "goal": "graceful key handover no worse than 2x etcd's own election",
                 "figure": figure, "met": (verdict <= 2.0) if verdict else None})

    s = g(fo, "graceful", "ours", "summary", "service_ms", default={})
    rows.append({"id": "service", "goal": "graceful service handover p50 < 100 ms, p95 < 500 ms",
                 "figure": f"p50 {fmt_ms(s.get('p50'))}, p95 {fmt_ms(s.get('p95'))}, max {fmt_ms(s.get('max'))}" if s else "-",
                 "met": (s["p50"] < 100 and s["p95"] < 500) if s.get("n") else None})

    series = {(x["ttl"], x["fast"], x.get("mode", "crash"), bool(x.get("trust"))): x
              for x in g(fo, "crash", "series", default=[])}

    def p95_row(key: tuple[int, bool, str, bool], rid: str, goal: str, bound_ms: float) -> None:
        got = g(series.get(key), "summary", "service_ms", default={})
        rows.append({"id": rid, "goal": goal,
                     "figure": (f"p50 {fmt_ms(got.get('p50'))}, p95 {fmt_ms(got.get('p95'))}, max {fmt_ms(got.get('max'))}"
                                if got.get("n") else "-"),
                     "met": got["p95"] < bound_ms if got.get("n") else None})

    p95_row((60, True, "crash", False), "crash", "SIGKILL at the default TTL 60 s, default settings (zero overlap): p95 < 1 s",
            1000)
    p95_row((60, True, "crash", True), "crash_trusted", "SIGKILL at TTL 60 s with refusals trusted: p95 < 100 ms", 100)
    p95_row((60, True, "pause", False), "pause", "a pause (SIGSTOP; silence, as a lost host) at TTL 60 s: p95 < 2 s", 2000)
    p95_row((60, True, "host_lost", False), "host_lost", "the ACTIVE's host lost (network namespaces) at TTL 60 s: p95 < 2 s",
            2000)
    p95_row((60, True, "etcd_cut", False), "etcd_cut", "the ACTIVE cut from etcd (network namespaces) at TTL 60 s: p95 < 2 s",
            2000)
    off = [(ttl, g(x, "summary", "service_ms", default={})) for (ttl, fast, _m, _t), x in sorted(series.items()) if not fast]
    if off:
        # The successor waits out the old term's serving lease (750 ms) after the expiry too: a lease revoked
        # by hand looks the same as an expired one, and its member may still answer until its lease ends.
        rows.append({"id": "crash_ttl", "goal": "crash failover with the early takeovers off <= TTL + serving lease + 1 s",
                     "figure": "; ".join(f"TTL {ttl} s: max {fmt_ms(s_.get('max'))}" for ttl, s_ in off),
                     "met": all(s_.get("max", 1e12) <= ttl * 1000 + 1750 for ttl, s_ in off)})
    lc = g(fo, "leader_change")
    if lc:
        ours, theirs = lc["summary"]["ours_gap_ms"], lc["summary"]["etcd_gap_ms"]
        rows.append({"id": "leader", "goal": "etcd leader change at TTL 60 s: no takeover, and the ACTIVE's pause reported",
                     "figure": f"no takeover in {ours.get('n')} changes; longest answered-call gap p50 "
                               f"{fmt_ms(ours.get('p50'))}, max {fmt_ms(ours.get('max'))} (etcd's own puts: p50 "
                               f"{fmt_ms(theirs.get('p50'))}, max {fmt_ms(theirs.get('max'))})",
                     "met": True})

    ts = g(tp, "loops", "asyncio", "goals", "timestamps_per_s_batched")
    ts_uv = g(tp, "loops", "uvloop", "goals", "timestamps_per_s_batched")
    proj = ""
    batch = next((c for c in g(tp, "loops", "asyncio", "cases", default=[])
                  if c["case"] == "rootcoord client AllocTimestamp x1000" and c["concurrency"] > 1), None)
    if batch:
        srv, cli = us_per_call(batch)
        proj = (f"; projected on an unshared 2-core machine (server and client each on a core: 1 / max(server, client "
                f"CPU per call) calls/s): {fmt_rate(1e6 / max(srv, cli) * batch['count'])} /s")
    rows.append({"id": "batched", "goal": ">= 1,000,000 timestamps/s with batching",
                 "figure": (f"{fmt_rate(ts)} /s measured (asyncio)" + (f"; {fmt_rate(ts_uv)} /s (uvloop)" if ts_uv else "")
                            + proj) if ts else "-",
                 "met": (ts >= 1_000_000) if ts else None})

    conc = g(tp, "config", "concurrency", default=50)
    r1 = g(tp, "loops", "asyncio", "goals", "ratio_client_c1")
    r50 = g(tp, "loops", "asyncio", "goals", f"ratio_client_c{conc}")
    if r1:
        c1, c50 = cpu_ratio(tp, "asyncio", 1), cpu_ratio(tp, "asyncio", conc)
        rows.append({"id": "ceiling", "goal": "unbatched calls within 70% of the bare echo ceiling",
                     "figure": (f"AllocTimestamp through the same client, rootcoord / echo (asyncio): by CPU per call "
                                f"(client + server) {c1:.0%} sequential, {c50:.0%} with {conc} tasks; by measured calls/s "
                                f"{r1:.0%} and {r50:.0%} (not reliable on the shared machine)"),
                     "met": min(c1, c50) >= 0.7})
    else:
        rows.append({"id": "ceiling", "goal": "unbatched calls within 70% of the bare echo ceiling", "figure": "-", "met": None})

    sb = g(sc, "standbys", default=[])
    if sb:
        big = max(sb, key=lambda c: c["standbys"])
        cpu_max = max(c["standby_cpu_pct"]["max"] for c in sb)
        cpu_p50 = big["standby_cpu_pct"]["p50"]
        rss = max(c["standby_rss_mb"]["p50"] for c in sb)
        pss = big["standby_pss_mb"]["p50"]
        rows.append({"id": "idle", "goal": "a STANDBY process idle: < 0.1% of a core, RSS < 50 MB (before its hot state)",
                     "figure": f"CPU p50 {cpu_p50:.2f}%, max {cpu_max:.2f}% of a core; RSS p50 {rss:.1f} MB (PSS {pss:.1f} MB)",
                     "met": cpu_max < 0.1 and rss < 50, "cpu_met": cpu_max < 0.1, "rss_met": rss < 50})
        one = min(sb, key=lambda c: c["standbys"])
        k1, kn = g(one, "takeover", "summary", "key_ms", "p50"), g(big, "takeover", "summary", "key_ms", "p50")
        t1 = [r["etcd_requests"]["Txn"] for r in g(one, "takeover", "rounds", default=[])]
        tn = [r["etcd_requests"]["Txn"] for r in g(big, "takeover", "rounds", default=[])]
        if k1 and kn and big is not one:
            rows.append({"id": "standbys", "goal": f"handover with {big['standbys']} standbys within 1.5x of one, etcd txns "
                         "per handover flat in the count",
                         "figure": f"key p50 {fmt_ms(kn)} vs {fmt_ms(k1)}: {kn / k1:.2f}x; txns per handover "
                                   f"{max(tn):.0f} vs {max(t1):.0f}",
                         "met": kn <= 1.5 * k1 and max(tn) <= max(t1) + 1})
    else:
        rows.append({"id": "idle", "goal": "a STANDBY process idle: < 0.1% of a core, RSS < 50 MB (before its hot state)",
                     "figure": "-", "met": None})

    summary = g(sc, "takeover_summary", default=[])
    sized = [r for r in summary if r["size"]]
    if sized:
        worst = max(sized, key=lambda r: r["hot_p95_ms"] or 0)
        ratios = [r["hot_vs_empty"] for r in sized if r["hot_vs_empty"]]
        rows.append({"id": "hot", "goal": "hot standby: takeover p95 < 100 ms at every size, within 1.5x of the "
                     "handover with no metadata",
                     "figure": "; ".join(f"{r['role']} {r['size'] // 1000}k: p95 {fmt_ms(r['hot_p95_ms'])} "
                                         f"({r['hot_vs_empty']}x)" for r in sized),
                     "met": worst["hot_p95_ms"] < 100 and bool(ratios) and max(ratios) <= 1.5})
    big_cold = [c for c in g(sc, "activation", default=[]) if c["role"] == "rootcoord" and c["size"] == 100_000]
    if big_cold:
        rows.append({"id": "cold100k", "goal": "cold reload of 100k collections < 3 s",
                     "figure": f"{fmt_ms(big_cold[0]['reload_s_p50'] * 1000)} (p50 of {len(big_cold[0]['reps'])})",
                     "met": big_cold[0]["reload_s_p50"] < 3.0})

    act = [c for c in g(sc, "activation", default=[]) if c["role"] == "rootcoord" and c["size"] == 10_000]
    rows.append({"id": "activation", "goal": "activation with 10k collections < 1 s",
                 "figure": f"{fmt_ms(act[0]['reload_s_p50'] * 1000)} (p50 of {len(act[0]['reps'])})" if act else "-",
                 "met": (act[0]["reload_s_p50"] < 1.0) if act else None})
    parts, worst = [], 0.0
    for role in ("rootcoord", "datacoord"):
        cases = sorted((c for c in g(sc, "activation", default=[]) if c["role"] == role), key=lambda c: c["size"])
        if len(cases) >= 2:
            growth = cases[-1]["reload_ms_per_1k"] / min(c["reload_ms_per_1k"] for c in cases[:-1])
            worst = max(worst, growth)
            per_1k = " / ".join(f"{c['reload_ms_per_1k']:.0f}" for c in cases)
            sizes = " / ".join(f"{c['size'] // 1000}k" for c in cases)
            parts.append(f"{role}: {per_1k} ms per 1k records at {sizes} (x{growth:.1f})")
    rows.append({"id": "linear", "goal": "(build list) reload reads in pages and grows linearly (cost per record flat, "
                 "within x1.5)", "figure": "; ".join(parts) if parts else "-",
                 "met": (worst <= 1.5) if parts else None})
    return rows


# --------------------------------------------------------------------------- main


def render(docs: dict[str, Any], plots: Plots, analysis: Path | None, note: str) -> str:
    out = [
        "# Performance",
        "",
        "How fast this suite fails over and serves, measured beside what a user could pick instead (etcd's own "
        "election, a bare grpclib service, a per-call etcd txn), and how its cost grows with standbys and with "
        "metadata size. Every figure below comes from the JSON files in `bench/results/`; this page and its plots "
        "are generated from them by `bench/report.py` (do not edit by hand).",
        "",
        "Regenerate everything (about 25 minutes on the machine below; the benches start their own etcd on free "
        "loopback ports and stop every process they start, also on Ctrl-C):",
        "",
        "```sh",
        "source scripts/_venv.sh           # creates .venv (the project and its [test] extra) if needed",
        "pip install -e '.[bench]'         # matplotlib for the plots, uvloop for the loop comparison",
        "bench/run_all.sh --wait-quiet     # waits for a quiet machine, runs the 3 benches, then bench/report.py",
        "```",
        "",
        "or one at a time: `python bench/failover.py`, `python bench/throughput.py`, `python bench/scale.py`, then `python "
        "bench/report.py`. Each bench takes `--quick` (a smoke run of a few seconds that CI runs through "
        "`tests/process/test_bench_quick.py`, checking only that the numbers are produced) and `--help`.",
        "",
        "## Machine",
        "",
        *machine_section(docs),
        "",
        *quiet_note(docs, note),
        "",
        "## Goals",
        "",
        "| goal | figure | verdict |",
        "|---|---|---|",
    ]
    rows = goal_rows(docs)
    for r in rows:
        out.append(f"| {r['goal']} | {r['figure']} | {verdict(r['met'])} |")
    out.append("")
    if analysis is not None and analysis.exists():
        out += [analysis.read_text().rstrip(), ""]
    out += failover_section(docs.get("failover"), plots)
    out += throughput_section(docs.get("throughput"), plots)
    out += scale_section(docs.get("scale"), plots)
    out += abuse_section(docs.get("abuse"))
    return "\n".join(out).rstrip() + "\n"


#: The issue-22 goal under each abuse: RSS growth, and the longest answer a stalled loop would cause.
ABUSE_RSS_MB, ABUSE_STALL_MS = 50, 100


def abuse_rows(ab: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per abuse, over its rounds: the worst RSS growth, calls, answer times and lags, and every term kept."""
    rows: dict[str, dict[str, Any]] = {}
    for r in ab.get("rounds", []):
        row = rows.setdefault(r["abuse"], {"rss": 0.0, "kept": True, "calls": 0, "unanswered": 0, "call_max": 0.0,
                                           "call_p95": 0.0, "healthz_max": 0.0, "healthz_unanswered": 0, "lags": 0})
        row["rss"] = max(row["rss"], r["rss_growth_mb"])
        row["kept"] = row["kept"] and r["term_kept"]
        row["calls"] += r["calls"]
        row["unanswered"] += r["calls_unanswered"]
        row["call_max"] = max(row["call_max"], r["call_ms"].get("max", 0.0))
        row['call_p95'] = max(row['call_p95'], r["call_ms"].get("p95", 0.0))
        row["healthz_max"] = max(row["healthz_max"], r["healthz_ms"].get("max", 0.0))
        row["healthz_unanswered"] += r["healthz_unanswered"]
        row["lags"] += int(r["loop_lags_over_100ms"])
    return rows


def abuse_met(row: dict[str, Any]) -> bool:
    """RSS +<50 MB, the term kept, every call and probe answered, no loop lag over 100 ms, and (the
    slowloris goal) every answer within 100 ms."""
    return (row["rss"] < ABUSE_RSS_MB and row["kept"] and not row["unanswered"] and not row["lags"]
            and not row["healthz_unanswered"] and row["call_max"] < ABUSE_STALL_MS
            and row["healthz_max"] < ABUSE_STALL_MS)


def abuse_section(ab: dict[str, Any] | None) -> list[str]:
    if not ab:
        return []
    rows = abuse_rows(ab)
    out = ["## What an unauthenticated peer costs a member (issue 22)", "",
           "`bench/abuse.py`: an ACTIVE and a STANDBY rootcoord at the default TTL, open-files limit 1024; each abuse "
           "from a process of its own while a client asks the ACTIVE member for a timestamp every 20 ms (on a kept "
           "connection) and for /healthz (on a new one). `reference` is the same with no abuse, in the same run. "
           "Loop lags are the member's own count of event-loop delays over 100 ms. The goal (issue 22): RSS +<50 MB, "
           "the term kept, every call answered, no lag over 100 ms, and every answer within 100 ms. The attacker, the "
           "member and the measuring client share the machine's cores: an answer late while the member's loop never "
           "lagged is time spent waiting for a core, or (slowloris) a new connection's wait in the kernel's accept "
           "queue behind the flood's.", "",
           "| abuse | RSS growth (MB, worst round) | term kept | calls (unanswered) | call p95 / max (ms) "
           "| /healthz max (ms, unanswered) | loop lags > 100 ms | goal |",
           "|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        out.append(f"| {name} | {row['rss']:.1f} | {'yes' if row['kept'] else 'NO'} | {row['calls']} ({row['unanswered']}) "
                   f"| {row['call_p95']:.1f} / {row['call_max']:.1f} | {row['healthz_max']:.1f} "
                   f"({row['healthz_unanswered']}) | {row['lags']} | {verdict(abuse_met(row))} |")
    return [*out, ""]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=BENCH / "results", help="directory of the bench JSON files")
    p.add_argument("--page", type=Path, default=REPO / "docs" / "performance.md")
    p.add_argument("--img", type=Path, default=REPO / "docs" / "img")
    p.add_argument("--analysis", type=Path, default=None,
                   help="Markdown inserted after the goals table (default: analysis.md beside the results)")
    p.add_argument("--note", default="", help="a sentence about the conditions of the run (e.g. the machine was busy)")
    args = p.parse_args()
    docs = load(args.results)
    analysis = args.analysis or args.results / "analysis.md"
    note = args.note
    note_file = args.results / "note.txt"
    if not note and note_file.exists():
        note = note_file.read_text().strip()
    page = render(docs, Plots(args.img, args.page), analysis, note)
    args.page.parent.mkdir(parents=True, exist_ok=True)
    args.page.write_text(page)
    print(f"wrote {args.page} ({sum(1 for d in docs.values() if d)} of {len(BENCHES)} results)")
    for r in goal_rows(docs):
        print(f"  {r['goal']}: {r['figure']} -> {verdict(r['met']).strip('*')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
