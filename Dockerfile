# One image for every coordinator role: `docker run IMAGE` runs rootcoord; pass
# `run querycoord` / `run datacoord` (or, with the entrypoint reset as in
# deployments/docker-compose.yml, `milvus run <role>`) for the others.
# Settings come from /milvus/configs/milvus.yaml (mount your own over it) and from
# Milvus-style environment variables (ETCD_ENDPOINTS, ROOT_COORD_ADDRESS,
# ROOT_COORD_ENABLE_ACTIVE_STANDBY, ...): see config/milvus.yaml and README.md.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what the package needs: a source change does not invalidate more than this layer.
WORKDIR /tmp/src
COPY pyproject.toml README.md ./
COPY session ./session
COPY coordinators ./coordinators
RUN pip install . && rm -rf /tmp/src

# The config file where Milvus's images keep it; MILVUSCONF points `milvus` at it.
COPY config/milvus.yaml /milvus/configs/milvus.yaml
ENV MILVUSCONF=/milvus/configs

# Non-root: /run/milvus for the pid file, /milvus/logs for log.file.rootPath if set.
RUN useradd --system --uid 10001 --user-group --home-dir /milvus --shell /usr/sbin/nologin milvus \
    && mkdir -p /run/milvus /milvus/logs \
    && chown milvus:milvus /run/milvus /milvus/logs
USER milvus
WORKDIR /milvus

# gRPC: rootCoord.port, queryCoord.port, dataCoord.port; HTTP (/healthz, /readyz, /metrics):
# rootCoord.httpPort, queryCoord.httpPort, dataCoord.httpPort.
EXPOSE 53100 19531 13333 9101 9102 9103

# /healthz on this container's HTTP port (no curl in slim images): the role is read from PID 1's
# command line (`... run <role>`), its httpPort from the same config file and environment the
# process loaded (<ROLE>_HTTP_PORT, e.g. ROOT_COORD_HTTP_PORT, or rootCoord.httpPort in milvus.yaml).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; from coordinators.config import ROLES, load_config; argv = open('/proc/1/cmdline').read().split(chr(0)); role = next(arg for arg in argv[argv.index('run') + 1:] if arg in ROLES); urllib.request.urlopen('http://127.0.0.1:%d/healthz' % load_config().role(role).http_port, timeout=4)"]

# `docker stop` sends SIGTERM: the member revokes its lease and a standby takes over at once.
STOPSIGNAL SIGTERM
ENTRYPOINT ["milvus"]
CMD ["run", "rootcoord"]
