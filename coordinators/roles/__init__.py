"""The roles: each one's state, records, gRPC servicer and CLI commands; ``base`` is what they share."""
