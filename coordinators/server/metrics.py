"""Prometheus metrics of one coordinator process (``milvus_coord_*``, label ``role``).

Why a registry per process object and not prometheus-client's global one: tests run several
:class:`~coordinators.server.process.CoordinatorProcess` objects in one interpreter, and each must report
only its own numbers. Values that are a function of the process's current state (state, epoch,
server ID, lease time left) are read from a :class:`ProcessView` at scrape time, so they are never
stale; events (transitions, keep-alives, RPCs, loop lag) are counted as they happen.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from grpclib.const import Status as GrpcStatus
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from coordinators.proto import common_pb2
from coordinators.runtime.logging_setup import dropped_lines
from coordinators.server.h2_guard import GuardAction
from coordinators.server.peer_probe import Verdict
from session import SessionObserver, WatchRestart
from session.timeline import Rewind
from session.turn import Phase

__all__ = ["CoordinatorMetrics", "ProcessView", "SessionMetrics", "state_name"]

PREFIX = "milvus_coord"
#: Every state a process can report, by name (Milvus's StateCode).
STATES: tuple[tuple[str, int], ...] = tuple(common_pb2.StateCode.items())

# The ``*_created`` series (one extra gauge per counter and histogram) only help to detect resets,
# which process_start_time already does; every metric here is ours, so turn them off process-wide.
disable_created_metrics()  # type: ignore[no-untyped-call]  # prometheus_client leaves this one unannotated

_FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def state_name(state: int) -> str:
    """``Healthy``, ``StandBy``...; the number itself for a value the proto does not know."""
    try:
        return str(common_pb2.StateCode.Name(state))
    except ValueError:
        return str(state)


@dataclass(frozen=True)
class ProcessView:
    """What the process is now, as the probes and the scrape-time gauges need it.

    :param session_lost: why the current session was lost, while it is not yet replaced (else None).
    :param time_left: seconds before the current session's local deadline (None without a session).
    :param refusal: why the role's API is refused now (None while ACTIVE and serving).
    :param standby_phase: where the member stands while STANDBY (:class:`session.turn.Phase`); ''
        when it is not waiting for the key.
    """

    role: str
    state: int
    server_id: int
    epoch: int
    stopping: bool
    session_lost: str | None
    time_left: float | None
    refusal: str | None
    standby_phase: str = ""
    serving_left: float = 0.0  #: seconds left on the ACTIVE term's serving lease (0: not ACTIVE, or paused)
    takeover_paused: bool = False  #: the role is paused (``milvus pause``): nobody takes over on its own
    ttl: float = 0.0  #: the session TTL (``common.session.ttl``): what lease_time_left is read against
    priority: int = 1  #: ``<role>.failoverPriority``: its place in line (0: never takes over on its own)

    @property
    def state_name(self) -> str:
        return state_name(self.state)


class _ViewCollector(Collector):
    """The gauges computed at scrape time from a fresh :class:`ProcessView`."""

    def __init__(self, role: str, view: Callable[[], ProcessView]) -> None:
        self._role = role
        self._view = view

    def collect(self) -> Iterator[Metric]:
        view = self._view()
        labels = [self._role]
        state = GaugeMetricFamily(
            f"{PREFIX}_state", "1 for the state the process is in (Milvus's StateCode), 0 for the others",
            labels=["role", "state"],
        )
        for name, value in STATES:
            state.add_metric([self._role, name], 1.0 if view.state == value else 0.0)
        yield state
        phase = GaugeMetricFamily(
            f"{PREFIX}_standby_phase", "1 for the phase a STANDBY is in (claiming, near_front, far_back, reserved, "
            "released, handed), 0 for the others; all 0 when the member is not waiting for the ACTIVE key",
            labels=["role", "phase"],
        )
        for name in Phase:
            phase.add_metric([self._role, str(name)], 1.0 if view.standby_phase == name else 0.0)
        yield phase
        yield _gauge("is_active", "1 while this process is the role's ACTIVE member and serves (state Healthy)",
                     labels, 1.0 if view.state == common_pb2.Healthy else 0.0)
        yield _gauge("epoch", "Epoch of the current ACTIVE term (create revision of the ACTIVE key); 0 when not ACTIVE",
                     labels, float(view.epoch))
        yield _gauge("server_id", "Server ID of the current session; 0 before the first one is registered",
                     labels, float(view.server_id))
        left = view.time_left if view.time_left is not None and view.session_lost is None else 0.0
        dropped = CounterMetricFamily(
            f"{PREFIX}_log_lines_dropped", "Log lines dropped because the log output could not keep up "
            "(a pipe nobody reads, a stalled disk): the event loop never waits for a write", labels=["role"],
        )
        dropped.add_metric(labels, float(dropped_lines()))
        yield dropped
        yield _gauge(
            "serving_lease_time_left_seconds",
            "Seconds the ACTIVE member may still answer without another renewal etcd acknowledges (its last "
            "acknowledged renewal's send time + common.session.servingLease); 0 when paused or not ACTIVE",
            labels, view.serving_left,
        )
        yield _gauge(
            "takeover_paused", "1 while the role is paused (milvus pause): no member takes the ACTIVE key over on its "
            "own; the ACTIVE member keeps serving", labels, 1.0 if view.takeover_paused else 0.0,
        )
        yield _gauge("session_ttl_seconds", "The session TTL (common.session.ttl): lease_time_left_seconds is read "
                     "against it (a third of it between keep-alives)", labels, view.ttl)
        yield _gauge(
            "lease_time_left_seconds",
            "Seconds before the session's local deadline (last acknowledged keep-alive sent + TTL - safety margin); "
            "negative when the deadline passed unnoticed, 0 without a live session",
            labels, left,
        )


def _gauge(name: str, doc: str, labels: list[str], value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=["role"])
    family.add_metric(labels, value)
    return family


class CoordinatorMetrics:
    """The instruments of one process, in a registry of its own; :meth:`render` is the /metrics body."""

    def __init__(self, role: str, view: Callable[[], ProcessView]) -> None:
        self.role = role
        self.registry = CollectorRegistry()
        reg = self.registry
        self._transitions = Counter(
            f"{PREFIX}_state_transitions", "State changes of the process, by previous and new state",
            ["role", "from", "to"], registry=reg,
        )
        self._keepalive = Histogram(
            f"{PREFIX}_keepalive_latency_seconds", "Round trip of each lease keep-alive request to etcd (acknowledged ones)",
            ["role"], registry=reg, buckets=_FAST_BUCKETS,
        ).labels(role)
        self._keepalive_failures = Counter(
            f"{PREFIX}_keepalive_failures", "Lease keep-alive requests that failed (timeout, etcd unreachable, lease gone)",
            ["role"], registry=reg,
        ).labels(role)
        self._takeover = Gauge(
            f"{PREFIX}_last_takeover_seconds",
            "Duration of this process's last takeover: from the moment it saw the ACTIVE key freed (watch event or "
            "re-read; when it found the key free, from its successful claim) to serving (state Healthy); "
            "0 until it has served once",
            ["role"], registry=reg,
        ).labels(role)
        self._takeovers = Counter(
            f"{PREFIX}_takeovers",
            "Terms this process began serving, by what freed the ACTIVE key: initial (nobody held it), graceful "
            "(the holder stopped), switchover, fast_path (a standby proved the holder dead), restart (a restarted "
            "process found its predecessor dead), ttl (the holder's lease expired)",
            ["role", "cause"], registry=reg,
        )
        self._terms_ended = Counter(
            f"{PREFIX}_terms_ended",
            "ACTIVE terms of this process that ended, by cause: stopped, switched_over (both planned), key_lost "
            "(deleted or replaced by another: a peer's fast path, a take-back, an expired lease), session_lost, "
            "write_refused, loop_stall, activation_failed, uncertain (etcd answered without the key)",
            ["role", "cause"], registry=reg,
        )
        self._verdicts = Counter(
            f"{PREFIX}_fast_failover_verdicts",
            "Probe rounds of the crash fast path after the ACTIVE member's stream broke, by outcome: dead (acted "
            "on), alive, timeout, unreachable, not_ours, unprobeable (no verdict: the lease decides)",
            ["role", "outcome"], registry=reg,
        )
        self._watch_restarts = Counter(
            f"{PREFIX}_watch_restarts",
            "Session and campaign watches on etcd re-created: reason=reconnect (the stream broke) "
            "or compacted (history gone: the key was re-read)",
            ["role", "reason"], registry=reg,
        )
        self._loop_lag = Histogram(
            f"{PREFIX}_event_loop_lag_seconds", "How late the event-loop watchdog woke up, sampled every ~100 ms",
            ["role"], registry=reg, buckets=_LAG_BUCKETS,
        ).labels(role)
        self._loop_stalls = Counter(
            f"{PREFIX}_event_loop_stalls",
            "Event-loop stalls longer than the session's safety margin (each ends the ACTIVE term, if any)",
            ["role"], registry=reg,
        ).labels(role)
        self._sessions_lost = Counter(
            f"{PREFIX}_sessions_lost", "Sessions lost (deadline passed, lease gone, own key deleted) and replaced or exited",
            ["role"], registry=reg,
        ).labels(role)
        self._rpcs = Counter(
            f"{PREFIX}_rpc_requests", "gRPC calls answered, by service, method and status code",
            ["role", "service", "method", "code"], registry=reg,
        )
        self._rpc_latency = Histogram(
            f"{PREFIX}_rpc_duration_seconds", "Time from a gRPC request to its status, by service and method",
            ["role", "service", "method"], registry=reg, buckets=_FAST_BUCKETS,
        )
        self._pauses = Counter(
            f"{PREFIX}_serving_pauses", "Times the ACTIVE member's serving lease ran out (etcd did not confirm its "
            "term in time) and it stopped answering while its term went on", ["role"], registry=reg,
        ).labels(role)
        self._paused = Counter(
            f"{PREFIX}_serving_paused_seconds", "Seconds the ACTIVE member spent paused, counted when it resumed",
            ["role"], registry=reg,
        ).labels(role)
        self._pause_refusals = Counter(
            f"{PREFIX}_serving_refusals", "Calls refused (code paused) because the serving lease had run out",
            ["role"], registry=reg,
        ).labels(role)
        self._rewinds = Counter(
            f"{PREFIX}_etcd_rewinds", "Times etcd was seen going back in time (restored from an older snapshot, "
            "wiped), by the sign that showed it; each one ends the session", ["role", "sign"], registry=reg,
        )
        self._guarded = Counter(
            f"{PREFIX}_grpc_guard", "Times a guard of the gRPC server acted: message_too_large, receive_budget and "
            "reply_too_large (refused with RESOURCE_EXHAUSTED), stream_refused (REFUSED_STREAM), goaway (a "
            "connection that reset streams too fast was closed)", ["role", "action"], registry=reg,
        )
        reg.register(_ViewCollector(role, view))
        #: The session library's hooks into these metrics (given to each session and watch).
        self.observer = SessionMetrics(self)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric of this process."""
        return generate_latest(self.registry)

    # -- events ----------------------------------------------------------------------------

    def transition(self, old: int, new: int) -> None:
        self._transitions.labels(self.role, state_name(old), state_name(new)).inc()

    def keepalive(self, seconds: float, ok: bool) -> None:
        if ok:
            self._keepalive.observe(seconds)
        else:
            self._keepalive_failures.inc()

    def watch_restarted(self, reason: WatchRestart) -> None:
        self._watch_restarts.labels(self.role, reason).inc()

    def loop_lag(self, seconds: float) -> None:
        self._loop_lag.observe(seconds)

    def loop_stall(self) -> None:
        self._loop_stalls.inc()

    def session_lost(self) -> None:
        self._sessions_lost.inc()

    def grpc_guard(self, action: GuardAction) -> None:
        self._guarded.labels(self.role, action.value).inc()

    def etcd_rewound(self, rewind: Rewind) -> None:
        self._rewinds.labels(self.role, str(rewind.sign)).inc()

    def takeover(self, seconds: float, cause: str) -> None:
        self._takeover.set(seconds)
        self._takeovers.labels(self.role, cause).inc()

    def term_ended(self, cause: str) -> None:
        self._terms_ended.labels(self.role, cause).inc()

    def serving_paused(self, paused: bool, seconds: float) -> None:
        """The serving lease ran out (``paused``), or a renewal resumed it after ``seconds``."""
        if paused:
            self._pauses.inc()
        else:
            self._paused.inc(seconds)

    def serving_refusal(self) -> None:
        self._pause_refusals.inc()

    def fast_failover_verdict(self, outcome: Verdict) -> None:
        self._verdicts.labels(self.role, outcome).inc()

    def rpc(self, path: str, status: GrpcStatus, seconds: float) -> None:
        """One gRPC call (``/package.Service/Method``) answered with ``status`` after ``seconds``."""
        service, _, method = path.lstrip("/").rpartition("/")
        self._rpcs.labels(self.role, service, method, status.name).inc()
        self._rpc_latency.labels(self.role, service, method).observe(seconds)


class SessionMetrics(SessionObserver):
    """The session library's hooks, into :class:`CoordinatorMetrics`; remembers when a vacancy was seen.

    ``vacancy_at`` (monotonic) starts the takeover clock; the process reads and clears it.
    """

    def __init__(self, metrics: CoordinatorMetrics) -> None:
        self.metrics = metrics
        self.vacancy_at: float | None = None

    def keepalive(self, seconds: float, ok: bool) -> None:
        self.metrics.keepalive(seconds, ok)

    def watch_restarted(self, key: str, reason: WatchRestart) -> None:
        self.metrics.watch_restarted(reason)

    def vacancy_seen(self, key: str) -> None:
        self.vacancy_at = time.monotonic()
