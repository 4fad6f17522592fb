"""rootcoord: collections, the timestamp oracle and the ID allocator."""
