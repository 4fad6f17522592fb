"""The operator's side: the ``milvus`` command, stop, status, switchover, pid files, exit codes, logging."""
