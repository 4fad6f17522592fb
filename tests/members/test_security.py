"""Security: TLS and user authentication to etcd, TLS on the coordinators' gRPC ports, no secrets in output.

Against real etcd processes: one started with TLS and client-certificate authentication
(``--cert-file --key-file --client-cert-auth --trusted-ca-file``, https client URL), one with user
authentication enabled (a ``coord`` user whose role may read and write only under ``sec-``) and
simple tokens that expire after 2 s. Certificates are made at test time (:mod:`certs`).
"""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
import subprocess
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml
from grpclib.client import Channel
from grpclib.exceptions import StreamTerminatedError
from structlog.testing import capture_logs

from coordinators.client import CoordinatorClient, NoActiveMember
from coordinators.config import ConfigError, load_config
from coordinators.ops.status import MemberState, read_sessions
from coordinators.proto import common_pb2, rootcoord_pb2
from coordinators.proto import querycoord_pb2 as qc_pb
from coordinators.proto.rootcoord_grpc import RootCoordStub
from coordinators.server.http_server import liveness
from coordinators.server.process import CoordinatorProcess
from coordinators.tls import check_grpc_tls, client_ssl_context, make_etcd
from harness.certs import TLSFiles, make_tls_files
from harness.etcd_server import EtcdMember, etcdctl, find_etcdctl_binary, free_port
from harness.procs import ENV_SECTION, MilvusProcess, clean_env, run_cli, wait_for_serving
from harness.session_helpers import wait_until
from session import Etcd, EtcdAuthError, EtcdTLS
from session.etcd import EtcdTLSError

pytestmark = pytest.mark.process

USER = "coord"
#: A password nobody would log by accident: every output of a run is grepped for it.
PASSWORD = f"Pw-{uuid.uuid4().hex[:12]}-never-logged"
ROOT_PASSWORD = f"root-{uuid.uuid4().hex[:8]}"
ALLOWED_PREFIX = "sec-"  # the coord user's role may read and write keys under this prefix only
TOKEN_TTL = 2  # etcd --auth-token-ttl: simple tokens expire after 2 s without use
TTL = 3  # common.session.ttl of the coordinators here


# --------------------------------------------------------------------------- etcd servers


class TLSEtcdMember(EtcdMember):
    """An etcd member serving clients over https only, requiring client certificates.

    /health is read from a separate plain metrics URL, since the client URL wants a certificate.
    """

    def __init__(self, name: str, base_dir: Path, tls: TLSFiles, **kw: Any) -> None:
        self.metrics_port = free_port()
        args = [
            f"--cert-file={tls.server_cert}",
            f"--key-file={tls.server_key}",
            "--client-cert-auth",
            f"--trusted-ca-file={tls.ca}",
            f"--listen-metrics-urls=http://127.0.0.1:{self.metrics_port}",
        ]
        super().__init__(name, base_dir, extra_args=args, **kw)

    @property
    def client_url(self) -> str:
        return f"https://127.0.0.1:{self.client_port}"

    def health(self, timeout: float = 1.0) -> bool:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"http://127.0.0.1:{self.metrics_port}/health", timeout=timeout) as resp:
                return str(json.loads(resp.read() or b"{}").get("health")).lower() == "true"
        except (OSError, ValueError):
            return False


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_etcd(etcd_bin: str, tls_files: TLSFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSEtcdMember]:
    member = TLSEtcdMember("tls0", tmp_path_factory.mktemp("etcd-tls"), tls_files, etcd_bin=etcd_bin)
    member.start()
    try:
        yield member
    finally:
        member.kill()
        member.remove_data()


@pytest.fixture(scope="module")
def auth_etcd(etcd_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdMember]:
    """etcd with auth on: root, and ``coord`` with readwrite on ``sec-*`` only; tokens live 2 s."""
    member = EtcdMember(
        "auth0", tmp_path_factory.mktemp("etcd-auth"), etcd_bin=etcd_bin, extra_args=[f"--auth-token-ttl={TOKEN_TTL}"]
    )
    member.start()
    try:
        endpoints = [member.endpoint]
        for args in (
            ["user", "add", f"root:{ROOT_PASSWORD}"],
            ["user", "add", f"{USER}:{PASSWORD}"],
            ["role", "add", "coordinators"],
            ["role", "grant-permission", "coordinators", "--prefix=true", "readwrite", ALLOWED_PREFIX],
            ["user", "grant-role", USER, "coordinators"],
            ["auth", "enable"],
        ):
            etcdctl(*args, endpoints=endpoints)
        yield member
    finally:
        member.kill()
        member.remove_data()


def new_root() -> str:
    return f"{ALLOWED_PREFIX}{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------- processes


def base_env(tmp_path: Path, endpoint: str, root: str, **extra: str) -> dict[str, str]:
    return clean_env(
        {
            "MILVUS_RUN_DIR": str(tmp_path / "run"),
            "ETCD_ENDPOINTS": endpoint,
            "ETCD_ROOT_PATH": root,
            "COMMON_SESSION_TTL": str(TTL),
            "COMMON_SESSION_RETRY_TIMES": "3",
            "COMMON_SESSION_STANDBY_LOG_INTERVAL": "0.5",
            **extra,
        }
    )


def tls_env(tls: TLSFiles, *, ca: Path | None = None, client: bool = True, server_name: str = "") -> dict[str, str]:
    """etcd.ssl.* as environment variables (Milvus's rule: ETCD_SSL_TLS_CA_CERT <- etcd.ssl.tlsCACert)."""
    env = {"ETCD_SSL_ENABLED": "true", "ETCD_SSL_TLS_CA_CERT": str(ca or tls.ca)}
    if client:
        env |= {"ETCD_SSL_TLS_CERT": str(tls.client_cert), "ETCD_SSL_TLS_KEY": str(tls.client_key)}
    if server_name:
        env["ETCD_SSL_TLS_SERVER_NAME"] = server_name
    return env


def plain(member: EtcdMember) -> str:
    """The member's endpoint with ``http://``: a password goes out in plain text only where that is written."""
    return f"http://{member.endpoint}"


def auth_env(password: str = PASSWORD) -> dict[str, str]:
    return {"ETCD_AUTH_ENABLED": "true", "ETCD_AUTH_USER_NAME": USER, "ETCD_AUTH_PASSWORD": password}


class Runs:
    """``milvus run`` processes of one test, all killed at the end; every output kept for grepping."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[MilvusProcess] = []
        self.outputs: list[str] = []

    def start(self, role: str, name: str, env: dict[str, str], *, args: tuple[str, ...] = ()) -> MilvusProcess:
        port = free_port()
        proc_env = {**env, f"{ENV_SECTION[role]}_PORT": str(port), f"{ENV_SECTION[role]}_ADDRESS": "localhost"}
        proc = MilvusProcess(["run", role, "--alias", name, *args], proc_env, self.tmp_path / f"{role}-{name}.log", port=port)
        self.procs.append(proc)
        return proc

    async def up(self, role: str, name: str, env: dict[str, str], *, args: tuple[str, ...] = (), standby: bool = False) -> MilvusProcess:
        """Start a process and wait until it serves (or is STANDBY); a port taken between
        free_port() and the bind (exit 6: an outgoing connection got it) is retried on another."""
        wanted = f"serverName: {role} enter STANDBY mode" if standby else f"{role} is ACTIVE and serving"
        for _ in range(3):
            proc = self.start(role, name, env, args=args)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and proc.running():
                if any(line.msg == wanted for line in proc.lines()):
                    return proc
                await asyncio.sleep(0.05)
            if proc.running() or proc.popen.returncode != 6:
                raise AssertionError(f"{proc}: no {wanted!r} in 15 s (exit {proc.popen.returncode}); log:\n{proc.output()}")
        raise AssertionError(f"{role} {name}: no free port in 3 tries")

    async def cli(self, args: list[str], env: dict[str, str], timeout: float = 30.0) -> tuple[int, str, str, float]:
        code, out, err, seconds = await run_cli(args, env, timeout=timeout)
        self.outputs += [out, err]
        return code, out, err, seconds

    def everything(self) -> str:
        return "\n".join([*self.outputs, *(p.output() for p in self.procs)])

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()


@pytest.fixture
def runs(tmp_path: Path) -> Iterator[Runs]:
    r = Runs(tmp_path)
    yield r
    r.close()


async def stop(proc: MilvusProcess) -> None:
    proc.signal(signal.SIGTERM)
    assert await proc.wait(15) == 0, proc.output()


def status_rows(out: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(out)
    return rows


def assert_one_clean_error(output: str, *words: str) -> None:
    """No traceback, and every word appears (case-insensitive)."""
    assert "Traceback" not in output, output
    for word in words:
        assert word.lower() in output.lower(), f"{word!r} not in:\n{output}"


# --------------------------------------------------------------------------- etcd over TLS


async def test_tls_run_status_and_role_commands_from_config_file(
    tls_etcd: TLSEtcdMember, tls_files: TLSFiles, tmp_path: Path, runs: Runs
) -> None:
    """etcd.ssl.* in milvus.yaml: `milvus run`, `milvus status` and `milvus rootcoord ...` all work over mutual TLS."""
    root = new_root()
    config = tmp_path / "milvus.yaml"
    config.write_text(yaml.safe_dump({
        "etcd": {
            "endpoints": [tls_etcd.endpoint],
            "rootPath": root,
            "ssl": {"enabled": True, "tlsCACert": str(tls_files.ca), "tlsCert": str(tls_files.client_cert),
                    "tlsKey": str(tls_files.client_key)},
        },
        "common": {"session": {"ttl": TTL, "retryTimes": 3}},
    }))
    env = clean_env({"MILVUS_RUN_DIR": str(tmp_path / "run")})
    proc = await runs.up("rootcoord", "a", env, args=("--config", str(config)))

    code, out, err, _ = await runs.cli(["status", "--json", "--config", str(config)], env)
    assert code == 0, err
    [row] = status_rows(out)
    assert (row["role"], row["state"], row["address"]) == ("rootcoord", "ACTIVE", proc.address)

    code, out, err, _ = await runs.cli(["rootcoord", "--config", str(config), "alloc-id", "--count", "5"], env)
    assert code == 0, err
    assert json.loads(out)["count"] == 5
    await stop(proc)


async def test_tls_from_environment_active_standby_and_failover(
    tls_etcd: TLSEtcdMember, tls_files: TLSFiles, tmp_path: Path, runs: Runs
) -> None:
    """ETCD_SSL_* variables (and a host name endpoint checked against tlsServerName): two querycoords elect
    one ACTIVE over TLS, `milvus status` sees both, and the standby takes over on SIGTERM."""
    env = base_env(tmp_path, f"localhost:{tls_etcd.client_port}", new_root(), **tls_env(tls_files, server_name="localhost"),
                   QUERY_COORD_ENABLE_ACTIVE_STANDBY="true")
    a = await runs.up("querycoord", "a", env)
    b = await runs.up("querycoord", "b", env, standby=True)

    code, out, err, _ = await runs.cli(["status", "--json"], env)
    assert code == 0, err
    assert sorted(r["state"] for r in status_rows(out)) == ["ACTIVE", "STANDBY"]
    code, out, err, _ = await runs.cli(["querycoord", "show"], env)
    assert code == 0, err

    await stop(a)
    await wait_for_serving(b, "querycoord", timeout=10)
    await stop(b)


@pytest.mark.parametrize(
    ("case", "settings"),
    [
        ("untrusted CA", {"ca": "other"}),
        ("no client certificate", {"client": False}),
        ("client certificate from another CA", {"foreign_client": True}),
        ("wrong server name", {"server_name": "etcd.example.com"}),
    ],
)
async def test_tls_misconfiguration_is_a_clear_error_at_start_up(
    case: str, settings: dict[str, Any], tls_etcd: TLSEtcdMember, tls_files: TLSFiles, tmp_path: Path, runs: Runs
) -> None:
    """A handshake etcd or we refuse: exit 3 at once (not after retryTimes attempts, not a hang), naming the
    endpoint and TLS; `milvus status` the same."""
    ssl_env = tls_env(
        tls_files,
        ca=tls_files.other_ca if settings.get("ca") == "other" else None,
        client=settings.get("client", True),
        server_name=settings.get("server_name", ""),
    )
    if settings.get("foreign_client"):
        ssl_env |= {"ETCD_SSL_TLS_CERT": str(tls_files.other_client_cert), "ETCD_SSL_TLS_KEY": str(tls_files.other_client_key)}
    # 30 attempts would take over a minute: the error must not wait for them.
    env = base_env(tmp_path, tls_etcd.endpoint, new_root(), COMMON_SESSION_RETRY_TIMES="30", **ssl_env)
    proc = runs.start("rootcoord", "a", env)
    t0 = time.monotonic()
    assert await proc.wait(20) == 3, proc.output()
    assert time.monotonic() - t0 < 10, f"{case}: took {time.monotonic() - t0:.1f}s"
    output = proc.output()
    assert_one_clean_error(output, "TLS", tls_etcd.endpoint)
    assert "etcd not reachable" not in output, f"{case}: retried a TLS failure:\n{output}"

    code, _, err, seconds = await runs.cli(["status"], env)
    assert code == 3, err
    assert seconds < 10
    assert_one_clean_error(err, "TLS", tls_etcd.endpoint)


async def test_plain_text_client_against_tls_etcd_gives_up_within_the_retry_budget(
    tls_etcd: TLSEtcdMember, tmp_path: Path, runs: Runs
) -> None:
    """etcd.ssl.enabled false against a TLS-only etcd: the server just closes the connection, which looks like
    an outage; the retry budget (here 2 attempts) bounds it: exit 3, not a hang."""
    env = base_env(tmp_path, tls_etcd.endpoint, new_root(), COMMON_SESSION_RETRY_TIMES="2")
    proc = runs.start("rootcoord", "a", env)
    assert await proc.wait(20) == 3, proc.output()
    assert_one_clean_error(proc.output(), "etcd is unreachable", tls_etcd.endpoint)


async def test_etcd_client_tls_file_problems(tls_files: TLSFiles, tmp_path: Path) -> None:
    """The library's own checks: unreadable or non-PEM files and a certificate without its key are TLS errors."""
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("not a certificate")
    for tls in (
        EtcdTLS(str(tmp_path / "missing.pem")),
        EtcdTLS(str(bogus)),
        EtcdTLS(str(tls_files.ca), cert=str(tls_files.client_cert)),
    ):
        etcd = Etcd(["127.0.0.1:1"], timeout=1, tls=tls)
        with pytest.raises(EtcdTLSError):
            await etcd.connect()
        await etcd.close()


def test_etcd_security_config_errors(tls_files: TLSFiles, tmp_path: Path) -> None:
    """Half-configured TLS or auth is a ConfigError naming the key (the CLI's exit 2), never a later surprise."""

    def error(env: dict[str, str]) -> ConfigError:
        with pytest.raises(ConfigError) as info:
            load_config(env=env)
        return info.value

    assert error({"ETCD_SSL_ENABLED": "true"}).key == "etcd.ssl.tlsCACert"
    assert error({"ETCD_SSL_ENABLED": "true", "ETCD_SSL_TLS_CA_CERT": str(tmp_path / "nope.pem")}).key == "etcd.ssl.tlsCACert"
    half = {"ETCD_SSL_ENABLED": "true", "ETCD_SSL_TLS_CA_CERT": str(tls_files.ca), "ETCD_SSL_TLS_CERT": str(tls_files.client_cert)}
    assert error(half).key == "etcd.ssl.tlsKey"
    assert error({"ETCD_AUTH_ENABLED": "true"}).key == "etcd.auth.userName"
    ok = load_config(env={**half, "ETCD_SSL_TLS_KEY": str(tls_files.client_key), **auth_env()})
    assert ok.etcd.ssl.enabled and ok.etcd.auth.user_name == USER
    assert PASSWORD not in repr(ok), "the password must not be in the config's repr"
    assert PASSWORD not in repr(make_etcd(ok))
    # Disabled TLS ignores its (absent) files: the shipped config leaves them empty.
    assert not load_config(env={"ETCD_SSL_TLS_CA_CERT": str(tmp_path / "nope.pem")}).etcd.ssl.enabled


def test_password_of_the_wrong_type_is_not_echoed(tmp_path: Path) -> None:
    """A config error about the password names the key but never shows the value."""
    config = tmp_path / "milvus.yaml"
    config.write_text(yaml.safe_dump({"etcd": {"auth": {"enabled": True, "userName": USER, "password": [PASSWORD]}}}))
    with pytest.raises(ConfigError) as info:
        load_config(str(config), env={})
    assert info.value.key == "etcd.auth.password"
    assert PASSWORD not in str(info.value)


# --------------------------------------------------------------------------- etcd with authentication


async def test_auth_run_status_and_role_commands(auth_etcd: EtcdMember, tmp_path: Path, runs: Runs) -> None:
    """etcd.auth.* from the environment: a coordinator registers and serves, `milvus status` and
    `milvus rootcoord ...` authenticate the same way."""
    env = base_env(tmp_path, plain(auth_etcd), new_root(), **auth_env())
    proc = await runs.up("rootcoord", "a", env)
    code, out, err, _ = await runs.cli(["status", "--json"], env)
    assert code == 0, err
    assert [r["state"] for r in status_rows(out)] == ["ACTIVE"]
    code, out, err, _ = await runs.cli(["rootcoord", "create-collection", "secured"], env)
    assert code == 0, err
    code, out, err, _ = await runs.cli(["rootcoord", "has-collection", "secured"], env)
    assert code == 0 and json.loads(out)["value"] is True, err
    await stop(proc)


@pytest.mark.parametrize(
    ("case", "credentials"),
    [
        ("wrong password", auth_env("not-the-password")),
        ("no credentials", {}),
        ("unknown user", {**auth_env(), "ETCD_AUTH_USER_NAME": "nobody"}),
    ],
)
async def test_refused_credentials_are_a_clear_error_at_start_up(
    case: str, credentials: dict[str, str], auth_etcd: EtcdMember, tmp_path: Path, runs: Runs
) -> None:
    """Exit 3 at once with "etcd refused our credentials" and the endpoint: no retry loop, no hang, no traceback."""
    env = base_env(tmp_path, plain(auth_etcd), new_root(), COMMON_SESSION_RETRY_TIMES="30", **credentials)
    proc = runs.start("rootcoord", "a", env)
    t0 = time.monotonic()
    assert await proc.wait(20) == 3, proc.output()
    assert time.monotonic() - t0 < 10, f"{case}: {time.monotonic() - t0:.1f}s"
    output = proc.output()
    assert_one_clean_error(output, "etcd refused our credentials", auth_etcd.endpoint)
    assert "etcd not reachable" not in output, f"{case}: retried refused credentials:\n{output}"

    code, _, err, _ = await runs.cli(["status"], env)
    assert code == 3, err
    assert_one_clean_error(err, auth_etcd.endpoint)


async def test_role_limited_to_its_prefix(auth_etcd: EtcdMember) -> None:
    """The test user really is confined (so the suite proves the coordinators need no more than their root)."""
    async with Etcd([auth_etcd.endpoint], timeout=3, user=USER, password=PASSWORD) as etcd:
        await etcd.put(f"{new_root()}/x", b"1")
        with pytest.raises(EtcdAuthError):
            await etcd.put("elsewhere/x", b"1")


async def _invalidate_tokens(member: EtcdMember, user: str, password: str) -> None:
    """Every token etcd gave ``user`` is invalid from now on: its password is set again (the same one),
    which makes etcd drop the user's tokens, as their expiry would, but at a moment the test chooses."""
    cmd = [find_etcdctl_binary(), f"--endpoints={member.endpoint}", f"--user=root:{ROOT_PASSWORD}",
           "--command-timeout=5s", "user", "passwd", user, "--interactive=false"]
    done = await asyncio.to_thread(subprocess.run, cmd, input=password + "\n", capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr


async def test_token_expiry_keeps_sessions_and_the_active_role(auth_etcd: EtcdMember) -> None:
    """Tokens made invalid by etcd several times (as an expiry would: simple tokens expire after 2 s
    without use here, but the serving lease's renewals and the standby's reads use them every fraction
    of a second): the ACTIVE datacoord keeps its session, server ID and epoch, the STANDBY keeps its
    session, each re-authenticates, and the standby (whose token is invalid again) still takes over
    at once when the active stops."""
    root = new_root()
    env = {
        "ETCD_ENDPOINTS": plain(auth_etcd), "ETCD_ROOT_PATH": root, "COMMON_SESSION_TTL": str(TTL),
        "DATA_COORD_ENABLE_ACTIVE_STANDBY": "true", "DATA_COORD_ADDRESS": "127.0.0.1", "DATA_COORD_HTTP_PORT": "0",
        **auth_env(),
    }
    procs: list[CoordinatorProcess] = []
    tasks: list[asyncio.Task[int]] = []

    async def start(expect: int) -> CoordinatorProcess:
        proc = CoordinatorProcess(load_config(env={**env, "DATA_COORD_PORT": str(free_port())}), "datacoord", listen_host="127.0.0.1")
        procs.append(proc)
        tasks.append(asyncio.create_task(proc.run()))
        await wait_until(lambda: proc.state == expect, timeout=10)
        return proc

    try:
        active = await start(common_pb2.Healthy)
        standby = await start(common_pb2.StandBy)
        ids, epoch = (active.server_id, standby.server_id), active.epoch
        # Two invalidations of both tokens: after each, each member meets the invalid token and
        # authenticates again (awaited: how soon depends on when each next calls etcd unary).
        for round_ in (1, 2):
            await _invalidate_tokens(auth_etcd, USER, PASSWORD)
            await wait_until(
                lambda n=round_: min(active.etcd.token_refreshes, standby.etcd.token_refreshes) >= n,
                timeout=12 * TOKEN_TTL, interval=0.1, what=f"token refresh {round_} by each member",
            )
        assert (active.state, standby.state) == (common_pb2.Healthy, common_pb2.StandBy)
        assert (active.server_id, standby.server_id, active.epoch) == (*ids, epoch)
        assert not active.session.lost.is_set() and not standby.session.lost.is_set()

        refreshes = standby.etcd.token_refreshes
        await _invalidate_tokens(auth_etcd, USER, PASSWORD)  # the standby's token is no longer valid
        active.request_stop()
        assert await asyncio.wait_for(tasks[0], 10) == 0
        await wait_until(lambda: standby.state == common_pb2.Healthy, timeout=3)
        assert standby.server_id == ids[1], "the standby kept its session"
        assert standby.etcd.token_refreshes > refreshes
    finally:
        for proc in procs:
            proc.request_stop()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 15)


# --------------------------------------------------------------------------- no secrets in output


async def test_secrets_never_appear_in_logs_or_status(
    auth_etcd: EtcdMember, tls_etcd: TLSEtcdMember, tls_files: TLSFiles, tmp_path: Path, runs: Runs
) -> None:
    """Debug-level runs with a recognizable password and with TLS keys, a refused password, `milvus status`
    (table and JSON), a role command and a config error: none of it contains the password or key material."""
    auth = base_env(tmp_path, plain(auth_etcd), new_root(), LOG_LEVEL="debug", **auth_env())
    proc = await runs.up("rootcoord", "auth", auth)
    for args in (["status"], ["status", "--json"], ["rootcoord", "alloc-ts"]):
        code, _, err, _ = await runs.cli(args, auth)
        assert code == 0, err
    await stop(proc)
    refused = {**auth, "ETCD_AUTH_PASSWORD": PASSWORD + "-wrong"}
    wrong = runs.start("rootcoord", "wrong", refused)
    assert await wrong.wait(20) == 3
    await runs.cli(["status"], refused)
    bad_type = tmp_path / "bad.yaml"
    bad_type.write_text(yaml.safe_dump({"etcd": {"auth": {"enabled": True, "userName": USER, "password": {"p": PASSWORD}}}}))
    code, _, _, _ = await runs.cli(["run", "rootcoord", "--config", str(bad_type)], auth)
    assert code == 2

    tls = base_env(tmp_path, tls_etcd.endpoint, new_root(), LOG_LEVEL="debug", **tls_env(tls_files))
    proc = await runs.up("rootcoord", "tls", tls)
    for args in (["status"], ["status", "--json"]):
        code, _, err, _ = await runs.cli(args, tls)
        assert code == 0, err
    await stop(proc)

    everything = runs.everything()
    assert "register ACTIVE service successfully" in everything  # the grep below reads real output
    assert PASSWORD not in everything
    assert ROOT_PASSWORD not in everything
    key_lines = [line for key in (tls_files.client_key_text, tls_files.server_key_text)
                 for line in key.splitlines() if line and not line.startswith("-----")]
    assert key_lines
    for line in key_lines:
        assert line not in everything
    assert "PRIVATE KEY" not in everything


# --------------------------------------------------------------------------- TLS on the coordinators' gRPC ports


def grpc_tls_env(tls: TLSFiles, mode: int = 1) -> dict[str, str]:
    """common.security.tlsMode and tls.* (Milvus's names) as environment variables."""
    return {
        "COMMON_SECURITY_TLS_MODE": str(mode),
        "TLS_SERVER_PEM_PATH": str(tls.server_cert),
        "TLS_SERVER_KEY_PATH": str(tls.server_key),
        "TLS_CA_PEM_PATH": str(tls.ca),
    }


@pytest_asyncio.fixture
async def plain_etcd(etcd: Any) -> AsyncIterator[Etcd]:
    async with Etcd(etcd.endpoints, timeout=5) as client:
        yield client


async def test_grpc_tls_one_way(etcd: Any, plain_etcd: Etcd, tls_files: TLSFiles, tmp_path: Path) -> None:
    """tlsMode 1: clients that trust the CA call rootcoord, querycoord calls rootcoord over TLS, and the CLI
    does too; a plain-text client or one trusting another CA gets nothing."""
    root = f"test-{uuid.uuid4().hex[:8]}"
    env = {"ETCD_ENDPOINTS": etcd.endpoints_csv, "ETCD_ROOT_PATH": root, "COMMON_SESSION_TTL": str(TTL), **grpc_tls_env(tls_files)}
    procs: list[CoordinatorProcess] = []
    tasks: list[asyncio.Task[int]] = []
    clients: list[CoordinatorClient] = []

    def config_for(role: str, **extra: str) -> Any:
        section = ENV_SECTION[role]
        return load_config(env={**env, f"{section}_ADDRESS": "localhost", f"{section}_PORT": str(free_port()),
                                f"{section}_HTTP_PORT": "0", **extra})

    def client(role: str, ssl_config: Any) -> CoordinatorClient:
        c = CoordinatorClient(plain_etcd, f"{root}/meta", role, call_timeout=2, failover_budget=1.5,
                              ssl_context=client_ssl_context(ssl_config) if ssl_config is not None else None)
        clients.append(c)
        return c

    try:
        for role in ("rootcoord", "querycoord"):
            proc = CoordinatorProcess(config_for(role), role, listen_host="127.0.0.1")
            procs.append(proc)
            tasks.append(asyncio.create_task(proc.run()))
        await wait_until(lambda: all(p.state == common_pb2.Healthy for p in procs), timeout=10)

        trusted = load_config(env=env)
        rc = client("rootcoord", trusted)
        request = rootcoord_pb2.CreateCollectionRequest(collection_name="tls_c", fields=[
            rootcoord_pb2.FieldSchema(name="id", data_type=rootcoord_pb2.Int64, is_primary_key=True),
            rootcoord_pb2.FieldSchema(name="v", data_type=rootcoord_pb2.FloatVector, dim=4)])
        created = await rc.call("CreateCollection", request, idempotent=False)
        # querycoord resolves the name through rootcoord: a role-to-role call over TLS.
        load = qc_pb.LoadCollectionRequest(collection_name="tls_c", replica_number=1)
        loaded = await client("querycoord", trusted).call("LoadCollection", load, idempotent=False)
        assert loaded.collection_id == created.collection_id

        with pytest.raises(NoActiveMember):
            await client("rootcoord", None).call("AllocID", rootcoord_pb2.AllocIDRequest(count=1))
        other_ca = load_config(env={**env, "TLS_CA_PEM_PATH": str(tls_files.other_ca)})
        with pytest.raises(NoActiveMember, match="CERTIFICATE_VERIFY_FAILED"):
            await client("rootcoord", other_ca).call("AllocID", rootcoord_pb2.AllocIDRequest(count=1))

        code, out, err, _ = await run_cli(["rootcoord", "alloc-id", "--count", "3"], clean_env(env), timeout=30)
        assert code == 0, err
        assert json.loads(out)["count"] == 3
    finally:
        for c in clients:
            await c.close()
        for proc in procs:
            proc.request_stop()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 15)


async def test_grpc_tls_two_way(etcd: Any, tls_files: TLSFiles) -> None:
    """tlsMode 2: the server wants a client certificate signed by the CA; a one-way client is refused."""
    root = f"test-{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = {"ETCD_ENDPOINTS": etcd.endpoints_csv, "ETCD_ROOT_PATH": root, "ROOT_COORD_ADDRESS": "localhost",
           "ROOT_COORD_PORT": str(port), "ROOT_COORD_HTTP_PORT": "0", **grpc_tls_env(tls_files, mode=2)}
    proc = CoordinatorProcess(load_config(env=env), "rootcoord", listen_host="127.0.0.1")
    task = asyncio.create_task(proc.run())
    try:
        await wait_until(lambda: proc.state == common_pb2.Healthy, timeout=10)
        mutual = client_ssl_context(load_config(env=env))
        one_way = client_ssl_context(load_config(env={**env, "COMMON_SECURITY_TLS_MODE": "1"}))
        # A client certificate another CA signed: as good as none (issue 22: the API has no other authentication).
        stranger = client_ssl_context(load_config(env={**env, "TLS_SERVER_PEM_PATH": str(tls_files.other_client_cert),
                                                       "TLS_SERVER_KEY_PATH": str(tls_files.other_client_key)}))
        channel = Channel("localhost", port, ssl=mutual)
        try:
            reply = await RootCoordStub(channel).AllocID(rootcoord_pb2.AllocIDRequest(count=2), timeout=5)
            assert reply.count == 2
        finally:
            channel.close()
        for refused in (one_way, stranger):
            channel = Channel("localhost", port, ssl=refused)
            try:
                # TLS 1.3: the client's handshake completes, then the server drops the connection.
                with pytest.raises((StreamTerminatedError, ConnectionError, ssl.SSLError)):
                    await RootCoordStub(channel).AllocID(rootcoord_pb2.AllocIDRequest(count=2), timeout=5)
            finally:
                channel.close()
    finally:
        proc.request_stop()
        await asyncio.wait_for(task, 15)


def test_grpc_tls_config_errors(tls_files: TLSFiles, tmp_path: Path) -> None:
    """tlsMode out of range, missing files, a file that is not a key: ConfigError naming the key."""

    def error(env: dict[str, str]) -> ConfigError:
        with pytest.raises(ConfigError) as info:
            check_grpc_tls(load_config(env=env))
        return info.value

    assert error({"COMMON_SECURITY_TLS_MODE": "3"}).key == "common.security.tlsMode"
    assert error({"COMMON_SECURITY_TLS_MODE": "1"}).key == "tls.serverPemPath"
    no_ca = {**grpc_tls_env(tls_files), "TLS_CA_PEM_PATH": ""}
    assert error(no_ca).key == "tls.caPemPath"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    assert error({**grpc_tls_env(tls_files), "TLS_SERVER_KEY_PATH": str(garbage)}).key == "tls.serverPemPath"
    assert error({**grpc_tls_env(tls_files), "TLS_CA_PEM_PATH": str(garbage)}).key == "tls.caPemPath"
    mismatched = {**grpc_tls_env(tls_files), "TLS_SERVER_KEY_PATH": str(tls_files.client_key)}
    assert error(mismatched).key == "tls.serverPemPath"
    check_grpc_tls(load_config(env=grpc_tls_env(tls_files)))  # the good files pass


async def test_grpc_tls_bad_key_file_exits_2_with_one_line(tls_files: TLSFiles, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    env = clean_env({"MILVUS_RUN_DIR": str(tmp_path / "run"), **grpc_tls_env(tls_files), "TLS_SERVER_KEY_PATH": str(garbage)})
    code, _out, err, _ = await run_cli(["run", "rootcoord"], env)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "tls.serverPemPath" in err and "Traceback" not in err, err


@pytest.mark.parametrize(
    ("env", "key", "says"),
    [
        ({"ETCD_ENDPOINTS": "https://etcd-1:2379"}, "etcd.endpoints", "https:// endpoint asks for TLS"),
        ({"ETCD_ENDPOINTS": "etcd-1:2379", **auth_env()}, "etcd.auth.enabled", "password in plain text"),
        ({"ETCD_ENDPOINTS": "http://etcd-1:2379,etcd-2:2379", **auth_env()}, "etcd.auth.enabled", "password in plain text"),
    ],
    ids=["https without TLS", "password over host:port", "password over a mix"],
)
def test_an_endpoint_scheme_is_honoured_and_a_password_never_goes_out_in_clear_unwritten(
    env: dict[str, str], key: str, says: str
) -> None:
    """An https:// endpoint with etcd.ssl.enabled false was dialled in plain text (h2c) and a proxy read
    the password: now refused at start-up, as is a password over endpoints that do not say http://."""
    with pytest.raises(ConfigError) as refused:
        load_config(env=env)
    assert refused.value.key == key and says in str(refused.value)
    said = load_config(env={"ETCD_ENDPOINTS": "http://etcd-1:2379", **auth_env()})  # written: allowed, and said
    with capture_logs() as logs:
        make_etcd(said)
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
        "the etcd password goes out in plain text (http:// endpoints, etcd.ssl.enabled false)"]


def test_http_endpoints_with_tls_on_are_refused(tls_files: TLSFiles) -> None:
    with pytest.raises(ConfigError, match="http:// endpoint asks for plain text"):
        load_config(env={"ETCD_ENDPOINTS": "http://etcd-1:2379", **tls_env(tls_files)})


async def _as_root(member: EtcdMember, *args: str, stdin: str | None = None) -> None:
    cmd = [find_etcdctl_binary(), f"--endpoints={member.endpoint}", f"--user=root:{ROOT_PASSWORD}",
           "--command-timeout=5s", *args]
    done = await asyncio.to_thread(subprocess.run, cmd, input=stdin, capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("fast_failover", ["true", "false"])
async def test_a_member_whose_password_was_changed_gives_the_active_key_up(
    auth_etcd: EtcdMember, fast_failover: str
) -> None:
    """Issue 22: the ACTIVE member's etcd password is changed under it (keep-alives need no token, so its
    lease lives on). It must stop acting as ACTIVE, give the key up to a STANDBY whose credentials are
    good, never report itself ACTIVE again, and never take the key back while its credentials are refused."""
    root = new_root()
    users = {name: (f"pw-{name}-{uuid.uuid4().hex[:6]}", f"Pw-{uuid.uuid4().hex[:12]}") for name in ("a", "b")}
    for user, password in users.values():
        await _as_root(auth_etcd, "user", "add", f"{user}:{password}")
        await _as_root(auth_etcd, "user", "grant-role", user, "coordinators")
    procs: dict[str, CoordinatorProcess] = {}
    tasks: list[asyncio.Task[int]] = []

    async def start(name: str, expect: int) -> CoordinatorProcess:
        user, password = users[name]
        env = {"ETCD_ENDPOINTS": plain(auth_etcd), "ETCD_ROOT_PATH": root, "COMMON_SESSION_TTL": str(TTL),
               "DATA_COORD_ENABLE_ACTIVE_STANDBY": "true", "DATA_COORD_ADDRESS": "127.0.0.1",
               "DATA_COORD_HTTP_PORT": str(free_port()), "DATA_COORD_PORT": str(free_port()), "ETCD_AUTH_ENABLED": "true",
               "ETCD_AUTH_USER_NAME": user, "ETCD_AUTH_PASSWORD": password,
               "COMMON_SESSION_FAST_FAILOVER_ENABLED": fast_failover}
        proc = procs[name] = CoordinatorProcess(load_config(env=env), "datacoord")
        tasks.append(asyncio.create_task(proc.run()))
        await wait_until(lambda: proc.state == expect, timeout=10)
        return proc

    async def holder_id() -> int | None:
        async with Etcd([auth_etcd.endpoint], timeout=3, user=users["b"][0], password=users["b"][1]) as etcd:
            got = await etcd.get(f"{root}/meta/session/datacoord")
        return int(json.loads(got.kvs[0].value)["ServerID"]) if got.kvs else None

    try:
        a = await start("a", common_pb2.Healthy)
        b = await start("b", common_pb2.StandBy)
        await _as_root(auth_etcd, "user", "passwd", users["a"][0], "--interactive=false", stdin="Changed-1\n")
        if fast_failover == "false":  # its key outlives its session by up to a TTL: `milvus status` says so
            await wait_until(lambda: a.state != common_pb2.Healthy, timeout=3 * TTL, what="a to stop acting")
            async with Etcd([auth_etcd.endpoint], timeout=3, user=users["b"][0], password=users["b"][1]) as etcd:
                rows = {r.server_id: r for r in await read_sessions(etcd, f"{root}/meta", "datacoord")}
            assert rows[a.server_id].state == MemberState.NOT_SERVING, rows  # not ACTIVE, though its key is
        await wait_until(lambda: b.state == common_pb2.Healthy, timeout=6 * TTL, interval=0.05,
                         what="the standby with good credentials to take over")
        assert await holder_id() == b.server_id
        assert a.state != common_pb2.Healthy
        # Its session ended and registering again is refused (retried: the password may come back):
        # /healthz fails (an orchestrator restarts it with the new secret), it never serves again.
        if fast_failover == "false":  # nothing but its own session's end frees the key
            assert a.session is not None and "etcd refused our credentials" in a.session.lost_reason
        await wait_until(lambda: not liveness(a.view()).ok, timeout=3 * TTL, what="/healthz to fail")
        b.request_stop()
        await asyncio.wait_for(tasks[1], 10)
        end = time.monotonic() + 2 * TTL
        while time.monotonic() < end:
            assert a.state != common_pb2.Healthy and await holder_id() is None
            await asyncio.sleep(0.1)
    finally:
        for proc in procs.values():
            proc.request_stop()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 15)
