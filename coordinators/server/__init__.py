"""A coordinator process: its lifecycle, gRPC and HTTP servers, metrics, loop watchdog and peer probe."""
