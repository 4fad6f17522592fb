"""Configuration loading: defaults, milvus.yaml, Milvus's environment rule, and clear errors."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from coordinators.config import (
    DEFAULTS,
    Config,
    ConfigError,
    find_config_file,
    load_config,
)
from coordinators.registry import ROLES

REPO_YAML = Path(__file__).resolve().parents[2] / "config" / "milvus.yaml"


def write_yaml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "milvus.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def load_env(**env: str) -> Config:
    """The repo's file plus exactly these variables, never the test runner's own environment."""
    return load_config(env=env)


def test_defaults() -> None:
    config = load_env()
    assert config.source == str(REPO_YAML)
    assert config.etcd.endpoints == ("localhost:2379",)
    assert config.etcd.meta_root == "by-dev/meta"
    assert config.etcd.kv_root == "by-dev/kv"
    assert config.etcd.request_timeout == 10.0
    assert config.etcd.ssl.enabled is False
    assert config.etcd.auth.enabled is False
    assert (config.session.ttl, config.session.retry_times) == (60, 30)
    assert config.session.standby_log_interval == 10.0
    assert config.session.exit_on_lost is False
    assert (config.log.level, config.log.format) == ("info", "text")
    assert (config.log.file.root_path, config.log.file.max_size_mb, config.log.file.max_backups) == ("", 300, 20)
    ports = {role: config.role(role).port for role in ROLES}
    assert ports == {"rootcoord": 53100, "querycoord": 19531, "datacoord": 13333}
    http_ports = {role: config.role(role).http_port for role in ROLES}
    assert http_ports == {"rootcoord": 9101, "querycoord": 9102, "datacoord": 9103}
    assert config.role("rootcoord").advertised_address == "localhost:53100"
    assert not any(config.role(role).enable_active_standby for role in ROLES)


def test_repo_yaml_equals_builtin_defaults() -> None:
    assert yaml.safe_load(REPO_YAML.read_text(encoding="utf-8")) == DEFAULTS


def test_builtin_defaults_without_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from_repo_file = load_env()
    monkeypatch.setattr("coordinators.config._REPO_ROOT", tmp_path)
    config = load_env()
    assert config.source == "<built-in defaults>"
    assert replace(config, source=from_repo_file.source) == from_repo_file


def test_unknown_role() -> None:
    with pytest.raises(ConfigError, match="unknown role 'foo': expected one of rootcoord, querycoord, datacoord"):
        load_env().role("foo")


def test_env_session_ttl() -> None:
    assert load_env(COMMON_SESSION_TTL="3").session.ttl == 3


def test_env_endpoints_comma_separated() -> None:
    config = load_env(ETCD_ENDPOINTS="127.0.0.1:23790, 127.0.0.1:23791")
    assert config.etcd.endpoints == ("127.0.0.1:23790", "127.0.0.1:23791")


def test_env_role_keys() -> None:
    config = load_env(
        ROOT_COORD_PORT="53001", ROOT_COORD_ENABLE_ACTIVE_STANDBY="true", QUERY_COORD_ADDRESS="querycoord-1"
    )
    assert config.role("rootcoord").port == 53001
    assert config.role("rootcoord").enable_active_standby is True
    assert config.role("querycoord").address == "querycoord-1"
    assert config.role("datacoord").enable_active_standby is False


def test_env_http_ports() -> None:
    config = load_env(ROOT_COORD_HTTP_PORT="9201", QUERY_COORD_HTTP_PORT="0", DATA_COORD_HTTP_PORT="19103")
    assert [config.role(role).http_port for role in ROLES] == [9201, 0, 19103]


def test_http_port_must_differ_from_grpc_port() -> None:
    with pytest.raises(ConfigError) as caught:
        load_env(ROOT_COORD_PORT="9101")
    assert caught.value.key == "rootCoord.httpPort"
    assert "must differ from the gRPC port 9101 (rootCoord.port)" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("TRUE", True), ("1", True), ("yes", True), ("On", True),
     ("false", False), ("0", False), ("No", False), ("off", False)],
)
def test_env_boolean_spellings(text: str, expected: bool) -> None:
    assert load_env(DATA_COORD_ENABLE_ACTIVE_STANDBY=text).role("datacoord").enable_active_standby is expected


def test_env_float_and_milliseconds() -> None:
    config = load_env(COMMON_SESSION_STANDBY_LOG_INTERVAL="0.5", ETCD_REQUEST_TIMEOUT="2500")
    assert config.session.standby_log_interval == 0.5
    assert config.etcd.request_timeout == 2.5


def test_env_nested_and_password_hidden() -> None:
    config = load_env(ETCD_AUTH_ENABLED="on", ETCD_AUTH_USER_NAME="root", ETCD_AUTH_PASSWORD="s3cret",
                      ETCD_ENDPOINTS="http://localhost:2379")
    assert config.etcd.auth.enabled and config.etcd.auth.password == "s3cret"
    assert "s3cret" not in repr(config)


def test_env_for_unknown_things_ignored() -> None:
    config = load_env(
        MINIO_ADDRESS="minio:9000", PULSAR_ADDRESS="pulsar://pulsar:6650", PATH="/usr/bin", HOME="/root", ETCD="x"
    )
    assert config == load_env()


def test_seed_spelling_in_yaml(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "rootCoord:\n  activeStandby:\n    enabled: true\n")
    config = load_config(path, env={})
    assert config.role("rootcoord").enable_active_standby is True
    assert config.role("querycoord").enable_active_standby is False


def test_seed_spelling_in_env() -> None:
    assert load_env(QUERY_COORD_ACTIVE_STANDBY_ENABLED="true").role("querycoord").enable_active_standby is True


def test_either_spelling_turns_it_on(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "dataCoord:\n  enableActiveStandby: true\n  activeStandby:\n    enabled: false\n")
    assert load_config(path, env={}).role("datacoord").enable_active_standby is True


def test_address_with_port_from_env() -> None:
    role = load_env(ROOT_COORD_ADDRESS="rootcoord-1:53001").role("rootcoord")
    assert (role.address, role.port) == ("rootcoord-1", 53001)
    assert role.advertised_address == "rootcoord-1:53001"


def test_address_with_same_port_as_explicit_port() -> None:
    role = load_env(ROOT_COORD_ADDRESS="rootcoord-1:53100", ROOT_COORD_PORT="53100").role("rootcoord")
    assert (role.address, role.port) == ("rootcoord-1", 53100)


def test_address_port_conflicts_with_env_port() -> None:
    with pytest.raises(ConfigError) as caught:
        load_env(ROOT_COORD_ADDRESS="rootcoord-1:53001", ROOT_COORD_PORT="53002")
    message = str(caught.value)
    assert caught.value.key == "rootCoord.port"
    assert "ROOT_COORD_PORT" in message and "ROOT_COORD_ADDRESS" in message and "rootCoord.address" in message


def test_address_port_conflicts_with_changed_file_port(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "rootCoord:\n  port: 53002\n")
    with pytest.raises(ConfigError, match=r"config key rootCoord\.port: 53002 \(from file .*milvus\.yaml\)"):
        load_config(path, env={"ROOT_COORD_ADDRESS": "rootcoord-1:53001"})


def test_ipv6_addresses() -> None:
    assert load_env(ROOT_COORD_ADDRESS="[::1]:53001").role("rootcoord").advertised_address == "[::1]:53001"
    role = load_env(ROOT_COORD_ADDRESS="::1").role("rootcoord")
    assert (role.address, role.port) == ("::1", 53100)


def test_milvusconf_as_file(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "common:\n  session:\n    ttl: 7\n")
    config = load_config(env={"MILVUSCONF": path})
    assert config.session.ttl == 7 and config.source == path


def test_milvusconf_as_directory(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "common:\n  session:\n    ttl: 8\n")
    config = load_config(env={"MILVUSCONF": str(tmp_path)})
    assert config.session.ttl == 8 and config.source == path


def test_explicit_wins_over_milvusconf(tmp_path: Path) -> None:
    explicit = write_yaml(tmp_path, "common:\n  session:\n    ttl: 9\n")
    assert find_config_file(explicit, {"MILVUSCONF": "/nonexistent"}) == Path(explicit)


def test_repo_file_is_the_fallback() -> None:
    assert find_config_file(None, {}) == REPO_YAML


def test_explicit_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file .*nope\.yaml \(from --config\) does not exist"):
        load_config(str(tmp_path / "nope.yaml"), env={})


def test_missing_milvusconf(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="MILVUSCONF"):
        load_config(env={"MILVUSCONF": str(tmp_path / "missing")})


def test_broken_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "etcd:\n  rootPath: by-dev\n  endpoints: [localhost:2379\nlog:\n  level: info\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert path in str(caught.value) and "line " in str(caught.value)
    assert "\n" not in str(caught.value)


def test_yaml_not_a_mapping(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "- just\n- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(path, env={})


def test_yaml_scalar_where_section_belongs(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "etcd: localhost:2379\n")
    with pytest.raises(ConfigError, match=r"config key etcd: must be a mapping"):
        load_config(path, env={})


def test_yaml_unknown_keys_and_empty_sections_ignored(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "minio:\n  address: minio\nproxy:\nrootCoord:\n  grpc: {x: 1}\nlog:\n")
    assert load_config(path, env={"MINIO_ADDRESS": "elsewhere"}).etcd == load_env().etcd


def test_yaml_values_typed_and_strings_accepted(tmp_path: Path) -> None:
    text = "etcd:\n  endpoints: a:1,b:2\nrootCoord:\n  port: '53005'\n  enableActiveStandby: yes\n"
    config = load_config(write_yaml(tmp_path, text), env={})
    assert config.etcd.endpoints == ("a:1", "b:2")
    assert config.role("rootcoord").port == 53005
    assert config.role("rootcoord").enable_active_standby is True


def test_env_wins_over_file(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "common:\n  session:\n    ttl: 7\n")
    assert load_config(path, env={"COMMON_SESSION_TTL": "5"}).session.ttl == 5


ENV_ERRORS = [
    ("ROOT_COORD_PORT", "abc", "rootCoord.port", "must be an integer in 1..65535"),
    ("ROOT_COORD_PORT", "0", "rootCoord.port", "must be an integer in 1..65535"),
    ("QUERY_COORD_PORT", "65536", "queryCoord.port", "must be an integer in 1..65535"),
    ("ROOT_COORD_HTTP_PORT", "http", "rootCoord.httpPort", "must be an integer in 0..65535"),
    ("DATA_COORD_HTTP_PORT", "-1", "dataCoord.httpPort", "must be an integer in 0..65535"),
    ("QUERY_COORD_HTTP_PORT", "70000", "queryCoord.httpPort", "must be an integer in 0..65535"),
    ("COMMON_SESSION_TTL", "x", "common.session.ttl", "must be an integer >= 2"),
    ("COMMON_SESSION_TTL", "1", "common.session.ttl", "must be an integer >= 2"),
    ("COMMON_SESSION_RETRY_TIMES", "0", "common.session.retryTimes", "must be an integer >= 1"),
    ("COMMON_SESSION_STANDBY_LOG_INTERVAL", "0", "common.session.standbyLogInterval", "must be a number > 0"),
    ("COMMON_SESSION_STANDBY_LOG_INTERVAL", "nan", "common.session.standbyLogInterval", "must be a number > 0"),
    ("ROOT_COORD_ENABLE_ACTIVE_STANDBY", "maybe", "rootCoord.enableActiveStandby", "must be a boolean (true/false)"),
    ("COMMON_SESSION_EXIT_ON_LOST", "sometimes", "common.session.exitOnLost", "must be a boolean (true/false)"),
    ("LOG_LEVEL", "verbose", "log.level", "must be one of debug, info, warn, warning, error"),
    ("LOG_FORMAT", "xml", "log.format", "must be one of text, json"),
    ("ETCD_ENDPOINTS", " , ", "etcd.endpoints", "must not be empty"),
    ("ETCD_REQUEST_TIMEOUT", "-5", "etcd.requestTimeout", "must be a number > 0"),
    ("ROOT_COORD_ADDRESS", "rootcoord:port", "rootCoord.address", "must be host or host:port with a port in 1..65535"),
]


@pytest.mark.parametrize(("variable", "value", "key", "requirement"), ENV_ERRORS)
def test_env_validation_errors(variable: str, value: str, key: str, requirement: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_env(**{variable: value})
    assert caught.value.key == key
    assert str(caught.value) == f"config key {key}: {requirement}, got {value!r} (from environment {variable})"


def test_error_message_example() -> None:
    with pytest.raises(ConfigError) as caught:
        load_env(COMMON_SESSION_TTL="abc")
    assert str(caught.value) == (
        "config key common.session.ttl: must be an integer >= 2, got 'abc' (from environment COMMON_SESSION_TTL)"
    )


YAML_ERRORS = [
    ("rootCoord:\n  port: [1]\n", "rootCoord.port", "must be an integer in 1..65535, got [1]"),
    ("rootCoord:\n  port: true\n", "rootCoord.port", "must be an integer in 1..65535, got True"),
    ("queryCoord:\n  httpPort: 9.5\n", "queryCoord.httpPort", "must be an integer in 0..65535, got 9.5"),
    ("common:\n  session:\n    ttl: 60.5\n", "common.session.ttl", "must be an integer >= 2, got 60.5"),
    ("etcd:\n  endpoints: []\n", "etcd.endpoints", "must not be empty"),
    ("etcd:\n  endpoints: {a: 1}\n", "etcd.endpoints", "must be a list of strings"),
    ("etcd:\n  rootPath: [a]\n", "etcd.rootPath", "must be a string"),
    ("etcd:\n  requestTimeout: 0\n", "etcd.requestTimeout", "must be a number > 0"),
    ("log:\n  level: loud\n", "log.level", "must be one of"),
    ("queryCoord:\n  enableActiveStandby: maybe\n", "queryCoord.enableActiveStandby", "must be a boolean"),
    ("dataCoord:\n  activeStandby:\n    enabled: 2\n", "dataCoord.activeStandby.enabled", "must be a boolean"),
]


@pytest.mark.parametrize(("text", "key", "requirement"), YAML_ERRORS)
def test_yaml_validation_errors(tmp_path: Path, text: str, key: str, requirement: str) -> None:
    path = write_yaml(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert caught.value.key == key
    assert str(caught.value).startswith(f"config key {key}: {requirement}")
    assert str(caught.value).endswith(f"(from file {path})")


def test_datacoord_segment_max_rows() -> None:
    assert load_env().datacoord.segment_max_rows == 1_000_000
    assert load_env(DATA_COORD_SEGMENT_MAX_ROWS="100").datacoord.segment_max_rows == 100
    for bad in ("0", "-5", "many"):
        with pytest.raises(ConfigError) as caught:
            load_env(DATA_COORD_SEGMENT_MAX_ROWS=bad)
        assert caught.value.key == "dataCoord.segment.maxRows"
        assert "DATA_COORD_SEGMENT_MAX_ROWS" in str(caught.value)


def test_event_loop_and_claim_grace() -> None:
    assert load_config(env={}).event_loop == "asyncio"
    assert load_config(env={"COMMON_EVENTLOOP": "uvloop"}).event_loop == "uvloop"  # installed with the test extra
    with pytest.raises(ConfigError, match=r"common\.eventLoop.*must be one of asyncio, uvloop"):
        load_config(env={"COMMON_EVENTLOOP": "trio"})
    assert load_config(env={"COMMON_SESSION_CLAIMGRACE": "250"}).session.claim_grace == 0.25
    with pytest.raises(ConfigError, match="claimGrace"):
        load_config(env={"COMMON_SESSION_CLAIMGRACE": "0"})


def test_uvloop_asked_for_but_not_installed_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvloop" else real(name, *a))
    with pytest.raises(ConfigError, match=r"uvloop is not installed \(pip install 'milvus-coord-ha\[uvloop\]'\)"):
        load_config(env={"COMMON_EVENTLOOP": "uvloop"})
