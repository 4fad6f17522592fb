"""Bad input, property-based (hypothesis): config files and environment values, garbage at every
session key, requests with bad fields over gRPC.

What each property guards:

- config: any value of a typed key, any YAML document, any text as a file: either a valid Config
  (holding the value given) or a ConfigError that names the key (or the file); the CLI turns the
  error into one line on stderr and exit code 2, never a traceback.
- session keys: whatever sits at ``{root}/meta/session/id``, ``.../session/{role}`` or
  ``.../session/{role}-{n}``, parsing raises only CorruptValue, ``milvus status`` lists it as
  INVALID without failing, the server-ID allocator refuses a non-integer counter without touching
  it, and a STANDBY waits behind a garbage ACTIVE key and takes over once it is deleted.
- gRPC: requests of every method of every role, fields drawn over their whole protobuf types:
  the answer is OK or a clean refusal (INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS,
  FAILED_PRECONDITION), the process still answers GetComponentStates, and a refused call changed
  nothing under the cluster's etcd root.

Example counts are kept modest so the whole file runs in well under a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import math
import os
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar
from unittest import mock

import pytest
import pytest_asyncio
import yaml
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from coordinators.config import DEFAULTS, Config, ConfigError, load_config
from coordinators.ops import cli
from coordinators.ops.status import read_sessions
from coordinators.proto import common_pb2, datacoord_pb2, querycoord_pb2, rootcoord_pb2
from coordinators.proto.datacoord_grpc import DataCoordStub
from coordinators.proto.querycoord_grpc import QueryCoordStub
from coordinators.proto.rootcoord_grpc import RootCoordStub
from coordinators.server.process import CoordinatorProcess
from harness.etcd_server import EtcdCluster, free_port
from harness.procs import ENV_SECTION, clean_env, run_cli
from harness.session_helpers import wait_until
from session import CorruptValue, Etcd, SessionInfo, allocate_server_id
from session.etcd import parse_endpoint

# CI runs the same examples every time (a failure there is reproducible, not a lottery); developers'
# runs explore new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

FAST = settings(max_examples=120, deadline=None)
ETCD = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SLOW = settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# --------------------------------------------------------------------------- config

# Every key path the config knows (the seed's activeStandby.enabled spelling too).
_SECTIONS = {"rootCoord", "queryCoord", "dataCoord"}


def _leaf_paths(tree: Any, prefix: tuple[str, ...] = ()) -> Iterator[str]:
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaf_paths(value, (*prefix, key))
        else:
            yield ".".join((*prefix, key))


_LEAVES = frozenset(_leaf_paths(dict(DEFAULTS))) | {f"{s}.activeStandby.enabled" for s in _SECTIONS}
# Leaves and the sections above them ("etcd.ssl: 5" is an error naming etcd.ssl).
KNOWN_KEYS = _LEAVES | {".".join(key.split(".")[:i]) for key in _LEAVES for i in range(1, key.count(".") + 1)}

_BOOL_WORDS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


def _int(value: str) -> int | None:
    """What a decimal integer looks like to a person: optional sign, ASCII digits, spaces around."""
    text = value.strip()
    return int(text) if re.fullmatch(r"[+-]?[0-9]{1,4000}", text) else None


def _float(value: str) -> float | None:
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


class Typed:
    """One typed key, set through its environment variable: how to read the typed value back from a
    Config, which keys an error may name, and what a valid value reads as (None: must be refused)."""

    def __init__(
        self,
        var: str,
        key: str,
        read: Callable[[Config], Any],
        expect: Callable[[str], Any],
        *,
        also: tuple[str, ...] = (),
    ) -> None:
        self.var, self.key, self.read, self.expect, self.keys = var, key, read, expect, (key, *also)

    def __repr__(self) -> str:
        return self.var


def _in_range(low: int, high: int | None = None, *, not_: int | None = None) -> Callable[[str], int | None]:
    def expect(value: str) -> int | None:
        n = _int(value)
        ok = n is not None and n >= low and (high is None or n <= high) and n != not_
        return n if ok else None

    return expect


def _positive(scale: float = 1.0) -> Callable[[str], float | None]:
    def expect(value: str) -> float | None:
        n = _float(value)
        return n / scale if n is not None and n > 0 else None

    return expect


def _boolean(value: str) -> bool | None:
    return _BOOL_WORDS.get(value.strip().lower())


def _false_only(value: str) -> bool | None:
    """etcd.ssl.enabled: true needs the CA file too (an error naming etcd.ssl.tlsCACert here)."""
    return False if _boolean(value) is False else None


def _choice(*choices: str) -> Callable[[str], str | None]:
    return lambda value: value.strip().lower() if value.strip().lower() in choices else None


TYPED = [
    Typed("COMMON_SESSION_TTL", "common.session.ttl", lambda c: c.session.ttl, _in_range(2)),
    Typed("COMMON_SESSION_RETRY_TIMES", "common.session.retryTimes", lambda c: c.session.retry_times, _in_range(1)),
    Typed("COMMON_SESSION_STANDBY_LOG_INTERVAL", "common.session.standbyLogInterval",
          lambda c: c.session.standby_log_interval, _positive()),
    Typed("COMMON_SESSION_EXIT_ON_LOST", "common.session.exitOnLost", lambda c: c.session.exit_on_lost, _boolean),
    # The default httpPort (9101) taken as the gRPC port too is refused, naming httpPort.
    Typed("ROOT_COORD_PORT", "rootCoord.port", lambda c: c.role("rootcoord").port, _in_range(1, 65535, not_=9101),
          also=("rootCoord.httpPort",)),
    Typed("QUERY_COORD_HTTP_PORT", "queryCoord.httpPort", lambda c: c.role("querycoord").http_port,
          _in_range(0, 65535, not_=19531)),
    Typed("DATA_COORD_ENABLE_ACTIVE_STANDBY", "dataCoord.enableActiveStandby",
          lambda c: c.role("datacoord").enable_active_standby, _boolean),
    Typed("DATA_COORD_SEGMENT_MAX_ROWS", "dataCoord.segment.maxRows", lambda c: c.datacoord.segment_max_rows, _in_range(1)),
    Typed("ETCD_REQUEST_TIMEOUT", "etcd.requestTimeout", lambda c: c.etcd.request_timeout, _positive(1000.0)),
    Typed("ETCD_SSL_ENABLED", "etcd.ssl.enabled", lambda c: c.etcd.ssl.enabled, _false_only, also=("etcd.ssl.tlsCACert",)),
    Typed("ETCD_AUTH_ENABLED", "etcd.auth.enabled", lambda c: c.etcd.auth.enabled, _false_only, also=("etcd.auth.userName",)),
    Typed("LOG_LEVEL", "log.level", lambda c: c.log.level, _choice("debug", "info", "warn", "warning", "error")),
    Typed("LOG_FORMAT", "log.format", lambda c: c.log.format, _choice("text", "json")),
    Typed("COMMON_SECURITY_TLS_MODE", "common.security.tlsMode", lambda c: c.grpc_tls.mode, _in_range(0, 0),
          also=("tls.serverPemPath",)),
]


def _spellings(words: list[str]) -> st.SearchStrategy[str]:
    """Words as an operator might type them: any case, spaces around."""
    return st.tuples(st.sampled_from(words), st.sampled_from(["", " ", "\t"]), st.booleans()).map(
        lambda t: t[1] + (t[0].upper() if t[2] else t[0]) + t[1]
    )


env_values = st.one_of(
    st.text(max_size=12),
    st.integers(-(2**40), 2**40).map(str),
    st.integers(-5, 70000).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    _spellings([*list(_BOOL_WORDS), "debug", "INFO", "json", "text", "maybe", "2", "-1"]),
    st.sampled_from(["", " ", "0x10", "1e3", "1_000", "٣", "+7", "65536", "9101", "19531", "nan", "inf", "1" * 5000]),
)


@FAST
@given(typed=st.sampled_from(TYPED), value=env_values)
def test_any_environment_value_gives_a_config_or_an_error_naming_the_key(typed: Typed, value: str) -> None:
    """A valid value is taken as it reads; anything else is a ConfigError naming the key, never another exception."""
    expected = typed.expect(value)
    try:
        config = load_config(env={typed.var: value})
    except ConfigError as exc:
        assert exc.key in typed.keys, (typed, value, exc)
        assert exc.key is not None and exc.key in str(exc)
        assert "\n" not in str(exc), "one line"
        assert expected is None, f"{typed.var}={value!r} is valid ({expected!r}) but was refused: {exc}"
        return
    assert expected is not None, f"{typed.var}={value!r} was accepted as {typed.read(config)!r}"
    got = typed.read(config)
    assert got == expected or (isinstance(got, float) and math.isclose(got, expected)), (value, got, expected)


endpoint_values = st.one_of(
    st.text(max_size=25),
    st.builds(lambda h, p: f"{h}:{p}", st.sampled_from(["127.0.0.1", "localhost", "etcd-1", "[::1]", "", "a b", "[::1"]),
              st.integers(-1, 70000)),
    st.lists(st.sampled_from(["127.0.0.1:2379", "etcd:2379", "https://etcd:2379", "etcd", ":2379", "ftp://x:1"]), max_size=3)
    .map(",".join),
)


@FAST
@given(value=endpoint_values)
def test_any_endpoints_value_is_refused_or_usable_by_the_etcd_client(value: str) -> None:
    """etcd.endpoints: a ConfigError naming the key, or endpoints the etcd client accepts (host:port each)."""
    try:
        config = load_config(env={"ETCD_ENDPOINTS": value})
    except ConfigError as exc:
        assert exc.key == "etcd.endpoints", exc
        return
    for endpoint in config.etcd.endpoints:
        host, port = parse_endpoint(endpoint)
        assert host and 1 <= port <= 65535
    Etcd(config.etcd.endpoints)  # raises ValueError on anything it cannot dial


# A YAML tree built from the real key names (so values land on typed keys) and arbitrary ones.
_KEY_WORDS = sorted({part for key in _LEAVES for part in key.split(".")})
yaml_keys = st.one_of(st.sampled_from(_KEY_WORDS), st.text(max_size=6), st.integers(-3, 3), st.booleans())
yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=15),
    st.sampled_from(["localhost:2379", "true", "5", "-1", "json", "a:b:c"]),
)
yaml_trees = st.recursive(
    yaml_scalars,
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(yaml_keys, children, max_size=4)),
    max_leaves=12,
)
yaml_documents = st.one_of(
    st.dictionaries(st.sampled_from(sorted(DEFAULTS)) | yaml_keys, yaml_trees, max_size=4),
    yaml_trees,
)


def _check_config_outcome(path: Path) -> None:
    try:
        load_config(str(path), env={})
    except ConfigError as exc:
        text = str(exc)
        assert "\n" not in text, text
        if exc.key is None:
            assert str(path) in text, text  # a file-level problem names the file
        else:
            assert exc.key in KNOWN_KEYS, exc  # a value problem names the key
            assert exc.key in text


@FAST
@given(doc=yaml_documents)
@example(doc={"True": {}, True: []})  # two keys that read as one ("True"): an unknown section is never an error
@example(doc={"etcd": {"ssl": {}}, "x": {"y": {}}, "X": 1})
def test_any_yaml_document_gives_a_config_or_an_error_naming_the_key(doc: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("yaml") / "milvus.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    _check_config_outcome(path)


@FAST
@given(text=st.text(max_size=200))
@example(text="common:\n  session:\n    ttl: 2001-02-30\n")  # a date PyYAML only rejects while constructing
@example(text="etcd: &a {ssl: *a}\n")  # an alias inside itself
@example(text="x: " + "[" * 3000 + "]" * 3000)  # nesting deeper than the parser's recursion
@example(text="a: &a [1,1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
         "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\n")  # an alias bomb
@example(text="etcd:\n\tssl: 1\n")
@example(text="!!python/object:os.system {}\n")
def test_any_text_as_config_file_gives_a_config_or_a_clear_error(text: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("text") / "milvus.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    _check_config_outcome(path)


def _refused(var: str, value: str) -> bool:
    try:
        load_config(env={var: value})
    except ConfigError:
        return True
    return False


@FAST
@given(typed=st.sampled_from(TYPED), value=env_values)
def test_cli_turns_a_bad_value_into_one_line_and_exit_2(typed: Typed, value: str) -> None:
    """`milvus run rootcoord` (in-process, stopping at the config): exit 2, one line naming the key, no traceback."""
    if not _refused(typed.var, value) or not _environ_safe(value):
        return  # a valid value would start a coordinator; a NUL cannot be in an environment at all
    environ = {k: v for k, v in os.environ.items() if not re.sub(r"[_./]", "", k).lower().startswith(
        ("etcd", "rootcoord", "querycoord", "datacoord", "common", "log", "tls", "milvusconf"))}
    err = io.StringIO()
    with mock.patch.dict(os.environ, {**environ, typed.var: value}, clear=True), contextlib.redirect_stderr(err):
        code = cli.main(["run", "rootcoord"])
    assert code == 2
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1, lines
    assert any(key in lines[0] for key in typed.keys), lines
    assert "Traceback" not in lines[0]


def _environ_safe(value: str) -> bool:
    try:
        os.fsencode(value)
    except UnicodeError:
        return False
    return "\x00" not in value


_printable = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=15)


@settings(max_examples=5, deadline=None)
@given(typed=st.sampled_from(TYPED), value=st.one_of(_printable, st.sampled_from(["1" * 5000, "-3", "maybe", "0x10"])))
@example(typed=TYPED[0], value="1" * 5000)
async def test_cli_subprocess_bad_environment_exits_2_with_one_line(typed: Typed, value: str) -> None:
    if not _refused(typed.var, value):
        return
    code, _out, err, _ = await run_cli(["run", "rootcoord"], clean_env({typed.var: value}))
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert any(key in lines[0] for key in typed.keys), err


async def test_cli_subprocess_bad_files_exit_2_with_one_line(tmp_path: Path) -> None:
    for i, text in enumerate(["ttl: [\n", "common:\n  session:\n    ttl: 2001-02-30\n", "etcd: &a {ssl: *a}\n",
                              "x: " + "[" * 3000 + "]" * 3000, "etcd: {endpoints: [1, 2]}\n", "- just\n- a list\n"]):
        path = tmp_path / f"bad{i}.yaml"
        path.write_text(text)
        code, _, err, _ = await run_cli(["run", "rootcoord", "--config", str(path)], clean_env({}))
        assert code == 2, (text[:40], err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (text[:40], err)


# --------------------------------------------------------------------------- garbage at session keys

_SESSION_FIELDS = ["ServerID", "ServerName", "Address", "Exclusive", "Stopping", "TriggerKill", "Version", "LeaseID", "HostName"]
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**80), 2**80), st.floats(allow_nan=False), st.text(max_size=10)),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(st.text(max_size=8), children, max_size=3)),
    max_leaves=8,
)
# Foreign values: session-shaped JSON with fields of any type (another tool's, another version's).
session_like = st.dictionaries(st.sampled_from(_SESSION_FIELDS), json_values, max_size=9)
garbage_values = st.one_of(
    st.binary(max_size=60),
    json_values.map(lambda v: json.dumps(v).encode()),
    session_like.map(lambda v: json.dumps(v).encode()),
    st.sampled_from([b"", b"null", b"{}", b'{"ServerID": 1e999}', b'{"ServerID": 1, "LeaseID": 1e400}',
                     b'{"ServerID": 1, "LeaseID": 99999999999999999999999}', b'{"ServerID": "7"}', b"\xff\xfe"]),
)


@FAST
@given(raw=garbage_values)
@example(raw=b'{"ServerID": 1, "LeaseID": 1e400}')
@example(raw=b'{"ServerID": 1, "LeaseID": 99999999999999999999999}')
def test_session_parse_raises_only_corrupt_value(raw: bytes) -> None:
    try:
        info = SessionInfo.from_json("root/meta/session/rootcoord-1", raw)
    except CorruptValue as exc:
        assert exc.key == "root/meta/session/rootcoord-1"
        return
    # Whatever parses is usable: it serializes back and names an int64 server ID and lease.
    assert -(2**63) <= info.server_id < 2**63 and -(2**63) <= info.lease_id < 2**63
    SessionInfo.from_json("k", info.to_json())


@pytest_asyncio.fixture
async def client(etcd: EtcdCluster) -> AsyncIterator[Etcd]:
    async with Etcd(etcd.endpoints, timeout=5) as c:
        yield c


def _root() -> str:
    return f"prop-{uuid.uuid4().hex[:10]}"


@ETCD
@given(garbage=st.binary(max_size=30).filter(lambda b: re.fullmatch(rb"[0-9]+", b) is None))
@example(garbage=b" 12")
@example(garbage=b"1_2")
@example(garbage=b"\xd9\xa3")  # an Arabic-Indic digit: int() would read it, etcd tools would not
@example(garbage=b"-1")
async def test_server_id_allocator_refuses_a_non_integer_counter_without_overwriting_it(client: Etcd, garbage: bytes) -> None:
    key = f"{_root()}/meta/session/id"
    await client.put(key, garbage)
    before = (await client.get(key)).kvs[0]
    with pytest.raises(CorruptValue):
        await allocate_server_id(client, key.rsplit("/session/id", 1)[0])
    after = (await client.get(key)).kvs[0]
    assert (after.value, after.mod_revision) == (before.value, before.mod_revision)


@ETCD
@given(counter=st.integers(0, 2**62))
async def test_server_id_allocator_advances_any_decimal_counter(client: Etcd, counter: int) -> None:
    root = f"{_root()}/meta"
    await client.put(f"{root}/session/id", str(counter))
    assert await allocate_server_id(client, root) == counter + 1


def _valid_session(server_id: int, role: str = "querycoord") -> bytes:
    return SessionInfo(server_id, role, "127.0.0.1:1", True, "0.1.0", 0, "host").to_json()


@ETCD
@given(active=garbage_values, own=garbage_values, counter=garbage_values, other=garbage_values)
async def test_status_lists_garbage_as_invalid_and_never_fails(
    client: Etcd, active: bytes, own: bytes, counter: bytes, other: bytes
) -> None:
    root = _root()
    session = f"{root}/meta/session/"
    await client.put(f"{session}id", counter)
    await client.put(f"{session}rootcoord", active)
    await client.put(f"{session}rootcoord-5", own)
    await client.put(f"{session}datacoord-7", other)
    await client.put(f"{session}querycoord-3", _valid_session(3))
    await client.put(f"{session}querycoord", _valid_session(3))
    rows = {row.key: row for row in await read_sessions(client, f"{root}/meta")}
    assert set(rows) == {f"{session}rootcoord-5", f"{session}datacoord-7", f"{session}querycoord-3"}
    assert rows[f"{session}querycoord-3"].state == "ACTIVE"
    for key, raw in ((f"{session}rootcoord-5", own), (f"{session}datacoord-7", other)):
        try:
            SessionInfo.from_json(key, raw)
        except CorruptValue:
            assert rows[key].state == "INVALID"


async def test_status_cli_shows_invalid_rows(etcd: EtcdCluster, client: Etcd) -> None:
    """`milvus status` (table and JSON) over garbage values, and a foreign key that is not even UTF-8."""
    root = _root()
    session = f"{root}/meta/session/"
    for key, value in ((f"{session}rootcoord", b"\xff garbage"), (f"{session}rootcoord-5", b"[1,2]"),
                       (f"{session}datacoord-7", b'{"ServerID": "x"}'), (f"{session}id", b"NaN")):
        await client.put(key, value)
    await client.put(session.encode() + b"\xfe\xff-1", b"foreign")  # type: ignore[arg-type]
    env = clean_env({"ETCD_ENDPOINTS": etcd.endpoints_csv, "ETCD_ROOT_PATH": root})
    code, out, err, _ = await run_cli(["status"], env)
    assert code == 0, err
    assert out.count("INVALID") == 2 and "Traceback" not in err, (out, err)
    code, out, err, _ = await run_cli(["status", "--json"], env)
    assert code == 0, err
    assert sorted(r["state"] for r in json.loads(out)) == ["INVALID", "INVALID"]


def _member_env(etcd: EtcdCluster, root: str, role: str, **extra: str) -> dict[str, str]:
    section = ENV_SECTION[role]
    # TTL 10: its safety margin (1.5 s) is far above any pause of a busy test machine, so a member
    # demoting itself after a loop stall cannot pass for a bad answer.
    return {"ETCD_ENDPOINTS": etcd.endpoints_csv, "ETCD_ROOT_PATH": root, "COMMON_SESSION_TTL": "10",
            f"{section}_ENABLE_ACTIVE_STANDBY": "true", f"{section}_ADDRESS": "127.0.0.1",
            f"{section}_PORT": str(free_port()), f"{section}_HTTP_PORT": "0", **extra}


@contextlib.asynccontextmanager
async def running(etcd: EtcdCluster, root: str, *roles: str) -> AsyncIterator[list[CoordinatorProcess]]:
    """In-process members of ``roles`` under ``root``, stopped (bounded) at the end."""
    procs = [CoordinatorProcess(load_config(env=_member_env(etcd, root, role)), role, listen_host="127.0.0.1") for role in roles]
    tasks = [asyncio.create_task(p.run(), name=f"prop-{p.role}") for p in procs]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.request_stop()
        done, pending = await asyncio.wait(tasks, timeout=15)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            assert not task.cancelled() and task.exception() is None, task


@SLOW
@given(garbage=garbage_values.filter(lambda raw: _not_a_session(raw)))
@example(garbage=b'{"ServerID": "someone else"}')
async def test_standby_waits_behind_a_garbage_active_key_and_takes_over_once_it_is_deleted(
    etcd: EtcdCluster, client: Etcd, garbage: bytes
) -> None:
    root = _root()
    key = f"{root}/meta/session/rootcoord"
    await client.put(key, garbage)  # no lease: it would never expire
    async with running(etcd, root, "rootcoord") as [proc]:
        await wait_until(lambda: proc.state == common_pb2.StandBy, timeout=10)
        await asyncio.sleep(0.5)
        assert proc.state == common_pb2.StandBy and not proc.session.lost.is_set()
        assert (await client.get(key)).kvs[0].value == garbage, "the campaign must not overwrite it"
        await client.delete(key)
        await wait_until(lambda: proc.state == common_pb2.Healthy, timeout=5)


def _not_a_session(raw: bytes) -> bool:
    try:
        SessionInfo.from_json("k", raw)
    except CorruptValue:
        return True
    return False


# --------------------------------------------------------------------------- requests with bad fields

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
}
_CLEAN_REFUSALS = {Status.INVALID_ARGUMENT, Status.NOT_FOUND, Status.ALREADY_EXISTS, Status.FAILED_PRECONDITION}
_NAMES = ["fuzz_a", "fuzz_b", "", "x" * 300, "bad name", "1abc", "ok_name"]


def _field_values(field: FieldDescriptor, hints: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    if field.name in hints:
        return hints[field.name]
    if field.type in _INT_RANGES:
        low, high = _INT_RANGES[field.type]
        return st.one_of(st.integers(max(low, -3), min(high, 300)), st.integers(low, high))
    if field.type == FieldDescriptor.TYPE_STRING:
        return st.one_of(st.sampled_from(_NAMES), st.text(max_size=20))
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type == FieldDescriptor.TYPE_ENUM:
        # proto3 enums are open: unknown numbers arrive as they are.
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), st.integers(-(2**31), 2**31 - 1))
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return messages(message_factory.GetMessageClass(field.message_type), hints)
    raise AssertionError(f"no strategy for {field.full_name}")


def messages(cls: Any, hints: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """Any message of ``cls``: each field unset or drawn over its whole protobuf type (repeated: 0-4 items)."""
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in cls.DESCRIPTOR.fields:
        values = _field_values(field, hints)
        if field.is_repeated:
            values = st.lists(values, max_size=4)
        fields[field.name] = st.one_of(st.none(), values)
    return st.fixed_dictionaries(fields).map(lambda kw: cls(**{k: v for k, v in kw.items() if v is not None}))


async def _snapshot(client: Etcd, root: str) -> dict[str, tuple[bytes, int]]:
    resp = await client.get(f"{root}/", prefix=True)
    return {kv.key.decode(): (bytes(kv.value), int(kv.mod_revision)) for kv in resp.kvs}


def _background(root: str) -> set[str]:
    """Keys a coordinator writes on its own, whatever the calls: rootcoord's saved timestamp bound, and
    each role's serving lease (renewed four times per lease)."""
    return {f"{root}/kv/tso/timestamp", *(f"{root}/meta/serving/{role}" for role in ("rootcoord", "datacoord", "querycoord"))}


async def _loads_settled(client: Etcd, root: str) -> None:
    """querycoord's loader finishes what earlier OK loads started before a snapshot is taken."""

    async def settled() -> bool:
        resp = await client.get(f"{root}/meta/querycoord-meta/", prefix=True)
        return all(json.loads(kv.value).get("state") != "Loading" for kv in resp.kvs)

    for _ in range(100):
        if await settled():
            return
        await asyncio.sleep(0.03)


class Fuzz:
    """A running cluster under ``root`` and stubs straight to its members (no failover, raw statuses)."""

    STUBS: ClassVar[dict[str, Any]] = {"rootcoord": RootCoordStub, "datacoord": DataCoordStub, "querycoord": QueryCoordStub}

    def __init__(self, client: Etcd, root: str, procs: list[CoordinatorProcess]) -> None:
        self.client, self.root = client, root
        self.procs = {p.role: p for p in procs}
        self.channels = {p.role: Channel("127.0.0.1", p.role_config.port) for p in procs}

    def stub(self, role: str) -> Any:
        return self.STUBS[role](self.channels[role])

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()

    async def check(self, role: str, method: str, request: Any) -> None:
        """One call: OK or a clean refusal; still answering; a refusal wrote nothing."""
        await _loads_settled(self.client, self.root)
        before = await _snapshot(self.client, self.root)
        try:
            await getattr(self.stub(role), method)(request, timeout=10)
            ok = True
        except GRPCError as exc:
            assert exc.status in _CLEAN_REFUSALS, f"{role}.{method}({request!r}) -> {exc.status.name}: {exc.message}"
            assert exc.message, "a refusal says why"
            ok = False
        for name, proc in self.procs.items():
            states = await self.stub(name).GetComponentStates(common_pb2.GetComponentStatesRequest(), timeout=5)
            assert states.state.state_code == common_pb2.Healthy, f"{name} after {role}.{method}: {states}"
            assert proc.state == common_pb2.Healthy
        if not ok:
            after = await _snapshot(self.client, self.root)
            changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)} - _background(self.root)
            assert not changed, f"{role}.{method}({request!r}) was refused but changed {sorted(changed)}"


@contextlib.asynccontextmanager
async def fuzz_cluster(etcd: EtcdCluster, client: Etcd, *roles: str) -> AsyncIterator[Fuzz]:
    root = _root()
    async with running(etcd, root, *roles) as procs:
        await wait_until(lambda: all(p.state == common_pb2.Healthy for p in procs), timeout=10)
        fuzz = Fuzz(client, root, procs)
        try:
            yield fuzz
        finally:
            fuzz.close()


def _schema(dim: int = 4) -> list[rootcoord_pb2.FieldSchema]:
    return [rootcoord_pb2.FieldSchema(name="id", data_type=rootcoord_pb2.Int64, is_primary_key=True),
            rootcoord_pb2.FieldSchema(name="v", data_type=rootcoord_pb2.FloatVector, dim=dim)]


_ROOT_METHODS = {
    "AllocTimestamp": rootcoord_pb2.AllocTimestampRequest,
    "AllocID": rootcoord_pb2.AllocIDRequest,
    "CreateCollection": rootcoord_pb2.CreateCollectionRequest,
    "DropCollection": rootcoord_pb2.DropCollectionRequest,
    "HasCollection": rootcoord_pb2.HasCollectionRequest,
    "DescribeCollection": rootcoord_pb2.DescribeCollectionRequest,
    "ShowCollections": rootcoord_pb2.RootShowCollectionsRequest,
}
_DATA_METHODS = {
    "AssignSegmentID": datacoord_pb2.AssignSegmentIDRequest,
    "Flush": datacoord_pb2.FlushRequest,
    "GetSegmentInfo": datacoord_pb2.GetSegmentInfoRequest,
    "GetFlushState": datacoord_pb2.GetFlushStateRequest,
    "ShowSegments": datacoord_pb2.ShowSegmentsRequest,
}
_QUERY_METHODS = {
    "LoadCollection": querycoord_pb2.LoadCollectionRequest,
    "ReleaseCollection": querycoord_pb2.ReleaseCollectionRequest,
    "ShowCollections": querycoord_pb2.ShowCollectionsRequest,
    "GetLoadState": querycoord_pb2.GetLoadStateRequest,
}


def _hints(ids: list[int]) -> dict[str, st.SearchStrategy[Any]]:
    """Known names and IDs often, so the checks past validation (exists, not found, duplicate) run too."""
    id_values = st.one_of(st.sampled_from(ids), st.integers(-(2**63), 2**63 - 1), st.integers(-2, 10))
    return {
        "collection_name": st.one_of(st.sampled_from(_NAMES), st.text(max_size=12)),
        "collection_id": id_values,
        "segment_ids": id_values,  # per element: the field is repeated
        "channel_name": st.one_of(st.sampled_from(["ch-1", "ch-2", ""]), st.text(max_size=10)),
    }


def _near_valid(ids: list[int]) -> dict[str, st.SearchStrategy[Any]]:
    """Requests one field away from valid, per method: they reach the checks after validation (the
    name taken, the collection missing, one bad item among good ones) where a partial write could hide."""
    names = st.one_of(st.sampled_from(["fuzz_a", "fuzz_b", "fuzz_new", "fuzz_other", "missing"]), st.text(max_size=6))
    known = st.one_of(st.sampled_from(ids), st.integers(-1, 5))
    segment = st.builds(datacoord_pb2.SegmentIDRequest, collection_id=known, partition_id=st.integers(-1, 3),
                        channel_name=st.sampled_from(["ch-1", "ch-2", "", "ch-3"]), count=st.integers(0, 2_000_000))
    return {
        "CreateCollection": st.builds(
            rootcoord_pb2.CreateCollectionRequest, collection_name=names,
            fields=st.one_of(st.just(_schema(4)), st.sampled_from([_schema(0), _schema(40000), _schema(4)[:1], _schema(4)[1:], []])),
            shards_num=st.one_of(st.integers(0, 4), st.integers(-2, 20)), description=st.text(max_size=5)),
        "DropCollection": st.builds(rootcoord_pb2.DropCollectionRequest, collection_name=names),
        "AssignSegmentID": st.builds(datacoord_pb2.AssignSegmentIDRequest, segment_requests=st.lists(segment, min_size=1, max_size=3)),
        "Flush": st.builds(datacoord_pb2.FlushRequest, collection_id=known),
        "LoadCollection": st.builds(querycoord_pb2.LoadCollectionRequest, collection_name=names, replica_number=st.integers(-2, 12)),
        "ReleaseCollection": st.builds(querycoord_pb2.ReleaseCollectionRequest, collection_name=names),
    }


async def _rounds(fuzz: Fuzz, role: str, methods: dict[str, Any], ids: list[int], count: int) -> None:
    """``count`` random calls to ``role``, each checked by :meth:`Fuzz.check`.

    hypothesis drives a plain function in a worker thread (it draws there); each call and its
    checks run on the test's own event loop, where the cluster lives.
    """
    loop = asyncio.get_running_loop()
    hints = _hints(ids)

    @settings(max_examples=count, deadline=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def one(data: st.DataObject) -> None:
        method = data.draw(st.sampled_from(sorted(methods)), label="method")
        near = _near_valid(ids).get(method)
        anything = messages(methods[method], hints)
        request = data.draw(st.one_of(anything, near) if near is not None else anything, label="request")
        asyncio.run_coroutine_threadsafe(fuzz.check(role, method, request), loop).result(timeout=60)

    await asyncio.to_thread(one)


async def test_rootcoord_bad_requests(etcd: EtcdCluster, client: Etcd) -> None:
    async with fuzz_cluster(etcd, client, "rootcoord") as fuzz:
        created = await fuzz.stub("rootcoord").CreateCollection(
            rootcoord_pb2.CreateCollectionRequest(collection_name="fuzz_a", fields=_schema()))
        await _rounds(fuzz, "rootcoord", _ROOT_METHODS, [created.collection_id], 80)


async def test_datacoord_bad_requests(etcd: EtcdCluster, client: Etcd) -> None:
    async with fuzz_cluster(etcd, client, "rootcoord", "datacoord") as fuzz:
        created = await fuzz.stub("rootcoord").CreateCollection(
            rootcoord_pb2.CreateCollectionRequest(collection_name="fuzz_a", fields=_schema()))
        assigned = await fuzz.stub("datacoord").AssignSegmentID(datacoord_pb2.AssignSegmentIDRequest(segment_requests=[
            datacoord_pb2.SegmentIDRequest(collection_id=created.collection_id, channel_name="ch-1", count=10)]))
        ids = [created.collection_id, assigned.assignments[0].segment_id]
        await _rounds(fuzz, "datacoord", _DATA_METHODS, ids, 60)


async def test_querycoord_bad_requests(etcd: EtcdCluster, client: Etcd) -> None:
    async with fuzz_cluster(etcd, client, "rootcoord", "datacoord", "querycoord") as fuzz:
        created = await fuzz.stub("rootcoord").CreateCollection(
            rootcoord_pb2.CreateCollectionRequest(collection_name="fuzz_a", fields=_schema()))
        await fuzz.stub("rootcoord").CreateCollection(rootcoord_pb2.CreateCollectionRequest(collection_name="fuzz_b", fields=_schema()))
        await _rounds(fuzz, "querycoord", _QUERY_METHODS, [created.collection_id], 50)
