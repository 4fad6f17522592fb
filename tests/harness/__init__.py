"""The test harness, shared by tests/ and bench/: real etcd clusters, whole `milvus run` processes,
in-process members, network namespaces, fault injection, the history checker.

Importable by name (``from harness.etcd_server import EtcdCluster``) wherever the project's
virtualenv runs: pytest puts tests/ on the path (its rootdir conftest), and scripts/_venv.sh adds
tests/ to the virtualenv's path for the benches.

- :mod:`harness.etcd_server`: etcd clusters on free ports, the etcd binaries.
- :mod:`harness.procs`: ``milvus run`` processes, their logs and environment.
- :mod:`harness.inproc`: in-process members (``CoordinatorProcess`` in the test's event loop).
- :mod:`harness.session_helpers`: bounded waits, etcd clients for assertions.
- :mod:`harness.tcp_proxy`, :mod:`harness.netns`: connections cut, hosts lost, refusals forged.
- :mod:`harness.faults`, :mod:`harness.history` (+ :mod:`harness.staleness`): fault schedules, recorded client histories and
  their checker.
- :mod:`harness.lines`: session keys built without etcd, for table tests.
- :mod:`harness.certs`: TLS certificates made at test time.
"""
