"""The committed stubs are exactly what scripts/gen_proto.sh produces from the committed protos.

A proto edited without regenerating (or a stub edited by hand) would otherwise ship silently.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "coordinators" / "proto"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_grpc.py")
PROTOS = ("common", "rootcoord", "querycoord", "datacoord")


def _generated(directory: Path) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes()
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name.endswith(GENERATED_SUFFIXES)
    }


def test_committed_stubs_match_protos(tmp_path: Path) -> None:
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpc_tools (grpcio-tools) is not importable: cannot regenerate the stubs")
    env = dict(os.environ, PYTHON=sys.executable)
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gen_proto.sh"), str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, f"gen_proto.sh failed:\n{result.stdout}\n{result.stderr}"
    fresh = _generated(tmp_path / "coordinators" / "proto")
    committed = _generated(PROTO_DIR)
    expected = {f"{name}{suffix}" for name in PROTOS for suffix in GENERATED_SUFFIXES}
    assert set(fresh) == expected
    assert set(committed) == expected, "stubs missing or extra: run scripts/gen_proto.sh"
    stale = sorted(name for name in expected if fresh[name] != committed[name])
    assert not stale, f"stale stubs {stale}: run scripts/gen_proto.sh"


def test_stubs_import_as_a_package() -> None:
    from coordinators.proto import common_pb2, datacoord_grpc, querycoord_grpc, rootcoord_grpc

    assert common_pb2.DESCRIPTOR.package == "milvus.coord"
    paths = {
        "/milvus.coord.RootCoord/GetComponentStates": rootcoord_grpc.RootCoordBase,
        "/milvus.coord.QueryCoord/GetComponentStates": querycoord_grpc.QueryCoordBase,
        "/milvus.coord.DataCoord/GetComponentStates": datacoord_grpc.DataCoordBase,
    }
    for path, base in paths.items():

        async def answer(self: object, stream: object) -> None:
            pass

        methods = {name: answer for name in base.__abstractmethods__}
        service = type("Service", (base,), methods)()
        mapping = service.__mapping__()
        assert path in mapping
        assert len(mapping) == len(methods) > 1, "each role's service has its own API beside GetComponentStates"


def test_milvus_enum_values() -> None:
    from coordinators.proto import common_pb2 as pb

    assert [pb.Initializing, pb.Healthy, pb.Abnormal, pb.StandBy, pb.Stopping] == [0, 1, 2, 3, 4]
    assert [pb.Success, pb.UnexpectedError, pb.NotServing, pb.InvalidArgument, pb.NotFound] == [
        0, 1, 2, 3, 4,
    ]
    status = pb.Status(error_code=pb.NotServing, reason="not serving, reason: StandBy",
                       active_address="10.0.0.1:53100", active_server_id=7)
    assert pb.Status.FromString(status.SerializeToString()) == status

