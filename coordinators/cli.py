"""The ``milvus`` command: ``run <role>``, ``status``.

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

from coordinators.config import ROLES, Config, ConfigError, load_config
from coordinators.exit_codes import ExitCode
from coordinators.logging_setup import configure_logging


#: Modules adding ``milvus <role> <action>`` commands; each has ``register(subparsers) -> parser``
#: and sets ``handler=async fn(client, args) -> JSON-able result`` on each action.
_ROLE_COMMANDS = ("coordinators.rootcoord_cli", "coordinators.datacoord_cli", "coordinators.querycoord_cli")


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors exit with our config/usage code and one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"milvus: {message}", file=sys.stderr)
        raise SystemExit(ExitCode.CONFIG)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="milvus", description="Coordinator HA suite: rootcoord, querycoord, datacoord over etcd.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run one coordinator process in the foreground")
    run.add_argument("role", help=f"one of {', '.join(ROLES)}")
    run.add_argument("--alias", default="", help="a name for this process (to run several of one role on a host)")
    run.add_argument("--config", default=None, help="milvus.yaml to use (default: $MILVUSCONF, then config/)")

    status = sub.add_parser("status", help="list every coordinator session: ACTIVE, STANDBY, STOPPING")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--config", default=None, help="milvus.yaml to use")

    for module in _ROLE_COMMANDS:
        role_parser = importlib.import_module(module).register(sub)
        role_parser.add_argument("--config", default=None, help="milvus.yaml to use")
        role_parser.add_argument("--timeout", type=float, default=30.0, help="seconds to find an ACTIVE member and get an answer")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``milvus`` console script."""
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
        if args.command == "run":
            config.role(args.role)
    except ConfigError as exc:
        print(f"milvus: {exc}", file=sys.stderr)
        return ExitCode.CONFIG
    if args.command == "run":
        return _run(config, args.role)
    if args.command == "status":
        return _status(config, as_json=args.json)
    return _role_command(config, args)


def _run(config: Config, role: str) -> int:
    from coordinators.process import CoordinatorProcess, install_signal_handlers

    configure_logging(config.log.level, config.log.format)

    async def go() -> int:
        process = CoordinatorProcess(config, role)
        install_signal_handlers(process)
        return int(await process.run())

    return asyncio.run(go())


def _status(config: Config, *, as_json: bool) -> int:
    from coordinators.status import read_sessions, render_json, render_table
    from session import Etcd, SessionError

    configure_logging("error", config.log.format, sys.stderr)

    async def go() -> int:
        etcd = Etcd(config.etcd.endpoints, timeout=min(config.etcd.request_timeout, 5.0))
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
    from session import Etcd, SessionError

    configure_logging("error", config.log.format, sys.stderr)

    async def go() -> int:
        etcd = Etcd(config.etcd.endpoints, timeout=min(config.etcd.request_timeout, 5.0))
        client = CoordinatorClient(etcd, config.etcd.meta_root, args.command, failover_budget=args.timeout)
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
