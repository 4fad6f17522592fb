"""What a coordinator process runs on, below both the server and the operator's commands: its exit
codes (:mod:`~coordinators.runtime.exit_codes`), its pid file (:mod:`~coordinators.runtime.pidfile`)
and its logging set-up (:mod:`~coordinators.runtime.logging_setup`)."""
