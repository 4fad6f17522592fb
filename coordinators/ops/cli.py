"""The ``milvus`` command: ``run <role>``, ``stop <role>``, ``status``, ``switchover <role>``, ``pause
<role>``, ``resume <role>``, ``history <role>``, ``check``, and ``<role> <action>``.

Bad input (a broken config, an unknown role, a wrong value) is one line on stderr and exit code 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import structlog

from coordinators.config import Config, ConfigError, load_config
from coordinators.registry import ROLE_SPECS, ROLES
from coordinators.runtime.exit_codes import ExitCode
from coordinators.runtime.logging_setup import LogSetupError, configure_logging
from coordinators.runtime.pidfile import AlreadyRunning, PidFile, PidFileError, check_alias
from coordinators.server.signals import hold_early_signals

if TYPE_CHECKING:
    from session import Etcd

log = structlog.get_logger(__name__)


#: Modules adding ``milvus <role> <action>`` commands; each has ``register(subparsers) -> parser``
#: and sets ``handler=async fn(client, args) -> JSON-able result`` on each action.
_ROLE_COMMANDS = tuple(s.cli_module for s in ROLE_SPECS.values())


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors exit with our config/usage code and one line."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"milvus: {message}", file=sys.stderr)
        raise SystemExit(ExitCode.CONFIG)


#: The commands built in here; the others are the role commands above.
_BUILTIN_COMMANDS = ("run", "stop", "status", "switchover", "pause", "resume", "history", "check")


def build_parser(*, role_commands: bool = True) -> argparse.ArgumentParser:
    """The whole command line; ``role_commands=False`` leaves out ``milvus <role> <action>`` (faster)."""
    parser = _Parser(prog="milvus", description="Coordinator HA suite: rootcoord, querycoord, datacoord over etcd.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run one coordinator process in the foreground")
    run.add_argument("role", help=f"one of {', '.join(ROLES)}")
    run.add_argument("--alias", default="", help="a name for this process (to run several of one role on a host)")
    run.add_argument("--config", default=None, help="milvus.yaml to use (default: $MILVUSCONF, then config/)")

    stop = sub.add_parser(
        "stop",
        help="stop the processes of a role running on this host (SIGTERM, then wait)",
        description="Without --alias: every process of the role started on this host without --alias "
        "(pid files <role>.pid, <role>-2.pid, ...), signalled together. With --alias NAME: that one "
        "(a number names the automatic file <role>-N.pid).",
    )
    stop.add_argument("role", help=f"one of {', '.join(ROLES)}")
    stop.add_argument("--alias", default="", help="the --alias the process was started with")
    stop.add_argument("--timeout", type=_seconds, default=30.0, help="seconds to wait for it to exit (default 30)")
    stop.add_argument("--kill", action="store_true", help="SIGKILL it if it has not exited after --timeout")

    status = sub.add_parser("status", help="list every coordinator session: ACTIVE, STANDBY, STOPPING")
    status.add_argument("--json", action="store_true", help="machine-readable output (every field)")
    status.add_argument("--role", default=None, help=f"only this role (one of {', '.join(ROLES)})")
    status.add_argument("--watch", nargs="?", const=2.0, default=None, type=_seconds, metavar="SECONDS",
                        help="redraw every SECONDS (default 2) until Ctrl-C")
    status.add_argument("--config", default=None, help="milvus.yaml to use")

    check = sub.add_parser(
        "check",
        help="check the config, etcd (reached with its credentials) and every key the suite keeps there",
        description="Reads the config, reaches etcd with its credentials and TLS files, reads every session "
        "and every role's metadata, and reports each value it cannot read and each group whose members "
        "disagree on active-standby. Exit 0 only when all is well (3: etcd unreachable; 7: an unreadable "
        "value; 1: members disagree).",
    )
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.add_argument("--config", default=None, help="milvus.yaml to use")

    switch = sub.add_parser(
        "switchover",
        help="hand a role's ACTIVE duty to a standby, without stopping anything",
        description="The ACTIVE member finishes the calls in flight, releases the role and goes back to "
        "STANDBY; the named standby (--to) or the first in line (by failoverPriority, then join order) takes over.",
    )
    switch.add_argument("role", help=f"one of {', '.join(ROLES)}")
    switch.add_argument("--to", type=_server_id, default=0, metavar="SERVER_ID", help="the standby that must take over")
    switch.add_argument("--timeout", type=_seconds, default=10.0, help="seconds the handover may take (default 10)")
    switch.add_argument("--at", default=None, metavar="TIME",
                        help="not now: at TIME (ISO 8601, local time unless it says: 2026-12-08T02:00); the member "
                        "ACTIVE then hands over")
    switch.add_argument("--cancel", action="store_true", help="cancel the role's scheduled switchover")
    switch.add_argument("--config", default=None, help="milvus.yaml to use")

    pause = sub.add_parser(
        "pause", help="no automatic takeover for a role until `milvus resume` (its ACTIVE member keeps serving)",
        description="While paused, no member takes the role's ACTIVE key over on its own: a crash or a lost host "
        "leaves the role without an ACTIVE member until `milvus resume` or `milvus switchover`. Kept in etcd.",
    )
    pause.add_argument("role", help=f"one of {', '.join(ROLES)}")
    pause.add_argument("--reason", default="", help="why (shown by `milvus status` and in every member's log)")
    pause.add_argument("--config", default=None, help="milvus.yaml to use")
    resume = sub.add_parser("resume", help="automatic takeover again for a paused role")
    resume.add_argument("role", help=f"one of {', '.join(ROLES)}")
    resume.add_argument("--config", default=None, help="milvus.yaml to use")

    history = sub.add_parser(
        "history", help="every ACTIVE term of a role: epoch, member, start, end, cause of the takeover, why it ended",
    )
    history.add_argument("role", help=f"one of {', '.join(ROLES)}")
    history.add_argument("--json", action="store_true", help="machine-readable output")
    history.add_argument("--limit", type=_count, default=0, metavar="N", help="only the last N terms")
    history.add_argument("--config", default=None, help="milvus.yaml to use")

    for module in _ROLE_COMMANDS if role_commands else ():
        role_parser = importlib.import_module(module).register(sub)
        _call_options(role_parser, config=None, timeout=30.0)
        for action_parser in _subcommands(role_parser):  # also after the action: `milvus rootcoord show-collections --timeout 3`
            _call_options(action_parser, config=argparse.SUPPRESS, timeout=argparse.SUPPRESS)
    return parser


def _call_options(parser: argparse.ArgumentParser, *, config: Any, timeout: Any) -> None:
    """``--config`` and ``--timeout`` of ``milvus <role> <action>``, with these defaults (SUPPRESS: an
    action's copy sets the value only when given, so the role-level one keeps its default)."""
    parser.add_argument("--config", default=config, help="milvus.yaml to use")
    parser.add_argument("--timeout", type=_seconds, default=timeout,
                        help="seconds to find an ACTIVE member and get an answer (default 30)")


def _subcommands(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parsers of ``parser``'s sub-commands (argparse keeps them in its sub-parsers action)."""
    return [p for action in parser._actions if isinstance(action, argparse._SubParsersAction)
            for p in action.choices.values()]


def _seconds(text: str) -> float:
    """A positive number of seconds (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def _count(text: str) -> int:
    """A positive count (argparse type)."""
    if not text.isdigit() or not text.isascii() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive count: {text!r}")
    return int(text)


def _server_id(text: str) -> int:
    """A positive server ID (argparse type)."""
    if not text.isdigit() or not text.isascii() or int(text) < 1 or len(text) > 19:
        raise argparse.ArgumentTypeError(f"not a server ID (a positive integer): {text!r}")
    return int(text)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``milvus`` console script."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, not at interpreter exit, where a closed pipe could not be reported
        return code
    except BrokenPipeError:
        # Whoever read our output went away (`milvus rootcoord show-collections | head -1`): end
        # quietly, as a Unix tool killed by SIGPIPE does, and keep Python from reporting it at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run"]:
        hold_early_signals()  # before anything slow: `milvus stop` may signal us from the pid file on
    # The role commands import the gRPC stubs and the client (~0.3 s): the built-in commands skip
    # them, so that `milvus stop` signals (and the handover begins) that much sooner.
    args = build_parser(role_commands=not argv or argv[0] not in _BUILTIN_COMMANDS).parse_args(argv)
    if args.command in ("run", "stop"):
        try:
            check_alias(args.alias, allow_number=args.command == "stop")
        except ValueError as exc:
            print(f"milvus: {exc}", file=sys.stderr)
            return ExitCode.CONFIG
    role_arg = getattr(args, "role", None) if args.command in _BUILTIN_COMMANDS else None
    if role_arg is not None and role_arg not in ROLES:
        print(f"milvus: unknown role {role_arg!r}: expected one of {', '.join(ROLES)}", file=sys.stderr)
        return ExitCode.CONFIG
    if args.command == "stop":  # needs no config: a broken milvus.yaml must not keep a process from stopping
        from coordinators.ops.stop import stop

        return stop(args.role, args.alias, timeout=args.timeout, kill=args.kill)
    try:
        config = load_config(args.config)
        if args.command == "run":
            config.role(args.role)
        if args.command != "status" and config.grpc_tls.mode:
            from coordinators.tls import check_grpc_tls

            check_grpc_tls(config)  # a PEM file that is not a usable cert, key or CA: exit 2 here
    except ConfigError as exc:
        print(f"milvus: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    if args.command == "run":
        return _run_locked(config, args.role, args.alias)
    if args.command == "status":
        return _status(config, as_json=args.json, role=args.role, watch=args.watch)
    if args.command == "switchover" and (args.at is not None or args.cancel):
        return _scheduled(config, args)
    if args.command == "switchover":
        return _switchover(config, args.role, to=args.to, timeout=args.timeout)
    if args.command == "check":
        return _check(config, as_json=args.json)
    if args.command == "history":
        from coordinators.ops.history import run_history

        meta_root = config.etcd.meta_root
        return _on_etcd(config, "history", lambda etcd: run_history(
            etcd, meta_root, args.role, as_json=args.json, limit=args.limit, out=sys.stdout, err=sys.stderr))
    if args.command in ("pause", "resume"):
        return _pause(config, args.command, args.role, reason=getattr(args, "reason", ""))
    return _role_command(config, args)


def _run_locked(config: Config, role: str, alias: str) -> int:
    """Open the log, take a pid file of ``role`` (``alias``'s, or an automatic one; held until exit), then run."""
    try:
        pid_file = PidFile.acquire(role, alias)
    except AlreadyRunning as exc:
        print(f"milvus: {exc}", file=sys.stderr)
        return ExitCode.ALREADY_RUNNING
    except PidFileError as exc:
        print(f"milvus: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    with pid_file:
        # Log files follow the pid file's name: a second process without --alias gets rootcoord-2.log.
        name = pid_file.path.name.removesuffix(".pid")
        try:
            configure_logging(config.log.level, config.log.format, file=config.log.file, file_name=f"{name}.log")
        except LogSetupError as exc:
            print(f"milvus: {exc}", file=sys.stderr)
            return ExitCode.CONFIG
        return _run(config, role, pid_file)


def _run(config: Config, role: str, pid_file: PidFile) -> int:
    from coordinators.runtime.resources import raise_open_files_limit, throttle_accept_errors
    from coordinators.server.process import CoordinatorProcess
    from coordinators.server.signals import install_signal_handlers

    if pid_file.skipped:
        held = ", ".join(f"{path.name} (pid {pid})" for path, pid in pid_file.skipped)
        log.info("pid file locked", role=role, path=str(pid_file.path), automatic=True,
                 reason=f"held by live processes of {role} started without --alias: {held}")
    else:
        log.info("pid file locked", role=role, path=str(pid_file.path))

    async def go() -> int:
        raise_open_files_limit()
        throttle_accept_errors(asyncio.get_running_loop())
        process = CoordinatorProcess(config, role, pid_file=pid_file)
        install_signal_handlers(process.request_stop)
        return int(await process.run())

    return run_on_loop(go(), config.event_loop)


def run_on_loop(main: Coroutine[Any, Any, int], event_loop: str) -> int:
    """Run ``main`` on the configured event loop (``common.eventLoop``), saying which in the log."""
    factory = None
    if event_loop == "uvloop":
        import uvloop  # checked installed when the config was read

        factory = uvloop.new_event_loop
    log.info("event loop", eventLoop=event_loop)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def _status(config: Config, *, as_json: bool, role: str | None, watch: float | None) -> int:
    from coordinators.ops.status import run_status

    configure_logging("error", config.log.format, sys.stderr)
    return asyncio.run(run_status(config, as_json=as_json, role=role, watch=watch))


def _check(config: Config, *, as_json: bool) -> int:
    from coordinators.ops.check import run_check

    configure_logging("error", config.log.format, sys.stderr)
    return asyncio.run(run_check(config, as_json=as_json))


def _switchover(config: Config, role: str, *, to: int, timeout: float) -> int:
    from coordinators.ops.switchover import switchover
    from coordinators.tls import client_ssl_context

    meta_root = config.etcd.meta_root
    return _on_etcd(config, "switchover", lambda etcd: switchover(
        etcd, meta_root, role, to=to, timeout=timeout, out=sys.stdout, err=sys.stderr,
        ssl_context=client_ssl_context(config)))


def _scheduled(config: Config, args: argparse.Namespace) -> int:
    """``milvus switchover --at`` / ``--cancel``."""
    from coordinators.ops.schedule import cancel, parse_time, schedule

    meta_root = config.etcd.meta_root
    if args.cancel:
        if args.at is not None or args.to:
            print("milvus switchover: --cancel takes neither --at nor --to", file=sys.stderr)
            return ExitCode.CONFIG
        return _on_etcd(config, "switchover", lambda etcd: cancel(etcd, meta_root, args.role, out=sys.stdout,
                                                                  err=sys.stderr))
    try:
        at_ms = parse_time(args.at)
    except ValueError:
        print(f"milvus switchover: --at {args.at!r} is not an ISO 8601 time (2026-12-08T02:00, "
              "2026-12-08T02:00:00Z, 2026-12-08T02:00+01:00)", file=sys.stderr)
        return ExitCode.CONFIG
    return _on_etcd(config, "switchover", lambda etcd: schedule(etcd, meta_root, args.role, at_ms=at_ms, to=args.to,
                                                                timeout=args.timeout, out=sys.stdout, err=sys.stderr))


def _pause(config: Config, command: str, role: str, *, reason: str) -> int:
    """``milvus pause`` / ``milvus resume``."""
    from coordinators.ops.pause import run_pause, run_resume

    meta_root = config.etcd.meta_root
    if command == "pause":
        return _on_etcd(config, command, lambda etcd: run_pause(etcd, meta_root, role, reason=reason, out=sys.stdout,
                                                                err=sys.stderr))
    return _on_etcd(config, command, lambda etcd: run_resume(etcd, meta_root, role, out=sys.stdout, err=sys.stderr))


def _on_etcd(config: Config, command: str, run: Callable[[Etcd], Awaitable[ExitCode]]) -> int:
    """Run a command on etcd: connected with the config's credentials and TLS; an etcd that cannot be
    reached is exit 3, nothing changed."""
    from coordinators.tls import make_etcd
    from session import SessionError

    configure_logging("error", config.log.format, sys.stderr)

    async def go() -> int:
        etcd = make_etcd(config, timeout=min(config.etcd.request_timeout, 5.0))  # etcd.ssl.*, etcd.auth.*
        try:
            await etcd.connect()
            return int(await run(etcd))
        except SessionError as exc:
            print(f"milvus {command}: cannot reach etcd at {','.join(config.etcd.endpoints)}: {exc}; nothing changed",
                  file=sys.stderr)
            return ExitCode.ETCD
        finally:
            await etcd.close()

    return asyncio.run(go())


def _role_command(config: Config, args: argparse.Namespace) -> int:
    """``milvus <role> <action>``: one call to the role's ACTIVE member, the reply printed as JSON."""
    from grpclib.const import Status
    from grpclib.exceptions import GRPCError

    from coordinators.client import CoordinatorClient, NoActiveMember, OutcomeUnknown
    from coordinators.roles.listing import Listing
    from coordinators.tls import client_ssl_context, make_etcd
    from session import SessionError, active_key

    configure_logging("error", config.log.format, sys.stderr)

    async def go() -> int:
        etcd = make_etcd(config, timeout=min(config.etcd.request_timeout, 5.0))  # etcd.ssl.*, etcd.auth.*
        client = CoordinatorClient(etcd, config.etcd.meta_root, args.command, failover_budget=args.timeout,
                                   ssl_context=client_ssl_context(config))
        try:
            await etcd.connect()
            # One read first: an unreachable etcd is said at once (exit 3), not after the whole --timeout.
            await etcd.get(active_key(config.etcd.meta_root, args.command))
            result: Any = await args.handler(client, args)
        except GRPCError as exc:
            print(f"milvus {args.command}: {exc.status.name}: {exc.message}", file=sys.stderr)
            return ExitCode.CONFIG if exc.status in (Status.INVALID_ARGUMENT, Status.NOT_FOUND, Status.ALREADY_EXISTS) else ExitCode.FAILURE
        except (NoActiveMember, OutcomeUnknown) as exc:
            print(f"milvus {args.command}: {exc}", file=sys.stderr)
            return ExitCode.FAILURE
        except SessionError as exc:
            print(f"milvus {args.command}: cannot reach etcd at {','.join(config.etcd.endpoints)}: {exc}", file=sys.stderr)
            return ExitCode.ETCD
        finally:
            await client.close()
            await etcd.close()
        unreadable: Sequence[str] = ()
        if isinstance(result, Listing):
            result, unreadable = result.result, result.unreadable
        print(json.dumps(result, indent=2), flush=True)
        for record in unreadable:  # never a listing that looks complete without them
            print(f"milvus {args.command}: left out of the listing, unreadable: {record}", file=sys.stderr)
        return ExitCode.CORRUPT_METADATA if unreadable else ExitCode.OK

    return asyncio.run(go())


if __name__ == "__main__":
    raise SystemExit(main())
