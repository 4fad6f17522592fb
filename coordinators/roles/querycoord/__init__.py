"""querycoord: which collections are loaded."""
