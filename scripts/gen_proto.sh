#!/usr/bin/env bash
# Regenerate the protobuf and grpclib stubs in coordinators/proto/.
#
# Usage: scripts/gen_proto.sh [OUT_DIR]     (default: the repository root)
#
# The include path is the repository root (-I .) and the protos import each other as
# "coordinators/proto/common.proto", so the generated modules import each other as
# `coordinators.proto.common_pb2` and work as a package without any rewriting.
# tests/unit/test_proto.py runs this into a temporary OUT_DIR and compares the result
# byte for byte with the committed stubs.
# Environment: PYTHON (default: the repository's .venv/bin/python, else python3) must
# have grpcio-tools; protoc-gen-grpclib_python is looked up beside it, then on PATH.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON="python3"; fi
fi

PLUGIN="$(dirname "$(command -v "$PYTHON")")/protoc-gen-grpclib_python"
if [[ ! -x "$PLUGIN" ]]; then
  PLUGIN="$(command -v protoc-gen-grpclib_python || true)"
fi
if [[ -z "$PLUGIN" ]]; then
  echo "gen_proto: protoc-gen-grpclib_python not found (pip install grpclib)" >&2
  exit 1
fi

cd "$ROOT"
mkdir -p "$OUT/coordinators/proto"
"$PYTHON" -m grpc_tools.protoc \
  -I . \
  --plugin=protoc-gen-grpclib_python="$PLUGIN" \
  --python_out="$OUT" \
  --pyi_out="$OUT" \
  --grpclib_python_out="$OUT" \
  coordinators/proto/common.proto \
  coordinators/proto/rootcoord.proto \
  coordinators/proto/querycoord.proto \
  coordinators/proto/datacoord.proto
