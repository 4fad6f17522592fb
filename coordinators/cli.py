"""The ``milvus`` command: ``run <role>``, ``stop <role>``, ``status``.

Bad input (a broken config, an unknown role, a wrong value) is one line on stderr and exit code 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
from collections.abc import Sequence
from typing import Any

import structlog

from coordinators.config import ROLES, Config, ConfigError, load_config
from coordinators.exit_codes import ExitCode
from coordinators.logging_setup import LogSetupError, configure_logging
from coordinators.pidfile import AlreadyRunning, PidFile, PidFileError, check_alias

log = structlog.get_logger(__name__)


#: Modules adding ``milvus <role> <action>`` commands; each has ``register(subparsers) -> parser``
#: and sets ``handler=async fn(client, args) -> JSON-able result`` on each action.
_ROLE_COMMANDS = ("coordinators.rootcoord_cli", "coordinators.datacoord_cli", "coordinators.querycoord_cli")


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors exit with our config/usage code and one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"milvus: {message}", file=sys.stderr)
        raise SystemExit(ExitCode.CONFIG)


#: The commands built in here; the others are the role commands above.
_BUILTIN_COMMANDS = ("run", "stop", "status")


def build_parser(*, role_commands: bool = True) -> argparse.ArgumentParser:
    """The whole command line; ``role_commands=False`` leaves out ``milvus <role> <action>`` (faster)."""
    parser = _Parser(prog="milvus", description="Coordinator HA suite: rootcoord, querycoord, datacoord over etcd.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run one coordinator process in the foreground")
    run.add_argument("role", help=f"one of {', '.join(ROLES)}")
    run.add_argument("--alias", default="", help="a name for this process (to run several of one role on a host)")
    run.add_argument("--config", default=None, help="milvus.yaml to use (default: $MILVUSCONF, then config/)")

    stop = sub.add_parser("stop", help="stop the process of a role running on this host (SIGTERM, then wait)")
    stop.add_argument("role", help=f"one of {', '.join(ROLES)}")
    stop.add_argument("--alias", default="", help="the --alias the process was started with")
    stop.add_argument("--timeout", type=_seconds, default=30.0, help="seconds to wait for it to exit (default 30)")
    stop.add_argument("--kill", action="store_true", help="SIGKILL it if it has not exited after --timeout")

    status = sub.add_parser("status", help="list every coordinator session: ACTIVE, STANDBY, STOPPING")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--config", default=None, help="milvus.yaml to use")

    for module in _ROLE_COMMANDS if role_commands else ():
        role_parser = importlib.import_module(module).register(sub)
        role_parser.add_argument("--config", default=None, help="milvus.yaml to use")
        role_parser.add_argument("--timeout", type=float, default=30.0, help="seconds to find an ACTIVE member and get an answer")
    return parser


def _seconds(text: str) -> float:
    """A positive number of seconds (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``milvus`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # The role commands import the gRPC stubs and the client (~0.3 s): the built-in commands skip
    # them, so that `milvus stop` signals (and the handover begins) that much sooner.
    args = build_parser(role_commands=not argv or argv[0] not in _BUILTIN_COMMANDS).parse_args(argv)
    if args.command in ("run", "stop"):
        try:
            check_alias(args.alias)
        except ValueError as exc:
            print(f"milvus: {exc}", file=sys.stderr)
            return ExitCode.CONFIG
    if args.command == "stop":  # needs no config: a broken milvus.yaml must not keep a process from stopping
        if args.role not in ROLES:
            print(f"milvus: unknown role {args.role!r}: expected one of {', '.join(ROLES)}", file=sys.stderr)
            return ExitCode.CONFIG
        from coordinators.stop import stop

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
        return _status(config, as_json=args.json)
    return _role_command(config, args)


def _run_locked(config: Config, role: str, alias: str) -> int:
    """Open the log, take the pid file of ``role``/``alias`` (held until exit), then run."""
    try:
        configure_logging(
            config.log.level, config.log.format, file=config.log.file, file_name=f"{role}{'-' + alias if alias else ''}.log"
        )
    except LogSetupError as exc:
        print(f"milvus: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    try:
        pid_file = PidFile.acquire(role, alias)
    except AlreadyRunning as exc:
        print(f"milvus: {exc}", file=sys.stderr)
        return ExitCode.ALREADY_RUNNING
    except PidFileError as exc:
        print(f"milvus: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    with pid_file:
        return _run(config, role, pid_file)


def _run(config: Config, role: str, pid_file: PidFile) -> int:
    from coordinators.process import CoordinatorProcess, install_signal_handlers

    log.info("pid file locked", role=role, path=str(pid_file.path))

    async def go() -> int:
        process = CoordinatorProcess(config, role)
        install_signal_handlers(process)
        return int(await process.run())

    return asyncio.run(go())


def _status(config: Config, *, as_json: bool) -> int:
    from coordinators.status import read_sessions, render_json, render_table
    from coordinators.tls import make_etcd
    from session import SessionError

    configure_logging("error", config.log.format, sys.stderr)

    async def go() -> int:
        etcd = make_etcd(config, timeout=min(config.etcd.request_timeout, 5.0))  # etcd.ssl.*, etcd.auth.*
        try:
            await etcd.connect()
            rows = await read_sessions(etcd, config.etcd.meta_root)
        except SessionError as exc:
            print(f"milvus status: cannot read sessions from etcd at {','.join(config.etcd.endpoints)}: {exc}",
                  file=sys.stderr)
            return ExitCode.ETCD
        finally:
            await etcd.close()
        try:
            print(render_json(rows) if as_json else render_table(rows), flush=True)
        except BrokenPipeError:  # `milvus status | head`
            sys.stderr.close()
        return ExitCode.OK

    return asyncio.run(go())


def _role_command(config: Config, args: argparse.Namespace) -> int:
    """``milvus <role> <action>``: one call to the role's ACTIVE member, the reply printed as JSON."""
    from grpclib.const import Status
    from grpclib.exceptions import GRPCError

    from coordinators.client import CoordinatorClient, NoActiveMember, OutcomeUnknown
    from coordinators.tls import client_ssl_context, make_etcd
    from session import SessionError

    configure_logging("error", config.log.format, sys.stderr)

    async def go() -> int:
        etcd = make_etcd(config, timeout=min(config.etcd.request_timeout, 5.0))  # etcd.ssl.*, etcd.auth.*
        client = CoordinatorClient(etcd, config.etcd.meta_root, args.command, failover_budget=args.timeout,
                                   ssl_context=client_ssl_context(config))
        try:
            await etcd.connect()
            result: Any = await args.handler(client, args)
        except GRPCError as exc:
            print(f"milvus {args.command}: {exc.status.name}: {exc.message}", file=sys.stderr)
            return ExitCode.CONFIG if exc.status in (Status.INVALID_ARGUMENT, Status.NOT_FOUND, Status.ALREADY_EXISTS) else ExitCode.FAILURE
        except (NoActiveMember, OutcomeUnknown) as exc:
            print(f"milvus {args.command}: {exc}", file=sys.stderr)
            return ExitCode.FAILURE
        except SessionError as exc:
            print(f"milvus {args.command}: etcd at {','.join(config.etcd.endpoints)}: {exc}", file=sys.stderr)
            return ExitCode.ETCD
        finally:
            await client.close()
            await etcd.close()
        print(json.dumps(result, indent=2), flush=True)
        return ExitCode.OK

    return asyncio.run(go())


if __name__ == "__main__":
    raise SystemExit(main())
